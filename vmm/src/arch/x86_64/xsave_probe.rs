//! Does XSAVE work for a guest on this host? The static check ([`super::cpuid::xsave_problem`])
//! reads KVM's supported leaf 0xD; this probe also checks what a guest sees at run time:
//! it runs a few instructions in a throwaway VM that enable every supported XSAVE
//! component with `XSETBV` and then read the XSAVE area size with `CPUID(0xD, 0)`. KVM
//! updates that size when the guest writes XCR0; under a nested KVM whose outer
//! hypervisor does not intercept `XSETBV` for it (the emulated test host: KVM on QEMU
//! TCG), the size stays at 576 bytes and a Linux guest reports "XSAVE consistency
//! problem" and disables XSAVE after trusting the wrong size.
//!
//! The probe only runs where that can happen: when husk itself runs in a virtual
//! machine (CPUID hypervisor bit) and the static check passed. On bare metal it costs
//! nothing. It must run before the VMM thread's seccomp filter is installed (it opens
//! `/dev/kvm`); the result is cached for the process.

use std::sync::OnceLock;

use kvm_bindings::CpuId;
use kvm_ioctls::{Kvm, VcpuExit};
use vm_memory::{Bytes, GuestAddress};

use super::cpuid::{filter_cpuid, CpuidConfig};
use crate::GuestMemoryMmap;

/// Errors running the probe (the probe could not say either way).
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// A KVM call failed.
    #[error("KVM failed to {0}")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
    /// The probe's memory could not be set up.
    #[error("cannot set up the probe VM's memory: {0}")]
    Memory(String),
    /// The probe guest ended in an unexpected way.
    #[error("the probe guest stopped unexpectedly: {0}")]
    Guest(String),
}

const CODE: u64 = 0x400;
const RESULT_PORT: u16 = 0x10;
const CR4_OSXSAVE: u64 = 1 << 18;

/// The probe guest (16-bit real mode): XSETBV(XCR0 = `xcr0`), CPUID(0xD, 0), output
/// EBX on [`RESULT_PORT`], HLT.
fn probe_code(xcr0: u64) -> Vec<u8> {
    let mut c = Vec::new();
    c.extend_from_slice(&[0x66, 0xb8]); // mov eax, imm32
    c.extend_from_slice(&(xcr0 as u32).to_le_bytes());
    c.extend_from_slice(&[0x66, 0xba]); // mov edx, imm32
    c.extend_from_slice(&((xcr0 >> 32) as u32).to_le_bytes());
    c.extend_from_slice(&[0x66, 0x31, 0xc9]); // xor ecx, ecx
    c.extend_from_slice(&[0x0f, 0x01, 0xd1]); // xsetbv
    c.extend_from_slice(&[0x66, 0xb8, 0x0d, 0, 0, 0]); // mov eax, 0xd
    c.extend_from_slice(&[0x66, 0x31, 0xc9]); // xor ecx, ecx
    c.extend_from_slice(&[0x0f, 0xa2]); // cpuid
    c.extend_from_slice(&[0x66, 0x89, 0xd8]); // mov eax, ebx
    c.extend_from_slice(&[0xba]); // mov dx, imm16
    c.extend_from_slice(&RESULT_PORT.to_le_bytes());
    c.extend_from_slice(&[0x66, 0xef]); // out dx, eax
    c.push(0xf4); // hlt
    c
}

