//! The agent's server logic on the host, over Unix sockets, with the real example
//! functions (no VM, not PID 1). The listener speaks the hybrid vsock handshake like the
//! VMM does, so the host client is exercised end to end too.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use husk_agent::client::{AgentClient, ClientConfig, ClientError};
use husk_agent::config::{BootOptions, FunctionConfig, Mode};
use husk_agent::protocol::{
    Codec, Crash, ErrorCode, Invoke, InvokeResult, LogChunk, LogStream, Message, Restored, Status,
    FEATURES, FEATURE_BUSY, FEATURE_INVOKE_METADATA, FEATURE_LOG_FRAMES, PROTOCOL_VERSION,
    RESULT_OUTPUT_TRUNCATED,
};
use husk_agent::reaper::{process_alive, Reaper};
use husk_agent::runner::{LOG_CAP, STDERR_TAIL};
use husk_agent::server::{Agent, Listener, Platform, ServerConfig, ALREADY_USED, BUSY_INVOKING};

#[derive(Default)]
struct TestPlatform {
    shutdowns: AtomicUsize,
    restores: Mutex<Vec<Restored>>,
}

struct SharedPlatform(Arc<TestPlatform>);

impl Platform for SharedPlatform {
    fn shutdown(&self) {
        self.0.shutdowns.fetch_add(1, Ordering::SeqCst);
    }
    fn restored(&self, r: &Restored) {
        self.0.restores.lock().unwrap().push(r.clone());
    }
}

/// A Unix listener that answers the hybrid vsock handshake like the VMM.
struct Hybrid(UnixListener);

impl Listener for Hybrid {
    type Conn = UnixStream;
    fn accept(&self) -> std::io::Result<UnixStream> {
        let (mut s, _) = self.0.accept()?;
        let mut line = String::new();
        std::io::BufReader::new(s.try_clone()?).read_line(&mut line)?;
        assert_eq!(line, "CONNECT 1024\n");
        s.write_all(b"OK 5000\n")?;
        Ok(s)
    }
}

struct Sandbox {
    path: PathBuf,
    agent: Arc<Agent>,
    platform: Arc<TestPlatform>,
}

fn bin(name: &str) -> PathBuf {
    match name {
        "echo" => env!("CARGO_BIN_EXE_fn-echo"),
        "counter" => env!("CARGO_BIN_EXE_fn-counter"),
        "sleeper" => env!("CARGO_BIN_EXE_fn-sleeper"),
        "crasher" => env!("CARGO_BIN_EXE_fn-crasher"),
        "chatty" => env!("CARGO_BIN_EXE_fn-chatty"),
        "hash" => env!("CARGO_BIN_EXE_fn-hash"),
        "meta" => env!("CARGO_BIN_EXE_fn-meta"),
        _ => panic!("unknown function {name}"),
    }
    .into()
}

fn start(name: &str, mode: Mode, tweak: impl FnOnce(&mut ServerConfig)) -> Sandbox {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!("husk-agent-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}-{}.sock", N.fetch_add(1, Ordering::SeqCst)));
    let _ = std::fs::remove_file(&path);
    let mut cfg = ServerConfig::new(BootOptions::default(), FunctionConfig::new(bin(name), mode));
    cfg.frame_timeout = Duration::from_millis(500);
    tweak(&mut cfg);
    let platform = Arc::new(TestPlatform::default());
    let agent = Agent::new(
        cfg,
        Reaper::per_child(),
        Box::new(SharedPlatform(platform.clone())),
    )
    .unwrap();
    let listener = Hybrid(UnixListener::bind(&path).unwrap());
    let a = agent.clone();
    std::thread::spawn(move || a.serve(listener));
    Sandbox {
        path,
        agent,
        platform,
    }
}

impl Sandbox {
    fn client(&self) -> AgentClient {
        AgentClient::connect(&ClientConfig::new(&self.path)).unwrap()
    }
    fn invoke(&self, payload: &[u8], deadline_ms: u32) -> Result<InvokeResult, ClientError> {
        self.client().invoke(
            Invoke::new(7, deadline_ms, payload.to_vec()),
            Duration::from_secs(20),
        )
    }
}

