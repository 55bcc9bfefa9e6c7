//! The PROXY protocol header (HAProxy's, versions 1 and 2): the real client's address,
//! sent by a proxy or load balancer before the client's own bytes.
//!
//! A listener marked `,proxy` expects one header at the start of every connection;
//! [`parse`] reads it from what has arrived so far, with the `ppp` crate doing the
//! parsing and this module adding what a server needs around it: "need more bytes" as
//! a normal answer, a bound on the header's size, and the address to use. The
//! session that waits for the header, and what is done with the address, are in
//! [`super::gate`].

use std::net::SocketAddr;

use ppp::v2::{Addresses, Command};
use ppp::{v1, HeaderResult, PartialResult};

/// The longest header accepted: a version 1 header is at most 107 bytes, a version 2
/// header 16 bytes plus addresses (at most 216, for Unix sockets) and TLVs. The TLVs
/// proxies send (an id, the TLS details, a cloud endpoint's name) take a few hundred
/// bytes; a declared length beyond this is refused rather than waited for.
pub const MAX_HEADER: usize = 4096;

/// The longest version 1 header, its line end included (the protocol's own bound).
const V1_MAX: usize = 107;

/// What the bytes received so far say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// A complete header of `len` bytes; the client's bytes follow it.
    Header {
        /// Bytes the header takes.
        len: usize,
        /// The protocol version (1, text, or 2, binary).
        version: u8,
        /// The client's address, or `None` when the header carries none (v1
        /// `UNKNOWN`, v2 `LOCAL` such as the proxy's own health checks, or an address
        /// family other than TCP over IPv4 or IPv6): the socket's peer is then the
        /// client.
        source: Option<SocketAddr>,
    },
    /// Not a whole header yet: wait for more bytes.
    Incomplete,
    /// Not a valid header, and more bytes cannot make it one.
    Invalid(String),
}

