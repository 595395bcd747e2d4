use super::*;
use crate::protocol::{ErrorCode, LogStream, Status, FEATURES};
use std::io::BufRead;
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

fn sock_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("husk-client-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    let _ = std::fs::remove_file(&p);
    p
}

fn hello() -> Hello {
    Hello {
        protocol_version: PROTOCOL_VERSION,
        min_protocol_version: MIN_PROTOCOL_VERSION,
        features: FEATURES,
        agent_version: "test".into(),
        sandbox_id: "sb".into(),
        restore_generation: 0,
    }
}

/// A fake VMM + agent: accepts one connection and runs `script` on it after reading
/// the CONNECT line (which it returns).
fn fake<F>(path: &Path, script: F) -> JoinHandle<String>
where
    F: FnOnce(&mut UnixStream) + Send + 'static,
{
    let l = UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut line = String::new();
        std::io::BufReader::new(s.try_clone().unwrap())
            .read_line(&mut line)
            .unwrap();
        script(&mut s);
        line
    })
}

/// A successful result of invocation `id` with `body`.
fn ok_result(id: u64, body: Vec<u8>) -> InvokeResult {
    InvokeResult {
        id,
        status: Status::Ok,
        flags: 0,
        duration_us: 1,
        body,
        stderr_tail: vec![],
        logs_dropped: 0,
    }
}

fn cfg(path: &Path) -> ClientConfig {
    let mut c = ClientConfig::new(path);
    c.connect_timeout = Duration::from_millis(300);
    c
}

#[test]
fn invoke_round_trip_through_hybrid_handshake() {
    let p = sock_path("ok");
    let h = fake(&p, |s| {
        s.write_all(b"OK 1073741824\n").unwrap();
        let codec = Codec::default();
        codec.write_frame(s, &Message::Hello(hello())).unwrap();
        let Message::Invoke(inv) = codec.read_frame(s).unwrap() else {
            panic!("expected invoke")
        };
        let r = ok_result(inv.id, inv.payload);
        codec.write_frame(s, &Message::Result(r)).unwrap();
    });
    let mut c = AgentClient::connect(&cfg(&p)).unwrap();
    assert_eq!(c.hello(), &hello());
    let r = c
        .invoke(
            Invoke::new(5, 100, b"ping\0".to_vec()),
            Duration::from_secs(2),
        )
        .unwrap();
    assert_eq!(r.id, 5);
    assert_eq!(r.body, b"ping\0");
    assert_eq!(h.join().unwrap(), "CONNECT 1024\n");
}

#[test]
fn missing_socket_is_reported() {
    let p = sock_path("missing");
    assert!(matches!(
        AgentClient::connect(&cfg(&p)),
        Err(ClientError::SocketMissing(_))
    ));
}

#[test]
fn stale_socket_is_refused() {
    let p = sock_path("stale");
    drop(UnixListener::bind(&p).unwrap());
    assert!(matches!(
        AgentClient::connect(&cfg(&p)),
        Err(ClientError::Refused(_))
    ));
}

#[test]
fn closed_after_connect_is_reported() {
    let p = sock_path("closed");
    let h = fake(&p, |_| {});
    let mut c = cfg(&p);
    c.port = 77;
    assert!(matches!(
        AgentClient::connect(&c),
        Err(ClientError::HandshakeClosed(77))
    ));
    assert_eq!(h.join().unwrap(), "CONNECT 77\n");
}

#[test]
fn bad_handshake_reply_is_reported() {
    for reply in [&b"NOPE\n"[..], b"OK abc\n", &[b'A'; 100]] {
        let p = sock_path("bad");
        let reply = reply.to_vec();
        let h = fake(&p, move |s| {
            let _ = s.write_all(&reply);
        });
        let e = AgentClient::connect(&cfg(&p)).err().unwrap();
        assert!(matches!(e, ClientError::HandshakeBadReply(_)), "{e:?}");
        h.join().unwrap();
    }
}

#[test]
fn silent_peer_times_out() {
    let p = sock_path("silent");
    let h = fake(&p, |_| std::thread::sleep(Duration::from_millis(800)));
    let e = AgentClient::connect(&cfg(&p)).err().unwrap();
    assert!(matches!(e, ClientError::Timeout(_)), "{e:?}");
    h.join().unwrap();

    // Hello arrives, but the result never does.
    let p = sock_path("silent2");
    let h = fake(&p, |s| {
        s.write_all(b"OK 1\n").unwrap();
        Codec::default()
            .write_frame(s, &Message::Hello(hello()))
            .unwrap();
        std::thread::sleep(Duration::from_millis(800));
    });
    let mut c = AgentClient::connect(&cfg(&p)).unwrap();
    let e = c
        .invoke(Invoke::new(1, 0, vec![]), Duration::from_millis(200))
        .unwrap_err();
    assert!(matches!(e, ClientError::Timeout(_)), "{e:?}");
    h.join().unwrap();
}

