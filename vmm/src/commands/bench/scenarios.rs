//! The measurements behind each scenario: cold boots of husk with the function (ready
//! marker, first response, memory report), the invocation round trip in reuse mode, and
//! the peer pair (husk and QEMU microvm booting the same kernel and initramfs to the
//! init's first console line), and snapshots: create time and file sizes of a sandbox
//! snapshotted at ready, then restores, each a fresh `husk snapshot restore` process
//! with its own vsock socket and the `Restored` handshake.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use husk_agent::client::{AgentClient, ClientConfig, ClientError};
use husk_agent::protocol::{Invoke, Status};
use husk_agent::sync::error_chain;

use super::proc::Guest;

/// How long a VMM gets to exit after its guest was told to stop.
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one invocation may take.
const INVOKE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the agent may take to accept a connection after its ready marker.
const CONNECT_AFTER_READY: Duration = Duration::from_secs(10);
/// How long husk's stderr lines (ready, memory) may lag behind the first response.
const LINE_LAG: Duration = Duration::from_secs(10);

/// A measurement that did not work; the text goes into the report.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The VMM could not be started.
    #[error("cannot start {what}")]
    Spawn {
        /// Which VMM.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// An expected output line never came.
    #[error("{what} within {timeout:?}; last output:\n{transcript}")]
    NoLine {
        /// What was awaited.
        what: String,
        /// How long.
        timeout: Duration,
        /// The VMM's last lines.
        transcript: String,
    },
    /// Talking to the agent failed.
    #[error("{what}: {}; last output:\n{transcript}", error_chain(source))]
    Client {
        /// The step.
        what: &'static str,
        /// The client error.
        source: ClientError,
        /// The VMM's last lines.
        transcript: String,
    },
    /// The function did not answer Ok.
    #[error(
        "the invocation ended with status {0:?}, not Ok (does the function accept the --payload?)"
    )]
    NotOk(Status),
    /// The VMM did not stop cleanly.
    #[error("{what}; last output:\n{transcript}")]
    Exit {
        /// What went wrong.
        what: String,
        /// The VMM's last lines.
        transcript: String,
    },
}

/// What the husk scenarios run.
#[derive(Debug, Clone)]
pub struct HuskPlan {
    /// The husk binary (this one, normally).
    pub husk: PathBuf,
    /// Guest kernel.
    pub kernel: PathBuf,
    /// The function's initramfs (`None`: it boots from `drive`).
    pub initrd: Option<PathBuf>,
    /// A `husk run --drive` spec every boot gets (a root filesystem image).
    pub drive: Option<String>,
    /// Guest memory.
    pub mem_mib: u64,
    /// Invocation payload.
    pub payload: Vec<u8>,
    /// Bound on one boot.
    pub boot_timeout: Duration,
    /// Scratch directory for sockets.
    pub dir: PathBuf,
}

/// One cold boot's figures.
#[derive(Debug, Clone, Copy)]
pub struct ColdBoot {
    /// husk's own figure: VMM start -> the agent's ready marker, ms.
    pub ready_ms: f64,
    /// Spawn -> the first invocation's result, ms.
    pub first_response_ms: f64,
    /// VMM RSS minus guest RAM resident at ready, KiB.
    pub overhead_kib: f64,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `guest ready after 1717.818 ms` -> 1717.818.
pub fn parse_ready_ms(line: &str) -> Option<f64> {
    let rest = line.split("guest ready after ").nth(1)?;
    rest.strip_suffix(" ms")?.trim().parse().ok()
}

/// `memory at ready: ..., VMM overhead 2132 KiB` -> 2132.
pub fn parse_overhead_kib(line: &str) -> Option<f64> {
    let rest = line.split("VMM overhead ").nth(1)?;
    rest.strip_suffix(" KiB")?.trim().parse().ok()
}

impl HuskPlan {
    fn spawn(
        &self,
        uds: &Path,
        extra_cmdline: &str,
        api: Option<&Path>,
    ) -> Result<Guest, ScenarioError> {
        let _ = std::fs::remove_file(uds);
        let mut cmd = Command::new(&self.husk);
        cmd.arg("run");
        if let Some(api) = api {
            let _ = std::fs::remove_file(api);
            cmd.arg("--api-sock").arg(api);
        }
        cmd.arg("--kernel").arg(&self.kernel);
        if let Some(initrd) = &self.initrd {
            cmd.arg("--initrd").arg(initrd);
        }
        if let Some(drive) = &self.drive {
            cmd.arg("--drive").arg(drive);
        }
        cmd.arg("--mem-mib")
            .arg(self.mem_mib.to_string())
            .args(["--vsock-cid", "3", "--vsock-uds"])
            .arg(uds)
            .args(["--entropy", "--boot-timer", "--boot-timeout-secs"])
            .arg(self.boot_timeout.as_secs().max(1).to_string())
            .arg("--cmdline")
            .arg(format!(
                "{} {extra_cmdline}",
                crate::builder::DEFAULT_CMDLINE
            ));
        Guest::spawn(cmd).map_err(|source| ScenarioError::Spawn {
            what: format!("{}", self.husk.display()),
            source,
        })
    }

