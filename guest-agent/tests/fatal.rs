//! The agent binary outside a VM (not PID 1): a startup error is fatal, reported on
//! stderr with a non-zero exit status (as PID 1 the same error writes the fatal marker,
//! see `pid1::fatal`; the e2e test `tests/tests/agent.rs` checks husk's exit status).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

#[test]
fn startup_error_is_fatal_with_a_nonzero_status() {
    let out = Command::new(env!("CARGO_BIN_EXE_husk-agent"))
        .args([
            "--cmdline",
            "husk.port=notanumber",
            "--unix",
            "/nonexistent/x.sock",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("husk-agent: fatal: invalid kernel command line option husk.port=notanumber"),
        "{err}"
    );
}
