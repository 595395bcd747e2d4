//! Command line of `husk-jailer` and its validation into a [`JailConfig`].
//!
//! The flags follow Firecracker's jailer where they apply. Everything is validated
//! before the jailer touches the host: a bad flag leaves nothing behind.

use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

use clap::Parser;

/// Longest accepted sandbox id (Firecracker's limit).
pub const MAX_ID_LEN: usize = 64;
/// Default `RLIMIT_NOFILE` for the VMM when `--resource-limit no-file=` is absent.
pub const DEFAULT_NO_FILE: u64 = 2048;

/// Raw command line, as parsed by clap.
#[derive(Parser, Debug)]
#[command(
    name = "husk-jailer",
    version,
    about = "Confine one husk VMM: cgroup, rlimits, mount/PID/net namespaces, pivot_root, \
             device nodes, unprivileged uid/gid, then exec the VMM with `--id <id>` and the \
             arguments after `--`."
)]
pub struct Cli {
    /// Sandbox id: 1 to 64 characters, ASCII letters, digits and '-'.
    #[arg(long)]
    pub id: String,
    /// The VMM binary (static build) to copy into the jail and exec.
    #[arg(long)]
    pub exec_file: PathBuf,
    /// Unprivileged user id the VMM runs as (not 0).
    #[arg(long)]
    pub uid: u32,
    /// Unprivileged group id the VMM runs as (not 0).
    #[arg(long)]
    pub gid: u32,
    /// Base directory of all jails; the jail root is `<base>/<exec file name>/<id>/root`.
    #[arg(long, default_value = "/srv/jailer")]
    pub chroot_base_dir: PathBuf,
    /// Network namespace to join (a path such as /var/run/netns/NAME).
    #[arg(long)]
    pub netns: Option<PathBuf>,
    /// Detach: new session, stdio to /dev/null; the jailer exits once the VMM runs and
    /// writes its pid to `<jail root>/<exec file name>.pid`.
    #[arg(long)]
    pub daemonize: bool,
    /// Run the VMM as PID 1 of a new PID namespace.
    #[arg(long)]
    pub new_pid_ns: bool,
    /// Cgroup setting `<controller>.<file>=<value>`, e.g. `memory.max=512M` (repeatable).
    #[arg(long = "cgroup", value_name = "CTRL.FILE=VALUE")]
    pub cgroups: Vec<String>,
    /// Cgroup version 1 or 2; default: 2 if /sys/fs/cgroup is a cgroup2 mount, else 1.
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=2))]
    pub cgroup_version: Option<u8>,
    /// Parent cgroup (relative path) of the sandbox's cgroup; default: exec file name.
    #[arg(long)]
    pub parent_cgroup: Option<String>,
    /// Resource limit `fsize=<bytes>` or `no-file=<count>` (repeatable).
    #[arg(long = "resource-limit", value_name = "NAME=VALUE")]
    pub resource_limits: Vec<String>,
    /// Extra file to hard-link (or copy) read-only into the jail root under its file
    /// name, e.g. the guest kernel and initramfs (repeatable). husk extension.
    #[arg(long = "include", value_name = "FILE")]
    pub includes: Vec<PathBuf>,
    /// Arguments passed to the VMM after `--id <id>`.
    #[arg(last = true)]
    pub vmm_args: Vec<OsString>,
}

/// Errors in the command line; each names the flag and what to change.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArgsError {
    /// Bad `--id`.
    #[error("invalid --id {0:?}: use 1 to 64 characters, ASCII letters, digits and '-'")]
    InvalidId(String),
    /// `--exec-file` does not exist or is not a regular file.
    #[error("--exec-file {0:?} is missing or not a regular file: give the path of the static husk binary")]
    ExecFileMissing(PathBuf),
    /// `--exec-file` has no usable file name.
    #[error("--exec-file {0:?} has no usable file name (ASCII letters, digits, '-', '_', '.')")]
    ExecFileName(PathBuf),
    /// uid or gid 0.
    #[error("--{0} 0 would leave the VMM privileged: give an unprivileged id")]
    RootId(&'static str),
    /// `--chroot-base-dir` is relative.
    #[error("--chroot-base-dir {0:?} must be an absolute path")]
    RelativeBaseDir(PathBuf),
    /// `--netns` path does not exist.
    #[error(
        "--netns {0:?} does not exist: give a network namespace file such as /var/run/netns/NAME"
    )]
    NetnsMissing(PathBuf),
    /// Malformed `--cgroup`.
    #[error("invalid --cgroup {0:?}: use <controller>.<file>=<value>, e.g. memory.max=512M")]
    InvalidCgroup(String),
    /// Malformed `--parent-cgroup`.
    #[error("invalid --parent-cgroup {0:?}: use a relative path without '..'")]
    InvalidParentCgroup(String),
    /// Malformed or unknown `--resource-limit`.
    #[error("invalid --resource-limit {0:?}: use fsize=<bytes> or no-file=<count>")]
    InvalidResourceLimit(String),
    /// `--include` file missing or unusable.
    #[error("--include {0:?} is missing, not a regular file, or clashes with another jail file")]
    InvalidInclude(PathBuf),
}

