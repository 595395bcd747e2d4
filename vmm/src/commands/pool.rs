//! `husk pool`: keep `--size` sandboxes restored from a snapshot and serve invocations
//! on a Unix socket with the agent protocol, one fresh sandbox per invocation (see
//! [`crate::pool`]). Given `--function` instead of `--snapshot`, it first boots the
//! function, optionally warms it with one invocation, and snapshots it into the work
//! directory ([`crate::pool::prepare`]); those files go at exit unless `--keep-snapshot`. SIGTERM/SIGINT: stop accepting, finish in-flight invocations,
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

use crate::pool::prepare::FunctionSpec;
use crate::pool::server::{serve, ServeOptions};
use crate::pool::{JailOptions, Pool, PoolConfig, PoolOptions};

/// `husk pool` flags.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["snapshot", "function"])))]
pub struct PoolArgs {
    /// The snapshot state file (`husk snapshot create`).
    #[arg(long, requires = "mem")]
    pub snapshot: Option<PathBuf>,
    /// The snapshot memory file.
    #[arg(long, requires = "snapshot")]
    pub mem: Option<PathBuf>,
    /// Instead of a snapshot: a function's initramfs (`husk pack`) to boot, warm (with
    /// --warm-payload) and snapshot into the work directory first.
    #[arg(long, requires = "kernel", conflicts_with = "snapshot")]
    pub function: Option<PathBuf>,
    /// Guest kernel for --function.
    #[arg(long, requires = "function")]
    pub kernel: Option<PathBuf>,
    /// Guest memory in MiB for --function.
    #[arg(long, default_value_t = 128, requires = "function")]
    pub mem_mib: u64,
    /// A `husk run --drive` for --function (repeatable; passed to husk run as given).
    #[arg(long = "drive", requires = "function")]
    pub drives: Vec<String>,
    /// With --function: one invocation with this payload before the snapshot (it must
    /// answer ok); the guest then boots with husk.reuse=1 instead of husk.await_restore=1.
    #[arg(long, requires = "function")]
    pub warm_payload: Option<String>,
    /// With --function: keep the snapshot files (and the work directory) at exit.
    #[arg(long, requires = "function")]
    pub keep_snapshot: bool,
    /// With --function: bound on the boot and the warm-up, in seconds.
    #[arg(long, default_value_t = 120, requires = "function")]
    pub boot_timeout_secs: u64,
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
    /// Run every sandbox under this husk-jailer (as root): its own jail root and
    /// cgroup, removed when the sandbox is destroyed. The husk binary must be static.
    #[arg(long, value_name = "HUSK_JAILER")]
    pub jailer: Option<PathBuf>,
    /// Uid the jailed VMMs run as.
    #[arg(long, default_value_t = 10123, requires = "jailer")]
    pub jail_uid: u32,
    /// Gid the jailed VMMs run as.
    #[arg(long, default_value_t = 10123, requires = "jailer")]
    pub jail_gid: u32,
    /// Where the jails go (--chroot-base-dir; default: <work dir>/jails).
    #[arg(long, requires = "jailer")]
    pub jail_base_dir: Option<PathBuf>,
    /// A cgroup setting for every jailed sandbox, CTRL.FILE=VALUE (repeatable; each
    /// sandbox gets its own cgroup with or without one).
    #[arg(long = "jail-cgroup", requires = "jailer")]
    pub jail_cgroups: Vec<String>,
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
    /// Inconsistent flags.
    #[error("{0}")]
    Usage(&'static str),
}

struct Cleanup {
    socket: PathBuf,
    status: Option<PathBuf>,
    work_dir: Option<PathBuf>,
    /// Snapshot files the pool made itself (--function without --keep-snapshot).
    snapshot: Option<(PathBuf, PathBuf)>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
        if let Some((s, m)) = &self.snapshot {
            let _ = std::fs::remove_file(s);
            let _ = std::fs::remove_file(m);
        }
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
    for p in [&args.snapshot, &args.mem, &args.function, &args.kernel]
        .into_iter()
        .flatten()
    {
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
        snapshot: None,
    };
    let (snapshot_path, mem_path) = match (&args.snapshot, &args.mem, &args.function) {
        (Some(s), Some(m), _) => (s.clone(), m.clone()),
        (_, _, Some(f)) => {
            let spec = FunctionSpec {
                husk_bin: husk_bin.clone(),
                kernel: args.kernel.clone().unwrap_or_default(),
                initrd: f.clone(),
                mem_mib: args.mem_mib,
                drives: args.drives.clone(),
                warm_payload: args.warm_payload.clone().map(String::into_bytes),
                boot_timeout: Duration::from_secs(args.boot_timeout_secs),
                no_seccomp: args.no_seccomp,
            };
            eprintln!(
                "husk pool: booting {}{} and snapshotting it into {}",
                f.display(),
                if spec.warm_payload.is_some() {
                    ", warming it with one invocation,"
                } else {
                    " to its ready marker"
                },
                work_dir.display()
            );
            let p = spec.snapshot(&work_dir)?;
            eprintln!(
                "husk pool: snapshot made in {} ms: {} and {}",
                p.took.as_millis(),
                p.state.display(),
                p.mem.display()
            );
            if args.keep_snapshot {
                cleanup.work_dir = None;
            } else {
                cleanup.snapshot = Some((p.state.clone(), p.mem.clone()));
            }
            (p.state, p.mem)
        }
        _ => {
            return Err(PoolCliError::Usage(
                "give --snapshot with --mem, or --function with --kernel",
            ))
        }
    };
    let listener = std::os::unix::net::UnixListener::bind(&args.socket)
        .map_err(|e| PoolCliError::Bind(args.socket.clone(), e))?;
    let stop =
        EventFd::new(EFD_NONBLOCK).map_err(|e| PoolCliError::Setup("create an eventfd", e))?;
    crate::signals::install_term_handlers(&stop)
        .map_err(|e| PoolCliError::Setup("install the SIGTERM/SIGINT handlers", e))?;
    let jail = match &args.jailer {
        None => None,
        Some(j) => {
            std::fs::metadata(j).map_err(|e| PoolCliError::Snapshot(j.clone(), e))?;
            let base = args
                .jail_base_dir
                .clone()
                .unwrap_or_else(|| work_dir.join("jails"));
            std::fs::create_dir_all(&base)
                .map_err(|e| crate::pool::PoolError::WorkDir(base.clone(), e))?;
            Some(JailOptions {
                jailer: j.clone(),
                uid: args.jail_uid,
                gid: args.jail_gid,
                chroot_base: base,
                cgroups: args.jail_cgroups.clone(),
                parent_cgroup: format!("husk-pool-{}", std::process::id()),
            })
        }
    };
    let jail_parent = jail.as_ref().map(|j| j.parent_cgroup.clone());
    let cfg = PoolConfig {
        jail,
        snapshot_path: snapshot_path.clone(),
        mem_path: mem_path.clone(),
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
        snapshot_path.display()
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
    let mut drain_announced = false;
    serve(&listener, &pool, &opts, stop.as_raw_fd(), || {
        pool.reap_dead();
        let st = pool.status();
        // Status file first: a caller that saw the ready line then finds it current.
        if let Some(p) = &args.status_file {
            let json = serde_json::to_string(&st).unwrap_or_default();
            if json != last {
                write_status(p, &json);
                last = json;
            }
        }
        if !announced && st.ready >= st.size {
            announced = true;
            eprintln!("husk pool: {} sandbox(es) ready", st.ready);
        }
        if st.draining && !drain_announced {
            drain_announced = true;
            eprintln!(
                "husk pool: draining: no new callers; {} busy sandbox(es) finishing",
                st.busy
            );
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
    if let Some(j) = &jail_parent {
        crate::pool::remove_parent_cgroup(j);
    }
    if args.jailer.is_some() && args.jail_base_dir.is_none() {
        // Each jailer removed its jail; the base directory goes if nothing else is in it.
        let _ = std::fs::remove_dir(work_dir.join("jails"));
    }
    if !created {
        // A work directory the user gave is kept; the sandboxes removed their files.
        cleanup.work_dir = None;
    }
    let kept = cleanup.snapshot.is_none() && args.function.is_some();
    drop(cleanup);
    if kept {
        eprintln!(
            "husk pool: kept the snapshot: {} and {}",
            snapshot_path.display(),
            mem_path.display()
        );
    }
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn parse(s: &str) -> Result<PoolArgs, clap::Error> {
        let argv: Vec<&str> = s.split_whitespace().collect();
        match Cli::try_parse_from(argv)?.command {
            Some(Command::Pool(p)) => Ok(p),
            other => panic!("expected pool, got {other:?}"),
        }
    }

    #[test]
    fn a_snapshot_or_a_function_is_required_not_both() {
        let p = parse("husk pool --snapshot /s --mem /m --socket /p.sock").unwrap();
        assert_eq!(p.snapshot.as_deref(), Some(Path::new("/s")));
        assert!(p.function.is_none() && !p.keep_snapshot);
        let p = parse(
            "husk pool --function /f.cpio --kernel /k --warm-payload tick --drive path=/r.ext4,root,ro --keep-snapshot --socket /p.sock",
        )
        .unwrap();
        assert_eq!(
            (p.function.as_deref(), p.kernel.as_deref()),
            (Some(Path::new("/f.cpio")), Some(Path::new("/k")))
        );
        assert_eq!(p.warm_payload.as_deref(), Some("tick"));
        assert_eq!(p.drives, ["path=/r.ext4,root,ro"]);
        assert!(p.keep_snapshot);
        for bad in [
            "husk pool --socket /p.sock",
            "husk pool --snapshot /s --socket /p.sock",
            "husk pool --function /f --socket /p.sock",
            "husk pool --function /f --kernel /k --snapshot /s --mem /m --socket /p.sock",
            "husk pool --snapshot /s --mem /m --warm-payload x --socket /p.sock",
            "husk pool --snapshot /s --mem /m --keep-snapshot --socket /p.sock",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_function_that_cannot_boot_is_a_clear_error_and_leaves_no_files() {
        let dir = std::env::temp_dir().join(format!("husk-pool-prep-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // `false` stands in for husk: the snapshot command exits 1 at once.
        let spec = FunctionSpec {
            husk_bin: "/bin/false".into(),
            kernel: "/k".into(),
            initrd: "/f.cpio".into(),
            mem_mib: 128,
            drives: vec![],
            warm_payload: None,
            boot_timeout: Duration::from_secs(1),
            no_seccomp: false,
        };
        let e = spec.snapshot(&dir).unwrap_err();
        let msg = error_chain(&e);
        assert!(
            msg.contains("cannot make the pool's snapshot")
                && msg.contains("--at-ready exited with exit status: 1"),
            "{msg}"
        );
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
        assert!(
            left.iter().all(|e| e.file_name() == "function-boot.log"),
            "{left:?}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
