//! Running the function: exec mode (one process per invocation) and worker mode (one
//! long-lived process speaking [`crate::worker`] frames), with deadlines, output caps,
//! stderr tails and log capture. The function is untrusted: nothing it does may hang
//! the agent.

use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{ChildStderr, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::config::{FunctionConfig, Mode};
use crate::protocol::{
    Crash, LogStream, Status, MAX_LOG_CHUNK, RESULT_LOGS_TRUNCATED, RESULT_OUTPUT_TRUNCATED,
    RESULT_WORKER_RESTARTED,
};
use crate::reaper::{Exit, Reaper};
use crate::sync::{lock, wait, wait_timeout};
use crate::worker::{self, RequestMeta};

/// How many trailing stderr bytes are kept per invocation.
pub const STDERR_TAIL: usize = 4096;
/// Most log bytes (stdout and stderr together) sent as Log frames per invocation;
/// the rest is counted in the result's `logs_dropped` and flagged.
pub const LOG_CAP: usize = 1024 * 1024;
/// How long to wait for a killed function to be reaped and its pipes to close.
pub(crate) const GRACE: Duration = Duration::from_secs(2);

/// Errors starting a function.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The executable is missing or not executable.
    #[error("function executable {0} is missing or not executable; check the packed initramfs")]
    NotExecutable(String),
    /// The process could not be started.
    #[error("cannot start the function {path}")]
    Spawn {
        /// The executable.
        path: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A pipe or thread could not be set up.
    #[error("cannot set up the function's pipes or threads")]
    Setup(#[source] io::Error),
    /// A worker did not report the end of its initialisation (see
    /// [`crate::worker`]'s ready frame).
    #[error(
        "worker {path} {why}; a worker writes the ready frame (status byte 2, length 0) on \
         HUSK_RESPONSE_FD once its initialisation is done, or its function.json sets \
         \"ready_frame\": false{}",
        stderr_note(.stderr)
    )]
    NotReady {
        /// The executable.
        path: String,
        /// What happened instead.
        why: NotReady,
        /// The end of what the worker wrote on stderr meanwhile.
        stderr: String,
    },
}

/// How a worker failed to become ready.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    /// It exited first.
    #[error("exited ({0}) before its ready frame")]
    Exited(String),
    /// It closed its response descriptor first but did not exit.
    #[error("closed its response descriptor before its ready frame")]
    Closed,
    /// Its first frame was something else.
    #[error("wrote something else before its ready frame: {0}")]
    BadFrame(String),
    /// Nothing (or an incomplete frame) within the bound.
    #[error("sent no ready frame within init_timeout_ms={0}")]
    Timeout(u32),
}

/// Most stderr bytes quoted in a [`RunError::NotReady`] message.
const NOT_READY_STDERR: usize = 1024;

fn stderr_note(s: &str) -> String {
    if s.is_empty() {
        String::new()
    } else {
        format!("; its stderr ended with: {s}")
    }
}

/// What an invocation produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// How it ended.
    pub status: Status,
    /// `RESULT_*` flags.
    pub flags: u32,
    /// Captured stdout (exec) or response body (worker), cut at the cap.
    pub body: Vec<u8>,
    /// Last stderr bytes written during the invocation.
    pub stderr_tail: Vec<u8>,
}

/// One invocation's log output, shared between the readers of the function's pipes
/// (which push as data arrives) and the sender of Log frames (which takes chunks while
/// the function runs, so the host sees them live).
#[derive(Debug)]
pub struct LiveLogs {
    buf: Mutex<LogBuf>,
    cv: Condvar,
    finished: std::sync::atomic::AtomicBool,
}

