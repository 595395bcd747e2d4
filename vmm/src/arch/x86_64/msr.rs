//! The MSRs set on every vCPU before boot.

use kvm_bindings::{kvm_msr_entry, Msrs};

/// IA32_TIME_STAMP_COUNTER.
pub const MSR_IA32_TSC: u32 = 0x10;
/// IA32_SYSENTER_CS.
pub const MSR_IA32_SYSENTER_CS: u32 = 0x174;
/// IA32_SYSENTER_ESP.
pub const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
/// IA32_SYSENTER_EIP.
pub const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
/// IA32_MISC_ENABLE.
pub const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
/// IA32_MTRR_DEF_TYPE.
pub const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
/// STAR.
pub const MSR_STAR: u32 = 0xc000_0081;
/// LSTAR.
pub const MSR_LSTAR: u32 = 0xc000_0082;
/// CSTAR.
pub const MSR_CSTAR: u32 = 0xc000_0083;
/// SYSCALL_MASK (FMASK).
pub const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
/// KERNEL_GS_BASE.
pub const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

/// IA32_MISC_ENABLE: fast string operations enabled.
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRdefType: MTRRs enabled (bit 11), default type write-back (6).
const MTRR_ENABLE_WB: u64 = (1 << 11) | 6;

/// The boot MSR values: syscall/sysenter MSRs zeroed, TSC 0, fast strings on, MTRRs on
/// with write-back as the default memory type.
pub fn boot_msr_entries() -> Vec<kvm_msr_entry> {
    [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WB),
    ]
    .into_iter()
    .map(|(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect()
}

/// Errors setting MSRs.
#[derive(Debug, thiserror::Error)]
pub enum MsrError {
    /// Building the MSR list failed.
    #[error("cannot build the MSR list")]
    Build(#[source] vmm_sys_util::fam::Error),
    /// KVM_SET_MSRS failed.
    #[error("KVM refused the boot MSRs")]
    Set(#[source] kvm_ioctls::Error),
    /// KVM accepted only some MSRs.
    #[error("KVM accepted only {set} of {wanted} boot MSRs; the host KVM is missing MSR support")]
    Partial {
        /// How many were set.
        set: usize,
        /// How many were requested.
        wanted: usize,
    },
}

/// Set the boot MSRs on `vcpu`.
pub fn setup_msrs(vcpu: &kvm_ioctls::VcpuFd) -> Result<(), MsrError> {
    let entries = boot_msr_entries();
    let msrs = Msrs::from_entries(&entries).map_err(MsrError::Build)?;
    let set = vcpu.set_msrs(&msrs).map_err(MsrError::Set)?;
    if set != entries.len() {
        return Err(MsrError::Partial {
            set,
            wanted: entries.len(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_msrs_have_the_required_values() {
        let e = boot_msr_entries();
        let get = |i| e.iter().find(|m| m.index == i).map(|m| m.data);
        assert_eq!(get(MSR_MTRR_DEF_TYPE), Some(0x806));
        assert_eq!(get(MSR_IA32_MISC_ENABLE), Some(1));
        assert_eq!(get(MSR_LSTAR), Some(0));
        assert_eq!(get(MSR_IA32_TSC), Some(0));
        assert_eq!(e.len(), 11);
    }
}
