use super::*;
use std::io::Cursor;

fn all_messages() -> Vec<Message> {
    vec![
        Message::Hello(Hello {
            protocol_version: 2,
            min_protocol_version: 1,
            features: FEATURES,
            agent_version: "0.1.0".into(),
            sandbox_id: "abc".into(),
            restore_generation: 7,
        }),
        Message::Invoke(Invoke {
            id: 42,
            deadline_ms: 1500,
            payload: vec![0, 1, 2, 255, b'\n', 0],
            ..Invoke::default()
        }),
        Message::Invoke(Invoke {
            id: 43,
            deadline_ms: 1500,
            payload: b"x".to_vec(),
            request_id: Some("req-0123".into()),
            deadline_unix_ms: Some(1_700_000_000_123),
            env: vec![
                ("TENANT".into(), "acme".into()),
                ("_X1".into(), String::new()),
            ],
            stream_logs: true,
        }),
        Message::Invoke(Invoke {
            id: 0,
            deadline_ms: 0,
            payload: vec![],
            ..Invoke::default()
        }),
        Message::Result(InvokeResult {
            id: 42,
            status: Status::Ok,
            flags: RESULT_OUTPUT_TRUNCATED,
            duration_us: 1234,
            body: b"hello\0world".to_vec(),
            stderr_tail: b"warn".to_vec(),
            logs_dropped: 0,
        }),
        Message::Result(InvokeResult {
            id: 42,
            status: Status::Ok,
            flags: RESULT_LOGS_TRUNCATED,
            duration_us: 1,
            body: vec![],
            stderr_tail: vec![],
            logs_dropped: 12345,
        }),
        Message::Result(InvokeResult {
            id: 1,
            status: Status::FunctionError { code: 3 },
            flags: 0,
            duration_us: 0,
            body: vec![],
            stderr_tail: vec![],
            logs_dropped: 0,
        }),
        Message::Result(InvokeResult {
            id: 2,
            status: Status::Timeout,
            flags: 0,
            duration_us: 5,
            body: vec![],
            stderr_tail: vec![],
            logs_dropped: 0,
        }),
        Message::Result(InvokeResult {
            id: 3,
            status: Status::Crashed(Crash::Signal(11)),
            flags: 0,
            duration_us: 5,
            body: vec![],
            stderr_tail: vec![],
            logs_dropped: 0,
        }),
        Message::Result(InvokeResult {
            id: 4,
            status: Status::Crashed(Crash::Exit(-1)),
            flags: 0,
            duration_us: 5,
            body: vec![],
            stderr_tail: vec![],
            logs_dropped: 0,
        }),
        Message::Restored(Restored {
            entropy_seed: vec![9; 32],
            wall_clock_ns: 1_700_000_000_000_000_000,
            new_sandbox_id: "new".into(),
        }),
        Message::Ping(99),
        Message::Pong(99),
        Message::Error(ErrorMsg::new(ErrorCode::AlreadyUsed, "used")),
        Message::Shutdown,
        Message::Log(LogChunk {
            id: 42,
            stream: LogStream::Stderr,
            data: b"line one\nline two\n".to_vec(),
        }),
        Message::Log(LogChunk {
            id: 42,
            stream: LogStream::Stdout,
            data: vec![],
        }),
    ]
}

#[test]
fn every_message_round_trips_through_buffer_and_stream() {
    let codec = Codec::default();
    for msg in all_messages() {
        let frame = codec.encode(&msg).unwrap();
        let (back, used) = codec.decode(&frame).unwrap();
        assert_eq!(back, msg);
        assert_eq!(used, frame.len());
        let mut stream = Vec::new();
        codec.write_frame(&mut stream, &msg).unwrap();
        assert_eq!(stream, frame);
        let mut cur = Cursor::new(stream);
        assert_eq!(codec.read_frame(&mut cur).unwrap(), msg);
        assert!(matches!(
            codec.read_frame(&mut cur),
            Err(ProtocolError::Closed)
        ));
    }
}

#[test]
fn free_functions_match_the_codec() {
    let mut buf = Vec::new();
    write_frame(&mut buf, &Message::Ping(4)).unwrap();
    let got = read_frame(&mut Cursor::new(buf), Limits::default()).unwrap();
    assert_eq!(got, Message::Ping(4));
}

#[test]
fn header_layout_is_stable() {
    let frame = Codec::default().encode(&Message::Ping(1)).unwrap();
    assert_eq!(&frame[..4], b"HUSK");
    assert_eq!(frame[4], FRAME_VERSION);
    assert_eq!(frame[5], MessageType::Ping as u8);
    assert_eq!(&frame[6..8], &[0, 0]);
    assert_eq!(&frame[8..12], &8u32.to_le_bytes());
    assert_eq!(&frame[12..], &1u64.to_le_bytes());
}

