//! Snapshot create and restore on the real local /dev/kvm with a tiny real-mode guest:
//! run it, pause, save both files, restore into a fresh VM, resume, and check the
//! guest continues from its saved state.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::create::create_snapshot;
use super::format::{self, FormatError};
use super::restore::{build_microvm_from_snapshot, RestoreArgs, RestoreError};
use super::MicrovmState;
use crate::arch::x86_64::layout::{self, SERIAL_IRQ, SERIAL_PORT_BASE};
use crate::builder::ConsoleConfig;
use crate::device_manager::{DeviceManager, LegacyHandle};
use crate::devices::legacy::{BootMarker, ConsoleSink, SerialDevice, I8042, I8042_PORTS};
use crate::stop::StopSignal;
use crate::vmm::Vmm;
use crate::vstate::memory::{create_guest_memory, register_guest_memory};
use crate::vstate::vcpu::Vcpu;
use crate::vstate::vm::{open_kvm, Vm};
use crate::EventManager;

const CODE: u64 = 0x1000;
const COUNTER: u64 = 0x2000;
/// l: inc cx; mov [0x2000],cx; out 0x80,al; jmp l
const LOOP: [u8; 9] = [0x41, 0x89, 0x0e, 0x00, 0x20, 0xe6, 0x80, 0xeb, 0xf7];

