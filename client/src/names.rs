//! File names on this machine: any bytes, carried as the protocol's
//! strings ([`tandem_proto::names`] says how), and shown safely.
//!
//! [`display`] renders any stored name for people and logs: escaped bytes
//! as `\xNN`, control and line-separator characters as escapes, and a
//! backslash doubled, so a name can neither forge a log line nor send a
//! terminal an escape sequence.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

pub use tandem_proto::names::{
    check_component, decode_bytes, display, encode_bytes, needs_escaping,
};

/// Encodes an OS name or path.
pub fn encode(name: &OsStr) -> String {
    encode_bytes(name.as_bytes())
}

/// The OS name or path an encoded string stands for.
pub fn decode(text: &str) -> OsString {
    OsString::from_vec(decode_bytes(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_names_round_trip() {
        let name = OsStr::from_bytes(b"caf\xe9/\xff");
        assert_eq!(decode(&encode(name)), name);
    }

    #[test]
    fn display_escapes_what_could_forge_a_line_or_a_terminal_sequence() {
        assert_eq!(display("a.txt"), "a.txt");
        assert_eq!(display("a\nTDM9999E fake"), "a\\nTDM9999E fake");
        assert_eq!(display("\u{1b}[31mred"), "\\u{1b}[31mred");
        assert_eq!(display("back\\slash"), "back\\\\slash");
        assert_eq!(display(&encode_bytes(b"caf\xe9")), "caf\\xe9");
        assert_eq!(display("x\u{2028}y"), "x\\u{2028}y");
        assert!(!needs_escaping("plain ü"));
        assert!(needs_escaping("a\rb"));
    }
}
