//! `husk pool`: keep `--size` sandboxes restored from a snapshot and serve invocations
//! on a Unix socket with the agent protocol, one fresh sandbox per invocation (see
//! [`crate::pool`]). SIGTERM/SIGINT: stop accepting, finish in-flight invocations,
//! destroy every sandbox, remove the socket, the status file and the work directory,
//! exit 0.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use husk_agent::config::DEFAULT_PORT;
use husk_agent::sync::error_chain;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::pool::server::{serve, ServeOptions};
use crate::pool::{Pool, PoolConfig, PoolOptions};

/// `husk pool` flags.
#[derive(Debug, Args)]
pub struct PoolArgs {
    /// The snapshot state file (`husk snapshot create`).
    #[arg(long)]
    pub snapshot: PathBuf,
    /// The snapshot memory file.
    #[arg(long)]
    pub mem: PathBuf,
    /// Sandboxes kept restored and ready (K).
    #[arg(long, default_value_t = 2)]
    pub size: usize,
    /// The Unix socket callers connect to (`husk invoke --uds SOCKET`).
    #[arg(long)]
    pub socket: PathBuf,
    /// Restores running at once at most.
    #[arg(long, default_value_t = 2)]
    pub max_restores: usize,
    /// Directory for the sandboxes' vsock sockets (default: a new one under /tmp,
    /// removed at exit).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Rewrite this JSON file with the pool's state (ready/busy/restoring counts,
    /// sandbox ids and pids) whenever it changes.
    #[arg(long)]
    pub status_file: Option<PathBuf>,
    /// Guest vsock port of the agent (callers CONNECT to it).
    #[arg(long, default_value_t = DEFAULT_PORT)]
    pub port: u32,
    /// How long a caller waits for a ready sandbox, in ms.
    #[arg(long, default_value_t = 4000)]
    pub acquire_timeout_ms: u64,
    /// Invocation timeout for invocations without a deadline, in ms.
    #[arg(long, default_value_t = 60_000)]
    pub invoke_timeout_ms: u64,
    /// Restore timeout (spawn to the agent's Hello), in ms.
    #[arg(long, default_value_t = 60_000)]
    pub restore_timeout_ms: u64,
    /// The husk binary the sandboxes run (default: this one).
    #[arg(long)]
    pub husk_bin: Option<PathBuf>,
    /// Disable the sandboxes' seccomp filters (debugging only).
    #[arg(long)]
    pub no_seccomp: bool,
}

/// Errors of `husk pool`.
#[derive(Debug, thiserror::Error)]
pub enum PoolCliError {
    /// The pool itself.
    #[error(transparent)]
    Pool(#[from] crate::pool::PoolError),
    /// The caller socket.
    #[error("cannot listen on {0}; is another pool using it? remove the stale socket")]
    Bind(PathBuf, #[source] std::io::Error),
    /// The snapshot files.
    #[error("cannot read snapshot file {0}")]
    Snapshot(PathBuf, #[source] std::io::Error),
    /// Setup.
    #[error("cannot {0}")]
    Setup(&'static str, #[source] std::io::Error),
}

struct Cleanup {
    socket: PathBuf,
    status: Option<PathBuf>,
    work_dir: Option<PathBuf>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
        if let Some(s) = &self.status {
            let _ = std::fs::remove_file(s);
        }
        if let Some(d) = &self.work_dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

fn write_status(path: &Path, json: &str) {
    let tmp = path.with_extension("tmp");
    if std::fs::write(&tmp, json).is_ok() {
        let _ = std::fs::rename(&tmp, path);
    }
}

/// Run `husk pool`; returns the exit status.
pub fn run(args: &PoolArgs) -> Result<i32, PoolCliError> {
    for p in [&args.snapshot, &args.mem] {
        std::fs::metadata(p).map_err(|e| PoolCliError::Snapshot(p.clone(), e))?;
    }
    let husk_bin = match &args.husk_bin {
        Some(b) => b.clone(),
        None => {
            std::env::current_exe().map_err(|e| PoolCliError::Setup("find the husk binary", e))?
        }
    };
    let (work_dir, created) = match &args.work_dir {
        Some(d) => (d.clone(), !d.exists()),
        None => (
            std::env::temp_dir().join(format!("husk-pool-{}", std::process::id())),
            true,
        ),
    };
    std::fs::create_dir_all(&work_dir)
        .map_err(|e| crate::pool::PoolError::WorkDir(work_dir.clone(), e))?;
    let mut cleanup = Cleanup {
        socket: args.socket.clone(),
        status: args.status_file.clone(),
        work_dir: created.then(|| work_dir.clone()),
    };
    let listener = std::os::unix::net::UnixListener::bind(&args.socket)
        .map_err(|e| PoolCliError::Bind(args.socket.clone(), e))?;
    let stop =
        EventFd::new(EFD_NONBLOCK).map_err(|e| PoolCliError::Setup("create an eventfd", e))?;
    crate::signals::install_term_handlers(&stop)
        .map_err(|e| PoolCliError::Setup("install the SIGTERM/SIGINT handlers", e))?;
    let cfg = PoolConfig {
        snapshot_path: args.snapshot.clone(),
        mem_path: args.mem.clone(),
        husk_bin,
        work_dir: work_dir.clone(),
        restore_timeout: Duration::from_millis(args.restore_timeout_ms),
        no_seccomp: args.no_seccomp,
    };
    let pool = Arc::new(Pool::start(
        cfg,
        PoolOptions {
            size: args.size,
            max_restores: args.max_restores,
            id_prefix: format!("pool{}", std::process::id()),
            retry_backoff: Duration::from_millis(100),
        },
    )?);
    eprintln!(
        "husk pool: serving on {} with {} sandbox(es) from {}",
        args.socket.display(),
        args.size,
        args.snapshot.display()
    );
    let opts = ServeOptions {
        port: args.port,
        acquire_timeout: Duration::from_millis(args.acquire_timeout_ms),
        invoke_timeout: Duration::from_millis(args.invoke_timeout_ms),
        idle_timeout: Duration::from_secs(30),
        max_connections: 256,
    };
    let mut last = String::new();
    let mut announced = false;
    serve(&listener, &pool, &opts, stop.as_raw_fd(), || {
        pool.reap_dead();
        let st = pool.status();
        if !announced && st.ready >= st.size {
            announced = true;
            eprintln!("husk pool: {} sandbox(es) ready", st.ready);
        }
        if let Some(p) = &args.status_file {
            let json = serde_json::to_string(&st).unwrap_or_default();
            if json != last {
                write_status(p, &json);
                last = json;
            }
        }
    });
    drop(listener);
    let _ = std::fs::remove_file(&args.socket);
    eprintln!("husk pool: stopping");
    pool.stop();
    let st = pool.status();
    drop(pool);
    if let Some(p) = &args.status_file {
        let _ = std::fs::remove_file(p.with_extension("tmp"));
    }
    if !created {
        // A work directory the user gave is kept; the sandboxes removed their files.
        cleanup.work_dir = None;
    }
    drop(cleanup);
    eprintln!(
        "husk pool: stopped; {} restored, {} served, {} failed restores",
        st.restored, st.served, st.failed_restores
    );
    Ok(0)
}

/// `husk pool` from the CLI: print errors, return the exit status.
pub fn main(args: &PoolArgs) -> i32 {
    match run(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("husk pool: {}", error_chain(&e));
            1
        }
    }
}
