//! `auditor status`, and the status file the agent writes for it.
//!
//! The agent rewrites a small JSON file (`/run/auditor/status.json` by default) every second,
//! atomically (temporary file + rename), from [`Metrics`]. `auditor status` reads it: this
//! works with the metrics endpoint off (its default), needs no socket, and a reader can never
//! slow the agent down. The file names the agent's pid: a file left behind by an agent that
//! was killed is recognised (pid gone, or no update for [`STALE_AFTER`]) and reported as such.

use std::{
    collections::{BTreeMap, VecDeque},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use crate::metrics::{Metrics, vault_up};

/// How often the agent rewrites the file.
pub const INTERVAL: Duration = Duration::from_secs(1);
/// Window of the events-per-second figure.
pub const RATE_WINDOW: Duration = Duration::from_secs(10);
/// A file not rewritten for this long belongs to an agent that is stuck or gone.
pub const STALE_AFTER: Duration = Duration::from_secs(5);

/// `auditor status`.
#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    /// The agent's status file (its --status-file / `status_file`)
    /// [default: from the configuration file, else /run/auditor/status.json].
    #[arg(long, value_name = "FILE")]
    pub status_file: Option<PathBuf>,
    /// Configuration file to take `status_file` from [default: /etc/auditor/auditor.toml].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the status file as it is (JSON).
    #[arg(long)]
    pub json: bool,
}

/// The status file's content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub pid: u32,
    pub version: String,
    /// Seconds since the Unix epoch.
    pub started: f64,
    pub updated: f64,
    pub uptime_seconds: f64,
    pub events_total: u64,
    /// Over the last [`RATE_WINDOW`] (or since start, if shorter).
    pub events_per_second: f64,
    pub events_by_kind: BTreeMap<String, u64>,
    pub kernel_lost_records: u64,
    pub watch_paths: Vec<PathBuf>,
    /// `local vault DIR`, `remote vault URL` or `none`.
    pub evidence: String,
    pub vault: Option<VaultStatus>,
    pub metrics: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VaultStatus {
    pub url: String,
    pub reachable: bool,
    pub acked_seq: u64,
    pub last_seq: u64,
    pub rtt_ms: Option<f64>,
    pub spool_events: u64,
    pub spool_bytes: u64,
    pub spool_dropped: u64,
    pub send_failures: u64,
    pub last_error: Option<String>,
}

