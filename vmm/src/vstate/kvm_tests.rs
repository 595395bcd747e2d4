//! Tests on the real local /dev/kvm with tiny hand-assembled real-mode guests (a
//! handful of instructions: the local KVM may be PVM, which emulates such guests at
//! about 1 M instructions/s).

use std::io::{self, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::controller::Controller;
use crate::device_manager::DeviceManager;
use crate::devices::legacy::{ConsoleSink, SerialDevice};
use crate::devices::{Bus, BusDevice};
use crate::stop::{StopReason, StopSignal};
use crate::vmm::Vmm;
use crate::vstate::test_guest::{insert_i8042, real_mode_vcpu, tiny_vm, SharedBuf, CODE};
use crate::vstate::vcpu::Vcpu;
use crate::vstate::vm::Vm;
use crate::EventManager;

#[derive(Default)]
struct Recorder(Vec<(u64, Vec<u8>)>);
impl BusDevice for Recorder {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        self.0.push((offset, data.to_vec()));
    }
}

fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    f()
}

#[test]
fn port_io_reaches_the_serial_device() {
    // mov dx,0x3f8; mov al,'H'; out dx,al; mov al,'i'; out dx,al; hlt
    let code = [0xba, 0xf8, 0x03, 0xb0, b'H', 0xee, 0xb0, b'i', 0xee, 0xf4];
    let (vm, _mem) = tiny_vm(&code);
    let stop = StopSignal::new().unwrap();
    let buf = SharedBuf::default();
    let serial = SerialDevice::new(
        vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        ConsoleSink::new(Box::new(buf.clone()), 1024, None),
    );
    let mut io = Bus::new();
    io.insert(Arc::new(Mutex::new(serial)), 0x3f8, 8).unwrap();
    let mut handle = real_mode_vcpu(&vm, io, Bus::new(), &stop)
        .start(false)
        .unwrap();
    handle.resume().unwrap();
    let ok = wait_until(Duration::from_secs(20), || {
        buf.0.lock().unwrap().as_slice() == b"Hi"
    });
    handle.exit();
    assert!(ok, "serial got {:?}", buf.0.lock().unwrap());
    assert_eq!(stop.reason(), None, "hlt does not stop the VM");
}

#[test]
fn mmio_write_reaches_the_bus() {
    // mov ax,0xd000; mov ds,ax; mov byte [0x10],0x42; hlt  (linear 0xd0010: not RAM)
    let code = [
        0xb8, 0x00, 0xd0, 0x8e, 0xd8, 0xc6, 0x06, 0x10, 0x00, 0x42, 0xf4,
    ];
    let (vm, _mem) = tiny_vm(&code);
    let stop = StopSignal::new().unwrap();
    let rec = Arc::new(Mutex::new(Recorder::default()));
    let mut mmio = Bus::new();
    mmio.insert(rec.clone(), 0xd0000, 0x1000).unwrap();
    let mut handle = real_mode_vcpu(&vm, Bus::new(), mmio, &stop)
        .start(false)
        .unwrap();
    handle.resume().unwrap();
    let ok = wait_until(Duration::from_secs(20), || {
        !rec.lock().unwrap().0.is_empty()
    });
    handle.exit();
    assert!(ok, "no MMIO write arrived");
    assert_eq!(rec.lock().unwrap().0, vec![(0x10, vec![0x42])]);
}

fn run_to_stop(code: &[u8]) -> StopReason {
    let (vm, mem) = tiny_vm(code);
    let stop = StopSignal::new().unwrap();
    let mut io = Bus::new();
    insert_i8042(&mut io, &stop);
    let vcpu = real_mode_vcpu(&vm, io.clone(), Bus::new(), &stop);
    let handle = vcpu.start(false).unwrap();
    let em = EventManager::new().unwrap();
    let ready = Arc::new(std::sync::atomic::AtomicU64::new(u64::MAX));
    let devices = DeviceManager::from_buses(io, Bus::new());
    let vmm = Vmm::new(vec![handle], stop, ready, devices, Vm::from_fd(vm), mem);
    vmm.resume().unwrap();
    Controller::with_vmm(em, vmm).unwrap().run().unwrap()
}

