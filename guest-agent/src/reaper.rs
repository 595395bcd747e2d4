//! Child process bookkeeping: spawning functions in their own process group and
//! collecting exit statuses without stealing them from one another.
//!
//! As PID 1 the agent inherits every orphan in the guest, so it must reap with
//! `waitpid(-1)`; that would steal a function's exit status from a per-child wait. The
//! global reaper therefore owns all waiting: it reaps everything and records the status
//! of the children registered with it. Outside PID 1 (tests, the host) a per-child
//! waiter thread is used instead so other children of the process are left alone.

use std::collections::HashMap;
use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::sync::{lock, wait, wait_timeout};
use std::time::{Duration, Instant};

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Normal exit with this code.
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
}

impl Exit {
    fn from_wait_status(st: i32) -> Self {
        if libc::WIFSIGNALED(st) {
            Self::Signal(libc::WTERMSIG(st))
        } else {
            Self::Code(libc::WEXITSTATUS(st))
        }
    }
}

#[derive(Default)]
struct Shared {
    /// Registered children: `None` while running, `Some` once reaped.
    children: Mutex<HashMap<i32, Option<Exit>>>,
    cv: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, HashMap<i32, Option<Exit>>> {
        lock(&self.children)
    }
    fn record(&self, pid: i32, exit: Exit) {
        let mut map = self.lock();
        if let Some(slot) = map.get_mut(&pid) {
            *slot = Some(exit);
        }
        drop(map);
        self.cv.notify_all();
    }
}

/// Spawns children and waits for them with timeouts. Cheap to clone.
#[derive(Clone)]
pub struct Reaper {
    shared: Arc<Shared>,
    global: bool,
}

impl Reaper {
    /// A reaper that waits for each child by pid (for processes that are not PID 1).
    pub fn per_child() -> Self {
        Self {
            shared: Arc::default(),
            global: false,
        }
    }

    /// A reaper that reaps every child of the process (`waitpid(-1)`), for PID 1.
    pub fn global() -> io::Result<Self> {
        let r = Self {
            shared: Arc::default(),
            global: true,
        };
        let shared = r.shared.clone();
        std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || reap_all(&shared))?;
        Ok(r)
    }

    /// Spawn `cmd` as the leader of a new process group and register it.
    pub fn spawn(&self, cmd: &mut Command) -> io::Result<Child> {
        cmd.process_group(0);
        // Hold the lock across spawn so the global reaper cannot record the exit of a
        // child that exits at once before it is registered.
        let mut map = self.shared.lock();
        let child = cmd.spawn()?;
        let pid = child.id() as i32;
        map.insert(pid, None);
        drop(map);
        // Wakes the global reaper if it is idle with no children.
        self.shared.cv.notify_all();
        if !self.global {
            let shared = self.shared.clone();
            std::thread::Builder::new()
                .name(format!("wait-{pid}"))
                .spawn(move || {
                    if let Some(exit) = wait_one(pid) {
                        shared.record(pid, exit);
                    }
                })?;
        }
        Ok(child)
    }

    /// Wait until `pid` exits or `timeout` passes (`None`: forever). On exit the child
    /// is forgotten and its status returned.
    pub fn wait_timeout(&self, pid: i32, timeout: Option<Duration>) -> Option<Exit> {
        let end = timeout.map(|t| Instant::now() + t);
        let mut map = self.shared.lock();
        loop {
            match map.get(&pid) {
                None => return None,
                Some(Some(exit)) => {
                    let exit = *exit;
                    map.remove(&pid);
                    return Some(exit);
                }
                Some(None) => {}
            }
            match end {
                None => map = wait(&self.shared.cv, map),
                Some(end) => {
                    let now = Instant::now();
                    if now >= end {
                        return None;
                    }
                    map = wait_timeout(&self.shared.cv, map, end - now);
                }
            }
        }
    }

    /// Whether registered child `pid` has exited (its status is kept for
    /// [`Reaper::wait_timeout`]).
    pub fn has_exited(&self, pid: i32) -> bool {
        matches!(self.shared.lock().get(&pid), Some(Some(_)))
    }

    /// Kill the whole process group led by `pid` with SIGKILL (ignores a gone group).
    pub fn kill_group(pid: i32) {
        if pid <= 1 {
            return;
        }
        // SAFETY: kill(2) takes plain integers and touches no memory of ours.
        let _ = unsafe { libc::kill(-pid, libc::SIGKILL) };
    }
}

/// Blocking wait for one pid; `None` if it is not our child any more.
fn wait_one(pid: i32) -> Option<Exit> {
    loop {
        let mut st = 0;
        // SAFETY: `st` is a valid out-pointer for the duration of the call.
        let r = unsafe { libc::waitpid(pid, &mut st, 0) };
        if r == pid {
            return Some(Exit::from_wait_status(st));
        }
        if r < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        return None;
    }
}

/// The PID 1 reaping loop: reap every child, record registered ones.
fn reap_all(shared: &Shared) {
    loop {
        let mut st = 0;
        // SAFETY: `st` is a valid out-pointer for the duration of the call.
        let r = unsafe { libc::waitpid(-1, &mut st, 0) };
        if r > 0 {
            shared.record(r, Exit::from_wait_status(st));
            continue;
        }
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::Interrupted {
            continue;
        }
        // ECHILD: no children right now. Sleep until a spawn or a short timeout.
        let map = shared.lock();
        drop(wait_timeout(&shared.cv, map, Duration::from_millis(200)));
    }
}

/// Whether process `pid` still exists and is not a zombie (reads `/proc`).
pub fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !matches!(
            stat_state_and_flags(&s),
            Some(('Z', _)) | Some(('X', _)) | None
        ),
        Err(_) => false,
    }
}

/// The state letter (3rd field) and the flags (9th field, 0 if unreadable) of a
/// `/proc/<pid>/stat` line; None if it has no state. The command name (2nd field, in
/// parentheses) may hold spaces and parentheses: fields are counted after its last `)`.
pub fn stat_state_and_flags(stat: &str) -> Option<(char, u64)> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let flags = fields.nth(5).and_then(|f| f.parse().ok()).unwrap_or(0);
    Some((state, flags))
}
