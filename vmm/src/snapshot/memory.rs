//! The snapshot memory file: guest RAM, regions back to back in guest-address order,
//! sparse where a page is all zeros; restored by mapping the file `MAP_PRIVATE`
//! (lazy and copy-on-write: restore cost does not grow with guest size, and many
//! clones share the page cache).

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, GuestRegionMmap};

use super::format::{write_atomic, FormatError};
use crate::GuestMemoryMmap;

const PAGE: usize = 4096;
/// Most guest memory regions a state may describe (x86_64 has at most two).
pub const MAX_REGIONS: usize = 8;

/// One guest memory region as the state file records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionState {
    /// Guest physical start address.
    pub base: u64,
    /// Length in bytes (page multiple).
    pub size: u64,
    /// Offset of its contents in the memory file.
    pub offset: u64,
}

/// The guest memory layout (`GuestMemoryState`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestMemoryState {
    /// Regions, sorted by address, file offsets back to back.
    pub regions: Vec<RegionState>,
}

/// Errors saving or mapping the memory file.
#[derive(Debug, thiserror::Error)]
pub enum MemoryFileError {
    /// Writing the memory file failed.
    #[error(transparent)]
    Write(#[from] FormatError),
    /// Opening or inspecting the memory file failed.
    #[error("cannot open the snapshot memory file {0}")]
    Open(PathBuf, #[source] std::io::Error),
    /// The memory file is shorter than the state says.
    #[error("the snapshot memory file {path} has {found} bytes but the state needs {needed}: wrong or truncated memory file")]
    TooShort {
        /// The file.
        path: PathBuf,
        /// Its size.
        found: u64,
        /// What the regions need.
        needed: u64,
    },
    /// The recorded layout is invalid.
    #[error("invalid guest memory layout in the snapshot state: {0}")]
    BadLayout(&'static str),
    /// mmap of the memory file failed.
    #[error("cannot map the snapshot memory file")]
    Map(#[source] vm_memory::mmap::MmapRegionError),
}

/// Sizes of a written memory file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryFileReport {
    /// Apparent size (guest RAM size).
    pub apparent: u64,
    /// Blocks actually allocated on disk.
    pub allocated: u64,
}

/// The layout of `mem` as the state file records it.
pub fn layout(mem: &GuestMemoryMmap) -> GuestMemoryState {
    let mut offset = 0;
    let regions = mem
        .iter()
        .map(|r| {
            let s = RegionState {
                base: r.start_addr().0,
                size: r.len(),
                offset,
            };
            offset += r.len();
            s
        })
        .collect();
    GuestMemoryState { regions }
}

/// Write guest RAM to `path` atomically, seeking over all-zero pages so the file is
/// sparse where the guest never wrote. Call with the vCPUs paused.
pub fn save(mem: &GuestMemoryMmap, path: &Path) -> Result<MemoryFileReport, MemoryFileError> {
    let total: u64 = mem.iter().map(|r| r.len()).sum();
    write_atomic(path, |f| {
        for region in mem.iter() {
            let host = region.as_ptr();
            let len = region.len() as usize;
            // SAFETY: [host, host + len) is the live mapping of this region, owned by
            // `mem` for the duration of this call; the vCPUs are paused so nothing
            // writes it concurrently (a racing write would only make the copy stale).
            let bytes = unsafe { std::slice::from_raw_parts(host as *const u8, len) };
            for page in bytes.chunks(PAGE) {
                if page.iter().all(|&b| b == 0) {
                    f.seek(SeekFrom::Current(page.len() as i64))?;
                } else {
                    f.write_all(page)?;
                }
            }
        }
        f.set_len(total)
    })?;
    let meta = std::fs::metadata(path).map_err(|e| MemoryFileError::Open(path.into(), e))?;
    Ok(MemoryFileReport {
        apparent: meta.len(),
        allocated: meta.blocks() * 512,
    })
}

/// Validate `state` (sorted, page-aligned, non-overlapping, back-to-back offsets, at
/// most `max_bytes` in total) and return the bytes the memory file must hold.
pub fn validate(state: &GuestMemoryState, max_bytes: u64) -> Result<u64, MemoryFileError> {
    let bad = MemoryFileError::BadLayout;
    if state.regions.is_empty() || state.regions.len() > MAX_REGIONS {
        return Err(bad("region count"));
    }
    let mut next_offset = 0u64;
    let mut prev_end = 0u64;
    for r in &state.regions {
        if r.size == 0 || r.size % PAGE as u64 != 0 || r.base % PAGE as u64 != 0 {
            return Err(bad("a region is empty or not page aligned"));
        }
        let end = r.base.checked_add(r.size).ok_or(bad("a region wraps"))?;
        if r.base < prev_end {
            return Err(bad("regions overlap or are unsorted"));
        }
        if r.offset != next_offset {
            return Err(bad("file offsets are not back to back"));
        }
        next_offset = next_offset
            .checked_add(r.size)
            .ok_or(bad("total size overflows"))?;
        prev_end = end;
    }
    if next_offset > max_bytes {
        return Err(bad("more guest memory than this host allows"));
    }
    Ok(next_offset)
}

/// Map the memory file `MAP_PRIVATE` per the (validated here) layout.
pub fn map(
    state: &GuestMemoryState,
    path: &Path,
    max_bytes: u64,
) -> Result<GuestMemoryMmap, MemoryFileError> {
    let needed = validate(state, max_bytes)?;
    let file = File::open(path).map_err(|e| MemoryFileError::Open(path.into(), e))?;
    let found = file
        .metadata()
        .map_err(|e| MemoryFileError::Open(path.into(), e))?
        .len();
    if found < needed {
        return Err(MemoryFileError::TooShort {
            path: path.into(),
            found,
            needed,
        });
    }
    let file = std::sync::Arc::new(file);
    let mut regions = Vec::with_capacity(state.regions.len());
    for r in &state.regions {
        let mapping = MmapRegionBuilder::new(r.size as usize)
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .with_file_offset(FileOffset::from_arc(file.clone(), r.offset))
            .build()
            .map_err(MemoryFileError::Map)?;
        let region = GuestRegionMmap::new(mapping, GuestAddress(r.base))
            .ok_or(MemoryFileError::BadLayout("a region wraps"))?;
        regions.push(region);
    }
    GuestMemoryMmap::from_regions(regions)
        .map_err(|_| MemoryFileError::BadLayout("regions overlap or are unsorted"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    fn tmp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("husk-mem-{}-{name}", std::process::id()))
    }

    #[test]
    fn sparse_save_and_private_map_roundtrip() {
        let mem = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 1 << 20),
            (GuestAddress(0x1_0000_0000), 1 << 20),
        ])
        .unwrap();
        mem.write_obj(0xdead_beef_u32, GuestAddress(0x1000))
            .unwrap();
        mem.write_obj(0x55_u8, GuestAddress(0x1_0000_0fff)).unwrap();
        let p = tmp("sparse");
        let report = save(&mem, &p).unwrap();
        assert_eq!(report.apparent, 2 << 20);
        // Two non-zero pages: allocation is far below the apparent size (tmpfs and
        // ext4 both honour holes).
        assert!(report.allocated < report.apparent / 4, "{report:?}");

        let state = layout(&mem);
        let restored = map(&state, &p, 1 << 40).unwrap();
        assert_eq!(
            restored.read_obj::<u32>(GuestAddress(0x1000)).unwrap(),
            0xdead_beef
        );
        assert_eq!(
            restored
                .read_obj::<u8>(GuestAddress(0x1_0000_0fff))
                .unwrap(),
            0x55
        );
        // Copy-on-write: writes to the restored memory never reach the file.
        restored.write_obj(7u32, GuestAddress(0x1000)).unwrap();
        let again = map(&state, &p, 1 << 40).unwrap();
        assert_eq!(
            again.read_obj::<u32>(GuestAddress(0x1000)).unwrap(),
            0xdead_beef
        );
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn short_file_and_bad_layouts_are_refused() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let p = tmp("short");
        save(&mem, &p).unwrap();
        let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        f.set_len(4096).unwrap();
        let e = map(&layout(&mem), &p, 1 << 40).unwrap_err();
        assert!(
            matches!(e, MemoryFileError::TooShort { found: 4096, .. }),
            "{e}"
        );
        std::fs::remove_file(&p).unwrap();

        let r = |base, size, offset| RegionState { base, size, offset };
        let cases = [
            vec![],
            vec![r(0, 100, 0)],
            vec![r(0, 4096, 4096)],
            vec![r(8192, 4096, 0), r(0, 4096, 4096)],
            vec![r(u64::MAX - 4095, 8192, 0)],
        ];
        for regions in cases {
            let s = GuestMemoryState { regions };
            assert!(validate(&s, 1 << 40).is_err(), "{s:?}");
        }
        let s = GuestMemoryState {
            regions: vec![r(0, 1 << 30, 0)],
        };
        assert!(validate(&s, 1 << 20).is_err());
    }
}
