//! End-to-end tests of the vsock device with the Unix backend: real host sockets, the
//! real event manager, and the guest simulated through mock virtqueues.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Address, Bytes, GuestAddress};

use super::conn::CONN_BUF_SIZE;
use super::*;
use crate::devices::virtio::vsock::device::{EVQ, RXQ, TXQ};
use crate::devices::virtio::vsock::packet::{
    op, HDR_SIZE, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM,
};
use crate::devices::virtio::vsock::Vsock;
use crate::devices::virtio::VirtioDevice;
use crate::GuestMemoryMmap;

const CID: u64 = 3;
const QSIZE: u16 = 256;
const F_WRITE: u16 = 2;

pub(crate) struct TempDir(pub PathBuf);

impl TempDir {
    pub(crate) fn new(tag: &str) -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("husk-vsock-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Harness {
    _dir: TempDir,
    uds: PathBuf,
    mem: &'static GuestMemoryMmap,
    vqs: Vec<MockSplitQueue<'static, GuestMemoryMmap>>,
    dev: Arc<Mutex<Vsock>>,
    mgr: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>,
    next_desc: [u16; 3],
    used_seen: [u16; 3],
    buf_of_desc: HashMap<(usize, u16), u64>,
    next_buf: u64,
}

fn qbase(q: usize) -> GuestAddress {
    GuestAddress(q as u64 * 0x4000)
}

/// The used ring of queue `q`. The mock computes its own used ring address too close
/// to the available ring for big queues (they overlap after 128 entries), so the device
/// gets a used ring of our choosing and we read it ourselves.
fn used_ring(q: usize) -> GuestAddress {
    GuestAddress(qbase(q).0 + 0x2000)
}

fn hdr(src_port: u32, dst_port: u32, op: u16) -> VsockHeader {
    VsockHeader {
        src_cid: CID,
        dst_cid: 2,
        src_port,
        dst_port,
        len: 0,
        type_: TYPE_STREAM,
        op,
        flags: 0,
        buf_alloc: 64 * 1024,
        fwd_cnt: 0,
    }
}

impl Harness {
    fn new(tag: &str) -> Self {
        let dir = TempDir::new(tag);
        let uds = dir.0.join("v.sock");
        // Leaked so the mock queues (which borrow it) can live in the harness.
        let mem: &'static GuestMemoryMmap = Box::leak(Box::new(
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap(),
        ));
        let dev = Arc::new(Mutex::new(Vsock::new(CID, uds.clone()).unwrap()));
        let mut mgr: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
            EventManager::new().unwrap();
        mgr.add_subscriber(dev.clone());
        let vqs: Vec<_> = (0..3)
            .map(|q| MockSplitQueue::create(mem, qbase(q), QSIZE))
            .collect();
        let queues = vqs
            .iter()
            .enumerate()
            .map(|(q, vq)| {
                let mut queue: virtio_queue::Queue = vq.create_queue().unwrap();
                queue.try_set_used_ring_address(used_ring(q)).unwrap();
                queue
            })
            .collect();
        dev.lock().unwrap().activate(mem.clone(), queues).unwrap();
        Self {
            _dir: dir,
            uds,
            mem,
            vqs,
            dev,
            mgr,
            next_desc: [0; 3],
            used_seen: [0; 3],
            buf_of_desc: HashMap::new(),
            next_buf: 0x10_0000,
        }
    }

    fn add_buf(&mut self, q: usize, data: &[u8], len: u32, flags: u16) {
        let addr = self.next_buf;
        self.next_buf += u64::from(len).max(16).next_multiple_of(16);
        self.mem.write_slice(data, GuestAddress(addr)).unwrap();
        let idx = self.next_desc[q];
        self.next_desc[q] = (idx + 1) % QSIZE;
        self.buf_of_desc.insert((q, idx), addr);
        self.vqs[q]
            .add_desc_chains(
                &[RawDescriptor::from(SplitDescriptor::new(
                    addr, len, flags, 0,
                ))],
                idx,
            )
            .unwrap();
    }

    fn kick(&mut self, q: usize) {
        self.dev.lock().unwrap().queue_events()[q].write(1).unwrap();
        self.run();
    }

    fn give_rx(&mut self, n: usize, size: u32) {
        for _ in 0..n {
            self.add_buf(RXQ, &[], size, F_WRITE);
        }
        self.kick(RXQ);
    }

    fn send(&mut self, h: VsockHeader, data: &[u8]) {
        let mut h = h;
        h.len = data.len() as u32;
        let mut raw = h.to_bytes().to_vec();
        raw.extend_from_slice(data);
        self.add_buf(TXQ, &raw, raw.len() as u32, 0);
        self.kick(TXQ);
    }

    fn run(&mut self) {
        for _ in 0..20 {
            if self.mgr.run_with_timeout(20).unwrap() == 0 {
                break;
            }
        }
    }

    /// Run the loop until `f` holds or `timeout` passes.
    fn run_until(&mut self, timeout: Duration, mut f: impl FnMut(&mut Self) -> bool) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if f(self) {
                return true;
            }
            self.mgr.run_with_timeout(20).unwrap();
        }
        f(self)
    }

    fn used(&mut self, q: usize) -> Vec<(u16, Vec<u8>)> {
        let ring = used_ring(q);
        let idx: u16 = self.mem.read_obj(ring.unchecked_add(2)).unwrap();
        let mut out = Vec::new();
        while self.used_seen[q] != idx {
            let at = ring.unchecked_add(4 + 8 * u64::from(self.used_seen[q] % QSIZE));
            let id: u32 = self.mem.read_obj(at).unwrap();
            let len: u32 = self.mem.read_obj(at.unchecked_add(4)).unwrap();
            let id = id as u16;
            let addr = self.buf_of_desc[&(q, id)];
            let mut data = vec![0u8; len as usize];
            self.mem.read_slice(&mut data, GuestAddress(addr)).unwrap();
            out.push((id, data));
            self.used_seen[q] = self.used_seen[q].wrapping_add(1);
        }
        out
    }

    fn recv(&mut self) -> Vec<(VsockHeader, Vec<u8>)> {
        self.used(RXQ)
            .into_iter()
            .map(|(id, raw)| {
                assert!(
                    raw.len() >= HDR_SIZE,
                    "rx buffer {id} used with {} bytes",
                    raw.len()
                );
                let h = VsockHeader::from_bytes(raw[..HDR_SIZE].try_into().unwrap());
                assert_eq!(h.len as usize, raw.len() - HDR_SIZE);
                (h, raw[HDR_SIZE..].to_vec())
            })
            .collect()
    }

    fn connections(&self) -> usize {
        self.dev.lock().unwrap().backend().connection_count()
    }
}

