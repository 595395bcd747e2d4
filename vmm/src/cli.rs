//! The `husk` command line: Firecracker-compatible flags without a subcommand, and
//! `husk run` to boot a VM from flags. Other subcommands (`pack`, `invoke`, `bench`)
//! are added to [`Command`] by their owners.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::builder::{build_microvm_for_boot, BuildError, ConsoleConfig, VmResources, VsockConfig};
use crate::config::{ConfigError, VmConfig};
use crate::logger;
use crate::stop::StopReason;
use crate::vmm::VmmError;

/// Exit statuses, shown in `--help`.
pub const EXIT_STATUS_HELP: &str = "\
Exit status:
  0  the guest rebooted (i8042 reset, triple fault), powered off or halted
  1  VMM or configuration error
  2  usage error
  3  the guest kernel panicked
  4  boot timeout: no ready marker in time (husk run --boot-timeout-secs)
  5  the guest agent hit a fatal error (see the guest console)";

/// Firecracker flags husk recognizes but does not support.
pub const UNSUPPORTED_FIRECRACKER_FLAGS: &[&str] = &[
    "--api-sock",
    "--seccomp-filter",
    "--http-api-max-payload-size",
    "--mmds-size-limit",
    "--metadata",
    "--show-level",
    "--show-log-origin",
    "--metrics-path",
    "--module",
    "--describe-snapshot",
    "--snapshot-version",
    "--enable-pci",
    "--parent-cpu-time-us",
];

/// husk: a minimal KVM microVM sandbox runtime.
#[derive(Debug, Parser)]
#[command(name = "husk", version, after_help = EXIT_STATUS_HELP, args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// A subcommand; without one, husk behaves like `firecracker --no-api --config-file`.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Firecracker-compatible flags.
    #[command(flatten)]
    pub firecracker: FirecrackerArgs,
}

/// Flags of Firecracker mode (no subcommand).
#[derive(Debug, Args, Default)]
pub struct FirecrackerArgs {
    /// Firecracker JSON config file (boot-source, machine-config, vsock, entropy).
    #[arg(long)]
    pub config_file: Option<PathBuf>,
    /// Run without the API socket (required: husk has no API yet).
    #[arg(long)]
    pub no_api: bool,
    /// MicroVM id (used in logs).
    #[arg(long)]
    pub id: Option<String>,
    /// Print the boot-ready time to stderr.
    #[arg(long)]
    pub boot_timer: bool,
    #[command(flatten)]
    pub log: LogArgs,
    /// Disable the seccomp filters (debugging only).
    #[arg(long)]
    pub no_seccomp: bool,
    /// Accepted for Firecracker jailer compatibility; ignored.
    #[arg(long, hide = true)]
    pub start_time_us: Option<u64>,
    /// Accepted for Firecracker jailer compatibility; ignored.
    #[arg(long, hide = true)]
    pub start_time_cpu_us: Option<u64>,
}

/// Logging flags.
#[derive(Debug, Args, Default, Clone)]
pub struct LogArgs {
    /// Log level: Off, Error, Warning, Info, Debug, Trace.
    #[arg(long, default_value = "Warning")]
    pub level: String,
    /// Write the VMM log to this file instead of stderr.
    #[arg(long)]
    pub log_path: Option<PathBuf>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Boot a microVM from flags.
    Run(RunArgs),
    /// Build a guest initramfs for a function (husk-agent as /init plus the function).
    Pack(crate::commands::pack::PackArgs),
    /// Send one invocation to a running sandbox's agent over its vsock Unix socket.
    Invoke(crate::commands::invoke::InvokeArgs),
}

/// `husk run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Guest kernel: ELF vmlinux (or bzImage).
    #[arg(long)]
    pub kernel: PathBuf,
    /// Initramfs.
    #[arg(long)]
    pub initrd: Option<PathBuf>,
    /// Kernel command line (default: console=ttyS0 reboot=k panic=0 pci=off ... quiet).
    #[arg(long)]
    pub cmdline: Option<String>,
    /// Number of vCPUs (1-32).
    #[arg(long, default_value_t = 1)]
    pub vcpus: u8,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 128)]
    pub mem_mib: u64,
    /// vsock guest CID (>= 3); needs --vsock-uds.
    #[arg(long, requires = "vsock_uds")]
    pub vsock_cid: Option<u64>,
    /// vsock host Unix socket path; needs --vsock-cid.
    #[arg(long, requires = "vsock_cid")]
    pub vsock_uds: Option<PathBuf>,
    /// Add a virtio-rng device.
    #[arg(long)]
    pub entropy: bool,
    /// Guest console: `stdout`, `null`, or a file path.
    #[arg(long, default_value = "stdout")]
    pub console: String,
    /// Print the boot-ready time to stderr.
    #[arg(long)]
    pub boot_timer: bool,
    /// Stop with exit status 4 if the guest is not ready after this many seconds.
    #[arg(long)]
    pub boot_timeout_secs: Option<u64>,
    /// Disable the seccomp filters (debugging only).
    #[arg(long)]
    pub no_seccomp: bool,
    #[command(flatten)]
    pub log: LogArgs,
}

