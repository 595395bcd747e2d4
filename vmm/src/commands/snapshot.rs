//! `husk snapshot create` and `husk snapshot restore`.
//!
//! - `create --api-sock SOCK`: pause a running husk through its API socket
//!   (`PATCH /vm Paused`), `PUT /snapshot/create`, and resume it with `--resume`.
//! - `create --at-ready -- <husk run flags>`: boot, wait for the guest's ready marker
//!   (the agent writes it once the function is loaded and warm), pause, snapshot, exit 0.
//! - `restore`: a fresh husk process builds the VM from the files (the same action as
//!   `PUT /snapshot/load`), resumes it, and, with `--vsock-uds`, sends the agent its
//!   `Restored` message (fresh entropy, wall-clock time, a new sandbox id) before
//!   anything else talks to it; then runs until the guest stops.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand};
use husk_agent::client::{AgentClient, ClientConfig};
use husk_agent::protocol::Restored;

use crate::snapshot::params::{
    MemBackend, MemBackendType, SnapshotCreateParams, SnapshotLoadParams, SnapshotType,
    VsockOverride,
};

/// `husk snapshot`.
#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: SnapshotCommand,
}

/// `husk snapshot` subcommands.
#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Snapshot a running husk (--api-sock) or a new one when its guest is ready
    /// (--at-ready -- <husk run flags>).
    Create(CreateArgs),
    /// Start a fresh sandbox from a snapshot.
    Restore(RestoreCliArgs),
}

/// `husk snapshot create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The state file to write.
    #[arg(long)]
    pub snapshot_path: PathBuf,
    /// The memory file to write.
    #[arg(long)]
    pub mem_file_path: PathBuf,
    /// The API socket of a running husk.
    #[arg(
        long,
        conflicts_with = "at_ready",
        required_unless_present = "at_ready"
    )]
    pub api_sock: Option<PathBuf>,
    /// Resume the VM after the snapshot (with --api-sock).
    #[arg(long, requires = "api_sock")]
    pub resume: bool,
    /// Boot with the `husk run` flags after `--`, snapshot when the guest is ready, exit.
    #[arg(long)]
    pub at_ready: bool,
    /// `husk run` flags (with --at-ready).
    #[arg(last = true)]
    pub run_args: Vec<String>,
}

/// `husk snapshot restore`.
#[derive(Debug, Args)]
pub struct RestoreCliArgs {
    /// The state file.
    #[arg(long)]
    pub snapshot_path: PathBuf,
    /// The memory file (mapped MAP_PRIVATE).
    #[arg(long)]
    pub mem_file_path: PathBuf,
    /// This sandbox's vsock Unix socket (one per clone); the Restored handshake goes
    /// through it.
    #[arg(long)]
    pub vsock_uds: Option<PathBuf>,
    /// The new sandbox id sent to the agent (default: restored-<pid>).
    #[arg(long)]
    pub sandbox_id: Option<String>,
    /// Do not send the agent `Restored` (the caller, e.g. a pool, sends it itself; an
    /// agent booted with husk.await_restore=1 refuses invocations until then).
    #[arg(long)]
    pub skip_handshake: bool,
    /// Guest console: `stdout`, `null`, or a file path.
    #[arg(long, default_value = "null")]
    pub console: String,
    /// Print restore timings to stderr.
    #[arg(long)]
    pub boot_timer: bool,
    /// Also serve Firecracker's REST API on this Unix socket.
    #[arg(long)]
    pub api_sock: Option<PathBuf>,
    /// Disable the seccomp filters (debugging only).
    #[arg(long)]
    pub no_seccomp: bool,
    #[command(flatten)]
    pub log: crate::cli::LogArgs,
}

#[derive(Debug, Parser)]
#[command(name = "husk snapshot create --at-ready --")]
struct RunOnly {
    #[command(flatten)]
    run: crate::cli::RunArgs,
}

/// Errors of the snapshot commands.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotCliError {
    /// The API socket could not be used.
    #[error("cannot talk to the husk API at {0}")]
    Api(PathBuf, #[source] std::io::Error),
    /// The API refused a request.
    #[error("{0} failed with HTTP {1}: {2}")]
    Refused(&'static str, u16, String),
    /// Bad `husk run` flags after `--`.
    #[error("{0}")]
    Usage(String),
}

/// One HTTP/1.1 request on the API socket; returns (status, body).
fn api_request(
    sock: &Path,
    method: &str,
    path: &str,
    body: &str,
) -> Result<(u16, String), SnapshotCliError> {
    let err = |e| SnapshotCliError::Api(sock.to_path_buf(), e);
    let mut s = UnixStream::connect(sock).map_err(err)?;
    s.set_read_timeout(Some(Duration::from_secs(600)))
        .map_err(err)?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .map_err(err)?;
    let mut resp = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).map_err(err)?;
        if n == 0 {
            break;
        }
        resp.extend_from_slice(&buf[..n]);
        if let Some(h) = resp.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&resp[..h]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if resp.len() >= h + 4 + len {
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&resp).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Ok((status, body))
}

/// One API request that must answer 200 or 204 (`what` names it in the error).
pub fn api_call(
    sock: &Path,
    what: &'static str,
    method: &str,
    path: &str,
    body: &str,
) -> Result<(), SnapshotCliError> {
    let (status, body) = api_request(sock, method, path, body)?;
    if status == 204 || status == 200 {
        Ok(())
    } else {
        Err(SnapshotCliError::Refused(what, status, body))
    }
}

