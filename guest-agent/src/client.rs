//! Host-side client for schedulers: connects through the hybrid vsock Unix socket
//! (`CONNECT <port>\n` → `OK <host_port>\n`), reads the agent's Hello, sends invocations
//! and receives results.
//!
//! Every call has ONE deadline for the whole call (connect: socket + handshake + Hello;
//! invoke: send + log frames + result), not a timeout per read: before each read or
//! write the socket timeout is set to what is left of the deadline, so a peer that
//! dribbles one byte at a time cannot stretch a call past it.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::config::DEFAULT_PORT;
use crate::protocol::{
    Codec, ErrorCode, ErrorMsg, Hello, Invoke, InvokeResult, Limits, LogChunk, Message,
    ProtocolError, Restored, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
};

/// Longest handshake reply line accepted.
const MAX_HANDSHAKE_LINE: usize = 64;
/// Most log bytes the client keeps for one invocation (the agent's own cap is lower;
/// this only bounds what a misbehaving peer can make the host buffer).
pub const MAX_CLIENT_LOG_BYTES: usize = 16 * 1024 * 1024;

/// Client errors, each saying what to check.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket path does not exist.
    #[error("vsock socket {0} does not exist; is the sandbox running with this --vsock-uds path?")]
    SocketMissing(PathBuf),
    /// Nobody listens on the socket.
    #[error("connection to {0} refused; the sandbox's VMM is not running (stale socket?)")]
    Refused(PathBuf),
    /// Another connect failure.
    #[error("cannot connect to {path}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The VMM closed the connection during the handshake (unknown port: no listener).
    #[error("the VMM closed the connection after CONNECT {0}; is the agent listening on that port (husk.port)?")]
    HandshakeClosed(u32),
    /// The VMM answered something other than `OK <port>`.
    #[error("bad hybrid vsock handshake reply {0:?}; expected \"OK <port>\"")]
    HandshakeBadReply(String),
    /// The call's deadline passed.
    #[error("timed out {0}")]
    Timeout(&'static str),
    /// The agent speaks no protocol version this client speaks.
    #[error("the agent speaks protocol versions {agent_min}..={agent_max}, this client {MIN_PROTOCOL_VERSION}..={PROTOCOL_VERSION}; use matching husk and husk-agent builds")]
    Incompatible {
        /// The agent's oldest version.
        agent_min: u16,
        /// The agent's newest version.
        agent_max: u16,
    },
    /// The invocation's metadata breaks a protocol limit.
    #[error("invalid invocation: {0}")]
    InvalidInvoke(String),
    /// Framing failure.
    #[error("agent protocol error")]
    Protocol(#[source] ProtocolError),
    /// The agent answered with an Error frame.
    #[error("agent error {}: {}", .0.code, .0.message)]
    Agent(ErrorMsg),
    /// The agent answered with an unexpected message.
    #[error("unexpected reply from the agent: {0}")]
    UnexpectedReply(String),
    /// Other I/O failure.
    #[error("I/O error talking to the sandbox")]
    Io(#[source] io::Error),
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The hybrid vsock Unix socket of the sandbox.
    pub uds: PathBuf,
    /// The guest vsock port the agent listens on.
    pub port: u32,
    /// Deadline for the whole connect: socket, hybrid handshake and the agent's Hello.
    pub connect_timeout: Duration,
    /// Deadline for calls that take no timeout of their own (`shutdown`, `send_raw`).
    pub write_timeout: Duration,
    /// Frame size limits.
    pub limits: Limits,
}

impl ClientConfig {
    /// Defaults for a socket path.
    pub fn new(uds: impl Into<PathBuf>) -> Self {
        Self {
            uds: uds.into(),
            port: DEFAULT_PORT,
            connect_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(10),
            limits: Limits::default(),
        }
    }
}

/// A connection to one sandbox's agent.
pub struct AgentClient {
    stream: UnixStream,
    codec: Codec,
    hello: Hello,
    write_timeout: Duration,
}

fn io_err(e: io::Error, what: &'static str) -> ClientError {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ClientError::Timeout(what),
        _ => ClientError::Io(e),
    }
}

fn proto_err(e: ProtocolError, what: &'static str) -> ClientError {
    match e {
        ProtocolError::Timeout => ClientError::Timeout(what),
        e => ClientError::Protocol(e),
    }
}

/// The stream with one deadline for every read and write through it: each operation
/// gets the socket timeout set to what is left, and none starts after the deadline.
struct Timed<'a> {
    stream: &'a mut UnixStream,
    end: Instant,
}

impl Timed<'_> {
    fn left(&self) -> io::Result<Duration> {
        let left = self.end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        // A zero socket timeout would mean "block forever"; round tiny rests up.
        Ok(left.max(Duration::from_micros(100)))
    }
}

impl Read for Timed<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.left()?;
        self.stream.set_read_timeout(Some(left))?;
        self.stream.read(buf)
    }
}

impl Write for Timed<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let left = self.left()?;
        self.stream.set_write_timeout(Some(left))?;
        self.stream.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

