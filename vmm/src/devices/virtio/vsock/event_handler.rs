//! The vsock device as an event-manager subscriber on the VMM thread: queue
//! notifications plus the backend's sockets and timer.

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::backend::{EpollChange, VsockBackend};
use super::device::{Vsock, EVQ, RXQ, TXQ};
use crate::devices::virtio::ratelimit::warn_limited;

/// Event data of the backend's descriptors (queue events use their index).
const BACKEND: u32 = 3;

impl<B: VsockBackend> Vsock<B> {
    fn apply_epoll_changes(&mut self, ops: &mut EventOps) {
        for change in self.backend.take_epoll_changes() {
            let result = match change {
                EpollChange::Add(fd, set) => ops.add(Events::with_data_raw(fd, BACKEND, set)),
                EpollChange::Modify(fd, set) => ops.modify(Events::with_data_raw(fd, BACKEND, set)),
                EpollChange::Remove(fd) => {
                    ops.remove(Events::with_data_raw(fd, BACKEND, EventSet::empty()))
                }
            };
            if let Err(e) = result {
                warn_limited!("vsock: event loop registration {change:?} failed: {e:?}");
            }
        }
        self.backend.drop_closed();
    }
}

impl<B: VsockBackend> MutEventSubscriber for Vsock<B> {
    fn init(&mut self, ops: &mut EventOps) {
        for (i, evt) in self.qs.events().iter().enumerate() {
            // i < 3.
            if let Err(e) = ops.add(Events::with_data(evt, i as u32, EventSet::IN)) {
                log::error!("vsock: cannot register queue {i}'s eventfd: {e:?}");
            }
        }
        for (fd, set) in self.backend.initial_fds() {
            if let Err(e) = ops.add(Events::with_data_raw(fd, BACKEND, set)) {
                log::error!("vsock: cannot register backend descriptor {fd}: {e:?}");
            }
        }
        self.apply_epoll_changes(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if self.backend_reset_pending {
            self.backend_reset_pending = false;
            self.backend.reset();
        }
        let data = events.data() as usize;
        match data {
            RXQ | TXQ | EVQ => {
                // Drain the notification even when not active, or epoll would spin.
                if let Some(evt) = self.qs.events().get(data) {
                    let _ = evt.read();
                }
                if data == EVQ {
                    // The guest handled the transport reset and refilled the event
                    // queue: connections made from now on are not torn down by it.
                    self.rx_held_for_reset = false;
                }
            }
            _ => self.backend.handle_event(events.fd(), events.event_set()),
        }
        // Any event may free tx buffers or produce rx packets.
        self.process_all();
        self.apply_epoll_changes(ops);
    }
}
