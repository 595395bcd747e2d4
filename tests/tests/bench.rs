//! `husk bench` e2e test: with fn-counter in worker mode, the peer fixture and QEMU,
//! `husk bench --runs 3 --json --plot FILE` must boot real guests and report every
//! figure it claims (boot -> ready, boot -> first response, invoke round trip, VMM memory
//! overhead, the husk / QEMU microvm peer pair, snapshot create time and file sizes,
//! restore -> ready, restore -> first response, pool invocation latency at 1 and 5
//! requests per second with K=2) with sane order statistics and the restore / boot
//! first-response ratio, state the environment, and draw a non-trivial SVG.
//!
//! This is a test of the command, not a benchmark: the figures it sees are not printed
//! as figures (scripts/bench prints them). Needs a hardware-virt KVM host (run it through
//! `husk-testhost`), `HUSK_KERNEL`, the static binaries (husk, husk-agent, fn-counter), the
//! `peer-init.cpio` fixture and qemu-system-x86_64; fails, never skips.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::Duration;

use husk_tests::e2e::{self, ScratchDir};
use serde_json::Value;

const RUNS: u64 = 3;
const INVOCATIONS: u64 = 20;
const TIMEOUT: Duration = Duration::from_secs(900);
const MEASURED: [&str; 12] = [
    "boot_to_ready",
    "boot_to_first_response",
    "invoke_round_trip",
    "vmm_memory_overhead",
    "boot_to_init_line",
    "peer_qemu_boot_to_init_line",
    "snapshot_create",
    "snapshot_state_size",
    "snapshot_memory_apparent",
    "snapshot_memory_allocated",
    "restore_to_ready",
    "restore_to_first_response",
];
/// Pool figure: one scenario per rate, each POOL_INVOCATIONS samples, K=2.
const POOL_RATES: [f64; 2] = [1.0, 5.0];
const POOL_INVOCATIONS: u64 = 8;
const MEM_MIB: f64 = 128.0;

fn scenario<'a>(report: &'a Value, id: &str) -> &'a Value {
    report["scenarios"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id)
        .unwrap_or_else(|| panic!("scenario {id} missing from the report:\n{report:#}"))
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// Check a measured scenario's summary against its samples; returns the samples.
fn check_measured(report: &Value, id: &str, n: u64) -> Vec<f64> {
    check_scenario(scenario(report, id), id, n)
}

fn check_scenario(s: &Value, id: &str, n: u64) -> Vec<f64> {
    assert_eq!(s["status"], "measured", "{id}: {s:#}");
    assert!(s["reason"].is_null(), "{id}: {s:#}");
    let m = &s["summary"];
    assert_eq!(m["n"].as_u64(), Some(n), "{id}: {s:#}");
    let (min, p50, p90, p99, max) = (
        f(&m["min"]),
        f(&m["p50"]),
        f(&m["p90"]),
        f(&m["p99"]),
        f(&m["max"]),
    );
    assert!(p50 > 0.0, "{id}: p50 {p50}");
    assert!(
        min <= p50 && p50 <= p90 && p90 <= p99 && p99 <= max,
        "{id}: min {min} p50 {p50} p90 {p90} p99 {p99} max {max}"
    );
    let samples: Vec<f64> = s["samples"].as_array().unwrap().iter().map(f).collect();
    assert_eq!(samples.len() as u64, n, "{id}");
    assert!(
        samples.iter().all(|&x| min <= x && x <= max),
        "{id}: {samples:?}"
    );
    assert!(
        samples.contains(&min) && samples.contains(&max) && samples.contains(&p50),
        "{id}: nearest rank picks samples"
    );
    samples
}