/// Which cgroup hierarchy to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    /// Per-controller v1 hierarchies at /sys/fs/cgroup/<controller>.
    V1,
    /// The unified v2 hierarchy.
    V2,
}

/// One `--cgroup` setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupSetting {
    /// Controller name, e.g. `memory`.
    pub controller: String,
    /// Control file name, e.g. `memory.max`.
    pub file: String,
    /// Value written to the file.
    pub value: String,
}

/// A resource limit the jailer sets before exec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// `RLIMIT_FSIZE`: largest file the VMM may write, bytes.
    FileSize,
    /// `RLIMIT_NOFILE`: open file descriptors.
    NoFile,
}

/// The validated configuration of one jail.
#[derive(Debug, Clone)]
pub struct JailConfig {
    /// Sandbox id.
    pub id: String,
    /// Absolute path of the VMM binary on the host.
    pub exec_file: PathBuf,
    /// File name of the VMM binary (its name inside the jail).
    pub exec_name: String,
    /// Target uid.
    pub uid: u32,
    /// Target gid.
    pub gid: u32,
    /// Base directory of all jails.
    pub chroot_base_dir: PathBuf,
    /// Network namespace to join.
    pub netns: Option<PathBuf>,
    /// Detach after exec.
    pub daemonize: bool,
    /// New PID namespace.
    pub new_pid_ns: bool,
    /// Cgroup settings.
    pub cgroups: Vec<CgroupSetting>,
    /// Requested cgroup version (None: detect).
    pub cgroup_version: Option<CgroupVersion>,
    /// Parent cgroup, relative.
    pub parent_cgroup: PathBuf,
    /// Resource limits, with the default no-file limit filled in.
    pub rlimits: Vec<(Resource, u64)>,
    /// Files to put into the jail root.
    pub includes: Vec<PathBuf>,
    /// Arguments for the VMM after `--id <id>`.
    pub vmm_args: Vec<OsString>,
}

/// Checks a sandbox id: 1..=64 chars of `[A-Za-z0-9-]`.
pub fn validate_id(id: &str) -> Result<(), ArgsError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ArgsError::InvalidId(id.to_string()))
    }
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')
}

/// A single safe path component: `[A-Za-z0-9._-]+`, not `.` or `..`.
pub fn is_safe_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && name.bytes().all(is_name_byte)
}

/// Parses `<controller>.<file>=<value>`.
pub fn parse_cgroup(arg: &str) -> Result<CgroupSetting, ArgsError> {
    let bad = || ArgsError::InvalidCgroup(arg.to_string());
    let (file, value) = arg.split_once('=').ok_or_else(bad)?;
    let (controller, rest) = file.split_once('.').ok_or_else(bad)?;
    let controller_ok = !controller.is_empty()
        && controller
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_');
    let value_ok = !value.is_empty() && value.len() <= 4096 && !value.contains(['\n', '\0']);
    if !controller_ok || rest.is_empty() || !is_safe_name(file) || !value_ok {
        return Err(bad());
    }
    Ok(CgroupSetting {
        controller: controller.to_string(),
        file: file.to_string(),
        value: value.to_string(),
    })
}

/// Parses a relative cgroup path of safe components.
pub fn parse_parent_cgroup(arg: &str) -> Result<PathBuf, ArgsError> {
    let bad = || ArgsError::InvalidParentCgroup(arg.to_string());
    let path = Path::new(arg);
    if arg.is_empty() || arg.len() > 1024 {
        return Err(bad());
    }
    for comp in path.components() {
        match comp {
            Component::Normal(c) if c.to_str().is_some_and(is_safe_name) => {}
            _ => return Err(bad()),
        }
    }
    Ok(path.to_path_buf())
}

