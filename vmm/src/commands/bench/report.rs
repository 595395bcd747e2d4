//! The `husk bench` report: its JSON schema (`--json`) and the table it prints.
//!
//! Schema `husk-bench/2` (fields are only ever added within a version). Version 2 adds
//! to version 1 the snapshot scenarios (`snapshot_create`, `snapshot_state_size`,
//! `snapshot_memory_apparent`, `snapshot_memory_allocated`, `restore_to_ready`,
//! `restore_to_first_response`; version 1's never-measured `snapshot_size` is gone) and
//! the top-level `ratios` object:
//! ```text
//! { "schema": "husk-bench/2",
//!   "environment": { "kvm": "hardware"|"pvm"|"unavailable", "kvm_module": "kvm_amd"|null,
//!                    "host": "direct"|"virtual-machine"|"emulated", "host_detail": "...",
//!                    "cpu_model": "...", "cpus": 2, "host_kernel": "6.1.0-...",
//!                    "husk_version": "0.1.0", "qemu": "/usr/bin/qemu-system-x86_64"|null },
//!   "config": { "runs": 5, "invocations": 100, "kernel": "...", "function": "..."|null,
//!               "mode": "exec"|"worker"|null, "initrd": "...", "mem_mib": 128,
//!               "peer_initrd": "..."|null,
//!               "pool_size": 2, "pool_rates": [1.0, 5.0], "pool_invocations": 20 },
//!   "scenarios": [ { "id": "boot_to_ready", "title": "...", "vmm": "husk"|"qemu-microvm"|null,
//!                    "unit": "ms"|"KiB"|"bytes", "status": "measured"|"skipped"|"failed",
//!                    "reason": "..."|null,            // why skipped or failed
//!                    "summary": { "n", "min", "p50", "p90", "p99", "max", "mean" }|null,
//!                    "samples": [ ... ],
//!                    "rate_per_s": 5.0, "pool_size": 2 } ],  // pool_invoke_latency only
//!   "ratios": { "restore_vs_boot_first_response_p50": 0.2|null } }
//!              // restore_to_first_response p50 / boot_to_first_response p50, this run;
//!              // null unless both were measured
//! ```
//! `pool_invoke_latency` appears once per request rate (`rate_per_s`), each with its
//! own samples (connect to the pool -> result, open-loop arrivals); the config's pool
//! fields and these two were added within version 2 (older readers' reports still
//! parse: they default to null / absent).
//! A `measured` scenario has a summary over its samples; a `skipped` one (a feature not
//! in this build, no QEMU) and a `failed` one have a reason and no numbers.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::stats::Summary;

/// The schema name and version written in every report.
pub const SCHEMA: &str = "husk-bench/2";

/// A whole `husk bench` run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// Always [`SCHEMA`].
    pub schema: String,
    /// Where it ran.
    pub environment: Environment,
    /// What it ran.
    pub config: RunConfig,
    /// Every scenario, measured or not, in a fixed order.
    pub scenarios: Vec<Scenario>,
    /// Figures derived from two scenarios of this run.
    pub ratios: Ratios,
}

/// Ratios between scenarios of one run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ratios {
    /// `restore_to_first_response` p50 / `boot_to_first_response` p50 (`None` unless
    /// both were measured).
    pub restore_vs_boot_first_response_p50: Option<f64>,
}

impl Ratios {
    /// The ratios of `scenarios` (by id).
    pub fn of(scenarios: &[Scenario]) -> Self {
        let p50 = |id: &str| {
            scenarios
                .iter()
                .find(|s| s.id == id && s.status == Status::Measured)
                .and_then(|s| s.summary)
                .map(|m| m.p50)
        };
        let restore_vs_boot_first_response_p50 = match (
            p50("restore_to_first_response"),
            p50("boot_to_first_response"),
        ) {
            (Some(r), Some(b)) if b > 0.0 => Some(r / b),
            _ => None,
        };
        Self {
            restore_vs_boot_first_response_p50,
        }
    }
}

/// The machine the figures come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Environment {
    /// `hardware` (VT-x/AMD-V), `pvm` (no hardware virtualization) or `unavailable`.
    pub kvm: String,
    /// The KVM module found (`kvm_intel`, `kvm_amd`, `kvm_pvm`).
    pub kvm_module: Option<String>,
    /// `direct` (bare metal), `virtual-machine` (nested KVM in a VM) or `emulated`
    /// (husk's emulated KVM test host: QEMU TCG, figures far slower than hardware).
    pub host: String,
    /// How `host` was decided, in words.
    pub host_detail: String,
    /// `/proc/cpuinfo` model name.
    pub cpu_model: String,
    /// Online CPUs.
    pub cpus: usize,
    /// Host kernel release.
    pub host_kernel: String,
    /// This husk's version.
    pub husk_version: String,
    /// The QEMU binary used for the peer, if one was found.
    pub qemu: Option<String>,
}

