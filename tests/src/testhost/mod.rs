//! `husk-testhost`: runs a command on a KVM host with hardware virtualization and passes
//! back its stdout, stderr and exit status.
//!
//! - On a hardware-virt host ([`KvmKind::Hardware`]) the command runs directly.
//! - Elsewhere (this project's build machines have PVM-backed KVM) it runs inside an
//!   emulated KVM host, "L1": QEMU TCG with `-cpu max` (which exposes AMD SVM) booting
//!   Debian's generic 6.1 kernel with `kvm-amd`; host files are shared over 9p at their
//!   host paths (`/usr` and `/etc` read-only, the repository, the husk cache, each `--share`).
//!
//! `HUSK_TESTHOST=direct|emulated` overrides the detection. See [`exit`] for the exit
//! codes of the harness itself.

mod direct;
mod initramfs;
pub mod kernel;
mod session;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::kvmhost::{self, KvmKind};

/// Exit codes of `husk-testhost` itself. Any other code is the command's own exit
/// status (128+N when the command was killed by signal N).
pub mod exit {
    /// L1 did not come up: kernel panic, a required module or 9p mount failed, or QEMU
    /// ended without the command's status.
    pub const L1_FAILED: i32 = 119;
    /// `qemu-system-x86_64` is not installed.
    pub const QEMU_MISSING: i32 = 120;
    /// The L1 kernel package was not found or could not be prepared.
    pub const NO_L1_KERNEL: i32 = 121;
    /// `kvm-amd` did not load in L1.
    pub const KVM_AMD_FAILED: i32 = 122;
    /// `/dev/kvm` is missing in L1.
    pub const NO_DEV_KVM: i32 = 123;
    /// The session timed out or hung (killed).
    pub const TIMEOUT: i32 = 124;
    /// Harness error: bad arguments, I/O error, busybox-static missing.
    pub const HARNESS: i32 = 125;
    /// The command exists but could not be executed.
    pub const NOT_EXECUTABLE: i32 = 126;
    /// The command was not found.
    pub const NOT_FOUND: i32 = 127;
    /// husk-testhost was interrupted (SIGINT/SIGTERM); the session was killed.
    pub const INTERRUPTED: i32 = 130;
}

/// What to run and how.
#[derive(Debug, Clone)]
pub struct Options {
    /// Hard bound on one session (L1 boot plus command).
    pub timeout: Duration,
    /// Kill the session when the command produced no output at all (console, stdout,
    /// stderr) for this long: that is a hang. `None` disables. (L1 boot has its own
    /// bound of 300 s.)
    pub idle_timeout: Option<Duration>,
    /// L1 memory in MiB.
    pub mem_mib: u32,
    /// Extra host directories to share into L1 (read-write, at the same path).
    pub shares: Vec<PathBuf>,
    /// Extra environment variable names to pass into L1.
    pub env: Vec<String>,
    /// Working directory for the command (default: the current directory).
    pub workdir: Option<PathBuf>,
    /// Retry the whole session once when it hung (timeout with no recent progress).
    pub retry_on_hang: bool,
    /// Echo L1's console to stderr.
    pub verbose: bool,
    /// vCPUs of L1.
    pub cpus: u32,
    /// The command and its arguments.
    pub command: Vec<OsString>,
}

/// Everything that can go wrong in the harness (as opposed to in the command).
#[derive(Debug, thiserror::Error)]
pub enum TesthostError {
    /// QEMU is not installed.
    #[error(
        "qemu-system-x86_64 not found in PATH; run scripts/setup.sh to install qemu-system-x86"
    )]
    QemuMissing,
    /// No L1 kernel package.
    #[error("L1 kernel package not found: {0}; run `apt-get update`, or set HUSK_TESTHOST_KERNEL_PKG to an available linux-image-6.1.0-*-amd64-unsigned")]
    NoKernelPackage(String),
    /// The L1 kernel or initramfs could not be prepared.
    #[error("cannot prepare the L1 kernel: {0}; delete the testhost cache dir to start over")]
    KernelPrep(String),
    /// busybox-static is missing.
    #[error(
        "/usr/bin/busybox is missing or not static; run scripts/setup.sh to install busybox-static"
    )]
    Busybox,
    /// kvm-amd failed to load in L1.
    #[error("kvm-amd did not load in L1: {detail}\nL1 dmesg tail:\n{dmesg}")]
    KvmAmd {
        /// The init's report.
        detail: String,
        /// L1 kernel log tail.
        dmesg: String,
    },
    /// /dev/kvm missing in L1.
    #[error("/dev/kvm is missing in L1: {detail}\nL1 dmesg tail:\n{dmesg}")]
    NoDevKvm {
        /// The init's report.
        detail: String,
        /// L1 kernel log tail.
        dmesg: String,
    },
    /// L1 failed before running the command.
    #[error("L1 failed: {detail}\nL1 console tail:\n{console}")]
    L1Failed {
        /// What happened.
        detail: String,
        /// Console (and QEMU stderr) tail.
        console: String,
    },
    /// Timeout or hang.
    #[error("{}", timeout_message(*.hang, .phase, .after, .detail))]
    Timeout {
        /// True when there was no progress (output) before the kill: a hang.
        hang: bool,
        /// "L1 boot" or "command".
        phase: &'static str,
        /// Time from QEMU start to the kill.
        after: Duration,
        /// Which bound fired and the console tail.
        detail: String,
    },
    /// The command does not exist (in L1).
    #[error("command not found: {0}")]
    NotFound(String),
    /// The command could not be executed.
    #[error("command could not be executed: {0}")]
    NotExecutable(String),
    /// Interrupted by a signal.
    #[error("interrupted; the session was killed")]
    Interrupted,
    /// Bad invocation.
    #[error("{0}")]
    Usage(String),
    /// An I/O error on a harness file.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

