//! Runs the real `husk-jailer` (as root, on this host) against a tiny static probe that
//! reports what the jail looks like from inside (`tests/probe.c`), and checks from
//! outside: uid/gid, namespaces, root contents, capabilities, cleanup, bad flags.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const JAILER: &str = env!("CARGO_BIN_EXE_husk-jailer");
const UID: &str = "40123";

/// These tests build real jails (mount namespaces, cgroups, mknod, setuid): they need
/// root, as `scripts/test` has. Without it they fail instead of passing silently.
fn require_root() {
    assert!(
        is_root(),
        "the jailer integration tests need root: run them as root (scripts/test does)"
    );
}

fn is_root() -> bool {
    // SAFETY: geteuid takes no arguments.
    unsafe { libc::geteuid() == 0 }
}

/// The probe, built static once per test run into cargo's per-target temp dir (built
/// under a unique name, then renamed into place, so concurrent runs do not collide).
fn probe() -> &'static Path {
    static PROBE: OnceLock<PathBuf> = OnceLock::new();
    PROBE.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("husk-jail-probe");
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("probe"); // the tests expect this exec name in the jail
        let tmp = dir.join(format!("probe.{}", std::process::id()));
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/probe.c");
        let st = Command::new("cc")
            .args(["-static", "-O2", "-o"])
            .arg(&tmp)
            .arg(&src)
            .status()
            .unwrap();
        assert!(
            st.success(),
            "building the static probe failed (needs gcc and glibc static libs)"
        );
        std::fs::rename(&tmp, &out).unwrap();
        out
    })
}

