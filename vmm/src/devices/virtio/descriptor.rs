//! Bounded, checked access to the buffers of one descriptor chain.
//!
//! A chain is guest-controlled: its descriptors may point anywhere, overlap, be empty
//! or loop. [`ChainBuffers::new`] walks the chain once (the `virtio_queue` iterator stops
//! after `queue size` descriptors, so a loop cannot spin) and keeps the device-readable
//! and device-writable parts apart. Every later access is bounds-checked against both
//! the chain's own lengths and guest memory, and fails with a [`DescriptorError`]
//! instead of panicking.

use std::ops::Deref;

use virtio_queue::DescriptorChain;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory};

use crate::GuestMemoryMmap;

/// Errors from accessing a descriptor chain's buffers.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum DescriptorError {
    /// The access does not fit in the chain's buffers of that direction.
    #[error("{len} bytes at offset {offset} do not fit in the chain's {available} bytes")]
    TooShort {
        /// Offset of the access.
        offset: usize,
        /// Length of the access.
        len: usize,
        /// Bytes the chain offers in that direction.
        available: usize,
    },
    /// A descriptor points outside guest memory.
    #[error("descriptor buffer at {addr:#x} (+{len:#x}) is outside guest memory")]
    OutOfMemory {
        /// Guest physical address of the failing part.
        addr: u64,
        /// Its length.
        len: usize,
    },
}

/// One direction's buffers: (guest address, length) pairs.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Segments {
    segs: Vec<(GuestAddress, u32)>,
    total: usize,
}

impl Segments {
    fn push(&mut self, addr: GuestAddress, len: u32) {
        if len == 0 {
            return;
        }
        self.segs.push((addr, len));
        self.total = self.total.saturating_add(len as usize);
    }

    /// Total length in bytes.
    pub fn len(&self) -> usize {
        self.total
    }

    /// Whether there are no bytes at all.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Walk `[offset, offset + len)` across segments, calling `f(addr, start_in_access,
    /// part_len)` for each piece.
    fn walk(
        &self,
        offset: usize,
        len: usize,
        mut f: impl FnMut(GuestAddress, usize, usize) -> Result<(), DescriptorError>,
    ) -> Result<(), DescriptorError> {
        let too_short = DescriptorError::TooShort {
            offset,
            len,
            available: self.total,
        };
        let end = offset.checked_add(len).ok_or(too_short.clone())?;
        if end > self.total {
            return Err(too_short);
        }
        let mut seg_start = 0usize;
        let mut done = 0usize;
        for &(addr, seg_len) in &self.segs {
            if done == len {
                break;
            }
            let seg_len = seg_len as usize;
            let seg_end = seg_start + seg_len;
            let pos = offset + done;
            if pos < seg_end {
                let in_seg = pos - seg_start;
                let part = (seg_len - in_seg).min(len - done);
                let part_addr =
                    addr.checked_add(in_seg as u64)
                        .ok_or(DescriptorError::OutOfMemory {
                            addr: addr.0,
                            len: part,
                        })?;
                f(part_addr, done, part)?;
                done += part;
            }
            seg_start = seg_end;
        }
        Ok(())
    }
}

/// The buffers of one popped descriptor chain.
#[derive(Debug, Clone)]
pub struct ChainBuffers {
    /// Head index, to return the chain to the used ring.
    pub head: u16,
    /// Device-readable buffers (driver → device).
    pub readable: Segments,
    /// Device-writable buffers (device → driver).
    pub writable: Segments,
}

impl ChainBuffers {
    /// Split `chain` into its readable and writable buffers. Zero-length descriptors are
    /// skipped; a chain that ends early (bad index, bad indirect table) keeps what it had.
    pub fn new<M>(chain: DescriptorChain<M>) -> Self
    where
        M: Deref,
        M::Target: GuestMemory,
    {
        let head = chain.head_index();
        let mut readable = Segments::default();
        let mut writable = Segments::default();
        for desc in chain {
            if desc.is_write_only() {
                writable.push(desc.addr(), desc.len());
            } else {
                readable.push(desc.addr(), desc.len());
            }
        }
        Self {
            head,
            readable,
            writable,
        }
    }

