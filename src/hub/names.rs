//! Nick and room names: what the chat accepts, checked once here for every wire format.
//!
//! Names travel as space-separated words in the line protocol and as Redis key parts,
//! so they are restricted to `A-Z a-z 0-9 _ - .`: no space, no control character, no
//! separator that could split a line or a key.

/// Longest nick, in bytes (all allowed characters are ASCII).
pub const MAX_NICK: usize = 32;
/// Longest room name, in bytes.
pub const MAX_ROOM: usize = 64;

fn valid(name: &str, max: usize) -> bool {
    !name.is_empty()
        && name.len() <= max
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Whether `name` is an acceptable nick (1–32 characters of `A-Za-z0-9_-.`).
pub fn valid_nick(name: &str) -> bool {
    valid(name, MAX_NICK)
}

/// Whether `name` is an acceptable room name (1–64 characters of `A-Za-z0-9_-.`).
pub fn valid_room(name: &str) -> bool {
    valid(name, MAX_ROOM)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn limits_and_alphabet() {
        assert!(valid_nick("ann"));
        assert!(valid_nick("a.b-c_D9"));
        assert!(valid_nick(&"n".repeat(32)));
        assert!(!valid_nick(&"n".repeat(33)));
        assert!(valid_room(&"r".repeat(64)));
        assert!(!valid_room(&"r".repeat(65)));
        for bad in ["", "a b", "a\tb", "é", "a/b", "a:b", "a\nb", "a*"] {
            assert!(!valid_nick(bad), "{bad:?}");
            assert!(!valid_room(bad), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn a_valid_name_has_no_separator(s in ".{0,80}") {
            if valid_room(&s) {
                prop_assert!(!s.contains(' ') && !s.contains('\n') && !s.contains(':'));
                prop_assert!(!s.is_empty() && s.len() <= MAX_ROOM);
            }
        }
    }
}
