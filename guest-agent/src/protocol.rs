//! The agent wire protocol: length-prefixed, binary-safe frames with a small typed header.
//!
//! Every frame is a 12-byte header followed by `length` body bytes:
//!
//! | offset | size | field                                   |
//! |--------|------|-----------------------------------------|
//! | 0      | 4    | magic `b"HUSK"`                         |
//! | 4      | 1    | protocol version ([`PROTOCOL_VERSION`]) |
//! | 5      | 1    | message type ([`MessageType`])          |
//! | 6      | 2    | flags, little endian (must be 0 in v1)  |
//! | 8      | 4    | body length, little endian              |
//!
//! Bodies are sequences of little-endian integers and length-prefixed (`u32`) byte
//! strings; see each message's `encode`/`decode`. All lengths are bounded: a frame body
//! may not exceed the codec's `max_body` ([`Limits`]), and every string has its own cap.
//!
//! Header errors (bad magic, version, flags, oversized) leave the stream out of sync, so
//! a receiver answers with an [`Message::Error`] and closes the connection. Body errors
//! (unknown type, malformed body) consume exactly one frame, so the receiver answers with
//! an error and keeps serving the connection.

use std::io::{self, Read, Write};

/// Frame magic: the ASCII bytes `HUSK`.
pub const MAGIC: [u8; 4] = *b"HUSK";
/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u8 = 1;
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
    #[error("unsupported protocol version {got} (this side speaks {PROTOCOL_VERSION}); use matching husk and husk-agent builds")]
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
            _ => return None,
        })
    }
}

/// First frame the agent sends on every connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Protocol version the agent speaks.
    pub protocol_version: u16,
    /// The agent's crate version.
    pub agent_version: String,
    /// Identifier of this sandbox (changes on restore).
    pub sandbox_id: String,
    /// How many times this guest was restored from a snapshot.
    pub restore_generation: u64,
}

/// One function invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invoke {
    /// Caller-chosen id, echoed in the result.
    pub id: u64,
    /// Deadline in milliseconds; 0 means the function's configured default.
    pub deadline_ms: u32,
    /// Opaque payload bytes.
    pub payload: Vec<u8>,
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
}

impl InvokeResult {
    /// Whether the body was cut at the output cap.
    pub fn output_truncated(&self) -> bool {
        self.flags & RESULT_OUTPUT_TRUNCATED != 0
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
            }
            Self::Invoke(i) => {
                w.u64(i.id);
                w.u32(i.deadline_ms);
                w.bytes(&i.payload);
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
        }
        w.0
    }

    /// Decode a body of the given type byte.
    pub fn decode_body(msg_type: u8, body: &[u8]) -> Result<Self, ProtocolError> {
        let t = MessageType::from_u8(msg_type).ok_or(ProtocolError::UnknownType(msg_type))?;
        let what = type_name(t);
        let mut r = BodyReader { buf: body, what };
        let msg = match t {
            MessageType::Hello => Self::Hello(Hello {
                protocol_version: r.u16()?,
                agent_version: r.string(MAX_SHORT_STRING)?,
                sandbox_id: r.string(MAX_SHORT_STRING)?,
                restore_generation: r.u64()?,
            }),
            MessageType::Invoke => Self::Invoke(Invoke {
                id: r.u64()?,
                deadline_ms: r.u32()?,
                payload: r.bytes(usize::MAX)?,
            }),
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
                Self::Result(InvokeResult {
                    id,
                    status,
                    flags: r.u32()?,
                    duration_us: r.u64()?,
                    body: r.bytes(usize::MAX)?,
                    stderr_tail: r.bytes(MAX_STDERR_TAIL)?,
                })
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
        };
        if !r.buf.is_empty() {
            return Err(r.malformed(format!("{} trailing bytes", r.buf.len())));
        }
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
    }
}

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
        if h[4] != PROTOCOL_VERSION {
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
        out.push(PROTOCOL_VERSION);
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
