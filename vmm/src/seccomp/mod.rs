//! seccomp-BPF filters per thread kind, installed before a thread handles anything the
//! guest controls. Any syscall outside a thread's allowlist kills the whole process
//! (`SECCOMP_RET_KILL_PROCESS`, seen by the parent as death by `SIGSYS`).
//!
//! The allowlists live in one table, [`rules`], with a reason per syscall. Allowed
//! syscalls per thread kind, next to Firecracker's rule counts:
//!
//! | thread | husk | Firecracker |
//! |--------|------|-------------|
//! | VMM    | 42   | 76          |
//! | API    | 24   | 36          |
//! | vCPU   | 17   | 49          |
//!
//! (Debug builds add `fcntl(F_GETFD)` to every list: debug std checks an fd before
//! closing it.) A unit test asserts the counts, so this table cannot drift from the code.
//! The lists were measured, not guessed: strace of a jailed `husk` booting the guest and
//! serving an invocation in the test host (the VMM thread made 20 distinct syscalls, the
//! vCPU thread 10); the rest is what code paths not hit there need (guest-initiated vsock
//! connections, half-close, allocator growth). The API list covers the API server
//! thread (`api/`): epoll, accept, read/recv, write/send, the action channel's futex and
//! eventfd write. virtio-blk adds `pread64`/`pwrite64`/`fsync` on drive images to the
//! VMM list (requests are served on the VMM thread). Snapshot create adds file syscalls
//! to the VMM list (`openat`, `lseek`, `ftruncate`, `fsync` (shared with virtio-blk),
//! `rename`/`renameat`, `statx`/`newfstatat`/`fstat`: the
//! file paths arrive with the request, so they cannot be pre-opened) and the VM state
//! reads to its ioctls; restore runs before the filter is installed.
//!
//! Argument filters: `ioctl` only with listed requests per thread kind (vCPU: `KVM_RUN`
//! and the vCPU state reads a snapshot needs, `KVMCLOCK_CTRL` at pause; VMM: `FIONBIO` and
//! `KVM_GET_IRQCHIP`/`KVM_GET_PIT2`/`KVM_GET_CLOCK`; API: `FIONBIO`), `mmap`/`mprotect`
//! never with `PROT_EXEC`, `madvise` with two advices, `socket` only `AF_UNIX`, `tgkill`
//! only with the vCPU kick signal.
//!
//! Order of installation (see [`spawn_with_filter`]): vCPU threads install their filter
//! first thing in the thread, before the first `KVM_RUN`; the VMM thread installs its
//! filter with [`install`] after every thread is spawned (no `clone` is allowed) and
//! before the event loop runs (with the API, at InstanceStart: pre-boot the VMM thread
//! runs unfiltered, handling only the API thread's actions); the API thread installs its
//! filter first thing; `--no-seccomp` skips all of it, for debugging only.

pub mod rules;

use std::collections::BTreeMap;
use std::thread::JoinHandle;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use rules::{Args, Rule};

/// The kinds of thread with their own filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Thread {
    /// The VMM thread: event loop, devices, vsock sockets, snapshots.
    Vmm,
    /// The API server thread.
    Api,
    /// A vCPU thread: `KVM_RUN` and exit handling.
    Vcpu,
}

impl Thread {
    /// All thread kinds.
    pub const ALL: [Thread; 3] = [Thread::Vmm, Thread::Api, Thread::Vcpu];
}

