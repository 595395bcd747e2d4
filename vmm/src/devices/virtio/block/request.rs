//! virtio-blk requests: parsing one descriptor chain (guest-controlled, so hostile) and
//! carrying it out on the drive's image file.
//!
//! A request is a device-readable 16-byte header (type, reserved, sector), data
//! descriptors (device-writable for reads, device-readable for writes) and a final
//! device-writable status descriptor. Every part is checked before any I/O: header and
//! status direction and size, every data descriptor's direction and that it lies in
//! guest memory, the data length (a multiple of 512), and the sector range against the
//! image size with overflow-checked arithmetic. I/O goes through a fixed 64 KiB bounce
//! buffer, so a huge descriptor never makes the VMM allocate.

use std::fs::File;
use std::os::unix::fs::FileExt;

use virtio_queue::DescriptorChain;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, GuestMemoryBackend};

use crate::GuestMemoryMmap;

/// Bytes per sector (virtio-blk's unit, whatever the image's block size).
pub const SECTOR_SIZE: u64 = 512;
/// Read from the device.
pub const VIRTIO_BLK_T_IN: u32 = 0;
/// Write to the device.
pub const VIRTIO_BLK_T_OUT: u32 = 1;
/// Flush the device's write cache.
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
/// Read the device's id string.
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;
/// Status: success.
pub const VIRTIO_BLK_S_OK: u8 = 0;
/// Status: I/O error (also: malformed request, write to a read-only drive).
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
/// Status: unsupported request type.
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;
/// Length of the GET_ID answer.
pub const VIRTIO_BLK_ID_BYTES: usize = 20;
/// Length of the request header.
pub const HEADER_LEN: u32 = 16;
/// Size of the bounce buffer used for data transfers.
const CHUNK: usize = 64 * 1024;

/// Why a request failed. All but `Unsupported` are answered with `VIRTIO_BLK_S_IOERR`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The last descriptor is not a device-writable buffer of at least one byte in
    /// guest memory: there is nowhere to put the status.
    #[error("no status descriptor: the last descriptor must be device-writable, at least 1 byte, in guest memory")]
    NoStatus,
    /// The first descriptor is not a device-readable header of at least 16 bytes.
    #[error("the first descriptor must be a device-readable header of at least 16 bytes")]
    BadHeader,
    /// A buffer lies outside guest memory.
    #[error("buffer at {addr:#x} (+{len:#x}) is outside guest memory")]
    OutOfMemory {
        /// Guest address.
        addr: u64,
        /// Length.
        len: u32,
    },
    /// A data descriptor has the wrong direction for the request type.
    #[error("a data descriptor has the wrong direction for request type {0}")]
    WrongDirection(u32),
    /// Data length not a multiple of the sector size.
    #[error("data length {0} is not a multiple of 512")]
    Unaligned(u64),
    /// The sector range ends beyond the image.
    #[error("{len} bytes at sector {sector} do not fit in the image's {capacity} bytes")]
    OutOfRange {
        /// First sector.
        sector: u64,
        /// Data length.
        len: u64,
        /// Image size in bytes.
        capacity: u64,
    },
    /// A type husk does not implement (discard, write-zeroes, ...).
    #[error("unsupported request type {0}")]
    Unsupported(u32),
    /// A write to a read-only drive.
    #[error("write to a read-only drive")]
    ReadOnly,
    /// The host I/O on the image failed.
    #[error("image I/O failed: {0}")]
    Io(String),
}

impl RequestError {
    /// The status byte the guest gets.
    pub fn status(&self) -> u8 {
        match self {
            RequestError::Unsupported(_) => VIRTIO_BLK_S_UNSUPP,
            _ => VIRTIO_BLK_S_IOERR,
        }
    }
}

/// One descriptor of a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desc {
    /// Guest address.
    pub addr: GuestAddress,
    /// Length.
    pub len: u32,
    /// Device-writable.
    pub write: bool,
}

/// A chain's descriptors, in order (the `virtio_queue` iterator stops after queue-size
/// descriptors, so a looping chain is cut).
pub fn collect<M>(chain: DescriptorChain<M>) -> (u16, Vec<Desc>)
where
    M: std::ops::Deref,
    M::Target: GuestMemory,
{
    let head = chain.head_index();
    let descs = chain
        .map(|d| Desc {
            addr: d.addr(),
            len: d.len(),
            write: d.is_write_only(),
        })
        .collect();
    (head, descs)
}

/// The request type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestType {
    /// Read sectors into the data buffers.
    In,
    /// Write the data buffers to sectors.
    Out,
    /// fsync the image.
    Flush,
    /// Write the id string (the drive id) into the data buffer.
    GetId,
}

/// A checked request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// What to do.
    pub kind: RequestType,
    /// First sector (In/Out).
    pub sector: u64,
    /// Data buffers, each checked to lie in guest memory.
    pub data: Vec<(GuestAddress, u32)>,
    /// Their total length.
    pub data_len: u64,
}

/// Where the status byte goes: the last byte of the last descriptor, if that is a
/// device-writable buffer in guest memory.
pub fn status_addr(mem: &GuestMemoryMmap, descs: &[Desc]) -> Option<GuestAddress> {
    let last = descs.last()?;
    if !last.write || last.len == 0 {
        return None;
    }
    let addr = last.addr.checked_add(u64::from(last.len) - 1)?;
    GuestMemoryBackend::address_in_range(mem, addr).then_some(addr)
}

