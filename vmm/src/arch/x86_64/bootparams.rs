//! The zero page (`struct boot_params`) for the 64-bit boot protocol: e820 memory map,
//! command line pointer and initrd location.

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use vm_memory::{Bytes, GuestAddress};

use super::layout::{
    CMDLINE_MAX_SIZE, CMDLINE_START, EBDA_START, HIMEM_START, INITRD_ADDR_MAX, LOW_MEM_END,
    MMIO_GAP_END, MMIO_GAP_START, ZERO_PAGE_START,
};
use crate::GuestMemoryMmap;

/// e820 type: usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type: reserved.
pub const E820_RESERVED: u32 = 2;

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x0100_0000;
const PAGE_SIZE: u64 = 4096;

/// Errors building the zero page.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum BootParamsError {
    /// The initrd does not fit between the kernel and the top of low RAM.
    #[error(
        "the initrd ({size} bytes) does not fit in guest RAM above the kernel (which ends \
         at {kernel_end:#x}); give the VM more memory (--mem-mib) or use a smaller initrd"
    )]
    InitrdTooBig {
        /// Initrd size.
        size: u64,
        /// End of the loaded kernel.
        kernel_end: u64,
    },
    /// Writing the zero page failed.
    #[error("cannot write the zero page into guest memory")]
    Write,
}

/// The e820 map for a guest with `mem_size` bytes of RAM laid out by
/// [`super::arch_memory_regions`].
pub fn e820_map(mem_size: u64) -> Vec<boot_e820_entry> {
    let e = |addr: u64, end: u64, t: u32| boot_e820_entry {
        addr,
        size: end - addr,
        r#type: t,
    };
    let mut map = vec![
        e(0, EBDA_START, E820_RAM),
        e(EBDA_START, LOW_MEM_END, E820_RESERVED),
    ];
    let low_end = mem_size.min(MMIO_GAP_START);
    if low_end > HIMEM_START {
        map.push(e(HIMEM_START, low_end, E820_RAM));
    }
    if mem_size > MMIO_GAP_START {
        map.push(e(
            MMIO_GAP_END,
            MMIO_GAP_END + (mem_size - MMIO_GAP_START),
            E820_RAM,
        ));
    }
    map
}

/// Where to put an initrd of `size` bytes: page-aligned, as high as possible in RAM
/// below the MMIO gap and below `initrd_addr_max`, and above `kernel_end`.
pub fn initrd_address(mem_size: u64, kernel_end: u64, size: u64) -> Result<u64, BootParamsError> {
    let err = BootParamsError::InitrdTooBig { size, kernel_end };
    let top = mem_size.min(MMIO_GAP_START).min(INITRD_ADDR_MAX + 1);
    let addr = top.checked_sub(size).ok_or(err.clone())? & !(PAGE_SIZE - 1);
    if addr < kernel_end || addr < HIMEM_START {
        return Err(err);
    }
    Ok(addr)
}

/// Where the initrd ended up, for the zero page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitrdPlacement {
    /// Guest physical address.
    pub address: u64,
    /// Size in bytes.
    pub size: u64,
}

/// Build the zero page contents.
pub fn build_boot_params(
    mem_size: u64,
    cmdline_len: usize,
    initrd: Option<InitrdPlacement>,
) -> boot_params {
    let mut params = boot_params::default();
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline_len.min(CMDLINE_MAX_SIZE) as u32;
    if let Some(i) = initrd {
        params.hdr.ramdisk_image = i.address as u32;
        params.hdr.ramdisk_size = i.size as u32;
    }
    let map = e820_map(mem_size);
    for (slot, entry) in params.e820_table.iter_mut().zip(map.iter()) {
        *slot = *entry;
    }
    params.e820_entries = map.len() as u8;
    params
}

/// Write the zero page.
pub fn write_boot_params(
    mem: &GuestMemoryMmap,
    params: &boot_params,
) -> Result<(), BootParamsError> {
    mem.write_obj(*params, GuestAddress(ZERO_PAGE_START))
        .map_err(|_| BootParamsError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges(map: &[boot_e820_entry]) -> Vec<(u64, u64, u32)> {
        map.iter()
            .map(|e| (e.addr, e.addr + e.size, e.r#type))
            .collect()
    }

    #[test]
    fn e820_small_guest() {
        let m = e820_map(128 << 20);
        assert_eq!(
            ranges(&m),
            vec![
                (0, 0x9fc00, E820_RAM),
                (0x9fc00, 0xa0000, E820_RESERVED),
                (0x10_0000, 128 << 20, E820_RAM)
            ]
        );
    }

    #[test]
    fn e820_guest_spanning_the_gap() {
        let m = e820_map(4 << 30);
        let r = ranges(&m);
        assert_eq!(r[2], (0x10_0000, 0xd000_0000, E820_RAM));
        assert_eq!(r[3], (0x1_0000_0000, 0x1_3000_0000, E820_RAM));
        // RAM total equals the configured size minus the legacy hole.
        let ram: u64 = m
            .iter()
            .filter(|e| e.r#type == E820_RAM)
            .map(|e| e.size)
            .sum();
        assert_eq!(ram, (4 << 30) - (HIMEM_START - EBDA_START));
    }

    #[test]
    fn initrd_goes_to_the_top_of_low_ram() {
        let a = initrd_address(128 << 20, 0x200_0000, 5000).unwrap();
        assert_eq!(a, (128 << 20) - 8192);
        assert_eq!(a % 4096, 0);
        // Capped by the gap for big guests.
        let a = initrd_address(8 << 30, 0x200_0000, 4096).unwrap();
        assert!(a + 4096 <= 0x8000_0000);
        assert_eq!(
            initrd_address(64 << 20, 60 << 20, 8 << 20),
            Err(BootParamsError::InitrdTooBig {
                size: 8 << 20,
                kernel_end: 60 << 20
            })
        );
        assert!(initrd_address(1 << 20, 0, 2 << 20).is_err());
    }

    #[test]
    fn zero_page_fields() {
        let p = build_boot_params(
            256 << 20,
            40,
            Some(InitrdPlacement {
                address: 0xf00_0000,
                size: 77,
            }),
        );
        assert_eq!({ p.hdr.boot_flag }, 0xaa55);
        assert_eq!({ p.hdr.header }, 0x5372_6448);
        assert_eq!({ p.hdr.cmd_line_ptr }, 0x20000);
        assert_eq!({ p.hdr.ramdisk_image }, 0xf00_0000);
        assert_eq!({ p.hdr.ramdisk_size }, 77);
        assert_eq!(p.e820_entries, 3);
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        write_boot_params(&mem, &p).unwrap();
        let flag: u16 = mem.read_obj(GuestAddress(ZERO_PAGE_START + 0x1fe)).unwrap();
        assert_eq!(flag, 0xaa55, "boot_flag at its documented offset");
    }
}
