//! `husk pool`'s caller side: a Unix socket that speaks what a sandbox's vsock socket
//! speaks. A caller sends `CONNECT <port>\n` (the hybrid vsock handshake; the agent's
//! port only) and gets `OK <n>\n`; the pool then takes a ready sandbox and relays its
//! Hello (sandbox id, restore generation, plus [`FEATURE_POOL`]). The caller's Invoke
//! runs on that sandbox; its Log frames and Result come back; the sandbox is destroyed.
//! A second Invoke on the connection gets `AlreadyUsed`, like a one-shot sandbox.
//! `husk invoke --uds` and `husk_agent::client` work against it unchanged.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use husk_agent::protocol::{Codec, ErrorCode, ErrorMsg, Limits, Message, ProtocolError};

use super::{Lease, Pool, PoolConfig, PoolError};

/// Hello feature bit a pool adds: the sandbox behind this connection came from a pool
/// and is destroyed after one invocation.
pub const FEATURE_POOL: u64 = 1 << 32;

/// How the server treats callers.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The guest vsock port callers must CONNECT to (the agent's).
    pub port: u32,
    /// How long a caller waits for a ready sandbox.
    pub acquire_timeout: Duration,
    /// Invocation timeout when the Invoke has no deadline (else deadline + 10 s).
    pub invoke_timeout: Duration,
    /// A connection without a frame for this long is closed (its sandbox destroyed).
    pub idle_timeout: Duration,
    /// Most concurrent caller connections.
    pub max_connections: usize,
}

const MAX_HANDSHAKE_LINE: usize = 64;
/// After SIGTERM, how long a caller that holds a sandbox (it has the Hello) but has not
/// sent its Invoke yet still gets to send it; callers whose invocation is done are
/// closed at once.
const STOP_GRACE: Duration = Duration::from_secs(5);
const POLL_SLICE_MS: i32 = 100;

/// Wait until `fd` is readable or `ms` passes; true if readable (or hung up).
fn readable(fd: RawFd, ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll(2) on one valid pollfd for the call's duration.
    let n = unsafe { libc::poll(&mut p, 1, ms) };
    n > 0
}

/// Serve callers on `listener` until `stop_fd` becomes readable (SIGTERM), calling
/// `tick` about every 100 ms (status file, reaping dead ready sandboxes). Then drain:
/// stop accepting (still ticking), let in-flight invocations finish (a caller that has
/// its Hello gets [`STOP_GRACE`] to send its Invoke), close the other connections and
/// return.
pub fn serve(
    listener: &UnixListener,
    pool: &Arc<Pool<PoolConfig>>,
    opts: &ServeOptions,
    stop_fd: RawFd,
    mut tick: impl FnMut(),
) {
    let stopping = Arc::new(AtomicBool::new(false));
    let active = Arc::new(AtomicUsize::new(0));
    let next_port = Arc::new(AtomicU32::new(1_000_000));
    let mut threads: Vec<JoinHandle<()>> = Vec::new();
    let _ = listener.set_nonblocking(true);
    loop {
        let mut fds = [
            libc::pollfd {
                fd: listener.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stop_fd,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: poll(2) on two valid pollfds for the call's duration.
        unsafe { libc::poll(fds.as_mut_ptr(), 2, POLL_SLICE_MS) };
        tick();
        threads.retain(|t| !t.is_finished());
        if fds[1].revents != 0 {
            break;
        }
        if fds[0].revents == 0 {
            continue;
        }
        let conn = match listener.accept() {
            Ok((c, _)) => c,
            Err(_) => continue,
        };
        let _ = conn.set_nonblocking(false);
        if active.load(Ordering::SeqCst) >= opts.max_connections {
            refuse(
                conn,
                ErrorCode::Busy,
                "too many open connections to the pool; retry",
            );
            continue;
        }
        active.fetch_add(1, Ordering::SeqCst);
        let (pool, opts2, stopping2, active2) =
            (pool.clone(), opts.clone(), stopping.clone(), active.clone());
        let port = next_port.fetch_add(1, Ordering::SeqCst);
        match std::thread::Builder::new()
            .name("pool-conn".into())
            .spawn(move || {
                serve_caller(conn, &pool, &opts2, &stopping2, port);
                active2.fetch_sub(1, Ordering::SeqCst);
            }) {
            Ok(t) => threads.push(t),
            Err(e) => {
                active.fetch_sub(1, Ordering::SeqCst);
                log::error!("pool: cannot start a connection thread: {e}");
            }
        }
    }
    stopping.store(true, Ordering::SeqCst);
    pool.drain();
    // Keep ticking (the status file shows the drain) until the connections are done.
    loop {
        tick();
        threads.retain(|t| !t.is_finished());
        if threads.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(POLL_SLICE_MS as u64));
    }
}

/// Answer `conn` with one Error frame and close it (before the hybrid handshake the
/// frame is what the caller reads instead of `OK`; husk's client reports it).
fn refuse(mut conn: UnixStream, code: ErrorCode, msg: &str) {
    let _ = conn.set_write_timeout(Some(Duration::from_millis(200)));
    let _ = Codec::new(Limits::default()).write_frame(
        &mut conn,
        &Message::Error(ErrorMsg::new(code, msg.to_string())),
    );
}

/// Read `CONNECT <port>\n`; returns the port.
fn read_connect(conn: &mut UnixStream) -> io::Result<Option<u32>> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        if conn.read(&mut b)? == 0 {
            return Ok(None);
        }
        if b[0] == b'\n' {
            break;
        }
        line.push(b[0]);
        if line.len() > MAX_HANDSHAKE_LINE {
            return Ok(None);
        }
    }
    Ok(std::str::from_utf8(&line)
        .ok()
        .and_then(|l| l.trim_end_matches('\r').strip_prefix("CONNECT "))
        .and_then(|p| p.trim().parse().ok()))
}

