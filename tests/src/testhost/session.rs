//! The emulated path: one L1 session = one QEMU TCG process booting the L1 kernel and
//! initramfs, with host directories shared over 9p and a per-session control share
//! through which L1 receives `run.sh` and the mount list and writes back the command's
//! stdout, stderr and exit status (streamed live to ours while it runs).

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

use super::{exit, husk_cache_dir, initramfs, interrupted, kernel, Options, TesthostError};
use crate::e2e::repo_root;
use crate::pgroup;

/// L1 must reach the command within this long, or the boot counts as hung.
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
/// A timeout counts as a hang when nothing was output for this long before it.
const HANG_QUIET: Duration = Duration::from_secs(120);
/// L1 prints a heartbeat every 15 s while the command runs; this much silence on the
/// console means L1 itself stopped (a hang), whatever the command is doing.
const L1_SILENT: Duration = Duration::from_secs(90);
/// Console lines kept for error reports.
const CONSOLE_TAIL: usize = 60;

pub(super) fn run(opts: &Options) -> Result<i32, TesthostError> {
    let qemu =
        crate::e2e::find_program("qemu-system-x86_64").map_err(|_| TesthostError::QemuMissing)?;
    let husk_cache = husk_cache_dir();
    let cache = husk_cache.join("testhost");
    fs::create_dir_all(&cache).map_err(|e| TesthostError::io(&cache, e))?;
    let prepare = || -> Result<_, TesthostError> {
        let _lock = Lock::take(&cache.join("lock"))?;
        let k = kernel::prepare(&cache)?;
        let initrd = initramfs::prepare(&cache, &k)?;
        Ok((k, initrd))
    };
    let mut attempt = 1;
    loop {
        let (k, initrd) = prepare()?;
        match session(opts, &qemu, &k.vmlinux, &initrd, &husk_cache, attempt) {
            Err(e @ TesthostError::Timeout { hang: true, .. })
                if opts.retry_on_hang && attempt == 1 =>
            {
                eprintln!("husk-testhost: {e}");
                eprintln!("husk-testhost: --retry-on-hang: the session hung; retrying the whole session once (output above is from the hung attempt)");
                attempt += 1;
            }
            r => return r,
        }
    }
}

/// An exclusive flock on a file, held while the cache is prepared.
struct Lock(File);

impl Lock {
    fn take(path: &Path) -> Result<Self, TesthostError> {
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| TesthostError::io(path, e))?;
        // SAFETY: flock on a file descriptor we own; it blocks until the lock is ours.
        let rc = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&f), libc::LOCK_EX) };
        if rc != 0 {
            return Err(TesthostError::io(path, std::io::Error::last_os_error()));
        }
        Ok(Self(f))
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        // SAFETY: releases the lock taken in `take` on the same, still open, descriptor.
        unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&self.0), libc::LOCK_UN) };
    }
}

/// The per-session control directory, removed on drop.
struct CtlDir(PathBuf);

impl Drop for CtlDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A 9p share: host path (also the L1 path), read-only or not, cache mode.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Share {
    path: PathBuf,
    readonly: bool,
}

/// The shares of a session: /usr and /etc read-only, then the repository, the husk cache and each
/// `--share`, canonicalized, without duplicates or directories inside another share,
/// parents before children.
fn shares(opts: &Options, husk_cache: &Path) -> Result<Vec<Share>, TesthostError> {
    let mut rw = vec![repo_root(), husk_cache.to_path_buf()];
    rw.extend(opts.shares.iter().cloned());
    let ro = |p: &str| Share {
        path: PathBuf::from(p),
        readonly: true,
    };
    let mut out = vec![ro("/usr"), ro("/etc")];
    let mut canon: Vec<PathBuf> = Vec::new();
    for p in rw {
        let c = fs::canonicalize(&p).map_err(|e| {
            TesthostError::Usage(format!(
                "cannot share {}: {e}; pass an existing directory",
                p.display()
            ))
        })?;
        if !c.is_dir() || c == Path::new("/") {
            return Err(TesthostError::Usage(format!(
                "cannot share {}: not a directory other than /",
                c.display()
            )));
        }
        canon.push(c);
    }
    canon.sort_by_key(|p| p.as_os_str().len());
    for c in canon {
        if !out.iter().any(|s| c.starts_with(&s.path)) {
            out.push(Share {
                path: c,
                readonly: false,
            });
        }
    }
    Ok(out)
}

