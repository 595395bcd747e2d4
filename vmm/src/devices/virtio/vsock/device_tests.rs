//! Device-level tests against a scripted backend: what reaches the backend, what the
//! guest gets, and hostile packets.

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};

use event_manager::EventSet;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::devices::bus::BusDevice;
use crate::devices::virtio::descriptor::tests::{desc, mem, F_NEXT, F_WRITE};
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::vsock::backend::EpollChange;
use crate::devices::virtio::vsock::packet::{op, VsockHeader, HDR_SIZE, TYPE_STREAM};

#[derive(Default)]
struct Scripted {
    sent: Vec<(VsockHeader, Vec<u8>)>,
    to_guest: VecDeque<(VsockHeader, Vec<u8>)>,
    resets: u32,
}

impl VsockBackend for Scripted {
    fn initial_fds(&self) -> Vec<(RawFd, EventSet)> {
        Vec::new()
    }
    fn handle_event(&mut self, _fd: RawFd, _events: EventSet) {}
    fn send_pkt(&mut self, hdr: &VsockHeader, data: &[u8]) {
        self.sent.push((*hdr, data.to_vec()));
    }
    fn has_pending_rx(&self) -> bool {
        !self.to_guest.is_empty()
    }
    fn recv_pkt(&mut self, buf: &mut [u8]) -> Option<(VsockHeader, usize)> {
        let (h, d) = self.to_guest.pop_front()?;
        let n = d.len().min(buf.len());
        buf[..n].copy_from_slice(&d[..n]);
        Some((h, n))
    }
    fn take_epoll_changes(&mut self) -> Vec<EpollChange> {
        Vec::new()
    }
    fn reset(&mut self) {
        self.resets += 1;
    }
}

fn guest_hdr(len: u32) -> VsockHeader {
    VsockHeader {
        src_cid: 3,
        dst_cid: 2,
        src_port: 10,
        dst_port: 20,
        len,
        type_: TYPE_STREAM,
        op: op::RW,
        flags: 0,
        buf_alloc: 4096,
        fwd_cnt: 0,
    }
}

fn used_lens(vq: &MockSplitQueue<crate::GuestMemoryMmap>) -> Vec<(u32, u32)> {
    let n = vq.used().idx().load();
    (0..n)
        .map(|i| {
            let e = vq.used().ring().ref_at(usize::from(i)).unwrap().load();
            (e.id(), e.len())
        })
        .collect()
}

#[test]
fn tx_packets_reach_backend_and_hostile_ones_are_dropped() {
    let m = mem();
    let vqs: Vec<_> = (0..3u64)
        .map(|q| MockSplitQueue::create(&m, GuestAddress(q * 0x1000), 16))
        .collect();
    let mut dev = Vsock::with_backend(3, Scripted::default()).unwrap();
    dev.activate(
        m.clone(),
        vqs.iter().map(|v| v.create_queue().unwrap()).collect(),
    )
    .unwrap();
    // Good packet, header split over two descriptors, payload in a third.
    let raw = guest_hdr(3).to_bytes();
    m.write_slice(&raw, GuestAddress(0x8000)).unwrap();
    m.write_slice(b"abc", GuestAddress(0x9000)).unwrap();
    // Oversized: announces 1 MiB.
    let mut big = guest_hdr(1 << 20);
    m.write_slice(&big.to_bytes(), GuestAddress(0xa000))
        .unwrap();
    // Truncated: announces 100 bytes, carries 10.
    big.len = 100;
    m.write_slice(&big.to_bytes(), GuestAddress(0xb000))
        .unwrap();
    // Spoofed source CID.
    let mut spoof = guest_hdr(0);
    spoof.src_cid = 4;
    m.write_slice(&spoof.to_bytes(), GuestAddress(0xc000))
        .unwrap();
    vqs[TXQ]
        .add_desc_chains(
            &[
                desc(0x8000, 20, F_NEXT, 1),
                desc(0x8014, 24, F_NEXT, 2),
                desc(0x9000, 3, 0, 0),
                desc(0xa000, 0x1_0000, 0, 0),
                desc(0xb000, HDR_SIZE as u32 + 10, 0, 0),
                desc(0xc000, HDR_SIZE as u32, 0, 0),
                desc(0xff_fff0, 64, 0, 0), // outside guest memory
            ],
            0,
        )
        .unwrap();
    assert!(dev.process_tx());
    assert_eq!(dev.backend().sent.len(), 1);
    assert_eq!(dev.backend().sent[0].0, guest_hdr(3));
    assert_eq!(dev.backend().sent[0].1, b"abc");
    assert_eq!(
        used_lens(&vqs[TXQ]),
        vec![(0, 0), (3, 0), (4, 0), (5, 0), (6, 0)]
    );
}