#[test]
fn i8042_reset_stops_the_vm_with_status_0() {
    // mov al,0xfe; out 0x64,al; hlt
    let reason = run_to_stop(&[0xb0, 0xfe, 0xe6, 0x64, 0xf4]);
    assert_eq!(reason, StopReason::Reset);
    assert_eq!(reason.exit_code(), 0);
}

#[test]
fn long_mode_entry_runs_64_bit_code_then_i8042_reset() {
    // 64-bit code at the boot entry: mov dx,0x3f8; mov al,'L'; out dx,al;
    // mov al,0xfe; out 0x64,al; hlt. (A triple fault would be the natural end, but
    // the local PVM emulator reports it as KVM_EXIT_INTERNAL_ERROR instead of
    // KVM_EXIT_SHUTDOWN; the shutdown exit is covered by handle_exit's unit tests.)
    let code = [
        0x66, 0xba, 0xf8, 0x03, 0xb0, b'L', 0xee, 0xb0, 0xfe, 0xe6, 0x64, 0xf4,
    ];
    let (vm, mem) = tiny_vm(&code);
    crate::arch::x86_64::regs::write_boot_tables(&mem).unwrap();
    let stop = StopSignal::new().unwrap();
    let buf = SharedBuf::default();
    let serial = SerialDevice::new(
        vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        ConsoleSink::new(Box::new(buf.clone()), 1024, None),
    );
    let mut io = Bus::new();
    io.insert(Arc::new(Mutex::new(serial)), 0x3f8, 8).unwrap();
    insert_i8042(&mut io, &stop);
    let vcpu = Vcpu::new(&vm, 0, io.clone(), Bus::new(), stop.try_clone().unwrap()).unwrap();
    crate::arch::x86_64::regs::setup_boot_vcpu(vcpu.fd(), CODE).unwrap();
    let handle = vcpu.start(false).unwrap();
    let em = EventManager::new().unwrap();
    let ready = Arc::new(std::sync::atomic::AtomicU64::new(u64::MAX));
    let devices = DeviceManager::from_buses(io, Bus::new());
    let vmm = Vmm::new(vec![handle], stop, ready, devices, Vm::from_fd(vm), mem);
    vmm.resume().unwrap();
    let reason = Controller::with_vmm(em, vmm).unwrap().run().unwrap();
    assert_eq!(buf.0.lock().unwrap().as_slice(), b"L", "ran 64-bit code");
    assert_eq!(reason, StopReason::Reset);
}

#[test]
fn looping_guest_pauses_and_resumes() {
    // l: inc cx; jmp l
    let (vm, _mem) = tiny_vm(&[0x41, 0xeb, 0xfd]);
    let stop = StopSignal::new().unwrap();
    let mut handle = real_mode_vcpu(&vm, Bus::new(), Bus::new(), &stop)
        .start(false)
        .unwrap();
    handle.resume().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    handle.pause().unwrap();
    let s1 = handle.save_state().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let s1b = handle.save_state().unwrap();
    assert_eq!(s1.regs.rcx, s1b.regs.rcx, "a paused vCPU does not run");
    assert!(
        (CODE..CODE + 3).contains(&s1.regs.rip),
        "rip {:#x}",
        s1.regs.rip
    );
    handle.resume().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    handle.pause().unwrap();
    let s2 = handle.save_state().unwrap();
    assert_ne!(s1.regs.rcx, s2.regs.rcx, "the guest ran again after resume");
    // Saved state serializes.
    let json = serde_json::to_string(&s2).unwrap();
    let back: crate::vstate::vcpu::VcpuState = serde_json::from_str(&json).unwrap();
    assert_eq!(back.regs.rcx, s2.regs.rcx);
    assert_eq!(back.fpu, s2.fpu);
    handle.exit();
}