impl LiveLogs {
    /// Logs of one invocation, keeping at most `cap` bytes in all.
    pub fn new(cap: usize) -> Arc<Self> {
        Arc::new(Self {
            buf: Mutex::new(LogBuf::new(cap)),
            cv: Condvar::new(),
            finished: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Append output and wake the sender.
    pub fn push(&self, stream: LogStream, data: &[u8]) {
        lock(&self.buf).push(stream, data);
        self.cv.notify_all();
    }

    /// The invocation is over: nothing more will be pushed.
    pub fn finish(&self) {
        self.finished.store(true, Ordering::SeqCst);
        self.cv.notify_all();
    }

    /// Take the chunks gathered so far.
    pub fn take(&self) -> Vec<(LogStream, Vec<u8>)> {
        std::mem::take(&mut lock(&self.buf).chunks)
    }

    /// Wait until there is output (then give it `linger` to grow into fewer, larger
    /// frames) or the invocation finished. Returns the chunks and whether it finished;
    /// after `(_, true)` nothing more comes.
    pub fn next(&self, linger: Duration) -> (Vec<(LogStream, Vec<u8>)>, bool) {
        let mut g = lock(&self.buf);
        while g.chunks.is_empty() && !self.finished.load(Ordering::SeqCst) {
            g = wait(&self.cv, g);
        }
        if !self.finished.load(Ordering::SeqCst) && g.pending() < MAX_LOG_CHUNK {
            g = wait_timeout(&self.cv, g, linger);
        }
        // Read `finished` before taking: a push before finish() is then in this take.
        let finished = self.finished.load(Ordering::SeqCst);
        (std::mem::take(&mut g.chunks), finished)
    }

    /// Bytes dropped at the cap.
    pub fn dropped(&self) -> u64 {
        lock(&self.buf).dropped
    }

    /// The result flag for the log cut (0 when nothing was dropped).
    pub fn flags(&self) -> u32 {
        if self.dropped() > 0 {
            RESULT_LOGS_TRUNCATED
        } else {
            0
        }
    }
}

/// The function's log output for one invocation, in arrival order, up to a cap.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogBuf {
    /// Chunks of at most [`MAX_LOG_CHUNK`] bytes, each from one stream.
    pub chunks: Vec<(LogStream, Vec<u8>)>,
    /// Bytes kept.
    pub bytes: usize,
    /// Bytes dropped at the cap.
    pub dropped: u64,
    cap: usize,
}

impl LogBuf {
    /// An empty buffer keeping up to `cap` bytes (0: keep nothing, count nothing).
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            ..Self::default()
        }
    }

    /// Bytes in chunks not taken yet.
    pub fn pending(&self) -> usize {
        self.chunks.iter().map(|(_, c)| c.len()).sum()
    }

    /// Append output from `stream`.
    pub fn push(&mut self, stream: LogStream, data: &[u8]) {
        if self.cap == 0 {
            return;
        }
        let room = self.cap - self.bytes;
        let (keep, drop) = data.split_at(data.len().min(room));
        self.dropped += drop.len() as u64;
        self.bytes += keep.len();
        let mut rest = keep;
        while !rest.is_empty() {
            let fits = match self.chunks.last() {
                Some((s, c)) if *s == stream && c.len() < MAX_LOG_CHUNK => MAX_LOG_CHUNK - c.len(),
                _ => {
                    self.chunks.push((stream, Vec::new()));
                    MAX_LOG_CHUNK
                }
            };
            let (now, later) = rest.split_at(rest.len().min(fits));
            if let Some((_, c)) = self.chunks.last_mut() {
                c.extend_from_slice(now);
            }
            rest = later;
        }
    }
}

/// Last `cap` bytes of a stream, plus a running count of all bytes seen.
#[derive(Debug, Default)]
pub(crate) struct Tail {
    buf: Vec<u8>,
    total: u64,
    cap: usize,
}

impl Tail {
    /// An empty tail keeping `cap` bytes.
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            cap,
            ..Self::default()
        }
    }

    pub(crate) fn push(&mut self, data: &[u8]) {
        self.total += data.len() as u64;
        self.buf.extend_from_slice(data);
        if self.buf.len() > 2 * self.cap {
            let cut = self.buf.len() - self.cap;
            self.buf.drain(..cut);
        }
    }
    /// Bytes written since the running count was `since`, at most `cap`.
    pub(crate) fn since(&self, since: u64) -> Vec<u8> {
        let new = (self.total - since).min(self.cap as u64) as usize;
        let new = new.min(self.buf.len());
        self.buf[self.buf.len() - new..].to_vec()
    }
}

/// What a worker wrote to stdout and stderr: the stderr tail, and the current
/// invocation's logs when it asked for them.
#[derive(Debug)]
struct Output {
    tail: Tail,
    logs: Option<Arc<LiveLogs>>,
}

type SharedOutput = Arc<Mutex<Output>>;

