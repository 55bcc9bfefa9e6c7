//! The request-head parser and the body decoder on their own, as the session
//! ([`super::conn`]) uses them, for the fuzz targets (`fuzz/fuzz_targets/http_head.rs`,
//! `http_body.rs`) and the property tests (`tests/parsers.rs`). Not an API: hidden
//! from the docs, and shaped only by what those checks need to see.

use super::decode::{self, Body, Decoded};
use super::head::{empty_lines, find_head_end, framing, split_target};
use super::{MAX_HEAD, MAX_HEADERS};

/// How a request's body is framed, as its head says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `Content-Length: n` (never 0: no body is `None`).
    Length(usize),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// What a complete request head decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Bytes of the head, the empty lines before it included.
    pub len: usize,
    /// The method as sent.
    pub method: String,
    /// The path an app routes on (origin form, without the query).
    pub path: String,
    /// The query, after `?`.
    pub query: Option<String>,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    /// The connection persists after the answer.
    pub keep_alive: bool,
    /// The body's framing; `None`, no body.
    pub body: Option<Framing>,
    /// The client waits for `100 Continue`.
    pub expect_continue: bool,
}

/// Reads the request head at the start of `input` as the session does. `Ok(None)`:
/// not complete yet, more bytes are needed. `Err`: the refusal (status and reason, as
/// the session would answer it).
pub fn parse_head(input: &[u8], max_body: usize) -> Result<Option<Head>, String> {
    let lead = empty_lines(input);
    let Some(end) = find_head_end(&input[lead..]).map(|e| lead + e) else {
        if input.len() > MAX_HEAD {
            return Err("431 request head too large".into());
        }
        return Ok(None);
    };
    if end > MAX_HEAD {
        return Err("431 request head too large".into());
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(&input[lead..end]) {
        Ok(httparse::Status::Complete(n)) => {
            let f = framing(&req, max_body).map_err(|e| format!("{e:?}"))?;
            let (path, query) = split_target(req.path.unwrap_or("/"));
            Ok(Some(Head {
                len: lead + n,
                method: req.method.unwrap_or("").to_string(),
                path: path.to_string(),
                query: query.map(str::to_string),
                version: req.version.unwrap_or(1),
                keep_alive: f.keep_alive,
                body: f.body.map(|b| match b {
                    Body::Length(n) => Framing::Length(n),
                    _ => Framing::Chunked,
                }),
                expect_continue: f.expect_continue,
            }))
        }
        Ok(httparse::Status::Partial) => Err("400 malformed request".into()),
        Err(e) => Err(format!("400 {e}")),
    }
}

/// What decoding a body from a sequence of reads came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyOutcome {
    /// The body is complete: the bytes of input it took, and the body decoded.
    Done {
        /// Input bytes used by the body (framing included).
        used: usize,
        /// The body, chunked framing removed.
        body: Vec<u8>,
    },
    /// The reads ended before the body did; what was decoded so far.
    Incomplete(Vec<u8>),
    /// Refused: the status and reason the session would answer.
    Refused(String),
}

/// Decodes a body framed as `framing` from `reads`, one call of the decoder per read
/// with the unconsumed bytes kept and handed again, as the session does.
pub fn decode_body<'a>(
    framing: Framing,
    max_body: usize,
    reads: impl IntoIterator<Item = &'a [u8]>,
) -> BodyOutcome {
    let mut body = match framing {
        Framing::Length(n) => Body::Length(n),
        Framing::Chunked => Body::ChunkSize,
    };
    let mut pending = Vec::new();
    let mut out = Vec::new();
    let mut used = 0;
    for read in reads {
        pending.extend_from_slice(read);
        match decode::decode(&mut body, &pending, &mut out, max_body) {
            Ok(Decoded::More(pos)) => {
                used += pos;
                pending.drain(..pos);
            }
            Ok(Decoded::Done(pos)) => {
                return BodyOutcome::Done {
                    used: used + pos,
                    body: out,
                }
            }
            Err(e) => return BodyOutcome::Refused(format!("{e:?}")),
        }
    }
    BodyOutcome::Incomplete(out)
}
