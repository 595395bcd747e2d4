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
    Codec, Crash, ErrorCode, Invoke, InvokeResult, Message, Restored, Status,
    RESULT_OUTPUT_TRUNCATED,
};
use husk_agent::reaper::{process_alive, Reaper};
use husk_agent::server::{Agent, Listener, Platform, ServerConfig, ALREADY_USED};

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
            Invoke {
                id: 7,
                deadline_ms,
                payload: payload.to_vec(),
            },
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
                Invoke {
                    id: i,
                    deadline_ms: 5000,
                    payload: format!("n{i}").into_bytes(),
                },
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
    let second = sb.agent.worker_pid().unwrap();
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
    let inv = Invoke {
        id: 1,
        deadline_ms: 5000,
        payload: b"x".to_vec(),
    };
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
