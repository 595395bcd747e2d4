//! Shared helpers for husk's end-to-end tests (boot a real guest, run the agent, jail
//! the VMM). They run on a KVM host with hardware virtualization: locally that is the
//! emulated test host, entered through `husk-testhost` (`scripts/test` does it).
//!
//! Locating artifacts (each fails with an error that says how to produce the artifact;
//! e2e tests must fail, not skip, when something is missing):
//! - [`kernel`]: the guest `vmlinux`, from env `HUSK_KERNEL`.
//! - [`bin`]: a static release binary, from env `HUSK_BIN_DIR` (default
//!   `<repo>/target/x86_64-unknown-linux-gnu/release`, what `scripts/build.sh` writes).
//! - [`fixture`]: a built fixture (initramfs images), from env `HUSK_FIXTURES`
//!   (default `<repo>/build/fixtures`, what `scripts/test` builds).
//! - [`require_hardware_kvm`]: errors unless `/dev/kvm` is hardware-backed.
//!
//! Running things:
//! - [`run_with_timeout`]: run a command to completion, capture stdout and stderr, kill
//!   its whole process group if it outlives the timeout.
//! - [`Spawned`]: a running child whose stdout and stderr are read line by line;
//!   [`Spawned::wait_for_line`] waits (bounded) for a line containing a marker and
//!   returns when it arrived. Dropping a `Spawned` kills its process group.
//!
//! Typical use in a test (test functions may unwrap; the errors carry the transcript):
//! ```no_run
//! use husk_tests::e2e;
//! use std::{process::Command, time::Duration};
//! e2e::require_hardware_kvm().unwrap();
//! let mut cmd = Command::new(e2e::bin("husk").unwrap());
//! cmd.arg("--kernel").arg(e2e::kernel().unwrap());
//! let mut vm = e2e::Spawned::spawn(cmd).unwrap();
//! let line = vm.wait_for_line("HUSK-AGENT: ready", Duration::from_secs(60)).unwrap();
//! println!("ready after {:?}", line.at);
//! ```

use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use crate::kvmhost::{self, Detection, KvmKind};
use crate::pgroup;

/// The Rust target whose static release binaries `scripts/build.sh` produces.
pub const STATIC_TARGET: &str = "x86_64-unknown-linux-gnu";

/// How many trailing output lines an error message carries.
const TRANSCRIPT_LINES: usize = 200;

