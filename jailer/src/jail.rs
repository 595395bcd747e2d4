//! The jailer's sequence: prepare the host side (jail dir, cgroups, rlimits) in the
//! parent, fork a child that confines itself step by step and execs the VMM, and let the
//! parent undo everything on failure or, in foreground mode, after the VMM exits.
//!
//! The child reports a failure before exec over a close-on-exec pipe: an empty pipe at
//! EOF means the exec succeeded.

use std::ffi::{CString, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use crate::args::JailConfig;
use crate::cgroup::{self, CgroupError, CgroupPlan};
use crate::chroot::{self, ChrootError};
use crate::cleanup::{Cleanup, Undo};
use crate::jail_dir::{self, JailDirError};
use crate::paths::JailPaths;
use crate::privs::{self, PrivError};
use crate::process::{self, ProcessError};

/// Errors of the whole run, as the parent sees them.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// Cgroup planning or creation.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// Jail directory.
    #[error(transparent)]
    JailDir(#[from] JailDirError),
    /// Process hygiene steps in the parent.
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// pipe2 failed.
    #[error("cannot create the status pipe")]
    Pipe(#[source] io::Error),
    /// fork failed.
    #[error("cannot fork the jailed process")]
    Fork(#[source] io::Error),
    /// waitpid / sigwaitinfo failed.
    #[error("cannot wait for the jailed VMM")]
    Wait(#[source] io::Error),
    /// Writing the pid file failed.
    #[error("cannot write the pid file {0:?}")]
    PidFile(std::path::PathBuf, #[source] io::Error),
    /// The child failed before exec; the message is its full error chain.
    #[error("jailed process failed before exec: {0}")]
    Jailed(String),
}

/// Errors of the confined child before exec.
#[derive(Debug, thiserror::Error)]
enum ChildError {
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error(transparent)]
    Chroot(#[from] ChrootError),
    #[error(transparent)]
    Priv(#[from] PrivError),
    #[error("cannot set the signal mask")]
    SigMask(#[source] io::Error),
    #[error("argument contains a NUL byte")]
    NulInArg,
    #[error("exec of {0:?} in the jail failed (it must be a static binary: the jail has no dynamic loader)")]
    Exec(std::path::PathBuf, #[source] io::Error),
}

/// Formats an error with its whole source chain on one line (the project's one
/// error-chain printer, shared with the VMM and the agent).
pub use husk_agent::sync::error_chain as chain;

/// Runs the jailer. Returns the exit code for the jailer process: the VMM's (128+signal
/// when killed) in foreground mode, 0 in daemon mode once the VMM runs.
pub fn run(cfg: &JailConfig) -> Result<i32, JailError> {
    let mounts_text = std::fs::read_to_string("/proc/mounts").map_err(CgroupError::ReadMounts)?;
    let mounts = cgroup::parse_mounts(&mounts_text);
    let version = cgroup::detect_version(cfg.cgroup_version, &mounts);
    let plan = cgroup::plan(version, &cfg.cgroups, &cfg.parent_cgroup, &cfg.id, &mounts)?;
    let netns = cfg.netns.as_ref().map(process::open_netns).transpose()?;
    let dev_null = if cfg.daemonize {
        Some(process::open_dev_null()?)
    } else {
        None
    };
    let paths = JailPaths::new(&cfg.chroot_base_dir, &cfg.exec_name, &cfg.id);

    let mut cleanup = Cleanup::new();
    let result = prepare_and_spawn(
        cfg,
        &paths,
        &plan,
        netns.as_ref(),
        dev_null.as_ref(),
        &mut cleanup,
    );
    let keep = matches!(result, Ok(Outcome::Detached));
    if !keep {
        for (undo, e) in cleanup.run() {
            eprintln!("husk-jailer: warning: cleanup of {undo:?} failed: {e}");
        }
    }
    result.map(|o| match o {
        Outcome::Detached => 0,
        Outcome::Exited(code) => code,
    })
}

enum Outcome {
    Detached,
    Exited(i32),
}

fn prepare_and_spawn(
    cfg: &JailConfig,
    paths: &JailPaths,
    plan: &CgroupPlan,
    netns: Option<&File>,
    dev_null: Option<&File>,
    cleanup: &mut Cleanup,
) -> Result<Outcome, JailError> {
    jail_dir::build(
        paths,
        &cfg.exec_file,
        &cfg.includes,
        cfg.uid,
        cfg.gid,
        cleanup,
    )?;
    cgroup::apply(plan, cleanup)?;
    process::set_rlimits(&cfg.rlimits)?;
    if cfg.new_pid_ns {
        process::unshare_pid_ns()?;
    }
    let (read_end, write_end) = pipe()?;
    let old_mask = block_signals().map_err(JailError::Wait)?;
    // SAFETY: the jailer is single-threaded, so the child may run arbitrary code.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(JailError::Fork(io::Error::last_os_error()));
    }
    if pid == 0 {
        drop(read_end);
        let err = confine_and_exec(cfg, paths, plan, netns, dev_null, &old_mask);
        let mut w = File::from(write_end);
        let _ = w.write_all(chain(&err).as_bytes());
        // SAFETY: leave the forked child without running the parent's cleanup.
        unsafe { libc::_exit(1) };
    }
    drop(write_end);
    let mut msg = String::new();
    let _ = File::from(read_end).read_to_string(&mut msg);
    if !msg.is_empty() {
        let _ = wait_child(pid, false);
        return Err(JailError::Jailed(msg));
    }
    // Recorded before the write: in a pre-staged root it is the only trace of it.
    cleanup.push(Undo::File(paths.pid_file.clone()));
    // create_new: never follow a symlink or reuse a file in the root the VMM's uid owns.
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&paths.pid_file)
        .and_then(|mut f| f.write_all(format!("{pid}\n").as_bytes()));
    if let Err(e) = written {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let _ = wait_child(pid, false);
        return Err(JailError::PidFile(paths.pid_file.clone(), e));
    }
    if cfg.daemonize {
        return Ok(Outcome::Detached);
    }
    wait_child(pid, cfg.new_pid_ns).map(Outcome::Exited)
}

fn pipe() -> Result<(OwnedFd, OwnedFd), JailError> {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid two-element out array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(JailError::Pipe(io::Error::last_os_error()));
    }
    // SAFETY: pipe2 returned two fresh fds that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

const FORWARDED: [libc::c_int; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

fn signal_set() -> libc::sigset_t {
    // SAFETY: sigset_t is a plain bit set; all-zero is a valid value, then emptied.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t.
    unsafe { libc::sigemptyset(&mut set) };
    for sig in FORWARDED.iter().chain(&[libc::SIGCHLD]) {
        // SAFETY: `set` is a valid sigset_t and `sig` a valid signal number.
        unsafe { libc::sigaddset(&mut set, *sig) };
    }
    set
}

/// Blocks SIGCHLD and the forwarded signals (taken with sigwaitinfo); returns the old mask.
fn block_signals() -> io::Result<libc::sigset_t> {
    let set = signal_set();
    // SAFETY: zeroed sigset_t is a valid out value.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid set and out pointer.
    if unsafe { libc::sigprocmask(libc::SIG_BLOCK, &set, &mut old) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(old)
}

/// Waits for the child, forwarding SIGINT/SIGTERM/SIGHUP/SIGQUIT to it. As PID 1 of its
/// own namespace (`pid_ns_init`) the VMM ignores signals it has no handler for, so
/// there they become SIGKILL.
fn wait_child(pid: libc::pid_t, pid_ns_init: bool) -> Result<i32, JailError> {
    let set = signal_set();
    loop {
        let mut status = 0;
        // SAFETY: waiting for our own child with a valid out pointer.
        let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if rc == pid {
            if libc::WIFEXITED(status) {
                return Ok(libc::WEXITSTATUS(status));
            }
            if libc::WIFSIGNALED(status) {
                return Ok(128 + libc::WTERMSIG(status));
            }
            continue;
        }
        if rc < 0 {
            return Err(JailError::Wait(io::Error::last_os_error()));
        }
        // SAFETY: zeroed siginfo_t is a valid out value.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: valid set and out pointer.
        let sig = unsafe { libc::sigwaitinfo(&set, &mut info) };
        if sig > 0 && sig != libc::SIGCHLD {
            let sig = if pid_ns_init { libc::SIGKILL } else { sig };
            // SAFETY: signalling our own child.
            unsafe { libc::kill(pid, sig) };
        }
    }
}

/// The child: confine, then exec. Returns only on failure.
fn confine_and_exec(
    cfg: &JailConfig,
    paths: &JailPaths,
    plan: &CgroupPlan,
    netns: Option<&File>,
    dev_null: Option<&File>,
    old_mask: &libc::sigset_t,
) -> ChildError {
    match confine(cfg, paths, plan, netns, dev_null, old_mask) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

enum Never {}

fn confine(
    cfg: &JailConfig,
    paths: &JailPaths,
    plan: &CgroupPlan,
    netns: Option<&File>,
    dev_null: Option<&File>,
    old_mask: &libc::sigset_t,
) -> Result<Never, ChildError> {
    // SAFETY: restoring a mask obtained from sigprocmask.
    if unsafe { libc::sigprocmask(libc::SIG_SETMASK, old_mask, std::ptr::null_mut()) } != 0 {
        return Err(ChildError::SigMask(io::Error::last_os_error()));
    }
    let foreground = !cfg.daemonize;
    if foreground {
        privs::set_death_signal(libc::SIGKILL)?;
    }
    cgroup::join(plan)?;
    if let (Some(ns), Some(path)) = (netns, cfg.netns.as_ref()) {
        process::join_netns(ns, path)?;
    }
    chroot::enter(&paths.root)?;
    if let Some(null) = dev_null {
        process::daemonize(null)?;
    }
    privs::drop_privileges(cfg.uid, cfg.gid)?;
    if foreground {
        // A credential change clears the parent-death signal: set it again.
        privs::set_death_signal(libc::SIGKILL)?;
    }
    let exec = &paths.exec_in_chroot;
    let mut argv: Vec<OsString> = vec![
        cfg.exec_name.clone().into(),
        "--id".into(),
        cfg.id.clone().into(),
    ];
    argv.extend(cfg.vmm_args.iter().cloned());
    let argv: Vec<CString> = argv
        .into_iter()
        .map(|a| CString::new(a.into_vec()))
        .collect::<Result<_, _>>()
        .map_err(|_| ChildError::NulInArg)?;
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    let path = CString::new(exec.as_os_str().as_bytes()).map_err(|_| ChildError::NulInArg)?;
    // SAFETY: path, argv and envp are NUL-terminated C strings in null-terminated arrays
    // that outlive the call; execve returns only on failure.
    unsafe { libc::execve(path.as_ptr(), argv_ptrs.as_ptr(), envp.as_ptr()) };
    Err(ChildError::Exec(exec.clone(), io::Error::last_os_error()))
}