/// Parses `fsize=<n>` or `no-file=<n>`.
pub fn parse_rlimit(arg: &str) -> Result<(Resource, u64), ArgsError> {
    let bad = || ArgsError::InvalidResourceLimit(arg.to_string());
    let (name, value) = arg.split_once('=').ok_or_else(bad)?;
    let resource = match name {
        "fsize" => Resource::FileSize,
        "no-file" => Resource::NoFile,
        _ => return Err(bad()),
    };
    let value = value.parse::<u64>().map_err(|_| bad())?;
    Ok((resource, value))
}

impl JailConfig {
    /// Validates a parsed command line. Only reads the host (exec file, netns path).
    pub fn from_cli(cli: Cli) -> Result<Self, ArgsError> {
        validate_id(&cli.id)?;
        let exec_file = std::fs::canonicalize(&cli.exec_file)
            .ok()
            .filter(|p| p.is_file())
            .ok_or_else(|| ArgsError::ExecFileMissing(cli.exec_file.clone()))?;
        let exec_name = exec_file
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| is_safe_name(n))
            .ok_or_else(|| ArgsError::ExecFileName(cli.exec_file.clone()))?
            .to_string();
        if cli.uid == 0 {
            return Err(ArgsError::RootId("uid"));
        }
        if cli.gid == 0 {
            return Err(ArgsError::RootId("gid"));
        }
        if !cli.chroot_base_dir.is_absolute() {
            return Err(ArgsError::RelativeBaseDir(cli.chroot_base_dir));
        }
        if let Some(ns) = &cli.netns {
            if !ns.exists() {
                return Err(ArgsError::NetnsMissing(ns.clone()));
            }
        }
        let cgroups = cli
            .cgroups
            .iter()
            .map(|c| parse_cgroup(c))
            .collect::<Result<Vec<_>, _>>()?;
        let parent_cgroup = match &cli.parent_cgroup {
            Some(p) => parse_parent_cgroup(p)?,
            None => PathBuf::from(&exec_name),
        };
        let mut rlimits = cli
            .resource_limits
            .iter()
            .map(|r| parse_rlimit(r))
            .collect::<Result<Vec<_>, _>>()?;
        if !rlimits.iter().any(|(r, _)| *r == Resource::NoFile) {
            rlimits.push((Resource::NoFile, DEFAULT_NO_FILE));
        }
        let includes = validate_includes(&cli.includes, &exec_name)?;
        Ok(Self {
            id: cli.id,
            exec_file,
            exec_name,
            uid: cli.uid,
            gid: cli.gid,
            chroot_base_dir: cli.chroot_base_dir,
            netns: cli.netns,
            daemonize: cli.daemonize,
            new_pid_ns: cli.new_pid_ns,
            cgroups,
            cgroup_version: cli.cgroup_version.map(|v| {
                if v == 2 {
                    CgroupVersion::V2
                } else {
                    CgroupVersion::V1
                }
            }),
            parent_cgroup,
            rlimits,
            includes,
            vmm_args: cli.vmm_args,
        })
    }
}

