//! `husk bench`: cold-start figures for one function on this machine, next to a peer
//! (QEMU microvm) booting the same kernel and initramfs in the same run.
//!
//! Every figure is a [`ScenarioId`]; each is measured, skipped with a reason (a feature
//! not in this build, no QEMU) or failed with the error: numbers are never made up. A
//! new figure (snapshot, restore, pool) plugs in as a variant here, its measurement in
//! [`scenarios`], and its arm in [`run_scenarios`]. Figures are summarized by
//! [`stats`] (nearest-rank percentiles), printed by [`report`] as a table or JSON
//! (schema `husk-bench/2`), and drawn by [`plot`]. The pool figure ([`pool`]) is one
//! scenario per `--pool-rate`, all with the id `pool_invoke_latency`.

pub mod env;
pub mod plot;
pub mod pool;
mod proc;
pub mod report;
pub mod scenarios;
pub mod stats;

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use husk_agent::config::Mode;
use husk_agent::pack::{pack, PackSpec};
use husk_agent::sync::error_chain;

use report::{Report, RunConfig, Scenario};
use scenarios::{HuskPlan, PeerPlan, ScenarioError};

/// Exit status: every scenario was measured or skipped with a reason.
pub const EXIT_OK: i32 = 0;
/// Exit status: a scenario failed (the report says which), or the plot failed.
pub const EXIT_FAILED: i32 = 1;
/// Exit status: usage error.
pub const EXIT_USAGE: i32 = 2;

const AFTER_HELP: &str = "\
Scenarios (JSON id): boot_to_ready, boot_to_first_response, invoke_round_trip,
vmm_memory_overhead, boot_to_init_line and peer_qemu_boot_to_init_line (with
--peer-initrd), snapshot_create, snapshot_state_size, snapshot_memory_apparent,
snapshot_memory_allocated (a sandbox snapshotted at ready, --runs times),
restore_to_ready, restore_to_first_response (--runs restores of that snapshot, each a
fresh `husk snapshot restore`), pool_invoke_latency (one per --pool-rate: `husk pool
--size K` on that snapshot, --pool-invocations requests sent open loop at the rate,
each timed from connect to result, so a pool that falls behind shows queueing).
Each figure: min / p50 / p90 / p99 / max, nearest-rank percentiles. Also printed: the
ratio restore -> first response p50 / boot -> first response p50. Snapshots are what
worker mode is for: give --mode worker to measure a warmed worker.

Exit status: 0 done, 1 a scenario or the plot failed (see the report), 2 usage error.";