fn reuse(c: &mut ServerConfig) {
    c.boot.reuse = true;
}

#[test]
fn exec_echo_returns_payload_binary_safe() {
    let sb = start("echo", Mode::Exec, |_| {});
    let payload: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    let r = sb.invoke(&payload, 5000).unwrap();
    assert_eq!(r.status, Status::Ok);
    assert_eq!(r.id, 7);
    assert_eq!(r.body, payload);
    assert!(!r.output_truncated());
    assert!(r.duration_us > 0);
}

#[test]
fn second_invocation_is_refused_by_default() {
    let sb = start("echo", Mode::Exec, |_| {});
    assert_eq!(sb.invoke(b"one", 5000).unwrap().status, Status::Ok);
    match sb.invoke(b"two", 5000) {
        Err(ClientError::Agent(e)) => {
            assert_eq!(e.kind(), ErrorCode::AlreadyUsed);
            assert_eq!(e.message, ALREADY_USED);
        }
        other => panic!("expected AlreadyUsed, got {other:?}"),
    }
}

#[test]
fn reuse_allows_many_invocations_on_one_connection() {
    let sb = start("echo", Mode::Exec, reuse);
    let mut c = sb.client();
    for i in 0..5u64 {
        let r = c
            .invoke(
                Invoke::new(i, 5000, format!("n{i}").into_bytes()),
                Duration::from_secs(10),
            )
            .unwrap();
        assert_eq!((r.id, r.body), (i, format!("n{i}").into_bytes()));
    }
}

#[test]
fn worker_counter_keeps_state_across_invocations() {
    let sb = start("counter", Mode::Worker, reuse);
    let pid = sb.agent.worker_pid().unwrap();
    assert!(process_alive(pid), "worker must start at boot");
    for n in 1..=3 {
        let r = sb.invoke(b"tick", 5000).unwrap();
        assert_eq!(r.status, Status::Ok);
        assert_eq!(r.body, n.to_string().into_bytes());
        assert_eq!(
            String::from_utf8_lossy(&r.stderr_tail).trim(),
            format!("counter at {n}")
        );
    }
    let r = sb.invoke(b"fail", 5000).unwrap();
    assert_eq!(r.status, Status::FunctionError { code: 0 });
    assert_eq!(r.body, b"asked to fail");
    assert_eq!(sb.agent.worker_pid(), Some(pid));
}

#[test]
fn worker_that_dies_is_reported_and_restarted() {
    let sb = start("counter", Mode::Worker, reuse);
    assert_eq!(sb.invoke(b"tick", 5000).unwrap().body, b"1");
    let r = sb.invoke(b"exit", 5000).unwrap();
    assert_eq!(r.status, Status::Crashed(Crash::Exit(3)));
    // The restarted worker starts from zero.
    assert_eq!(sb.invoke(b"tick", 5000).unwrap().body, b"1");
}

#[test]
fn timeout_kills_the_whole_process_group() {
    let sb = start("sleeper", Mode::Exec, |_| {});
    let t = Instant::now();
    let r = sb.invoke(b"60000", 300).unwrap();
    assert_eq!(r.status, Status::Timeout);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let tail = String::from_utf8_lossy(&r.stderr_tail).into_owned();
    let child: i32 = tail
        .trim()
        .strip_prefix("child=")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no child pid in stderr tail {tail:?}"));
    let end = Instant::now() + Duration::from_secs(3);
    while process_alive(child) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !process_alive(child),
        "forked child {child} outlived the deadline"
    );
}

fn child_pid(r: &InvokeResult) -> i32 {
    let tail = String::from_utf8_lossy(&r.stderr_tail).into_owned();
    tail.trim()
        .strip_prefix("child=")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no child pid in stderr tail {tail:?}"))
}