impl RunArgs {
    /// The VM resources these flags describe.
    pub fn to_resources(&self) -> VmResources {
        let mut r = VmResources::new(self.kernel.clone());
        r.initrd = self.initrd.clone();
        r.cmdline = self.cmdline.clone();
        r.vcpus = self.vcpus;
        r.mem_mib = self.mem_mib;
        r.vsock = match (self.vsock_cid, &self.vsock_uds) {
            (Some(guest_cid), Some(uds_path)) => Some(VsockConfig {
                guest_cid,
                uds_path: uds_path.clone(),
            }),
            _ => None,
        };
        r.entropy = self.entropy;
        r.console = match self.console.as_str() {
            "stdout" => ConsoleConfig::Stdout,
            "null" => ConsoleConfig::Null,
            path => ConsoleConfig::File(PathBuf::from(path)),
        };
        r.boot_timer = self.boot_timer;
        r.seccomp = !self.no_seccomp;
        r
    }
}

/// Errors of a `husk` invocation.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad usage.
    #[error("{0}")]
    Usage(String),
    /// Config file.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Logger.
    #[error(transparent)]
    Logger(#[from] logger::LoggerError),
    /// Building the VM.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// Running the VM.
    #[error(transparent)]
    Vmm(#[from] VmmError),
    /// Installing the VMM thread's seccomp filter.
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
    /// Event manager creation.
    #[error("cannot create the event loop: {0:?}")]
    EventManager(event_manager::Error),
}

impl CliError {
    /// The process exit status for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Usage(_) => 2,
            _ => 1,
        }
    }
}

/// Reject Firecracker flags husk does not support, by name (before clap parsing, so
/// the message names the flag instead of "unexpected argument").
pub fn check_unsupported_flags<S: AsRef<str>>(args: &[S]) -> Result<(), CliError> {
    for a in args.iter().skip(1) {
        let a = a.as_ref();
        if !a.starts_with("--") {
            // A subcommand or a value: flags after a subcommand are clap's business.
            if matches!(a, "run" | "pack" | "invoke" | "bench") {
                break;
            }
            continue;
        }
        let name = a.split('=').next().unwrap_or(a);
        if UNSUPPORTED_FIRECRACKER_FLAGS.contains(&name) {
            return Err(CliError::Usage(format!(
                "flag {name} is not supported by husk (yet)"
            )));
        }
    }
    Ok(())
}

fn init_logging(log: &LogArgs) -> Result<(), CliError> {
    let level = logger::parse_level(&log.level).ok_or_else(|| {
        CliError::Usage(format!(
            "unknown log level {:?}: use Off, Error, Warning, Info, Debug or Trace",
            log.level
        ))
    })?;
    logger::init(level, log.log_path.as_deref())?;
    Ok(())
}

/// Boot `res` and run it to the end; returns why it stopped.
pub fn boot_and_run(
    res: &VmResources,
    boot_timeout: Option<Duration>,
) -> Result<StopReason, CliError> {
    let mut em = crate::EventManager::new().map_err(CliError::EventManager)?;
    let mut vmm = build_microvm_for_boot(res, &mut em)?;
    if res.seccomp {
        // Every thread exists now (no clone is allowed later); vCPU threads installed
        // their own filter.
        crate::seccomp::install(crate::seccomp::Thread::Vmm)?;
    } else {
        log::warn!("seccomp filters disabled (--no-seccomp): for debugging only");
    }
    vmm.set_boot_timeout(boot_timeout);
    vmm.set_print_memory_at_ready(res.boot_timer);
    vmm.resume()?;
    log::debug!("vCPUs running");
    let reason = vmm.run_until_exit(&mut em)?;
    Ok(reason)
}

