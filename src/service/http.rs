//! `http` (seed 003, the threaded Flask app): HTTP/1.1 as a sans-IO state machine on
//! httparse.
//!
//! `GET /` answers `200 text/plain` `Hello from Multi-threaded Flask Server!`, `HEAD /`
//! the same headers, and `GET /ws` upgrades into the WebSocket engine of [`super::ws`]
//! so a page served by us can open a socket to us. Connections persist as HTTP/1.1
//! says (HTTP/1.0 only with `Connection: keep-alive`), pipelined requests are answered
//! in order, and a request body is always consumed (`Content-Length` or chunked) or
//! refused with the connection closed, so the stream never falls out of step.
//!
//! Errors: 400 malformed, 404 unknown path, 405 with `Allow`, 408 when a request head
//! is not complete within `--header-timeout` of its first byte (slowloris) or its body
//! within `--body-timeout` of its head (a slow body, as nginx's `client_body_timeout`
//! and Apache's `mod_reqtimeout` bound it), 413 body over `--max-body`, 431 head over 16 KiB or 64 headers, 505 other HTTP versions,
//! 503 with `Retry-After` for a client refused at `--max-conns` (a refused WebSocket
//! upgrade completes and is closed 1013 instead, which browser code can read).
//!
//! What a path does is the [`App`]'s business: a route table (for 404 and 405) and a
//! handler that answers or upgrades. [`Hello`] is the seed's app; the standalone `ws`
//! service is an app where every path upgrades; the chat adds its routes the same way.

use std::borrow::Cow;
use std::io::Write as _;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use super::ws::{self, Echo, Handler, WsConn, WsOptions};
use super::{ConnInfo, Cx, Goodbye, Service, Session};

/// The seed's body.
pub const HELLO: &str = "Hello from Multi-threaded Flask Server!";
/// Largest request head (request line and headers).
pub const MAX_HEAD: usize = 16 * 1024;
/// Most header lines in a request.
pub const MAX_HEADERS: usize = 64;
/// Longest chunk-size line of a chunked body.
const MAX_CHUNK_LINE: usize = 1024;
/// Largest buffer kept between requests; a larger one is freed.
const KEEP_CAPACITY: usize = 16 * 1024;
/// At shutdown, a keep-alive client answered less than this long ago is probably about
/// to send its next request (a client in a loop sends it within a round trip): the
/// connection waits for it until this long after that answer and answers it with
/// `Connection: close`, instead of closing under a request already on its way. A
/// client quiet for longer is closed at once, so a shutdown waits at most this long
/// for keep-alive connections.
const LAST_CALL: Duration = Duration::from_secs(1);
/// The `Server` header.
const SERVER: &str = concat!("multiclient/", env!("CARGO_PKG_VERSION"));

