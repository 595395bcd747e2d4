//! Reuse mode: a crashed worker's invocation is answered at once, and the new worker is
//! started in the background for the next invocation.

use std::path::PathBuf;
use std::sync::mpsc;

use super::*;
use crate::protocol::{Status, RESULT_WORKER_RESTARTED};

struct NoVm;

impl Platform for NoVm {
    fn shutdown(&self) {}
    fn restored(&self, _r: &Restored) {}
}

/// A scratch directory of this test process (removed by [`Scratch::drop`]).
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("husk-agent-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn crashed_worker_result_does_not_wait_for_the_restarted_workers_init() {
    let dir = Scratch::new("restart");
    let d = dir.0.display();
    // First start: ready at once, then exit 3 on the first request. Every later start:
    // its initialisation blocks until the test creates `go`, then it answers `ok`.
    let script = format!(
        r"if [ -e {d}/started ]; then
            while [ ! -e {d}/go ]; do sleep 0.02; done
            printf '\2\0\0\0\0' >&3
            head -c 1 >/dev/null; printf '\0\2\0\0\0ok' >&3; cat >/dev/null
          else
            touch {d}/started
            printf '\2\0\0\0\0' >&3
            head -c 1 >/dev/null; exit 3
          fi"
    );
    let mut function = FunctionConfig::new("/bin/sh", Mode::Worker);
    function.args = vec!["-c".into(), script];
    function.init_timeout_ms = 30_000;
    let boot = BootOptions {
        reuse: true,
        ..BootOptions::default()
    };
    let a = Agent::new(
        ServerConfig::new(boot, function),
        Reaper::per_child(),
        Box::new(NoVm),
    )
    .unwrap();

    // The crash is answered while the new worker is still initialising (it cannot
    // finish before `go` exists); the old code held the answer until the restart was
    // ready or init_timeout_ms (30 s) ran out.
    let (tx, rx) = mpsc::channel();
    let a2 = a.clone();
    std::thread::spawn(move || {
        let _ = tx.send(a2.handle(Message::Invoke(Invoke::new(1, 10_000, b"x".to_vec()))));
    });
    let replies = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the crashed invocation's result waited for the restarted worker");
    match replies.as_slice() {
        [Message::Result(r)] => {
            assert!(matches!(r.status, Status::Crashed(_)), "{r:?}");
            assert_ne!(r.flags & RESULT_WORKER_RESTARTED, 0, "{r:?}");
        }
        other => panic!("{other:?}"),
    }

    // Let the restarted worker finish its init: the next invocation is served by it.
    std::fs::write(dir.0.join("go"), b"").unwrap();
    match a
        .handle(Message::Invoke(Invoke::new(2, 10_000, b"x".to_vec())))
        .as_slice()
    {
        [Message::Result(r)] => {
            assert_eq!((r.status, r.body.as_slice()), (Status::Ok, &b"ok"[..]))
        }
        other => panic!("{other:?}"),
    }
    if let Some(pid) = a.worker_pid() {
        Reaper::kill_group(pid);
    }
}
