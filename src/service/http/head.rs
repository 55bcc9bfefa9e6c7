//! Request heads: the request line and header fields as httparse reads them, and what
//! they decide before a byte of the body is read: persistence, body framing, the
//! fields that must appear once, the target in origin form (RFC 9112 §2-§3, §6, §9.3).

use super::decode::Body;
use super::error::FramingError;

/// The request methods we name; others are `Other` and get 405 (or 400 if they are
/// not tokens, which httparse already refuses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET
    Get,
    /// HEAD: a GET without the body.
    Head,
    /// POST
    Post,
    /// PUT
    Put,
    /// DELETE
    Delete,
    /// OPTIONS
    Options,
    /// Anything else.
    Other,
}

impl Method {
    pub(super) fn parse(s: &str) -> Method {
        match s {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "OPTIONS" => Method::Options,
            _ => Method::Other,
        }
    }

    /// The method as written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Options => "OPTIONS",
            Method::Other => "?",
        }
    }
}

/// A parsed request, borrowed from the input.
#[derive(Debug)]
pub struct Request<'a> {
    /// The method.
    pub method: Method,
    /// The path, without the query.
    pub path: &'a str,
    /// The query, after `?`.
    pub query: Option<&'a str>,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    /// The headers as sent.
    pub headers: &'a [httparse::Header<'a>],
    /// The body, decoded (chunked framing removed).
    pub body: &'a [u8],
}

impl<'a> Request<'a> {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }

    /// Whether any `name` header holds the comma-separated `token` (case-insensitive).
    pub fn header_has_token(&self, name: &str, token: &str) -> bool {
        has_token(self.headers, name, token)
    }
}

pub(super) fn has_token(headers: &[httparse::Header<'_>], name: &str, token: &str) -> bool {
    headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case(name)
            && tokens(h.value).any(|t| t.eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// Facts about a request head that decide framing and persistence.
pub(super) struct Framing {
    /// The connection persists after the answer.
    pub(super) keep_alive: bool,
    /// How the body is framed; `None`: no body.
    pub(super) body: Option<Body>,
    /// The client waits for `100 Continue` before sending the body.
    pub(super) expect_continue: bool,
}

/// Decides persistence and body framing (RFC 9112 §6, §9.3), in one pass over the
/// fields: each name is compared only with the names of its length.
pub(super) fn framing(
    req: &httparse::Request<'_, '_>,
    max_body: usize,
) -> Result<Framing, FramingError> {
    let v = req.version.unwrap_or(1);
    let (mut hosts, mut authorizations) = (0usize, 0usize);
    let (mut close, mut keep_alive, mut expect_continue) = (false, false, false);
    let mut length: Option<usize> = None;
    let mut chunked = false;
    // The first refusal of a `Content-Length` or `Transfer-Encoding` field, in field
    // order; it counts after the `Host` and `Authorization` checks, whatever the order
    // of the fields.
    let mut refused: Option<FramingError> = None;
    for hd in req.headers.iter() {
        let name = hd.name.as_bytes();
        match name.len() {
            4 if name.eq_ignore_ascii_case(b"host") => hosts += 1,
            6 if name.eq_ignore_ascii_case(b"expect") => {
                expect_continue |=
                    tokens(hd.value).any(|t| t.eq_ignore_ascii_case(b"100-continue"));
            }
            10 if name.eq_ignore_ascii_case(b"connection") => {
                for t in tokens(hd.value) {
                    close |= t.eq_ignore_ascii_case(b"close");
                    keep_alive |= t.eq_ignore_ascii_case(b"keep-alive");
                }
            }
            13 if name.eq_ignore_ascii_case(b"authorization") => authorizations += 1,
            14 if refused.is_none() && name.eq_ignore_ascii_case(b"content-length") => {
                match content_length(hd.value) {
                    Err(e) => refused = Some(e),
                    Ok(n) if length.is_some_and(|l| l != n) => {
                        refused = Some(FramingError::ConflictingContentLength)
                    }
                    Ok(n) => length = Some(n),
                }
            }
            17 if refused.is_none() && name.eq_ignore_ascii_case(b"transfer-encoding") => {
                if v == 0 {
                    refused = Some(FramingError::TransferEncodingInHttp10);
                } else if !hd.value.trim_ascii().eq_ignore_ascii_case(b"chunked") || chunked {
                    // Only `chunked` alone is a coding we decode.
                    refused = Some(FramingError::UnsupportedTransferEncoding);
                } else {
                    chunked = true;
                }
            }
            _ => {}
        }
    }
    // Fields that must appear once (RFC 9112 §3.2; RFC 9110 §5.3: a second
    // `Authorization` would leave open which credentials count).
    match hosts {
        0 if v >= 1 => return Err(FramingError::MissingHost),
        0 | 1 => {}
        _ => return Err(FramingError::DuplicateHost),
    }
    if authorizations > 1 {
        return Err(FramingError::DuplicateAuthorization);
    }
    if let Some(e) = refused {
        return Err(e);
    }
    if chunked && length.is_some() {
        return Err(FramingError::LengthAndChunked);
    }
    let body = match (chunked, length) {
        (true, _) => Some(Body::ChunkSize),
        (false, Some(n)) if n > max_body => return Err(FramingError::BodyTooLarge),
        (false, Some(0)) | (false, None) => None,
        (false, Some(n)) => Some(Body::Length(n)),
    };
    Ok(Framing {
        keep_alive: if v >= 1 { !close } else { keep_alive },
        body,
        expect_continue: v >= 1 && expect_continue,
    })
}

/// A `Content-Length` value: decimal digits, optional whitespace around them.
fn content_length(value: &[u8]) -> Result<usize, FramingError> {
    let s = std::str::from_utf8(value).map_err(|_| FramingError::BadContentLength)?;
    let s = s.trim();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(FramingError::BadContentLength);
    }
    // A length beyond usize is surely beyond --max-body.
    Ok(s.parse::<usize>().unwrap_or(usize::MAX))
}

/// The comma-separated tokens of a field value, without the whitespace around them.
fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(<[u8]>::trim_ascii)
}

/// The request as an app sees it: the target in origin form, split at its query.
pub(super) fn request<'a, 'b: 'a>(
    raw: &'a httparse::Request<'_, 'b>,
    body: &'a [u8],
) -> Request<'a> {
    let (path, query) = split_target(raw.path.unwrap_or("/"));
    Request {
        method: Method::parse(raw.method.unwrap_or("")),
        path,
        query,
        version: raw.version.unwrap_or(1),
        headers: raw.headers,
        body,
    }
}

