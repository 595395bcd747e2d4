//! The hybrid vsock backend (Firecracker-compatible): guest vsock connections are
//! bridged to Unix sockets on the host.
//!
//! - Host-initiated: a client connects to the listening socket `uds_path` and sends
//!   `CONNECT <port>\n`; we send the guest OP_REQUEST from a fresh host port (≥ 2^30);
//!   on the guest's OP_RESPONSE the client gets `OK <host port>\n`, then bytes flow. A
//!   bad command, a refused port or a silent guest closes the client.
//! - Guest-initiated to host port P: we connect to the Unix socket `<uds_path>_<P>`
//!   and answer OP_RESPONSE, or OP_RST if nobody listens there.
//!
//! Everything is non-blocking and bounded: [`MAX_CONNECTIONS`] connections (pending
//! clients included), a [`CONNECT_LINE_MAX`]-byte command line read within
//! [`CONNECT_TIMEOUT`], [`conn::CONN_BUF_SIZE`] bytes buffered per connection,
//! [`BUF_BUDGET`] bytes buffered over all connections of the VMM, and
//! [`MAX_PENDING_RST`] queued resets.
//!
//! The buffer budget: guest data waits in a connection's buffer while its host socket
//! does not read, up to the credit we advertise (`buf_alloc` = [`conn::CONN_BUF_SIZE`]);
//! a guest that sends more is reset. Every connection reserves that much of
//! [`BUF_BUDGET`] when it is made, so the total is bounded and a guest that respects its
//! credit never loses data. When the budget cannot back one more connection, new ones
//! are refused: a guest request gets OP_RST, a host client that finished its `CONNECT`
//! line is closed (as for a refused port). Clients still typing hold no buffer.

pub mod conn;
mod sys;

pub use conn::CLOSE_TIMEOUT;

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use event_manager::EventSet;
use vmm_sys_util::timerfd::TimerFd;

use self::conn::{Action, Conn, Recv};
use super::backend::{EpollChange, VsockBackend};
use super::packet::{op, VsockHeader, HOST_CID, TYPE_STREAM};
use super::VsockError;
use crate::devices::virtio::ratelimit::warn_limited;

/// Most connections (established, connecting, and clients still sending their command).
pub const MAX_CONNECTIONS: usize = 1024;
/// Most guest data held for host sockets over all connections (each reserves
/// [`conn::CONN_BUF_SIZE`], so at most 128 connections by default).
pub const BUF_BUDGET: usize = 32 * 1024 * 1024;
/// Longest `CONNECT <port>\n` line accepted.
pub const CONNECT_LINE_MAX: usize = 32;
/// Time a host client has to send its command, and the guest to answer a request.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Most resets queued for the guest at once (more are dropped).
pub const MAX_PENDING_RST: usize = 1024;
/// First host port handed out for host-initiated connections.
pub const FIRST_LOCAL_PORT: u32 = 1 << 30;
const TIMER_TICK: Duration = Duration::from_millis(250);

/// (host port, guest port).
type ConnKey = (u32, u32);

#[derive(Debug)]
struct PendingClient {
    stream: UnixStream,
    line: Vec<u8>,
    deadline: Instant,
}

/// The hybrid Unix-socket vsock backend.
#[derive(Debug)]
pub struct VsockUnixBackend {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    timer: TimerFd,
    timer_armed: bool,
    pending: HashMap<RawFd, PendingClient>,
    conns: HashMap<ConnKey, Conn>,
    fds: HashMap<RawFd, ConnKey>,
    rx_queue: VecDeque<ConnKey>,
    rst_queue: VecDeque<VsockHeader>,
    next_local_port: u32,
    changes: Vec<EpollChange>,
    closed: Vec<UnixStream>,
    max_connections: usize,
    buf_budget: usize,
}

