//! `husk-testhost`: run a command on a KVM host with hardware virtualization (directly,
//! or inside an emulated one) and pass back its stdout, stderr and exit status.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use husk_tests::testhost::{self, exit, Options};

const AFTER_HELP: &str = "\
Detection: hardware KVM (/dev/kvm usable, kvm_intel or kvm_amd loaded, no kvm_pvm) runs
CMD directly; otherwise CMD runs in an emulated KVM host (L1: QEMU TCG, -cpu max, Debian
6.1 kernel with kvm-amd). HUSK_TESTHOST=direct|emulated overrides. In L1, host files are
shared over 9p at their host paths: /usr and /etc (read-only), the repository, the husk cache
(${HUSK_CACHE_DIR:-$HOME/.cache/husk}) and each --share; / is a tmpfs, /tmp a tmpfs.
Passed environment: PATH, HOME, RUST_BACKTRACE, RUST_LOG, every HUSK_*, each --env NAME;
L1 also sets HUSK_IN_TESTHOST=1. Set HUSK_TESTHOST_VERBOSE=1 to see the L1 console.

Exit status: CMD's own exit status (128+N if CMD died of signal N), or:
  119  L1 failed to come up (kernel panic, module or 9p mount failure, QEMU died)
  120  qemu-system-x86_64 not installed (run scripts/setup.sh)
  121  L1 kernel package not found or could not be prepared
  122  kvm-amd did not load in L1 (dmesg tail shown)
  123  /dev/kvm missing in L1
  124  timeout or hang (session killed)
  125  harness error (bad arguments, I/O error, busybox-static missing)
  126  CMD could not be executed
  127  CMD not found
  130  interrupted (SIGINT/SIGTERM/SIGHUP); the session was killed";

/// Run CMD on a KVM host with hardware virtualization (directly or in an emulated host).
#[derive(Debug, Parser)]
#[command(name = "husk-testhost", after_help = AFTER_HELP)]
struct Cli {
    /// Hard timeout for the whole session in seconds; the QEMU process group is killed.
    #[arg(long, default_value_t = 1200)]
    timeout: u64,
    /// Kill the session as hung when the command printed nothing for this many seconds (0 = never).
    #[arg(long, default_value_t = 600)]
    idle_timeout: u64,
    /// Retry the whole session once if it hung (timeout with no recent progress).
    #[arg(long)]
    retry_on_hang: bool,
    /// L1 memory in MiB.
    #[arg(long, default_value_t = 2048)]
    mem: u32,
    /// L1 vCPUs. Default 1: with 2 (multi-threaded TCG) the emulated host froze in
    /// about 5 of 15 long e2e sessions on 2026-11-30, with 1 in none of the sessions
    /// tried; e2e times were about the same.
    #[arg(long, default_value_t = 1)]
    cpus: u32,
    /// Share a host directory into L1 (read-write, same path). Repeatable.
    #[arg(long = "share", value_name = "DIR")]
    shares: Vec<PathBuf>,
    /// Pass the host's environment variable NAME into L1. Repeatable.
    #[arg(long = "env", value_name = "NAME")]
    env: Vec<String>,
    /// Working directory of CMD (default: the current directory, if shared).
    #[arg(long)]
    workdir: Option<PathBuf>,
    /// Echo the L1 console to stderr (also HUSK_TESTHOST_VERBOSE=1).
    #[arg(long, short)]
    verbose: bool,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<OsString>,
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            std::process::exit(if e.use_stderr() { exit::HARNESS } else { 0 });
        }
    };
    let verbose =
        cli.verbose || std::env::var_os("HUSK_TESTHOST_VERBOSE").is_some_and(|v| v == "1");
    let opts = Options {
        timeout: Duration::from_secs(cli.timeout),
        idle_timeout: (cli.idle_timeout > 0).then(|| Duration::from_secs(cli.idle_timeout)),
        mem_mib: cli.mem,
        shares: cli.shares,
        env: cli.env,
        workdir: cli.workdir,
        retry_on_hang: cli.retry_on_hang,
        verbose,
        cpus: cli.cpus.max(1),
        command: cli.command,
    };
    testhost::install_signal_handlers();
    let code = match testhost::run(&opts) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("husk-testhost: error: {e}");
            e.exit_code()
        }
    };
    std::process::exit(code);
}