/// Connect to a Unix socket, mapping the common failures to clear errors.
fn connect_uds(path: &Path) -> Result<UnixStream, ClientError> {
    UnixStream::connect(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => ClientError::SocketMissing(path.to_path_buf()),
        io::ErrorKind::ConnectionRefused => ClientError::Refused(path.to_path_buf()),
        _ => ClientError::Connect {
            path: path.to_path_buf(),
            source: e,
        },
    })
}

/// Do the hybrid vsock handshake on a connected stream, all of it within `timeout`;
/// returns the host-side port.
pub fn hybrid_handshake(
    stream: &mut UnixStream,
    port: u32,
    timeout: Duration,
) -> Result<u32, ClientError> {
    handshake(
        &mut Timed {
            stream,
            end: Instant::now() + timeout,
        },
        port,
    )
}

fn handshake(t: &mut Timed<'_>, port: u32) -> Result<u32, ClientError> {
    t.write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(|e| io_err(e, "sending CONNECT"))?;
    let mut line = Vec::new();
    loop {
        let mut b = [0u8; 1];
        match t.read(&mut b) {
            Ok(0) => {
                if line.is_empty() {
                    return Err(ClientError::HandshakeClosed(port));
                }
                return Err(ClientError::HandshakeBadReply(
                    String::from_utf8_lossy(&line).into_owned(),
                ));
            }
            Ok(_) if b[0] == b'\n' => break,
            Ok(_) => {
                line.push(b[0]);
                if line.len() > MAX_HANDSHAKE_LINE {
                    return Err(ClientError::HandshakeBadReply(
                        String::from_utf8_lossy(&line).into_owned(),
                    ));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_err(e, "waiting for the vsock handshake reply")),
        }
    }
    let text = String::from_utf8_lossy(&line).into_owned();
    text.strip_prefix("OK ")
        .and_then(|p| p.trim().parse::<u32>().ok())
        .ok_or(ClientError::HandshakeBadReply(text))
}

fn unexpected(got: &Message, wanted: &str) -> ClientError {
    ClientError::UnexpectedReply(format!("{:?} instead of {wanted}", got.message_type()))
}

impl AgentClient {
    /// Connect, handshake and read the agent's Hello, all within `cfg.connect_timeout`,
    /// and check that the agent speaks a protocol version this client speaks.
    pub fn connect(cfg: &ClientConfig) -> Result<Self, ClientError> {
        let end = Instant::now() + cfg.connect_timeout;
        let mut stream = connect_uds(&cfg.uds)?;
        let codec = Codec::new(cfg.limits);
        let mut t = Timed {
            stream: &mut stream,
            end,
        };
        handshake(&mut t, cfg.port)?;
        let hello = match codec.read_frame(&mut t) {
            Ok(Message::Hello(h)) => h,
            Ok(Message::Error(e)) => return Err(ClientError::Agent(e)),
            Ok(other) => return Err(unexpected(&other, "hello")),
            Err(ProtocolError::Closed) => return Err(ClientError::HandshakeClosed(cfg.port)),
            Err(e) => return Err(proto_err(e, "waiting for the agent's hello")),
        };
        if hello.min_protocol_version > PROTOCOL_VERSION
            || hello.protocol_version < MIN_PROTOCOL_VERSION
        {
            return Err(ClientError::Incompatible {
                agent_min: hello.min_protocol_version,
                agent_max: hello.protocol_version,
            });
        }
        Ok(Self {
            stream,
            codec,
            hello,
            write_timeout: cfg.write_timeout,
        })
    }

    /// Like [`AgentClient::connect`], but while the sandbox is still booting (socket not
    /// there yet, nobody listening, agent not yet on its port) retry every 20 ms for up
    /// to `wait`. Other errors return at once.
    pub fn connect_with_retry(cfg: &ClientConfig, wait: Duration) -> Result<Self, ClientError> {
        let end = Instant::now() + wait;
        loop {
            match Self::connect(cfg) {
                Err(
                    ClientError::SocketMissing(_)
                    | ClientError::Refused(_)
                    | ClientError::HandshakeClosed(_),
                ) if Instant::now() < end => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => return other,
            }
        }
    }

    /// The Hello the agent sent on this connection.
    pub fn hello(&self) -> &Hello {
        &self.hello
    }

    /// The protocol version both sides speak (the newer of the common range).
    pub fn protocol_version(&self) -> u16 {
        self.hello.protocol_version.min(PROTOCOL_VERSION)
    }

    /// Whether the agent announced all of the `FEATURE_*` bits in `f`.
    pub fn has_feature(&self, f: u64) -> bool {
        self.hello.features & f == f
    }

    fn timed(&mut self, timeout: Duration) -> Timed<'_> {
        Timed {
            stream: &mut self.stream,
            end: Instant::now() + timeout,
        }
    }

    /// Send a message and read one reply, both within `timeout`.
    pub fn request(&mut self, msg: &Message, timeout: Duration) -> Result<Message, ClientError> {
        let codec = self.codec;
        let mut t = self.timed(timeout);
        codec
            .write_frame(&mut t, msg)
            .map_err(|e| proto_err(e, "sending a frame"))?;
        codec
            .read_frame(&mut t)
            .map_err(|e| proto_err(e, "waiting for the agent's reply"))
    }

    /// Read one message within `timeout`.
    pub fn read_message(&mut self, timeout: Duration) -> Result<Message, ClientError> {
        let codec = self.codec;
        codec
            .read_frame(&mut self.timed(timeout))
            .map_err(|e| proto_err(e, "waiting for the agent's reply"))
    }

    /// Write raw bytes (tests of malformed input), within the write timeout.
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        let timeout = self.write_timeout;
        self.timed(timeout)
            .write_all(bytes)
            .map_err(|e| io_err(e, "sending raw bytes"))
    }

    /// Run one invocation; `timeout` bounds the whole call (send, logs, result). Log
    /// frames, if the invocation asked for them, are dropped; see
    /// [`AgentClient::invoke_with_logs`].
    pub fn invoke(&mut self, inv: Invoke, timeout: Duration) -> Result<InvokeResult, ClientError> {
        self.invoke_with_logs(inv, timeout).map(|(r, _)| r)
    }

    /// Like [`AgentClient::invoke_with_logs`], but while a sandbox just restored from a
    /// snapshot refuses with AwaitingRestore (husk's `Restored` has not reached its
    /// agent yet), the refused invocation, which never ran, is sent again every 5 ms
    /// until `ready_by`. Other answers and errors return at once.
    pub fn invoke_when_restored(
        &mut self,
        inv: Invoke,
        timeout: Duration,
        ready_by: Instant,
    ) -> Result<(InvokeResult, Vec<LogChunk>), ClientError> {
        loop {
            match self.invoke_with_logs(inv.clone(), timeout) {
                Err(ClientError::Agent(e))
                    if e.code == ErrorCode::AwaitingRestore as u16 && Instant::now() < ready_by =>
                {
                    std::thread::sleep(Duration::from_millis(5));
                }
                other => return other,
            }
        }
    }

    /// Run one invocation and collect the Log frames the agent sends before the result
    /// (only when `inv.stream_logs` is set and the agent has
    /// [`crate::protocol::FEATURE_LOG_FRAMES`]). `timeout` bounds the whole call.
    pub fn invoke_with_logs(
        &mut self,
        inv: Invoke,
        timeout: Duration,
    ) -> Result<(InvokeResult, Vec<LogChunk>), ClientError> {
        inv.validate().map_err(ClientError::InvalidInvoke)?;
        let id = inv.id;
        let codec = self.codec;
        let mut t = self.timed(timeout);
        codec
            .write_frame(&mut t, &Message::Invoke(inv))
            .map_err(|e| proto_err(e, "sending the invocation"))?;
        let mut logs = Vec::new();
        let mut log_bytes = 0usize;
        loop {
            let msg = codec
                .read_frame(&mut t)
                .map_err(|e| proto_err(e, "waiting for the invocation's result"))?;
            match msg {
                Message::Log(l) if l.id == id => {
                    log_bytes += l.data.len();
                    if log_bytes > MAX_CLIENT_LOG_BYTES {
                        return Err(ClientError::UnexpectedReply(format!(
                            "more than {MAX_CLIENT_LOG_BYTES} bytes of log frames"
                        )));
                    }
                    logs.push(l);
                }
                Message::Result(r) if r.id == id => return Ok((r, logs)),
                Message::Result(r) => {
                    return Err(ClientError::UnexpectedReply(format!(
                        "result for invocation {} while waiting for {id}",
                        r.id
                    )))
                }
                Message::Log(l) => {
                    return Err(ClientError::UnexpectedReply(format!(
                        "log for invocation {} while waiting for {id}",
                        l.id
                    )))
                }
                Message::Error(e) => return Err(ClientError::Agent(e)),
                other => return Err(unexpected(&other, "a result")),
            }
        }
    }

    /// Ping the agent within `timeout`.
    pub fn ping(&mut self, nonce: u64, timeout: Duration) -> Result<(), ClientError> {
        match self.request(&Message::Ping(nonce), timeout)? {
            Message::Pong(n) if n == nonce => Ok(()),
            Message::Error(e) => Err(ClientError::Agent(e)),
            other => Err(ClientError::UnexpectedReply(format!(
                "{other:?} instead of pong"
            ))),
        }
    }

    /// Tell the agent it was restored; returns its new Hello. `timeout` bounds the call.
    pub fn restored(&mut self, r: Restored, timeout: Duration) -> Result<Hello, ClientError> {
        match self.request(&Message::Restored(r), timeout)? {
            Message::Hello(h) => {
                self.hello = h.clone();
                Ok(h)
            }
            Message::Error(e) => Err(ClientError::Agent(e)),
            other => Err(unexpected(&other, "hello")),
        }
    }

    /// Ask the agent to reboot the guest (no reply is expected), within the write
    /// timeout.
    pub fn shutdown(&mut self) -> Result<(), ClientError> {
        let codec = self.codec;
        let timeout = self.write_timeout;
        codec
            .write_frame(&mut self.timed(timeout), &Message::Shutdown)
            .map_err(|e| proto_err(e, "sending shutdown"))
    }
}

#[cfg(test)]
mod tests;
