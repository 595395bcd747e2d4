//! One pooled sandbox: a child `husk snapshot restore --skip-handshake` process (the one
//! restore path), the pool's own `Restored` handshake through its vsock socket, and its
//! destruction (process killed and reaped, sockets and files removed).

use std::ffi::OsString;
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
    /// The jail's `<id>` directory, when jailed (removed by the jailer).
    jail_dir: Option<PathBuf>,
}

impl Sandbox {
    /// Spawn `husk snapshot restore` for sandbox `id` and do the handshake within
    /// `cfg.restore_timeout`.
    pub fn restore(cfg: &PoolConfig, id: &str) -> Result<Self, PoolError> {
        let start = Instant::now();
        let (mut cmd, uds, jail_dir) = match &cfg.jail {
            None => {
                let uds = cfg.work_dir.join(format!("{id}.sock"));
                let mut cmd = Command::new(&cfg.husk_bin);
                cmd.args(restore_args(
                    &cfg.snapshot_path,
                    &cfg.mem_path,
                    &uds,
                    id,
                    cfg.no_seccomp,
                ));
                die_with_parent(&mut cmd, libc::SIGKILL);
                (cmd, uds, None)
            }
            Some(j) => {
                let name = cfg.husk_bin.file_name().unwrap_or_default();
                let id_dir = j.chroot_base.join(name).join(id);
                let uds = id_dir.join("root").join("v.sock");
                let mut cmd = Command::new(&j.jailer);
                cmd.args(["--id", id, "--exec-file"])
                    .arg(&cfg.husk_bin)
                    .args(["--uid", &j.uid.to_string(), "--gid", &j.gid.to_string()])
                    .arg("--chroot-base-dir")
                    .arg(&j.chroot_base)
                    .arg("--include")
                    .arg(&cfg.snapshot_path)
                    .arg("--include")
                    .arg(&cfg.mem_path);
                for c in &j.cgroups {
                    cmd.args(["--cgroup", c]);
                }
                cmd.args(["--parent-cgroup", &j.parent_cgroup]);
                // husk takes no subcommand after the jailer's `--id`: it serves the API
                // in the jail and the pool loads the snapshot through it, as a
                // Firecracker user does with a jailed VMM.
                cmd.args(["--", "--api-sock", "/api.sock"]);
                if cfg.no_seccomp {
                    cmd.arg("--no-seccomp");
                }
                // SIGTERM, not SIGKILL: the jailer forwards it to the VMM and removes the
                // jail and the cgroup before it exits.
                die_with_parent(&mut cmd, libc::SIGTERM);
                (cmd, uds, Some(id_dir))
            }
        };
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            // Its own process group: a terminal's Ctrl-C for the pool does not stop a
            // sandbox mid-invocation; the pool stops them itself.
            .process_group(0);
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
            jail_dir,
        };
        // On any failure below, `sb` is dropped: killed, reaped, files removed.
        if let Some(dir) = sb.jail_dir.clone() {
            sb.load_in_jail(cfg, &dir.join("root"), start + cfg.restore_timeout)?;
        }
        let mut client = sb.connect(start + cfg.restore_timeout)?;
        let restored = crate::commands::snapshot::fresh_restored(id.to_string());
        let hello = client
            .restored(restored, cfg.restore_timeout.max(Duration::from_secs(1)))
            .map_err(|e| PoolError::Handshake(id.to_string(), e))?;
        sb.hello = hello;
        sb.restore_time = start.elapsed();
        Ok(sb)
    }

    /// A jailed VMM: wait for its API socket, then `PUT /snapshot/load` with the paths
    /// inside the jail (the `--include`d files are at its root).
    fn load_in_jail(
        &mut self,
        cfg: &PoolConfig,
        root: &Path,
        end: Instant,
    ) -> Result<(), PoolError> {
        let api = root.join("api.sock");
        while !api.exists() {
            if let Some(st) = self.exited() {
                return Err(PoolError::RestoreExited(self.id.clone(), st));
            }
            if Instant::now() >= end {
                return Err(PoolError::JailLoad(
                    self.id.clone(),
                    format!("no API socket {} in time", api.display()),
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let inside = |p: &Path| Path::new("/").join(p.file_name().unwrap_or_default());
        let body = serde_json::json!({
            "snapshot_path": inside(&cfg.snapshot_path),
            "mem_backend": { "backend_type": "File", "backend_path": inside(&cfg.mem_path) },
            "vsock_override": { "uds_path": "/v.sock" },
            "resume_vm": true,
        })
        .to_string();
        crate::commands::snapshot::api_call(
            &api,
            "PUT /snapshot/load",
            "PUT",
            "/snapshot/load",
            &body,
        )
        .map_err(|e| PoolError::JailLoad(self.id.clone(), husk_agent::sync::error_chain(&e)))
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

    /// Whether the sandbox is on its way out, its exit status coming: its process is
    /// exiting (a killed VMM closes its sockets before the kernel has freed its memory
    /// and its KVM VM, which can take a while on a loaded host) or, jailed, the VMM
    /// under the jailer is exiting or gone (the jailer then removes the jail). False
    /// when /proc cannot tell.
    pub fn exiting(&self) -> bool {
        let pid = self.child.id();
        if process_exiting(pid) {
            return true;
        }
        if self.jail_dir.is_none() {
            return false;
        }
        match std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")) {
            Ok(kids) => {
                let kids: Vec<u32> = kids
                    .split_whitespace()
                    .filter_map(|k| k.parse().ok())
                    .collect();
                kids.is_empty() || kids.into_iter().any(process_exiting)
            }
            Err(_) => false,
        }
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

/// How long a jailer gets to stop its VMM and remove the jail after SIGTERM.
const JAIL_STOP: Duration = Duration::from_secs(10);

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Some(dir) = &self.jail_dir {
            // The jailer forwards SIGTERM to the VMM, then removes the jail root and the
            // cgroup; SIGKILL only if it does not finish in time.
            if self.child.try_wait().ok().flatten().is_none() {
                // SAFETY: kill(2) on our own child, not yet reaped.
                unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
                let end = Instant::now() + JAIL_STOP;
                while self.child.try_wait().ok().flatten().is_none() && Instant::now() < end {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
            if dir.exists() {
                log::warn!(
                    "pool: the jailer of sandbox {} left {}; removing it",
                    self.id,
                    dir.display()
                );
                let _ = std::fs::remove_dir_all(dir);
            }
            return;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        remove_files(&self.work_dir, &self.id);
    }
}

/// `PF_EXITING` in the flags field of /proc/<pid>/stat: the task is in exit(2).
const PF_EXITING: u64 = 0x4;

/// Whether process `pid` is exiting or a zombie (from /proc/<pid>/stat); false if it
/// cannot be read.
fn process_exiting(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| stat_says_exiting(&s))
        .unwrap_or(false)
}

/// Whether a /proc/<pid>/stat line says zombie or dead, or has `PF_EXITING`.
fn stat_says_exiting(stat: &str) -> bool {
    match husk_agent::reaper::stat_state_and_flags(stat) {
        Some((state, flags)) => matches!(state, 'Z' | 'X' | 'x') || flags & PF_EXITING != 0,
        None => false,
    }
}

/// `husk snapshot restore` flags of one pooled sandbox (paths as the VMM sees them).
fn restore_args(state: &Path, mem: &Path, uds: &Path, id: &str, no_seccomp: bool) -> Vec<OsString> {
    let mut a: Vec<OsString> = ["snapshot", "restore", "--skip-handshake", "--snapshot-path"]
        .iter()
        .map(OsString::from)
        .collect();
    a.push(state.into());
    a.push("--mem-file-path".into());
    a.push(mem.into());
    a.push("--vsock-uds".into());
    a.push(uds.into());
    for s in ["--sandbox-id", id, "--console", "null"] {
        a.push(s.into());
    }
    if no_seccomp {
        a.push("--no-seccomp".into());
    }
    a
}

/// Send the child of `cmd` `signal` when the thread that spawns it ends
/// (`PR_SET_PDEATHSIG`), even on SIGKILL of the pool.
pub(super) fn die_with_parent(cmd: &mut Command, signal: libc::c_int) {
    // SAFETY: the closure runs in the child between fork and exec and only calls
    // prctl(2), which is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, signal) != 0 {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_of_running_exiting_and_zombie_processes() {
        let running = "812 (husk) S 1 812 812 0 -1 4194560 3000 0 0 0 5 3 0 0 20 0 4 0";
        assert!(!stat_says_exiting(running));
        let exiting = "812 (husk) R 1 812 812 0 -1 4194564 3000 0 0 0 5 3 0 0 20 0 4 0";
        assert!(stat_says_exiting(exiting));
        let zombie = "812 (husk) Z 1 812 812 0 -1 4227076 3000 0 0 0 5 3 0 0 20 0 1 0";
        assert!(stat_says_exiting(zombie));
        // A command name with spaces and a ") Z" inside is not the state.
        let tricky = "9 (a) Z (b) S 1 9 9 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0";
        assert!(!stat_says_exiting(tricky));
        assert!(!stat_says_exiting("garbage"));
    }

    #[test]
    fn a_killed_child_reads_as_exiting_and_this_process_does_not() {
        assert!(!process_exiting(std::process::id()));
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        assert!(!process_exiting(child.id()));
        child.kill().unwrap();
        let end = Instant::now() + Duration::from_secs(10);
        while !process_exiting(child.id()) {
            assert!(
                Instant::now() < end,
                "the killed child never read as exiting"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        child.wait().unwrap();
        assert!(
            !process_exiting(child.id()),
            "a reaped pid reads as exiting"
        );
    }
}
