//! Child processes in their own process group, so a timeout can kill the child and
//! everything it started (QEMU and its threads, a VMM and its jailer) in one go.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};

/// Spawns `cmd` as the leader of a new process group (its pgid equals its pid).
pub fn spawn_in_group(cmd: &mut Command) -> io::Result<Child> {
    cmd.process_group(0).spawn()
}

/// Sends SIGKILL to the whole process group led by `pid`. Errors (the group is already
/// gone) are ignored: the caller only wants it dead.
pub fn kill_group(pid: u32) {
    let Ok(pgid) = libc::pid_t::try_from(pid) else {
        return;
    };
    if pgid <= 1 {
        return;
    }
    // SAFETY: kill(2) takes plain integers; a negative pid addresses the process group
    // `pgid`, which we created with `spawn_in_group` and which is not our own group.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn kill_group_kills_grandchildren() {
        // The shell starts a background sleep (a grandchild) and prints its pid.
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "sleep 30 & echo $!; wait"])
            .stdout(std::process::Stdio::piped());
        let mut child = spawn_in_group(&mut cmd).unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let grandchild: i32 = line.trim().parse().unwrap();
        kill_group(child.id());
        child.wait().unwrap();
        let start = Instant::now();
        // Alive = exists and is not a zombie (a zombie waits for its new parent to reap it).
        let alive = || {
            std::fs::read_to_string(format!("/proc/{grandchild}/stat"))
                .is_ok_and(|s| !s.contains(") Z "))
        };
        while alive() {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "grandchild {grandchild} survived"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
