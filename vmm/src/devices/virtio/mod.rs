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

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

/// Interrupt status bit: a used buffer was added to a queue.
pub const VIRTIO_MMIO_INT_VRING: u32 = 0x01;
/// Interrupt status bit: the device configuration changed.
pub const VIRTIO_MMIO_INT_CONFIG: u32 = 0x02;

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