/// `husk bench` flags.
#[derive(Debug, Args)]
#[command(after_help = AFTER_HELP)]
#[command(group(clap::ArgGroup::new("what").required(true).multiple(true).args(["function", "initrd", "drive"])))]
pub struct BenchArgs {
    /// Guest kernel (ELF vmlinux; kernel-config/build.sh --print-path).
    #[arg(long)]
    pub kernel: PathBuf,
    /// The function executable (static) to pack with --agent.
    #[arg(long, requires = "agent")]
    pub function: Option<PathBuf>,
    /// How the agent runs the function: exec or worker.
    #[arg(long, value_parser = parse_mode, default_value = "exec")]
    pub mode: Mode,
    /// The husk-agent binary (static), packed as /init with --function.
    #[arg(long)]
    pub agent: Option<PathBuf>,
    /// An initramfs already packed (husk pack) instead of --function.
    #[arg(long, conflicts_with_all = ["function", "agent"])]
    pub initrd: Option<PathBuf>,
    /// A drive every husk boot gets, as `husk run --drive SPEC` (e.g.
    /// `path=py.ext4,root,ro`): with `root` and no --function/--initrd the function
    /// boots from that root filesystem (built by husk image build). Snapshots record it
    /// and restores reopen it, so keep the image unchanged during the run.
    #[arg(long, value_name = "SPEC")]
    pub drive: Option<String>,
    /// Cold boots per boot figure.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub runs: u32,
    /// Invocations timed in the round-trip figure (one sandbox in reuse mode).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub invocations: u32,
    /// The payload of every invocation (the function must answer it with status ok).
    #[arg(long, default_value = "husk bench")]
    pub payload: String,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u64).range(16..))]
    pub mem_mib: u64,
    /// Bound on one boot, in seconds.
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub boot_timeout_secs: u64,
    /// Initramfs for the peer pair: husk and QEMU microvm boot it with the same kernel
    /// and are timed to its init's console line (tests/fixtures/peer builds one).
    #[arg(long)]
    pub peer_initrd: Option<PathBuf>,
    /// The peer pair's console line (a substring; default: the first guest line).
    #[arg(long, requires = "peer_initrd")]
    pub peer_marker: Option<String>,
    /// QEMU binary for the peer (default: qemu-system-x86_64 from PATH).
    #[arg(long)]
    pub qemu: Option<PathBuf>,
    /// Print the report as JSON (schema husk-bench/2) instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Also write the JSON report to this file (with or without --json).
    #[arg(long, value_name = "FILE.json")]
    pub json_file: Option<PathBuf>,
    /// Draw the latency distributions into this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// The husk binary to benchmark (default: this one).
    #[arg(long)]
    pub husk: Option<PathBuf>,
    /// Request rates (per second, comma-separated) for the pool latency figure; one
    /// figure per rate.
    #[arg(long, value_delimiter = ',', default_value = "1,5", value_parser = pool::parse_rate)]
    pub pool_rate: Vec<f64>,
    /// Sandboxes the pool keeps ready (K) in the pool latency figure.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub pool_size: u64,
    /// Invocations sent at each --pool-rate.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub pool_invocations: u32,
}

fn parse_mode(s: &str) -> Result<Mode, String> {
    s.parse()
}

/// Errors before any scenario runs.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A file the flags name is missing.
    #[error("{what} {} does not exist or is not a file", path.display())]
    Missing {
        /// Which flag.
        what: &'static str,
        /// The path.
        path: PathBuf,
    },
    /// Packing the function failed.
    #[error("cannot pack the function")]
    Pack(#[source] husk_agent::pack::PackError),
    /// Scratch files.
    #[error("cannot {what}")]
    Io {
        /// What failed.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl BenchArgs {
    /// Check that every named file exists.
    pub fn validate(&self) -> Result<(), BenchError> {
        let files = [
            ("--kernel", Some(&self.kernel)),
            ("--function", self.function.as_ref()),
            ("--agent", self.agent.as_ref()),
            ("--initrd", self.initrd.as_ref()),
            ("--peer-initrd", self.peer_initrd.as_ref()),
            ("--qemu", self.qemu.as_ref()),
            ("--husk", self.husk.as_ref()),
        ];
        for (what, path) in files {
            if let Some(p) = path {
                if !p.is_file() {
                    return Err(BenchError::Missing {
                        what,
                        path: p.clone(),
                    });
                }
            }
        }
        Ok(())
    }
}

/// Every figure `husk bench` knows, in report order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScenarioId {
    /// husk: VMM start -> the agent's ready marker (husk's in-VMM figure).
    BootToReady,
    /// husk: spawn -> the first invocation's result, cold.
    BootToFirstResponse,
    /// husk: invocation round trip on one connection in reuse mode.
    InvokeRoundTrip,
    /// husk: VMM RSS minus guest RAM resident, at ready.
    VmmMemoryOverhead,
    /// husk: VMM start -> the peer initramfs's init console line.
    BootToInitLine,
    /// QEMU microvm: the same.
    PeerQemuBootToInitLine,
    /// `husk snapshot create --api-sock --resume` of a sandbox at ready.
    SnapshotCreate,
    /// The snapshot's state file size.
    SnapshotStateSize,
    /// The snapshot's memory file, apparent size (guest RAM).
    SnapshotMemoryApparent,
    /// The snapshot's memory file, blocks allocated (it is sparse).
    SnapshotMemoryAllocated,
    /// Restore -> the agent acknowledged `Restored`.
    RestoreToReady,
    /// Restore -> first response.
    RestoreToFirstResponse,
    /// Pool invocation latency at a request rate (one scenario per rate).
    PoolInvokeLatency,
}

