//! A child VMM process (husk or QEMU) with its stdout and stderr read line by line on
//! two threads, each line stamped with its time since the spawn; every wait is bounded,
//! and dropping a [`Guest`] kills the process.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// Lines kept for error messages.
const TRANSCRIPT_LINES: usize = 60;
/// Longest line kept (a guest can print anything).
const MAX_LINE: usize = 512;
/// Lines kept for [`Guest::wait_line`] (bounds what a chatty guest costs).
const MAX_SEEN: usize = 4096;

/// A running VMM.
pub struct Guest {
    child: Child,
    started: Instant,
    lines: Receiver<(Duration, String)>,
    transcript: VecDeque<String>,
    seen: Vec<(Duration, String)>,
}

fn reader(r: impl Read + Send + 'static, started: Instant, tx: mpsc::Sender<(Duration, String)>) {
    std::thread::spawn(move || {
        let mut r = BufReader::new(r);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let at = started.elapsed();
                    buf.truncate(MAX_LINE);
                    let line = String::from_utf8_lossy(&buf).trim_end().to_string();
                    if tx.send((at, line)).is_err() {
                        break;
                    }
                }
            }
        }
    });
}

impl Guest {
    /// Spawn `cmd` with piped output; the clock starts right before the spawn.
    pub fn spawn(mut cmd: Command) -> std::io::Result<Self> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let started = Instant::now();
        let mut child = cmd.spawn()?;
        let (tx, rx) = mpsc::channel();
        if let Some(out) = child.stdout.take() {
            reader(out, started, tx.clone());
        }
        if let Some(err) = child.stderr.take() {
            reader(err, started, tx);
        }
        Ok(Self {
            child,
            started,
            lines: rx,
            transcript: VecDeque::new(),
            seen: Vec::new(),
        })
    }

    /// When the process was spawned.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn keep(&mut self, at: Duration, line: String) {
        if self.transcript.len() == TRANSCRIPT_LINES {
            self.transcript.pop_front();
        }
        self.transcript.push_back(line.clone());
        if self.seen.len() < MAX_SEEN {
            self.seen.push((at, line));
        }
    }

    /// The first line (already seen or arriving within `timeout`) for which `matches`
    /// holds: its time since the spawn and its text.
    pub fn wait_line(
        &mut self,
        matches: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> Option<(Duration, String)> {
        if let Some(hit) = self.seen.iter().find(|(_, l)| matches(l)) {
            return Some(hit.clone());
        }
        let end = Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((at, line)) => {
                    let hit = matches(&line);
                    self.keep(at, line.clone());
                    if hit {
                        return Some((at, line));
                    }
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// Wait up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(s)) => return Some(s),
                Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(10)),
                _ => return None,
            }
        }
    }

    /// The last lines of output, for an error message.
    pub fn transcript(&mut self) -> String {
        while let Ok((at, line)) = self.lines.try_recv() {
            self.keep(at, line);
        }
        let lines: Vec<&str> = self.transcript.iter().map(String::as_str).collect();
        lines.join("\n")
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}
