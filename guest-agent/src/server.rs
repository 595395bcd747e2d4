//! The agent's server logic, generic over the listener (vsock in the guest, a Unix
//! socket in tests): sends Hello on each connection, runs invocations one at a time
//! (a second one while one runs gets `Busy`), enforces the one-invocation rule and the
//! restore handshake, and answers every malformed frame with an Error frame.

use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::config::{BootOptions, FunctionConfig, Mode, MAX_DEADLINE_MS};
use crate::exec::run_exec;
use crate::protocol::{
    Codec, ErrorCode, ErrorMsg, Hello, Invoke, InvokeResult, Limits, LogChunk, Message,
    ProtocolError, Restored, FEATURES, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
};
use crate::reaper::Reaper;
use crate::runner::{LiveLogs, Outcome, RunError, Worker, LOG_CAP};
use crate::sync::{error_chain, lock};
use crate::worker::RequestMeta;

/// The message sent when a second invocation reaches a single-use sandbox.
pub const ALREADY_USED: &str =
    "sandbox already used an invocation; start a new sandbox or boot with husk.reuse=1";
/// The message sent when an invocation arrives while another one runs.
pub const BUSY_INVOKING: &str =
    "an invocation is already running in this sandbox; wait for its result or use another sandbox";
/// The message sent when an invocation arrives before the restore handshake.
pub const AWAITING_RESTORE: &str = "sandbox was restored from a snapshot and waits for the host's Restored message; send it before invoking";

/// A byte stream the server can talk over.
pub trait Connection: Read + Write + Send + 'static {
    /// Set the read timeout (`None`: block).
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()>;
    /// Set the write timeout (`None`: block).
    fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()>;
    /// Another handle to the same connection (Log frames are written through one while
    /// the connection's thread runs the invocation).
    fn try_clone(&self) -> io::Result<Self>
    where
        Self: Sized;
}

/// Where the Log frames of a running invocation go.
pub type LogWriter = Box<dyn Write + Send>;

/// How long the log sender lets output accumulate before sending a frame.
const LOG_LINGER: Duration = Duration::from_millis(20);

/// Something that accepts connections.
pub trait Listener: Send + 'static {
    /// The connection type.
    type Conn: Connection;
    /// Block until the next connection.
    fn accept(&self) -> io::Result<Self::Conn>;
}

impl Connection for UnixStream {
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        UnixStream::set_read_timeout(self, t)
    }
    fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        UnixStream::set_write_timeout(self, t)
    }
    fn try_clone(&self) -> io::Result<Self> {
        UnixStream::try_clone(self)
    }
}

impl Listener for UnixListener {
    type Conn = UnixStream;
    fn accept(&self) -> io::Result<UnixStream> {
        UnixListener::accept(self).map(|(s, _)| s)
    }
}

/// Hooks into the machine, so tests can run the server without being PID 1.
pub trait Platform: Send + Sync + 'static {
    /// The host asked for a shutdown: sync and reboot (PID 1) or record it (tests).
    fn shutdown(&self);
    /// Apply a restore: mix entropy, set the clock.
    fn restored(&self, r: &Restored);
    /// The VM's restore generation as the VMM reports it (`None`: unknown, e.g. not in
    /// a VM). It changes when the VM is restored from a snapshot.
    fn vm_generation(&self) -> Option<u32> {
        None
    }
}

/// Server tunables.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Boot options.
    pub boot: BootOptions,
    /// The function.
    pub function: FunctionConfig,
    /// Time allowed to complete a frame once its first byte arrived.
    pub frame_timeout: Duration,
    /// Time a connection may sit idle between frames.
    pub idle_timeout: Duration,
    /// Time allowed to write a frame.
    pub write_timeout: Duration,
    /// Concurrent connections served; more are answered with Busy and closed.
    pub max_connections: usize,
}

impl ServerConfig {
    /// Defaults for the given boot options and function.
    pub fn new(boot: BootOptions, function: FunctionConfig) -> Self {
        Self {
            boot,
            function,
            frame_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(600),
            write_timeout: Duration::from_secs(10),
            max_connections: 16,
        }
    }
}

struct State {
    used: bool,
    awaiting_restore: bool,
    /// The VM generation at boot or at the last Restored: another one means the VM was
    /// restored from a snapshot and the host has not sent Restored yet.
    vm_generation: Option<u32>,
    sandbox_id: String,
    restore_generation: u64,
}

