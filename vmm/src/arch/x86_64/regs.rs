//! Long-mode entry state for the 64-bit Linux boot protocol: general registers, the
//! FPU, and the special registers with a GDT, an empty IDT and identity-mapped page
//! tables for the first 1 GiB, all written into guest memory.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress};

use super::layout::{
    BOOT_GDT_MAX, BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, PDE_START, PDPTE_START,
    PML4_START, ZERO_PAGE_START,
};
use crate::GuestMemoryMmap;

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// Selector of the boot code segment (`__BOOT_CS` in the boot protocol).
pub const BOOT_CS: u16 = 0x10;
/// Selector of the boot data segment (`__BOOT_DS`).
pub const BOOT_DS: u16 = 0x18;
/// Selector of the TSS.
pub const BOOT_TSS: u16 = 0x20;

/// Errors while setting up a vCPU's registers.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// A KVM register ioctl failed.
    #[error("KVM refused the {0} registers; the host KVM may be too old")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
    /// Guest memory is too small for the boot structures.
    #[error("cannot write the boot {0} into guest memory; give the VM more memory")]
    Memory(&'static str, #[source] vm_memory::GuestMemoryError),
}

/// Build a GDT descriptor from access/flags bits (`0xFxAA`: flags nibble in bits
/// 12..16, access byte in bits 0..8), base and 20-bit limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let base = base as u64;
    let limit = limit as u64;
    let flags = flags as u64;
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0x0000_ffff)
}

/// Decode a GDT descriptor into KVM's segment representation.
pub fn segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let raw_limit = (entry & 0xffff) | ((entry >> 32) & 0x000f_0000);
    let g = ((entry >> 55) & 1) as u8;
    let limit = if g == 1 {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    let present = ((entry >> 47) & 1) as u8;
    kvm_segment {
        base,
        limit: limit as u32,
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

/// The boot GDT: two null entries, 64-bit code at 0x10, data at 0x18, TSS at 0x20.
pub fn boot_gdt() -> [u64; BOOT_GDT_MAX] {
    [
        0,
        0,
        gdt_entry(0xa09b, 0, 0xfffff), // code: present, exec/read, accessed, L, G
        gdt_entry(0xc093, 0, 0xfffff), // data: present, read/write, accessed, D/B, G
        gdt_entry(0x808b, 0, 0xfffff), // TSS: present, busy 64-bit TSS
    ]
}

/// Entry registers: RIP at the kernel's 64-bit entry, RSI at the zero page.
pub fn boot_regs(entry: u64) -> kvm_regs {
    kvm_regs {
        rflags: 0x2,
        rip: entry,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: ZERO_PAGE_START,
        ..Default::default()
    }
}

/// Default FPU state: x87 control word 0x37f, MXCSR 0x1f80.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

/// Write the GDT, IDT and identity page tables into guest memory.
pub fn write_boot_tables(mem: &GuestMemoryMmap) -> Result<(), RegsError> {
    for (i, entry) in boot_gdt().iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(BOOT_GDT_START + (i as u64) * 8))
            .map_err(|e| RegsError::Memory("GDT", e))?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))
        .map_err(|e| RegsError::Memory("IDT", e))?;
    // PML4[0] -> PDPT, PDPT[0] -> PD (present | writable).
    mem.write_obj(PDPTE_START | 0x03, GuestAddress(PML4_START))
        .map_err(|e| RegsError::Memory("page tables", e))?;
    mem.write_obj(PDE_START | 0x03, GuestAddress(PDPTE_START))
        .map_err(|e| RegsError::Memory("page tables", e))?;
    // 512 x 2 MiB pages (present | writable | page size).
    for i in 0..512u64 {
        mem.write_obj((i << 21) | 0x83, GuestAddress(PDE_START + i * 8))
            .map_err(|e| RegsError::Memory("page tables", e))?;
    }
    Ok(())
}

/// Put `sregs` into 64-bit long mode with the boot GDT/IDT and page tables.
pub fn long_mode_sregs(sregs: &mut kvm_sregs) {
    let gdt = boot_gdt();
    let code = segment_from_gdt(gdt[2], 2);
    let data = segment_from_gdt(gdt[3], 3);
    let tss = segment_from_gdt(gdt[4], 4);

    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&gdt) - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;

    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;

    sregs.cr3 = PML4_START;
    sregs.cr4 |= X86_CR4_PAE;
    sregs.cr0 |= X86_CR0_PE | X86_CR0_PG;
    sregs.efer |= EFER_LME | EFER_LMA;
}

/// Configure a vCPU for the 64-bit boot protocol (the boot tables must already be
/// in guest memory, see [`write_boot_tables`]).
pub fn setup_boot_vcpu(vcpu: &VcpuFd, entry: u64) -> Result<(), RegsError> {
    let mut sregs = vcpu.get_sregs().map_err(|e| RegsError::Kvm("special", e))?;
    long_mode_sregs(&mut sregs);
    vcpu.set_sregs(&sregs)
        .map_err(|e| RegsError::Kvm("special", e))?;
    vcpu.set_fpu(&boot_fpu())
        .map_err(|e| RegsError::Kvm("FPU", e))?;
    vcpu.set_regs(&boot_regs(entry))
        .map_err(|e| RegsError::Kvm("general", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestAddress;

    #[test]
    fn gdt_round_trips_through_segments() {
        let gdt = boot_gdt();
        let cs = segment_from_gdt(gdt[2], 2);
        assert_eq!(cs.selector, BOOT_CS);
        assert_eq!((cs.l, cs.db, cs.present, cs.s, cs.type_), (1, 0, 1, 1, 0xb));
        assert_eq!(cs.limit, 0xffff_ffff);
        let ds = segment_from_gdt(gdt[3], 3);
        assert_eq!(ds.selector, BOOT_DS);
        assert_eq!((ds.l, ds.db, ds.type_, ds.unusable), (0, 1, 0x3, 0));
        let tss = segment_from_gdt(gdt[4], 4);
        assert_eq!((tss.selector, tss.s, tss.type_), (BOOT_TSS, 0, 0xb));
        assert_eq!(segment_from_gdt(0, 0).unusable, 1);
        assert_eq!(gdt_entry(0xa09b, 0, 0xfffff), 0x00af_9b00_0000_ffff);
    }

    #[test]
    fn tables_and_sregs() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        write_boot_tables(&mem).unwrap();
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4, PDPTE_START | 3);
        let pde_last: u64 = mem.read_obj(GuestAddress(PDE_START + 511 * 8)).unwrap();
        assert_eq!(pde_last, (511 << 21) | 0x83);
        let mut s = kvm_sregs::default();
        long_mode_sregs(&mut s);
        assert_eq!(s.cr3, PML4_START);
        assert_ne!(s.cr0 & X86_CR0_PG, 0);
        assert_ne!(s.efer & EFER_LMA, 0);
        assert_eq!(s.cs.selector, BOOT_CS);
        let small = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        assert!(matches!(
            write_boot_tables(&small),
            Err(RegsError::Memory("page tables", _))
        ));
    }
}
