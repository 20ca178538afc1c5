//! The HTTP(S) front of the vault: `POST /v1/ingest`, `POST /v1/heartbeat`, `GET /v1/health`.
//!
//! Every request is fully checked (token, host, size, gzip, JSON, fields) before the store is
//! touched, so a rejected request leaves the segments byte-for-byte unchanged. A 200 to
//! ingest means every record in the request is fsynced. No endpoint changes or deletes
//! anything already stored.

use std::future::Future;
use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::store::{Vault, lock_host};
use super::token::TokenCache;
use super::{VaultError, tls};

pub const DEFAULT_SILENCE_THRESHOLD: Duration = Duration::from_secs(10);
pub const DEFAULT_MAX_BODY_BYTES: usize = 16 << 20;
const MAX_BOOT_ID: usize = 128;

#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub listen: SocketAddr,
    pub data: PathBuf,
    /// Serve plain HTTP. Only for tests and trusted networks: tokens travel in clear.
    pub insecure_http: bool,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA (mutual TLS).
    pub client_ca: Option<PathBuf>,
    /// An enrolled host silent for longer than this gets an `agent_silent` record.
    pub silence_threshold: Duration,
    /// Largest request body, checked both as sent and after gzip decompression.
    pub max_body_bytes: usize,
}

impl ServeOptions {
    pub fn new(listen: SocketAddr, data: PathBuf) -> Self {
        ServeOptions {
            listen,
            data,
            insecure_http: false,
            tls_cert: None,
            tls_key: None,
            client_ca: None,
            silence_threshold: DEFAULT_SILENCE_THRESHOLD,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }
}

/// Binds `opts.listen` and serves until `shutdown` completes.
pub async fn serve(
    opts: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), VaultError> {
    let listener = TcpListener::bind(opts.listen)
        .await
        .map_err(VaultError::io(format!("binding {}", opts.listen)))?;
    serve_on(listener, opts, shutdown).await
}

struct AppState {
    vault: Vault,
    tokens: TokenCache,
    max_body: usize,
}

/// Serves on an already bound listener (tests bind port 0). `opts.listen` is ignored.
pub async fn serve_on(
    listener: TcpListener,
    opts: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), VaultError> {
    let tls_config = if opts.insecure_http {
        tracing::warn!("serving plain HTTP (--insecure-http): tokens and events travel in clear");
        None
    } else {
        let (cert, key) = match (&opts.tls_cert, &opts.tls_key) {
            (Some(c), Some(k)) => (c.clone(), k.clone()),
            (None, None) => {
                let (c, k, generated) = tls::ensure_self_signed(&opts.data)?;
                if generated {
                    tracing::info!(cert = %c.display(), "generated a self-signed certificate");
                }
                (c, k)
            }
            _ => {
                return Err(VaultError::Tls(
                    "give both a certificate and a key, or neither (self-signed)".to_owned(),
                ));
            }
        };
        let (config, fp) = tls::server_config(&cert, &key, opts.client_ca.as_deref())?;
        if opts.tls_cert.is_none() {
            println!("vault certificate (self-signed) {}", cert.display());
            println!("vault certificate SHA-256 fingerprint: {fp}");
        }
        tracing::info!(cert = %cert.display(), fingerprint = %fp, "TLS ready");
        Some(Arc::new(config))
    };

    let data = opts.data.clone();
    let vault = tokio::task::spawn_blocking(move || Vault::open(&data))
        .await
        .map_err(|e| VaultError::Invalid(format!("opening the vault: {e}")))??;
    let state = Arc::new(AppState {
        vault,
        tokens: TokenCache::new(&opts.data),
        max_body: opts.max_body_bytes,
    });
    // Hosts with records are expected to keep talking: silence counts from now.
    for h in state.vault.all() {
        if let Ok(mut h) = lock_host(&h)
            && h.has_records()
        {
            h.last_seen = Some((std::time::Instant::now(), super::now_ns()));
        }
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let silence = tokio::spawn(silence_watch(
        state.clone(),
        opts.silence_threshold,
        stop_rx.clone(),
    ));

    let app = Router::new()
        .route("/v1/ingest", post(ingest))
        .route("/v1/heartbeat", post(heartbeat))
        .route("/v1/health", get(health))
        .layer(DefaultBodyLimit::disable())
        .with_state(state.clone());

    let addr = listener.local_addr().ok();
    tracing::info!(?addr, data = %opts.data.display(), "vault listening");
    let result = match tls_config {
        None => {
            let mut rx = stop_rx.clone();
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { stopped(&mut rx).await })
                .await
                .map_err(VaultError::io("serving HTTP"))
        }
        Some(config) => serve_tls(listener, app, config, stop_rx.clone()).await,
    };
    // The store holds the directory lock, which a restart or an erase on the same DATA
    // needs the moment this returns. Aborting the watcher does not stop a silence check
    // already on the blocking pool, and a handler whose client went away may still have
    // its blocking store call running: wait for every reference to let go.
    silence.abort();
    let _ = silence.await;
    release_store(state).await;
    result
}

/// Waits (bounded) until `state` is the last reference to the store, then drops it.
async fn release_store(state: Arc<AppState>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while Arc::strong_count(&state) > 1 {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                "a store call still runs 30 s after shutdown: the vault lock is released when it ends"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(state);
}

async fn serve_tls(
    listener: TcpListener,
    app: Router,
    config: Arc<rustls::ServerConfig>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), VaultError> {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let acceptor = acceptor.clone();
                let service = hyper_util::service::TowerToHyperService::new(app.clone());
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service);
                    if let Err(e) = watcher.watch(conn).await {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                });
            }
            () = stopped(&mut stop) => break,
        }
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(Duration::from_secs(10)) => {
            tracing::warn!("connections still open after 10 s: closing them");
        }
    }
    Ok(())
}

