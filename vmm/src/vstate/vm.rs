//! The KVM VM: creation, in-kernel irqchip (PIC, IOAPIC, LAPIC), PIT and the x86 TSS
//! and identity-map addresses. [`Vm`] wraps the VM fd; the VM-wide state a snapshot
//! needs (irqchip, PIT, kvmclock) will be saved and restored through it.

use kvm_bindings::{kvm_pit_config, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VmFd};

use crate::arch::x86_64::layout::{KVM_IDENTITY_MAP_ADDRESS, KVM_TSS_ADDRESS};

/// Errors setting up the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// /dev/kvm does not exist.
    #[error("/dev/kvm does not exist: load the kvm module (kvm_intel or kvm_amd) or run on a host with virtualization")]
    KvmMissing,
    /// /dev/kvm is not accessible.
    #[error("no permission to open /dev/kvm: run as root or add your user to the kvm group")]
    KvmPermission,
    /// Opening /dev/kvm failed otherwise.
    #[error("cannot open /dev/kvm")]
    KvmOpen(#[source] kvm_ioctls::Error),
    /// A VM ioctl failed.
    #[error("KVM failed to {0}")]
    Ioctl(&'static str, #[source] kvm_ioctls::Error),
}

/// Open /dev/kvm, mapping the common failures to clear errors.
pub fn open_kvm() -> Result<Kvm, VmError> {
    Kvm::new().map_err(|e| match e.errno() {
        libc::ENOENT => VmError::KvmMissing,
        libc::EACCES | libc::EPERM => VmError::KvmPermission,
        _ => VmError::KvmOpen(e),
    })
}

/// Whether the host's KVM is PVM-backed (no hardware virtualization: a guest kernel
/// that is not PVM-aware runs emulated, very slowly).
pub fn host_kvm_is_pvm() -> bool {
    std::path::Path::new("/sys/module/kvm_pvm").exists()
}

/// Create a VM with the in-kernel irqchip and PIT.
pub fn create_vm(kvm: &Kvm) -> Result<VmFd, VmError> {
    let vm = kvm
        .create_vm()
        .map_err(|e| VmError::Ioctl("create a VM", e))?;
    vm.set_tss_address(KVM_TSS_ADDRESS as usize)
        .map_err(|e| VmError::Ioctl("set the TSS address", e))?;
    vm.set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS)
        .map_err(|e| VmError::Ioctl("set the identity map address", e))?;
    vm.create_irq_chip()
        .map_err(|e| VmError::Ioctl("create the in-kernel irqchip", e))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit)
        .map_err(|e| VmError::Ioctl("create the in-kernel PIT", e))?;
    Ok(vm)
}

/// The KVM VM of one microVM: the VM fd, created with its in-kernel irqchip and PIT.
/// Owns everything VM-wide (as opposed to per-vCPU or per-device).
#[derive(Debug)]
pub struct Vm {
    fd: VmFd,
}

impl Vm {
    /// Create the VM with the in-kernel irqchip and PIT (see [`create_vm`]).
    pub fn new(kvm: &Kvm) -> Result<Self, VmError> {
        Ok(Self::from_fd(create_vm(kvm)?))
    }

    /// Wrap a VM fd made by [`create_vm`] (tests that build VMs by hand).
    pub fn from_fd(fd: VmFd) -> Self {
        Self { fd }
    }

    /// The KVM VM fd.
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_a_vm_with_irqchip_and_pit() {
        let kvm = open_kvm().unwrap();
        let vm = Vm::new(&kvm).unwrap();
        // A second irqchip is refused: proves the first one exists.
        assert!(vm.fd().create_irq_chip().is_err());
    }
}
