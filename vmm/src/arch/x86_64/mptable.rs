//! The Intel MultiProcessor Specification (1.4) table: how a guest without ACPI finds
//! its CPUs, the IOAPIC and the interrupt routing. Written at the start of the EBDA,
//! which Linux scans for the `_MP_` floating pointer.
//!
//! Layout: the 16-byte floating pointer, then the configuration table header (44
//! bytes) and its entries: one processor entry per vCPU (APIC ID = index), one ISA
//! bus, one IOAPIC (ID = vCPU count), an I/O interrupt entry for each IOAPIC pin
//! 0..=23 (ISA IRQ n → pin n), and the two local interrupt entries (ExtINT → LINT0,
//! NMI → LINT1).

use vm_memory::{Bytes, GuestAddress};

use super::layout::{APIC_ADDR, EBDA_START, IOAPIC_ADDR, IRQ_MAX, LOW_MEM_END};
use crate::GuestMemoryMmap;

const FLOATING_POINTER_LEN: usize = 16;
const HEADER_LEN: usize = 44;
#[cfg(test)]
const PROCESSOR_ENTRY_LEN: usize = 20;
#[cfg(test)]
const SMALL_ENTRY_LEN: usize = 8;

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;

const CPU_ENABLED: u8 = 1;
const CPU_BSP: u8 = 2;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
/// CPU signature: family 6; feature flags: FPU and APIC present.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
const MP_SPEC_REV: u8 = 4;

/// Most vCPUs the table can describe inside the 1 KiB EBDA area.
pub const MAX_CPUS: u8 = 32;

/// Errors building the MP table.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MptableError {
    /// Zero or too many vCPUs.
    #[error("the MP table supports 1 to {MAX_CPUS} vCPUs, not {0}")]
    CpuCount(u8),
    /// Guest memory does not cover the EBDA.
    #[error("guest memory does not cover the MP table area at {EBDA_START:#x}")]
    Memory,
}

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// Build the MP table bytes for `cpus` vCPUs, to be placed at `base`.
pub fn build_mptable(cpus: u8, base: u64) -> Result<Vec<u8>, MptableError> {
    if cpus == 0 || cpus > MAX_CPUS {
        return Err(MptableError::CpuCount(cpus));
    }
    let ioapic_id = cpus;
    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    for cpu in 0..cpus {
        entries.extend_from_slice(&[
            ENTRY_PROCESSOR,
            cpu,
            APIC_VERSION,
            CPU_ENABLED | if cpu == 0 { CPU_BSP } else { 0 },
        ]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_BUS, 0]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&(IOAPIC_ADDR as u32).to_le_bytes());
    count += 1;
    for irq in 0..=IRQ_MAX {
        // type, interrupt type, flags (conforming), source bus 0, source IRQ,
        // destination IOAPIC, destination pin.
        entries.extend_from_slice(&[
            ENTRY_IO_INTERRUPT,
            INT_TYPE_INT,
            0,
            0,
            0,
            irq,
            ioapic_id,
            irq,
        ]);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, INT_TYPE_EXTINT, 0, 0, 0, 0, 0, 0]);
    entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, INT_TYPE_NMI, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let table_len = HEADER_LEN + entries.len();
    let mut header = Vec::with_capacity(table_len);
    header.extend_from_slice(b"PCMP");
    header.extend_from_slice(&(table_len as u16).to_le_bytes());
    header.push(MP_SPEC_REV);
    header.push(0); // checksum, below
    header.extend_from_slice(b"HUSK    ");
    header.extend_from_slice(b"MICROVM     ");
    header.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    header.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    header.extend_from_slice(&count.to_le_bytes());
    header.extend_from_slice(&(APIC_ADDR as u32).to_le_bytes());
    header.extend_from_slice(&[0, 0, 0, 0]); // extended length, checksum, reserved
    header.extend_from_slice(&entries);
    header[7] = checksum(&header);

    let mut fp = Vec::with_capacity(FLOATING_POINTER_LEN);
    fp.extend_from_slice(b"_MP_");
    fp.extend_from_slice(&((base + FLOATING_POINTER_LEN as u64) as u32).to_le_bytes());
    fp.extend_from_slice(&[1, MP_SPEC_REV, 0, 0, 0, 0, 0, 0]);
    fp[10] = checksum(&fp);

    fp.extend_from_slice(&header);
    Ok(fp)
}

