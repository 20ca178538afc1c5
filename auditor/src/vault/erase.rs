//! `vault erase`: removes the payload (and its salt) of chosen records, keeps their commitment
//! and chain value, and appends an `erasure` record saying who, why and which records.
//!
//! Order of operations, each step durable before the next:
//! 1. take the vault's writer lock (a running server holds it: erase needs it stopped);
//! 2. append the `erasure` record (the intent is in the chain before any byte changes);
//! 3. per affected segment: write `seg-N.avs.erase-tmp` with the erased frames (same length,
//!    zeros where salt and payload were), fsync; overwrite those frames in the original
//!    file in place, so the blocks that held the payload are rewritten too, fsync; rename the
//!    temp file over the original, fsync the directory.
//!
//! A crash in step 3 leaves either a temp file that is incomplete (removed on the next open)
//! or complete (renamed into place on the next open): see `segment::recover_erase_tmps`.
//! The erasure record does not contain the matched value, only the field name: otherwise the
//! erased data would live on in it.

use std::collections::BTreeMap;
use std::io::Write;
use std::ops::ControlFlow;
use std::os::unix::fs::FileExt;
use std::path::Path;

use serde::Serialize;
use serde_json::{Value, json};

use super::query::scan_host;
use super::record::{Record, RecordKind};
use super::segment::{self, ERASE_TMP_SUFFIX};
use super::store::{HostStore, Pending, host_names, lock_vault};
use super::{VaultError, hosts_dir, now_ns, parse_record_id, record_id, rfc3339_ns};

