//! File names and link targets as the bytes Linux allows, carried in the
//! protocol's and the catalog's UTF-8 strings.
//!
//! A Linux name is any byte string without `/` and NUL; the wire and the
//! catalog carry UTF-8 (prost refuses anything else in a `string`, and the
//! catalog's path order and prefix ranges work on text). [`encode_bytes`]
//! maps every byte string to a string and [`decode_bytes`] maps it back
//! exactly:
//!
//! - valid UTF-8 passes through unchanged, so every name that was storable
//!   before is stored as before and old catalogs need no conversion;
//! - a byte that is not part of valid UTF-8 becomes the code point
//!   `U+10FF00 + byte`, from the last private-use plane, which no script uses;
//! - a name that really contains one of those 256 code points has that
//!   character's four UTF-8 bytes escaped the same way, so decoding never
//!   mistakes a real character for an escaped byte.
//!
//! Only the canonical form (what [`encode_bytes`] gives) is accepted from a
//! peer: otherwise `U+10FF2E U+10FF2E` would decode to `..` and
//! `U+10FF2F` to `/` behind a check made on the text ([`check_component`]).

/// The first of the 256 code points that stand for single bytes.
pub const ESCAPE_BASE: u32 = 0x10_FF00;

/// Whether `c` is one of the code points that stand for single bytes.
pub fn is_escape(c: char) -> bool {
    (ESCAPE_BASE..=ESCAPE_BASE + 0xFF).contains(&(c as u32))
}

fn push_escaped_byte(out: &mut String, byte: u8) {
    // Every value of the range is a valid scalar value (plane 16).
    out.push(char::from_u32(ESCAPE_BASE + u32::from(byte)).unwrap_or(char::REPLACEMENT_CHARACTER));
}

/// Encodes raw name bytes (a name, a path, a link target) as a string that
/// [`decode`] turns back into exactly those bytes.
pub fn encode_bytes(mut bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    while !bytes.is_empty() {
        let (valid, rest) = match std::str::from_utf8(bytes) {
            Ok(all) => (all, &bytes[bytes.len()..]),
            Err(e) => {
                let (good, bad) = bytes.split_at(e.valid_up_to());
                // Safe by construction: `valid_up_to` bytes are valid UTF-8.
                (std::str::from_utf8(good).unwrap_or_default(), bad)
            }
        };
        for c in valid.chars() {
            if is_escape(c) {
                let mut utf8 = [0u8; 4];
                for b in c.encode_utf8(&mut utf8).bytes() {
                    push_escaped_byte(&mut out, b);
                }
            } else {
                out.push(c);
            }
        }
        bytes = rest;
        // The first byte of `rest` (if any) starts an invalid sequence.
        if let Some((&first, tail)) = bytes.split_first() {
            push_escaped_byte(&mut out, first);
            bytes = tail;
        }
    }
    out
}

/// The bytes an encoded string stands for.
pub fn decode_bytes(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut utf8 = [0u8; 4];
    for c in text.chars() {
        if is_escape(c) {
            out.push((c as u32 - ESCAPE_BASE) as u8);
        } else {
            out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
        }
    }
    out
}

/// Whether `text` is exactly what [`encode_bytes`] gives for the bytes it
/// stands for (no byte escaped that needed no escaping).
pub fn is_canonical(text: &str) -> bool {
    !text.chars().any(is_escape) || encode_bytes(&decode_bytes(text)) == text
}

/// Checks one stored path component and returns the name it stands for: not
/// empty, not `.` or `..`, no `/` or NUL once decoded, and canonical.
///
/// # Errors
/// What is wrong with it, in a few words.
pub fn check_component(part: &str) -> Result<Vec<u8>, &'static str> {
    if !is_canonical(part) {
        return Err("is not in canonical form (an escaped byte that needs no escaping)");
    }
    let bytes = decode_bytes(part);
    match bytes.as_slice() {
        [] => Err("has an empty component"),
        b if b.len() > crate::MAX_NAME_BYTES => Err("has a component longer than 255 bytes"),
        b"." | b".." => Err("has a '.' or '..' component"),
        b if b.contains(&b'/') || b.contains(&0) => Err("has a component with '/' or NUL"),
        _ => Ok(bytes),
    }
}

