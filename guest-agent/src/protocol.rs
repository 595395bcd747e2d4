//! The agent wire protocol: length-prefixed, binary-safe frames with a small typed header.
//!
//! Every frame is a 12-byte header followed by `length` body bytes:
//!
//! | offset | size | field                                   |
//! |--------|------|-----------------------------------------|
//! | 0      | 4    | magic `b"HUSK"`                         |
//! | 4      | 1    | framing version ([`FRAME_VERSION`])     |
//! | 5      | 1    | message type ([`MessageType`])          |
//! | 6      | 2    | flags, little endian (must be 0 in v1)  |
//! | 8      | 4    | body length, little endian              |
//!
//! Bodies are sequences of little-endian integers and length-prefixed (`u32`) byte
//! strings; see each message's `encode`/`decode`. All lengths are bounded: a frame body
//! may not exceed the codec's `max_body` ([`Limits`]), and every string has its own cap.
//!
//! ## Growing without breaking
//! The framing version byte changes only if the header itself changes. The message set
//! has its own version ([`PROTOCOL_VERSION`], a range from [`MIN_PROTOCOL_VERSION`]
//! announced in the Hello) and feature bits (`FEATURE_*`, also in the Hello). New data is
//! added as *extension fields* after a message's fixed fields: each is
//! `tag u16 LE, length u32 LE, value`. A receiver skips extension fields it does not
//! know, unless the tag has bit 15 ([`EXT_REQUIRED`]) set, which means "refuse the
//! message if you do not understand this"; a known tag appearing twice is malformed.
//! A peer that sends no extension fields (protocol version 1) is read with defaults.
//!
//! Header errors (bad magic, version, flags, oversized) leave the stream out of sync, so
//! a receiver answers with an [`Message::Error`] and closes the connection. Body errors
//! (unknown type, malformed body) consume exactly one frame, so the receiver answers with
//! an error and keeps serving the connection.

use std::io::{self, Read, Write};

/// Frame magic: the ASCII bytes `HUSK`.
pub const MAGIC: [u8; 4] = *b"HUSK";
/// The framing version (header byte 4); changes only when the header layout changes.
pub const FRAME_VERSION: u8 = 1;
/// The newest message-set version this crate speaks (announced in the Hello).
pub const PROTOCOL_VERSION: u16 = 2;
/// The oldest message-set version this crate still speaks.
pub const MIN_PROTOCOL_VERSION: u16 = 1;
/// Feature bit: Invoke carries request metadata (request id, absolute deadline, env).
pub const FEATURE_INVOKE_METADATA: u64 = 1 << 0;
/// Feature bit: the agent sends [`Message::Log`] frames when an Invoke asks for them.
pub const FEATURE_LOG_FRAMES: u64 = 1 << 1;
/// Feature bit: a second invocation while one runs is answered with [`ErrorCode::Busy`].
pub const FEATURE_BUSY: u64 = 1 << 2;
/// Feature bit: in a VM restored from a snapshot the agent refuses invocations with
/// [`ErrorCode::AwaitingRestore`] until the host's [`Message::Restored`], whatever the
/// guest booted with and however the snapshot was taken (it reads the VMM's restore
/// generation, see `pid1::read_vm_generation`).
pub const FEATURE_RESTORE_GATE: u64 = 1 << 3;
/// Every feature this crate implements.
pub const FEATURES: u64 =
    FEATURE_INVOKE_METADATA | FEATURE_LOG_FRAMES | FEATURE_BUSY | FEATURE_RESTORE_GATE;
/// Extension tag bit: the receiver must refuse the message if it does not know the tag.
pub const EXT_REQUIRED: u16 = 0x8000;
/// Longest request id (visible ASCII, no spaces).
pub const MAX_REQUEST_ID: usize = 128;
/// Most per-invocation environment variables.
pub const MAX_ENV_VARS: usize = 64;
/// Longest per-invocation environment variable name.
pub const MAX_ENV_NAME: usize = 128;
/// Longest per-invocation environment variable value.
pub const MAX_ENV_VALUE: usize = 4096;
/// Most data bytes in one [`Message::Log`] frame.
pub const MAX_LOG_CHUNK: usize = 32 * 1024;
/// Size of the frame header in bytes.
pub const HEADER_LEN: usize = 12;
/// Default limit on an invocation payload and on a result body (6 MiB).
pub const DEFAULT_PAYLOAD_LIMIT: usize = 6 * 1024 * 1024;
/// Room for everything in a frame body besides the payload or body bytes.
pub const FRAME_OVERHEAD: usize = 64 * 1024;
/// Maximum length of short strings (versions, sandbox ids).
pub const MAX_SHORT_STRING: usize = 256;
/// Maximum length of an error message.
pub const MAX_ERROR_MESSAGE: usize = 4096;
/// Maximum length of the stderr tail carried in a result.
pub const MAX_STDERR_TAIL: usize = 16 * 1024;
/// Maximum length of the entropy seed carried in a `Restored` message.
pub const MAX_ENTROPY_SEED: usize = 4096;