/// The agent: state shared by all connections.
pub struct Agent {
    cfg: ServerConfig,
    codec: Codec,
    state: Mutex<State>,
    worker: Mutex<Option<Worker>>,
    reaper: Reaper,
    platform: Box<dyn Platform>,
    connections: AtomicUsize,
    /// An invocation is running (at most one at a time).
    running: AtomicBool,
    /// This agent, for the background worker restart (the agent lives in an `Arc`).
    me: Weak<Agent>,
}

/// Clears the running flag when the invocation ends, however it ends.
struct Running<'a>(&'a AtomicBool);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// Wall-clock time in ms since the Unix epoch (0 if the clock is before it).
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A random sandbox id (16 hex digits).
pub fn random_id() -> String {
    let mut b = [0u8; 8];
    // Non-blocking: early in boot the pool may not be initialised yet, and the agent
    // must not stall its readiness on it.
    // SAFETY: the pointer and length describe `b`, which lives across the call.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), libc::GRND_NONBLOCK) };
    if n != 8 {
        // No entropy yet: fall back to time and pid; ids only need to differ.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        b = (t ^ u64::from(std::process::id())).to_le_bytes();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Agent {
    /// Create the agent and, in worker mode, start the function and wait until it is
    /// initialised (its ready frame; see [`Worker::start`]).
    pub fn new(
        cfg: ServerConfig,
        reaper: Reaper,
        platform: Box<dyn Platform>,
    ) -> Result<Arc<Self>, RunError> {
        let worker = match cfg.function.mode {
            Mode::Worker => Some(Worker::start(&reaper, &cfg.function)?),
            Mode::Exec => None,
        };
        let state = State {
            used: false,
            awaiting_restore: cfg.boot.await_restore,
            vm_generation: platform.vm_generation(),
            sandbox_id: cfg.boot.sandbox_id.clone().unwrap_or_else(random_id),
            restore_generation: 0,
        };
        Ok(Arc::new_cyclic(|me| Self {
            codec: Codec::new(Limits {
                payload_limit: cfg.boot.payload_limit.max(cfg.function.output_cap),
            }),
            cfg,
            state: Mutex::new(state),
            worker: Mutex::new(worker),
            reaper,
            platform,
            connections: AtomicUsize::new(0),
            running: AtomicBool::new(false),
            me: me.clone(),
        }))
    }

    /// The worker's pid, if a worker is running.
    pub fn worker_pid(&self) -> Option<i32> {
        lock(&self.worker).as_ref().map(Worker::pid)
    }

    fn hello(&self) -> Message {
        let st = lock(&self.state);
        Message::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            min_protocol_version: MIN_PROTOCOL_VERSION,
            features: FEATURES,
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            sandbox_id: st.sandbox_id.clone(),
            restore_generation: st.restore_generation,
        })
    }

    /// Handle one request message and produce the replies, in order (none for
    /// Shutdown). Log frames of an invocation that asked for them are among the replies,
    /// before the Result; see [`Agent::handle_live`] to send them while it runs.
    pub fn handle(&self, msg: Message) -> Vec<Message> {
        self.handle_live(msg, None)
    }

    /// Like [`Agent::handle`], but an invocation's Log frames are written to `logs` as
    /// the function produces them (all of them before this returns the Result).
    pub fn handle_live(&self, msg: Message, logs: Option<LogWriter>) -> Vec<Message> {
        match msg {
            Message::Invoke(inv) => self.invoke(inv, logs),
            Message::Ping(n) => vec![Message::Pong(n)],
            Message::Restored(r) => vec![self.restore(r)],
            Message::Shutdown => {
                if let Some(w) = lock(&self.worker).take() {
                    w.kill(&self.reaper);
                }
                self.platform.shutdown();
                Vec::new()
            }
            other => vec![error(
                ErrorCode::UnexpectedMessage,
                format!(
                    "the agent does not accept {:?} messages; send invoke, ping, restored or shutdown",
                    other.message_type()
                ),
            )],
        }
    }

    fn restore(&self, r: Restored) -> Message {
        if r.new_sandbox_id.is_empty() {
            return error(
                ErrorCode::Malformed,
                "restored message needs a non-empty new_sandbox_id",
            );
        }
        self.platform.restored(&r);
        {
            let mut st = lock(&self.state);
            st.awaiting_restore = false;
            st.vm_generation = self.platform.vm_generation();
            st.restore_generation += 1;
            st.sandbox_id = r.new_sandbox_id;
        }
        self.hello()
    }

    fn invoke(&self, inv: Invoke, log_writer: Option<LogWriter>) -> Vec<Message> {
        let start = Instant::now();
        let limit = self.cfg.boot.payload_limit;
        if inv.payload.len() > limit {
            return vec![error(
                ErrorCode::Oversized,
                format!(
                    "payload of {} bytes exceeds the sandbox limit of {limit} bytes (husk.payload_limit)",
                    inv.payload.len()
                ),
            )];
        }
        let _running = {
            let mut st = lock(&self.state);
            // Restored from a snapshot since boot or the last Restored: gate from now
            // on (a snapshot of a normally booted guest restores into clones that must
            // not serve with the pre-snapshot entropy, clock and sandbox id).
            if let (Some(seen), Some(now)) = (st.vm_generation, self.platform.vm_generation()) {
                if seen != now && !st.awaiting_restore {
                    st.awaiting_restore = true;
                    log(&format!(
                        "restored from a snapshot (VM generation {seen} -> {now}): invocations wait for the host's Restored message"
                    ));
                }
            }
            if st.awaiting_restore {
                return vec![error(ErrorCode::AwaitingRestore, AWAITING_RESTORE)];
            }
            if self.running.swap(true, Ordering::SeqCst) {
                return vec![error(ErrorCode::Busy, BUSY_INVOKING)];
            }
            let running = Running(&self.running);
            if st.used && !self.cfg.boot.reuse {
                return vec![error(ErrorCode::AlreadyUsed, ALREADY_USED)];
            }
            st.used = true;
            running
        };
        let deadline_ms = match inv.deadline_ms {
            0 => self.cfg.function.deadline_ms,
            d => d.min(MAX_DEADLINE_MS),
        };
        let deadline = Duration::from_millis(u64::from(deadline_ms));
        let meta = RequestMeta {
            request_id: inv.request_id.unwrap_or_else(|| inv.id.to_string()),
            deadline_unix_ms: inv
                .deadline_unix_ms
                .unwrap_or_else(|| unix_ms().saturating_add(u64::from(deadline_ms))),
            env: inv.env,
        };
        let id = inv.id;
        let live = inv.stream_logs.then(|| LiveLogs::new(LOG_CAP));
        let sender = match (&live, log_writer) {
            (Some(l), Some(w)) => spawn_log_sender(l.clone(), w, self.codec, id),
            _ => None,
        };
        let f = &self.cfg.function;
        let outcome = match f.mode {
            Mode::Exec => run_exec(
                &self.reaper,
                f,
                &meta,
                inv.payload,
                deadline,
                live.as_deref(),
            ),
            Mode::Worker => self.invoke_worker(meta, inv.payload, deadline, live.clone()),
        };
        // Every Log frame goes out before the Result.
        let mut replies = Vec::new();
        if let Some(l) = &live {
            l.finish();
            match sender {
                Some(s) => {
                    let _ = s.join();
                }
                None => replies.extend(
                    l.take()
                        .into_iter()
                        .map(|(stream, data)| Message::Log(LogChunk { id, stream, data })),
                ),
            }
        }
        let o = match outcome {
            Ok(o) => o,
            Err(e) => return vec![error(ErrorCode::Internal, error_chain(&e))],
        };
        replies.push(Message::Result(InvokeResult {
            id,
            status: o.status,
            flags: o.flags | live.as_ref().map_or(0, |l| l.flags()),
            duration_us: start.elapsed().as_micros() as u64,
            logs_dropped: live.as_ref().map_or(0, |l| l.dropped()),
            body: o.body,
            stderr_tail: o.stderr_tail,
        }));
        replies
    }

    fn invoke_worker(
        &self,
        meta: RequestMeta,
        payload: Vec<u8>,
        deadline: Duration,
        logs: Option<Arc<LiveLogs>>,
    ) -> Result<Outcome, RunError> {
        // One invocation at a time: the worker holds a single request stream.
        let mut slot = lock(&self.worker);
        if slot.is_none() {
            *slot = Some(Worker::start(&self.reaper, &self.cfg.function)?);
        }
        let Some(w) = slot.as_mut() else {
            return Err(RunError::Setup(io::Error::other("worker missing")));
        };
        let (outcome, alive) = w.invoke(&self.reaper, meta, payload, deadline, logs);
        if !alive {
            *slot = None;
            drop(slot);
            // Reuse mode: restart in the background so the next invocation finds the
            // worker warm, while this invocation's result goes out now instead of after
            // the new worker's initialisation. An invocation that arrives first waits
            // on the slot lock, or starts the worker itself if it gets the lock first.
            if self.cfg.boot.reuse {
                self.restart_worker_in_background();
            }
        }
        Ok(outcome)
    }

    /// Start a new worker on a thread of its own, unless one is running by then.
    fn restart_worker_in_background(&self) {
        let me = self.me.clone();
        let spawned = std::thread::Builder::new()
            .name("worker-restart".into())
            .spawn(move || {
                let Some(agent) = me.upgrade() else { return };
                let mut slot = lock(&agent.worker);
                if slot.is_some() {
                    return;
                }
                match Worker::start(&agent.reaper, &agent.cfg.function) {
                    Ok(w) => *slot = Some(w),
                    // The next invocation tries again and reports the error.
                    Err(e) => log(&format!("cannot restart worker: {}", error_chain(&e))),
                }
            });
        if let Err(e) = spawned {
            log(&format!("cannot start the worker-restart thread: {e}"));
        }
    }

    /// Serve one connection until it closes or breaks.
    pub fn serve_connection<C: Connection>(&self, mut conn: C) {
        let _ = conn.set_write_timeout(Some(self.cfg.write_timeout));
        if self.codec.write_frame(&mut conn, &self.hello()).is_err() {
            return;
        }
        loop {
            // Wait for the first byte of the next frame with the idle timeout, then
            // give the rest of the frame the (shorter) frame timeout.
            let _ = conn.set_read_timeout(Some(self.cfg.idle_timeout));
            let mut first = [0u8; 1];
            match conn.read(&mut first) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            }
            let _ = conn.set_read_timeout(Some(self.cfg.frame_timeout));
            let mut reader = io::Cursor::new(first).chain(&mut conn);
            let msg = match self.codec.read_frame(&mut reader) {
                Ok(m) => m,
                Err(ProtocolError::Closed) => return,
                Err(e) => {
                    let keep = e.is_recoverable();
                    let reply = error(e.code(), e.to_string());
                    if self.codec.write_frame(&mut conn, &reply).is_err() || !keep {
                        return;
                    }
                    continue;
                }
            };
            let shutdown = matches!(msg, Message::Shutdown);
            let log_writer = match &msg {
                Message::Invoke(i) if i.stream_logs => {
                    conn.try_clone().ok().map(|c| Box::new(c) as LogWriter)
                }
                _ => None,
            };
            for reply in self.handle_live(msg, log_writer) {
                if self.codec.write_frame(&mut conn, &reply).is_err() {
                    return;
                }
            }
            if shutdown {
                return;
            }
        }
    }

    /// Accept connections forever, one thread each (bounded by `max_connections`).
    pub fn serve<L: Listener>(self: &Arc<Self>, listener: L) -> io::Result<()> {
        loop {
            let mut conn = match listener.accept() {
                Ok(c) => c,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log(&format!("accept failed: {e}"));
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            };
            let n = self.connections.fetch_add(1, Ordering::SeqCst);
            if n >= self.cfg.max_connections {
                self.connections.fetch_sub(1, Ordering::SeqCst);
                let _ = conn.set_write_timeout(Some(Duration::from_millis(200)));
                let _ = self.codec.write_frame(
                    &mut conn,
                    &error(
                        ErrorCode::Busy,
                        "too many open connections to the agent; close idle ones and retry",
                    ),
                );
                continue;
            }
            let me = self.clone();
            let spawned = std::thread::Builder::new()
                .name("conn".into())
                .spawn(move || {
                    me.serve_connection(conn);
                    me.connections.fetch_sub(1, Ordering::SeqCst);
                });
            if spawned.is_err() {
                self.connections.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
}

/// Send an invocation's logs as Log frames while it runs, until `logs` is finished and
/// drained. A write failure (the host went away or stopped reading past the write
/// timeout) ends the sending; the invocation itself carries on.
fn spawn_log_sender(
    logs: Arc<LiveLogs>,
    mut out: LogWriter,
    codec: Codec,
    id: u64,
) -> Option<std::thread::JoinHandle<()>> {
    let spawned = std::thread::Builder::new()
        .name("fn-logs".into())
        .spawn(move || loop {
            let (chunks, finished) = logs.next(LOG_LINGER);
            for (stream, data) in chunks {
                let frame = Message::Log(LogChunk { id, stream, data });
                if codec.write_frame(&mut out, &frame).is_err() {
                    return;
                }
            }
            if finished {
                return;
            }
        });
    match spawned {
        Ok(h) => Some(h),
        Err(e) => {
            log(&format!(
                "cannot start the log sender; logs are sent at the end: {e}"
            ));
            None
        }
    }
}

fn error(code: ErrorCode, message: impl Into<String>) -> Message {
    Message::Error(ErrorMsg::new(code, message))
}

/// Log a line to stderr (the guest console).
pub fn log(msg: &str) {
    eprintln!("husk-agent: {msg}");
}

#[cfg(test)]
#[path = "server/gate_tests.rs"]
mod gate_tests;

#[cfg(test)]
#[path = "server/restart_tests.rs"]
mod restart_tests;