/// A timerfd whose read never blocks (it may be disarmed between epoll reporting it
/// and our read).
fn nonblocking_timer() -> Result<TimerFd, VsockError> {
    let timer =
        TimerFd::new().map_err(|e| VsockError::Timer(io::Error::from_raw_os_error(e.errno())))?;
    // SAFETY: fcntl(F_SETFL) on a descriptor we own; no pointers involved.
    let ret = unsafe { libc::fcntl(timer.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    if ret < 0 {
        return Err(VsockError::Timer(io::Error::last_os_error()));
    }
    Ok(timer)
}

/// Parse `CONNECT <port>\n` (without the newline).
pub fn parse_connect(line: &[u8]) -> Option<u32> {
    let digits = line.strip_prefix(b"CONNECT ")?;
    if digits.is_empty() || digits.len() > 10 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

impl VsockUnixBackend {
    /// Listen on `uds_path` for a guest with CID `guest_cid`. A stale socket file is
    /// replaced; a live listener, a non-socket file or a missing directory is an error.
    pub fn new(guest_cid: u64, uds_path: PathBuf) -> Result<Self, VsockError> {
        let dir = match uds_path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !dir.is_dir() {
            return Err(VsockError::UdsDirMissing(uds_path));
        }
        if let Ok(meta) = std::fs::symlink_metadata(&uds_path) {
            if !meta.file_type().is_socket() {
                return Err(VsockError::UdsNotSocket(uds_path));
            }
            if UnixStream::connect(&uds_path).is_ok() {
                return Err(VsockError::UdsInUse(uds_path));
            }
            std::fs::remove_file(&uds_path).map_err(|source| VsockError::UdsBind {
                path: uds_path.clone(),
                source,
            })?;
        }
        let listener = UnixListener::bind(&uds_path).map_err(|source| VsockError::UdsBind {
            path: uds_path.clone(),
            source,
        })?;
        listener
            .set_nonblocking(true)
            .map_err(|source| VsockError::UdsBind {
                path: uds_path.clone(),
                source,
            })?;
        Ok(Self {
            guest_cid,
            uds_path,
            listener,
            timer: nonblocking_timer()?,
            timer_armed: false,
            pending: HashMap::new(),
            conns: HashMap::new(),
            fds: HashMap::new(),
            rx_queue: VecDeque::new(),
            rst_queue: VecDeque::new(),
            next_local_port: FIRST_LOCAL_PORT,
            changes: Vec::new(),
            closed: Vec::new(),
            max_connections: MAX_CONNECTIONS,
            buf_budget: BUF_BUDGET,
        })
    }

    /// The listening socket's path.
    pub fn uds_path(&self) -> &Path {
        &self.uds_path
    }

    /// Number of live connections (not counting clients still sending their command).
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Bytes of guest data buffered for the host socket of connection `key`.
    pub fn buffered(&self, local_port: u32, peer_port: u32) -> Option<usize> {
        self.conns
            .get(&(local_port, peer_port))
            .map(|c| c.buffered())
    }

    /// Lower the connection limit (tests use it to reach the limit cheaply).
    pub fn set_max_connections(&mut self, max: usize) {
        self.max_connections = max.min(MAX_CONNECTIONS);
    }

    /// Lower the buffer budget (tests use it to reach the limit cheaply).
    pub fn set_buf_budget(&mut self, bytes: usize) {
        self.buf_budget = bytes.min(BUF_BUDGET);
    }

    /// Bytes of guest data buffered for host sockets over all connections.
    pub fn buffered_total(&self) -> usize {
        self.conns.values().map(Conn::buffered).sum()
    }

    fn at_capacity(&self) -> bool {
        self.conns.len() + self.pending.len() >= self.max_connections
    }

    /// Whether the buffer budget cannot back one more connection.
    fn budget_exhausted(&self) -> bool {
        (self.conns.len() + 1).saturating_mul(conn::CONN_BUF_SIZE as usize) > self.buf_budget
    }

    fn queue_rst(&mut self, hdr: VsockHeader) {
        if self.rst_queue.len() < MAX_PENDING_RST {
            self.rst_queue.push_back(hdr);
        } else {
            warn_limited!("vsock: too many resets queued for the guest; dropping one");
        }
    }

    fn queue_rx(&mut self, key: ConnKey) {
        if let Some(c) = self.conns.get_mut(&key) {
            if !c.in_rx_queue && c.wants_rx() {
                c.in_rx_queue = true;
                self.rx_queue.push_back(key);
            }
        }
    }

    fn update_interest(&mut self, key: ConnKey) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        let fd = c.stream.as_raw_fd();
        let want = c.interest();
        let change = match (c.registered, want.is_empty()) {
            (None, true) => None,
            (None, false) => Some(EpollChange::Add(fd, want)),
            (Some(_), true) => Some(EpollChange::Remove(fd)),
            (Some(old), false) if old != want => Some(EpollChange::Modify(fd, want)),
            (Some(_), false) => None,
        };
        if let Some(change) = change {
            c.registered = (!want.is_empty()).then_some(want);
            self.changes.push(change);
        }
    }

    /// Follow up on a connection after an operation on it.
    fn settle(&mut self, key: ConnKey, action: Action) {
        match action {
            Action::Kill => self.remove(key, true),
            Action::Keep => {
                self.update_interest(key);
                self.queue_rx(key);
            }
        }
    }

    fn remove(&mut self, key: ConnKey, send_rst: bool) {
        let Some(mut c) = self.conns.remove(&key) else {
            return;
        };
        let fd = c.stream.as_raw_fd();
        self.fds.remove(&fd);
        if c.registered.is_some() {
            self.changes.push(EpollChange::Remove(fd));
        }
        if send_rst {
            let rst = c.header(self.guest_cid, op::RST);
            self.queue_rst(rst);
        }
        // Keep the descriptor open until the event loop has unregistered it.
        self.closed.push(c.stream);
    }

    fn insert(&mut self, conn: Conn) -> ConnKey {
        let key = (conn.local_port, conn.peer_port);
        self.fds.insert(conn.stream.as_raw_fd(), key);
        self.conns.insert(key, conn);
        self.update_interest(key);
        self.queue_rx(key);
        key
    }

    fn alloc_local_port(&mut self, peer_port: u32) -> Option<u32> {
        for _ in 0..=MAX_CONNECTIONS {
            let port = self.next_local_port;
            self.next_local_port = port.checked_add(1).unwrap_or(FIRST_LOCAL_PORT);
            if !self.conns.contains_key(&(port, peer_port)) {
                return Some(port);
            }
        }
        None
    }

    fn accept_clients(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.at_capacity() {
                        warn_limited!("vsock: connection limit reached; host client refused");
                        continue;
                    }
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let fd = stream.as_raw_fd();
                    self.changes.push(EpollChange::Add(fd, EventSet::IN));
                    self.pending.insert(
                        fd,
                        PendingClient {
                            stream,
                            line: Vec::with_capacity(CONNECT_LINE_MAX),
                            deadline: Instant::now() + CONNECT_TIMEOUT,
                        },
                    );
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    if e.kind() != io::ErrorKind::WouldBlock {
                        warn_limited!("vsock: accept on {} failed: {e}", self.uds_path.display());
                    }
                    return;
                }
            }
        }
    }

    fn drop_pending(&mut self, fd: RawFd) {
        if let Some(p) = self.pending.remove(&fd) {
            self.changes.push(EpollChange::Remove(fd));
            self.closed.push(p.stream);
        }
    }

    /// Read the client's command one byte at a time, so nothing after the newline is
    /// consumed (it is data for the guest).
    fn read_command(&mut self, fd: RawFd) {
        let Some(p) = self.pending.get_mut(&fd) else {
            return;
        };
        let mut byte = [0u8; 1];
        let port = loop {
            match (&p.stream).read(&mut byte) {
                Ok(0) => return self.drop_pending(fd),
                Ok(_) if byte[0] == b'\n' => match parse_connect(&p.line) {
                    Some(port) => break port,
                    None => return self.drop_pending(fd),
                },
                Ok(_) => {
                    p.line.push(byte[0]);
                    if p.line.len() >= CONNECT_LINE_MAX {
                        return self.drop_pending(fd);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.drop_pending(fd),
            }
        };
        let Some(p) = self.pending.remove(&fd) else {
            return;
        };
        self.changes.push(EpollChange::Remove(fd));
        if self.budget_exhausted() {
            warn_limited!("vsock: buffer budget exhausted; host client for port {port} refused");
            self.closed.push(p.stream);
            return;
        }
        let Some(local_port) = self.alloc_local_port(port) else {
            self.closed.push(p.stream);
            return;
        };
        let conn = Conn::new_local(p.stream, local_port, port, Instant::now() + CONNECT_TIMEOUT);
        self.insert(conn);
    }

    fn guest_request(&mut self, hdr: &VsockHeader) {
        let key = (hdr.dst_port, hdr.src_port);
        if self.conns.contains_key(&key) {
            warn_limited!("vsock: duplicate request for port {}", hdr.dst_port);
            self.remove(key, true);
            return;
        }
        if self.at_capacity() || self.budget_exhausted() {
            warn_limited!(
                "vsock: connection limit or buffer budget reached; guest request refused"
            );
            self.queue_rst(hdr.rst_reply());
            return;
        }
        let mut path = OsString::from(self.uds_path.as_os_str());
        path.push(format!("_{}", hdr.dst_port));
        match sys::connect_nonblocking(Path::new(&path)) {
            Ok(stream) => {
                self.insert(Conn::new_peer(stream, hdr));
            }
            Err(_) => self.queue_rst(hdr.rst_reply()),
        }
    }

    fn sweep(&mut self) {
        let now = Instant::now();
        let expired: Vec<RawFd> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(&fd, _)| fd)
            .collect();
        for fd in expired {
            self.drop_pending(fd);
        }
        let expired: Vec<ConnKey> = self
            .conns
            .iter()
            .filter(|(_, c)| c.deadline.is_some_and(|d| d <= now))
            .map(|(&k, _)| k)
            .collect();
        for key in expired {
            self.remove(key, true);
        }
    }

    fn update_timer(&mut self) {
        let needed = !self.pending.is_empty() || self.conns.values().any(|c| c.deadline.is_some());
        if needed == self.timer_armed {
            return;
        }
        let result = if needed {
            self.timer.reset(TIMER_TICK, Some(TIMER_TICK))
        } else {
            self.timer.clear()
        };
        match result {
            Ok(()) => self.timer_armed = needed,
            Err(e) => log::error!("vsock: cannot set the connection timer: {e}"),
        }
    }
}

