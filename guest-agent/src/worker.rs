//! The function-side frame format for worker-mode functions.
//!
//! A worker reads requests on stdin and writes responses on the *response descriptor*
//! (its number is in `HUSK_RESPONSE_FD`, 3 under the agent), one at a time:
//! - request: `u32` LE header length, the header, `u32` LE payload length, the payload.
//!   The header is UTF-8 text, one `key: value` line each (`\n`-terminated):
//!   `request-id: ID`, `deadline-unix-ms: MS` (absolute deadline, ms since the Unix
//!   epoch), and one `env: NAME=VALUE` line per invocation environment variable.
//!   Unknown keys must be ignored (new keys may be added); values never hold CR or LF.
//! - response: one status byte (`0` ok, `1` function error), a `u32` LE body length,
//!   then the body bytes.
//! - ready: before its first response, once its initialisation (imports, loading
//!   models, warming caches) is done, the worker writes one *ready frame*: status byte
//!   `2`, body length `0` (five bytes: `02 00 00 00 00`). The agent writes the VM's
//!   boot-ready marker only after it (so a snapshot taken at ready holds the initialised
//!   worker), waiting at most `init_timeout_ms` (function.json, default 60 s); a worker
//!   that exits, writes anything else first or stays silent that long has failed to
//!   start. A worker that cannot send it sets `"ready_frame": false` in function.json
//!   and counts as ready once started. [`serve`] sends it when called, so a Rust
//!   function does its initialisation before calling [`serve`].
//!
//! The worker's stdout and stderr are its log streams: the agent keeps the last 4 KiB
//! of stderr for the result and, when the host asks, sends both as Log frames. [`serve`]
//! is the whole loop for functions written in Rust.

use std::io::{self, Read, Write};

/// Status byte: success.
pub const STATUS_OK: u8 = 0;
/// Status byte: the function reports an error.
pub const STATUS_ERROR: u8 = 1;
/// Status byte of the ready frame (body length 0): the worker finished initialising.
pub const STATUS_READY: u8 = 2;
/// The ready frame's bytes.
pub const READY_FRAME: [u8; 5] = [STATUS_READY, 0, 0, 0, 0];
/// Largest request a worker accepts through [`serve`] (64 MiB).
pub const MAX_REQUEST: usize = 64 * 1024 * 1024;
/// Largest request header (request id, deadline, up to 64 env variables of 4 KiB).
pub const MAX_HEADER: usize = 512 * 1024;
/// Environment variable naming the worker's response descriptor.
pub const RESPONSE_FD_ENV: &str = "HUSK_RESPONSE_FD";
/// The descriptor number the agent gives a worker for its responses.
pub const RESPONSE_FD: i32 = 3;

/// A response read by the agent from a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Whether the worker reported success.
    pub ok: bool,
    /// The body, cut at the cap.
    pub body: Vec<u8>,
    /// Whether bytes beyond the cap were discarded.
    pub truncated: bool,
}

/// Per-invocation metadata a function receives (worker: request header; exec:
/// `HUSK_REQUEST_ID`, `HUSK_DEADLINE_MS` and the process environment).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestMeta {
    /// The platform's request id (the invocation id in decimal when the host set none).
    pub request_id: String,
    /// Absolute deadline in ms since the Unix epoch (0: unknown).
    pub deadline_unix_ms: u64,
    /// Environment variables sent with this invocation.
    pub env: Vec<(String, String)>,
}

impl RequestMeta {
    /// Encode as a request header (see the module docs). Values with CR or LF are
    /// refused by the protocol before they get here; they are dropped defensively.
    pub fn encode_header(&self) -> Vec<u8> {
        let clean = |v: &str| !v.contains(['\r', '\n']);
        let mut h = String::new();
        if clean(&self.request_id) {
            h.push_str(&format!("request-id: {}\n", self.request_id));
        }
        h.push_str(&format!("deadline-unix-ms: {}\n", self.deadline_unix_ms));
        for (k, v) in &self.env {
            if clean(k) && clean(v) {
                h.push_str(&format!("env: {k}={v}\n"));
            }
        }
        h.into_bytes()
    }

