//! The interface between the vsock device (queues, packet parsing) and the host side
//! that owns connections. The device hands over packets whose CIDs it has checked; the
//! backend answers with packets for the guest and tells the device which file
//! descriptors to watch.

use std::os::fd::RawFd;

use event_manager::EventSet;

use super::packet::VsockHeader;

/// A change to the set of file descriptors the event loop watches for the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EpollChange {
    /// Start watching `fd` for these events.
    Add(RawFd, EventSet),
    /// Watch `fd` for these events instead.
    Modify(RawFd, EventSet),
    /// Stop watching `fd` (it may be closed right after).
    Remove(RawFd),
}

/// The host side of a vsock device.
pub trait VsockBackend: Send {
    /// File descriptors to watch from the start.
    fn initial_fds(&self) -> Vec<(RawFd, EventSet)>;
    /// One of the watched descriptors is ready.
    fn handle_event(&mut self, fd: RawFd, events: EventSet);
    /// A packet from the guest (src_cid is the guest, dst_cid is the host, the payload
    /// length matches `hdr.len` and is bounded).
    fn send_pkt(&mut self, hdr: &VsockHeader, data: &[u8]);
    /// Whether the backend may have a packet for the guest.
    fn has_pending_rx(&self) -> bool;
    /// The next packet for the guest, its payload written to the front of `buf` (whose
    /// length is the most the guest's buffer can take). Returns the header (with `len`
    /// set) and the payload length, or `None` if there is nothing to send.
    fn recv_pkt(&mut self, buf: &mut [u8]) -> Option<(VsockHeader, usize)>;
    /// Drain the pending changes to the watched descriptors.
    fn take_epoll_changes(&mut self) -> Vec<EpollChange>;
    /// Close descriptors of torn-down connections; called once the changes from
    /// [`take_epoll_changes`](Self::take_epoll_changes) were applied (closing earlier
    /// would let the number be reused while the event loop still knows it).
    fn drop_closed(&mut self) {}
    /// Drop every connection (device reset, or transport reset after restore).
    fn reset(&mut self);
}
