//! The chat on the http service's port (8080): the WebSocket endpoint, the page, and
//! notifications from a backend.
//!
//! | route | what it does |
//! |---|---|
//! | `GET /` | the seed's hello, as on the plain http service |
//! | `GET /ws` | the seed's WebSocket echo, as on the plain http service |
//! | `GET /chat` | the chat page (HTML, its script and style embedded in the binary) |
//! | `GET /chat/app.js`, `GET /chat/app.css`, `GET /chat/favicon.svg` | the page's script, style and icon |
//! | `GET /chat/ws` | upgrade: a chat member speaking JSON ([`super::socket`]) |
//! | `POST /rooms/<room>/messages` | a notification: the body said in `<room>` by `server` |
//!
//! Notifications need `Authorization: Bearer <key>` matching `--api-key` (or
//! `MULTICLIENT_API_KEY`), compared in constant time. Answers: 202 delivered, 401 no
//! or a malformed `Authorization` (with `WWW-Authenticate: Bearer`), 403 a wrong key,
//! 404 when no key is configured (the endpoint does not exist then) or nobody is in the
//! room (without `--redis`), 413 a text over `--max-line` bytes (or a body over
//! `--max-body`, from the HTTP engine), 400 a bad room name or a text that is empty,
//! not UTF-8 or not one line, 503 when Redis is down.
//!
//! All of it shares the process's one [`Hub`] with the TCP chat service, so TCP and
//! browser members of a room see each other.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use super::auth::AuthHandle;
use super::socket::ChatSocket;
use super::ChatOptions;
use crate::base::Live;
use crate::hub::{ChatEvent, Hub, HubError};
use crate::service::http::{self, App, HttpOptions, HttpSession, Reply, Request, Response, Route};
use crate::service::ws::{Echo, Handler, Message, WsCx};
use crate::service::{ConnInfo, Cx, Service};

/// The page, its script and its style: embedded, so the chat works with no network.
const PAGE_HTML: &str = include_str!("page/chat.html");
const PAGE_JS: &str = include_str!("page/app.js");
const PAGE_CSS: &str = include_str!("page/app.css");
const PAGE_ICON: &str = include_str!("page/favicon.svg");

/// The key backends present to post notifications. Its `Debug` does not show it.
#[derive(Clone)]
pub struct ApiKey(Arc<[u8]>);

impl ApiKey {
    /// A key; `None` for an empty one (no key is configured then).
    pub fn new(key: &str) -> Option<ApiKey> {
        (!key.is_empty()).then(|| ApiKey(key.as_bytes().into()))
    }

