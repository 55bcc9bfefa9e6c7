//! Checks that what a session wrote is whole, well-formed protocol units, never a
//! prefix: HTTP responses (a body as long as its `Content-Length`), WebSocket frames as
//! a server may send them, TLS records, chat lines. Shared by the property tests
//! (`tests/parsers.rs`) and the fuzz targets (`fuzz/`, which include this file by path),
//! so both hold the server to the same rules.

#![allow(dead_code)]

/// Splits `out` into HTTP responses and returns their status codes. After a `101`, the
/// rest must be WebSocket frames ([`ws_frames`]). A response may lack its body only if
/// `head_sent` (a HEAD request was among the input): it is then followed by nothing or
/// by the next response. Nothing may follow a `Connection: close` response.
pub fn http_responses(mut out: &[u8], head_sent: bool) -> Result<Vec<u16>, String> {
    let mut codes = Vec::new();
    while !out.is_empty() {
        let mut hs = [httparse::EMPTY_HEADER; 32];
        let mut r = httparse::Response::new(&mut hs);
        let n = match r.parse(out) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Err(format!("a partial response: {out:?}")),
            Err(e) => return Err(format!("not a response ({e}): {out:?}")),
        };
        let code = r.code.unwrap_or(0);
        codes.push(code);
        if r.version != Some(1) {
            return Err(format!("not HTTP/1.1: {out:?}"));
        }
        let field = |name: &str| -> Vec<&[u8]> {
            r.headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| h.value)
                .collect()
        };
        if !field("transfer-encoding").is_empty() {
            return Err("a response with Transfer-Encoding".into());
        }
        let close = field("connection")
            .iter()
            .any(|v| v.eq_ignore_ascii_case(b"close"));
        let rest = &out[n..];
        if code == 101 {
            ws_frames(rest)?;
            return Ok(codes);
        }
        if code == 100 {
            out = rest;
            continue;
        }
        let lengths = field("content-length");
        let [len] = lengths[..] else {
            return Err(format!("{code} without exactly one Content-Length"));
        };
        let len: usize = std::str::from_utf8(len)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad Content-Length {len:?}"))?;
        let bodiless = head_sent && (rest.is_empty() || rest.starts_with(b"HTTP/1."));
        let used = if len > 0 && bodiless {
            0
        } else if rest.len() >= len {
            len
        } else {
            return Err(format!(
                "{code}: a body of {} bytes, Content-Length {len}",
                rest.len()
            ));
        };
        out = &rest[used..];
        if close && !out.is_empty() {
            return Err(format!("bytes after Connection: close: {out:?}"));
        }
    }
    Ok(codes)
}

/// A frame a server sent: its opcode and payload.
pub type Frame = (u8, Vec<u8>);

/// Splits `out` into WebSocket frames as a server may send them: unmasked, no RSV
/// bits, a known opcode, lengths in their shortest form, control frames whole and at
/// most 125 bytes, a close payload empty or a sendable code and UTF-8 reason, text
/// messages UTF-8, continuations only inside a message, and nothing after a close.
pub fn ws_frames(mut out: &[u8]) -> Result<Vec<Frame>, String> {
    let mut frames = Vec::new();
    let mut in_message: Option<(u8, Vec<u8>)> = None;
    while !out.is_empty() {
        if frames.last().is_some_and(|(op, _)| *op == 8) {
            return Err(format!("bytes after a close frame: {out:?}"));
        }
        if out.len() < 2 {
            return Err(format!("a partial frame header: {out:?}"));
        }
        let (b0, b1) = (out[0], out[1]);
        let (fin, rsv, op) = (b0 & 0x80 != 0, b0 & 0x70, b0 & 0x0f);
        if rsv != 0 || b1 & 0x80 != 0 {
            return Err(format!(
                "RSV bits or a mask in a server frame: {b0:#x} {b1:#x}"
            ));
        }
        let (len, hdr) = match b1 & 0x7f {
            126 if out.len() >= 4 => {
                let n = usize::from(u16::from_be_bytes([out[2], out[3]]));
                if n < 126 {
                    return Err("a 16-bit length below 126".into());
                }
                (n, 4)
            }
            127 if out.len() >= 10 => {
                let n = u64::from_be_bytes(out[2..10].try_into().unwrap());
                if n <= 0xffff {
                    return Err("a 64-bit length below 65536".into());
                }
                (usize::try_from(n).map_err(|_| "a huge length")?, 10)
            }
            126 | 127 => return Err("a partial frame header".into()),
            n => (usize::from(n), 2),
        };
        if out.len() - hdr < len {
            return Err(format!(
                "a partial frame: {} of {len} payload bytes",
                out.len() - hdr
            ));
        }
        let payload = out[hdr..hdr + len].to_vec();
        out = &out[hdr + len..];
        match op {
            8..=10 => {
                if !fin || len > 125 {
                    return Err(format!("control frame {op}: fin {fin}, {len} bytes"));
                }
                if op == 8 {
                    close_payload(&payload)?;
                }
            }
            0 => {
                let Some((_, buf)) = in_message.as_mut() else {
                    return Err("a continuation outside a message".into());
                };
                buf.extend_from_slice(&payload);
                if fin {
                    let (first, buf) = in_message.take().unwrap();
                    if first == 1 && std::str::from_utf8(&buf).is_err() {
                        return Err("a text message that is not UTF-8".into());
                    }
                }
            }
            1 | 2 => {
                if in_message.is_some() {
                    return Err("a new message inside a fragmented one".into());
                }
                if !fin {
                    in_message = Some((op, payload.clone()));
                } else if op == 1 && std::str::from_utf8(&payload).is_err() {
                    return Err("a text message that is not UTF-8".into());
                }
            }
            _ => return Err(format!("opcode {op}")),
        }
        frames.push((op, payload));
    }
    if in_message.is_some() {
        return Err("a message left unfinished".into());
    }
    Ok(frames)
}