fn base(tag: &str) -> PathBuf {
    let b = PathBuf::from(format!(
        "/srv/husk-jailer-test-{}-{tag}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&b);
    b
}

fn jailer(base: &Path, id: &str, extra: &[&str], vmm_args: &[&str]) -> Command {
    let mut c = Command::new(JAILER);
    c.args(["--id", id, "--exec-file"]).arg(probe());
    c.args(["--uid", UID, "--gid", UID, "--chroot-base-dir"])
        .arg(base);
    c.args(extra).arg("--").args(vmm_args);
    c
}

fn report(out: &Output) -> HashMap<String, String> {
    let text = String::from_utf8_lossy(&out.stdout);
    let mut m = HashMap::new();
    for line in text.lines() {
        for kv in line.split(' ').filter(|s| s.contains('=')) {
            if let Some((k, v)) = kv.split_once('=') {
                m.insert(k.to_string(), v.to_string());
            }
        }
        if let Some((k, v)) = line.split_once('=') {
            if k.starts_with("ls ") {
                m.insert(k.to_string(), v.to_string());
            }
        }
    }
    m
}

fn sorted_list(v: &str) -> Vec<&str> {
    let mut l: Vec<&str> = v.split(',').filter(|s| !s.is_empty()).collect();
    l.sort_unstable();
    l
}

fn cgroup_dirs(parent: &str) -> Vec<PathBuf> {
    [
        "/sys/fs/cgroup/pids",
        "/sys/fs/cgroup/memory",
        "/sys/fs/cgroup/cpu",
        "/sys/fs/cgroup/unified",
        "/sys/fs/cgroup",
    ]
    .iter()
    .map(|m| Path::new(m).join(parent))
    .filter(|p| p.exists())
    .collect()
}

#[test]
fn jail_from_inside_and_cleanup() {
    require_root();
    let b = base("inside");
    let parent = format!("husk-test-{}", std::process::id());
    let out = jailer(
        &b,
        "sb-inside",
        &[
            "--cgroup-version",
            "1",
            "--cgroup",
            "pids.max=32",
            "--parent-cgroup",
            &parent,
            "--resource-limit",
            "fsize=1048576",
        ],
        &["--exit", "7"],
    )
    .env("SECRET_TOKEN", "x")
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(7),
        "exit code passes through; stderr: {stderr}"
    );
    let r = report(&out);
    assert_eq!(r["uid"], UID);
    assert_eq!(r["euid"], UID);
    assert_eq!(r["gid"], UID);
    assert_eq!(r["egid"], UID);
    assert_eq!(r["groups"], "0", "no supplementary groups");
    assert_eq!(r["capeff"], "000000000");
    assert_eq!(r["capprm"], "000000000");
    assert_eq!(r["nonewprivs"], "1");
    assert_eq!(r["envc"], "0", "environment cleared");
    assert_eq!(r["extra_fds"], "0", "no inherited fds");
    assert_eq!(r["nofile"], "2048");
    assert_eq!(r["fsize"], "1048576");
    assert_eq!(r["cwd"], "/");
    assert_eq!(r["etc_passwd"], "0", "host files are not visible");
    assert_eq!(r["argv0"], "probe");
    assert!(String::from_utf8_lossy(&out.stdout)
        .contains("arg=--id\narg=sb-inside\narg=--exit\narg=7\n"));
    // The pid file may or may not be written yet when the probe looks.
    let listing: Vec<&str> = sorted_list(&r["ls /"])
        .into_iter()
        .filter(|n| *n != "probe.pid")
        .collect();
    assert_eq!(listing, ["dev", "probe"]);
    let mut devs = vec!["kvm", "urandom"];
    if Path::new("/dev/userfaultfd").exists() {
        devs.push("userfaultfd");
        devs.sort_unstable();
    }
    assert_eq!(sorted_list(&r["ls /dev"]), devs);
    assert_eq!(r["kvm_open"], "1", "/dev/kvm usable by the jailed uid");
    // Cleanup: no jail directory, no cgroup, nothing under the base dir.
    assert!(!b.exists(), "jail base dir left behind");
    assert!(
        cgroup_dirs(&parent).is_empty(),
        "cgroup left behind: {:?}",
        cgroup_dirs(&parent)
    );
}

#[test]
fn pid_namespace_and_outside_view() {
    require_root();
    let b = base("pidns");
    let parent = format!("husk-test-pidns-{}", std::process::id());
    let child = jailer(
        &b,
        "sb-pidns",
        &[
            "--new-pid-ns",
            "--cgroup-version",
            "2",
            "--parent-cgroup",
            &parent,
        ],
        &["--sleep", "3000"],
    )
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    let pid_file = b.join("probe/sb-pidns/root/probe.pid");
    let start = Instant::now();
    while !pid_file.exists() && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let vmm_pid: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let status = std::fs::read_to_string(format!("/proc/{vmm_pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .map(|l| l[name.len()..].trim().to_string())
            .unwrap_or_default()
    };
    assert_eq!(field("Uid:"), format!("{UID}\t{UID}\t{UID}\t{UID}"));
    assert_eq!(field("CapEff:"), "0000000000000000");
    assert_eq!(field("CapPrm:"), "0000000000000000");
    assert_eq!(field("NoNewPrivs:"), "1");
    assert!(
        field("NSpid:").ends_with("\t1"),
        "PID 1 in its namespace: {}",
        field("NSpid:")
    );
    let ns = |pid: &str, kind: &str| std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).unwrap();
    assert_ne!(ns(&vmm_pid.to_string(), "mnt"), ns("self", "mnt"));
    assert_ne!(ns(&vmm_pid.to_string(), "pid"), ns("self", "pid"));
    assert_eq!(
        ns(&vmm_pid.to_string(), "net"),
        ns("self", "net"),
        "no --netns: host network ns"
    );
    let cg = std::fs::read_to_string(format!("/proc/{vmm_pid}/cgroup")).unwrap();
    assert!(
        cg.lines().any(|l| l == format!("0::/{parent}/sb-pidns")),
        "{cg}"
    );
    let root = std::fs::read_link(format!("/proc/{vmm_pid}/root")).unwrap();
    assert_eq!(
        root,
        Path::new("/"),
        "the VMM's / is its jail root (shown relative to itself)"
    );
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{:?}", out.status);
    let r = report(&out);
    assert_eq!(r["pid"], "1");
    let listing: Vec<&str> = sorted_list(&r["ls /"])
        .into_iter()
        .filter(|n| *n != "probe.pid")
        .collect();
    assert_eq!(listing, ["dev", "probe"]);
    assert!(!b.exists(), "jail base dir left behind");
    assert!(cgroup_dirs(&parent).is_empty(), "cgroup left behind");
}

#[test]
fn daemon_mode_detaches() {
    require_root();
    let b = base("daemon");
    let mut cmd = jailer(&b, "sb-daemon", &["--daemonize"], &["--sleep", "2000"]);
    let start = Instant::now();
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        start.elapsed() < Duration::from_millis(1500),
        "the jailer returns while the VMM runs"
    );
    assert!(out.stdout.is_empty(), "daemon stdio goes to /dev/null");
    let pid: i32 = std::fs::read_to_string(b.join("probe/sb-daemon/root/probe.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    assert_eq!(fields[3], pid.to_string(), "session leader (setsid)");
    // Daemon mode leaves the jail to the caller, as Firecracker does.
    while Path::new(&format!("/proc/{pid}")).exists() {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::remove_dir_all(&b).unwrap();
}

#[test]
fn pre_staged_root_is_used_and_kept() {
    require_root();
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let b = base("prestaged");
    let parent = format!("husk-test-pre-{}", std::process::id());
    // What a Firecracker user prepares: the root with a kernel and a listening
    // `v.sock_<port>` for guest-initiated vsock connections.
    let root = b.join("probe/sb-pre/root");
    std::fs::create_dir_all(&root).unwrap();
    for d in [b.join("probe"), b.join("probe/sb-pre"), root.clone()] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::write(root.join("vmlinux"), b"kernel").unwrap();
    let listener = std::os::unix::net::UnixListener::bind(root.join("v.sock_5000")).unwrap();
    let out = jailer(
        &b,
        "sb-pre",
        &["--cgroup-version", "2", "--parent-cgroup", &parent],
        &["--exit", "3"],
    )
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "stderr: {stderr}");
    let r = report(&out);
    let listing: Vec<&str> = sorted_list(&r["ls /"])
        .into_iter()
        .filter(|n| *n != "probe.pid")
        .collect();
    assert_eq!(
        listing,
        ["dev", "probe", "v.sock_5000", "vmlinux"],
        "the VMM sees the pre-staged files"
    );
    // Cleanup removed what the jailer created and nothing else.
    let mut left: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["v.sock_5000", "vmlinux"]);
    assert_eq!(std::fs::read(root.join("vmlinux")).unwrap(), b"kernel");
    assert_eq!(
        std::fs::metadata(&root).unwrap().uid(),
        0,
        "owner given back"
    );
    assert!(cgroup_dirs(&parent).is_empty(), "cgroup left behind");
    let _c = std::os::unix::net::UnixStream::connect(root.join("v.sock_5000")).unwrap();
    assert!(
        listener.accept().is_ok(),
        "the pre-staged listener still works"
    );
    // A symlinked root is refused and its target left alone.
    let elsewhere = b.join("elsewhere");
    std::fs::rename(&root, &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &root).unwrap();
    fails_with(
        &mut jailer(&b, "sb-pre", &[], &[]),
        "must be a real directory, not a symlink",
    );
    assert!(!elsewhere.join("probe").exists());
    std::fs::remove_dir_all(&b).unwrap();
}

fn fails_with(cmd: &mut Command, needle: &str) {
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(needle), "expected {needle:?} in: {stderr}");
}

