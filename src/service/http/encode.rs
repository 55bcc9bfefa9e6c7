//! Responses: the status line and header fields every answer carries, in the order
//! and spelling the tests and clients read (RFC 9112 §4, §6).

use std::borrow::Cow;
use std::time::Instant;

use super::date;

/// A response an [`App`] returns.
#[derive(Debug, Clone)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// `Content-Type` of the body.
    pub content_type: &'static str,
    /// Extra headers.
    pub headers: Vec<(&'static str, Cow<'static, str>)>,
    /// The body (left out for HEAD).
    pub body: Cow<'static, [u8]>,
    /// Close the connection after this response.
    pub close: bool,
}

impl Response {
    /// A `text/plain` response.
    pub fn text(status: u16, body: impl Into<Cow<'static, str>>) -> Response {
        let body = match body.into() {
            Cow::Borrowed(s) => Cow::Borrowed(s.as_bytes()),
            Cow::Owned(s) => Cow::Owned(s.into_bytes()),
        };
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            headers: Vec::new(),
            body,
            close: false,
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: &'static str, value: impl Into<Cow<'static, str>>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// Closes the connection after this response.
    pub fn close(mut self) -> Self {
        self.close = true;
        self
    }
}

/// The reason phrase of the statuses we send.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// What the `Connection` header of a response says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Persist {
    /// `Connection: close`: the connection ends after this response.
    Close,
    /// `Connection: keep-alive`: HTTP/1.0 persistence, which must be confirmed.
    KeepAlive,
    /// No header: HTTP/1.1 persists by default.
    Implied,
}

/// The `Connection` line and the blank line that end a head.
fn head_end(persist: Persist) -> &'static [u8] {
    match persist {
        Persist::Close => b"Connection: close\r\n\r\n",
        Persist::KeepAlive => b"Connection: keep-alive\r\n\r\n",
        Persist::Implied => b"\r\n",
    }
}

/// The head of `resp` up to its `Date` value: status line, `Date: `. There is no
/// `Server` header: naming the software and its version helps an attacker pick an
/// exploit and tells a client nothing it needs (hyper and Go's `net/http` send none
/// either), and it was a fifth of the hello response's head.
fn head_to_date(out: &mut Vec<u8>, resp: &Response) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa::Buffer::new().format(resp.status).as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason(resp.status).as_bytes());
    out.extend_from_slice(b"\r\nDate: ");
}

