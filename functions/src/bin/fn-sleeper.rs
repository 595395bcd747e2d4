//! `fn-sleeper`: outlives any deadline. Forks a child that sleeps even longer (the agent
//! must kill the whole process group), reports the child's pid on stderr as
//! `child=PID`, then sleeps for the payload's number of milliseconds (default 600000).
//!
//! Payload `detach` forks the same long-sleeping child (holding stdout and stderr) but
//! returns at once with body `detached`: the invocation must still end promptly.
//! In worker mode each request sleeps for its number of milliseconds, then answers.
//! Payload `alive PID` instead answers `alive` or `gone` for that process (reads
//! `/proc`), so a test can check inside the guest that the child was killed.

use std::io::Write;
use std::time::Duration;

fn alive(pid: &[u8]) -> &'static [u8] {
    let Some(pid) = husk_functions::parse_number(pid) else {
        return b"bad pid";
    };
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.trim().chars().next());
            if matches!(state, Some('Z') | Some('X')) {
                b"gone"
            } else {
                b"alive"
            }
        }
        Err(_) => b"gone",
    }
}

fn main() {
    if husk_functions::worker_mode() {
        // Worker mode: each request sleeps for its number of milliseconds.
        std::process::exit(husk_functions::run(|p| {
            let ms = husk_functions::parse_number(p).unwrap_or(600_000);
            std::thread::sleep(Duration::from_millis(ms));
            Ok(b"woke up".to_vec())
        }));
    }
    let payload = husk_functions::read_payload().unwrap_or_default();
    if let Some(pid) = payload.strip_prefix(b"alive ") {
        let _ = husk_functions::write_body(alive(pid));
        return;
    }
    let detach = payload == b"detach";
    let ms = if detach {
        600_000
    } else {
        husk_functions::parse_number(&payload).unwrap_or(600_000)
    };
    // SAFETY: this process is single-threaded here; the child only sleeps and exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        std::thread::sleep(Duration::from_millis(ms.saturating_mul(2)));
        std::process::exit(0);
    }
    if pid > 0 {
        eprintln!("child={pid}");
        let _ = std::io::stderr().flush();
    }
    if detach {
        let _ = husk_functions::write_body(b"detached");
        return;
    }
    std::thread::sleep(Duration::from_millis(ms));
    let _ = husk_functions::write_body(b"woke up");
}
