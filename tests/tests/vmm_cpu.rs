//! husk CPU e2e test: the guest's view of the CPU. A busybox init mounts /proc, prints
//! its `/proc/cpuinfo` flags and its kernel's XSAVE/FPU messages, then reboots.
//!
//! Asserts: the guest kernel does not report "XSAVE consistency problem" (husk either
//! exposes a consistent XSAVE or hides it); when husk logs that it hides XSAVE, the
//! guest has no `xsave`/`avx` flags; when it does not, the guest has `xsave` (every
//! x86-64 KVM host this runs on has it) and the kernel enabled XSAVE features; the
//! guest sees no vPMU (`arch_perfmon`) and no nested virtualization (`vmx`/`svm`); its
//! two vCPUs are cores of one package (CPUID leaf 0xB), so it does not mark the TSC
//! unstable ("TSCs unsynchronized").
//! Prints the flags for the record.
//!
//! Needs a hardware-virt KVM host (run it through `husk-testhost`), `HUSK_KERNEL`, the
//! static `husk` binary and a static busybox; fails, never skips, when one is missing.

// The whole file is test code: helpers may unwrap like the test functions do.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::Duration;

use husk_tests::cpio::Cpio;
use husk_tests::e2e::{self, ScratchDir, Spawned};

const BOOT_TIMEOUT: Duration = Duration::from_secs(90);
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);
const DONE: &str = "CPU-TEST-DONE";

const INIT: &str = r#"#!/busybox sh
/busybox mkdir -p /proc
/busybox mount -t proc proc /proc
echo "CPU-FLAGS: $(/busybox grep -m1 '^flags' /proc/cpuinfo)"
echo "CPU-COUNT: $(/busybox grep -c '^processor' /proc/cpuinfo)"
/busybox dmesg | /busybox grep -i -E 'xsave|x86/fpu|CPU topo|tsc' | /busybox sed 's/^/GUEST-DMESG: /'
echo CPU-TEST-DONE
/busybox reboot -f
"#;

#[test]
fn guest_sees_a_consistent_cpu_without_xsave_problems() {
    let kvm = e2e::require_hardware_kvm().unwrap_or_else(|e| panic!("{e}"));
    eprintln!("KVM: {}", kvm.reason);
    let busybox = e2e::find_program("busybox").unwrap_or_else(|e| panic!("{e}"));
    let dir = ScratchDir::new("vmm-cpu").unwrap();
    let mut cpio = Cpio::new();
    cpio.dir("dev", 0o755).unwrap();
    cpio.char_dev("dev/console", 0o600, 5, 1).unwrap();
    cpio.file("busybox", &std::fs::read(&busybox).unwrap(), 0o755)
        .unwrap();
    cpio.file("init", INIT.as_bytes(), 0o755).unwrap();
    let initrd = dir.path().join("cpu-init.cpio");
    std::fs::write(&initrd, cpio.finish()).unwrap();

    let mut cmd = Command::new(e2e::bin("husk").unwrap_or_else(|e| panic!("{e}")));
    cmd.arg("run")
        .arg("--kernel")
        .arg(e2e::kernel().unwrap_or_else(|e| panic!("{e}")))
        .arg("--initrd")
        .arg(&initrd)
        .args(["--mem-mib", "256", "--vcpus", "2", "--level", "Info"])
        .args(["--cmdline", "console=ttyS0 reboot=k panic=0 loglevel=4"]);
    let mut vm = Spawned::spawn(cmd).unwrap_or_else(|e| panic!("{e}"));
    vm.wait_for_line(DONE, BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("the guest did not finish: {e}"));
    let status = vm
        .wait_exit(EXIT_TIMEOUT)
        .unwrap_or_else(|e| panic!("husk did not exit after the guest rebooted: {e}"));
    let transcript = vm.transcript();
    assert_eq!(status.code(), Some(0), "{transcript}");
    let flags_line = transcript
        .lines()
        .find_map(|l| l.split_once("CPU-FLAGS: ").map(|(_, f)| f.to_string()))
        .unwrap_or_else(|| panic!("no flags line:\n{transcript}"));
    println!("guest /proc/cpuinfo {flags_line}");
    for l in transcript.lines().filter(|l| {
        l.contains("GUEST-DMESG") || l.contains("hiding XSAVE") || l.contains("CPU-COUNT")
    }) {
        println!("{l}");
    }
    let flags: Vec<&str> = flags_line
        .trim_start_matches("flags")
        .trim_start_matches(['\t', ' ', ':'])
        .split_whitespace()
        .collect();
    assert!(
        !transcript.contains("XSAVE consistency problem"),
        "the guest kernel found XSAVE inconsistent:\n{transcript}"
    );
    assert!(
        transcript.contains("CPU-COUNT: 2"),
        "the guest sees both vCPUs:\n{transcript}"
    );
    assert!(
        transcript.contains("CPU topo: Max. logical packages:   1"),
        "both vCPUs are cores of one package:\n{transcript}"
    );
    assert!(
        !transcript.contains("TSCs unsynchronized"),
        "one package: the guest keeps its TSC:\n{transcript}"
    );
    if transcript.contains("hiding XSAVE") {
        for f in ["xsave", "avx", "avx2"] {
            assert!(
                !flags.contains(&f),
                "{f} hidden, yet the guest has it: {flags:?}"
            );
        }
    } else {
        assert!(flags.contains(&"xsave"), "XSAVE exposed: {flags:?}");
        assert!(
            transcript.contains("x86/fpu: Enabled xstate features"),
            "the guest kernel enabled XSAVE:\n{transcript}"
        );
    }
    for f in ["arch_perfmon", "perfctr_core", "vmx", "svm"] {
        assert!(!flags.contains(&f), "{f} must be hidden: {flags:?}");
    }
}