fn read_line(s: &mut UnixStream) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match s.read(&mut b) {
            Ok(0) => return out,
            Ok(_) => {
                out.push(b[0]);
                if b[0] == b'\n' {
                    return out;
                }
            }
            Err(e) => panic!("read failed: {e}"),
        }
    }
}

fn assert_eof(s: &mut UnixStream) {
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut b = [0u8; 16];
    match s.read(&mut b) {
        Ok(0) => {}
        // Closed with unread data in our direction.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("expected the connection to be closed, got {other:?}"),
    }
}

#[test]
fn host_initiated_handshake_data_and_teardown() {
    let mut h = Harness::new("host");
    h.give_rx(8, 4096);
    let mut client = UnixStream::connect(&h.uds).unwrap();
    client.write_all(b"CONNECT 5000\n").unwrap();
    h.run();
    let pkts = h.recv();
    assert_eq!(pkts.len(), 1);
    let req = pkts[0].0;
    assert_eq!(
        (
            req.src_cid,
            req.dst_cid,
            req.src_port,
            req.dst_port,
            req.op,
            req.type_
        ),
        (2, CID, 1 << 30, 5000, op::REQUEST, TYPE_STREAM)
    );
    assert_eq!(req.buf_alloc, CONN_BUF_SIZE);
    h.send(hdr(5000, 1 << 30, op::RESPONSE), &[]);
    assert_eq!(read_line(&mut client), b"OK 1073741824\n");

    client.write_all(b"ping").unwrap();
    h.run();
    let pkts = h.recv();
    assert_eq!(pkts.len(), 1);
    assert_eq!((pkts[0].0.op, pkts[0].0.dst_port), (op::RW, 5000));
    assert_eq!(pkts[0].1, b"ping");

    h.send(hdr(5000, 1 << 30, op::RW), b"pong");
    let mut got = [0u8; 4];
    client
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    client.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"pong");

    // The host closes: the guest hears SHUTDOWN(SEND), answers RST, the connection goes.
    drop(client);
    h.run();
    let pkts = h.recv();
    assert_eq!(pkts.len(), 1);
    assert_eq!(
        (pkts[0].0.op, pkts[0].0.flags),
        (op::SHUTDOWN, SHUTDOWN_SEND)
    );
    assert_eq!(h.connections(), 1);
    h.send(hdr(5000, 1 << 30, op::RST), &[]);
    assert_eq!(h.connections(), 0);
    assert!(h.recv().is_empty(), "no answer to an RST");

    // A second client gets the next host port.
    let mut c2 = UnixStream::connect(&h.uds).unwrap();
    c2.write_all(b"CONNECT 5000\n").unwrap();
    h.run();
    assert_eq!(h.recv()[0].0.src_port, (1 << 30) + 1);
}

