//! The agent's own figures: events by kind, kernel losses, spool and vault delivery, uptime.
//!
//! One [`Metrics`] (atomics, shared through an `Arc`) is fed by [`MetricsSink`] (one more
//! sink in the list, so the capture path needs no change), by the kernel loss counter that
//! `watch` already maintains, and by the vault client's [`StatsHandle`]. It is read by the
//! Prometheus endpoint ([`serve`], off by default, loopback only unless allowed) and by the
//! status file writer (`crate::status`). The text format is written directly: it is a few
//! lines, and a dependency would not make it more correct.
//!
//! docs/OPERATIONS.md lists every metric.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use crate::{
    event::Event,
    sink::{Sink, SinkError, vault_client::StatsHandle},
};

/// Upper bounds (seconds) of the vault round-trip histogram buckets.
pub const RTT_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// A fixed-bucket histogram of durations, lock-free.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Non-cumulative counts per bucket of [`RTT_BUCKETS`], plus one for +Inf.
    buckets: [AtomicU64; RTT_BUCKETS.len() + 1],
    count: AtomicU64,
    sum_ns: AtomicU64,
}

/// A copy of a [`Histogram`] at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// Cumulative counts, one per [`RTT_BUCKETS`] bound, then +Inf (= count).
    pub cumulative: Vec<u64>,
    pub count: u64,
    pub sum_ns: u64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = RTT_BUCKETS
            .iter()
            .position(|&b| s <= b)
            .unwrap_or(RTT_BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(
            u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut acc = 0;
        let cumulative = self
            .buckets
            .iter()
            .map(|b| {
                acc += b.load(Ordering::Relaxed);
                acc
            })
            .collect();
        HistogramSnapshot {
            cumulative,
            count: self.count.load(Ordering::Relaxed),
            sum_ns: self.sum_ns.load(Ordering::Relaxed),
        }
    }
}

/// Everything the endpoint and the status file report.
pub struct Metrics {
    started: Instant,
    started_unix: f64,
    events: Mutex<BTreeMap<&'static str, u64>>,
    events_total: AtomicU64,
    /// Records the kernel dropped (the counter `watch` keeps for the vault heartbeats).
    pub kernel_losses: Arc<AtomicU64>,
    vault: Mutex<Option<StatsHandle>>,
}

impl Metrics {
    pub fn new(kernel_losses: Arc<AtomicU64>) -> Arc<Self> {
        Arc::new(Metrics {
            started: Instant::now(),
            started_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
            events: Mutex::new(BTreeMap::new()),
            events_total: AtomicU64::new(0),
            kernel_losses,
            vault: Mutex::new(None),
        })
    }

    /// The remote vault client's statistics, once it runs.
    pub fn set_vault(&self, h: StatsHandle) {
        *self.vault.lock().unwrap_or_else(|e| e.into_inner()) = Some(h);
    }

