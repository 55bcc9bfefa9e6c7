//! The HTTP service driven as a model drives it: arbitrary bytes cut into arbitrary
//! reads, with a goodbye (busy, idle, shutdown, slow consumer) or a late timer thrown
//! in. Asserts that every byte out is whole responses that parse completely, each body
//! as long as its `Content-Length` (WebSocket frames after a `101`), nothing after a
//! `Connection: close`; and, with no goodbye, that the reads' split changes nothing.

#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use multiclient::service::http::{Http, HttpOptions};
use multiclient::service::{ConnInfo, Goodbye, Harness, Service};
use multiclient_fuzz::{reads, wire, without_date};

struct Run {
    small_body: bool,
    late: bool,
    goodbye: Option<(usize, Goodbye)>,
}

impl Run {
    fn go(&self, reads: &[&[u8]]) -> (Vec<u8>, bool) {
        let svc = Http::new(HttpOptions {
            max_body: if self.small_body { 64 } else { 4096 },
            ..HttpOptions::default()
        });
        let mut h = Harness::new(svc.session(&ConnInfo::test(1)));
        for (i, r) in reads.iter().enumerate() {
            if let Some((at, why)) = self.goodbye {
                if i == at {
                    h.goodbye(why);
                }
            }
            h.feed(r);
        }
        if self.late {
            let t = h.now + Duration::from_secs(3600);
            h.advance_to(t);
        }
        h.eof();
        (h.take_output(), h.is_closing())
    }
}

fuzz_target!(|data: &[u8]| {
    let [mode, seed, bytes @ ..] = data else {
        return;
    };
    let goodbye = match (mode >> 2) & 7 {
        4 => Some(Goodbye::Busy),
        5 => Some(Goodbye::Idle),
        6 => Some(Goodbye::Shutdown),
        7 => Some(Goodbye::SlowConsumer),
        _ => None,
    };
    let run = Run {
        small_body: mode & 1 != 0,
        late: mode & 2 != 0,
        goodbye: goodbye.map(|g| (usize::from(mode >> 5), g)),
    };
    let split = reads(*seed, bytes);
    let (out, closing) = run.go(&split);
    let head_sent = bytes.windows(4).any(|w| w == b"HEAD");
    if let Err(e) = wire::http_responses(&out, head_sent) {
        panic!("{e}\ninput: {:?}", String::from_utf8_lossy(bytes));
    }
    if run.goodbye.is_none() && split.len() > 1 {
        let (whole, whole_closing) = run.go(&[bytes]);
        assert_eq!(
            String::from_utf8_lossy(&without_date(&out)),
            String::from_utf8_lossy(&without_date(&whole)),
            "a split changed the answers"
        );
        assert_eq!(closing, whole_closing);
    }
});
