//! vsock packets: the 44-byte `virtio_vsock_hdr` and its payload, read from and written
//! to descriptor chains with every length checked (the header is guest-controlled).

use crate::devices::virtio::descriptor::{ChainBuffers, DescriptorError};
use crate::GuestMemoryMmap;

/// Size of `struct virtio_vsock_hdr`.
pub const HDR_SIZE: usize = 44;
/// Largest payload husk accepts from or sends to the guest in one packet.
pub const MAX_PKT_DATA: usize = 64 * 1024;
/// The host's CID.
pub const HOST_CID: u64 = 2;
/// Socket type: stream (the only one husk supports).
pub const TYPE_STREAM: u16 = 1;

/// Packet operations (`op` field).
pub mod op {
    /// Connection request.
    pub const REQUEST: u16 = 1;
    /// Connection accepted.
    pub const RESPONSE: u16 = 2;
    /// Connection reset / refused.
    pub const RST: u16 = 3;
    /// One or both directions shut down (flags say which).
    pub const SHUTDOWN: u16 = 4;
    /// Data.
    pub const RW: u16 = 5;
    /// Unsolicited credit information.
    pub const CREDIT_UPDATE: u16 = 6;
    /// Ask the peer for a credit update.
    pub const CREDIT_REQUEST: u16 = 7;
}

/// OP_SHUTDOWN flag: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// OP_SHUTDOWN flag: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;

/// Why a packet from the guest was dropped.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PacketError {
    /// The chain could not be read (too short for a header, or outside guest memory).
    #[error("cannot read the packet")]
    Descriptor(#[source] DescriptorError),
    /// The header announces more payload than husk accepts.
    #[error("packet payload of {0} bytes is larger than the {MAX_PKT_DATA}-byte limit")]
    TooBig(u32),
    /// The header announces more payload than the chain holds.
    #[error("packet announces {len} payload bytes but the chain holds only {available}")]
    Truncated {
        /// Announced payload length.
        len: u32,
        /// Bytes after the header in the chain.
        available: usize,
    },
    /// The chain's writable part cannot hold a header.
    #[error("receive buffer of {0} bytes cannot hold a packet header")]
    RxBufferTooSmall(usize),
}

/// `struct virtio_vsock_hdr`, host byte order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VsockHeader {
    /// Source CID.
    pub src_cid: u64,
    /// Destination CID.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Payload length.
    pub len: u32,
    /// Socket type.
    pub type_: u16,
    /// Operation.
    pub op: u16,
    /// Operation flags.
    pub flags: u32,
    /// Sender's receive buffer size.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed from its receive buffer, ever (wrapping).
    pub fwd_cnt: u32,
}

fn u32_at(b: &[u8; HDR_SIZE], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8; HDR_SIZE], at: usize) -> u64 {
    u64::from(u32_at(b, at)) | (u64::from(u32_at(b, at + 4)) << 32)
}

impl VsockHeader {
    /// Decode a header (little endian on the wire).
    pub fn from_bytes(b: &[u8; HDR_SIZE]) -> Self {
        Self {
            src_cid: u64_at(b, 0),
            dst_cid: u64_at(b, 8),
            src_port: u32_at(b, 16),
            dst_port: u32_at(b, 20),
            len: u32_at(b, 24),
            type_: u16::from_le_bytes([b[28], b[29]]),
            op: u16::from_le_bytes([b[30], b[31]]),
            flags: u32_at(b, 32),
            buf_alloc: u32_at(b, 36),
            fwd_cnt: u32_at(b, 40),
        }
    }

