//! The vsock device: three queues (rx, tx, event), the guest CID as config space, and a
//! [`VsockBackend`] for the host side.

use std::path::PathBuf;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::backend::VsockBackend;
use super::packet::{read_packet, rx_capacity, write_packet, HOST_CID, MAX_PKT_DATA};
use super::unix::VsockUnixBackend;
use super::VsockError;
use crate::devices::virtio::descriptor::ChainBuffers;
use crate::devices::virtio::queue_set::{read_config_bytes, QueueSet};
use crate::devices::virtio::ratelimit::warn_limited;
use crate::devices::virtio::{
    ActivateError, IrqTrigger, VirtioDevice, TYPE_VSOCK, VIRTIO_F_VERSION_1, VIRTIO_MMIO_INT_VRING,
};
use crate::GuestMemoryMmap;

/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Index of the receive queue (device → guest).
pub const RXQ: usize = 0;
/// Index of the transmit queue (guest → device).
pub const TXQ: usize = 1;
/// Index of the event queue.
pub const EVQ: usize = 2;
/// `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET`.
pub const EVENT_TRANSPORT_RESET: u32 = 0;

/// The virtio-vsock device.
#[derive(Debug)]
pub struct Vsock<B: VsockBackend = VsockUnixBackend> {
    cid: u64,
    pub(super) backend: B,
    pub(super) acked_features: u64,
    pub(super) qs: QueueSet,
    rx_buf: Vec<u8>,
    pub(super) backend_reset_pending: bool,
    /// After a restore's transport reset: hold rx packets (new host connections) until
    /// the guest has handled the reset event, which it acknowledges by refilling and
    /// notifying the event queue. Otherwise a connection made right after the restore
    /// could be established first and then torn down by the late reset.
    pub(super) rx_held_for_reset: bool,
}

impl Vsock<VsockUnixBackend> {
    /// A vsock device for guest CID `guest_cid`, listening on the Unix socket
    /// `uds_path` (see [`VsockUnixBackend`]).
    pub fn new(guest_cid: u64, uds_path: PathBuf) -> Result<Self, VsockError> {
        check_cid(guest_cid)?;
        let backend = VsockUnixBackend::new(guest_cid, uds_path)?;
        Self::with_backend(guest_cid, backend)
    }
}

fn check_cid(cid: u64) -> Result<(), VsockError> {
    // 0-2 are reserved (hypervisor, local, host); u32::MAX is VMADDR_CID_ANY.
    if cid < 3 || cid >= u64::from(u32::MAX) {
        return Err(VsockError::InvalidCid(cid));
    }
    Ok(())
}

impl<B: VsockBackend> Vsock<B> {
    /// A vsock device with any backend (tests use a scripted one).
    pub fn with_backend(guest_cid: u64, backend: B) -> Result<Self, VsockError> {
        check_cid(guest_cid)?;
        Ok(Self {
            cid: guest_cid,
            backend,
            acked_features: 0,
            qs: QueueSet::new(&[QUEUE_SIZE; 3]).map_err(VsockError::EventFd)?,
            rx_buf: vec![0u8; MAX_PKT_DATA],
            backend_reset_pending: false,
            rx_held_for_reset: false,
        })
    }

    /// The guest's CID.
    pub fn cid(&self) -> u64 {
        self.cid
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The backend, mutably.
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    /// Hand every packet the guest queued on tx to the backend. Returns whether any
    /// buffer was used.
    pub fn process_tx(&mut self) -> bool {
        let Some((mem, queue)) = self.qs.active(TXQ) else {
            return false;
        };
        let mut used = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let bufs = ChainBuffers::new(chain);
            match read_packet(mem, &bufs) {
                Ok((hdr, data)) if hdr.src_cid == self.cid && hdr.dst_cid == HOST_CID => {
                    self.backend.send_pkt(&hdr, &data);
                }
                Ok((hdr, _)) => warn_limited!(
                    "vsock: dropped packet from CID {} to CID {} (guest CID is {})",
                    hdr.src_cid,
                    hdr.dst_cid,
                    self.cid
                ),
                Err(e) => warn_limited!("vsock: dropped packet from the guest: {e}"),
            }
            if let Err(e) = queue.add_used(mem, bufs.head, 0) {
                warn_limited!("vsock: cannot return a tx buffer: {e}");
                break;
            }
            used = true;
        }
        used
    }

