//! The guest CPUID: KVM's supported set (`KVM_GET_SUPPORTED_CPUID`), filtered to what
//! husk wants a guest to see, with a per-vCPU APIC ID.
//!
//! XSAVE is hidden by default: under nested virtualization on an emulated CPU (QEMU
//! TCG) the XSAVE area sizes reported in leaf 0xD disagree with what the guest kernel
//! computes ("XSAVE consistency problem: size 832 != kernel_size 576") and the kernel
//! then disables XSAVE anyway. So husk clears XSAVE, OSXSAVE and everything that needs
//! XSAVE-managed state (AVX, AVX2, FMA, F16C, AVX-512*, AMX, MPX, PKU, CET, XOP/FMA4)
//! and removes leaf 0xD, keeping the guest's view consistent. Nested-virtualization
//! bits (VMX, SVM) are hidden too: husk guests are not hypervisors.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

/// Leaf 1 ECX bits.
mod leaf1_ecx {
    pub const VMX: u32 = 1 << 5;
    pub const FMA: u32 = 1 << 12;
    pub const XSAVE: u32 = 1 << 26;
    pub const OSXSAVE: u32 = 1 << 27;
    pub const AVX: u32 = 1 << 28;
    pub const F16C: u32 = 1 << 29;
    pub const TSC_DEADLINE: u32 = 1 << 24;
    pub const HYPERVISOR: u32 = 1 << 31;
}
/// Leaf 1 EDX HTT (more than one logical processor per package).
const LEAF1_EDX_HTT: u32 = 1 << 28;

/// Leaf 7.0 EBX bits that need XSAVE state: AVX2, MPX, AVX512F/DQ/IFMA/PF/ER/CD/BW/VL.
const LEAF7_EBX_XSAVE_DEPS: u32 = (1 << 5)
    | (1 << 14)
    | (1 << 16)
    | (1 << 17)
    | (1 << 21)
    | (1 << 26)
    | (1 << 27)
    | (1 << 28)
    | (1 << 30)
    | (1 << 31);
/// Leaf 7.0 EBX Intel PT (needs XSAVES-managed state).
const LEAF7_EBX_INTEL_PT: u32 = 1 << 25;
/// Leaf 7.0 ECX: AVX512_VBMI, PKU, OSPKE, CET_SS, AVX512_VBMI2, VAES, VPCLMULQDQ,
/// AVX512_VNNI, AVX512_BITALG, AVX512_VPOPCNTDQ.
const LEAF7_ECX_XSAVE_DEPS: u32 = (1 << 1)
    | (1 << 3)
    | (1 << 4)
    | (1 << 7)
    | (1 << 6)
    | (1 << 9)
    | (1 << 10)
    | (1 << 11)
    | (1 << 12)
    | (1 << 14);
/// Leaf 7.0 EDX: AVX512_4VNNIW, AVX512_4FMAPS, AVX512_VP2INTERSECT, CET_IBT,
/// AMX_BF16, AVX512_FP16, AMX_TILE, AMX_INT8.
const LEAF7_EDX_XSAVE_DEPS: u32 =
    (1 << 2) | (1 << 3) | (1 << 8) | (1 << 20) | (1 << 22) | (1 << 23) | (1 << 24) | (1 << 25);
/// Leaf 7.1 EAX: AVX_VNNI, AVX512_BF16, AVX_IFMA and friends (bits 4, 5, 23).
const LEAF7_1_EAX_XSAVE_DEPS: u32 = (1 << 4) | (1 << 5) | (1 << 23);
/// Leaf 0x8000_0001 ECX: SVM, XOP, FMA4.
const EXT1_ECX_HIDDEN: u32 = (1 << 2) | (1 << 11) | (1 << 16);

