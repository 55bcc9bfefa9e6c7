//! Token authentication for the chat: JSON Web Tokens (RFC 7519) checked by
//! `jsonwebtoken`, with an HMAC secret (HS256, `--jwt-secret`) or a public key (RS256
//! or ES256, `--jwt-public-key`).
//!
//! With a key configured every chat connection, on either wire, must present a token
//! (`AUTH <token>`, `{"type":"auth","token":...}`, or `?token=` on the WebSocket
//! upgrade) before anything but `QUIT`. The claims:
//!
//! - `sub` (required): the member's nick, which it then owns: `NICK` is refused
//!   (`nick-fixed`), so under that nick only holders of a token for that `sub` can
//!   appear, and the hub's nick claim (over Redis: on every instance) lets one
//!   connection hold it at a time.
//! - `exp` (optional, seconds since the epoch): the connection ends with
//!   `token-expired` then, unless a fresh token for the same `sub` came before.
//! - `rooms` (optional): the rooms a `JOIN` may name, exactly or by a prefix ending in
//!   `*`; without it any room.
//!
//! Only the key's own algorithm is accepted: `alg: none`, and an HS256 token presented
//! to a public key (the classic algorithm confusion, where the public key would be used
//! as an HMAC secret), fail like any bad signature. Time is checked with no leeway, so
//! the moment a token is refused at `AUTH` and the moment its connection expires agree.
//!
//! The key lives in an [`AuthHandle`] that every chat listener of a process shares and
//! reads once per connection, so a configuration reload can swap it with
//! [`AuthHandle::set`]: connections made after see the new key, established ones keep
//! the one they started with.

use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::hub::{valid_nick, valid_room, SERVER_NICK};

/// The longest token accepted, in bytes; a longer one is `bad-token` without being
/// decoded (real tokens are a few hundred bytes).
pub const MAX_TOKEN: usize = 8 * 1024;
/// Bad tokens one connection may present; at this many it is closed.
pub const MAX_FAILURES: u32 = 3;

/// Why a key could not be made.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// An empty `--jwt-secret`.
    #[error("the JWT secret is empty")]
    EmptySecret,
    /// The PEM holds no RSA or EC public key.
    #[error("{0}: not an RSA or EC (P-256) public key in PEM")]
    NotAPublicKey(String),
    /// Both a secret and a public key were given.
    #[error("give --jwt-secret or --jwt-public-key, not both")]
    Both,
}

/// Why a token was refused (the protocol's `bad-token`, with this as its text).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Longer than [`MAX_TOKEN`].
    #[error("tokens are limited to 8 KiB")]
    TooLong,
    /// Not three base64url parts, or a header or claims that are not JSON.
    #[error("the token is malformed")]
    Malformed,
    /// Signed with another algorithm than the server's key's (or `none`).
    #[error("the token's algorithm is not the server's")]
    WrongAlgorithm,
    /// The signature does not verify.
    #[error("the token's signature does not verify")]
    BadSignature,
    /// Its `exp` has passed.
    #[error("the token has expired")]
    Expired,
    /// Its `nbf` is still to come.
    #[error("the token is not valid yet")]
    NotYet,
    /// No `sub`, or one that is not a valid nick.
    #[error("the token's sub must be a nick (1-32 of A-Z a-z 0-9 _ - .)")]
    BadSub,
    /// A `rooms` entry that is neither a room name nor a prefix ending in `*`.
    #[error("the token's rooms must be room names or prefixes ending in *")]
    BadRooms,
}

/// The claims read from a token.
#[derive(Debug, Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    exp: Option<u64>,
    #[serde(default)]
    rooms: Option<Vec<String>>,
}

/// The rooms a token may join (its `rooms` claim).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rooms(Vec<Pattern>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    Exact(String),
    Prefix(String),
}

impl Rooms {
    fn parse(list: Vec<String>) -> Result<Rooms, TokenError> {
        list.into_iter()
            .map(|r| match r.strip_suffix('*') {
                // `*` alone is every room; `team-*` a prefix, itself a name's start.
                Some(prefix) if prefix.is_empty() || valid_room(prefix) => {
                    Ok(Pattern::Prefix(prefix.to_owned()))
                }
                None if valid_room(&r) => Ok(Pattern::Exact(r)),
                _ => Err(TokenError::BadRooms),
            })
            .collect::<Result<_, _>>()
            .map(Rooms)
    }

