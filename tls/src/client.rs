//! The client side: tonic channels over TLS with the server pinned.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use http::Uri;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};

use crate::fingerprint::Fingerprint;
use crate::identity::ServerIdentity;
use crate::verify::PinnedServer;

/// How a server is recognised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// Exactly the certificate with this fingerprint.
    Pinned(Fingerprint),
    /// Any certificate for the address's host name issued by a CA in this
    /// PEM file (an organisation's own CA).
    CaFile(PathBuf),
}

impl std::fmt::Display for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Trust::Pinned(fp) => write!(f, "fingerprint {fp}"),
            Trust::CaFile(path) => write!(f, "CA file {}", path.display()),
        }
    }
}

/// Why no channel could be opened.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConnectError {
    /// The address is not a usable URL.
    #[error("{url:?} is not a usable server address: {reason}")]
    BadUrl {
        /// The address.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// The server presented another certificate than the pinned one.
    #[error(
        "the server at {url} presented certificate fingerprint {presented}, but {expected} is pinned; nothing was sent to it. If the server's certificate was replaced on purpose, pin the new fingerprint (tandem-admin query status on the server prints it); otherwise something else is answering at that address"
    )]
    PinMismatch {
        /// The address.
        url: String,
        /// The pinned fingerprint.
        expected: Fingerprint,
        /// What the server presented.
        presented: Fingerprint,
    },
    /// The TLS handshake failed for another reason (CA verification, protocol).
    #[error("TLS handshake with {url} failed: {cause}; nothing was sent to it")]
    Handshake {
        /// The address.
        url: String,
        /// The cause as rustls gives it.
        cause: String,
    },
    /// Nobody answered (refused, timed out, reset).
    #[error("{url} is unreachable: {cause}")]
    Unreachable {
        /// The address.
        url: String,
        /// The innermost transport cause.
        cause: String,
    },
    /// The trust settings cannot be used (unreadable CA file, ...).
    #[error("TLS setup: {0}")]
    Setup(String),
}

impl ConnectError {
    /// Whether the failure means "nobody answered", the only kind of failure
    /// that may lead a client to its failover server.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, ConnectError::Unreachable { .. })
    }
}

/// The scheme of a server URL: `Ok(true)` for `https`, `Ok(false)` for
/// `http`.
///
/// # Errors
/// Anything else, or a URL without a host.
pub fn parse_url_scheme(url: &str) -> Result<bool, ConnectError> {
    let bad = |reason: &str| ConnectError::BadUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let uri: Uri = url.parse().map_err(|e| bad(&format!("{e}")))?;
    if uri.host().is_none_or(str::is_empty) {
        return Err(bad("no host; use https://HOST:PORT"));
    }
    match uri.scheme_str() {
        Some("https") => Ok(true),
        Some("http") => Ok(false),
        _ => Err(bad("use https://HOST:PORT")),
    }
}