/// One caller connection.
fn serve_caller(
    mut conn: UnixStream,
    pool: &Pool<PoolConfig>,
    opts: &ServeOptions,
    stopping: &AtomicBool,
    host_port: u32,
) {
    // Unknown port or bad command: close, as the VMM's vsock device does.
    match read_connect(&mut conn) {
        Ok(Some(p)) if p == opts.port => {}
        _ => return,
    }
    let _ = conn.set_write_timeout(Some(Duration::from_secs(10)));
    if conn
        .write_all(format!("OK {host_port}\n").as_bytes())
        .is_err()
    {
        return;
    }
    let codec = Codec::new(Limits::default());
    let mut lease: Option<Lease<PoolConfig>> = match pool.checkout(opts.acquire_timeout) {
        Ok(l) => Some(l),
        Err(e) => {
            let code = match e {
                PoolError::NoSandbox { .. } => ErrorCode::Busy,
                _ => ErrorCode::Internal,
            };
            let msg = format!("husk pool: {}", husk_agent::sync::error_chain(&e));
            let _ = codec.write_frame(&mut conn, &Message::Error(ErrorMsg::new(code, msg)));
            return;
        }
    };
    let mut hello = match lease.as_mut() {
        Some(l) => l.item().hello.clone(),
        None => return,
    };
    hello.features |= FEATURE_POOL;
    if codec
        .write_frame(&mut conn, &Message::Hello(hello))
        .is_err()
    {
        return;
    }
    let mut idle_since = Instant::now();
    let mut stop_seen: Option<Instant> = None;
    loop {
        if !readable(conn.as_raw_fd(), POLL_SLICE_MS) {
            if stopping.load(Ordering::SeqCst) {
                // A caller that has its sandbox's Hello may have its Invoke on the way.
                let since = *stop_seen.get_or_insert_with(Instant::now);
                if lease.is_none() || since.elapsed() >= STOP_GRACE {
                    return;
                }
            }
            if idle_since.elapsed() >= opts.idle_timeout {
                return;
            }
            continue;
        }
        let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
        let msg = match codec.read_frame(&mut conn) {
            Ok(m) => m,
            Err(ProtocolError::Closed) => return,
            Err(e) => {
                let keep = e.is_recoverable();
                let reply = Message::Error(ErrorMsg::new(e.code(), e.to_string()));
                if codec.write_frame(&mut conn, &reply).is_err() || !keep {
                    return;
                }
                continue;
            }
        };
        let replies = match msg {
            Message::Invoke(inv) => match lease.take() {
                Some(mut l) => {
                    let id = inv.id;
                    let timeout = match inv.deadline_ms {
                        0 => opts.invoke_timeout,
                        d => Duration::from_millis(u64::from(d)) + Duration::from_secs(10),
                    };
                    let start = Instant::now();
                    let out = match super::invoke(l.item(), inv, timeout) {
                        Ok((r, logs)) => {
                            let mut v: Vec<Message> = logs.into_iter().map(Message::Log).collect();
                            v.push(Message::Result(r));
                            v
                        }
                        Err(f) => {
                            log::warn!("pool: {}", husk_agent::sync::error_chain(&f));
                            vec![f.to_message(id, start.elapsed())]
                        }
                    };
                    // Answer first, then destroy the sandbox.
                    for m in &out {
                        if codec.write_frame(&mut conn, m).is_err() {
                            break;
                        }
                    }
                    drop(l);
                    Vec::new()
                }
                None => vec![error(
                    ErrorCode::AlreadyUsed,
                    "this pool connection's sandbox already served its invocation; connect again for a fresh one",
                )],
            },
            Message::Ping(n) => vec![Message::Pong(n)],
            Message::Shutdown => return,
            other => vec![error(
                ErrorCode::UnexpectedMessage,
                format!(
                    "a husk pool does not accept {:?} messages; send invoke or ping",
                    other.message_type()
                ),
            )],
        };
        for m in replies {
            if codec.write_frame(&mut conn, &m).is_err() {
                return;
            }
        }
        idle_since = Instant::now();
    }
}

fn error(code: ErrorCode, msg: impl Into<String>) -> Message {
    Message::Error(ErrorMsg::new(code, msg))
}