/// What the writer needs besides the metrics.
#[derive(Debug, Clone)]
pub struct StatusContext {
    pub watch_paths: Vec<PathBuf>,
    pub evidence: String,
    pub metrics: Option<String>,
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Builds the status from the metrics; `rate` is events/s.
pub fn snapshot(m: &Metrics, ctx: &StatusContext, rate: f64) -> Status {
    let vault = m.vault().map(|h| {
        let st = h.stats();
        VaultStatus {
            url: h.url().to_owned(),
            reachable: vault_up(&st),
            acked_seq: st.acked_through,
            last_seq: st.last_seq,
            rtt_ms: st.last_rtt.map(|d| d.as_secs_f64() * 1e3),
            spool_events: st.spooled_events,
            spool_bytes: st.spooled_bytes,
            spool_dropped: st.spool_dropped,
            send_failures: st.send_failures,
            last_error: st.last_error,
        }
    });
    Status {
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        started: m.started_unix(),
        updated: unix_now(),
        uptime_seconds: m.uptime().as_secs_f64(),
        events_total: m.events_total(),
        events_per_second: rate,
        events_by_kind: m
            .events_by_kind()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
        kernel_lost_records: m.kernel_losses.load(Ordering::Relaxed),
        watch_paths: ctx.watch_paths.clone(),
        evidence: ctx.evidence.clone(),
        vault,
        metrics: ctx.metrics.clone(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("status file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("status file {}: not a status file ({source})", path.display())]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// Writes `status` to `path` atomically (a reader sees the old or the new file, whole).
pub fn write_atomic(path: &Path, status: &Status) -> Result<(), StatusError> {
    let io = |source| StatusError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let body = serde_json::to_vec_pretty(status).map_err(|source| StatusError::Json {
        path: path.to_owned(),
        source,
    })?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, body).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// The status file writer: a thread rewriting `path` every [`INTERVAL`] until the returned
/// guard is dropped, which removes the file (a clean stop leaves no stale status).
pub struct StatusWriter {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    path: PathBuf,
}

impl StatusWriter {
    pub fn start(
        path: PathBuf,
        metrics: Arc<Metrics>,
        ctx: StatusContext,
    ) -> Result<Self, StatusError> {
        // The first write happens here, so that a path that cannot be written fails the start.
        write_atomic(&path, &snapshot(&metrics, &ctx, 0.0))?;
        let stop = Arc::new(AtomicBool::new(false));
        let (s, p) = (stop.clone(), path.clone());
        let thread = std::thread::Builder::new()
            .name("auditor-status".into())
            .spawn(move || {
                let window = (RATE_WINDOW.as_secs_f64() / INTERVAL.as_secs_f64()) as usize;
                let mut samples: VecDeque<(f64, u64)> = VecDeque::with_capacity(window + 1);
                let mut warned = false;
                while !s.load(Ordering::Relaxed) {
                    std::thread::sleep(INTERVAL);
                    let now = metrics.uptime().as_secs_f64();
                    let total = metrics.events_total();
                    samples.push_back((now, total));
                    if samples.len() > window + 1 {
                        samples.pop_front();
                    }
                    let rate = match (samples.front(), samples.back()) {
                        (Some(a), Some(b)) if b.0 > a.0 => (b.1 - a.1) as f64 / (b.0 - a.0),
                        _ => 0.0,
                    };
                    match write_atomic(&p, &snapshot(&metrics, &ctx, rate)) {
                        Ok(()) => warned = false,
                        Err(e) if !warned => {
                            tracing::warn!("{e}; `auditor status` will report the agent as stale");
                            warned = true;
                        }
                        Err(_) => {}
                    }
                }
            })
            .map_err(|source| StatusError::Io {
                path: path.clone(),
                source,
            })?;
        Ok(StatusWriter {
            stop,
            thread: Some(thread),
            path,
        })
    }
}

impl Drop for StatusWriter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// What `auditor status` found.
#[derive(Debug)]
pub enum Found {
    Running(Status),
    /// The file exists but its agent is gone or stuck.
    Stale {
        status: Status,
        why: String,
    },
    NotRunning(String),
}

fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists (and that we may signal it).
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Reads and judges a status file.
pub fn read(path: &Path) -> Result<Found, StatusError> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Found::NotRunning(format!(
                "no status file at {}",
                path.display()
            )));
        }
        Err(source) => {
            return Err(StatusError::Io {
                path: path.to_owned(),
                source,
            });
        }
    };
    let status: Status = serde_json::from_slice(&text).map_err(|source| StatusError::Json {
        path: path.to_owned(),
        source,
    })?;
    if !pid_alive(status.pid) {
        return Ok(Found::Stale {
            why: format!(
                "the agent that wrote it (pid {}) is no longer running: it was killed or crashed",
                status.pid
            ),
            status,
        });
    }
    let age = unix_now() - status.updated;
    if age > STALE_AFTER.as_secs_f64() {
        return Ok(Found::Stale {
            why: format!(
                "pid {} is running but has not updated it for {age:.0} s: the agent may be stuck",
                status.pid
            ),
            status,
        });
    }
    Ok(Found::Running(status))
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// The human summary.
pub fn render(s: &Status) -> String {
    let mut o = String::new();
    let up = humantime::format_duration(Duration::from_secs(s.uptime_seconds as u64));
    o += &format!("auditor {} running (pid {}), up {up}\n", s.version, s.pid);
    let kinds: Vec<String> = s
        .events_by_kind
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    o += &format!(
        "events:   {:.1}/s (last 10 s), {} in total ({})\n",
        s.events_per_second,
        s.events_total,
        kinds.join(", ")
    );
    o += &format!(
        "losses:   {} kernel records dropped{}\n",
        s.kernel_lost_records,
        if s.kernel_lost_records > 0 {
            " (ring buffer full: raise ring_buffer_size)"
        } else {
            ""
        }
    );
    o += &format!("watching: {:?}\n", s.watch_paths);
    o += &format!("evidence: {}\n", s.evidence);
    if let Some(v) = &s.vault {
        o += &format!(
            "vault:    {} {}, acknowledged through seq {} of {}, last round trip {}\n",
            v.url,
            if v.reachable {
                "reachable"
            } else {
                "NOT reachable"
            },
            v.acked_seq,
            v.last_seq,
            v.rtt_ms
                .map(|r| format!("{r:.1} ms"))
                .unwrap_or_else(|| "none yet".into())
        );
        o += &format!(
            "spool:    {} events ({}) waiting, {} dropped\n",
            v.spool_events,
            human_bytes(v.spool_bytes),
            v.spool_dropped
        );
        if let Some(e) = &v.last_error {
            o += &format!("          last delivery error: {e}\n");
        }
    }
    if let Some(m) = &s.metrics {
        o += &format!("metrics:  http://{m}/metrics\n");
    }
    o
}

/// Which status file: --status-file, else the configuration's `status_file`, else the default.
pub fn status_path(args: &StatusArgs) -> Result<PathBuf, crate::config::ConfigError> {
    if let Some(p) = &args.status_file {
        return Ok(p.clone());
    }
    let flags = crate::cli::WatchArgs {
        config: args.config.clone(),
        ..Default::default()
    };
    // Only the file is needed here; a vault without a token is the agent's problem.
    let file = match &flags.config {
        Some(p) => Some(crate::config::ConfigFile::read(p)?),
        None => {
            let p = Path::new(crate::config::DEFAULT_CONFIG_PATH);
            p.exists()
                .then(|| crate::config::ConfigFile::read(p))
                .transpose()?
        }
    };
    Ok(file
        .map(|f| f.status_file)
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from(crate::config::DEFAULT_STATUS_FILE)))
}

/// `auditor status`: true when an agent is running.
pub fn run(args: &StatusArgs) -> anyhow::Result<bool> {
    let path = status_path(args)?;
    let hint = "start it with `systemctl start auditor` (installed by `auditor install`) or `sudo auditor watch`";
    match read(&path)? {
        Found::Running(s) => {
            if args.json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print!("{}", render(&s));
            }
            Ok(true)
        }
        Found::Stale { status, why } => {
            println!(
                "auditor is NOT running properly: {} ({why}).\nLast known state:\n{}{hint}; `journalctl -u auditor` shows why it stopped.",
                path.display(),
                render(&status)
            );
            Ok(false)
        }
        Found::NotRunning(why) => {
            println!("auditor is not running ({why}); {hint}.");
            Ok(false)
        }
    }
}