/// Which records to erase.
#[derive(Debug, Clone)]
pub enum EraseSelector {
    /// One record by id, "host/index" (as `query` prints it).
    Record(String),
    /// Every data record whose event has `field` (dotted path, e.g. `tamper.kind`) equal to
    /// `value`; for arrays (argv, paths), any element equal to `value`. Replay records are
    /// matched on the event they carry.
    Match { field: String, value: String },
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct EraseReport {
    /// Ids of the records whose payload was erased now.
    pub erased: Vec<String>,
    /// Ids selected that were erased before.
    pub already_erased: Vec<String>,
    /// Ids of the `erasure` records appended (one per host touched).
    pub erasure_records: Vec<String>,
}

pub fn erase(
    data: &Path,
    selector: EraseSelector,
    reason: &str,
    who: &str,
) -> Result<EraseReport, VaultError> {
    if reason.trim().is_empty() {
        return Err(VaultError::Invalid(
            "an erasure needs a reason (it is kept in the chain)".to_owned(),
        ));
    }
    if !data.is_dir() {
        return Err(VaultError::Invalid(format!(
            "no vault directory at {}",
            data.display()
        )));
    }
    let _lock = lock_vault(data)?;
    let (hosts, wanted) = match &selector {
        EraseSelector::Record(id) => {
            let (h, i) = parse_record_id(id)?;
            (vec![h], Some(i))
        }
        EraseSelector::Match { .. } => (host_names(data)?, None),
    };
    let mut report = EraseReport::default();
    for host in hosts {
        let dir = hosts_dir(data).join(&host);
        if !dir.is_dir() {
            return Err(VaultError::Invalid(format!("host {host:?} has no records")));
        }
        // Opening repairs a torn tail and finishes an interrupted erase first.
        let mut store = HostStore::open(data, &host)?;
        if let Some(detail) = &store.damaged {
            return Err(VaultError::Damaged {
                host,
                detail: detail.clone(),
            });
        }
        let mut targets: Vec<(u32, u64, u64, [u8; 32])> = Vec::new();
        let mut found = false;
        let mut refused: Option<String> = None;
        scan_host(&dir, |seg, offset, rec| {
            let selected = match (&selector, wanted) {
                (EraseSelector::Record(_), Some(i)) => rec.index == i,
                (EraseSelector::Match { field, value }, _) => {
                    !rec.erased && event_of(rec).is_some_and(|e| field_matches(&e, field, value))
                }
                _ => false,
            };
            if !selected {
                return ControlFlow::Continue(());
            }
            found = true;
            if !rec.kind.erasable() {
                refused = Some(format!(
                    "record {} is a {} record written by the vault; only data and replay records carry agent payloads",
                    record_id(&host, rec.index),
                    rec.kind.name()
                ));
                return ControlFlow::Break(());
            }
            if rec.erased {
                report.already_erased.push(record_id(&host, rec.index));
            } else {
                targets.push((seg, offset, rec.index, rec.commitment));
            }
            ControlFlow::Continue(())
        })?;
        if let Some(why) = refused {
            return Err(VaultError::Invalid(why));
        }
        if wanted.is_some() && !found {
            return Err(VaultError::Invalid(format!(
                "record {host}/{} not found",
                wanted.unwrap_or_default()
            )));
        }
        if targets.is_empty() {
            continue;
        }
        let ids: Vec<String> = targets.iter().map(|t| record_id(&host, t.2)).collect();
        let selector_json = match &selector {
            EraseSelector::Record(_) => json!({"type": "record"}),
            EraseSelector::Match { field, .. } => json!({"type": "match", "field": field}),
        };
        let payload = json!({
            "host": host,
            "who": who,
            "reason": reason,
            "selector": selector_json,
            "records": ids,
            "commitments": targets.iter().map(|t| hex::encode(t.3)).collect::<Vec<_>>(),
            "erased_at": rfc3339_ns(now_ns()),
        });
        let appended = store.append(
            vec![Pending::new(RecordKind::Erasure, &json!({}), &payload)],
            true,
        )?;
        report
            .erasure_records
            .extend(appended.iter().map(|(i, _)| record_id(&host, *i)));
        // The store's append handle must not outlive the segment being replaced.
        drop(store);
        let mut by_segment: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
        for (seg, offset, _, _) in &targets {
            by_segment.entry(*seg).or_default().push(*offset);
        }
        for (seg, offsets) in by_segment {
            scrub_segment(&dir, seg, &offsets)?;
        }
        tracing::info!(host, records = ids.len(), who, reason, "payloads erased");
        report.erased.extend(ids);
    }
    if report.erased.is_empty() && report.already_erased.is_empty() {
        return Err(VaultError::Invalid("no record matched".to_owned()));
    }
    Ok(report)
}

/// The agent event a record carries, if any.
fn event_of(rec: &Record) -> Option<Value> {
    let p = rec.payload_json()?;
    match rec.kind {
        RecordKind::Data => Some(p),
        RecordKind::Replay => p.get("offered_event").cloned(),
        _ => None,
    }
}

fn field_matches(event: &Value, field: &str, value: &str) -> bool {
    let mut v = event;
    for part in field.split('.') {
        match v.get(part) {
            Some(next) => v = next,
            None => return false,
        }
    }
    let eq = |x: &Value| match x {
        Value::String(s) => s == value,
        Value::Number(n) => n.to_string() == value,
        Value::Bool(b) => b.to_string() == value,
        _ => false,
    };
    match v {
        Value::Array(items) => items.iter().any(eq),
        other => eq(other),
    }
}

fn scrub_segment(dir: &Path, seg: u32, offsets: &[u64]) -> Result<(), VaultError> {
    let path = dir.join(segment::segment_name(seg));
    let ctx = |what: &str| VaultError::io(format!("{what} {}", path.display()));
    let bytes = std::fs::read(&path).map_err(ctx("reading"))?;
    let mut new = bytes.clone();
    let mut patches = Vec::with_capacity(offsets.len());
    for &offset in offsets {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let damaged = |why: String| VaultError::Damaged {
            host: dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            detail: format!("{} offset {offset}: {why}", path.display()),
        };
        let frame = bytes
            .get(start..)
            .ok_or_else(|| damaged("offset past the end".to_owned()))?;
        let (rec, used) = Record::decode(frame).map_err(|e| damaged(e.to_string()))?;
        let erased = rec.erased_copy().encode();
        if erased.len() != used {
            return Err(damaged("erased frame changed length".to_owned()));
        }
        new[start..start + used].copy_from_slice(&erased);
        patches.push((offset, erased));
    }
    let tmp = dir.join(format!("{}{ERASE_TMP_SUFFIX}", segment::segment_name(seg)));
    let mut t = std::fs::File::create(&tmp).map_err(ctx("creating temp copy of"))?;
    t.write_all(&new)
        .and_then(|()| t.sync_all())
        .map_err(ctx("writing temp copy of"))?;
    drop(t);
    segment::sync_dir(dir).map_err(ctx("syncing directory of"))?;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(ctx("opening"))?;
    for (offset, frame) in &patches {
        f.write_all_at(frame, *offset).map_err(ctx("overwriting"))?;
    }
    f.sync_all().map_err(ctx("syncing"))?;
    drop(f);
    std::fs::rename(&tmp, &path).map_err(ctx("replacing"))?;
    segment::sync_dir(dir).map_err(ctx("syncing directory of"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_match_by_path_and_array_element() {
        let e = json!({"path":"/a","argv":["rm","/a"],"pid":7,"tamper":{"kind":"log_deleted"}});
        assert!(field_matches(&e, "path", "/a"));
        assert!(field_matches(&e, "argv", "rm"));
        assert!(field_matches(&e, "pid", "7"));
        assert!(field_matches(&e, "tamper.kind", "log_deleted"));
        assert!(!field_matches(&e, "path", "/b"));
        assert!(!field_matches(&e, "nope", "/a"));
    }
}
