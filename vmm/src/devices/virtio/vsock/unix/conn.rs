//! One vsock connection between a guest socket and a host Unix stream: the protocol
//! state, credit-based flow control in both directions, and a bounded buffer for guest
//! data the host socket could not take yet.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::net::Shutdown;
use std::num::Wrapping;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use event_manager::EventSet;

use super::sys::send_nosignal;
use crate::devices::virtio::ratelimit::warn_limited;
use crate::devices::virtio::vsock::packet::{
    op, VsockHeader, HOST_CID, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM,
};

/// Our receive buffer per connection (advertised as `buf_alloc`): the most guest data
/// we hold for a host socket that does not read.
pub const CONN_BUF_SIZE: u32 = 256 * 1024;
/// Time a closing connection has to flush the guest's data to the host.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Send a credit update once this many forwarded bytes have not been reported.
pub const CREDIT_UPDATE_THRESHOLD: u32 = CONN_BUF_SIZE / 2;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// Host-initiated: OP_REQUEST sent (or queued), waiting for the guest's answer.
    AwaitingResponse,
    /// Data flows.
    Established,
    /// The guest shut down both directions; flushing what it sent, then RST.
    Closing,
}

/// What the owner must do with a connection after an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing special.
    Keep,
    /// Tear the connection down and send the guest an RST.
    Kill,
}

/// Packets owed to the guest that carry no data.
#[derive(Debug, Default, Clone, Copy)]
struct Owed {
    request: bool,
    response: bool,
    shutdown: bool,
    credit_update: bool,
}

impl Owed {
    fn any(&self) -> bool {
        self.request || self.response || self.shutdown || self.credit_update
    }
}

/// Result of asking a connection for a packet.
#[derive(Debug)]
pub enum Recv {
    /// A packet, with this many payload bytes at the front of the buffer.
    Packet(VsockHeader, usize),
    /// Nothing to send now.
    Nothing,
    /// The host socket failed: kill the connection.
    Kill,
}

/// One connection.
#[derive(Debug)]
pub struct Conn {
    pub(super) stream: UnixStream,
    pub(super) state: ConnState,
    pub(super) local_port: u32,
    pub(super) peer_port: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    rx_cnt: Wrapping<u32>,
    fwd_cnt: Wrapping<u32>,
    last_fwd_cnt_sent: Wrapping<u32>,
    tx_buf: VecDeque<u8>,
    owed: Owed,
    readable: bool,
    rx_closed: bool,
    peer_shutdown: u32,
    /// Events the descriptor is registered for, if it is registered.
    pub(super) registered: Option<EventSet>,
    /// Whether the connection is in its owner's rx queue.
    pub(super) in_rx_queue: bool,
    /// When the connection is torn down if it has not progressed.
    pub(super) deadline: Option<Instant>,
}

impl Conn {
    fn new(stream: UnixStream, state: ConnState, local_port: u32, peer_port: u32) -> Self {
        Self {
            stream,
            state,
            local_port,
            peer_port,
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            rx_cnt: Wrapping(0),
            fwd_cnt: Wrapping(0),
            last_fwd_cnt_sent: Wrapping(0),
            tx_buf: VecDeque::new(),
            owed: Owed::default(),
            readable: false,
            rx_closed: false,
            peer_shutdown: 0,
            registered: None,
            in_rx_queue: false,
            deadline: None,
        }
    }

    /// A host-initiated connection: OP_REQUEST is owed to the guest.
    pub fn new_local(
        stream: UnixStream,
        local_port: u32,
        peer_port: u32,
        deadline: Instant,
    ) -> Self {
        let mut c = Self::new(stream, ConnState::AwaitingResponse, local_port, peer_port);
        c.owed.request = true;
        c.deadline = Some(deadline);
        c
    }

    /// A guest-initiated connection, already connected on the host: OP_RESPONSE is owed.
    pub fn new_peer(stream: UnixStream, request: &VsockHeader) -> Self {
        let mut c = Self::new(
            stream,
            ConnState::Established,
            request.dst_port,
            request.src_port,
        );
        c.owed.response = true;
        c.update_peer_credit(request);
        c
    }

    /// Record the credit information every guest packet carries.
    pub fn update_peer_credit(&mut self, hdr: &VsockHeader) {
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
    }

