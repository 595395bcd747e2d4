//! The entropy device: one request queue whose device-writable buffers we fill.

use std::io;

use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::virtio::descriptor::ChainBuffers;
use crate::devices::virtio::queue_set::QueueSet;
use crate::devices::virtio::ratelimit::warn_limited;
use crate::devices::virtio::{
    ActivateError, IrqTrigger, VirtioDevice, TYPE_ENTROPY, VIRTIO_F_VERSION_1,
    VIRTIO_MMIO_INT_VRING,
};
use crate::GuestMemoryMmap;

/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// At most this many bytes are handed out per descriptor chain; larger buffers get a
/// short (but valid) answer, as the virtio spec allows.
pub const MAX_BYTES_PER_CHAIN: usize = 64 * 1024;
/// At most this many bytes are handed out per pass over the queue (one queue
/// notification). Requests beyond it stay in the queue and are answered in a later pass:
/// the device wakes itself through its queue eventfd, so the event loop serves other
/// devices in between and one notification never costs more than this much
/// `getrandom(2)` and guest-memory writing (256 chains of 64 KiB would be 16 MiB).
pub const MAX_BYTES_PER_PASS: usize = 256 * 1024;

/// Errors of the entropy device.
#[derive(Debug, thiserror::Error)]
pub enum EntropyError {
    /// Creating the queue or interrupt eventfd failed (likely out of file descriptors:
    /// raise `ulimit -n`).
    #[error("cannot create the entropy device's eventfds (check the open-files limit)")]
    EventFd(#[source] io::Error),
    /// The host's `getrandom(2)` failed.
    #[error("the host's getrandom(2) failed")]
    GetRandom(#[source] io::Error),
    /// Signalling the guest failed.
    #[error("cannot signal the entropy device's interrupt")]
    Interrupt(#[source] io::Error),
    /// A saved state does not fit this device.
    #[error("invalid entropy device state: {0}")]
    BadState(String),
}

/// Fill `buf` from the host's entropy pool.
pub(crate) fn fill_random(buf: &mut [u8]) -> Result<(), EntropyError> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: `rest` is a valid, writable buffer of `rest.len()` bytes that lives for
        // the whole call; getrandom writes at most that many bytes.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(EntropyError::GetRandom(e));
        }
        // n >= 0 and at most rest.len(): the conversion cannot fail.
        done += usize::try_from(n).unwrap_or(rest.len());
    }
    Ok(())
}

/// The virtio-entropy device.
#[derive(Debug)]
pub struct Entropy {
    pub(super) acked_features: u64,
    pub(super) qs: QueueSet,
}

impl Entropy {
    /// A new, not yet activated entropy device.
    pub fn new() -> Result<Self, EntropyError> {
        Ok(Self {
            acked_features: 0,
            qs: QueueSet::new(&[QUEUE_SIZE]).map_err(EntropyError::EventFd)?,
        })
    }

