//! Responses: the status line and header fields every answer carries, in the order
//! and spelling the tests and clients read (RFC 9112 §4, §6).

use std::borrow::Cow;
use std::io::Write as _;
use std::time::Instant;

use super::date;

/// The `Server` header.
const SERVER: &str = concat!("multiclient/", env!("CARGO_PKG_VERSION"));

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

/// Appends `resp` to `out`: head, then the body unless `head_only` (HEAD).
pub(super) fn response(
    out: &mut Vec<u8>,
    resp: &Response,
    now: Instant,
    persist: Persist,
    head_only: bool,
) {
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\nServer: {SERVER}\r\nDate: ",
        resp.status,
        reason(resp.status)
    );
    date::append(out, now);
    let _ = write!(
        out,
        "\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
        resp.content_type,
        resp.body.len()
    );
    for (k, v) in &resp.headers {
        let _ = write!(out, "{k}: {v}\r\n");
    }
    out.extend_from_slice(match persist {
        Persist::Close => b"Connection: close\r\n\r\n".as_slice(),
        Persist::KeepAlive => b"Connection: keep-alive\r\n\r\n",
        Persist::Implied => b"\r\n",
    });
    if !head_only {
        out.extend_from_slice(&resp.body);
    }
}
