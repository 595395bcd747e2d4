//! `husk-agent`: the guest's PID 1. Mounts what it needs, starts the function (worker
//! mode) and waits for its ready frame (its initialisation is done), writes the ready
//! marker and serves the agent protocol on vsock. A worker that fails to become ready
//! is fatal at boot (the fatal marker; husk exits 5).
//!
//! Outside a VM it can serve on a Unix socket for manual testing:
//! `husk-agent --unix /tmp/a.sock --config function.json --cmdline "husk.reuse=1"`.

use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use husk_agent::config::{BootOptions, FunctionConfig};
use husk_agent::pid1::{self, GuestPlatform, HostPlatform};
use husk_agent::reaper::Reaper;
use husk_agent::server::{log, Agent, Platform, ServerConfig};
use husk_agent::sync::error_chain;
use husk_agent::vsock::VsockListener;

#[derive(Parser, Debug)]
#[command(version, about = "husk guest agent (PID 1)")]
struct Args {
    /// Serve on this Unix socket instead of vsock (testing outside a VM).
    #[arg(long)]
    unix: Option<PathBuf>,
    /// Function config path (default: husk.config or /husk/function.json).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Boot options to use instead of /proc/cmdline.
    #[arg(long)]
    cmdline: Option<String>,
}

/// Start the agent and serve forever; an error is fatal for the sandbox.
fn run(args: Args, pid1: bool) -> Result<(), String> {
    let cmdline = match args.cmdline {
        Some(c) => c,
        None => std::fs::read_to_string("/proc/cmdline")
            .map_err(|e| format!("cannot read /proc/cmdline: {e}"))?,
    };
    let (boot, warnings) = BootOptions::from_cmdline(&cmdline).map_err(|e| error_chain(&e))?;
    for w in warnings {
        log(&w);
    }
    let config_path = args.config.unwrap_or_else(|| boot.config_path.clone());
    let function = FunctionConfig::load(&config_path).map_err(|e| error_chain(&e))?;
    let reaper = if pid1 {
        Reaper::global().map_err(|e| format!("cannot start the reaper: {e}"))?
    } else {
        Reaper::per_child()
    };
    let platform: Box<dyn Platform> = if pid1 {
        Box::new(GuestPlatform)
    } else {
        Box::new(HostPlatform)
    };
    let port = boot.port;
    let cfg = ServerConfig::new(boot, function);
    let agent = Agent::new(cfg, reaper, platform).map_err(|e| error_chain(&e))?;
    let ready = || {
        if pid1 {
            if let Err(e) = pid1::write_ready_marker() {
                log(&format!("cannot write the ready marker: {e}"));
            }
        } else {
            log("ready (not PID 1: no ready marker written)");
        }
    };
    match args.unix {
        Some(path) => {
            let _ = std::fs::remove_file(&path);
            let l = UnixListener::bind(&path)
                .map_err(|e| format!("cannot bind {}: {e}", path.display()))?;
            ready();
            agent.serve(l).map_err(|e| e.to_string())
        }
        None => {
            let l = VsockListener::bind(port)
                .map_err(|e| format!("cannot listen on vsock port {port}: {e}"))?;
            ready();
            agent.serve(l).map_err(|e| e.to_string())
        }
    }
}

fn main() -> ExitCode {
    let pid1 = pid1::is_pid1();
    if pid1 {
        pid1::fatal_on_panic();
        pid1::mount_filesystems();
        if let Err(e) = pid1::watch_sigterm(|| pid1::reboot()) {
            log(&format!("cannot watch SIGTERM: {e}"));
        }
    }
    // As init, argv holds whatever words of the kernel command line the kernel did not
    // recognise (e.g. `nomodule`): not ours to parse.
    let args = if pid1 {
        Args {
            unix: None,
            config: None,
            cmdline: None,
        }
    } else {
        Args::parse()
    };
    match run(args, pid1) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if pid1 {
                // Not a clean shutdown: the VMM reports it with its own exit status.
                pid1::fatal(&e);
            }
            log(&format!("fatal: {e}"));
            ExitCode::FAILURE
        }
    }
}