/// Errors from encoding or decoding frames.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The first four bytes were not `HUSK`.
    #[error("bad frame magic {0:02x?}: the peer does not speak the husk agent protocol")]
    BadMagic([u8; 4]),
    /// The version byte is not ours.
    #[error("unsupported framing version {got} (this side speaks {FRAME_VERSION}); use matching husk and husk-agent builds")]
    UnsupportedVersion {
        /// The version the peer sent.
        got: u8,
    },
    /// Reserved flag bits were set.
    #[error("unsupported frame flags {0:#06x}: reserved bits must be zero in protocol v1")]
    UnsupportedFlags(u16),
    /// The message type byte is unknown.
    #[error("unknown message type {0}")]
    UnknownType(u8),
    /// The frame body is larger than the limit.
    #[error("frame body of {len} bytes exceeds the limit of {max} bytes; send a smaller payload or raise husk.payload_limit")]
    Oversized {
        /// Announced body length.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// The stream ended in the middle of a frame.
    #[error("truncated frame: the stream ended after {got} of {want} bytes")]
    Truncated {
        /// Bytes received.
        got: usize,
        /// Bytes expected.
        want: usize,
    },
    /// The body did not match the message's layout.
    #[error("malformed {what} message: {reason}")]
    Malformed {
        /// The message type name.
        what: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// Reading a frame took longer than the read timeout.
    #[error("timed out waiting for the rest of a frame")]
    Timeout,
    /// The stream was closed cleanly between frames.
    #[error("connection closed by peer")]
    Closed,
    /// Another I/O error.
    #[error("I/O error on the agent connection")]
    Io(#[source] io::Error),
}

impl ProtocolError {
    /// Whether the stream is still in sync after this error (a whole frame was consumed).
    pub fn is_recoverable(&self) -> bool {
        matches!(self, Self::UnknownType(_) | Self::Malformed { .. })
    }

    /// The error code to put in an [`Message::Error`] frame for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::BadMagic(_) => ErrorCode::BadMagic,
            Self::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
            Self::UnsupportedFlags(_) => ErrorCode::Malformed,
            Self::UnknownType(_) => ErrorCode::UnknownType,
            Self::Oversized { .. } => ErrorCode::Oversized,
            Self::Truncated { .. } => ErrorCode::Truncated,
            Self::Malformed { .. } => ErrorCode::Malformed,
            Self::Timeout => ErrorCode::Timeout,
            Self::Closed | Self::Io(_) => ErrorCode::Internal,
        }
    }
}

/// Numeric error codes carried in [`Message::Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    /// Frame magic was wrong.
    BadMagic = 1,
    /// Protocol version mismatch.
    UnsupportedVersion = 2,
    /// Unknown message type.
    UnknownType = 3,
    /// Frame or payload too large.
    Oversized = 4,
    /// Frame cut short.
    Truncated = 5,
    /// Body layout wrong.
    Malformed = 6,
    /// A valid message that the receiver does not accept (e.g. a Result sent to the agent).
    UnexpectedMessage = 7,
    /// The sandbox already served its invocation.
    AlreadyUsed = 8,
    /// The sandbox waits for a `Restored` message before accepting invocations.
    AwaitingRestore = 9,
    /// A frame was not completed in time.
    Timeout = 10,
    /// Too many connections or an invocation is already running.
    Busy = 11,
    /// An internal agent failure.
    Internal = 12,
    /// A code this side does not know (kept as the raw value).
    Other = 0xffff,
}

impl ErrorCode {
    /// Map a raw code to an [`ErrorCode`]; unknown values become [`ErrorCode::Other`].
    pub fn from_u16(v: u16) -> Self {
        match v {
            1 => Self::BadMagic,
            2 => Self::UnsupportedVersion,
            3 => Self::UnknownType,
            4 => Self::Oversized,
            5 => Self::Truncated,
            6 => Self::Malformed,
            7 => Self::UnexpectedMessage,
            8 => Self::AlreadyUsed,
            9 => Self::AwaitingRestore,
            10 => Self::Timeout,
            11 => Self::Busy,
            12 => Self::Internal,
            _ => Self::Other,
        }
    }
}