    fn client_cfg(uds: &Path) -> ClientConfig {
        let mut cfg = ClientConfig::new(uds);
        cfg.connect_timeout = Duration::from_secs(10);
        cfg
    }

    /// Wait for husk's ready line (the agent writes the marker once it listens), then
    /// connect. Waiting for the line instead of polling the socket keeps the host from
    /// probing the guest's vsock every few ms while it boots, which would be part of
    /// what is measured.
    fn connect_when_ready(&self, g: &mut Guest, uds: &Path) -> Result<AgentClient, ScenarioError> {
        if g.wait_line(|l| parse_ready_ms(l).is_some(), self.boot_timeout)
            .is_none()
        {
            return Err(ScenarioError::NoLine {
                what: "husk printed no ready marker line (husk: guest ready after ...)".into(),
                timeout: self.boot_timeout,
                transcript: g.transcript(),
            });
        }
        AgentClient::connect_with_retry(&Self::client_cfg(uds), CONNECT_AFTER_READY).map_err(
            |source| ScenarioError::Client {
                what: "reaching the agent after its ready marker",
                source,
                transcript: g.transcript(),
            },
        )
    }

    /// Ask the agent to reboot the guest and wait for husk to exit 0.
    fn stop(g: &mut Guest, uds: &Path) -> Result<(), ScenarioError> {
        let client_err = |g: &mut Guest, source| ScenarioError::Client {
            what: "stopping the sandbox",
            source,
            transcript: g.transcript(),
        };
        let mut c = match AgentClient::connect(&Self::client_cfg(uds)) {
            Ok(c) => c,
            Err(e) => return Err(client_err(g, e)),
        };
        if let Err(e) = c.shutdown() {
            return Err(client_err(g, e));
        }
        match g.wait_exit(EXIT_TIMEOUT) {
            Some(s) if s.success() => Ok(()),
            other => Err(ScenarioError::Exit {
                what: match other {
                    Some(s) => format!("husk exited with {s} after the guest rebooted"),
                    None => format!("husk did not exit within {EXIT_TIMEOUT:?} of the reboot"),
                },
                transcript: g.transcript(),
            }),
        }
    }

    /// One cold boot: spawn husk, connect once it reports the agent ready, invoke once,
    /// read husk's ready and memory lines, stop the guest.
    pub fn cold_boot(&self, run: u32) -> Result<ColdBoot, ScenarioError> {
        let uds = self.dir.join(format!("cold-{run}.sock"));
        let mut g = self.spawn(&uds, "", None)?;
        let started = g.started();
        let mut c = self.connect_when_ready(&mut g, &uds)?;
        let r = c.invoke(Invoke::new(1, 10_000, self.payload.clone()), INVOKE_TIMEOUT);
        let first_response = started.elapsed();
        drop(c);
        let r = r.map_err(|source| ScenarioError::Client {
            what: "the first invocation",
            source,
            transcript: g.transcript(),
        })?;
        if r.status != Status::Ok {
            return Err(ScenarioError::NotOk(r.status));
        }
        let line = |g: &mut Guest, what: &str, parse: fn(&str) -> Option<f64>| {
            g.wait_line(|l| parse(l).is_some(), LINE_LAG)
                .and_then(|(_, l)| parse(&l))
                .ok_or_else(|| ScenarioError::NoLine {
                    what: format!("husk printed no {what}"),
                    timeout: LINE_LAG,
                    transcript: g.transcript(),
                })
        };
        let ready_ms = line(
            &mut g,
            "ready marker line (husk: guest ready after ...)",
            parse_ready_ms,
        )?;
        let overhead_kib = line(&mut g, "memory report at ready", |l| {
            if l.contains("memory at ready") {
                parse_overhead_kib(l)
            } else {
                None
            }
        })?;
        Self::stop(&mut g, &uds)?;
        let _ = std::fs::remove_file(&uds);
        Ok(ColdBoot {
            ready_ms,
            first_response_ms: ms(first_response),
            overhead_kib,
        })
    }