/// Errors from the e2e helpers. Messages say what to do about them.
#[derive(Debug, thiserror::Error)]
pub enum E2eError {
    /// The host has no hardware-virtualization KVM.
    #[error("not on a KVM host with hardware virtualization ({0}); run e2e tests inside `husk-testhost -- ...` (scripts/test does this)")]
    NoHardwareKvm(String),
    /// A required environment variable is unset.
    #[error("environment variable {var} is not set; {hint}")]
    EnvMissing {
        /// The variable.
        var: &'static str,
        /// How to set it.
        hint: &'static str,
    },
    /// A required file does not exist.
    #[error("{what} not found at {path}; {hint}")]
    Missing {
        /// What was looked for.
        what: String,
        /// Where.
        path: PathBuf,
        /// How to produce it.
        hint: &'static str,
    },
    /// The child could not be started.
    #[error("could not start {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A bounded wait expired; the child's process group was killed (for
    /// [`run_with_timeout`]) or is still running (for [`Spawned`] waits).
    #[error("timed out after {timeout:?} waiting for {what}; last output:\n{transcript}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// The bound.
        timeout: Duration,
        /// The child's last output lines.
        transcript: String,
    },
    /// The child ended (closed its output) before what was awaited happened.
    #[error("{program} exited ({status}) before {what}; last output:\n{transcript}")]
    Exited {
        /// The program.
        program: String,
        /// Its exit status, as text.
        status: String,
        /// What was awaited.
        what: String,
        /// The child's last output lines.
        transcript: String,
    },
    /// Waiting for or reading from the child failed.
    #[error("I/O error while running {program}: {source}")]
    Io {
        /// The program.
        program: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// The repository root: env `HUSK_REPO_DIR`, else the checkout this crate was built from.
pub fn repo_root() -> PathBuf {
    if let Some(d) = std::env::var_os("HUSK_REPO_DIR") {
        return PathBuf::from(d);
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The guest kernel (`vmlinux`) from env `HUSK_KERNEL`; errors if unset or missing.
pub fn kernel() -> Result<PathBuf, E2eError> {
    let hint = "set it to the output of `kernel-config/build.sh --print-path` (scripts/test does)";
    let p = std::env::var_os("HUSK_KERNEL").ok_or(E2eError::EnvMissing {
        var: "HUSK_KERNEL",
        hint,
    })?;
    existing("guest kernel (HUSK_KERNEL)", PathBuf::from(p), hint)
}

/// The directory of static release binaries: env `HUSK_BIN_DIR`, else
/// `<repo>/target/x86_64-unknown-linux-gnu/release`.
pub fn bin_dir() -> PathBuf {
    match std::env::var_os("HUSK_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => repo_root()
            .join("target")
            .join(STATIC_TARGET)
            .join("release"),
    }
}

/// A static release binary by name (e.g. `"husk"`, `"husk-agent"`); errors if missing.
pub fn bin(name: &str) -> Result<PathBuf, E2eError> {
    existing(
        &format!("binary {name}"),
        bin_dir().join(name),
        "run scripts/build.sh (or set HUSK_BIN_DIR)",
    )
}

/// The fixtures directory: env `HUSK_FIXTURES`, else `<repo>/build/fixtures`.
pub fn fixtures_dir() -> PathBuf {
    match std::env::var_os("HUSK_FIXTURES") {
        Some(d) => PathBuf::from(d),
        None => repo_root().join("build").join("fixtures"),
    }
}

/// A built fixture by file name (e.g. `"peer-init.cpio"`); errors if missing.
pub fn fixture(name: &str) -> Result<PathBuf, E2eError> {
    let hint =
        "build fixtures with `scripts/test` (or tests/fixtures/build-all.sh), or set HUSK_FIXTURES";
    existing(&format!("fixture {name}"), fixtures_dir().join(name), hint)
}

/// Finds `program` in `PATH` (e.g. `"qemu-system-x86_64"`); errors if absent.
pub fn find_program(program: &str) -> Result<PathBuf, E2eError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .ok_or_else(|| E2eError::Missing {
            what: format!("program {program}"),
            path: PathBuf::from("$PATH"),
            hint: "run scripts/setup.sh to install the Debian packages",
        })
}

/// Errors unless this host has a hardware-virtualization KVM (what e2e tests need).
pub fn require_hardware_kvm() -> Result<Detection, E2eError> {
    let d = kvmhost::detect();
    match d.kind {
        KvmKind::Hardware => Ok(d),
        _ => Err(E2eError::NoHardwareKvm(d.reason)),
    }
}

fn existing(what: &str, path: PathBuf, hint: &'static str) -> Result<PathBuf, E2eError> {
    if path.exists() {
        Ok(path)
    } else {
        Err(E2eError::Missing {
            what: what.to_string(),
            path,
            hint,
        })
    }
}

/// How many runs a figure makes: the environment variable `var` if it holds a number,
/// else `default`; at least 1.
pub fn runs_from_env(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
        .max(1)
}

/// The median of some durations (the upper middle for an even count; zero if empty).
pub fn median(samples: &[Duration]) -> Duration {
    let mut v = samples.to_vec();
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// A fresh, empty directory under the system temp dir, removed on drop. Use it for
/// sockets, snapshots and logs of one test.
#[derive(Debug)]
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    /// Creates `$TMPDIR/husk-e2e-<tag>-<pid>-<n>`.
    pub fn new(tag: &str) -> io::Result<Self> {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("husk-e2e-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p)?;
        Ok(Self(p))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A command that ran to completion under [`run_with_timeout`].
#[derive(Debug)]
pub struct Finished {
    /// Its exit status.
    pub status: ExitStatus,
    /// Everything it wrote to stdout.
    pub stdout: Vec<u8>,
    /// Everything it wrote to stderr.
    pub stderr: Vec<u8>,
    /// Spawn to exit.
    pub elapsed: Duration,
}

impl Finished {
    /// stdout as (lossy) UTF-8.
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    /// stderr as (lossy) UTF-8.
    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// Runs `cmd` (stdin /dev/null, stdout and stderr captured) in its own process group.
/// Returns when it exits, then kills whatever it left behind in its group. If it runs
/// longer than `timeout`, kills the whole group and returns [`E2eError::Timeout`] with
/// the output so far. A non-zero exit is not an error: check `status`.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Result<Finished, E2eError> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = pgroup::spawn_in_group(cmd).map_err(|source| E2eError::Spawn {
        program: program.clone(),
        source,
    })?;
    let out = child.stdout.take().map(collect);
    let err = child.stderr.take().map(collect);
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Ok(s),
            Ok(None) if start.elapsed() >= timeout => break Err(None),
            Ok(None) => thread::sleep(Duration::from_millis(10)),
            Err(e) => break Err(Some(e)),
        }
    };
    pgroup::kill_group(child.id());
    let _ = child.wait();
    let stdout = out.and_then(|h| h.join().ok()).unwrap_or_default();
    let stderr = err.and_then(|h| h.join().ok()).unwrap_or_default();
    match status {
        Ok(status) => Ok(Finished {
            status,
            stdout,
            stderr,
            elapsed: start.elapsed(),
        }),
        Err(Some(source)) => Err(E2eError::Io { program, source }),
        Err(None) => {
            let mut t = String::from_utf8_lossy(&stdout).into_owned();
            t.push_str(&String::from_utf8_lossy(&stderr));
            Err(E2eError::Timeout {
                what: format!("{program} to exit"),
                timeout,
                transcript: tail(&t),
            })
        }
    }
}

fn collect<R: Read + Send + 'static>(mut r: R) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut v = Vec::new();
        let _ = r.read_to_end(&mut v);
        v
    })
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(TRANSCRIPT_LINES)..].join("\n")
}

