//! The guest CPUID: KVM's supported set (`KVM_GET_SUPPORTED_CPUID`), filtered to what
//! husk wants a guest to see, with a per-vCPU APIC ID and a topology that matches the
//! vCPU count.
//!
//! XSAVE (and with it AVX, AVX2, AVX-512, AMX, ...) is exposed as KVM supports it, with
//! leaf 0xD kept as KVM computes it from the enabled XSAVE components. XSAVE is hidden
//! only when the host's XSAVE support is inconsistent: statically ([`xsave_problem`]:
//! the reported area sizes do not match the components' offsets and sizes) or at run
//! time ([`super::xsave_probe`]: on a nested host, a guest's XSETBV is not tracked, so
//! the size a guest reads stays at 576 bytes; the emulated KVM test host, nested KVM
//! on QEMU TCG, is such a host). A Linux guest would otherwise print "XSAVE
//! consistency problem" and disable XSAVE after trusting the broken sizes. Hiding
//! clears XSAVE, OSXSAVE and everything that needs XSAVE-managed state (AVX, AVX2, FMA,
//! F16C, AVX-512*, AMX, MPX, PKU, CET, XOP/FMA4) and removes leaf 0xD; it is logged
//! once.
//!
//! Also hidden: the virtual PMU (leaf 0xA, AMD's core performance counter extensions;
//! as Firecracker does: counters cost exits and leak host activity) and nested
//! virtualization (VMX, SVM: husk guests are not hypervisors).

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
/// Leaf 0x8000_0001 ECX: SVM.
const EXT1_ECX_SVM: u32 = 1 << 2;
/// Leaf 0x8000_0001 ECX: XOP, FMA4 (need XSAVE-managed AVX state).
const EXT1_ECX_XSAVE_DEPS: u32 = (1 << 11) | (1 << 16);
/// Leaf 0x8000_0001 ECX: PerfCtrExtCore, PerfCtrExtNB, PerfCtrExtLLC (AMD vPMU).
const EXT1_ECX_PMU: u32 = (1 << 23) | (1 << 24) | (1 << 28);
/// AMD's PerfMonV2 leaf.
const LEAF_AMD_PERFMON_V2: u32 = 0x8000_0022;

/// Size of the legacy XSAVE region (x87 + SSE, 512 bytes) plus the XSAVE header.
const XSAVE_LEGACY_AND_HEADER: u32 = 576;

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

/// `count` rounded up to a power of two, minus one: how CPUID encodes "maximum number
/// of addressable IDs" fields.
fn max_id(count: u8) -> u32 {
    (1u32 << id_bits(count)) - 1
}

fn find(entries: &[kvm_cpuid_entry2], function: u32, index: u32) -> Option<&kvm_cpuid_entry2> {
    entries
        .iter()
        .find(|e| e.function == function && e.index == index)
}

