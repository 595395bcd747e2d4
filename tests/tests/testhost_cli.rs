//! Behaviour of the `husk-testhost` binary: the direct path (fast, any host) and a few
//! sessions of the emulated KVM host (each boots L1 under QEMU TCG: a few seconds).
//! The emulated tests need qemu-system-x86 and busybox-static (scripts/setup.sh) and
//! fetch the L1 kernel package into the husk cache on first use.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn testhost(mode: &str, args: &[&str]) -> (Output, Duration) {
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_husk-testhost"))
        .env("HUSK_TESTHOST", mode)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run husk-testhost: {e}"));
    (out, start.elapsed())
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn direct_passes_stdout_stderr_and_status() {
    let (out, _) = testhost(
        "direct",
        &["--", "sh", "-c", "echo out; echo err >&2; exit 7"],
    );
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(text(&out.stdout), "out\n");
    let err = text(&out.stderr);
    assert!(
        err.contains("running directly on this host (HUSK_TESTHOST=direct)"),
        "{err}"
    );
    assert!(err.contains("err\n"), "{err}");
}

#[test]
fn direct_reports_missing_command_as_127() {
    let (out, _) = testhost("direct", &["--", "husk-no-such-command"]);
    assert_eq!(out.status.code(), Some(127));
    assert!(text(&out.stderr).contains("command not found: husk-no-such-command"));
}

#[test]
fn direct_timeout_kills_the_process_group_with_124() {
    let (out, took) = testhost(
        "direct",
        &["--timeout", "1", "--", "sh", "-c", "sleep 30 & sleep 30"],
    );
    assert_eq!(out.status.code(), Some(124), "{}", text(&out.stderr));
    assert!(
        took < Duration::from_secs(10),
        "took {took:?}: the background sleep held the session"
    );
    assert!(text(&out.stderr).contains("timeout"));
}

#[test]
fn bad_invocations_are_harness_errors() {
    let (out, _) = testhost("bogus", &["--", "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(text(&out.stderr).contains("HUSK_TESTHOST=\"bogus\""));
    let (out, _) = testhost("direct", &[]);
    assert_eq!(out.status.code(), Some(125));
}

#[test]
fn emulated_runs_command_with_kvm_shares_env_and_status() {
    let share = std::env::temp_dir().join(format!("husk-testhost-share-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&share);
    std::fs::create_dir_all(&share).unwrap();
    std::fs::write(share.join("from-host"), "host data").unwrap();
    let script = "test -c /dev/kvm || exit 90; \
        cat from-host; echo; echo \"foo=$HUSK_TESTHOST_FOO in=$HUSK_IN_TESTHOST\"; \
        echo l1 > from-l1; echo to-stderr >&2; \
        grep -q ' / / .* - tmpfs ' /proc/self/mountinfo || exit 91; exit 3";
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_husk-testhost"))
        .env("HUSK_TESTHOST", "emulated")
        .env("HUSK_TESTHOST_FOO", "a b'c")
        .args(["--timeout", "300", "--share"])
        .arg(&share)
        .arg("--workdir")
        .arg(&share)
        .args(["--", "sh", "-c", script])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "stderr:\n{err}");
    assert_eq!(text(&out.stdout), "host data\nfoo=a b'c in=1\n");
    assert!(err.contains("running in the emulated KVM host L1"), "{err}");
    assert!(err.contains("L1 ready: command starting"), "{err}");
    assert!(err.contains("to-stderr\n"), "{err}");
    assert_eq!(
        std::fs::read_to_string(share.join("from-l1")).unwrap(),
        "l1\n"
    );
    eprintln!("emulated session took {:?}", start.elapsed());
    std::fs::remove_dir_all(&share).unwrap();
}

#[test]
fn emulated_hang_is_killed_and_retried_once() {
    let (out, took) = testhost(
        "emulated",
        &[
            "--idle-timeout",
            "6",
            "--retry-on-hang",
            "--",
            "sleep",
            "300",
        ],
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(124), "{err}");
    assert!(err.contains("hang (no progress)"), "{err}");
    assert_eq!(
        err.matches("retrying the whole session once").count(),
        1,
        "{err}"
    );
    assert_eq!(err.matches("L1 ready").count(), 2, "{err}");
    assert!(took < Duration::from_secs(200), "took {took:?}");
}

#[test]
fn emulated_reports_kvm_amd_failure() {
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_husk-testhost"))
        .env("HUSK_TESTHOST", "emulated")
        .env("HUSK_TESTHOST_CPU", "max,-svm")
        .args(["--", "true"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(122), "{err}");
    assert!(err.contains("kvm-amd did not load in L1"), "{err}");
    assert!(err.contains("dmesg tail"), "{err}");
    assert!(start.elapsed() < Duration::from_secs(120));
}

#[test]
fn emulated_without_qemu_says_to_run_setup() {
    let empty = std::env::temp_dir().join(format!("husk-testhost-nopath-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_husk-testhost"))
        .env("HUSK_TESTHOST", "emulated")
        .env("PATH", &empty)
        .args(["--", "true"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(120), "{err}");
    assert!(err.contains("scripts/setup.sh"), "{err}");
    std::fs::remove_dir_all(&empty).unwrap();
}

#[test]
fn emulated_with_unknown_kernel_package_exits_121() {
    let cache = std::env::temp_dir().join(format!("husk-testhost-cache-{}", std::process::id()));
    std::fs::create_dir_all(&cache).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_husk-testhost"))
        .env("HUSK_TESTHOST", "emulated")
        .env("HUSK_CACHE_DIR", &cache)
        .env(
            "HUSK_TESTHOST_KERNEL_PKG",
            "linux-image-6.1.0-0-amd64-unsigned",
        )
        .args(["--", "true"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(121), "{err}");
    assert!(err.contains("L1 kernel package not found"), "{err}");
    std::fs::remove_dir_all(&cache).unwrap();
}
