//! What the fuzz targets share: the wire checks of the property tests (one file,
//! `tests/wire/mod.rs`, so fuzzing and `cargo test` hold the server to the same rules)
//! and the way a target cuts its input into reads.

#[path = "../../tests/wire/mod.rs"]
pub mod wire;

/// Cuts `bytes` into reads as a network might: `seed` 0 is one read; any other seed
/// gives reads of 1 to `seed % 64 + 1` bytes, their sizes drawn from a small
/// generator seeded with it, so the same input always splits the same way.
pub fn reads(seed: u8, bytes: &[u8]) -> Vec<&[u8]> {
    if seed == 0 {
        return vec![bytes];
    }
    let max = u32::from(seed % 64) + 1;
    let mut x = u32::from(seed).wrapping_mul(2_654_435_761) | 1;
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let n = (x % max + 1) as usize;
        let (a, b) = rest.split_at(n.min(rest.len()));
        out.push(a);
        rest = b;
    }
    out
}

/// The output with its `Date:` lines removed: the date may tick between two runs of
/// the same input.
pub fn without_date(out: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(out.len());
    let mut rest = out;
    while let Some(i) = find(rest, b"\r\nDate: ") {
        v.extend_from_slice(&rest[..i]);
        let after = &rest[i + 2..];
        let end = find(after, b"\r\n").unwrap_or(after.len());
        rest = &after[end..];
    }
    v.extend_from_slice(rest);
    v
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
