//! The guest physical memory map husk builds for x86_64 guests.
//!
//! ```text
//! 0x0000_0000  ┌──────────────────────────────┐  RAM (low)
//!              │ 0x500    GDT (4 entries)     │
//!              │ 0x520    IDT (empty)         │
//!              │ 0x7000   zero page           │  struct boot_params
//!              │ 0x8ff0   boot stack top      │  RSP/RBP at entry
//!              │ 0x9000   PML4                │  identity page tables for
//!              │ 0xa000   PDPT                │  the first 1 GiB, 2 MiB pages
//!              │ 0xb000   PD                  │
//!              │ 0x20000  kernel command line │  up to CMDLINE_MAX_SIZE bytes
//! 0x0009_fc00  ├──────────────────────────────┤  EBDA: MP table (reserved)
//! 0x000a_0000  ├──────────────────────────────┤  VGA/ROM hole (not RAM)
//! 0x0010_0000  ├──────────────────────────────┤  RAM: kernel (ELF p_paddr, usually
//!              │                              │  16 MiB), initrd at the top
//! 0xd000_0000  ├──────────────────────────────┤  MMIO gap: virtio-mmio device i at
//!              │                              │  0xd000_0000 + i * 0x1000, IRQ 5 + i
//! 0xfec0_0000  │ IOAPIC                       │
//! 0xfee0_0000  │ LAPIC                        │
//! 0x1_0000_0000├──────────────────────────────┤  RAM beyond MMIO_GAP_START, if any
//! ```
//!
//! Port I/O: 8250 UART 0x3f8 (IRQ 4), i8042 0x60/0x64 (IRQ 1), boot-ready marker 0x440.

/// GDT location.
pub const BOOT_GDT_START: u64 = 0x500;
/// Number of GDT entries (null, null, code 0x10, data 0x18, TSS 0x20).
pub const BOOT_GDT_MAX: usize = 5;
/// IDT location (an empty IDT; the kernel installs its own).
pub const BOOT_IDT_START: u64 = 0x528;
/// The zero page (`struct boot_params`), passed in RSI.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Page-map level 4 table.
pub const PML4_START: u64 = 0x9000;
/// Page-directory-pointer table.
pub const PDPTE_START: u64 = 0xa000;
/// Page directory (512 x 2 MiB = the first 1 GiB identity mapped).
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Largest command line husk passes (x86's COMMAND_LINE_SIZE), including the NUL.
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the extended BIOS data area; the MP table lives here. RAM below it is
/// usable low memory.
pub const EBDA_START: u64 = 0x9fc00;
/// End of the legacy low-memory area (start of the VGA hole).
pub const LOW_MEM_END: u64 = 0xa0000;
/// First byte of high memory (1 MiB); the kernel is loaded at or above it.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the MMIO gap below 4 GiB. RAM that would overlap it continues at 4 GiB.
pub const MMIO_GAP_START: u64 = 0xd000_0000;
/// End of the MMIO gap (4 GiB).
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// First virtio-mmio window.
pub const VIRTIO_MMIO_BASE: u64 = MMIO_GAP_START;
/// Size of one virtio-mmio window.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// GSI of the first virtio-mmio device; device i gets `VIRTIO_IRQ_BASE + i`.
pub const VIRTIO_IRQ_BASE: u32 = 5;
/// Last GSI a virtio device may use (IOAPIC pins 0..=23).
pub const VIRTIO_IRQ_MAX: u32 = 23;
/// IOAPIC MMIO base (in-kernel irqchip).
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
/// LAPIC MMIO base (in-kernel irqchip).
pub const APIC_ADDR: u64 = 0xfee0_0000;
/// KVM's three-page TSS region (needed by KVM on Intel), inside the gap.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// KVM's identity-map page (needed on Intel), just below the TSS.
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;
/// Largest initrd address the 64-bit kernel accepts (`initrd_addr_max` of x86_64).
pub const INITRD_ADDR_MAX: u64 = 0x7fff_ffff;
/// Number of IOAPIC pins announced in the MP table.
pub const IRQ_MAX: u8 = 23;

/// COM1 port base.
pub const SERIAL_PORT_BASE: u16 = 0x3f8;
/// COM1 IRQ.
pub const SERIAL_IRQ: u32 = 4;
/// i8042 data port; the controller spans 0x60..=0x64.
pub const I8042_PORT_BASE: u16 = 0x60;
/// i8042 keyboard IRQ.
pub const I8042_IRQ: u32 = 1;
/// Boot-ready marker port (defined once, in the agent crate that writes it).
pub const BOOT_MARKER_PORT: u16 = husk_agent::pid1::READY_PORT;
/// The value written to [`BOOT_MARKER_PORT`] to mean "ready".
pub const BOOT_MARKER_READY: u8 = husk_agent::pid1::READY_VALUE;

// The fixed boot areas do not overlap (checked at compile time).
const _: () = {
    assert!(BOOT_GDT_START + (BOOT_GDT_MAX as u64) * 8 <= BOOT_IDT_START);
    assert!(BOOT_IDT_START + 8 <= ZERO_PAGE_START);
    assert!(ZERO_PAGE_START + 0x1000 <= BOOT_STACK_POINTER);
    assert!(BOOT_STACK_POINTER < PML4_START);
    assert!(PDE_START + 0x1000 <= CMDLINE_START);
    assert!(CMDLINE_START + CMDLINE_MAX_SIZE as u64 <= EBDA_START);
    assert!(KVM_IDENTITY_MAP_ADDRESS >= APIC_ADDR + 0x1000);
};

/// Address of virtio-mmio window `index`, or `None` if there is no such window.
pub fn virtio_mmio_window(index: u32) -> Option<(u64, u32)> {
    let irq = VIRTIO_IRQ_BASE.checked_add(index)?;
    if irq > VIRTIO_IRQ_MAX {
        return None;
    }
    Some((VIRTIO_MMIO_BASE + u64::from(index) * VIRTIO_MMIO_SIZE, irq))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtio_windows() {
        assert_eq!(virtio_mmio_window(0), Some((0xd000_0000, 5)));
        assert_eq!(virtio_mmio_window(2), Some((0xd000_2000, 7)));
        assert_eq!(virtio_mmio_window(18), Some((0xd001_2000, 23)));
        assert_eq!(virtio_mmio_window(19), None);
        assert_eq!(virtio_mmio_window(u32::MAX), None);
    }
}