    /// Answer the requests the driver has queued, up to [`MAX_BYTES_PER_PASS`] bytes
    /// (a zero-length request counts as one byte, so a pass is bounded in chains too);
    /// if requests remain, the queue eventfd is written so the event loop comes back.
    /// Returns how many chains were used.
    pub fn process_queue(&mut self) -> Result<usize, EntropyError> {
        let Some((mem, queue)) = self.qs.active(0) else {
            return Ok(0);
        };
        let mut used = 0;
        let mut budget = MAX_BYTES_PER_PASS;
        let mut deferred = false;
        loop {
            if budget == 0 {
                deferred = queue
                    .avail_idx(mem, std::sync::atomic::Ordering::Acquire)
                    .is_ok_and(|idx| idx.0 != queue.next_avail());
                break;
            }
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                break;
            };
            let bufs = ChainBuffers::new(chain);
            let len = bufs.writable.len().min(MAX_BYTES_PER_CHAIN).min(budget);
            budget -= len.max(1);
            let mut written = 0u32;
            if len == 0 {
                warn_limited!("virtio-rng: request without a writable buffer");
            } else {
                let mut data = vec![0u8; len];
                fill_random(&mut data)?;
                match bufs.write_at(mem, 0, &data) {
                    // len <= MAX_BYTES_PER_CHAIN, so it fits in u32.
                    Ok(()) => written = len as u32,
                    Err(e) => warn_limited!("virtio-rng: bad request buffer: {e}"),
                }
            }
            if let Err(e) = queue.add_used(mem, bufs.head, written) {
                warn_limited!("virtio-rng: cannot return a buffer to the guest: {e}");
                break;
            }
            used += 1;
        }
        if deferred {
            self.qs.wake(0);
        }
        if used > 0 {
            self.qs
                .irq()
                .trigger(VIRTIO_MMIO_INT_VRING)
                .map_err(EntropyError::Interrupt)?;
        }
        Ok(used)
    }

    /// Whether a pass left requests for a later one (its queue eventfd is pending).
    #[cfg(test)]
    fn wake_pending(&self) -> bool {
        self.qs.events().first().is_some_and(|e| e.read().is_ok())
    }
}

impl VirtioDevice for Entropy {
    fn device_type(&self) -> u32 {
        TYPE_ENTROPY
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

    fn read_config(&self, _offset: u64, _data: &mut [u8]) {
        // No configuration space.
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        warn_limited!("virtio-rng: config write at {offset:#x} ignored (no config space)");
    }

    fn activate(&mut self, mem: GuestMemoryMmap, queues: Vec<Queue>) -> Result<(), ActivateError> {
        // Requests queued before DRIVER_OK get answered by the event loop (no getrandom
        // on a vCPU thread).
        self.qs
            .activate(mem, queues, "the entropy device has exactly one queue", 0)
    }

    fn is_activated(&self) -> bool {
        self.qs.is_activated()
    }

    fn active_queues(&self) -> &[Queue] {
        self.qs.queues()
    }

    fn reset(&mut self) -> bool {
        self.qs.deactivate();
        self.acked_features = 0;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::descriptor::tests::{desc, mem, F_NEXT, F_WRITE};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    fn active(m: &GuestMemoryMmap, vq: &MockSplitQueue<GuestMemoryMmap>) -> Entropy {
        let mut e = Entropy::new().unwrap();
        e.set_acked_features(u64::MAX);
        assert_eq!(e.acked_features(), 1 << VIRTIO_F_VERSION_1);
        e.activate(m.clone(), vec![vq.create_queue().unwrap()])
            .unwrap();
        e
    }

    fn used(vq: &MockSplitQueue<GuestMemoryMmap>, i: usize) -> (u32, u32) {
        let el = vq.used().ring().ref_at(i).unwrap().load();
        (el.id(), el.len())
    }

    #[test]
    fn fills_writable_buffers_and_reports_length() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        let mut e = active(&m, &vq);
        m.write_slice(&[0u8; 200], GuestAddress(0x4000)).unwrap();
        vq.add_desc_chains(
            &[
                desc(0x4000, 100, F_WRITE | F_NEXT, 1),
                desc(0x4064, 0, F_WRITE | F_NEXT, 2),
                desc(0x4080, 64, F_WRITE, 0),
            ],
            0,
        )
        .unwrap();
        assert_eq!(e.process_queue().unwrap(), 1);
        assert_eq!(vq.used().idx().load(), 1);
        assert_eq!(used(&vq, 0), (0, 164));
        let mut got = [0u8; 100];
        m.read_slice(&mut got, GuestAddress(0x4000)).unwrap();
        assert!(got.iter().any(|&b| b != 0), "buffer was not filled");
        let mut gap = [0u8; 28];
        m.read_slice(&mut gap, GuestAddress(0x4064)).unwrap();
        assert_eq!(gap, [0u8; 28], "bytes outside the descriptors were touched");
        assert_eq!(
            e.interrupt()
                .irq_status
                .load(std::sync::atomic::Ordering::SeqCst),
            1
        );
        assert_eq!(e.interrupt().irq_evt.read().unwrap(), 1);
    }

    #[test]
    fn hostile_chains_get_zero_length_and_never_panic() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        let mut e = active(&m, &vq);
        vq.add_desc_chains(
            &[
                // readable only
                desc(0x4000, 16, 0, 0),
                // writable but outside guest memory
                desc(0xff_0000, 16, F_WRITE, 0),
                // zero length
                desc(0x4000, 0, F_WRITE, 0),
                // huge, partly outside memory
                desc(0xf_8000, u32::MAX, F_WRITE, 0),
            ],
            0,
        )
        .unwrap();
        assert_eq!(e.process_queue().unwrap(), 4);
        for i in 0..4 {
            assert_eq!(used(&vq, i), (i as u32, 0));
        }
    }

