//! `husk pack`: pack the agent, a function and its files into a reproducible initramfs.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::Args;
use husk_agent::config::Mode;
use husk_agent::pack::{pack, PackSpec};

/// `husk pack` flags.
#[derive(Debug, Args)]
#[command(
    after_help = "Exit status: 0 packed, 1 error (message on stderr), 2 usage error.\n\
The archive is reproducible: same inputs, same bytes. A name ending in .gz is gzipped."
)]
pub struct PackArgs {
    /// The husk-agent binary (static), packed as /init.
    #[arg(long)]
    pub agent: PathBuf,
    /// The function executable (static), packed under /husk/fn/.
    #[arg(long)]
    pub function: PathBuf,
    /// How the agent runs the function: exec (a process per invocation) or worker.
    #[arg(long, value_parser = parse_mode)]
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
    /// Default deadline for invocations that set none, in milliseconds.
    #[arg(long)]
    pub deadline_ms: Option<u32>,
    /// Cap on the function's captured output, in bytes.
    #[arg(long)]
    pub output_cap: Option<usize>,
    /// Gzip the archive (default: when the output name ends in .gz).
    #[arg(long)]
    pub gzip: bool,
    /// Output path.
    #[arg(short = 'o', long)]
    pub output: PathBuf,
}

pub(crate) fn parse_mode(s: &str) -> Result<Mode, String> {
    s.parse()
}

pub(crate) fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected K=V, got {s:?}")),
    }
}

pub(crate) fn parse_file(s: &str) -> Result<(PathBuf, String), String> {
    match s.rsplit_once(':') {
        Some((src, dest)) if !src.is_empty() && dest.starts_with('/') => {
            Ok((PathBuf::from(src), dest.to_string()))
        }
        _ => Err(format!(
            "expected SRC:DEST with an absolute guest DEST, got {s:?}"
        )),
    }
}

impl PackArgs {
    /// The packing spec these flags describe.
    pub fn spec(&self) -> PackSpec {
        let gzip = self.gzip || self.output.extension().is_some_and(|e| e == "gz");
        PackSpec {
            agent: self.agent.clone(),
            function: self.function.clone(),
            mode: self.mode,
            args: self.args.clone(),
            env: self.env.iter().cloned().collect::<BTreeMap<_, _>>(),
            files: self.files.clone(),
            deadline_ms: self.deadline_ms,
            output_cap: self.output_cap,
            gzip,
        }
    }
}

/// Run `husk pack`; returns the exit status.
pub fn run(args: &PackArgs) -> i32 {
    let bytes = match pack(&args.spec()) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("husk pack: {}", husk_agent::sync::error_chain(&e));
            return 1;
        }
    };
    // Write next to the target and rename, so a failed pack never leaves a half file.
    let tmp = args.output.with_extension("partial");
    let written = std::fs::write(&tmp, &bytes).and_then(|()| std::fs::rename(&tmp, &args.output));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        eprintln!("husk pack: cannot write {}: {e}", args.output.display());
        return 1;
    }
    eprintln!(
        "husk pack: wrote {} ({} bytes)",
        args.output.display(),
        bytes.len()
    );
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_parsers_accept_and_reject() {
        assert_eq!(parse_env("A=b=c").unwrap(), ("A".into(), "b=c".into()));
        assert!(parse_env("=x").is_err());
        assert!(parse_env("nox").is_err());
        assert_eq!(
            parse_file("/h/a:b.txt:/g/x").unwrap(),
            (PathBuf::from("/h/a:b.txt"), "/g/x".to_string())
        );
        assert!(parse_file("/h/a:rel").is_err());
        assert!(parse_mode("worker").is_ok());
        assert!(parse_mode("daemon").is_err());
    }
}