/// seccomp errors.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// A rule in the table is malformed (a bug in `rules.rs`).
    #[error("the {0:?} seccomp filter is malformed: fix vmm/src/seccomp/rules.rs")]
    Build(Thread, #[source] seccompiler::BackendError),
    /// The kernel refused the filter.
    #[error("cannot install the {0:?} seccomp filter (kernel without seccomp? run with --no-seccomp only to debug)")]
    Install(Thread, #[source] seccompiler::Error),
    /// The thread could not be spawned.
    #[error("cannot spawn thread {0:?}")]
    Spawn(String, #[source] std::io::Error),
}

fn cond(
    arg: u8,
    len: SeccompCmpArgLen,
    op: SeccompCmpOp,
    value: u64,
) -> Result<SeccompCondition, seccompiler::BackendError> {
    SeccompCondition::new(arg, len, op, value)
}

/// One seccompiler rule per alternative (rules of a syscall are OR-ed).
fn arg_rules(args: Args) -> Result<Vec<SeccompRule>, seccompiler::BackendError> {
    use SeccompCmpArgLen::Dword;
    use SeccompCmpOp::{Eq, MaskedEq};
    let one_of = |arg: u8,
                  values: &mut dyn Iterator<Item = u64>|
     -> Result<Vec<SeccompRule>, seccompiler::BackendError> {
        values
            .map(|v| SeccompRule::new(vec![cond(arg, Dword, Eq, v)?]))
            .collect()
    };
    match args {
        Args::Any => Ok(Vec::new()),
        Args::Ioctl(list) => one_of(1, &mut list.iter().map(|i| i.request)),
        Args::Fcntl(cmds) => one_of(1, &mut cmds.iter().map(|c| *c as u64)),
        Args::Madvise(advice) => one_of(2, &mut advice.iter().map(|a| *a as u64)),
        Args::NoExec => Ok(vec![SeccompRule::new(vec![cond(
            2,
            Dword,
            MaskedEq(libc::PROT_EXEC as u64),
            0,
        )?])?]),
        Args::UnixSocket => one_of(0, &mut std::iter::once(libc::AF_UNIX as u64)),
        Args::KickSignal => one_of(
            2,
            &mut std::iter::once(crate::signals::kick_signal() as u64),
        ),
    }
}

/// The allowlist of one thread kind.
pub fn allowlist(thread: Thread) -> Vec<Rule> {
    rules::rules(thread)
}

/// Compiles the filter of one thread kind to BPF.
pub fn compile(thread: Thread) -> Result<BpfProgram, SeccompError> {
    let build = |e| SeccompError::Build(thread, e);
    let mut map: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for rule in allowlist(thread) {
        map.insert(rule.nr, arg_rules(rule.args).map_err(build)?);
    }
    let filter = SeccompFilter::new(
        map,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(build)?;
    BpfProgram::try_from(filter).map_err(build)
}

/// Installs the filter of `thread` on the calling thread (sets no-new-privs first).
pub fn install(thread: Thread) -> Result<(), SeccompError> {
    let prog = compile(thread)?;
    seccompiler::apply_filter(&prog).map_err(|e| SeccompError::Install(thread, e))
}

/// Stack size of the threads [`spawn_with_filter`] starts (vCPU and API threads, which
/// need a few tens of KiB). It stays below 2 MiB on purpose: Rust's default stack is
/// exactly 2 MiB, and where transparent huge pages are `always` (many distributions'
/// default, the emulated test host) a 2 MiB-aligned stack mapping is backed by one huge
/// page on first touch, so each such thread added 2 MiB to the VMM's resident memory.
/// A mapping smaller than 2 MiB can hold no huge page.
pub const THREAD_STACK_SIZE: usize = 1024 * 1024;

/// Spawns a named thread that installs the filter of `filter` before running `f`;
/// `None` (only with `--no-seccomp`) runs `f` unfiltered. The filter is compiled before
/// the spawn, so a malformed table fails here; if the kernel refuses it, `f` never runs
/// and the join value is the error.
pub fn spawn_with_filter<F, T>(
    name: String,
    filter: Option<Thread>,
    f: F,
) -> Result<JoinHandle<Result<T, SeccompError>>, SeccompError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let prog = filter.map(|t| compile(t).map(|p| (t, p))).transpose()?;
    std::thread::Builder::new()
        .name(name.clone())
        .stack_size(THREAD_STACK_SIZE)
        .spawn(move || {
            if let Some((thread, prog)) = prog {
                seccompiler::apply_filter(&prog).map_err(|e| SeccompError::Install(thread, e))?;
            }
            Ok(f())
        })
        .map_err(|e| SeccompError::Spawn(name, e))
}

#[cfg(test)]
mod tests;