    /// Parse a request header; unknown keys and lines without `: ` are ignored.
    pub fn parse_header(h: &[u8]) -> Self {
        let mut m = Self::default();
        for line in String::from_utf8_lossy(h).lines() {
            let Some((key, value)) = line.split_once(": ") else {
                continue;
            };
            match key {
                "request-id" => m.request_id = value.to_string(),
                "deadline-unix-ms" => m.deadline_unix_ms = value.trim().parse().unwrap_or(0),
                "env" => {
                    if let Some((k, v)) = value.split_once('=') {
                        m.env.push((k.to_string(), v.to_string()));
                    }
                }
                _ => {}
            }
        }
        m
    }

    /// The value of invocation environment variable `name`.
    pub fn env_var(&self, name: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One request as a worker sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    /// Metadata from the header.
    pub meta: RequestMeta,
    /// The payload.
    pub payload: Vec<u8>,
}

fn len_u32(n: usize, what: &str) -> io::Result<[u8; 4]> {
    u32::try_from(n)
        .map(u32::to_le_bytes)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("{what} over 4 GiB")))
}

/// Write one request frame, in one write: on a pipe, each separate write can wake the
/// worker for a partial frame, which costs a context switch per piece in a guest.
pub fn write_request<W: Write>(w: &mut W, meta: &RequestMeta, payload: &[u8]) -> io::Result<()> {
    let header = meta.encode_header();
    let mut frame = Vec::with_capacity(8 + header.len() + payload.len());
    frame.extend_from_slice(&len_u32(header.len(), "header")?);
    frame.extend_from_slice(&header);
    frame.extend_from_slice(&len_u32(payload.len(), "payload")?);
    frame.extend_from_slice(payload);
    w.write_all(&frame)?;
    w.flush()
}

fn read_len<R: Read>(r: &mut R, max: usize, what: &str) -> io::Result<usize> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{what} of {len} bytes exceeds {max}"),
        ));
    }
    Ok(len)
}

/// Read one request frame (payload at most `max` bytes); `Ok(None)` on a clean end of
/// input.
pub fn read_request<R: Read>(r: &mut R, max: usize) -> io::Result<Option<Request>> {
    let hlen = match read_len(r, MAX_HEADER, "request header") {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut header = vec![0u8; hlen];
    r.read_exact(&mut header)?;
    let len = read_len(r, max, "request")?;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)?;
    Ok(Some(Request {
        meta: RequestMeta::parse_header(&header),
        payload,
    }))
}

/// Write one response frame.
pub fn write_response<W: Write>(w: &mut W, ok: bool, body: &[u8]) -> io::Result<()> {
    let len = len_u32(body.len(), "body")?;
    let mut frame = Vec::with_capacity(5 + body.len());
    frame.push(if ok { STATUS_OK } else { STATUS_ERROR });
    frame.extend_from_slice(&len);
    frame.extend_from_slice(body);
    w.write_all(&frame)?;
    w.flush()
}

/// Write the ready frame (see the module docs): the worker's initialisation is done.
pub fn write_ready<W: Write>(w: &mut W) -> io::Result<()> {
    w.write_all(&READY_FRAME)?;
    w.flush()
}

/// Read the worker's first frame and check it is the ready frame. `UnexpectedEof`: the
/// worker closed its response descriptor (exited) first; `InvalidData`: it wrote
/// another frame first. Reads exactly five bytes, whatever the worker wrote.
pub fn read_ready<R: Read>(r: &mut R) -> io::Result<()> {
    let mut head = [0u8; 5];
    r.read_exact(&mut head)?;
    if head == READY_FRAME {
        return Ok(());
    }
    let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]);
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "its first frame has status byte {} and length {len}, not the ready frame \
             (status {STATUS_READY}, length 0)",
            head[0]
        ),
    ))
}