    pub fn vault(&self) -> Option<StatsHandle> {
        self.vault.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Adds events counted by kind (one lock for all of them).
    pub fn add(&self, counts: &[(&'static str, u64)]) {
        let mut map = self.events.lock().unwrap_or_else(|e| e.into_inner());
        let mut total = 0;
        for &(kind, n) in counts {
            *map.entry(kind).or_insert(0) += n;
            total += n;
        }
        drop(map);
        self.events_total.fetch_add(total, Ordering::Relaxed);
    }

    pub fn events_total(&self) -> u64 {
        self.events_total.load(Ordering::Relaxed)
    }

    pub fn events_by_kind(&self) -> BTreeMap<&'static str, u64> {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn started_unix(&self) -> f64 {
        self.started_unix
    }

    /// The Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut o = String::with_capacity(2048);
        let family = |o: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        family(
            &mut o,
            "auditor_build_info",
            "gauge",
            "Always 1; the agent's version.",
        );
        let _ = writeln!(
            o,
            "auditor_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        family(
            &mut o,
            "auditor_start_time_seconds",
            "gauge",
            "When the agent started, seconds since the Unix epoch.",
        );
        let _ = writeln!(o, "auditor_start_time_seconds {:.3}", self.started_unix);
        family(
            &mut o,
            "auditor_uptime_seconds",
            "gauge",
            "Seconds since the agent started.",
        );
        let _ = writeln!(
            o,
            "auditor_uptime_seconds {:.3}",
            self.uptime().as_secs_f64()
        );
        family(
            &mut o,
            "auditor_events_total",
            "counter",
            "Events handed to the sinks, by kind (exec, delete, rename, truncate, connect, loss, ...).",
        );
        for (kind, n) in self.events_by_kind() {
            let _ = writeln!(o, "auditor_events_total{{kind=\"{kind}\"}} {n}");
        }
        family(
            &mut o,
            "auditor_kernel_lost_records_total",
            "counter",
            "Records the kernel dropped because the ring buffer was full.",
        );
        let _ = writeln!(
            o,
            "auditor_kernel_lost_records_total {}",
            self.kernel_losses.load(Ordering::Relaxed)
        );
        let Some(v) = self.vault() else {
            return o;
        };
        let st = v.stats();
        let gauges: [(&str, &str, &str, u64); 8] = [
            (
                "auditor_spool_events",
                "gauge",
                "Events in the spool not yet acknowledged by the vault (all runs).",
                st.spooled_events,
            ),
            (
                "auditor_spool_bytes",
                "gauge",
                "Size of the spool files.",
                st.spooled_bytes,
            ),
            (
                "auditor_spool_dropped_total",
                "counter",
                "Events dropped because the spool was full or could not be written.",
                st.spool_dropped,
            ),
            (
                "auditor_vault_acked_seq",
                "gauge",
                "Highest sequence number of this run the vault acknowledged.",
                st.acked_through,
            ),
            (
                "auditor_vault_last_seq",
                "gauge",
                "Highest sequence number of this run captured.",
                st.last_seq,
            ),
            (
                "auditor_vault_batches_acked_total",
                "counter",
                "Batches the vault acknowledged.",
                st.batches_acked,
            ),
            (
                "auditor_vault_send_failures_total",
                "counter",
                "Failed deliveries (connection, TLS, timeout, HTTP error), each retried.",
                st.send_failures,
            ),
            (
                "auditor_vault_rejected_total",
                "counter",
                "Records the vault refused even alone, sent as loss stubs.",
                st.rejected,
            ),
        ];
        for (name, kind, help, value) in gauges {
            family(&mut o, name, kind, help);
            let _ = writeln!(o, "{name} {value}");
        }
        family(
            &mut o,
            "auditor_vault_up",
            "gauge",
            "1 when the last exchange with the vault succeeded.",
        );
        let _ = writeln!(o, "auditor_vault_up {}", u8::from(vault_up(&st)));
        let h = v.rtt();
        family(
            &mut o,
            "auditor_vault_rtt_seconds",
            "histogram",
            "Round trip of an acknowledged batch: request sent to acknowledgement received.",
        );
        for (bound, n) in RTT_BUCKETS.iter().zip(&h.cumulative) {
            let _ = writeln!(o, "auditor_vault_rtt_seconds_bucket{{le=\"{bound}\"}} {n}");
        }
        let _ = writeln!(
            o,
            "auditor_vault_rtt_seconds_bucket{{le=\"+Inf\"}} {}\nauditor_vault_rtt_seconds_sum {:.6}\nauditor_vault_rtt_seconds_count {}",
            h.count,
            h.sum_ns as f64 / 1e9,
            h.count
        );
        o
    }
}

/// The vault answered the last exchange (an acknowledged batch or a heartbeat).
pub fn vault_up(st: &crate::sink::vault_client::DeliveryStats) -> bool {
    st.last_error.is_none() && (st.batches_acked > 0 || st.last_rtt.is_some())
}

/// Counts events by kind; writes nothing anywhere.
/// Counts events by kind for [`Metrics`]. Counts gather here and reach the shared map
/// (one lock) every [`PUBLISH_EVERY`] events and whenever the sink queue runs empty:
/// a lock and a map lookup per event were a visible cost at high rates.
pub struct MetricsSink {
    metrics: Arc<Metrics>,
    /// Kinds counted since the last publish (an event stream has a handful).
    pending: Vec<(&'static str, u64)>,
    unpublished: u64,
}

/// Most events counted before they are published.
const PUBLISH_EVERY: u64 = 256;

impl MetricsSink {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        MetricsSink {
            metrics,
            pending: Vec::new(),
            unpublished: 0,
        }
    }