/// The run's parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Cold boots per boot scenario.
    pub runs: u32,
    /// Invocations in the round-trip scenario.
    pub invocations: u32,
    /// Guest kernel.
    pub kernel: String,
    /// Function executable, when husk packed the initramfs.
    pub function: Option<String>,
    /// Function mode, when husk packed the initramfs.
    pub mode: Option<String>,
    /// The function's initramfs (given, or packed by husk bench).
    pub initrd: String,
    /// Guest memory.
    pub mem_mib: u64,
    /// The initramfs both VMMs boot for the peer comparison.
    pub peer_initrd: Option<String>,
    /// The pool figure's K.
    #[serde(default)]
    pub pool_size: Option<usize>,
    /// The pool figure's request rates, per second.
    #[serde(default)]
    pub pool_rates: Option<Vec<f64>>,
    /// Invocations per pool rate.
    #[serde(default)]
    pub pool_invocations: Option<u32>,
}

/// Whether a scenario has numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Measured: `summary` and `samples` hold the figures.
    Measured,
    /// Not run: `reason` says why (not in this build, no QEMU, ...).
    Skipped,
    /// Run but failed: `reason` holds the error.
    Failed,
}

/// One figure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Stable identifier (see [`super::ScenarioId`]).
    pub id: String,
    /// What is measured, for people.
    pub title: String,
    /// The VMM measured (`husk`, `qemu-microvm`).
    pub vmm: Option<String>,
    /// Unit of the samples: `ms`, `KiB` or `bytes`.
    pub unit: String,
    /// Measured, skipped or failed.
    pub status: Status,
    /// Why it was skipped or how it failed.
    pub reason: Option<String>,
    /// Order statistics of `samples` (measured only).
    pub summary: Option<Summary>,
    /// Every sample, in measurement order (measured only).
    pub samples: Vec<f64>,
    /// The offered request rate, per second (pool scenarios only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_per_s: Option<f64>,
    /// The pool size K (pool scenarios only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_size: Option<usize>,
}

impl Scenario {
    /// A measured scenario; `Failed` if there are no (finite) samples.
    pub fn measured(
        id: &str,
        title: &str,
        vmm: Option<&str>,
        unit: &str,
        samples: Vec<f64>,
    ) -> Self {
        let summary = Summary::of(&samples);
        let mut s = Self::base(id, title, vmm, unit);
        match summary {
            Some(sum) => {
                s.status = Status::Measured;
                s.summary = Some(sum);
                s.samples = samples;
            }
            None => {
                s.status = Status::Failed;
                s.reason = Some("no valid samples".into());
            }
        }
        s
    }

    /// A scenario that was not run.
    pub fn skipped(id: &str, title: &str, vmm: Option<&str>, unit: &str, reason: String) -> Self {
        let mut s = Self::base(id, title, vmm, unit);
        s.status = Status::Skipped;
        s.reason = Some(reason);
        s
    }

    /// A scenario that failed.
    pub fn failed(id: &str, title: &str, vmm: Option<&str>, unit: &str, reason: String) -> Self {
        let mut s = Self::base(id, title, vmm, unit);
        s.status = Status::Failed;
        s.reason = Some(reason);
        s
    }

    fn base(id: &str, title: &str, vmm: Option<&str>, unit: &str) -> Self {
        Self {
            id: id.into(),
            title: title.into(),
            vmm: vmm.map(String::from),
            unit: unit.into(),
            status: Status::Skipped,
            reason: None,
            summary: None,
            samples: Vec::new(),
            rate_per_s: None,
            pool_size: None,
        }
    }
}

/// A figure in a table cell: integers for sizes, 1 decimal from 10 up, else 3.
fn num(v: f64, unit: &str) -> String {
    if unit != "ms" || v.abs() >= 10.0 {
        if unit == "ms" {
            format!("{v:.1}")
        } else {
            format!("{v:.0}")
        }
    } else {
        format!("{v:.3}")
    }
}