    /// Boot once in reuse mode and time `n` invocations on one connection, calling
    /// `progress` after each.
    pub fn round_trips(
        &self,
        n: u32,
        mut progress: impl FnMut(u32),
    ) -> Result<Vec<f64>, ScenarioError> {
        let uds = self.dir.join("reuse.sock");
        let mut g = self.spawn(&uds, "husk.reuse=1", None)?;
        let client_err = |g: &mut Guest, what, source| ScenarioError::Client {
            what,
            source,
            transcript: g.transcript(),
        };
        let mut c = self.connect_when_ready(&mut g, &uds)?;
        let mut rtts = Vec::with_capacity(n as usize);
        for i in 0..n {
            let inv = Invoke::new(u64::from(i) + 1, 10_000, self.payload.clone());
            let t = Instant::now();
            let r = c
                .invoke(inv, INVOKE_TIMEOUT)
                .map_err(|e| client_err(&mut g, "an invocation in reuse mode", e))?;
            rtts.push(ms(t.elapsed()));
            if r.status != Status::Ok {
                return Err(ScenarioError::NotOk(r.status));
            }
            progress(i + 1);
        }
        drop(c);
        Self::stop(&mut g, &uds)?;
        let _ = std::fs::remove_file(&uds);
        Ok(rtts)
    }
}

/// A snapshot on disk: the state file and the memory file.
#[derive(Debug, Clone)]
pub struct SnapshotFiles {
    /// The state file.
    pub state: PathBuf,
    /// The memory file.
    pub mem: PathBuf,
}

/// One `husk snapshot create`'s figures.
#[derive(Debug, Clone, Copy)]
pub struct Created {
    /// Spawn of `husk snapshot create --api-sock --resume` -> its "snapshot written" line
    /// (pause, state and memory files written and fsynced, resume), ms.
    pub create_ms: f64,
    /// State file size, bytes.
    pub state_bytes: f64,
    /// Memory file apparent size (guest RAM), bytes.
    pub mem_apparent_bytes: f64,
    /// Memory file blocks allocated on disk, bytes.
    pub mem_allocated_bytes: f64,
}

/// One restore's figures.
#[derive(Debug, Clone, Copy)]
pub struct Restore {
    /// Spawn of `husk snapshot restore` -> the agent acknowledged `Restored`, ms.
    pub ready_ms: f64,
    /// Spawn of `husk snapshot restore` -> the first invocation's result, ms.
    pub first_response_ms: f64,
}

/// `husk: snapshot written in 12 ms: ...`
const CREATED_LINE: &str = "snapshot written in ";
/// `husk: agent restored (generation 1) 5120 us after the restore began`
const RESTORED_LINE: &str = "agent restored (generation";

impl HuskPlan {
    /// Boot the function with the API socket and `husk.await_restore=1` (as a platform
    /// boots what it will snapshot: clones refuse invocations until their `Restored`),
    /// wait for the agent's ready marker (the function is loaded and initialised), then
    /// take `n` snapshots through `husk snapshot create --api-sock --resume`, timing
    /// each and measuring its files. Keeps the last snapshot for the restores (the
    /// others are deleted); the sandbox is killed afterwards.
    pub fn snapshots(
        &self,
        n: u32,
        mut progress: impl FnMut(u32, &Created),
    ) -> Result<(Vec<Created>, SnapshotFiles), ScenarioError> {
        let (uds, api) = (self.dir.join("snap.sock"), self.dir.join("snap.api"));
        let mut g = self.spawn(&uds, "husk.await_restore=1", Some(&api))?;
        if g.wait_line(|l| parse_ready_ms(l).is_some(), self.boot_timeout)
            .is_none()
        {
            return Err(ScenarioError::NoLine {
                what: "husk printed no ready marker line (husk: guest ready after ...)".into(),
                timeout: self.boot_timeout,
                transcript: g.transcript(),
            });
        }
        let mut created = Vec::with_capacity(n as usize);
        let mut last = None;
        for i in 1..=n {
            let files = SnapshotFiles {
                state: self.dir.join(format!("snap-{i}.state")),
                mem: self.dir.join(format!("snap-{i}.mem")),
            };
            let mut cmd = Command::new(&self.husk);
            cmd.args(["snapshot", "create", "--resume", "--api-sock"])
                .arg(&api)
                .arg("--snapshot-path")
                .arg(&files.state)
                .arg("--mem-file-path")
                .arg(&files.mem);
            let mut c = Guest::spawn(cmd).map_err(|source| ScenarioError::Spawn {
                what: format!("{} snapshot create", self.husk.display()),
                source,
            })?;
            let at = c.wait_line(|l| l.contains(CREATED_LINE), EXIT_TIMEOUT);
            let status = c.wait_exit(EXIT_TIMEOUT);
            let (Some((at, _)), Some(_)) = (at, status.filter(|s| s.success())) else {
                return Err(ScenarioError::Exit {
                    what: format!("husk snapshot create failed (exit {status:?})"),
                    transcript: format!(
                        "{}\n--- the sandbox ---\n{}",
                        c.transcript(),
                        g.transcript()
                    ),
                });
            };
            let meta = |p: &Path| {
                std::fs::metadata(p).map_err(|e| ScenarioError::Exit {
                    what: format!("cannot stat {}: {e}", p.display()),
                    transcript: String::new(),
                })
            };
            let (sm, mm) = (meta(&files.state)?, meta(&files.mem)?);
            let c = Created {
                create_ms: ms(at),
                state_bytes: sm.len() as f64,
                mem_apparent_bytes: mm.len() as f64,
                mem_allocated_bytes: (mm.blocks() * 512) as f64,
            };
            progress(i, &c);
            created.push(c);
            if let Some(old) = last.replace(files) {
                remove_snapshot(&old);
            }
        }
        drop(g);
        let _ = std::fs::remove_file(&uds);
        let _ = std::fs::remove_file(&api);
        let files = last.ok_or_else(|| ScenarioError::Exit {
            what: "no snapshot was taken (0 runs)".into(),
            transcript: String::new(),
        })?;
        Ok((created, files))
    }