/// Filter options.
#[derive(Debug, Clone, Copy)]
pub struct CpuidConfig {
    /// This vCPU's index (= its APIC ID).
    pub cpu_index: u8,
    /// Number of vCPUs in the VM.
    pub cpu_count: u8,
    /// KVM emulates the LAPIC TSC-deadline timer (`KVM_CAP_TSC_DEADLINE_TIMER`).
    /// KVM does not report it in the supported CPUID, so it is added here: without
    /// it the guest falls back to the periodic LAPIC timer, whose calibration fails
    /// under nested emulation ("APIC timer disabled due to verification failure").
    pub tsc_deadline: bool,
}

/// Number of bits needed to hold IDs `0..count`.
fn id_bits(count: u8) -> u32 {
    if count <= 1 {
        0
    } else {
        u32::from(count - 1).ilog2() + 1
    }
}

fn filter_entry(entry: &mut kvm_cpuid_entry2, cfg: CpuidConfig) {
    let apic_id = u32::from(cfg.cpu_index);
    match (entry.function, entry.index) {
        (1, _) => {
            entry.ecx &= !(leaf1_ecx::XSAVE
                | leaf1_ecx::OSXSAVE
                | leaf1_ecx::AVX
                | leaf1_ecx::FMA
                | leaf1_ecx::F16C
                | leaf1_ecx::VMX);
            entry.ecx |= leaf1_ecx::HYPERVISOR;
            if cfg.tsc_deadline {
                entry.ecx |= leaf1_ecx::TSC_DEADLINE;
            }
            // EBX: [31:24] initial APIC ID, [23:16] logical processors, [15:8] CLFLUSH
            // line size in 8-byte units.
            entry.ebx = (apic_id << 24) | (u32::from(cfg.cpu_count.max(1)) << 16) | (8 << 8);
            if cfg.cpu_count > 1 {
                entry.edx |= LEAF1_EDX_HTT;
            } else {
                entry.edx &= !LEAF1_EDX_HTT;
            }
        }
        (7, 0) => {
            entry.ebx &= !(LEAF7_EBX_XSAVE_DEPS | LEAF7_EBX_INTEL_PT);
            entry.ecx &= !LEAF7_ECX_XSAVE_DEPS;
            entry.edx &= !LEAF7_EDX_XSAVE_DEPS;
        }
        (7, 1) => entry.eax &= !LEAF7_1_EAX_XSAVE_DEPS,
        (0xb, index) => {
            // Extended topology: one thread per core, all vCPUs cores of one package.
            entry.edx = apic_id;
            match index {
                0 => {
                    entry.eax = 0;
                    entry.ebx = 1;
                    entry.ecx = 1 << 8; // level 0, type SMT
                }
                1 => {
                    entry.eax = id_bits(cfg.cpu_count);
                    entry.ebx = u32::from(cfg.cpu_count.max(1));
                    entry.ecx = 1 | (2 << 8); // level 1, type core
                }
                _ => {
                    entry.eax = 0;
                    entry.ebx = 0;
                    entry.ecx = index & 0xff; // level type 0: invalid
                }
            }
        }
        (0x8000_0001, _) => entry.ecx &= !EXT1_ECX_HIDDEN,
        _ => {}
    }
}

