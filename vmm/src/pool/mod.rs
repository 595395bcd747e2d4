//! The sandbox pool: keep `size` sandboxes restored from one snapshot and ready, hand
//! each invocation a fresh one, destroy it afterwards.
//!
//! - [`Pool`] is the bookkeeping, generic over a [`Factory`] that restores one item: a
//!   fixed set of `max_restores` restorer threads keeps `ready + restoring == size`
//!   (so at most `max_restores` restores run at once), with a growing back-off after
//!   failed restores. [`Pool::checkout`] hands out a [`Lease`]; dropping the lease
//!   destroys the item. Threads and std only.
//! - [`sandbox::Sandbox`] is the real item: a child `husk snapshot restore
//!   --skip-handshake` process (the one restore path) that the pool sends `Restored`.
//! - [`invoke`] runs one invocation on a leased sandbox and turns a VMM that died or
//!   hung into a clear [`InvokeFailure`].
//! - [`prepare`] boots a function, optionally warms it, and snapshots it for a pool
//!   given a function instead of a snapshot.
//! - [`server`] serves callers on a Unix socket with the agent protocol (`husk pool`).

pub mod invoke;
pub mod prepare;
pub mod sandbox;
pub mod server;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use husk_agent::sync::{lock, wait_timeout};

pub use invoke::{invoke, InvokeFailure};
pub use sandbox::Sandbox;

/// Errors of the pool.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The husk binary could not be started.
    #[error("cannot start {0} for a restore; check --husk-bin")]
    Spawn(PathBuf, #[source] std::io::Error),
    /// The restore process exited before the agent answered.
    #[error("the restore of sandbox {0} exited with {1} before its agent answered (see the pool's stderr for husk's message)")]
    RestoreExited(String, std::process::ExitStatus),
    /// The Restored handshake failed.
    #[error("the Restored handshake with sandbox {0} failed")]
    Handshake(String, #[source] husk_agent::client::ClientError),
    /// No sandbox became ready in time.
    #[error("no sandbox ready after {waited_ms} ms (pool size {size}; last restore error: {last_error})")]
    NoSandbox {
        /// How long the caller waited.
        waited_ms: u128,
        /// The pool size.
        size: usize,
        /// The last restore failure, or "none".
        last_error: String,
    },
    /// The pool is stopping.
    #[error("the pool is stopping")]
    Stopping,
    /// The work directory could not be prepared.
    #[error("cannot prepare the pool work directory {0}")]
    WorkDir(PathBuf, #[source] std::io::Error),
    /// A restorer thread could not be started.
    #[error("cannot start a restorer thread")]
    Thread(#[source] std::io::Error),
    /// Bad configuration.
    #[error("{0}")]
    Config(String),
    /// Loading the snapshot into a jailed VMM failed.
    #[error("cannot load the snapshot into jailed sandbox {0}: {1}")]
    JailLoad(String, String),
    /// Booting, warming or snapshotting the function failed.
    #[error("cannot make the pool's snapshot of the function: {0}")]
    Prepare(String),
}

/// What the real pool needs to restore sandboxes.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// The snapshot state file.
    pub snapshot_path: PathBuf,
    /// The snapshot memory file.
    pub mem_path: PathBuf,
    /// The husk binary that runs `snapshot restore`.
    pub husk_bin: PathBuf,
    /// Where the sandboxes' vsock sockets go.
    pub work_dir: PathBuf,
    /// Spawn to the agent's Hello after Restored.
    pub restore_timeout: Duration,
    /// Pass --no-seccomp to the sandboxes (debugging only).
    pub no_seccomp: bool,
    /// Run every sandbox under `husk-jailer`.
    pub jail: Option<JailOptions>,
}

/// How pooled sandboxes are jailed: each runs as `husk-jailer --id <sandbox id> ...
/// -- --api-sock /api.sock` in the foreground, with its own jail root
/// `<chroot_base>/<husk binary name>/<id>/root` (the snapshot files `--include`d, its
/// API and vsock sockets inside) and its own cgroup, both removed by the jailer when the
/// VMM exits; the pool loads the snapshot through the jail's API (`PUT /snapshot/load`,
/// the same restore path as `husk snapshot restore`).
#[derive(Debug, Clone)]
pub struct JailOptions {
    /// The husk-jailer binary.
    pub jailer: PathBuf,
    /// Unprivileged uid and gid the VMM runs as.
    pub uid: u32,
    /// See `uid`.
    pub gid: u32,
    /// `--chroot-base-dir` of every jail.
    pub chroot_base: PathBuf,
    /// `--cgroup CTRL.FILE=VALUE` settings for every sandbox.
    pub cgroups: Vec<String>,
    /// `--parent-cgroup` of every sandbox: the pool's own (jailers that share a parent
    /// cannot tell who removes it last; the pool removes it at exit, see
    /// [`remove_parent_cgroup`]).
    pub parent_cgroup: String,
}

/// Remove the (by now empty) parent cgroup `name` the jailers created, in the cgroup v2
/// mount and in every v1 hierarchy; best effort.
pub fn remove_parent_cgroup(name: &str) {
    let base = std::path::Path::new("/sys/fs/cgroup");
    let mut dirs = vec![base.join(name)];
    if let Ok(entries) = std::fs::read_dir(base) {
        dirs.extend(entries.flatten().map(|e| e.path().join(name)));
    }
    for d in dirs {
        if d.is_dir() {
            if let Err(e) = std::fs::remove_dir(&d) {
                log::warn!("pool: cannot remove cgroup {}: {e}", d.display());
            }
        }
    }
}

/// Restores one pool item.
pub trait Factory: Send + Sync + 'static {
    /// The item (destroyed when dropped).
    type Item: Item;
    /// Restore a new item with this id.
    fn restore(&self, id: &str) -> Result<Self::Item, PoolError>;
}

/// A pool item.
pub trait Item: Send + 'static {
    /// Its id.
    fn id(&self) -> &str;
    /// Its process id (0 if none).
    fn pid(&self) -> u32;
    /// Whether it is still usable (its process has not exited).
    fn alive(&mut self) -> bool;
    /// How long its restore took.
    fn restore_time(&self) -> Duration {
        Duration::ZERO
    }
}