/// Message type bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum MessageType {
    /// Agent → host, first frame on every connection.
    Hello = 1,
    /// Host → agent.
    Invoke = 2,
    /// Agent → host.
    Result = 3,
    /// Host → agent after a snapshot restore.
    Restored = 4,
    /// Either direction.
    Ping = 5,
    /// Answer to ping.
    Pong = 6,
    /// Either direction.
    Error = 7,
    /// Host → agent: sync and reboot the guest.
    Shutdown = 8,
    /// Agent → host: function output lines, before the Result (protocol version 2).
    Log = 9,
}

impl MessageType {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Hello,
            2 => Self::Invoke,
            3 => Self::Result,
            4 => Self::Restored,
            5 => Self::Ping,
            6 => Self::Pong,
            7 => Self::Error,
            8 => Self::Shutdown,
            9 => Self::Log,
            _ => return None,
        })
    }
}

/// First frame the agent sends on every connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The newest protocol (message set) version the agent speaks.
    pub protocol_version: u16,
    /// The oldest protocol version the agent speaks (extension field 1; absent: same as
    /// `protocol_version`).
    pub min_protocol_version: u16,
    /// `FEATURE_*` bits the agent implements (extension field 2; absent: 0).
    pub features: u64,
    /// The agent's crate version.
    pub agent_version: String,
    /// Identifier of this sandbox (changes on restore).
    pub sandbox_id: String,
    /// How many times this guest was restored from a snapshot.
    pub restore_generation: u64,
}

/// One function invocation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Invoke {
    /// Caller-chosen id, echoed in the result.
    pub id: u64,
    /// Deadline in milliseconds; 0 means the function's configured default. This is the
    /// deadline the agent enforces.
    pub deadline_ms: u32,
    /// Opaque payload bytes.
    pub payload: Vec<u8>,
    /// Extension field 1: the platform's request id, handed to the function
    /// (1 to [`MAX_REQUEST_ID`] visible ASCII characters).
    pub request_id: Option<String>,
    /// Extension field 2: the absolute deadline in ms since the Unix epoch (host
    /// clock), handed to the function as is; informational, `deadline_ms` is enforced.
    pub deadline_unix_ms: Option<u64>,
    /// Extension field 3: extra environment for this invocation (exec mode: process
    /// environment; worker mode: request header). Names `[A-Za-z_][A-Za-z0-9_]*`, not
    /// starting with `HUSK_`; values without NUL, CR or LF.
    pub env: Vec<(String, String)>,
    /// Extension field 4 (bit 0 of a u32): send the function's output lines as
    /// [`Message::Log`] frames before the Result.
    pub stream_logs: bool,
}

impl Invoke {
    /// An invocation without metadata.
    pub fn new(id: u64, deadline_ms: u32, payload: Vec<u8>) -> Self {
        Self {
            id,
            deadline_ms,
            payload,
            ..Self::default()
        }
    }

    /// Check the metadata against its limits; the agent refuses what fails here.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(r) = &self.request_id {
            if r.is_empty() || r.len() > MAX_REQUEST_ID {
                return Err(format!(
                    "request id must be 1 to {MAX_REQUEST_ID} characters, got {}",
                    r.len()
                ));
            }
            if !r.bytes().all(|b| b.is_ascii_graphic()) {
                return Err("request id must be visible ASCII without spaces".into());
            }
        }
        if self.env.len() > MAX_ENV_VARS {
            return Err(format!(
                "{} environment variables exceed the limit of {MAX_ENV_VARS}",
                self.env.len()
            ));
        }
        for (i, (name, value)) in self.env.iter().enumerate() {
            if !valid_env_name(name) {
                return Err(format!(
                    "environment variable name {name:?} must match [A-Za-z_][A-Za-z0-9_]* and have at most {MAX_ENV_NAME} characters"
                ));
            }
            if name.starts_with("HUSK_") {
                return Err(format!(
                    "environment variable {name} uses the reserved HUSK_ prefix"
                ));
            }
            if value.len() > MAX_ENV_VALUE || value.contains(['\0', '\r', '\n']) {
                return Err(format!(
                    "value of {name} must have at most {MAX_ENV_VALUE} bytes and no NUL, CR or LF"
                ));
            }
            if self.env[..i].iter().any(|(n, _)| n == name) {
                return Err(format!("environment variable {name} is given twice"));
            }
        }
        Ok(())
    }
}