fn report(reason: &StopReason) -> i32 {
    match reason {
        StopReason::Reset => log::info!("the guest rebooted; exiting"),
        StopReason::PowerOff => log::info!("the guest powered off; exiting"),
        StopReason::GuestPanic => eprintln!(
            "husk: the guest kernel panicked (see the console output above); exit status 3"
        ),
        StopReason::Error(e) => eprintln!("husk: the VM failed: {e}"),
        StopReason::BootTimeout => {
            eprintln!("husk: the guest did not signal ready in time; exit status 4")
        }
        StopReason::AgentFatal => eprintln!(
            "husk: the guest agent hit a fatal error (see the console output above); exit status 5"
        ),
    }
    reason.exit_code()
}

/// Run `husk` with `args` (including argv[0]); returns the process exit status.
pub fn run_main(args: Vec<String>) -> Result<i32, CliError> {
    check_unsupported_flags(&args)?;
    let cli = match Cli::try_parse_from(&args) {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return Ok(code);
        }
    };
    match cli.command {
        Some(Command::Run(run)) => {
            init_logging(&run.log)?;
            let reason = boot_and_run(
                &run.to_resources(),
                run.boot_timeout_secs.map(Duration::from_secs),
            )?;
            Ok(report(&reason))
        }
        Some(Command::Pack(args)) => Ok(crate::commands::pack::run(&args)),
        Some(Command::Invoke(args)) => Ok(crate::commands::invoke::run(&args)),
        None => {
            let fc = cli.firecracker;
            init_logging(&fc.log)?;
            if !fc.no_api {
                return Err(CliError::Usage(
                    "husk has no API socket yet: pass --no-api together with --config-file".into(),
                ));
            }
            let path = fc.config_file.ok_or_else(|| {
                CliError::Usage(
                    "--no-api needs --config-file (or use `husk run --kernel ...`)".into(),
                )
            })?;
            if let Some(id) = &fc.id {
                log::info!("microVM id {id}");
            }
            let mut res = VmConfig::from_file(&path)?.to_resources();
            res.boot_timer = fc.boot_timer;
            res.seccomp = !fc.no_seccomp;
            let reason = boot_and_run(&res, None)?;
            Ok(report(&reason))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn unsupported_firecracker_flags_are_named() {
        let e = check_unsupported_flags(&args("husk --api-sock /tmp/a.sock --no-api")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "flag --api-sock is not supported by husk (yet)"
        );
        assert_eq!(e.exit_code(), 2);
        assert!(check_unsupported_flags(&args("husk --seccomp-filter=f.bpf")).is_err());
        check_unsupported_flags(&args("husk --no-api --config-file c.json --id x")).unwrap();
        check_unsupported_flags(&args("husk run --kernel k --metadata m")).unwrap();
    }

    #[test]
    fn firecracker_mode_requires_no_api() {
        let e = run_main(args("husk --config-file /nonexistent.json")).unwrap_err();
        assert!(e.to_string().contains("--no-api"), "{e}");
        assert_eq!(e.exit_code(), 2);
    }

    #[test]
    fn run_flags_map_to_resources() {
        let cli = Cli::try_parse_from(args(
            "husk run --kernel /k --initrd /i --vcpus 2 --mem-mib 256 --vsock-cid 3 --vsock-uds /tmp/v --entropy --console /tmp/c.log --boot-timer",
        ))
        .unwrap();
        let Some(Command::Run(run)) = cli.command else {
            panic!("expected run")
        };
        let r = run.to_resources();
        assert_eq!(
            (r.vcpus, r.mem_mib, r.entropy, r.boot_timer),
            (2, 256, true, true)
        );
        assert_eq!(r.console, ConsoleConfig::File("/tmp/c.log".into()));
        assert_eq!(r.vsock.unwrap().guest_cid, 3);
        // vsock flags come in pairs.
        assert!(Cli::try_parse_from(args("husk run --kernel /k --vsock-cid 3")).is_err());
        // Unknown flags are refused.
        assert!(Cli::try_parse_from(args("husk --frobnicate")).is_err());
    }

    #[test]
    fn help_lists_exit_statuses() {
        use clap::CommandFactory;
        let help = Cli::command().render_help().to_string();
        assert!(help.contains("3  the guest kernel panicked"), "{help}");
    }
}
