//! Fuzz the hybrid Unix vsock backend's connection state machine with arbitrary guest
//! packets (real Unix sockets behind it: listeners on `<uds>_1` and `<uds>_2`; the first
//! accepts each connection and sends 16 bytes of host data on it, the second is never
//! accepted). The backend must never
//! panic, and every packet it hands the guest must be well formed: from the host CID to
//! the guest CID, stream type, payload within the buffer it was given. The guest's rx
//! buffers vary from 0 bytes of payload room (a header-only rx chain) up: since no host
//! peer ever closes its side, the backend must never tell the guest "no more data"
//! (OP_SHUTDOWN); a zero-capacity read taken as EOF would. The buffer budget is lowered
//! so the fuzzer reaches it, and the total buffered must stay within it.
#![no_main]

use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicU32, Ordering};

use event_manager::EventSet;
use husk_vmm::devices::virtio::vsock::backend::{EpollChange, VsockBackend};
use husk_vmm::devices::virtio::vsock::packet::{op, VsockHeader, HOST_CID, TYPE_STREAM};
use husk_vmm::devices::virtio::vsock::VsockUnixBackend;
use libfuzzer_sys::fuzz_target;

const CID: u64 = 3;

fuzz_target!(|data: &[u8]| {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "husk-fuzz-vsock-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let uds = dir.join("v.sock");
    let mut b = VsockUnixBackend::new(CID, uds.clone()).unwrap();
    b.set_max_connections(8);
    const BUDGET: usize = 3 * 256 * 1024;
    b.set_buf_budget(BUDGET);
    let l1 = UnixListener::bind(format!("{}_1", uds.display())).unwrap();
    l1.set_nonblocking(true).unwrap();
    // Host ends of accepted connections: kept open (no host peer ever closes).
    let mut host_ends: Vec<UnixStream> = Vec::new();
    let _l2 = UnixListener::bind(format!("{}_2", uds.display())).unwrap();
    let mut watched: Vec<i32> = Vec::new();
    let mut buf = vec![0u8; 512];
    // Each record: [op, ports, flags, len, buf_alloc x2, fwd_cnt x2, kind, 7 bytes data].
    for rec in data.chunks_exact(16) {
        let hdr = VsockHeader {
            src_cid: if rec[9] & 0x80 == 0 {
                CID
            } else {
                u64::from(rec[9])
            },
            dst_cid: HOST_CID,
            src_port: u32::from(rec[1] & 3),
            dst_port: u32::from((rec[1] >> 2) & 3),
            len: 0,
            type_: if rec[9] & 0x40 == 0 { TYPE_STREAM } else { 2 },
            op: u16::from(rec[0] % 9),
            flags: u32::from(rec[2] & 7),
            buf_alloc: u32::from(u16::from_le_bytes([rec[4], rec[5]])),
            fwd_cnt: u32::from(u16::from_le_bytes([rec[6], rec[7]])),
        };
        let len = usize::from(rec[3] % 8).min(7);
        let payload = &rec[9..9 + len];
        let mut h = hdr;
        h.len = payload.len() as u32;
        b.send_pkt(&h, payload);
        if rec[8] & 1 == 1 {
            // Pretend every watched socket is ready.
            for &fd in &watched {
                b.handle_event(fd, EventSet::IN | EventSet::OUT);
            }
        }
        for change in b.take_epoll_changes() {
            match change {
                EpollChange::Add(fd, _) => watched.push(fd),
                EpollChange::Modify(..) => {}
                EpollChange::Remove(fd) => watched.retain(|&w| w != fd),
            }
        }
        b.drop_closed();
        while let Ok((s, _)) = l1.accept() {
            let _ = s.set_nonblocking(true);
            let _ = (&s).write_all(b"host data 16 byt");
            host_ends.push(s);
        }
        let cap = usize::from(rec[8] >> 1).min(buf.len());
        let mut count = 0;
        while b.has_pending_rx() && count < 64 {
            let Some((p, n)) = b.recv_pkt(&mut buf[..cap]) else {
                break;
            };
            assert_eq!(
                (p.src_cid, p.dst_cid, p.type_),
                (HOST_CID, CID, TYPE_STREAM)
            );
            assert!(n <= cap);
            assert!(p.op != op::RW || (n > 0 && p.len as usize == n));
            assert_ne!(p.op, op::SHUTDOWN, "no host peer closed (cap {cap})");
            count += 1;
        }
        assert!(b.buffered_total() <= BUDGET);
    }
    drop(b);
    let _ = std::fs::remove_dir_all(&dir);
});