impl ScenarioId {
    /// All, in report order.
    pub const ALL: [ScenarioId; 13] = [
        Self::BootToReady,
        Self::BootToFirstResponse,
        Self::InvokeRoundTrip,
        Self::VmmMemoryOverhead,
        Self::BootToInitLine,
        Self::PeerQemuBootToInitLine,
        Self::SnapshotCreate,
        Self::SnapshotStateSize,
        Self::SnapshotMemoryApparent,
        Self::SnapshotMemoryAllocated,
        Self::RestoreToReady,
        Self::RestoreToFirstResponse,
        Self::PoolInvokeLatency,
    ];

    /// (JSON id, title, VMM, unit).
    pub fn meta(self) -> (&'static str, &'static str, &'static str, &'static str) {
        match self {
            Self::BootToReady => (
                "boot_to_ready",
                "boot -> ready (VMM start -> agent ready marker)",
                "husk",
                "ms",
            ),
            Self::BootToFirstResponse => (
                "boot_to_first_response",
                "boot -> first response (spawn -> first result)",
                "husk",
                "ms",
            ),
            Self::InvokeRoundTrip => (
                "invoke_round_trip",
                "invoke round trip (reuse mode, one connection)",
                "husk",
                "ms",
            ),
            Self::VmmMemoryOverhead => (
                "vmm_memory_overhead",
                "VMM memory overhead at ready (RSS - guest RAM)",
                "husk",
                "KiB",
            ),
            Self::BootToInitLine => (
                "boot_to_init_line",
                "peer pair: husk start -> init console line",
                "husk",
                "ms",
            ),
            Self::PeerQemuBootToInitLine => (
                "peer_qemu_boot_to_init_line",
                "peer pair: QEMU microvm start -> init console line",
                "qemu-microvm",
                "ms",
            ),
            Self::SnapshotCreate => (
                "snapshot_create",
                "snapshot create at ready (pause + write + resume)",
                "husk",
                "ms",
            ),
            Self::SnapshotStateSize => (
                "snapshot_state_size",
                "snapshot state file",
                "husk",
                "bytes",
            ),
            Self::SnapshotMemoryApparent => (
                "snapshot_memory_apparent",
                "snapshot memory file, apparent size",
                "husk",
                "bytes",
            ),
            Self::SnapshotMemoryAllocated => (
                "snapshot_memory_allocated",
                "snapshot memory file, allocated on disk",
                "husk",
                "bytes",
            ),
            Self::RestoreToReady => (
                "restore_to_ready",
                "restore -> ready (spawn -> Restored acknowledged)",
                "husk",
                "ms",
            ),
            Self::RestoreToFirstResponse => (
                "restore_to_first_response",
                "restore -> first response (spawn -> first result)",
                "husk",
                "ms",
            ),
            Self::PoolInvokeLatency => (
                "pool_invoke_latency",
                "pool invocation latency (connect -> result, open loop)",
                "husk",
                "ms",
            ),
        }
    }

    fn measured(self, samples: Vec<f64>) -> Scenario {
        let (id, title, vmm, unit) = self.meta();
        Scenario::measured(id, title, Some(vmm), unit, samples)
    }

    fn skipped(self, reason: String) -> Scenario {
        let (id, title, vmm, unit) = self.meta();
        Scenario::skipped(id, title, Some(vmm), unit, reason)
    }

    fn failed(self, e: &ScenarioError) -> Scenario {
        let (id, title, vmm, unit) = self.meta();
        Scenario::failed(id, title, Some(vmm), unit, error_chain(e))
    }
}

