//! Snapshot e2e test: boot the `fn-counter` worker (reuse on) with the API socket, warm
//! it with three invocations, snapshot it through the API (`husk snapshot create
//! --api-sock`), then restore clones, each in a fresh `husk snapshot restore` process
//! with its own vsock socket, all running at once: each answers its first invocation
//! with the counter value from before the snapshot plus one. `kill -9` of the VMM in
//! the middle of a create leaves no state file; a bit-flipped and a truncated state file
//! are refused cleanly. Also: five clones draw different random bytes (a 2-vCPU guest,
//! snapshotted with a vsock connection open), a clone of a warmed, normally booted
//! sandbox refuses invocations until `Restored` (the restore gate needs no boot option),
//! `husk snapshot create --at-ready`, the
//! API-only load (`husk --api-sock` with no config, Firecracker's `PUT /snapshot/load`
//! body, 400s for a bad path and a second load) and a restored sandbox under
//! `husk-jailer` (state and memory `--include`d, loaded through the jail's API socket).
//! Prints (benchmark, not asserted):
//! boot → first result vs restore → first result, medians, and the snapshot sizes.
//!
//! Needs a hardware-virt KVM host (run it through `husk-testhost`), `HUSK_KERNEL` and the
//! static binaries (`scripts/build.sh`); fails, never skips.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use husk_agent::client::{AgentClient, ClientConfig};
use husk_agent::config::Mode;
use husk_agent::pack::{pack, PackSpec};
use husk_agent::protocol::{Invoke, InvokeResult, Status};
use husk_tests::e2e::{self, ScratchDir, Spawned};

const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
const STEP_TIMEOUT: Duration = Duration::from_secs(60);
const CLONES: usize = 5;
const BASE_CMDLINE: &str = "console=ttyS0 reboot=k panic=0 pci=off nomodule \
     i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd quiet husk.reuse=1";

fn husk() -> PathBuf {
    e2e::bin("husk").unwrap_or_else(|e| panic!("{e}"))
}