    /// Whether `presented` is this key, in time independent of where they differ
    /// (only the length can show), so the key cannot be guessed byte by byte.
    pub fn matches(&self, presented: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        self.0.len() == presented.len() && bool::from(self.0.ct_eq(presented))
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// Options of the chat on the http service. The service holds them in a
/// [`Live`] handle read per request, so a config reload swaps them (a new key is
/// asked for by the next request).
#[derive(Debug, Clone, Default)]
pub struct WebOptions {
    /// `--api-key` / `MULTICLIENT_API_KEY`: enables `POST /rooms/<room>/messages`.
    pub api_key: Option<ApiKey>,
}

/// The http service's app with the chat routes (see the module documentation).
#[derive(Debug)]
pub struct ChatWeb {
    hub: Arc<Hub>,
    echo: Echo,
    max_text: usize,
    max_rate: Option<u32>,
    web: Live<WebOptions>,
    auth: AuthHandle,
}

const ROUTES: &[Route] = &[
    Route::get("/"),
    Route::get("/ws"),
    Route::get("/chat"),
    Route::get("/chat/app.js"),
    Route::get("/chat/app.css"),
    Route::get("/chat/favicon.svg"),
    Route::get("/chat/ws"),
    Route::post("/rooms/*/messages"),
];

impl ChatWeb {
    /// The app over `hub`, with the chat's text limit and the web options.
    pub fn new(
        hub: Arc<Hub>,
        http: &HttpOptions,
        chat: &ChatOptions,
        web: Live<WebOptions>,
    ) -> ChatWeb {
        ChatWeb {
            hub,
            echo: Echo {
                exact: http.ws.echo,
            },
            max_text: chat.max_line.max(1),
            max_rate: chat.max_rate,
            web,
            auth: chat.auth.clone(),
        }
    }

    /// Whether a notification may be posted: the endpoint is on and the key is right
    /// (404, 401 or 403 otherwise). Checked before the body is read too.
    fn authorize(&self, req: &Request<'_>) -> Result<(), Response> {
        let web = self.web.load();
        let Some(key) = &web.api_key else {
            return Err(Response::text(
                404,
                "notifications are off: the server has no --api-key\n",
            ));
        };
        let token = req.header("authorization").and_then(bearer);
        let Some(token) = token else {
            return Err(Response::text(401, "Authorization: Bearer <key> needed\n")
                .header("WWW-Authenticate", "Bearer"));
        };
        if !key.matches(token) {
            return Err(Response::text(403, "wrong key\n"));
        }
        Ok(())
    }

    /// `POST /rooms/<room>/messages`.
    fn notify(&self, req: &Request<'_>) -> Response {
        if let Err(refused) = self.authorize(req) {
            return refused;
        }
        // The route matched `/rooms/*/messages`, so the middle segment is the room.
        let room = req.path.split('/').nth(2).unwrap_or("");
        if !crate::hub::valid_room(room) {
            return Response::text(400, "room names are 1-64 characters of A-Z a-z 0-9 _ - .\n");
        }
        let body = req.body;
        // One trailing line break is the end of the text, as a shell `echo` sends it.
        let body = body.strip_suffix(b"\n").unwrap_or(body);
        let body = body.strip_suffix(b"\r").unwrap_or(body);
        if body.len() > self.max_text {
            return Response::text(413, "text too long\n");
        }
        let Ok(text) = std::str::from_utf8(body) else {
            return Response::text(400, "the text must be UTF-8\n");
        };
        if text.is_empty() {
            return Response::text(400, "the text is empty\n");
        }
        match self.hub.announce(room, text) {
            Ok(()) => Response::text(202, "accepted\n"),
            Err(HubError::NoSuchRoom) => Response::text(404, "no such room: nobody is in it\n"),
            Err(HubError::Unavailable) => {
                Response::text(503, "chat backend unavailable, try again\n")
                    .header("Retry-After", "1")
            }
            Err(e) => Response::text(400, format!("{}: {e}\n", e.code())),
        }
    }
}

/// The `token` parameter of an upgrade's query (`/chat/ws?token=<jwt>`): browsers
/// cannot set headers on a WebSocket. A JWT is base64url and dots, so it needs no
/// percent-decoding; an encoded one fails as a bad token.
fn query_token(query: Option<&str>) -> Option<&str> {
    query?.split('&').find_map(|kv| kv.strip_prefix("token="))
}

/// The token of `Bearer <token>` (scheme case-insensitive, RFC 6750 §2.1).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let value = value.trim_ascii();
    if value.len() < 7 || !value[..7].eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = value[7..].trim_ascii_start();
    (!token.is_empty() && !token.iter().any(|b| b.is_ascii_whitespace())).then_some(token)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    Response {
        status: 200,
        content_type,
        headers: vec![
            ("Cache-Control", Cow::Borrowed("no-cache")),
            ("X-Content-Type-Options", Cow::Borrowed("nosniff")),
            (
                "Content-Security-Policy",
                Cow::Borrowed("default-src 'self'; connect-src 'self'; frame-ancestors 'none'"),
            ),
        ],
        body: Cow::Borrowed(body.as_bytes()),
        close: false,
    }
}

/// What an upgraded connection of the chat's http service runs.
// The chat member is the variant nearly every connection holds: boxing it would only
// add an allocation to each.
#[allow(clippy::large_enum_variant)]
pub enum WebSocketApp {
    /// `/ws`: the seed's echo.
    Echo(Echo),
    /// `/chat/ws`: a chat member.
    Chat(ChatSocket),
}

impl Handler for WebSocketApp {
    type Event = ChatEvent;

    fn open(&mut self, ws: &mut WsCx<'_, '_, '_, ChatEvent>) {
        if let WebSocketApp::Chat(c) = self {
            c.open(ws);
        }
    }

    fn message(&mut self, msg: Message, ws: &mut WsCx<'_, '_, '_, ChatEvent>) {
        match self {
            WebSocketApp::Echo(e) => {
                e.answer(msg, ws);
            }
            WebSocketApp::Chat(c) => c.message(msg, ws),
        }
    }