    /// Read `buf.len()` bytes of the readable part, starting at `offset`.
    pub fn read_at(
        &self,
        mem: &GuestMemoryMmap,
        offset: usize,
        buf: &mut [u8],
    ) -> Result<(), DescriptorError> {
        self.readable.walk(offset, buf.len(), |addr, at, part| {
            mem.read_slice(&mut buf[at..at + part], addr).map_err(|_| {
                DescriptorError::OutOfMemory {
                    addr: addr.0,
                    len: part,
                }
            })
        })
    }

    /// Write `data` into the writable part, starting at `offset`.
    pub fn write_at(
        &self,
        mem: &GuestMemoryMmap,
        offset: usize,
        data: &[u8],
    ) -> Result<(), DescriptorError> {
        self.writable.walk(offset, data.len(), |addr, at, part| {
            mem.write_slice(&data[at..at + part], addr)
                .map_err(|_| DescriptorError::OutOfMemory {
                    addr: addr.0,
                    len: part,
                })
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::{Queue, QueueOwnedT};

    pub(crate) const F_NEXT: u16 = 1;
    pub(crate) const F_WRITE: u16 = 2;

    pub(crate) fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    pub(crate) fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
    }

    fn first_chain(m: &GuestMemoryMmap, descs: &[RawDescriptor]) -> ChainBuffers {
        let vq = MockSplitQueue::new(m, 16);
        vq.add_desc_chains(descs, 0).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let chain = q.iter(m).unwrap().next().unwrap();
        ChainBuffers::new(chain)
    }

    #[test]
    fn split_read_write_across_descriptors() {
        let m = mem();
        m.write_slice(b"hello world", GuestAddress(0x1000)).unwrap();
        let c = first_chain(
            &m,
            &[
                desc(0x1000, 5, F_NEXT, 1),
                desc(0x1005, 0, F_NEXT, 2),
                desc(0x1005, 6, F_NEXT, 3),
                desc(0x2000, 3, F_WRITE | F_NEXT, 4),
                desc(0x3000, 10, F_WRITE, 0),
            ],
        );
        assert_eq!(c.readable.len(), 11);
        assert_eq!(c.writable.len(), 13);
        let mut buf = [0u8; 7];
        c.read_at(&m, 3, &mut buf).unwrap();
        assert_eq!(&buf, b"lo worl");
        c.write_at(&m, 1, b"abcdef").unwrap();
        let mut out = [0u8; 2];
        m.read_slice(&mut out, GuestAddress(0x2001)).unwrap();
        assert_eq!(&out, b"ab");
        let mut out = [0u8; 4];
        m.read_slice(&mut out, GuestAddress(0x3000)).unwrap();
        assert_eq!(&out, b"cdef");
        assert_eq!(
            c.read_at(&m, 5, &mut [0u8; 7]),
            Err(DescriptorError::TooShort {
                offset: 5,
                len: 7,
                available: 11
            })
        );
        assert_eq!(
            c.write_at(&m, usize::MAX, b"x"),
            Err(DescriptorError::TooShort {
                offset: usize::MAX,
                len: 1,
                available: 13
            })
        );
    }

    #[test]
    fn out_of_memory_buffers_fail_cleanly() {
        let m = mem();
        let c = first_chain(
            &m,
            &[
                desc(0xf_fff0, 0x20, 0, 0), // crosses the end of guest memory
            ],
        );
        assert_eq!(
            c.read_at(&m, 0, &mut [0u8; 0x20]),
            Err(DescriptorError::OutOfMemory {
                addr: 0xf_fff0,
                len: 0x20
            })
        );
        let c = first_chain(&m, &[desc(u64::MAX - 3, 8, F_WRITE, 0)]);
        assert!(matches!(
            c.write_at(&m, 4, &[1, 2, 3, 4]),
            Err(DescriptorError::OutOfMemory { .. })
        ));
    }

    #[test]
    fn looping_chain_is_cut_at_queue_size() {
        let m = mem();
        // 0 -> 1 -> 0 -> ...: the iterator gives up after 16 (queue size) descriptors.
        let c = first_chain(
            &m,
            &[desc(0x1000, 4, F_NEXT, 1), desc(0x2000, 4, F_NEXT, 0)],
        );
        assert_eq!(c.readable.len(), 16 * 4);
    }
}
