//! The Prometheus endpoint (`metrics_listen`): what a monitoring system
//! alerts on — bytes backed up and restored, sessions, how long since each
//! node backed up and replicated, pool use and uploads pending, damaged
//! chunks and the last audits — as OpenMetrics text at `GET /metrics`.
//!
//! It is served over TLS with the server's own certificate (the one
//! clients pin; a scraper trusts `tls/cert.pem` as its CA), and every
//! request must carry `Authorization: Bearer` with the token in
//! DATA_DIR/metrics.token: node names and activity are not for anyone who
//! can reach the port. Callers are bounded: a few connections at once, small
//! headers, a short deadline, and nothing is computed before the token
//! matches.

mod collect;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::ServerState;
use crate::auth::Token;
use crate::error::ServerError;
use crate::state::{load_or_create_token, setup_err};

/// Connections served at once; more are closed at once. Prometheus keeps
/// one per target, so a handful leaves room for a second scraper and curl.
const MAX_CONNECTIONS: usize = 8;
/// Everything one connection may take, handshake and answer included.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(15);
/// The largest request head accepted.
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// The file holding the bearer token scrapers send.
pub const TOKEN_FILE: &str = "metrics.token";
/// The file the endpoint's bound address is written to.
pub const ADDR_FILE: &str = "metrics.addr";

/// Binds the endpoint when `metrics_listen` is set, creating the token on
/// first use, and writes the bound address to DATA_DIR/metrics.addr.
///
/// # Errors
/// The address cannot be bound (the text names it); the token or address
/// file cannot be written.
pub async fn bind(state: &ServerState) -> Result<Option<(TcpListener, Token)>, ServerError> {
    let Some(addr) = state.config.metrics_listen else {
        return Ok(None);
    };
    let listener = TcpListener::bind(addr).await.map_err(setup_err(format!(
        "metrics_listen {addr}: cannot listen there (in use, or not an address of this machine); \
         pick another port or remove metrics_listen"
    )))?;
    let bound = listener
        .local_addr()
        .map_err(setup_err("cannot read the metrics address".into()))?;
    let token = load_or_create_token(&state.config.data_dir.join(TOKEN_FILE))?;
    std::fs::write(state.config.data_dir.join(ADDR_FILE), format!("{bound}\n"))
        .map_err(setup_err(format!("cannot write {ADDR_FILE}")))?;
    tracing::info!(
        "metrics endpoint on {bound} ({})",
        if state.config.insecure_plaintext {
            "plain HTTP"
        } else {
            "HTTPS"
        }
    );
    Ok(Some((listener, token)))
}

/// Serves `GET /metrics` on `listener` until `shutdown`.
pub async fn serve(
    state: Arc<ServerState>,
    listener: TcpListener,
    token: Token,
    shutdown: CancellationToken,
) {
    let acceptor = if state.config.insecure_plaintext {
        None
    } else {
        match state.identity.http1_acceptor() {
            Ok(acceptor) => Some(acceptor),
            Err(e) => {
                tracing::error!(cause = %e, "the metrics endpoint cannot use the TLS identity");
                return;
            }
        }
    };
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let token = Arc::new(token);
    loop {
        let (tcp, peer) = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(cause = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "metrics connection refused: {MAX_CONNECTIONS} open");
            continue;
        };
        let (state, token, acceptor) = (state.clone(), token.clone(), acceptor.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let work = async move {
                match acceptor {
                    Some(acceptor) => match acceptor.accept(tcp).await {
                        Ok(tls) => answer(tls, state, token).await,
                        Err(e) => {
                            tracing::debug!(%peer, cause = %e, "metrics TLS handshake failed")
                        }
                    },
                    None => answer(tcp, state, token).await,
                }
            };
            if tokio::time::timeout(CONNECTION_DEADLINE, work)
                .await
                .is_err()
            {
                tracing::debug!(%peer, "metrics connection cut at the deadline");
            }
        });
    }
}

/// Serves one connection's requests.
async fn answer<IO>(io: IO, state: Arc<ServerState>, token: Arc<Token>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request| {
        let (state, token) = (state.clone(), token.clone());
        async move { Ok::<_, Infallible>(respond(&state, &token, &request).await) }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .max_buf_size(MAX_HEAD_BYTES)
        .serve_connection(TokioIo::new(io), service)
        .await;
    if let Err(e) = served {
        tracing::debug!(cause = %e, "metrics connection ended");
    }
}

/// The answer to one request: the metrics for `GET /metrics` with the
/// token, a short explanation otherwise.
async fn respond(
    state: &Arc<ServerState>,
    token: &Token,
    request: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    if request.uri().path() != "/metrics" {
        return plain(
            StatusCode::NOT_FOUND,
            "not found: the metrics are at /metrics\n",
        );
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET reads the metrics\n",
        );
    }
    let offered = request
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    if !offered.is_some_and(|t| token.matches(t)) {
        let mut refused = plain(
            StatusCode::UNAUTHORIZED,
            "send Authorization: Bearer with the token in the server's DATA_DIR/metrics.token\n",
        );
        refused.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            hyper::header::HeaderValue::from_static("Bearer realm=\"tandem\""),
        );
        return refused;
    }
    match collect::render(state).await {
        Ok(text) => {
            let mut ok = Response::new(Full::new(Bytes::from(text)));
            ok.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            ok
        }
        Err(e) => {
            tracing::error!(cause = %e, "metrics could not be gathered");
            plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("metrics could not be gathered: {e}\n"),
            )
        }
    }
}

/// A short text answer.
fn plain(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(text.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