/// Reads a PROXY header from the start of `input`.
pub fn parse(input: &[u8]) -> Parsed {
    let window = &input[..input.len().min(MAX_HEADER)];
    // A version 2 header starts with CR, a version 1 header with `P`: the first byte
    // says which to parse, so an error names the version the proxy sent.
    let result: HeaderResult = if window.first() == Some(&b'\r') {
        ppp::v2::Header::try_from(window).into()
    } else {
        // Version 1 is one line, parsed once it is whole: ppp takes some cuts of a
        // valid line (one ending in the space before a port) for invalid headers.
        match window.iter().position(|&b| b == b'\n') {
            Some(end) => v1::Header::try_from(&window[..=end]).into(),
            None if window.len() >= V1_MAX => {
                return Parsed::Invalid(format!("version 1: no end of line in {V1_MAX} bytes"))
            }
            None if window.starts_with(b"PROXY ") || b"PROXY ".starts_with(window) => {
                return Parsed::Incomplete
            }
            None => return Parsed::Invalid("not a PROXY header".into()),
        }
    };
    // A whole version 1 line that does not parse is invalid, whatever ppp calls it.
    if matches!(result, HeaderResult::V2(_)) && result.is_incomplete() {
        return if input.len() >= MAX_HEADER {
            Parsed::Invalid(format!("no complete header in {MAX_HEADER} bytes"))
        } else {
            Parsed::Incomplete
        };
    }
    match result {
        HeaderResult::V1(Ok(h)) => {
            let source = match h.addresses {
                v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                v1::Addresses::Unknown => None,
            };
            Parsed::Header {
                len: h.header.len(),
                version: 1,
                source,
            }
        }
        HeaderResult::V2(Ok(h)) => {
            let source = match (h.command, h.addresses) {
                (Command::Proxy, Addresses::IPv4(a)) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                (Command::Proxy, Addresses::IPv6(a)) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                _ => None,
            };
            Parsed::Header {
                len: h.len(),
                version: 2,
                source,
            }
        }
        HeaderResult::V1(Err(e)) => Parsed::Invalid(format!("version 1: {e}")),
        HeaderResult::V2(Err(e)) => Parsed::Invalid(format!("version 2: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const V2_SIG: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

    /// A version 2 header: `cmd` (0x20 LOCAL, 0x21 PROXY), family and protocol byte,
    /// the address block and TLV bytes.
    fn v2(cmd: u8, fam: u8, addrs: &[u8], tlvs: &[u8]) -> Vec<u8> {
        let mut h = V2_SIG.to_vec();
        h.push(cmd);
        h.push(fam);
        h.extend_from_slice(&((addrs.len() + tlvs.len()) as u16).to_be_bytes());
        h.extend_from_slice(addrs);
        h.extend_from_slice(tlvs);
        h
    }

    fn v2_tcp4() -> Vec<u8> {
        // 203.0.113.9:51000 -> 127.0.0.1:8080
        let addrs = [203, 0, 113, 9, 127, 0, 0, 1, 0xc7, 0x38, 0x1f, 0x90];
        v2(0x21, 0x11, &addrs, &[])
    }

    fn addr(s: &str) -> Option<SocketAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn a_v1_header_gives_the_client_address_and_its_length() {
        let h = b"PROXY TCP4 198.51.100.22 127.0.0.1 35646 8080\r\nGET / HTTP/1.1\r\n";
        let len = h.iter().position(|&b| b == b'\n').unwrap() + 1;
        assert_eq!(
            parse(h),
            Parsed::Header {
                len,
                version: 1,
                source: addr("198.51.100.22:35646")
            }
        );
    }

    #[test]
    fn a_v1_tcp6_header_and_an_unknown_one() {
        let h = b"PROXY TCP6 2001:db8::7 ::1 4000 443\r\n";
        assert_eq!(
            parse(h),
            Parsed::Header {
                len: h.len(),
                version: 1,
                source: addr("[2001:db8::7]:4000")
            }
        );
        let u = b"PROXY UNKNOWN\r\n";
        assert_eq!(
            parse(u),
            Parsed::Header {
                len: u.len(),
                version: 1,
                source: None
            }
        );
    }

    #[test]
    fn a_v2_header_gives_the_client_address_and_skips_its_tlvs() {
        let mut h = v2_tcp4();
        assert_eq!(
            parse(&h),
            Parsed::Header {
                len: 28,
                version: 2,
                source: addr("203.0.113.9:51000")
            }
        );
        // The same with a NOOP TLV of three bytes, then the client's data.
        let addrs = &h[16..];
        let mut t = v2(0x21, 0x11, addrs, &[0x04, 0x00, 0x03, 1, 2, 3]);
        let len = t.len();
        t.extend_from_slice(b"hello");
        assert_eq!(
            parse(&t),
            Parsed::Header {
                len,
                version: 2,
                source: addr("203.0.113.9:51000")
            }
        );
        h.truncate(16);
        h[15] = 0;
        h[13] = 0x11;
        assert!(
            matches!(parse(&h), Parsed::Invalid(_)),
            "addresses too short for TCP4"
        );
    }

    #[test]
    fn a_v2_ipv6_header_and_a_local_one() {
        let mut addrs = Vec::new();
        addrs.extend_from_slice(
            &"2001:db8::1"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
        );
        addrs.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
        addrs.extend_from_slice(&[0x13, 0x88, 0x01, 0xbb]);
        let h = v2(0x21, 0x21, &addrs, &[]);
        assert_eq!(
            parse(&h),
            Parsed::Header {
                len: 52,
                version: 2,
                source: addr("[2001:db8::1]:5000")
            }
        );
        let local = v2(0x20, 0x00, &[], &[]);
        assert_eq!(
            parse(&local),
            Parsed::Header {
                len: 16,
                version: 2,
                source: None
            },
            "LOCAL: the proxy's own connection, its socket address is the client"
        );
    }

    #[test]
    fn every_truncation_of_a_header_asks_for_more_bytes() {
        let v1 = b"PROXY TCP4 198.51.100.22 127.0.0.1 35646 8080\r\n".to_vec();
        for h in [v1, v2_tcp4()] {
            for n in 0..h.len() {
                assert_eq!(parse(&h[..n]), Parsed::Incomplete, "{:?}", &h[..n]);
            }
        }
    }

    #[test]
    fn garbage_is_invalid_at_once() {
        for g in [
            &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
            b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.400 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 2\r\n",
            b"hello\n",
            b"PROXY TCP4 1.2.3.4\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
            b"PROXY \r\n",
        ] {
            assert!(
                matches!(parse(g), Parsed::Invalid(_)),
                "{:?}",
                String::from_utf8_lossy(g)
            );
        }
        let mut bad_version = v2_tcp4();
        bad_version[12] = 0x31;
        assert!(matches!(parse(&bad_version), Parsed::Invalid(_)));
    }

    #[test]
    fn a_header_too_long_is_invalid_rather_than_waited_for() {
        let mut v1 = b"PROXY TCP4 ".to_vec();
        v1.extend(std::iter::repeat_n(b'1', 200));
        assert!(
            matches!(parse(&v1), Parsed::Invalid(_)),
            "v1 past 107 bytes"
        );
        // A v2 header declaring 60,000 bytes of TLVs: refused once MAX_HEADER bytes
        // have come without a whole header.
        let mut big = V2_SIG.to_vec();
        big.extend_from_slice(&[0x21, 0x11]);
        big.extend_from_slice(&60_000u16.to_be_bytes());
        big.resize(MAX_HEADER - 1, 0);
        assert_eq!(parse(&big), Parsed::Incomplete);
        big.push(0);
        assert!(matches!(parse(&big), Parsed::Invalid(_)));
    }

    proptest! {
        #[test]
        fn no_input_panics_and_a_header_never_claims_more_than_it_was_given(
            bytes in prop::collection::vec(any::<u8>(), 0..600)
        ) {
            if let Parsed::Header { len, .. } = parse(&bytes) {
                prop_assert!(len <= bytes.len());
            }
        }

        #[test]
        fn any_prefix_of_a_valid_header_is_incomplete_and_any_suffix_is_left_alone(
            tail in prop::collection::vec(any::<u8>(), 0..64),
            v6 in any::<bool>(),
        ) {
            let h: &[u8] = if v6 { b"PROXY TCP6 2001:db8::7 ::1 4000 443\r\n" } else { b"PROXY TCP4 10.1.2.3 10.0.0.1 1 2\r\n" };
            let mut all = h.to_vec();
            all.extend_from_slice(&tail);
            match parse(&all) {
                Parsed::Header { len, version: 1, source: Some(_) } => prop_assert_eq!(len, h.len()),
                other => prop_assert!(false, "{:?}", other),
            }
        }
    }
}