    fn event(&mut self, event: ChatEvent, ws: &mut WsCx<'_, '_, '_, ChatEvent>) {
        if let WebSocketApp::Chat(c) = self {
            c.event(event, ws);
        }
    }

    fn deadline(&self) -> Option<std::time::Instant> {
        match self {
            WebSocketApp::Echo(_) => None,
            WebSocketApp::Chat(c) => c.deadline(),
        }
    }

    fn timeout(&mut self, ws: &mut WsCx<'_, '_, '_, ChatEvent>) {
        if let WebSocketApp::Chat(c) = self {
            c.timeout(ws);
        }
    }

    fn owes_answers(&self) -> bool {
        match self {
            WebSocketApp::Echo(_) => false,
            WebSocketApp::Chat(c) => c.owes_answers(),
        }
    }
}

impl App for ChatWeb {
    type Ws = WebSocketApp;

    fn routes(&self) -> &[Route] {
        ROUTES
    }

    fn handle(&self, req: &Request<'_>, _cx: &mut Cx<'_, ChatEvent>) -> Reply<WebSocketApp> {
        match req.path {
            "/" => Reply::Prebuilt(http::hello()),
            "/ws" => Reply::Upgrade(WebSocketApp::Echo(self.echo.clone())),
            "/chat" => Reply::Respond(asset("text/html; charset=utf-8", PAGE_HTML)),
            "/chat/app.js" => Reply::Respond(asset("text/javascript; charset=utf-8", PAGE_JS)),
            "/chat/app.css" => Reply::Respond(asset("text/css; charset=utf-8", PAGE_CSS)),
            "/chat/favicon.svg" => Reply::Respond(asset("image/svg+xml", PAGE_ICON)),
            "/chat/ws" => Reply::Upgrade(WebSocketApp::Chat(
                ChatSocket::new(self.hub.clone(), self.max_text, self.max_rate)
                    .with_auth(self.auth.get(), query_token(req.query)),
            )),
            _ => Reply::Respond(self.notify(req)),
        }
    }

