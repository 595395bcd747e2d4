//! "Boot, warm, snapshot first": turn a function (a packed initramfs) into the snapshot a
//! pool serves, through husk's own snapshot paths, never a second implementation:
//! - without a warm-up: `husk snapshot create --at-ready` (boot, wait for the agent's
//!   ready marker, pause, save, exit), the guest booted with `husk.await_restore=1` so
//!   every clone refuses invocations until the pool's `Restored`;
//! - with a warm-up payload: `husk run --api-sock` with `husk.reuse=1` (the restore gate
//!   would refuse the warm-up), one invocation that must answer ok, then
//!   [`crate::commands::snapshot::create_via_api`] (pause, save), then the VM is killed.
//!   The pool still sends each clone `Restored` before handing it out, and serves one
//!   invocation per clone.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use husk_agent::client::{AgentClient, ClientConfig};
use husk_agent::protocol::{Invoke, Status};

use super::sandbox::die_with_parent;
use super::PoolError;

/// What to boot and how.
#[derive(Debug, Clone)]
pub struct FunctionSpec {
    /// The husk binary.
    pub husk_bin: PathBuf,
    /// Guest kernel.
    pub kernel: PathBuf,
    /// The function's initramfs (`husk pack`).
    pub initrd: PathBuf,
    /// Guest memory, MiB.
    pub mem_mib: u64,
    /// `husk run --drive` values, passed as given.
    pub drives: Vec<String>,
    /// One invocation before the snapshot (must answer ok).
    pub warm_payload: Option<Vec<u8>>,
    /// Bound on the boot (and the warm-up).
    pub boot_timeout: Duration,
    /// Pass --no-seccomp (debugging only).
    pub no_seccomp: bool,
}

/// The snapshot files made from a function.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// State file.
    pub state: PathBuf,
    /// Memory file.
    pub mem: PathBuf,
    /// Spawn of the boot -> snapshot written.
    pub took: Duration,
}

/// The last bytes of a log file, for an error message.
fn tail(path: &Path) -> String {
    let mut s = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_string(&mut s);
    }
    let start = s.len().saturating_sub(2000);
    let start = (start..s.len())
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(s.len());
    s[start..].trim().to_string()
}

fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let end = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return Some(s),
            Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(20)),
            _ => return None,
        }
    }
}

