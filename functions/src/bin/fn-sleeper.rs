//! `fn-sleeper`: outlives any deadline. Forks a child that sleeps even longer (the agent
//! must kill the whole process group), reports the child's pid on stderr as
//! `child=PID`, then sleeps for the payload's number of milliseconds (default 600000).

use std::io::Write;
use std::time::Duration;

fn main() {
    let payload = husk_functions::read_payload().unwrap_or_default();
    let ms = husk_functions::parse_number(&payload).unwrap_or(600_000);
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
    std::thread::sleep(Duration::from_millis(ms));
    let _ = husk_functions::write_body(b"woke up");
}