/// Why the host's XSAVE description (leaf 1 XSAVE, leaf 0xD) cannot be given to a
/// guest as it is, or `None` when it is consistent or XSAVE is not supported at all.
///
/// Checks what the guest kernel checks at boot: the standard-format area size (leaf
/// 0xD.0 EBX/ECX) must equal the end of the last enabled component (offset + size
/// from sub-leaves 2..63, at least 576 bytes), every component must lie after the
/// legacy area and header without overlapping another, and where the compacted format
/// is supported (XSAVEC) with a size reported (0xD.1 EBX), that size must equal the sum
/// of the component sizes (with their 64-byte alignment).
pub fn xsave_problem(entries: &[kvm_cpuid_entry2]) -> Option<String> {
    let leaf1 = find(entries, 1, 0)?;
    if leaf1.ecx & leaf1_ecx::XSAVE == 0 {
        return None;
    }
    let Some(d0) = find(entries, 0xd, 0) else {
        return Some("XSAVE is advertised but leaf 0xD is missing".into());
    };
    let xcr0 = u64::from(d0.eax) | (u64::from(d0.edx) << 32);
    if xcr0 & 0x3 != 0x3 {
        return Some(format!(
            "leaf 0xD.0 supports XCR0 {xcr0:#x} without x87 and SSE"
        ));
    }
    let d1 = find(entries, 0xd, 1);
    let xss = d1.map_or(0, |d| u64::from(d.ecx) | (u64::from(d.edx) << 32));
    let mut standard_end = XSAVE_LEGACY_AND_HEADER;
    let mut compacted = XSAVE_LEGACY_AND_HEADER;
    let mut user: Vec<(u32, u32, u32)> = Vec::new();
    for i in 2..64u32 {
        let bit = 1u64 << i;
        if (xcr0 | xss) & bit == 0 {
            continue;
        }
        let Some(c) = find(entries, 0xd, i) else {
            return Some(format!(
                "XSAVE component {i} is enabled but has no sub-leaf"
            ));
        };
        if c.eax == 0 {
            return Some(format!("XSAVE component {i} has size 0"));
        }
        // Compacted format: components in order, each 64-byte aligned if ECX bit 1.
        if c.ecx & 0x2 != 0 {
            compacted = compacted.next_multiple_of(64);
        }
        compacted = compacted.saturating_add(c.eax);
        if xcr0 & bit != 0 {
            // User (XCR0) components have a fixed offset in the standard format.
            if c.ebx < XSAVE_LEGACY_AND_HEADER {
                return Some(format!(
                    "XSAVE component {i} at offset {} overlaps the legacy area and header",
                    c.ebx
                ));
            }
            standard_end = standard_end.max(c.ebx.saturating_add(c.eax));
            user.push((c.ebx, c.eax, i));
        }
    }
    user.sort_unstable();
    for w in user.windows(2) {
        let ((off_a, size_a, a), (off_b, _, b)) = (w[0], w[1]);
        if off_a.saturating_add(size_a) > off_b {
            return Some(format!("XSAVE components {a} and {b} overlap"));
        }
    }
    if d0.ebx != standard_end || d0.ecx != standard_end {
        return Some(format!(
            "leaf 0xD.0 reports an XSAVE area of {} bytes (maximum {}), but its components \
             end at {standard_end}",
            d0.ebx, d0.ecx
        ));
    }
    if let Some(d1) = d1 {
        if d1.eax & XSAVEC != 0 && d1.ebx != 0 && d1.ebx != compacted {
            return Some(format!(
                "leaf 0xD.1 reports a compacted XSAVE area of {} bytes, but its components \
                 add up to {compacted}",
                d1.ebx
            ));
        }
    }
    None
}

/// Leaf 0xD.1 EAX: XSAVEC (compacted format) supported.
const XSAVEC: u32 = 1 << 1;

/// Hide XSAVE and everything that needs XSAVE-managed state.
fn hide_xsave(entry: &mut kvm_cpuid_entry2) {
    match (entry.function, entry.index) {
        (1, _) => {
            entry.ecx &= !(leaf1_ecx::XSAVE
                | leaf1_ecx::OSXSAVE
                | leaf1_ecx::AVX
                | leaf1_ecx::FMA
                | leaf1_ecx::F16C)
        }
        (7, 0) => {
            entry.ebx &= !(LEAF7_EBX_XSAVE_DEPS | LEAF7_EBX_INTEL_PT);
            entry.ecx &= !LEAF7_ECX_XSAVE_DEPS;
            entry.edx &= !LEAF7_EDX_XSAVE_DEPS;
        }
        (7, 1) => entry.eax &= !LEAF7_1_EAX_XSAVE_DEPS,
        (0x8000_0001, _) => entry.ecx &= !EXT1_ECX_XSAVE_DEPS,
        _ => {}
    }
}