/// Quotes bytes for a POSIX shell: `'...'` with `'` written as `'\''`.
fn sh_quote(s: &[u8]) -> Vec<u8> {
    let mut q = vec![b'\''];
    for &b in s {
        if b == b'\'' {
            q.extend_from_slice(b"'\\''");
        } else {
            q.push(b);
        }
    }
    q.push(b'\'');
    q
}

/// The environment passed into L1: PATH, HOME, RUST_BACKTRACE, RUST_LOG, every HUSK_*
/// and each `--env` name that is set here.
fn passed_env(opts: &Options) -> Vec<(String, Vec<u8>)> {
    let fixed = ["PATH", "HOME", "RUST_BACKTRACE", "RUST_LOG"];
    let mut out: Vec<(String, Vec<u8>)> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.as_bytes().to_vec())))
        .filter(|(k, _)| {
            fixed.contains(&k.as_str()) || k.starts_with("HUSK_") || opts.env.contains(k)
        })
        .filter(|(k, _)| !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        .collect();
    out.sort();
    out.push(("HUSK_IN_TESTHOST".into(), b"1".to_vec()));
    out
}

/// The script L1 runs (under `env -i`): exports, cd, checks the command exists, execs it.
fn run_script(opts: &Options, workdir: &Path, ctl_in_l1: &str) -> Vec<u8> {
    let mut s = b"# generated by husk-testhost\n".to_vec();
    for (k, v) in passed_env(opts) {
        s.extend_from_slice(format!("export {k}=").as_bytes());
        s.extend_from_slice(&sh_quote(&v));
        s.push(b'\n');
    }
    let wd = sh_quote(workdir.as_os_str().as_bytes());
    s.extend_from_slice(b"cd ");
    s.extend_from_slice(&wd);
    s.extend_from_slice(b" || { echo \"husk-testhost: working directory ");
    s.extend_from_slice(&wd);
    s.extend_from_slice(b" is not available in L1; share it with --share\" >&2; exit 125; }\n");
    let cmd = sh_quote(opts.command.first().map_or(&[][..], |c| c.as_bytes()));
    s.extend_from_slice(b"if ! command -v ");
    s.extend_from_slice(&cmd);
    s.extend_from_slice(
        format!(" >/dev/null 2>&1; then echo not-found >{ctl_in_l1}/reason; exit 127; fi\n")
            .as_bytes(),
    );
    s.extend_from_slice(b"exec");
    for a in &opts.command {
        s.push(b' ');
        s.extend_from_slice(&sh_quote(a.as_bytes()));
    }
    s.push(b'\n');
    s
}

/// Follows a file the guest appends to, copying new bytes to `out`.
struct Follow {
    path: PathBuf,
    file: Option<File>,
    pos: u64,
}

impl Follow {
    fn new(path: PathBuf) -> Self {
        Self {
            path,
            file: None,
            pos: 0,
        }
    }

    /// Copies what was appended since the last call; returns whether anything was.
    fn pump(&mut self, out: &mut dyn Write) -> bool {
        if self.file.is_none() {
            self.file = File::open(&self.path).ok();
        }
        let Some(f) = self.file.as_mut() else {
            return false;
        };
        if f.seek(SeekFrom::Start(self.pos)).is_err() {
            return false;
        }
        let mut buf = Vec::new();
        let n = f.read_to_end(&mut buf).unwrap_or(0);
        if n == 0 {
            return false;
        }
        self.pos += n as u64;
        let _ = out.write_all(&buf);
        let _ = out.flush();
        true
    }
}

/// A console line as seen by the host.
struct ConsoleLine {
    at: Instant,
    text: String,
}

fn spawn_console_reader(child: &mut Child) -> Receiver<ConsoleLine> {
    let (tx, rx) = mpsc::channel();
    if let Some(out) = child.stdout.take() {
        thread::spawn(move || {
            let mut r = BufReader::new(out);
            let mut buf = Vec::new();
            while matches!(r.read_until(b'\n', &mut buf), Ok(n) if n > 0) {
                let text = String::from_utf8_lossy(&buf)
                    .trim_end_matches(['\r', '\n'])
                    .to_string();
                buf.clear();
                if tx
                    .send(ConsoleLine {
                        at: Instant::now(),
                        text,
                    })
                    .is_err()
                {
                    return;
                }
            }
        });
    }
    rx
}

