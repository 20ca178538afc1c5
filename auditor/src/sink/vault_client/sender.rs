//! The sender thread: a tokio runtime running the delivery loop and the heartbeat.
//! One batch is in flight at a time, so the spool's cursor only moves on an acknowledgement
//! and nothing can be skipped.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use super::spool::Batch;
use super::{Mode, Shared, VaultClientError, VaultClientOptions, rejected_stub};

/// Uncompressed JSON per request, well under the vault's 16 MiB default body limit.
const BATCH_MAX_BYTES: usize = 4 << 20;
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

pub(super) fn build_client(opts: &VaultClientOptions) -> Result<reqwest::Client, VaultClientError> {
    let url_err = |reason: &str| VaultClientError::Url {
        url: opts.url.clone(),
        reason: reason.to_owned(),
    };
    let url = reqwest::Url::parse(&opts.url).map_err(|e| url_err(&e.to_string()))?;
    let builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(REQUEST_TIMEOUT)
        .user_agent(concat!("auditor/", env!("CARGO_PKG_VERSION")));
    match url.scheme() {
        "https" => {}
        "http" if opts.allow_insecure_http => {
            tracing::warn!(url = %opts.url, "sending to the vault over plain HTTP: token and events travel in clear");
            return builder
                .build()
                .map_err(|e| VaultClientError::Tls(e.to_string()));
        }
        "http" => {
            return Err(url_err(
                "plain HTTP sends the token and the events in clear: use https://, or allow it explicitly (insecure http)",
            ));
        }
        _ => return Err(url_err("the scheme must be https")),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| VaultClientError::Tls(e.to_string()))?;
    let webpki = match &opts.ca_cert {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in load_certs(ca)? {
                roots
                    .add(c)
                    .map_err(|e| VaultClientError::Tls(format!("CA {}: {e}", ca.display())))?;
            }
            Some(
                rustls::client::WebPkiServerVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider.clone(),
                )
                .build()
                .map_err(|e| VaultClientError::Tls(format!("CA {}: {e}", ca.display())))?,
            )
        }
        None => None,
    };
    let tls = match (&opts.tls_pin_sha256, webpki) {
        (Some(pin), inner) => {
            tls.dangerous()
                .with_custom_certificate_verifier(Arc::new(PinVerifier {
                    pin: parse_pin(pin)?,
                    inner,
                    provider: provider.clone(),
                }))
        }
        (None, Some(v)) => tls.with_webpki_verifier(v),
        (None, None) => {
            return Err(VaultClientError::Tls(
                "no way to trust the vault's certificate: give its SHA-256 fingerprint (pin) or a CA certificate"
                    .to_owned(),
            ));
        }
    };
    let tls = match (&opts.client_cert, &opts.client_key) {
        (Some(c), Some(k)) => {
            let key = PrivateKeyDer::from_pem_file(k)
                .map_err(|e| VaultClientError::Tls(format!("client key {}: {e}", k.display())))?;
            tls.with_client_auth_cert(load_certs(c)?, key)
                .map_err(|e| {
                    VaultClientError::Tls(format!("client certificate {}: {e}", c.display()))
                })?
        }
        (None, None) => tls.with_no_client_auth(),
        _ => {
            return Err(VaultClientError::Tls(
                "mutual TLS needs both a client certificate and its key".to_owned(),
            ));
        }
    };
    builder
        .use_preconfigured_tls(tls)
        .build()
        .map_err(|e| VaultClientError::Tls(e.to_string()))
}

fn load_certs(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, VaultClientError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| VaultClientError::Tls(format!("certificates in {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(VaultClientError::Tls(format!(
            "no certificate in {}",
            path.display()
        )));
    }
    Ok(certs)
}

fn parse_pin(pin: &str) -> Result<[u8; 32], VaultClientError> {
    let hexed: String = pin.chars().filter(|c| *c != ':').collect();
    let mut out = [0u8; 32];
    hex::decode_to_slice(hexed.trim(), &mut out).map_err(|_| {
        VaultClientError::Tls(format!(
            "certificate pin {pin:?} is not a SHA-256 fingerprint (64 hex digits, colons allowed)"
        ))
    })?;
    Ok(out)
}