#[test]
fn agent_error_and_garbage_are_reported() {
    let p = sock_path("err");
    let h = fake(&p, |s| {
        s.write_all(b"OK 1\n").unwrap();
        let codec = Codec::default();
        codec.write_frame(s, &Message::Hello(hello())).unwrap();
        let _ = codec.read_frame(s).unwrap();
        codec
            .write_frame(
                s,
                &Message::Error(ErrorMsg::new(ErrorCode::AlreadyUsed, "used")),
            )
            .unwrap();
        let _ = codec.read_frame(s).unwrap();
        s.write_all(b"garbage garbage!").unwrap();
    });
    let mut c = AgentClient::connect(&cfg(&p)).unwrap();
    let inv = Invoke::new(1, 0, vec![]);
    let e = c.invoke(inv.clone(), Duration::from_secs(2)).unwrap_err();
    assert!(
        matches!(&e, ClientError::Agent(m) if m.kind() == ErrorCode::AlreadyUsed),
        "{e:?}"
    );
    let e = c.invoke(inv, Duration::from_secs(2)).unwrap_err();
    assert!(
        matches!(e, ClientError::Protocol(ProtocolError::BadMagic(_))),
        "{e:?}"
    );
    h.join().unwrap();
}

#[test]
fn connect_with_retry_waits_for_a_booting_sandbox() {
    let p = sock_path("late");
    // Nothing there yet: fails at once without waiting...
    assert!(matches!(
        AgentClient::connect_with_retry(&cfg(&p), Duration::ZERO),
        Err(ClientError::SocketMissing(_))
    ));
    // ...and succeeds once the socket appears within the wait.
    let p2 = p.clone();
    let h = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        let join = fake(&p2, |s| {
            s.write_all(b"OK 9\n").unwrap();
            Codec::default()
                .write_frame(s, &Message::Hello(hello()))
                .unwrap();
        });
        join.join().unwrap()
    });
    let c = AgentClient::connect_with_retry(&cfg(&p), Duration::from_secs(5)).unwrap();
    assert_eq!(c.hello(), &hello());
    h.join().unwrap();
}

/// Write `bytes` one at a time, `gap` apart (a guest that dribbles its output).
fn dribble(s: &mut UnixStream, bytes: &[u8], gap: Duration) {
    for b in bytes {
        if s.write_all(std::slice::from_ref(b)).is_err() {
            return;
        }
        std::thread::sleep(gap);
    }
}

#[test]
fn dribbling_hello_cannot_stretch_connect_past_its_deadline() {
    let p = sock_path("dribble-hello");
    let h = fake(&p, |s| {
        // Reply and Hello one byte every 20 ms: ~2 s in all, each read well inside
        // a per-read timeout of 300 ms.
        let mut all = b"OK 1\n".to_vec();
        all.extend(Codec::default().encode(&Message::Hello(hello())).unwrap());
        dribble(s, &all, Duration::from_millis(20));
    });
    let t = Instant::now();
    let e = AgentClient::connect(&cfg(&p)).err().unwrap();
    let took = t.elapsed();
    assert!(matches!(e, ClientError::Timeout(_)), "{e:?}");
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(
        took < Duration::from_millis(600),
        "deadline overrun: {took:?}"
    );
    h.join().unwrap();
}

#[test]
fn dribbling_result_cannot_stretch_invoke_past_its_deadline() {
    let p = sock_path("dribble-result");
    let h = fake(&p, |s| {
        s.write_all(b"OK 1\n").unwrap();
        let codec = Codec::default();
        codec.write_frame(s, &Message::Hello(hello())).unwrap();
        let Ok(Message::Invoke(inv)) = codec.read_frame(s) else {
            return;
        };
        let r = ok_result(inv.id, vec![b'x'; 100]);
        let frame = codec.encode(&Message::Result(r)).unwrap();
        dribble(s, &frame, Duration::from_millis(20));
    });
    let mut c = AgentClient::connect(&cfg(&p)).unwrap();
    let t = Instant::now();
    let e = c
        .invoke(Invoke::new(1, 0, vec![]), Duration::from_millis(400))
        .unwrap_err();
    let took = t.elapsed();
    assert!(matches!(e, ClientError::Timeout(_)), "{e:?}");
    assert!(took >= Duration::from_millis(400), "{took:?}");
    assert!(
        took < Duration::from_millis(700),
        "deadline overrun: {took:?}"
    );
    h.join().unwrap();
}

