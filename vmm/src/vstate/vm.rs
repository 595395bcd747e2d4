//! The KVM VM: creation, in-kernel irqchip (PIC, IOAPIC, LAPIC), PIT and the x86 TSS
//! and identity-map addresses. [`Vm`] wraps the VM fd; the VM-wide state a snapshot
//! needs (irqchip, PIT, kvmclock) will be saved and restored through it.

use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_config, kvm_pit_state2, KVM_IRQCHIP_IOAPIC,
    KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Kvm, VmFd};
use serde::{Deserialize, Serialize};

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
    /// A saved VM state is malformed.
    #[error("invalid saved VM state: {0}")]
    BadState(&'static str),
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

/// The VM-wide state a snapshot needs: the in-kernel irqchip (both PICs and the
/// IOAPIC), the PIT and the kvmclock.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmState {
    /// PIC master (`KVM_GET_IRQCHIP`, chip 0).
    pub pic_master: kvm_irqchip,
    /// PIC slave (chip 1).
    pub pic_slave: kvm_irqchip,
    /// IOAPIC (chip 2).
    pub ioapic: kvm_irqchip,
    /// PIT channels (`KVM_GET_PIT2`).
    pub pit: kvm_pit_state2,
    /// kvmclock (`KVM_GET_CLOCK`).
    pub clock: kvm_clock_data,
}

impl Vm {
    fn get_chip(&self, id: u32) -> Result<kvm_irqchip, VmError> {
        let mut chip = kvm_irqchip {
            chip_id: id,
            ..Default::default()
        };
        self.fd
            .get_irqchip(&mut chip)
            .map_err(|e| VmError::Ioctl("read the irqchip state", e))?;
        Ok(chip)
    }

    /// Save the VM-wide state (vCPUs paused).
    pub fn save_state(&self) -> Result<VmState, VmError> {
        Ok(VmState {
            pic_master: self.get_chip(KVM_IRQCHIP_PIC_MASTER)?,
            pic_slave: self.get_chip(KVM_IRQCHIP_PIC_SLAVE)?,
            ioapic: self.get_chip(KVM_IRQCHIP_IOAPIC)?,
            pit: self
                .fd
                .get_pit2()
                .map_err(|e| VmError::Ioctl("read the PIT state", e))?,
            clock: self
                .fd
                .get_clock()
                .map_err(|e| VmError::Ioctl("read the kvmclock", e))?,
        })
    }

    /// Load a saved VM-wide state into this fresh VM (before any vCPU runs). The
    /// chip ids are checked here (they select what KVM writes); KVM validates the
    /// rest. The clock is set without flags: the guest's clock continues from the
    /// saved value (wall time is corrected by the agent's `Restored` handshake).
    pub fn restore_state(&self, state: &VmState) -> Result<(), VmError> {
        for (chip, id) in [
            (&state.pic_master, KVM_IRQCHIP_PIC_MASTER),
            (&state.pic_slave, KVM_IRQCHIP_PIC_SLAVE),
            (&state.ioapic, KVM_IRQCHIP_IOAPIC),
        ] {
            if chip.chip_id != id {
                return Err(VmError::BadState("irqchip id"));
            }
            self.fd
                .set_irqchip(chip)
                .map_err(|e| VmError::Ioctl("restore the irqchip state", e))?;
        }
        self.fd
            .set_pit2(&state.pit)
            .map_err(|e| VmError::Ioctl("restore the PIT state", e))?;
        let clock = kvm_clock_data {
            clock: state.clock.clock,
            ..Default::default()
        };
        self.fd
            .set_clock(&clock)
            .map_err(|e| VmError::Ioctl("restore the kvmclock", e))?;
        Ok(())
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

    #[test]
    fn vm_state_survives_save_restore_into_a_fresh_vm() {
        let kvm = open_kvm().unwrap();
        let a = Vm::new(&kvm).unwrap();
        let mut st = a.save_state().unwrap();
        // Change something visible in each part: an IOAPIC redirection entry, the
        // PIC master's IRQ base, the clock.
        // SAFETY: reading/writing plain-data union members of a zero-initialised
        // kvm_irqchip.
        unsafe {
            st.ioapic.chip.ioapic.redirtbl[3].bits = 0x0001_0000_0000_0033;
            st.pic_master.chip.pic.irq_base = 0x20;
        }
        st.clock.clock += 1_000_000_000;
        a.restore_state(&st).unwrap();
        let saved = a.save_state().unwrap();
        let b = Vm::new(&kvm).unwrap();
        b.restore_state(&saved).unwrap();
        let again = b.save_state().unwrap();
        // SAFETY: as above.
        unsafe {
            assert_eq!(
                again.ioapic.chip.ioapic.redirtbl[3].bits,
                0x0001_0000_0000_0033
            );
            assert_eq!(again.pic_master.chip.pic.irq_base, 0x20);
        }
        assert!(again.clock.clock >= saved.clock.clock);
        let mut bad = saved.clone();
        bad.ioapic.chip_id = 7;
        assert!(matches!(b.restore_state(&bad), Err(VmError::BadState(_))));
    }
}
