//! Property tests of every parser, driven as the fuzz targets drive them (`fuzz/`), on
//! plain buffers with no socket: any split of the input into reads gives the same
//! answers as one read; no input panics, and whatever comes out is whole protocol
//! units (`wire`); generated valid requests and commands get exactly the answers the
//! protocol promises.

mod wire;

use std::sync::Arc;
use std::time::Duration;

use multiclient::service::chat::json;
use multiclient::service::chat::{parse, Chat, ChatOptions, ChatSession, Command};
use multiclient::service::http::fuzzing::{decode_body, parse_head, BodyOutcome, Framing};
use multiclient::service::http::{Http, HttpOptions, Ws, HELLO};
use multiclient::service::{ConnInfo, Harness, Service, Session};
use proptest::prelude::*;

/// `bytes` cut at `cuts` (taken modulo its length, in order).
fn cut<'a>(bytes: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut at: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    at.sort_unstable();
    let mut reads = Vec::new();
    let mut last = 0;
    for c in at {
        reads.push(&bytes[last..c]);
        last = c;
    }
    reads.push(&bytes[last..]);
    reads
}

fn feed_all<S: Session>(h: &mut Harness<S>, reads: &[&[u8]]) {
    for r in reads {
        h.feed(r);
    }
}

/// The output without its `Date:` lines, which may tick between two runs.
fn without_date(out: &[u8]) -> String {
    String::from_utf8_lossy(out)
        .split("\r\n")
        .filter(|l| !l.starts_with("Date: "))
        .collect::<Vec<_>>()
        .join("\r\n")
}

fn cuts() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(any::<usize>(), 0..12)
}

fn name() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_.-]{1,20}"
}

/// A request the http service answers, and the status it answers with (its app
/// serves GET and HEAD only: a POST's body is read, then refused 405).
#[derive(Debug, Clone)]
enum Req {
    Get,
    Head,
    Post(Vec<u8>, bool),
    Missing(String),
    Delete,
}

impl Req {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Req::Get => b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            Req::Head => b"HEAD /?q=1 HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            Req::Post(body, false) => {
                let mut v = format!(
                    "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                )
                .into_bytes();
                v.extend_from_slice(body);
                v
            }
            Req::Post(body, true) => {
                let mut v =
                    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
                v.extend(chunked(body, 7));
                v
            }
            Req::Missing(p) => format!("GET /{p}/x HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes(),
            Req::Delete => b"DELETE / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        }
    }

    fn status(&self) -> u16 {
        match self {
            Req::Get | Req::Head => 200,
            Req::Missing(_) => 404,
            Req::Post(..) | Req::Delete => 405,
        }
    }
}

/// `body` in chunks of at most `size` bytes, with a trailer.
fn chunked(body: &[u8], size: usize) -> Vec<u8> {
    let mut v = Vec::new();
    for c in body.chunks(size.max(1)) {
        v.extend(format!("{:x}\r\n", c.len()).into_bytes());
        v.extend_from_slice(c);
        v.extend_from_slice(b"\r\n");
    }
    v.extend_from_slice(b"0\r\nX-T: 1\r\n\r\n");
    v
}

fn request() -> impl Strategy<Value = Req> {
    prop_oneof![
        Just(Req::Get),
        Just(Req::Head),
        (prop::collection::vec(any::<u8>(), 0..200), any::<bool>())
            .prop_map(|(b, c)| Req::Post(b, c)),
        name().prop_map(Req::Missing),
        Just(Req::Delete),
    ]
}

fn http(reads: &[&[u8]]) -> (Vec<u8>, bool) {
    let mut h = Harness::new(Http::new(HttpOptions::default()).session(&ConnInfo::test(1)));
    feed_all(&mut h, reads);
    h.eof();
    (h.take_output(), h.is_closing())
}

