//! Certificate fingerprints: SHA-256 of the DER certificate.

use std::fmt;
use std::str::FromStr;

/// The SHA-256 of a certificate (DER), the identity a peer is pinned by.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

/// A fingerprint that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error(
    "{value:?} is not a SHA-256 certificate fingerprint: expected 32 hex bytes, as `openssl x509 -noout -fingerprint -sha256` or `tandem-admin query status` prints them (AB:CD:...)"
)]
pub struct FingerprintError {
    /// The text given.
    pub value: String,
}

impl Fingerprint {
    /// The fingerprint of a DER certificate.
    pub fn of_der(der: &[u8]) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, der);
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(digest.as_ref());
        Fingerprint(bytes)
    }

    /// The raw digest.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for Fingerprint {
    /// Upper-case hex pairs joined by colons, as openssl prints them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

impl FromStr for Fingerprint {
    type Err = FingerprintError;

    /// Accepts what openssl prints, with or without the `sha256 Fingerprint=`
    /// prefix, in either case, with colons or without.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = || FingerprintError {
            value: text.to_string(),
        };
        let trimmed = text.trim();
        let value = trimmed.rsplit_once('=').map_or(trimmed, |(_, v)| v).trim();
        let hex: String = value.chars().filter(|c| *c != ':').collect();
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(err());
        }
        let mut bytes = [0u8; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| err())?;
        }
        Ok(Fingerprint(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_as_openssl_and_parses_its_forms() {
        let fp = Fingerprint::of_der(b"not really a certificate");
        let text = fp.to_string();
        assert_eq!(text.len(), 95);
        assert_eq!(text.to_uppercase(), text);
        assert_eq!(text.parse::<Fingerprint>().unwrap(), fp);
        assert_eq!(text.to_lowercase().parse::<Fingerprint>().unwrap(), fp);
        assert_eq!(text.replace(':', "").parse::<Fingerprint>().unwrap(), fp);
        let openssl = format!("sha256 Fingerprint={text}\n");
        assert_eq!(openssl.parse::<Fingerprint>().unwrap(), fp);
    }

    #[test]
    fn rejects_what_is_not_a_sha256() {
        for bad in [
            "",
            "AB:CD",
            &"GG".repeat(32),
            &"AB".repeat(33),
            "sha1 Fingerprint=AB",
        ] {
            let err = bad.parse::<Fingerprint>().unwrap_err();
            assert!(err.to_string().contains("openssl"), "{err}");
        }
    }
}