    /// Encode the header.
    pub fn to_bytes(&self) -> [u8; HDR_SIZE] {
        let mut b = [0u8; HDR_SIZE];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    /// The RST answering this packet (source and destination swapped, no payload).
    pub fn rst_reply(&self) -> Self {
        Self {
            src_cid: self.dst_cid,
            dst_cid: self.src_cid,
            src_port: self.dst_port,
            dst_port: self.src_port,
            type_: TYPE_STREAM,
            op: op::RST,
            ..Self::default()
        }
    }
}

/// Read one guest packet (header + payload) from the readable part of a tx chain.
pub fn read_packet(
    mem: &GuestMemoryMmap,
    bufs: &ChainBuffers,
) -> Result<(VsockHeader, Vec<u8>), PacketError> {
    let mut raw = [0u8; HDR_SIZE];
    bufs.read_at(mem, 0, &mut raw)
        .map_err(PacketError::Descriptor)?;
    let hdr = VsockHeader::from_bytes(&raw);
    let len = hdr.len as usize;
    if len > MAX_PKT_DATA {
        return Err(PacketError::TooBig(hdr.len));
    }
    let available = bufs.readable.len() - HDR_SIZE;
    if len > available {
        return Err(PacketError::Truncated {
            len: hdr.len,
            available,
        });
    }
    let mut data = vec![0u8; len];
    bufs.read_at(mem, HDR_SIZE, &mut data)
        .map_err(PacketError::Descriptor)?;
    Ok((hdr, data))
}

/// Payload capacity of an rx chain (0 if it cannot even hold a header).
pub fn rx_capacity(bufs: &ChainBuffers) -> Result<usize, PacketError> {
    let total = bufs.writable.len();
    if total < HDR_SIZE {
        return Err(PacketError::RxBufferTooSmall(total));
    }
    Ok((total - HDR_SIZE).min(MAX_PKT_DATA))
}

/// Write a packet into the writable part of an rx chain; returns the used length.
pub fn write_packet(
    mem: &GuestMemoryMmap,
    bufs: &ChainBuffers,
    hdr: &VsockHeader,
    data: &[u8],
) -> Result<u32, PacketError> {
    bufs.write_at(mem, 0, &hdr.to_bytes())
        .map_err(PacketError::Descriptor)?;
    bufs.write_at(mem, HDR_SIZE, data)
        .map_err(PacketError::Descriptor)?;
    // data.len() <= MAX_PKT_DATA (the caller sized it with rx_capacity).
    Ok((HDR_SIZE + data.len()) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::descriptor::tests::{desc, mem, F_NEXT, F_WRITE};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::{Queue, QueueOwnedT};
    use vm_memory::{Bytes, GuestAddress};

    fn chain(m: &GuestMemoryMmap, descs: &[virtio_queue::desc::RawDescriptor]) -> ChainBuffers {
        let vq = MockSplitQueue::new(m, 16);
        vq.add_desc_chains(descs, 0).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let c = q.iter(m).unwrap().next().unwrap();
        ChainBuffers::new(c)
    }

    fn sample() -> VsockHeader {
        VsockHeader {
            src_cid: 3,
            dst_cid: 2,
            src_port: 1234,
            dst_port: 5678,
            len: 5,
            type_: TYPE_STREAM,
            op: op::RW,
            flags: 0,
            buf_alloc: 0x4_0000,
            fwd_cnt: 77,
        }
    }

    #[test]
    fn header_layout_matches_the_spec() {
        let b = sample().to_bytes();
        assert_eq!(&b[0..8], &3u64.to_le_bytes());
        assert_eq!(&b[16..20], &1234u32.to_le_bytes());
        assert_eq!(&b[24..28], &5u32.to_le_bytes());
        assert_eq!(&b[28..32], &[1, 0, 5, 0]);
        assert_eq!(&b[40..44], &77u32.to_le_bytes());
        assert_eq!(VsockHeader::from_bytes(&b), sample());
        let rst = sample().rst_reply();
        assert_eq!(
            (rst.src_cid, rst.dst_cid, rst.src_port, rst.dst_port),
            (2, 3, 5678, 1234)
        );
        assert_eq!((rst.op, rst.len), (op::RST, 0));
    }

    #[test]
    fn header_and_data_split_across_descriptors() {
        let m = mem();
        let raw = sample().to_bytes();
        m.write_slice(&raw[..10], GuestAddress(0x1000)).unwrap();
        m.write_slice(&raw[10..], GuestAddress(0x2000)).unwrap();
        m.write_slice(b"he", GuestAddress(0x2000 + 34)).unwrap();
        m.write_slice(b"llo", GuestAddress(0x3000)).unwrap();
        let c = chain(
            &m,
            &[
                desc(0x1000, 10, F_NEXT, 1),
                desc(0x2000, 36, F_NEXT, 2),
                desc(0x3000, 3, 0, 0),
            ],
        );
        let (hdr, data) = read_packet(&m, &c).unwrap();
        assert_eq!(hdr, sample());
        assert_eq!(data, b"hello");
    }

    #[test]
    fn hostile_packets_are_rejected() {
        let m = mem();
        // Too short for a header.
        let c = chain(&m, &[desc(0x1000, 20, 0, 0)]);
        assert_eq!(
            read_packet(&m, &c),
            Err(PacketError::Descriptor(DescriptorError::TooShort {
                offset: 0,
                len: 44,
                available: 20
            }))
        );
        // Oversized payload.
        let mut h = sample();
        h.len = 64 * 1024 + 1;
        m.write_slice(&h.to_bytes(), GuestAddress(0x1000)).unwrap();
        let c = chain(&m, &[desc(0x1000, 0x2_0000, 0, 0)]);
        assert_eq!(read_packet(&m, &c), Err(PacketError::TooBig(65537)));
        // Payload longer than the chain.
        h.len = 100;
        m.write_slice(&h.to_bytes(), GuestAddress(0x1000)).unwrap();
        let c = chain(&m, &[desc(0x1000, 60, 0, 0)]);
        assert_eq!(
            read_packet(&m, &c),
            Err(PacketError::Truncated {
                len: 100,
                available: 16
            })
        );
        // Header outside guest memory.
        let c = chain(&m, &[desc(0x20_0000, 60, 0, 0)]);
        assert!(matches!(
            read_packet(&m, &c),
            Err(PacketError::Descriptor(DescriptorError::OutOfMemory { .. }))
        ));
        // Rx buffers: too small for a header; capacity capped.
        let c = chain(&m, &[desc(0x1000, 43, F_WRITE, 0)]);
        assert_eq!(rx_capacity(&c), Err(PacketError::RxBufferTooSmall(43)));
        let c = chain(&m, &[desc(0x1000, 0x8_0000, F_WRITE, 0)]);
        assert_eq!(rx_capacity(&c), Ok(MAX_PKT_DATA));
    }

    #[test]
    fn write_packet_into_rx_chain() {
        let m = mem();
        let c = chain(
            &m,
            &[
                desc(0x1000, 30, F_WRITE | F_NEXT, 1),
                desc(0x2000, 100, F_WRITE, 0),
            ],
        );
        assert_eq!(rx_capacity(&c), Ok(86));
        assert_eq!(write_packet(&m, &c, &sample(), b"hello"), Ok(49));
        let mut raw = [0u8; HDR_SIZE];
        m.read_slice(&mut raw[..30], GuestAddress(0x1000)).unwrap();
        m.read_slice(&mut raw[30..], GuestAddress(0x2000)).unwrap();
        assert_eq!(VsockHeader::from_bytes(&raw), sample());
        let mut d = [0u8; 5];
        m.read_slice(&mut d, GuestAddress(0x2000 + 14)).unwrap();
        assert_eq!(&d, b"hello");
    }
}