    /// Whether `room` may be joined.
    pub fn allows(&self, room: &str) -> bool {
        self.0.iter().any(|p| match p {
            Pattern::Exact(r) => r == room,
            Pattern::Prefix(p) => room.starts_with(p.as_str()),
        })
    }
}

/// What a valid token grants.
#[derive(Debug, Clone)]
pub struct Grant {
    /// The nick (`sub`).
    pub sub: Arc<str>,
    /// How long until it expires (`exp`), from the moment it was checked.
    pub expires_in: Option<Duration>,
    /// The rooms it may join (`rooms`); none: any.
    pub rooms: Option<Rooms>,
}

/// A key tokens are checked against, with the one algorithm it accepts.
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("algorithm", &self.algorithm())
            .finish_non_exhaustive()
    }
}

impl Verifier {
    fn with(key: DecodingKey, alg: Algorithm) -> Verifier {
        let mut validation = Validation::new(alg);
        validation.required_spec_claims = ["sub".to_owned()].into();
        validation.leeway = 0;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        // No audience is configured: a token's `aud` is not ours to judge.
        validation.validate_aud = false;
        Verifier { key, validation }
    }

    /// An HS256 key: the shared secret's bytes.
    pub fn hs256(secret: &[u8]) -> Result<Verifier, KeyError> {
        if secret.is_empty() {
            return Err(KeyError::EmptySecret);
        }
        Ok(Verifier::with(
            DecodingKey::from_secret(secret),
            Algorithm::HS256,
        ))
    }

    /// A public key in PEM (`PUBLIC KEY` or `RSA PUBLIC KEY`): RSA keys accept RS256,
    /// EC keys ES256. `what` names the key in the error (its path).
    pub fn public_key_pem(pem: &[u8], what: &str) -> Result<Verifier, KeyError> {
        if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
            return Ok(Verifier::with(key, Algorithm::RS256));
        }
        if let Ok(key) = DecodingKey::from_ec_pem(pem) {
            return Ok(Verifier::with(key, Algorithm::ES256));
        }
        Err(KeyError::NotAPublicKey(what.to_owned()))
    }

    /// The one algorithm this key accepts.
    pub fn algorithm(&self) -> Algorithm {
        self.validation.algorithms[0]
    }

    /// Checks `token` now: its size, signature, algorithm, `exp`, `nbf` and claims.
    pub fn verify(&self, token: &str) -> Result<Grant, TokenError> {
        if token.len() > MAX_TOKEN {
            return Err(TokenError::TooLong);
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(
            |e| match e.kind() {
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                    TokenError::WrongAlgorithm
                }
                ErrorKind::InvalidSignature | ErrorKind::InvalidKeyFormat => {
                    TokenError::BadSignature
                }
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::ImmatureSignature => TokenError::NotYet,
                ErrorKind::MissingRequiredClaim(_) => TokenError::BadSub,
                _ => TokenError::Malformed,
            },
        )?;
        let c = data.claims;
        let sub = c.sub.ok_or(TokenError::BadSub)?;
        if !valid_nick(&sub) || sub.eq_ignore_ascii_case(SERVER_NICK) {
            return Err(TokenError::BadSub);
        }
        let rooms = c.rooms.map(Rooms::parse).transpose()?;
        let expires_in = c.exp.map(|exp| {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            Duration::from_secs(exp).saturating_sub(now)
        });
        Ok(Grant {
            sub: sub.into(),
            expires_in,
            rooms,
        })
    }
}

/// The process's token key, shared by every chat listener and read once per
/// connection; [`AuthHandle::set`] swaps it (a reload). Empty: no authentication.
#[derive(Debug, Clone, Default)]
pub struct AuthHandle(Arc<RwLock<Option<Arc<Verifier>>>>);

impl AuthHandle {
    /// The key new connections are checked against; none: authentication is off.
    pub fn get(&self) -> Option<Arc<Verifier>> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the key for connections made from now on.
    pub fn set(&self, verifier: Option<Verifier>) {
        self.set_shared(verifier.map(Arc::new));
    }