#[test]
fn rx_packets_fill_guest_buffers_and_wait_for_them() {
    let m = mem();
    let vqs: Vec<_> = (0..3u64)
        .map(|q| MockSplitQueue::create(&m, GuestAddress(q * 0x1000), 16))
        .collect();
    let mut dev = Vsock::with_backend(3, Scripted::default()).unwrap();
    dev.activate(
        m.clone(),
        vqs.iter().map(|v| v.create_queue().unwrap()).collect(),
    )
    .unwrap();
    let mut h = guest_hdr(999); // len is set by the device
    h.src_cid = 2;
    h.dst_cid = 3;
    dev.backend_mut()
        .to_guest
        .push_back((h, b"0123456789".to_vec()));
    dev.backend_mut()
        .to_guest
        .push_back((h, b"second".to_vec()));
    // No rx buffers yet: nothing is lost.
    assert!(!dev.process_rx());
    assert_eq!(dev.backend().to_guest.len(), 2);
    // A header-sized buffer plus a 4-byte one: the payload is cut to what fits.
    vqs[RXQ]
        .add_desc_chains(
            &[
                desc(0x8000, 30, F_WRITE | F_NEXT, 1),
                desc(0x9000, 18, F_WRITE, 0),
            ],
            0,
        )
        .unwrap();
    assert!(dev.process_rx());
    assert_eq!(used_lens(&vqs[RXQ]), vec![(0, HDR_SIZE as u32 + 4)]);
    let mut raw = [0u8; HDR_SIZE];
    m.read_slice(&mut raw[..30], GuestAddress(0x8000)).unwrap();
    m.read_slice(&mut raw[30..], GuestAddress(0x9000)).unwrap();
    let got = VsockHeader::from_bytes(&raw);
    assert_eq!(got.len, 4);
    let mut d = [0u8; 4];
    m.read_slice(&mut d, GuestAddress(0x9000 + 14)).unwrap();
    assert_eq!(&d, b"0123");
    assert_eq!(dev.backend().to_guest.len(), 1);
}

#[test]
fn config_space_holds_the_guest_cid_through_the_transport() {
    let dev = Arc::new(Mutex::new(
        Vsock::with_backend(0x1_0000_0003 >> 4, Scripted::default()).unwrap(),
    ));
    let cid = dev.lock().unwrap().cid();
    let mut t = MmioTransport::new(mem(), dev.clone());
    let mut d = [0u8; 8];
    t.read(0x100, &mut d);
    assert_eq!(u64::from_le_bytes(d), cid);
    let mut d = [0u8; 4];
    t.read(0x104, &mut d);
    assert_eq!(u32::from_le_bytes(d), (cid >> 32) as u32);
    let mut d = [0xffu8; 4];
    t.read(0x106, &mut d);
    assert_eq!(d, [0; 4]); // crosses the end: untouched (zeroed by the transport)
    t.write(0x100, &[9; 8]);
    assert_eq!(dev.lock().unwrap().cid(), cid);
    let mut id = [0u8; 4];
    t.read(0x8, &mut id);
    assert_eq!(u32::from_le_bytes(id), 19);
}