#[test]
fn host_initiated_to_closed_guest_port_closes_client() {
    let mut h = Harness::new("refused");
    h.give_rx(4, 4096);
    let mut client = UnixStream::connect(&h.uds).unwrap();
    client.write_all(b"CONNECT 4444\n").unwrap();
    h.run();
    let req = h.recv()[0].0;
    h.send(hdr(4444, req.src_port, op::RST), &[]);
    assert_eof(&mut client);
    assert_eq!(h.connections(), 0);
}

#[test]
fn bad_commands_close_the_client_without_guest_traffic() {
    let mut h = Harness::new("badcmd");
    h.give_rx(4, 4096);
    for cmd in [
        &b"HELLO\n"[..],
        b"CONNECT\n",
        b"CONNECT abc\n",
        b"CONNECT +5\n",
        b"CONNECT 99999999999\n",
        b"connect 5\n",
        &[b'A'; 40][..],
    ] {
        let mut client = UnixStream::connect(&h.uds).unwrap();
        client.write_all(cmd).unwrap();
        h.run();
        assert_eof(&mut client);
    }
    let mut client = UnixStream::connect(&h.uds).unwrap();
    client.shutdown(std::net::Shutdown::Write).unwrap();
    h.run();
    assert_eof(&mut client);
    assert!(h.recv().is_empty());
    assert_eq!(h.connections(), 0);
}

#[test]
fn silent_client_is_dropped_after_the_deadline() {
    let mut h = Harness::new("silent");
    let mut client = UnixStream::connect(&h.uds).unwrap();
    client.write_all(b"CONN").unwrap();
    client
        .set_read_timeout(Some(Duration::from_millis(1)))
        .unwrap();
    let start = Instant::now();
    let closed = h.run_until(CONNECT_TIMEOUT + Duration::from_secs(2), |_| {
        let mut b = [0u8; 1];
        matches!(client.read(&mut b), Ok(0))
    });
    assert!(closed, "client was not dropped");
    assert!(start.elapsed() >= CONNECT_TIMEOUT - Duration::from_millis(300));
}

#[test]
fn guest_initiated_connect_data_and_shutdown() {
    let mut h = Harness::new("guest");
    h.give_rx(8, 4096);
    let listener = UnixListener::bind(format!("{}_6000", h.uds.display())).unwrap();
    h.send(hdr(1234, 6000, op::REQUEST), &[]);
    let pkts = h.recv();
    assert_eq!(pkts.len(), 1);
    let resp = pkts[0].0;
    assert_eq!(
        (
            resp.src_cid,
            resp.dst_cid,
            resp.src_port,
            resp.dst_port,
            resp.op
        ),
        (2, CID, 6000, 1234, op::RESPONSE)
    );
    let (mut stream, _) = listener.accept().unwrap();

    h.send(hdr(1234, 6000, op::RW), b"hello");
    let mut got = [0u8; 5];
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    stream.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello");

    stream.write_all(b"world").unwrap();
    h.run();
    let pkts = h.recv();
    assert_eq!(pkts.len(), 1);
    assert_eq!(
        (
            pkts[0].0.op,
            pkts[0].0.src_port,
            pkts[0].0.dst_port,
            pkts[0].0.fwd_cnt
        ),
        (op::RW, 6000, 1234, 5)
    );
    assert_eq!(pkts[0].1, b"world");

    // Guest half-close: the host sees EOF but can still send.
    let mut sd = hdr(1234, 6000, op::SHUTDOWN);
    sd.flags = SHUTDOWN_SEND;
    h.send(sd, &[]);
    assert_eof(&mut stream);
    stream.write_all(b"late").unwrap();
    h.run();
    assert_eq!(h.recv()[0].1, b"late");

    // Full shutdown: RST back, host socket closed, connection gone.
    sd.flags = SHUTDOWN_SEND | SHUTDOWN_RCV;
    h.send(sd, &[]);
    let pkts = h.recv();
    assert_eq!(pkts.len(), 1);
    assert_eq!((pkts[0].0.op, pkts[0].0.dst_port), (op::RST, 1234));
    assert_eq!(h.connections(), 0);
    // The host socket is closed: writing to it fails (EPIPE).
    assert!(stream.write_all(b"x").is_err());
}