/// What the console told us so far.
#[derive(Default)]
struct Console {
    tail: Vec<String>,
    exec_at: Option<Instant>,
    error: Option<(String, String)>,
    dmesg: Vec<String>,
}

impl Console {
    /// Records a console line; returns false for a heartbeat (not progress).
    fn take(&mut self, l: &ConsoleLine, start: Instant, verbose: bool) -> bool {
        if verbose {
            eprintln!("l1| {}", l.text);
        }
        let t = l.text.trim_start();
        if t.starts_with("HUSK-L1: alive ") {
            return false;
        }
        if let Some(rest) = t.strip_prefix("HUSK-L1: exec ") {
            self.exec_at = Some(l.at);
            let boot = l.at.duration_since(start).as_secs_f64();
            eprintln!("husk-testhost: L1 ready: command starting {boot:.2} s after QEMU start (L1 uptime {} s)", rest.trim());
        } else if let Some(rest) = t.strip_prefix("HUSK-L1-ERROR: ") {
            let (code, msg) = rest.split_once(": ").unwrap_or((rest, ""));
            self.error = Some((code.to_string(), msg.to_string()));
        } else if let Some(rest) = t.strip_prefix("HUSK-L1-DMESG: ") {
            self.dmesg.push(rest.to_string());
        } else if t.starts_with("HUSK-L1-WARN: ") {
            eprintln!("husk-testhost: {}", t.trim_start_matches("HUSK-L1-WARN: "));
        }
        self.tail.push(l.text.clone());
        if self.tail.len() > CONSOLE_TAIL {
            self.tail.remove(0);
        }
        true
    }
}