#[test]
fn husk_bench_json_holds_every_figure_and_the_plot_is_drawn() {
    let kvm = e2e::require_hardware_kvm().unwrap_or_else(|e| panic!("{e}"));
    eprintln!("KVM: {}", kvm.reason);
    let qemu = e2e::find_program("qemu-system-x86_64").unwrap_or_else(|e| panic!("{e}"));
    let dir = ScratchDir::new("bench").unwrap();
    let svg = dir.path().join("bench.svg");
    let mut cmd = Command::new(e2e::bin("husk").unwrap_or_else(|e| panic!("{e}")));
    cmd.arg("bench")
        .arg("--kernel")
        .arg(e2e::kernel().unwrap_or_else(|e| panic!("{e}")))
        .arg("--function")
        .arg(e2e::bin("fn-counter").unwrap_or_else(|e| panic!("{e}")))
        .arg("--agent")
        .arg(e2e::bin("husk-agent").unwrap_or_else(|e| panic!("{e}")))
        .args(["--mode", "worker", "--runs", &RUNS.to_string()])
        .args(["--invocations", &INVOCATIONS.to_string()])
        .args(["--pool-rate", "1,5", "--pool-size", "2"])
        .args(["--pool-invocations", &POOL_INVOCATIONS.to_string()])
        .arg("--peer-initrd")
        .arg(e2e::fixture("peer-init.cpio").unwrap_or_else(|e| panic!("{e}")))
        .args(["--peer-marker", "HUSK-TEST-INIT: hello from the guest"])
        .arg("--qemu")
        .arg(&qemu)
        .arg("--json")
        .arg("--plot")
        .arg(&svg);
    let out = e2e::run_with_timeout(&mut cmd, TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let (stdout, stderr) = (out.stdout_str(), out.stderr_str());
    assert_eq!(
        out.status.code(),
        Some(0),
        "husk bench failed:\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
    );
    let report: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON: {e}\n{stdout}"));
    assert_eq!(report["schema"], "husk-bench/2");
    // Progress went to stderr, one line per step (not a terminal).
    assert!(
        stderr.contains(&format!("cold boot {RUNS}/{RUNS}")),
        "{stderr}"
    );

    let env = &report["environment"];
    assert_eq!(env["kvm"], "hardware", "{env:#}");
    let in_testhost = std::env::var("HUSK_IN_TESTHOST").is_ok_and(|v| v == "1");
    if in_testhost {
        assert_eq!(env["host"], "emulated", "{env:#}");
    } else {
        assert!(["direct", "virtual-machine", "emulated"].contains(&env["host"].as_str().unwrap()));
    }
    for k in ["cpu_model", "host_kernel", "husk_version", "host_detail"] {
        assert!(
            !env[k].as_str().unwrap_or("").is_empty(),
            "environment.{k}: {env:#}"
        );
    }
    assert!(env["cpus"].as_u64().unwrap() >= 1);
    assert_eq!(env["qemu"].as_str(), Some(qemu.to_str().unwrap()));
    assert_eq!(report["config"]["runs"].as_u64(), Some(RUNS));

    for id in MEASURED {
        let n = if id == "invoke_round_trip" {
            INVOCATIONS
        } else {
            RUNS
        };
        check_measured(&report, id, n);
    }
    // Per boot, the first response comes after the agent was ready (the ready figure is
    // husk's own from VMM start, the response time the bench's from the spawn).
    let ready = check_measured(&report, "boot_to_ready", RUNS);
    let first = check_measured(&report, "boot_to_first_response", RUNS);
    for (r, fr) in ready.iter().zip(&first) {
        assert!(
            r < fr,
            "ready {r} ms should precede the first response {fr} ms"
        );
    }
    // The VMM's own memory: more than nothing, less than the guest's 128 MiB.
    let mem = check_measured(&report, "vmm_memory_overhead", RUNS);
    assert!(
        mem.iter().all(|&k| k > 0.0 && k < 128.0 * 1024.0),
        "{mem:?}"
    );
    assert_eq!(scenario(&report, "vmm_memory_overhead")["unit"], "KiB");
    // A round trip on an open connection is far shorter than a cold boot.
    let rtt = scenario(&report, "invoke_round_trip");
    assert!(
        f(&rtt["summary"]["p50"])
            < f(&scenario(&report, "boot_to_first_response")["summary"]["min"])
    );
    assert_eq!(
        scenario(&report, "peer_qemu_boot_to_init_line")["vmm"],
        "qemu-microvm"
    );
    assert!(
        stderr.contains(&format!("restore {RUNS}/{RUNS}")),
        "{stderr}"
    );

    // Snapshots: every memory file holds all guest RAM but is sparse; the state file is
    // small (registers, devices), far less than guest RAM.
    let apparent = check_measured(&report, "snapshot_memory_apparent", RUNS);
    assert!(
        apparent.iter().all(|&b| b == MEM_MIB * 1048576.0),
        "{apparent:?}"
    );
    let allocated = check_measured(&report, "snapshot_memory_allocated", RUNS);
    assert!(
        allocated
            .iter()
            .all(|&b| b > 0.0 && b < MEM_MIB * 1048576.0),
        "sparse: {allocated:?}"
    );
    let state = check_measured(&report, "snapshot_state_size", RUNS);
    assert!(
        state.iter().all(|&b| b > 1024.0 && b < 16.0 * 1048576.0),
        "{state:?}"
    );
    for id in [
        "snapshot_state_size",
        "snapshot_memory_apparent",
        "snapshot_memory_allocated",
    ] {
        assert_eq!(scenario(&report, id)["unit"], "bytes", "{id}");
    }
    // Creating a snapshot takes time but is bounded by the command's own timeout.
    let create = check_measured(&report, "snapshot_create", RUNS);
    assert!(
        create.iter().all(|&t| t > 0.0 && t < 60_000.0),
        "{create:?}"
    );
    // Per restore, the agent acknowledged Restored before the first result came back.
    let rready = check_measured(&report, "restore_to_ready", RUNS);
    let rfirst = check_measured(&report, "restore_to_first_response", RUNS);
    for (r, fr) in rready.iter().zip(&rfirst) {
        assert!(
            r < fr,
            "restored {r} ms should precede the first response {fr} ms"
        );
    }
    // The ratio is the two p50s of this run, as the report says.
    let ratio = f(&report["ratios"]["restore_vs_boot_first_response_p50"]);
    let expect = f(&scenario(&report, "restore_to_first_response")["summary"]["p50"])
        / f(&scenario(&report, "boot_to_first_response")["summary"]["p50"]);
    assert!((ratio - expect).abs() < 1e-9, "{ratio} vs {expect}");
    assert!(ratio > 0.0, "{ratio}");
    eprintln!("restore / boot first response p50 ratio in this run: {ratio:.3}");

    // The pool: one measured scenario per rate, in the order given, each with K=2 and
    // every invocation answered; a pooled invocation (connect -> result on a sandbox
    // restored ahead) is at least the length of a round trip on an open connection.
    let pools: Vec<&Value> = report["scenarios"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["id"] == "pool_invoke_latency")
        .collect();
    assert_eq!(pools.len(), POOL_RATES.len(), "{report:#}");
    let rtt_min = f(&rtt["summary"]["min"]);
    for (s, rate) in pools.iter().zip(POOL_RATES) {
        assert_eq!(s["rate_per_s"].as_f64(), Some(rate), "{s:#}");
        assert_eq!(s["pool_size"].as_u64(), Some(2), "{s:#}");
        assert!(
            s["title"]
                .as_str()
                .unwrap()
                .contains(&format!("{rate} req/s")),
            "{s:#}"
        );
        let v = check_scenario(s, "pool_invoke_latency", POOL_INVOCATIONS);
        assert!(v.iter().all(|&ms| ms >= rtt_min), "{v:?} vs rtt {rtt_min}");
        eprintln!(
            "pool K=2 at {rate} req/s: p50 {:.1} ms, p99 {:.1} ms",
            f(&s["summary"]["p50"]),
            f(&s["summary"]["p99"])
        );
    }
    assert!(
        stderr.contains("pool at 5 req/s, K=2"),
        "pool progress: {stderr}"
    );
    assert_eq!(report["config"]["pool_size"].as_u64(), Some(2));
    assert_eq!(
        report["scenarios"].as_array().unwrap().len(),
        MEASURED.len() + POOL_RATES.len()
    );
    assert!(
        report["scenarios"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["status"] == "measured"),
        "every figure measured: {report:#}"
    );

    let text = std::fs::read_to_string(&svg)
        .unwrap_or_else(|e| panic!("no SVG at {}: {e}", svg.display()));
    assert!(text.len() > 5_000, "SVG too small: {} bytes", text.len());
    assert!(text.starts_with("<svg"), "{}", &text[..text.len().min(200)]);
    // One panel per measured latency figure (10: 8, and the pool at 2 rates; memory and
    // sizes are not latencies) with a point per sample.
    assert!(
        text.contains("invoke round trip")
            && text.contains("QEMU microvm")
            && text.contains("restore -")
            && text.contains("pool invocation latency at 1 req/s")
            && text.contains("pool invocation latency at 5 req/s"),
        "panels missing"
    );
    let points = text.matches("<circle").count() as u64;
    assert!(
        points >= 7 * RUNS + INVOCATIONS + 2 * POOL_INVOCATIONS,
        "{points} points"
    );
}