impl Report {
    /// The human-readable table: a header with the environment, one row per scenario.
    pub fn table(&self) -> String {
        let e = &self.environment;
        let c = &self.config;
        let mut out = String::new();
        let what = match (&c.function, &c.mode) {
            (Some(f), Some(m)) => format!("function {f} ({m})"),
            _ => format!("initramfs {}", c.initrd),
        };
        let _ = writeln!(
            out,
            "husk bench {}: {what}, {} cold boots per boot figure, {} invocations, {} MiB",
            e.husk_version, c.runs, c.invocations, c.mem_mib
        );
        let _ = writeln!(
            out,
            "host: {} ({}), KVM {}{}, {} x {}, kernel {}",
            e.host,
            e.host_detail,
            e.kvm,
            e.kvm_module
                .as_deref()
                .map(|m| format!(" ({m})"))
                .unwrap_or_default(),
            e.cpus,
            e.cpu_model,
            e.host_kernel
        );
        let title_w = self
            .scenarios
            .iter()
            .map(|s| s.title.chars().count())
            .max()
            .unwrap_or(0)
            .max("scenario".len());
        let _ = writeln!(
            out,
            "{:<title_w$}  {:<5} {:>5} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "scenario", "unit", "n", "min", "p50", "p90", "p99", "max"
        );
        for s in &self.scenarios {
            let pad = title_w.saturating_sub(s.title.chars().count());
            let _ = write!(out, "{}{}  {:<5} ", s.title, " ".repeat(pad), s.unit);
            match (&s.status, &s.summary) {
                (Status::Measured, Some(m)) => {
                    let _ = writeln!(
                        out,
                        "{:>5} {:>10} {:>10} {:>10} {:>10} {:>10}",
                        m.n,
                        num(m.min, &s.unit),
                        num(m.p50, &s.unit),
                        num(m.p90, &s.unit),
                        num(m.p99, &s.unit),
                        num(m.max, &s.unit)
                    );
                }
                (Status::Failed, _) | (Status::Measured, None) => {
                    let _ = writeln!(
                        out,
                        "FAILED: {}",
                        s.reason.as_deref().unwrap_or("no figures")
                    );
                }
                (Status::Skipped, _) => {
                    let _ = writeln!(out, "skipped: {}", s.reason.as_deref().unwrap_or("not run"));
                }
            }
        }
        if let Some(r) = self.ratios.restore_vs_boot_first_response_p50 {
            let _ = writeln!(
                out,
                "restore -> first response p50 / boot -> first response p50 = {r:.3} \
                 (restore is {:.1}x faster)",
                1.0 / r
            );
        }
        out
    }

    /// Whether any scenario failed.
    pub fn any_failed(&self) -> bool {
        self.scenarios.iter().any(|s| s.status == Status::Failed)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(in super::super) fn sample_report() -> Report {
        Report {
            schema: SCHEMA.into(),
            environment: Environment {
                kvm: "hardware".into(),
                kvm_module: Some("kvm_amd".into()),
                host: "emulated".into(),
                host_detail: "QEMU TCG CPU".into(),
                cpu_model: "QEMU TCG CPU version 2.5+".into(),
                cpus: 2,
                host_kernel: "6.1.0-test".into(),
                husk_version: "0.1.0".into(),
                qemu: None,
            },
            config: RunConfig {
                runs: 3,
                invocations: 10,
                kernel: "/k/vmlinux".into(),
                function: Some("/b/fn-echo".into()),
                mode: Some("exec".into()),
                initrd: "/tmp/f.cpio".into(),
                mem_mib: 128,
                peer_initrd: None,
                pool_size: Some(2),
                pool_rates: Some(vec![5.0]),
                pool_invocations: Some(3),
            },
            scenarios: vec![
                Scenario::measured(
                    "boot_to_ready",
                    "boot -> ready",
                    Some("husk"),
                    "ms",
                    vec![1900.5, 1800.25, 2100.0],
                ),
                Scenario::measured(
                    "invoke_round_trip",
                    "invoke round trip",
                    Some("husk"),
                    "ms",
                    vec![2.5, 3.125],
                ),
                Scenario::skipped(
                    "restore_to_ready",
                    "restore -> ready",
                    Some("husk"),
                    "ms",
                    "not available in this build: snapshot restore has not landed".into(),
                ),
                Scenario::failed(
                    "peer_qemu_boot_to_init_line",
                    "QEMU microvm: start -> init line",
                    Some("qemu-microvm"),
                    "ms",
                    "QEMU exited with status 1".into(),
                ),
                {
                    let mut s = Scenario::measured(
                        "pool_invoke_latency",
                        "pool invocation latency at 5 req/s, K=2",
                        Some("husk"),
                        "ms",
                        vec![40.0, 52.5, 61.0],
                    );
                    s.rate_per_s = Some(5.0);
                    s.pool_size = Some(2);
                    s
                },
            ],
            ratios: Ratios {
                restore_vs_boot_first_response_p50: Some(0.25),
            },
        }
    }

    #[test]
    fn json_round_trips_and_keeps_the_documented_field_names() {
        let r = sample_report();
        let text = serde_json::to_string_pretty(&r).unwrap();
        let back: Report = serde_json::from_str(&text).unwrap();
        assert_eq!(back, r);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["schema"], "husk-bench/2");
        assert_eq!(v["ratios"]["restore_vs_boot_first_response_p50"], 0.25);
        assert_eq!(v["environment"]["host"], "emulated");
        let s0 = &v["scenarios"][0];
        assert_eq!(s0["id"], "boot_to_ready");
        assert_eq!(s0["status"], "measured");
        assert_eq!(s0["summary"]["p50"], 1900.5);
        assert_eq!(s0["summary"]["min"], 1800.25);
        assert_eq!(s0["summary"]["max"], 2100.0);
        assert_eq!(s0["samples"].as_array().unwrap().len(), 3);
        let skipped = &v["scenarios"][2];
        assert_eq!(skipped["status"], "skipped");
        assert!(skipped["summary"].is_null());
        assert!(skipped["reason"]
            .as_str()
            .unwrap()
            .contains("not available in this build"));
        assert_eq!(v["scenarios"][3]["status"], "failed");
        // Only the pool scenario carries its rate and K.
        let pool = &v["scenarios"][4];
        assert_eq!(pool["id"], "pool_invoke_latency");
        assert_eq!(
            (pool["rate_per_s"].as_f64(), pool["pool_size"].as_u64()),
            (Some(5.0), Some(2))
        );
        assert_eq!(pool["summary"]["p50"], 52.5);
        assert!(s0.get("rate_per_s").is_none() && s0.get("pool_size").is_none());
        assert_eq!(v["config"]["pool_rates"], serde_json::json!([5.0]));
        // A report written before the pool fields existed still parses.
        let mut old = v.clone();
        for k in ["pool_size", "pool_rates", "pool_invocations"] {
            old["config"].as_object_mut().unwrap().remove(k);
        }
        old["scenarios"][4]
            .as_object_mut()
            .unwrap()
            .remove("rate_per_s");
        let old: Report = serde_json::from_value(old).unwrap();
        assert_eq!(old.config.pool_size, None);
        assert_eq!(old.scenarios[4].rate_per_s, None);
        // Unknown fields are refused: a reader of schema 2 sees exactly schema 2.
        let mut extra = v.clone();
        extra["surprise"] = serde_json::json!(1);
        assert!(serde_json::from_value::<Report>(extra).is_err());
    }

