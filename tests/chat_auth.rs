//! Token authentication for the chat over real sockets, on both wires (TCP lines and
//! the WebSocket JSON of `/chat/ws`), under threads and async: HS256 tokens against an
//! in-process server, RS256 and ES256 keys through the `serve` binary's
//! `--jwt-public-key`, `MULTICLIENT_JWT_SECRET`, and `connect chat --token`.
//! Tokens are minted here with `jsonwebtoken`; the ES256 key pair is made by `rcgen`
//! in the test, the RSA pair is fixed in `tests/keys/` (made once with openssl).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use data_encoding::BASE64URL_NOPAD;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

use multiclient::model::{Limits, Model};
use multiclient::serve::ServiceOptions;
use multiclient::service::chat::auth::Verifier;
use multiclient::service::chat::ChatOptions;

mod common;
use common::chat::Running;

/// A safety net only: a test that waits this long has already failed.
const TIMEOUT: Duration = Duration::from_secs(20);
const SECRET: &str = "a-test-secret-of-32-bytes-or-more";

fn in_secs(ahead: i64) -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        + ahead
}

fn hs256(claims: Value) -> String {
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// `{"alg":"none"}`: claims with no signature, as an attacker writes them.
fn unsigned(claims: Value) -> String {
    format!(
        "{}.{}.",
        BASE64URL_NOPAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
        BASE64URL_NOPAD.encode(claims.to_string().as_bytes())
    )
}

/// The chat and http services of one process with `verifier` as the token key.
fn start(model: Model, verifier: Verifier) -> Running {
    let chat = ChatOptions::default();
    chat.auth.set(Some(verifier));
    let opts = ServiceOptions {
        chat,
        ..ServiceOptions::default()
    };
    Running::start(model, Limits::default(), &opts)
}

fn start_hs(model: Model) -> Running {
    start(model, Verifier::hs256(SECRET.as_bytes()).unwrap())
}

/// A line-protocol client that has read its welcome and sent nothing.
struct Line {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Line {
    fn connect(addr: SocketAddr) -> Line {
        let w = TcpStream::connect(addr).unwrap();
        w.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut c = Line {
            r: BufReader::new(w.try_clone().unwrap()),
            w,
        };
        let welcome = c.line();
        assert!(welcome.starts_with("WELCOME guest-"), "{welcome}");
        c
    }

    /// Connects and authenticates with `token`.
    fn authed(addr: SocketAddr, token: &str) -> Line {
        let mut c = Line::connect(addr);
        c.send(&format!("AUTH {token}"));
        let ok = c.line();
        assert!(ok.starts_with("OK AUTH "), "{ok}");
        c
    }

    fn send(&mut self, line: &str) {
        self.w.write_all(format!("{line}\n").as_bytes()).unwrap();
    }

    fn line(&mut self) -> String {
        let mut s = String::new();
        match self.r.read_line(&mut s) {
            Ok(0) => panic!("connection closed"),
            Ok(_) => s.trim_end_matches('\n').to_string(),
            Err(e) => panic!("no line within {TIMEOUT:?}: {e}"),
        }
    }

    fn code(&mut self) -> String {
        let l = self.line();
        assert!(l.starts_with("ERR "), "{l}");
        l.split(' ').nth(1).unwrap().to_string()
    }

    /// The server closes: nothing more comes, then EOF.
    fn expect_eof(&mut self) {
        let mut rest = String::new();
        self.r.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "", "nothing after the last line");
    }
}

/// A WebSocket JSON member that has read its welcome.
struct Web {
    ws: WebSocket<TcpStream>,
    welcome: Value,
}

impl Web {
    fn connect(addr: SocketAddr, query: &str) -> Web {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        let (ws, resp) = tungstenite::client(format!("ws://{addr}/chat/ws{query}"), s).unwrap();
        assert_eq!(resp.status(), 101);
        let mut c = Web {
            ws,
            welcome: Value::Null,
        };
        c.welcome = c.next();
        assert_eq!(c.welcome["type"], "welcome", "{}", c.welcome);
        c
    }

    fn send(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).unwrap();
    }

    fn next(&mut self) -> Value {
        loop {
            match self.ws.read() {
                Ok(Message::Text(t)) => return serde_json::from_str(&t).expect("JSON"),
                Ok(Message::Ping(_) | Message::Pong(_)) => continue,
                Ok(m) => panic!("unexpected {m:?}"),
                Err(e) => panic!("no message within {TIMEOUT:?}: {e}"),
            }
        }
    }

    fn code(&mut self) -> String {
        let e = self.next();
        assert_eq!(e["type"], "error", "{e}");
        e["code"].as_str().unwrap().to_string()
    }

    /// The server closes with `code`.
    fn expect_close(&mut self, code: u16) {
        match self.ws.read() {
            Ok(Message::Close(Some(f))) => assert_eq!(u16::from(f.code), code, "{f:?}"),
            other => panic!("expected close {code}, got {other:?}"),
        }
    }
}

