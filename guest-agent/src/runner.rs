//! Running the function: exec mode (one process per invocation) and worker mode (one
//! long-lived process speaking [`crate::worker`] frames), with deadlines, output caps and
//! stderr tails. The function is untrusted: nothing it does may hang the agent.

use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::process::{ChildStderr, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::config::{FunctionConfig, Mode};
use crate::protocol::{Crash, Status, RESULT_OUTPUT_TRUNCATED, RESULT_WORKER_RESTARTED};
use crate::reaper::{Exit, Reaper};
use crate::worker;

/// How many trailing stderr bytes are kept per invocation.
pub const STDERR_TAIL: usize = 4096;
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

type SharedTail = Arc<Mutex<Tail>>;

fn lock_tail(t: &SharedTail) -> std::sync::MutexGuard<'_, Tail> {
    t.lock().unwrap_or_else(|p| p.into_inner())
}

/// Keep reading the worker's stderr into the tail until EOF. `busy` is set from the
/// moment data is seen in the pipe until it is in the tail, so [`settle`] can tell
/// when everything written so far has been captured.
fn spawn_tail_reader(
    mut r: ChildStderr,
    tail: SharedTail,
    busy: Arc<AtomicBool>,
) -> io::Result<()> {
    thread::Builder::new()
        .name("fn-stderr".into())
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
                busy.store(true, Ordering::SeqCst);
                let n = match r.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
                    Err(_) => break,
                };
                lock_tail(&tail).push(&buf[..n]);
                busy.store(false, Ordering::SeqCst);
            }
            busy.store(false, Ordering::SeqCst);
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

/// Wait (at most 200 ms) until all stderr written so far is in the tail.
fn settle(pipe: &OwnedFd, busy: &AtomicBool) {
    let end = Instant::now() + Duration::from_millis(200);
    while (pending(pipe) > 0 || busy.load(Ordering::SeqCst)) && Instant::now() < end {
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

/// Start the function `cfg` describes (exec and worker mode alike). If a later setup
/// step fails, hand its error to [`abort_spawn`] so the process does not linger.
pub(crate) fn spawn_function(
    reaper: &Reaper,
    cfg: &FunctionConfig,
) -> Result<FunctionProcess, RunError> {
    let mut cmd = build_command(cfg)?;
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

pub(crate) fn build_command(cfg: &FunctionConfig) -> Result<Command, RunError> {
    let path = cfg.path.display().to_string();
    if !is_executable(&cfg.path) {
        return Err(RunError::NotExecutable(path));
    }
    let mut cmd = Command::new(&cfg.path);
    cmd.args(&cfg.args)
        .env_clear()
        .envs(&cfg.env)
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
    stderr: SharedTail,
    stderr_pipe: OwnedFd,
    stderr_busy: Arc<AtomicBool>,
}

impl Worker {
    /// Start the worker process.
    pub fn start(reaper: &Reaper, cfg: &FunctionConfig) -> Result<Self, RunError> {
        let FunctionProcess {
            pid,
            stdin,
            stdout,
            stderr,
        } = spawn_function(reaper, cfg)?;
        let fail = |e: io::Error| abort_spawn(reaper, pid, e);
        let (tx, responses) = mpsc::channel();
        let cap = cfg.output_cap;
        thread::Builder::new()
            .name("worker-stdout".into())
            .spawn(move || {
                let mut stdout = io::BufReader::new(stdout);
                loop {
                    let r = worker::read_response(&mut stdout, cap);
                    let failed = r.is_err();
                    if tx.send(r).is_err() || failed {
                        break;
                    }
                }
            })
            .map_err(fail)?;
        let tail = Arc::new(Mutex::new(Tail::new(STDERR_TAIL)));
        let stderr_pipe = stderr.as_fd().try_clone_to_owned().map_err(fail)?;
        let stderr_busy = Arc::new(AtomicBool::new(false));
        spawn_tail_reader(stderr, tail.clone(), stderr_busy.clone()).map_err(fail)?;
        Ok(Self {
            pid,
            stdin: Arc::new(Mutex::new(stdin)),
            responses,
            stderr: tail,
            stderr_pipe,
            stderr_busy,
        })
    }

    /// The worker's process id.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Send one request and wait for its response until `deadline`. Returns the outcome
    /// and whether the worker is still usable.
    pub fn invoke(
        &mut self,
        reaper: &Reaper,
        payload: Vec<u8>,
        deadline: Duration,
    ) -> (Outcome, bool) {
        let start = Instant::now();
        // Drop responses the worker wrote unasked (they would be mistaken for ours).
        while let Ok(stale) = self.responses.try_recv() {
            if stale.is_err() {
                return self.died(reaper, 0);
            }
        }
        let stderr_mark = lock_tail(&self.stderr).total;
        let stdin = self.stdin.clone();
        // Writing may block if the worker does not read; do it off this thread so the
        // deadline still holds.
        let spawned = thread::Builder::new()
            .name("worker-stdin".into())
            .spawn(move || {
                let mut stdin = stdin.lock().unwrap_or_else(|p| p.into_inner());
                let _ = worker::write_request(&mut *stdin, &payload);
            });
        if spawned.is_err() {
            return self.died(reaper, stderr_mark);
        }
        let remaining = deadline.saturating_sub(start.elapsed());
        match self.responses.recv_timeout(remaining) {
            Ok(Ok(resp)) => {
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
                    stderr_tail: self.stderr_since(stderr_mark),
                };
                (outcome, true)
            }
            Ok(Err(_)) | Err(RecvTimeoutError::Disconnected) => self.died(reaper, stderr_mark),
            Err(RecvTimeoutError::Timeout) => {
                Reaper::kill_group(self.pid);
                let _ = reaper.wait_timeout(self.pid, Some(GRACE));
                let outcome = Outcome {
                    status: Status::Timeout,
                    flags: RESULT_WORKER_RESTARTED,
                    body: Vec::new(),
                    stderr_tail: self.stderr_since(stderr_mark),
                };
                (outcome, false)
            }
        }
    }

    fn stderr_since(&self, mark: u64) -> Vec<u8> {
        // The function wrote its stderr before its response: wait until it is captured.
        settle(&self.stderr_pipe, &self.stderr_busy);
        lock_tail(&self.stderr).since(mark)
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
        let outcome = Outcome {
            status: Status::Crashed(crash_of(exit)),
            flags: RESULT_WORKER_RESTARTED,
            body: Vec::new(),
            stderr_tail: self.stderr_since(stderr_mark),
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
}
