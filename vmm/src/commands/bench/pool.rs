//! The pool scenario of `husk bench`: `husk pool --size K` serving the bench's snapshot,
//! loaded open-loop at each `--pool-rate` R: request i is sent at start + i / R seconds
//! on its own thread whether or not earlier ones were answered, so a pool that cannot
//! keep up shows as latency (queueing for a sandbox), not as a lower rate. Latency is
//! what a caller sees: connect to the pool's socket (the pool takes a ready sandbox and
//! relays its Hello) until the invocation's result arrived. Before each rate the pool is
//! let refill to K ready sandboxes; afterwards it is stopped with SIGTERM and must exit 0.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use husk_agent::client::{AgentClient, ClientConfig};
use husk_agent::protocol::{Invoke, Status};
use husk_agent::sync::error_chain;

use super::proc::Guest;
use super::scenarios::{HuskPlan, ScenarioError, SnapshotFiles};

/// How long an open-loop caller may wait for a sandbox: long, so a pool that falls
/// behind shows queueing in the figure instead of refusals.
const ACQUIRE_TIMEOUT_MS: u64 = 300_000;
/// One invocation's bound (queueing included).
const CALL_TIMEOUT: Duration = Duration::from_secs(320);
/// The line `husk pool` prints once K sandboxes are ready.
const READY_LINE: &str = "sandbox(es) ready";

/// What the pool scenario runs.
#[derive(Debug, Clone)]
pub struct PoolPlan {
    /// Sandboxes kept ready (K).
    pub size: usize,
    /// Request rates, per second.
    pub rates: Vec<f64>,
    /// Invocations per rate.
    pub invocations: u32,
}

/// One rate's latencies, ms, in arrival order.
#[derive(Debug, Clone)]
pub struct RateRun {
    /// Requests per second offered.
    pub rate: f64,
    /// Latencies.
    pub latencies_ms: Vec<f64>,
    /// The achieved span: first request sent -> last result received, s.
    pub span_s: f64,
}

/// A running `husk pool`.
struct PoolProc {
    g: Guest,
    sock: PathBuf,
    status: PathBuf,
}

impl PoolProc {
    fn ready(&self) -> Option<u64> {
        let text = std::fs::read_to_string(&self.status).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        v["ready"].as_u64()
    }