fn valid_env_name(n: &str) -> bool {
    let b = n.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_ENV_NAME
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

/// Which of the function's streams a [`LogChunk`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStream {
    /// Standard output (worker mode only: in exec mode stdout is the body).
    Stdout = 1,
    /// Standard error.
    Stderr = 2,
}

/// Function output sent before the Result when the Invoke set `stream_logs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogChunk {
    /// The invocation this output belongs to.
    pub id: u64,
    /// The stream.
    pub stream: LogStream,
    /// The bytes, at most [`MAX_LOG_CHUNK`].
    pub data: Vec<u8>,
}

/// How an invocation ended when the function died.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crash {
    /// Killed by this signal.
    Signal(i32),
    /// Exited with this code when it should not have (a worker must not exit).
    Exit(i32),
}

/// Outcome of an invocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// The function succeeded.
    Ok,
    /// The function reported an error (exec: non-zero exit code; worker: error frame).
    FunctionError {
        /// Exit code (exec mode) or 0 (worker mode).
        code: i32,
    },
    /// The deadline passed; the function's process group was killed.
    Timeout,
    /// The function died.
    Crashed(Crash),
}

/// Result flag: the body was cut at the output cap.
pub const RESULT_OUTPUT_TRUNCATED: u32 = 1;
/// Result flag: the function was restarted after this invocation (worker died or timed out).
pub const RESULT_WORKER_RESTARTED: u32 = 2;
/// Result flag: the Log frames were cut at the agent's log cap (see `logs_dropped`).
pub const RESULT_LOGS_TRUNCATED: u32 = 4;

/// The result of one invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvokeResult {
    /// The invocation id this answers.
    pub id: u64,
    /// How it ended.
    pub status: Status,
    /// `RESULT_*` flags.
    pub flags: u32,
    /// Wall time from receiving the invoke to having the result, in microseconds.
    pub duration_us: u64,
    /// The function's output (possibly cut; see flags).
    pub body: Vec<u8>,
    /// The last bytes the function wrote to stderr.
    pub stderr_tail: Vec<u8>,
    /// Extension field 1: log bytes not sent because of the log cap (0: none).
    pub logs_dropped: u64,
}

impl InvokeResult {
    /// Whether the body was cut at the output cap.
    pub fn output_truncated(&self) -> bool {
        self.flags & RESULT_OUTPUT_TRUNCATED != 0
    }

    /// Whether the Log frames were cut at the agent's log cap.
    pub fn logs_truncated(&self) -> bool {
        self.flags & RESULT_LOGS_TRUNCATED != 0
    }
}

/// Host → agent after restoring a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    /// Fresh entropy to mix into the guest's pool.
    pub entropy_seed: Vec<u8>,
    /// Host wall-clock time in nanoseconds since the Unix epoch.
    pub wall_clock_ns: u64,
    /// The new sandbox id.
    pub new_sandbox_id: String,
}

/// An error report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorMsg {
    /// Raw error code (see [`ErrorCode`]).
    pub code: u16,
    /// Human-readable message saying what to do.
    pub message: String,
}

impl ErrorMsg {
    /// Build an error message, cutting the text to [`MAX_ERROR_MESSAGE`].
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        let mut message = message.into();
        if message.len() > MAX_ERROR_MESSAGE {
            let mut cut = MAX_ERROR_MESSAGE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        Self {
            code: code as u16,
            message,
        }
    }

    /// The typed code.
    pub fn kind(&self) -> ErrorCode {
        ErrorCode::from_u16(self.code)
    }
}

/// Every protocol message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// See [`Hello`].
    Hello(Hello),
    /// See [`Invoke`].
    Invoke(Invoke),
    /// See [`InvokeResult`].
    Result(InvokeResult),
    /// See [`Restored`].
    Restored(Restored),
    /// Liveness probe with a nonce.
    Ping(u64),
    /// Answer carrying the ping's nonce.
    Pong(u64),
    /// See [`ErrorMsg`].
    Error(ErrorMsg),
    /// Ask the agent to sync and reboot the guest.
    Shutdown,
    /// See [`LogChunk`].
    Log(LogChunk),
}

