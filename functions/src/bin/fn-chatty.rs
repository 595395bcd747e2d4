//! `fn-chatty`: prints more than any cap, in exec or worker mode.
//! - payload `N` (default 16 MiB): a body of N bytes of `x`;
//! - payload `log N`: N bytes of numbered log lines (`log line 000001 ...`, 64 bytes
//!   each), on stderr in exec mode and alternating stdout/stderr in worker mode; the
//!   body is `logged N`.

use std::io::Write;

const DEFAULT_BYTES: u64 = 16 * 1024 * 1024;
const MAX_BYTES: u64 = 1 << 32;
const LINE: usize = 64;

fn log_lines(n: u64) {
    let worker = husk_functions::worker_mode();
    let mut out = std::io::stdout().lock();
    let mut err = std::io::stderr().lock();
    let lines = (n as usize).div_ceil(LINE);
    for i in 0..lines {
        // 64 bytes: "log line NNNNNN " + padding + "\n".
        let mut line = format!("log line {i:06} ");
        line.push_str(&"-".repeat(LINE - 1 - line.len()));
        line.push('\n');
        let _ = if worker && i % 2 == 0 {
            out.write_all(line.as_bytes())
        } else {
            err.write_all(line.as_bytes())
        };
    }
    let _ = out.flush();
    let _ = err.flush();
}

fn main() {
    std::process::exit(husk_functions::run(|p| {
        if let Some(n) = p.strip_prefix(b"log ") {
            let n = husk_functions::parse_number(n).unwrap_or(0).min(MAX_BYTES);
            log_lines(n);
            return Ok(format!("logged {n}").into_bytes());
        }
        let n = husk_functions::parse_number(p)
            .unwrap_or(DEFAULT_BYTES)
            .min(MAX_BYTES);
        Ok(vec![b'x'; n as usize])
    }));
}
