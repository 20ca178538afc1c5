//! `vault query`: reads the segments (no lock needed, a writer may be running) and yields the
//! records that match a filter. Damaged frames are skipped with a warning: `verify` is the
//! command that judges integrity.

use std::ops::ControlFlow;
use std::path::Path;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::record::{Record, RecordKind};
use super::segment::{self, Tail};
use super::store::host_names;
use super::{VaultError, check_host, hosts_dir, record_id, rfc3339_ns};

/// Which records to return. Empty fields match everything; all set fields must match.
#[derive(Debug, Clone, Default)]
pub struct QueryFilter {
    pub host: Option<String>,
    /// Inclusive. On the event's `time` for data records, on the vault's receive time for
    /// the vault's own records (gap, agent_silent, ...).
    pub since: Option<SystemTime>,
    /// Exclusive.
    pub until: Option<SystemTime>,
    /// Event kinds ("exec", "unlink", ...) or vault record kinds ("data", "gap",
    /// "out_of_order", "replay", "agent_silent", "agent_resumed", "loss_report", "erasure",
    /// "recovery").
    pub kinds: Vec<String>,
    /// Glob over the event's `path`, `exe` and `paths[]`; `*` does not cross `/`, `**` does.
    pub path_glob: Option<String>,
    /// Only events carrying a `tamper` classification.
    pub tamper_only: bool,
    /// Substring of the event's argv joined by spaces.
    pub argv_contains: Option<String>,
    pub limit: Option<usize>,
}

/// A record as `query` returns it (one JSON line each in the CLI).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StoredRecord {
    /// "host/index".
    pub id: String,
    pub host: String,
    pub index: u64,
    /// "data" for agent events, else the vault's record kind ("gap", "agent_silent", ...).
    pub record_kind: String,
    /// When the vault stored it (RFC 3339, UTC).
    pub received_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    pub erased: bool,
    /// Hex of the salted commitment the chain covers.
    pub commitment: String,
    /// The event for data records, the details for the vault's own records; None once erased.
    pub payload: Option<Value>,
}

impl StoredRecord {
    pub(crate) fn from_record(host: &str, rec: &Record) -> Self {
        let meta = rec.meta_json();
        StoredRecord {
            id: record_id(host, rec.index),
            host: host.to_owned(),
            index: rec.index,
            record_kind: rec.kind.name().to_owned(),
            received_at: rfc3339_ns(rec.received_at_ns),
            boot_id: meta
                .as_ref()
                .and_then(|m| m.get("boot_id"))
                .and_then(Value::as_str)
                .map(str::to_owned),
            seq: meta
                .as_ref()
                .and_then(|m| m.get("seq"))
                .and_then(Value::as_u64),
            erased: rec.erased,
            commitment: hex::encode(rec.commitment),
            payload: rec.payload_json(),
        }
    }

    /// The agent's event, for data records whose payload is present.
    pub fn event(&self) -> Option<&Value> {
        if self.record_kind == RecordKind::Data.name() {
            self.payload.as_ref()
        } else {
            None
        }
    }
}

/// Calls `f` for every valid record of one host directory, in chain order, with its segment
/// number and offset. Damaged frames end that segment's scan with a warning.
pub(crate) fn scan_host(
    host_dir: &Path,
    mut f: impl FnMut(u32, u64, &Record) -> ControlFlow<()>,
) -> Result<(), VaultError> {
    let segs = segment::list_segments(host_dir)
        .map_err(VaultError::io(format!("listing {}", host_dir.display())))?;
    for (n, path) in segs {
        let bytes = segment::read_segment(&path)
            .map_err(VaultError::io(format!("reading {}", path.display())))?;
        let scan = match segment::scan_bytes(&bytes) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(segment = %path.display(), "skipping segment: {e}");
                continue;
            }
        };
        for (offset, rec) in &scan.records {
            if f(n, *offset, rec).is_break() {
                return Ok(());
            }
        }
        if let Tail::Corrupt { offset, reason } | Tail::BadLastFrame { offset, reason } = scan.tail
        {
            tracing::warn!(segment = %path.display(), offset, "skipping the rest of a damaged segment: {reason} (run verify)");
        }
    }
    Ok(())
}