fn session(
    opts: &Options,
    qemu: &Path,
    vmlinux: &Path,
    initrd: &Path,
    husk_cache: &Path,
    attempt: u32,
) -> Result<i32, TesthostError> {
    let ctl = CtlDir(
        std::env::temp_dir().join(format!("husk-testhost-{}-{attempt}", std::process::id())),
    );
    let _ = fs::remove_dir_all(&ctl.0);
    fs::create_dir_all(&ctl.0).map_err(|e| TesthostError::io(&ctl.0, e))?;
    let shares = shares(opts, husk_cache)?;
    let workdir = match &opts.workdir {
        Some(w) => w.clone(),
        None => {
            let cwd = std::env::current_dir().map_err(|e| TesthostError::io(Path::new("."), e))?;
            if shares.iter().any(|s| cwd.starts_with(&s.path)) {
                cwd
            } else {
                eprintln!(
                    "husk-testhost: note: {} is not shared into L1; the command runs in /",
                    cwd.display()
                );
                PathBuf::from("/")
            }
        }
    };
    let mut mounts = Vec::new();
    for (i, s) in shares.iter().enumerate() {
        let mode = if s.readonly { "ro" } else { "rw" };
        mounts.extend_from_slice(format!("husk{i} {mode} loose ").as_bytes());
        mounts.extend_from_slice(s.path.as_os_str().as_bytes());
        mounts.push(b'\n');
    }
    write(&ctl.0.join("mounts"), &mounts)?;
    write(
        &ctl.0.join("run.sh"),
        &run_script(opts, &workdir, "/.husk-ctl"),
    )?;

    // HUSK_TESTHOST_CPU overrides the CPU model (tests use `max,-svm` to check the
    // kvm-amd failure report).
    let cpu = std::env::var("HUSK_TESTHOST_CPU").unwrap_or_else(|_| "max".into());
    let mut cmd = Command::new(qemu);
    cmd.args([
        "-accel",
        "tcg,thread=multi",
        "-cpu",
        &cpu,
        "-M",
        "q35",
        "-nic",
        "none",
    ])
    .args([
        "-nographic",
        "-no-reboot",
        "-monitor",
        "none",
        "-serial",
        "stdio",
    ])
    .arg("-smp")
    .arg(opts.cpus.to_string())
    .arg("-m")
    .arg(opts.mem_mib.to_string())
    .arg("-kernel")
    .arg(vmlinux)
    .arg("-initrd")
    .arg(initrd)
    .args(["-append", "console=ttyS0 quiet panic=-1 rdinit=/init"]);
    for (i, s) in shares.iter().enumerate() {
        let ro = if s.readonly { ",readonly=on" } else { "" };
        cmd.arg("-virtfs")
            .arg(virtfs(&s.path, &format!("husk{i}"), ro)?);
    }
    cmd.arg("-virtfs").arg(virtfs(&ctl.0, "husk_ctl", "")?);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());

    let start = Instant::now();
    let mut child = pgroup::spawn_in_group(&mut cmd).map_err(|e| TesthostError::io(qemu, e))?;
    let console_rx = spawn_console_reader(&mut child);
    let qemu_err = child.stderr.take().map(|mut e| {
        thread::spawn(move || {
            let mut s = String::new();
            let _ = e.read_to_string(&mut s);
            s
        })
    });
    let mut console = Console::default();
    let mut out = Follow::new(ctl.0.join("stdout"));
    let mut err = Follow::new(ctl.0.join("stderr"));
    let mut last_progress = start;
    let mut last_console = start;
    let (stdout, stderr) = (std::io::stdout(), std::io::stderr());

    let killed = loop {
        let mut progressed = false;
        while let Ok(l) = console_rx.try_recv() {
            progressed |= console.take(&l, start, opts.verbose);
            last_console = l.at;
        }
        progressed |= out.pump(&mut stdout.lock());
        progressed |= err.pump(&mut stderr.lock());
        let now = Instant::now();
        if progressed {
            last_progress = now;
        }
        match child.try_wait() {
            Ok(Some(_)) => break None,
            Ok(None) => {}
            Err(e) => break Some(TesthostError::io(qemu, e)),
        }
        let quiet = now.duration_since(last_progress);
        let elapsed = now.duration_since(start);
        let phase = if console.exec_at.is_some() {
            "command"
        } else {
            "L1 boot"
        };
        let timeout = |hang: bool, detail: String| TesthostError::Timeout {
            hang,
            phase,
            after: elapsed,
            detail,
        };
        if interrupted() {
            break Some(TesthostError::Interrupted);
        } else if elapsed >= opts.timeout {
            let d = format!(
                "--timeout {} s expired, last output {:.0} s before",
                opts.timeout.as_secs(),
                quiet.as_secs_f64()
            );
            break Some(timeout(quiet >= HANG_QUIET, d));
        } else if console.exec_at.is_none() && elapsed >= BOOT_TIMEOUT {
            break Some(timeout(
                true,
                format!(
                    "L1 did not reach the command within {} s",
                    BOOT_TIMEOUT.as_secs()
                ),
            ));
        } else if console.exec_at.is_some() && now.duration_since(last_console) >= L1_SILENT {
            let d = format!(
                "L1 stopped responding: no heartbeat on its console for {:.0} s",
                now.duration_since(last_console).as_secs_f64()
            );
            break Some(timeout(true, d));
        } else if console.exec_at.is_some() && opts.idle_timeout.is_some_and(|i| quiet >= i) {
            // Only the command phase: a quiet kernel boot is bounded by BOOT_TIMEOUT.
            break Some(timeout(
                true,
                format!(
                    "the command printed nothing for {:.0} s (--idle-timeout; L1 itself is alive)",
                    quiet.as_secs_f64()
                ),
            ));
        }
        thread::sleep(Duration::from_millis(50));
    };
    if killed.is_some() {
        pgroup::kill_group(child.id());
    }
    let _ = child.wait();
    pgroup::kill_group(child.id());
    // Everything L1 wrote is in the files and the pipe now.
    out.pump(&mut stdout.lock());
    err.pump(&mut stderr.lock());
    let deadline = Instant::now() + Duration::from_millis(500);
    while let Ok(l) = console_rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        let _ = console.take(&l, start, opts.verbose);
    }
    let qemu_stderr = qemu_err.and_then(|h| h.join().ok()).unwrap_or_default();
    let total = start.elapsed().as_secs_f64();
    let console_tail = || {
        let mut t = console.tail.join("\n");
        if !qemu_stderr.trim().is_empty() {
            t.push_str("\nQEMU stderr:\n");
            t.push_str(qemu_stderr.trim());
        }
        t
    };
    if let Some(e) = killed {
        return Err(match e {
            TesthostError::Timeout {
                hang,
                phase,
                after,
                detail,
            } => TesthostError::Timeout {
                hang,
                phase,
                after,
                detail: format!("{detail}\nL1 console tail:\n{}", console_tail()),
            },
            other => other,
        });
    }
    if let Some((code, msg)) = console.error.clone() {
        let dmesg = console.dmesg.join("\n");
        return Err(match code.as_str() {
            "kvm-amd" => TesthostError::KvmAmd { detail: msg, dmesg },
            "no-dev-kvm" => TesthostError::NoDevKvm { detail: msg, dmesg },
            _ => TesthostError::L1Failed {
                detail: format!("{code}: {msg}\ndmesg:\n{dmesg}"),
                console: console_tail(),
            },
        });
    }
    let status = fs::read_to_string(ctl.0.join("status"))
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok());
    let Some(code) = status else {
        let detail = format!(
            "QEMU ended after {total:.1} s without the command's exit status (L1 crash or panic?)"
        );
        return Err(TesthostError::L1Failed {
            detail,
            console: console_tail(),
        });
    };
    if code == exit::NOT_FOUND && ctl.0.join("reason").exists() {
        return Err(TesthostError::NotFound(
            opts.command[0].to_string_lossy().into_owned(),
        ));
    }
    let ran = console.exec_at.map_or(0.0, |t| t.elapsed().as_secs_f64());
    eprintln!("husk-testhost: command exited with status {code}; command ~{ran:.1} s, L1 session {total:.1} s");
    Ok(code)
}

