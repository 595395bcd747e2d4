//! Shared helpers for the example functions.
//!
//! Each function is a small binary (`fn-echo`, `fn-counter`, `fn-hash`, `fn-sleeper`,
//! `fn-crasher`, `fn-chatty`). Exec-mode functions read the payload on stdin and write
//! the body on stdout; worker-mode ones use [`husk_agent::worker::serve`]. The agent sets
//! `HUSK_MODE` to `exec` or `worker`.

use std::io::{self, Read, Write};

/// Whether the agent started this function in worker mode.
pub fn worker_mode() -> bool {
    std::env::var("HUSK_MODE").is_ok_and(|m| m == "worker")
}

/// Read the whole payload from stdin (exec mode).
pub fn read_payload() -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    io::stdin().lock().read_to_end(&mut buf)?;
    Ok(buf)
}

/// Write the body to stdout (exec mode).
pub fn write_body(body: &[u8]) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(body)?;
    out.flush()
}

/// Run `handler` in the current mode: once over stdin/stdout in exec mode (error →
/// exit code 1), or as a worker loop. Returns the process exit code.
pub fn run<F>(mut handler: F) -> i32
where
    F: FnMut(&[u8]) -> Result<Vec<u8>, Vec<u8>>,
{
    if worker_mode() {
        return match husk_agent::worker::serve(handler) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("worker I/O error: {e}");
                2
            }
        };
    }
    let payload = match read_payload() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("cannot read payload: {e}");
            return 2;
        }
    };
    let (body, code) = match handler(&payload) {
        Ok(b) => (b, 0),
        Err(b) => (b, 1),
    };
    if let Err(e) = write_body(&body) {
        eprintln!("cannot write body: {e}");
        return 2;
    }
    code
}

/// Parse a decimal number from a payload (surrounding whitespace ignored).
pub fn parse_number(payload: &[u8]) -> Option<u64> {
    std::str::from_utf8(payload).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_number_accepts_whitespace_only_around_digits() {
        assert_eq!(parse_number(b" 42\n"), Some(42));
        assert_eq!(parse_number(b"4 2"), None);
        assert_eq!(parse_number(b""), None);
    }
}