impl Factory for PoolConfig {
    type Item = Sandbox;
    fn restore(&self, id: &str) -> Result<Sandbox, PoolError> {
        Sandbox::restore(self, id)
    }
}

impl Item for Sandbox {
    fn id(&self) -> &str {
        &self.id
    }
    fn pid(&self) -> u32 {
        Sandbox::pid(self)
    }
    fn alive(&mut self) -> bool {
        self.exited().is_none()
    }
    fn restore_time(&self) -> Duration {
        self.restore_time
    }
}

/// Pool sizing.
#[derive(Debug, Clone)]
pub struct PoolOptions {
    /// Sandboxes kept ready (K).
    pub size: usize,
    /// Restores running at once at most.
    pub max_restores: usize,
    /// Prefix of the sandbox ids (`<prefix>-<n>`).
    pub id_prefix: String,
    /// First back-off after a failed restore (doubles per failure, up to 5 s).
    pub retry_backoff: Duration,
}

/// One sandbox in the status.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SandboxInfo {
    /// Sandbox id.
    pub id: String,
    /// VMM pid.
    pub pid: u32,
    /// `ready` or `busy`.
    pub state: &'static str,
}

/// A snapshot of the pool's state.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PoolStatus {
    /// K.
    pub size: usize,
    /// Ready sandboxes.
    pub ready: usize,
    /// Sandboxes serving an invocation.
    pub busy: usize,
    /// Restores in progress.
    pub restoring: usize,
    /// Restores that succeeded.
    pub restored: u64,
    /// Restores that failed.
    pub failed_restores: u64,
    /// Mean time of the successful restores (spawn to the agent's Hello), in ms.
    pub restore_ms_mean: u64,
    /// Ready sandboxes found dead and replaced.
    pub lost: u64,
    /// Leases returned (sandboxes destroyed after use).
    pub served: u64,
    /// The last restore failure.
    pub last_error: Option<String>,
    /// Whether the pool is draining (SIGTERM seen: no new callers, in-flight
    /// invocations finishing).
    pub draining: bool,
    /// Whether the pool is stopping.
    pub stopping: bool,
    /// Ready and busy sandboxes.
    pub sandboxes: Vec<SandboxInfo>,
}

struct State<T> {
    ready: VecDeque<T>,
    busy: Vec<(String, u32)>,
    restoring: usize,
    draining: bool,
    stopping: bool,
    next_id: u64,
    restored: u64,
    restore_total: Duration,
    failed: u64,
    lost: u64,
    served: u64,
    failures_in_row: u32,
    last_error: Option<String>,
}