fn write(path: &Path, data: &[u8]) -> Result<(), TesthostError> {
    fs::write(path, data).map_err(|e| TesthostError::io(path, e))
}

/// A `-virtfs` argument. QEMU option values cannot hold a comma unescaped: double it.
fn virtfs(path: &Path, tag: &str, extra: &str) -> Result<std::ffi::OsString, TesthostError> {
    let p = path.to_str().ok_or_else(|| {
        TesthostError::Usage(format!(
            "cannot share {}: path is not UTF-8",
            path.display()
        ))
    })?;
    let p = p.replace(',', ",,");
    let mut s = std::ffi::OsString::from(format!(
        "local,path={p},mount_tag={tag},security_model=none"
    ));
    s.push(OsStr::new(extra));
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_quotes_and_spaces() {
        assert_eq!(sh_quote(b"a b"), b"'a b'");
        assert_eq!(sh_quote(b"it's"), b"'it'\\''s'");
        let out = Command::new("sh")
            .arg("-c")
            .arg(OsStr::from_bytes(
                &[b"printf %s ", &sh_quote(b"x'y \"$HOME\" z")[..]].concat(),
            ))
            .output()
            .unwrap();
        assert_eq!(out.stdout, b"x'y \"$HOME\" z");
    }

    #[test]
    fn run_script_exports_cds_and_execs() {
        let opts = Options {
            timeout: Duration::from_secs(1),
            idle_timeout: None,
            mem_mib: 512,
            shares: vec![],
            env: vec![],
            workdir: None,
            retry_on_hang: false,
            verbose: false,
            cpus: 1,
            command: vec!["printf".into(), "%s|%s".into(), "a b".into(), "c'd".into()],
        };
        let dir = std::env::temp_dir().join(format!("husk-runscript-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let script = run_script(&opts, &dir, dir.to_str().unwrap());
        let text = String::from_utf8_lossy(&script);
        assert!(text.contains("export HUSK_IN_TESTHOST='1'"), "{text}");
        let out = Command::new("sh")
            .arg("-c")
            .arg(OsStr::from_bytes(&script))
            .output()
            .unwrap();
        assert_eq!(out.stdout, b"a b|c'd");
        let mut missing = opts.clone();
        missing.command = vec!["husk-no-such-command".into()];
        let out = Command::new("sh")
            .arg("-c")
            .arg(OsStr::from_bytes(&run_script(
                &missing,
                &dir,
                dir.to_str().unwrap(),
            )))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(127));
        assert!(dir.join("reason").exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}