/// Renders an encoded name for a terminal, a log line or JSON: printable
/// characters as they are; escaped bytes as `\xNN`; a backslash as `\\`;
/// control characters, DEL, and the line and paragraph separators as `\n`,
/// `\t`, `\r` or `\u{..}`.
pub fn display(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if is_escape(c) => out.push_str(&format!("\\x{:02x}", c as u32 - ESCAPE_BASE)),
            c if c.is_control()
                || matches!(c, '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}') =>
            {
                out.push_str(&format!("\\u{{{:x}}}", c as u32));
            }
            c => out.push(c),
        }
    }
    out
}

/// Whether a stored string needs [`display`] to change it: the common case of
/// a plain name is then shown without an allocation.
pub fn needs_escaping(text: &str) -> bool {
    text.chars().any(|c| {
        c == '\\'
            || c.is_control()
            || is_escape(c)
            || matches!(c, '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    })
}

/// A stored path split after its last `/`: `/a/b` is (`/a/`, `b`), `/a` is
/// (`/`, `a`), `/` is (`/`, ``), and a path without `/` has an empty
/// directory part; the two parts concatenated are always the path. This is
/// how a server's catalog keeps a path (a directory row and a name), so it
/// is also the order a server lists versions in: a directory's own entries
/// before those of its subdirectories (`/a/b0` before `/a/b/x`).
pub fn split_path(path: &str) -> (&str, &str) {
    match path.rfind('/') {
        Some(i) => path.split_at(i + 1),
        None => ("", path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(bytes: &[u8]) {
        let text = encode_bytes(bytes);
        assert_eq!(decode_bytes(&text), bytes, "{text:?}");
        assert!(is_canonical(&text));
    }

    #[test]
    fn valid_utf8_is_unchanged() {
        for name in ["plain.txt", "ü/日本/ñ", "", "a b\tc\nd", "/x/y"] {
            assert_eq!(encode_bytes(name.as_bytes()), name);
            round_trip(name.as_bytes());
        }
    }

    #[test]
    fn invalid_bytes_round_trip_and_keep_separators() {
        round_trip(b"\xff");
        round_trip(b"caf\xe9.txt");
        round_trip(b"\xc3");
        round_trip(b"a\xc3/b\x80\x80/\xf4\x90\x80\x80");
        let text = encode_bytes(b"/dir\xff/f");
        assert_eq!(text.matches('/').count(), 2);
        assert!(text.starts_with("/dir") && text.ends_with("/f"));
    }

    #[test]
    fn real_escape_range_characters_are_not_taken_for_bytes() {
        let tricky = "x\u{10FF41}y\u{10FFFF}";
        let text = encode_bytes(tricky.as_bytes());
        assert_ne!(text, tricky);
        assert_eq!(decode_bytes(&text), tricky.as_bytes());
        // A lone escaped 'A' is the byte 0x41, and not canonical.
        assert_eq!(decode_bytes("\u{10FF41}"), b"A");
        assert!(!is_canonical("\u{10FF41}"));
    }

    #[test]
    fn every_short_byte_string_round_trips() {
        for a in 0..=255u8 {
            for b in [0x00, 0x2f, 0x41, 0x80, 0xbf, 0xc3, 0xe2, 0xf4, 0xff] {
                round_trip(&[a, b]);
                round_trip(&[b, a, b]);
            }
        }
    }

    #[test]
    fn escaped_dots_slashes_and_nul_are_refused() {
        assert_eq!(check_component("ok\u{10FFE9}"), Ok(b"ok\xe9".to_vec()));
        for bad in [
            "\u{10FF2E}\u{10FF2E}",
            "\u{10FF2E}",
            "\u{10FF2F}etc",
            "a\u{10FF00}",
            "",
            ".",
            "..",
        ] {
            assert!(check_component(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn split_path_cuts_after_the_last_slash_and_orders_as_the_catalog() {
        assert_eq!(split_path("/a/b"), ("/a/", "b"));
        assert_eq!(split_path("/a"), ("/", "a"));
        assert_eq!(split_path("/"), ("/", ""));
        assert_eq!(split_path("a"), ("", "a"));
        let mut paths = vec!["/d/c", "/d/b/x", "/d/a", "/d/b0"];
        paths.sort_by_key(|p| split_path(p));
        assert_eq!(paths, vec!["/d/a", "/d/b0", "/d/c", "/d/b/x"]);
    }
}