#[test]
fn reset_is_deferred_to_the_event_loop_and_activation_wakes_it() {
    use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
    let m = mem();
    let vqs: Vec<_> = (0..3u64)
        .map(|q| MockSplitQueue::create(&m, GuestAddress(q * 0x1000), 16))
        .collect();
    let dev = Arc::new(Mutex::new(
        Vsock::with_backend(3, Scripted::default()).unwrap(),
    ));
    assert!(matches!(
        dev.lock().unwrap().activate(m.clone(), vec![]),
        Err(crate::devices::virtio::ActivateError::BadQueue { index: 0, .. })
    ));
    let mut mgr: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
        EventManager::new().unwrap();
    mgr.add_subscriber(dev.clone());
    // A packet queued before DRIVER_OK is handled by the event loop, not by activate
    // (which runs on a vCPU thread).
    let raw = guest_hdr(0).to_bytes();
    m.write_slice(&raw, GuestAddress(0x8000)).unwrap();
    vqs[TXQ]
        .add_desc_chains(&[desc(0x8000, HDR_SIZE as u32, 0, 0)], 0)
        .unwrap();
    dev.lock()
        .unwrap()
        .activate(
            m.clone(),
            vqs.iter().map(|v| v.create_queue().unwrap()).collect(),
        )
        .unwrap();
    assert!(dev.lock().unwrap().backend().sent.is_empty());
    assert_eq!(mgr.run_with_timeout(100).unwrap(), 1);
    assert_eq!(dev.lock().unwrap().backend().sent.len(), 1);
    // Reset: the device is inactive at once, the backend is reset by the event loop.
    assert!(dev.lock().unwrap().reset());
    assert!(!dev.lock().unwrap().is_activated());
    assert_eq!(dev.lock().unwrap().backend().resets, 0);
    assert_eq!(mgr.run_with_timeout(100).unwrap(), 1);
    assert_eq!(dev.lock().unwrap().backend().resets, 1);
    assert!(matches!(
        dev.lock().unwrap().send_transport_reset(),
        Err(VsockError::NotActivated)
    ));
}

#[test]
fn rx_is_held_after_a_transport_reset_until_the_guest_refills_the_event_queue() {
    use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
    let m = mem();
    let vqs: Vec<_> = (0..3u64)
        .map(|q| MockSplitQueue::create(&m, GuestAddress(q * 0x1000), 16))
        .collect();
    vqs[EVQ]
        .add_desc_chains(&[desc(0xa000, 4, F_WRITE, 0)], 0)
        .unwrap();
    vqs[RXQ]
        .add_desc_chains(&[desc(0x8000, 256, F_WRITE, 0)], 0)
        .unwrap();
    let dev = Arc::new(Mutex::new(
        Vsock::with_backend(3, Scripted::default()).unwrap(),
    ));
    let mut mgr: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
        EventManager::new().unwrap();
    mgr.add_subscriber(dev.clone());
    {
        let mut d = dev.lock().unwrap();
        d.activate(
            m.clone(),
            vqs.iter().map(|v| v.create_queue().unwrap()).collect(),
        )
        .unwrap();
        d.send_transport_reset().unwrap();
        let mut h = guest_hdr(0);
        h.src_cid = 2;
        h.dst_cid = 3;
        h.op = op::REQUEST;
        d.backend_mut().to_guest.push_back((h, vec![]));
        // A new host connection right after the reset waits.
        assert!(!d.process_rx());
        assert_eq!(d.backend().to_guest.len(), 1);
    }
    assert_eq!(used_lens(&vqs[EVQ]), vec![(0, 4)]);
    let mut ev = [0u8; 4];
    m.read_slice(&mut ev, GuestAddress(0xa000)).unwrap();
    assert_eq!(
        u32::from_le_bytes(ev),
        0,
        "VIRTIO_VSOCK_EVENT_TRANSPORT_RESET"
    );
    // Activation queued a tx wake-up: the event loop handles it, rx still held.
    let _ = mgr.run_with_timeout(50).unwrap();
    assert_eq!(dev.lock().unwrap().backend().to_guest.len(), 1);
    // The guest handled the event and notified the event queue: rx flows.
    dev.lock().unwrap().qs.events()[EVQ].write(1).unwrap();
    assert_eq!(mgr.run_with_timeout(100).unwrap(), 1);
    assert!(dev.lock().unwrap().backend().to_guest.is_empty());
    assert_eq!(used_lens(&vqs[RXQ]).len(), 1);
}