/// HTTP settings, shared by every connection of a listener.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// A request head must be complete this long after its first byte (else 408).
    pub header_timeout: Duration,
    /// A request body must be complete this long after its head (else 408): bytes
    /// that keep trickling in would otherwise hold a connection past the idle timeout.
    pub body_timeout: Duration,
    /// Largest request body accepted (else 413).
    pub max_body: usize,
    /// Settings of upgraded WebSocket connections.
    pub ws: Arc<WsOptions>,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_body: 1 << 20,
            ws: Arc::new(WsOptions::default()),
        }
    }
}

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
    fn parse(s: &str) -> Method {
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

fn has_token(headers: &[httparse::Header<'_>], name: &str, token: &str) -> bool {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(name))
        .flat_map(|h| h.value.split(|&b| b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

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

/// One entry of an app's route table: a path and the methods it answers. A `*`
/// segment matches any one segment (`/rooms/*/messages`); the path `*` matches all.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    /// The path pattern.
    pub path: &'static str,
    /// The methods answered there (HEAD is implied by GET).
    pub methods: &'static [Method],
}

impl Route {
    /// A route answering GET (and so HEAD) at `path`.
    pub const fn get(path: &'static str) -> Route {
        Route {
            path,
            methods: &[Method::Get],
        }
    }

    /// A route answering POST at `path`.
    pub const fn post(path: &'static str) -> Route {
        Route {
            path,
            methods: &[Method::Post],
        }
    }

    /// Whether `path` matches this route's pattern.
    pub fn matches(&self, path: &str) -> bool {
        if self.path == "*" {
            return true;
        }
        let mut want = self.path.split('/');
        let mut got = path.split('/');
        loop {
            match (want.next(), got.next()) {
                (None, None) => return true,
                (Some(w), Some(g)) if w == g || (w == "*" && !g.is_empty()) => {}
                _ => return false,
            }
        }
    }

    fn allows(&self, m: Method) -> bool {
        self.methods.contains(&m) || (m == Method::Head && self.methods.contains(&Method::Get))
    }

    fn allow_header(&self) -> String {
        let mut s = String::new();
        for m in self.methods {
            if !s.is_empty() {
                s.push_str(", ");
            }
            s.push_str(m.as_str());
            if *m == Method::Get && !self.methods.contains(&Method::Head) {
                s.push_str(", HEAD");
            }
        }
        s
    }
}

/// What a handler does with a request.
pub enum Reply<H> {
    /// Answer it.
    Respond(Response),
    /// Upgrade to a WebSocket run by this handler (the handshake is checked first).
    Upgrade(H),
}

/// An HTTP application: a route table and a handler. The session answers 404 and 405
/// from the table, so `handle` only sees requests to a route with an allowed method.
pub trait App: Send + Sync + 'static {
    /// The WebSocket handler of upgraded connections (its `Event` is the session's).
    type Ws: Handler;

    /// The routes, first match wins.
    fn routes(&self) -> &[Route];

    /// Answers a routed request.
    fn handle(
        &self,
        req: &Request<'_>,
        cx: &mut Cx<'_, <Self::Ws as Handler>::Event>,
    ) -> Reply<Self::Ws>;

    /// Looks at a routed request's head before its body is read, when the client
    /// waits for `100 Continue` (RFC 9110 §10.1.1): a response returned here is sent
    /// instead (a 401, say), the body is never read and the connection closes. The
    /// default lets every body come.
    fn precheck(&self, req: &Request<'_>) -> Option<Response> {
        let _ = req;
        None
    }
}

/// The seed's app: `/` says hello, `/ws` is the echo WebSocket.
#[derive(Debug, Clone, Default)]
pub struct Hello {
    /// `--echo`: the WebSocket at `/ws` answers with exactly the message.
    pub echo: bool,
}

const HELLO_ROUTES: &[Route] = &[Route::get("/"), Route::get("/ws")];

impl App for Hello {
    type Ws = Echo;

    fn routes(&self) -> &[Route] {
        HELLO_ROUTES
    }

    fn handle(&self, req: &Request<'_>, _cx: &mut Cx<'_, ()>) -> Reply<Echo> {
        if req.path == "/ws" {
            Reply::Upgrade(Echo { exact: self.echo })
        } else {
            Reply::Respond(Response::text(200, HELLO))
        }
    }
}

/// The HTTP service: [`Hello`] on the HTTP engine.
#[derive(Clone, Default)]
pub struct Http {
    app: Arc<Hello>,
    opts: Arc<HttpOptions>,
}

impl Http {
    /// A service with these options.
    pub fn new(opts: HttpOptions) -> Self {
        Http {
            app: Arc::new(Hello { echo: opts.ws.echo }),
            opts: Arc::new(opts),
        }
    }
}

impl Service for Http {
    type Session = HttpSession<Hello>;
    fn name(&self) -> &str {
        "http"
    }
    fn session(&self, _conn: &ConnInfo) -> HttpSession<Hello> {
        HttpSession::new(self.app.clone(), self.opts.clone())
    }
}

/// How the body of the request being read is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    /// `Content-Length`: bytes still to read.
    Length(usize),
    /// Chunked: reading a chunk-size line.
    ChunkSize,
    /// Chunked: bytes of the current chunk still to read.
    ChunkData(usize),
    /// Chunked: the CRLF after a chunk's data.
    ChunkEnd,
    /// Chunked: trailer lines until an empty one, with the bytes seen so far.
    Trailers(usize),
}

enum State<H: Handler> {
    /// Waiting for a request head.
    Head,
    /// Reading the body of the request whose head is in `head`.
    Body(Body),
    /// Upgraded.
    Ws(Box<WsConn<H>>),
    /// Answered with `Connection: close`; input is ignored.
    Closed,
}

/// Facts about a request head that decide framing and persistence.
struct Framing {
    keep_alive: bool,
    body: Option<Body>,
    expect_continue: bool,
}

/// One HTTP connection, possibly upgraded to a WebSocket.
pub struct HttpSession<A: App> {
    app: Arc<A>,
    opts: Arc<HttpOptions>,
    state: State<A::Ws>,
    /// When the request being read started, for the 408 timers: the first byte of an
    /// incomplete head, then the end of the head while its body is read.
    since: Option<Instant>,
    /// How much of the unconsumed input was searched for the end of the head.
    scanned: usize,
    /// The head of a request whose body is being read.
    head: Vec<u8>,
    /// The decoded body.
    body: Vec<u8>,
    keep_alive: bool,
    /// HTTP minor version of the request being answered.
    head_version: u8,
    /// Refused at `--max-conns`: the next request gets 503 (or 101 then 1013).
    busy: bool,
    /// Shutting down: the request in flight is answered with `Connection: close`.
    shutting: bool,
    /// When the last response was written, for the shutdown's [`LAST_CALL`].
    answered: Option<Instant>,
    date: DateCache,
}

impl<A: App> HttpSession<A> {
    /// A session of `app`.
    pub fn new(app: Arc<A>, opts: Arc<HttpOptions>) -> Self {
        HttpSession {
            app,
            opts,
            state: State::Head,
            since: None,
            scanned: 0,
            head: Vec::new(),
            body: Vec::new(),
            keep_alive: true,
            head_version: 1,
            busy: false,
            shutting: false,
            answered: None,
            date: DateCache::default(),
        }
    }

    /// Whether the connection was upgraded to a WebSocket.
    pub fn is_websocket(&self) -> bool {
        matches!(self.state, State::Ws(_))
    }

    fn error(
        &mut self,
        status: u16,
        why: &'static str,
        cx: &mut Cx<'_, <A::Ws as Handler>::Event>,
    ) {
        tracing::info!("HTTP {status}: {}", why.trim_end());
        let mut resp = Response::text(status, why).close();
        if status == 503 {
            resp = resp.header("Retry-After", "1");
        }
        self.write(&resp, false, cx);
    }

    /// Writes a response; closes after it if it says so, or the request did.
    fn write(
        &mut self,
        resp: &Response,
        head_only: bool,
        cx: &mut Cx<'_, <A::Ws as Handler>::Event>,
    ) {
        let close = resp.close || !self.keep_alive || self.shutting || self.busy;
        self.answered = Some(cx.now());
        let date = self.date.get(cx.now());
        let out = cx.out();
        let _ = write!(
            out,
            "HTTP/1.1 {} {}\r\nServer: {SERVER}\r\nDate: {date}\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
            resp.status,
            reason(resp.status),
            resp.content_type,
            resp.body.len()
        );
        for (k, v) in &resp.headers {
            let _ = write!(out, "{k}: {v}\r\n");
        }
        if close {
            out.extend_from_slice(b"Connection: close\r\n\r\n");
        } else if self.keep_alive_is_explicit() {
            out.extend_from_slice(b"Connection: keep-alive\r\n\r\n");
        } else {
            out.extend_from_slice(b"\r\n");
        }
        if !head_only {
            out.extend_from_slice(&resp.body);
        }
        if close {
            self.state = State::Closed;
            cx.close();
        }
    }

    /// HTTP/1.0 keep-alive must be confirmed in the response.
    fn keep_alive_is_explicit(&self) -> bool {
        self.head_version == 0
    }

    /// Looks for a complete head at the start of `input`. Returns the bytes used, or
    /// 0 to wait for more.
    fn read_head(&mut self, input: &[u8], cx: &mut Cx<'_, <A::Ws as Handler>::Event>) -> usize {
        // Empty lines before a request line are ignored (RFC 9112 §2.2); they stay in
        // the input until the head is complete, so they count against its limit.
        let lead = empty_lines(input);
        let from = self.scanned.saturating_sub(3).max(lead);
        let end = find_head_end(&input[from..]).map(|e| from + e);
        let Some(end) = end else {
            self.scanned = input.len();
            if input.len() > MAX_HEAD {
                self.error(431, "request head too large\n", cx);
                return input.len();
            }
            if self.since.is_none() && input.iter().any(|&b| b != b'\r' && b != b'\n') {
                self.since = Some(cx.now());
            }
            return 0;
        };
        if end > MAX_HEAD {
            self.error(431, "request head too large\n", cx);
            return input.len();
        }
        self.scanned = 0;
        self.since = None;
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&input[lead..end]) {
            Ok(httparse::Status::Complete(n)) => {
                let n = lead + n;
                let framing = match self.framing(&req) {
                    Ok(f) => f,
                    Err((status, why)) => {
                        self.error(status, why, cx);
                        return input.len();
                    }
                };
                self.keep_alive = framing.keep_alive;
                self.head_version = req.version.unwrap_or(1);
                match framing.body {
                    None => {
                        self.dispatch(&req, &[], cx);
                        n
                    }
                    Some(body) => {
                        if framing.expect_continue && !self.busy {
                            // The client waits before sending the body: a request that
                            // will be refused gets its final answer instead of `100`.
                            if let Some(resp) = self.refusal(&req) {
                                let head_only = req.method == Some("HEAD");
                                self.write(&resp.close(), head_only, cx);
                                return input.len();
                            }
                            cx.send(b"HTTP/1.1 100 Continue\r\n\r\n");
                        }
                        self.since = Some(cx.now());
                        self.head.clear();
                        self.head.extend_from_slice(&input[lead..n]);
                        self.body.clear();
                        self.state = State::Body(body);
                        n
                    }
                }
            }
            Ok(httparse::Status::Partial) => {
                // Only a stray blank-line pair was found: an empty request line.
                self.error(400, "malformed request\n", cx);
                input.len()
            }
            Err(httparse::Error::TooManyHeaders) => {
                self.error(431, "too many headers\n", cx);
                input.len()
            }
            Err(httparse::Error::Version) if looks_like_http_version(&input[lead..end]) => {
                self.error(505, "only HTTP/1.0 and HTTP/1.1 are served\n", cx);
                input.len()
            }
            Err(e) => {
                tracing::debug!("malformed request: {e}");
                self.error(400, "malformed request\n", cx);
                input.len()
            }
        }
    }

    /// Decides persistence and body framing (RFC 9112 §6, §9.3).
    fn framing(&self, req: &httparse::Request<'_, '_>) -> Result<Framing, (u16, &'static str)> {
        let v = req.version.unwrap_or(1);
        let h = &*req.headers;
        let keep_alive = if v >= 1 {
            !has_token(h, "connection", "close")
        } else {
            has_token(h, "connection", "keep-alive")
        };
        // Fields that must appear once (RFC 9112 §3.2; RFC 9110 §5.3: a second
        // `Authorization` would leave open which credentials count).
        let count = |name: &str| {
            h.iter()
                .filter(|hd| hd.name.eq_ignore_ascii_case(name))
                .count()
        };
        match count("host") {
            0 if v >= 1 => return Err((400, "missing Host\n")),
            0 | 1 => {}
            _ => return Err((400, "more than one Host\n")),
        }
        if count("authorization") > 1 {
            return Err((400, "more than one Authorization\n"));
        }
        let mut length: Option<usize> = None;
        let mut chunked = false;
        for hd in h.iter() {
            if hd.name.eq_ignore_ascii_case("content-length") {
                let s = std::str::from_utf8(hd.value).map_err(|_| (400, "bad Content-Length\n"))?;
                let s = s.trim();
                if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                    return Err((400, "bad Content-Length\n"));
                }
                // A length beyond usize is surely beyond --max-body.
                let n = s.parse::<usize>().unwrap_or(usize::MAX);
                if length.is_some_and(|l| l != n) {
                    return Err((400, "conflicting Content-Length\n"));
                }
                length = Some(n);
            } else if hd.name.eq_ignore_ascii_case("transfer-encoding") {
                if v == 0 {
                    return Err((400, "Transfer-Encoding in HTTP/1.0\n"));
                }
                // Only `chunked` alone is a coding we decode.
                if !hd.value.trim_ascii().eq_ignore_ascii_case(b"chunked") || chunked {
                    return Err((501, "unsupported Transfer-Encoding\n"));
                }
                chunked = true;
            }
        }
        if chunked && length.is_some() {
            return Err((400, "both Transfer-Encoding and Content-Length\n"));
        }
        let body = match (chunked, length) {
            (true, _) => Some(Body::ChunkSize),
            (false, Some(n)) if n > self.opts.max_body => return Err((413, "body too large\n")),
            (false, Some(0)) | (false, None) => None,
            (false, Some(n)) => Some(Body::Length(n)),
        };
        Ok(Framing {
            keep_alive,
            body,
            expect_continue: v >= 1 && has_token(h, "expect", "100-continue"),
        })
    }

    /// Reads body bytes; returns how many were used. Dispatches once complete.
    fn read_body(
        &mut self,
        mut body: Body,
        input: &[u8],
        cx: &mut Cx<'_, <A::Ws as Handler>::Event>,
    ) -> usize {
        let mut pos = 0;
        let done = loop {
            let rest = &input[pos..];
            match body {
                Body::Length(0) => break true,
                Body::Length(n) => {
                    let take = n.min(rest.len());
                    if take == 0 {
                        break false;
                    }
                    self.body.extend_from_slice(&rest[..take]);
                    pos += take;
                    body = Body::Length(n - take);
                }
                Body::ChunkSize => match httparse::parse_chunk_size(rest) {
                    Ok(httparse::Status::Complete((n, size))) => {
                        pos += n;
                        let size = usize::try_from(size).unwrap_or(usize::MAX);
                        if size > self.opts.max_body.saturating_sub(self.body.len()) {
                            self.error(413, "body too large\n", cx);
                            return input.len();
                        }
                        body = if size == 0 {
                            Body::Trailers(0)
                        } else {
                            Body::ChunkData(size)
                        };
                    }
                    Ok(httparse::Status::Partial) => {
                        if rest.len() > MAX_CHUNK_LINE {
                            self.error(400, "bad chunk size\n", cx);
                            return input.len();
                        }
                        break false;
                    }
                    Err(_) => {
                        self.error(400, "bad chunk size\n", cx);
                        return input.len();
                    }
                },
                Body::ChunkData(n) => {
                    let take = n.min(rest.len());
                    if take == 0 {
                        break false;
                    }
                    self.body.extend_from_slice(&rest[..take]);
                    pos += take;
                    body = if n == take {
                        Body::ChunkEnd
                    } else {
                        Body::ChunkData(n - take)
                    };
                }
                Body::ChunkEnd => {
                    if rest.starts_with(b"\r\n") {
                        pos += 2;
                        body = Body::ChunkSize;
                    } else if rest.starts_with(b"\n") {
                        pos += 1;
                        body = Body::ChunkSize;
                    } else if rest.is_empty() || rest == b"\r" {
                        break false;
                    } else {
                        self.error(400, "bad chunk framing\n", cx);
                        return input.len();
                    }
                }
                Body::Trailers(seen) => match rest.iter().position(|&b| b == b'\n') {
                    Some(i) => {
                        let line = &rest[..i];
                        pos += i + 1;
                        if line.is_empty() || line == b"\r" {
                            break true;
                        }
                        // Trailer fields are not used: counted against the limit, dropped.
                        if seen + i + 1 > MAX_HEAD {
                            self.error(431, "trailers too large\n", cx);
                            return input.len();
                        }
                        body = Body::Trailers(seen + i + 1);
                    }
                    None => {
                        if seen + rest.len() > MAX_HEAD {
                            self.error(431, "trailers too large\n", cx);
                            return input.len();
                        }
                        break false;
                    }
                },
            }
        };
        if !done {
            self.state = State::Body(body);
            return pos;
        }
        self.state = State::Head;
        self.since = None;
        let head = std::mem::take(&mut self.head);
        let body_bytes = std::mem::take(&mut self.body);
        {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut req = httparse::Request::new(&mut headers);
            // The head parsed once already; parsing it again cannot fail.
            if let Ok(httparse::Status::Complete(_)) = req.parse(&head) {
                self.dispatch(&req, &body_bytes, cx);
            } else {
                self.error(400, "malformed request\n", cx);
            }
        }
        self.head = head;
        self.head.clear();
        if self.head.capacity() > KEEP_CAPACITY {
            self.head = Vec::new();
        }
        self.body = body_bytes;
        self.body.clear();
        if self.body.capacity() > KEEP_CAPACITY {
            self.body = Vec::new();
        }
        pos
    }

    /// What the route table or the app's [`App::precheck`] answers a request before
    /// its body is read (404, 405, a 401...), if anything.
    fn refusal(&self, raw: &httparse::Request<'_, '_>) -> Option<Response> {
        let req = request(raw, &[]);
        let Some(route) = self.app.routes().iter().find(|r| r.matches(req.path)) else {
            return Some(Response::text(404, "not found\n"));
        };
        if !route.allows(req.method) {
            return Some(
                Response::text(405, "method not allowed\n").header("Allow", route.allow_header()),
            );
        }
        self.app.precheck(&req)
    }

    /// Routes a complete request and answers it (or upgrades).
    fn dispatch(
        &mut self,
        raw: &httparse::Request<'_, '_>,
        body: &[u8],
        cx: &mut Cx<'_, <A::Ws as Handler>::Event>,
    ) {
        let req = request(raw, body);
        let path = req.path;
        let head_only = req.method == Method::Head;
        let wants_upgrade = req.header_has_token("upgrade", "websocket");
        if self.busy && !wants_upgrade {
            self.error(503, "server busy, try again\n", cx);
            return;
        }
        let app = self.app.clone();
        let Some(route) = app.routes().iter().find(|r| r.matches(path)) else {
            self.write(&Response::text(404, "not found\n"), head_only, cx);
            return;
        };
        if !route.allows(req.method) {
            let resp =
                Response::text(405, "method not allowed\n").header("Allow", route.allow_header());
            self.write(&resp, head_only, cx);
            return;
        }
        match app.handle(&req, cx) {
            Reply::Respond(_) if self.busy => self.error(503, "server busy, try again\n", cx),
            Reply::Respond(resp) => self.write(&resp, head_only, cx),
            Reply::Upgrade(handler) => match ws::accept(&req) {
                Ok(key) => {
                    let _ = write!(
                        cx.out(),
                        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {key}\r\n\r\n"
                    );
                    let mut conn = Box::new(WsConn::new(handler, self.opts.ws.clone(), cx.now()));
                    conn.open(cx);
                    if self.busy {
                        conn.goodbye(Goodbye::Busy, cx);
                    } else if self.shutting {
                        conn.goodbye(Goodbye::Shutdown, cx);
                    }
                    self.state = State::Ws(conn);
                }
                Err(resp) => self.write(&resp, head_only, cx),
            },
        }
    }
}