fn timeout_message(hang: bool, phase: &str, after: &Duration, detail: &str) -> String {
    let kind = if hang {
        "hang (no progress)"
    } else {
        "timeout (still making progress)"
    };
    format!(
        "{kind} during {phase}: session killed after {:.1} s; {detail}",
        after.as_secs_f64()
    )
}

impl TesthostError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// The process exit code for this error (see [`exit`]).
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::QemuMissing => exit::QEMU_MISSING,
            Self::NoKernelPackage(_) | Self::KernelPrep(_) => exit::NO_L1_KERNEL,
            Self::KvmAmd { .. } => exit::KVM_AMD_FAILED,
            Self::NoDevKvm { .. } => exit::NO_DEV_KVM,
            Self::L1Failed { .. } => exit::L1_FAILED,
            Self::Timeout { .. } => exit::TIMEOUT,
            Self::NotFound(_) => exit::NOT_FOUND,
            Self::NotExecutable(_) => exit::NOT_EXECUTABLE,
            Self::Interrupted => exit::INTERRUPTED,
            Self::Busybox | Self::Usage(_) | Self::Io { .. } => exit::HARNESS,
        }
    }
}

/// Which way the command runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunPath {
    /// On this host.
    Direct,
    /// In the emulated L1.
    Emulated,
}

/// Decides direct vs emulated (honouring `HUSK_TESTHOST`) and says why.
pub fn choose_path() -> Result<(RunPath, String), TesthostError> {
    match std::env::var("HUSK_TESTHOST").ok().as_deref() {
        Some("direct") => return Ok((RunPath::Direct, "HUSK_TESTHOST=direct".into())),
        Some("emulated") => return Ok((RunPath::Emulated, "HUSK_TESTHOST=emulated".into())),
        Some("") | None => {}
        Some(other) => {
            return Err(TesthostError::Usage(format!(
                "HUSK_TESTHOST={other:?}: use direct or emulated"
            )))
        }
    }
    let d = kvmhost::detect();
    let p = if d.kind == KvmKind::Hardware {
        RunPath::Direct
    } else {
        RunPath::Emulated
    };
    Ok((p, d.reason))
}

/// Runs `opts.command` (directly or in L1, see [`choose_path`]) and returns its exit
/// status. Prints one line on stderr saying which path was taken and why.
pub fn run(opts: &Options) -> Result<i32, TesthostError> {
    if opts.command.is_empty() {
        return Err(TesthostError::Usage(
            "no command given: husk-testhost [OPTIONS] -- CMD [ARGS...]".into(),
        ));
    }
    let (path, why) = choose_path()?;
    match path {
        RunPath::Direct => {
            eprintln!("husk-testhost: running directly on this host ({why})");
            direct::run(opts)
        }
        RunPath::Emulated => {
            eprintln!("husk-testhost: running in the emulated KVM host L1, QEMU TCG ({why})");
            session::run(opts)
        }
    }
}

/// `${HUSK_CACHE_DIR:-$HOME/.cache/husk}`.
pub fn husk_cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("HUSK_CACHE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache").join("husk")
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Makes SIGINT, SIGTERM and SIGHUP set a flag that the session loops poll, so an
/// interrupted run kills its QEMU process group instead of leaving it behind.
pub fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        let handler = on_signal as extern "C" fn(libc::c_int);
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(sig, handler as libc::sighandler_t);
        }
    }
}

pub(crate) fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Maps a finished process's status to an exit code (128+N for signal N).
pub(crate) fn status_code(s: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    s.code()
        .or_else(|| s.signal().map(|n| 128 + n))
        .unwrap_or(exit::HARNESS)
}