fn assert_gone(pid: i32) {
    let end = Instant::now() + Duration::from_secs(3);
    while process_alive(pid) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!process_alive(pid), "process {pid} outlived its invocation");
}

#[test]
fn function_that_exits_while_its_child_holds_the_pipes_ends_promptly() {
    let sb = start("sleeper", Mode::Exec, |_| {});
    let t = Instant::now();
    let r = sb.invoke(b"detach", 10_000).unwrap();
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    assert_eq!(r.status, Status::Ok);
    assert_eq!(r.body, b"detached");
    assert_gone(child_pid(&r));
}

#[test]
fn worker_past_its_deadline_is_killed_and_restarted() {
    let sb = start("sleeper", Mode::Worker, reuse);
    let first = sb.agent.worker_pid().unwrap();
    assert_eq!(sb.invoke(b"1", 5000).unwrap().body, b"woke up");
    let t = Instant::now();
    let r = sb.invoke(b"60000", 300).unwrap();
    assert_eq!(r.status, Status::Timeout);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_gone(first);
    // The new worker is started in the background after the Result went out.
    let end = Instant::now() + Duration::from_secs(5);
    let second = loop {
        match sb.agent.worker_pid() {
            Some(pid) => break pid,
            None if Instant::now() < end => std::thread::sleep(Duration::from_millis(10)),
            None => panic!("no worker restarted within 5 s"),
        }
    };
    assert_ne!(first, second);
    assert_eq!(sb.invoke(b"1", 5000).unwrap().body, b"woke up");
}

#[test]
fn sleeper_reports_whether_a_process_is_alive() {
    let sb = start("sleeper", Mode::Exec, reuse);
    let me = std::process::id();
    assert_eq!(
        sb.invoke(format!("alive {me}").as_bytes(), 5000)
            .unwrap()
            .body,
        b"alive"
    );
    assert_eq!(sb.invoke(b"alive 999999999", 5000).unwrap().body, b"gone");
}

#[test]
fn crashes_report_signal_or_exit_code() {
    let cases: [(&[u8], Status); 3] = [
        (b"segv", Status::Crashed(Crash::Signal(libc::SIGSEGV))),
        (b"abort", Status::Crashed(Crash::Signal(libc::SIGABRT))),
        (b"exit 3", Status::FunctionError { code: 3 }),
    ];
    let sb = start("crasher", Mode::Exec, reuse);
    for (payload, want) in cases {
        let r = sb.invoke(payload, 5000).unwrap();
        assert_eq!(
            r.status,
            want,
            "payload {:?}",
            String::from_utf8_lossy(payload)
        );
        assert!(String::from_utf8_lossy(&r.stderr_tail).contains("crasher about to crash"));
    }
    // In worker mode a crash mid-request is reported the same way.
    let sb = start("crasher", Mode::Worker, reuse);
    let r = sb.invoke(b"segv", 5000).unwrap();
    assert_eq!(r.status, Status::Crashed(Crash::Signal(libc::SIGSEGV)));
}

#[test]
fn output_beyond_the_cap_is_cut_and_flagged() {
    let sb = start("chatty", Mode::Exec, |c| c.function.output_cap = 1000);
    let r = sb.invoke(b"1000000", 5000).unwrap();
    assert_eq!(r.status, Status::Ok);
    assert_eq!(r.body, vec![b'x'; 1000]);
    assert_eq!(r.flags & RESULT_OUTPUT_TRUNCATED, RESULT_OUTPUT_TRUNCATED);

    let sb = start("chatty", Mode::Worker, |c| {
        c.function.output_cap = 1000;
        c.boot.reuse = true;
    });
    let r = sb.invoke(b"1000000", 5000).unwrap();
    assert_eq!(r.body.len(), 1000);
    assert!(r.output_truncated());
    // The worker stream stays in sync after a cut response.
    let r = sb.invoke(b"10", 5000).unwrap();
    assert_eq!(r.body, vec![b'x'; 10]);
    assert!(!r.output_truncated());
}