/// Read one response frame, keeping at most `cap` body bytes and draining the rest.
/// The worker is untrusted: a bad status byte is an error, and a huge length only costs
/// reading time (the caller's deadline bounds it).
pub fn read_response<R: Read>(r: &mut R, cap: usize) -> io::Result<Response> {
    let mut head = [0u8; 5];
    r.read_exact(&mut head)?;
    let ok = match head[0] {
        STATUS_OK => true,
        STATUS_ERROR => false,
        other => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("worker wrote status byte {other}; expected 0 or 1 (a ready frame, 2, comes only once, first)"),
            ))
        }
    };
    let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as u64;
    let keep = len.min(cap as u64);
    let mut body = Vec::with_capacity(keep.min(1 << 20) as usize);
    r.by_ref().take(keep).read_to_end(&mut body)?;
    if (body.len() as u64) < keep {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    let rest = len - keep;
    if rest > 0 {
        let drained = io::copy(&mut r.by_ref().take(rest), &mut io::sink())?;
        if drained < rest {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(Response {
        ok,
        body,
        truncated: rest > 0,
    })
}

/// Serve requests from `input` until it ends, answering each with `handler`'s result
/// (`Ok(body)` or `Err(body)` for a function error) on `output`.
pub fn serve_io<R, W, F>(input: &mut R, output: &mut W, mut handler: F) -> io::Result<()>
where
    R: Read,
    W: Write,
    F: FnMut(&Request) -> Result<Vec<u8>, Vec<u8>>,
{
    while let Some(req) = read_request(input, MAX_REQUEST)? {
        match handler(&req) {
            Ok(body) => write_response(output, true, &body)?,
            Err(body) => write_response(output, false, &body)?,
        }
    }
    Ok(())
}

/// The response descriptor the agent passed (`HUSK_RESPONSE_FD`), if any.
fn response_file() -> io::Result<Option<std::fs::File>> {
    use std::os::fd::FromRawFd;
    use std::sync::atomic::{AtomicBool, Ordering};
    static TAKEN: AtomicBool = AtomicBool::new(false);
    let Ok(v) = std::env::var(RESPONSE_FD_ENV) else {
        return Ok(None);
    };
    if TAKEN.swap(true, Ordering::SeqCst) {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "the response descriptor is already in use: call serve once per process",
        ));
    }
    let fd: i32 = v.parse().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{RESPONSE_FD_ENV}={v} is not a descriptor number"),
        )
    })?;
    // SAFETY: fcntl(F_GETFD) only queries the descriptor.
    if fd < 3 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{RESPONSE_FD_ENV}={v} is not an open descriptor above stderr"),
        ));
    }
    // SAFETY: the agent opened this descriptor for this process's responses only; it is
    // open (checked above), and TAKEN makes this the only owner in the process.
    Ok(Some(unsafe { std::fs::File::from_raw_fd(fd) }))
}

