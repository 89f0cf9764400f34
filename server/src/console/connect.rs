//! Connecting the console: the server's identity checked first (pinned
//! fingerprint or CA), then the credentials (a named administrator's, or the
//! bootstrap token) on every request.

use tandem_proto::pb::admin_client::AdminClient;
use tonic::transport::{Channel, Endpoint};

use super::AdminError;
use super::cli::AdminCli;
use super::input::read_secret;

/// The `authorization` value the console sends: a named administrator's
/// credentials with --admin, else the bootstrap token from --token-file.
fn credentials(
    cli: &AdminCli,
) -> Result<tonic::metadata::MetadataValue<tonic::metadata::Ascii>, AdminError> {
    let value = match &cli.admin {
        Some(name) => {
            use base64::Engine;
            let password = match (
                &cli.admin_password_file,
                std::env::var("TANDEM_ADMIN_PASSWORD"),
            ) {
                (Some(file), _) => read_secret(Some(file), "administrator password")?,
                (None, Ok(password)) if !password.is_empty() => password,
                _ => {
                    return Err(AdminError::Usage(format!(
                        "--admin {name} needs its password: give --admin-password-file FILE or set TANDEM_ADMIN_PASSWORD"
                    )));
                }
            };
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{name}:{password}"))
            )
        }
        None => {
            let token_text = std::fs::read_to_string(&cli.token_file).map_err(|e| {
                AdminError::Usage(format!(
                    "cannot read the admin token {}: {e}; use --token-file with the server's DATA_DIR/admin.token, or --admin NAME",
                    cli.token_file.display()
                ))
            })?;
            format!("Bearer {}", token_text.trim())
        }
    };
    value.parse().map_err(|_| {
        AdminError::Usage("the admin credentials hold characters a header cannot carry".into())
    })
}

pub(super) struct Console {
    client: AdminClient<Channel>,
    token: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    address: String,
}

impl Console {
    pub(super) async fn connect(cli: &AdminCli) -> Result<Self, AdminError> {
        let https = tandem_tls::parse_url_scheme(&cli.server)
            .map_err(|e| AdminError::Usage(format!("--server: {e}")))?;
        if !https && (cli.fingerprint.is_some() || cli.ca_file.is_some()) {
            return Err(AdminError::Usage(format!(
                "--server {} is plaintext http://, which cannot check --fingerprint or --ca-file; use https://",
                cli.server
            )));
        }
        if !https && !tandem_tls::is_loopback_url(&cli.server) {
            return Err(AdminError::Usage(format!(
                "--server {}: plaintext http:// is allowed only to a loopback address; use https://",
                cli.server
            )));
        }
        let token = credentials(cli)?;
        let endpoint = Endpoint::from_shared(cli.server.clone())
            .map_err(|e| {
                AdminError::Usage(format!("--server {:?} is not a valid URL: {e}", cli.server))
            })?
            .connect_timeout(std::time::Duration::from_secs(5));
        let tls = if https {
            Some(
                tandem_tls::ClientTls::new(&console_trust(cli)?, None)
                    .map_err(|e| AdminError::Usage(e.to_string()))?,
            )
        } else {
            None
        };
        // The token is sent only after the server's certificate matched.
        let channel = tandem_tls::connect(endpoint, tls.as_ref())
            .await
            .map_err(|e| match e {
                tandem_tls::ConnectError::Unreachable { url, cause } => AdminError::Unreachable {
                    address: url,
                    cause,
                },
                other => AdminError::Usage(other.to_string()),
            })?;
        Ok(Console {
            client: AdminClient::new(channel)
                .max_decoding_message_size(tandem_proto::MAX_MESSAGE_BYTES),
            token,
            address: cli.server.clone(),
        })
    }

    pub(super) fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(message);
        r.metadata_mut().insert("authorization", self.token.clone());
        r
    }

    /// A handle for one call (cheap: the channel is shared).
    pub(super) fn client(&self) -> AdminClient<Channel> {
        self.client.clone()
    }

    /// The server's reply to `call`, or the console's error for its refusal.
    pub(super) async fn answer<T>(
        &self,
        call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, AdminError> {
        call.await
            .map(tonic::Response::into_inner)
            .map_err(|s| self.refused(s))
    }

    /// The console's error for a server's refusal: the server's own words,
    /// sorted by the status code into the kinds an operator acts on (the
    /// code's name is not shown: it means nothing to an operator).
    fn refused(&self, status: tonic::Status) -> AdminError {
        use tonic::Code;
        let message = status.message().to_string();
        match status.code() {
            Code::Unavailable => AdminError::Unreachable {
                address: self.address.clone(),
                cause: message,
            },
            Code::Unauthenticated | Code::PermissionDenied => AdminError::Denied(message),
            Code::NotFound => AdminError::NotFound(message),
            Code::InvalidArgument
            | Code::FailedPrecondition
            | Code::AlreadyExists
            | Code::OutOfRange
            | Code::ResourceExhausted
            | Code::Aborted => AdminError::Refused(message),
            Code::Unimplemented => AdminError::Refused(format!(
                "the server does not know this command ({message}); use the console of the server's release"
            )),
            _ => AdminError::Failed(message),
        }
    }
}

/// How the console recognises the server: `--ca-file`, `--fingerprint`,
/// or the `fingerprint` file the server writes beside its admin token.
fn console_trust(cli: &AdminCli) -> Result<tandem_tls::Trust, AdminError> {
    if let Some(ca) = &cli.ca_file {
        return Ok(tandem_tls::Trust::CaFile(ca.clone()));
    }
    let text = match &cli.fingerprint {
        Some(text) => text.clone(),
        None => {
            let file = cli.token_file.with_file_name("fingerprint");
            std::fs::read_to_string(&file).map_err(|e| {
                AdminError::Usage(format!(
                    "cannot read the server's fingerprint {}: {e}; give --fingerprint (as the server logged it at start) or --ca-file",
                    file.display()
                ))
            })?
        }
    };
    text.parse()
        .map(tandem_tls::Trust::Pinned)
        .map_err(|e: tandem_tls::FingerprintError| AdminError::Usage(e.to_string()))
}