/// The progress line on stderr: rewritten in place on a terminal, one line per step
/// otherwise.
struct Progress {
    total: u64,
    done: u64,
    tty: bool,
}

impl Progress {
    fn step(&mut self, what: &str) {
        self.done += 1;
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(
                err,
                "\r\x1b[Khusk bench: [{}/{}] {what}",
                self.done, self.total
            );
        } else {
            let _ = writeln!(err, "husk bench: [{}/{}] {what}", self.done, self.total);
        }
        let _ = err.flush();
    }

    fn finish(&self) {
        if self.tty {
            eprintln!();
        }
    }
}

/// `qemu-system-x86_64` from `PATH`.
fn find_in_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// What the run does, resolved from the flags.
struct Plan {
    husk: HuskPlan,
    peer: Option<PeerPlan>,
    runs: u32,
    invocations: u32,
    pool: pool::PoolPlan,
}

/// One pool scenario: `pool_invoke_latency` at `rate` req/s with `size` sandboxes.
fn pool_scenario(rate: f64, size: usize, s: Scenario) -> Scenario {
    let mut s = s;
    s.title =
        format!("pool invocation latency at {rate} req/s, K={size} (connect -> result, open loop)");
    s.rate_per_s = Some(rate);
    s.pool_size = Some(size);
    s
}