/// Send the ready frame, then serve requests on stdin until it closes, answering on the
/// response descriptor (stdout when `HUSK_RESPONSE_FD` is unset, e.g. when run by
/// hand). For worker-mode functions: do the initialisation first, then call it once.
pub fn serve<F>(handler: F) -> io::Result<()>
where
    F: FnMut(&Request) -> Result<Vec<u8>, Vec<u8>>,
{
    let stdin = io::stdin();
    match response_file()? {
        Some(mut f) => {
            write_ready(&mut f)?;
            serve_io(&mut stdin.lock(), &mut f, handler)
        }
        None => {
            let mut out = io::stdout().lock();
            write_ready(&mut out)?;
            serve_io(&mut stdin.lock(), &mut out, handler)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn serve_answers_each_request_in_order() {
        let mut input = Vec::new();
        let m = RequestMeta::default();
        write_request(&mut input, &m, b"a").unwrap();
        write_request(&mut input, &m, b"").unwrap();
        write_request(&mut input, &m, b"bad").unwrap();
        let mut out = Vec::new();
        serve_io(&mut Cursor::new(input), &mut out, |r| {
            let p = r.payload.as_slice();
            if p == b"bad" {
                Err(b"nope".to_vec())
            } else {
                Ok([p, b"!"].concat())
            }
        })
        .unwrap();
        let mut cur = Cursor::new(out);
        let r = read_response(&mut cur, 100).unwrap();
        assert_eq!(
            (r.ok, r.body.as_slice(), r.truncated),
            (true, &b"a!"[..], false)
        );
        let r = read_response(&mut cur, 100).unwrap();
        assert_eq!((r.ok, r.body.as_slice()), (true, &b"!"[..]));
        let r = read_response(&mut cur, 100).unwrap();
        assert_eq!((r.ok, r.body.as_slice()), (false, &b"nope"[..]));
        assert!(read_response(&mut cur, 100).is_err());
    }

    #[test]
    fn response_over_cap_is_cut_and_stream_stays_in_sync() {
        let mut buf = Vec::new();
        write_response(&mut buf, true, &[7u8; 1000]).unwrap();
        write_response(&mut buf, true, b"next").unwrap();
        let mut cur = Cursor::new(buf);
        let r = read_response(&mut cur, 10).unwrap();
        assert_eq!(r.body, vec![7u8; 10]);
        assert!(r.truncated);
        assert_eq!(read_response(&mut cur, 10).unwrap().body, b"next");
    }

    #[test]
    fn bad_status_and_short_body_are_errors() {
        let mut cur = Cursor::new(vec![9u8, 0, 0, 0, 0]);
        assert_eq!(
            read_response(&mut cur, 10).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        let mut cur = Cursor::new(vec![0u8, 5, 0, 0, 0, b'a']);
        assert_eq!(
            read_response(&mut cur, 10).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
        let mut cur = Cursor::new(vec![0u8, 50, 0, 0, 0, b'a']);
        assert!(read_response(&mut cur, 10).is_err());
    }

    #[test]
    fn ready_frame_is_recognised_and_anything_else_is_not() {
        let mut buf = Vec::new();
        write_ready(&mut buf).unwrap();
        write_response(&mut buf, true, b"after").unwrap();
        let mut cur = Cursor::new(buf);
        read_ready(&mut cur).unwrap();
        // Exactly five bytes were consumed: the stream stays in sync.
        assert_eq!(read_response(&mut cur, 10).unwrap().body, b"after");
        // A response first, a ready frame with a body, a short frame, nothing.
        let mut resp = Vec::new();
        write_response(&mut resp, true, b"").unwrap();
        for (bytes, kind) in [
            (resp, io::ErrorKind::InvalidData),
            (vec![2u8, 1, 0, 0, 0, b'x'], io::ErrorKind::InvalidData),
            (vec![2u8, 0, 0], io::ErrorKind::UnexpectedEof),
            (vec![], io::ErrorKind::UnexpectedEof),
        ] {
            let e = read_ready(&mut Cursor::new(bytes.clone())).unwrap_err();
            assert_eq!(e.kind(), kind, "{bytes:?}");
        }
        // A ready frame where a response is due is a protocol error.
        let mut cur = Cursor::new(READY_FRAME.to_vec());
        assert_eq!(
            read_response(&mut cur, 10).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }

    #[test]
    fn oversized_request_is_refused() {
        let mut cur = Cursor::new(vec![255u8, 255, 255, 255]);
        assert!(read_request(&mut cur, 10).is_err());
        let mut cur = Cursor::new(vec![0u8, 0, 0, 0, 11, 0, 0, 0]);
        assert!(read_request(&mut cur, 10).is_err());
        let mut cur = Cursor::new(Vec::new());
        assert_eq!(read_request(&mut cur, 10).unwrap(), None);
    }

    #[test]
    fn request_header_carries_metadata_and_skips_unknown_keys() {
        let meta = RequestMeta {
            request_id: "req-7".into(),
            deadline_unix_ms: 1_700_000_000_123,
            env: vec![
                ("TENANT".into(), "acme=1".into()),
                ("EMPTY".into(), String::new()),
            ],
        };
        let mut buf = Vec::new();
        write_request(&mut buf, &meta, b"payload").unwrap();
        let r = read_request(&mut Cursor::new(&buf), 100).unwrap().unwrap();
        assert_eq!(r.meta, meta);
        assert_eq!(r.meta.env_var("TENANT"), Some("acme=1"));
        assert_eq!(r.payload, b"payload");
        // A newer agent's extra header lines are ignored.
        let h = b"future-key: 1\nrequest-id: x\nno colon here\n";
        let m = RequestMeta::parse_header(h);
        assert_eq!((m.request_id.as_str(), m.env.len()), ("x", 0));
    }
}
