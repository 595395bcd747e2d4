//! x86_64 platform: memory map, boot structures, vCPU registers, CPUID and MSRs.

pub mod bootparams;
pub mod cpuid;
pub mod layout;
pub mod mptable;
pub mod msr;
pub mod regs;
pub mod xsave_probe;

use layout::{MMIO_GAP_END, MMIO_GAP_START};
use vm_memory::GuestAddress;

/// The guest RAM regions for `mem_size` bytes: from 0 up to the MMIO gap, and the
/// rest from 4 GiB.
pub fn arch_memory_regions(mem_size: u64) -> Vec<(GuestAddress, usize)> {
    let low = mem_size.min(MMIO_GAP_START);
    let mut regions = vec![(GuestAddress(0), low as usize)];
    if mem_size > MMIO_GAP_START {
        regions.push((
            GuestAddress(MMIO_GAP_END),
            (mem_size - MMIO_GAP_START) as usize,
        ));
    }
    regions
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_split_around_the_gap() {
        assert_eq!(
            arch_memory_regions(128 << 20),
            vec![(GuestAddress(0), 128 << 20)]
        );
        assert_eq!(
            arch_memory_regions(0xe000_0000),
            vec![
                (GuestAddress(0), 0xd000_0000),
                (GuestAddress(0x1_0000_0000), 0x1000_0000)
            ]
        );
    }
}
