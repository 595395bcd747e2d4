//! Guest RAM: anonymous mappings created with vm-memory from the architecture's
//! memory map, and their registration with KVM.

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use crate::arch::x86_64::arch_memory_regions;
use crate::GuestMemoryMmap;

/// Errors creating or registering guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// mmap of guest RAM failed.
    #[error("cannot allocate {mib} MiB of guest memory; lower --mem-mib or free host memory")]
    Create {
        /// Requested size.
        mib: u64,
        /// The cause.
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
    /// KVM_SET_USER_MEMORY_REGION failed.
    #[error("KVM refused guest memory slot {slot}")]
    Register {
        /// Slot number.
        slot: u32,
        /// The cause.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Host address lookup failed (cannot happen for a region we iterate over).
    #[error("guest memory region at {0:#x} has no host mapping")]
    HostAddress(u64),
}

/// Allocate `mem_mib` MiB of guest RAM laid out per the x86_64 memory map.
pub fn create_guest_memory(mem_mib: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let regions = arch_memory_regions(mem_mib << 20);
    GuestMemoryMmap::from_ranges(&regions).map_err(|source| MemoryError::Create {
        mib: mem_mib,
        source,
    })
}

/// Register every region of `mem` with the VM, one KVM slot per region.
///
/// # Safety
///
/// KVM keeps the host addresses of `mem`'s mappings: the caller must keep `mem` (or a
/// clone of it, which shares the mappings) alive for as long as `vm` exists, or the
/// guest would read and write freed host memory.
pub unsafe fn register_guest_memory(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<(), MemoryError> {
    for (slot, region) in mem.iter().enumerate() {
        let slot = slot as u32;
        let host = mem
            .get_host_address(region.start_addr())
            .map_err(|_| MemoryError::HostAddress(region.start_addr().0))?;
        let kregion = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the host range [host, host + len) is a live mapping owned by `mem`,
        // and the caller guarantees that `mem` outlives `vm` (see # Safety).
        unsafe { vm.set_user_memory_region(kregion) }
            .map_err(|source| MemoryError::Register { slot, source })?;
    }
    Ok(())
}

/// Bytes of `mem` that count towards this process's RSS (pages the guest or the VMM
/// touched), summed from the `Rss:` lines of /proc/self/smaps for the mappings that
/// back guest memory. (mincore(2) would also count pages that only map the shared
/// zero page, which RSS does not.)
pub fn guest_resident_bytes(mem: &GuestMemoryMmap) -> std::io::Result<u64> {
    let mut ranges = Vec::new();
    for region in mem.iter() {
        let host = mem
            .get_host_address(region.start_addr())
            .map_err(|e| std::io::Error::other(e.to_string()))? as u64;
        ranges.push((host, host + region.len()));
    }
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    Ok(rss_in_ranges(&smaps, &ranges))
}

/// Sum the `Rss:` of every smaps entry lying inside one of `ranges` (host addresses).
fn rss_in_ranges(smaps: &str, ranges: &[(u64, u64)]) -> u64 {
    let mut total = 0;
    let mut inside = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-') {
            if let (Ok(start), Ok(end)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
                inside = ranges.iter().any(|(s, e)| start >= *s && end <= *e);
                continue;
            }
        }
        if inside {
            if let Some(rest) = line.strip_prefix("Rss:") {
                let kib: u64 = rest
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                total += kib * 1024;
            }
        }
    }
    total
}

/// This process's resident set size in bytes (from /proc/self/statm).
pub fn process_rss_bytes() -> std::io::Result<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm")?;
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("unexpected /proc/self/statm format"))?;
    Ok(pages * 4096)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn resident_bytes_count_touched_pages() {
        let mem = create_guest_memory(32).unwrap();
        let before = guest_resident_bytes(&mem).unwrap();
        assert_eq!(before, 0, "fresh anonymous memory is not resident");
        for i in 0..10u64 {
            mem.write_obj(1u8, GuestAddress(0x10_0000 + i * 4096))
                .unwrap();
        }
        assert_eq!(guest_resident_bytes(&mem).unwrap(), 10 * 4096);
        // Reading untouched memory maps the zero page: not counted.
        let _: u64 = mem.read_obj(GuestAddress(0x20_0000)).unwrap();
        assert_eq!(guest_resident_bytes(&mem).unwrap(), 10 * 4096);
        assert!(process_rss_bytes().unwrap() >= 10 * 4096);
    }

    #[test]
    fn smaps_parsing() {
        let smaps = "1000-3000 rw-p 00000000 00:00 0\nSize: 8 kB\nRss: 8 kB\n\
                     5000-6000 rw-p 00000000 00:00 0\nRss: 4 kB\n\
                     ffff0000-ffff1000 r-xp 00000000 00:00 0 [vdso]\nRss: 4 kB\n";
        assert_eq!(rss_in_ranges(smaps, &[(0x1000, 0x6000)]), 12 * 1024);
        assert_eq!(rss_in_ranges(smaps, &[(0x1000, 0x3000)]), 8 * 1024);
        assert_eq!(rss_in_ranges(smaps, &[]), 0);
    }
}
