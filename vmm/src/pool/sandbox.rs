//! One pooled sandbox: a child `husk snapshot restore --skip-handshake` process (the one
//! restore path), the pool's own `Restored` handshake through its vsock socket, and its
//! destruction (process killed and reaped, sockets and files removed).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use husk_agent::client::{AgentClient, ClientConfig, ClientError};
use husk_agent::protocol::Hello;

use super::{PoolConfig, PoolError};

/// A restored sandbox that passed the `Restored` handshake.
pub struct Sandbox {
    /// The sandbox id sent in `Restored` (and echoed in the agent's Hello).
    pub id: String,
    /// The agent's Hello after `Restored` (restore generation >= 1).
    pub hello: Hello,
    /// The vsock Unix socket.
    pub uds: PathBuf,
    /// How long the restore took (spawn to the agent's Hello).
    pub restore_time: Duration,
    child: Child,
    work_dir: PathBuf,
}

impl Sandbox {
    /// Spawn `husk snapshot restore` for sandbox `id` and do the handshake within
    /// `cfg.restore_timeout`.
    pub fn restore(cfg: &PoolConfig, id: &str) -> Result<Self, PoolError> {
        let start = Instant::now();
        let uds = cfg.work_dir.join(format!("{id}.sock"));
        let mut cmd = Command::new(&cfg.husk_bin);
        cmd.args(["snapshot", "restore", "--skip-handshake", "--snapshot-path"])
            .arg(&cfg.snapshot_path)
            .arg("--mem-file-path")
            .arg(&cfg.mem_path)
            .arg("--vsock-uds")
            .arg(&uds)
            .args(["--sandbox-id", id, "--console", "null"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // Its own process group: a terminal's Ctrl-C for the pool does not stop a
            // sandbox mid-invocation; the pool stops them itself.
            .process_group(0);
        if cfg.no_seccomp {
            cmd.arg("--no-seccomp");
        }
        die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .map_err(|e| PoolError::Spawn(cfg.husk_bin.clone(), e))?;
        let mut sb = Self {
            id: id.to_string(),
            hello: Hello {
                protocol_version: 0,
                min_protocol_version: 0,
                features: 0,
                agent_version: String::new(),
                sandbox_id: String::new(),
                restore_generation: 0,
            },
            uds,
            restore_time: Duration::ZERO,
            child,
            work_dir: cfg.work_dir.clone(),
        };
        // On any failure below, `sb` is dropped: killed, reaped, files removed.
        let mut client = sb.connect(start + cfg.restore_timeout)?;
        let restored = crate::commands::snapshot::fresh_restored(id.to_string());
        let hello = client
            .restored(restored, cfg.restore_timeout.max(Duration::from_secs(1)))
            .map_err(|e| PoolError::Handshake(id.to_string(), e))?;
        sb.hello = hello;
        sb.restore_time = start.elapsed();
        Ok(sb)
    }

    /// Connect to the agent while the VMM comes up, failing early if it exits.
    fn connect(&mut self, end: Instant) -> Result<AgentClient, PoolError> {
        let mut cfg = ClientConfig::new(&self.uds);
        cfg.connect_timeout = Duration::from_secs(5);
        loop {
            if let Some(st) = self.exited() {
                return Err(PoolError::RestoreExited(self.id.clone(), st));
            }
            match AgentClient::connect(&cfg) {
                Ok(c) => return Ok(c),
                Err(
                    ClientError::SocketMissing(_)
                    | ClientError::Refused(_)
                    | ClientError::HandshakeClosed(_),
                ) if Instant::now() < end => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => return Err(PoolError::Handshake(self.id.clone(), e)),
            }
        }
    }

    /// The VMM's exit status if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The VMM's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A fresh connection to the agent (the handshake's connection is closed once the
    /// sandbox is ready: an idle connection could be closed by the agent's idle timeout
    /// while the sandbox waits in the pool).
    pub fn connect_agent(&self, timeout: Duration) -> Result<AgentClient, ClientError> {
        let mut cfg = ClientConfig::new(&self.uds);
        cfg.connect_timeout = timeout;
        AgentClient::connect(&cfg)
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        remove_files(&self.work_dir, &self.id);
    }
}

/// Make the child of `cmd` die with the thread that spawns it (`PR_SET_PDEATHSIG`),
/// even on SIGKILL of the pool.
pub(super) fn die_with_parent(cmd: &mut Command) {
    // SAFETY: the closure runs in the child between fork and exec and only calls
    // prctl(2), which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Remove every file of sandbox `id` in `dir` (its vsock socket `<id>.sock` and the
/// `<id>.sock_<port>` sockets of guest-initiated connections).
pub fn remove_files(dir: &Path, id: &str) {
    let prefix = format!("{id}.");
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}