/// Keep reading one of the worker's log pipes until EOF. `busy` counts readers from the
/// moment data is seen in a pipe until it is captured, so [`settle`] can tell when
/// everything written so far has been captured.
fn spawn_log_reader<R: Read + AsRawFd + Send + 'static>(
    mut r: R,
    stream: LogStream,
    out: SharedOutput,
    busy: Arc<AtomicUsize>,
) -> io::Result<()> {
    thread::Builder::new()
        .name(format!("fn-{stream:?}"))
        .spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                let mut pfd = libc::pollfd {
                    fd: r.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: `pfd` is one valid pollfd.
                if unsafe { libc::poll(&mut pfd, 1, -1) } < 0 {
                    if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    break;
                }
                busy.fetch_add(1, Ordering::SeqCst);
                let n = match r.read(&mut buf) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                        busy.fetch_sub(1, Ordering::SeqCst);
                        continue;
                    }
                    Err(_) => 0,
                };
                if n > 0 {
                    let logs = {
                        let mut o = lock(&out);
                        if stream == LogStream::Stderr {
                            o.tail.push(&buf[..n]);
                        }
                        o.logs.clone()
                    };
                    if let Some(l) = logs {
                        l.push(stream, &buf[..n]);
                    }
                }
                busy.fetch_sub(1, Ordering::SeqCst);
                if n == 0 {
                    break;
                }
            }
        })
        .map(|_| ())
}

/// Bytes waiting in a pipe (0 on error).
fn pending(fd: &OwnedFd) -> libc::c_int {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int to the valid pointer `n`.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n) };
    if r < 0 {
        0
    } else {
        n
    }
}

/// Wait (at most 200 ms) until all output written to `pipes` so far is captured.
fn settle(pipes: &[OwnedFd], busy: &AtomicUsize) {
    let end = Instant::now() + Duration::from_millis(200);
    while (pipes.iter().any(|p| pending(p) > 0) || busy.load(Ordering::SeqCst) > 0)
        && Instant::now() < end
    {
        thread::sleep(Duration::from_micros(200));
    }
}

/// A function process just started in its own process group, with its three pipes.
pub(crate) struct FunctionProcess {
    pub(crate) pid: i32,
    pub(crate) stdin: ChildStdin,
    pub(crate) stdout: ChildStdout,
    pub(crate) stderr: ChildStderr,
}

/// Start the function `cfg` describes (exec and worker mode alike) with `env` added to
/// its environment, and in worker mode `response` as its descriptor
/// [`worker::RESPONSE_FD`]. If a later setup step fails, hand its error to
/// [`abort_spawn`] so the process does not linger.
pub(crate) fn spawn_function(
    reaper: &Reaper,
    cfg: &FunctionConfig,
    env: &[(String, String)],
    response: Option<&OwnedFd>,
) -> Result<FunctionProcess, RunError> {
    let mut cmd = build_command(cfg, env)?;
    if let Some(fd) = response {
        let raw = fd.as_raw_fd();
        cmd.env(worker::RESPONSE_FD_ENV, worker::RESPONSE_FD.to_string());
        // SAFETY: the closure runs in the forked child before exec and only calls
        // dup2(2) and fcntl(2), which are async-signal-safe; it allocates nothing.
        unsafe {
            cmd.pre_exec(move || move_fd(raw, worker::RESPONSE_FD));
        }
    }
    let mut child = reaper.spawn(&mut cmd).map_err(|source| RunError::Spawn {
        path: cfg.path.display().to_string(),
        source,
    })?;
    let pid = child.id() as i32;
    match (child.stdin.take(), child.stdout.take(), child.stderr.take()) {
        (Some(stdin), Some(stdout), Some(stderr)) => Ok(FunctionProcess {
            pid,
            stdin,
            stdout,
            stderr,
        }),
        _ => Err(abort_spawn(
            reaper,
            pid,
            io::Error::other("missing child pipe"),
        )),
    }
}

/// Kill a just-started function's process group, reap it, and report `e` as a setup
/// error.
pub(crate) fn abort_spawn(reaper: &Reaper, pid: i32, e: io::Error) -> RunError {
    Reaper::kill_group(pid);
    let _ = reaper.wait_timeout(pid, Some(GRACE));
    RunError::Setup(e)
}