impl<A: App> Session for HttpSession<A> {
    type Event = <A::Ws as Handler>::Event;

    fn read(&mut self, input: &[u8], cx: &mut Cx<'_, Self::Event>) -> usize {
        let mut pos = 0;
        loop {
            if cx.is_closing() {
                return input.len();
            }
            let rest = &input[pos..];
            match &mut self.state {
                State::Ws(conn) => return pos + conn.read(rest, cx),
                State::Closed => return input.len(),
                State::Head => {
                    if rest.is_empty() {
                        return pos;
                    }
                    let n = self.read_head(rest, cx);
                    if n == 0 {
                        return pos;
                    }
                    pos += n;
                }
                State::Body(body) => {
                    let body = *body;
                    let n = self.read_body(body, rest, cx);
                    pos += n;
                    if matches!(self.state, State::Body(_)) {
                        return pos;
                    }
                }
            }
        }
    }

    fn eof(&mut self, cx: &mut Cx<'_, Self::Event>) {
        // Answers are all written; an incomplete request cannot be answered.
        cx.close();
    }

    fn event(&mut self, event: Self::Event, cx: &mut Cx<'_, Self::Event>) {
        if let State::Ws(conn) = &mut self.state {
            conn.event(event, cx);
        }
    }

    fn deadline(&self) -> Option<Instant> {
        match &self.state {
            State::Ws(conn) => conn.deadline(),
            State::Head if self.shutting && self.since.is_none() => {
                self.answered.map(|t| t + LAST_CALL)
            }
            State::Head => self.since.map(|t| t + self.opts.header_timeout),
            State::Body(_) => self.since.map(|t| t + self.opts.body_timeout),
            _ => None,
        }
    }

