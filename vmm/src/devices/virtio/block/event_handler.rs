//! The block device as an event-manager subscriber on the VMM thread.

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::Block;
use crate::devices::virtio::ratelimit::warn_limited;

const QUEUE_EVENT: u32 = 0;

impl MutEventSubscriber for Block {
    fn init(&mut self, ops: &mut EventOps) {
        for evt in self.qs.events() {
            if let Err(e) = ops.add(Events::with_data(evt, QUEUE_EVENT, EventSet::IN)) {
                log::error!(
                    "virtio-blk {}: cannot register the queue eventfd: {e:?}",
                    self.id
                );
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.data() != QUEUE_EVENT {
            warn_limited!("virtio-blk: unexpected event {}", events.data());
            return;
        }
        // Drain the notification even when not active, or epoll would spin on it.
        if let Some(evt) = self.qs.events().first() {
            let _ = evt.read();
        }
        if let Err(e) = self.process_queue() {
            warn_limited!("virtio-blk {}: {e}", self.id);
        }
    }
}