fn in_memory(mem: &GuestMemoryMmap, d: &Desc) -> Result<(), RequestError> {
    let oom = RequestError::OutOfMemory {
        addr: d.addr.0,
        len: d.len,
    };
    // check_range walks the regions, so a buffer spanning a hole is refused too.
    if d.len == 0 || GuestMemoryBackend::check_range(mem, d.addr, d.len as usize) {
        Ok(())
    } else {
        Err(oom)
    }
}

/// Parse a chain (header first, status last) for a drive of `capacity` bytes.
pub fn parse(
    mem: &GuestMemoryMmap,
    descs: &[Desc],
    capacity: u64,
) -> Result<Request, RequestError> {
    if status_addr(mem, descs).is_none() {
        return Err(RequestError::NoStatus);
    }
    // At least two descriptors: a chain of one is its own status (checked above), with
    // no header.
    let (header, rest) = descs.split_first().ok_or(RequestError::BadHeader)?;
    let Some((_status, data)) = rest.split_last() else {
        return Err(RequestError::BadHeader);
    };
    if header.write || header.len < HEADER_LEN {
        return Err(RequestError::BadHeader);
    }
    let mut raw = [0u8; HEADER_LEN as usize];
    mem.read_slice(&mut raw, header.addr)
        .map_err(|_| RequestError::OutOfMemory {
            addr: header.addr.0,
            len: header.len,
        })?;
    let [t0, t1, t2, t3, _, _, _, _, s0, s1, s2, s3, s4, s5, s6, s7] = raw;
    let typ = u32::from_le_bytes([t0, t1, t2, t3]);
    let sector = u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]);
    let kind = match typ {
        VIRTIO_BLK_T_IN => RequestType::In,
        VIRTIO_BLK_T_OUT => RequestType::Out,
        VIRTIO_BLK_T_FLUSH => RequestType::Flush,
        VIRTIO_BLK_T_GET_ID => RequestType::GetId,
        other => return Err(RequestError::Unsupported(other)),
    };
    let want_write = matches!(kind, RequestType::In | RequestType::GetId);
    let mut bufs = Vec::with_capacity(data.len());
    let mut data_len = 0u64;
    for d in data {
        if d.len == 0 {
            continue;
        }
        if d.write != want_write {
            return Err(RequestError::WrongDirection(typ));
        }
        in_memory(mem, d)?;
        // The queue cuts chains longer than 2^32 bytes; u64 cannot overflow anyway.
        data_len += u64::from(d.len);
        bufs.push((d.addr, d.len));
    }
    match kind {
        RequestType::In | RequestType::Out => {
            if !data_len.is_multiple_of(SECTOR_SIZE) {
                return Err(RequestError::Unaligned(data_len));
            }
            let out_of_range = RequestError::OutOfRange {
                sector,
                len: data_len,
                capacity,
            };
            let end = sector
                .checked_mul(SECTOR_SIZE)
                .and_then(|start| start.checked_add(data_len))
                .ok_or(out_of_range.clone())?;
            if end > capacity {
                return Err(out_of_range);
            }
        }
        RequestType::Flush => {
            if data_len != 0 {
                return Err(RequestError::WrongDirection(typ));
            }
        }
        RequestType::GetId => {}
    }
    Ok(Request {
        kind,
        sector,
        data: bufs,
        data_len,
    })
}

fn io_err(e: impl std::fmt::Display) -> RequestError {
    RequestError::Io(e.to_string())
}

impl Request {
    /// Carry the request out on `file`. Returns the bytes written into guest buffers
    /// (not counting the status byte).
    pub fn execute(
        &self,
        mem: &GuestMemoryMmap,
        file: &File,
        read_only: bool,
        id: &[u8; VIRTIO_BLK_ID_BYTES],
    ) -> Result<u32, RequestError> {
        match self.kind {
            RequestType::In => {
                let mut buf = vec![0u8; CHUNK];
                let mut pos = self.sector * SECTOR_SIZE; // checked in parse
                for &(addr, len) in &self.data {
                    let mut done = 0u64;
                    while done < u64::from(len) {
                        let n = (u64::from(len) - done).min(CHUNK as u64) as usize;
                        file.read_exact_at(&mut buf[..n], pos).map_err(io_err)?;
                        mem.write_slice(&buf[..n], addr.unchecked_add(done))
                            .map_err(io_err)?;
                        done += n as u64;
                        pos += n as u64;
                    }
                }
                // The queue cuts chains longer than 2^32 bytes, so this fits.
                Ok(u32::try_from(self.data_len).unwrap_or(u32::MAX))
            }
            RequestType::Out => {
                if read_only {
                    return Err(RequestError::ReadOnly);
                }
                let mut buf = vec![0u8; CHUNK];
                let mut pos = self.sector * SECTOR_SIZE;
                for &(addr, len) in &self.data {
                    let mut done = 0u64;
                    while done < u64::from(len) {
                        let n = (u64::from(len) - done).min(CHUNK as u64) as usize;
                        mem.read_slice(&mut buf[..n], addr.unchecked_add(done))
                            .map_err(io_err)?;
                        file.write_all_at(&buf[..n], pos).map_err(io_err)?;
                        done += n as u64;
                        pos += n as u64;
                    }
                }
                Ok(0)
            }
            RequestType::Flush => {
                if !read_only {
                    file.sync_all().map_err(io_err)?;
                }
                Ok(0)
            }
            RequestType::GetId => {
                let mut written = 0usize;
                for &(addr, len) in &self.data {
                    let n = (len as usize).min(VIRTIO_BLK_ID_BYTES - written);
                    if n == 0 {
                        break;
                    }
                    mem.write_slice(&id[written..written + n], addr)
                        .map_err(io_err)?;
                    written += n;
                }
                Ok(written as u32)
            }
        }
    }
}