#[test]
fn ready_marker_is_timestamped_then_reset_ends_the_vm() {
    // mov dx,0x440; mov al,0x7b; out dx,al; mov al,0xfe; out 0x64,al; hlt
    let code = [
        0xba, 0x40, 0x04, 0xb0, 0x7b, 0xee, 0xb0, 0xfe, 0xe6, 0x64, 0xf4,
    ];
    let (vm, mem) = tiny_vm(&code);
    let stop = StopSignal::new().unwrap();
    let marker = crate::devices::legacy::BootMarker::new(false);
    let ready = marker.ready_at();
    let mut io = Bus::new();
    io.insert(Arc::new(Mutex::new(marker)), 0x440, 1).unwrap();
    insert_i8042(&mut io, &stop);
    let handle = real_mode_vcpu(&vm, io.clone(), Bus::new(), &stop)
        .start(false)
        .unwrap();
    let em = EventManager::new().unwrap();
    let devices = DeviceManager::from_buses(io, Bus::new());
    let vmm = Vmm::new(vec![handle], stop, ready, devices, Vm::from_fd(vm), mem);
    assert_eq!(vmm.ready_at_ns(), None);
    vmm.resume().unwrap();
    let mut controller = Controller::with_vmm(em, vmm).unwrap();
    assert_eq!(controller.run().unwrap(), StopReason::Reset);
    let vmm = controller.vmm().unwrap();
    let at = vmm.ready_at_ns().expect("marker timestamped");
    assert!(at > 0 && at < crate::logger::nanos_since_start());
    // (Exact guest RSS accounting is tested in vstate::memory: this tiny VM's memory
    // is not marked DONTDUMP, so it may share a VMA with other test mappings.)
    let (rss, guest) = vmm.memory_usage().unwrap();
    assert!(rss > guest);
}