#[test]
fn guest_connect_to_port_without_listener_gets_rst() {
    let mut h = Harness::new("nolisten");
    h.give_rx(4, 4096);
    h.send(hdr(1234, 7777, op::REQUEST), &[]);
    let pkts = h.recv();
    assert_eq!(pkts.len(), 1);
    let rst = pkts[0].0;
    assert_eq!(
        (rst.src_cid, rst.dst_cid, rst.src_port, rst.dst_port, rst.op),
        (2, CID, 7777, 1234, op::RST)
    );
    assert_eq!(h.connections(), 0);
}

#[test]
fn unknown_connections_wrong_type_and_wrong_cid() {
    let mut h = Harness::new("unknown");
    h.give_rx(8, 4096);
    h.send(hdr(1, 9999, op::RW), b"data");
    h.send(hdr(1, 9999, op::CREDIT_UPDATE), &[]);
    let mut dgram = hdr(2, 9999, op::REQUEST);
    dgram.type_ = 2;
    h.send(dgram, &[]);
    // An RST for an unknown connection is not answered.
    h.send(hdr(3, 9999, op::RST), &[]);
    let pkts = h.recv();
    let got: Vec<(u16, u32)> = pkts.iter().map(|(p, _)| (p.op, p.dst_port)).collect();
    assert_eq!(got, vec![(op::RST, 1), (op::RST, 1), (op::RST, 2)]);
    // Spoofed source CID or a packet not for the host: dropped silently.
    let mut spoof = hdr(4, 9999, op::REQUEST);
    spoof.src_cid = 7;
    h.send(spoof, &[]);
    let mut other = hdr(5, 9999, op::REQUEST);
    other.dst_cid = 9;
    h.send(other, &[]);
    assert!(h.recv().is_empty());
    // Every tx buffer was returned.
    assert_eq!(h.used(TXQ).len(), 6);
}

#[test]
fn host_to_guest_respects_guest_credit() {
    let mut h = Harness::new("credit");
    h.give_rx(16, 4096);
    let listener = UnixListener::bind(format!("{}_6001", h.uds.display())).unwrap();
    let mut req = hdr(1234, 6001, op::REQUEST);
    req.buf_alloc = 10;
    h.send(req, &[]);
    assert_eq!(h.recv()[0].0.op, op::RESPONSE);
    let (mut stream, _) = listener.accept().unwrap();
    stream.write_all(&[7u8; 100]).unwrap();
    h.run();
    let pkts = h.recv();
    let total: usize = pkts.iter().map(|(_, d)| d.len()).sum();
    assert_eq!(total, 10, "sent beyond the guest's credit");
    // The guest consumed 10 bytes: 10 more may flow.
    let mut cu = hdr(1234, 6001, op::CREDIT_UPDATE);
    cu.buf_alloc = 10;
    cu.fwd_cnt = 10;
    h.send(cu, &[]);
    let total: usize = h.recv().iter().map(|(_, d)| d.len()).sum();
    assert_eq!(total, 10);
    // A credit request gets a credit update.
    let mut cr = hdr(1234, 6001, op::CREDIT_REQUEST);
    cr.buf_alloc = 10;
    cr.fwd_cnt = 10;
    h.send(cr, &[]);
    let pkts = h.recv();
    assert_eq!(pkts.len(), 1);
    assert_eq!(
        (pkts[0].0.op, pkts[0].0.buf_alloc),
        (op::CREDIT_UPDATE, CONN_BUF_SIZE)
    );
}

#[test]
fn guest_exceeding_our_credit_is_reset_and_buffering_is_bounded() {
    let mut h = Harness::new("flood");
    h.give_rx(16, 4096);
    let listener = UnixListener::bind(format!("{}_6002", h.uds.display())).unwrap();
    h.send(hdr(1234, 6002, op::REQUEST), &[]);
    assert_eq!(h.recv()[0].0.op, op::RESPONSE);
    let (_stream, _) = listener.accept().unwrap(); // never reads
    let chunk = vec![1u8; 64 * 1024];
    let mut reset = false;
    for _ in 0..100 {
        h.send(hdr(1234, 6002, op::RW), &chunk);
        if let Some(buffered) = h.dev.lock().unwrap().backend().buffered(6002, 1234) {
            assert!(buffered <= CONN_BUF_SIZE as usize);
        }
        if h.recv().iter().any(|(p, _)| p.op == op::RST) {
            reset = true;
            break;
        }
    }
    assert!(reset, "a guest ignoring our credit was never reset");
    assert_eq!(h.connections(), 0);
}