/// Whether the URL's host is a loopback IP address (`127.0.0.0/8`, `::1`):
/// the only place plaintext is ever allowed. Names, `localhost` included,
/// do not count: what they resolve to is not ours to vouch for.
pub fn is_loopback_url(url: &str) -> bool {
    let Ok(uri) = url.parse::<Uri>() else {
        return false;
    };
    let Some(host) = uri.host() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Trust settings and, for mutual TLS, the identity presented to the server.
#[derive(Debug, Clone)]
pub struct ClientTls {
    config: Arc<rustls::ClientConfig>,
    pinned: Option<Arc<PinnedServer>>,
    /// The last handshake failure, for the error message (tonic keeps only
    /// its own wording of the connector's error).
    handshake_failure: Arc<Mutex<Option<String>>>,
}

fn read_ca_file(path: &Path) -> Result<rustls::RootCertStore, ConnectError> {
    let setup = |what: String| ConnectError::Setup(format!("CA file {}: {what}", path.display()));
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| setup(e.to_string()))? {
        let cert = cert.map_err(|e| setup(format!("malformed PEM: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| setup(format!("unusable certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(setup("holds no certificate".into()));
    }
    Ok(roots)
}

impl ClientTls {
    /// Trusts per `trust`; presents `identity` when the server asks for a
    /// client certificate (partner servers, for mutual TLS).
    ///
    /// # Errors
    /// [`ConnectError::Setup`] for an unreadable CA file or unusable identity.
    pub fn new(trust: &Trust, identity: Option<&ServerIdentity>) -> Result<Self, ConnectError> {
        let provider = crate::provider();
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| ConnectError::Setup(e.to_string()))?;
        let (builder, pinned) = match trust {
            Trust::Pinned(fp) => {
                let verifier = Arc::new(PinnedServer::new(*fp, provider));
                (
                    builder
                        .dangerous()
                        .with_custom_certificate_verifier(verifier.clone()),
                    Some(verifier),
                )
            }
            Trust::CaFile(path) => (builder.with_root_certificates(read_ca_file(path)?), None),
        };
        let mut config = match identity {
            Some(identity) => {
                let (chain, key) = identity.client_auth();
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| ConnectError::Setup(format!("client certificate: {e}")))?
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![crate::ALPN_H2.to_vec()];
        Ok(ClientTls {
            config: Arc::new(config),
            pinned,
            handshake_failure: Arc::default(),
        })
    }

    fn record_failure(&self, cause: String) {
        *self
            .handshake_failure
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(cause);
    }

    fn take_failure(&self) -> Option<String> {
        self.handshake_failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}

/// Opens the TCP connection and runs the TLS handshake for one dial.
async fn dial(
    tls: ClientTls,
    uri: Uri,
) -> Result<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>, std::io::Error> {
    let host = uri
        .host()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(443);
    let tcp = TcpStream::connect((host.as_str(), port)).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from(host.clone())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    match TlsConnector::from(tls.config.clone())
        .connect(name, tcp)
        .await
    {
        Ok(stream) => Ok(TokioIo::new(stream)),
        Err(e) => {
            // rustls reports its refusals as InvalidData; a reset or EOF
            // mid-handshake is the network's.
            if e.kind() == std::io::ErrorKind::InvalidData {
                tls.record_failure(e.to_string());
            }
            Err(e)
        }
    }
}

/// The innermost cause of an error chain ("Connection refused", ...).
fn innermost(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cause: &dyn std::error::Error = err;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// Connects `endpoint`: over TLS checked by `tls` for `https://`, in
/// plaintext for `http://` to a loopback address only and only when no trust
/// is configured (development servers run with `--insecure-plaintext`): a
/// pin is never silently dropped. Nothing is sent before the server's
/// certificate has been checked.
///
/// # Errors
/// [`ConnectError`]: only [`ConnectError::Unreachable`] means nobody answered.
pub async fn connect(endpoint: Endpoint, tls: Option<&ClientTls>) -> Result<Channel, ConnectError> {
    let url = endpoint.uri().to_string();
    let url = url.trim_end_matches('/').to_string();
    let https = parse_url_scheme(&url)?;
    if !https {
        if tls.is_some() {
            return Err(ConnectError::BadUrl {
                url,
                reason: "a pinned fingerprint or CA file needs https://; http:// would send everything in clear".into(),
            });
        }
        if !is_loopback_url(&url) {
            return Err(ConnectError::BadUrl {
                url,
                reason: "plaintext http:// is allowed only to a loopback address; use https://"
                    .into(),
            });
        }
        return endpoint
            .connect()
            .await
            .map_err(|e| ConnectError::Unreachable {
                url,
                cause: innermost(&e),
            });
    }
    let Some(tls) = tls else {
        return Err(ConnectError::Setup(format!(
            "{url} is https:// but no server fingerprint or CA file is configured to check it"
        )));
    };
    if let Some(pinned) = &tls.pinned {
        // A stale refusal from an earlier dial must not be reported for this one.
        let _ = pinned.refused();
    }
    tls.take_failure();
    let dialer = tls.clone();
    let connector = tower::service_fn(move |uri: Uri| dial(dialer.clone(), uri));
    match endpoint.connect_with_connector(connector).await {
        Ok(channel) => Ok(channel),
        Err(e) => {
            let failure = tls.take_failure();
            if let (Some(pinned), Some(_)) = (&tls.pinned, &failure)
                && let Some(presented) = pinned.refused()
            {
                return Err(ConnectError::PinMismatch {
                    url,
                    expected: pinned.pin(),
                    presented,
                });
            }
            match failure {
                Some(cause) => Err(ConnectError::Handshake { url, cause }),
                None => Err(ConnectError::Unreachable {
                    url,
                    cause: innermost(&e),
                }),
            }
        }
    }
}