impl Message {
    /// The type byte of this message.
    pub fn message_type(&self) -> MessageType {
        match self {
            Self::Hello(_) => MessageType::Hello,
            Self::Invoke(_) => MessageType::Invoke,
            Self::Result(_) => MessageType::Result,
            Self::Restored(_) => MessageType::Restored,
            Self::Ping(_) => MessageType::Ping,
            Self::Pong(_) => MessageType::Pong,
            Self::Error(_) => MessageType::Error,
            Self::Shutdown => MessageType::Shutdown,
            Self::Log(_) => MessageType::Log,
        }
    }

    /// Encode the body (without header).
    pub fn encode_body(&self) -> Vec<u8> {
        let mut w = BodyWriter::default();
        match self {
            Self::Hello(h) => {
                w.u16(h.protocol_version);
                w.bytes(h.agent_version.as_bytes());
                w.bytes(h.sandbox_id.as_bytes());
                w.u64(h.restore_generation);
                w.ext(HELLO_MIN_VERSION, &h.min_protocol_version.to_le_bytes());
                w.ext(HELLO_FEATURES, &h.features.to_le_bytes());
            }
            Self::Invoke(i) => {
                w.u64(i.id);
                w.u32(i.deadline_ms);
                w.bytes(&i.payload);
                if let Some(r) = &i.request_id {
                    w.ext(INVOKE_REQUEST_ID, r.as_bytes());
                }
                if let Some(d) = i.deadline_unix_ms {
                    w.ext(INVOKE_DEADLINE_UNIX_MS, &d.to_le_bytes());
                }
                if !i.env.is_empty() {
                    let mut e = BodyWriter::default();
                    e.u32(i.env.len().try_into().unwrap_or(u32::MAX));
                    for (k, v) in &i.env {
                        e.bytes(k.as_bytes());
                        e.bytes(v.as_bytes());
                    }
                    w.ext(INVOKE_ENV, &e.0);
                }
                if i.stream_logs {
                    w.ext(INVOKE_FLAGS, &INVOKE_FLAG_STREAM_LOGS.to_le_bytes());
                }
            }
            Self::Result(r) => {
                w.u64(r.id);
                let (tag, value) = match r.status {
                    Status::Ok => (0u8, 0i32),
                    Status::FunctionError { code } => (1, code),
                    Status::Timeout => (2, 0),
                    Status::Crashed(Crash::Signal(s)) => (3, s),
                    Status::Crashed(Crash::Exit(c)) => (4, c),
                };
                w.u8(tag);
                w.i32(value);
                w.u32(r.flags);
                w.u64(r.duration_us);
                w.bytes(&r.body);
                w.bytes(&r.stderr_tail);
                if r.logs_dropped != 0 {
                    w.ext(RESULT_LOGS_DROPPED, &r.logs_dropped.to_le_bytes());
                }
            }
            Self::Restored(r) => {
                w.bytes(&r.entropy_seed);
                w.u64(r.wall_clock_ns);
                w.bytes(r.new_sandbox_id.as_bytes());
            }
            Self::Ping(n) | Self::Pong(n) => w.u64(*n),
            Self::Error(e) => {
                w.u16(e.code);
                w.bytes(e.message.as_bytes());
            }
            Self::Shutdown => {}
            Self::Log(l) => {
                w.u64(l.id);
                w.u8(l.stream as u8);
                w.bytes(&l.data);
            }
        }
        w.0
    }