/// The head of `resp` after its `Date` value, up to (not including) the `Connection`
/// line: `Content-Type`, `Content-Length`, the extra headers.
fn head_after_date(out: &mut Vec<u8>, resp: &Response) {
    out.extend_from_slice(b"\r\nContent-Type: ");
    out.extend_from_slice(resp.content_type.as_bytes());
    out.extend_from_slice(b"\r\nContent-Length: ");
    out.extend_from_slice(itoa::Buffer::new().format(resp.body.len()).as_bytes());
    out.extend_from_slice(b"\r\n");
    for (k, v) in &resp.headers {
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// Appends `resp` to `out`: head, then the body unless `head_only` (HEAD).
pub(super) fn response(
    out: &mut Vec<u8>,
    resp: &Response,
    now: Instant,
    persist: Persist,
    head_only: bool,
) {
    head_to_date(out, resp);
    date::append(out, now);
    head_after_date(out, resp);
    out.extend_from_slice(head_end(persist));
    if !head_only {
        out.extend_from_slice(&resp.body);
    }
}

/// A response encoded once, for an app that answers the same bytes to every request
/// (the seed's hello): per request it costs one copy and the `Date` spliced in, where
/// [`response`] writes each field (about 1,500 instructions of the 6,200 a keep-alive
/// request cost before, measured with `bench/callgrind-http.sh`). The bytes are
/// [`response`]'s own, so the two cannot drift apart.
#[derive(Debug)]
pub struct Prebuilt {
    /// What it was built from (also written the slow way when a date is not the
    /// usual 29 bytes, past the year 9999).
    resp: Response,
    /// The response as [`response`] writes it for an HTTP/1.1 keep-alive request,
    /// with a placeholder date.
    bytes: Box<[u8]>,
    /// Where the date goes in `bytes`.
    date_at: usize,
    /// Where the blank line (the `Connection` line, if any, then `\r\n`) starts.
    end_at: usize,
}

impl Prebuilt {
    /// `resp`, encoded once.
    pub fn new(resp: Response) -> Prebuilt {
        let mut bytes = Vec::new();
        head_to_date(&mut bytes, &resp);
        let date_at = bytes.len();
        bytes.extend_from_slice(&[b'?'; date::DATE_LEN]);
        head_after_date(&mut bytes, &resp);
        let end_at = bytes.len();
        bytes.extend_from_slice(head_end(Persist::Implied));
        bytes.extend_from_slice(&resp.body);
        Prebuilt {
            resp,
            bytes: bytes.into_boxed_slice(),
            date_at,
            end_at,
        }
    }

    /// The response it sends.
    pub fn response(&self) -> &Response {
        &self.resp
    }
}

/// Appends `pre` to `out` as [`response`] would its [`Response`].
pub(super) fn prebuilt(
    out: &mut Vec<u8>,
    pre: &Prebuilt,
    now: Instant,
    persist: Persist,
    head_only: bool,
) {
    let start = out.len();
    if persist == Persist::Implied && !head_only {
        out.extend_from_slice(&pre.bytes);
    } else {
        out.extend_from_slice(&pre.bytes[..pre.end_at]);
        out.extend_from_slice(head_end(persist));
        if !head_only {
            out.extend_from_slice(&pre.resp.body);
        }
    }
    let at = start + pre.date_at;
    if !date::imf_into(now, &mut out[at..at + date::DATE_LEN]) {
        // A date the cache does not hold (see `date::imf`): the head is built afresh.
        out.truncate(start);
        response(out, &pre.resp, now, persist, head_only);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;
    use std::time::Duration;

    /// The head and body as they were written with `core::fmt` before [`response`]
    /// copied each field itself: the reference both encoders must match.
    fn formatted(resp: &Response, now: Instant, persist: Persist, head_only: bool) -> Vec<u8> {
        let mut out = Vec::new();
        let _ = write!(
            out,
            "HTTP/1.1 {} {}\r\nDate: ",
            resp.status,
            reason(resp.status)
        );
        let wall = httpdate::fmt_http_date(date_wall(now));
        out.extend_from_slice(wall.as_bytes());
        let _ = write!(
            out,
            "\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
            resp.content_type,
            resp.body.len()
        );
        for (k, v) in &resp.headers {
            let _ = write!(out, "{k}: {v}\r\n");
        }
        out.extend_from_slice(head_end(persist));
        if !head_only {
            out.extend_from_slice(&resp.body);
        }
        out
    }

    /// The wall time `date` gives `now`, read back from its own output.
    fn date_wall(now: Instant) -> std::time::SystemTime {
        let mut d = Vec::new();
        date::append(&mut d, now);
        httpdate::parse_http_date(std::str::from_utf8(&d).unwrap()).unwrap()
    }

    fn responses() -> Vec<Response> {
        vec![
            Response::text(200, super::super::HELLO),
            Response::text(404, "not found\n"),
            Response::text(204, ""),
            Response::text(503, "server busy\n")
                .header("Retry-After", "1")
                .close(),
            Response::text(405, String::from("method not allowed\n"))
                .header("Allow", "GET, HEAD")
                .header("X-Long", "v".repeat(300)),
            Response::text(200, "x".repeat(70_000)),
        ]
    }

    #[test]
    fn the_response_is_the_formatted_one_and_so_is_the_prebuilt_for_every_date() {
        let t0 = Instant::now();
        let persists = [Persist::Implied, Persist::KeepAlive, Persist::Close];
        for resp in responses() {
            let pre = Prebuilt::new(resp.clone());
            // Across a second, a minute, an hour, a day and a month.
            for step in [
                0u64,
                1,
                999,
                1_000,
                59_999,
                3_600_000,
                86_400_000,
                30 * 86_400_000,
            ] {
                let now = t0 + Duration::from_millis(step);
                for persist in persists {
                    for head_only in [false, true] {
                        let want = formatted(&resp, now, persist, head_only);
                        let mut slow = b"earlier bytes".to_vec();
                        response(&mut slow, &resp, now, persist, head_only);
                        assert_eq!(&slow[13..], &want[..], "{} {persist:?}", resp.status);
                        let mut fast = b"earlier bytes".to_vec();
                        prebuilt(&mut fast, &pre, now, persist, head_only);
                        assert_eq!(fast, slow, "{} {persist:?} {head_only}", resp.status);
                    }
                }
            }
        }
    }
}
