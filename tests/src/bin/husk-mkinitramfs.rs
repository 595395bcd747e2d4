//! `husk-mkinitramfs`: packs a newc cpio initramfs without root privileges.
//!
//! `husk-mkinitramfs -o OUT --init BIN [--file DEST=SRC]... [--dir DEST]...
//! [--symlink DEST=TARGET]...` writes an archive holding `/init` (from BIN), the given
//! files (permission bits copied from SRC), directories and symlinks, plus `/dev`,
//! `/dev/console` (char 5:1, so init has a console before devtmpfs), `/proc`, `/sys`,
//! `/tmp` and `/run`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use husk_tests::cpio::Cpio;

/// Pack a newc cpio initramfs (no root needed).
#[derive(Debug, Parser)]
#[command(name = "husk-mkinitramfs")]
struct Cli {
    /// Output file.
    #[arg(short, long)]
    output: PathBuf,
    /// The executable to install as /init.
    #[arg(long)]
    init: PathBuf,
    /// Add a file: DEST=SRC (DEST is the path inside the archive). Repeatable.
    #[arg(long = "file", value_name = "DEST=SRC")]
    files: Vec<String>,
    /// Add an empty directory. Repeatable.
    #[arg(long = "dir", value_name = "DEST")]
    dirs: Vec<String>,
    /// Add a symlink: DEST=TARGET. Repeatable.
    #[arg(long = "symlink", value_name = "DEST=TARGET")]
    symlinks: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, #[source] std::io::Error),
    #[error("cannot write {0}: {1}")]
    Write(PathBuf, #[source] std::io::Error),
    #[error("{0:?}: expected DEST=SRC or DEST=TARGET")]
    Pair(String),
    #[error(transparent)]
    Cpio(#[from] husk_tests::cpio::CpioError),
}

fn read(src: &Path) -> Result<(Vec<u8>, u32), Error> {
    let data = std::fs::read(src).map_err(|e| Error::Read(src.to_path_buf(), e))?;
    let mode = std::fs::metadata(src)
        .map_err(|e| Error::Read(src.to_path_buf(), e))?
        .permissions()
        .mode();
    Ok((data, mode & 0o7777))
}

fn pair(s: &str) -> Result<(&str, &str), Error> {
    s.split_once('=')
        .filter(|(a, b)| !a.is_empty() && !b.is_empty())
        .ok_or_else(|| Error::Pair(s.to_string()))
}

fn build(cli: &Cli) -> Result<(), Error> {
    let mut a = Cpio::new();
    for d in ["dev", "proc", "sys", "tmp", "run"] {
        a.dir(d, 0o755)?;
    }
    a.char_dev("dev/console", 0o600, 5, 1)?;
    let (init, _) = read(&cli.init)?;
    a.file("init", &init, 0o755)?;
    for d in &cli.dirs {
        a.dir(d, 0o755)?;
    }
    for f in &cli.files {
        let (dest, src) = pair(f)?;
        let (data, mode) = read(Path::new(src))?;
        a.file(dest, &data, mode)?;
    }
    for s in &cli.symlinks {
        let (dest, target) = pair(s)?;
        a.symlink(dest, target)?;
    }
    std::fs::write(&cli.output, a.finish()).map_err(|e| Error::Write(cli.output.clone(), e))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match build(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("husk-mkinitramfs: {e}");
            ExitCode::FAILURE
        }
    }
}