    /// [`AuthHandle::set`] with a key another handle holds (a reload's).
    pub fn set_shared(&self, verifier: Option<Arc<Verifier>>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = verifier;
    }

    /// The key of `--jwt-secret` or `--jwt-public-key` (a PEM file's path), or none.
    pub fn from_options(
        secret: Option<&str>,
        public_key: Option<&std::path::Path>,
    ) -> Result<AuthHandle, String> {
        let v = match (secret, public_key) {
            (Some(_), Some(_)) => return Err(KeyError::Both.to_string()),
            (Some(s), None) => Some(Verifier::hs256(s.as_bytes()).map_err(|e| e.to_string())?),
            (None, Some(path)) => {
                let what = path.display().to_string();
                let pem = std::fs::read(path).map_err(|e| format!("{what}: {e}"))?;
                Some(Verifier::public_key_pem(&pem, &what).map_err(|e| e.to_string())?)
            }
            (None, None) => None,
        };
        let handle = AuthHandle::default();
        handle.set(v);
        Ok(handle)
    }
}

/// Test keys and tokens, for this crate's unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use jsonwebtoken::{encode, EncodingKey, Header};

    /// The HS256 secret of the tests.
    pub(crate) const SECRET: &[u8] = b"test-secret-of-at-least-32-bytes!!";

    /// An HS256 token over `claims` signed with [`SECRET`].
    pub(crate) fn hs256(claims: serde_json::Value) -> String {
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap()
    }

    /// Seconds since the epoch, `ahead` from now.
    pub(crate) fn in_secs(ahead: i64) -> i64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        now + ahead
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use data_encoding::BASE64URL_NOPAD;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    fn hs() -> Verifier {
        Verifier::hs256(SECRET).unwrap()
    }

    /// A P-256 key pair made now: the private key for signing, the public PEM.
    fn es256_pair() -> (EncodingKey, String) {
        let kp = rcgen::KeyPair::generate().unwrap();
        let private = EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).unwrap();
        (private, kp.public_key_pem())
    }

    #[test]
    fn a_valid_token_grants_its_sub_expiry_and_rooms() {
        let t = hs256(json!({"sub": "ann", "exp": in_secs(60), "rooms": ["lobby", "team-*"]}));
        let g = hs().verify(&t).unwrap();
        assert_eq!(&*g.sub, "ann");
        let left = g.expires_in.unwrap();
        assert!(left > Duration::from_secs(55) && left <= Duration::from_secs(60));
        let rooms = g.rooms.unwrap();
        assert!(rooms.allows("lobby") && rooms.allows("team-a") && rooms.allows("team-"));
        assert!(!rooms.allows("lobby2") && !rooms.allows("tea") && !rooms.allows("other"));
        let g = hs().verify(&hs256(json!({"sub": "bob"}))).unwrap();
        assert!(g.expires_in.is_none() && g.rooms.is_none());
        let all = hs()
            .verify(&hs256(json!({"sub": "c", "rooms": ["*"]})))
            .unwrap();
        assert!(all.rooms.unwrap().allows("anything"));
    }

    #[test]
    fn every_kind_of_bad_token_is_refused_with_its_reason() {
        let v = hs();
        let e = |t: &str| v.verify(t).unwrap_err();
        assert_eq!(
            e(&hs256(json!({"sub": "ann", "exp": in_secs(-1)}))),
            TokenError::Expired
        );
        assert_eq!(
            e(&hs256(json!({"sub": "ann", "nbf": in_secs(60)}))),
            TokenError::NotYet
        );
        assert_eq!(e(&hs256(json!({"exp": in_secs(60)}))), TokenError::BadSub);
        assert_eq!(e(&hs256(json!({"sub": "a b"}))), TokenError::BadSub);
        assert_eq!(e(&hs256(json!({"sub": "Server"}))), TokenError::BadSub);
        assert_eq!(
            e(&hs256(json!({"sub": "ann", "rooms": ["a b"]}))),
            TokenError::BadRooms
        );
        assert_eq!(
            e(&hs256(json!({"sub": "ann", "rooms": "lobby"}))),
            TokenError::Malformed
        );
        let other = encode(
            &Header::default(),
            &json!({"sub": "ann"}),
            &EncodingKey::from_secret(b"another secret"),
        )
        .unwrap();
        assert_eq!(e(&other), TokenError::BadSignature);
        assert_eq!(e(&"a".repeat(MAX_TOKEN + 1)), TokenError::TooLong);
        for junk in [
            "",
            "x",
            "a.b.c",
            "!!!.???.###",
            "e30.e30.",
            "\u{e9}.\u{e9}.\u{e9}",
        ] {
            assert_eq!(e(junk), TokenError::Malformed, "{junk:?}");
        }
        // HS384 with the right secret is still not the server's algorithm.
        let hs384 = encode(
            &Header::new(Algorithm::HS384),
            &json!({"sub": "ann"}),
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert_eq!(e(&hs384), TokenError::WrongAlgorithm);
    }

    /// `{"alg":"none"}` with the claims and an empty signature, as an attacker writes it.
    fn unsigned(claims: serde_json::Value) -> String {
        let header = BASE64URL_NOPAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let body = BASE64URL_NOPAD.encode(claims.to_string().as_bytes());
        format!("{header}.{body}.")
    }

    #[test]
    fn alg_none_is_refused_by_every_key() {
        let t = unsigned(json!({"sub": "ann"}));
        assert!(hs().verify(&t).is_err());
        let (_, public) = es256_pair();
        let es = Verifier::public_key_pem(public.as_bytes(), "test").unwrap();
        assert!(es.verify(&t).is_err());
    }

    #[test]
    fn an_es256_key_accepts_its_tokens_and_refuses_hs256_made_with_the_public_key() {
        let (private, public) = es256_pair();
        let v = Verifier::public_key_pem(public.as_bytes(), "test").unwrap();
        assert_eq!(v.algorithm(), Algorithm::ES256);
        let good = encode(
            &Header::new(Algorithm::ES256),
            &json!({"sub": "ann"}),
            &private,
        )
        .unwrap();
        assert_eq!(&*v.verify(&good).unwrap().sub, "ann");
        // Algorithm confusion: the public key, which anyone has, used as an HMAC secret.
        let forged = encode(
            &Header::new(Algorithm::HS256),
            &json!({"sub": "ann"}),
            &EncodingKey::from_secret(public.as_bytes()),
        )
        .unwrap();
        assert_eq!(v.verify(&forged).unwrap_err(), TokenError::WrongAlgorithm);
        // Another P-256 key's token.
        let (other, _) = es256_pair();
        let stranger = encode(
            &Header::new(Algorithm::ES256),
            &json!({"sub": "ann"}),
            &other,
        )
        .unwrap();
        assert_eq!(v.verify(&stranger).unwrap_err(), TokenError::BadSignature);
    }

    #[test]
    fn keys_that_cannot_be_used_are_errors() {
        assert!(matches!(Verifier::hs256(b""), Err(KeyError::EmptySecret)));
        assert!(matches!(
            Verifier::public_key_pem(b"not a pem", "k.pem"),
            Err(KeyError::NotAPublicKey(w)) if w == "k.pem"
        ));
        assert!(AuthHandle::from_options(Some("s"), Some("k.pem".as_ref())).is_err());
        assert!(AuthHandle::from_options(None, Some("/nonexistent/k.pem".as_ref())).is_err());
        assert!(AuthHandle::from_options(None, None)
            .unwrap()
            .get()
            .is_none());
    }

    #[test]
    fn the_handle_swaps_the_key_for_later_readers() {
        let h = AuthHandle::from_options(Some("one"), None).unwrap();
        let first = h.get().unwrap();
        let shared = h.clone();
        shared.set(Some(Verifier::hs256(b"two").unwrap()));
        let t = encode(
            &Header::default(),
            &json!({"sub": "ann"}),
            &EncodingKey::from_secret(b"two"),
        )
        .unwrap();
        assert!(
            first.verify(&t).is_err(),
            "the old key stays with its holder"
        );
        assert!(h.get().unwrap().verify(&t).is_ok());
        shared.set(None);
        assert!(h.get().is_none());
    }
}