    #[test]
    fn table_shows_figures_skips_and_failures() {
        let r = sample_report();
        let t = r.table();
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines[0].starts_with("husk bench 0.1.0: function /b/fn-echo (exec), 3 cold boots"),
            "{t}"
        );
        assert!(
            lines[1].contains("host: emulated") && lines[1].contains("kvm_amd"),
            "{t}"
        );
        assert!(
            lines[2].starts_with("scenario") && lines[2].contains("p99"),
            "{t}"
        );
        let boot = lines
            .iter()
            .find(|l| l.starts_with("boot -> ready"))
            .unwrap();
        let cols: Vec<&str> = boot.split_whitespace().collect();
        // title (3 words), unit, n, min, p50, p90, p99, max
        assert_eq!(
            &cols[3..],
            ["ms", "3", "1800.2", "1900.5", "2100.0", "2100.0", "2100.0"],
            "{boot}"
        );
        let rtt = lines
            .iter()
            .find(|l| l.starts_with("invoke round trip"))
            .unwrap();
        assert!(rtt.contains("2.500") && rtt.contains("3.125"), "{rtt}");
        let skip = lines
            .iter()
            .find(|l| l.starts_with("restore -> ready"))
            .unwrap();
        assert!(
            skip.contains("skipped: not available in this build"),
            "{skip}"
        );
        let fail = lines
            .iter()
            .find(|l| l.starts_with("QEMU microvm"))
            .unwrap();
        assert!(fail.contains("FAILED: QEMU exited"), "{fail}");
        let pool = lines
            .iter()
            .find(|l| l.starts_with("pool invocation latency at 5 req/s, K=2"))
            .unwrap();
        assert!(
            pool.contains("40.0") && pool.contains("52.5") && pool.contains("61.0"),
            "{pool}"
        );
        assert!(r.any_failed());
        // Columns line up: every figure row has its unit at the same offset.
        let ratio = lines.last().unwrap();
        assert!(
            ratio.contains("/ boot -> first response p50 = 0.250") && ratio.contains("4.0x"),
            "{t}"
        );
        let unit_at: Vec<usize> = lines[3..lines.len() - 1]
            .iter()
            .map(|l| l.find("  ms ").unwrap())
            .collect();
        assert!(unit_at.windows(2).all(|w| w[0] == w[1]), "{t}");
    }
}