    fn precheck(&self, req: &Request<'_>) -> Option<Response> {
        // The routes `handle` answers without looking at the caller take any body.
        match req.path {
            "/" | "/ws" | "/chat" | "/chat/app.js" | "/chat/app.css" | "/chat/ws" => None,
            _ => self.authorize(req).err(),
        }
    }
}

/// The http service with the chat routes: what `serve` runs as `http` under every
/// model that can serve a chat.
#[derive(Clone)]
pub struct ChatHttp {
    app: Arc<ChatWeb>,
    /// Read once per connection: a config reload changes them for the next ones.
    opts: Live<HttpOptions>,
}

impl ChatHttp {
    /// The service over `hub` (the one the TCP chat of the process uses).
    pub fn new(
        hub: Arc<Hub>,
        http: impl Into<Live<HttpOptions>>,
        chat: &ChatOptions,
        web: Live<WebOptions>,
    ) -> ChatHttp {
        let http = http.into();
        ChatHttp {
            app: Arc::new(ChatWeb::new(hub, &http.load(), chat, web)),
            opts: http,
        }
    }
}

impl Service for ChatHttp {
    type Session = HttpSession<ChatWeb>;
    fn name(&self) -> &str {
        "http"
    }
    fn session(&self, _conn: &ConnInfo) -> HttpSession<ChatWeb> {
        HttpSession::new(self.app.clone(), self.opts.get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::HubConfig;
    use crate::service::Harness;

    #[test]
    fn bearer_tokens_are_read_strictly() {
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bearer   abc "), Some(&b"abc"[..]));
        for bad in [
            &b"Bearer"[..],
            b"Bearer ",
            b"Basic abc",
            b"Bearerabc",
            b"Bearer a b",
            b"abc",
        ] {
            assert_eq!(bearer(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn keys_match_only_themselves() {
        let k = ApiKey::new("s3cret").unwrap();
        assert!(k.matches(b"s3cret"));
        assert!(!k.matches(b"s3creT"));
        assert!(!k.matches(b"s3cre"));
        assert!(!k.matches(b"s3crett"));
        assert!(!k.matches(b""));
        assert!(ApiKey::new("").is_none());
        assert!(!format!("{k:?}").contains("s3cret"));
    }

    fn post(web: &WebOptions, path: &str, auth: Option<&str>, body: &str) -> u16 {
        let hub = Hub::new(HubConfig::default());
        let svc = ChatHttp::new(
            hub,
            HttpOptions::default(),
            &ChatOptions::default(),
            web.clone().into(),
        );
        let mut h = Harness::new(svc.session(&ConnInfo::test(1)));
        let auth = auth
            .map(|a| format!("Authorization: {a}\r\n"))
            .unwrap_or_default();
        h.feed(
            format!(
                "POST {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
        let out = String::from_utf8(h.take_output()).unwrap();
        out[9..12].parse().unwrap()
    }

    #[test]
    fn notification_statuses_on_plain_buffers() {
        let none = WebOptions::default();
        assert_eq!(
            post(&none, "/rooms/a/messages", Some("Bearer k"), "hi"),
            404
        );
        let web = WebOptions {
            api_key: ApiKey::new("k"),
        };
        assert_eq!(post(&web, "/rooms/a/messages", None, "hi"), 401);
        assert_eq!(post(&web, "/rooms/a/messages", Some("Basic k"), "hi"), 401);
        assert_eq!(post(&web, "/rooms/a/messages", Some("Bearer x"), "hi"), 403);
        assert_eq!(
            post(&web, "/rooms/a%20b/messages", Some("Bearer k"), "hi"),
            400
        );
        assert_eq!(post(&web, "/rooms/a/messages", Some("Bearer k"), ""), 400);
        assert_eq!(
            post(&web, "/rooms/a/messages", Some("Bearer k"), "a\nb"),
            400
        );
        for text in [
            "\x1b[2Jcleared",
            "bell\x07",
            "nul\0",
            "del\x7f",
            "tab\there",
            "c1\u{9b}",
        ] {
            assert_eq!(
                post(&web, "/rooms/a/messages", Some("Bearer k"), text),
                400,
                "{text:?}"
            );
        }
        let long = "x".repeat(super::super::DEFAULT_MAX_LINE + 1);
        assert_eq!(
            post(&web, "/rooms/a/messages", Some("Bearer k"), &long),
            413
        );
        // Nobody is in the room of a fresh hub (no Redis): nothing to deliver to.
        assert_eq!(post(&web, "/rooms/a/messages", Some("Bearer k"), "hi"), 404);
    }

    #[test]
    fn two_authorizations_are_400_and_a_waiting_body_is_refused_before_100() {
        let web = WebOptions {
            api_key: ApiKey::new("k"),
        };
        let two = "Bearer k\r\nAuthorization: Bearer k";
        assert_eq!(post(&web, "/rooms/a/messages", Some(two), "hi"), 400);
        // A client that waits for `100 Continue` gets the refusal instead, and its body
        // is never read (the connection closes).
        for (auth, status) in [("", 401), ("Authorization: Bearer x\r\n", 403)] {
            let hub = Hub::new(HubConfig::default());
            let svc = ChatHttp::new(
                hub,
                HttpOptions::default(),
                &ChatOptions::default(),
                web.clone().into(),
            );
            let mut h = Harness::new(svc.session(&ConnInfo::test(1)));
            h.feed(
                format!(
                    "POST /rooms/a/messages HTTP/1.1\r\nHost: x\r\n{auth}\
                     Expect: 100-continue\r\nContent-Length: 2\r\n\r\n"
                )
                .as_bytes(),
            );
            let out = String::from_utf8(h.take_output()).unwrap();
            assert!(out.starts_with(&format!("HTTP/1.1 {status} ")), "{out}");
            assert!(out.contains("Connection: close\r\n"), "{out}");
            assert!(h.is_closing());
        }
        // The other routes let a waiting body come.
        let hub = Hub::new(HubConfig::default());
        let svc = ChatHttp::new(
            hub,
            HttpOptions::default(),
            &ChatOptions::default(),
            web.into(),
        );
        let mut h = Harness::new(svc.session(&ConnInfo::test(1)));
        h.feed(
            b"GET /chat HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n",
        );
        assert_eq!(h.take_output(), b"HTTP/1.1 100 Continue\r\n\r\n");
    }
}