#[test]
fn cpu_bound_hash_returns_digest() {
    let sb = start("hash", Mode::Exec, |_| {});
    let r = sb.invoke(b"rounds=1\nabc", 10_000).unwrap();
    assert_eq!(r.status, Status::Ok);
    assert_eq!(
        r.body,
        b"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

#[test]
fn malformed_frames_get_error_frames_and_agent_keeps_serving() {
    let sb = start("echo", Mode::Exec, |_| {});
    let codec = Codec::default();
    let mut c = sb.client();
    // Unknown message type: answered, connection stays usable.
    let mut frame = codec.encode(&Message::Ping(1)).unwrap();
    frame[5] = 99;
    c.send_raw(&frame).unwrap();
    match c.read_message(Duration::from_secs(2)).unwrap() {
        Message::Error(e) => assert_eq!(e.kind(), ErrorCode::UnknownType),
        other => panic!("{other:?}"),
    }
    c.ping(3, Duration::from_secs(2)).unwrap();
    // A message the agent does not accept.
    match c
        .request(&Message::Pong(1), Duration::from_secs(2))
        .unwrap()
    {
        Message::Error(e) => assert_eq!(e.kind(), ErrorCode::UnexpectedMessage),
        other => panic!("{other:?}"),
    }
    // Bad magic: answered, then the connection is closed (the stream is out of sync).
    c.send_raw(b"GARBAGE-GARBAGE-GARBAGE").unwrap();
    match c.read_message(Duration::from_secs(2)).unwrap() {
        Message::Error(e) => assert_eq!(e.kind(), ErrorCode::BadMagic),
        other => panic!("{other:?}"),
    }
    assert!(c.read_message(Duration::from_secs(2)).is_err());
    // Oversized header.
    let mut c = sb.client();
    let mut frame = codec.encode(&Message::Ping(1)).unwrap();
    frame[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    c.send_raw(&frame[..12]).unwrap();
    match c.read_message(Duration::from_secs(2)).unwrap() {
        Message::Error(e) => assert_eq!(e.kind(), ErrorCode::Oversized),
        other => panic!("{other:?}"),
    }
    // Truncated frame: the agent times out the partial frame and says so.
    let mut c = sb.client();
    c.send_raw(&frame[..6]).unwrap();
    match c.read_message(Duration::from_secs(3)).unwrap() {
        Message::Error(e) => assert_eq!(e.kind(), ErrorCode::Timeout),
        other => panic!("{other:?}"),
    }
    // Still serving: the invocation on a fresh connection works.
    assert_eq!(sb.invoke(b"still here", 5000).unwrap().body, b"still here");
}

#[test]
fn oversized_payload_is_refused_without_using_the_sandbox() {
    let sb = start("echo", Mode::Exec, |c| c.boot.payload_limit = 100);
    match sb.invoke(&[0u8; 101], 5000) {
        Err(ClientError::Agent(e)) => assert_eq!(e.kind(), ErrorCode::Oversized),
        other => panic!("{other:?}"),
    }
    assert_eq!(sb.invoke(&[1u8; 100], 5000).unwrap().body, vec![1u8; 100]);
}

#[test]
fn restore_handshake_gates_invocations() {
    let sb = start("echo", Mode::Exec, |c| {
        c.boot.await_restore = true;
        c.boot.sandbox_id = Some("before".into());
    });
    let mut c = sb.client();
    assert_eq!(c.hello().sandbox_id, "before");
    assert_eq!(c.hello().restore_generation, 0);
    let inv = Invoke::new(1, 5000, b"x".to_vec());
    match c.invoke(inv.clone(), Duration::from_secs(5)) {
        Err(ClientError::Agent(e)) => assert_eq!(e.kind(), ErrorCode::AwaitingRestore),
        other => panic!("{other:?}"),
    }
    let h = c
        .restored(
            Restored {
                entropy_seed: vec![1; 32],
                wall_clock_ns: 123,
                new_sandbox_id: "after".into(),
            },
            Duration::from_secs(2),
        )
        .unwrap();
    assert_eq!((h.sandbox_id.as_str(), h.restore_generation), ("after", 1));
    assert_eq!(sb.platform.restores.lock().unwrap()[0].wall_clock_ns, 123);
    assert_eq!(c.invoke(inv, Duration::from_secs(5)).unwrap().body, b"x");
    // New connections see the new identity.
    assert_eq!(sb.client().hello().sandbox_id, "after");
}

#[test]
fn idle_connection_does_not_block_others_and_shutdown_is_forwarded() {
    let sb = start("echo", Mode::Exec, |_| {});
    let _idle = sb.client();
    assert_eq!(sb.invoke(b"hi", 5000).unwrap().body, b"hi");
    let mut c = sb.client();
    c.shutdown().unwrap();
    let end = Instant::now() + Duration::from_secs(2);
    while sb.platform.shutdowns.load(Ordering::SeqCst) == 0 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(sb.platform.shutdowns.load(Ordering::SeqCst), 1);
}

#[test]
fn hello_announces_version_range_and_features() {
    let sb = start("echo", Mode::Exec, |_| {});
    let c = sb.client();
    let h = c.hello();
    assert_eq!(h.protocol_version, PROTOCOL_VERSION);
    assert_eq!(h.min_protocol_version, 1);
    assert_eq!(h.features, FEATURES);
    assert!(c.has_feature(FEATURE_INVOKE_METADATA | FEATURE_LOG_FRAMES | FEATURE_BUSY));
}

#[test]
fn invoke_with_an_unknown_future_field_is_served() {
    let sb = start("echo", Mode::Exec, |_| {});
    let mut c = sb.client();
    // An Invoke as a newer host would send it: an optional field this agent does not know.
    let mut frame = Codec::default()
        .encode(&Message::Invoke(Invoke::new(3, 5000, b"future".to_vec())))
        .unwrap();
    let mut field = 0x0042u16.to_le_bytes().to_vec();
    field.extend_from_slice(&4u32.to_le_bytes());
    field.extend_from_slice(b"newt");
    frame.extend_from_slice(&field);
    let len = (frame.len() - 12) as u32;
    frame[8..12].copy_from_slice(&len.to_le_bytes());
    c.send_raw(&frame).unwrap();
    match c.read_message(Duration::from_secs(5)).unwrap() {
        Message::Result(r) => assert_eq!((r.id, r.body.as_slice()), (3, &b"future"[..])),
        other => panic!("{other:?}"),
    }
    // The same field marked required is refused with a Malformed error.
    let sb = start("echo", Mode::Exec, |_| {});
    let mut c = sb.client();
    let at = frame.len() - field.len();
    frame[at..at + 2].copy_from_slice(&0x8042u16.to_le_bytes());
    c.send_raw(&frame).unwrap();
    match c.read_message(Duration::from_secs(5)).unwrap() {
        Message::Error(e) => assert_eq!(e.kind(), ErrorCode::Malformed, "{}", e.message),
        other => panic!("{other:?}"),
    }
}

fn meta_invoke(id: u64) -> Invoke {
    Invoke {
        request_id: Some(format!("req-{id}")),
        deadline_unix_ms: Some(1_900_000_000_000 + id),
        env: vec![
            ("TENANT".into(), "acme".into()),
            ("TRACE".into(), "a=b c".into()),
        ],
        ..Invoke::new(id, 5000, b"TENANT TRACE UNSET".to_vec())
    }
}

fn expected_meta(id: u64) -> String {
    format!(
        "request_id=req-{id}\ndeadline_unix_ms={}\nTENANT=acme\nTRACE=a=b c\nUNSET=\n",
        1_900_000_000_000 + id
    )
}

#[test]
fn metadata_reaches_the_exec_environment() {
    let sb = start("meta", Mode::Exec, reuse);
    let mut c = sb.client();
    let r = c.invoke(meta_invoke(4), Duration::from_secs(10)).unwrap();
    assert_eq!(r.status, Status::Ok);
    assert_eq!(String::from_utf8_lossy(&r.body), expected_meta(4));
    // Without metadata the function still gets a request id (the invocation id) and
    // an absolute deadline computed by the agent.
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let r = c
        .invoke(Invoke::new(12, 5000, vec![]), Duration::from_secs(10))
        .unwrap();
    let body = String::from_utf8_lossy(&r.body).into_owned();
    assert!(body.starts_with("request_id=12\n"), "{body} {:?}", r.status);
    let deadline: u64 = body
        .lines()
        .find_map(|l| l.strip_prefix("deadline_unix_ms="))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        deadline >= before + 5000 && deadline < before + 15_000,
        "deadline {deadline} vs now {before}"
    );
}

#[test]
fn metadata_reaches_the_worker_request_header() {
    let sb = start("meta", Mode::Worker, reuse);
    let mut c = sb.client();
    for id in [1, 2] {
        let r = c.invoke(meta_invoke(id), Duration::from_secs(10)).unwrap();
        assert_eq!(r.status, Status::Ok);
        assert_eq!(String::from_utf8_lossy(&r.body), expected_meta(id));
    }
}

/// All log bytes of one stream, concatenated.
fn stream_bytes(logs: &[LogChunk], stream: LogStream) -> Vec<u8> {
    logs.iter()
        .filter(|l| l.stream == stream)
        .flat_map(|l| l.data.clone())
        .collect()
}

fn log_invoke(id: u64, bytes: usize) -> Invoke {
    Invoke {
        stream_logs: true,
        ..Invoke::new(id, 10_000, format!("log {bytes}").into_bytes())
    }
}

fn assert_numbered_lines(data: &[u8], first: usize, step: usize, count: usize) {
    let text = String::from_utf8_lossy(data);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), count);
    for (k, line) in lines.iter().enumerate() {
        assert!(
            line.starts_with(&format!("log line {:06} ", first + k * step)),
            "line {k}: {line}"
        );
    }
}