fn pack_worker(dir: &Path, function: &str) -> PathBuf {
    let spec = PackSpec {
        agent: e2e::bin("husk-agent").unwrap_or_else(|e| panic!("{e}")),
        function: e2e::bin(function).unwrap_or_else(|e| panic!("{e}")),
        mode: Mode::Worker,
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

fn boot(dir: &Path, initrd: &Path, uds: &Path, api: &Path) -> Spawned {
    boot_vcpus(dir, initrd, uds, api, 1)
}

fn boot_vcpus(dir: &Path, initrd: &Path, uds: &Path, api: &Path, vcpus: u8) -> Spawned {
    let mut cmd = Command::new(husk());
    cmd.arg("run")
        .args(["--vcpus", &vcpus.to_string()])
        .arg("--kernel")
        .arg(e2e::kernel().unwrap_or_else(|e| panic!("{e}")))
        .arg("--initrd")
        .arg(initrd)
        .args(["--mem-mib", "128", "--vsock-cid", "3", "--vsock-uds"])
        .arg(uds)
        .arg("--api-sock")
        .arg(api)
        .args(["--entropy", "--boot-timer", "--console"])
        .arg(dir.join("console.log"))
        .arg("--cmdline")
        .arg(BASE_CMDLINE);
    Spawned::spawn(cmd).unwrap()
}

fn invoke(uds: &Path, vm: &mut Spawned, wait: Duration) -> InvokeResult {
    let mut cfg = ClientConfig::new(uds);
    cfg.connect_timeout = Duration::from_secs(10);
    let mut c = AgentClient::connect_with_retry(&cfg, wait).unwrap_or_else(|e| {
        panic!(
            "cannot reach the agent: {e}\n--- transcript ---\n{}",
            vm.transcript()
        )
    });
    c.invoke(Invoke::new(1, 10_000, b"tick".to_vec()), STEP_TIMEOUT)
        .unwrap_or_else(|e| panic!("invocation failed: {e}\n{}", vm.transcript()))
}

fn snapshot_via_api(api: &Path, state: &Path, mem: &Path) -> e2e::Finished {
    e2e::run_with_timeout(
        Command::new(husk())
            .args(["snapshot", "create", "--api-sock"])
            .arg(api)
            .arg("--snapshot-path")
            .arg(state)
            .arg("--mem-file-path")
            .arg(mem),
        STEP_TIMEOUT,
    )
    .unwrap()
}

fn restore(dir: &Path, state: &Path, mem: &Path, uds: &Path, id: &str) -> Spawned {
    let mut cmd = Command::new(husk());
    cmd.args(["snapshot", "restore", "--boot-timer", "--snapshot-path"])
        .arg(state)
        .arg("--mem-file-path")
        .arg(mem)
        .arg("--vsock-uds")
        .arg(uds)
        .args(["--sandbox-id", id, "--console"])
        .arg(dir.join(format!("console-{id}.log")));
    Spawned::spawn(cmd).unwrap()
}

#[test]
fn warmed_counter_snapshot_restores_into_coexisting_clones() {
    e2e::require_hardware_kvm().unwrap_or_else(|e| panic!("{e}"));
    let dir = ScratchDir::new("snapshot").unwrap();
    let d = dir.path();
    let initrd = pack_worker(d, "fn-counter");
    let (uds, api) = (d.join("vsock.sock"), d.join("api.sock"));
    let state = d.join("counter.state");
    let mem = d.join("counter.mem");

    // Boot and warm: three ticks. Boot → first result is the baseline figure.
    let started = Instant::now();
    let mut vm = boot(d, &initrd, &uds, &api);
    let r = invoke(&uds, &mut vm, BOOT_TIMEOUT);
    let boot_to_first = started.elapsed();
    assert_eq!((r.status, r.body.clone()), (Status::Ok, b"1".to_vec()));
    for n in 2..=3 {
        let r = invoke(&uds, &mut vm, STEP_TIMEOUT);
        assert_eq!((r.status, r.body), (Status::Ok, n.to_string().into_bytes()));
    }

    // Snapshot through the API socket: pause, create.
    let t = Instant::now();
    let out = e2e::run_with_timeout(
        Command::new(husk())
            .args(["snapshot", "create", "--api-sock"])
            .arg(&api)
            .arg("--snapshot-path")
            .arg(&state)
            .arg("--mem-file-path")
            .arg(&mem),
        STEP_TIMEOUT,
    )
    .unwrap();
    let create_took = t.elapsed();
    assert!(
        out.status.success(),
        "snapshot create failed: {}\n{}",
        out.stderr_str(),
        vm.transcript()
    );
    // kill -9 of the VMM in the middle of a second create leaves nothing that loads.
    let (kstate, kmem) = (d.join("killed.state"), d.join("killed.mem"));
    let tmp = d.join(format!("killed.mem.tmp-{}", vm.pid()));
    let mut create = Command::new(husk())
        .args(["snapshot", "create", "--api-sock"])
        .arg(&api)
        .arg("--snapshot-path")
        .arg(&kstate)
        .arg("--mem-file-path")
        .arg(&kmem)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while !tmp.exists() && t.elapsed() < STEP_TIMEOUT {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(tmp.exists(), "the memory file was never being written");
    vm.kill(); // SIGKILL to the VMM's process group, mid-create
    let _ = create.wait();
    assert!(
        !kstate.exists(),
        "a state file appeared although create was killed"
    );
    let out = e2e::run_with_timeout(
        Command::new(husk())
            .args(["snapshot", "restore", "--snapshot-path"])
            .arg(&kstate)
            .arg("--mem-file-path")
            .arg(&kmem),
        STEP_TIMEOUT,
    )
    .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr_str());
    assert!(
        out.stderr_str()
            .contains("cannot open the snapshot state file"),
        "{}",
        out.stderr_str()
    );
    let (state_md, mem_md) = (
        std::fs::metadata(&state).unwrap(),
        std::fs::metadata(&mem).unwrap(),
    );
    assert_eq!(mem_md.len(), 128 << 20, "memory file holds all guest RAM");
    assert!(
        mem_md.blocks() * 512 < mem_md.len(),
        "memory file is sparse"
    );

    // Baseline: two more boots of the same function, boot -> first result.
    let mut boots = vec![boot_to_first];
    for b in 0..2 {
        let (buds, bapi) = (d.join(format!("b{b}.sock")), d.join(format!("b{b}.api")));
        let t = Instant::now();
        let mut v = boot(d, &initrd, &buds, &bapi);
        let r = invoke(&buds, &mut v, BOOT_TIMEOUT);
        boots.push(t.elapsed());
        assert_eq!(r.body, b"1".to_vec());
        v.kill();
    }

    // Clones, each in a fresh process with its own vsock socket, all alive at once.
    let mut clones = Vec::new();
    let mut restore_to_first = Vec::new();
    let mut phases = Vec::new();
    for i in 0..CLONES {
        let cuds = d.join(format!("clone{i}.sock"));
        let t = Instant::now();
        let mut c = restore(d, &state, &mem, &cuds, &format!("clone{i}"));
        let loaded = c
            .wait_for_line("snapshot loaded in", BOOT_TIMEOUT)
            .unwrap_or_else(|e| panic!("clone {i}: {e}"));
        let restored = c
            .wait_for_line("agent restored (generation", BOOT_TIMEOUT)
            .unwrap_or_else(|e| panic!("clone {i}: {e}"));
        let r = invoke(&cuds, &mut c, STEP_TIMEOUT);
        restore_to_first.push(t.elapsed());
        phases.push(format!(
            "[{}] [{}] result at {} ms",
            loaded.text,
            restored.text,
            t.elapsed().as_millis()
        ));
        assert_eq!(
            (r.status, r.body),
            (Status::Ok, b"4".to_vec()),
            "clone {i} continues from the warmed counter (3)"
        );
        clones.push((c, cuds));
    }
    // Every clone is still alive and independent: a second tick gives 5 in each.
    for (c, cuds) in &mut clones {
        let r = invoke(cuds, c, STEP_TIMEOUT);
        assert_eq!((r.status, r.body), (Status::Ok, b"5".to_vec()));
    }
    for (mut c, _) in clones {
        c.kill();
    }

    // Corrupted state files are refused with a clear error, no VM started.
    let good = std::fs::read(&state).unwrap();
    let bad = d.join("bad.state");
    let mut flipped = good.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x01;
    for (what, bytes, needle) in [
        ("bit flip", flipped, "corrupt"),
        ("truncated", good[..good.len() / 3].to_vec(), "truncated"),
    ] {
        std::fs::write(&bad, bytes).unwrap();
        let out = e2e::run_with_timeout(
            Command::new(husk())
                .args(["snapshot", "restore", "--snapshot-path"])
                .arg(&bad)
                .arg("--mem-file-path")
                .arg(&mem),
            STEP_TIMEOUT,
        )
        .unwrap();
        assert_eq!(out.status.code(), Some(1), "{what}: {}", out.stderr_str());
        assert!(
            out.stderr_str().contains(needle),
            "{what}: {}",
            out.stderr_str()
        );
    }

    for p in &phases {
        println!("clone phases: {p}");
    }
    println!(
        "snapshot benchmark: boot -> first result median {:.0} ms over 3 boots (min {:.0}, max {:.0}); restore -> first result median {:.0} ms over {CLONES} clones (min {:.0}, max {:.0}); create {:.0} ms; state {} bytes; memory {} MiB apparent, {} KiB allocated",
        e2e::median(&boots).as_secs_f64() * 1e3,
        boots.iter().min().unwrap().as_secs_f64() * 1e3,
        boots.iter().max().unwrap().as_secs_f64() * 1e3,
        e2e::median(&restore_to_first).as_secs_f64() * 1e3,
        restore_to_first.iter().min().unwrap().as_secs_f64() * 1e3,
        restore_to_first.iter().max().unwrap().as_secs_f64() * 1e3,
        create_took.as_secs_f64() * 1e3,
        state_md.len(),
        mem_md.len() >> 20,
        mem_md.blocks() * 512 / 1024,
    );
}

/// Five clones of one snapshot of `fn-random` (32 bytes from `getrandom` per request)
/// give five answers that differ from each other and from the answer before the
/// snapshot. The worker had already drawn from the kernel's CRNG twice before the
/// snapshot (at start and in the warm-up invocation), so its per-CPU CRNG state is in
/// the snapshot, the same in every clone; what makes the clones differ is the agent's
/// `Restored` handling (credited host entropy, then a forced reseed), which `husk
/// snapshot restore` sends before the invocation. Without it, clones whose request runs
/// on the same vCPU would draw identical bytes until the kernel's next periodic reseed
/// (five clones on two vCPUs: at least three share one), so this test fails without
/// the reseed unless that reseed happens to fall between restore and request; the
/// agent's unit tests cover that `Restored` reaches the entropy hook.
/// Also: the snapshot is of a 2-vCPU guest, and taken while a vsock connection to the
/// agent is open (the clones drop it on the transport reset and serve new ones).
#[test]
fn clones_of_one_snapshot_draw_different_random_bytes() {
    e2e::require_hardware_kvm().unwrap_or_else(|e| panic!("{e}"));
    let dir = ScratchDir::new("snapshot-rand").unwrap();
    let d = dir.path();
    let initrd = pack_worker(d, "fn-random");
    let (uds, api) = (d.join("vsock.sock"), d.join("api.sock"));
    let (state, mem) = (d.join("rand.state"), d.join("rand.mem"));
    let mut vm = boot_vcpus(d, &initrd, &uds, &api, 2);
    // Warm: the worker has drawn random bytes before the snapshot.
    let before = invoke(&uds, &mut vm, BOOT_TIMEOUT);
    assert_eq!(before.status, Status::Ok);
    assert_eq!(before.body.len(), 64, "32 bytes in hex");
    let open = AgentClient::connect(&ClientConfig::new(&uds)).unwrap();
    let out = snapshot_via_api(&api, &state, &mem);
    assert!(out.status.success(), "{}", out.stderr_str());
    drop(open);
    vm.kill();
    let mut seen = vec![before.body];
    for i in 0..CLONES {
        let cuds = d.join(format!("r{i}.sock"));
        let mut c = restore(d, &state, &mem, &cuds, &format!("r{i}"));
        c.wait_for_line("agent restored (generation", BOOT_TIMEOUT)
            .unwrap_or_else(|e| panic!("clone {i}: {e}"));
        let r = invoke(&cuds, &mut c, STEP_TIMEOUT);
        assert_eq!(r.status, Status::Ok);
        assert_eq!(r.body.len(), 64, "32 bytes in hex");
        assert!(
            !seen.contains(&r.body),
            "clone {i} repeated random bytes: {}",
            String::from_utf8_lossy(&r.body)
        );
        seen.push(r.body);
        c.kill();
    }
}

/// The guest boots with `husk.await_restore=1`: a clone restored without husk's
/// handshake refuses invocations until the host sends `Restored`.
/// Also prints (benchmark): restore -> first result for a 128 MiB and a 1 GiB guest,
/// which should be about the same (the memory file is mapped, not read).
#[test]
fn snapshot_at_ready_then_restore_serves_from_the_ready_state() {
    e2e::require_hardware_kvm().unwrap_or_else(|e| panic!("{e}"));
    let dir = ScratchDir::new("snapshot-ready").unwrap();
    let d = dir.path();
    let initrd = pack_worker(d, "fn-counter");
    let mut figures = Vec::new();
    for mib in [128u64, 1024] {
        let (state, mem) = (
            d.join(format!("r{mib}.state")),
            d.join(format!("r{mib}.mem")),
        );
        // Boot, wait for the agent's ready marker, snapshot, exit 0: one command.
        let t = Instant::now();
        let out = e2e::run_with_timeout(
            Command::new(husk())
                .args(["snapshot", "create", "--at-ready", "--snapshot-path"])
                .arg(&state)
                .arg("--mem-file-path")
                .arg(&mem)
                .args(["--", "--kernel"])
                .arg(e2e::kernel().unwrap_or_else(|e| panic!("{e}")))
                .arg("--initrd")
                .arg(&initrd)
                .args([
                    "--mem-mib",
                    &mib.to_string(),
                    "--vsock-cid",
                    "3",
                    "--vsock-uds",
                ])
                .arg(d.join("boot.sock"))
                .args(["--entropy", "--console", "null", "--cmdline"])
                .arg(format!("{BASE_CMDLINE} husk.await_restore=1")),
            BOOT_TIMEOUT,
        )
        .unwrap();
        let boot_and_create = t.elapsed();
        assert_eq!(out.status.code(), Some(0), "{}", out.stderr_str());
        assert_eq!(std::fs::metadata(&mem).unwrap().len(), mib << 20);
        let mut times = Vec::new();
        for i in 0..3 {
            let cuds = d.join(format!("c{mib}-{i}.sock"));
            let t = Instant::now();
            let mut c = restore(d, &state, &mem, &cuds, &format!("ready{mib}-{i}"));
            c.wait_for_line("agent restored (generation", BOOT_TIMEOUT)
                .unwrap_or_else(|e| panic!("{e}"));
            let r = invoke(&cuds, &mut c, STEP_TIMEOUT);
            times.push(t.elapsed());
            assert_eq!((r.status, r.body), (Status::Ok, b"1".to_vec()));
            c.kill();
        }
        if mib == 128 {
            // Without the handshake: refused until Restored, then served.
            let cuds = d.join("gate.sock");
            let mut cmd = Command::new(husk());
            cmd.args(["snapshot", "restore", "--skip-handshake", "--snapshot-path"])
                .arg(&state)
                .arg("--mem-file-path")
                .arg(&mem)
                .arg("--vsock-uds")
                .arg(&cuds);
            let mut c = Spawned::spawn(cmd).unwrap();
            let mut cfg = ClientConfig::new(&cuds);
            cfg.connect_timeout = Duration::from_secs(10);
            let mut client = AgentClient::connect_with_retry(&cfg, BOOT_TIMEOUT)
                .unwrap_or_else(|e| panic!("{e}\n{}", c.transcript()));
            let tick = Invoke::new(1, 10_000, b"tick".to_vec());
            match client.invoke(tick.clone(), STEP_TIMEOUT) {
                Err(husk_agent::client::ClientError::Agent(e)) => {
                    assert_eq!(
                        e.code,
                        husk_agent::protocol::ErrorCode::AwaitingRestore as u16
                    )
                }
                other => panic!("invocation before Restored was not refused: {other:?}"),
            }
            let hello = client
                .restored(
                    husk_agent::protocol::Restored {
                        entropy_seed: vec![7; 32],
                        wall_clock_ns: 1_800_000_000_000_000_000,
                        new_sandbox_id: "gate".into(),
                    },
                    STEP_TIMEOUT,
                )
                .unwrap();
            assert_eq!(hello.restore_generation, 1);
            let r = invoke(&cuds, &mut c, STEP_TIMEOUT);
            assert_eq!((r.status, r.body), (Status::Ok, b"1".to_vec()));
            c.kill();
        }
        figures.push(format!(
            "{mib} MiB: boot+snapshot at ready {:.0} ms, restore -> first result median {:.0} ms of 3 (min {:.0}, max {:.0}), memory file {} KiB allocated",
            boot_and_create.as_secs_f64() * 1e3,
            e2e::median(&times).as_secs_f64() * 1e3,
            times.iter().min().unwrap().as_secs_f64() * 1e3,
            times.iter().max().unwrap().as_secs_f64() * 1e3,
            std::fs::metadata(&mem).unwrap().blocks() / 2,
        ));
        let _ = std::fs::remove_file(&mem);
    }
    for f in figures {
        println!("snapshot size benchmark: {f}");
    }
}

/// The restore gate needs nothing at snapshot time: a sandbox booted normally (no
/// `husk.await_restore`), warmed with one invocation and snapshotted through the raw API
/// (`PATCH /vm Paused`, `PUT /snapshot/create`) restores into a clone that refuses an
/// invocation sent before the host's `Restored` (`--skip-handshake`: husk sends none)
/// and serves after it, from the warmed state.
#[test]
fn clone_of_a_warmed_normal_boot_refuses_invocations_until_restored() {
    e2e::require_hardware_kvm().unwrap_or_else(|e| panic!("{e}"));
    let dir = ScratchDir::new("snapshot-gate").unwrap();
    let d = dir.path();
    let initrd = pack_worker(d, "fn-counter");
    let (uds, api) = (d.join("vsock.sock"), d.join("api.sock"));
    let (state, mem) = (d.join("g.state"), d.join("g.mem"));
    let mut vm = boot(d, &initrd, &uds, &api);
    let r = invoke(&uds, &mut vm, BOOT_TIMEOUT);
    assert_eq!((r.status, r.body), (Status::Ok, b"1".to_vec()), "warmed");
    let out = snapshot_via_api(&api, &state, &mem);
    assert!(
        out.status.success(),
        "{}\n{}",
        out.stderr_str(),
        vm.transcript()
    );
    vm.kill();

    let cuds = d.join("gate.sock");
    let mut cmd = Command::new(husk());
    cmd.args(["snapshot", "restore", "--skip-handshake", "--snapshot-path"])
        .arg(&state)
        .arg("--mem-file-path")
        .arg(&mem)
        .arg("--vsock-uds")
        .arg(&cuds)
        .arg("--console")
        .arg(d.join("console-gate.log"));
    let mut c = Spawned::spawn(cmd).unwrap();
    let mut cfg = ClientConfig::new(&cuds);
    cfg.connect_timeout = Duration::from_secs(10);
    let mut client = AgentClient::connect_with_retry(&cfg, BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}\n{}", c.transcript()));
    assert!(
        client.has_feature(husk_agent::protocol::FEATURE_RESTORE_GATE),
        "the agent announces the restore gate"
    );
    let tick = Invoke::new(1, 10_000, b"tick".to_vec());
    for attempt in 0..2 {
        match client.invoke(tick.clone(), STEP_TIMEOUT) {
            Err(husk_agent::client::ClientError::Agent(e)) => {
                assert_eq!(
                    e.code,
                    husk_agent::protocol::ErrorCode::AwaitingRestore as u16,
                    "attempt {attempt}: {e:?}"
                );
                assert!(e.message.contains("Restored"), "{e:?}");
            }
            other => panic!(
                "invocation {attempt} before Restored was not refused: {other:?}\n{}\n--- clone console ---\n{}",
                c.transcript(),
                std::fs::read_to_string(d.join("console-gate.log")).unwrap_or_default()
            ),
        }
    }
    let hello = client
        .restored(
            husk_agent::protocol::Restored {
                entropy_seed: vec![5; 32],
                wall_clock_ns: 1_800_000_000_000_000_000,
                new_sandbox_id: "gated-clone".into(),
            },
            STEP_TIMEOUT,
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", c.transcript()));
    assert_eq!(
        (hello.sandbox_id.as_str(), hello.restore_generation),
        ("gated-clone", 1)
    );
    let r = client
        .invoke(tick, STEP_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}\n{}", c.transcript()));
    assert_eq!(
        (r.status, r.body),
        (Status::Ok, b"2".to_vec()),
        "served after Restored, from the warmed counter (1)"
    );
    c.kill();
}

/// One HTTP exchange on the API socket with curl: (status, body).
fn curl_put(sock: &Path, path: &str, body: &str) -> (u16, String) {
    let out = e2e::run_with_timeout(
        Command::new("curl")
            .args(["-sS", "--max-time", "60", "--unix-socket"])
            .arg(sock)
            .args(["-X", "PUT", "-w", "\n%{http_code}"])
            .args([
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                body,
            ])
            .arg(format!("http://localhost{path}")),
        Duration::from_secs(70),
    )
    .unwrap();
    let text = out.stdout_str();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", text.as_str()));
    let code = code
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("curl PUT {path}: {text:?} {}", out.stderr_str()));
    (code, body.to_string())
}

/// Asserts a 400 whose `fault_message` contains `needle`.
fn assert_fault(code: u16, text: &str, needle: &str) {
    assert_eq!(code, 400, "{text}");
    let v: serde_json::Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{text}: {e}"));
    let msg = v["fault_message"].as_str().unwrap_or_default();
    assert!(msg.contains(needle), "{msg:?} lacks {needle:?}");
}

/// Firecracker's `PUT /snapshot/load` body.
fn load_body(state: &Path, mem: &Path, uds: &Path) -> String {
    serde_json::json!({
        "snapshot_path": state,
        "mem_backend": {"backend_type": "File", "backend_path": mem},
        "vsock_override": {"uds_path": uds},
        "resume_vm": true,
    })
    .to_string()
}

fn wait_for_socket(path: &Path, vm: &mut Spawned) {
    let end = Instant::now() + STEP_TIMEOUT;
    while std::os::unix::net::UnixStream::connect(path).is_err() {
        assert!(
            Instant::now() < end,
            "no socket at {path:?}:\n{}",
            vm.transcript()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Boots `fn-counter`, ticks it three times, snapshots it through the API, stops it.
fn warmed_counter_snapshot(d: &Path, state: &Path, mem: &Path) {
    let initrd = pack_worker(d, "fn-counter");
    let (uds, api) = (d.join("warm.sock"), d.join("warm.api"));
    let mut vm = boot(d, &initrd, &uds, &api);
    for n in 1..=3 {
        let r = invoke(&uds, &mut vm, BOOT_TIMEOUT);
        assert_eq!((r.status, r.body), (Status::Ok, n.to_string().into_bytes()));
    }
    let out = snapshot_via_api(&api, state, mem);
    assert!(
        out.status.success(),
        "{}\n{}",
        out.stderr_str(),
        vm.transcript()
    );
    vm.kill();
}

/// The host side of a restore: `Restored`, then one tick, which must continue from
/// the warmed counter (3).
fn restored_then_tick(uds: &Path, vm: &mut Spawned, id: &str) {
    let mut cfg = ClientConfig::new(uds);
    cfg.connect_timeout = Duration::from_secs(10);
    let mut c = AgentClient::connect_with_retry(&cfg, BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}\n{}", vm.transcript()));
    let hello = c
        .restored(
            husk_agent::protocol::Restored {
                entropy_seed: vec![9; 32],
                wall_clock_ns: 1_800_000_000_000_000_000,
                new_sandbox_id: id.into(),
            },
            STEP_TIMEOUT,
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", vm.transcript()));
    assert_eq!(hello.restore_generation, 1);
    let r = c
        .invoke(Invoke::new(1, 10_000, b"tick".to_vec()), STEP_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}\n{}", vm.transcript()));
    assert_eq!((r.status, r.body), (Status::Ok, b"4".to_vec()));
}

/// `husk --api-sock S` with no config, then Firecracker's `PUT /snapshot/load`
/// (`mem_backend` File, `vsock_override`, `resume_vm`): the clone serves from the
/// warmed state. A bad path, and a second load after the first, get a 400.
#[test]
fn api_only_snapshot_load_restores_and_refuses_bad_loads() {
    e2e::require_hardware_kvm().unwrap_or_else(|e| panic!("{e}"));
    e2e::find_program("curl").unwrap_or_else(|e| panic!("{e}"));
    let dir = ScratchDir::new("snapshot-api").unwrap();
    let d = dir.path();
    let (state, mem) = (d.join("w.state"), d.join("w.mem"));
    warmed_counter_snapshot(d, &state, &mem);

    let (api, uds) = (d.join("load.api"), d.join("load.sock"));
    let mut cmd = Command::new(husk());
    cmd.arg("--api-sock").arg(&api).arg("--boot-timer");
    let mut vm = Spawned::spawn(cmd).unwrap();
    wait_for_socket(&api, &mut vm);
    let (code, text) = curl_put(
        &api,
        "/snapshot/load",
        &load_body(&d.join("missing.state"), &mem, &uds),
    );
    assert_fault(code, &text, "cannot load the snapshot");
    let (code, text) = curl_put(&api, "/snapshot/load", &load_body(&state, &mem, &uds));
    assert_eq!(code, 204, "{text}\n{}", vm.transcript());
    vm.wait_for_line("snapshot loaded in", STEP_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    restored_then_tick(&uds, &mut vm, "api-clone");
    let (code, text) = curl_put(&api, "/snapshot/load", &load_body(&state, &mem, &uds));
    assert_eq!(code, 400, "a second load: {text}");
    assert_fault(code, &text, "not supported after starting the microVM");
    vm.kill();
}

/// A restored sandbox under the jailer, as a Firecracker user runs one: state and
/// memory files `--include`d, `husk --api-sock /api.sock` in the jail, `PUT
/// /snapshot/load` with paths inside the jail. The VMM runs as the jail uid with every
/// thread filtered, serves from the warmed state, and the jail is removed after.
#[test]
fn restored_sandbox_runs_under_the_jailer() {
    e2e::require_hardware_kvm().unwrap_or_else(|e| panic!("{e}"));
    e2e::find_program("curl").unwrap_or_else(|e| panic!("{e}"));
    // SAFETY: geteuid takes no arguments.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "the jailer test runs as root");
    const UID: u32 = 10125;
    let dir = ScratchDir::new("snapshot-jail").unwrap();
    let d = dir.path();
    let (state, mem) = (d.join("w.state"), d.join("w.mem"));
    warmed_counter_snapshot(d, &state, &mem);
    // Root-owned and read-only, as the jailer wants for a hard link the jail uid reads.
    let vmm = d.join("husk");
    std::fs::copy(husk(), &vmm).unwrap();
    for (f, mode) in [(&vmm, 0o555), (&state, 0o444), (&mem, 0o444)] {
        std::fs::set_permissions(f, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
    }
    let base = d.join("jails");
    let mut cmd = Command::new(e2e::bin("husk-jailer").unwrap_or_else(|e| panic!("{e}")));
    cmd.args(["--id", "snap-1", "--exec-file"])
        .arg(&vmm)
        .args(["--uid", &UID.to_string(), "--gid", &UID.to_string()])
        .arg("--chroot-base-dir")
        .arg(&base)
        .arg("--include")
        .arg(&state)
        .arg("--include")
        .arg(&mem)
        .args(["--", "--api-sock", "/api.sock", "--boot-timer"]);
    let mut jail = Spawned::spawn(cmd).unwrap();
    let id_dir = base.join("husk").join("snap-1");
    let root = id_dir.join("root");
    wait_for_socket(&root.join("api.sock"), &mut jail);
    let body = load_body(
        Path::new("/w.state"),
        Path::new("/w.mem"),
        Path::new("/v.sock"),
    );
    let (code, text) = curl_put(&root.join("api.sock"), "/snapshot/load", &body);
    assert_eq!(code, 204, "{text}\n{}", jail.transcript());
    restored_then_tick(&root.join("v.sock"), &mut jail, "jailed-clone");

    let pid = std::fs::read_to_string(root.join("husk.pid"))
        .unwrap()
        .trim()
        .to_string();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        status
            .lines()
            .any(|l| l == format!("Uid:\t{UID}\t{UID}\t{UID}\t{UID}")),
        "{status}"
    );
    let tasks: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(tasks.len() >= 2, "VMM and vCPU threads: {tasks:?}");
    for t in &tasks {
        let s = std::fs::read_to_string(format!("/proc/{pid}/task/{t}/status")).unwrap();
        assert!(
            s.lines().any(|l| l == "Seccomp:\t2"),
            "thread {t} is not filtered:\n{s}"
        );
    }

    // Reboot through the agent: the VMM exits 0 and the jailer removes the jail.
    let mut cfg = ClientConfig::new(root.join("v.sock"));
    cfg.connect_timeout = Duration::from_secs(10);
    AgentClient::connect(&cfg).unwrap().shutdown().unwrap();
    let st = jail
        .wait_exit(STEP_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(st.success(), "jailer exit {st}:\n{}", jail.transcript());
    assert!(!id_dir.exists(), "jail directory left behind");
}