/// Run the probe on this host's KVM: `Ok(Some(why))` when the guest-visible XSAVE size
/// does not follow XCR0, `Ok(None)` when it does (or XSAVE is not supported at all).
pub fn probe(supported: &CpuId) -> Result<Option<String>, ProbeError> {
    let Some(d0) = supported
        .as_slice()
        .iter()
        .find(|e| e.function == 0xd && e.index == 0)
    else {
        return Ok(None);
    };
    let xcr0 = u64::from(d0.eax) | (u64::from(d0.edx) << 32);
    let expected = d0.ebx;

    let kvm = Kvm::new().map_err(|e| ProbeError::Kvm("open /dev/kvm", e))?;
    let vm = kvm
        .create_vm()
        .map_err(|e| ProbeError::Kvm("create the probe VM", e))?;
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)])
        .map_err(|e| ProbeError::Memory(e.to_string()))?;
    // HLT everywhere else: a fault sends the guest to a HLT, not into the weeds.
    mem.write_slice(&[0xf4; 0x1000], GuestAddress(0))
        .and_then(|()| mem.write_slice(&probe_code(xcr0), GuestAddress(CODE)))
        .map_err(|e| ProbeError::Memory(e.to_string()))?;
    // SAFETY: `mem` outlives `vm`: both are locals and `vm` is declared after `mem`,
    // so it is dropped first.
    unsafe { crate::vstate::memory::register_guest_memory(&vm, &mem) }
        .map_err(|e| ProbeError::Memory(e.to_string()))?;
    let mut vcpu = vm
        .create_vcpu(0)
        .map_err(|e| ProbeError::Kvm("create the probe vCPU", e))?;
    let cpuid = filter_cpuid(
        supported,
        CpuidConfig {
            cpu_index: 0,
            cpu_count: 1,
            tsc_deadline: false,
        },
        None,
    );
    vcpu.set_cpuid2(&cpuid)
        .map_err(|e| ProbeError::Kvm("set the probe vCPU's CPUID", e))?;
    let mut sregs = vcpu
        .get_sregs()
        .map_err(|e| ProbeError::Kvm("read the probe vCPU's sregs", e))?;
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    sregs.cr4 |= CR4_OSXSAVE;
    vcpu.set_sregs(&sregs)
        .map_err(|e| ProbeError::Kvm("set the probe vCPU's sregs", e))?;
    let regs = kvm_bindings::kvm_regs {
        rip: CODE,
        rflags: 2,
        ..Default::default()
    };
    vcpu.set_regs(&regs)
        .map_err(|e| ProbeError::Kvm("set the probe vCPU's registers", e))?;

    let mut size = None;
    // The guest is straight-line code: a handful of exits at most.
    for _ in 0..16 {
        match vcpu.run() {
            Ok(VcpuExit::IoOut(RESULT_PORT, data)) if data.len() == 4 => {
                size = Some(u32::from_le_bytes([data[0], data[1], data[2], data[3]]));
            }
            Ok(VcpuExit::Hlt) => break,
            Ok(other) => return Err(ProbeError::Guest(format!("{other:?}"))),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
            Err(e) => return Err(ProbeError::Kvm("run the probe vCPU", e)),
        }
    }
    match size {
        Some(s) if s == expected => Ok(None),
        Some(s) => Ok(Some(format!(
            "after enabling XSAVE components {xcr0:#x} the guest sees an XSAVE area of {s} \
             bytes instead of {expected}: the host does not track the guest's XCR0"
        ))),
        None => Ok(Some(format!(
            "a guest could not enable XSAVE components {xcr0:#x} (XSETBV faulted)"
        ))),
    }
}

/// Whether husk runs inside a virtual machine (the host CPU's hypervisor bit).
fn host_is_virtual() -> bool {
    // CPUID is available on every x86-64 CPU.
    let leaf1 = std::arch::x86_64::__cpuid(1);
    leaf1.ecx & (1 << 31) != 0
}

/// Why XSAVE must be hidden from guests on this host, or `None`: the static check, and
/// on a virtual host the run-time probe. Computed once per process; a problem is
/// logged once (warn).
pub fn host_xsave_problem(supported: &CpuId) -> Option<String> {
    static RESULT: OnceLock<Option<String>> = OnceLock::new();
    RESULT
        .get_or_init(|| {
            let xsave = supported
                .as_slice()
                .iter()
                .any(|e| e.function == 1 && e.ecx & (1 << 26) != 0);
            if !xsave {
                return None;
            }
            let problem = super::cpuid::xsave_problem(supported.as_slice()).or_else(|| {
                if !host_is_virtual() {
                    return None;
                }
                probe(supported).unwrap_or_else(|e| {
                    log::info!("cannot probe XSAVE in a guest, trusting KVM's CPUID: {e}");
                    None
                })
            });
            if let Some(p) = &problem {
                log::warn!(
                    "hiding XSAVE (and AVX, AVX2, AVX-512) from the guest: this host's XSAVE \
                     support is inconsistent ({p})"
                );
            }
            problem
        })
        .clone()
}
