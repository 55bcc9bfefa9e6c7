//! The engine on plain buffers: every status, persistence, pipelining, the timers,
//! shutdown, the upgrade, and proptests over splits and junk.

use super::conn::LAST_CALL;
use super::head::split_target;
use super::ws_tests::{frame, frames, upgrade_request, ACCEPT, TEXT};
use super::*;
use crate::service::Harness;
use crate::service::{ConnInfo, Goodbye, Service, Session};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

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
    // No `Server` header: the software and its version are nobody's business.
    assert!(!r.headers.contains_key("server"), "{:?}", r.headers);
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
        (
            "POST /nope HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n",
            404,
        ),
        (
            "PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n",
            405,
        ),
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
    assert_eq!(h.session().deadline(), None, "empty lines start no timer");
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
    h.feed(
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n12345678\r\n8\r\n",
    );
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
    assert_eq!(h.session().deadline(), None, "no timer before a byte");
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

/// A client pipelines more than the output limit of replies and stops reading them:
/// the server stops reading too, and the request cut at the end of what it read is
/// not late however long that lasts (its rest waits in the socket); every request is
/// answered once the client reads again. A head that stalls while the server reads
/// still gets its 408.
#[test]
fn a_head_waiting_behind_unread_replies_is_not_timed_out() {
    let limits = crate::base::Limits {
        coalesce: Duration::ZERO,
        max_output: 1024,
        ..crate::base::Limits::default()
    };
    let session = Http::new(HttpOptions::default()).session(&ConnInfo::test(1));
    let mut h = Harness::with_limits(session, limits);
    let t0 = h.now;
    let n = 20;
    let req = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    h.feed(format!("{}GET / HT", req.repeat(n)).as_bytes());
    assert!(!h.is_reading(), "20 replies unread pass the 1024 bytes");
    let timeout = HttpOptions::default().header_timeout;
    h.advance_to(t0 + timeout);
    h.advance_to(t0 + 3 * timeout);
    assert!(!h.is_closing());
    let r = responses(&h.take_output(), &[]);
    assert_eq!(r.len(), n);
    assert!(r.iter().all(|r| r.status == 200), "no 408 among them");
    assert!(h.is_reading());
    h.feed(b"TP/1.1\r\nHost: x\r\n\r\n");
    let r = responses(&h.take_output(), &[]);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].status, 200);
    let t1 = h.now;
    h.feed(b"GET / HT");
    h.advance_to(t1 + timeout);
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
    assert_eq!(h.session().deadline(), Some(t0 + timeout));
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
    assert_eq!(h.session().deadline(), None);
}

#[test]
fn keep_alive_idle_has_no_header_timer() {
    let mut h = harness();
    h.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(h.session().deadline(), None);
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
    assert_eq!(h.session().deadline(), Some(t0 + LAST_CALL));
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
    assert!(h.session().is_websocket());
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

#[test]
fn a_body_past_the_servers_buffer_budget_is_refused_503_and_its_bytes_given_back() {
    let budget = Arc::new(crate::base::budget::Budget::new(256 * 1024));
    let mut h = harness().with_budget(budget.clone());
    h.feed(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 900000\r\n\r\n");
    h.feed(&vec![b'a'; 100 * 1024]);
    assert!(budget.used() > 0, "a body being read is charged");
    assert!(
        h.take_output().is_empty(),
        "under the budget it is still read"
    );
    h.feed(&vec![b'a'; 300 * 1024]);
    let out = String::from_utf8_lossy(&h.take_output()).into_owned();
    assert!(out.starts_with("HTTP/1.1 503 "), "{out}");
    assert!(out.contains("Retry-After: 1\r\n"), "{out}");
    assert!(h.is_closing());
    assert_eq!(budget.used(), 0, "the refused body's bytes are given back");
    let over = h
        .stats()
        .over_budget
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(over, 1, "counted in over_budget");
    assert_eq!(h.closed_by(), Some("over_budget"));
}

#[test]
fn a_body_read_whole_gives_its_bytes_back() {
    let budget = Arc::new(crate::base::budget::Budget::new(1 << 20));
    let mut h = harness().with_budget(budget.clone());
    h.feed(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\n\r\n");
    h.feed(&vec![b'a'; 200_000]);
    assert!(!h.take_output().is_empty(), "answered");
    assert_eq!(budget.used(), 0);
}

/// Pieces of request heads, well-formed and not: odd line ends, empty lines before the
/// request line, versions, too many fields, bytes httparse refuses.
fn head_piece() -> impl proptest::strategy::Strategy<Value = &'static str> {
    proptest::sample::select(vec![
        "GET / HTTP/1.1\r\n",
        "HEAD / HTTP/1.1\n",
        "GET /ws HTTP/1.0\r\n",
        "POST /x HTTP/1.1\r\n",
        "GET / HTTP/2.0\r\n",
        "GET /?a=b HTTP/1.1\r\n",
        "\r\n",
        "\n",
        "Host: x\r\n",
        "Host: y\n",
        "Connection: close\r\n",
        "Content-Length: 2\r\n",
        "Transfer-Encoding: chunked\r\n",
        "X-A: \x01\r\n",
        "Bad Name: v\r\n",
        "X-B: v\r",
        "ab",
        "0\r\n",
    ])
}

proptest::proptest! {
    #[test]
    fn a_head_read_whole_is_answered_as_when_its_end_is_searched_for(
        pieces in proptest::collection::vec(head_piece(), 1..12),
        fields in 0usize..70,
    ) {
        // Whole, the first head of a read is parsed at once; after a first byte alone
        // the session waits for the head's end and parses up to it. Both must agree.
        let mut bytes: Vec<u8> = pieces.concat().into_bytes();
        if fields > 60 {
            // Past the limit of fields (431).
            bytes.splice(0..0, "GET / HTTP/1.1\r\n".bytes().chain("X: y\r\n".repeat(fields).into_bytes()));
        }
        bytes.extend_from_slice(b"\r\n\r\n");
        let whole = run_split(&bytes, &[]);
        let split = run_split(&bytes, &[1]);
        let strip = |b: &[u8]| String::from_utf8_lossy(b).lines().filter(|l| !l.starts_with("Date:")).collect::<Vec<_>>().join("\n");
        proptest::prop_assert_eq!(strip(&split.0), strip(&whole.0));
        proptest::prop_assert_eq!(split.1, whole.1);
    }
}