#[test]
fn blocked_host_socket_resumes_and_flushes_buffered_data() {
    let mut h = Harness::new("resume");
    h.give_rx(16, 4096);
    let listener = UnixListener::bind(format!("{}_6003", h.uds.display())).unwrap();
    h.send(hdr(1234, 6003, op::REQUEST), &[]);
    h.recv();
    let (mut stream, _) = listener.accept().unwrap();
    // Fill the socket until the backend buffers (within the 256 KiB credit).
    let mut sent = 0usize;
    let chunk = vec![9u8; 32 * 1024];
    while sent + chunk.len() <= CONN_BUF_SIZE as usize {
        h.send(hdr(1234, 6003, op::RW), &chunk);
        sent += chunk.len();
    }
    assert!(h.recv().iter().all(|(p, _)| p.op != op::RST));
    // The host reads everything; the event loop flushes the rest on EPOLLOUT.
    stream
        .set_read_timeout(Some(Duration::from_millis(10)))
        .unwrap();
    let mut got = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    let done = h.run_until(Duration::from_secs(5), |_| {
        while let Ok(n) = stream.read(&mut buf) {
            if n == 0 {
                break;
            }
            got += n;
        }
        got == sent
    });
    assert!(done, "only {got} of {sent} bytes arrived");
    assert_eq!(
        h.dev.lock().unwrap().backend().buffered(6003, 1234),
        Some(0)
    );
    // Forwarding at least half the buffer earns the guest a credit update.
    let pkts = h.recv();
    let last = pkts.last().map(|(p, _)| *p).unwrap();
    assert_eq!(last.op, op::CREDIT_UPDATE);
    assert_eq!(last.fwd_cnt as usize, sent);
}

#[test]
fn no_rx_buffers_keeps_packets_until_the_guest_adds_some() {
    let mut h = Harness::new("norx");
    h.send(hdr(1234, 7777, op::REQUEST), &[]);
    assert!(h.recv().is_empty());
    // A buffer too small for a header is returned empty; the packet waits.
    h.add_buf(RXQ, &[], 20, F_WRITE);
    h.kick(RXQ);
    let used = h.used(RXQ);
    assert_eq!(used.len(), 1);
    assert!(used[0].1.is_empty());
    h.give_rx(1, 4096);
    let pkts = h.recv();
    assert_eq!(pkts.len(), 1);
    assert_eq!(pkts[0].0.op, op::RST);
}

#[test]
fn transport_reset_event_and_connection_teardown() {
    let mut h = Harness::new("evreset");
    assert!(matches!(
        h.dev.lock().unwrap().send_transport_reset(),
        Err(VsockError::NoEventBuffer)
    ));
    h.add_buf(EVQ, &[0xff; 8], 8, F_WRITE);
    h.dev.lock().unwrap().send_transport_reset().unwrap();
    let used = h.used(EVQ);
    assert_eq!(used.len(), 1);
    assert_eq!(used[0].1, vec![0, 0, 0, 0]);
    // A device reset drops connections and closes host sockets.
    h.give_rx(4, 4096);
    let listener = UnixListener::bind(format!("{}_6004", h.uds.display())).unwrap();
    h.send(hdr(1234, 6004, op::REQUEST), &[]);
    let (mut stream, _) = listener.accept().unwrap();
    assert_eq!(h.connections(), 1);
    assert!(h.dev.lock().unwrap().reset());
    h.run();
    assert_eq!(h.connections(), 0);
    assert_eof(&mut stream);
}