    fn timeout(&mut self, cx: &mut Cx<'_, Self::Event>) {
        let late = |timeout| self.since.is_some_and(|t| cx.now() >= t + timeout);
        let head_late = late(self.opts.header_timeout);
        let body_late = late(self.opts.body_timeout);
        let last_call_over = self.answered.is_none_or(|t| cx.now() >= t + LAST_CALL);
        match &mut self.state {
            State::Head if self.shutting && self.since.is_none() && last_call_over => {
                cx.close();
            }
            State::Ws(conn) => conn.timeout(cx),
            State::Head if head_late => {
                self.error(408, "request head not received in time\n", cx);
            }
            State::Body(_) if body_late => {
                self.error(408, "request body not received in time\n", cx);
            }
            _ => {}
        }
    }

    fn goodbye(&mut self, why: Goodbye, cx: &mut Cx<'_, Self::Event>) {
        match &mut self.state {
            State::Ws(conn) => conn.goodbye(why, cx),
            State::Closed => cx.close(),
            State::Head if why == Goodbye::Busy && self.since.is_none() => {
                // Read the request first, so a WebSocket client can be told 1013
                // after its handshake; a plain request gets 503.
                self.busy = true;
            }
            State::Head if why == Goodbye::Idle && self.since.is_some() => {
                self.error(408, "request head not received in time\n", cx);
            }
            State::Body(_) if why == Goodbye::Shutdown => self.shutting = true,
            // Between requests: a client answered just now is likely sending its next
            // request already; that one is answered with `Connection: close`. (A head
            // partly read cannot be finished: the model drops unread input at goodbye.)
            State::Head
                if why == Goodbye::Shutdown
                    && self.since.is_none()
                    && self.answered.is_some_and(|t| cx.now() < t + LAST_CALL) =>
            {
                self.shutting = true;
            }
            _ => cx.close(),
        }
    }
}