#[test]
fn exec_logs_beyond_the_stderr_tail_arrive_as_log_frames() {
    let sb = start("chatty", Mode::Exec, reuse);
    let mut c = sb.client();
    let (r, logs) = c
        .invoke_with_logs(log_invoke(5, 200 * 64), Duration::from_secs(10))
        .unwrap();
    assert_eq!(
        (r.status, r.body.as_slice()),
        (Status::Ok, &b"logged 12800"[..])
    );
    assert!(logs.iter().all(|l| l.id == 5));
    let err = stream_bytes(&logs, LogStream::Stderr);
    assert_eq!(err.len(), 200 * 64);
    assert_numbered_lines(&err, 0, 1, 200);
    assert!(!r.logs_truncated());
    assert_eq!(r.logs_dropped, 0);
    // The result's tail is still the last 4 KiB only.
    assert_eq!(r.stderr_tail.len(), STDERR_TAIL);
    assert!(err.ends_with(&r.stderr_tail));
    // Without the ask, no Log frames come.
    let (_, logs) = c
        .invoke_with_logs(
            Invoke::new(6, 10_000, b"log 10000".to_vec()),
            Duration::from_secs(10),
        )
        .unwrap();
    assert!(logs.is_empty());
}

#[test]
fn worker_stdout_and_stderr_arrive_as_log_frames() {
    let sb = start("chatty", Mode::Worker, reuse);
    let mut c = sb.client();
    for id in [1, 2] {
        let (r, logs) = c
            .invoke_with_logs(log_invoke(id, 300 * 64), Duration::from_secs(10))
            .unwrap();
        assert_eq!(r.status, Status::Ok);
        assert_eq!(r.body, b"logged 19200");
        // Even lines on stdout, odd ones on stderr; each invocation gets only its own.
        assert_numbered_lines(&stream_bytes(&logs, LogStream::Stdout), 0, 2, 150);
        assert_numbered_lines(&stream_bytes(&logs, LogStream::Stderr), 1, 2, 150);
    }
}

