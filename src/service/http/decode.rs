//! Request bodies: `Content-Length` and chunked framing decoded (RFC 9112 §6, §7.1),
//! resumable at any byte, so a body split across reads decodes the same as one in a
//! single read. The timer that bounds how long a body may take (`--body-timeout`) is
//! the session's ([`super::conn`]); this module only moves bytes.

use super::error::FramingError;
use super::MAX_HEAD;

/// Longest chunk-size line of a chunked body.
const MAX_CHUNK_LINE: usize = 1024;

/// How the body of the request being read is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Body {
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

/// What one call of [`decode`] did.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Decoded {
    /// These many bytes were used; the body needs more.
    More(usize),
    /// The body is complete after these many bytes.
    Done(usize),
}

/// Decodes body bytes from `input` into `out`, moving `body` on. A refusal says why
/// (bad framing, over `max_body`, trailers over the head limit) and maps to the status
/// to answer with.
pub(super) fn decode(
    body: &mut Body,
    input: &[u8],
    out: &mut Vec<u8>,
    max_body: usize,
) -> Result<Decoded, FramingError> {
    let mut pos = 0;
    loop {
        let rest = &input[pos..];
        match *body {
            Body::Length(0) => return Ok(Decoded::Done(pos)),
            Body::Length(n) => {
                let take = n.min(rest.len());
                if take == 0 {
                    return Ok(Decoded::More(pos));
                }
                out.extend_from_slice(&rest[..take]);
                pos += take;
                *body = Body::Length(n - take);
            }
            Body::ChunkSize => match httparse::parse_chunk_size(rest) {
                // A line is refused past MAX_CHUNK_LINE whether or not its end is in
                // this read: read in pieces, its first MAX_CHUNK_LINE + 1 bytes are.
                Ok(httparse::Status::Complete((n, _))) if n > MAX_CHUNK_LINE + 1 => {
                    return Err(FramingError::BadChunkSize);
                }
                Ok(httparse::Status::Complete((n, size))) => {
                    pos += n;
                    let size = usize::try_from(size).unwrap_or(usize::MAX);
                    if size > max_body.saturating_sub(out.len()) {
                        return Err(FramingError::BodyTooLarge);
                    }
                    *body = if size == 0 {
                        Body::Trailers(0)
                    } else {
                        Body::ChunkData(size)
                    };
                }
                Ok(httparse::Status::Partial) => {
                    if rest.len() > MAX_CHUNK_LINE {
                        return Err(FramingError::BadChunkSize);
                    }
                    return Ok(Decoded::More(pos));
                }
                Err(_) => {
                    return Err(FramingError::BadChunkSize);
                }
            },
            Body::ChunkData(n) => {
                let take = n.min(rest.len());
                if take == 0 {
                    return Ok(Decoded::More(pos));
                }
                out.extend_from_slice(&rest[..take]);
                pos += take;
                *body = if n == take {
                    Body::ChunkEnd
                } else {
                    Body::ChunkData(n - take)
                };
            }
            Body::ChunkEnd => {
                if rest.starts_with(b"\r\n") {
                    pos += 2;
                    *body = Body::ChunkSize;
                } else if rest.starts_with(b"\n") {
                    pos += 1;
                    *body = Body::ChunkSize;
                } else if rest.is_empty() || rest == b"\r" {
                    return Ok(Decoded::More(pos));
                } else {
                    return Err(FramingError::BadChunkFraming);
                }
            }
            Body::Trailers(seen) => match rest.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    let line = &rest[..i];
                    pos += i + 1;
                    if line.is_empty() || line == b"\r" {
                        return Ok(Decoded::Done(pos));
                    }
                    // Trailer fields are not used: counted against the limit, dropped.
                    if seen + i + 1 > MAX_HEAD {
                        return Err(FramingError::TrailersTooLarge);
                    }
                    *body = Body::Trailers(seen + i + 1);
                }
                None => {
                    if seen + rest.len() > MAX_HEAD {
                        return Err(FramingError::TrailersTooLarge);
                    }
                    return Ok(Decoded::More(pos));
                }
            },
        }
    }
}
