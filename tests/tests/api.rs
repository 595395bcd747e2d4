//! API e2e test: a sandbox configured and booted purely through husk's Firecracker-
//! compatible REST API on a Unix socket, driven with curl (`--unix-socket`). Covers:
//! pre-boot configuration (logger, metrics, boot source, machine config, vsock,
//! entropy), InstanceStart, the agent's Hello, pause (a Ping on an open connection gets
//! no answer while paused) and resume (the agent answers a Ping), `GET /vm/config` read
//! back, bad requests answered with 400 and a fault message while the guest keeps
//! running (including an idle connection that must not block others, garbage bytes and
//! an oversized body), FlushMetrics checked in the metrics file, and a clean shutdown.
//! A second test boots from `--config-file` with `--api-sock` and keeps serving. A third
//! sends SendCtrlAltDel to a running guest: its kernel restarts through the i8042 reset
//! and husk exits 0.
//!
//! Needs a hardware-virt KVM host (run it through `husk-testhost`), `HUSK_KERNEL`, the
//! static binaries (husk, husk-agent, fn-echo) and curl; fails, never skips.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use husk_agent::client::{AgentClient, ClientConfig};
use husk_agent::config::Mode;
use husk_agent::pack::{pack, PackSpec};
use husk_tests::e2e::{self, ScratchDir, Spawned, Stream};
use serde_json::Value;

const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
const STEP_TIMEOUT: Duration = Duration::from_secs(60);
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);
const CMDLINE: &str = "console=ttyS0 reboot=k panic=0 pci=off nomodule \
     i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd quiet husk.reuse=1";

/// One HTTP exchange with curl: (status, body).
fn curl(sock: &Path, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "30", "--unix-socket"])
        .arg(sock)
        .args(["-X", method, "-w", "\n%{http_code}"]);
    if let Some(b) = body {
        cmd.args(["-H", "Content-Type: application/json", "--data-binary", b]);
    }
    cmd.arg(format!("http://localhost{path}"));
    let out = e2e::run_with_timeout(&mut cmd, Duration::from_secs(40)).unwrap();
    let text = out.stdout_str();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", text.as_str()));
    let code = code
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("curl {method} {path}: {text:?} {}", out.stderr_str()));
    (code, body.to_string())
}