fn both_wires_authenticate_then_chat_with_owned_nicks(model: Model) {
    let srv = start_hs(model);
    let mut ann = Line::connect(srv.chat.addr);
    ann.send("JOIN lobby");
    assert_eq!(ann.code(), "auth-required");
    ann.send(&format!("AUTH {}", hs256(json!({"sub": "ann"}))));
    assert_eq!(ann.line(), "OK AUTH ann");
    ann.send("JOIN lobby");
    assert_eq!(ann.line(), "OK JOIN lobby");

    let mut bob = Web::connect(srv.http.addr, "");
    assert_eq!(bob.welcome["auth"], true, "the page learns auth is on");
    bob.send(json!({"type": "join", "room": "lobby"}));
    assert_eq!(bob.code(), "auth-required");
    bob.send(json!({"type": "auth", "token": hs256(json!({"sub": "bob"}))}));
    assert_eq!(
        bob.next(),
        json!({"type": "ok", "cmd": "auth", "nick": "bob"})
    );
    bob.send(json!({"type": "join", "room": "lobby"}));
    assert_eq!(
        bob.next(),
        json!({"type": "ok", "cmd": "join", "room": "lobby"})
    );
    assert_eq!(ann.line(), "JOIN lobby bob");
    bob.send(json!({"type": "say", "room": "lobby", "text": "hi ann"}));
    assert_eq!(bob.next()["nick"], "bob");
    assert!(ann.line().ends_with(" bob hi ann"));
    // The nick is the token's: NICK is refused on both wires.
    ann.send("NICK bob");
    assert_eq!(ann.code(), "nick-fixed");
    bob.send(json!({"type": "nick", "nick": "ann"}));
    assert_eq!(bob.code(), "nick-fixed");
    // Another holder of a token for `ann` cannot appear under it while ann is here.
    let mut twin = Web::connect(srv.http.addr, "");
    twin.send(json!({"type": "auth", "token": hs256(json!({"sub": "Ann"}))}));
    assert_eq!(twin.code(), "nick-taken");
    ann.send("QUIT");
    assert_eq!(ann.line(), "OK QUIT");
    ann.expect_eof();
    assert_eq!(bob.next()["type"], "part");
    // Gone, the nick is free for the next holder of a token for it.
    twin.send(json!({"type": "auth", "token": hs256(json!({"sub": "ann"}))}));
    assert_eq!(twin.next()["nick"], "ann");
}

#[test]
fn both_wires_authenticate_then_chat_with_owned_nicks_under_threads() {
    both_wires_authenticate_then_chat_with_owned_nicks(Model::Threads);
}

#[test]
fn both_wires_authenticate_then_chat_with_owned_nicks_under_async() {
    both_wires_authenticate_then_chat_with_owned_nicks(Model::Async { workers: 2 });
}

#[test]
fn a_token_on_the_upgrade_url_authenticates_the_websocket_member() {
    let srv = start_hs(Model::Async { workers: 1 });
    let token = hs256(json!({"sub": "ann", "rooms": ["lobby"]}));
    let mut ann = Web::connect(srv.http.addr, &format!("?token={token}"));
    assert_eq!(
        ann.next(),
        json!({"type": "ok", "cmd": "auth", "nick": "ann"})
    );
    ann.send(json!({"type": "join", "room": "lobby"}));
    assert_eq!(ann.next()["cmd"], "join");
    ann.send(json!({"type": "join", "room": "elsewhere"}));
    assert_eq!(ann.code(), "forbidden");
    // A bad one on the URL counts as a bad token like any other.
    let mut eve = Web::connect(srv.http.addr, "?token=not.a.token");
    assert_eq!(eve.code(), "bad-token");
    eve.send(json!({"type": "join", "room": "lobby"}));
    assert_eq!(eve.code(), "auth-required");
}

