//! Peer boot figure (not a test): the guest kernel from kernel-config boots under QEMU's
//! microvm machine with the `peer-init.cpio` fixture, whose init prints a marker and
//! reboots; it prints the peer's boot-to-marker time beside husk's
//! (`vmm_boot.rs`'s figure). The function is `#[ignore]`d: scripts/test runs ignored e2e
//! functions in its figures pass, which is not counted in `e2e: N passed, N failed`.
//!
//! Needs a hardware-virt KVM host (run it through `husk-testhost`), `HUSK_KERNEL` and
//! the fixture; the figure fails (never skips) when any is missing or a boot fails.
//! `HUSK_PEER_BOOT_RUNS=N` (default 3) boots N times and prints the median.

use std::process::Command;
use std::time::Duration;

use husk_tests::e2e::{self, E2eError, Spawned};

const MARKER: &str = "HUSK-TEST-INIT: hello from the guest";
const BOOT_TIMEOUT: Duration = Duration::from_secs(90);
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

/// Boots once; returns (QEMU start → marker, the marker line).
fn boot_once() -> Result<(Duration, String), E2eError> {
    let qemu = e2e::find_program("qemu-system-x86_64")?;
    let mut cmd = Command::new(qemu);
    cmd.args([
        "-enable-kvm",
        "-M",
        "microvm,acpi=off",
        "-cpu",
        "host,-xsave",
        "-m",
        "256",
        "-smp",
        "1",
    ])
    .args([
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-no-reboot",
        "-monitor",
        "none",
        "-serial",
        "stdio",
    ])
    .arg("-kernel")
    .arg(e2e::kernel()?)
    .arg("-initrd")
    .arg(e2e::fixture("peer-init.cpio")?)
    .args(["-append", "console=ttyS0 reboot=t quiet panic=-1"]);
    let mut vm = Spawned::spawn(cmd)?;
    let line = vm.wait_for_line(MARKER, BOOT_TIMEOUT)?;
    // The init reboots; with reboot=t and -no-reboot that ends QEMU cleanly.
    let status = vm.wait_exit(EXIT_TIMEOUT)?;
    assert!(
        status.success(),
        "QEMU exited with {status} after the guest rebooted:\n{}",
        vm.transcript()
    );
    Ok((line.at, line.text))
}

#[test]
#[ignore = "figure, not a test: scripts/test runs it in its figures pass (--ignored)"]
fn figure_peer_qemu_microvm_boot_to_init_marker() {
    let kvm = e2e::require_hardware_kvm().unwrap_or_else(|e| panic!("{e}"));
    eprintln!("KVM: {}", kvm.reason);
    let runs = e2e::runs_from_env("HUSK_PEER_BOOT_RUNS", 3);
    let mut times = Vec::new();
    for i in 1..=runs {
        let (t, line) = boot_once().unwrap_or_else(|e| panic!("peer boot {i}/{runs} failed: {e}"));
        println!(
            "peer boot {i}/{runs}: QEMU microvm start -> init marker {:.3} s ({line})",
            t.as_secs_f64()
        );
        times.push(t);
    }
    println!(
        "peer boot (QEMU microvm, {runs} runs): median boot-to-marker {:.3} s",
        e2e::median(&times).as_secs_f64()
    );
}