/// Streams matching records to `f` until it breaks; hosts in name order, each in chain order.
pub fn for_each_record(
    data: &Path,
    filter: &QueryFilter,
    mut f: impl FnMut(StoredRecord) -> ControlFlow<()>,
) -> Result<(), VaultError> {
    let matcher = Matcher::new(filter)?;
    let hosts = match &filter.host {
        Some(h) => {
            check_host(h)?;
            vec![h.clone()]
        }
        None => host_names(data)?,
    };
    let mut emitted = 0usize;
    let limit = filter.limit.unwrap_or(usize::MAX);
    for host in hosts {
        let dir = hosts_dir(data).join(&host);
        if !dir.is_dir() {
            continue;
        }
        let mut stop = false;
        scan_host(&dir, |_, _, rec| {
            if emitted >= limit {
                stop = true;
                return ControlFlow::Break(());
            }
            let r = StoredRecord::from_record(&host, rec);
            if !matcher.matches(&r, rec) {
                return ControlFlow::Continue(());
            }
            emitted += 1;
            if f(r).is_break() {
                stop = true;
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        })?;
        if stop {
            break;
        }
    }
    Ok(())
}

/// All matching records, collected.
pub fn query(data: &Path, filter: &QueryFilter) -> Result<Vec<StoredRecord>, VaultError> {
    if !data.is_dir() {
        return Err(VaultError::Invalid(format!(
            "no vault directory at {}",
            data.display()
        )));
    }
    let mut out = Vec::new();
    for_each_record(data, filter, |r| {
        out.push(r);
        ControlFlow::Continue(())
    })?;
    Ok(out)
}

struct Matcher<'a> {
    filter: &'a QueryFilter,
    glob: Option<globset::GlobMatcher>,
}

impl<'a> Matcher<'a> {
    fn new(filter: &'a QueryFilter) -> Result<Self, VaultError> {
        let glob = match &filter.path_glob {
            Some(g) => Some(
                globset::GlobBuilder::new(g)
                    .literal_separator(true)
                    .build()
                    .map_err(|e| VaultError::Invalid(format!("bad path glob {g:?}: {e}")))?
                    .compile_matcher(),
            ),
            None => None,
        };
        Ok(Matcher { filter, glob })
    }

    fn matches(&self, r: &StoredRecord, rec: &Record) -> bool {
        let f = self.filter;
        let event = r.event();
        if f.since.is_some() || f.until.is_some() {
            let t = match event {
                Some(e) => e
                    .get("time")
                    .and_then(Value::as_str)
                    .and_then(|s| humantime::parse_rfc3339_weak(s).ok()),
                None => Some(
                    std::time::UNIX_EPOCH + std::time::Duration::from_nanos(rec.received_at_ns),
                ),
            };
            let Some(t) = t else { return false };
            if f.since.is_some_and(|s| t < s) || f.until.is_some_and(|u| t >= u) {
                return false;
            }
        }
        if !f.kinds.is_empty() {
            let event_kind = event.and_then(|e| e.get("kind")).and_then(Value::as_str);
            let ok = f
                .kinds
                .iter()
                .any(|k| *k == r.record_kind || Some(k.as_str()) == event_kind);
            if !ok {
                return false;
            }
        }
        if let Some(glob) = &self.glob {
            let Some(e) = event else { return false };
            let mut candidates = ["path", "exe"]
                .iter()
                .filter_map(|k| e.get(*k).and_then(Value::as_str))
                .chain(
                    e.get("paths")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str),
                );
            if !candidates.any(|p| glob.is_match(p)) {
                return false;
            }
        }
        if f.tamper_only && event.and_then(|e| e.get("tamper")).is_none() {
            return false;
        }
        if let Some(needle) = &f.argv_contains {
            let Some(argv) = event.and_then(|e| e.get("argv")).and_then(Value::as_array) else {
                return false;
            };
            let joined = argv
                .iter()
                .map(|a| a.as_str().unwrap_or_default())
                .collect::<Vec<_>>()
                .join(" ");
            if !joined.contains(needle.as_str()) {
                return false;
            }
        }
        true
    }
}