    /// Bytes the guest can still take.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Whether the connection has a packet for the guest now.
    pub fn wants_rx(&self) -> bool {
        self.owed.any() || self.can_read_host()
    }

    fn can_read_host(&self) -> bool {
        self.state == ConnState::Established
            && self.readable
            && !self.rx_closed
            && self.peer_credit() > 0
    }

    /// Events to watch the host socket for.
    pub fn interest(&self) -> EventSet {
        let mut set = EventSet::empty();
        if self.state == ConnState::Established && !self.readable && !self.rx_closed {
            set |= EventSet::IN;
        }
        if !self.tx_buf.is_empty() {
            set |= EventSet::OUT;
        }
        set
    }

    /// A header from this connection to the guest.
    pub fn header(&mut self, guest_cid: u64, op: u16) -> VsockHeader {
        self.last_fwd_cnt_sent = self.fwd_cnt;
        self.owed.credit_update = false;
        VsockHeader {
            src_cid: HOST_CID,
            dst_cid: guest_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len: 0,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: CONN_BUF_SIZE,
            fwd_cnt: self.fwd_cnt.0,
        }
    }

    /// The next packet for the guest; data is read from the host socket into `buf`,
    /// never more than the guest's credit. An empty `buf` (an rx buffer with room for the
    /// header only) can carry no data: the host socket is not read (a zero-byte read
    /// would look like EOF), only a data-less packet is returned, and the data waits for
    /// the next buffer.
    pub fn recv_pkt(&mut self, guest_cid: u64, buf: &mut [u8]) -> Recv {
        if self.owed.request {
            self.owed.request = false;
            return Recv::Packet(self.header(guest_cid, op::REQUEST), 0);
        }
        if self.owed.response {
            self.owed.response = false;
            return Recv::Packet(self.header(guest_cid, op::RESPONSE), 0);
        }
        if self.can_read_host() && !buf.is_empty() {
            let max = buf.len().min(self.peer_credit() as usize);
            match (&self.stream).read(&mut buf[..max]) {
                Ok(0) => {
                    // The host side will send no more: tell the guest, keep receiving.
                    self.rx_closed = true;
                    self.readable = false;
                    self.owed.shutdown = true;
                }
                Ok(n) => {
                    // n <= max <= peer credit, a u32.
                    self.rx_cnt += Wrapping(n as u32);
                    let mut hdr = self.header(guest_cid, op::RW);
                    hdr.len = n as u32;
                    return Recv::Packet(hdr, n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.readable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Recv::Kill,
            }
        }
        if self.owed.shutdown {
            self.owed.shutdown = false;
            let mut hdr = self.header(guest_cid, op::SHUTDOWN);
            hdr.flags = SHUTDOWN_SEND;
            return Recv::Packet(hdr, 0);
        }
        if self.owed.credit_update {
            return Recv::Packet(self.header(guest_cid, op::CREDIT_UPDATE), 0);
        }
        Recv::Nothing
    }

    /// The guest answered our OP_REQUEST: tell the host client which port it got.
    pub fn on_response(&mut self, hdr: &VsockHeader) -> Action {
        if self.state != ConnState::AwaitingResponse {
            warn_limited!("vsock: unexpected OP_RESPONSE on port {}", self.local_port);
            return Action::Kill;
        }
        self.update_peer_credit(hdr);
        let line = format!("OK {}\n", self.local_port);
        match send_nosignal(&self.stream, line.as_bytes()) {
            Ok(n) if n == line.len() => {
                self.state = ConnState::Established;
                self.deadline = None;
                Action::Keep
            }
            _ => Action::Kill,
        }
    }

    /// A packet from the guest for this (already existing) connection, other than
    /// REQUEST, RESPONSE and RST.
    pub fn from_guest(&mut self, hdr: &VsockHeader, data: &[u8]) -> Action {
        self.update_peer_credit(hdr);
        if self.state == ConnState::AwaitingResponse {
            warn_limited!("vsock: op {} before the connection was accepted", hdr.op);
            return Action::Kill;
        }
        match hdr.op {
            op::RW => self.guest_data(data),
            op::CREDIT_UPDATE => Action::Keep,
            op::CREDIT_REQUEST => {
                self.owed.credit_update = true;
                Action::Keep
            }
            op::SHUTDOWN => self.guest_shutdown(hdr.flags),
            other => {
                warn_limited!("vsock: unknown op {other} from the guest");
                Action::Kill
            }
        }
    }

    fn guest_data(&mut self, data: &[u8]) -> Action {
        if self.peer_shutdown & SHUTDOWN_SEND != 0 || self.state == ConnState::Closing {
            warn_limited!("vsock: guest sent data after shutting down");
            return Action::Kill;
        }
        let mut rest = data;
        if self.tx_buf.is_empty() {
            match send_nosignal(&self.stream, rest) {
                Ok(n) => {
                    self.forwarded(n);
                    rest = &rest[n..];
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Action::Kill,
            }
        }
        if self.tx_buf.len() + rest.len() > CONN_BUF_SIZE as usize {
            warn_limited!(
                "vsock: guest exceeded its credit on port {} (buffer full)",
                self.local_port
            );
            return Action::Kill;
        }
        self.tx_buf.extend(rest);
        Action::Keep
    }

    fn forwarded(&mut self, n: usize) {
        // n <= CONN_BUF_SIZE or one packet's payload: fits in u32.
        self.fwd_cnt += Wrapping(n as u32);
        if (self.fwd_cnt - self.last_fwd_cnt_sent).0 >= CREDIT_UPDATE_THRESHOLD {
            self.owed.credit_update = true;
        }
    }

    fn guest_shutdown(&mut self, flags: u32) -> Action {
        self.peer_shutdown |= flags & (SHUTDOWN_RCV | SHUTDOWN_SEND);
        if self.peer_shutdown & SHUTDOWN_RCV != 0 {
            self.rx_closed = true;
        }
        if self.peer_shutdown == SHUTDOWN_RCV | SHUTDOWN_SEND {
            if self.tx_buf.is_empty() {
                return Action::Kill;
            }
            self.state = ConnState::Closing;
            self.deadline = Some(Instant::now() + CLOSE_TIMEOUT);
            return Action::Keep;
        }
        if self.peer_shutdown & SHUTDOWN_SEND != 0 && self.tx_buf.is_empty() {
            let _ = self.stream.shutdown(Shutdown::Write);
        }
        Action::Keep
    }

    /// The host socket is ready.
    pub fn on_event(&mut self, events: EventSet) -> Action {
        if events.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::ERROR)
            && self.state == ConnState::Established
            && !self.rx_closed
        {
            self.readable = true;
        }
        if events.contains(EventSet::OUT) || !self.tx_buf.is_empty() {
            return self.flush();
        }
        if events.intersects(EventSet::HANG_UP | EventSet::ERROR) && !self.readable {
            return Action::Kill;
        }
        Action::Keep
    }

    fn flush(&mut self) -> Action {
        while !self.tx_buf.is_empty() {
            let (front, _) = self.tx_buf.as_slices();
            match send_nosignal(&self.stream, front) {
                Ok(0) => return Action::Kill,
                Ok(n) => {
                    self.tx_buf.drain(..n);
                    self.forwarded(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Action::Keep,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Action::Kill,
            }
        }
        if self.state == ConnState::Closing {
            return Action::Kill;
        }
        if self.peer_shutdown & SHUTDOWN_SEND != 0 {
            let _ = self.stream.shutdown(Shutdown::Write);
        }
        Action::Keep
    }

    /// Bytes of guest data waiting for the host socket.
    pub fn buffered(&self) -> usize {
        self.tx_buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn established(peer_buf_alloc: u32) -> (Conn, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let req = VsockHeader {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port: 10,
            dst_port: 20,
            type_: TYPE_STREAM,
            op: op::REQUEST,
            buf_alloc: peer_buf_alloc,
            ..VsockHeader::default()
        };
        (Conn::new_peer(ours, &req), theirs)
    }

    #[test]
    fn credit_arithmetic_wraps_and_never_trusts_a_lying_peer() {
        let (mut c, _other) = established(100);
        c.rx_cnt = Wrapping(u32::MAX - 10) + Wrapping(50);
        let mut h = VsockHeader {
            buf_alloc: 100,
            fwd_cnt: u32::MAX - 10,
            ..VsockHeader::default()
        };
        c.update_peer_credit(&h);
        assert_eq!(c.peer_credit(), 50);
        // The peer claims to have consumed more than we ever sent: no credit at all.
        h.fwd_cnt = c.rx_cnt.0.wrapping_add(1);
        c.update_peer_credit(&h);
        assert_eq!(c.peer_credit(), 0);
    }

    #[test]
    fn reads_from_the_host_are_capped_by_credit_and_buffer() {
        let (mut c, mut other) = established(100);
        other.write_all(&[5u8; 1000]).unwrap();
        let mut buf = [0u8; 4096];
        assert!(matches!(c.recv_pkt(3, &mut buf), Recv::Packet(h, 0) if h.op == op::RESPONSE));
        assert_eq!(c.interest(), EventSet::IN);
        assert_eq!(c.on_event(EventSet::IN), Action::Keep);
        assert!(c.wants_rx());
        match c.recv_pkt(3, &mut buf) {
            Recv::Packet(h, n) => {
                assert_eq!((h.op, h.len, n), (op::RW, 100, 100));
                assert_eq!(
                    (h.src_port, h.dst_port, h.buf_alloc),
                    (20, 10, CONN_BUF_SIZE)
                );
            }
            other => panic!("expected data, got {other:?}"),
        }
        // Out of credit: nothing more, and no read interest (no busy loop).
        assert!(!c.wants_rx());
        assert!(matches!(c.recv_pkt(3, &mut buf), Recv::Nothing));
        assert_eq!(c.interest(), EventSet::empty());
        // Credit returns: the next read is capped by the buffer we are given.
        c.update_peer_credit(&VsockHeader {
            buf_alloc: 100_000,
            fwd_cnt: 100,
            ..VsockHeader::default()
        });
        assert!(c.wants_rx());
        let mut small = [0u8; 7];
        assert!(matches!(c.recv_pkt(3, &mut small), Recv::Packet(_, 7)));
    }

    #[test]
    fn a_header_only_buffer_never_reads_the_host_socket() {
        let (mut c, mut other) = established(100);
        let mut buf = [0u8; 64];
        assert!(matches!(c.recv_pkt(3, &mut buf), Recv::Packet(h, 0) if h.op == op::RESPONSE));
        other.write_all(b"data").unwrap();
        assert_eq!(c.on_event(EventSet::IN), Action::Keep);
        // No room for data: nothing to send, and no EOF (no OP_SHUTDOWN) either.
        assert!(matches!(c.recv_pkt(3, &mut []), Recv::Nothing));
        assert!(c.wants_rx(), "the data is still waiting");
        assert!(!c.rx_closed);
        // A data-less packet that is owed still goes out in a header-only buffer.
        c.owed.credit_update = true;
        assert!(matches!(c.recv_pkt(3, &mut []), Recv::Packet(h, 0) if h.op == op::CREDIT_UPDATE));
        // The next real buffer gets the data.
        match c.recv_pkt(3, &mut buf) {
            Recv::Packet(h, 4) => assert_eq!(h.op, op::RW),
            other => panic!("expected 4 data bytes, got {other:?}"),
        }
        assert_eq!(&buf[..4], b"data");
    }

    #[test]
    fn response_when_not_awaiting_one_kills_and_unknown_op_kills() {
        let (mut c, _other) = established(100);
        let h = VsockHeader::default();
        assert_eq!(c.on_response(&h), Action::Kill);
        let bad = VsockHeader {
            op: 42,
            ..VsockHeader::default()
        };
        assert_eq!(c.from_guest(&bad, &[]), Action::Kill);
    }

    #[test]
    fn data_after_guest_shutdown_kills() {
        let (mut c, _other) = established(100);
        let sd = VsockHeader {
            op: op::SHUTDOWN,
            flags: SHUTDOWN_SEND,
            ..VsockHeader::default()
        };
        assert_eq!(c.from_guest(&sd, &[]), Action::Keep);
        let rw = VsockHeader {
            op: op::RW,
            len: 1,
            ..VsockHeader::default()
        };
        assert_eq!(c.from_guest(&rw, b"x"), Action::Kill);
    }
}
