//! `husk image build`: turn a directory (and optionally the agent and a function, laid
//! out as `husk pack` does) into an ext4 root filesystem image, without root privileges
//! and reproducibly.
//!
//! How: the inputs are copied into a staging directory, `mkfs.ext4 -d` (e2fsprogs)
//! builds the filesystem from it with a fixed UUID and directory hash seed, no journal
//! and the superblock times faked (`E2FSPROGS_FAKE_TIME`), then one `debugfs -w` pass
//! sets every inode's owner to 0:0 and its four timestamps to the build epoch
//! (`SOURCE_DATE_EPOCH`, default 1: e2fsprogs treats a fake time of 0 as unset). Same
//! inputs, same bytes. With `--agent`, the agent is installed as `/sbin/init`, so the
//! kernel runs it from the image (`root=/dev/vda`) with no initramfs; the agent mounts
//! /proc, /sys, /dev and a tmpfs on /tmp as usual.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use clap::{Args, Subcommand};
use husk_agent::config::Mode;
use husk_agent::pack::{build_tree, Node, PackSpec};

use super::pack::{parse_env, parse_file, parse_mode};

/// The default filesystem UUID (and directory hash seed): fixed, for reproducibility.
pub const DEFAULT_UUID: &str = "0a5e7a1e-4b75-4c6b-9000-000000000001";

/// `husk image` subcommands.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Build an ext4 image from a directory and/or the agent and a function.
    Build(BuildArgs),
}

/// `husk image build` flags.
#[derive(Debug, Args)]
#[command(
    after_help = "Exit status: 0 built, 1 error (message on stderr), 2 usage error.\n\
The image is reproducible: same inputs, same bytes. Needs mkfs.ext4 and debugfs (e2fsprogs)."
)]
pub struct BuildArgs {
    /// A directory whose contents become the image's root.
    pub dir: Option<PathBuf>,
    /// The husk-agent binary (static), installed as /sbin/init; needs --function.
    #[arg(long, requires = "function")]
    pub agent: Option<PathBuf>,
    /// The function executable, under /husk/fn/ with /husk/function.json; needs --agent.
    #[arg(long, requires = "agent")]
    pub function: Option<PathBuf>,
    /// How the agent runs the function: exec or worker.
    #[arg(long, value_parser = parse_mode, default_value = "exec")]
    pub mode: Mode,
    /// An argument for the function (repeatable).
    #[arg(long = "arg", allow_hyphen_values = true)]
    pub args: Vec<String>,
    /// An environment variable K=V for the function (repeatable).
    #[arg(long = "env", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// An extra file SRC:DEST (DEST absolute in the guest; repeatable).
    #[arg(long = "file", value_parser = parse_file)]
    pub files: Vec<(PathBuf, String)>,
    /// Image size in MiB (default: the contents plus room for metadata).
    #[arg(long)]
    pub size_mib: Option<u64>,
    /// Filesystem UUID (also the directory hash seed).
    #[arg(long, default_value = DEFAULT_UUID)]
    pub uuid: String,
    /// Filesystem label.
    #[arg(long, default_value = "husk-root")]
    pub label: String,
    /// Output image path.
    #[arg(short = 'o', long)]
    pub output: PathBuf,
}