/// Resolves once shutdown was asked for (or the sender is gone).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not Send: drop it before anything else is awaited.
    let _ = rx.wait_for(|s| *s).await.map(|_| ());
}

/// Writes one `agent_silent` record per silence episode of an enrolled host.
async fn silence_watch(state: Arc<AppState>, threshold: Duration, mut stop: watch::Receiver<bool>) {
    let tick = (threshold / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            () = stopped(&mut stop) => return,
        }
        let st = state.clone();
        let check = tokio::task::spawn_blocking(move || {
            for h in st.vault.all() {
                let Ok(mut h) = lock_host(&h) else { continue };
                if !st.tokens.is_enrolled(&h.host).unwrap_or(false) {
                    continue;
                }
                match h.check_silence(threshold) {
                    Ok(Some(p)) => tracing::warn!(
                        host = %h.host,
                        last_seen = %p["last_seen_at"],
                        threshold_ms = %p["threshold_ms"],
                        "agent silent: no ingest or heartbeat past the threshold (agent killed?)"
                    ),
                    Ok(None) => {}
                    Err(e) => {
                        tracing::error!(host = %h.host, error = %e, "writing agent_silent failed")
                    }
                }
            }
        });
        let _ = check.await;
    }
}

async fn health() -> Response {
    (StatusCode::OK, axum::Json(json!({"status": "ok"}))).into_response()
}

/// A 4xx/5xx answer with a JSON body `{"error": "..."}`.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, axum::Json(json!({"error": self.1}))).into_response()
    }
}

impl From<VaultError> for ApiError {
    fn from(e: VaultError) -> Self {
        tracing::error!(error = %e, "store error");
        let status = match e {
            VaultError::Damaged { .. } => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, e.to_string())
    }
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

/// The host the bearer token belongs to, or 401.
fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<String, ApiError> {
    let unauthorized = |m: &str| ApiError(StatusCode::UNAUTHORIZED, m.to_owned());
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| unauthorized("missing Authorization: Bearer <token>"))?
        .to_str()
        .map_err(|_| unauthorized("Authorization header is not ASCII"))?;
    let token = value
        .strip_prefix("Bearer ")
        .ok_or_else(|| unauthorized("Authorization must be `Bearer <token>`"))?
        .trim();
    state
        .tokens
        .host_for(token)?
        .ok_or_else(|| unauthorized("unknown or revoked token"))
}