    fn publish(&mut self) {
        if self.unpublished == 0 {
            return;
        }
        self.metrics.add(&self.pending);
        self.pending.clear();
        self.unpublished = 0;
    }
}

impl Sink for MetricsSink {
    fn write(&mut self, ev: &Event) -> Result<(), SinkError> {
        let kind = ev.body.kind();
        match self.pending.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, n)) => *n += 1,
            None => self.pending.push((kind, 1)),
        }
        self.unpublished += 1;
        if self.unpublished >= PUBLISH_EVERY {
            self.publish();
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.publish();
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot listen on {addr} for metrics: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("starting the metrics thread: {0}")]
    Thread(std::io::Error),
}

/// Binds `addr` now (so that a taken port fails the start, not later) and serves
/// `GET /metrics` on its own thread until the process exits.
pub fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> Result<SocketAddr, MetricsError> {
    let bind = |source| MetricsError::Bind { addr, source };
    let listener = std::net::TcpListener::bind(addr).map_err(bind)?;
    listener.set_nonblocking(true).map_err(bind)?;
    let local = listener.local_addr().map_err(bind)?;
    std::thread::Builder::new()
        .name("auditor-metrics".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!("metrics endpoint not started: runtime: {e}");
                    return;
                }
            };
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!("metrics endpoint not started: {e}");
                        return;
                    }
                };
                if let Err(e) = axum::serve(listener, router(metrics)).await {
                    tracing::error!("metrics endpoint stopped: {e}");
                }
            });
        })
        .map_err(MetricsError::Thread)?;
    tracing::info!("metrics on http://{local}/metrics");
    Ok(local)
}

/// `GET /metrics`, text format 0.0.4.
pub fn router(metrics: Arc<Metrics>) -> axum::Router {
    use axum::{http::header, routing::get};
    axum::Router::new().route(
        "/metrics",
        get(move || {
            let m = metrics.clone();
            async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    m.render(),
                )
            }
        }),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(7));
        h.observe(Duration::from_secs(60));
        let s = h.snapshot();
        assert_eq!(s.count, 3);
        assert_eq!(s.cumulative[0], 1); // <= 1 ms
        assert_eq!(s.cumulative[3], 2); // <= 10 ms
        assert_eq!(s.cumulative[RTT_BUCKETS.len() - 1], 2); // <= 10 s
        assert_eq!(s.cumulative[RTT_BUCKETS.len()], 3); // +Inf
    }

    #[test]
    fn the_sink_publishes_every_256_events_and_on_flush() {
        let m = Metrics::new(Arc::new(AtomicU64::new(0)));
        let mut sink = MetricsSink::new(m.clone());
        let ev = |body| crate::event::Event {
            schema_version: crate::event::SCHEMA_VERSION,
            seq: 1,
            time: String::new(),
            boot_ns: 0,
            body,
        };
        let loss = ev(crate::event::Body::Delete(Box::default()));
        let connect = ev(crate::event::Body::Connect(Box::default()));
        for i in 0..300 {
            let e = if i % 3 == 0 { &loss } else { &connect };
            assert!(sink.write(e).is_ok());
        }
        assert_eq!(m.events_total(), 256, "published at 256, not yet the rest");
        assert!(sink.flush().is_ok());
        assert_eq!(m.events_total(), 300);
        let by_kind = m.events_by_kind();
        assert_eq!(by_kind.get("delete"), Some(&100));
        assert_eq!(by_kind.get("connect"), Some(&200));
        assert!(sink.flush().is_ok(), "nothing pending: a no-op");
        assert_eq!(m.events_total(), 300);
    }

    #[test]
    fn renders_counts_by_kind() {
        let m = Metrics::new(Arc::new(AtomicU64::new(7)));
        m.add(&[("exec", 2), ("delete", 1)]);
        let text = m.render();
        assert!(
            text.contains("auditor_events_total{kind=\"exec\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("auditor_events_total{kind=\"delete\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("auditor_kernel_lost_records_total 7\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE auditor_uptime_seconds gauge\n"),
            "{text}"
        );
        assert!(
            !text.contains("auditor_spool"),
            "no vault client, no spool figures"
        );
    }
}