/// Errors of `husk image build`.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Nothing to put in the image.
    #[error("nothing to build: give a directory, or --agent and --function")]
    Empty,
    /// Reading an input or writing the staging tree failed.
    #[error("cannot {0} {1}")]
    Io(&'static str, PathBuf, #[source] io::Error),
    /// A file type the image cannot hold.
    #[error("{0} is not a regular file, directory or symlink; remove it from the input")]
    Special(PathBuf),
    /// A path debugfs cannot be given.
    #[error("{0:?} has a quote, backslash or newline in its name; rename it")]
    BadName(String),
    /// Packing the agent and function failed.
    #[error("cannot lay out the agent and function")]
    Pack(#[source] husk_agent::pack::PackError),
    /// A tool is missing.
    #[error("{0} not found: install e2fsprogs (scripts/setup.sh does)")]
    MissingTool(&'static str),
    /// A tool failed.
    #[error("{tool} failed ({status}): {stderr}")]
    Tool {
        /// Tool name.
        tool: &'static str,
        /// Exit status.
        status: String,
        /// Its stderr.
        stderr: String,
    },
    /// A bad flag value.
    #[error("{0}")]
    Invalid(String),
}

fn io_err(what: &'static str, p: &Path) -> impl FnOnce(io::Error) -> ImageError {
    let p = p.to_path_buf();
    move |e| ImageError::Io(what, p, e)
}

/// Find an e2fsprogs tool in PATH or the sbin directories (often not in a user's PATH).
fn find_tool(name: &'static str) -> Result<PathBuf, ImageError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or(ImageError::MissingTool(name))
}

/// Copy `src`'s contents into `dst` (files, directories, symlinks; permissions kept).
fn copy_tree(src: &Path, dst: &Path) -> Result<(), ImageError> {
    let mut entries: Vec<_> = fs::read_dir(src)
        .map_err(io_err("read", src))?
        .collect::<Result<_, _>>()
        .map_err(io_err("read", src))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let from = e.path();
        let to = dst.join(e.file_name());
        let meta = fs::symlink_metadata(&from).map_err(io_err("stat", &from))?;
        let ft = meta.file_type();
        if ft.is_dir() {
            fs::create_dir_all(&to).map_err(io_err("create", &to))?;
            copy_tree(&from, &to)?;
            fs::set_permissions(&to, meta.permissions()).map_err(io_err("chmod", &to))?;
        } else if ft.is_file() {
            fs::copy(&from, &to).map_err(io_err("copy", &from))?;
        } else if ft.is_symlink() {
            let target = fs::read_link(&from).map_err(io_err("read link", &from))?;
            symlink(&target, &to).map_err(io_err("create link", &to))?;
        } else {
            return Err(ImageError::Special(from));
        }
    }
    Ok(())
}

/// Write the agent/function layout of `husk pack` into `dst`, the agent as /sbin/init.
fn write_function(
    args: &BuildArgs,
    agent: &Path,
    function: &Path,
    dst: &Path,
) -> Result<(), ImageError> {
    let spec = PackSpec {
        agent: agent.to_path_buf(),
        function: function.to_path_buf(),
        mode: args.mode,
        args: args.args.clone(),
        env: args.env.iter().cloned().collect::<BTreeMap<_, _>>(),
        files: args.files.clone(),
        deadline_ms: None,
        output_cap: None,
        gzip: false,
    };
    let (tree, _) = build_tree(&spec).map_err(ImageError::Pack)?;
    for (rel, node) in tree.nodes() {
        let rel = if rel == "init" {
            "sbin/init"
        } else {
            rel.as_str()
        };
        let to = dst.join(rel);
        match node {
            Node::Dir(perm) => {
                fs::create_dir_all(&to).map_err(io_err("create", &to))?;
                fs::set_permissions(&to, fs::Permissions::from_mode(*perm))
                    .map_err(io_err("chmod", &to))?;
            }
            Node::File(perm, data) => {
                if let Some(parent) = to.parent() {
                    fs::create_dir_all(parent).map_err(io_err("create", parent))?;
                }
                fs::write(&to, data).map_err(io_err("write", &to))?;
                fs::set_permissions(&to, fs::Permissions::from_mode(*perm))
                    .map_err(io_err("chmod", &to))?;
            }
            // Device nodes need root; the kernel's devtmpfs provides /dev/console.
            Node::CharDev(..) => {}
        }
    }
    Ok(())
}

/// Every path in the staging tree, relative, sorted; and the bytes its files take.
fn walk(root: &Path, rel: &str, out: &mut Vec<String>, bytes: &mut u64) -> Result<(), ImageError> {
    let dir = root.join(rel);
    let mut names: Vec<_> = fs::read_dir(&dir)
        .map_err(io_err("read", &dir))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(io_err("read", &dir))?;
    names.sort();
    for n in names {
        let name = n
            .to_str()
            .ok_or_else(|| ImageError::BadName(n.to_string_lossy().into_owned()))?;
        let r = if rel.is_empty() {
            name.to_string()
        } else {
            format!("{rel}/{name}")
        };
        if r.contains(['"', '\\', '\n']) {
            return Err(ImageError::BadName(r));
        }
        let p = root.join(&r);
        let meta = fs::symlink_metadata(&p).map_err(io_err("stat", &p))?;
        // Round each file up to 4 KiB blocks.
        *bytes += meta.len().div_ceil(4096) * 4096;
        out.push(r.clone());
        if meta.is_dir() {
            walk(root, &r, out, bytes)?;
        }
    }
    Ok(())
}

fn run_tool(tool: &'static str, cmd: &mut Command) -> Result<(), ImageError> {
    let out = cmd
        .output()
        .map_err(|e| ImageError::Io("run", PathBuf::from(tool), e))?;
    if out.status.success() {
        return Ok(());
    }
    Err(ImageError::Tool {
        tool,
        status: out.status.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

/// Build the image; returns its size in bytes.
pub fn build(args: &BuildArgs) -> Result<u64, ImageError> {
    if args.dir.is_none() && args.agent.is_none() {
        return Err(ImageError::Empty);
    }
    if !args.uuid.chars().all(|c| c.is_ascii_hexdigit() || c == '-') || args.uuid.len() != 36 {
        return Err(ImageError::Invalid(format!(
            "--uuid {:?} is not a UUID (8-4-4-4-12 hex digits)",
            args.uuid
        )));
    }
    let mkfs = find_tool("mkfs.ext4")?;
    let debugfs = find_tool("debugfs")?;
    let epoch: u64 = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v
            .parse()
            .map_err(|_| ImageError::Invalid(format!("SOURCE_DATE_EPOCH {v:?} is not a number")))?,
        Err(_) => 1,
    }
    .max(1);
    let out_dir = match args.output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = args
        .output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into());
    let staging = out_dir.join(format!(".{name}.staging-{}", std::process::id()));
    let partial = out_dir.join(format!(".{name}.partial-{}", std::process::id()));
    let _ = fs::remove_dir_all(&staging);
    let result = (|| {
        fs::create_dir_all(&staging).map_err(io_err("create", &staging))?;
        if let Some(d) = &args.dir {
            copy_tree(d, &staging)?;
        }
        if let (Some(agent), Some(function)) = (&args.agent, &args.function) {
            write_function(args, agent, function, &staging)?;
            for (d, perm) in [
                ("dev", 0o755),
                ("proc", 0o555),
                ("sys", 0o555),
                ("tmp", 0o1777),
            ] {
                let p = staging.join(d);
                fs::create_dir_all(&p).map_err(io_err("create", &p))?;
                fs::set_permissions(&p, fs::Permissions::from_mode(perm))
                    .map_err(io_err("chmod", &p))?;
            }
        }
        let mut paths = Vec::new();
        let mut bytes = 0u64;
        walk(&staging, "", &mut paths, &mut bytes)?;
        // Contents + 25% + 4 MiB for metadata, at least 8 MiB.
        let size_mib = args
            .size_mib
            .unwrap_or_else(|| ((bytes + bytes / 4) >> 20) + 4)
            .max(8);
        let inodes = paths.len() as u64 + 64;
        let _ = fs::remove_file(&partial);
        run_tool(
            "mkfs.ext4",
            Command::new(&mkfs)
                .env("E2FSPROGS_FAKE_TIME", epoch.to_string())
                .args([
                    "-q", "-F", "-t", "ext4", "-b", "4096", "-I", "256", "-m", "0",
                ])
                .args(["-O", "^has_journal"])
                .arg("-N")
                .arg(inodes.to_string())
                .arg("-U")
                .arg(&args.uuid)
                .arg("-E")
                .arg(format!("hash_seed={},root_owner=0:0", args.uuid))
                .arg("-L")
                .arg(&args.label)
                .arg("-d")
                .arg(&staging)
                .arg(&partial)
                .arg(format!("{size_mib}M")),
        )?;
        // Owner 0:0 and fixed times for every inode mkfs copied from the staging tree
        // (it takes owners and atime/ctime from there; crtime is the wall clock).
        let mut cmds = String::new();
        for p in std::iter::once("").chain(paths.iter().map(String::as_str)) {
            for (field, value) in [
                ("uid", 0),
                ("gid", 0),
                ("atime", epoch),
                ("mtime", epoch),
                ("ctime", epoch),
                ("crtime", epoch),
            ] {
                cmds.push_str(&format!("sif \"/{p}\" {field} {value}\n"));
            }
        }
        let cmd_file = staging.with_extension("debugfs");
        fs::write(&cmd_file, cmds).map_err(io_err("write", &cmd_file))?;
        let r = run_tool(
            "debugfs",
            Command::new(&debugfs)
                .env("E2FSPROGS_FAKE_TIME", epoch.to_string())
                .arg("-w")
                .arg("-f")
                .arg(&cmd_file)
                .arg(&partial),
        );
        let _ = fs::remove_file(&cmd_file);
        r?;
        fs::rename(&partial, &args.output).map_err(io_err("write", &args.output))?;
        Ok(size_mib << 20)
    })();
    let _ = fs::remove_dir_all(&staging);
    if result.is_err() {
        let _ = fs::remove_file(&partial);
    }
    result
}

/// Run `husk image`; returns the exit status.
pub fn run(cmd: &ImageCommand) -> i32 {
    match cmd {
        ImageCommand::Build(args) => {
            let start = Instant::now();
            match build(args) {
                Ok(size) => {
                    eprintln!(
                        "husk image build: wrote {} ({} MiB) in {:.2} s",
                        args.output.display(),
                        size >> 20,
                        start.elapsed().as_secs_f64()
                    );
                    0
                }
                Err(e) => {
                    eprintln!("husk image build: {}", crate::controller::error_chain(&e));
                    1
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(dir: &Path, out: &Path) -> BuildArgs {
        BuildArgs {
            dir: Some(dir.to_path_buf()),
            agent: None,
            function: None,
            mode: Mode::Exec,
            args: vec![],
            env: vec![],
            files: vec![],
            size_mib: None,
            uuid: DEFAULT_UUID.into(),
            label: "t".into(),
            output: out.to_path_buf(),
        }
    }

    /// Needs e2fsprogs (scripts/setup.sh installs it): fails, never skips, without it.
    #[test]
    fn builds_of_two_copies_made_at_different_times_are_identical() {
        let base = std::env::temp_dir().join(format!("husk-image-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        let a = base.join("a");
        fs::create_dir_all(a.join("usr/lib")).unwrap();
        fs::write(a.join("usr/lib/x.py"), b"print(1)\n").unwrap();
        fs::write(a.join("big"), vec![7u8; 300_000]).unwrap();
        symlink("usr/lib/x.py", a.join("link")).unwrap();
        let one = base.join("one.img");
        build(&args(&a, &one)).unwrap();
        // A copy made later: other ctimes, atimes and crtimes.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let b = base.join("b");
        fs::create_dir_all(&b).unwrap();
        copy_tree(&a, &b).unwrap();
        let two = base.join("two.img");
        build(&args(&b, &two)).unwrap();
        let (x, y) = (fs::read(&one).unwrap(), fs::read(&two).unwrap());
        assert_eq!(x.len(), 8 << 20);
        assert!(x == y, "two builds of the same tree differ");
        // A different file content gives a different image.
        fs::write(b.join("usr/lib/x.py"), b"print(2)\n").unwrap();
        build(&args(&b, &two)).unwrap();
        assert!(fs::read(&two).unwrap() != x);
        // No staging leftovers next to the output.
        let left: Vec<_> = fs::read_dir(&base)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .collect();
        assert!(left.is_empty(), "{left:?}");
        assert!(matches!(
            build(&BuildArgs {
                dir: None,
                ..args(&a, &one)
            }),
            Err(ImageError::Empty)
        ));
        assert!(matches!(
            build(&BuildArgs {
                uuid: "x".into(),
                ..args(&a, &one)
            }),
            Err(ImageError::Invalid(_))
        ));
        fs::remove_dir_all(&base).unwrap();
    }
}