    /// Wait until the pool reports `k` ready sandboxes.
    fn wait_full(&mut self, k: usize, timeout: Duration) -> Result<(), ScenarioError> {
        let end = Instant::now() + timeout;
        while self.ready() != Some(k as u64) {
            if Instant::now() >= end || self.g.wait_exit(Duration::ZERO).is_some() {
                return Err(ScenarioError::NoLine {
                    what: format!("husk pool did not get back to {k} ready sandboxes"),
                    timeout,
                    transcript: self.g.transcript(),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// SIGTERM; it must exit 0 (it finished in-flight work, destroyed its sandboxes).
    fn stop(mut self) -> Result<(), ScenarioError> {
        // SAFETY: kill(2) with integer arguments only; the pid is our own child, not
        // yet reaped (Guest reaps it only in wait_exit or drop).
        unsafe { libc::kill(self.g.pid() as libc::pid_t, libc::SIGTERM) };
        match self.g.wait_exit(Duration::from_secs(60)) {
            Some(s) if s.success() => Ok(()),
            other => Err(ScenarioError::Exit {
                what: format!("husk pool did not exit 0 after SIGTERM ({other:?})"),
                transcript: self.g.transcript(),
            }),
        }
    }
}

/// One caller: connect (the pool hands over a sandbox) and invoke; latency in ms.
fn call(sock: &Path, payload: Vec<u8>) -> Result<f64, String> {
    let mut cfg = ClientConfig::new(sock);
    cfg.connect_timeout = CALL_TIMEOUT;
    let t = Instant::now();
    let r = AgentClient::connect(&cfg)
        .and_then(|mut c| c.invoke(Invoke::new(1, 10_000, payload), CALL_TIMEOUT))
        .map_err(|e| error_chain(&e))?;
    let took = t.elapsed().as_secs_f64() * 1000.0;
    if r.status != Status::Ok {
        return Err(format!(
            "status {:?} (stderr: {})",
            r.status,
            String::from_utf8_lossy(&r.stderr_tail).trim()
        ));
    }
    Ok(took)
}

/// `n` requests at `rate` per second against `sock`, open loop.
pub fn open_loop(sock: &Path, payload: &[u8], rate: f64, n: u32) -> Result<RateRun, String> {
    let start = Instant::now();
    let mut threads = Vec::with_capacity(n as usize);
    for i in 0..n {
        let at = start + Duration::from_secs_f64(f64::from(i) / rate);
        if let Some(w) = at.checked_duration_since(Instant::now()) {
            std::thread::sleep(w);
        }
        let (sock, payload) = (sock.to_path_buf(), payload.to_vec());
        let t = std::thread::Builder::new()
            .name("bench-pool-call".into())
            .spawn(move || call(&sock, payload))
            .map_err(|e| format!("cannot start a caller thread: {e}"))?;
        threads.push(t);
    }
    let mut latencies_ms = Vec::with_capacity(n as usize);
    let mut first_err = None;
    for (i, t) in threads.into_iter().enumerate() {
        match t.join() {
            Ok(Ok(ms)) => latencies_ms.push(ms),
            Ok(Err(e)) => {
                first_err.get_or_insert(format!("request {} of {n}: {e}", i + 1));
            }
            Err(_) => {
                first_err.get_or_insert(format!("request {} of {n}: caller panicked", i + 1));
            }
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    Ok(RateRun {
        rate,
        latencies_ms,
        span_s: start.elapsed().as_secs_f64(),
    })
}

impl HuskPlan {
    /// Start `husk pool --size K` on `snap`, then for each rate wait for K ready and run
    /// the open-loop load; `progress` is called after each rate. Stops the pool.
    pub fn pool_latency(
        &self,
        snap: &SnapshotFiles,
        plan: &PoolPlan,
        mut progress: impl FnMut(&RateRun),
    ) -> Result<Vec<RateRun>, ScenarioError> {
        let sock = self.dir.join("pool.sock");
        let status = self.dir.join("pool.status.json");
        let work = self.dir.join("pool-work");
        let _ = std::fs::remove_file(&sock);
        let mut cmd = Command::new(&self.husk);
        cmd.args(["pool", "--snapshot"])
            .arg(&snap.state)
            .arg("--mem")
            .arg(&snap.mem)
            .args(["--size", &plan.size.to_string()])
            .args(["--max-restores", &plan.size.to_string()])
            .arg("--socket")
            .arg(&sock)
            .arg("--status-file")
            .arg(&status)
            .arg("--work-dir")
            .arg(&work)
            .args(["--acquire-timeout-ms", &ACQUIRE_TIMEOUT_MS.to_string()]);
        let g = Guest::spawn(cmd).map_err(|source| ScenarioError::Spawn {
            what: format!("{} pool", self.husk.display()),
            source,
        })?;
        let mut p = PoolProc { g, sock, status };
        let fill = self.boot_timeout * 2;
        if p.g.wait_line(|l| l.contains(READY_LINE), fill).is_none() {
            return Err(ScenarioError::NoLine {
                what: format!("husk pool printed no \"{READY_LINE}\" line"),
                timeout: fill,
                transcript: p.g.transcript(),
            });
        }
        let mut runs = Vec::with_capacity(plan.rates.len());
        for &rate in &plan.rates {
            p.wait_full(plan.size, fill)?;
            let run = open_loop(&p.sock, &self.payload, rate, plan.invocations).map_err(|e| {
                ScenarioError::Exit {
                    what: format!("pool invocation at {rate} req/s failed: {e}"),
                    transcript: p.g.transcript(),
                }
            })?;
            progress(&run);
            runs.push(run);
        }
        p.stop()?;
        let _ = std::fs::remove_dir(&work);
        Ok(runs)
    }
}

/// Parse a request rate: a positive finite number of requests per second.
pub fn parse_rate(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 && r <= 10_000.0 => Ok(r),
        _ => Err(format!(
            "'{s}' is not a request rate: give requests per second, a number above 0 and at most 10000"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn rates_parse_and_bad_ones_are_refused() {
        assert_eq!(parse_rate("5"), Ok(5.0));
        assert_eq!(parse_rate("0.5"), Ok(0.5));
        for bad in ["0", "-1", "fast", "inf", "NaN", "20000"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }

    /// A fake pool socket that answers like `husk pool` (hybrid handshake, Hello, one
    /// Result per connection) after `delay`: the open-loop driver keeps its schedule
    /// (requests are not serialized behind slow answers) and reports every latency.
    #[test]
    fn open_loop_sends_on_schedule_and_times_each_call() {
        use husk_agent::protocol::{Codec, Hello, InvokeResult, Limits, Message};
        use std::io::{BufRead, BufReader, Write};
        let dir = std::env::temp_dir().join(format!("husk-bench-pool-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("p.sock");
        let _ = std::fs::remove_file(&sock);
        let l = UnixListener::bind(&sock).unwrap();
        let delay = Duration::from_millis(300);
        let server = std::thread::spawn(move || {
            let mut handlers = Vec::new();
            for _ in 0..4 {
                let (mut c, _) = l.accept().unwrap();
                handlers.push(std::thread::spawn(move || {
                    let mut line = String::new();
                    BufReader::new(&mut c).read_line(&mut line).unwrap();
                    assert!(line.starts_with("CONNECT "), "{line}");
                    c.write_all(b"OK 1\n").unwrap();
                    let codec = Codec::new(Limits::default());
                    let hello = Hello {
                        protocol_version: husk_agent::protocol::PROTOCOL_VERSION,
                        min_protocol_version: husk_agent::protocol::PROTOCOL_VERSION,
                        features: 0,
                        agent_version: "test".into(),
                        sandbox_id: "sb".into(),
                        restore_generation: 1,
                    };
                    codec.write_frame(&mut c, &Message::Hello(hello)).unwrap();
                    let Message::Invoke(inv) = codec.read_frame(&mut c).unwrap() else {
                        panic!("expected an Invoke");
                    };
                    std::thread::sleep(delay);
                    let r = InvokeResult {
                        id: inv.id,
                        status: Status::Ok,
                        flags: 0,
                        duration_us: 1,
                        body: b"1".to_vec(),
                        stderr_tail: Vec::new(),
                        logs_dropped: 0,
                    };
                    codec.write_frame(&mut c, &Message::Result(r)).unwrap();
                }));
            }
            for h in handlers {
                h.join().unwrap();
            }
        });
        // 4 requests at 20/s: sent over 150 ms, each answered after 300 ms; a closed
        // loop would need 1.2 s.
        let run = open_loop(&sock, b"x", 20.0, 4).unwrap();
        server.join().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(run.latencies_ms.len(), 4);
        assert!(
            run.latencies_ms.iter().all(|&ms| ms >= 300.0),
            "{:?}",
            run.latencies_ms
        );
        assert!(run.span_s < 1.0, "open loop took {} s", run.span_s);
    }

    #[test]
    fn a_refused_call_fails_the_run_with_its_reason() {
        let missing = std::env::temp_dir().join("husk-bench-no-such-pool.sock");
        let e = open_loop(&missing, b"x", 100.0, 2).unwrap_err();
        assert!(e.starts_with("request 1 of 2:"), "{e}");
    }
}
