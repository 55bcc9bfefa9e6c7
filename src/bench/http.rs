//! HTTP/1.1 response framing for the `http` workload: keep-alive GETs, optionally
//! pipelined, each response parsed with httparse and delimited by its Content-Length
//! (or by the end of the connection when it has none), so a pipelined batch never falls
//! out of step and every body is checked byte for byte.

/// How a response's body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// After exactly this many bytes.
    Length(usize),
    /// At the end of the connection (no Content-Length, no chunking).
    UntilClose,
}

/// A parsed response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// Status code.
    pub status: u16,
    /// Length of the head in bytes (up to and including the blank line).
    pub head_len: usize,
    /// How the body ends.
    pub framing: Framing,
    /// Whether the server will close the connection after this response.
    pub close: bool,
}

/// Why a response could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// Not HTTP.
    #[error("malformed response: {0}")]
    Malformed(String),
    /// A framing this tester does not follow (chunked bodies: our targets send
    /// Content-Length, and following chunks would hide a framing bug of theirs).
    #[error("unsupported framing: {0}")]
    Unsupported(&'static str),
    /// The head grew beyond the limit without ending.
    #[error("response head larger than {0} bytes")]
    TooLarge(usize),
}

/// The largest response head accepted.
pub const MAX_HEAD: usize = 16 * 1024;

/// Parses a response head from the start of `buf`: `Ok(None)` when more bytes are
/// needed.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            return Err(HttpError::TooLarge(MAX_HEAD))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(HttpError::Malformed(e.to_string())),
    };
    let status = resp.code.unwrap_or(0);
    let mut length = None;
    let mut close = resp.version == Some(0);
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or_else(|| HttpError::Malformed("bad Content-Length".into()))?;
            if length.is_some_and(|l| l != v) {
                return Err(HttpError::Malformed("conflicting Content-Length".into()));
            }
            length = Some(v);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HttpError::Unsupported("Transfer-Encoding"));
        } else if h.name.eq_ignore_ascii_case("connection") {
            let v = String::from_utf8_lossy(h.value).to_ascii_lowercase();
            if v.split(',').any(|t| t.trim() == "close") {
                close = true;
            } else if v.split(',').any(|t| t.trim() == "keep-alive") {
                close = false;
            }
        }
    }
    // 1xx, 204 and 304 have no body whatever the headers say.
    let bodiless = (100..200).contains(&status) || status == 204 || status == 304;
    let framing = match length {
        _ if bodiless => Framing::Length(0),
        Some(n) => Framing::Length(n),
        None => Framing::UntilClose,
    };
    if framing == Framing::UntilClose {
        close = true;
    }
    Ok(Some(Head {
        status,
        head_len,
        framing,
        close,
    }))
}

/// A whole response at the start of `buf`: its head and the total length of head and
/// body, or `Ok(None)` when more bytes are needed. `eof` says the connection has ended,
/// which completes a body delimited by the close.
pub fn parse_response(buf: &[u8], eof: bool) -> Result<Option<(Head, usize)>, HttpError> {
    let Some(head) = parse_head(buf)? else {
        return Ok(None);
    };
    with_body(head, buf, eof)
}

/// `head` at the start of `buf` and its body: the response's total length, or
/// `Ok(None)` when more bytes are needed.
fn with_body(head: Head, buf: &[u8], eof: bool) -> Result<Option<(Head, usize)>, HttpError> {
    let total = match head.framing {
        Framing::Length(n) => head.head_len + n,
        Framing::UntilClose if eof => buf.len(),
        Framing::UntilClose => return Ok(None),
    };
    if buf.len() < total {
        return Ok(None);
    }
    Ok(Some((head, total)))
}

/// The responses of one connection, parsed as [`parse_response`] does, except that a
/// head byte for byte the same as the one before is not parsed again: most servers
/// repeat one head for a whole second (until their `Date` changes). Without this the
/// tester's cost per response grows with the number of header fields a server sends
/// (httparse, and the search of every field for the framing ones), and a saturated run,
/// where the tester shares the cores with the server, would rank servers by the size of
/// their heads. A head is complete at its blank line, so bytes that start with a head
/// already parsed are that head, whatever follows.
#[derive(Debug, Default)]
pub struct Responses {
    /// The last head parsed (`None` before the first)...
    head: Option<Head>,
    /// ...and its bytes.
    bytes: Vec<u8>,
}

impl Responses {
    /// As [`parse_response`].
    pub fn parse(&mut self, buf: &[u8], eof: bool) -> Result<Option<(Head, usize)>, HttpError> {
        if let Some(head) = self.head {
            if buf.starts_with(&self.bytes) {
                return with_body(head, buf, eof);
            }
        }
        let Some(head) = parse_head(buf)? else {
            return Ok(None);
        };
        self.head = Some(head);
        self.bytes.clear();
        self.bytes.extend_from_slice(&buf[..head.head_len]);
        with_body(head, buf, eof)
    }
}

/// `count` pipelined `GET` requests for `path` on `host`.
pub fn requests(host: &str, path: &str, count: usize) -> Vec<u8> {
    let one =
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: multiclient-bench\r\n\r\n");
    one.repeat(count.max(1)).into_bytes()
}