/// In a forked child: make `from` available as descriptor `to`, inherited by exec.
fn move_fd(from: RawFd, to: RawFd) -> io::Result<()> {
    if from == to {
        // dup2 would be a no-op and keep close-on-exec: clear it instead.
        // SAFETY: fcntl(2) on a descriptor this process holds; no memory involved.
        if unsafe { libc::fcntl(to, libc::F_SETFD, 0) } < 0 {
            return Err(io::Error::last_os_error());
        }
        return Ok(());
    }
    // SAFETY: dup2(2) on descriptors this process holds; the copy has no CLOEXEC.
    if unsafe { libc::dup2(from, to) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A pipe with close-on-exec set on both ends: (read, write).
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2(2) writes two descriptors into the valid two-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors are fresh and owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

pub(crate) fn build_command(
    cfg: &FunctionConfig,
    env: &[(String, String)],
) -> Result<Command, RunError> {
    let path = cfg.path.display().to_string();
    if !is_executable(&cfg.path) {
        return Err(RunError::NotExecutable(path));
    }
    let mut cmd = Command::new(&cfg.path);
    cmd.args(&cfg.args)
        .env_clear()
        .envs(&cfg.env)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env(
            "HUSK_MODE",
            match cfg.mode {
                Mode::Exec => "exec",
                Mode::Worker => "worker",
            },
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Only change directory when needed: without a chdir, std can start the function
    // with posix_spawn (vfork-like) instead of fork, which is much cheaper in a guest.
    if std::env::current_dir().ok().as_deref() != Some(cfg.workdir.as_path()) {
        cmd.current_dir(&cfg.workdir);
    }
    Ok(cmd)
}

fn is_executable(p: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

pub(crate) fn crash_of(exit: Exit) -> Crash {
    match exit {
        Exit::Signal(s) => Crash::Signal(s),
        Exit::Code(c) => Crash::Exit(c),
    }
}

/// A running worker-mode function.
pub struct Worker {
    pid: i32,
    stdin: Arc<Mutex<ChildStdin>>,
    responses: Receiver<io::Result<worker::Response>>,
    output: SharedOutput,
    log_pipes: Vec<OwnedFd>,
    log_busy: Arc<AtomicUsize>,
}

impl Worker {
    /// Start the worker process: requests on its stdin, responses on descriptor
    /// [`worker::RESPONSE_FD`], stdout and stderr captured as logs. Returns once the
    /// worker sent its ready frame (its initialisation is done), or right after the
    /// start when the config sets `ready_frame: false`; a worker that exits, writes
    /// another frame first, or stays silent past `init_timeout_ms` is killed and
    /// reported as [`RunError::NotReady`].
    pub fn start(reaper: &Reaper, cfg: &FunctionConfig) -> Result<Self, RunError> {
        let (resp_read, resp_write) = pipe().map_err(RunError::Setup)?;
        let FunctionProcess {
            pid,
            stdin,
            stdout,
            stderr,
        } = spawn_function(reaper, cfg, &[], Some(&resp_write))?;
        // Only the worker may hold the write end: its exit then ends our reads.
        drop(resp_write);
        let fail = |e: io::Error| abort_spawn(reaper, pid, e);
        let (tx, responses) = mpsc::channel();
        // One message at most: the outcome of reading the ready frame.
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let cap = cfg.output_cap;
        let wants_ready = cfg.ready_frame;
        thread::Builder::new()
            .name("worker-responses".into())
            .spawn(move || {
                let mut input = io::BufReader::new(std::fs::File::from(resp_read));
                if wants_ready {
                    let r = worker::read_ready(&mut input);
                    let failed = r.is_err();
                    if ready_tx.send(r).is_err() || failed {
                        return;
                    }
                }
                drop(ready_tx);
                loop {
                    let r = worker::read_response(&mut input, cap);
                    let failed = r.is_err();
                    if tx.send(r).is_err() || failed {
                        break;
                    }
                }
            })
            .map_err(fail)?;
        let output = Arc::new(Mutex::new(Output {
            tail: Tail::new(STDERR_TAIL),
            logs: None,
        }));
        let log_pipes = vec![
            stdout.as_fd().try_clone_to_owned().map_err(fail)?,
            stderr.as_fd().try_clone_to_owned().map_err(fail)?,
        ];
        let log_busy = Arc::new(AtomicUsize::new(0));
        spawn_log_reader(stdout, LogStream::Stdout, output.clone(), log_busy.clone())
            .map_err(fail)?;
        spawn_log_reader(stderr, LogStream::Stderr, output.clone(), log_busy.clone())
            .map_err(fail)?;
        let w = Self {
            pid,
            stdin: Arc::new(Mutex::new(stdin)),
            responses,
            output,
            log_pipes,
            log_busy,
        };
        if wants_ready {
            w.wait_ready(reaper, cfg, &ready_rx)?;
        }
        Ok(w)
    }

    /// Wait (at most `cfg.init_timeout_ms`) for the outcome of reading the worker's
    /// ready frame. On failure the worker is killed and reaped, and the error says what
    /// it did instead, with the end of its stderr.
    fn wait_ready(
        &self,
        reaper: &Reaper,
        cfg: &FunctionConfig,
        ready: &Receiver<io::Result<()>>,
    ) -> Result<(), RunError> {
        let bound = Duration::from_millis(u64::from(cfg.init_timeout_ms));
        let why = match ready.recv_timeout(bound) {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) if e.kind() == io::ErrorKind::InvalidData => {
                NotReady::BadFrame(e.to_string())
            }
            // End of the response pipe (or its reader gone): the worker exited or
            // closed the descriptor.
            Ok(Err(_)) | Err(RecvTimeoutError::Disconnected) => {
                match reaper.wait_timeout(self.pid, Some(GRACE)) {
                    Some(Exit::Code(c)) => NotReady::Exited(format!("status {c}")),
                    Some(Exit::Signal(s)) => NotReady::Exited(format!("signal {s}")),
                    None => NotReady::Closed,
                }
            }
            Err(RecvTimeoutError::Timeout) => NotReady::Timeout(cfg.init_timeout_ms),
        };
        self.kill(reaper);
        let tail = self.output_since(0);
        let tail = &tail[tail.len().saturating_sub(NOT_READY_STDERR)..];
        Err(RunError::NotReady {
            path: cfg.path.display().to_string(),
            why,
            stderr: String::from_utf8_lossy(tail).trim().to_string(),
        })
    }

    /// The worker's process id.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Send one request and wait for its response until `deadline`, pushing the
    /// worker's output to `logs` while it runs. Returns the outcome and whether the
    /// worker is still usable.
    pub fn invoke(
        &mut self,
        reaper: &Reaper,
        meta: RequestMeta,
        payload: Vec<u8>,
        deadline: Duration,
        logs: Option<Arc<LiveLogs>>,
    ) -> (Outcome, bool) {
        let start = Instant::now();
        // Output written between invocations belongs to none: capture it first, then
        // start this invocation's logs.
        settle(&self.log_pipes, &self.log_busy);
        let stderr_mark = {
            let mut o = lock(&self.output);
            o.logs = logs;
            o.tail.total
        };
        // Drop responses the worker wrote unasked (they would be mistaken for ours).
        while let Ok(stale) = self.responses.try_recv() {
            if stale.is_err() {
                return self.died(reaper, stderr_mark);
            }
        }
        let stdin = self.stdin.clone();
        // Writing may block if the worker does not read; do it off this thread so the
        // deadline still holds.
        let spawned = thread::Builder::new()
            .name("worker-stdin".into())
            .spawn(move || {
                let mut stdin = lock(&stdin);
                let _ = worker::write_request(&mut *stdin, &meta, &payload);
            });
        if spawned.is_err() {
            return self.died(reaper, stderr_mark);
        }
        let remaining = deadline.saturating_sub(start.elapsed());
        match self.responses.recv_timeout(remaining) {
            Ok(Ok(resp)) => {
                let stderr_tail = self.output_since(stderr_mark);
                let outcome = Outcome {
                    status: if resp.ok {
                        Status::Ok
                    } else {
                        Status::FunctionError { code: 0 }
                    },
                    flags: if resp.truncated {
                        RESULT_OUTPUT_TRUNCATED
                    } else {
                        0
                    },
                    body: resp.body,
                    stderr_tail,
                };
                (outcome, true)
            }
            Ok(Err(_)) | Err(RecvTimeoutError::Disconnected) => self.died(reaper, stderr_mark),
            Err(RecvTimeoutError::Timeout) => {
                Reaper::kill_group(self.pid);
                let _ = reaper.wait_timeout(self.pid, Some(GRACE));
                let stderr_tail = self.output_since(stderr_mark);
                let outcome = Outcome {
                    status: Status::Timeout,
                    flags: RESULT_WORKER_RESTARTED,
                    body: Vec::new(),
                    stderr_tail,
                };
                (outcome, false)
            }
        }
    }

    /// The stderr tail since `mark`; ends this invocation's log capture.
    fn output_since(&self, mark: u64) -> Vec<u8> {
        // The function wrote its logs before its response: wait until they are captured.
        settle(&self.log_pipes, &self.log_busy);
        let mut o = lock(&self.output);
        o.logs = None;
        o.tail.since(mark)
    }

    /// The worker's stdout ended or broke: collect its exit and report a crash.
    fn died(&mut self, reaper: &Reaper, stderr_mark: u64) -> (Outcome, bool) {
        let exit = reaper.wait_timeout(self.pid, Some(GRACE));
        Reaper::kill_group(self.pid);
        let exit = match exit {
            Some(e) => e,
            // Alive but speaking garbage: it is killed now.
            None => reaper
                .wait_timeout(self.pid, Some(GRACE))
                .unwrap_or(Exit::Signal(libc::SIGKILL)),
        };
        let stderr_tail = self.output_since(stderr_mark);
        let outcome = Outcome {
            status: Status::Crashed(crash_of(exit)),
            flags: RESULT_WORKER_RESTARTED,
            body: Vec::new(),
            stderr_tail,
        };
        (outcome, false)
    }

    /// Kill the worker's process group.
    pub fn kill(&self, reaper: &Reaper) {
        Reaper::kill_group(self.pid);
        let _ = reaper.wait_timeout(self.pid, Some(GRACE));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Mode;
    use crate::reaper::process_alive;

    /// The ready frame, as `printf` writes it.
    const READY: &str = r"printf '\2\0\0\0\0' >&3";
    /// Read a byte of the request, answer `ok` (status 0, length 2), keep stdin open.
    const ANSWER_OK: &str = r"head -c 1 >/dev/null; printf '\0\2\0\0\0ok' >&3; cat >/dev/null";

    fn sh_worker(script: &str) -> FunctionConfig {
        let mut c = FunctionConfig::new("/bin/sh", Mode::Worker);
        c.args = vec!["-c".into(), script.into()];
        c.init_timeout_ms = 2000;
        c
    }

    fn not_ready(r: Result<Worker, RunError>) -> (NotReady, String) {
        match r {
            Err(RunError::NotReady { why, stderr, .. }) => (why, stderr),
            Err(e) => panic!("expected NotReady, got {e}"),
            Ok(_) => panic!("expected NotReady, the worker started"),
        }
    }

    /// The pid a test worker printed on stderr as `pid=N`.
    fn pid_in(stderr: &str) -> i32 {
        let n = stderr
            .split("pid=")
            .nth(1)
            .unwrap_or_else(|| panic!("{stderr}"));
        n.split_whitespace().next().unwrap().parse().unwrap()
    }

    fn invoke_ok(w: &mut Worker, reaper: &Reaper) {
        let (o, alive) = w.invoke(
            reaper,
            RequestMeta::default(),
            b"x".to_vec(),
            Duration::from_secs(5),
            None,
        );
        assert_eq!(
            (o.status, o.body.as_slice(), alive),
            (Status::Ok, &b"ok"[..], true)
        );
    }

    #[test]
    fn start_returns_after_the_ready_frame_and_responses_follow() {
        let reaper = Reaper::per_child();
        let t = Instant::now();
        let mut w = Worker::start(
            &reaper,
            &sh_worker(&format!("sleep 0.4; {READY}; {ANSWER_OK}")),
        )
        .unwrap();
        assert!(
            t.elapsed() >= Duration::from_millis(400),
            "did not wait for the init"
        );
        invoke_ok(&mut w, &reaper);
        w.kill(&reaper);
    }

    #[test]
    fn silent_worker_times_out_is_killed_and_its_stderr_is_quoted() {
        let reaper = Reaper::per_child();
        let t = Instant::now();
        let mut cfg = sh_worker("echo pid=$$ importing >&2; exec sleep 30");
        cfg.init_timeout_ms = 300;
        let (why, stderr) = not_ready(Worker::start(&reaper, &cfg));
        assert_eq!(why, NotReady::Timeout(300));
        assert!(stderr.contains("importing"), "{stderr}");
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        assert!(
            !process_alive(pid_in(&stderr)),
            "the silent worker still runs"
        );
        // An incomplete ready frame is the same: it never completes.
        cfg.args[1] = r"printf '\2\0' >&3; exec sleep 30".into();
        assert_eq!(
            not_ready(Worker::start(&reaper, &cfg)).0,
            NotReady::Timeout(300)
        );
    }

    #[test]
    fn worker_exiting_before_ready_is_reported_with_its_status() {
        let reaper = Reaper::per_child();
        let t = Instant::now();
        let (why, stderr) = not_ready(Worker::start(
            &reaper,
            &sh_worker("echo 'ImportError: no module named x' >&2; exit 7"),
        ));
        assert_eq!(why, NotReady::Exited("status 7".into()));
        assert_eq!(stderr, "ImportError: no module named x");
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        let e = RunError::NotReady {
            path: "/f".into(),
            why,
            stderr,
        };
        let msg = e.to_string();
        assert!(
            msg.starts_with("worker /f exited (status 7) before its ready frame;")
                && msg.ends_with("its stderr ended with: ImportError: no module named x"),
            "{msg}"
        );
    }

    #[test]
    fn another_frame_before_ready_is_refused_and_the_worker_killed() {
        let reaper = Reaper::per_child();
        let t = Instant::now();
        // A response first (status 0, "hi"), then it would serve forever.
        let (why, stderr) = not_ready(Worker::start(
            &reaper,
            &sh_worker(r"echo pid=$$ >&2; printf '\0\2\0\0\0hi' >&3; exec sleep 30"),
        ));
        assert!(
            matches!(&why, NotReady::BadFrame(m) if m.contains("status byte 0 and length 2")),
            "{why:?}"
        );
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        assert!(!process_alive(pid_in(&stderr)));
        // A flood of garbage: only five bytes are read, then the worker is killed.
        let (why, _) = not_ready(Worker::start(
            &reaper,
            &sh_worker("head -c 100000000 /dev/urandom >&3"),
        ));
        assert!(matches!(why, NotReady::BadFrame(_)), "{why:?}");
    }

    #[test]
    fn opted_out_worker_is_ready_once_started() {
        let reaper = Reaper::per_child();
        let mut cfg = sh_worker(&format!("sleep 1; {ANSWER_OK}"));
        cfg.ready_frame = false;
        let t = Instant::now();
        let mut w = Worker::start(&reaper, &cfg).unwrap();
        assert!(
            t.elapsed() < Duration::from_millis(800),
            "{:?}",
            t.elapsed()
        );
        invoke_ok(&mut w, &reaper);
        w.kill(&reaper);
    }

    #[test]
    fn tail_keeps_last_bytes_since_mark() {
        let mut t = Tail {
            cap: 4,
            ..Tail::default()
        };
        t.push(b"abcdef");
        assert_eq!(t.since(0), b"cdef");
        let mark = t.total;
        t.push(b"xy");
        assert_eq!(t.since(mark), b"xy");
        for _ in 0..100 {
            t.push(b"0123456789");
        }
        assert!(t.buf.len() <= 8);
        assert_eq!(t.since(0), b"6789");
    }

    #[test]
    fn log_buf_keeps_order_chunks_and_counts_what_it_drops() {
        let mut l = LogBuf::new(MAX_LOG_CHUNK + 10);
        l.push(LogStream::Stderr, b"a");
        l.push(LogStream::Stderr, b"b");
        l.push(LogStream::Stdout, b"c");
        l.push(LogStream::Stderr, &vec![b'x'; MAX_LOG_CHUNK]);
        let shape: Vec<_> = l.chunks.iter().map(|(s, c)| (*s, c.len())).collect();
        assert_eq!(
            shape,
            [
                (LogStream::Stderr, 2),
                (LogStream::Stdout, 1),
                (LogStream::Stderr, MAX_LOG_CHUNK)
            ]
        );
        assert_eq!((l.bytes, l.dropped), (MAX_LOG_CHUNK + 3, 0));
        l.push(LogStream::Stderr, &[b'y'; 20]);
        assert_eq!((l.bytes, l.dropped), (MAX_LOG_CHUNK + 10, 13));
        assert!(l.chunks.iter().all(|(_, c)| c.len() <= MAX_LOG_CHUNK));
        let mut off = LogBuf::new(0);
        off.push(LogStream::Stderr, b"ignored");
        assert_eq!((off.bytes, off.dropped, off.chunks.len()), (0, 0, 0));
    }
}
