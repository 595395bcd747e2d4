//! Shared helpers for the example functions.
//!
//! Each function is a small binary (`fn-echo`, `fn-counter`, `fn-hash`, `fn-sleeper`,
//! `fn-crasher`, `fn-chatty`, `fn-meta`). Exec-mode functions read the payload on stdin
//! and write the body on stdout; worker-mode ones use [`husk_agent::worker::serve`]
//! (requests on stdin, responses on `HUSK_RESPONSE_FD`, stdout free for logs). The agent
//! sets `HUSK_MODE` to `exec` or `worker`; per-invocation metadata comes as
//! `HUSK_REQUEST_ID`, `HUSK_DEADLINE_MS` and the environment (exec) or in the request
//! header (worker): [`run_with_meta`] hands both to the handler the same way.

use std::io::{self, Read, Write};

use husk_agent::exec::{ENV_DEADLINE_MS, ENV_REQUEST_ID};
pub use husk_agent::worker::RequestMeta;

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
    run_with_meta(move |_, p| handler(p))
}

/// The metadata of an exec-mode invocation, from the environment. `env` is left empty:
/// in exec mode the invocation's variables are in the process environment itself.
pub fn exec_meta() -> RequestMeta {
    RequestMeta {
        request_id: std::env::var(ENV_REQUEST_ID).unwrap_or_default(),
        deadline_unix_ms: std::env::var(ENV_DEADLINE_MS)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        env: Vec::new(),
    }
}

/// Like [`run`], with the invocation's metadata: the request header in worker mode,
/// [`exec_meta`] in exec mode.
pub fn run_with_meta<F>(mut handler: F) -> i32
where
    F: FnMut(&RequestMeta, &[u8]) -> Result<Vec<u8>, Vec<u8>>,
{
    if worker_mode() {
        return match husk_agent::worker::serve(|r| handler(&r.meta, &r.payload)) {
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
    let (body, code) = match handler(&exec_meta(), &payload) {
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
