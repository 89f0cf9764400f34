//! The Prometheus endpoint (`metrics_listen`): what a monitoring system
//! alerts on — bytes backed up and restored, sessions, how long since each
//! node backed up and replicated, pool use and uploads pending, damaged
//! chunks and the last audits — as OpenMetrics text at `GET /metrics`.
//!
//! It is served over TLS with the server's own certificate (the one
//! clients pin; a scraper trusts `tls/cert.pem` as its CA), and every
//! request must carry `Authorization: Bearer` with the token in
//! DATA_DIR/metrics.token: node names and activity are not for anyone who
//! can reach the port. Callers are bounded: a few connections at once (fewer
//! per address), 5 s for the handshake and for each request head, small
//! heads, a short deadline, and nothing is computed before the token
//! matches.

mod collect;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
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
/// one per target, so this leaves room for several scrapers and curl.
const MAX_CONNECTIONS: usize = 16;
/// Connections served at once from one IP address, so one caller holding
/// connections open cannot lock the monitoring system out.
const MAX_PER_ADDRESS: usize = 4;
/// The TLS handshake, and then each request head, must arrive within this.
const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(5);
/// Everything one connection may take, handshake and answers included.
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
    let per_address: Arc<Mutex<HashMap<IpAddr, usize>>> = Arc::default();
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
        let Some(address_slot) = AddressSlot::claim(
            &per_address,
            tandem_tls::limit_key(peer.ip(), state.config.ipv6_limit_prefix),
        ) else {
            tracing::debug!(%peer, "metrics connection refused: {MAX_PER_ADDRESS} open from there");
            continue;
        };
        let (state, token, acceptor) = (state.clone(), token.clone(), acceptor.clone());
        tokio::spawn(async move {
            let _slots = (slot, address_slot);
            let work = async move {
                let Some(acceptor) = acceptor else {
                    return answer(tcp, state, token).await;
                };
                match tokio::time::timeout(HANDSHAKE_DEADLINE, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => answer(tls, state, token).await,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, cause = %e, "metrics TLS handshake failed")
                    }
                    Err(_) => tracing::debug!(%peer, "metrics TLS handshake too slow"),
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
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HANDSHAKE_DEADLINE)
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
            "only GET (or HEAD) reads the metrics\n",
        );
    }
    let offered = request
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim());
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

/// A connection's place under [`MAX_PER_ADDRESS`], given back when dropped.
struct AddressSlot {
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl AddressSlot {
    /// A place for a connection from `ip`, or `None` when it has all its own.
    fn claim(counts: &Arc<Mutex<HashMap<IpAddr, usize>>>, ip: IpAddr) -> Option<Self> {
        let mut map = counts.lock().unwrap_or_else(|e| e.into_inner());
        let open = map.entry(ip).or_default();
        if *open >= MAX_PER_ADDRESS {
            return None;
        }
        *open += 1;
        Some(AddressSlot {
            counts: counts.clone(),
            ip,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut map = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(open) = map.get_mut(&self.ip) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                map.remove(&self.ip);
            }
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
