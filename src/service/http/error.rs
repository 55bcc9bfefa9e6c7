//! Why a request's framing is refused: the head's body and persistence fields
//! (RFC 9112 §6) or the body's own framing (§7.1). The connection answers with the
//! variant's status and its text, then closes, since the stream cannot be trusted to
//! be in step after it.

/// A request whose framing cannot be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    /// HTTP/1.1 without `Host` (RFC 9112 §3.2).
    #[error("missing Host")]
    MissingHost,
    /// `Host` given twice.
    #[error("more than one Host")]
    DuplicateHost,
    /// `Authorization` given twice: which credentials count would be left open.
    #[error("more than one Authorization")]
    DuplicateAuthorization,
    /// A `Content-Length` that is not a decimal number.
    #[error("bad Content-Length")]
    BadContentLength,
    /// Two `Content-Length` fields that disagree.
    #[error("conflicting Content-Length")]
    ConflictingContentLength,
    /// `Transfer-Encoding` in an HTTP/1.0 request.
    #[error("Transfer-Encoding in HTTP/1.0")]
    TransferEncodingInHttp10,
    /// A transfer coding other than `chunked` alone.
    #[error("unsupported Transfer-Encoding")]
    UnsupportedTransferEncoding,
    /// Both `Transfer-Encoding` and `Content-Length` (a smuggling vector).
    #[error("both Transfer-Encoding and Content-Length")]
    LengthAndChunked,
    /// The body is over `--max-body`.
    #[error("body too large")]
    BodyTooLarge,
    /// A chunk-size line that does not parse or is too long.
    #[error("bad chunk size")]
    BadChunkSize,
    /// A chunk's data not followed by its line end.
    #[error("bad chunk framing")]
    BadChunkFraming,
    /// Trailer fields over the head limit.
    #[error("trailers too large")]
    TrailersTooLarge,
}

impl FramingError {
    /// The status to answer with.
    pub fn status(&self) -> u16 {
        match self {
            FramingError::UnsupportedTransferEncoding => 501,
            FramingError::BodyTooLarge => 413,
            FramingError::TrailersTooLarge => 431,
            FramingError::MissingHost
            | FramingError::DuplicateHost
            | FramingError::DuplicateAuthorization
            | FramingError::BadContentLength
            | FramingError::ConflictingContentLength
            | FramingError::TransferEncodingInHttp10
            | FramingError::LengthAndChunked
            | FramingError::BadChunkSize
            | FramingError::BadChunkFraming => 400,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::FramingError::*;

    #[test]
    fn each_refusal_maps_to_its_status_and_reason() {
        let cases = [
            (MissingHost, 400, "missing Host"),
            (DuplicateHost, 400, "more than one Host"),
            (DuplicateAuthorization, 400, "more than one Authorization"),
            (BadContentLength, 400, "bad Content-Length"),
            (ConflictingContentLength, 400, "conflicting Content-Length"),
            (
                TransferEncodingInHttp10,
                400,
                "Transfer-Encoding in HTTP/1.0",
            ),
            (
                UnsupportedTransferEncoding,
                501,
                "unsupported Transfer-Encoding",
            ),
            (
                LengthAndChunked,
                400,
                "both Transfer-Encoding and Content-Length",
            ),
            (BodyTooLarge, 413, "body too large"),
            (BadChunkSize, 400, "bad chunk size"),
            (BadChunkFraming, 400, "bad chunk framing"),
            (TrailersTooLarge, 431, "trailers too large"),
        ];
        for (e, status, reason) in cases {
            assert_eq!((e.status(), e.to_string().as_str()), (status, reason));
        }
    }
}