    /// Move packets from the backend into the guest's rx buffers. Returns whether any
    /// buffer was used.
    pub fn process_rx(&mut self) -> bool {
        if self.rx_held_for_reset {
            return false;
        }
        let Some((mem, queue)) = self.qs.active(RXQ) else {
            return false;
        };
        let mut used = false;
        while self.backend.has_pending_rx() {
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                break;
            };
            let bufs = ChainBuffers::new(chain);
            let len = match rx_capacity(&bufs) {
                Ok(cap) => match self.backend.recv_pkt(&mut self.rx_buf[..cap]) {
                    Some((mut hdr, n)) => {
                        let n = n.min(cap);
                        // n <= MAX_PKT_DATA.
                        hdr.len = n as u32;
                        write_packet(mem, &bufs, &hdr, &self.rx_buf[..n]).unwrap_or_else(|e| {
                            warn_limited!("vsock: packet lost, bad rx buffer: {e}");
                            0
                        })
                    }
                    None if cap == 0 => {
                        // Only data is waiting and this buffer has room for the header
                        // alone: return it unused (the guest drops a used buffer shorter
                        // than a header) so the buffers behind it can carry the data.
                        0
                    }
                    None => {
                        // Nothing to send after all: give the buffer back.
                        queue.go_to_previous_position();
                        break;
                    }
                },
                Err(e) => {
                    warn_limited!("vsock: unusable rx buffer: {e}");
                    0
                }
            };
            if let Err(e) = queue.add_used(mem, bufs.head, len) {
                warn_limited!("vsock: cannot return an rx buffer: {e}");
                break;
            }
            used = true;
        }
        used
    }

    /// Tell the guest that all connections are gone (after a snapshot restore).
    pub fn send_transport_reset(&mut self) -> Result<(), VsockError> {
        let Some((mem, queue)) = self.qs.active(EVQ) else {
            return Err(VsockError::NotActivated);
        };
        let chain = queue
            .pop_descriptor_chain(mem)
            .ok_or(VsockError::NoEventBuffer)?;
        let bufs = ChainBuffers::new(chain);
        let len = match bufs.write_at(mem, 0, &EVENT_TRANSPORT_RESET.to_le_bytes()) {
            Ok(()) => 4,
            Err(e) => {
                warn_limited!("vsock: bad event buffer: {e}");
                0
            }
        };
        if let Err(e) = queue.add_used(mem, bufs.head, len) {
            warn_limited!("vsock: cannot return an event buffer: {e}");
        }
        self.rx_held_for_reset = true;
        self.signal_used()
    }

    /// Raise the used-buffer interrupt.
    pub fn signal_used(&self) -> Result<(), VsockError> {
        self.qs
            .irq()
            .trigger(VIRTIO_MMIO_INT_VRING)
            .map_err(VsockError::Interrupt)
    }

    /// Process both data queues and raise the interrupt if the guest has news.
    pub fn process_all(&mut self) {
        let tx = self.process_tx();
        let rx = self.process_rx();
        if tx || rx {
            if let Err(e) = self.signal_used() {
                warn_limited!("vsock: {e}");
            }
        }
    }
}

impl<B: VsockBackend> VirtioDevice for Vsock<B> {
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }

    fn avail_features(&self) -> u64 {
        1 << VIRTIO_F_VERSION_1
    }

    fn acked_features(&self) -> u64 {
        self.acked_features
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features();
    }

    fn queue_max_sizes(&self) -> &[u16] {
        self.qs.max_sizes()
    }

    fn queue_events(&self) -> &[EventFd] {
        self.qs.events()
    }

    fn interrupt(&self) -> &IrqTrigger {
        self.qs.irq()
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.cid.to_le_bytes(), offset, data);
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        warn_limited!("vsock: write to read-only config space at {offset:#x} ignored");
    }

    fn activate(&mut self, mem: GuestMemoryMmap, queues: Vec<Queue>) -> Result<(), ActivateError> {
        // Packets queued before DRIVER_OK are handled by the event loop (no sockets on a
        // vCPU thread).
        self.qs.activate(
            mem,
            queues,
            "the vsock device has exactly three queues",
            TXQ,
        )
    }

    fn is_activated(&self) -> bool {
        self.qs.is_activated()
    }

    fn active_queues(&self) -> &[Queue] {
        self.qs.queues()
    }

    fn reset(&mut self) -> bool {
        // Runs on a vCPU thread: the backend (sockets, timer) is reset by the event loop,
        // woken here.
        self.backend_reset_pending = true;
        self.qs.wake(RXQ);
        self.qs.deactivate();
        self.acked_features = 0;
        true
    }
}

#[cfg(test)]
#[path = "device_tests.rs"]
mod tests;