/// Accepts exactly the certificate with the pinned SHA-256 (and, with a CA too, only if it
/// also chains to it). Handshake signatures are still verified, so only the holder of the
/// pinned certificate's key gets through.
#[derive(Debug)]
struct PinVerifier {
    pin: [u8; 32],
    inner: Option<Arc<rustls::client::WebPkiServerVerifier>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        if got != self.pin {
            return Err(rustls::Error::General(format!(
                "vault certificate SHA-256 {} does not match the pinned fingerprint",
                hex::encode_upper(got)
            )));
        }
        if let Some(inner) = &self.inner {
            inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The thread body.
pub(super) fn run(shared: Arc<Shared>, client: reqwest::Client, mode: watch::Receiver<Mode>) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the vault sender runtime: events stay spooled");
            return;
        }
    };
    rt.block_on(async move {
        let hb = tokio::spawn(heartbeat_loop(shared.clone(), client.clone(), mode.clone()));
        tokio::select! {
            () = deliver_loop(shared, client, mode.clone()) => {}
            () = stop_signal(mode) => {}
        }
        hb.abort();
    });
}

/// Resolves on Abort, or when a Drain deadline has passed.
async fn stop_signal(mut mode: watch::Receiver<Mode>) {
    loop {
        let m = *mode.borrow_and_update();
        match m {
            Mode::Abort => return,
            Mode::Drain(deadline) => {
                tokio::time::sleep_until(deadline.into()).await;
                return;
            }
            Mode::Run => {
                if mode.changed().await.is_err() {
                    return;
                }
            }
        }
    }
}

enum Plan {
    Idle,
    Wait(Instant),
    Send(String),
}

fn plan(shared: &Shared, draining: bool) -> Plan {
    let sp = shared.spool();
    let cur = &sp.cur;
    if cur.unacked > 0 && cur.urgent_through > cur.acked_through {
        return Plan::Send(cur.boot_id.clone());
    }
    if let Some(b) = sp.old.iter().find(|b| b.unacked > 0) {
        return Plan::Send(b.boot_id.clone());
    }
    if cur.unacked == 0 {
        return Plan::Idle;
    }
    if draining || cur.unacked >= shared.opts.batch_max_events as u64 {
        return Plan::Send(cur.boot_id.clone());
    }
    let due = cur.pending_since.unwrap_or_else(Instant::now) + shared.opts.batch_delay;
    if due <= Instant::now() {
        Plan::Send(cur.boot_id.clone())
    } else {
        Plan::Wait(due)
    }
}

