//! The function-side frame format for worker-mode functions.
//!
//! A worker reads requests on stdin and writes responses on stdout, one at a time:
//! - request:  `u32` little-endian payload length, then the payload bytes;
//! - response: one status byte (`0` ok, `1` function error), a `u32` little-endian body
//!   length, then the body bytes.
//!
//! Anything else a worker wants to say goes to stderr. [`serve`] is the whole loop for
//! functions written in Rust.

use std::io::{self, Read, Write};

/// Status byte: success.
pub const STATUS_OK: u8 = 0;
/// Status byte: the function reports an error.
pub const STATUS_ERROR: u8 = 1;
/// Largest request a worker accepts through [`serve`] (64 MiB).
pub const MAX_REQUEST: usize = 64 * 1024 * 1024;

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

/// Write one request frame.
pub fn write_request<W: Write>(w: &mut W, payload: &[u8]) -> io::Result<()> {
    let len = u32::try_from(payload.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "payload over 4 GiB"))?;
    w.write_all(&len.to_le_bytes())?;
    w.write_all(payload)?;
    w.flush()
}

/// Read one request frame; `Ok(None)` on a clean end of input.
pub fn read_request<R: Read>(r: &mut R, max: usize) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("request of {len} bytes exceeds {max}"),
        ));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf)?;
    Ok(Some(buf))
}

/// Write one response frame.
pub fn write_response<W: Write>(w: &mut W, ok: bool, body: &[u8]) -> io::Result<()> {
    let len = u32::try_from(body.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "body over 4 GiB"))?;
    w.write_all(&[if ok { STATUS_OK } else { STATUS_ERROR }])?;
    w.write_all(&len.to_le_bytes())?;
    w.write_all(body)?;
    w.flush()
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
                format!("worker wrote status byte {other}; expected 0 or 1"),
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
/// (`Ok(body)` or `Err(body)` for a function error).
pub fn serve_io<R, W, F>(input: &mut R, output: &mut W, mut handler: F) -> io::Result<()>
where
    R: Read,
    W: Write,
    F: FnMut(&[u8]) -> Result<Vec<u8>, Vec<u8>>,
{
    while let Some(req) = read_request(input, MAX_REQUEST)? {
        match handler(&req) {
            Ok(body) => write_response(output, true, &body)?,
            Err(body) => write_response(output, false, &body)?,
        }
    }
    Ok(())
}

/// Serve requests on stdin/stdout until stdin closes. For worker-mode functions.
pub fn serve<F>(handler: F) -> io::Result<()>
where
    F: FnMut(&[u8]) -> Result<Vec<u8>, Vec<u8>>,
{
    let stdin = io::stdin();
    let stdout = io::stdout();
    serve_io(&mut stdin.lock(), &mut stdout.lock(), handler)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn serve_answers_each_request_in_order() {
        let mut input = Vec::new();
        write_request(&mut input, b"a").unwrap();
        write_request(&mut input, b"").unwrap();
        write_request(&mut input, b"bad").unwrap();
        let mut out = Vec::new();
        serve_io(&mut Cursor::new(input), &mut out, |p| {
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
    fn oversized_request_is_refused() {
        let mut cur = Cursor::new(vec![255u8, 255, 255, 255]);
        assert!(read_request(&mut cur, 10).is_err());
        let mut cur = Cursor::new(Vec::new());
        assert_eq!(read_request(&mut cur, 10).unwrap(), None);
    }
}
