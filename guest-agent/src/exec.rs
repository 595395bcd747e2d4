//! Exec mode: one process per invocation. The payload goes to stdin, stdout is the body,
//! the exit status decides ok / function error / crashed, and the deadline kills the
//! process group. All pipe I/O runs on the calling thread with poll(2), plus a pidfd to
//! notice the function's exit even while something it forked still holds its pipes.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use crate::config::FunctionConfig;
use crate::protocol::{Crash, LogStream, Status, RESULT_OUTPUT_TRUNCATED};
use crate::reaper::{Exit, Reaper};
use crate::runner::{
    abort_spawn, spawn_function, FunctionProcess, LiveLogs, Outcome, RunError, Tail, GRACE,
    STDERR_TAIL,
};
use crate::worker::RequestMeta;

/// Environment variable with the invocation's request id (exec mode).
pub const ENV_REQUEST_ID: &str = "HUSK_REQUEST_ID";
/// Environment variable with the absolute deadline, ms since the Unix epoch (exec mode).
pub const ENV_DEADLINE_MS: &str = "HUSK_DEADLINE_MS";

/// The environment an exec-mode function gets for `meta` (on top of function.json's).
pub fn meta_env(meta: &RequestMeta) -> Vec<(String, String)> {
    let mut env = meta.env.clone();
    env.push((ENV_REQUEST_ID.into(), meta.request_id.clone()));
    env.push((ENV_DEADLINE_MS.into(), meta.deadline_unix_ms.to_string()));
    env
}

/// Stdout bytes kept up to a cap; the rest is read and dropped.
#[derive(Debug)]
pub(crate) struct Capture {
    pub(crate) buf: Vec<u8>,
    cap: usize,
    pub(crate) truncated: bool,
}