/// Which output stream a [`Line`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// The child's stdout (for QEMU with `-serial stdio`: the guest console).
    Stdout,
    /// The child's stderr.
    Stderr,
}

/// One line of a [`Spawned`] child's output.
#[derive(Debug, Clone)]
pub struct Line {
    /// The text, without the trailing `\n` or `\r\n` (invalid UTF-8 replaced).
    pub text: String,
    /// Where it came from.
    pub stream: Stream,
    /// When it was read, measured from the spawn.
    pub at: Duration,
}

/// A running child (in its own process group) whose stdout and stderr are read line by
/// line in the background. Waits consume lines in order; every line is kept for
/// [`Spawned::transcript`]. Dropping it kills the process group.
#[derive(Debug)]
pub struct Spawned {
    program: String,
    child: Child,
    start: Instant,
    rx: Receiver<Line>,
    seen: Vec<Line>,
    status: Option<ExitStatus>,
}

impl Spawned {
    /// Spawns `cmd` with stdin /dev/null and stdout/stderr captured.
    pub fn spawn(cmd: Command) -> Result<Self, E2eError> {
        Self::start(cmd, Stdio::null())
    }

    /// Like [`Spawned::spawn`], but stdin is a pipe: take it with [`Spawned::take_stdin`].
    pub fn spawn_with_stdin(cmd: Command) -> Result<Self, E2eError> {
        Self::start(cmd, Stdio::piped())
    }