fn three_bad_tokens_close_the_connection(model: Model) {
    let srv = start_hs(model);
    let expired = hs256(json!({"sub": "ann", "exp": in_secs(-10)}));
    let none = unsigned(json!({"sub": "ann"}));
    let huge = "x".repeat(9 * 1024);
    let mut line = Line::connect(srv.chat.addr);
    for t in [&expired, &none] {
        line.send(&format!("AUTH {t}"));
        assert_eq!(line.code(), "bad-token");
    }
    line.send(&format!("AUTH {huge}"));
    assert_eq!(line.line(), "ERR bad-token tokens are limited to 8 KiB");
    assert_eq!(
        line.line(),
        "ERR auth-failed too many bad tokens: closing the connection"
    );
    line.expect_eof();

    let mut web = Web::connect(srv.http.addr, "");
    for t in [&expired, &none, &huge] {
        web.send(json!({"type": "auth", "token": t}));
        assert_eq!(web.code(), "bad-token");
    }
    assert_eq!(web.code(), "auth-failed");
    web.expect_close(1008);
}

#[test]
fn three_bad_tokens_close_the_connection_under_threads() {
    three_bad_tokens_close_the_connection(Model::Threads);
}

#[test]
fn three_bad_tokens_close_the_connection_under_async() {
    three_bad_tokens_close_the_connection(Model::Async { workers: 2 });
}

fn at_expiry_both_wires_are_told_and_closed_unless_refreshed(model: Model) {
    let srv = start_hs(model);
    let soon = |sub: &str| hs256(json!({"sub": sub, "exp": in_secs(2)}));
    let mut stays = Line::authed(srv.chat.addr, &soon("stays"));
    stays.send(&format!(
        "AUTH {}",
        hs256(json!({"sub": "stays", "exp": in_secs(120)}))
    ));
    assert_eq!(stays.line(), "OK AUTH stays");
    stays.send("JOIN lobby");
    assert_eq!(stays.line(), "OK JOIN lobby");

    let mut line = Line::authed(srv.chat.addr, &soon("ann"));
    line.send("JOIN lobby");
    assert_eq!(line.line(), "OK JOIN lobby");
    let mut web = Web::connect(srv.http.addr, &format!("?token={}", soon("bob")));
    assert_eq!(web.next()["cmd"], "auth");
    // The expiry is the session's own deadline: no message is needed to see it.
    assert_eq!(
        line.line(),
        "ERR token-expired the token has expired; connect again with a fresh one"
    );
    line.expect_eof();
    assert_eq!(web.code(), "token-expired");
    web.expect_close(1008);
    assert_eq!(stays.line(), "JOIN lobby ann");
    assert_eq!(stays.line(), "PART lobby ann");
    stays.send("WHO lobby");
    assert_eq!(
        stays.line(),
        "WHO lobby stays",
        "the refreshed member stays"
    );
}

#[test]
fn at_expiry_both_wires_are_told_and_closed_unless_refreshed_under_threads() {
    at_expiry_both_wires_are_told_and_closed_unless_refreshed(Model::Threads);
}

#[test]
fn at_expiry_both_wires_are_told_and_closed_unless_refreshed_under_async() {
    at_expiry_both_wires_are_told_and_closed_unless_refreshed(Model::Async { workers: 2 });
}