impl VsockBackend for VsockUnixBackend {
    fn initial_fds(&self) -> Vec<(RawFd, EventSet)> {
        vec![
            (self.listener.as_raw_fd(), EventSet::IN),
            (self.timer.as_raw_fd(), EventSet::IN),
        ]
    }

    fn handle_event(&mut self, fd: RawFd, events: EventSet) {
        if fd == self.listener.as_raw_fd() {
            self.accept_clients();
        } else if fd == self.timer.as_raw_fd() {
            // Non-blocking: fails harmlessly if the timer was re-armed meanwhile.
            let _ = self.timer.wait();
            self.sweep();
        } else if self.pending.contains_key(&fd) {
            self.read_command(fd);
        } else if let Some(&key) = self.fds.get(&fd) {
            let action = match self.conns.get_mut(&key) {
                Some(c) => c.on_event(events),
                None => Action::Keep,
            };
            self.settle(key, action);
        }
        self.update_timer();
    }

    fn send_pkt(&mut self, hdr: &VsockHeader, data: &[u8]) {
        // The device checks this already; without it, replies would go to a stranger.
        if hdr.src_cid != self.guest_cid || hdr.dst_cid != HOST_CID {
            warn_limited!(
                "vsock: packet from CID {} to CID {} dropped",
                hdr.src_cid,
                hdr.dst_cid
            );
            return;
        }
        if hdr.type_ != TYPE_STREAM {
            if hdr.op != op::RST {
                self.queue_rst(hdr.rst_reply());
            }
            return;
        }
        let key = (hdr.dst_port, hdr.src_port);
        match hdr.op {
            op::REQUEST => self.guest_request(hdr),
            op::RST => self.remove(key, false),
            op::RESPONSE => {
                let action = match self.conns.get_mut(&key) {
                    Some(c) => c.on_response(hdr),
                    None => {
                        self.queue_rst(hdr.rst_reply());
                        return;
                    }
                };
                self.settle(key, action);
            }
            _ => {
                let action = match self.conns.get_mut(&key) {
                    Some(c) => c.from_guest(hdr, data),
                    None => {
                        self.queue_rst(hdr.rst_reply());
                        return;
                    }
                };
                self.settle(key, action);
            }
        }
        self.update_timer();
    }

