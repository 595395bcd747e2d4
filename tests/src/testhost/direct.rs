//! The direct path: this host has hardware-virt KVM, so the command runs here, in its
//! own process group, under the same hard timeout as an L1 session.

use std::io::ErrorKind;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{interrupted, status_code, Options, TesthostError};
use crate::pgroup;

pub(super) fn run(opts: &Options) -> Result<i32, TesthostError> {
    let (program, args) = opts
        .command
        .split_first()
        .ok_or(TesthostError::Usage("no command given".into()))?;
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::null());
    if let Some(w) = &opts.workdir {
        cmd.current_dir(w);
    }
    let name = program.to_string_lossy().into_owned();
    let start = Instant::now();
    let mut child = pgroup::spawn_in_group(&mut cmd).map_err(|e| match e.kind() {
        ErrorKind::NotFound => TesthostError::NotFound(name.clone()),
        ErrorKind::PermissionDenied => TesthostError::NotExecutable(format!("{name}: {e}")),
        _ => TesthostError::NotExecutable(format!("{name}: {e}")),
    })?;
    eprintln!(
        "husk-testhost: command started after {:.2} s",
        start.elapsed().as_secs_f64()
    );
    loop {
        match child.try_wait() {
            Ok(Some(s)) => {
                pgroup::kill_group(child.id());
                let code = status_code(s);
                eprintln!(
                    "husk-testhost: command exited with status {code} after {:.1} s",
                    start.elapsed().as_secs_f64()
                );
                return Ok(code);
            }
            Ok(None) => {}
            Err(e) => {
                return Err(TesthostError::Io {
                    path: name.into(),
                    source: e,
                })
            }
        }
        if interrupted() {
            pgroup::kill_group(child.id());
            let _ = child.wait();
            return Err(TesthostError::Interrupted);
        }
        if start.elapsed() >= opts.timeout {
            pgroup::kill_group(child.id());
            let _ = child.wait();
            return Err(TesthostError::Timeout {
                hang: false,
                phase: "command",
                after: start.elapsed(),
                detail: format!(
                    "the command ran longer than --timeout {} s",
                    opts.timeout.as_secs()
                ),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