/// Run every scenario of `plan`, reporting progress.
fn run_scenarios(plan: &Plan) -> Vec<Scenario> {
    let peer_steps = if plan.peer.is_some() { 2 } else { 0 };
    let mut progress = Progress {
        total: u64::from(plan.runs) * (3 + peer_steps) + 10 + plan.pool.rates.len() as u64,
        done: 0,
        tty: std::io::stderr().is_terminal(),
    };
    let mut out = BTreeMap::new();
    // Cold boots: ready, first response, memory.
    let (mut ready, mut first, mut mem) = (Vec::new(), Vec::new(), Vec::new());
    let mut cold_err = None;
    for i in 1..=plan.runs {
        match plan.husk.cold_boot(i) {
            Ok(b) => {
                ready.push(b.ready_ms);
                first.push(b.first_response_ms);
                mem.push(b.overhead_kib);
                progress.step(&format!(
                    "cold boot {i}/{}: ready {:.1} ms, first response {:.1} ms",
                    plan.runs, b.ready_ms, b.first_response_ms
                ));
            }
            Err(e) => {
                progress.step(&format!("cold boot {i}/{} FAILED", plan.runs));
                cold_err = Some(e);
                break;
            }
        }
    }
    for (id, samples) in [
        (ScenarioId::BootToReady, ready),
        (ScenarioId::BootToFirstResponse, first),
        (ScenarioId::VmmMemoryOverhead, mem),
    ] {
        let s = match &cold_err {
            Some(e) => id.failed(e),
            None => id.measured(samples),
        };
        out.insert(id.meta().0, s);
    }
    // Round trips: progress every tenth.
    let n = plan.invocations;
    let tenth = (n / 10).max(1);
    let rtt = plan.husk.round_trips(n, |k| {
        if k % tenth == 0 && progress.done < progress.total {
            progress.step(&format!("invocation {k}/{n}"));
        }
    });
    let id = ScenarioId::InvokeRoundTrip;
    out.insert(
        id.meta().0,
        match rtt {
            Ok(v) => id.measured(v),
            Err(e) => id.failed(&e),
        },
    );
    // Snapshots of one sandbox at ready, then restores of the last one.
    let snap_ids = [
        ScenarioId::SnapshotCreate,
        ScenarioId::SnapshotStateSize,
        ScenarioId::SnapshotMemoryApparent,
        ScenarioId::SnapshotMemoryAllocated,
    ];
    let snaps = plan.husk.snapshots(plan.runs, |i, c| {
        progress.step(&format!(
            "snapshot {i}/{}: created in {:.1} ms",
            plan.runs, c.create_ms
        ))
    });
    let restore_ids = [
        ScenarioId::RestoreToReady,
        ScenarioId::RestoreToFirstResponse,
    ];
    let pool_id = ScenarioId::PoolInvokeLatency;
    let (pool_size, rates) = (plan.pool.size, &plan.pool.rates);
    let mut pool_out: Vec<Scenario> = Vec::new();
    match snaps {
        Err(e) => {
            for id in snap_ids {
                out.insert(id.meta().0, id.failed(&e));
            }
            let why = format!("no snapshot to restore: {}", error_chain(&e));
            for id in restore_ids.into_iter().chain([pool_id]) {
                let (i, title, vmm, unit) = id.meta();
                out.insert(i, Scenario::failed(i, title, Some(vmm), unit, why.clone()));
            }
        }
        Ok((created, files)) => {
            let cols: [fn(&scenarios::Created) -> f64; 4] = [
                |c| c.create_ms,
                |c| c.state_bytes,
                |c| c.mem_apparent_bytes,
                |c| c.mem_allocated_bytes,
            ];
            for (id, col) in snap_ids.into_iter().zip(cols) {
                out.insert(id.meta().0, id.measured(created.iter().map(col).collect()));
            }
            let (mut ready, mut first) = (Vec::new(), Vec::new());
            let mut err = None;
            for i in 1..=plan.runs {
                match plan.husk.restore(&files, i) {
                    Ok(r) => {
                        ready.push(r.ready_ms);
                        first.push(r.first_response_ms);
                        progress.step(&format!(
                            "restore {i}/{}: ready {:.1} ms, first response {:.1} ms",
                            plan.runs, r.ready_ms, r.first_response_ms
                        ));
                    }
                    Err(e) => {
                        progress.step(&format!("restore {i}/{} FAILED", plan.runs));
                        err = Some(e);
                        break;
                    }
                }
            }
            for (id, samples) in restore_ids.into_iter().zip([ready, first]) {
                let s = match &err {
                    Some(e) => id.failed(e),
                    None => id.measured(samples),
                };
                out.insert(id.meta().0, s);
            }
            // The pool serves the same snapshot, one rate after another.
            match plan.husk.pool_latency(&files, &plan.pool, |r| {
                progress.step(&format!(
                    "pool at {} req/s, K={pool_size}: {} invocations in {:.1} s",
                    r.rate,
                    r.latencies_ms.len(),
                    r.span_s
                ))
            }) {
                Ok(runs) => {
                    for r in runs {
                        pool_out.push(pool_scenario(
                            r.rate,
                            pool_size,
                            pool_id.measured(r.latencies_ms),
                        ));
                    }
                }
                Err(e) => {
                    for &rate in rates {
                        pool_out.push(pool_scenario(rate, pool_size, pool_id.failed(&e)));
                    }
                }
            }
            scenarios::remove_snapshot(&files);
        }
    }
    // The peer pair, interleaved so both VMMs see the same conditions.
    let (husk_id, qemu_id) = (
        ScenarioId::BootToInitLine,
        ScenarioId::PeerQemuBootToInitLine,
    );
    match &plan.peer {
        None => {
            let why = "needs --peer-initrd: an initramfs whose init prints a console line, \
                       booted by both VMMs (tests/fixtures/peer builds peer-init.cpio)";
            out.insert(husk_id.meta().0, husk_id.skipped(why.into()));
            out.insert(qemu_id.meta().0, qemu_id.skipped(why.into()));
        }
        Some(peer) => {
            let (mut h, mut q) = (Ok(Vec::new()), Ok(Vec::new()));
            for i in 1..=plan.runs {
                if let Ok(v) = &mut h {
                    match peer.husk_boot() {
                        Ok(t) => v.push(t),
                        Err(e) => h = Err(e),
                    }
                }
                progress.step(&format!("peer pair {i}/{}: husk", plan.runs));
                if let (Some(qemu), Ok(v)) = (&peer.qemu, &mut q) {
                    match peer.qemu_boot(qemu) {
                        Ok(t) => v.push(t),
                        Err(e) => q = Err(e),
                    }
                }
                progress.step(&format!("peer pair {i}/{}: QEMU microvm", plan.runs));
            }
            out.insert(
                husk_id.meta().0,
                match h {
                    Ok(v) => husk_id.measured(v),
                    Err(e) => husk_id.failed(&e),
                },
            );
            let qs = match (&peer.qemu, q) {
                (None, _) => qemu_id.skipped(
                    "qemu-system-x86_64 not found in PATH (install QEMU or give --qemu)".into(),
                ),
                (Some(_), Ok(v)) => qemu_id.measured(v),
                (Some(_), Err(e)) => qemu_id.failed(&e),
            };
            out.insert(qemu_id.meta().0, qs);
        }
    }
    progress.finish();
    let mut all = Vec::new();
    for id in ScenarioId::ALL {
        if id == pool_id && !pool_out.is_empty() {
            all.append(&mut pool_out);
            continue;
        }
        let s = out.remove(id.meta().0);
        // Without a snapshot the pool was not run: one failed row per rate.
        if id == pool_id {
            let s = s.unwrap_or_else(|| id.skipped("not run".into()));
            all.extend(
                rates
                    .iter()
                    .map(|&r| pool_scenario(r, pool_size, s.clone())),
            );
            continue;
        }
        all.push(s.unwrap_or_else(|| id.skipped("not run".into())));
    }
    all
}