#[test]
fn several_frames_in_one_stream() {
    let codec = Codec::default();
    let mut stream = Vec::new();
    for msg in all_messages() {
        codec.write_frame(&mut stream, &msg).unwrap();
    }
    let mut cur = Cursor::new(stream);
    for msg in all_messages() {
        assert_eq!(codec.read_frame(&mut cur).unwrap(), msg);
    }
}

fn ping_frame() -> Vec<u8> {
    Codec::default().encode(&Message::Ping(5)).unwrap()
}

#[test]
fn bad_magic_is_rejected() {
    let mut f = ping_frame();
    f[0] = b'X';
    let e = Codec::default()
        .read_frame(&mut Cursor::new(f))
        .unwrap_err();
    assert!(
        matches!(e, ProtocolError::BadMagic(m) if m == *b"XUSK"),
        "{e:?}"
    );
    assert!(!e.is_recoverable());
    assert_eq!(e.code(), ErrorCode::BadMagic);
}

#[test]
fn version_mismatch_is_rejected() {
    let mut f = ping_frame();
    f[4] = 9;
    let e = Codec::default().decode(&f).unwrap_err();
    assert!(
        matches!(e, ProtocolError::UnsupportedVersion { got: 9 }),
        "{e:?}"
    );
    assert_eq!(e.code(), ErrorCode::UnsupportedVersion);
}

#[test]
fn reserved_flags_are_rejected() {
    let mut f = ping_frame();
    f[6] = 1;
    let e = Codec::default().decode(&f).unwrap_err();
    assert!(matches!(e, ProtocolError::UnsupportedFlags(1)), "{e:?}");
}

#[test]
fn unknown_type_is_recoverable() {
    let mut f = ping_frame();
    f[5] = 200;
    let mut cur = Cursor::new([f, ping_frame()].concat());
    let codec = Codec::default();
    let e = codec.read_frame(&mut cur).unwrap_err();
    assert!(matches!(e, ProtocolError::UnknownType(200)), "{e:?}");
    assert!(e.is_recoverable());
    // The stream stays in sync: the next frame decodes.
    assert_eq!(codec.read_frame(&mut cur).unwrap(), Message::Ping(5));
}

#[test]
fn oversized_frame_is_rejected_before_reading_body() {
    let codec = Codec::new(Limits { payload_limit: 10 });
    let mut f = ping_frame();
    let big = (codec.limits.max_body() + 1) as u32;
    f[8..12].copy_from_slice(&big.to_le_bytes());
    // Only the header is present: the decoder must not wait for the huge body.
    let e = codec
        .read_frame(&mut Cursor::new(f[..12].to_vec()))
        .unwrap_err();
    assert!(matches!(e, ProtocolError::Oversized { .. }), "{e:?}");
    assert_eq!(e.code(), ErrorCode::Oversized);
    // u32::MAX too.
    f[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        codec.decode(&f),
        Err(ProtocolError::Oversized { .. })
    ));
}

#[test]
fn encode_refuses_oversized_payload() {
    let codec = Codec::new(Limits { payload_limit: 10 });
    let msg = Message::Invoke(Invoke {
        request_id: None,
        deadline_unix_ms: None,
        env: vec![],
        stream_logs: false,
        id: 1,
        deadline_ms: 0,
        payload: vec![0; codec.limits.max_body() + 1],
    });
    assert!(matches!(
        codec.encode(&msg),
        Err(ProtocolError::Oversized { .. })
    ));
}

#[test]
fn truncated_header_and_body_are_reported() {
    let codec = Codec::default();
    let f = ping_frame();
    let e = codec
        .read_frame(&mut Cursor::new(f[..5].to_vec()))
        .unwrap_err();
    assert!(
        matches!(e, ProtocolError::Truncated { got: 5, want: 12 }),
        "{e:?}"
    );
    let e = codec
        .read_frame(&mut Cursor::new(f[..15].to_vec()))
        .unwrap_err();
    assert!(
        matches!(e, ProtocolError::Truncated { got: 15, want: 20 }),
        "{e:?}"
    );
    assert!(matches!(
        codec.decode(&f[..15]),
        Err(ProtocolError::Truncated { .. })
    ));
    assert!(matches!(
        codec.decode(&f[..3]),
        Err(ProtocolError::Truncated { .. })
    ));
}