/// A request target as a path and a query. The absolute form a client sends to a
/// proxy (`http://host/path?q`, RFC 9112 §3.2.2) is served like its path.
pub(super) fn split_target(target: &str) -> (&str, Option<&str>) {
    // A byte search: `str::split_once` sets up a searcher costing more than the
    // usual short target.
    let (target, query) = match target.bytes().position(|b| b == b'?') {
        Some(i) => (&target[..i], Some(&target[i + 1..])),
        None => (target, None),
    };
    let b = target.as_bytes();
    let after_scheme = if b.len() >= 7 && b[..7].eq_ignore_ascii_case(b"http://") {
        7
    } else if b.len() >= 8 && b[..8].eq_ignore_ascii_case(b"https://") {
        8
    } else {
        return (target, query);
    };
    let rest = &target[after_scheme..];
    match rest.find('/') {
        Some(i) => (&rest[i..], query),
        None => ("/", query),
    }
}

/// How many bytes of empty lines (`\r\n` or `\n`) `buf` starts with.
pub(super) fn empty_lines(buf: &[u8]) -> usize {
    let mut i = 0;
    loop {
        if buf[i..].starts_with(b"\r\n") {
            i += 2;
        } else if buf[i..].starts_with(b"\n") {
            i += 1;
        } else {
            return i;
        }
    }
}

/// Where the head ends (just after its blank line), if it does.
pub(super) fn find_head_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while let Some(off) = buf[i..].iter().position(|&b| b == b'\n') {
        let nl = i + off;
        let next = &buf[nl + 1..];
        if next.starts_with(b"\n") {
            return Some(nl + 2);
        }
        if next.starts_with(b"\r\n") {
            return Some(nl + 3);
        }
        i = nl + 1;
    }
    None
}