/// `husk snapshot create --api-sock`: pause, create, optionally resume.
pub fn create_via_api(args: &CreateArgs, sock: &Path) -> Result<(), SnapshotCliError> {
    let start = Instant::now();
    api_call(sock, "PATCH /vm", "PATCH", "/vm", r#"{"state":"Paused"}"#)?;
    let body = serde_json::json!({
        "snapshot_type": "Full",
        "snapshot_path": args.snapshot_path,
        "mem_file_path": args.mem_file_path,
    })
    .to_string();
    api_call(
        sock,
        "PUT /snapshot/create",
        "PUT",
        "/snapshot/create",
        &body,
    )?;
    if args.resume {
        api_call(sock, "PATCH /vm", "PATCH", "/vm", r#"{"state":"Resumed"}"#)?;
    }
    eprintln!(
        "husk: snapshot written in {} ms: {} and {}",
        start.elapsed().as_millis(),
        args.snapshot_path.display(),
        args.mem_file_path.display()
    );
    Ok(())
}

/// The `husk run` flags of `create --at-ready`.
pub fn at_ready_run_args(args: &CreateArgs) -> Result<crate::cli::RunArgs, SnapshotCliError> {
    let argv = std::iter::once("husk-run".to_string()).chain(args.run_args.iter().cloned());
    RunOnly::try_parse_from(argv)
        .map(|r| r.run)
        .map_err(|e| SnapshotCliError::Usage(e.to_string()))
}

/// The create parameters of `create --at-ready`.
pub fn create_params(args: &CreateArgs) -> SnapshotCreateParams {
    SnapshotCreateParams {
        snapshot_type: SnapshotType::Full,
        snapshot_path: args.snapshot_path.clone(),
        mem_file_path: args.mem_file_path.clone(),
    }
}

/// The load parameters of `husk snapshot restore` (resume at once).
pub fn load_params(args: &RestoreCliArgs) -> SnapshotLoadParams {
    SnapshotLoadParams {
        snapshot_path: args.snapshot_path.clone(),
        mem_file_path: None,
        mem_backend: Some(MemBackend {
            backend_type: MemBackendType::File,
            backend_path: args.mem_file_path.clone(),
        }),
        resume_vm: true,
        track_dirty_pages: false,
        enable_diff_snapshots: false,
        vsock_override: args.vsock_uds.as_ref().map(|p| VsockOverride {
            uds_path: p.clone(),
        }),
        network_overrides: Vec::new(),
        clock_realtime: false,
    }
}

/// A fresh `Restored` message: 32 bytes from the host's getrandom, the wall clock, the id.
pub fn fresh_restored(sandbox_id: String) -> Restored {
    let mut seed = vec![0u8; 32];
    let mut filled = 0;
    while filled < seed.len() {
        let rest = &mut seed[filled..];
        // SAFETY: `rest` is a valid writable buffer of rest.len() bytes.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n <= 0 {
            break;
        }
        filled += n as usize;
    }
    let wall_clock_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    Restored {
        entropy_seed: seed,
        wall_clock_ns,
        new_sandbox_id: sandbox_id,
    }
}

/// Send the agent `Restored` through the sandbox's vsock socket, retrying while the
/// restored VMM is still binding it. Runs on its own thread while the VMM thread runs
/// the event loop.
pub fn restored_handshake(uds: PathBuf, sandbox_id: String, print: bool) {
    let start = Instant::now();
    let cfg = ClientConfig::new(uds);
    let result = AgentClient::connect_with_retry(&cfg, Duration::from_secs(30))
        .and_then(|mut c| c.restored(fresh_restored(sandbox_id), Duration::from_secs(10)));
    match result {
        Ok(hello) => {
            log::info!(
                "agent acknowledged Restored (generation {}) after {} us",
                hello.restore_generation,
                start.elapsed().as_micros()
            );
            if print {
                eprintln!(
                    "husk: agent restored (generation {}) {} us after the restore began",
                    hello.restore_generation,
                    start.elapsed().as_micros()
                );
            }
        }
        Err(e) => log::error!("the Restored handshake with the agent failed: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_ready_parses_run_flags_and_restore_maps_to_a_load() {
        let a = CreateArgs {
            snapshot_path: "/s".into(),
            mem_file_path: "/m".into(),
            api_sock: None,
            resume: false,
            at_ready: true,
            run_args: vec![
                "--kernel".into(),
                "/k".into(),
                "--mem-mib".into(),
                "64".into(),
            ],
        };
        let run = at_ready_run_args(&a).unwrap();
        assert_eq!(run.mem_mib, 64);
        assert!(create_params(&a).validate().is_ok());
        let bad = CreateArgs {
            run_args: vec!["--bogus".into()],
            ..a
        };
        assert!(at_ready_run_args(&bad).is_err());

        let r = RestoreCliArgs {
            snapshot_path: "/s".into(),
            mem_file_path: "/m".into(),
            vsock_uds: Some("/v".into()),
            sandbox_id: None,
            skip_handshake: false,
            console: "null".into(),
            boot_timer: false,
            api_sock: None,
            no_seccomp: false,
            log: Default::default(),
        };
        let p = load_params(&r);
        assert_eq!(p.mem_path().unwrap(), PathBuf::from("/m"));
        assert!(p.resume_vm);
        assert_eq!(p.vsock_override.unwrap().uds_path, PathBuf::from("/v"));
        let a = fresh_restored("x".into());
        let b = fresh_restored("x".into());
        assert_eq!(a.entropy_seed.len(), 32);
        assert_ne!(a.entropy_seed, b.entropy_seed);
        assert!(a.wall_clock_ns > 1_600_000_000_000_000_000);
    }
}
