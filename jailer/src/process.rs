//! Process hygiene: inherited fds, environment, resource limits, network namespace,
//! PID namespace, daemon mode.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};

use crate::args::Resource;

/// Errors of the process steps; one variant per syscall.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// Listing open fds failed.
    #[error("cannot list open file descriptors in /proc/self/fd")]
    ListFds(#[source] io::Error),
    /// setrlimit failed.
    #[error("cannot set resource limit {0:?} to {1}: lower the value")]
    Rlimit(Resource, u64, #[source] io::Error),
    /// Opening the netns file failed.
    #[error("cannot open network namespace {0:?}")]
    OpenNetns(PathBuf, #[source] io::Error),
    /// setns failed.
    #[error("cannot join network namespace {0:?}: is it a network namespace file?")]
    JoinNetns(PathBuf, #[source] io::Error),
    /// unshare(CLONE_NEWPID) failed.
    #[error("cannot create a PID namespace (unshare CLONE_NEWPID)")]
    UnsharePid(#[source] io::Error),
    /// Opening /dev/null failed.
    #[error("cannot open /dev/null for daemon mode")]
    OpenDevNull(#[source] io::Error),
    /// setsid failed.
    #[error("cannot start a new session (setsid) for daemon mode")]
    Setsid(#[source] io::Error),
    /// dup2 failed.
    #[error("cannot redirect fd {0} to /dev/null")]
    Dup2(RawFd, #[source] io::Error),
}

/// Closes every fd above 2 the jailer inherited. Call first, before opening anything.
pub fn close_inherited_fds() -> Result<(), ProcessError> {
    // SAFETY: close_range takes plain integers and only closes descriptors.
    let rc = unsafe { libc::close_range(3, libc::c_uint::MAX, 0) };
    if rc == 0 {
        return Ok(());
    }
    // Kernels before 5.9: walk /proc/self/fd (collect first, then close).
    let fds: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")
        .map_err(ProcessError::ListFds)?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: closing an fd number we do not own elsewhere; errors (the directory's
        // own fd, already closed) are harmless.
        unsafe { libc::close(fd) };
    }
    Ok(())
}

/// Removes every environment variable (the VMM is also exec'd with an empty environment).
pub fn clear_env() {
    for (key, _) in std::env::vars_os() {
        std::env::remove_var(key);
    }
}

/// Applies the resource limits (soft = hard).
pub fn set_rlimits(limits: &[(Resource, u64)]) -> Result<(), ProcessError> {
    for &(res, value) in limits {
        let which = match res {
            Resource::FileSize => libc::RLIMIT_FSIZE,
            Resource::NoFile => libc::RLIMIT_NOFILE,
        };
        let lim = libc::rlimit {
            rlim_cur: value,
            rlim_max: value,
        };
        // SAFETY: `lim` is a valid rlimit that lives across the call.
        if unsafe { libc::setrlimit(which, &lim) } != 0 {
            return Err(ProcessError::Rlimit(res, value, io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// Opens a network namespace file (close-on-exec).
pub fn open_netns(path: &PathBuf) -> Result<File, ProcessError> {
    File::open(path).map_err(|e| ProcessError::OpenNetns(path.clone(), e))
}

/// Joins the network namespace behind `ns`.
pub fn join_netns(ns: &File, path: &Path) -> Result<(), ProcessError> {
    // SAFETY: `ns` is an open fd for the duration of the call.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(ProcessError::JoinNetns(
            path.to_path_buf(),
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Makes the next forked child PID 1 of a new PID namespace.
pub fn unshare_pid_ns() -> Result<(), ProcessError> {
    // SAFETY: unshare takes only flags.
    if unsafe { libc::unshare(libc::CLONE_NEWPID) } != 0 {
        return Err(ProcessError::UnsharePid(io::Error::last_os_error()));
    }
    Ok(())
}

/// Opens /dev/null (close-on-exec) before the chroot hides it.
pub fn open_dev_null() -> Result<File, ProcessError> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(ProcessError::OpenDevNull)
}

/// Daemon mode: new session, stdin/stdout/stderr to /dev/null.
pub fn daemonize(dev_null: &File) -> Result<(), ProcessError> {
    // SAFETY: setsid takes no arguments.
    if unsafe { libc::setsid() } < 0 {
        return Err(ProcessError::Setsid(io::Error::last_os_error()));
    }
    for fd in 0..=2 {
        // SAFETY: both fds are open; dup2 replaces `fd` atomically.
        if unsafe { libc::dup2(dev_null.as_raw_fd(), fd) } < 0 {
            return Err(ProcessError::Dup2(fd, io::Error::last_os_error()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rlimits_apply() {
        // In a forked child so the test process keeps its limits.
        // SAFETY: fork in a test; the child only makes syscalls and exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let ok = set_rlimits(&[(Resource::NoFile, 64), (Resource::FileSize, 4096)]).is_ok();
            let mut lim = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: valid out pointer.
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
            let code = if ok && lim.rlim_cur == 64 && lim.rlim_max == 64 {
                0
            } else {
                1
            };
            // SAFETY: exit the forked child without running the parent's destructors.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child with a valid out pointer.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "status {status:#x}"
        );
    }

    #[test]
    fn fds_and_env_are_cleared() {
        // SAFETY: fork in a test; the child only makes syscalls and exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let f = File::open("/proc/self/status");
            std::env::set_var("HUSK_TEST_VAR", "1");
            let fd = f.as_ref().map(|f| f.as_raw_fd()).unwrap_or(-1);
            let closed_ok = close_inherited_fds().is_ok();
            // SAFETY: probing an fd number with F_GETFD.
            let still_open = unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0;
            std::mem::forget(f);
            clear_env();
            let env_empty = std::env::vars_os().next().is_none();
            let code = if closed_ok && fd > 2 && !still_open && env_empty {
                0
            } else {
                1
            };
            // SAFETY: exit the forked child.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child with a valid out pointer.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "status {status:#x}"
        );
    }
}
