//! virtio devices over the MMIO transport (virtio 1.x, "modern" only).
//!
//! Contract between the transport and the devices, and with the builder:
//! - A device implements [`VirtioDevice`]. The MMIO transport (`mmio.rs`) owns the
//!   common configuration (status, features, queue setup) and calls `activate` once
//!   the driver sets DRIVER_OK with valid queues.
//! - Each queue has an [`EventFd`] (`queue_events()[i]`) that the builder registers
//!   with KVM as an ioeventfd on the transport's QueueNotify register (datamatch =
//!   queue index), so a notification never leaves the kernel's fast path. The device
//!   reads those eventfds from its event-manager subscriber on the VMM thread.
//! - Each device has one [`IrqTrigger`]; the builder registers its eventfd with KVM as
//!   an irqfd on the device's GSI.
//!
//! Code map:
//! - [`mmio`]: the transport (registers, status state machine, queue validation);
//!   [`mmio_persist`]: its saved state.
//! - [`descriptor`]: bounded, checked access to a descriptor chain's buffers.
//! - [`queue_set`]: the queues, eventfds and interrupt every device keeps, with the
//!   shared activate/reset steps and config-space reads.
//! - [`ratelimit`]: `warn_limited!`, for every log line a guest can trigger.
//! - [`block`]: virtio-blk on a raw image file. [`rng`]: virtio-entropy. [`vsock`]: virtio-vsock and its hybrid Unix backend.
//!
//! Threads: register accesses (and so `activate`/`reset`) run on vCPU threads, whose
//! seccomp filter allows almost nothing; devices therefore do no I/O there and only
//! wake their event-manager subscriber, which does the work on the VMM thread.

pub mod block;
pub mod descriptor;
pub mod mmio;
pub mod mmio_persist;
pub mod queue_set;
pub mod ratelimit;
pub mod rng;
pub mod vsock;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

/// Interrupt status bit: a used buffer was added to a queue.
pub const VIRTIO_MMIO_INT_VRING: u32 = 0x01;
/// Interrupt status bit: the device configuration changed.
pub const VIRTIO_MMIO_INT_CONFIG: u32 = 0x02;

/// virtio device type of the block device.
pub const TYPE_BLOCK: u32 = 2;
/// virtio device type of the entropy device.
pub const TYPE_ENTROPY: u32 = 4;
/// virtio device type of the socket (vsock) device.
pub const TYPE_VSOCK: u32 = 19;
/// Feature bit: the device complies with virtio 1.x (required: husk is modern-only).
pub const VIRTIO_F_VERSION_1: u32 = 32;

/// The interrupt line of one virtio-mmio device: an interrupt status word shared with
/// the transport and an eventfd registered with KVM as an irqfd.
#[derive(Debug)]
pub struct IrqTrigger {
    /// InterruptStatus register contents, shared with the transport.
    pub irq_status: Arc<AtomicU32>,
    /// Signalled to inject the device's interrupt.
    pub irq_evt: EventFd,
}

impl IrqTrigger {
    /// A new trigger with no pending status.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            irq_status: Arc::new(AtomicU32::new(0)),
            irq_evt: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    /// Set `status_bit` and inject the interrupt.
    pub fn trigger(&self, status_bit: u32) -> std::io::Result<()> {
        self.irq_status.fetch_or(status_bit, Ordering::SeqCst);
        self.irq_evt.write(1)
    }
}

/// Why a device could not be activated.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver set up a queue the device cannot use.
    #[error("queue {index} is not usable: {reason}")]
    BadQueue {
        /// Queue index.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// The device's backend failed to start.
    #[error("device backend failed to start")]
    Backend(#[source] std::io::Error),
}

/// A virtio device behind the MMIO transport. Methods are called by the transport on a
/// vCPU thread (register accesses) and by the device's own event-manager subscriber on
/// the VMM thread (queue processing); the device sits in an `Arc<Mutex<_>>` shared by
/// both.
pub trait VirtioDevice: Send {
    /// virtio device type (3 = console, 4 = entropy, 19 = vsock).
    fn device_type(&self) -> u32;
    /// Features the device offers (including VIRTIO_F_VERSION_1).
    fn avail_features(&self) -> u64;
    /// Features the driver accepted.
    fn acked_features(&self) -> u64;
    /// Record the features the driver accepted (already masked by the transport to a
    /// subset of `avail_features`).
    fn set_acked_features(&mut self, features: u64);
    /// Maximum size of each queue; its length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// One eventfd per queue, signalled (via KVM ioeventfd) on QueueNotify.
    fn queue_events(&self) -> &[EventFd];
    /// The device's interrupt line.
    fn interrupt(&self) -> &IrqTrigger;
    /// Read the device-specific configuration space at `offset`. Out-of-range reads
    /// leave `data` untouched.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Write the device-specific configuration space. Devices with read-only config
    /// ignore this (rate-limited log).
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// The driver set DRIVER_OK: start using `queues` (validated by the transport).
    fn activate(
        &mut self,
        mem: crate::GuestMemoryMmap,
        queues: Vec<virtio_queue::Queue>,
    ) -> Result<(), ActivateError>;
    /// Whether `activate` succeeded.
    fn is_activated(&self) -> bool;
    /// The driver wrote 0 to Status. Return true if the device went back to its
    /// initial state (then it may be activated again).
    fn reset(&mut self) -> bool {
        false
    }
    /// The queues the device is using since `activate` (empty before). The transport
    /// saves their positions in a snapshot; devices that do not return them cannot be
    /// snapshotted while active.
    fn active_queues(&self) -> &[virtio_queue::Queue] {
        &[]
    }
}