#[test]
fn logs_past_the_cap_are_cut_and_flagged() {
    let sb = start("chatty", Mode::Exec, |_| {});
    let mut c = sb.client();
    let total = LOG_CAP + 100 * 64;
    let (r, logs) = c
        .invoke_with_logs(log_invoke(1, total), Duration::from_secs(20))
        .unwrap();
    assert_eq!(r.status, Status::Ok);
    let got: usize = logs.iter().map(|l| l.data.len()).sum();
    assert_eq!(got, LOG_CAP);
    assert!(r.logs_truncated());
    assert_eq!(r.logs_dropped, (total - LOG_CAP) as u64);
}

#[test]
fn second_invocation_while_one_runs_is_busy() {
    for (mode, tweak) in [
        (Mode::Exec, reuse as fn(&mut ServerConfig)),
        (Mode::Worker, reuse),
        (Mode::Exec, |_: &mut ServerConfig| {}),
    ] {
        let sb = start("sleeper", mode, tweak);
        let path = sb.path.clone();
        let first = std::thread::spawn(move || {
            AgentClient::connect(&ClientConfig::new(&path))
                .unwrap()
                .invoke(
                    Invoke::new(1, 5000, b"1500".to_vec()),
                    Duration::from_secs(10),
                )
        });
        // Wait until the first one runs (the flag is set as it is received).
        std::thread::sleep(Duration::from_millis(500));
        match sb.invoke(b"1", 5000) {
            Err(ClientError::Agent(e)) => {
                assert_eq!(e.kind(), ErrorCode::Busy, "{mode:?}");
                assert_eq!(e.message, BUSY_INVOKING);
            }
            other => panic!("{mode:?}: expected Busy, got {other:?}"),
        }
        let r = first.join().unwrap().unwrap();
        assert_eq!(r.status, Status::Ok, "{mode:?}");
    }
}