    #[test]
    fn big_buffers_are_capped() {
        let m = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap();
        let vq = MockSplitQueue::new(&m, 16);
        let mut e = active(&m, &vq);
        vq.add_desc_chains(&[desc(0x10_0000, 0x20_0000, F_WRITE, 0)], 0)
            .unwrap();
        e.process_queue().unwrap();
        assert_eq!(used(&vq, 0), (0, MAX_BYTES_PER_CHAIN as u32));
    }

    #[test]
    fn one_pass_is_bounded_and_the_rest_is_served_later() {
        let m = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x80_0000)]).unwrap();
        let vq = MockSplitQueue::new(&m, 16);
        let mut e = active(&m, &vq);
        let _ = e.wake_pending(); // activation wakes the event loop once
                                  // 10 chains of 64 KiB = 640 KiB wanted; a pass hands out at most 256 KiB.
        let chains: Vec<_> = (0..10u16)
            .map(|i| desc(0x10_0000 + u64::from(i) * 0x1_0000, 0x1_0000, F_WRITE, 0))
            .collect();
        vq.add_desc_chains(&chains, 0).unwrap();
        let per_pass = MAX_BYTES_PER_PASS / MAX_BYTES_PER_CHAIN;
        assert_eq!(e.process_queue().unwrap(), per_pass);
        assert_eq!(usize::from(vq.used().idx().load()), per_pass);
        assert!(e.wake_pending(), "requests left: the device wakes itself");
        assert_eq!(e.process_queue().unwrap(), per_pass);
        assert!(e.wake_pending());
        assert_eq!(e.process_queue().unwrap(), 10 - 2 * per_pass);
        assert!(!e.wake_pending(), "all served: no self-wakeup");
        for i in 0..10 {
            assert_eq!(used(&vq, i), (i as u32, MAX_BYTES_PER_CHAIN as u32));
        }
        // Empty requests count too: a pass over a full ring of them is bounded.
        let vq = MockSplitQueue::new(&m, 256);
        let mut e = active(&m, &vq);
        let _ = e.wake_pending();
        let empty: Vec<_> = (0..256).map(|_| desc(0x10_0000, 0, F_WRITE, 0)).collect();
        vq.add_desc_chains(&empty, 0).unwrap();
        assert_eq!(e.process_queue().unwrap(), 256, "256 < the per-pass budget");
        assert!(!e.wake_pending());
    }

    #[test]
    fn activation_checks_queue_count_and_reset_deactivates() {
        let m = mem();
        let mut e = Entropy::new().unwrap();
        assert!(matches!(
            e.activate(m.clone(), vec![]),
            Err(ActivateError::BadQueue { index: 0, .. })
        ));
        assert!(!e.is_activated());
        assert_eq!(e.process_queue().unwrap(), 0);
        let vq = MockSplitQueue::new(&m, 16);
        e.activate(m.clone(), vec![vq.create_queue().unwrap()])
            .unwrap();
        assert!(e.is_activated());
        assert!(e.reset());
        assert!(!e.is_activated());
    }
}
