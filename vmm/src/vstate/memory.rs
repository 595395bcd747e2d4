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
///
/// The mappings are marked `MADV_DONTDUMP`: guest RAM stays out of VMM core dumps
/// (it is the guest's data, and large), and the distinct VMA flag keeps the kernel
/// from merging guest RAM with other anonymous mappings, so its RSS can be told apart
/// in /proc/self/smaps.
pub fn create_guest_memory(mem_mib: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let regions = arch_memory_regions(mem_mib << 20);
    let pad = regions.first().and_then(|&(_, len)| AlignPad::new(len));
    let mem = GuestMemoryMmap::from_ranges(&regions).map_err(|source| MemoryError::Create {
        mib: mem_mib,
        source,
    })?;
    drop(pad);
    for region in mem.iter() {
        let host = mem
            .get_host_address(region.start_addr())
            .map_err(|_| MemoryError::HostAddress(region.start_addr().0))?;
        if region.start_addr().0 == 0 {
            log::debug!(
                "guest RAM at host address {host:p} ({}2 MiB-aligned)",
                if (host as usize).is_multiple_of(HUGE_PAGE) {
                    ""
                } else {
                    "not "
                }
            );
        }
        // SAFETY: [host, host + len) is a mapping owned by `mem`; MADV_DONTDUMP only
        // changes a VMA flag and never touches the contents.
        let rc = unsafe { libc::madvise(host.cast(), region.len() as usize, libc::MADV_DONTDUMP) };
        if rc != 0 {
            log::warn!(
                "madvise(MADV_DONTDUMP) on guest memory failed: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(mem)
}

const HUGE_PAGE: usize = 2 << 20;

/// A placeholder mapping that makes the next anonymous mapping of `len` bytes start on
/// a 2 MiB boundary, best effort. KVM maps guest memory with 2 MiB (nested) page table
/// entries only where guest-physical and host-virtual addresses agree modulo 2 MiB, so
/// RAM at guest address 0 needs a 2 MiB-aligned host address; otherwise every 4 KiB the
/// guest touches is a separate fault (a boot in the emulated test host: about 5700
/// nested page faults instead of about 900, more than half of all VM exits). Linux
/// places anonymous mappings top-down: the free spot found for a probe mapping of
/// `len` bytes, lowered by a placeholder of (probe address mod 2 MiB), is aligned. If
/// another thread maps memory in between, the mapping is merely unaligned.
struct AlignPad {
    addr: *mut libc::c_void,
    len: usize,
}

impl AlignPad {
    fn new(len: usize) -> Option<Self> {
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
        // SAFETY: a fresh PROT_NONE mapping at an address of the kernel's choice; it
        // overlaps nothing and is unmapped right away.
        let probe = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_NONE, flags, -1, 0) };
        if probe == libc::MAP_FAILED {
            return None;
        }
        // SAFETY: `probe` is the mapping of `len` bytes created just above.
        unsafe { libc::munmap(probe, len) };
        let pad = (probe as usize) % HUGE_PAGE;
        if pad == 0 {
            return None;
        }
        // SAFETY: as above: a new PROT_NONE mapping, owned by the returned value.
        let addr = unsafe { libc::mmap(std::ptr::null_mut(), pad, libc::PROT_NONE, flags, -1, 0) };
        (addr != libc::MAP_FAILED).then_some(Self { addr, len: pad })
    }
}

impl Drop for AlignPad {
    fn drop(&mut self) {
        // SAFETY: `addr`/`len` is the placeholder mapping this value created; nothing
        // else refers to it.
        unsafe { libc::munmap(self.addr, self.len) };
    }
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

/// The host address ranges backing `mem`.
fn host_ranges(mem: &GuestMemoryMmap) -> std::io::Result<Vec<(u64, u64)>> {
    let mut ranges = Vec::new();
    for region in mem.iter() {
        let host = mem
            .get_host_address(region.start_addr())
            .map_err(|e| std::io::Error::other(e.to_string()))? as u64;
        ranges.push((host, host + region.len()));
    }
    Ok(ranges)
}

/// Sum the `Rss:` of every smaps entry lying inside `ranges` (host addresses; adjacent
/// ranges count as one, since the kernel may merge their mappings).
fn rss_in_ranges(smaps: &str, ranges: &[(u64, u64)]) -> u64 {
    let mut sorted = ranges.to_vec();
    sorted.sort_unstable();
    let mut union: Vec<(u64, u64)> = Vec::new();
    for (s, e) in sorted {
        match union.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => union.push((s, e)),
        }
    }
    let ranges = union;
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

/// Read a whole file with plain `read(2)` calls only (no fstat/lseek), so it works
/// under the VMM thread's seccomp filter on a file opened before the filter.
fn read_plain(f: &mut std::fs::File) -> std::io::Result<String> {
    use std::io::Read;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let n = f.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8(buf).map_err(std::io::Error::other)
}

/// /proc/self/statm and /proc/self/smaps, opened ahead of time (before seccomp) to
/// measure memory use once later.
#[derive(Debug)]
pub struct MemoryProbe {
    statm: std::fs::File,
    smaps: std::fs::File,
}

impl MemoryProbe {
    /// Open the proc files.
    pub fn open() -> std::io::Result<Self> {
        Ok(Self {
            statm: std::fs::File::open("/proc/self/statm")?,
            smaps: std::fs::File::open("/proc/self/smaps")?,
        })
    }

    /// (process RSS, bytes of `mem` in that RSS). Consumes the probe: each file is
    /// read once from its start.
    pub fn measure(mut self, mem: &GuestMemoryMmap) -> std::io::Result<(u64, u64)> {
        let statm = read_plain(&mut self.statm)?;
        let pages: u64 = statm
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other("unexpected /proc/self/statm format"))?;
        let smaps = read_plain(&mut self.smaps)?;
        Ok((pages * 4096, rss_in_ranges(&smaps, &host_ranges(mem)?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn resident_bytes_count_touched_pages() {
        let mem = create_guest_memory(32).unwrap();
        let (_, before) = MemoryProbe::open().unwrap().measure(&mem).unwrap();
        assert_eq!(before, 0, "fresh anonymous memory is not resident");
        for i in 0..10u64 {
            mem.write_obj(1u8, GuestAddress(0x10_0000 + i * 4096))
                .unwrap();
        }
        let (_, guest) = MemoryProbe::open().unwrap().measure(&mem).unwrap();
        assert_eq!(guest, 10 * 4096);
        // Reading untouched memory maps the zero page: not counted.
        let _: u64 = mem.read_obj(GuestAddress(0x20_0000)).unwrap();
        let (rss, guest) = MemoryProbe::open().unwrap().measure(&mem).unwrap();
        assert_eq!(guest, 10 * 4096);
        assert!(rss >= 10 * 4096);
    }

    #[test]
    fn guest_ram_at_address_0_is_2_mib_aligned_on_the_host() {
        // Best effort (another test thread may map memory in between): one of a few
        // tries must be aligned; by chance 1 in 512 would be. Linux 6.7 and later align
        // large anonymous mappings themselves, so this discriminates only on older
        // kernels (Debian 12's 6.1, the emulated test host's L1).
        let aligned = (0..8).any(|_| {
            let mem = create_guest_memory(64).unwrap();
            let host = mem.get_host_address(GuestAddress(0)).unwrap();
            (host as usize).is_multiple_of(HUGE_PAGE)
        });
        assert!(aligned, "guest RAM never started on a 2 MiB boundary");
    }

    #[test]
    fn smaps_parsing() {
        let smaps = "1000-3000 rw-p 00000000 00:00 0\nSize: 8 kB\nRss: 8 kB\n\
                     5000-6000 rw-p 00000000 00:00 0\nRss: 4 kB\n\
                     ffff0000-ffff1000 r-xp 00000000 00:00 0 [vdso]\nRss: 4 kB\n";
        assert_eq!(rss_in_ranges(smaps, &[(0x1000, 0x6000)]), 12 * 1024);
        assert_eq!(rss_in_ranges(smaps, &[(0x1000, 0x3000)]), 8 * 1024);
        assert_eq!(rss_in_ranges(smaps, &[]), 0);
        // Adjacent ranges whose mappings merged still count.
        assert_eq!(
            rss_in_ranges(smaps, &[(0x2000, 0x3000), (0x1000, 0x2000)]),
            8 * 1024
        );
    }
}