#[test]
fn bad_flags_fail_clearly_and_leave_nothing() {
    require_root();
    let b = base("bad");
    fails_with(&mut jailer(&b, "a/b", &[], &[]), "invalid --id \"a/b\"");
    fails_with(&mut jailer(&b, &"x".repeat(65), &[], &[]), "invalid --id");
    let mut c = Command::new(JAILER);
    c.args([
        "--id",
        "ok",
        "--exec-file",
        "/nonexistent/husk",
        "--uid",
        UID,
        "--gid",
        UID,
    ]);
    fails_with(&mut c, "--exec-file \"/nonexistent/husk\" is missing");
    fails_with(
        &mut jailer(
            &b,
            "ok",
            &["--cgroup-version", "1", "--cgroup", "bogus.max=1"],
            &[],
        ),
        "unknown cgroup controller \"bogus\"",
    );
    fails_with(
        &mut jailer(
            &b,
            "ok",
            &["--cgroup-version", "2", "--cgroup", "bogus.max=1"],
            &[],
        ),
        "unknown cgroup controller \"bogus\"",
    );
    fails_with(
        &mut jailer(&b, "ok", &["--cgroup", "memory"], &[]),
        "invalid --cgroup",
    );
    fails_with(
        &mut jailer(&b, "ok", &["--resource-limit", "core=0"], &[]),
        "invalid --resource-limit",
    );
    fails_with(
        &mut jailer(&b, "ok", &["--netns", "/nonexistent/ns"], &[]),
        "--netns",
    );
    assert!(!b.exists(), "validation failures create nothing");
}