#[test]
fn socket_path_checks() {
    let dir = TempDir::new("paths");
    let p = dir.0.join("a.sock");
    let live = Vsock::new(CID, p.clone()).unwrap();
    assert!(matches!(
        Vsock::new(CID, p.clone()),
        Err(VsockError::UdsInUse(_))
    ));
    drop(live);
    assert!(!p.exists(), "socket file left behind");
    // A stale socket file (no listener) is replaced.
    drop(UnixListener::bind(&p).unwrap());
    assert!(p.exists());
    let dev = Vsock::new(CID, p.clone()).unwrap();
    assert_eq!(dev.backend().uds_path(), p);
    drop(dev);
    std::fs::write(&p, b"not a socket").unwrap();
    assert!(matches!(
        Vsock::new(CID, p.clone()),
        Err(VsockError::UdsNotSocket(_))
    ));
    assert!(matches!(
        Vsock::new(CID, dir.0.join("missing/x.sock")),
        Err(VsockError::UdsDirMissing(_))
    ));
    for cid in [0, 1, 2, u64::from(u32::MAX), u64::MAX] {
        assert!(matches!(
            Vsock::new(cid, dir.0.join("c.sock")),
            Err(VsockError::InvalidCid(c)) if c == cid
        ));
    }
}

#[test]
fn parse_connect_is_strict() {
    assert_eq!(parse_connect(b"CONNECT 0"), Some(0));
    assert_eq!(parse_connect(b"CONNECT 4294967295"), Some(u32::MAX));
    assert_eq!(parse_connect(b"CONNECT 4294967296"), None);
    assert_eq!(parse_connect(b"CONNECT  5"), None);
    assert_eq!(parse_connect(b"CONNECT 5 "), None);
    assert_eq!(parse_connect(b"CONNECT -5"), None);
    assert_eq!(parse_connect(b"CONNECT 5\r"), None);
}

#[test]
fn connection_limit_refuses_clients_and_guest_requests() {
    let mut h = Harness::new("limit");
    h.dev.lock().unwrap().backend_mut().set_max_connections(2);
    h.give_rx(8, 4096);
    let _l = UnixListener::bind(format!("{}_6005", h.uds.display())).unwrap();
    // Two slots: one guest-initiated connection, one host client still typing.
    h.send(hdr(1, 6005, op::REQUEST), &[]);
    assert_eq!(h.recv()[0].0.op, op::RESPONSE);
    let mut typing = UnixStream::connect(&h.uds).unwrap();
    typing.write_all(b"CONN").unwrap();
    h.run();
    // Full: a third client is closed at once, a guest request is refused.
    let mut third = UnixStream::connect(&h.uds).unwrap();
    h.run();
    assert_eof(&mut third);
    h.send(hdr(2, 6005, op::REQUEST), &[]);
    let pkts = h.recv();
    assert_eq!(pkts.len(), 1);
    assert_eq!((pkts[0].0.op, pkts[0].0.dst_port), (op::RST, 2));
    // The typing client can still finish its command.
    typing.write_all(b"ECT 77\n").unwrap();
    h.run();
    let pkts = h.recv();
    assert_eq!((pkts[0].0.op, pkts[0].0.dst_port), (op::REQUEST, 77));
}

#[test]
fn resets_for_unknown_connections_are_bounded() {
    let dir = TempDir::new("rstflood");
    let mut b = VsockUnixBackend::new(CID, dir.0.join("s.sock")).unwrap();
    for port in 0..(MAX_PENDING_RST as u32 + 500) {
        b.send_pkt(&hdr(port, 9, op::RW), b"x");
    }
    let mut buf = [0u8; 16];
    let mut n = 0;
    while let Some((h, len)) = b.recv_pkt(&mut buf) {
        assert_eq!((h.op, len), (op::RST, 0));
        assert_eq!(h.dst_port, n as u32);
        n += 1;
    }
    assert_eq!(n, MAX_PENDING_RST);
}

