//! Test helpers for unit tests on the real local /dev/kvm with tiny hand-assembled
//! real-mode guests: a small VM with the code loaded, a vCPU set to run it, a console
//! sink to read what the guest printed. Tests only (`cfg(test)`).

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use kvm_ioctls::{VcpuFd, VmFd};
use vm_memory::{Bytes, GuestAddress};

use crate::devices::legacy::{I8042, I8042_PORTS};
use crate::devices::Bus;
use crate::stop::StopSignal;
use crate::vstate::memory::register_guest_memory;
use crate::vstate::vcpu::Vcpu;
use crate::vstate::vm::{create_vm, open_kvm};
use crate::GuestMemoryMmap;

/// Where the tiny guests' code is loaded and starts (CS:IP = 0:0x1000).
pub const CODE: u64 = 0x1000;
/// The tiny guests' RAM: 64 KiB at guest address 0.
pub const TINY_RAM: usize = 0x10000;

/// A VM with [`TINY_RAM`] of RAM holding `code` at [`CODE`]. The caller keeps the
/// returned memory alive until the VM and its vCPUs are gone.
pub fn tiny_vm(code: &[u8]) -> (VmFd, GuestMemoryMmap) {
    let kvm = open_kvm().unwrap();
    let vm = create_vm(&kvm).unwrap();
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), TINY_RAM)]).unwrap();
    mem.write_slice(code, GuestAddress(CODE)).unwrap();
    // SAFETY: the caller keeps `mem` alive until after the VM and vCPUs are gone (see
    // the doc comment); every test here does.
    unsafe { register_guest_memory(&vm, &mem).unwrap() };
    (vm, mem)
}

/// Set `vcpu` to run real-mode code at 0:[`CODE`] (CS base and selector 0, flags 2,
/// other registers 0).
pub fn start_real_mode(vcpu: &VcpuFd) {
    let mut sregs = vcpu.get_sregs().unwrap();
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs).unwrap();
    let regs = kvm_bindings::kvm_regs {
        rip: CODE,
        rflags: 2,
        ..Default::default()
    };
    vcpu.set_regs(&regs).unwrap();
}

/// A husk vCPU 0 in real mode at 0:[`CODE`], with KVM's supported CPUID (as at boot: a
/// saved state carries it and restore refuses an empty one).
pub fn real_mode_vcpu(vm: &VmFd, io: Bus, mmio: Bus, stop: &StopSignal) -> Vcpu {
    let vcpu = Vcpu::new(vm, 0, io, mmio, stop.try_clone().unwrap()).unwrap();
    let supported = open_kvm()
        .unwrap()
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .unwrap();
    vcpu.fd().set_cpuid2(&supported).unwrap();
    start_real_mode(vcpu.fd());
    vcpu
}

/// Put an i8042 controller (whose reset command stops the VM through `stop`) on `io`
/// at port 0x60.
pub fn insert_i8042(io: &mut Bus, stop: &StopSignal) {
    io.insert(
        Arc::new(Mutex::new(I8042::new(stop.try_clone().unwrap()))),
        0x60,
        I8042_PORTS,
    )
    .unwrap();
}

/// A console writer that appends into shared memory, to read back what a guest printed.
#[derive(Clone, Default)]
pub struct SharedBuf(pub Arc<Mutex<Vec<u8>>>);

impl Write for SharedBuf {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