struct Inner<F: Factory> {
    factory: F,
    opts: PoolOptions,
    state: Mutex<State<F::Item>>,
    cv: Condvar,
}

/// K items kept ready; see the module docs.
pub struct Pool<F: Factory> {
    inner: Arc<Inner<F>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// Longest back-off between failed restores.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

impl<F: Factory> Pool<F> {
    /// Start the restorer threads; they fill the pool in the background.
    pub fn start(factory: F, opts: PoolOptions) -> Result<Self, PoolError> {
        if opts.size == 0 || opts.max_restores == 0 {
            return Err(PoolError::Config(
                "the pool size and --max-restores must be at least 1".into(),
            ));
        }
        let inner = Arc::new(Inner {
            factory,
            opts,
            state: Mutex::new(State {
                ready: VecDeque::new(),
                busy: Vec::new(),
                restoring: 0,
                draining: false,
                stopping: false,
                next_id: 0,
                restored: 0,
                restore_total: Duration::ZERO,
                failed: 0,
                lost: 0,
                served: 0,
                failures_in_row: 0,
                last_error: None,
            }),
            cv: Condvar::new(),
        });
        let pool = Self {
            inner: inner.clone(),
            threads: Mutex::new(Vec::new()),
        };
        for n in 0..inner.opts.max_restores.min(inner.opts.size) {
            let inner = inner.clone();
            let t = std::thread::Builder::new()
                .name(format!("pool-restore-{n}"))
                .spawn(move || restorer(&inner))
                .map_err(PoolError::Thread)?;
            lock(&pool.threads).push(t);
        }
        Ok(pool)
    }

    /// Take a ready item, waiting up to `wait` for one. Dead ready items are dropped
    /// (and replaced) on the way.
    pub fn checkout(&self, wait: Duration) -> Result<Lease<F>, PoolError> {
        let start = Instant::now();
        let mut st = lock(&self.inner.state);
        loop {
            if st.stopping || st.draining {
                return Err(PoolError::Stopping);
            }
            while let Some(mut item) = st.ready.pop_front() {
                if !item.alive() {
                    st.lost += 1;
                    self.inner.cv.notify_all();
                    drop(st);
                    drop(item);
                    st = lock(&self.inner.state);
                    continue;
                }
                st.busy.push((item.id().to_string(), item.pid()));
                self.inner.cv.notify_all();
                return Ok(Lease {
                    item: Some(item),
                    inner: self.inner.clone(),
                });
            }
            let waited = start.elapsed();
            if waited >= wait {
                return Err(PoolError::NoSandbox {
                    waited_ms: waited.as_millis(),
                    size: self.inner.opts.size,
                    last_error: st.last_error.clone().unwrap_or_else(|| "none".into()),
                });
            }
            st = wait_timeout(&self.inner.cv, st, wait - waited);
        }
    }

    /// Drop ready items whose process exited, so they are replaced now rather than at
    /// the next checkout; returns how many.
    pub fn reap_dead(&self) -> usize {
        let mut dead = Vec::new();
        {
            let mut st = lock(&self.inner.state);
            let mut keep = VecDeque::new();
            while let Some(mut item) = st.ready.pop_front() {
                if item.alive() {
                    keep.push_back(item);
                } else {
                    dead.push(item);
                }
            }
            st.ready = keep;
            st.lost += dead.len() as u64;
            if !dead.is_empty() {
                self.inner.cv.notify_all();
            }
        }
        dead.len()
    }

    /// The current state.
    pub fn status(&self) -> PoolStatus {
        let st = lock(&self.inner.state);
        let mut sandboxes: Vec<SandboxInfo> = st
            .ready
            .iter()
            .map(|i| SandboxInfo {
                id: i.id().to_string(),
                pid: i.pid(),
                state: "ready",
            })
            .collect();
        sandboxes.extend(st.busy.iter().map(|(id, pid)| SandboxInfo {
            id: id.clone(),
            pid: *pid,
            state: "busy",
        }));
        PoolStatus {
            size: self.inner.opts.size,
            ready: st.ready.len(),
            busy: st.busy.len(),
            restoring: st.restoring,
            restored: st.restored,
            failed_restores: st.failed,
            restore_ms_mean: st
                .restore_total
                .as_millis()
                .checked_div(u128::from(st.restored))
                .unwrap_or(0) as u64,
            lost: st.lost,
            served: st.served,
            last_error: st.last_error.clone(),
            draining: st.draining,
            stopping: st.stopping,
            sandboxes,
        }
    }