/// Kills and reaps the boot VM on every path.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl FunctionSpec {
    /// `husk run` flags of the boot.
    fn run_flags(&self, uds: &Path, extra_cmdline: &str) -> Vec<std::ffi::OsString> {
        let mut a: Vec<std::ffi::OsString> = vec!["--kernel".into(), self.kernel.clone().into()];
        a.extend(["--initrd".into(), self.initrd.clone().into()]);
        a.extend(["--mem-mib".into(), self.mem_mib.to_string().into()]);
        a.extend(["--vsock-cid".into(), "3".into(), "--vsock-uds".into()]);
        a.push(uds.into());
        a.extend(["--entropy".into(), "--console".into(), "null".into()]);
        a.push("--boot-timeout-secs".into());
        a.push(self.boot_timeout.as_secs().max(1).to_string().into());
        for d in &self.drives {
            a.extend(["--drive".into(), d.into()]);
        }
        if self.no_seccomp {
            a.push("--no-seccomp".into());
        }
        a.push("--cmdline".into());
        a.push(format!("{} {extra_cmdline}", crate::builder::DEFAULT_CMDLINE).into());
        a
    }

    fn spawn(&self, cmd: &mut Command, log: &Path, what: &str) -> Result<Child, PoolError> {
        let log_file =
            std::fs::File::create(log).map_err(|e| PoolError::WorkDir(log.to_path_buf(), e))?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .process_group(0);
        die_with_parent(cmd, libc::SIGKILL);
        cmd.spawn()
            .map_err(|e| PoolError::Spawn(self.husk_bin.clone(), e))
            .inspect_err(|_| log::error!("pool: cannot start {what}"))
    }

    /// Boot, (warm,) snapshot into `dir` as `function.state` / `function.mem`.
    pub fn snapshot(&self, dir: &Path) -> Result<Prepared, PoolError> {
        let start = Instant::now();
        let state = dir.join("function.state");
        let mem = dir.join("function.mem");
        let uds = dir.join("function-boot.sock");
        let log = dir.join("function-boot.log");
        let _ = std::fs::remove_file(&uds);
        let result = match &self.warm_payload {
            None => self.at_ready(&state, &mem, &uds, &log),
            Some(p) => self.warmed(p, &state, &mem, &uds, &log),
        };
        let _ = std::fs::remove_file(&uds);
        if result.is_ok() {
            let _ = std::fs::remove_file(&log);
        } else {
            let _ = std::fs::remove_file(&state);
            let _ = std::fs::remove_file(&mem);
        }
        result.map(|()| Prepared {
            state,
            mem,
            took: start.elapsed(),
        })
    }

    fn failed(&self, what: String, log: &Path) -> PoolError {
        PoolError::Prepare(format!("{what}; its output:\n{}", tail(log)))
    }

    fn at_ready(&self, state: &Path, mem: &Path, uds: &Path, log: &Path) -> Result<(), PoolError> {
        let mut cmd = Command::new(&self.husk_bin);
        cmd.args(["snapshot", "create", "--at-ready", "--snapshot-path"])
            .arg(state)
            .arg("--mem-file-path")
            .arg(mem)
            .arg("--")
            .args(self.run_flags(uds, "husk.await_restore=1"));
        let mut child = Reaped(self.spawn(&mut cmd, log, "husk snapshot create --at-ready")?);
        let bound = self.boot_timeout + Duration::from_secs(60);
        match wait_exit(&mut child.0, bound) {
            Some(s) if s.success() => Ok(()),
            Some(s) => Err(self.failed(
                format!("husk snapshot create --at-ready exited with {s}"),
                log,
            )),
            None => Err(self.failed(
                format!("husk snapshot create --at-ready did not finish within {bound:?}"),
                log,
            )),
        }
    }

    fn warmed(
        &self,
        payload: &[u8],
        state: &Path,
        mem: &Path,
        uds: &Path,
        log: &Path,
    ) -> Result<(), PoolError> {
        let api = uds.with_extension("api");
        let _ = std::fs::remove_file(&api);
        let mut cmd = Command::new(&self.husk_bin);
        cmd.arg("run")
            .arg("--api-sock")
            .arg(&api)
            .args(self.run_flags(uds, "husk.reuse=1"));
        let mut vm = Reaped(self.spawn(&mut cmd, log, "husk run")?);
        let mut cfg = ClientConfig::new(uds);
        cfg.connect_timeout = Duration::from_secs(10);
        let warm = AgentClient::connect_with_retry(&cfg, self.boot_timeout)
            .and_then(|mut c| c.invoke(Invoke::new(1, 0, payload.to_vec()), self.boot_timeout));
        let r = match warm {
            Ok(r) => r,
            Err(e) => {
                let exited = vm.0.try_wait().ok().flatten();
                return Err(self.failed(
                    format!(
                        "the warm-up invocation failed: {} (husk run {})",
                        husk_agent::sync::error_chain(&e),
                        exited.map_or("still running".into(), |s| format!("exited with {s}"))
                    ),
                    log,
                ));
            }
        };
        if r.status != Status::Ok {
            return Err(self.failed(
                format!(
                    "the warm-up invocation ended with status {:?}, not ok (stderr: {})",
                    r.status,
                    String::from_utf8_lossy(&r.stderr_tail).trim()
                ),
                log,
            ));
        }
        let args = crate::commands::snapshot::CreateArgs {
            snapshot_path: state.to_path_buf(),
            mem_file_path: mem.to_path_buf(),
            api_sock: Some(api.clone()),
            resume: false,
            at_ready: false,
            run_args: Vec::new(),
        };
        let made = crate::commands::snapshot::create_via_api(&args, &api);
        drop(vm);
        let _ = std::fs::remove_file(&api);
        made.map_err(|e| {
            self.failed(
                format!(
                    "snapshotting the warmed sandbox failed: {}",
                    husk_agent::sync::error_chain(&e)
                ),
                log,
            )
        })
    }
}