/// A P-256 key pair made now: the private key, and the public key's PEM file.
fn es256_key(dir: &std::path::Path) -> (EncodingKey, std::path::PathBuf) {
    let kp = rcgen::KeyPair::generate().unwrap();
    let path = dir.join("es256-public.pem");
    std::fs::write(&path, kp.public_key_pem()).unwrap();
    (
        EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).unwrap(),
        path,
    )
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("multiclient-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `serve --jwt-public-key PEM` with an EC key accepts ES256 tokens and refuses an
/// HS256 token made with the public key as its secret (algorithm confusion).
#[test]
fn serve_with_an_es256_public_key_refuses_algorithm_confusion() {
    let dir = temp_dir("es256");
    let (private, public) = es256_key(&dir);
    let server = common::spawn_serve(&[
        "--service",
        "chat=127.0.0.1:0",
        "--jwt-public-key",
        public.to_str().unwrap(),
        "--admin",
        "off",
    ]);
    let good = encode(
        &Header::new(Algorithm::ES256),
        &json!({"sub": "ann"}),
        &private,
    )
    .unwrap();
    let forged = encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "ann"}),
        &EncodingKey::from_secret(&std::fs::read(&public).unwrap()),
    )
    .unwrap();
    let mut c = Line::connect(server.addr);
    c.send(&format!("AUTH {forged}"));
    assert_eq!(
        c.line(),
        "ERR bad-token the token's algorithm is not the server's"
    );
    c.send(&format!("AUTH {good}"));
    assert_eq!(c.line(), "OK AUTH ann");
    let _ = std::fs::remove_dir_all(dir);
}

/// `serve --jwt-public-key PEM` with the fixed RSA test key accepts RS256 tokens and
/// refuses an HS256 one made with the public key as its secret.
#[test]
fn serve_with_an_rs256_public_key_accepts_its_tokens_only_and_refuses_algorithm_confusion() {
    let keys = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys");
    let server = common::spawn_serve(&[
        "--service",
        "chat=127.0.0.1:0",
        "--jwt-public-key",
        &format!("{keys}/rsa-public.pem"),
        "--admin",
        "off",
    ]);
    let private = std::fs::read(format!("{keys}/rsa-private.pem")).unwrap();
    let key = EncodingKey::from_rsa_pem(&private).unwrap();
    let good = encode(&Header::new(Algorithm::RS256), &json!({"sub": "ann"}), &key).unwrap();
    let hs = hs256(json!({"sub": "ann"}));
    // Algorithm confusion: the public key, which anyone has, as an HMAC secret.
    let public = std::fs::read(format!("{keys}/rsa-public.pem")).unwrap();
    let forged = encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "ann"}),
        &EncodingKey::from_secret(&public),
    )
    .unwrap();
    let mut c = Line::connect(server.addr);
    c.send(&format!("AUTH {hs}"));
    assert_eq!(c.code(), "bad-token");
    c.send(&format!("AUTH {forged}"));
    assert_eq!(
        c.line(),
        "ERR bad-token the token's algorithm is not the server's"
    );
    c.send(&format!("AUTH {good}"));
    assert_eq!(c.line(), "OK AUTH ann");
}

/// `MULTICLIENT_JWT_SECRET` turns auth on, and `connect chat --token` sends the
/// `AUTH` first, on the line protocol and on `--ws`.
#[test]
fn the_secret_from_the_environment_and_connect_with_a_token() {
    let server = common::spawn_serve_env(
        &[
            "--service",
            "chat=127.0.0.1:0",
            "--service",
            "http=127.0.0.1:0",
            "--admin",
            "off",
        ],
        &[("MULTICLIENT_JWT_SECRET", SECRET)],
    );
    let mut c = Line::connect(server.addr);
    c.send("JOIN lobby");
    assert_eq!(c.code(), "auth-required");
    // The http listener's address is on the second Listening line.
    let http: SocketAddr = server
        .expect_log("Listening on ")
        .split("Listening on ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let token = hs256(json!({"sub": "ann"}));
    for (ws, addr) in [(false, server.addr), (true, http)] {
        let mut args = vec!["connect", "chat", "--token", &token, "--send", "JOIN lobby"];
        if ws {
            args.push("--ws");
        }
        let addr = addr.to_string();
        args.extend(["--addr", &addr]);
        let out = Command::new(env!("CARGO_BIN_EXE_multiclient"))
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        if ws {
            assert!(
                stdout.contains(r#"{"cmd":"auth","nick":"ann","type":"ok"}"#),
                "{stdout}"
            );
            assert!(stdout.contains(r#""cmd":"join""#), "{stdout}");
        } else {
            assert!(stdout.contains("OK AUTH ann\n"), "{stdout}");
            assert!(stdout.contains("OK JOIN lobby\n"), "{stdout}");
        }
    }
}