/// The request as an app sees it: the target in origin form, split at its query.
fn request<'a, 'b: 'a>(raw: &'a httparse::Request<'_, 'b>, body: &'a [u8]) -> Request<'a> {
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
fn split_target(target: &str) -> (&str, Option<&str>) {
    let (target, query) = match target.split_once('?') {
        Some((t, q)) => (t, Some(q)),
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
fn empty_lines(buf: &[u8]) -> usize {
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
fn find_head_end(buf: &[u8]) -> Option<usize> {
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
fn looks_like_http_version(head: &[u8]) -> bool {
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

/// The `Date` header, formatted once per second. Wall time is derived from the
/// session clock (`cx.now()`) and one reading of the system clock taken at first use,
/// so tests that move the clock move the date.
#[derive(Default)]
struct DateCache {
    secs: u64,
    text: String,
}

impl DateCache {
    fn get(&mut self, now: Instant) -> &str {
        static ANCHOR: OnceLock<(Instant, SystemTime)> = OnceLock::new();
        let (i0, s0) = *ANCHOR.get_or_init(|| (Instant::now(), SystemTime::now()));
        let wall = if now >= i0 {
            s0 + (now - i0)
        } else {
            s0 - (i0 - now)
        };
        let secs = wall
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        if secs != self.secs || self.text.is_empty() {
            self.secs = secs;
            self.text = httpdate::fmt_http_date(wall);
        }
        &self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::ws::tests::{frame, frames, upgrade_request, ACCEPT, TEXT};
    use crate::service::Harness;
    use std::collections::HashMap;

    #[derive(Debug, PartialEq)]
    struct Resp {
        status: u16,
        headers: HashMap<String, String>,
        body: Vec<u8>,
    }

    /// Splits the output into responses; `head_only` marks the ones answering HEAD.
    fn responses(mut out: &[u8], head_only: &[bool]) -> Vec<Resp> {
        let mut v = Vec::new();
        while !out.is_empty() {
            let mut hs = [httparse::EMPTY_HEADER; 32];
            let mut r = httparse::Response::new(&mut hs);
            let n = match r.parse(out).expect("well-formed response") {
                httparse::Status::Complete(n) => n,
                httparse::Status::Partial => panic!("partial response: {out:?}"),
            };
            let headers: HashMap<String, String> = r
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_ascii_lowercase(),
                        String::from_utf8(h.value.to_vec()).unwrap(),
                    )
                })
                .collect();
            let status = r.code.unwrap();
            let len: usize = if head_only.get(v.len()).copied().unwrap_or(false) || status < 200 {
                0
            } else {
                headers["content-length"].parse().unwrap()
            };
            v.push(Resp {
                status,
                headers,
                body: out[n..n + len].to_vec(),
            });
            out = &out[n + len..];
        }
        v
    }

    fn harness() -> Harness<HttpSession<Hello>> {
        harness_with(HttpOptions::default())
    }

    fn harness_with(opts: HttpOptions) -> Harness<HttpSession<Hello>> {
        Harness::new(Http::new(opts).session(&ConnInfo::test(1)))
    }

    fn one(req: &str) -> (Resp, bool) {
        let mut h = harness();
        h.feed(req.as_bytes());
        let mut r = responses(&h.take_output(), &[req.starts_with("HEAD")]);
        assert_eq!(r.len(), 1, "{req:?}");
        (r.remove(0), h.is_closing())
    }

    #[test]
    fn get_root_says_hello_with_the_standard_headers() {
        let (r, closing) = one("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(r.status, 200);
        assert_eq!(r.body, HELLO.as_bytes());
        assert_eq!(r.headers["content-length"], "39");
        assert!(r.headers["content-type"].starts_with("text/plain"));
        assert!(r.headers["server"].starts_with("multiclient/"));
        assert!(httpdate::parse_http_date(&r.headers["date"]).is_ok());
        assert!(!closing, "HTTP/1.1 persists");
    }

    #[test]
    fn head_has_the_headers_and_no_body() {
        let mut h = harness();
        h.feed(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n");
        let r = responses(&h.take_output(), &[true, false]);
        assert_eq!(r[0].status, 200);
        assert_eq!(r[0].headers["content-length"], "39");
        assert!(r[0].body.is_empty());
        assert_eq!(r[1].body, HELLO.as_bytes());
    }

    #[test]
    fn persistence_follows_the_version_and_connection_header() {
        let (r, closing) = one("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        assert_eq!(r.headers["connection"], "close");
        assert!(closing);
        let (r, closing) = one("GET / HTTP/1.0\r\n\r\n");
        assert_eq!(r.headers["connection"], "close");
        assert!(closing);
        let (r, closing) = one("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        assert_eq!(r.headers["connection"], "keep-alive");
        assert!(!closing);
    }

    #[test]
    fn pipelined_requests_are_answered_in_order() {
        let mut h = harness();
        h.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /nope HTTP/1.1\r\nHost: x\r\n\r\nHEAD / HTTP/1.1\r\nHost: x\r\n\r\nDELETE / HTTP/1.1\r\nHost: x\r\n\r\n");
        let r = responses(&h.take_output(), &[false, false, true, false]);
        let codes: Vec<u16> = r.iter().map(|r| r.status).collect();
        assert_eq!(codes, [200, 404, 200, 405]);
        assert!(!h.is_closing());
    }

    #[test]
    fn bodies_are_consumed_so_the_next_request_is_read() {
        let mut h = harness();
        h.feed(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello");
        h.feed(b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n0\r\nTrailer: x\r\n\r\n");
        h.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        let r = responses(&h.take_output(), &[]);
        let codes: Vec<u16> = r.iter().map(|r| r.status).collect();
        assert_eq!(codes, [405, 200, 200]);
        assert_eq!(r[0].headers["allow"], "GET, HEAD");
    }

    #[test]
    fn expect_continue_gets_100_first() {
        let mut h = harness();
        h.feed(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n");
        assert_eq!(h.take_output(), b"HTTP/1.1 100 Continue\r\n\r\n");
        h.feed(b"ok");
        assert_eq!(responses(&h.take_output(), &[])[0].status, 200);
    }

    #[test]
    fn expect_continue_on_a_refused_request_gets_the_final_status_only() {
        for (req, status) in [
            ("POST /nope HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n", 404),
            ("PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n", 405),
        ] {
            let mut h = harness();
            h.feed(req.as_bytes());
            let out = h.take_output();
            assert!(!out.starts_with(b"HTTP/1.1 100"), "{req:?}");
            let r = responses(&out, &[]);
            assert_eq!((r.len(), r[0].status), (1, status), "{req:?}");
            // The body may or may not follow: the stream cannot be trusted to be in
            // step, so the connection closes.
            assert_eq!(r[0].headers["connection"], "close");
            assert!(h.is_closing());
        }
    }

    #[test]
    fn host_is_required_once_in_http_1_1_and_never_twice() {
        for req in [
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET / HTTP/1.0\r\nHost: a\r\nhost: a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nAuthorization: a\r\nAuthorization: b\r\n\r\n",
        ] {
            let (r, closing) = one(req);
            assert_eq!(r.status, 400, "{req:?}");
            assert!(closing);
        }
        let (r, _) = one("GET / HTTP/1.0\r\n\r\n");
        assert_eq!(r.status, 200, "HTTP/1.0 needs no Host");
    }

    #[test]
    fn empty_lines_before_a_request_line_are_ignored() {
        let (r, _) = one("\r\n\r\n\nGET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(r.status, 200);
        // Also when they arrive alone, and after a body (a client's stray CRLF).
        let mut h = harness();
        h.feed(b"\r\n");
        h.feed(b"\r\n");
        assert!(h.take_output().is_empty());
        assert_eq!(h.session.deadline(), None, "empty lines start no timer");
        h.feed(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx\r\n\r\n");
        h.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        let codes: Vec<u16> = responses(&h.take_output(), &[])
            .iter()
            .map(|r| r.status)
            .collect();
        assert_eq!(codes, [405, 200]);
        assert!(!h.is_closing());
    }

    #[test]
    fn absolute_form_targets_are_served_like_their_path() {
        for (req, status) in [
            ("GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n", 200),
            ("GET HTTP://x HTTP/1.1\r\nHost: x\r\n\r\n", 200),
            ("GET https://x:8080/?a=1 HTTP/1.1\r\nHost: x\r\n\r\n", 200),
            ("GET http://x/nope HTTP/1.1\r\nHost: x\r\n\r\n", 404),
        ] {
            assert_eq!(one(req).0.status, status, "{req:?}");
        }
        assert_eq!(split_target("http://h/a/b?q=1"), ("/a/b", Some("q=1")));
        assert_eq!(split_target("http://h?q"), ("/", Some("q")));
        assert_eq!(split_target("/p"), ("/p", None));
        assert_eq!(split_target("ftp://h/p"), ("ftp://h/p", None));
    }

    #[test]
    fn malformed_requests_are_400_and_close() {
        for req in [
            "GARBAGE\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: x\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nabc\r\n",
        ] {
            let (r, closing) = one(req);
            assert_eq!(r.status, 400, "{req:?}");
            assert_eq!(r.headers["connection"], "close");
            assert!(closing);
        }
    }

    #[test]
    fn unknown_path_is_404_and_keeps_the_connection() {
        let (r, closing) = one("GET /missing HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(r.status, 404);
        assert!(!closing);
    }

    #[test]
    fn other_methods_are_405_with_allow() {
        let (r, _) = one("PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(r.status, 405);
        assert_eq!(r.headers["allow"], "GET, HEAD");
    }

    #[test]
    fn bodies_over_the_limit_are_413() {
        let opts = || HttpOptions {
            max_body: 10,
            ..HttpOptions::default()
        };
        let mut h = harness_with(opts());
        h.feed(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\n");
        assert_eq!(responses(&h.take_output(), &[])[0].status, 413);
        assert!(h.is_closing());
        let mut h = harness_with(opts());
        h.feed(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n12345678\r\n8\r\n");
        assert_eq!(responses(&h.take_output(), &[])[0].status, 413);
        assert!(h.is_closing());
    }

    #[test]
    fn heads_over_the_limits_are_431() {
        let big = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX: {}\r\n\r\n",
            "a".repeat(MAX_HEAD)
        );
        let (r, closing) = one(&big);
        assert_eq!(r.status, 431);
        assert!(closing);
        // Too big even before its end arrives.
        let mut h = harness();
        h.feed(format!("GET / HTTP/1.1\r\nHost: x\r\nX: {}", "a".repeat(MAX_HEAD)).as_bytes());
        assert_eq!(responses(&h.take_output(), &[])[0].status, 431);
        let many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("H{i}: v\r\n"))
            .collect();
        let (r, _) = one(&format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n"));
        assert_eq!(r.status, 431);
    }

    #[test]
    fn slow_heads_get_408_from_their_first_byte() {
        let mut h = harness();
        let t0 = h.now;
        assert_eq!(h.session.deadline(), None, "no timer before a byte");
        h.feed(b"GET / HT");
        h.now = t0 + Duration::from_secs(5);
        h.feed(b"TP/1.1\r\n");
        let timeout = HttpOptions::default().header_timeout;
        h.advance_to(t0 + timeout - Duration::from_millis(1));
        assert!(h.take_output().is_empty());
        h.advance_to(t0 + timeout);
        let r = responses(&h.take_output(), &[]);
        assert_eq!(r[0].status, 408);
        assert!(h.is_closing());
    }

    #[test]
    fn slow_bodies_get_408_from_the_end_of_their_head() {
        let mut h = harness();
        let t0 = h.now;
        h.feed(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n");
        let timeout = HttpOptions::default().body_timeout;
        assert_eq!(h.session.deadline(), Some(t0 + timeout));
        // A byte now and then keeps the connection from being idle, not the body alive.
        for s in 1..timeout.as_secs() {
            h.now = t0 + Duration::from_secs(s);
            h.feed(b"x");
        }
        h.advance_to(t0 + timeout - Duration::from_millis(1));
        assert!(h.take_output().is_empty());
        h.advance_to(t0 + timeout);
        let r = responses(&h.take_output(), &[]);
        assert_eq!(r[0].status, 408);
        assert!(h.is_closing());
    }

    #[test]
    fn a_body_in_time_stops_the_body_timer() {
        let mut h = harness();
        h.feed(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nok");
        assert_eq!(responses(&h.take_output(), &[])[0].status, 405);
        assert_eq!(h.session.deadline(), None);
    }

    #[test]
    fn keep_alive_idle_has_no_header_timer() {
        let mut h = harness();
        h.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(h.session.deadline(), None);
    }

    #[test]
    fn other_versions_are_505() {
        let (r, closing) = one("GET / HTTP/2.0\r\n\r\n");
        assert_eq!(r.status, 505);
        assert!(closing);
    }

    #[test]
    fn busy_is_503_with_retry_after() {
        let mut h = harness();
        h.goodbye(Goodbye::Busy);
        h.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        let r = responses(&h.take_output(), &[]);
        assert_eq!(r[0].status, 503);
        assert_eq!(r[0].headers["retry-after"], "1");
        assert!(h.is_closing());
        // An upgrade header on a plain route does not get past the refusal.
        let mut h = harness();
        h.goodbye(Goodbye::Busy);
        h.feed(upgrade_request("/").as_bytes());
        assert_eq!(responses(&h.take_output(), &[])[0].status, 503);
        assert!(h.is_closing());
    }

    #[test]
    fn shutdown_finishes_the_request_in_flight_with_close() {
        let mut h = harness();
        h.feed(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nab");
        h.goodbye(Goodbye::Shutdown);
        assert!(!h.is_closing());
        h.feed(b"cd");
        let r = responses(&h.take_output(), &[]);
        assert_eq!(r[0].status, 405);
        assert_eq!(r[0].headers["connection"], "close");
        assert!(h.is_closing());
        // Between requests there is nothing to finish.
        let mut h = harness();
        h.goodbye(Goodbye::Shutdown);
        assert!(h.is_closing());
    }

    #[test]
    fn shutdown_answers_the_next_request_of_a_client_answered_just_before_with_close() {
        let mut h = harness();
        let t0 = h.now;
        h.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(responses(&h.take_output(), &[])[0].status, 200);
        h.goodbye(Goodbye::Shutdown);
        assert!(!h.is_closing(), "the next request may be on its way");
        assert_eq!(h.session.deadline(), Some(t0 + LAST_CALL));
        h.now = t0 + LAST_CALL / 2;
        h.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        let r = responses(&h.take_output(), &[]);
        assert_eq!((r.len(), r[0].status), (1, 200));
        assert_eq!(r[0].headers["connection"], "close");
        assert!(h.is_closing());
        // A client that sends nothing more is closed when the last call is over.
        let mut h = harness();
        let t0 = h.now;
        h.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        h.take_output();
        h.goodbye(Goodbye::Shutdown);
        h.advance_to(t0 + LAST_CALL - Duration::from_millis(1));
        assert!(!h.is_closing());
        h.advance_to(t0 + LAST_CALL);
        assert!(h.is_closing());
        assert!(h.take_output().is_empty());
        // One answered longer ago is closed at once.
        let mut h = harness();
        h.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        h.now += LAST_CALL;
        h.goodbye(Goodbye::Shutdown);
        assert!(h.is_closing());
    }

    #[test]
    fn get_ws_upgrades_to_the_echo_session() {
        let mut h = harness();
        let mut bytes = upgrade_request("/ws").into_bytes();
        bytes.extend(frame(TEXT, b"hi", true));
        h.feed(&bytes);
        let out = h.take_output();
        let end = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let head = String::from_utf8_lossy(&out[..end]);
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        assert!(head.contains(ACCEPT));
        assert_eq!(
            frames(&out[end..]),
            [(TEXT, b"Server received: hi".to_vec())]
        );
        assert!(h.session.is_websocket());
        // A plain GET of /ws is told to upgrade.
        let (r, _) = one("GET /ws HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(r.status, 426);
    }

    #[test]
    fn route_patterns_match_segments() {
        let r = Route::post("/rooms/*/messages");
        assert!(r.matches("/rooms/lobby/messages"));
        assert!(!r.matches("/rooms//messages"));
        assert!(!r.matches("/rooms/lobby"));
        assert_eq!(r.allow_header(), "POST");
    }

    fn run_split(bytes: &[u8], cuts: &[usize]) -> (Vec<u8>, bool) {
        let mut h = harness_with(HttpOptions {
            max_body: 100,
            ..HttpOptions::default()
        });
        let mut last = 0;
        for &c in cuts {
            h.feed(&bytes[last..c]);
            last = c;
        }
        h.feed(&bytes[last..]);
        (h.take_output(), h.is_closing())
    }

    const CONVERSATION: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n\
        POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc\
        HEAD / HTTP/1.1\r\nHost: x\r\n\r\n\
        GET /x?y=1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n1;e\r\nc\r\n0\r\nT: 1\r\n\r\n\
        GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n\
        GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

    proptest::proptest! {
        #[test]
        fn any_split_gives_the_same_replies(mut cuts in proptest::collection::vec(0usize..10_000, 0..12)) {
            let whole = run_split(CONVERSATION, &[]);
            cuts.iter_mut().for_each(|c| *c %= CONVERSATION.len() + 1);
            cuts.sort_unstable();
            let (out, closing) = run_split(CONVERSATION, &cuts);
            // The Date header may tick between runs; compare without it.
            let strip = |b: &[u8]| String::from_utf8_lossy(b).lines().filter(|l| !l.starts_with("Date:")).collect::<Vec<_>>().join("\n");
            proptest::prop_assert_eq!(strip(&out), strip(&whole.0));
            proptest::prop_assert_eq!(closing, whole.1);
        }

        #[test]
        fn any_bytes_never_panic_and_get_whole_responses(junk in proptest::collection::vec(proptest::num::u8::ANY, 0..3000)) {
            let mut h = harness();
            h.feed(&junk);
            h.eof();
            let out = h.take_output();
            // Whatever came back parses as responses (bodies sized by Content-Length).
            let _ = responses(&out, &[]);
        }
    }
}