/// A console writer that never returns (a pipe nobody reads).
struct StuckWriter;
impl Write for StuckWriter {
    fn write(&mut self, _b: &[u8]) -> io::Result<usize> {
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn shutdown_does_not_hang_on_a_vcpu_blocked_outside_kvm_run() {
    // mov dx,0x3f8; mov al,'x'; out dx,al; hlt  -- the write never returns.
    let (vm, mem) = tiny_vm(&[0xba, 0xf8, 0x03, 0xb0, b'x', 0xee, 0xf4]);
    let stop = StopSignal::new().unwrap();
    let serial = SerialDevice::new(
        vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        ConsoleSink::new(Box::new(StuckWriter), 1024, None),
    );
    let mut io = Bus::new();
    io.insert(Arc::new(Mutex::new(serial)), 0x3f8, 8).unwrap();
    let handle = real_mode_vcpu(&vm, io.clone(), Bus::new(), &stop)
        .start(false)
        .unwrap();
    let ready = Arc::new(std::sync::atomic::AtomicU64::new(u64::MAX));
    let devices = DeviceManager::from_buses(io, Bus::new());
    let mut vmm = Vmm::new(vec![handle], stop, ready, devices, Vm::from_fd(vm), mem);
    vmm.resume().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let start = Instant::now();
    vmm.shutdown();
    let took = start.elapsed();
    assert!(
        took >= crate::vstate::vcpu::EXIT_TIMEOUT && took < Duration::from_secs(10),
        "shutdown took {took:?}"
    );
    // Dropping the VMM does not wait again; guest memory stays mapped (leaked).
    let start = Instant::now();
    drop(vmm);
    assert!(start.elapsed() < Duration::from_secs(1));
}

#[test]
fn saved_state_restores_into_a_fresh_vcpu() {
    // l: inc cx; jmp l
    let code = [0x41, 0xeb, 0xfd];
    let (vm, _mem) = tiny_vm(&code);
    let stop = StopSignal::new().unwrap();
    let mut handle = real_mode_vcpu(&vm, Bus::new(), Bus::new(), &stop)
        .start(false)
        .unwrap();
    handle.resume().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    handle.pause().unwrap();
    let saved = handle.save_state().unwrap();
    handle.exit();
    assert_ne!(saved.regs.rcx, 0, "the guest ran");

    // Through serde, as a snapshot file would carry it.
    let saved: crate::vstate::vcpu::VcpuState =
        serde_json::from_str(&serde_json::to_string(&saved).unwrap()).unwrap();
    let (vm2, _mem2) = tiny_vm(&code);
    let vcpu = Vcpu::new(&vm2, 0, Bus::new(), Bus::new(), stop.try_clone().unwrap()).unwrap();
    vcpu.restore_state(&saved).unwrap();
    let again = vcpu.save_state().unwrap();
    assert_eq!(again.regs.rcx, saved.regs.rcx);
    assert_eq!(again.regs.rip, saved.regs.rip);
    assert_eq!(again.sregs.cs.base, saved.sregs.cs.base);
    assert_eq!(again.fpu, saved.fpu);
    assert_eq!(again.msrs.len(), saved.msrs.len());
    assert!(saved.xsave.len() >= 1024, "the XSAVE area is saved");
    assert_eq!(again.xsave, saved.xsave, "the XSAVE area round-trips");
    assert_eq!(again.xcrs.nr_xcrs, saved.xcrs.nr_xcrs);
    assert_eq!(again.xcrs.xcrs[0].value, saved.xcrs.xcrs[0].value);

    // Hostile state: an XSAVE area of another size is refused, not handed to KVM.
    let mut bad = saved.clone();
    bad.xsave.push(0);
    assert!(matches!(
        vcpu.restore_state(&bad),
        Err(crate::vstate::vcpu::VcpuError::BadState(_))
    ));
    let mut bad = saved.clone();
    bad.xcrs.nr_xcrs = 1000;
    assert!(matches!(
        vcpu.restore_state(&bad),
        Err(crate::vstate::vcpu::VcpuError::BadState(_))
    ));

    // Hostile state: more MSRs than husk ever saves is refused.
    let mut bad = saved.clone();
    bad.msrs = vec![bad.msrs[0]; crate::vstate::vcpu::MAX_SAVED_MSRS + 1];
    assert!(matches!(
        vcpu.restore_state(&bad),
        Err(crate::vstate::vcpu::VcpuError::BadState(_))
    ));
}

/// Runs `code` for 300 ms, then asserts that `exit` ends the vCPU thread within 500 ms.
fn assert_exit_kicks(code: &[u8]) {
    let (vm, _mem) = tiny_vm(code);
    let stop = StopSignal::new().unwrap();
    let mut handle = real_mode_vcpu(&vm, Bus::new(), Bus::new(), &stop)
        .start(false)
        .unwrap();
    handle.resume().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let start = Instant::now();
    assert!(handle.exit(), "the vCPU thread ended");
    let took = start.elapsed();
    assert!(took < Duration::from_millis(500), "exit took {took:?}");
}

#[test]
fn exit_kicks_a_halted_vcpu_out_of_kvm_run() {
    // cli; l: hlt; jmp l  -- halted for good: only the kick ends KVM_RUN.
    assert_exit_kicks(&[0xfa, 0xf4, 0xeb, 0xfd]);
}

#[test]
fn exit_kicks_a_vcpu_looping_without_exits() {
    // l: jmp l  -- never exits to the VMM on its own.
    assert_exit_kicks(&[0xeb, 0xfe]);
}

#[test]
fn reset_by_a_vcpu_that_then_halts_ends_the_vm_at_once() {
    // mov al,0xfe; out 0x64,al; cli; l: hlt; jmp l  -- as a guest's reboot path ends.
    let start = Instant::now();
    let reason = run_to_stop(&[0xb0, 0xfe, 0xe6, 0x64, 0xfa, 0xf4, 0xeb, 0xfd]);
    let took = start.elapsed();
    assert_eq!(reason, StopReason::Reset);
    assert!(
        took < crate::vstate::vcpu::EXIT_TIMEOUT,
        "the VM took {took:?} to end (a vCPU waited out the exit timeout)"
    );
}