/// Whether the request line ends in a well-formed `HTTP/x.y` we do not serve.
pub(super) fn looks_like_http_version(head: &[u8]) -> bool {
    let line_end = head
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .unwrap_or(head.len());
    let line = &head[..line_end];
    let Some(sp) = line.iter().rposition(|&b| b == b' ') else {
        return false;
    };
    let v = &line[sp + 1..];
    v.len() == 8
        && v.starts_with(b"HTTP/")
        && v[5].is_ascii_digit()
        && v[6] == b'.'
        && v[7].is_ascii_digit()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The framing decision as it was made before [`framing`] took one pass: each rule
    /// over all the fields in turn. Kept to check that the two agree.
    fn framing_by_rule(
        req: &httparse::Request<'_, '_>,
        max_body: usize,
    ) -> Result<Framing, FramingError> {
        let v = req.version.unwrap_or(1);
        let h = &*req.headers;
        let keep_alive = if v >= 1 {
            !has_token(h, "connection", "close")
        } else {
            has_token(h, "connection", "keep-alive")
        };
        let count = |name: &str| {
            h.iter()
                .filter(|hd| hd.name.eq_ignore_ascii_case(name))
                .count()
        };
        match count("host") {
            0 if v >= 1 => return Err(FramingError::MissingHost),
            0 | 1 => {}
            _ => return Err(FramingError::DuplicateHost),
        }
        if count("authorization") > 1 {
            return Err(FramingError::DuplicateAuthorization);
        }
        let mut length: Option<usize> = None;
        let mut chunked = false;
        for hd in h.iter() {
            if hd.name.eq_ignore_ascii_case("content-length") {
                let n = content_length(hd.value)?;
                if length.is_some_and(|l| l != n) {
                    return Err(FramingError::ConflictingContentLength);
                }
                length = Some(n);
            } else if hd.name.eq_ignore_ascii_case("transfer-encoding") {
                if v == 0 {
                    return Err(FramingError::TransferEncodingInHttp10);
                }
                if !hd.value.trim_ascii().eq_ignore_ascii_case(b"chunked") || chunked {
                    return Err(FramingError::UnsupportedTransferEncoding);
                }
                chunked = true;
            }
        }
        if chunked && length.is_some() {
            return Err(FramingError::LengthAndChunked);
        }
        let body = match (chunked, length) {
            (true, _) => Some(Body::ChunkSize),
            (false, Some(n)) if n > max_body => return Err(FramingError::BodyTooLarge),
            (false, Some(0)) | (false, None) => None,
            (false, Some(n)) => Some(Body::Length(n)),
        };
        Ok(Framing {
            keep_alive,
            body,
            expect_continue: v >= 1 && has_token(h, "expect", "100-continue"),
        })
    }

    /// A field of the kinds that decide framing, spelled in assorted cases, with
    /// values valid and not.
    fn field() -> impl Strategy<Value = (String, String)> {
        let names = prop::sample::select(vec![
            "Host",
            "host",
            "HOST",
            "Authorization",
            "Content-Length",
            "content-length",
            "Transfer-Encoding",
            "Connection",
            "connection",
            "Expect",
            "X-Other",
            "Hostx",
        ]);
        let values = prop::sample::select(vec![
            "5",
            " 5 ",
            "05",
            "7",
            "0",
            "",
            "abc",
            "-1",
            "99999999999999999999999",
            "chunked",
            " Chunked ",
            "gzip, chunked",
            "close",
            "keep-alive",
            "Keep-Alive, Upgrade",
            "upgrade, close",
            "100-continue",
            "x, 100-Continue",
        ]);
        (names, values).prop_map(|(n, v)| (n.to_string(), v.to_string()))
    }

    proptest! {
        #[test]
        fn framing_in_one_pass_decides_as_each_rule_in_turn(
            minor in 0u8..2,
            fields in prop::collection::vec(field(), 0..7),
        ) {
            let mut head = format!("POST / HTTP/1.{minor}\r\n");
            for (n, v) in &fields {
                head.push_str(&format!("{n}: {v}\r\n"));
            }
            head.push_str("\r\n");
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let mut req = httparse::Request::new(&mut headers);
            prop_assert!(req.parse(head.as_bytes()).unwrap().is_complete());
            let summary = |f: Result<Framing, FramingError>| {
                f.map(|f| (f.keep_alive, f.body, f.expect_continue))
            };
            prop_assert_eq!(summary(framing(&req, 6)), summary(framing_by_rule(&req, 6)), "{}", head);
        }
    }
}
