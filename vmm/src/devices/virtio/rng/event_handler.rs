//! The entropy device as an event-manager subscriber on the VMM thread.

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::Entropy;
use crate::devices::virtio::ratelimit::warn_limited;

const QUEUE_EVENT: u32 = 0;

impl MutEventSubscriber for Entropy {
    fn init(&mut self, ops: &mut EventOps) {
        for evt in self.qs.events() {
            if let Err(e) = ops.add(Events::with_data(evt, QUEUE_EVENT, EventSet::IN)) {
                log::error!("virtio-rng: cannot register the queue eventfd: {e:?}");
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.data() != QUEUE_EVENT {
            warn_limited!("virtio-rng: unexpected event {}", events.data());
            return;
        }
        // Drain the notification even when not active, or epoll would spin on it.
        if let Some(evt) = self.qs.events().first() {
            let _ = evt.read();
        }
        if let Err(e) = self.process_queue() {
            warn_limited!("virtio-rng: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::descriptor::tests::{desc, mem, F_WRITE};
    use crate::devices::virtio::VirtioDevice;
    use event_manager::{EventManager, SubscriberOps};
    use std::sync::{Arc, Mutex};
    use virtio_queue::mock::MockSplitQueue;

    #[test]
    fn queue_notification_through_event_manager_fills_buffer() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        let dev = Arc::new(Mutex::new(Entropy::new().unwrap()));
        let mut mgr: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
            EventManager::new().unwrap();
        mgr.add_subscriber(dev.clone());
        // A kick before activation is drained and ignored.
        dev.lock().unwrap().queue_events()[0].write(1).unwrap();
        assert_eq!(mgr.run_with_timeout(100).unwrap(), 1);
        // A request queued before DRIVER_OK: activation (on a vCPU thread) only wakes
        // the event loop, which answers it.
        vq.add_desc_chains(&[desc(0x4000, 32, F_WRITE, 0)], 0)
            .unwrap();
        dev.lock()
            .unwrap()
            .activate(m.clone(), vec![vq.create_queue().unwrap()])
            .unwrap();
        assert_eq!(vq.used().idx().load(), 0);
        assert_eq!(mgr.run_with_timeout(100).unwrap(), 1);
        assert_eq!(vq.used().idx().load(), 1);
        assert_eq!(vq.used().ring().ref_at(0).unwrap().load().len(), 32);
        // Nothing left pending: no spurious wakeup.
        assert_eq!(mgr.run_with_timeout(10).unwrap(), 0);
    }
}