/// Write the MP table for `cpus` vCPUs at the EBDA.
pub fn setup_mptable(mem: &GuestMemoryMmap, cpus: u8) -> Result<(), MptableError> {
    let bytes = build_mptable(cpus, EBDA_START)?;
    debug_assert!(EBDA_START + bytes.len() as u64 <= LOW_MEM_END);
    mem.write_slice(&bytes, GuestAddress(EBDA_START))
        .map_err(|_| MptableError::Memory)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    /// Parse the table back the way a guest would and return (cpu apic ids, BSP flags,
    /// ioapic id, io interrupt pins, local interrupt count).
    fn parse(mem: &GuestMemoryMmap) -> (Vec<u8>, Vec<bool>, u8, Vec<u8>, usize) {
        let mut fp = [0u8; 16];
        mem.read_slice(&mut fp, GuestAddress(EBDA_START)).unwrap();
        assert_eq!(&fp[0..4], b"_MP_");
        assert_eq!(sum(&fp), 0, "floating pointer checksum");
        assert_eq!(fp[8], 1, "length in 16-byte units");
        let table = u64::from(u32::from_le_bytes(fp[4..8].try_into().unwrap()));
        let mut hdr = [0u8; HEADER_LEN];
        mem.read_slice(&mut hdr, GuestAddress(table)).unwrap();
        assert_eq!(&hdr[0..4], b"PCMP");
        let len = usize::from(u16::from_le_bytes([hdr[4], hdr[5]]));
        let count = u16::from_le_bytes([hdr[34], hdr[35]]);
        assert_eq!(
            u32::from_le_bytes(hdr[36..40].try_into().unwrap()),
            0xfee0_0000
        );
        let mut all = vec![0u8; len];
        mem.read_slice(&mut all, GuestAddress(table)).unwrap();
        assert_eq!(sum(&all), 0, "table checksum");
        let (mut cpus, mut bsp, mut ioapic, mut pins, mut lints) = (vec![], vec![], 0, vec![], 0);
        let mut off = HEADER_LEN;
        for _ in 0..count {
            match all[off] {
                ENTRY_PROCESSOR => {
                    cpus.push(all[off + 1]);
                    bsp.push(all[off + 3] & CPU_BSP != 0);
                    assert_ne!(all[off + 3] & CPU_ENABLED, 0);
                    off += PROCESSOR_ENTRY_LEN;
                }
                ENTRY_BUS => {
                    assert_eq!(&all[off + 2..off + 8], b"ISA   ");
                    off += SMALL_ENTRY_LEN;
                }
                ENTRY_IOAPIC => {
                    ioapic = all[off + 1];
                    let addr = u32::from_le_bytes(all[off + 4..off + 8].try_into().unwrap());
                    assert_eq!(addr, 0xfec0_0000);
                    off += SMALL_ENTRY_LEN;
                }
                ENTRY_IO_INTERRUPT => {
                    assert_eq!(all[off + 5], all[off + 7], "ISA irq n -> pin n");
                    assert_eq!(all[off + 6], ioapic);
                    pins.push(all[off + 7]);
                    off += SMALL_ENTRY_LEN;
                }
                ENTRY_LOCAL_INTERRUPT => {
                    lints += 1;
                    off += SMALL_ENTRY_LEN;
                }
                t => panic!("unknown entry type {t}"),
            }
        }
        assert_eq!(off, len, "entries fill the table exactly");
        (cpus, bsp, ioapic, pins, lints)
    }

    #[test]
    fn parse_back_for_several_cpu_counts() {
        for n in [1u8, 2, 4, 32] {
            let mem =
                GuestMemoryMmap::from_ranges(&[(GuestAddress(0), LOW_MEM_END as usize)]).unwrap();
            setup_mptable(&mem, n).unwrap();
            let (cpus, bsp, ioapic, pins, lints) = parse(&mem);
            assert_eq!(cpus, (0..n).collect::<Vec<_>>());
            assert_eq!(bsp.iter().filter(|b| **b).count(), 1);
            assert!(bsp[0]);
            assert_eq!(ioapic, n);
            assert_eq!(pins, (0..=23).collect::<Vec<u8>>());
            assert_eq!(lints, 2);
        }
    }

    #[test]
    fn rejects_bad_counts_and_small_memory() {
        assert_eq!(build_mptable(0, 0), Err(MptableError::CpuCount(0)));
        assert_eq!(build_mptable(33, 0), Err(MptableError::CpuCount(33)));
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        assert_eq!(setup_mptable(&mem, 1), Err(MptableError::Memory));
        // 32 CPUs fit in the 1 KiB EBDA.
        assert!(build_mptable(32, EBDA_START).unwrap().len() <= 1024);
    }
}