struct TempDir(PathBuf);
impl TempDir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("husk-snap-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A booted-by-hand 32 MiB VM running LOOP in real mode, with a serial console, an
/// i8042 holding Ctrl+Alt+Del the guest never reads, and the boot marker.
fn looping_vmm() -> Vmm {
    looping_vmm_with(None)
}

/// [`looping_vmm`], plus a vsock device listening on the given path.
fn looping_vmm_with(vsock: Option<(&mut EventManager, PathBuf)>) -> Vmm {
    let kvm = open_kvm().unwrap();
    let mem = create_guest_memory(32).unwrap();
    mem.write_slice(&LOOP, GuestAddress(CODE)).unwrap();
    let vm = Vm::new(&kvm).unwrap();
    // SAFETY: `mem` moves into the Vmm, which drops the VM and vCPUs first.
    unsafe { register_guest_memory(vm.fd(), &mem).unwrap() };
    let stop = StopSignal::new().unwrap();
    let mut devices = DeviceManager::new();
    let serial = SerialDevice::new(
        EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        ConsoleSink::new(Box::new(std::io::sink()), 1024, None),
    );
    vm.fd()
        .register_irqfd(serial.irq_evt(), SERIAL_IRQ)
        .unwrap();
    devices
        .attach_pio(
            "serial",
            SERIAL_PORT_BASE,
            8,
            Some(SERIAL_IRQ),
            LegacyHandle::Serial(Arc::new(Mutex::new(serial))),
            None,
        )
        .unwrap();
    let mut i8042 = I8042::new(stop.try_clone().unwrap())
        .with_interrupt(EventFd::new(libc::EFD_NONBLOCK).unwrap());
    i8042.send_ctrl_alt_del().unwrap();
    devices
        .attach_pio(
            "i8042",
            layout::I8042_PORT_BASE,
            I8042_PORTS as u16,
            Some(layout::I8042_IRQ),
            LegacyHandle::I8042(Arc::new(Mutex::new(i8042))),
            None,
        )
        .unwrap();
    devices
        .attach_pio(
            "boot-marker",
            layout::BOOT_MARKER_PORT,
            1,
            None,
            LegacyHandle::BootMarker(Arc::new(Mutex::new(BootMarker::new(false)))),
            None,
        )
        .unwrap();
    if let Some((em, uds)) = vsock {
        let dev = Arc::new(Mutex::new(
            crate::devices::virtio::vsock::Vsock::new(3, uds).unwrap(),
        ));
        devices
            .attach_virtio(
                vm.fd(),
                &mem,
                em,
                "vsock",
                dev.clone(),
                crate::device_manager::VirtioHandle::Vsock(dev),
            )
            .unwrap();
    }
    let mut vcpu = Vcpu::new(
        vm.fd(),
        0,
        devices.io_bus().clone(),
        devices.mmio_bus().clone(),
        stop.try_clone().unwrap(),
    )
    .unwrap();
    let supported = kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .unwrap();
    vcpu.configure(&supported, 1, false, None).unwrap();
    vcpu.set_saveable_msrs(kvm.get_msr_index_list().unwrap().as_slice().to_vec());
    let mut sregs = vcpu.fd().get_sregs().unwrap();
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    sregs.ds.base = 0;
    sregs.ds.selector = 0;
    vcpu.fd().set_sregs(&sregs).unwrap();
    vcpu.fd()
        .set_regs(&kvm_bindings::kvm_regs {
            rip: CODE,
            rflags: 2,
            ..Default::default()
        })
        .unwrap();
    let handle = vcpu.start(false).unwrap();
    let ready = Arc::new(std::sync::atomic::AtomicU64::new(u64::MAX));
    Vmm::new(vec![handle], stop, ready, devices, vm, mem)
}

fn counter(vmm: &Vmm) -> u16 {
    vmm.guest_memory().read_obj(GuestAddress(COUNTER)).unwrap()
}

fn restore(dir: &TempDir) -> Result<Vmm, RestoreError> {
    let mut em = EventManager::new().unwrap();
    let stop = StopSignal::new().unwrap();
    let ready = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let args = RestoreArgs {
        state_path: dir.0.join("state"),
        mem_path: dir.0.join("mem"),
        vsock_override: None,
        console: ConsoleConfig::Null,
        seccomp: false,
    };
    build_microvm_from_snapshot(&args, &mut em, &stop, &ready).map(|r| r.vmm)
}

#[test]
fn paused_guest_is_saved_restored_into_a_fresh_vm_and_continues() {
    let dir = TempDir::new("cont");
    let vmm = looping_vmm();
    vmm.resume().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    vmm.pause().unwrap();
    let saved_count = counter(&vmm);
    assert_ne!(saved_count, 0, "the guest ran");
    let report = create_snapshot(
        &vmm,
        &Default::default(),
        &dir.0.join("state"),
        &dir.0.join("mem"),
    )
    .unwrap();
    // A paused guest does not run: the counter did not move while saving.
    assert_eq!(counter(&vmm), saved_count);
    assert_eq!(report.memory.apparent, 32 << 20);
    assert!(
        report.memory.allocated < 1 << 20,
        "memory file is sparse: {:?}",
        report.memory
    );
    let state: MicrovmState = format::read_file(&dir.0.join("state")).unwrap();
    let saved_rcx = state.vcpus[0].regs.rcx;
    assert_eq!(saved_rcx as u16, saved_count, "registers and memory agree");
    assert!(
        state.vcpus[0]
            .msrs
            .iter()
            .any(|m| m.index == 0x4b56_4d01 || m.index == 0x10),
        "saveable MSRs (kvmclock or TSC) are in the state"
    );
    drop(vmm);

    // A fresh VM, built from the files alone.
    let restored = restore(&dir).unwrap();
    assert_eq!(
        counter(&restored),
        saved_count,
        "memory comes from the file"
    );
    // The registers come from the file too (checked before the guest runs again).
    let before = restored.save_vcpu_states().unwrap();
    assert_eq!(
        before[0].regs.rcx, saved_rcx,
        "registers come from the file"
    );
    // The i8042 still holds the keys the guest had not read, and the boot marker
    // answers one restore generation on.
    let i8042 = restored.devices().i8042().unwrap().lock().unwrap().save();
    assert_eq!(i8042, state.devices.i8042);
    assert_eq!(i8042.output, crate::devices::legacy::i8042::CTRL_ALT_DEL);
    let mut gen = [0u8; 4];
    assert!(restored
        .devices()
        .io_bus()
        .read(u64::from(layout::BOOT_MARKER_PORT), &mut gen));
    assert_eq!(u32::from_le_bytes(gen), 1);
    restored.resume().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    restored.pause().unwrap();
    let after = restored.save_vcpu_states().unwrap();
    let now = counter(&restored);
    // CX is a 16-bit counter that wraps (a fast host runs more than 65536 iterations
    // in 300 ms): the guest ran on from the restored value if it moved and the
    // register and memory still agree.
    assert!(
        now != saved_count && after[0].regs.rcx as u16 == now,
        "the restored guest continued counting from {saved_count}: rcx {} counter {now}",
        after[0].regs.rcx
    );
    assert!((CODE..CODE + LOOP.len() as u64).contains(&after[0].regs.rip));
    // Copy-on-write: the memory file still holds the value at snapshot time.
    let again = restore(&dir).unwrap();
    assert_eq!(counter(&again), saved_count);
}

#[test]
fn restore_refuses_corrupt_and_mismatched_files() {
    let dir = TempDir::new("bad");
    let vmm = looping_vmm();
    vmm.resume().unwrap();
    std::thread::sleep(Duration::from_millis(50));
    vmm.pause().unwrap();
    create_snapshot(
        &vmm,
        &Default::default(),
        &dir.0.join("state"),
        &dir.0.join("mem"),
    )
    .unwrap();
    drop(vmm);
    let state_path = dir.0.join("state");
    let good = std::fs::read(&state_path).unwrap();

    // A bit flip in the body.
    let mut b = good.clone();
    let mid = b.len() / 2;
    b[mid] ^= 0x10;
    std::fs::write(&state_path, &b).unwrap();
    let e = restore(&dir).err().unwrap();
    assert!(
        matches!(e, RestoreError::State(FormatError::Checksum)),
        "{e}"
    );

    // Truncated.
    std::fs::write(&state_path, &good[..good.len() - 100]).unwrap();
    let e = restore(&dir).err().unwrap();
    assert!(
        matches!(e, RestoreError::State(FormatError::Length { .. })),
        "{e}"
    );

    // Another format version.
    let mut b = good.clone();
    b[8..12].copy_from_slice(&99u32.to_le_bytes());
    std::fs::write(&state_path, &b).unwrap();
    let e = restore(&dir).err().unwrap();
    assert!(
        matches!(e, RestoreError::State(FormatError::Version { found: 99 })),
        "{e}"
    );

    // Another CPU vendor (a well-formed state that says so).
    let mut st: MicrovmState = format::decode(&good).unwrap();
    st.cpu.vendor = "OtherVendorX".into();
    format::write_file(&state_path, &st).unwrap();
    let e = restore(&dir).err().unwrap();
    assert!(matches!(e, RestoreError::Cpu { .. }), "{e}");

    // More vCPUs than KVM allows.
    let mut st: MicrovmState = format::decode(&good).unwrap();
    let n = 64;
    st.vcpus = vec![st.vcpus[0].clone(); n];
    st.machine.vcpus = 64;
    format::write_file(&state_path, &st).unwrap();
    let e = restore(&dir).err().unwrap();
    assert!(
        matches!(e, RestoreError::VcpuCount { count: 64, .. }),
        "{e}"
    );

    // A memory file shorter than the state claims.
    std::fs::write(&state_path, &good).unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.0.join("mem"))
        .unwrap();
    f.set_len(1 << 20).unwrap();
    let e = restore(&dir).err().unwrap();
    assert!(e.to_string().contains("memory file"), "{e}");
}

