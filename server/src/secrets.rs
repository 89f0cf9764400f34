//! Secrets this server must be able to present again (partner servers'
//! shared passwords), sealed before they reach the catalog.
//!
//! A hash will not do for them: this server sends the password to its partner
//! and answers the partner's challenge with it. So they are encrypted with
//! ChaCha20-Poly1305 under a key that lives in its own file,
//! `DATA_DIR/secrets.key` (0600), never in the catalog. A copy of
//! `catalog.db` — a database backup, a file sent with a support case, the
//! replica of the catalog that disaster recovery keeps — then holds no usable
//! partner credential. Each sealed value is bound to the row it belongs to
//! (the additional data names the partner), so moving ciphertext between rows
//! does not move the secret.

use std::path::Path;

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};

/// What every sealed value starts with: the format, so a later format can be
/// told apart and a value stored in clear by an older server is recognised.
const PREFIX: &str = "sealed1:";

/// Why a sealed value could not be opened or the key not loaded.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The key file cannot be read or created.
    #[error(
        "secrets key {path}: {cause}; restore the file from the server's backup or define the partner servers again"
    )]
    KeyFile {
        /// The key file.
        path: String,
        /// What failed.
        cause: String,
    },
    /// The value was sealed under another key, or altered.
    #[error(
        "the stored password of {purpose} cannot be opened with this server's secrets.key (the key was replaced or the catalog altered); define it again with its password"
    )]
    Unreadable {
        /// Whose secret it is.
        purpose: String,
    },
}

/// The key partner secrets are sealed with.
pub struct SecretKey {
    key: LessSafeKey,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(***)")
    }
}

impl SecretKey {
    /// Reads the key at `path`, or creates a random one there (0600, fsynced)
    /// when the file does not exist.
    ///
    /// # Errors
    /// The file cannot be read or written, or does not hold 64 hex digits.
    pub fn load_or_create(path: &Path) -> Result<Self, SecretError> {
        let fail = |cause: String| SecretError::KeyFile {
            path: path.display().to_string(),
            cause,
        };
        let text = tandem_os::atomic_file::read_small_text(path, 4096);
        let bytes = match text {
            Ok(text) => {
                let bytes =
                    hex::decode(text.trim()).map_err(|e| fail(format!("not a hex key: {e}")))?;
                <[u8; 32]>::try_from(bytes.as_slice())
                    .map_err(|_| fail(format!("{} bytes where 32 are expected", bytes.len())))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let bytes: [u8; 32] = rand::random();
                // Whole and durable (directory entry included) before any
                // value sealed with it can be committed to the catalog.
                tandem_os::atomic_file::replace(
                    path,
                    format!("{}\n", hex::encode(bytes)).as_bytes(),
                    Some(0o600),
                )
                .map_err(|e| fail(e.to_string()))?;
                bytes
            }
            Err(e) => return Err(fail(e.to_string())),
        };
        Ok(Self::from_bytes(&bytes))
    }

    /// A key from its 32 bytes.
    fn from_bytes(bytes: &[u8; 32]) -> Self {
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, bytes)
            .expect("ChaCha20-Poly1305 takes a 32-byte key");
        SecretKey {
            key: LessSafeKey::new(unbound),
        }
    }

    /// Seals `secret` for `purpose` (e.g. "server PARTNER"): a fresh random
    /// nonce, and the purpose as additional data.
    #[must_use]
    pub fn seal(&self, purpose: &str, secret: &str) -> String {
        let nonce: [u8; NONCE_LEN] = rand::random();
        let mut sealed = secret.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(purpose.as_bytes()),
                &mut sealed,
            )
            .expect("a password is far below ChaCha20's message limit");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        format!("{PREFIX}{}", hex::encode(out))
    }

    /// Opens a value sealed by [`Self::seal`] for the same `purpose`.
    ///
    /// # Errors
    /// [`SecretError::Unreadable`] for a value sealed under another key or
    /// purpose, altered, or not sealed at all.
    pub fn open(&self, purpose: &str, sealed: &str) -> Result<String, SecretError> {
        let unreadable = || SecretError::Unreadable {
            purpose: purpose.to_string(),
        };
        let bytes = sealed
            .strip_prefix(PREFIX)
            .and_then(|h| hex::decode(h).ok())
            .filter(|b| b.len() >= NONCE_LEN)
            .ok_or_else(unreadable)?;
        let (nonce, body) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| unreadable())?;
        let mut body = body.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(purpose.as_bytes()), &mut body)
            .map_err(|_| unreadable())?;
        String::from_utf8(plain.to_vec()).map_err(|_| unreadable())
    }

    /// Whether `value` is in the sealed format (else it was stored in clear
    /// by a server from before sealing, and is sealed at start-up).
    #[must_use]
    pub fn is_sealed(value: &str) -> bool {
        value.starts_with(PREFIX)
    }
}

/// The purpose a partner server's password is sealed for.
#[must_use]
pub fn partner_purpose(server: &str) -> String {
    format!("server {server}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_the_same_key_and_purpose() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("secrets.key");
        let key = SecretKey::load_or_create(&path).expect("create");
        let sealed = key.seal("server B", "shared-password");
        assert!(SecretKey::is_sealed(&sealed));
        assert!(!sealed.contains("shared-password"));
        assert_ne!(
            sealed,
            key.seal("server B", "shared-password"),
            "fresh nonce"
        );
        assert_eq!(
            key.open("server B", &sealed).expect("open"),
            "shared-password"
        );
        // Moved to another row: refused.
        assert!(key.open("server C", &sealed).is_err());
        // Reloaded from the file: the same key.
        let again = SecretKey::load_or_create(&path).expect("load");
        assert_eq!(
            again.open("server B", &sealed).expect("open"),
            "shared-password"
        );
        // Another key, an altered value, a clear value: refused.
        let other = SecretKey::from_bytes(&[7; 32]);
        assert!(other.open("server B", &sealed).is_err());
        let mut altered = sealed.clone();
        let last = altered.pop().expect("non-empty");
        altered.push(if last == '0' { '1' } else { '0' });
        assert!(key.open("server B", &altered).is_err());
        assert!(key.open("server B", "shared-password").is_err());
        assert!(key.open("server B", "sealed1:00").is_err());
        let mode = std::fs::metadata(&path)
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
            .expect("stat");
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn a_damaged_key_file_is_refused_with_its_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("secrets.key");
        std::fs::write(&path, "abcd\n").expect("write");
        let err = SecretKey::load_or_create(&path).expect_err("short key");
        assert!(err.to_string().contains("secrets.key"), "{err}");
        assert!(err.to_string().contains("2 bytes"), "{err}");
    }
}
