//! One HTTP/1.1 connection as a state machine: heads read and routed, bodies decoded,
//! answers written in order, the 408 timers, busy and shutdown goodbyes, and the
//! switch to a WebSocket after an upgrade.

use std::borrow::Cow;
use std::mem::MaybeUninit;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::decode::{self, Body, Decoded};
use super::encode::{self, Persist};
use super::error::FramingError;
use super::head::{self, empty_lines, find_head_end, looks_like_http_version, request};
use super::upgrade;
use super::{App, HttpOptions, Method, Prebuilt, Reply, Response, MAX_HEAD, MAX_HEADERS};
use crate::base::budget::Held;
use crate::service::ws::{Handler, WsConn};
use crate::service::{Cx, Goodbye, Session};

/// Largest buffer kept between requests; a larger one is freed.
const KEEP_CAPACITY: usize = 16 * 1024;
/// At shutdown, a keep-alive client answered less than this long ago is probably about
/// to send its next request (a client in a loop sends it within a round trip): the
/// connection waits for it until this long after that answer and answers it with
/// `Connection: close`, instead of closing under a request already on its way. A
/// client quiet for longer is closed at once, so a shutdown waits at most this long
/// for keep-alive connections.
pub(super) const LAST_CALL: Duration = Duration::from_secs(1);

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
    /// The body's bytes, charged to the server's `--max-buffered` budget while it is
    /// read: a thousand slow uploads cannot hold a gigabyte between them.
    held: Held,
    keep_alive: bool,
    /// HTTP minor version of the request being answered.
    head_version: u8,
    /// Refused (at `--max-conns`, or `--max-conns-per-ip`): the next request gets 503
    /// (or 101 then 1013) saying which.
    busy: Option<Goodbye>,
    /// Shutting down: the request in flight is answered with `Connection: close`.
    shutting: bool,
    /// When the last response was written, for the shutdown's [`LAST_CALL`].
    answered: Option<Instant>,
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
            held: Held::new(),
            keep_alive: true,
            head_version: 1,
            busy: None,
            shutting: false,
            answered: None,
        }
    }

    /// Whether the connection was upgraded to a WebSocket.
    pub fn is_websocket(&self) -> bool {
        matches!(self.state, State::Ws(_))
    }

    fn error(
        &mut self,
        status: u16,
        why: impl Into<Cow<'static, str>>,
        cx: &mut Cx<'_, <A::Ws as Handler>::Event>,
    ) {
        let why = why.into();
        tracing::info!("HTTP {status}: {}", why.trim_end());
        let mut resp = Response::text(status, why).close();
        if status == 503 {
            resp = resp.header("Retry-After", "1");
        }
        self.write(&resp, false, cx);
    }

    /// The request being read is late: 408 and close, unless the server has stopped
    /// reading (the client leaves its replies unread) and the rest of the request may
    /// be waiting in the socket: then its timer starts again, and a client that never
    /// reads is ended by the write timeout.
    fn late(&mut self, why: &'static str, cx: &mut Cx<'_, <A::Ws as Handler>::Event>) {
        if cx.is_reading_paused() {
            self.since = Some(cx.now());
        } else {
            self.error(408, why, cx);
        }
    }

    /// Answers a request whose framing is refused with its status and why, and closes.
    fn refuse(&mut self, e: FramingError, cx: &mut Cx<'_, <A::Ws as Handler>::Event>) {
        self.error(e.status(), format!("{e}\n"), cx);
    }

    /// Writes a response; closes after it if it says so, or the request did.
    fn write(
        &mut self,
        resp: &Response,
        head_only: bool,
        cx: &mut Cx<'_, <A::Ws as Handler>::Event>,
    ) {
        let persist = self.persist(resp.close, cx);
        let now = cx.now();
        encode::response(cx.out(), resp, now, persist, head_only);
        self.written(persist, cx);
    }

    /// [`HttpSession::write`] for a response encoded once.
    fn write_prebuilt(
        &mut self,
        pre: &Prebuilt,
        head_only: bool,
        cx: &mut Cx<'_, <A::Ws as Handler>::Event>,
    ) {
        let persist = self.persist(pre.response().close, cx);
        let now = cx.now();
        encode::prebuilt(cx.out(), pre, now, persist, head_only);
        self.written(persist, cx);
    }

    /// What the `Connection` header of the response about to be written says: it
    /// closes if the response says so (`close`), or the request did.
    fn persist(&mut self, close: bool, cx: &mut Cx<'_, <A::Ws as Handler>::Event>) -> Persist {
        let close = close || !self.keep_alive || self.shutting || self.busy.is_some();
        self.answered = Some(cx.now());
        if close {
            Persist::Close
        } else if self.keep_alive_is_explicit() {
            Persist::KeepAlive
        } else {
            Persist::Implied
        }
    }

    /// A response was written: counted, and the connection closed after it if it said
    /// so.
    fn written(&mut self, persist: Persist, cx: &mut Cx<'_, <A::Ws as Handler>::Event>) {
        cx.answered(crate::service::Answer::Request);
        if persist == Persist::Close {
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
        if self.scanned == 0 {
            // The usual case, a whole head in one read: httparse finds its end itself,
            // at the first empty line, where `find_head_end` would (in a head it
            // accepts every line feed ends a line), and into headers it need not
            // initialise. Anything else (a head not yet complete, an error) takes the
            // path below, which waits for the end before judging, as it always has.
            if let Some(window) = input.get(lead..input.len().min(MAX_HEAD)) {
                let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
                let mut req = httparse::Request::new(&mut []);
                if let Ok(httparse::Status::Complete(n)) =
                    req.parse_with_uninit_headers(window, &mut headers)
                {
                    self.since = None;
                    return self.take_head(&req, input, lead, lead + n, cx);
                }
            }
        }
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
            Ok(httparse::Status::Complete(n)) => self.take_head(&req, input, lead, lead + n, cx),
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

    /// Acts on a complete head `req`, `input[lead..n]` (after the empty lines before
    /// it): decides its framing, then answers it or starts reading its body. Returns
    /// the bytes used.
    fn take_head(
        &mut self,
        req: &httparse::Request<'_, '_>,
        input: &[u8],
        lead: usize,
        n: usize,
        cx: &mut Cx<'_, <A::Ws as Handler>::Event>,
    ) -> usize {
        let framing = match head::framing(req, self.opts.max_body) {
            Ok(f) => f,
            Err(e) => {
                self.refuse(e, cx);
                return input.len();
            }
        };
        self.keep_alive = framing.keep_alive;
        self.head_version = req.version.unwrap_or(1);
        let Some(body) = framing.body else {
            self.dispatch(req, &[], cx);
            return n;
        };
        if framing.expect_continue && self.busy.is_none() {
            // The client waits before sending the body: a request that will be
            // refused gets its final answer instead of `100`.
            if let Some(resp) = self.refusal(req) {
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

    /// Reads body bytes; returns how many were used. Dispatches once complete.
    fn read_body(
        &mut self,
        mut body: Body,
        input: &[u8],
        cx: &mut Cx<'_, <A::Ws as Handler>::Event>,
    ) -> usize {
        let pos = match decode::decode(&mut body, input, &mut self.body, self.opts.max_body) {
            Err(e) => {
                cx.hold(&mut self.held, 0);
                self.refuse(e, cx);
                return input.len();
            }
            Ok(Decoded::More(pos)) => {
                if !cx.hold(&mut self.held, self.body.len()) {
                    tracing::warn!("request body over the server's buffer budget; 503");
                    self.body = Vec::new();
                    cx.hold(&mut self.held, 0);
                    self.error(503, "server busy\n", cx);
                    return input.len();
                }
                self.state = State::Body(body);
                return pos;
            }
            Ok(Decoded::Done(pos)) => {
                cx.hold(&mut self.held, 0);
                pos
            }
        };
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
        let head_only = req.method == Method::Head;
        // A refused client is told why with a 503, or, asking for a WebSocket, after
        // the handshake with a close (1013): only then are its fields searched.
        if let Some(why) = self.busy {
            if !req.header_has_token("upgrade", "websocket") {
                self.error(503, refusal_body(why), cx);
                return;
            }
        }
        let routes = self.app.routes();
        let Some(route) = routes.iter().find(|r| r.matches(req.path)) else {
            self.write(&Response::text(404, "not found\n"), head_only, cx);
            return;
        };
        if !route.allows(req.method) {
            let resp =
                Response::text(405, "method not allowed\n").header("Allow", route.allow_header());
            self.write(&resp, head_only, cx);
            return;
        }
        let reply = self.app.handle(&req, cx);
        match (reply, self.busy) {
            (Reply::Respond(_) | Reply::Prebuilt(_), Some(why)) => {
                self.error(503, refusal_body(why), cx)
            }
            (Reply::Respond(resp), None) => self.write(&resp, head_only, cx),
            (Reply::Prebuilt(pre), None) => self.write_prebuilt(pre, head_only, cx),
            (Reply::Upgrade(handler), _) => match upgrade::accept(&req) {
                Ok(key) => {
                    let mut conn = upgrade::switch(key, handler, &self.opts, cx);
                    if let Some(why) = self.busy {
                        conn.goodbye(why, cx);
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
            State::Head if head_late => self.late("request head not received in time\n", cx),
            State::Body(_) if body_late => self.late("request body not received in time\n", cx),
            _ => {}
        }
    }

    fn goodbye(&mut self, why: Goodbye, cx: &mut Cx<'_, Self::Event>) {
        // The engine drops the unread input before a goodbye: what was scanned of it
        // is gone, and a session that reads on (a refusal awaiting its request) starts
        // scanning afresh.
        self.scanned = 0;
        match &mut self.state {
            State::Ws(conn) => conn.goodbye(why, cx),
            State::Closed => cx.close(),
            State::Head if why.is_refusal() && self.since.is_none() => {
                // Read the request first, so a WebSocket client can be told 1013
                // after its handshake; a plain request gets 503.
                self.busy = Some(why);
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

/// The body of the 503 a refused client gets.
fn refusal_body(why: Goodbye) -> &'static str {
    match why {
        Goodbye::TooManyFromAddress => "too many connections from your address\n",
        _ => "server busy, try again\n",
    }
}