/// Extended topology (leaves 0xB and 0x1F): one thread per core, all vCPUs cores of
/// one package.
fn set_extended_topology(entry: &mut kvm_cpuid_entry2, cfg: CpuidConfig) {
    entry.edx = u32::from(cfg.cpu_index);
    match entry.index {
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
        index => {
            entry.eax = 0;
            entry.ebx = 0;
            entry.ecx = index & 0xff; // level type 0: invalid
        }
    }
}

/// Cache level from a leaf 4 / 0x8000_001D EAX (bits 7:5), and whether the sub-leaf
/// describes a cache at all (type in bits 4:0 non-zero).
fn cache_level(eax: u32) -> Option<u32> {
    (eax & 0x1f != 0).then_some((eax >> 5) & 0x7)
}

/// EAX bits 25:14 of leaves 4 and 0x8000_001D: logical processors sharing this cache,
/// minus one. L1 and L2 are per core (one thread per core), L3 is shared by the package.
fn set_cache_sharing(eax: &mut u32, count: u8) {
    if let Some(level) = cache_level(*eax) {
        let sharing = if level >= 3 { max_id(count) } else { 0 };
        *eax = (*eax & !(0xfff << 14)) | ((sharing & 0xfff) << 14);
    }
}

fn filter_entry(entry: &mut kvm_cpuid_entry2, cfg: CpuidConfig) {
    let apic_id = u32::from(cfg.cpu_index);
    match (entry.function, entry.index) {
        (1, _) => {
            // OSXSAVE mirrors the guest's CR4.OSXSAVE: KVM sets it at run time.
            entry.ecx &= !(leaf1_ecx::OSXSAVE | leaf1_ecx::VMX);
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
        // Deterministic cache parameters (Intel): [31:26] cores per package - 1.
        (4, _) if cache_level(entry.eax).is_some() => {
            set_cache_sharing(&mut entry.eax, cfg.cpu_count);
            entry.eax = (entry.eax & !(0x3f << 26)) | ((max_id(cfg.cpu_count) & 0x3f) << 26);
        }
        (0xa, _) => {
            // Architectural performance monitoring: version 0, no counters.
            entry.eax = 0;
            entry.ebx = 0;
            entry.ecx = 0;
            entry.edx = 0;
        }
        (0xb, _) | (0x1f, _) => set_extended_topology(entry, cfg),
        (0x8000_0001, _) => entry.ecx &= !(EXT1_ECX_SVM | EXT1_ECX_PMU),
        (0x8000_000a, _) => {
            // SVM features (NPT, VGIF, ...): nothing to describe with SVM hidden.
            entry.eax = 0;
            entry.ebx = 0;
            entry.ecx = 0;
            entry.edx = 0;
        }
        (0x8000_0008, _) => {
            // AMD: ECX [7:0] cores - 1, [15:12] APIC ID bits for the core.
            entry.ecx = (entry.ecx & !0xf0ff)
                | (u32::from(cfg.cpu_count.max(1) - 1) & 0xff)
                | (id_bits(cfg.cpu_count) << 12);
        }
        (0x8000_001d, _) => set_cache_sharing(&mut entry.eax, cfg.cpu_count),
        (0x8000_001e, _) => {
            // AMD: extended APIC ID; compute unit (core) ID with one thread each;
            // one node.
            entry.eax = apic_id;
            entry.ebx = apic_id & 0xff;
            entry.ecx = 0;
            entry.edx = 0;
        }
        _ => {}
    }
}

/// Filter KVM's supported CPUID for one vCPU (see the module docs for what and why).
/// XSAVE is hidden when the host does not support it, when its leaf 0xD is
/// inconsistent ([`xsave_problem`]), or when `runtime_problem` says so (see
/// [`super::xsave_probe::host_xsave_problem`], which also logs it).
pub fn filter_cpuid(supported: &CpuId, cfg: CpuidConfig, runtime_problem: Option<&str>) -> CpuId {
    let xsave_supported =
        find(supported.as_slice(), 1, 0).is_some_and(|e| e.ecx & leaf1_ecx::XSAVE != 0);
    let hide = !xsave_supported
        || runtime_problem.is_some()
        || xsave_problem(supported.as_slice()).is_some();
    let entries: Vec<kvm_cpuid_entry2> = supported
        .as_slice()
        .iter()
        .filter(|e| !(hide && e.function == 0xd) && e.function != LEAF_AMD_PERFMON_V2)
        .map(|e| {
            let mut e = *e;
            filter_entry(&mut e, cfg);
            if hide {
                hide_xsave(&mut e);
            }
            e
        })
        .collect();
    let mut entries = entries;
    add_topology_subleaves(&mut entries, cfg);
    // from_entries only fails with more than KVM_MAX_CPUID_ENTRIES (256) entries; KVM
    // reports far fewer and at most six are added.
    CpuId::from_entries(&entries).unwrap_or_else(|_| supported.clone())
}

/// KVM often reports only sub-leaf 0 of the extended topology leaves (0xB, 0x1F), all
/// zeros. The guest then finds no core level and takes every vCPU for a package of its
/// own (on AMD it also marks the TSC unstable: "TSCs unsynchronized"). Add the SMT and
/// core levels and the terminating invalid level where missing.
fn add_topology_subleaves(entries: &mut Vec<kvm_cpuid_entry2>, cfg: CpuidConfig) {
    let max_basic = find(entries, 0, 0).map_or(0, |e| e.eax);
    for leaf in [0xb, 0x1f] {
        let present = entries.iter().any(|e| e.function == leaf);
        // 0xB whenever the basic range reaches it; 0x1F only where the host has it.
        if max_basic < leaf || (leaf == 0x1f && !present) {
            continue;
        }
        for index in 0..=2 {
            if find(entries, leaf, index).is_none() {
                let mut e = kvm_cpuid_entry2 {
                    function: leaf,
                    index,
                    flags: kvm_bindings::KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
                    ..Default::default()
                };
                set_extended_topology(&mut e, cfg);
                entries.push(e);
            }
        }
    }
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

    /// Parse a table recorded with `cargo run -p husk-vmm --example dump_supported_cpuid`.
    fn recorded(text: &str) -> CpuId {
        let entries: Vec<kvm_cpuid_entry2> = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| {
                let v: Vec<u32> = l
                    .split_whitespace()
                    .map(|w| u32::from_str_radix(w.trim_start_matches("0x"), 16).unwrap())
                    .collect();
                kvm_cpuid_entry2 {
                    function: v[0],
                    index: v[1],
                    flags: v[2],
                    eax: v[3],
                    ebx: v[4],
                    ecx: v[5],
                    edx: v[6],
                    ..Default::default()
                }
            })
            .collect();
        CpuId::from_entries(&entries).unwrap()
    }

    /// KVM_GET_SUPPORTED_CPUID of this project's build machine (PVM on an AMD host):
    /// leaf 0xD is consistent (x87, SSE, AVX, AVX-512 state: 2432 bytes), but PVM does
    /// not advertise XSAVE in leaf 1.
    const PVM_LOCAL: &str = include_str!("cpuid-fixtures/pvm-local.txt");

    fn get(c: &CpuId, function: u32, index: u32) -> Option<kvm_cpuid_entry2> {
        c.as_slice()
            .iter()
            .find(|e| e.function == function && e.index == index)
            .copied()
    }

    fn cfg(cpu_index: u8, cpu_count: u8) -> CpuidConfig {
        CpuidConfig {
            cpu_index,
            cpu_count,
            tsc_deadline: true,
        }
    }

    /// KVM_GET_SUPPORTED_CPUID of the emulated test host (nested KVM on QEMU TCG
    /// `-cpu max`): XSAVE with x87, SSE, AVX and PKRU state, statically consistent
    /// (2696 bytes). A guest still sees 576 bytes after enabling AVX (its XSETBV is
    /// not tracked): only the run-time probe (xsave_probe) finds that.
    const EMULATED_TESTHOST: &str = include_str!("cpuid-fixtures/emulated-testhost.txt");

    #[test]
    fn recorded_testhost_table_is_statically_consistent_and_exposed_without_a_runtime_problem() {
        let t = recorded(EMULATED_TESTHOST);
        assert_eq!(xsave_problem(t.as_slice()), None);
        let out = filter_cpuid(&t, cfg(1, 2), None);
        let l1 = get(&out, 1, 0).unwrap();
        assert_ne!(l1.ecx & leaf1_ecx::XSAVE, 0, "XSAVE exposed");
        assert_ne!(l1.ecx & leaf1_ecx::AVX, 0, "AVX exposed");
        assert_ne!(get(&out, 7, 0).unwrap().ebx & (1 << 5), 0, "AVX2 exposed");
        let d0 = get(&out, 0xd, 0).unwrap();
        assert_eq!(
            (d0.eax, d0.ebx),
            (0x207, 0xa88),
            "leaf 0xD as KVM reports it"
        );
        assert_eq!(
            get(&out, 0x8000_0001, 0).unwrap().ecx & EXT1_ECX_SVM,
            0,
            "no nested virtualization"
        );
        // The host reports leaf 0xB sub-leaf 0 only: the core level is added.
        let core = get(&out, 0xb, 1).unwrap();
        assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (1, 2, 0x201, 1));
        assert_eq!(get(&out, 0xb, 0).unwrap().ebx, 1, "one thread per core");
        assert_eq!(
            get(&out, 0xb, 2).unwrap().ecx >> 8,
            0,
            "then an invalid level"
        );
        assert!(
            get(&out, 0x1f, 0).is_none(),
            "no 0x1F where the host has none"
        );
        let svm = get(&out, 0x8000_000a, 0).unwrap();
        assert_eq!((svm.eax, svm.ebx, svm.edx), (0, 0, 0), "no SVM features");
    }

    #[test]
    fn recorded_testhost_table_with_a_runtime_problem_hides_xsave() {
        let t = recorded(EMULATED_TESTHOST);
        let out = filter_cpuid(&t, cfg(0, 1), Some("the guest sees 576 bytes"));
        let l1 = get(&out, 1, 0).unwrap();
        assert_eq!(
            l1.ecx & (leaf1_ecx::XSAVE | leaf1_ecx::AVX | leaf1_ecx::FMA | leaf1_ecx::F16C),
            0
        );
        let l7 = get(&out, 7, 0).unwrap();
        assert_eq!(l7.ebx & LEAF7_EBX_XSAVE_DEPS, 0, "AVX2, MPX hidden");
        assert_eq!(l7.ecx & LEAF7_ECX_XSAVE_DEPS, 0, "PKU, VAES hidden");
        assert!(out.as_slice().iter().all(|e| e.function != 0xd));
        assert_ne!(l1.ecx & 1, 0, "SSE3 kept");
    }

    #[test]
    fn recorded_pvm_table_has_consistent_xsave_sizes() {
        let mut t = recorded(PVM_LOCAL);
        assert_eq!(xsave_problem(t.as_slice()), None, "no XSAVE in leaf 1");
        // Advertised as it is, the leaf 0xD data is consistent.
        for e in t.as_mut_slice() {
            if e.function == 1 {
                e.ecx |= leaf1_ecx::XSAVE;
            }
        }
        assert_eq!(xsave_problem(t.as_slice()), None);
    }

    #[test]
    fn consistent_xsave_is_exposed_with_avx_and_leaf_0xd() {
        // The recorded PVM table with XSAVE, AVX, AVX2 and AVX-512F advertised, as a
        // host whose KVM supports them reports it.
        let mut t = recorded(PVM_LOCAL);
        for e in t.as_mut_slice() {
            match (e.function, e.index) {
                (1, _) => e.ecx |= leaf1_ecx::XSAVE | leaf1_ecx::AVX | leaf1_ecx::FMA,
                (7, 0) => e.ebx |= (1 << 5) | (1 << 16),
                _ => {}
            }
        }
        let out = filter_cpuid(&t, cfg(0, 2), None);
        let l1 = get(&out, 1, 0).unwrap();
        assert_ne!(l1.ecx & leaf1_ecx::XSAVE, 0, "XSAVE exposed");
        assert_ne!(l1.ecx & leaf1_ecx::AVX, 0, "AVX exposed");
        assert_ne!(l1.ecx & leaf1_ecx::FMA, 0, "FMA exposed");
        assert_eq!(l1.ecx & leaf1_ecx::OSXSAVE, 0, "OSXSAVE is KVM's to set");
        let l7 = get(&out, 7, 0).unwrap();
        assert_ne!(l7.ebx & (1 << 5), 0, "AVX2 exposed");
        assert_ne!(l7.ebx & (1 << 16), 0, "AVX512F exposed");
        let d0 = get(&out, 0xd, 0).unwrap();
        assert_eq!(
            (d0.eax, d0.ebx, d0.ecx),
            (0xe7, 0x980, 0x980),
            "leaf 0xD as KVM has it"
        );
        assert!(
            get(&out, 0xd, 7).is_some(),
            "AVX-512 component sub-leaf kept"
        );
        assert_eq!(
            xsave_problem(out.as_slice()),
            None,
            "the guest's view is consistent"
        );
    }

    #[test]
    fn inconsistent_xsave_sizes_hide_xsave_and_its_dependants() {
        let mut t = recorded(PVM_LOCAL);
        for e in t.as_mut_slice() {
            match (e.function, e.index) {
                (1, _) => e.ecx |= leaf1_ecx::XSAVE | leaf1_ecx::AVX,
                (7, 0) => e.ebx |= 1 << 5,
                // What the emulated test host shows the guest: an area size that does
                // not match the components.
                (0xd, 0) => e.ebx = 576,
                _ => {}
            }
        }
        let p = xsave_problem(t.as_slice()).expect("inconsistent");
        assert!(p.contains("576") && p.contains("2432"), "{p}");
        let out = filter_cpuid(&t, cfg(0, 1), None);
        let l1 = get(&out, 1, 0).unwrap();
        assert_eq!(l1.ecx & (leaf1_ecx::XSAVE | leaf1_ecx::AVX), 0);
        assert_eq!(get(&out, 7, 0).unwrap().ebx & (1 << 5), 0, "AVX2 hidden");
        assert!(
            out.as_slice().iter().all(|e| e.function != 0xd),
            "leaf 0xD removed"
        );
    }

    #[test]
    fn xsave_problem_finds_each_kind_of_inconsistency() {
        let base = [
            entry(1, 0, 0, 0, leaf1_ecx::XSAVE, 0),
            entry(0xd, 0, 0x7, 832, 832, 0),
            entry(0xd, 1, 0x2, 832, 0, 0),
            entry(0xd, 2, 256, 576, 0, 0),
        ];
        assert_eq!(xsave_problem(&base), None);
        let mut missing = base.to_vec();
        missing.pop();
        assert!(xsave_problem(&missing).unwrap().contains("no sub-leaf"));
        let mut overlap = base;
        overlap[3].ebx = 512;
        assert!(xsave_problem(&overlap).unwrap().contains("overlaps"));
        let mut compacted = base;
        compacted[2].ebx = 1000;
        assert!(xsave_problem(&compacted).unwrap().contains("compacted"));
        let mut no_sse = base;
        no_sse[1].eax = 0x5;
        assert!(xsave_problem(&no_sse).unwrap().contains("x87 and SSE"));
    }

    #[test]
    fn pmu_is_hidden() {
        let out = filter_cpuid(&recorded(PVM_LOCAL), cfg(0, 1), None);
        let a = get(&out, 0xa, 0).unwrap();
        assert_eq!((a.eax, a.ebx, a.ecx, a.edx), (0, 0, 0, 0));
        let t = CpuId::from_entries(&[
            entry(0xa, 0, 0x0803_0302, 0, 0, 0x603),
            entry(0x8000_0001, 0, 0, 0, u32::MAX, 0),
            entry(LEAF_AMD_PERFMON_V2, 0, 1, 6, 0, 0),
        ])
        .unwrap();
        let out = filter_cpuid(&t, cfg(0, 1), None);
        assert_eq!(get(&out, 0xa, 0).unwrap().eax, 0, "no architectural PMU");
        assert_eq!(get(&out, 0x8000_0001, 0).unwrap().ecx & EXT1_ECX_PMU, 0);
        assert!(get(&out, LEAF_AMD_PERFMON_V2, 0).is_none());
    }

    #[test]
    fn topology_leaves_agree_with_the_vcpu_count() {
        let t = CpuId::from_entries(&[
            entry(1, 0, 0, 0, 0, 0),
            // Intel leaf 4: L1d, L2 and L3 as a 16-core host reports them.
            entry(4, 0, (15 << 26) | (1 << 14) | (1 << 5) | 1, 0, 0, 0),
            entry(4, 2, (15 << 26) | (1 << 14) | (2 << 5) | 3, 0, 0, 0),
            entry(4, 3, (15 << 26) | (31 << 14) | (3 << 5) | 3, 0, 0, 0),
            entry(4, 4, 0, 0, 0, 0),
            entry(0xb, 0, 1, 2, 0x100, 9),
            entry(0xb, 1, 5, 32, 0x201, 9),
            entry(0x1f, 0, 1, 2, 0x100, 9),
            entry(0x1f, 1, 5, 32, 0x201, 9),
            entry(0x8000_0008, 0, 0x3030, 0, 0x700f, 0),
            entry(0x8000_001d, 0, (1 << 14) | (1 << 5) | 1, 0, 0, 0),
            entry(0x8000_001d, 3, (15 << 14) | (3 << 5) | 3, 0, 0, 0),
            entry(0x8000_001e, 0, 9, 0x104, 0x300, 0),
        ])
        .unwrap();
        let out = filter_cpuid(&t, cfg(2, 3), None);
        let l4 = |i| get(&out, 4, i).unwrap().eax;
        assert_eq!(l4(0) >> 26, 3, "cores per package - 1 (rounded up to 4)");
        assert_eq!((l4(0) >> 14) & 0xfff, 0, "L1 per core");
        assert_eq!((l4(2) >> 14) & 0xfff, 0, "L2 per core");
        assert_eq!((l4(3) >> 14) & 0xfff, 3, "L3 shared by all");
        assert_eq!(l4(4), 0, "end of the cache list untouched");
        for leaf in [0xb, 0x1f] {
            let smt = get(&out, leaf, 0).unwrap();
            let core = get(&out, leaf, 1).unwrap();
            assert_eq!((smt.eax, smt.ebx, smt.edx), (0, 1, 2), "leaf {leaf:#x} SMT");
            assert_eq!(
                (core.eax, core.ebx, core.edx),
                (2, 3, 2),
                "leaf {leaf:#x} core"
            );
        }
        let e8 = get(&out, 0x8000_0008, 0).unwrap();
        assert_eq!((e8.ecx & 0xff, (e8.ecx >> 12) & 0xf), (2, 2));
        assert_eq!((get(&out, 0x8000_001d, 0).unwrap().eax >> 14) & 0xfff, 0);
        assert_eq!((get(&out, 0x8000_001d, 3).unwrap().eax >> 14) & 0xfff, 3);
        let e = get(&out, 0x8000_001e, 0).unwrap();
        assert_eq!(
            (e.eax, e.ebx, e.ecx),
            (2, 2, 0),
            "APIC ID 2, one thread per core"
        );
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
            None,
        );
        let s = out.as_slice();
        assert_eq!(
            s.len(),
            8,
            "leaf 0xd removed, 0xB sub-leaf 2 added, others kept"
        );
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
            None,
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
