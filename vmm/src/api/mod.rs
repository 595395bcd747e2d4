//! Firecracker's REST API on a Unix socket (`--api-sock`), served by one thread under
//! the API seccomp filter. No async runtime: one `epoll` loop over the listener and
//! the open connections, all non-blocking, so a client that connects and sends nothing
//! (or half a request) never stops others from being served. Requests are framed by
//! [`http`] (httparse, size limits), routed by [`router`] into a
//! [`crate::controller::VmmAction`], sent over the action channel, and answered with
//! the controller's one reply. Malformed or oversized requests get a 400 with a
//! `fault_message` and the connection is closed.

pub mod http;
pub mod router;

use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use crate::controller::ActionSender;
use crate::metrics::METRICS;
use http::Parsed;

/// Most connections open at once; a new one beyond this closes the oldest.
pub const MAX_CONNECTIONS: usize = 32;

/// Errors starting the API server.
#[derive(Debug, thiserror::Error)]
pub enum ApiServerError {
    /// The socket path is taken.
    #[error("the API socket path {0} already exists: remove it or choose another --api-sock")]
    Exists(PathBuf),
    /// Binding failed.
    #[error("cannot create the API socket {0}")]
    Bind(PathBuf, #[source] std::io::Error),
    /// epoll setup failed.
    #[error("cannot set up the API server's epoll")]
    Epoll(#[source] std::io::Error),
    /// The thread could not start.
    #[error(transparent)]
    Spawn(#[from] crate::seccomp::SeccompError),
}

struct Conn {
    stream: UnixStream,
    buf: Vec<u8>,
    sent_continue: bool,
    opened: u64,
}

/// The API server: a bound listener, ready to run on its thread.
pub struct ApiServer {
    listener: UnixListener,
    epoll: Epoll,
    sender: ActionSender,
    max_payload: usize,
    conns: Vec<Option<Conn>>,
    opened: u64,
}

const LISTENER: u64 = u64::MAX;

impl ApiServer {
    /// Bind `path` (which must not exist) and prepare the epoll set.
    pub fn bind(
        path: &Path,
        sender: ActionSender,
        max_payload: usize,
    ) -> Result<Self, ApiServerError> {
        if path.symlink_metadata().is_ok() {
            return Err(ApiServerError::Exists(path.to_path_buf()));
        }
        let listener =
            UnixListener::bind(path).map_err(|e| ApiServerError::Bind(path.to_path_buf(), e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| ApiServerError::Bind(path.to_path_buf(), e))?;
        let epoll = Epoll::new().map_err(ApiServerError::Epoll)?;
        epoll
            .ctl(
                ControlOperation::Add,
                listener.as_raw_fd(),
                EpollEvent::new(EventSet::IN, LISTENER),
            )
            .map_err(ApiServerError::Epoll)?;
        Ok(Self {
            listener,
            epoll,
            sender,
            max_payload,
            conns: (0..MAX_CONNECTIONS).map(|_| None).collect(),
            opened: 0,
        })
    }

    /// Run the server on a new thread named `husk-api`, under the API seccomp filter
    /// unless `seccomp` is false.
    pub fn spawn(
        self,
        seccomp: bool,
    ) -> Result<JoinHandle<Result<(), crate::seccomp::SeccompError>>, ApiServerError> {
        let filter = seccomp.then_some(crate::seccomp::Thread::Api);
        Ok(crate::seccomp::spawn_with_filter(
            "husk-api".into(),
            filter,
            move || self.run(),
        )?)
    }

    /// Serve forever (until the process exits).
    pub fn run(mut self) {
        let mut events = vec![EpollEvent::default(); MAX_CONNECTIONS + 1];
        loop {
            let n = match self.epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::error!("the API server stops: epoll failed: {e}");
                    return;
                }
            };
            for ev in &events[..n] {
                match ev.data() {
                    LISTENER => self.accept_all(),
                    slot => self.serve(slot as usize),
                }
            }
        }
    }

    fn accept_all(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!("API: accept failed: {e}");
                    return;
                }
            };
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let slot = match self.conns.iter().position(Option::is_none) {
                Some(s) => s,
                None => {
                    // Full: close the connection open longest (likely an idle client).
                    let oldest = self
                        .conns
                        .iter()
                        .enumerate()
                        .min_by_key(|(_, c)| c.as_ref().map(|c| c.opened).unwrap_or(u64::MAX))
                        .map(|(i, _)| i)
                        .unwrap_or(0);
                    log::warn!("API: too many open connections; closing the oldest");
                    self.close(oldest);
                    oldest
                }
            };
            if self
                .epoll
                .ctl(
                    ControlOperation::Add,
                    stream.as_raw_fd(),
                    EpollEvent::new(EventSet::IN | EventSet::READ_HANG_UP, slot as u64),
                )
                .is_err()
            {
                continue;
            }
            self.opened += 1;
            self.conns[slot] = Some(Conn {
                stream,
                buf: Vec::new(),
                sent_continue: false,
                opened: self.opened,
            });
        }
    }

    fn close(&mut self, slot: usize) {
        if let Some(c) = self.conns.get_mut(slot).and_then(Option::take) {
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                c.stream.as_raw_fd(),
                EpollEvent::default(),
            );
        }
    }

    /// Read what the client sent, answer every complete request in it.
    fn serve(&mut self, slot: usize) {
        let limit = http::MAX_HEADER_BYTES + self.max_payload;
        let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        let mut chunk = [0u8; 4096];
        let mut eof = false;
        loop {
            match conn.stream.read(&mut chunk) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    conn.buf.extend_from_slice(&chunk[..n]);
                    if conn.buf.len() > limit {
                        break;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => {
                    eof = true;
                    break;
                }
            }
        }
        let mut keep = !eof;
        loop {
            let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut) else {
                return;
            };
            match http::parse(&conn.buf, self.max_payload) {
                Parsed::Request(req, used) => {
                    conn.buf.drain(..used);
                    conn.sent_continue = false;
                    let out = self.answer(&req);
                    let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut) else {
                        return;
                    };
                    if conn.stream.write_all(&out).is_err() || req.close {
                        keep = false;
                        break;
                    }
                }
                Parsed::Partial { expect_continue } => {
                    if conn.buf.len() > limit {
                        METRICS.api.bad_http.inc();
                        let body =
                            router::fault_body("the request is larger than the server accepts");
                        let _ = conn.stream.write_all(&http::response(400, Some(&body)));
                        keep = false;
                    } else if expect_continue && !conn.sent_continue {
                        conn.sent_continue = true;
                        if conn.stream.write_all(http::CONTINUE).is_err() {
                            keep = false;
                        }
                    }
                    break;
                }
                Parsed::Bad(msg) => {
                    METRICS.api.bad_http.inc();
                    METRICS.api.errors.inc();
                    log::debug!("API: bad request: {msg}");
                    let _ = conn
                        .stream
                        .write_all(&http::response(400, Some(&router::fault_body(&msg))));
                    keep = false;
                    break;
                }
            }
        }
        if !keep {
            self.close(slot);
        }
    }

    fn answer(&self, req: &http::Request) -> Vec<u8> {
        METRICS.api.requests.inc();
        let (status, body) = match router::parse_request(&req.method, &req.path, &req.body) {
            Ok(action) => router::response_for(&self.sender.request(action)),
            Err(e) => (e.status, Some(router::fault_body(&e.message))),
        };
        if status >= 400 {
            METRICS.api.errors.inc();
        }
        log::debug!("API: {} {} -> {status}", req.method, req.path);
        http::response(status, body.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::{Controller, ControllerOptions};
    use crate::stop::StopReason;

    fn exchange(path: &Path, bytes: &[u8]) -> String {
        let mut s = UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        s.write_all(bytes).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn idle_clients_do_not_block_others_and_bad_http_gets_400() {
        let path = std::env::temp_dir().join(format!("husk-api-unit-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let mut c = Controller::new(ControllerOptions {
            seccomp: false,
            ..ControllerOptions::default()
        })
        .unwrap();
        ApiServer::bind(&path, c.sender(), 1024)
            .unwrap()
            .spawn(false)
            .unwrap();
        assert!(matches!(
            ApiServer::bind(&path, c.sender(), 1024),
            Err(ApiServerError::Exists(_))
        ));
        let stop = c.stop_signal().try_clone().unwrap();
        let p = path.clone();
        let client = std::thread::spawn(move || {
            // Two clients that never finish a request stay connected meanwhile.
            let idle = UnixStream::connect(&p).unwrap();
            let mut half = UnixStream::connect(&p).unwrap();
            half.write_all(b"PUT /vm HTTP/1.1\r\nContent-Length: 30\r\n\r\n{")
                .unwrap();
            let ok = exchange(&p, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
            let bad = exchange(&p, b"\x00garbage\r\n\r\n");
            let big = exchange(&p, b"PUT /logger HTTP/1.1\r\nContent-Length: 5000\r\n\r\n");
            let unknown = exchange(&p, b"GET /x HTTP/1.1\r\nConnection: close\r\n\r\n");
            // Two requests on one connection (keep-alive), the second closes it.
            let two = exchange(
                &p,
                b"GET /version HTTP/1.1\r\n\r\nPATCH /vm HTTP/1.1\r\nContent-Length: 19\r\nConnection: close\r\n\r\n{\"state\": \"Paused\"}",
            );
            drop((idle, half));
            stop.stop(StopReason::Reset);
            (ok, bad, big, unknown, two)
        });
        assert_eq!(c.run().unwrap(), StopReason::Reset);
        let (ok, bad, big, unknown, two) = client.join().unwrap();
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("\"state\":\"Not started\""), "{ok}");
        assert!(bad.starts_with("HTTP/1.1 400 "), "{bad}");
        assert!(bad.contains("fault_message"), "{bad}");
        assert!(big.contains("larger than the limit of 1024"), "{big}");
        assert!(
            unknown.contains("Invalid request method and/or path: GET /x."),
            "{unknown}"
        );
        assert_eq!(two.matches("HTTP/1.1 ").count(), 2, "{two}");
        assert!(two.contains("firecracker_version"), "{two}");
        assert!(two.contains("before starting the microVM"), "{two}");
        assert!(METRICS.api.bad_http.get() >= 2);
        let _ = std::fs::remove_file(&path);
    }
}