    /// Wait until `ready` items are ready or `wait` passes; returns the ready count.
    pub fn wait_ready(&self, ready: usize, wait: Duration) -> usize {
        let end = Instant::now() + wait;
        let mut st = lock(&self.inner.state);
        while st.ready.len() < ready && !st.stopping {
            let now = Instant::now();
            if now >= end {
                break;
            }
            st = wait_timeout(&self.inner.cv, st, end - now);
        }
        st.ready.len()
    }

    /// Refuse checkouts and start no new restores, but keep the restorer threads: a
    /// sandbox gets `PR_SET_PDEATHSIG` from the thread that spawned it, so a restorer
    /// thread must outlive the leases of what it restored. Call before waiting for
    /// in-flight invocations, then [`Pool::stop`].
    pub fn drain(&self) {
        lock(&self.inner.state).draining = true;
        self.inner.cv.notify_all();
    }

    /// Stop: no more checkouts or restores; waits for running restores to end, then
    /// destroys every ready item. Leases still out are destroyed when dropped (but
    /// their sandboxes are killed with the restorer threads that spawned them: drain
    /// and wait for the leases first).
    pub fn stop(&self) {
        lock(&self.inner.state).stopping = true;
        self.inner.cv.notify_all();
        for t in lock(&self.threads).drain(..) {
            let _ = t.join();
        }
        let ready: Vec<_> = lock(&self.inner.state).ready.drain(..).collect();
        drop(ready);
    }
}

impl<F: Factory> Drop for Pool<F> {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A checked-out item; dropping it destroys the item and lets the pool refill.
pub struct Lease<F: Factory> {
    item: Option<F::Item>,
    inner: Arc<Inner<F>>,
}

impl<F: Factory> Lease<F> {
    /// The leased item.
    pub fn item(&mut self) -> &mut F::Item {
        // The item is only taken in drop.
        self.item.as_mut().unwrap_or_else(|| unreachable!())
    }
}

impl<F: Factory> Drop for Lease<F> {
    fn drop(&mut self) {
        let Some(item) = self.item.take() else {
            return;
        };
        let id = item.id().to_string();
        drop(item);
        let mut st = lock(&self.inner.state);
        st.busy.retain(|(i, _)| *i != id);
        st.served += 1;
        self.inner.cv.notify_all();
    }
}

/// One restorer thread: restore while `ready + restoring < size`.
fn restorer<F: Factory>(inner: &Inner<F>) {
    loop {
        let id = {
            let mut st = lock(&inner.state);
            loop {
                if st.stopping {
                    return;
                }
                if !st.draining && st.ready.len() + st.restoring < inner.opts.size {
                    break;
                }
                st = wait_timeout(&inner.cv, st, Duration::from_secs(1));
            }
            st.restoring += 1;
            st.next_id += 1;
            format!("{}-{}", inner.opts.id_prefix, st.next_id)
        };
        let result = inner.factory.restore(&id);
        let mut st = lock(&inner.state);
        st.restoring -= 1;
        let backoff = match result {
            Ok(item) => {
                st.restored += 1;
                st.restore_total += item.restore_time();
                st.failures_in_row = 0;
                if st.stopping {
                    drop(st);
                    drop(item);
                    inner.cv.notify_all();
                    return;
                }
                st.ready.push_back(item);
                None
            }
            Err(e) => {
                let msg = husk_agent::sync::error_chain(&e);
                log::warn!("pool: restore of {id} failed: {msg}");
                st.failed += 1;
                st.failures_in_row = st.failures_in_row.saturating_add(1);
                st.last_error = Some(msg);
                let shift = st.failures_in_row.min(16) - 1;
                Some(
                    inner
                        .opts
                        .retry_backoff
                        .saturating_mul(1 << shift)
                        .min(MAX_BACKOFF),
                )
            }
        };
        inner.cv.notify_all();
        if let Some(b) = backoff {
            let end = Instant::now() + b;
            while !st.stopping {
                let now = Instant::now();
                if now >= end {
                    break;
                }
                st = wait_timeout(&inner.cv, st, end - now);
            }
        }
    }
}

#[cfg(test)]
mod tests;