async fn deliver_loop(
    shared: Arc<Shared>,
    client: reqwest::Client,
    mut mode: watch::Receiver<Mode>,
) {
    let ingest = endpoint(&shared.opts.url, "/v1/ingest");
    let mut failures: u32 = 0;
    let mut limit = shared.opts.batch_max_events;
    // A record the vault refuses alone is replaced by a stub: (boot, seq, stub json).
    let mut stub: Option<(String, u64, Vec<u8>)> = None;
    loop {
        let draining = match *mode.borrow_and_update() {
            Mode::Abort => return,
            Mode::Drain(_) => true,
            Mode::Run => false,
        };
        let boot = match plan(&shared, draining) {
            Plan::Idle if draining => return,
            Plan::Idle => {
                tokio::select! {
                    () = shared.wake.notified() => {}
                    _ = mode.changed() => {}
                }
                continue;
            }
            Plan::Wait(until) => {
                tokio::select! {
                    () = tokio::time::sleep_until(until.into()) => {}
                    () = shared.wake.notified() => {}
                    _ = mode.changed() => {}
                }
                continue;
            }
            Plan::Send(boot) => boot,
        };
        let read = shared.spool().read_batch(&boot, limit, BATCH_MAX_BYTES);
        let mut batch = match read {
            Ok((Some(b), cuts)) => {
                shared.report_cuts(&cuts);
                b
            }
            Ok((None, cuts)) => {
                shared.report_cuts(&cuts);
                continue;
            }
            Err(e) => {
                tracing::error!(error = %e, "reading the spool");
                failures += 1;
                backoff(failures, &mut mode).await;
                continue;
            }
        };
        if let Some((b, seq, json)) = &stub
            && *b == batch.boot_id
            && let Some(r) = batch.records.iter_mut().find(|r| r.0 == *seq)
        {
            r.1 = json.clone();
        }
        let started = Instant::now();
        match send_batch(&shared, &client, &ingest, &batch).await {
            Ok(reply) => {
                failures = 0;
                limit = shared.opts.batch_max_events;
                let rtt = started.elapsed();
                if let Err(e) = shared.spool().ack(&batch, started) {
                    tracing::error!(error = %e, "recording an acknowledgement in the spool (records may be resent; the vault skips duplicates)");
                }
                if stub
                    .as_ref()
                    .is_some_and(|(b, s, _)| *b == batch.boot_id && *s <= batch.last_seq())
                {
                    stub = None;
                }
                let conflicts = reply.get("conflicts").and_then(Value::as_u64).unwrap_or(0);
                if conflicts > 0 {
                    tracing::error!(boot_id = %batch.boot_id, conflicts, "the vault already held different events under some of these sequence numbers (kept as replay records): investigate");
                }
                shared.rtt.observe(rtt);
                let mut st = shared.stats();
                st.batches_acked += 1;
                st.last_rtt = Some(rtt);
                st.last_error = None;
                if let (Some(h), Some(i)) = (
                    reply.get("chain_head").and_then(Value::as_str),
                    reply.get("chain_index").and_then(Value::as_u64),
                ) {
                    st.vault_chain_head = Some((h.to_owned(), i));
                }
                tracing::debug!(boot_id = %batch.boot_id, records = batch.records.len(), through = batch.last_seq(), ?rtt, "batch acknowledged");
            }
            Err(SendError::Rejected(status, msg)) if batch.records.len() > 1 => {
                // Find the record the vault refuses: halve until it is alone.
                tracing::warn!(status, error = %msg, records = batch.records.len(), "vault refused a batch; retrying in smaller batches");
                limit = (batch.records.len() / 2).max(1);
            }
            Err(SendError::Rejected(status, msg)) => {
                let (seq, json) = &batch.records[0];
                tracing::error!(status, error = %msg, seq, boot_id = %batch.boot_id, "the vault refuses this record even alone; sending a loss record in its place");
                shared.stats().rejected += 1;
                stub = Some((
                    batch.boot_id.clone(),
                    *seq,
                    rejected_stub(*seq, json, &format!("vault answered {status}: {msg}")),
                ));
            }
            Err(e) => {
                failures += 1;
                if failures == 1 || failures.is_power_of_two() {
                    tracing::warn!(error = %error_chain(&e), failures, "sending to the vault failed; events stay spooled, retrying");
                }
                {
                    let mut st = shared.stats();
                    st.send_failures += 1;
                    st.last_error = Some(error_chain(&e));
                }
                backoff(failures, &mut mode).await;
            }
        }
    }
}

/// Capped exponential backoff with jitter (50-100 % of the step); returns early on a
/// mode change (shutdown).
async fn backoff(failures: u32, mode: &mut watch::Receiver<Mode>) {
    let step = BACKOFF_MIN
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(BACKOFF_MAX);
    let jitter = getrandom::u32().unwrap_or(u32::MAX / 2) as f64 / u32::MAX as f64;
    let wait = step.mul_f64(0.5 + 0.5 * jitter);
    tokio::select! {
        () = tokio::time::sleep(wait) => {}
        _ = mode.changed() => {}
    }
}

#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error("HTTP: {0}")]
    Http(#[from] reqwest::Error),
    #[error("vault answered {0}: {1}")]
    Status(u16, String),
    /// 400/413: this content will never be accepted.
    #[error("vault refused the batch ({0}): {1}")]
    Rejected(u16, String),
    #[error("vault acknowledged through {acked} but the batch ended at {last}")]
    ShortAck { acked: u64, last: u64 },
    #[error("{0}")]
    Encode(String),
}