    /// Decode a body of the given type byte.
    pub fn decode_body(msg_type: u8, body: &[u8]) -> Result<Self, ProtocolError> {
        let t = MessageType::from_u8(msg_type).ok_or(ProtocolError::UnknownType(msg_type))?;
        let what = type_name(t);
        let mut r = BodyReader { buf: body, what };
        let msg = match t {
            MessageType::Hello => {
                let protocol_version = r.u16()?;
                let mut h = Hello {
                    protocol_version,
                    agent_version: r.string(MAX_SHORT_STRING)?,
                    sandbox_id: r.string(MAX_SHORT_STRING)?,
                    restore_generation: r.u64()?,
                    min_protocol_version: protocol_version,
                    features: 0,
                };
                r.extensions(|tag, v| {
                    match tag {
                        HELLO_MIN_VERSION => h.min_protocol_version = v.u16()?,
                        HELLO_FEATURES => h.features = v.u64()?,
                        _ => return Ok(false),
                    }
                    Ok(true)
                })?;
                if h.min_protocol_version > h.protocol_version {
                    return Err(r.malformed(format!(
                        "version range {}..={} is empty",
                        h.min_protocol_version, h.protocol_version
                    )));
                }
                Self::Hello(h)
            }
            MessageType::Invoke => {
                let mut i = Invoke::new(r.u64()?, r.u32()?, r.bytes(usize::MAX)?);
                r.extensions(|tag, v| {
                    match tag {
                        INVOKE_REQUEST_ID => i.request_id = Some(v.rest_string()?),
                        INVOKE_DEADLINE_UNIX_MS => i.deadline_unix_ms = Some(v.u64()?),
                        INVOKE_ENV => {
                            let n = v.u32()? as usize;
                            if n > MAX_ENV_VARS {
                                return Err(v.malformed(format!(
                                    "{n} environment variables exceed the limit of {MAX_ENV_VARS}"
                                )));
                            }
                            for _ in 0..n {
                                let k = v.string(MAX_ENV_NAME)?;
                                let val = v.string(MAX_ENV_VALUE)?;
                                i.env.push((k, val));
                            }
                        }
                        INVOKE_FLAGS => {
                            // Unknown flag bits are ignored (a newer host's optional asks).
                            i.stream_logs = v.u32()? & INVOKE_FLAG_STREAM_LOGS != 0;
                        }
                        _ => return Ok(false),
                    }
                    Ok(true)
                })?;
                i.validate().map_err(|reason| r.malformed(reason))?;
                Self::Invoke(i)
            }
            MessageType::Result => {
                let id = r.u64()?;
                let tag = r.u8()?;
                let value = r.i32()?;
                if matches!(tag, 0 | 2) && value != 0 {
                    return Err(r.malformed(format!(
                        "status tag {tag} carries value {value}; expected 0"
                    )));
                }
                let status = match tag {
                    0 => Status::Ok,
                    1 => Status::FunctionError { code: value },
                    2 => Status::Timeout,
                    3 => Status::Crashed(Crash::Signal(value)),
                    4 => Status::Crashed(Crash::Exit(value)),
                    other => return Err(r.malformed(format!("unknown status tag {other}"))),
                };
                let mut res = InvokeResult {
                    id,
                    status,
                    flags: r.u32()?,
                    duration_us: r.u64()?,
                    body: r.bytes(usize::MAX)?,
                    stderr_tail: r.bytes(MAX_STDERR_TAIL)?,
                    logs_dropped: 0,
                };
                r.extensions(|tag, v| {
                    match tag {
                        RESULT_LOGS_DROPPED => res.logs_dropped = v.u64()?,
                        _ => return Ok(false),
                    }
                    Ok(true)
                })?;
                Self::Result(res)
            }
            MessageType::Restored => Self::Restored(Restored {
                entropy_seed: r.bytes(MAX_ENTROPY_SEED)?,
                wall_clock_ns: r.u64()?,
                new_sandbox_id: r.string(MAX_SHORT_STRING)?,
            }),
            MessageType::Ping => Self::Ping(r.u64()?),
            MessageType::Pong => Self::Pong(r.u64()?),
            MessageType::Error => Self::Error(ErrorMsg {
                code: r.u16()?,
                message: r.string(MAX_ERROR_MESSAGE)?,
            }),
            MessageType::Shutdown => Self::Shutdown,
            MessageType::Log => {
                let id = r.u64()?;
                let stream = match r.u8()? {
                    1 => LogStream::Stdout,
                    2 => LogStream::Stderr,
                    other => return Err(r.malformed(format!("unknown log stream {other}"))),
                };
                Self::Log(LogChunk {
                    id,
                    stream,
                    data: r.bytes(MAX_LOG_CHUNK)?,
                })
            }
        };
        // Messages without extension fields of their own still tolerate a newer peer's.
        r.extensions(|_, _| Ok(false))?;
        Ok(msg)
    }
}

fn type_name(t: MessageType) -> &'static str {
    match t {
        MessageType::Hello => "hello",
        MessageType::Invoke => "invoke",
        MessageType::Result => "result",
        MessageType::Restored => "restored",
        MessageType::Ping => "ping",
        MessageType::Pong => "pong",
        MessageType::Error => "error",
        MessageType::Shutdown => "shutdown",
        MessageType::Log => "log",
    }
}

// Extension field tags, per message type.
const HELLO_MIN_VERSION: u16 = 1;
const HELLO_FEATURES: u16 = 2;
const INVOKE_REQUEST_ID: u16 = 1;
const INVOKE_DEADLINE_UNIX_MS: u16 = 2;
const INVOKE_ENV: u16 = 3;
const INVOKE_FLAGS: u16 = 4;
const INVOKE_FLAG_STREAM_LOGS: u32 = 1;
const RESULT_LOGS_DROPPED: u16 = 1;