/// Deterministic xorshift for the randomized hostile-input tests.
pub(crate) struct Rng(pub u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn random_guest_packets_never_panic_or_leak() {
    let mut h = Harness::new("random");
    let _l = UnixListener::bind(format!("{}_6", h.uds.display())).unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    h.give_rx(64, 4096);
    for round in 0..200 {
        let r = rng.next();
        let mut p = VsockHeader {
            src_cid: if r & 1 == 0 { CID } else { rng.next() % 8 },
            dst_cid: if r & 2 == 0 { 2 } else { rng.next() % 8 },
            src_port: (rng.next() % 4) as u32,
            dst_port: (rng.next() % 8) as u32,
            len: 0,
            type_: if r & 4 == 0 {
                TYPE_STREAM
            } else {
                (rng.next() % 4) as u16
            },
            op: (rng.next() % 9) as u16,
            flags: (rng.next() % 4) as u32,
            buf_alloc: (rng.next() % 70_000) as u32,
            fwd_cnt: rng.next() as u32,
        };
        let data: Vec<u8> = (0..rng.next() % 300).map(|_| rng.next() as u8).collect();
        if r & 8 == 0 {
            h.send(p, &data);
        } else {
            // Lie about the length or cut the buffer short.
            p.len = rng.next() as u32;
            let mut raw = p.to_bytes().to_vec();
            raw.extend_from_slice(&data);
            let cut = (rng.next() as usize) % (raw.len() + 1);
            h.add_buf(TXQ, &raw[..cut], cut as u32, 0);
            h.kick(TXQ);
        }
        h.recv();
        // (The mock queue cannot take more than 256 buffers in total.)
        if round % 40 == 0 {
            h.give_rx(32, 4096);
        }
    }
    // Every tx buffer came back, and the backend still works.
    assert_eq!(h.used(TXQ).len(), 200);
    h.send(hdr(100, 7777, op::REQUEST), &[]);
    assert!(h
        .recv()
        .iter()
        .any(|(p, _)| p.op == op::RST && p.dst_port == 100));
}

#[test]
fn closing_connection_that_cannot_flush_is_reset_after_the_deadline() {
    let mut h = Harness::new("closing");
    h.give_rx(16, 4096);
    let listener = UnixListener::bind(format!("{}_6006", h.uds.display())).unwrap();
    h.send(hdr(1234, 6006, op::REQUEST), &[]);
    assert_eq!(h.recv()[0].0.op, op::RESPONSE);
    let (mut stream, _) = listener.accept().unwrap(); // does not read for now
    let chunk = vec![3u8; 64 * 1024];
    while h.dev.lock().unwrap().backend().buffered(6006, 1234) == Some(0) {
        h.send(hdr(1234, 6006, op::RW), &chunk);
    }
    let mut sd = hdr(1234, 6006, op::SHUTDOWN);
    sd.flags = SHUTDOWN_SEND | SHUTDOWN_RCV;
    h.send(sd, &[]);
    // Still flushing: no RST yet.
    assert!(h.recv().iter().all(|(p, _)| p.op != op::RST));
    assert_eq!(h.connections(), 1);
    let start = Instant::now();
    let reset = h.run_until(CLOSE_TIMEOUT + Duration::from_secs(2), |h| {
        h.recv()
            .iter()
            .any(|(p, _)| p.op == op::RST && p.dst_port == 1234)
    });
    assert!(reset, "closing connection never reset");
    assert!(start.elapsed() >= CLOSE_TIMEOUT - Duration::from_millis(300));
    assert_eq!(h.connections(), 0);
    // The host socket is closed: reading drains what was flushed, then EOF or reset.
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("unexpected {e}"),
        }
    }
}

#[test]
fn data_sent_right_after_the_command_is_kept_for_the_guest() {
    let mut h = Harness::new("early");
    h.give_rx(8, 4096);
    let mut client = UnixStream::connect(&h.uds).unwrap();
    client.write_all(b"CONNECT 5000\nearly bytes").unwrap();
    h.run();
    let req = h.recv()[0].0;
    assert_eq!(req.op, op::REQUEST);
    h.send(hdr(5000, req.src_port, op::RESPONSE), &[]);
    assert_eq!(
        read_line(&mut client),
        format!("OK {}\n", req.src_port).as_bytes()
    );
    let pkts = h.recv();
    assert_eq!(pkts.len(), 1);
    assert_eq!(
        (pkts[0].0.op, pkts[0].1.as_slice()),
        (op::RW, &b"early bytes"[..])
    );
}

#[test]
fn backend_drops_packets_not_from_the_guest_to_the_host() {
    // Found by fuzzing the backend alone: replies must never go to another CID.
    let dir = TempDir::new("cids");
    let mut b = VsockUnixBackend::new(CID, dir.0.join("s.sock")).unwrap();
    let mut p = hdr(1, 9, op::RW);
    p.src_cid = 255;
    b.send_pkt(&p, b"x");
    let mut p = hdr(1, 9, op::RW);
    p.dst_cid = 7;
    b.send_pkt(&p, b"x");
    assert!(!b.has_pending_rx());
    b.send_pkt(&hdr(1, 9, op::RW), b"x");
    let mut buf = [0u8; 8];
    let (rst, _) = b.recv_pkt(&mut buf).unwrap();
    assert_eq!((rst.src_cid, rst.dst_cid, rst.op), (2, CID, op::RST));
}

