//! The `husk` command line: Firecracker-compatible flags without a subcommand, and
//! `husk run` to boot a VM from flags. Other subcommands (`pack`, `invoke`, `bench`)
//! are added to [`Command`] by their owners.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::api::ApiServer;
use crate::builder::{BuildError, ConsoleConfig, VmResources, VsockConfig};
use crate::config::{ConfigError, VmConfig};
use crate::controller::{Controller, ControllerError, ControllerOptions};
use crate::logger;
use crate::stop::StopReason;

/// Exit statuses, shown in `--help`.
pub const EXIT_STATUS_HELP: &str = "\
Exit status:
  0  the guest rebooted (i8042 reset, triple fault), powered off or halted
  1  VMM or configuration error
  2  usage error
  3  the guest kernel panicked
  4  boot timeout: no ready marker in time (husk run --boot-timeout-secs)
  5  the guest agent hit a fatal error (see the guest console)
  128+N  stopped by signal N (SIGTERM 143, SIGINT 130) after ending the guest cleanly";

/// Firecracker's default API socket path (used without --api-sock and --no-api).
pub const DEFAULT_API_SOCK: &str = "/run/firecracker.socket";

/// Firecracker flags husk recognizes but does not support.
pub const UNSUPPORTED_FIRECRACKER_FLAGS: &[&str] = &[
    "--seccomp-filter",
    "--mmds-size-limit",
    "--metadata",
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
    /// Firecracker JSON config file (boot-source, machine-config, vsock, entropy, logger,
    /// metrics): boot from it at once (with the API, keep serving it afterwards).
    #[arg(long)]
    pub config_file: Option<PathBuf>,
    /// Serve Firecracker's REST API on this Unix socket (default /run/firecracker.socket).
    #[arg(long, conflicts_with = "no_api")]
    pub api_sock: Option<PathBuf>,
    /// Run without the API socket (needs --config-file).
    #[arg(long)]
    pub no_api: bool,
    /// Largest API request body accepted, in bytes.
    #[arg(long, default_value_t = crate::api::http::DEFAULT_MAX_PAYLOAD)]
    pub http_api_max_payload_size: usize,
    /// Metrics file or named pipe (as PUT /metrics).
    #[arg(long)]
    pub metrics_path: Option<PathBuf>,
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
    /// Write the VMM log to this file (or named pipe) instead of stderr.
    #[arg(long)]
    pub log_path: Option<PathBuf>,
    /// Show the level on each log line (default: shown unless --show-log-origin or
    /// PUT /logger says otherwise).
    #[arg(long)]
    pub show_level: bool,
    /// Show the source file and line on each log line.
    #[arg(long)]
    pub show_log_origin: bool,
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
    /// Build root filesystem images (ext4, reproducible, no root needed).
    #[command(subcommand)]
    Image(crate::commands::image::ImageCommand),
    /// Create a function snapshot, or restore a sandbox from one.
    Snapshot(crate::commands::snapshot::SnapshotArgs),
    /// Cold-start figures for a function (boot, first response, round trip, memory),
    /// beside QEMU microvm booting the same kernel and initramfs.
    Bench(crate::commands::bench::BenchArgs),
    /// Keep K sandboxes restored from a snapshot; serve each invocation on a fresh one
    /// over a Unix socket with the agent protocol.
    Pool(crate::commands::pool::PoolArgs),
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
    /// Add a virtio-blk drive (repeatable): `path=IMG[,id=ID][,root][,ro][,partuuid=U]`.
    /// The root drive becomes /dev/vda and `root=/dev/vda ro|rw` goes on the command line.
    #[arg(long = "drive", value_parser = parse_drive)]
    pub drives: Vec<crate::builder::DriveConfig>,
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
    /// Also serve Firecracker's REST API on this Unix socket (pause, resume, metrics).
    #[arg(long)]
    pub api_sock: Option<PathBuf>,
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
        r.drives = self.drives.clone();
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

/// Parse one `--drive` value: `path=IMG[,id=ID][,root][,ro][,partuuid=U]`; the id
/// defaults to `rootfs` for the root drive; other drives need one.
fn parse_drive(s: &str) -> Result<crate::builder::DriveConfig, String> {
    let mut d = crate::builder::DriveConfig {
        id: String::new(),
        path: PathBuf::new(),
        root: false,
        read_only: false,
        partuuid: None,
    };
    for part in s.split(',') {
        match part.split_once('=') {
            Some(("path", v)) => d.path = PathBuf::from(v),
            Some(("id", v)) => d.id = v.to_string(),
            Some(("partuuid", v)) => d.partuuid = Some(v.to_string()),
            None if part == "root" => d.root = true,
            None if part == "ro" => d.read_only = true,
            None if part == "rw" => d.read_only = false,
            _ => {
                return Err(format!(
                    "unknown drive option {part:?}: use path=IMG, id=ID, root, ro, rw, partuuid=U"
                ))
            }
        }
    }
    if d.path.as_os_str().is_empty() {
        return Err("a drive needs path=IMG".into());
    }
    if d.id.is_empty() {
        if !d.root {
            return Err("a non-root drive needs id=ID".into());
        }
        d.id = "rootfs".into();
    }
    let section = crate::config::DriveSection {
        drive_id: d.id.clone(),
        path_on_host: d.path.clone(),
        is_root_device: d.root,
        is_read_only: d.read_only,
        partuuid: d.partuuid.clone(),
    };
    section.validate().map_err(|e| e.to_string())?;
    Ok(d)
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
    /// The controller (event loop, boot, seccomp).
    #[error(transparent)]
    Controller(#[from] ControllerError),
    /// The API server.
    #[error(transparent)]
    Api(#[from] crate::api::ApiServerError),
    /// Signal handlers.
    #[error("cannot install the SIGTERM/SIGINT handlers")]
    Signals(#[source] std::io::Error),
    /// `husk snapshot`.
    #[error(transparent)]
    Snapshot(#[from] crate::commands::snapshot::SnapshotCliError),
}

impl CliError {
    /// The process exit status for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Usage(_)
            | CliError::Snapshot(crate::commands::snapshot::SnapshotCliError::Usage(_)) => 2,
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
            if matches!(a, "run" | "pack" | "invoke" | "image" | "bench" | "pool") {
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
    if log.show_level || log.show_log_origin {
        logger::set_format(log.show_level, log.show_log_origin);
    }
    Ok(())
}

fn controller_for(opts: ControllerOptions) -> Result<Controller, CliError> {
    let controller = Controller::new(opts)?;
    crate::signals::install_term_handlers(controller.signal_eventfd())
        .map_err(CliError::Signals)?;
    Ok(controller)
}

/// Boot `res` (`husk run`) and run it to the end, serving the API on `api_sock` if
/// given; returns why it stopped.
pub fn boot_and_run(
    res: &VmResources,
    boot_timeout: Option<Duration>,
    api_sock: Option<&std::path::Path>,
) -> Result<StopReason, CliError> {
    boot_and_run_with(res, boot_timeout, api_sock, None)
}

/// [`boot_and_run`], optionally snapshotting when the guest is ready.
pub fn boot_and_run_with(
    res: &VmResources,
    boot_timeout: Option<Duration>,
    api_sock: Option<&std::path::Path>,
    snapshot_at_ready: Option<crate::snapshot::params::SnapshotCreateParams>,
) -> Result<StopReason, CliError> {
    let mut controller = controller_for(ControllerOptions {
        console: res.console.clone(),
        boot_timer: res.boot_timer,
        seccomp: res.seccomp,
        boot_timeout,
        snapshot_at_ready,
        ..ControllerOptions::default()
    })?;
    res.validate()?;
    if let Some(path) = api_sock {
        ApiServer::bind(
            path,
            controller.sender(),
            crate::api::http::DEFAULT_MAX_PAYLOAD,
        )?
        .spawn(res.seccomp)?;
    }
    let result = controller
        .start_with(res)
        .map_err(unwrap_build)
        .and_then(|()| Ok(controller.run()?));
    if let Some(path) = api_sock {
        let _ = std::fs::remove_file(path);
    }
    result
}

/// A build error keeps its own variant (and message) on the command line.
fn unwrap_build(e: ControllerError) -> CliError {
    match e {
        ControllerError::Build(b) => CliError::Build(b),
        other => CliError::Controller(other),
    }
}

/// Firecracker mode: the API socket (unless `--no-api`) and/or the config file.
fn firecracker_mode(fc: FirecrackerArgs) -> Result<StopReason, CliError> {
    if fc.no_api && fc.config_file.is_none() {
        return Err(CliError::Usage(
            "--no-api needs --config-file (or use `husk run --kernel ...`)".into(),
        ));
    }
    let config = match &fc.config_file {
        Some(path) => Some(VmConfig::from_file(path)?),
        None => None,
    };
    let id = fc.id.clone().unwrap_or_else(|| "anonymous-instance".into());
    log::info!("microVM id {id}");
    let mut controller = controller_for(ControllerOptions {
        id,
        console: ConsoleConfig::Stdout,
        boot_timer: fc.boot_timer,
        seccomp: !fc.no_seccomp,
        boot_timeout: None,
        snapshot_at_ready: None,
    })?;
    if let Some(path) = &fc.metrics_path {
        controller
            .handle(crate::controller::VmmAction::PutMetrics(
                crate::config::MetricsConfig {
                    metrics_path: path.clone(),
                    emit_id: None,
                    properties: None,
                },
            ))
            .map_err(|e| CliError::Controller(e.into()))?;
    }
    let api_path = (!fc.no_api).then(|| {
        fc.api_sock
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_API_SOCK))
    });
    if let Some(path) = &api_path {
        ApiServer::bind(path, controller.sender(), fc.http_api_max_payload_size)?
            .spawn(!fc.no_seccomp)?;
        log::info!("API server listening on {}", path.display());
    }
    let result = (|| {
        if let Some(cfg) = &config {
            controller.configure(cfg)?;
            let res = cfg.to_resources()?;
            res.validate()?;
            controller.start()?;
        }
        controller.run()
    })()
    .map_err(unwrap_build);
    if let Some(path) = &api_path {
        let _ = std::fs::remove_file(path);
    }
    result
}

fn console_config(s: &str) -> ConsoleConfig {
    match s {
        "stdout" => ConsoleConfig::Stdout,
        "null" => ConsoleConfig::Null,
        path => ConsoleConfig::File(PathBuf::from(path)),
    }
}

/// `husk snapshot create|restore`.
fn snapshot_command(args: crate::commands::snapshot::SnapshotArgs) -> Result<i32, CliError> {
    use crate::commands::snapshot::{self as snap, SnapshotCommand};
    match args.command {
        SnapshotCommand::Create(c) => {
            if let Some(sock) = &c.api_sock {
                init_logging(&LogArgs {
                    level: "Warning".into(),
                    ..LogArgs::default()
                })?;
                snap::create_via_api(&c, sock)?;
                return Ok(0);
            }
            let run = snap::at_ready_run_args(&c)?;
            init_logging(&run.log)?;
            let reason = boot_and_run_with(
                &run.to_resources(),
                run.boot_timeout_secs.map(Duration::from_secs),
                run.api_sock.as_deref(),
                Some(snap::create_params(&c)),
            )?;
            Ok(report(&reason))
        }
        SnapshotCommand::Restore(r) => {
            init_logging(&r.log)?;
            let mut controller = controller_for(ControllerOptions {
                console: console_config(&r.console),
                boot_timer: r.boot_timer,
                seccomp: !r.no_seccomp,
                ..ControllerOptions::default()
            })?;
            if let Some(path) = &r.api_sock {
                ApiServer::bind(
                    path,
                    controller.sender(),
                    crate::api::http::DEFAULT_MAX_PAYLOAD,
                )?
                .spawn(!r.no_seccomp)?;
            }
            // The handshake thread starts before the load: no thread can be spawned once
            // the VMM thread's seccomp filter is installed. It retries until the restored
            // vsock socket accepts.
            if let Some(uds) = r.vsock_uds.clone().filter(|_| !r.skip_handshake) {
                let id = r
                    .sandbox_id
                    .clone()
                    .unwrap_or_else(|| format!("restored-{}", std::process::id()));
                let print = r.boot_timer;
                std::thread::Builder::new()
                    .name("husk-restored".into())
                    .spawn(move || snap::restored_handshake(uds, id, print))
                    .map_err(|e| {
                        CliError::Usage(format!("cannot start the handshake thread: {e}"))
                    })?;
            } else if !r.skip_handshake {
                log::warn!("no --vsock-uds: the agent gets no Restored message from husk; send it before invoking");
            }
            let result = controller
                .handle(crate::controller::VmmAction::LoadSnapshot(
                    snap::load_params(&r),
                ))
                .map_err(|e| CliError::Controller(e.into()))
                .and_then(|_| Ok(controller.run()?));
            if let Some(path) = &r.api_sock {
                let _ = std::fs::remove_file(path);
            }
            Ok(report(&result?))
        }
    }
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
        StopReason::Signal(n) => log::info!("stopped by signal {n}"),
        StopReason::SnapshotTaken => log::info!("snapshot taken at ready; exiting"),
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
                run.api_sock.as_deref(),
            )?;
            Ok(report(&reason))
        }
        Some(Command::Pack(args)) => Ok(crate::commands::pack::run(&args)),
        Some(Command::Invoke(args)) => Ok(crate::commands::invoke::run(&args)),
        Some(Command::Image(cmd)) => Ok(crate::commands::image::run(&cmd)),
        Some(Command::Snapshot(args)) => snapshot_command(args),
        Some(Command::Bench(args)) => Ok(crate::commands::bench::run(&args)),
        Some(Command::Pool(args)) => {
            init_logging(&LogArgs {
                level: "Warning".into(),
                ..LogArgs::default()
            })?;
            Ok(crate::commands::pool::main(&args))
        }
        None => {
            let fc = cli.firecracker;
            init_logging(&fc.log)?;
            let reason = firecracker_mode(fc)?;
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
        let e = check_unsupported_flags(&args("husk --metadata m.json --no-api")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "flag --metadata is not supported by husk (yet)"
        );
        check_unsupported_flags(&args("husk --api-sock /tmp/a.sock --show-level")).unwrap();
        assert_eq!(e.exit_code(), 2);
        assert!(check_unsupported_flags(&args("husk --seccomp-filter=f.bpf")).is_err());
        check_unsupported_flags(&args("husk --no-api --config-file c.json --id x")).unwrap();
        check_unsupported_flags(&args("husk run --kernel k --metadata m")).unwrap();
    }

    #[test]
    fn firecracker_mode_flags() {
        let e = firecracker_mode(FirecrackerArgs {
            no_api: true,
            ..FirecrackerArgs::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("--config-file"), "{e}");
        assert_eq!(e.exit_code(), 2);
        let e = firecracker_mode(FirecrackerArgs {
            config_file: Some("/nonexistent.json".into()),
            ..FirecrackerArgs::default()
        })
        .unwrap_err();
        assert!(matches!(e, CliError::Config(ConfigError::Read(..))), "{e}");
        assert!(Cli::try_parse_from(args("husk --api-sock /a --no-api")).is_err());
        let cli = Cli::try_parse_from(args(
            "husk --api-sock /a --config-file c --show-level --metrics-path /m",
        ))
        .unwrap();
        assert_eq!(cli.firecracker.api_sock, Some(PathBuf::from("/a")));
        assert_eq!(cli.firecracker.http_api_max_payload_size, 51_200);
        assert!(cli.firecracker.log.show_level);
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

#[cfg(test)]
mod drive_flag_tests {
    use super::*;

    #[test]
    fn drive_flags_parse_and_validate() {
        let d = parse_drive("path=/img/root.ext4,root,ro").unwrap();
        assert_eq!((d.id.as_str(), d.root, d.read_only), ("rootfs", true, true));
        assert_eq!(d.path, PathBuf::from("/img/root.ext4"));
        let d = parse_drive("id=data_1,path=d.img").unwrap();
        assert!(!d.root && !d.read_only && d.id == "data_1");
        assert!(parse_drive("path=d.img").unwrap_err().contains("id=ID"));
        assert!(parse_drive("root,ro").unwrap_err().contains("path=IMG"));
        assert!(parse_drive("path=x,root,cache=none")
            .unwrap_err()
            .contains("unknown drive option"));
        assert!(parse_drive("path=x,id=a-b")
            .unwrap_err()
            .contains("drive_id"));
    }
}