#[test]
fn malformed_bodies_are_reported() {
    // Body shorter than the fixed fields.
    let e = Message::decode_body(MessageType::Ping as u8, &[1, 2, 3]).unwrap_err();
    assert!(
        matches!(e, ProtocolError::Malformed { what: "ping", .. }),
        "{e:?}"
    );
    assert!(e.is_recoverable());
    // Trailing bytes.
    let e = Message::decode_body(MessageType::Ping as u8, &[0; 9]).unwrap_err();
    assert!(matches!(e, ProtocolError::Malformed { .. }), "{e:?}");
    // Byte-string length pointing past the end.
    let mut body = Vec::new();
    body.extend_from_slice(&1u64.to_le_bytes());
    body.extend_from_slice(&0u32.to_le_bytes());
    body.extend_from_slice(&100u32.to_le_bytes());
    body.extend_from_slice(b"short");
    let e = Message::decode_body(MessageType::Invoke as u8, &body).unwrap_err();
    assert!(
        matches!(e, ProtocolError::Malformed { what: "invoke", .. }),
        "{e:?}"
    );
    // Invalid UTF-8 in a string.
    let mut body = Vec::new();
    body.extend_from_slice(&1u16.to_le_bytes());
    body.extend_from_slice(&2u32.to_le_bytes());
    body.extend_from_slice(&[0xff, 0xfe]);
    let e = Message::decode_body(MessageType::Hello as u8, &body).unwrap_err();
    assert!(
        matches!(e, ProtocolError::Malformed { what: "hello", .. }),
        "{e:?}"
    );
    // String over its cap.
    let mut body = Vec::new();
    body.extend_from_slice(&1u16.to_le_bytes());
    body.extend_from_slice(&((MAX_SHORT_STRING + 1) as u32).to_le_bytes());
    body.extend(std::iter::repeat_n(b'a', MAX_SHORT_STRING + 1));
    let e = Message::decode_body(MessageType::Hello as u8, &body).unwrap_err();
    assert!(matches!(e, ProtocolError::Malformed { .. }), "{e:?}");
    // Non-canonical status value (every message has exactly one encoding).
    let mut body = Vec::new();
    body.extend_from_slice(&1u64.to_le_bytes());
    body.push(0);
    body.extend_from_slice(&5i32.to_le_bytes());
    body.extend_from_slice(&[0; 4 + 8 + 4 + 4]);
    let e = Message::decode_body(MessageType::Result as u8, &body).unwrap_err();
    assert!(
        matches!(e, ProtocolError::Malformed { what: "result", .. }),
        "{e:?}"
    );
    // Unknown result status tag.
    let mut body = Vec::new();
    body.extend_from_slice(&1u64.to_le_bytes());
    body.push(77);
    let e = Message::decode_body(MessageType::Result as u8, &body).unwrap_err();
    assert!(
        matches!(e, ProtocolError::Malformed { what: "result", .. }),
        "{e:?}"
    );
}

#[test]
fn read_timeout_maps_to_timeout() {
    struct Slow;
    impl Read for Slow {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::from(io::ErrorKind::WouldBlock))
        }
    }
    let e = Codec::default().read_frame(&mut Slow).unwrap_err();
    assert!(matches!(e, ProtocolError::Timeout), "{e:?}");
}

#[test]
fn error_message_is_capped_on_char_boundary() {
    let long = "é".repeat(MAX_ERROR_MESSAGE);
    let e = ErrorMsg::new(ErrorCode::Internal, long);
    assert!(e.message.len() <= MAX_ERROR_MESSAGE);
    let frame = Codec::default().encode(&Message::Error(e.clone())).unwrap();
    assert_eq!(
        Codec::default().decode(&frame).unwrap().0,
        Message::Error(e)
    );
}

#[test]
fn decoder_never_panics_on_prefixes_and_bit_flips() {
    let codec = Codec::default();
    for msg in all_messages() {
        let frame = codec.encode(&msg).unwrap();
        for cut in 0..frame.len() {
            assert!(codec.decode(&frame[..cut]).is_err());
        }
        for i in 0..frame.len() {
            for bit in 0..8 {
                let mut f = frame.clone();
                f[i] ^= 1 << bit;
                let _ = codec.decode(&f);
            }
        }
    }
}

/// A field as a newer peer would append it.
fn ext(tag: u16, value: &[u8]) -> Vec<u8> {
    let mut v = tag.to_le_bytes().to_vec();
    v.extend_from_slice(&(value.len() as u32).to_le_bytes());
    v.extend_from_slice(value);
    v
}

fn body_of(msg: &Message) -> Vec<u8> {
    msg.encode_body()
}

#[test]
fn version_1_hello_without_extensions_reads_with_defaults() {
    let mut body = Vec::new();
    body.extend_from_slice(&1u16.to_le_bytes());
    body.extend_from_slice(&3u32.to_le_bytes());
    body.extend_from_slice(b"0.1");
    body.extend_from_slice(&2u32.to_le_bytes());
    body.extend_from_slice(b"sb");
    body.extend_from_slice(&0u64.to_le_bytes());
    let Message::Hello(h) = Message::decode_body(MessageType::Hello as u8, &body).unwrap() else {
        panic!("not a hello")
    };
    assert_eq!(
        (h.protocol_version, h.min_protocol_version, h.features),
        (1, 1, 0)
    );
}