fn close_payload(p: &[u8]) -> Result<(), String> {
    match p {
        [] => Ok(()),
        [_] => Err("a close payload of one byte".into()),
        [a, b, reason @ ..] => {
            let code = u16::from_be_bytes([*a, *b]);
            let sendable = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            if !sendable {
                return Err(format!("close code {code} may not be sent"));
            }
            std::str::from_utf8(reason).map_err(|_| "a close reason that is not UTF-8")?;
            Ok(())
        }
    }
}

/// Splits `out` into TLS records: a known content type, a TLS 1.0-1.2 record version
/// (1.3 records say 1.2), a length within the protocol's bound, and whole.
pub fn tls_records(mut out: &[u8]) -> Result<Vec<u8>, String> {
    let mut types = Vec::new();
    while !out.is_empty() {
        let [ty, major, minor, hi, lo, ..] = *out else {
            return Err(format!("a partial record header: {out:?}"));
        };
        if !(20..=23).contains(&ty) || major != 3 || !(1..=3).contains(&minor) {
            return Err(format!("record header {:?}", &out[..5]));
        }
        let len = usize::from(u16::from_be_bytes([hi, lo]));
        if len > (1 << 14) + 2048 {
            return Err(format!("a record of {len} bytes"));
        }
        if out.len() < 5 + len {
            return Err(format!("a partial record: {} of {len}", out.len() - 5));
        }
        types.push(ty);
        out = &out[5 + len..];
    }
    Ok(types)
}

/// What the chat's line protocol may answer: whole lines, each starting with one of
/// its words.
pub fn chat_lines(out: &[u8]) -> Result<usize, String> {
    if out.is_empty() {
        return Ok(0);
    }
    if !out.ends_with(b"\n") {
        return Err(format!(
            "output ends inside a line: {:?}",
            String::from_utf8_lossy(out)
        ));
    }
    let mut n = 0;
    for line in out[..out.len() - 1].split(|&b| b == b'\n') {
        const WORDS: [&[u8]; 9] = [
            b"WELCOME ",
            b"OK ",
            b"ERR ",
            b"WHO ",
            b"MSG ",
            b"JOIN ",
            b"PART ",
            b"NICK ",
            b"SERVER ",
        ];
        if !WORDS.iter().any(|w| line.starts_with(w)) {
            return Err(format!(
                "not a chat line: {:?}",
                String::from_utf8_lossy(line)
            ));
        }
        n += 1;
    }
    Ok(n)
}

/// The chat output with each `MSG` line's id counted from the first one seen (0):
/// a hub starts its ids at the time it was made, so two runs differ only there.
pub fn chat_ids_from_zero(out: &[u8]) -> String {
    let text = String::from_utf8_lossy(out);
    let mut base: Option<u64> = None;
    let mut o = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let mut parts = line.splitn(4, ' ');
        let (Some("MSG"), Some(room), Some(id), Some(rest)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            o.push_str(line);
            continue;
        };
        match id.parse::<u64>() {
            Ok(id) => {
                let b = *base.get_or_insert(id);
                o.push_str(&format!("MSG {room} {} {rest}", id.wrapping_sub(b)));
            }
            Err(_) => o.push_str(line),
        }
    }
    o
}
