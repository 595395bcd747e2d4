//! Host-side client for schedulers: connects through the hybrid vsock Unix socket
//! (`CONNECT <port>\n` → `OK <host_port>\n`), reads the agent's Hello, sends invocations
//! and receives results, with a timeout on every step.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::DEFAULT_PORT;
use crate::protocol::{
    Codec, ErrorMsg, Hello, Invoke, InvokeResult, Limits, Message, ProtocolError, Restored,
};

/// Longest handshake reply line accepted.
const MAX_HANDSHAKE_LINE: usize = 64;

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
    /// A step did not finish in time.
    #[error("timed out {0}")]
    Timeout(&'static str),
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
    /// Time allowed for the handshake and the Hello.
    pub connect_timeout: Duration,
    /// Time allowed for writing a frame.
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

/// Do the hybrid vsock handshake on a connected stream; returns the host-side port.
pub fn hybrid_handshake(stream: &mut UnixStream, port: u32) -> Result<u32, ClientError> {
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(|e| io_err(e, "sending CONNECT"))?;
    let mut line = Vec::new();
    loop {
        let mut b = [0u8; 1];
        match stream.read(&mut b) {
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

impl AgentClient {
    /// Connect, handshake and read the agent's Hello.
    pub fn connect(cfg: &ClientConfig) -> Result<Self, ClientError> {
        let mut stream = connect_uds(&cfg.uds)?;
        stream
            .set_read_timeout(Some(cfg.connect_timeout))
            .map_err(ClientError::Io)?;
        stream
            .set_write_timeout(Some(cfg.write_timeout))
            .map_err(ClientError::Io)?;
        hybrid_handshake(&mut stream, cfg.port)?;
        let codec = Codec::new(cfg.limits);
        let hello = match codec.read_frame(&mut stream) {
            Ok(Message::Hello(h)) => h,
            Ok(Message::Error(e)) => return Err(ClientError::Agent(e)),
            Ok(other) => {
                return Err(ClientError::UnexpectedReply(format!(
                    "{:?} instead of hello",
                    other.message_type()
                )))
            }
            Err(ProtocolError::Closed) => return Err(ClientError::HandshakeClosed(cfg.port)),
            Err(e) => return Err(proto_err(e, "waiting for the agent's hello")),
        };
        Ok(Self {
            stream,
            codec,
            hello,
        })
    }

    /// Like [`AgentClient::connect`], but while the sandbox is still booting (socket not
    /// there yet, nobody listening, agent not yet on its port) retry every 20 ms for up
    /// to `wait`. Other errors return at once.
    pub fn connect_with_retry(cfg: &ClientConfig, wait: Duration) -> Result<Self, ClientError> {
        let end = std::time::Instant::now() + wait;
        loop {
            match Self::connect(cfg) {
                Err(
                    ClientError::SocketMissing(_)
                    | ClientError::Refused(_)
                    | ClientError::HandshakeClosed(_),
                ) if std::time::Instant::now() < end => {
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

    /// Send a message and read one reply within `timeout`.
    pub fn request(&mut self, msg: &Message, timeout: Duration) -> Result<Message, ClientError> {
        self.codec
            .write_frame(&mut self.stream, msg)
            .map_err(|e| proto_err(e, "sending a frame"))?;
        self.read_message(timeout)
    }

    /// Read one message within `timeout`.
    pub fn read_message(&mut self, timeout: Duration) -> Result<Message, ClientError> {
        self.stream
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))
            .map_err(ClientError::Io)?;
        self.codec
            .read_frame(&mut self.stream)
            .map_err(|e| proto_err(e, "waiting for the agent's reply"))
    }

    /// Write raw bytes (tests of malformed input).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.stream
            .write_all(bytes)
            .map_err(|e| io_err(e, "sending raw bytes"))
    }

    /// Run one invocation; `timeout` bounds the wait for the result.
    pub fn invoke(&mut self, inv: Invoke, timeout: Duration) -> Result<InvokeResult, ClientError> {
        let id = inv.id;
        match self.request(&Message::Invoke(inv), timeout)? {
            Message::Result(r) if r.id == id => Ok(r),
            Message::Result(r) => Err(ClientError::UnexpectedReply(format!(
                "result for invocation {} while waiting for {id}",
                r.id
            ))),
            Message::Error(e) => Err(ClientError::Agent(e)),
            other => Err(ClientError::UnexpectedReply(format!(
                "{:?} instead of a result",
                other.message_type()
            ))),
        }
    }

    /// Ping the agent.
    pub fn ping(&mut self, nonce: u64, timeout: Duration) -> Result<(), ClientError> {
        match self.request(&Message::Ping(nonce), timeout)? {
            Message::Pong(n) if n == nonce => Ok(()),
            Message::Error(e) => Err(ClientError::Agent(e)),
            other => Err(ClientError::UnexpectedReply(format!(
                "{other:?} instead of pong"
            ))),
        }
    }

    /// Tell the agent it was restored; returns its new Hello.
    pub fn restored(&mut self, r: Restored, timeout: Duration) -> Result<Hello, ClientError> {
        match self.request(&Message::Restored(r), timeout)? {
            Message::Hello(h) => {
                self.hello = h.clone();
                Ok(h)
            }
            Message::Error(e) => Err(ClientError::Agent(e)),
            other => Err(ClientError::UnexpectedReply(format!(
                "{:?} instead of hello",
                other.message_type()
            ))),
        }
    }

    /// Ask the agent to reboot the guest (no reply is expected).
    pub fn shutdown(&mut self) -> Result<(), ClientError> {
        self.codec
            .write_frame(&mut self.stream, &Message::Shutdown)
            .map_err(|e| proto_err(e, "sending shutdown"))
    }
}

#[cfg(test)]
mod tests;