/// Reads, size-checks and (if gzip) decompresses the body, then parses it as `T`.
async fn read_json<T: serde::de::DeserializeOwned>(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<T, ApiError> {
    let limit = state.max_body;
    let too_large = |what: &str| {
        ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body {what} exceeds the {limit}-byte limit"),
        )
    };
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("");
        if !ct.trim_start().starts_with("application/json") {
            return Err(ApiError(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("Content-Type must be application/json, not {ct:?}"),
            ));
        }
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large("(Content-Length)"));
    }
    let raw: Bytes = match Limited::new(body, limit).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => return Err(too_large("as sent")),
        Err(e) => return Err(bad(format!("reading the request body failed: {e}"))),
    };
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase());
    let json: Vec<u8> = match encoding.as_deref() {
        None | Some("identity") => raw.to_vec(),
        Some("gzip") => {
            let mut out = Vec::new();
            // Read one byte past the limit to tell "exactly at the limit" from a bomb.
            let mut dec = flate2::read::GzDecoder::new(&raw[..]).take(limit as u64 + 1);
            dec.read_to_end(&mut out).map_err(|e| {
                bad(format!(
                    "body is not valid gzip (truncated or corrupt): {e}"
                ))
            })?;
            if out.len() > limit {
                return Err(too_large("after gzip decompression"));
            }
            out
        }
        Some(other) => {
            return Err(ApiError(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("Content-Encoding {other:?} is not supported; use gzip or none"),
            ));
        }
    };
    serde_json::from_slice(&json).map_err(|e| bad(format!("malformed JSON body: {e}")))
}

fn check_request(token_host: &str, host: &str, boot_id: &str) -> Result<(), ApiError> {
    if host != token_host {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            format!("token is enrolled for host {token_host:?}, not {host:?}"),
        ));
    }
    if boot_id.is_empty()
        || boot_id.len() > MAX_BOOT_ID
        || !boot_id.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(bad(format!(
            "boot_id must be 1-{MAX_BOOT_ID} printable ASCII characters"
        )));
    }
    Ok(())
}

#[derive(Deserialize)]
struct IngestRequest {
    host: String,
    boot_id: String,
    records: Vec<IngestRecord>,
}

#[derive(Deserialize)]
struct IngestRecord {
    seq: u64,
    event: Value,
}

async fn ingest(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let token_host = authenticate(&state, &headers)?;
    let req: IngestRequest = read_json(&state, &headers, body).await?;
    check_request(&token_host, &req.host, &req.boot_id)?;
    let mut records = Vec::with_capacity(req.records.len());
    for (i, r) in req.records.into_iter().enumerate() {
        if r.seq == 0 {
            return Err(bad(format!("records[{i}].seq must start at 1")));
        }
        if !r.event.is_object() {
            return Err(bad(format!("records[{i}].event must be a JSON object")));
        }
        records.push((r.seq, r.event));
    }
    let st = state.clone();
    let out = tokio::task::spawn_blocking(move || {
        let store = st.vault.host(&req.host)?;
        let mut store = lock_host(&store)?;
        store.ingest(&req.boot_id, records, true)
    })
    .await
    .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    let mut reply = json!({
        "acked_through": out.acked_through,
        "stored": out.stored,
        "duplicates": out.duplicates,
        "conflicts": out.conflicts,
        "chain_head": hex::encode(out.chain_head),
        "chain_index": out.last_index,
    });
    if !out.gaps.is_empty() {
        reply["gaps"] = json!(out.gaps);
    }
    Ok((StatusCode::OK, axum::Json(reply)).into_response())
}

#[derive(Deserialize)]
struct HeartbeatRequest {
    host: String,
    boot_id: String,
    last_seq: u64,
    #[serde(default)]
    loss: Loss,
}

#[derive(Deserialize, Default)]
struct Loss {
    #[serde(default)]
    kernel_records: u64,
    #[serde(default)]
    spool_dropped: u64,
}

async fn heartbeat(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let token_host = authenticate(&state, &headers)?;
    let req: HeartbeatRequest = read_json(&state, &headers, body).await?;
    check_request(&token_host, &req.host, &req.boot_id)?;
    let st = state.clone();
    let acked = tokio::task::spawn_blocking(move || {
        let store = st.vault.host(&req.host)?;
        let mut store = lock_host(&store)?;
        store.heartbeat(
            &req.boot_id,
            req.last_seq,
            req.loss.kernel_records,
            req.loss.spool_dropped,
        )
    })
    .await
    .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    Ok((
        StatusCode::OK,
        axum::Json(json!({"ok": true, "acked_through": acked})),
    )
        .into_response())
}