#[test]
fn empty_payload_closes_stdin_at_once() {
    let sb = start("echo", Mode::Exec, |_| {});
    let t = Instant::now();
    let r = sb.invoke(b"", 5000).unwrap();
    assert_eq!((r.status, r.body.len()), (Status::Ok, 0));
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
}

#[test]
fn log_frames_arrive_while_the_function_still_runs() {
    for mode in [Mode::Exec, Mode::Worker] {
        let sb = start(
            if mode == Mode::Exec {
                "sleeper"
            } else {
                "counter"
            },
            mode,
            reuse,
        );
        let mut c = sb.client();
        // exec: the sleeper logs `child=PID` at once, then sleeps 1.5 s.
        // worker: the counter logs `counter at 1` and answers at once; the Log frame
        // still comes first.
        let inv = Invoke {
            stream_logs: true,
            ..Invoke::new(
                8,
                5000,
                if mode == Mode::Exec {
                    b"1500".to_vec()
                } else {
                    b"tick".to_vec()
                },
            )
        };
        let t = Instant::now();
        let first = c
            .request(&Message::Invoke(inv), Duration::from_secs(5))
            .unwrap();
        let first_after = t.elapsed();
        let Message::Log(l) = first else {
            panic!("{mode:?}: expected a Log frame first, got {first:?}")
        };
        assert_eq!((l.id, l.stream), (8, LogStream::Stderr));
        // The rest of the output may come in more frames; then the Result.
        let mut data = l.data;
        loop {
            match c.read_message(Duration::from_secs(5)).unwrap() {
                Message::Log(l) => data.extend(l.data),
                Message::Result(r) => {
                    assert_eq!(r.status, Status::Ok);
                    break;
                }
                other => panic!("{mode:?}: expected the result, got {other:?}"),
            }
        }
        let text = String::from_utf8_lossy(&data).into_owned();
        if mode == Mode::Exec {
            assert!(text.starts_with("child="), "{text}");
            assert!(
                first_after < Duration::from_millis(1000)
                    && t.elapsed() >= Duration::from_millis(1500),
                "log after {first_after:?}, result after {:?}",
                t.elapsed()
            );
        } else {
            assert_eq!(text, "counter at 1\n");
        }
    }
}
