//! A server's TLS identity: its certificate chain and private key.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::fingerprint::Fingerprint;
use crate::verify::AnyClientCertificate;

/// File names inside the TLS directory of a server that made its own identity.
const CERT_FILE: &str = "cert.pem";
const KEY_FILE: &str = "key.pem";

/// An identity that cannot be read or made.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A file could not be read, created or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file holds no usable certificate or key.
    #[error("{path}: {what}; give a PEM certificate chain (leaf first) and its PEM private key")]
    Unusable {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// The certificate and key do not go together, or rustls refused them.
    #[error("TLS setup: {0}")]
    Tls(String),
}

/// A server's certificate chain (leaf first) and private key.
#[derive(Debug)]
pub struct ServerIdentity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    fingerprint: Fingerprint,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> IdentityError + '_ {
    move |source| IdentityError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` to `path` with `mode`, through a temporary file renamed into
/// place, so a crash leaves either no file or a whole one.
fn write_private(path: &Path, bytes: &[u8], mode: u32) -> Result<(), IdentityError> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

impl ServerIdentity {
    /// Reads the identity kept in `dir` (`cert.pem`, `key.pem`), creating a
    /// key and a self-signed certificate for `names` on first start (the
    /// directory mode 0700, both files 0600).
    ///
    /// # Errors
    /// [`IdentityError`] naming the file at fault.
    pub fn load_or_create(dir: &Path, names: &[String]) -> Result<Self, IdentityError> {
        let cert = dir.join(CERT_FILE);
        let key = dir.join(KEY_FILE);
        if cert.exists() {
            return Self::from_files(&cert, &key);
        }
        if key.exists() {
            // The key is written first: a key alone is a first start cut
            // short before its certificate existed, so no one can pin it yet.
            tracing::warn!(key = %key.display(), "a TLS key without its certificate: making both anew");
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err(dir))?;
        let made = rcgen::generate_simple_self_signed(names.to_vec())
            .map_err(|e| IdentityError::Tls(format!("cannot make a certificate: {e}")))?;
        // The key first: a certificate without its key is never left behind.
        write_private(&key, made.signing_key.serialize_pem().as_bytes(), 0o600)?;
        write_private(&cert, made.cert.pem().as_bytes(), 0o600)?;
        tracing::info!(cert = %cert.display(), "created a self-signed TLS certificate");
        Self::from_files(&cert, &key)
    }

    /// A key and self-signed certificate for `names`, made in memory and
    /// never written: for a store opened inside another process (a client's
    /// local vault), which never listens, so nobody pins it, and whose
    /// directory may be on a share others write.
    ///
    /// # Errors
    /// [`IdentityError::Tls`] when the certificate cannot be made.
    pub fn ephemeral(names: &[String]) -> Result<Self, IdentityError> {
        let made = rcgen::generate_simple_self_signed(names.to_vec())
            .map_err(|e| IdentityError::Tls(format!("cannot make a certificate: {e}")))?;
        let leaf = made.cert.der().clone();
        let key = PrivateKeyDer::Pkcs8(made.signing_key.serialize_der().into());
        Ok(ServerIdentity {
            fingerprint: Fingerprint::of_der(&leaf),
            chain: vec![leaf],
            key,
        })
    }

    /// Reads an operator's certificate chain and key (PEM).
    ///
    /// # Errors
    /// [`IdentityError`] naming the file at fault.
    pub fn from_files(cert: &Path, key: &Path) -> Result<Self, IdentityError> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .map_err(|e| IdentityError::Unusable {
                path: cert.to_path_buf(),
                what: format!("cannot read certificates: {e}"),
            })?
            .collect::<Result<_, _>>()
            .map_err(|e| IdentityError::Unusable {
                path: cert.to_path_buf(),
                what: format!("malformed PEM: {e}"),
            })?;
        let Some(leaf) = chain.first() else {
            return Err(IdentityError::Unusable {
                path: cert.to_path_buf(),
                what: "no certificate in the file".into(),
            });
        };
        let fingerprint = Fingerprint::of_der(leaf);
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| IdentityError::Unusable {
            path: key.to_path_buf(),
            what: format!("no private key: {e}"),
        })?;
        let identity = ServerIdentity {
            chain,
            key,
            fingerprint,
        };
        // Fails now, with the files named, when key and certificate differ.
        identity.server_config()?;
        Ok(identity)
    }

    /// The fingerprint of the leaf certificate: this server's identity.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// The leaf certificate (DER).
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.chain[0]
    }

    /// The rustls server configuration: this identity, HTTP/2, and an
    /// optional client certificate whose fingerprint the services check.
    pub(crate) fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, IdentityError> {
        let provider = crate::provider();
        let mut config = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| IdentityError::Tls(e.to_string()))?
            .with_client_cert_verifier(Arc::new(AnyClientCertificate::new(provider)))
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| IdentityError::Tls(format!("certificate and key do not match: {e}")))?;
        config.alpn_protocols = vec![crate::ALPN_H2.to_vec()];
        Ok(Arc::new(config))
    }

    /// A TLS acceptor for HTTP/1.1 callers that present no certificate:
    /// monitoring systems scraping the metrics endpoint, which authenticate
    /// with a bearer token inside the encrypted channel.
    ///
    /// # Errors
    /// [`IdentityError::Tls`] when the certificate and key do not match.
    pub fn http1_acceptor(&self) -> Result<tokio_rustls::TlsAcceptor, IdentityError> {
        let mut config = rustls::ServerConfig::builder_with_provider(crate::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| IdentityError::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| IdentityError::Tls(format!("certificate and key do not match: {e}")))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
    }

    /// The chain and key, for presenting this identity as a TLS client.
    pub(crate) fn client_auth(&self) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        (self.chain.clone(), self.key.clone_key())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn made_once_then_read_back_with_private_modes() {
        let dir = tempfile::tempdir().unwrap();
        let tls = dir.path().join("tls");
        let first = ServerIdentity::load_or_create(&tls, &["localhost".into()]).unwrap();
        let again = ServerIdentity::load_or_create(&tls, &["localhost".into()]).unwrap();
        assert_eq!(first.fingerprint(), again.fingerprint());
        for (path, mode) in [
            (tls.clone(), 0o700),
            (tls.join(CERT_FILE), 0o600),
            (tls.join(KEY_FILE), 0o600),
        ] {
            let got = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(got, mode, "{}", path.display());
        }
    }

    #[test]
    fn a_key_left_without_its_certificate_is_made_anew() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(KEY_FILE), "half a first start").unwrap();
        let made = ServerIdentity::load_or_create(dir.path(), &["localhost".into()]).unwrap();
        let again = ServerIdentity::load_or_create(dir.path(), &["localhost".into()]).unwrap();
        assert_eq!(made.fingerprint(), again.fingerprint());
    }

    #[test]
    fn a_key_that_is_not_the_certificates_is_refused() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        ServerIdentity::load_or_create(a.path(), &["a".into()]).unwrap();
        ServerIdentity::load_or_create(b.path(), &["b".into()]).unwrap();
        let err = ServerIdentity::from_files(&a.path().join(CERT_FILE), &b.path().join(KEY_FILE))
            .unwrap_err();
        assert!(err.to_string().contains("do not match"), "{err}");
        let empty = a.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let err = ServerIdentity::from_files(&empty, &a.path().join(KEY_FILE)).unwrap_err();
        assert!(err.to_string().contains("no certificate"), "{err}");
    }
}
