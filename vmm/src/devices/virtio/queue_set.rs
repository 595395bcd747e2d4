//! What every virtio device keeps for the transport: its queues' maximum sizes and
//! notification eventfds, its interrupt and, once activated, guest memory and the queues.
//! The devices' `VirtioDevice` methods for these delegate here, so activation and reset
//! work the same way for each.

use std::io;

use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use super::{ActivateError, IrqTrigger};
use crate::GuestMemoryMmap;

/// Queue sizes, queue eventfds, interrupt and (while active) memory and queues of one device.
#[derive(Debug)]
pub struct QueueSet {
    max_sizes: Vec<u16>,
    events: Vec<EventFd>,
    irq: IrqTrigger,
    mem: Option<GuestMemoryMmap>,
    queues: Vec<Queue>,
}

impl QueueSet {
    /// Not activated; one non-blocking eventfd per entry of `max_sizes`.
    pub fn new(max_sizes: &[u16]) -> io::Result<Self> {
        Ok(Self {
            max_sizes: max_sizes.to_vec(),
            events: max_sizes
                .iter()
                .map(|_| EventFd::new(libc::EFD_NONBLOCK))
                .collect::<io::Result<_>>()?,
            irq: IrqTrigger::new()?,
            mem: None,
            queues: Vec::new(),
        })
    }

    /// Maximum size of each queue.
    pub fn max_sizes(&self) -> &[u16] {
        &self.max_sizes
    }

    /// One eventfd per queue.
    pub fn events(&self) -> &[EventFd] {
        &self.events
    }

    /// The device's interrupt line.
    pub fn irq(&self) -> &IrqTrigger {
        &self.irq
    }

    /// Start using `mem` and `queues` (the driver set DRIVER_OK). Refuses any other
    /// number of queues than the device has, saying `wrong_count`. Then writes queue
    /// `wake`'s eventfd: activation runs on a vCPU thread, whose seccomp filter allows
    /// no device I/O, so what the driver queued before DRIVER_OK is served by the event
    /// loop.
    pub fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        wrong_count: &str,
        wake: usize,
    ) -> Result<(), ActivateError> {
        if queues.len() != self.max_sizes.len() {
            return Err(ActivateError::BadQueue {
                index: queues.len(),
                reason: wrong_count.into(),
            });
        }
        self.mem = Some(mem);
        self.queues = queues;
        self.wake(wake);
        Ok(())
    }

    /// Write queue `index`'s eventfd, so the device's subscriber runs on the event loop.
    pub fn wake(&self, index: usize) {
        if let Some(evt) = self.events.get(index) {
            let _ = evt.write(1);
        }
    }

    /// Whether `activate` succeeded (and no reset came since).
    pub fn is_activated(&self) -> bool {
        self.mem.is_some()
    }

    /// The queues in use (empty before activation).
    pub fn queues(&self) -> &[Queue] {
        &self.queues
    }

    /// Guest memory and queue `index`, while active.
    pub fn active(&mut self, index: usize) -> Option<(&GuestMemoryMmap, &mut Queue)> {
        Some((self.mem.as_ref()?, self.queues.get_mut(index)?))
    }

    /// Drop the memory and queues (the driver reset the device).
    pub fn deactivate(&mut self) {
        self.mem = None;
        self.queues.clear();
    }
}

/// Copy the bytes of a device's configuration space `config` at `offset` into `data`;
/// a read out of range leaves `data` untouched.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(src) = start
        .checked_add(data.len())
        .and_then(|end| config.get(start..end))
    {
        data.copy_from_slice(src);
    }
}