#[test]
fn unknown_optional_fields_from_a_future_peer_are_skipped() {
    let hello = Message::Hello(Hello {
        protocol_version: 9,
        min_protocol_version: 2,
        features: FEATURES | 1 << 40,
        agent_version: "9.0".into(),
        sandbox_id: "sb".into(),
        restore_generation: 0,
    });
    let inv = Message::Invoke(Invoke {
        request_id: Some("r1".into()),
        ..Invoke::new(1, 100, b"p".to_vec())
    });
    for (t, msg) in [
        (MessageType::Hello, hello),
        (MessageType::Invoke, inv),
        (MessageType::Ping, Message::Ping(5)),
    ] {
        let mut body = body_of(&msg);
        body.extend(ext(63, b"future"));
        body.extend(ext(0x1234, &[1, 2, 3]));
        body.extend(ext(7, &[]));
        assert_eq!(Message::decode_body(t as u8, &body).unwrap(), msg, "{t:?}");
    }
    // A future Invoke flag bit is ignored too.
    let mut body = body_of(&Message::Invoke(Invoke::new(1, 0, vec![])));
    body.extend(ext(4, &(1u32 | 1 << 9).to_le_bytes()));
    let Message::Invoke(i) = Message::decode_body(MessageType::Invoke as u8, &body).unwrap() else {
        panic!("not an invoke")
    };
    assert!(i.stream_logs);
}

#[test]
fn required_unknown_repeated_and_bad_extension_fields_are_malformed() {
    let base = body_of(&Message::Invoke(Invoke::new(1, 0, vec![])));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("required", ext(EXT_REQUIRED | 5, b"x")),
        ("twice", [ext(1, b"a"), ext(1, b"b")].concat()),
        ("extra bytes", ext(2, &[0; 9])),
        ("short value", ext(2, &[0; 3])),
        ("length past end", vec![1, 0, 100, 0, 0, 0, b'a']),
        ("half a tag", vec![1]),
        ("bad request id", ext(1, b"has space")),
        ("empty request id", ext(1, b"")),
    ];
    for (what, tail) in cases {
        let body = [base.clone(), tail].concat();
        let e = Message::decode_body(MessageType::Invoke as u8, &body).unwrap_err();
        assert!(
            matches!(e, ProtocolError::Malformed { what: "invoke", .. }),
            "{what}: {e:?}"
        );
        assert!(e.is_recoverable(), "{what}");
    }
}

#[test]
fn invoke_env_is_validated() {
    let bad: [(&str, &str); 6] = [
        ("HUSK_REQUEST_ID", "x"),
        ("1ABC", "x"),
        ("A-B", "x"),
        ("", "x"),
        ("OK", "two\nlines"),
        ("OK", "nul\0"),
    ];
    for (k, v) in bad {
        let inv = Invoke {
            env: vec![(k.into(), v.into())],
            ..Invoke::new(1, 0, vec![])
        };
        assert!(inv.validate().is_err(), "{k}={v:?}");
        let e = Message::decode_body(MessageType::Invoke as u8, &body_of(&Message::Invoke(inv)))
            .unwrap_err();
        assert!(matches!(e, ProtocolError::Malformed { .. }), "{e:?}");
    }
    let twice = Invoke {
        env: vec![("A".into(), "1".into()), ("A".into(), "2".into())],
        ..Invoke::new(1, 0, vec![])
    };
    assert!(twice.validate().is_err());
    let many = Invoke {
        env: (0..=MAX_ENV_VARS)
            .map(|i| (format!("V{i}"), String::new()))
            .collect(),
        ..Invoke::new(1, 0, vec![])
    };
    assert!(
        Message::decode_body(MessageType::Invoke as u8, &body_of(&Message::Invoke(many))).is_err()
    );
}

#[test]
fn log_frames_are_bounded() {
    let big = Message::Log(LogChunk {
        id: 1,
        stream: LogStream::Stderr,
        data: vec![b'x'; MAX_LOG_CHUNK + 1],
    });
    let e = Message::decode_body(MessageType::Log as u8, &body_of(&big)).unwrap_err();
    assert!(
        matches!(e, ProtocolError::Malformed { what: "log", .. }),
        "{e:?}"
    );
    let mut body = body_of(&Message::Log(LogChunk {
        id: 1,
        stream: LogStream::Stdout,
        data: vec![],
    }));
    body[8] = 3;
    assert!(Message::decode_body(MessageType::Log as u8, &body).is_err());
}