/// Filter KVM's supported CPUID for one vCPU (see the module docs for what and why).
pub fn filter_cpuid(supported: &CpuId, cfg: CpuidConfig) -> CpuId {
    let entries: Vec<kvm_cpuid_entry2> = supported
        .as_slice()
        .iter()
        .filter(|e| e.function != 0xd)
        .map(|e| {
            let mut e = *e;
            filter_entry(&mut e, cfg);
            e
        })
        .collect();
    // from_entries only fails when there are more entries than KVM's maximum, and we
    // never add entries.
    CpuId::from_entries(&entries).unwrap_or_else(|_| supported.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(
        function: u32,
        index: u32,
        eax: u32,
        ebx: u32,
        ecx: u32,
        edx: u32,
    ) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax,
            ebx,
            ecx,
            edx,
            ..Default::default()
        }
    }

    #[test]
    fn hides_xsave_and_sets_topology() {
        let supported = CpuId::from_entries(&[
            entry(0, 0, 0xd, 0, 0, 0),
            entry(1, 0, 0x806f8, 0xff00_0800, u32::MAX, u32::MAX),
            entry(7, 0, 0, u32::MAX, u32::MAX, u32::MAX),
            entry(0xb, 0, 1, 2, 0x100, 9),
            entry(0xb, 1, 4, 16, 0x201, 9),
            entry(0xd, 0, 0x7, 0x340, 0x340, 0),
            entry(0xd, 1, 0xf, 0, 0, 0),
            entry(0x4000_0000, 0, 0x4000_0001, 0x4b4d_564b, 0x564b_4d56, 0x4d),
            entry(0x8000_0001, 0, 0, 0, u32::MAX, 0),
        ])
        .unwrap();
        let out = filter_cpuid(
            &supported,
            CpuidConfig {
                cpu_index: 2,
                cpu_count: 3,
                tsc_deadline: true,
            },
        );
        let s = out.as_slice();
        assert_eq!(s.len(), 7, "leaf 0xd removed, others kept");
        assert!(s.iter().all(|e| e.function != 0xd));
        let l1 = s.iter().find(|e| e.function == 1).unwrap();
        assert_eq!(l1.ecx & (1 << 26), 0, "XSAVE hidden");
        assert_eq!(l1.ecx & (1 << 27), 0, "OSXSAVE hidden");
        assert_eq!(l1.ecx & (1 << 28), 0, "AVX hidden");
        assert_eq!(l1.ecx & (1 << 5), 0, "VMX hidden");
        assert_ne!(l1.ecx & (1 << 31), 0, "hypervisor bit");
        assert_ne!(l1.ecx & 1, 0, "SSE3 kept");
        assert_ne!(l1.ecx & (1 << 24), 0, "TSC deadline timer advertised");
        assert_eq!(l1.ebx >> 24, 2, "APIC ID");
        assert_eq!((l1.ebx >> 16) & 0xff, 3);
        assert_ne!(l1.edx & LEAF1_EDX_HTT, 0);
        let l7 = s.iter().find(|e| e.function == 7).unwrap();
        assert_eq!(l7.ebx & (1 << 5), 0, "AVX2 hidden");
        assert_eq!(l7.ebx & (1 << 16), 0, "AVX512F hidden");
        assert_ne!(l7.ebx & (1 << 3), 0, "BMI1 kept");
        let b1 = s
            .iter()
            .find(|e| e.function == 0xb && e.index == 1)
            .unwrap();
        assert_eq!((b1.eax, b1.ebx, b1.edx), (2, 3, 2));
        let ext = s.iter().find(|e| e.function == 0x8000_0001).unwrap();
        assert_eq!(ext.ecx & (1 << 2), 0, "SVM hidden");
        let kvm = s.iter().find(|e| e.function == 0x4000_0000).unwrap();
        assert_eq!(kvm.ebx, 0x4b4d_564b, "KVM signature leaf kept");
    }

    #[test]
    fn single_cpu_has_no_htt() {
        let supported = CpuId::from_entries(&[entry(1, 0, 0, 0, 0, u32::MAX)]).unwrap();
        let out = filter_cpuid(
            &supported,
            CpuidConfig {
                cpu_index: 0,
                cpu_count: 1,
                tsc_deadline: false,
            },
        );
        assert_eq!(out.as_slice()[0].edx & LEAF1_EDX_HTT, 0);
        assert_eq!(
            out.as_slice()[0].ecx & (1 << 24),
            0,
            "no TSC deadline unless KVM has it"
        );
        assert_eq!(id_bits(1), 0);
        assert_eq!(id_bits(2), 1);
        assert_eq!(id_bits(4), 2);
        assert_eq!(id_bits(5), 3);
    }
}