impl Capture {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            buf: Vec::new(),
            cap,
            truncated: false,
        }
    }
    pub(crate) fn push(&mut self, data: &[u8]) {
        let room = self.cap.saturating_sub(self.buf.len());
        if data.len() > room {
            self.truncated = true;
        }
        self.buf.extend_from_slice(&data[..data.len().min(room)]);
    }
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl(2) on a descriptor we own, with integer arguments only.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A pidfd for `pid`, if the kernel has them and the process still exists.
fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new descriptor or -1.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if r < 0 {
        return None;
    }
    // SAFETY: `r` is a fresh descriptor that nothing else owns.
    Some(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

/// Read everything available from a non-blocking reader; returns false at EOF or error.
fn drain<R: Read>(r: &mut R, mut sink: impl FnMut(&[u8]), buf: &mut [u8]) -> bool {
    loop {
        match r.read(buf) {
            Ok(0) => return false,
            Ok(n) => sink(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
}

/// Poll the given descriptors (fd, events) for up to `timeout`; returns revents.
fn poll(fds: &[(RawFd, i16)], timeout: Duration) -> Vec<i16> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&(fd, events)| libc::pollfd {
            fd,
            events,
            revents: 0,
        })
        .collect();
    let ms = timeout.as_millis().clamp(0, i32::MAX as u128) as libc::c_int;
    // Round sub-millisecond waits up so the loop does not spin.
    let ms = if ms == 0 && !timeout.is_zero() { 1 } else { ms };
    // SAFETY: `pfds` is a valid array of `pfds.len()` pollfd structs.
    let r = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
    if r <= 0 {
        return vec![0; fds.len()];
    }
    pfds.iter().map(|p| p.revents).collect()
}

/// Run one exec-mode invocation; `meta` reaches the function as environment variables
/// and its stderr is pushed to `logs` as it arrives.
pub fn run_exec(
    reaper: &Reaper,
    cfg: &FunctionConfig,
    meta: &RequestMeta,
    payload: Vec<u8>,
    deadline: Duration,
    logs: Option<&LiveLogs>,
) -> Result<Outcome, RunError> {
    let start = Instant::now();
    let FunctionProcess {
        pid,
        stdin,
        mut stdout,
        mut stderr,
    } = spawn_function(reaper, cfg, &meta_env(meta), None)?;
    let fail = |e: io::Error| abort_spawn(reaper, pid, e);
    for fd in [stdin.as_raw_fd(), stdout.as_raw_fd(), stderr.as_raw_fd()] {
        set_nonblocking(fd).map_err(fail)?;
    }
    let pidfd = pidfd_open(pid);
    // An empty payload closes stdin at once (`then_some` consumes the pipe either way:
    // a shadowed, still-open pipe would leave the function waiting for EOF).
    let mut stdin = (!payload.is_empty()).then_some(stdin);
    let mut written = 0usize;
    let mut out = Capture::new(cfg.output_cap);
    let mut err = Tail::new(STDERR_TAIL);
    let mut on_err = |d: &[u8]| {
        err.push(d);
        if let Some(l) = logs {
            l.push(LogStream::Stderr, d);
        }
    };
    let (mut out_open, mut err_open) = (true, true);
    let mut buf = vec![0u8; 64 * 1024];
    let deadline_at = start + deadline;
    // Once the function exited or timed out, pipes get only a short grace to close.
    let mut grace_until: Option<Instant> = None;
    let mut timed_out = false;
    let mut exited = false;

    while out_open || err_open {
        let now = Instant::now();
        let limit = grace_until.unwrap_or(deadline_at);
        if now >= limit {
            if grace_until.is_some() {
                break;
            }
            timed_out = true;
            Reaper::kill_group(pid);
            grace_until = Some(now + GRACE);
            continue;
        }
        let mut fds = Vec::with_capacity(4);
        if out_open {
            fds.push((stdout.as_raw_fd(), libc::POLLIN));
        }
        if err_open {
            fds.push((stderr.as_raw_fd(), libc::POLLIN));
        }
        if let Some(s) = &stdin {
            fds.push((s.as_raw_fd(), libc::POLLOUT));
        }
        let watch_exit = !exited && grace_until.is_none();
        match (&pidfd, watch_exit) {
            (Some(p), true) => fds.push((p.as_raw_fd(), libc::POLLIN)),
            // Without pidfds, check for the exit every 10 ms.
            (None, true) if reaper.has_exited(pid) => exited = true,
            _ => {}
        }
        let wait = if pidfd.is_none() && watch_exit {
            (limit - now).min(Duration::from_millis(10))
        } else {
            limit - now
        };
        let revents = poll(&fds, wait);
        let ready = |fd: RawFd| {
            fds.iter()
                .zip(&revents)
                .find(|((f, _), _)| *f == fd)
                .map(|(_, r)| *r)
                .unwrap_or(0)
        };
        if out_open && ready(stdout.as_raw_fd()) != 0 {
            out_open = drain(&mut stdout, |d| out.push(d), &mut buf);
        }
        if err_open && ready(stderr.as_raw_fd()) != 0 {
            err_open = drain(&mut stderr, &mut on_err, &mut buf);
        }
        if let Some(s) = stdin.as_mut() {
            if ready(s.as_raw_fd()) != 0 {
                match s.write(&payload[written..]) {
                    Ok(n) => written += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    // EPIPE: the function does not read its input; that is its business.
                    Err(_) => written = payload.len(),
                }
                if written >= payload.len() {
                    stdin = None;
                }
            }
        }
        if let Some(p) = &pidfd {
            if watch_exit && ready(p.as_raw_fd()) != 0 {
                exited = true;
            }
        }
        if exited && grace_until.is_none() {
            // The function is gone; whatever it forked must not outlive the invocation
            // (and must not keep its pipes open).
            drain(&mut stdout, |d| out.push(d), &mut buf);
            drain(&mut stderr, &mut on_err, &mut buf);
            Reaper::kill_group(pid);
            grace_until = Some(Instant::now() + GRACE);
        }
    }
    drop(stdin);
    let exit = if timed_out {
        None
    } else {
        let remaining = deadline_at.saturating_duration_since(Instant::now());
        reaper.wait_timeout(pid, Some(remaining))
    };
    // Whatever happened, nothing of this invocation may outlive it.
    Reaper::kill_group(pid);
    let status = match exit {
        None => {
            let _ = reaper.wait_timeout(pid, Some(GRACE));
            Status::Timeout
        }
        Some(Exit::Code(0)) => Status::Ok,
        Some(Exit::Code(code)) => Status::FunctionError { code },
        Some(Exit::Signal(s)) => Status::Crashed(Crash::Signal(s)),
    };
    Ok(Outcome {
        status,
        flags: if out.truncated {
            RESULT_OUTPUT_TRUNCATED
        } else {
            0
        },
        body: out.buf,
        stderr_tail: err.since(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_cuts_at_cap() {
        let mut c = Capture::new(5);
        c.push(b"abc");
        assert!(!c.truncated);
        c.push(b"defg");
        assert_eq!(c.buf, b"abcde");
        assert!(c.truncated);
    }
}
