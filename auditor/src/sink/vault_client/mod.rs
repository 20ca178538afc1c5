//! The remote vault sink: events leave the host, and none is forgotten on the way.
//!
//! `write` (on the sink thread) redacts the event, appends it to the on-disk [`spool`] and
//! wakes the sender; it never waits for the network. The sender (its own thread, a tokio
//! runtime, reqwest over rustls) reads batches from the spool, gzips them, POSTs them to
//! `/v1/ingest`, and removes records from the spool only once the vault has answered that it
//! holds them (`acked_through`), which it does only after fsync. Failures are retried with
//! capped, jittered exponential backoff. Records of earlier agent runs found in the spool are
//! sent first, under their own boot id and sequence numbers.
//!
//! Queues and what happens when they are full:
//! - the spool (bounded by `spool_max_bytes`): the new event is dropped and counted
//!   (`spool_dropped`); the count goes out in every heartbeat, and once space is back an
//!   inline `loss` event (`source: "agent_spool"`) takes the sequence number of the last
//!   dropped event, so the vault sees the gap *and* its explanation;
//! - the wake-up signal is a single permit (`Notify`): it cannot overflow.
//!
//! docs/DELIVERY.md describes the spool format, the protocol and what survives what.

mod sender;
pub mod spool;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{Sink, SinkError};
use crate::event::{Body, Event, SCHEMA_VERSION};
use crate::redact::Redactor;
use spool::{FLAG_URGENT, Spool, SpoolError, TornCut};

pub use spool::SpoolError as VaultSpoolError;

/// Default spool directory.
pub const DEFAULT_SPOOL_DIR: &str = "/var/lib/auditor/spool";
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 1 << 30;
pub const DEFAULT_BATCH_MAX_EVENTS: usize = 500;
/// Longest an ordinary event waits for companions before its batch is sent: it bounds
/// time-to-vault at low rates (at high rates batches fill first).
pub const DEFAULT_BATCH_DELAY: Duration = Duration::from_millis(20);
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct VaultClientOptions {
    /// `https://host:port`, or `http://` when `allow_insecure_http` is set.
    pub url: String,
    pub token: String,
    pub host: String,
    /// Names this run's sequence numbering; must be new for every agent start.
    pub boot_id: String,
    pub spool_dir: PathBuf,
    pub spool_max_bytes: u64,
    pub batch_max_events: usize,
    /// How long a (non-tamper) event may wait for companions before a batch goes out.
    pub batch_delay: Duration,
    pub heartbeat_interval: Duration,
    /// SHA-256 of the vault's certificate (hex, colons optional), as `vault serve` prints it.
    pub tls_pin_sha256: Option<String>,
    /// Trust only this CA (PEM) for the vault's certificate.
    pub ca_cert: Option<PathBuf>,
    /// Mutual TLS: our certificate chain and key (PEM).
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// Allow an `http://` URL (tokens and events in clear: tests and trusted links only).
    pub allow_insecure_http: bool,
    pub redaction: Redactor,
}