    fn has_pending_rx(&self) -> bool {
        !self.rst_queue.is_empty() || !self.rx_queue.is_empty()
    }

    fn recv_pkt(&mut self, buf: &mut [u8]) -> Option<(VsockHeader, usize)> {
        // Each queued connection is asked at most once per call: one that has only data
        // to send while `buf` is empty stays queued (at the back) for a later buffer.
        let mut turns = self.rx_queue.len();
        loop {
            if let Some(rst) = self.rst_queue.pop_front() {
                return Some((rst, 0));
            }
            if turns == 0 {
                return None;
            }
            turns -= 1;
            let key = self.rx_queue.pop_front()?;
            let Some(c) = self.conns.get_mut(&key) else {
                continue;
            };
            c.in_rx_queue = false;
            match c.recv_pkt(self.guest_cid, buf) {
                Recv::Packet(hdr, n) => {
                    self.settle(key, Action::Keep);
                    return Some((hdr, n));
                }
                Recv::Nothing => self.settle(key, Action::Keep),
                Recv::Kill => self.remove(key, true),
            }
        }
    }

    fn take_epoll_changes(&mut self) -> Vec<EpollChange> {
        std::mem::take(&mut self.changes)
    }

    fn drop_closed(&mut self) {
        self.closed.clear();
    }

    fn reset(&mut self) {
        let keys: Vec<ConnKey> = self.conns.keys().copied().collect();
        for key in keys {
            self.remove(key, false);
        }
        let fds: Vec<RawFd> = self.pending.keys().copied().collect();
        for fd in fds {
            self.drop_pending(fd);
        }
        self.rx_queue.clear();
        self.rst_queue.clear();
        self.update_timer();
    }
}

impl Drop for VsockUnixBackend {
    fn drop(&mut self) {
        // Best effort: the socket file is ours; a leftover would only be replaced later.
        let _ = std::fs::remove_file(&self.uds_path);
    }
}

#[cfg(test)]
#[path = "tests.rs"]
pub(crate) mod tests;