fn validate_includes(includes: &[PathBuf], exec_name: &str) -> Result<Vec<PathBuf>, ArgsError> {
    let mut names = vec![
        exec_name.to_string(),
        "dev".to_string(),
        format!("{exec_name}.pid"),
    ];
    let mut out = Vec::with_capacity(includes.len());
    for inc in includes {
        let bad = || ArgsError::InvalidInclude(inc.clone());
        let path = std::fs::canonicalize(inc)
            .ok()
            .filter(|p| p.is_file())
            .ok_or_else(bad)?;
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| is_safe_name(n))
            .ok_or_else(bad)?;
        if names.iter().any(|n| n == name) {
            return Err(bad());
        }
        names.push(name.to_string());
        out.push(path);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(extra: &[&str]) -> Result<Cli, clap::Error> {
        let mut argv = vec![
            "husk-jailer",
            "--id",
            "sb-1",
            "--exec-file",
            "/bin/sh",
            "--uid",
            "123",
            "--gid",
            "456",
        ];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv)
    }

    #[test]
    fn ids() {
        assert!(validate_id("a").is_ok());
        assert!(validate_id("abc-DEF-123").is_ok());
        assert!(validate_id(&"x".repeat(64)).is_ok());
        for bad in ["", "a/b", "../x", "a_b", "a.b", "a b", "é"] {
            assert_eq!(
                validate_id(bad),
                Err(ArgsError::InvalidId(bad.to_string())),
                "{bad}"
            );
        }
        assert!(validate_id(&"x".repeat(65)).is_err());
    }

    #[test]
    fn cgroup_settings() {
        let s = parse_cgroup("memory.max=512M").unwrap();
        assert_eq!(
            (s.controller.as_str(), s.file.as_str(), s.value.as_str()),
            ("memory", "memory.max", "512M")
        );
        let s = parse_cgroup("cpuset.cpus=0-1").unwrap();
        assert_eq!(s.controller, "cpuset");
        for bad in [
            "memory",
            "memory=1",
            ".max=1",
            "memory.=1",
            "memory.max=",
            "memory./x=1",
            "mem/ory.max=1",
            "memory.max=a\nb",
            "../x.y=1",
        ] {
            assert!(
                matches!(parse_cgroup(bad), Err(ArgsError::InvalidCgroup(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn parent_cgroups() {
        assert_eq!(
            parse_parent_cgroup("husk/pool-1").unwrap(),
            PathBuf::from("husk/pool-1")
        );
        for bad in ["", "/abs", "a/../b", "..", "a/./b"] {
            // "a/./b": Path::components drops "." so it is accepted as a/b; only check the rest.
            if bad == "a/./b" {
                assert_eq!(parse_parent_cgroup(bad).unwrap(), PathBuf::from("a/b"));
                continue;
            }
            assert!(parse_parent_cgroup(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rlimits() {
        assert_eq!(
            parse_rlimit("fsize=1024").unwrap(),
            (Resource::FileSize, 1024)
        );
        assert_eq!(parse_rlimit("no-file=16").unwrap(), (Resource::NoFile, 16));
        for bad in ["nofile=1", "fsize", "fsize=-1", "fsize=x", "stack=1"] {
            assert!(parse_rlimit(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn full_command_line() {
        let c = cli(&[
            "--cgroup",
            "pids.max=64",
            "--resource-limit",
            "fsize=10",
            "--",
            "--no-api",
            "--level",
            "Info",
        ])
        .unwrap();
        let cfg = JailConfig::from_cli(c).unwrap();
        assert_eq!(cfg.id, "sb-1");
        assert!(cfg.exec_file.is_absolute());
        assert!(!cfg.exec_name.is_empty());
        assert_eq!(cfg.parent_cgroup, PathBuf::from(&cfg.exec_name));
        assert_eq!(
            cfg.rlimits,
            vec![
                (Resource::FileSize, 10),
                (Resource::NoFile, DEFAULT_NO_FILE)
            ]
        );
        assert_eq!(
            cfg.vmm_args,
            vec![OsString::from("--no-api"), "--level".into(), "Info".into()]
        );
        assert_eq!(cfg.chroot_base_dir, PathBuf::from("/srv/jailer"));
        assert_eq!(cfg.cgroup_version, None);
    }

    #[test]
    fn bad_flags_fail_specifically() {
        let with = |f: &dyn Fn(&mut Cli)| {
            let mut c = cli(&[]).unwrap();
            f(&mut c);
            JailConfig::from_cli(c).unwrap_err()
        };
        assert_eq!(
            with(&|c| c.exec_file = "/nonexistent/husk".into()),
            ArgsError::ExecFileMissing("/nonexistent/husk".into())
        );
        assert_eq!(
            with(&|c| c.exec_file = "/tmp".into()),
            ArgsError::ExecFileMissing("/tmp".into())
        );
        assert_eq!(with(&|c| c.uid = 0), ArgsError::RootId("uid"));
        assert_eq!(with(&|c| c.gid = 0), ArgsError::RootId("gid"));
        assert_eq!(
            with(&|c| c.chroot_base_dir = "rel".into()),
            ArgsError::RelativeBaseDir("rel".into())
        );
        assert_eq!(
            with(&|c| c.netns = Some("/nonexistent/ns".into())),
            ArgsError::NetnsMissing("/nonexistent/ns".into())
        );
        assert_eq!(
            with(&|c| c.includes = vec!["/nonexistent/k".into()]),
            ArgsError::InvalidInclude("/nonexistent/k".into())
        );
        assert_eq!(
            with(&|c| c.id = "a/b".into()),
            ArgsError::InvalidId("a/b".into())
        );
        assert_eq!(
            with(&|c| c.cgroups = vec!["memory".into()]),
            ArgsError::InvalidCgroup("memory".into())
        );
        assert_eq!(
            with(&|c| c.parent_cgroup = Some("../x".into())),
            ArgsError::InvalidParentCgroup("../x".into())
        );
        assert_eq!(
            with(&|c| c.resource_limits = vec!["core=0".into()]),
            ArgsError::InvalidResourceLimit("core=0".into())
        );
        assert!(cli(&["--cgroup-version", "3"]).is_err());
    }
}
