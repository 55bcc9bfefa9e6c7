//! A test service that keeps an unfinished line in its input: what a client holds in
//! the server's buffers until its line ends, for the `--max-buffered` tests.

/// A line service that keeps an unfinished line in the engine's pending input, and
/// says how much it was handed each time: `HELD n` when nothing was consumed,
/// `LINE n` for each line.
pub struct Lines;

pub struct LinesSession;

impl multiclient::service::Service for Lines {
    type Session = LinesSession;
    fn name(&self) -> &str {
        "lines"
    }
    fn session(&self, _conn: &multiclient::service::ConnInfo) -> LinesSession {
        LinesSession
    }
}

impl multiclient::service::Session for LinesSession {
    type Event = ();
    fn read(&mut self, input: &[u8], cx: &mut multiclient::service::Cx<'_, ()>) -> usize {
        let Some(end) = input.iter().rposition(|&b| b == b'\n') else {
            cx.send(format!("HELD {}\n", input.len()).as_bytes());
            return 0;
        };
        for line in input[..end].split(|&b| b == b'\n') {
            cx.send(format!("LINE {}\n", line.len()).as_bytes());
        }
        end + 1
    }
    fn goodbye(
        &mut self,
        why: multiclient::service::Goodbye,
        cx: &mut multiclient::service::Cx<'_, ()>,
    ) {
        multiclient::service::line_goodbye(why, cx);
    }
}
