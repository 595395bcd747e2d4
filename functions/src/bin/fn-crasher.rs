//! `fn-crasher`: dies. Payload `abort` calls abort (SIGABRT), `exit N` exits with code
//! N, `sigterm-init` sends SIGTERM to PID 1 (in a guest: the agent must reboot cleanly),
//! anything else raises SIGSEGV. Works in exec and worker mode.

fn main() {
    let code = husk_functions::run(|p| {
        eprintln!("crasher about to crash");
        if p == b"abort" {
            std::process::abort();
        }
        if p == b"sigterm-init" {
            // SAFETY: kill(2) with integer arguments only.
            unsafe { libc::kill(1, libc::SIGTERM) };
            std::thread::sleep(std::time::Duration::from_secs(30));
            return Ok(b"init did not stop us".to_vec());
        }
        if let Some(n) = p.strip_prefix(b"exit ") {
            std::process::exit(husk_functions::parse_number(n).unwrap_or(1) as i32);
        }
        // The Rust runtime's stack-overflow handler would swallow a raised SIGSEGV;
        // restore the default action first.
        // SAFETY: signal(2) with a valid signal number and the SIG_DFL disposition.
        unsafe { libc::signal(libc::SIGSEGV, libc::SIG_DFL) };
        // SAFETY: raise(2) with a valid signal number; the default action ends us.
        unsafe { libc::raise(libc::SIGSEGV) };
        Ok(Vec::new())
    });
    std::process::exit(code);
}