/// One `GET` for `path` on `host` asking the server to close after its response
/// (`Connection: close`): the request of a run with a new connection per request.
pub fn request_closing(host: &str, path: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: multiclient-bench\r\nConnection: close\r\n\r\n"
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &[u8] =
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello";

    #[test]
    fn content_length_frames_pipelined_responses() {
        let mut buf = OK.to_vec();
        buf.extend_from_slice(OK);
        let (h, n) = parse_response(&buf, false).unwrap().unwrap();
        assert_eq!(h.status, 200);
        assert!(!h.close);
        assert_eq!(&buf[h.head_len..n], b"hello");
        let (_, m) = parse_response(&buf[n..], false).unwrap().unwrap();
        assert_eq!(n + m, buf.len());
    }

    #[test]
    fn a_repeated_head_frames_as_parsing_it_again_would() {
        // Each response of a pipelined stream, its head the same as the one before
        // or differing in one byte of its length, a field or its status, read in
        // every split: the cache gives what a fresh parse gives.
        let stream: Vec<u8> = [
            &b"HTTP/1.1 200 OK\r\nDate: 1\r\nContent-Length: 5\r\n\r\nhello"[..],
            b"HTTP/1.1 200 OK\r\nDate: 1\r\nContent-Length: 5\r\n\r\nworld",
            b"HTTP/1.1 200 OK\r\nDate: 1\r\nContent-Length: 50\r\n\r\n",
            &[b'x'; 50],
            b"HTTP/1.1 200 OK\r\nDate: 2\r\nContent-Length: 5\r\n\r\nagain",
            b"HTTP/1.1 204 OK\r\nDate: 2\r\nContent-Length: 5\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nDate: 2\r\nContent-Length: 5\r\nConnection: close\r\n\r\nlast!",
        ]
        .concat();
        let fresh = |mut at: usize| {
            let mut all = Vec::new();
            while let Some((head, len)) = parse_response(&stream[at..], false).unwrap() {
                all.push((head, len));
                at += len;
            }
            all
        };
        let want = fresh(0);
        assert_eq!(want.len(), 6);
        assert_eq!(want[2].0.framing, Framing::Length(50));
        assert_eq!(want[4].0.framing, Framing::Length(0));
        assert!(want[5].0.close);
        for split in 0..stream.len() {
            let mut cache = Responses::default();
            let mut got = Vec::new();
            let (mut at, mut have) = (0, split);
            loop {
                match cache.parse(&stream[at..have], false).unwrap() {
                    Some((head, len)) => {
                        got.push((head, len));
                        at += len;
                    }
                    None if have < stream.len() => have = stream.len(),
                    None => break,
                }
            }
            assert_eq!(got, want, "split at {split}");
        }
    }

    #[test]
    fn partial_head_and_partial_body_need_more() {
        assert_eq!(parse_response(&OK[..20], false), Ok(None));
        assert_eq!(parse_response(&OK[..OK.len() - 1], false), Ok(None));
    }

    #[test]
    fn close_delimited_body_ends_at_eof() {
        let r = b"HTTP/1.0 200 OK\r\n\r\nabc";
        assert_eq!(parse_response(r, false), Ok(None));
        let (h, n) = parse_response(r, true).unwrap().unwrap();
        assert!(h.close);
        assert_eq!(h.framing, Framing::UntilClose);
        assert_eq!(n, r.len());
    }

    #[test]
    fn connection_close_and_http10_keepalive() {
        let r = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
        assert!(parse_head(r).unwrap().unwrap().close);
        let r = b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n";
        assert!(!parse_head(r).unwrap().unwrap().close);
        let r = b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n";
        assert!(parse_head(r).unwrap().unwrap().close);
    }

    #[test]
    fn bad_responses_are_errors() {
        assert!(matches!(
            parse_head(b"SSH-2.0-OpenSSH\r\n\r\n"),
            Err(HttpError::Malformed(_))
        ));
        assert!(matches!(
            parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"),
            Err(HttpError::Malformed(_))
        ));
        assert!(matches!(
            parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            Err(HttpError::Malformed(_))
        ));
        assert_eq!(
            parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(HttpError::Unsupported("Transfer-Encoding"))
        );
        let big = vec![b'a'; MAX_HEAD + 1];
        let mut r = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        r.extend_from_slice(&big);
        assert_eq!(parse_head(&r), Err(HttpError::TooLarge(MAX_HEAD)));
    }

    #[test]
    fn no_body_for_204_and_304() {
        let r = b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n";
        let (h, n) = parse_response(r, false).unwrap().unwrap();
        assert_eq!(h.framing, Framing::Length(0));
        assert_eq!(n, r.len());
    }

    #[test]
    fn pipelined_requests_repeat() {
        let r = requests("127.0.0.1:8080", "/", 3);
        let s = String::from_utf8(r).unwrap();
        assert_eq!(s.matches("GET / HTTP/1.1\r\n").count(), 3);
        assert!(s.ends_with("\r\n\r\n"));
    }
}