    fn start(mut cmd: Command, stdin: Stdio) -> Result<Self, E2eError> {
        let program = cmd.get_program().to_string_lossy().into_owned();
        cmd.stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let start = Instant::now();
        let mut child = pgroup::spawn_in_group(&mut cmd).map_err(|source| E2eError::Spawn {
            program: program.clone(),
            source,
        })?;
        let (tx, rx) = mpsc::channel();
        if let Some(out) = child.stdout.take() {
            let tx = tx.clone();
            thread::spawn(move || read_lines(out, Stream::Stdout, start, tx));
        }
        if let Some(err) = child.stderr.take() {
            thread::spawn(move || read_lines(err, Stream::Stderr, start, tx));
        }
        Ok(Self {
            program,
            child,
            start,
            rx,
            seen: Vec::new(),
            status: None,
        })
    }

    /// The child's stdin, if spawned with [`Spawned::spawn_with_stdin`] (once).
    pub fn take_stdin(&mut self) -> Option<ChildStdin> {
        self.child.stdin.take()
    }

    /// The child's pid (also its process group id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Time since the spawn.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Waits up to `timeout` for the next line (on either stream) that contains `needle`.
    pub fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> Result<Line, E2eError> {
        self.wait_for(&format!("a line containing {needle:?}"), timeout, |l| {
            l.contains(needle)
        })
    }

    /// Waits up to `timeout` for the next line for which `pred` is true; `what` names it
    /// in errors. Lines read while waiting are consumed (later waits see later lines).
    pub fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        mut pred: impl FnMut(&str) -> bool,
    ) -> Result<Line, E2eError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line.text) {
                        return Ok(line);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(E2eError::Timeout {
                        what: what.to_string(),
                        timeout,
                        transcript: self.transcript_tail(),
                    });
                }
                Err(RecvTimeoutError::Disconnected) => {
                    // Both streams are closed: the child is exiting; give it a moment.
                    let status = self.reap(Duration::from_secs(5));
                    return Err(E2eError::Exited {
                        program: self.program.clone(),
                        status: status.map_or_else(
                            || "still running, output closed".to_string(),
                            |s| s.to_string(),
                        ),
                        what: what.to_string(),
                        transcript: self.transcript_tail(),
                    });
                }
            }
        }
    }

    /// Waits up to `timeout` for the child to exit, collecting its output meanwhile.
    /// On timeout the child keeps running (drop or [`Spawned::kill`] it).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus, E2eError> {
        let deadline = Instant::now() + timeout;
        loop {
            self.drain();
            match self.child.try_wait() {
                Ok(Some(s)) => {
                    self.status = Some(s);
                    // Give the readers a moment to deliver the last lines.
                    let until = Instant::now() + Duration::from_millis(200);
                    while let Ok(l) = self
                        .rx
                        .recv_timeout(until.saturating_duration_since(Instant::now()))
                    {
                        self.seen.push(l);
                    }
                    return Ok(s);
                }
                Ok(None) if Instant::now() >= deadline => {
                    let what = format!("{} to exit", self.program);
                    return Err(E2eError::Timeout {
                        what,
                        timeout,
                        transcript: self.transcript_tail(),
                    });
                }
                Ok(None) => thread::sleep(Duration::from_millis(10)),
                Err(source) => {
                    return Err(E2eError::Io {
                        program: self.program.clone(),
                        source,
                    })
                }
            }
        }
    }

    /// Kills the child's whole process group and reaps the child.
    pub fn kill(&mut self) {
        pgroup::kill_group(self.child.id());
        if let Ok(s) = self.child.wait() {
            self.status.get_or_insert(s);
        }
        self.drain();
    }

    /// All lines seen so far (consumed by waits or drained), oldest first.
    pub fn lines(&mut self) -> &[Line] {
        self.drain();
        &self.seen
    }

    /// All output seen so far as text, stderr lines prefixed with `[stderr] `.
    pub fn transcript(&mut self) -> String {
        self.drain();
        let mut s = String::new();
        for l in &self.seen {
            let prefix = if l.stream == Stream::Stderr {
                "[stderr] "
            } else {
                ""
            };
            let _ = writeln!(s, "{prefix}{}", l.text);
        }
        s
    }

    fn transcript_tail(&mut self) -> String {
        tail(&self.transcript())
    }

    fn drain(&mut self) {
        while let Ok(l) = self.rx.try_recv() {
            self.seen.push(l);
        }
    }

    fn reap(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        while self.status.is_none() && Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(s)) => self.status = Some(s),
                Ok(None) => thread::sleep(Duration::from_millis(10)),
                Err(_) => break,
            }
        }
        self.status
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        pgroup::kill_group(self.child.id());
        let _ = self.child.wait();
    }
}