#[test]
fn log_frames_before_the_result_are_collected() {
    let p = sock_path("logs");
    let h = fake(&p, |s| {
        s.write_all(b"OK 1\n").unwrap();
        let codec = Codec::default();
        codec.write_frame(s, &Message::Hello(hello())).unwrap();
        let Message::Invoke(inv) = codec.read_frame(s).unwrap() else {
            panic!("expected invoke")
        };
        assert!(inv.stream_logs);
        assert_eq!(inv.request_id.as_deref(), Some("req-1"));
        for (stream, data) in [
            (LogStream::Stderr, &b"a\n"[..]),
            (LogStream::Stdout, b"b\n"),
        ] {
            let l = LogChunk {
                id: inv.id,
                stream,
                data: data.to_vec(),
            };
            codec.write_frame(s, &Message::Log(l)).unwrap();
        }
        let r = ok_result(inv.id, vec![]);
        codec.write_frame(s, &Message::Result(r)).unwrap();
    });
    let mut c = AgentClient::connect(&cfg(&p)).unwrap();
    assert!(c.has_feature(crate::protocol::FEATURE_LOG_FRAMES));
    let inv = Invoke {
        request_id: Some("req-1".into()),
        stream_logs: true,
        ..Invoke::new(9, 0, vec![])
    };
    let (r, logs) = c.invoke_with_logs(inv, Duration::from_secs(2)).unwrap();
    assert_eq!(r.status, Status::Ok);
    let got: Vec<_> = logs.iter().map(|l| (l.stream, l.data.clone())).collect();
    assert_eq!(
        got,
        [
            (LogStream::Stderr, b"a\n".to_vec()),
            (LogStream::Stdout, b"b\n".to_vec())
        ]
    );
    h.join().unwrap();
}

#[test]
fn agent_without_a_common_protocol_version_is_refused() {
    let p = sock_path("future");
    let h = fake(&p, |s| {
        s.write_all(b"OK 1\n").unwrap();
        let future = Hello {
            protocol_version: PROTOCOL_VERSION + 5,
            min_protocol_version: PROTOCOL_VERSION + 1,
            ..hello()
        };
        Codec::default()
            .write_frame(s, &Message::Hello(future))
            .unwrap();
    });
    let e = AgentClient::connect(&cfg(&p)).err().unwrap();
    assert!(matches!(e, ClientError::Incompatible { .. }), "{e:?}");
    h.join().unwrap();
}

#[test]
fn invalid_metadata_is_refused_before_sending() {
    let p = sock_path("invalid");
    let h = fake(&p, |s| {
        s.write_all(b"OK 1\n").unwrap();
        Codec::default()
            .write_frame(s, &Message::Hello(hello()))
            .unwrap();
    });
    let mut c = AgentClient::connect(&cfg(&p)).unwrap();
    let inv = Invoke {
        env: vec![("HUSK_MODE".into(), "x".into())],
        ..Invoke::new(1, 0, vec![])
    };
    let e = c.invoke(inv, Duration::from_secs(1)).unwrap_err();
    assert!(matches!(e, ClientError::InvalidInvoke(_)), "{e:?}");
    h.join().unwrap();
}

/// A restored agent behind the fake VMM: refuses the first `refusals` invocations with
/// AwaitingRestore, answers the next with its payload; returns how many it received.
fn restoring_agent(path: &Path, refusals: usize) -> JoinHandle<usize> {
    let received = Arc::new(AtomicUsize::new(0));
    let count = received.clone();
    let h = fake(path, move |s| {
        s.write_all(b"OK 1073741824\n").unwrap();
        let codec = Codec::default();
        codec.write_frame(s, &Message::Hello(hello())).unwrap();
        while let Ok(Message::Invoke(inv)) = codec.read_frame(s) {
            let n = count.fetch_add(1, Ordering::SeqCst) + 1;
            let reply = if n <= refusals {
                Message::Error(ErrorMsg::new(
                    ErrorCode::AwaitingRestore,
                    "awaiting Restored",
                ))
            } else {
                Message::Result(ok_result(inv.id, inv.payload))
            };
            codec.write_frame(s, &reply).unwrap();
        }
    });
    std::thread::spawn(move || {
        h.join().unwrap();
        received.load(Ordering::SeqCst)
    })
}

#[test]
fn invoke_when_restored_sends_again_while_the_agent_awaits_restored() {
    let inv = || Invoke::new(1, 100, b"x".to_vec());
    // Within the window: refused twice, answered on the third send.
    let p = sock_path("restoring");
    let agent = restoring_agent(&p, 2);
    let mut c = AgentClient::connect(&cfg(&p)).unwrap();
    let ready_by = Instant::now() + Duration::from_secs(5);
    let (r, _) = c
        .invoke_when_restored(inv(), Duration::from_secs(2), ready_by)
        .unwrap();
    assert_eq!((r.status, r.body.as_slice()), (Status::Ok, &b"x"[..]));
    drop(c);
    assert_eq!(agent.join().unwrap(), 3);
    // Window over: the refusal is the answer, after one send.
    let p = sock_path("restoring-late");
    let agent = restoring_agent(&p, 2);
    let mut c = AgentClient::connect(&cfg(&p)).unwrap();
    match c.invoke_when_restored(inv(), Duration::from_secs(2), Instant::now()) {
        Err(ClientError::Agent(e)) => assert_eq!(e.code, ErrorCode::AwaitingRestore as u16),
        other => panic!("{other:?}"),
    }
    drop(c);
    assert_eq!(agent.join().unwrap(), 1);
}