    /// One restore: a fresh `husk snapshot restore` process with its own vsock socket
    /// and sandbox id; husk sends the agent `Restored` (fresh entropy, clock, id) as every
    /// restore does; once the agent acknowledged it, connect and invoke once. The clone
    /// is killed afterwards.
    pub fn restore(&self, snap: &SnapshotFiles, run: u32) -> Result<Restore, ScenarioError> {
        let uds = self.dir.join(format!("restore-{run}.sock"));
        let _ = std::fs::remove_file(&uds);
        let mut cmd = Command::new(&self.husk);
        cmd.args(["snapshot", "restore", "--boot-timer", "--snapshot-path"])
            .arg(&snap.state)
            .arg("--mem-file-path")
            .arg(&snap.mem)
            .arg("--vsock-uds")
            .arg(&uds)
            .args(["--sandbox-id", &format!("bench-{run}"), "--console", "null"]);
        let mut g = Guest::spawn(cmd).map_err(|source| ScenarioError::Spawn {
            what: format!("{} snapshot restore", self.husk.display()),
            source,
        })?;
        let started = g.started();
        let Some((ready, _)) = g.wait_line(|l| l.contains(RESTORED_LINE), self.boot_timeout) else {
            return Err(ScenarioError::NoLine {
                what: "husk snapshot restore printed no handshake line (husk: agent restored ...)"
                    .into(),
                timeout: self.boot_timeout,
                transcript: g.transcript(),
            });
        };
        let mut c = AgentClient::connect_with_retry(&Self::client_cfg(&uds), CONNECT_AFTER_READY)
            .map_err(|source| ScenarioError::Client {
            what: "reaching the restored agent",
            source,
            transcript: g.transcript(),
        })?;
        let r = c.invoke(Invoke::new(1, 10_000, self.payload.clone()), INVOKE_TIMEOUT);
        let first = started.elapsed();
        drop(c);
        let r = r.map_err(|source| ScenarioError::Client {
            what: "the first invocation after the restore",
            source,
            transcript: g.transcript(),
        })?;
        if r.status != Status::Ok {
            return Err(ScenarioError::NotOk(r.status));
        }
        drop(g);
        let _ = std::fs::remove_file(&uds);
        Ok(Restore {
            ready_ms: ms(ready),
            first_response_ms: ms(first),
        })
    }
}

/// Delete a snapshot's files.
pub fn remove_snapshot(s: &SnapshotFiles) {
    let _ = std::fs::remove_file(&s.state);
    let _ = std::fs::remove_file(&s.mem);
}

/// The peer pair: the same kernel and initramfs under husk and under QEMU microvm.
#[derive(Debug, Clone)]
pub struct PeerPlan {
    /// The husk binary.
    pub husk: PathBuf,
    /// QEMU, when found.
    pub qemu: Option<PathBuf>,
    /// Guest kernel.
    pub kernel: PathBuf,
    /// An initramfs whose init prints a console line (then reboots, ideally).
    pub initrd: PathBuf,
    /// The line to wait for (a substring); `None`: the first console line.
    pub marker: Option<String>,
    /// Guest memory.
    pub mem_mib: u64,
    /// Bound on one boot.
    pub boot_timeout: Duration,
}

/// QEMU microvm's flags for the peer boot, as `tests/tests/peer_boot.rs` uses them:
/// microvm without ACPI (so QEMU puts the virtio-mmio devices on the command line),
/// the host CPU without XSAVE, one vCPU, serial console on stdio, no reboot.
pub fn qemu_args(kernel: &Path, initrd: &Path, mem_mib: u64) -> Vec<String> {
    let mut a: Vec<String> = [
        "-enable-kvm",
        "-M",
        "microvm,acpi=off",
        "-cpu",
        "host,-xsave",
        "-m",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.push(mem_mib.to_string());
    for s in [
        "-smp",
        "1",
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-no-reboot",
        "-monitor",
        "none",
        "-serial",
        "stdio",
        "-kernel",
    ] {
        a.push(s.into());
    }
    a.push(kernel.display().to_string());
    a.push("-initrd".into());
    a.push(initrd.display().to_string());
    a.push("-append".into());
    a.push("console=ttyS0 reboot=t quiet panic=-1".into());
    a
}

impl PeerPlan {
    fn matches(&self, line: &str) -> bool {
        match &self.marker {
            Some(m) => line.contains(m.as_str()),
            // husk's own stderr lines start with "husk:"; the guest's console is the rest.
            None => !line.trim().is_empty() && !line.starts_with("husk:") && !line.starts_with('['),
        }
    }

    fn boot(&self, vmm: &str, cmd: Command) -> Result<f64, ScenarioError> {
        let mut g = Guest::spawn(cmd).map_err(|source| ScenarioError::Spawn {
            what: vmm.into(),
            source,
        })?;
        let (at, _) = g
            .wait_line(|l| self.matches(l), self.boot_timeout)
            .ok_or_else(|| ScenarioError::NoLine {
                what: format!("{vmm}: no init console line"),
                timeout: self.boot_timeout,
                transcript: g.transcript(),
            })?;
        // The init reboots; either way the VMM is killed when `g` drops.
        let _ = g.wait_exit(EXIT_TIMEOUT);
        Ok(ms(at))
    }

    /// husk start -> the init's console line.
    pub fn husk_boot(&self) -> Result<f64, ScenarioError> {
        let mut cmd = Command::new(&self.husk);
        cmd.arg("run")
            .arg("--kernel")
            .arg(&self.kernel)
            .arg("--initrd")
            .arg(&self.initrd)
            .arg("--mem-mib")
            .arg(self.mem_mib.to_string());
        self.boot("husk", cmd)
    }

    /// QEMU start -> the init's console line.
    pub fn qemu_boot(&self, qemu: &Path) -> Result<f64, ScenarioError> {
        let mut cmd = Command::new(qemu);
        cmd.args(qemu_args(&self.kernel, &self.initrd, self.mem_mib));
        self.boot("QEMU microvm", cmd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn husk_lines_parse() {
        assert_eq!(
            parse_ready_ms("husk: guest ready after 1717.818 ms"),
            Some(1717.818)
        );
        assert_eq!(parse_ready_ms("guest ready after soon"), None);
        assert_eq!(
            parse_overhead_kib("husk: memory at ready: VMM RSS 31852 KiB, guest RAM resident 29720 KiB, VMM overhead 2132 KiB"),
            Some(2132.0)
        );
        assert_eq!(parse_overhead_kib("VMM overhead lots"), None);
    }

    #[test]
    fn qemu_peer_uses_microvm_without_acpi() {
        let a = qemu_args(Path::new("/k"), Path::new("/i.cpio"), 256).join(" ");
        assert!(a.contains("-M microvm,acpi=off"), "{a}");
        assert!(a.contains("-m 256 "), "{a}");
        assert!(a.contains("-kernel /k -initrd /i.cpio"), "{a}");
        assert!(a.contains("-no-reboot"), "{a}");
    }

    #[test]
    fn peer_line_matching() {
        let mut p = PeerPlan {
            husk: "/h".into(),
            qemu: None,
            kernel: "/k".into(),
            initrd: "/i".into(),
            marker: None,
            mem_mib: 128,
            boot_timeout: Duration::from_secs(1),
        };
        assert!(p.matches("HUSK-TEST-INIT: hello"));
        assert!(!p.matches("husk: guest ready after 3 ms"));
        assert!(!p.matches("[WARN vmm] something"));
        assert!(!p.matches("  "));
        p.marker = Some("hello from".into());
        assert!(!p.matches("other line"));
        assert!(p.matches("init: hello from the guest"));
    }
}