/// A masked client frame.
fn frame(op: u8, payload: &[u8]) -> Vec<u8> {
    let key = [1, 2, 3, 4];
    let mut v = vec![0x80 | op];
    if payload.len() < 126 {
        v.push(0x80 | payload.len() as u8);
    } else {
        v.push(0x80 | 126);
        v.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    v.extend_from_slice(&key);
    v.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    v
}

const UPGRADE: &[u8] =
    b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

fn ws(reads: &[&[u8]]) -> (Vec<u8>, bool) {
    let mut h = Harness::new(Ws::new(HttpOptions::default()).session(&ConnInfo::test(1)));
    h.feed(UPGRADE);
    feed_all(&mut h, reads);
    (h.take_output(), h.is_closing())
}

/// A chat of one member on a fresh hub: everything it was told, the welcome included.
fn chat(reads: &[&[u8]], max_line: usize) -> Vec<u8> {
    let mut opts = ChatOptions::default();
    opts.max_line = max_line;
    let chat = Chat::new(opts.hub().unwrap(), &opts);
    let mut h: Harness<ChatSession> = Harness::new(chat.session(&ConnInfo::test(1)));
    let mut out = Vec::new();
    let mut drain = |h: &mut Harness<ChatSession>| loop {
        h.deliver();
        let more = h.take_output();
        if more.is_empty() {
            break;
        }
        out.extend(more);
    };
    for r in reads {
        h.feed(r);
        drain(&mut h);
    }
    h.eof();
    drain(&mut h);
    out
}

/// A valid chat command line and the answer it gets from a member called `guest-1`
/// who is in `room` (message ids counted from the first, see `wire::chat_ids_from_zero`).
#[derive(Debug, Clone)]
enum Cmd {
    Say(String),
    Who,
    History(usize),
    Nick(String),
}

fn command() -> impl Strategy<Value = Cmd> {
    prop_oneof![
        "[a-zA-Z0-9 !?,.]{1,40}".prop_map(Cmd::Say),
        Just(Cmd::Who),
        (0usize..5).prop_map(Cmd::History),
        "[a-z]{1,10}"
            .prop_filter("the server's nick", |n| n != "server")
            .prop_map(Cmd::Nick),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// A generated head is read as written, and every prefix of it waits for more.
    #[test]
    fn a_valid_request_head_reads_as_written_and_its_prefixes_wait(
        path in "(/[a-z0-9]{0,8}){1,3}",
        query in proptest::option::of("[a-z0-9=&]{0,10}"),
        v10 in any::<bool>(),
        len in proptest::option::of(0usize..5000),
        close in any::<bool>(),
        at in any::<usize>(),
    ) {
        let target = match &query { Some(q) => format!("{path}?{q}"), None => path.clone() };
        let mut head = format!("GET {target} HTTP/1.{}\r\nHost: x\r\n", if v10 { 0 } else { 1 });
        if let Some(n) = len { head.push_str(&format!("Content-Length: {n}\r\n")); }
        if close { head.push_str("Connection: close\r\n"); }
        head.push_str("\r\n");
        let mut input = head.clone().into_bytes();
        input.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let got = parse_head(&input, 1 << 20).unwrap().expect("a complete head");
        prop_assert_eq!(got.len, head.len());
        prop_assert_eq!(&got.path, &path);
        prop_assert_eq!(&got.query, &query);
        prop_assert_eq!(got.version, u8::from(!v10));
        prop_assert_eq!(got.keep_alive, !v10 && !close);
        prop_assert_eq!(got.body, len.filter(|&n| n > 0).map(Framing::Length));
        let k = at % head.len();
        prop_assert_eq!(parse_head(&input[..k], 1 << 20), Ok(None));
    }

    /// Any bytes: no panic, and a complete head reads the same without what follows.
    #[test]
    fn any_head_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        if let Ok(Some(h)) = parse_head(&bytes, 4096) {
            prop_assert_eq!(parse_head(&bytes[..h.len], 4096), Ok(Some(h)));
        }
    }

    /// A chunked body in any chunk sizes, in any reads, decodes to the body.
    #[test]
    fn a_chunked_body_decodes_whole_in_any_reads(
        body in prop::collection::vec(any::<u8>(), 0..2000),
        size in 1usize..300,
        cuts in cuts(),
        tail in prop::collection::vec(any::<u8>(), 0..20),
    ) {
        let mut input = chunked(&body, size);
        let framing_len = input.len();
        input.extend_from_slice(&tail);
        let want = BodyOutcome::Done { used: framing_len, body: body.clone() };
        prop_assert_eq!(decode_body(Framing::Chunked, 4096, [&input[..]]), want.clone());
        prop_assert_eq!(decode_body(Framing::Chunked, 4096, cut(&input, &cuts)), want);
    }

    /// Any body bytes, either framing: the reads' split changes nothing.
    #[test]
    fn any_body_bytes_decode_the_same_in_any_reads(
        bytes in prop::collection::vec(any::<u8>(), 0..1500),
        length in proptest::option::of(1usize..2000),
        cuts in cuts(),
    ) {
        let framing = length.map_or(Framing::Chunked, Framing::Length);
        let whole = decode_body(framing, 1000, [&bytes[..]]);
        prop_assert_eq!(decode_body(framing, 1000, cut(&bytes, &cuts)), whole);
    }

    /// Pipelined valid requests, in any reads: one whole response each, in order.
    #[test]
    fn valid_requests_in_any_reads_get_their_answers_in_order(
        reqs in prop::collection::vec(request(), 1..6),
        cuts in cuts(),
    ) {
        let input: Vec<u8> = reqs.iter().flat_map(Req::bytes).collect();
        let (out, closing) = http(&cut(&input, &cuts));
        let head = reqs.iter().any(|r| matches!(r, Req::Head));
        let codes = wire::http_responses(&out, head).map_err(TestCaseError::fail)?;
        prop_assert_eq!(codes, reqs.iter().map(Req::status).collect::<Vec<_>>());
        prop_assert!(closing, "EOF closes");
        let hellos = String::from_utf8_lossy(&out).matches(HELLO).count();
        let bodies = reqs.iter().filter(|r| matches!(r, Req::Get)).count();
        prop_assert_eq!(hellos, bodies);
    }

    /// Any bytes after valid requests: whole responses only, the same in any reads.
    #[test]
    fn any_http_bytes_get_whole_responses_the_same_in_any_reads(
        reqs in prop::collection::vec(request(), 0..3),
        junk in prop::collection::vec(any::<u8>(), 0..800),
        cuts in cuts(),
    ) {
        let mut input: Vec<u8> = reqs.iter().flat_map(Req::bytes).collect();
        input.extend_from_slice(&junk);
        let whole = http(&[&input[..]]);
        let head = input.windows(4).any(|w| w == b"HEAD");
        wire::http_responses(&whole.0, head).map_err(TestCaseError::fail)?;
        let split = http(&cut(&input, &cuts));
        prop_assert_eq!(without_date(&split.0), without_date(&whole.0));
        prop_assert_eq!(split.1, whole.1);
    }

    /// Text and binary messages, in any reads: each echoed as one whole frame.
    #[test]
    fn websocket_messages_in_any_reads_are_echoed_whole(
        msgs in prop::collection::vec(("[^\u{0}]{0,60}", any::<bool>()), 1..6),
        cuts in cuts(),
    ) {
        let input: Vec<u8> = msgs.iter().flat_map(|(m, text)| frame(if *text { 1 } else { 2 }, m.as_bytes())).collect();
        let (out, _) = ws(&cut(&input, &cuts));
        let codes = wire::http_responses(&out, false).map_err(TestCaseError::fail)?;
        prop_assert_eq!(codes, [101]);
        let body = &out[out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4..];
        let frames = wire::ws_frames(body).map_err(TestCaseError::fail)?;
        let want: Vec<wire::Frame> = msgs
            .iter()
            .map(|(m, text)| (if *text { 1 } else { 2 }, format!("Server received: {m}").into_bytes()))
            .collect();
        prop_assert_eq!(frames, want);
    }

    /// Any bytes after the upgrade: whole server frames, the same in any reads.
    #[test]
    fn any_websocket_bytes_get_whole_frames_the_same_in_any_reads(
        junk in prop::collection::vec(any::<u8>(), 0..800),
        masked in prop::collection::vec((0u8..16, any::<bool>(), prop::collection::vec(any::<u8>(), 0..130)), 0..5),
        cuts in cuts(),
    ) {
        let mut input: Vec<u8> = masked.iter().flat_map(|(op, fin, p)| {
            let mut f = frame(*op, p);
            if !fin { f[0] &= 0x7f; }
            f
        }).collect();
        input.extend_from_slice(&junk);
        let whole = ws(&[&input[..]]);
        wire::http_responses(&whole.0, false).map_err(TestCaseError::fail)?;
        prop_assert_eq!(ws(&cut(&input, &cuts)), whole);
    }

    /// Valid commands, in any reads: the answers the protocol promises, in order.
    #[test]
    fn valid_chat_commands_in_any_reads_get_their_answers(
        room in name(),
        cmds in prop::collection::vec(command(), 0..8),
        crlf in any::<bool>(),
        cuts in cuts(),
    ) {
        let eol = if crlf { "\r\n" } else { "\n" };
        let mut input = format!("JOIN {room}{eol}");
        let mut want = format!("WELCOME guest-1\nOK JOIN {room}\n");
        let mut nick = "guest-1".to_string();
        let mut said: Vec<String> = Vec::new();
        for c in &cmds {
            match c {
                Cmd::Say(t) => {
                    input.push_str(&format!("SAY {room} {t}{eol}"));
                    let line = format!("MSG {room} {} {nick} {t}\n", said.len());
                    want.push_str(&line);
                    said.push(line);
                }
                Cmd::Who => {
                    input.push_str(&format!("who {room}{eol}"));
                    want.push_str(&format!("WHO {room} {nick}\n"));
                }
                Cmd::History(n) => {
                    input.push_str(&format!("HISTORY {room} {n}{eol}"));
                    for l in &said[said.len().saturating_sub(*n)..] {
                        want.push_str(l);
                    }
                    want.push_str(&format!("OK HISTORY {room}\n"));
                }
                Cmd::Nick(n) => {
                    input.push_str(&format!("NICK {n}{eol}"));
                    // The others in the room are told; the member itself is not.
                    want.push_str(&format!("OK NICK {n}\n"));
                    nick = n.clone();
                }
            }
        }
        input.push_str(&format!("QUIT{eol}"));
        want.push_str("OK QUIT\n");
        let got = chat(&cut(input.as_bytes(), &cuts), 4096);
        prop_assert_eq!(wire::chat_ids_from_zero(&got), want);
    }

    /// Any bytes: whole protocol lines only, the same in any reads.
    #[test]
    fn any_chat_bytes_get_whole_lines_the_same_in_any_reads(
        lines in prop::collection::vec(prop_oneof![
            "(NICK|JOIN|PART|SAY|WHO|HISTORY|QUIT|nick|say) [ a-z0-9]{0,30}",
            "[^\n]{0,70}",
        ], 0..10),
        cuts in cuts(),
    ) {
        let input = lines.join("\n");
        let whole = chat(&[input.as_bytes()], 40);
        wire::chat_lines(&whole).map_err(TestCaseError::fail)?;
        prop_assert_eq!(
            wire::chat_ids_from_zero(&chat(&cut(input.as_bytes(), &cuts), 40)),
            wire::chat_ids_from_zero(&whole)
        );
        for l in &lines {
            if let Ok(c) = parse(l.as_bytes()) {
                let empty_say = matches!(c, Command::Say { text: "", .. });
                prop_assert!(!empty_say, "a SAY without text parsed");
            }
        }
    }

    /// Any JSON payload: no panic, and a non-object is `bad-json`.
    #[test]
    fn any_json_payload_decodes_or_is_refused_plainly(payload in prop_oneof![
        prop::collection::vec(any::<u8>(), 0..200),
        r#"\{("(type|room|nick|text|n|after)":("[a-z]{0,6}"|[0-9]{1,3}|null|\[\]),?){0,4}\}"#.prop_map(String::into_bytes),
    ]) {
        match json::decode(&payload) {
            Ok(i) => { let _ = i.command(); }
            Err(e) if payload.trim_ascii_start().first() != Some(&b'{') => prop_assert_eq!(e.code, "bad-json"),
            Err(_) => {}
        }
    }

    /// Generated JSON commands decode to the line protocol's command.
    #[test]
    fn valid_json_commands_decode_to_their_commands(room in name(), nick in name(), text in "[^\"\\\\\u{0}-\u{1f}]{1,40}", n in 0usize..100, id in any::<u64>()) {
        let cases: Vec<(String, Command<'_>)> = vec![
            (format!(r#"{{"type":"join","room":"{room}"}}"#), Command::Join { room: &room, after: None }),
            (format!(r#"{{"type":"join","room":"{room}","after":"{id}"}}"#), Command::Join { room: &room, after: Some(multiclient::hub::MsgId(id)) }),
            (format!(r#"{{"type":"nick","nick":"{nick}","id":3}}"#), Command::Nick(&nick)),
            (format!(r#"{{"type":"say","room":"{room}","text":"{text}"}}"#), Command::Say { room: &room, text: &text }),
            (format!(r#"{{"type":"history","room":"{room}","n":{n}}}"#), Command::History { room: &room, n }),
            (format!(r#"{{"type":"who","room":"{room}"}}"#), Command::Who(&room)),
            (format!(r#"{{"type":"part","room":"{room}"}}"#), Command::Part(&room)),
            (r#"{"type":"quit"}"#.to_string(), Command::Quit),
        ];
        for (payload, want) in cases {
            let got = json::decode(payload.as_bytes()).map_err(|e| TestCaseError::fail(e.code))?;
            prop_assert_eq!(got.command(), Ok(want));
        }
    }
}

/// A blank line longer than `--max-line` was ignored when it came in one read but
/// refused `line-too-long` when it came in pieces (found by the `chat_line` fuzz target).
#[test]
fn a_long_blank_line_is_refused_alike_in_one_read_or_in_pieces() {
    let input = format!("{}\nQUIT\n", " ".repeat(83));
    let whole = chat(&[input.as_bytes()], 40);
    let pieces = chat(&cut(input.as_bytes(), &[30, 60]), 40);
    assert_eq!(
        String::from_utf8_lossy(&whole),
        String::from_utf8_lossy(&pieces)
    );
    assert!(String::from_utf8_lossy(&whole).contains("ERR line-too-long"));
}

/// A line found too long before its end is seen was answered at once, ahead of a
/// `SAY` before it still waiting for its own `MSG`; in one read it came after (found by
/// the `chat_line` fuzz target).
#[test]
fn a_line_too_long_is_answered_after_the_say_before_it_in_any_reads() {
    let input = format!("JOIN r\nSAY r yo\n{}", "x".repeat(60));
    let whole = chat(&[input.as_bytes()], 40);
    let pieces = chat(&cut(input.as_bytes(), &[16, 50]), 40);
    let whole = wire::chat_ids_from_zero(&whole);
    assert_eq!(whole, wire::chat_ids_from_zero(&pieces));
    assert!(
        whole.ends_with(
            "MSG r 0 guest-1 yo\nERR line-too-long command lines are limited in length\n"
        ),
        "{whole}"
    );
}

/// A chunk-size line over the 1 KiB limit was accepted in one read but refused
/// when it came in pieces (found by the `http_body` fuzz target).
#[test]
fn a_long_chunk_size_line_is_refused_alike_in_one_read_or_in_pieces() {
    let input = format!("3;{}\r\nabc\r\n0\r\n\r\n", "e".repeat(1100));
    let whole = decode_body(Framing::Chunked, 4096, [input.as_bytes()]);
    let pieces = decode_body(Framing::Chunked, 4096, cut(input.as_bytes(), &[500, 1050]));
    assert_eq!(whole, pieces);
    assert!(matches!(whole, BodyOutcome::Refused(_)), "{whole:?}");
}

/// A busy goodbye while only stray line ends had come (no request started yet) drops
/// the unread input, but the session kept how far it had scanned it: the next, shorter
/// read was sliced past its end and panicked (found by the `http_session` fuzz target).
#[test]
fn a_busy_goodbye_after_stray_line_ends_then_a_short_read_gets_a_503_not_a_panic() {
    let mut h = Harness::new(Http::new(HttpOptions::default()).session(&ConnInfo::test(1)));
    h.feed(b"\r\r\r\r\r\r\r\r");
    h.goodbye(multiclient::service::Goodbye::Busy);
    h.feed(b"\r\n");
    h.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let out = h.take_output();
    assert_eq!(wire::http_responses(&out, false), Ok(vec![503]), "{out:?}");
}

mod tls {
    //! The TLS wrapper: junk records never panic and only whole records come out;
    //! a real client's flights in any reads reach the service.

    use super::*;
    use multiclient::service::tls::{Tls, TlsSession};
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig};
    use std::io::{Read, Write};
    use std::sync::OnceLock;

    /// The server's config, and clients trusting it: any version, and TLS 1.2 only.
    type Configs = (Arc<ServerConfig>, Arc<ClientConfig>, Arc<ClientConfig>);

    fn configs() -> Configs {
        static C: OnceLock<Configs> = OnceLock::new();
        C.get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let key = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
            let cert = CertificateDer::from(key.cert.der().to_vec());
            let pk = PrivateKeyDer::try_from(key.signing_key.serialize_der()).unwrap();
            let server = ServerConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![cert.clone()], pk)
                .unwrap();
            let mut roots = RootCertStore::empty();
            roots.add(cert).unwrap();
            let client = |versions: &[&'static rustls::SupportedProtocolVersion]| {
                Arc::new(
                    ClientConfig::builder_with_provider(provider.clone())
                        .with_protocol_versions(versions)
                        .unwrap()
                        .with_root_certificates(roots.clone())
                        .with_no_client_auth(),
                )
            };
            (
                Arc::new(server),
                client(rustls::ALL_VERSIONS),
                client(&[&rustls::version::TLS12]),
            )
        })
        .clone()
    }

    fn server() -> Harness<TlsSession<<Http as Service>::Session>> {
        let tls = Tls::new(
            Http::new(HttpOptions::default()),
            configs().0,
            Duration::from_secs(10),
        );
        Harness::new(tls.session(&ConnInfo::test(1)))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        #[test]
        fn any_records_never_panic_and_get_whole_records(
            junk in prop::collection::vec(any::<u8>(), 0..2000),
            header in any::<bool>(),
            cuts in cuts(),
        ) {
            let mut input = Vec::new();
            if header {
                // A handshake record header, so the junk reaches the handshake parser.
                input.extend_from_slice(&[22, 3, 1]);
                input.extend_from_slice(&(junk.len() as u16).to_be_bytes());
            }
            input.extend_from_slice(&junk);
            let mut h = server();
            feed_all(&mut h, &cut(&input, &cuts));
            h.eof();
            wire::tls_records(&h.take_output()).map_err(TestCaseError::fail)?;
        }

        #[test]
        fn a_clients_flights_in_any_reads_reach_the_service(cuts in cuts(), tls12 in any::<bool>()) {
            let (_, any, v12) = configs();
            let client = if tls12 { v12 } else { any };
            let mut c = ClientConnection::new(client, ServerName::try_from("localhost").unwrap()).unwrap();
            c.writer().write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
            let mut h = server();
            let mut plain = Vec::new();
            for _ in 0..10 {
                let mut to_server = Vec::new();
                while c.wants_write() {
                    c.write_tls(&mut to_server).unwrap();
                }
                feed_all(&mut h, &cut(&to_server, &cuts));
                let to_client = h.take_output();
                wire::tls_records(&to_client).map_err(TestCaseError::fail)?;
                if to_server.is_empty() && to_client.is_empty() {
                    break;
                }
                let mut rd = &to_client[..];
                while !rd.is_empty() {
                    c.read_tls(&mut rd).unwrap();
                    c.process_new_packets().unwrap();
                }
                let _ = c.reader().read_to_end(&mut plain);
            }
            let codes = wire::http_responses(&plain, false).map_err(TestCaseError::fail)?;
            prop_assert_eq!(codes, [200]);
            prop_assert!(String::from_utf8_lossy(&plain).ends_with(HELLO));
        }
    }
}

mod proxy {
    //! The PROXY header (v1 and v2) and the gate that reads it: valid headers of every
    //! kind in any reads give their address and pass on exactly the bytes after them;
    //! any bytes give the same address, bytes and refusal in one read or in pieces.

    use super::*;
    use multiclient::service::proxy::{parse, Parsed, MAX_HEADER};
    use std::net::{IpAddr, SocketAddr};

    /// What the gate passed on after `reads`, and whether it is closing.
    fn gate(reads: &[&[u8]]) -> (String, bool) {
        let (out, closing) = multiclient::service::gate::fuzzing::gate(reads);
        (String::from_utf8_lossy(&out).into_owned(), closing)
    }

    const V2_SIG: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

    /// A header of every kind the protocol has, and the address it gives (`None`:
    /// the socket's peer stays the client).
    #[derive(Debug, Clone)]
    enum Kind {
        V1(SocketAddr),
        V1Unknown,
        V2(SocketAddr, Vec<u8>),
        V2Local,
    }

    impl Kind {
        fn bytes(&self) -> Vec<u8> {
            match self {
                Kind::V1(a) => {
                    let fam = if a.is_ipv4() { "TCP4" } else { "TCP6" };
                    let dst = if a.is_ipv4() { "127.0.0.1" } else { "::1" };
                    format!("PROXY {fam} {} {dst} {} 8080\r\n", a.ip(), a.port()).into_bytes()
                }
                Kind::V1Unknown => b"PROXY UNKNOWN\r\n".to_vec(),
                Kind::V2(a, tlv) => {
                    let mut addrs = Vec::new();
                    let fam = match a.ip() {
                        IpAddr::V4(ip) => {
                            addrs.extend_from_slice(&ip.octets());
                            addrs.extend_from_slice(&[127, 0, 0, 1]);
                            0x11
                        }
                        IpAddr::V6(ip) => {
                            addrs.extend_from_slice(&ip.octets());
                            addrs.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
                            0x21
                        }
                    };
                    addrs.extend_from_slice(&a.port().to_be_bytes());
                    addrs.extend_from_slice(&8080u16.to_be_bytes());
                    // One NOOP TLV carrying `tlv`: skipped, whatever it holds.
                    addrs.push(0x04);
                    addrs.extend_from_slice(&(tlv.len() as u16).to_be_bytes());
                    addrs.extend_from_slice(tlv);
                    let mut h = V2_SIG.to_vec();
                    h.extend_from_slice(&[0x21, fam]);
                    h.extend_from_slice(&(addrs.len() as u16).to_be_bytes());
                    h.extend_from_slice(&addrs);
                    h
                }
                Kind::V2Local => {
                    let mut h = V2_SIG.to_vec();
                    h.extend_from_slice(&[0x20, 0x00, 0, 0]);
                    h
                }
            }
        }

        fn source(&self) -> Option<SocketAddr> {
            match self {
                Kind::V1(a) | Kind::V2(a, _) => Some(*a),
                _ => None,
            }
        }
    }

    fn kind() -> impl Strategy<Value = Kind> {
        prop_oneof![
            any::<SocketAddr>().prop_map(Kind::V1),
            Just(Kind::V1Unknown),
            (
                any::<SocketAddr>(),
                prop::collection::vec(any::<u8>(), 0..300)
            )
                .prop_map(|(a, t)| Kind::V2(a, t)),
            Just(Kind::V2Local),
        ]
    }

    /// An IPv6 address as a v6 `SocketAddr` carries it: no flow info, no scope.
    fn plain(a: SocketAddr) -> SocketAddr {
        SocketAddr::new(a.ip(), a.port())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Every kind of header, then the client's own bytes, in any reads: the
        /// header's address, then exactly the bytes after it, nothing closed.
        #[test]
        fn a_valid_header_in_any_reads_gives_its_address_and_passes_on_the_rest(
            kind in kind(),
            rest in prop::collection::vec(any::<u8>(), 0..100),
            cuts in cuts(),
        ) {
            let kind = match kind {
                Kind::V1(a) => Kind::V1(plain(a)),
                Kind::V2(a, t) => Kind::V2(plain(a), t),
                k => k,
            };
            let header = kind.bytes();
            let mut input = header.clone();
            input.extend_from_slice(&rest);
            let parsed = parse(&input);
            match &parsed {
                Parsed::Header { len, source, .. } => {
                    prop_assert_eq!(*len, header.len());
                    prop_assert_eq!(*source, kind.source());
                }
                other => prop_assert!(false, "{:?} for {:?}", other, kind),
            }
            let peer = kind.source().unwrap_or(ConnInfo::test(1).peer);
            let want = format!("open {peer}\n{}", String::from_utf8_lossy(&rest));
            prop_assert_eq!(gate(&cut(&input, &cuts)), (want, false));
        }

        /// Any bytes, and any bytes after a valid header's start: the same address,
        /// bytes and refusal in any reads as in one; a header read is within the input
        /// and reads the same alone; a refusal passes nothing on and closes.
        #[test]
        fn any_proxy_bytes_give_the_same_address_or_refusal_in_any_reads(
            start in proptest::option::of(kind()),
            junk in prop::collection::vec(any::<u8>(), 0..300),
            cut_at in any::<usize>(),
            cuts in cuts(),
        ) {
            let mut input = Vec::new();
            if let Some(k) = start {
                let h = k.bytes();
                input.extend_from_slice(&h[..cut_at % (h.len() + 1)]);
            }
            input.extend_from_slice(&junk);
            let whole = gate(&[&input]);
            match parse(&input) {
                Parsed::Header { len, .. } => {
                    prop_assert!(len <= input.len() && len <= MAX_HEADER);
                    prop_assert_eq!(&parse(&input[..len]), &parse(&input));
                    prop_assert!(whole.0.starts_with("open ") && !whole.1);
                }
                Parsed::Invalid(_) => prop_assert_eq!(&whole, &(String::new(), true)),
                Parsed::Incomplete => prop_assert_eq!(&whole, &(String::new(), false)),
            }
            prop_assert_eq!(gate(&cut(&input, &cuts)), whole);
        }
    }
}
