//! Just enough HTTP/1.1 for the API: requests framed with `httparse` and
//! `Content-Length` (no chunked bodies), with limits on header and body size, and
//! responses with a JSON body or none.

/// Most header bytes accepted before the request is refused.
pub const MAX_HEADER_BYTES: usize = 8192;
/// Most headers in one request.
pub const MAX_HEADERS: usize = 32;
/// Firecracker's default limit on a request body (`--http-api-max-payload-size`).
pub const DEFAULT_MAX_PAYLOAD: usize = 51_200;

/// One parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// GET, PUT, PATCH, ...
    pub method: String,
    /// The path (query strings are not part of Firecracker's API and stay in it).
    pub path: String,
    /// The body.
    pub body: Vec<u8>,
    /// `Connection: close` was sent (or HTTP/1.0).
    pub close: bool,
}

/// What the bytes received so far amount to.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A whole request, and how many bytes it used.
    Request(Request, usize),
    /// More bytes are needed; `expect_continue` if the client waits for `100 Continue`
    /// before sending the body.
    Partial {
        /// `Expect: 100-continue` with the body still missing.
        expect_continue: bool,
    },
    /// Malformed or too large: answer 400 with this message and close.
    Bad(String),
}

/// Try to parse one request from the front of `buf`.
pub fn parse(buf: &[u8], max_payload: usize) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() > MAX_HEADER_BYTES {
                return Parsed::Bad(format!(
                    "the request headers exceed {MAX_HEADER_BYTES} bytes"
                ));
            }
            return Parsed::Partial {
                expect_continue: false,
            };
        }
        Err(e) => return Parsed::Bad(format!("malformed HTTP request: {e}")),
    };
    if head_len > MAX_HEADER_BYTES {
        return Parsed::Bad(format!(
            "the request headers exceed {MAX_HEADER_BYTES} bytes"
        ));
    }
    let mut content_length = 0usize;
    let mut close = req.version == Some(0);
    let mut expect_continue = false;
    for h in req.headers.iter() {
        let value = String::from_utf8_lossy(h.value);
        let value = value.trim();
        if h.name.eq_ignore_ascii_case("content-length") {
            match value.parse::<usize>() {
                Ok(n) => content_length = n,
                Err(_) => return Parsed::Bad(format!("invalid Content-Length {value:?}")),
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Parsed::Bad(
                "Transfer-Encoding is not supported: send the body with a Content-Length".into(),
            );
        } else if h.name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        } else if h.name.eq_ignore_ascii_case("expect") {
            expect_continue = value.eq_ignore_ascii_case("100-continue");
        }
    }
    if content_length > max_payload {
        return Parsed::Bad(format!(
            "Request payload with size {content_length} is larger than the limit of {max_payload} allowed by server."
        ));
    }
    let total = head_len + content_length;
    if buf.len() < total {
        return Parsed::Partial { expect_continue };
    }
    Parsed::Request(
        Request {
            method: req.method.unwrap_or("").to_string(),
            path: req.path.unwrap_or("").to_string(),
            body: buf[head_len..total].to_vec(),
            close,
        },
        total,
    )
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        500 => "Internal Server Error",
        _ => "",
    }
}

/// A response: status line, headers and the JSON body, if any.
pub fn response(status: u16, body: Option<&str>) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status} {}\r\nServer: husk\r\n", reason(status));
    if let Some(b) = body {
        out.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
            b.len()
        ));
    } else {
        out.push_str("\r\n");
    }
    out.into_bytes()
}

/// The interim answer to `Expect: 100-continue`.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_partial_and_pipelined_requests() {
        let one = b"PUT /vm HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}";
        match parse(one, 100) {
            Parsed::Request(r, n) => {
                assert_eq!(
                    (r.method.as_str(), r.path.as_str(), r.body.as_slice()),
                    ("PUT", "/vm", &b"{}"[..])
                );
                assert_eq!(n, one.len());
                assert!(!r.close);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            parse(&one[..10], 100),
            Parsed::Partial {
                expect_continue: false
            }
        );
        assert_eq!(
            parse(&one[..one.len() - 1], 100),
            Parsed::Partial {
                expect_continue: false
            }
        );
        let mut two = one.to_vec();
        two.extend_from_slice(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
        let Parsed::Request(_, n) = parse(&two, 100) else {
            panic!()
        };
        match parse(&two[n..], 100) {
            Parsed::Request(r, _) => assert!(r.close && r.body.is_empty()),
            other => panic!("{other:?}"),
        }
        let cont = b"PUT /logger HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n";
        assert_eq!(
            parse(cont, 100),
            Parsed::Partial {
                expect_continue: true
            }
        );
    }

    #[test]
    fn malformed_and_oversized_requests_are_bad() {
        assert!(matches!(
            parse(b"\x01\x02 / HTTP/1.1\r\n\r\n", 100),
            Parsed::Bad(_)
        ));
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n", 100),
            Parsed::Bad(_)
        ));
        match parse(b"PUT / HTTP/1.1\r\nContent-Length: 101\r\n\r\n", 100) {
            Parsed::Bad(m) => assert!(m.contains("larger than the limit of 100"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse(b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 100),
            Parsed::Bad(_)
        ));
        let long = vec![b'a'; MAX_HEADER_BYTES + 1];
        let mut req = b"GET / HTTP/1.1\r\nX: ".to_vec();
        req.extend_from_slice(&long);
        assert!(matches!(parse(&req, 100), Parsed::Bad(_)));
        let many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("H{i}: v\r\n"))
            .collect();
        let req = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert!(matches!(parse(req.as_bytes(), 100), Parsed::Bad(_)));
    }

    #[test]
    fn responses() {
        assert_eq!(
            response(204, None),
            b"HTTP/1.1 204 No Content\r\nServer: husk\r\n\r\n".to_vec()
        );
        let r = String::from_utf8(response(400, Some("{\"fault_message\":\"x\"}"))).unwrap();
        assert!(r.starts_with("HTTP/1.1 400 Bad Request\r\n"));
        assert!(r.contains("Content-Length: 21\r\n"));
        assert!(r.ends_with("\r\n\r\n{\"fault_message\":\"x\"}"));
    }
}