/// `GET /vm/config` after `PUT /snapshot/load` shows the restored machine: its vCPUs
/// and memory, and the vsock device on the overriding socket path.
#[test]
fn vm_config_after_load_shows_the_restored_machine() {
    use crate::controller::{Controller, ControllerOptions, VmmAction, VmmData};
    let dir = TempDir::new("cfg");
    let mut em = EventManager::new().unwrap();
    let vmm = looping_vmm_with(Some((&mut em, dir.0.join("saved.sock"))));
    create_snapshot(
        &vmm,
        &Default::default(),
        &dir.0.join("state"),
        &dir.0.join("mem"),
    )
    .unwrap();
    drop(vmm);

    let mut c = Controller::new(ControllerOptions {
        seccomp: false,
        console: ConsoleConfig::Null,
        ..ControllerOptions::default()
    })
    .unwrap();
    let clone_sock = dir.0.join("clone.sock");
    let params = serde_json::from_value(serde_json::json!({
        "snapshot_path": dir.0.join("state"),
        "mem_backend": {"backend_type": "File", "backend_path": dir.0.join("mem")},
        "vsock_override": {"uds_path": clone_sock},
    }))
    .unwrap();
    assert_eq!(
        c.handle(VmmAction::LoadSnapshot(params)),
        Ok(VmmData::Empty)
    );
    let VmmData::VmConfig(cfg) = c.handle(VmmAction::GetVmConfig).unwrap() else {
        panic!("GET /vm/config answered something else");
    };
    assert_eq!(cfg["machine-config"]["vcpu_count"], 1, "{cfg}");
    assert_eq!(cfg["machine-config"]["mem_size_mib"], 32, "{cfg}");
    assert_eq!(cfg["vsock"]["guest_cid"], 3, "{cfg}");
    assert_eq!(
        cfg["vsock"]["uds_path"],
        clone_sock.to_str().unwrap(),
        "the overriding path, not the saved one: {cfg}"
    );
    assert!(cfg["boot-source"].is_null(), "{cfg}");
    assert_eq!(cfg["drives"], serde_json::json!([]), "{cfg}");
    // The restored vsock device does listen there.
    assert!(std::os::unix::net::UnixStream::connect(&clone_sock).is_ok());
    let VmmData::MachineConfig(m) = c.handle(VmmAction::GetMachineConfig).unwrap() else {
        panic!("GET /machine-config answered something else");
    };
    assert_eq!((m.vcpu_count, m.mem_size_mib), (1, 32));
}