#[derive(Default)]
struct BodyWriter(Vec<u8>);

impl BodyWriter {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn i32(&mut self, v: i32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        // Lengths above u32::MAX cannot be framed at all; write_frame rejects them first
        // because the body would exceed any limit. Saturate rather than wrap.
        let len = u32::try_from(b.len()).unwrap_or(u32::MAX);
        self.u32(len);
        self.0.extend_from_slice(b);
    }
    /// One extension field.
    fn ext(&mut self, tag: u16, value: &[u8]) {
        self.u16(tag);
        self.bytes(value);
    }
}

struct BodyReader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> BodyReader<'a> {
    fn malformed(&self, reason: String) -> ProtocolError {
        ProtocolError::Malformed {
            what: self.what,
            reason,
        }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtocolError> {
        if self.buf.len() < n {
            return Err(self.malformed(format!(
                "body ends early: needed {n} more bytes, {} left",
                self.buf.len()
            )));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], ProtocolError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8, ProtocolError> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, ProtocolError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, ProtocolError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn i32(&mut self) -> Result<i32, ProtocolError> {
        Ok(i32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, ProtocolError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn bytes(&mut self, max: usize) -> Result<Vec<u8>, ProtocolError> {
        let len = self.u32()? as usize;
        if len > max {
            return Err(self.malformed(format!("field of {len} bytes exceeds its limit of {max}")));
        }
        Ok(self.take(len)?.to_vec())
    }
    fn string(&mut self, max: usize) -> Result<String, ProtocolError> {
        let b = self.bytes(max)?;
        String::from_utf8(b).map_err(|_| self.malformed("string is not UTF-8".into()))
    }
    /// The rest of an extension value as a string (its length is the field's).
    fn rest_string(&mut self) -> Result<String, ProtocolError> {
        let b = std::mem::take(&mut self.buf).to_vec();
        String::from_utf8(b).map_err(|_| self.malformed("string is not UTF-8".into()))
    }
    /// Read the extension area (everything after the fixed fields): `field` decodes a
    /// tag it knows from the value reader and returns true, or returns false to skip
    /// it. Unknown required tags, repeated known tags, and known values with leftover
    /// bytes are malformed.
    fn extensions(
        &mut self,
        mut field: impl FnMut(u16, &mut BodyReader<'a>) -> Result<bool, ProtocolError>,
    ) -> Result<(), ProtocolError> {
        // Known tags are all below 64: a bit per tag finds repeats in O(1).
        let mut seen = 0u64;
        while !self.buf.is_empty() {
            let tag = self.u16()?;
            let len = self.u32()? as usize;
            let value = self.take(len)?;
            let mut v = BodyReader {
                buf: value,
                what: self.what,
            };
            if field(tag, &mut v)? {
                let bit = 1u64 << (tag % 64);
                if tag >= 64 || seen & bit != 0 {
                    return Err(self.malformed(format!("extension field {tag} appears twice")));
                }
                seen |= bit;
                if !v.buf.is_empty() {
                    return Err(self.malformed(format!(
                        "extension field {tag} has {} extra bytes",
                        v.buf.len()
                    )));
                }
            } else if tag & EXT_REQUIRED != 0 {
                return Err(self.malformed(format!(
                    "required extension field {tag:#06x} is not supported by this side; use matching husk and husk-agent builds"
                )));
            }
        }
        Ok(())
    }
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Message type byte (not yet validated).
    pub msg_type: u8,
    /// Body length.
    pub len: usize,
}

/// Size limits applied by a [`Codec`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest invocation payload / result body.
    pub payload_limit: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            payload_limit: DEFAULT_PAYLOAD_LIMIT,
        }
    }
}

impl Limits {
    /// The largest frame body accepted.
    pub fn max_body(&self) -> usize {
        self.payload_limit.saturating_add(FRAME_OVERHEAD)
    }
}

/// Encodes and decodes frames with fixed limits. Usable from sync code over any
/// `Read`/`Write`; timeouts are the stream's (set `set_read_timeout` on sockets).
#[derive(Debug, Clone, Copy, Default)]
pub struct Codec {
    /// Limits in force.
    pub limits: Limits,
}

impl Codec {
    /// A codec with the given payload limit.
    pub fn new(limits: Limits) -> Self {
        Self { limits }
    }

    /// Parse and validate a header.
    pub fn parse_header(&self, h: &[u8; HEADER_LEN]) -> Result<Header, ProtocolError> {
        let magic = [h[0], h[1], h[2], h[3]];
        if magic != MAGIC {
            return Err(ProtocolError::BadMagic(magic));
        }
        if h[4] != FRAME_VERSION {
            return Err(ProtocolError::UnsupportedVersion { got: h[4] });
        }
        let flags = u16::from_le_bytes([h[6], h[7]]);
        if flags != 0 {
            return Err(ProtocolError::UnsupportedFlags(flags));
        }
        let len = u32::from_le_bytes([h[8], h[9], h[10], h[11]]) as usize;
        let max = self.limits.max_body();
        if len > max {
            return Err(ProtocolError::Oversized { len, max });
        }
        Ok(Header {
            msg_type: h[5],
            len,
        })
    }

    /// Encode a whole frame (header + body). Fails if the body exceeds the limit.
    pub fn encode(&self, msg: &Message) -> Result<Vec<u8>, ProtocolError> {
        let body = msg.encode_body();
        let max = self.limits.max_body();
        if body.len() > max {
            return Err(ProtocolError::Oversized {
                len: body.len(),
                max,
            });
        }
        let len = u32::try_from(body.len()).map_err(|_| ProtocolError::Oversized {
            len: body.len(),
            max,
        })?;
        let mut out = Vec::with_capacity(HEADER_LEN + body.len());
        out.extend_from_slice(&MAGIC);
        out.push(FRAME_VERSION);
        out.push(msg.message_type() as u8);
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Decode one frame from a complete buffer; returns the message and bytes consumed.
    pub fn decode(&self, buf: &[u8]) -> Result<(Message, usize), ProtocolError> {
        let Some(hbytes) = buf.get(..HEADER_LEN) else {
            return Err(ProtocolError::Truncated {
                got: buf.len(),
                want: HEADER_LEN,
            });
        };
        let mut h = [0u8; HEADER_LEN];
        h.copy_from_slice(hbytes);
        let header = self.parse_header(&h)?;
        let end = HEADER_LEN + header.len;
        let Some(body) = buf.get(HEADER_LEN..end) else {
            return Err(ProtocolError::Truncated {
                got: buf.len(),
                want: end,
            });
        };
        Ok((Message::decode_body(header.msg_type, body)?, end))
    }

    /// Write one frame.
    pub fn write_frame<W: Write>(&self, w: &mut W, msg: &Message) -> Result<(), ProtocolError> {
        let frame = self.encode(msg)?;
        w.write_all(&frame).map_err(map_io)?;
        w.flush().map_err(map_io)
    }

    /// Read one frame. A clean EOF before the first byte is [`ProtocolError::Closed`].
    pub fn read_frame<R: Read>(&self, r: &mut R) -> Result<Message, ProtocolError> {
        let mut h = [0u8; HEADER_LEN];
        let got = read_full(r, &mut h)?;
        if got == 0 {
            return Err(ProtocolError::Closed);
        }
        if got < HEADER_LEN {
            return Err(ProtocolError::Truncated {
                got,
                want: HEADER_LEN,
            });
        }
        let header = self.parse_header(&h)?;
        let mut body = vec![0u8; header.len];
        let got = read_full(r, &mut body)?;
        if got < header.len {
            return Err(ProtocolError::Truncated {
                got: HEADER_LEN + got,
                want: HEADER_LEN + header.len,
            });
        }
        Message::decode_body(header.msg_type, &body)
    }
}

/// Write one frame with the default limits (see [`Codec::write_frame`]).
pub fn write_frame<W: Write>(w: &mut W, msg: &Message) -> Result<(), ProtocolError> {
    Codec::default().write_frame(w, msg)
}

/// Read one frame with the given limits (see [`Codec::read_frame`]).
pub fn read_frame<R: Read>(r: &mut R, limits: Limits) -> Result<Message, ProtocolError> {
    Codec::new(limits).read_frame(r)
}

fn map_io(e: io::Error) -> ProtocolError {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ProtocolError::Timeout,
        _ => ProtocolError::Io(e),
    }
}

/// Read until `buf` is full or EOF; returns bytes read.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<usize, ProtocolError> {
    let mut off = 0;
    while off < buf.len() {
        match r.read(&mut buf[off..]) {
            Ok(0) => break,
            Ok(n) => off += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(map_io(e)),
        }
    }
    Ok(off)
}

#[cfg(test)]
mod tests;