#[test]
fn writing_to_a_vanished_host_peer_fails_with_epipe() {
    let (a, b) = UnixStream::pair().unwrap();
    drop(b);
    let err = super::sys::send_nosignal(&a, b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EPIPE));
}

#[test]
fn header_only_rx_buffer_is_not_taken_as_eof() {
    let mut h = Harness::new("hdronly");
    h.give_rx(1, 4096);
    let listener = UnixListener::bind(format!("{}_6010", h.uds.display())).unwrap();
    h.send(hdr(1234, 6010, op::REQUEST), &[]);
    assert_eq!(h.recv()[0].0.op, op::RESPONSE);
    let (mut stream, _) = listener.accept().unwrap();
    stream.write_all(b"world").unwrap();
    h.run();
    // The guest offers a buffer with room for the header only: it comes back unused
    // (length 0) and the connection lives on.
    h.give_rx(1, HDR_SIZE as u32);
    let used = h.used(RXQ);
    assert_eq!(used.len(), 1);
    assert!(
        used[0].1.is_empty(),
        "header-only buffer used with {:?}",
        used[0].1
    );
    assert_eq!(h.connections(), 1, "the connection was shut down");
    // The next real buffer carries the data; no OP_SHUTDOWN was ever sent.
    h.give_rx(1, 4096);
    let pkts = h.recv();
    assert_eq!(pkts.len(), 1);
    assert_eq!(
        (pkts[0].0.op, pkts[0].1.as_slice()),
        (op::RW, &b"world"[..])
    );
    // Host-side EOF still works afterwards.
    drop(stream);
    h.give_rx(1, 4096);
    h.run();
    let pkts = h.recv();
    assert_eq!(
        (pkts[0].0.op, pkts[0].0.flags),
        (op::SHUTDOWN, SHUTDOWN_SEND)
    );
}

#[test]
fn buffer_budget_bounds_total_buffering_and_refuses_new_connections() {
    let mut h = Harness::new("budget");
    let budget = 2 * CONN_BUF_SIZE as usize;
    h.dev.lock().unwrap().backend_mut().set_buf_budget(budget);
    h.give_rx(16, 4096);
    let l = UnixListener::bind(format!("{}_6020", h.uds.display())).unwrap();
    h.send(hdr(1, 6020, op::REQUEST), &[]);
    h.send(hdr(2, 6020, op::REQUEST), &[]);
    let pkts = h.recv();
    assert_eq!(
        pkts.iter().map(|p| p.0.op).collect::<Vec<_>>(),
        [op::RESPONSE, op::RESPONSE]
    );
    // Neither host socket reads: the guest fills both buffers up to its credit.
    let (_s1, _) = l.accept().unwrap();
    let (_s2, _) = l.accept().unwrap();
    let chunk = vec![7u8; 60 * 1024];
    for port in [1, 2] {
        for _ in 0..(CONN_BUF_SIZE as usize * 2 / chunk.len()) {
            h.send(hdr(port, 6020, op::RW), &chunk);
            if h.dev
                .lock()
                .unwrap()
                .backend()
                .buffered(6020, port)
                .unwrap_or(0)
                + chunk.len()
                > CONN_BUF_SIZE as usize
            {
                break;
            }
        }
    }
    let total = h.dev.lock().unwrap().backend().buffered_total();
    assert!(total > 0 && total <= budget, "buffered {total} of {budget}");
    assert_eq!(h.connections(), 2);
    // Budget used up: a third guest request is refused with RST ...
    h.recv();
    h.send(hdr(3, 6020, op::REQUEST), &[]);
    let pkts = h.recv();
    assert_eq!((pkts[0].0.op, pkts[0].0.dst_port), (op::RST, 3));
    // ... and a host client is closed after its command, with no request to the guest.
    let mut c = UnixStream::connect(&h.uds).unwrap();
    c.write_all(b"CONNECT 5000\n").unwrap();
    h.run();
    assert_eof(&mut c);
    assert!(
        h.recv().is_empty(),
        "nothing sent to the guest for a refused client"
    );
    // One connection goes: a new one fits again.
    h.send(hdr(1, 6020, op::RST), &[]);
    h.send(hdr(4, 6020, op::REQUEST), &[]);
    let pkts = h.recv();
    assert_eq!((pkts[0].0.op, pkts[0].0.dst_port), (op::RESPONSE, 4));
    assert!(h.dev.lock().unwrap().backend().buffered_total() <= budget);
}