/// PUT the boot source (`kernel`, `initrd`, `boot_args`), the machine config (1 vCPU,
/// 128 MiB) and the vsock device (guest CID 3 on `uds`), each answered 2xx.
fn configure_boot(sock: &Path, kernel: &Path, initrd: &Path, boot_args: &str, uds: &Path) {
    let s = |p: &Path| p.to_str().unwrap().to_string();
    ok(
        sock,
        "PUT",
        "/boot-source",
        Some(&format!(
            r#"{{"kernel_image_path": "{}", "initrd_path": "{}", "boot_args": "{boot_args}"}}"#,
            s(kernel),
            s(initrd)
        )),
    );
    ok(
        sock,
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count": 1, "mem_size_mib": 128}"#),
    );
    ok(
        sock,
        "PUT",
        "/vsock",
        Some(&format!(r#"{{"guest_cid": 3, "uds_path": "{}"}}"#, s(uds))),
    );
}

fn ok(sock: &Path, method: &str, path: &str, body: Option<&str>) -> String {
    let (code, text) = curl(sock, method, path, body);
    assert!(
        code == 200 || code == 204,
        "{method} {path} {body:?}: {code} {text}"
    );
    text
}

/// A request that must get a 400 whose fault message contains `needle`.
fn fault(sock: &Path, method: &str, path: &str, body: Option<&str>, needle: &str) {
    let (code, text) = curl(sock, method, path, body);
    assert_eq!(code, 400, "{method} {path}: {text}");
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
    let msg = v["fault_message"].as_str().unwrap_or_default();
    assert!(
        msg.contains(needle),
        "{method} {path}: {msg:?} lacks {needle:?}"
    );
}

fn get_json(sock: &Path, path: &str) -> Value {
    serde_json::from_str(&ok(sock, "GET", path, None)).unwrap()
}

fn wait_for_socket(path: &Path, vm: &mut Spawned) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while UnixStream::connect(path).is_err() {
        assert!(
            Instant::now() < deadline,
            "no API socket at {path:?}:\n{}",
            vm.transcript()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn initramfs(dir: &Path) -> PathBuf {
    let spec = PackSpec {
        agent: e2e::bin("husk-agent").unwrap_or_else(|e| panic!("{e}")),
        function: e2e::bin("fn-echo").unwrap_or_else(|e| panic!("{e}")),
        mode: Mode::Exec,
        args: vec![],
        env: BTreeMap::new(),
        files: vec![],
        deadline_ms: None,
        output_cap: None,
        gzip: false,
    };
    let initrd = dir.join("initramfs.cpio");
    std::fs::write(&initrd, pack(&spec).unwrap()).unwrap();
    initrd
}

fn agent(uds: &Path, vm: &mut Spawned, wait: Duration) -> AgentClient {
    let mut cfg = ClientConfig::new(uds);
    cfg.connect_timeout = Duration::from_secs(10);
    AgentClient::connect_with_retry(&cfg, wait)
        .unwrap_or_else(|e| panic!("cannot reach the agent: {e}\n{}", vm.transcript()))
}

/// Raw bytes to the API socket; returns what came back before the server closed.
fn raw(sock: &Path, bytes: &[u8]) -> String {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(STEP_TIMEOUT)).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Pause, prove the guest is stopped (an open connection's Ping gets no answer), resume,
/// prove it runs (a Ping on a new connection is answered).
fn pause_and_resume(sock: &Path, uds: &Path, vm: &mut Spawned) {
    let mut before = agent(uds, vm, STEP_TIMEOUT);
    before.ping(1, STEP_TIMEOUT).unwrap();
    ok(sock, "PATCH", "/vm", Some(r#"{"state": "Paused"}"#));
    assert_eq!(get_json(sock, "/")["state"], "Paused");
    assert!(
        before.ping(2, Duration::from_secs(3)).is_err(),
        "a paused guest answered a Ping"
    );
    ok(sock, "PATCH", "/vm", Some(r#"{"state": "Resumed"}"#));
    assert_eq!(get_json(sock, "/")["state"], "Running");
    let mut after = agent(uds, vm, STEP_TIMEOUT);
    after
        .ping(3, STEP_TIMEOUT)
        .unwrap_or_else(|e| panic!("no Ping answer after resume: {e}\n{}", vm.transcript()));
}

fn shutdown(uds: &Path, sock: &Path, vm: &mut Spawned) {
    agent(uds, vm, STEP_TIMEOUT).shutdown().unwrap();
    let status = vm.wait_exit(EXIT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        status.success(),
        "husk exited {status}:\n{}",
        vm.transcript()
    );
    assert!(!sock.exists(), "the API socket was not removed at exit");
}

#[test]
fn configure_boot_pause_resume_and_bad_requests_through_the_socket() {
    e2e::require_hardware_kvm().unwrap_or_else(|e| panic!("{e}"));
    e2e::find_program("curl").unwrap_or_else(|e| panic!("{e}"));
    let husk = e2e::bin("husk").unwrap_or_else(|e| panic!("{e}"));
    let kernel = e2e::kernel().unwrap_or_else(|e| panic!("{e}"));
    let dir = ScratchDir::new("api").unwrap();
    let d = dir.path();
    let initrd = initramfs(d);
    let sock = d.join("api.sock");
    let uds = d.join("vsock.sock");
    let log = d.join("husk.log");
    let metrics = d.join("metrics.json");

    let mut cmd = Command::new(husk);
    cmd.arg("--api-sock").arg(&sock).args(["--id", "api_e2e"]);
    let mut vm = Spawned::spawn(cmd).unwrap();
    wait_for_socket(&sock, &mut vm);

    let info = get_json(&sock, "/");
    assert_eq!(
        (info["state"].as_str(), info["id"].as_str()),
        (Some("Not started"), Some("api_e2e"))
    );
    assert!(get_json(&sock, "/version")["firecracker_version"].is_string());
    let s = |p: &Path| p.to_str().unwrap().to_string();
    ok(
        &sock,
        "PUT",
        "/logger",
        Some(&format!(
            r#"{{"log_path": "{}", "level": "Info", "show_level": true}}"#,
            s(&log)
        )),
    );
    ok(
        &sock,
        "PUT",
        "/metrics",
        Some(&format!(r#"{{"metrics_path": "{}"}}"#, s(&metrics))),
    );
    configure_boot(&sock, &kernel, &initrd, CMDLINE, &uds);
    ok(&sock, "PUT", "/entropy", Some("{}"));
    // Pre-boot mistakes.
    fault(
        &sock,
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count": 1}"#),
        "mem_size_mib",
    );
    fault(
        &sock,
        "PATCH",
        "/vm",
        Some(r#"{"state": "Paused"}"#),
        "before starting",
    );
    fault(
        &sock,
        "PUT",
        "/actions",
        Some(r#"{"action_type": "SendCtrlAltDel"}"#),
        "before starting",
    );
    assert_eq!(get_json(&sock, "/machine-config")["mem_size_mib"], 128);

    let started = Instant::now();
    ok(
        &sock,
        "PUT",
        "/actions",
        Some(r#"{"action_type": "InstanceStart"}"#),
    );
    let mut first = agent(&uds, &mut vm, BOOT_TIMEOUT);
    println!(
        "api e2e: InstanceStart -> agent Hello {:.0} ms",
        started.elapsed().as_secs_f64() * 1000.0
    );
    first.ping(7, STEP_TIMEOUT).unwrap();
    drop(first);
    assert_eq!(get_json(&sock, "/")["state"], "Running");

    pause_and_resume(&sock, &uds, &mut vm);

    let cfg = get_json(&sock, "/vm/config");
    assert_eq!(cfg["boot-source"]["kernel_image_path"], s(&kernel));
    assert_eq!(cfg["boot-source"]["boot_args"], CMDLINE);
    assert_eq!(cfg["machine-config"]["vcpu_count"], 1);
    assert_eq!(cfg["vsock"]["guest_cid"], 3);
    assert_eq!(cfg["entropy"], serde_json::json!({}));
    assert_eq!(cfg["drives"], serde_json::json!([]));

    // Bad requests while the guest runs; an idle client stays connected meanwhile.
    let idle = UnixStream::connect(&sock).unwrap();
    let half = {
        let mut h = UnixStream::connect(&sock).unwrap();
        h.write_all(b"PUT /vm HTTP/1.1\r\nContent-Length: 40\r\n\r\n{\"st")
            .unwrap();
        h
    };
    fault(
        &sock,
        "PUT",
        "/boot-source",
        Some(r#"{"kernel_image_path": "/k"}"#),
        "not supported after starting the microVM",
    );
    fault(
        &sock,
        "PUT",
        "/actions",
        Some(r#"{"action_type": "InstanceStart"}"#),
        "after starting",
    );
    fault(
        &sock,
        "PUT",
        "/drives/rootfs",
        Some(
            r#"{"drive_id": "rootfs", "path_on_host": "/r.ext4", "is_root_device": true, "is_read_only": true}"#,
        ),
        "not supported after starting the microVM",
    );
    fault(&sock, "PUT", "/logger", Some("{not json"), "deserializing");
    fault(
        &sock,
        "PATCH",
        "/vm",
        Some(r#"{"state": "Paused", "x": 1}"#),
        "unknown field",
    );
    fault(
        &sock,
        "GET",
        "/nope",
        None,
        "Invalid request method and/or path",
    );
    let garbage = raw(&sock, b"\x00\x01\x02 garbage\r\n\r\n");
    assert!(garbage.starts_with("HTTP/1.1 400"), "{garbage:?}");
    let big = raw(
        &sock,
        b"PUT /logger HTTP/1.1\r\nContent-Length: 10000000\r\n\r\n{",
    );
    assert!(
        big.starts_with("HTTP/1.1 400") && big.contains("larger than the limit"),
        "{big:?}"
    );
    assert_eq!(get_json(&sock, "/")["state"], "Running");
    drop((idle, half));
    agent(&uds, &mut vm, STEP_TIMEOUT)
        .ping(8, STEP_TIMEOUT)
        .unwrap_or_else(|e| panic!("guest stopped answering after bad requests: {e}"));

    ok(
        &sock,
        "PUT",
        "/actions",
        Some(r#"{"action_type": "FlushMetrics"}"#),
    );
    let text = std::fs::read_to_string(&metrics).unwrap();
    let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert!(
        last["api_server"]["requests"].as_u64().unwrap() >= 20,
        "{last}"
    );
    assert!(
        last["api_server"]["errors"].as_u64().unwrap() >= 9,
        "{last}"
    );
    assert!(last["vcpu"]["exit_io_out"].as_u64().unwrap() > 0, "{last}");
    assert_eq!(last["devices"]["vsock"]["activated"], true, "{last}");
    assert!(
        last["devices"]["serial"]["writes"].as_u64().unwrap() > 0,
        "{last}"
    );
    assert!(
        last["boot"]["ready_after_us"].as_u64().unwrap() > 0,
        "{last}"
    );
    println!(
        "api e2e: boot ready after {} us (metrics)",
        last["boot"]["ready_after_us"]
    );
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(log_text.contains("INFO"), "log file: {log_text:?}");

    shutdown(&uds, &sock, &mut vm);
}

#[test]
fn config_file_boots_and_the_api_keeps_serving() {
    e2e::require_hardware_kvm().unwrap_or_else(|e| panic!("{e}"));
    e2e::find_program("curl").unwrap_or_else(|e| panic!("{e}"));
    let husk = e2e::bin("husk").unwrap_or_else(|e| panic!("{e}"));
    let kernel = e2e::kernel().unwrap_or_else(|e| panic!("{e}"));
    let dir = ScratchDir::new("api-config").unwrap();
    let d = dir.path();
    let initrd = initramfs(d);
    let sock = d.join("api.sock");
    let uds = d.join("vsock.sock");
    // Not quiet: the kernel's banner must show up on husk's stdout.
    let verbose = CMDLINE.replace(" quiet", "");
    let config = serde_json::json!({
        "boot-source": {
            "kernel_image_path": kernel,
            "initrd_path": initrd,
            "boot_args": verbose,
        },
        "machine-config": { "vcpu_count": 1, "mem_size_mib": 128 },
        "vsock": { "guest_cid": 3, "uds_path": uds },
        "entropy": {},
    });
    let cfg_path = d.join("vm.json");
    std::fs::write(&cfg_path, config.to_string()).unwrap();
    let mut cmd = Command::new(husk);
    cmd.arg("--api-sock")
        .arg(&sock)
        .arg("--config-file")
        .arg(&cfg_path);
    let mut vm = Spawned::spawn(cmd).unwrap();
    wait_for_socket(&sock, &mut vm);
    agent(&uds, &mut vm, BOOT_TIMEOUT)
        .ping(1, STEP_TIMEOUT)
        .unwrap();
    // The config file and the API share one set of types: /vm/config is the file.
    let back = get_json(&sock, "/vm/config");
    for key in ["boot-source", "vsock", "entropy"] {
        assert_eq!(back[key], config[key], "{key}");
    }
    assert_eq!(back["machine-config"]["mem_size_mib"], 128);
    fault(&sock, "PUT", "/entropy", Some("{}"), "after starting");
    pause_and_resume(&sock, &uds, &mut vm);
    // The guest console stays on stdout in this mode.
    let banner = vm
        .lines()
        .iter()
        .any(|l| l.stream == Stream::Stdout && l.text.contains("Linux version"));
    assert!(banner, "no kernel banner on stdout:\n{}", vm.transcript());
    shutdown(&uds, &sock, &mut vm);
}

#[test]
fn send_ctrl_alt_del_reboots_the_guest_and_husk_exits_0() {
    e2e::require_hardware_kvm().unwrap_or_else(|e| panic!("{e}"));
    e2e::find_program("curl").unwrap_or_else(|e| panic!("{e}"));
    let husk = e2e::bin("husk").unwrap_or_else(|e| panic!("{e}"));
    let kernel = e2e::kernel().unwrap_or_else(|e| panic!("{e}"));
    let dir = ScratchDir::new("api-cad").unwrap();
    let d = dir.path();
    let initrd = initramfs(d);
    let sock = d.join("api.sock");
    let uds = d.join("vsock.sock");
    let log = d.join("husk.log");
    // Not quiet: the kernel's i8042/atkbd probe lines must show up on the console.
    let verbose = CMDLINE.replace(" quiet", "");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let mut cmd = Command::new(husk);
    cmd.arg("--api-sock").arg(&sock);
    let mut vm = Spawned::spawn(cmd).unwrap();
    wait_for_socket(&sock, &mut vm);
    ok(
        &sock,
        "PUT",
        "/logger",
        Some(&format!(
            r#"{{"log_path": "{}", "level": "Info"}}"#,
            s(&log)
        )),
    );
    configure_boot(&sock, &kernel, &initrd, &verbose, &uds);
    ok(
        &sock,
        "PUT",
        "/actions",
        Some(r#"{"action_type": "InstanceStart"}"#),
    );
    // The agent answers: the kernel finished its driver probes long before PID 1 ran.
    agent(&uds, &mut vm, BOOT_TIMEOUT)
        .ping(1, STEP_TIMEOUT)
        .unwrap();
    let console = |vm: &mut Spawned, needle: &str| {
        vm.lines()
            .iter()
            .any(|l| l.stream == Stream::Stdout && l.text.contains(needle))
    };
    for probe in [
        "serio: i8042 KBD port at 0x60,0x64 irq 1",
        "input: AT Raw Set 2 keyboard",
    ] {
        assert!(
            console(&mut vm, probe),
            "guest console lacks {probe:?}:\n{}",
            vm.transcript()
        );
    }
    const RESET_LINE: &str = "guest requested a reset through the i8042 controller";
    assert!(
        !std::fs::read_to_string(&log).unwrap().contains(RESET_LINE),
        "the guest reset before Ctrl+Alt+Del was sent"
    );
    assert!(!console(&mut vm, "reboot: Restarting system"));

    let sent = Instant::now();
    ok(
        &sock,
        "PUT",
        "/actions",
        Some(r#"{"action_type": "SendCtrlAltDel"}"#),
    );
    let status = vm
        .wait_exit(Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("husk did not exit after Ctrl+Alt+Del: {e}"));
    println!(
        "api e2e: SendCtrlAltDel -> husk exit {:.0} ms",
        sent.elapsed().as_secs_f64() * 1000.0
    );
    assert!(
        status.success(),
        "husk exited {status}:\n{}",
        vm.transcript()
    );
    // The guest kernel restarted (console) through the i8042 reset (husk's log).
    assert!(
        console(&mut vm, "reboot: Restarting system"),
        "the guest did not restart:\n{}",
        vm.transcript()
    );
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(
        log_text.contains("sent Ctrl+Alt+Del to the guest"),
        "{log_text}"
    );
    assert!(log_text.contains(RESET_LINE), "{log_text}");
    assert!(!sock.exists(), "the API socket was not removed at exit");
}

/// Voluntary + involuntary context switches per thread of `pid`: (name, count).
fn thread_switches(pid: u32) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let status = std::fs::read_to_string(entry.unwrap().path().join("status")).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
                .unwrap_or_default()
        };
        let n = field("voluntary_ctxt_switches:")
            .parse::<u64>()
            .unwrap_or(0)
            + field("nonvoluntary_ctxt_switches:")
                .parse::<u64>()
                .unwrap_or(0);
        out.push((field("Name:"), n));
    }
    out.sort();
    out
}

/// Benchmark (prints figures, asserts only that it could measure): wake-ups of a booted,
/// idle sandbox over 10 s, per thread, from /proc/PID/task/*/status context switches,
/// with and without the entropy device. The vCPU thread's count is the guest's own timer
/// activity; the VMM's threads (main = event loop, husk-api) wake only for guest device
/// requests (queue notifications) or host requests: there is no periodic polling.
#[test]
#[ignore = "figure, not a test: scripts/test runs it in its figures pass (--ignored)"]
fn idle_wakeups_benchmark() {
    e2e::require_hardware_kvm().unwrap_or_else(|e| panic!("{e}"));
    for entropy in [true, false] {
        idle_wakeups(entropy);
    }
}

fn idle_wakeups(entropy: bool) {
    let husk = e2e::bin("husk").unwrap_or_else(|e| panic!("{e}"));
    let kernel = e2e::kernel().unwrap_or_else(|e| panic!("{e}"));
    let dir = ScratchDir::new("api-idle").unwrap();
    let d = dir.path();
    let initrd = initramfs(d);
    let sock = d.join("api.sock");
    let uds = d.join("vsock.sock");
    let mut config = serde_json::json!({
        "boot-source": { "kernel_image_path": kernel, "initrd_path": initrd, "boot_args": CMDLINE },
        "vsock": { "guest_cid": 3, "uds_path": uds },
    });
    if entropy {
        config["entropy"] = serde_json::json!({});
    }
    let cfg_path = d.join("vm.json");
    std::fs::write(&cfg_path, config.to_string()).unwrap();
    let mut cmd = Command::new(husk);
    cmd.arg("--api-sock")
        .arg(&sock)
        .arg("--config-file")
        .arg(&cfg_path);
    let mut vm = Spawned::spawn(cmd).unwrap();
    wait_for_socket(&sock, &mut vm);
    agent(&uds, &mut vm, BOOT_TIMEOUT)
        .ping(1, STEP_TIMEOUT)
        .unwrap();
    // Let the guest settle after the connection closed.
    std::thread::sleep(Duration::from_secs(3));
    let pid = vm.pid();
    let before = thread_switches(pid);
    std::thread::sleep(Duration::from_secs(10));
    let after = thread_switches(pid);
    assert_eq!(before.len(), after.len(), "threads came or went");
    for ((name, a), (_, b)) in before.iter().zip(&after) {
        println!(
            "api e2e idle (entropy device: {entropy}): thread {name:<12} {:.1} wake-ups/s over 10 s",
            (b - a) as f64 / 10.0
        );
    }
    shutdown(&uds, &sock, &mut vm);
}