#[test]
fn failure_after_setup_cleans_up() {
    require_root();
    // A bad cgroup value is found after the jail dir and cgroup dirs exist: all removed.
    let b = base("late");
    let parent = format!("husk-test-late-{}", std::process::id());
    fails_with(
        &mut jailer(
            &b,
            "sb-late",
            &[
                "--cgroup-version",
                "1",
                "--parent-cgroup",
                &parent,
                "--cgroup",
                "pids.max=not-a-number",
            ],
            &[],
        ),
        "cannot write \"not-a-number\" to cgroup file",
    );
    assert!(!b.exists(), "jail dir left behind");
    assert!(cgroup_dirs(&parent).is_empty(), "cgroup left behind");
    // A dynamically linked VMM cannot exec in the jail: the child reports it, the
    // parent cleans up.
    let mut c = Command::new(JAILER);
    c.args([
        "--id",
        "sb-dyn",
        "--exec-file",
        "/bin/true",
        "--uid",
        UID,
        "--gid",
        UID,
        "--chroot-base-dir",
    ])
    .arg(&b);
    fails_with(
        &mut c,
        "exec of \"/true\" in the jail failed (it must be a static binary",
    );
    assert!(!b.exists(), "jail dir left behind after exec failure");
    // The same id twice at once: the second is refused and leaves the first alone.
    let mut first = jailer(&b, "sb-twice", &[], &["--sleep", "1000"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let root = b.join("probe/sb-twice/root");
    let start = Instant::now();
    while !root.join("probe.pid").exists() && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }
    fails_with(
        &mut jailer(&b, "sb-twice", &[], &[]),
        "is already in the jail root, but the jailer creates it",
    );
    assert!(root.join("probe").exists(), "the running jail is untouched");
    assert!(first.wait().unwrap().success());
    assert!(!b.exists());
}

fn sigterm_case(tag: &str, extra: &[&str], expect: i32) {
    let b = base(tag);
    let parent = format!("husk-test-{tag}-{}", std::process::id());
    let mut args = vec![
        "--cgroup-version",
        "1",
        "--cgroup",
        "pids.max=16",
        "--parent-cgroup",
        &parent,
    ];
    args.extend_from_slice(extra);
    let mut child = jailer(&b, "sb-term", &args, &["--sleep", "20000"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid_file = b.join("probe/sb-term/root/probe.pid");
    let start = Instant::now();
    while !pid_file.exists() && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(pid_file.exists());
    // SAFETY: signalling the jailer we spawned.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(128 + expect),
        "{tag}: the VMM died of the forwarded signal"
    );
    assert!(start.elapsed() < Duration::from_secs(10));
    assert!(!b.exists(), "{tag}: jail dir left behind");
    assert!(cgroup_dirs(&parent).is_empty(), "{tag}: cgroup left behind");
}

#[test]
fn sigterm_is_forwarded_and_the_jail_cleaned_up() {
    require_root();
    sigterm_case("term", &[], libc::SIGTERM);
    // PID 1 of a namespace ignores SIGTERM without a handler: the jailer sends SIGKILL.
    sigterm_case("term-pidns", &["--new-pid-ns"], libc::SIGKILL);
}

#[test]
fn joins_the_given_network_namespace() {
    require_root();
    use std::os::unix::fs::MetadataExt;
    let name = format!("husk-jailer-test-{}", std::process::id());
    let st = Command::new("ip")
        .args(["netns", "add", &name])
        .status()
        .unwrap();
    assert!(st.success(), "ip netns add failed");
    let ns_file = PathBuf::from(format!("/var/run/netns/{name}"));
    let b = base("netns");
    let child = jailer(
        &b,
        "sb-netns",
        &["--netns", ns_file.to_str().unwrap()],
        &["--sleep", "1500"],
    )
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    let pid_file = b.join("probe/sb-netns/root/probe.pid");
    let start = Instant::now();
    while !pid_file.exists() && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let pid = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .to_string();
    let in_ns = std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .unwrap()
        .ino();
    let wanted = std::fs::metadata(&ns_file).unwrap().ino();
    let out = child.wait_with_output().unwrap();
    let _ = Command::new("ip").args(["netns", "del", &name]).status();
    assert!(out.status.success());
    assert_eq!(in_ns, wanted, "the VMM runs in the --netns namespace");
    assert!(!b.exists());
}