fn endpoint(base: &str, path: &str) -> String {
    format!("{}{path}", base.trim_end_matches('/'))
}

/// The request body, built from the spooled JSON bytes without re-parsing them.
fn ingest_body(host: &str, batch: &Batch) -> Result<Vec<u8>, SendError> {
    let enc = |e: serde_json::Error| SendError::Encode(e.to_string());
    let mut body =
        Vec::with_capacity(batch.records.iter().map(|r| r.1.len() + 24).sum::<usize>() + 256);
    body.extend_from_slice(b"{\"host\":");
    serde_json::to_writer(&mut body, host).map_err(enc)?;
    body.extend_from_slice(b",\"boot_id\":");
    serde_json::to_writer(&mut body, &batch.boot_id).map_err(enc)?;
    body.extend_from_slice(b",\"records\":[");
    for (i, (seq, json)) in batch.records.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(format!("{{\"seq\":{seq},\"event\":").as_bytes());
        body.extend_from_slice(json);
        body.push(b'}');
    }
    body.extend_from_slice(b"]}");
    Ok(body)
}

async fn send_batch(
    shared: &Shared,
    client: &reqwest::Client,
    url: &str,
    batch: &Batch,
) -> Result<Value, SendError> {
    let body = ingest_body(&shared.opts.host, batch)?;
    let mut gz = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 4),
        flate2::Compression::fast(),
    );
    gz.write_all(&body)
        .map_err(|e| SendError::Encode(e.to_string()))?;
    let gz = gz.finish().map_err(|e| SendError::Encode(e.to_string()))?;
    let resp = client
        .post(url)
        .bearer_auth(&shared.opts.token)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(reqwest::header::CONTENT_ENCODING, "gzip")
        .body(gz)
        .send()
        .await?;
    let status = resp.status().as_u16();
    let reply: Value = resp.json().await.unwrap_or(Value::Null);
    match status {
        200 => {
            let acked = reply
                .get("acked_through")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            if acked < batch.last_seq() {
                return Err(SendError::ShortAck {
                    acked,
                    last: batch.last_seq(),
                });
            }
            Ok(reply)
        }
        400 | 413 => Err(SendError::Rejected(status, error_text(&reply))),
        _ => Err(SendError::Status(status, error_text(&reply))),
    }
}

/// An error with its sources: reqwest's own message hides the TLS or connection cause.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

fn error_text(reply: &Value) -> String {
    reply
        .get("error")
        .and_then(Value::as_str)
        .unwrap_or("no error message")
        .to_owned()
}

async fn heartbeat_loop(
    shared: Arc<Shared>,
    client: reqwest::Client,
    mut mode: watch::Receiver<Mode>,
) {
    let url = endpoint(&shared.opts.url, "/v1/heartbeat");
    let mut tick = tokio::time::interval(shared.opts.heartbeat_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            r = mode.changed() => if r.is_err() { return } else { continue },
        }
        let body = json!({
            "host": shared.opts.host,
            "boot_id": shared.opts.boot_id,
            "last_seq": shared.last_seq.load(Ordering::Relaxed),
            "loss": {
                "kernel_records": shared.kernel_losses.load(Ordering::Relaxed),
                "spool_dropped": shared.spool_dropped.load(Ordering::Relaxed),
            },
        });
        let res = client
            .post(&url)
            .bearer_auth(&shared.opts.token)
            .json(&body)
            .send()
            .await;
        match res {
            Ok(r) if r.status().is_success() => {
                if failing {
                    tracing::info!("vault heartbeat answered again");
                }
                failing = false;
            }
            Ok(r) => {
                if !failing {
                    tracing::warn!(status = r.status().as_u16(), "vault refused the heartbeat");
                }
                failing = true;
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %error_chain(&e), "vault heartbeat failed");
                }
                failing = true;
            }
        }
    }
}