fn read_lines<R: Read>(r: R, stream: Stream, start: Instant, tx: mpsc::Sender<Line>) {
    let mut r = BufReader::new(r);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match r.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                    buf.pop();
                }
                let text = String::from_utf8_lossy(&buf).into_owned();
                if tx
                    .send(Line {
                        text,
                        stream,
                        at: start.elapsed(),
                    })
                    .is_err()
                {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_for_line_finds_marker_in_order_and_times_it() {
        let mut c = Command::new("sh");
        c.args([
            "-c",
            "echo one; echo two >&2; sleep 0.2; echo MARK here; echo after",
        ]);
        let mut s = Spawned::spawn(c).unwrap();
        let l = s.wait_for_line("MARK", Duration::from_secs(10)).unwrap();
        assert_eq!(l.text, "MARK here");
        assert_eq!(l.stream, Stream::Stdout);
        assert!(l.at >= Duration::from_millis(150), "{:?}", l.at);
        let l2 = s.wait_for_line("after", Duration::from_secs(10)).unwrap();
        assert!(l2.at >= l.at);
        assert!(s.wait_exit(Duration::from_secs(10)).unwrap().success());
        assert!(s.transcript().contains("[stderr] two"));
        // The marker was consumed: waiting for it again sees only the end of output.
        assert!(matches!(
            s.wait_for_line("MARK", Duration::from_secs(5)),
            Err(E2eError::Exited { .. })
        ));
    }

    #[test]
    fn wait_for_line_times_out_with_transcript() {
        let mut c = Command::new("sh");
        c.args(["-c", "echo booting; sleep 30"]);
        let mut s = Spawned::spawn(c).unwrap();
        let e = s
            .wait_for_line("never", Duration::from_millis(300))
            .unwrap_err();
        match e {
            E2eError::Timeout { transcript, .. } => assert!(transcript.contains("booting")),
            other => panic!("unexpected {other}"),
        }
        s.kill();
    }

    #[test]
    fn run_with_timeout_captures_and_kills() {
        let mut c = Command::new("sh");
        c.args(["-c", "printf out; printf err >&2; exit 3"]);
        let f = run_with_timeout(&mut c, Duration::from_secs(10)).unwrap();
        assert_eq!(f.status.code(), Some(3));
        assert_eq!(
            (f.stdout_str().as_str(), f.stderr_str().as_str()),
            ("out", "err")
        );

        let mut c = Command::new("sh");
        c.args(["-c", "echo started; sleep 30 & wait"]);
        let start = Instant::now();
        let e = run_with_timeout(&mut c, Duration::from_millis(300)).unwrap_err();
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the background sleep kept the pipe open"
        );
        assert!(
            matches!(e, E2eError::Timeout { ref transcript, .. } if transcript.contains("started")),
            "{e}"
        );
    }

    #[test]
    fn median_picks_the_middle() {
        let ms = Duration::from_millis;
        assert_eq!(median(&[ms(5), ms(1), ms(3)]), ms(3));
        assert_eq!(median(&[]), Duration::ZERO);
    }

    #[test]
    fn missing_artifacts_are_errors() {
        let e = fixture("no-such-fixture.cpio").unwrap_err();
        assert!(matches!(e, E2eError::Missing { .. }));
        assert!(find_program("husk-no-such-program").is_err());
        assert!(find_program("sh").is_ok());
    }
}