/// Pack the function (or take `--initrd`) into `dir`; returns the initramfs path, or
/// `None` when the guest boots from `--drive` alone.
fn initramfs(args: &BenchArgs, dir: &Path) -> Result<Option<PathBuf>, BenchError> {
    if let Some(i) = &args.initrd {
        return Ok(Some(i.clone()));
    }
    if args.function.is_none() && args.drive.is_some() {
        return Ok(None);
    }
    let (Some(function), Some(agent)) = (&args.function, &args.agent) else {
        // clap's group and `requires` make this unreachable; say what is needed anyway.
        return Err(BenchError::Missing {
            what: "--function with --agent (or --initrd)",
            path: PathBuf::new(),
        });
    };
    let spec = PackSpec {
        agent: agent.clone(),
        function: function.clone(),
        mode: args.mode,
        args: vec![],
        env: BTreeMap::new(),
        files: vec![],
        deadline_ms: None,
        output_cap: None,
        gzip: false,
    };
    let bytes = pack(&spec).map_err(BenchError::Pack)?;
    let path = dir.join("function.cpio");
    std::fs::write(&path, bytes).map_err(|source| BenchError::Io {
        what: format!("write {}", path.display()),
        source,
    })?;
    Ok(Some(path))
}

/// Prepare, run and report; returns the exit status.
fn bench(args: &BenchArgs) -> Result<i32, BenchError> {
    args.validate()?;
    let husk = match &args.husk {
        Some(h) => h.clone(),
        None => std::env::current_exe().map_err(|source| BenchError::Io {
            what: "find this husk binary (give --husk)".into(),
            source,
        })?,
    };
    let dir = std::env::temp_dir().join(format!("husk-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|source| BenchError::Io {
        what: format!("create {}", dir.display()),
        source,
    })?;
    let result = (|| {
        let initrd = initramfs(args, &dir)?;
        let qemu = args
            .qemu
            .clone()
            .or_else(|| find_in_path("qemu-system-x86_64"));
        let boot_timeout = Duration::from_secs(args.boot_timeout_secs);
        let plan = Plan {
            husk: HuskPlan {
                husk: husk.clone(),
                kernel: args.kernel.clone(),
                initrd: initrd.clone(),
                drive: args.drive.clone(),
                mem_mib: args.mem_mib,
                payload: args.payload.clone().into_bytes(),
                boot_timeout,
                dir: dir.clone(),
            },
            peer: args.peer_initrd.as_ref().map(|p| PeerPlan {
                husk: husk.clone(),
                qemu: qemu.clone(),
                kernel: args.kernel.clone(),
                initrd: p.clone(),
                marker: args.peer_marker.clone(),
                mem_mib: args.mem_mib,
                boot_timeout,
            }),
            runs: args.runs,
            invocations: args.invocations,
            pool: pool::PoolPlan {
                size: args.pool_size as usize,
                rates: args.pool_rate.clone(),
                invocations: args.pool_invocations,
            },
        };
        let environment = env::detect(qemu.as_deref());
        if environment.kvm != "hardware" {
            eprintln!(
                "husk bench: warning: KVM here is {} (no hardware virtualization): a stock guest \
                 kernel runs emulated, far too slowly to boot in time; on such a machine run \
                 husk bench inside a KVM host (scripts/bench does, through husk-testhost)",
                environment.kvm
            );
        }
        let scenarios = run_scenarios(&plan);
        let ratios = report::Ratios::of(&scenarios);
        Ok(Report {
            schema: report::SCHEMA.into(),
            environment,
            config: RunConfig {
                runs: args.runs,
                invocations: args.invocations,
                kernel: args.kernel.display().to_string(),
                function: args.function.as_ref().map(|f| f.display().to_string()),
                mode: args.function.as_ref().map(|_| {
                    match args.mode {
                        Mode::Exec => "exec",
                        Mode::Worker => "worker",
                    }
                    .to_string()
                }),
                initrd: match (&args.initrd, &initrd, &args.drive) {
                    (Some(i), _, _) => i.display().to_string(),
                    (None, Some(_), _) => "(packed by husk bench)".into(),
                    (None, None, d) => format!("none, drive {}", d.as_deref().unwrap_or("")),
                },
                mem_mib: args.mem_mib,
                peer_initrd: args.peer_initrd.as_ref().map(|p| p.display().to_string()),
                pool_size: Some(args.pool_size as usize),
                pool_rates: Some(args.pool_rate.clone()),
                pool_invocations: Some(args.pool_invocations),
            },
            scenarios,
            ratios,
        })
    })();
    let _ = std::fs::remove_dir_all(&dir);
    let report = result?;
    let mut status = if report.any_failed() {
        EXIT_FAILED
    } else {
        EXIT_OK
    };
    let json = match serde_json::to_string_pretty(&report) {
        Ok(s) => Some(s),
        Err(e) => {
            eprintln!("husk bench: cannot encode the JSON report: {e}");
            status = EXIT_FAILED;
            None
        }
    };
    if args.json {
        if let Some(j) = &json {
            println!("{j}");
        }
    } else {
        print!("{}", report.table());
    }
    if let (Some(path), Some(j)) = (&args.json_file, &json) {
        match std::fs::write(path, format!("{j}\n")) {
            Ok(()) => eprintln!("husk bench: wrote {}", path.display()),
            Err(e) => {
                eprintln!("husk bench: cannot write {}: {e}", path.display());
                status = EXIT_FAILED;
            }
        }
    }
    if let Some(path) = &args.plot {
        match plot::draw(&report, path) {
            Ok(()) => eprintln!("husk bench: wrote {}", path.display()),
            Err(e) => {
                eprintln!("husk bench: {}", error_chain(&e));
                status = EXIT_FAILED;
            }
        }
    }
    if report.any_failed() {
        eprintln!("husk bench: a scenario failed; see its reason in the report");
    }
    Ok(status)
}

/// Run `husk bench`; returns the exit status.
pub fn run(args: &BenchArgs) -> i32 {
    match bench(args) {
        Ok(s) => s,
        Err(e @ BenchError::Missing { .. }) => {
            eprintln!("husk bench: {}", error_chain(&e));
            EXIT_USAGE
        }
        Err(e) => {
            eprintln!("husk bench: {}", error_chain(&e));
            EXIT_FAILED
        }
    }
}

#[cfg(test)]
mod tests;
