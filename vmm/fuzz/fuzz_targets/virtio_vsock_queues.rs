//! Fuzz the vsock device's queue processing: the fuzz input *is* guest memory
//! (descriptor tables, rings, packet headers and payloads), so every descriptor chain,
//! ring index and packet header is arbitrary. The device must never panic, and the
//! backend only ever sees packets whose payload matches their bounded length.
//! (Used-ring contents are not checked: a guest may point rx buffers at its own rings.)
#![no_main]

use std::collections::VecDeque;
use std::os::fd::RawFd;

use event_manager::EventSet;
use husk_vmm::devices::virtio::vsock::backend::{EpollChange, VsockBackend};
use husk_vmm::devices::virtio::vsock::packet::{VsockHeader, MAX_PKT_DATA};
use husk_vmm::devices::virtio::vsock::Vsock;
use husk_vmm::devices::virtio::VirtioDevice;
use husk_vmm::GuestMemoryMmap;
use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

const MEM: usize = 0x1_0000;
const QSIZE: u16 = 16;

/// Answers every packet with a copy of itself (bounded), so rx gets exercised too. Like
/// the Unix backend, it has nothing for an rx buffer without payload room (a chain of
/// exactly the header size) while data waits, which the device must handle by returning
/// that buffer unused and moving on.
#[derive(Default)]
struct Echo(VecDeque<(VsockHeader, Vec<u8>)>);

impl VsockBackend for Echo {
    fn initial_fds(&self) -> Vec<(RawFd, EventSet)> {
        Vec::new()
    }
    fn handle_event(&mut self, _fd: RawFd, _events: EventSet) {}
    fn send_pkt(&mut self, hdr: &VsockHeader, data: &[u8]) {
        assert_eq!(hdr.len as usize, data.len());
        assert!(data.len() <= MAX_PKT_DATA);
        if self.0.len() < 64 {
            self.0.push_back((*hdr, data.to_vec()));
        }
    }
    fn has_pending_rx(&self) -> bool {
        !self.0.is_empty()
    }
    fn recv_pkt(&mut self, buf: &mut [u8]) -> Option<(VsockHeader, usize)> {
        if buf.is_empty() && self.0.front().is_some_and(|(_, d)| !d.is_empty()) {
            return None;
        }
        let (h, d) = self.0.pop_front()?;
        let n = d.len().min(buf.len());
        buf[..n].copy_from_slice(&d[..n]);
        Some((h, n))
    }
    fn take_epoll_changes(&mut self) -> Vec<EpollChange> {
        Vec::new()
    }
    fn reset(&mut self) {
        self.0.clear();
    }
}

fn queue(base: u64) -> Queue {
    let mut q = Queue::new(QSIZE).unwrap();
    q.set_size(QSIZE);
    q.set_ready(true);
    q.try_set_desc_table_address(GuestAddress(base)).unwrap();
    q.try_set_avail_ring_address(GuestAddress(base + 0x100))
        .unwrap();
    q.try_set_used_ring_address(GuestAddress(base + 0x140))
        .unwrap();
    q
}

fuzz_target!(|data: &[u8]| {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
    let n = data.len().min(MEM);
    mem.write_slice(&data[..n], GuestAddress(0)).unwrap();
    let mut dev = Vsock::with_backend(3, Echo::default()).unwrap();
    // Compact layout so short inputs reach every ring: tx at 0, rx at 0x200, ev at 0x400.
    dev.activate(mem.clone(), vec![queue(0x200), queue(0), queue(0x400)])
        .unwrap();
    for _ in 0..2 {
        dev.process_tx();
        dev.process_rx();
    }
    let _ = dev.send_transport_reset();
    assert!(dev.reset());
});