impl VaultClientOptions {
    pub fn new(
        url: impl Into<String>,
        token: impl Into<String>,
        host: impl Into<String>,
        boot_id: impl Into<String>,
    ) -> Self {
        VaultClientOptions {
            url: url.into(),
            token: token.into(),
            host: host.into(),
            boot_id: boot_id.into(),
            spool_dir: PathBuf::from(DEFAULT_SPOOL_DIR),
            spool_max_bytes: DEFAULT_SPOOL_MAX_BYTES,
            batch_max_events: DEFAULT_BATCH_MAX_EVENTS,
            batch_delay: DEFAULT_BATCH_DELAY,
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            tls_pin_sha256: None,
            ca_cert: None,
            client_cert: None,
            client_key: None,
            allow_insecure_http: false,
            redaction: Redactor::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VaultClientError {
    #[error("vault URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("vault TLS: {0}")]
    Tls(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("starting the vault sender thread: {0}")]
    Thread(std::io::Error),
}

/// What the delivery path has done so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryStats {
    /// Highest seq of this run the vault acknowledged.
    pub acked_through: u64,
    /// Highest seq of this run captured (spooled or dropped).
    pub last_seq: u64,
    /// Unacknowledged events in the spool, all runs.
    pub spooled_events: u64,
    /// Size of the spool files.
    pub spooled_bytes: u64,
    /// Earlier runs with records still to deliver.
    pub old_boots_pending: usize,
    /// Events dropped because the spool was full (or could not be written).
    pub spool_dropped: u64,
    /// Torn or damaged spool regions cut (at start, or found while reading).
    pub torn_cuts: u64,
    pub batches_acked: u64,
    pub send_failures: u64,
    /// Records the vault refused (400/413) even alone, sent as `loss` stubs instead.
    pub rejected: u64,
    pub last_rtt: Option<Duration>,
    pub last_error: Option<String>,
    /// The vault's chain head after our last acknowledged batch: keep it elsewhere to prove
    /// later that the vault's chain was not truncated.
    pub vault_chain_head: Option<(String, u64)>,
}

/// State shared by the sink thread and the sender.
pub(crate) struct Shared {
    pub(crate) opts: VaultClientOptions,
    pub(crate) spool: Mutex<Spool>,
    pub(crate) wake: tokio::sync::Notify,
    pub(crate) kernel_losses: Arc<AtomicU64>,
    pub(crate) spool_dropped: AtomicU64,
    pub(crate) last_seq: AtomicU64,
    pub(crate) torn_cuts: AtomicU64,
    pub(crate) stats: Mutex<DeliveryStats>,
    /// Round trip of every acknowledged batch (metrics).
    pub(crate) rtt: crate::metrics::Histogram,
}

impl Shared {
    pub(crate) fn spool(&self) -> MutexGuard<'_, Spool> {
        // A panic while holding the lock leaves the spool's bookkeeping as it was at the
        // last complete call; carry on rather than lose the delivery path.
        self.spool.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn stats(&self) -> MutexGuard<'_, DeliveryStats> {
        self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn report_cuts(&self, cuts: &[TornCut]) {
        for c in cuts {
            tracing::warn!(boot_id = %c.boot_id, segment = %c.segment.display(), offset = c.offset, bytes = c.bytes, reason = %c.reason, "spool region cut; not sent");
        }
        self.torn_cuts
            .fetch_add(cuts.len() as u64, Ordering::Relaxed);
    }
}

fn stats_of(shared: &Shared) -> DeliveryStats {
    let mut st = shared.stats().clone();
    {
        let sp = shared.spool();
        st.acked_through = sp.cur.acked_through;
        st.spooled_events = sp.unacked_events();
        st.spooled_bytes = sp.total_bytes;
        st.old_boots_pending = sp.old.len();
    }
    st.last_seq = shared.last_seq.load(Ordering::Relaxed);
    st.spool_dropped = shared.spool_dropped.load(Ordering::Relaxed);
    st.torn_cuts = shared.torn_cuts.load(Ordering::Relaxed);
    st
}

/// Read-only view of a running [`VaultSink`]'s delivery statistics.
#[derive(Clone)]
pub struct StatsHandle(Arc<Shared>);

impl StatsHandle {
    pub fn stats(&self) -> DeliveryStats {
        stats_of(&self.0)
    }

    /// Round trips of acknowledged batches so far.
    pub fn rtt(&self) -> crate::metrics::HistogramSnapshot {
        self.0.rtt.snapshot()
    }

    pub fn url(&self) -> &str {
        &self.0.opts.url
    }
}

/// Events dropped in a row because the spool was full.
#[derive(Debug)]
struct DropRun {
    first_seq: u64,
    last_seq: u64,
    records: u64,
    bytes: u64,
    since: String,
    until: String,
    boot_ns: u64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Mode {
    Run,
    /// Send everything, ignoring the batching delay, until the spool is empty or the
    /// deadline passes.
    Drain(Instant),
    Abort,
}

pub struct VaultSink {
    shared: Arc<Shared>,
    mode: tokio::sync::watch::Sender<Mode>,
    thread: Option<JoinHandle<()>>,
    drop_run: Option<DropRun>,
    /// Events that need no redaction are written straight from the struct, keys sorted
    /// (the bytes `serde_json::to_vec` of the event as a `Value` would give, minus the
    /// tree built on the way).
    encoder: crate::vault::canonical::Encoder,
}

impl VaultSink {
    /// Opens the spool (taking its lock, cutting torn frames, finding earlier runs' records)
    /// and starts the sender thread. `kernel_losses` is the running count of records the
    /// kernel dropped, reported in heartbeats.
    pub fn start(
        opts: VaultClientOptions,
        kernel_losses: Arc<AtomicU64>,
    ) -> Result<Self, VaultClientError> {
        if opts.batch_max_events == 0 {
            return Err(VaultClientError::Invalid(
                "batch_max_events must be at least 1".to_owned(),
            ));
        }
        if opts.heartbeat_interval.is_zero() {
            return Err(VaultClientError::Invalid(
                "heartbeat_interval must be above zero".to_owned(),
            ));
        }
        let client = sender::build_client(&opts)?;
        let (mut spool, cuts) = Spool::open(&opts.spool_dir, &opts.boot_id, opts.spool_max_bytes)?;
        // A torn tail of an earlier run is the record being written when it died: put a
        // `loss` event in its place, in that run's numbering, so the vault learns of it.
        for c in cuts.iter().filter(|c| c.at_tail) {
            let Some(b) = spool.old.iter().find(|b| b.boot_id == c.boot_id) else {
                continue;
            };
            if b.acked_through > c.last_good_seq {
                continue;
            }
            let seq = c.last_good_seq + 1;
            let now = crate::vault::rfc3339_ns(crate::vault::now_ns());
            let ev = json!({
                "schema_version": SCHEMA_VERSION, "seq": seq, "time": now,
                "boot_ns": crate::clock::boot_now_ns(), "kind": "loss",
                "source": "agent_spool_torn", "records": 1, "bytes": c.bytes,
                "since": now, "until": now, "total_records": 1, "per_cpu": [],
                "detail": format!("a torn or damaged spool frame was cut when the agent restarted ({}); the record with this seq, and any after it in this run, were lost", c.reason),
            });
            let bytes =
                serde_json::to_vec(&ev).map_err(|e| VaultClientError::Invalid(e.to_string()))?;
            let boot_id = c.boot_id.clone();
            if let Err(e) = spool.append_to(Some(&boot_id), seq, 0, &bytes) {
                tracing::error!(boot_id = %boot_id, error = %e, "could not spool the report of a torn spool frame");
            }
        }
        let _ = spool.sync();
        let shared = Arc::new(Shared {
            opts: opts.clone(),
            spool: Mutex::new(spool),
            wake: tokio::sync::Notify::new(),
            kernel_losses,
            spool_dropped: AtomicU64::new(0),
            last_seq: AtomicU64::new(0),
            torn_cuts: AtomicU64::new(0),
            stats: Mutex::new(DeliveryStats::default()),
            rtt: crate::metrics::Histogram::default(),
        });
        shared.report_cuts(&cuts);
        let (mode_tx, mode_rx) = tokio::sync::watch::channel(Mode::Run);
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("auditor-vault-sender".into())
            .spawn(move || sender::run(s, client, mode_rx))
            .map_err(VaultClientError::Thread)?;
        Ok(VaultSink {
            shared,
            mode: mode_tx,
            thread: Some(thread),
            drop_run: None,
            encoder: crate::vault::canonical::Encoder::default(),
        })
    }

    pub fn stats(&self) -> DeliveryStats {
        stats_of(&self.shared)
    }

    /// A handle that reads the statistics from elsewhere (metrics, status file) while the
    /// sink itself lives on the sink thread.
    pub fn stats_handle(&self) -> StatsHandle {
        StatsHandle(self.shared.clone())
    }

    /// Syncs the spool, then tries to deliver everything spooled until `deadline` has
    /// passed; what is not delivered stays in the spool for the next start. Returns the
    /// final statistics (`spooled_events == 0` means everything arrived).
    pub fn shutdown(mut self, deadline: Duration) -> DeliveryStats {
        if let Some(run) = self.drop_run.take() {
            self.spool_drop_run(run);
        }
        if let Err(e) = self.shared.spool().sync() {
            tracing::error!(error = %e, "syncing the spool at shutdown");
        }
        let _ = self.mode.send(Mode::Drain(Instant::now() + deadline));
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let st = self.stats();
        if st.spooled_events > 0 {
            tracing::warn!(
                unacked = st.spooled_events,
                spool = %self.shared.opts.spool_dir.display(),
                "not everything reached the vault before shutdown; it stays spooled and is sent at the next start"
            );
        }
        st
    }

    /// Spools the `loss` event that stands for a run of dropped events, at the seq of the
    /// last one. Returns false when it does not fit (yet).
    fn spool_drop_run(&mut self, run: DropRun) -> bool {
        let ev = json!({
            "schema_version": SCHEMA_VERSION, "seq": run.last_seq, "time": run.until,
            "boot_ns": run.boot_ns, "kind": "loss", "source": "agent_spool",
            "records": run.records, "bytes": run.bytes, "since": run.since, "until": run.until,
            "total_records": self.shared.spool_dropped.load(Ordering::Relaxed), "per_cpu": [],
            "first_seq": run.first_seq, "last_seq": run.last_seq,
            "detail": "the agent's spool was full (the vault unreachable for too long): these records were dropped before they could be sent",
        });
        let Ok(bytes) = serde_json::to_vec(&ev) else {
            return false;
        };
        let mut sp = self.shared.spool();
        if !sp.make_room(bytes.len()) {
            drop(sp);
            self.drop_run = Some(run);
            return false;
        }
        match sp.append(run.last_seq, FLAG_URGENT, &bytes) {
            Ok(()) => {
                tracing::warn!(
                    first = run.first_seq,
                    last = run.last_seq,
                    records = run.records,
                    "spool had been full; loss event spooled"
                );
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "spooling the loss event of a full spool");
                drop(sp);
                self.drop_run = Some(run);
                false
            }
        }
    }

    fn count_drop(&mut self, seq: u64, time: &str, boot_ns: u64, bytes: u64, why: &SpoolError) {
        let total = self.shared.spool_dropped.fetch_add(1, Ordering::Relaxed) + 1;
        match &mut self.drop_run {
            Some(run) => {
                run.last_seq = seq;
                run.records += 1;
                run.bytes += bytes;
                run.until = time.to_owned();
                run.boot_ns = boot_ns;
            }
            None => {
                tracing::error!(seq, error = %why, total, "event dropped: it could not be spooled (counted, reported to the vault)");
                self.drop_run = Some(DropRun {
                    first_seq: seq,
                    last_seq: seq,
                    records: 1,
                    bytes,
                    since: time.to_owned(),
                    until: time.to_owned(),
                    boot_ns,
                });
            }
        }
    }
}

impl VaultSink {
    /// [`Sink::write`] for an event already in JSON form (it must carry `seq`, and should
    /// carry `time` and `boot_ns`): redacted, spooled, and sent at once when it has a
    /// non-null `tamper` classification.
    pub fn write_value(&mut self, mut value: Value) -> Result<(), SinkError> {
        let Some(seq) = value.get("seq").and_then(Value::as_u64) else {
            return Err(SinkError::Io {
                target: format!("vault spool {}", self.shared.opts.spool_dir.display()),
                source: std::io::Error::other("event without a numeric seq"),
            });
        };
        let time = value
            .get("time")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let boot_ns = value.get("boot_ns").and_then(Value::as_u64).unwrap_or(0);
        self.shared.opts.redaction.redact_event(&mut value);
        let urgent = value.get("tamper").is_some_and(|t| !t.is_null());
        let bytes = serde_json::to_vec(&value)?;
        self.spool_event(seq, &time, boot_ns, urgent, bytes)
    }

    /// Appends one serialized event to the spool and wakes the sender.
    fn spool_event(
        &mut self,
        seq: u64,
        time: &str,
        boot_ns: u64,
        urgent: bool,
        bytes: Vec<u8>,
    ) -> Result<(), SinkError> {
        self.shared.last_seq.fetch_max(seq, Ordering::Relaxed);
        if let Some(run) = self.drop_run.take() {
            // Space may be back: the explanation of the gap goes first.
            self.spool_drop_run(run);
        }
        let res = self
            .shared
            .spool()
            .append(seq, if urgent { FLAG_URGENT } else { 0 }, &bytes);
        match res {
            Ok(()) => {}
            Err(e @ SpoolError::OutOfOrder { .. }) => {
                return Err(SinkError::Io {
                    target: format!("vault spool {}", self.shared.opts.spool_dir.display()),
                    source: std::io::Error::other(e.to_string()),
                });
            }
            // Full, too large, or an I/O error (disk full): dropped and counted, never
            // silent; the sink thread carries on for the other sinks.
            Err(e) => self.count_drop(seq, time, boot_ns, bytes.len() as u64, &e),
        }
        self.shared.wake.notify_one();
        Ok(())
    }
}

impl Sink for VaultSink {
    fn write(&mut self, ev: &Event) -> Result<(), SinkError> {
        // Redaction rewrites an exec's argv and filename in the JSON tree; every other
        // event (and every exec when redaction is off) goes straight to bytes.
        if matches!(ev.body, Body::Exec(_)) && self.shared.opts.redaction.is_enabled() {
            return self.write_value(serde_json::to_value(ev)?);
        }
        let bytes = self.encoder.encode(ev)?.to_vec();
        let urgent = ev.body.tamper().is_some();
        self.spool_event(ev.seq, &ev.time, ev.boot_ns, urgent, bytes)
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        if let Some(run) = self.drop_run.take()
            && self.spool_drop_run(run)
        {
            self.shared.wake.notify_one();
        }
        self.shared.spool().sync().map_err(|e| SinkError::Io {
            target: format!("vault spool {}", self.shared.opts.spool_dir.display()),
            source: std::io::Error::other(e.to_string()),
        })
    }

    /// Gives the sender a few seconds to deliver what is spooled; the rest stays in the
    /// spool for the next start.
    fn close(self: Box<Self>) {
        let stats = (*self).shutdown(SHUTDOWN_DEADLINE);
        if stats.spooled_events > 0 {
            tracing::warn!(
                spooled = stats.spooled_events,
                "vault not reached before shutdown; events stay spooled and are sent on the next start"
            );
        }
    }
}

/// How long a graceful stop waits for the vault to acknowledge what is spooled.
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(5);

impl Drop for VaultSink {
    /// Without `shutdown`: stop at once (what is spooled stays spooled).
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = self.mode.send(Mode::Abort);
            self.shared.wake.notify_one();
            let _ = t.join();
        }
    }
}

/// The stub sent in place of a record the vault refuses even on its own (400/413).
pub(crate) fn rejected_stub(seq: u64, original: &[u8], error: &str) -> Vec<u8> {
    let orig: Option<Value> = serde_json::from_slice(original).ok();
    let kind = orig
        .as_ref()
        .and_then(|v| v.get("kind"))
        .cloned()
        .unwrap_or(Value::Null);
    let time = orig
        .as_ref()
        .and_then(|v| v.get("time"))
        .cloned()
        .unwrap_or(Value::Null);
    let ev = json!({
        "schema_version": SCHEMA_VERSION, "seq": seq, "time": time, "kind": "loss",
        "source": "agent_vault_rejected", "records": 1, "bytes": original.len(),
        "since": time, "until": time, "total_records": 1, "per_cpu": [],
        "original_kind": kind, "detail": error,
    });
    serde_json::to_vec(&ev).unwrap_or_default()
}
