//! `vault verify`: recomputes every host chain from its genesis and every commitment whose
//! payload is present, and names the first record that does not check out, and why.
//!
//! What this proves, and what it cannot, is spelled out in `docs/VAULT.md`: in short, the
//! stored records are consistent with one another; truncation of a chain's tail, or a chain
//! rewritten wholesale by someone with write access, is only caught against a chain head
//! recorded elsewhere (the ingest reply carries it).

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use super::record::{RecordKind, chain_link, commitment, genesis};
use super::segment::{self, Tail};
use super::store::host_names;
use super::{VaultError, check_host, hosts_dir, parse_record_id, record_id};

#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub hosts: Vec<HostSummary>,
    /// Records checked, over all hosts.
    pub records: u64,
    /// Of which with an erased payload (commitment and chain still checked).
    pub erased: u64,
    /// The first broken record of each host chain that has one.
    pub failures: Vec<VerifyFailure>,
    /// Things that are not breaks, e.g. an incomplete last frame (a writer mid-append, or a
    /// crash the next start will repair).
    pub warnings: Vec<String>,
}

impl VerifyReport {
    pub fn is_ok(&self) -> bool {
        self.failures.is_empty()
    }

    pub fn first_failure(&self) -> Option<&VerifyFailure> {
        self.failures.first()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct HostSummary {
    pub host: String,
    pub records: u64,
    pub erased: u64,
    pub segments: usize,
    /// Hex of the last chain value: compare with a head recorded elsewhere to detect a
    /// truncated or rewritten chain.
    pub chain_head: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct VerifyFailure {
    pub host: String,
    /// "host/index" of the broken record (or of the one expected where the break is).
    pub record: String,
    pub index: u64,
    pub segment: PathBuf,
    pub offset: u64,
    pub reason: String,
}

impl fmt::Display for VerifyFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "record {} (segment {}, offset {}): {}",
            self.record,
            self.segment.display(),
            self.offset,
            self.reason
        )
    }
}

/// Verifies every host (or just `host`). `Err` only when the vault cannot be read at all;
/// a broken chain is reported in [`VerifyReport::failures`].
pub fn verify(data: &Path, host: Option<&str>, progress: bool) -> Result<VerifyReport, VaultError> {
    if !data.is_dir() {
        return Err(VaultError::Invalid(format!(
            "no vault directory at {}",
            data.display()
        )));
    }
    let hosts = match host {
        Some(h) => {
            check_host(h)?;
            if !hosts_dir(data).join(h).is_dir() {
                return Err(VaultError::Invalid(format!(
                    "host {h:?} has no records in {}",
                    data.display()
                )));
            }
            vec![h.to_owned()]
        }
        None => host_names(data)?,
    };
    // With no writer holding the lock, an incomplete last frame is not an append in
    // progress but a torn write or a damaged length field: a failure, not a warning.
    let writer_active = matches!(super::store::lock_vault(data), Err(VaultError::Locked(_)));
    let mut plan = Vec::new();
    let mut total = 0u64;
    for h in &hosts {
        let dir = hosts_dir(data).join(h);
        let segs = segment::list_segments(&dir)
            .map_err(VaultError::io(format!("listing {}", dir.display())))?;
        for (_, p) in &segs {
            total += std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        }
        plan.push((h.clone(), segs));
    }
    let bar = if progress && std::io::stderr().is_terminal() {
        let b = indicatif::ProgressBar::new(total);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{spinner} verifying {msg} [{bar:40}] {bytes}/{total_bytes} ({eta})",
        ) {
            b.set_style(style.progress_chars("=> "));
        }
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut report = VerifyReport {
        hosts: Vec::new(),
        records: 0,
        erased: 0,
        failures: Vec::new(),
        warnings: Vec::new(),
    };
    for (h, segs) in plan {
        bar.set_message(h.clone());
        let (summary, failure) = verify_host(&h, &segs, &bar, writer_active, &mut report.warnings)?;
        report.records += summary.records;
        report.erased += summary.erased;
        report.hosts.push(summary);
        report.failures.extend(failure);
    }
    bar.finish_and_clear();
    Ok(report)
}

fn verify_host(
    host: &str,
    segs: &[(u32, PathBuf)],
    bar: &indicatif::ProgressBar,
    writer_active: bool,
    warnings: &mut Vec<String>,
) -> Result<(HostSummary, Option<VerifyFailure>), VaultError> {
    let mut summary = HostSummary {
        host: host.to_owned(),
        records: 0,
        erased: 0,
        segments: segs.len(),
        chain_head: String::new(),
    };
    let mut head = genesis(host);
    let mut expected = 1u64;
    let mut erased_at: BTreeMap<u64, (PathBuf, u64)> = BTreeMap::new();
    let mut claimed: HashSet<u64> = HashSet::new();
    let fail = |index: u64, segment: &Path, offset: u64, reason: String| VerifyFailure {
        host: host.to_owned(),
        record: record_id(host, index),
        index,
        segment: segment.to_owned(),
        offset,
        reason,
    };
    let result = 'chain: {
        for (i, (n, path)) in segs.iter().enumerate() {
            let is_last = i + 1 == segs.len();
            if u32::try_from(i + 1).ok() != Some(*n) {
                break 'chain Some(fail(
                    expected,
                    path,
                    0,
                    format!(
                        "segment number {n} where {} was expected: a segment is missing",
                        i + 1
                    ),
                ));
            }
            let bytes = segment::read_segment(path)
                .map_err(VaultError::io(format!("reading {}", path.display())))?;
            bar.inc(bytes.len() as u64);
            let scan = match segment::scan_bytes(&bytes) {
                Ok(s) => s,
                Err(e) => break 'chain Some(fail(expected, path, 0, e)),
            };
            for (offset, rec) in &scan.records {
                let offset = *offset;
                if rec.index != expected {
                    break 'chain Some(fail(
                        expected,
                        path,
                        offset,
                        format!(
                            "record index {} where {expected} was expected: records missing, duplicated or reordered",
                            rec.index
                        ),
                    ));
                }
                let link = chain_link(
                    &head,
                    rec.index,
                    rec.kind,
                    rec.received_at_ns,
                    &rec.meta,
                    &rec.commitment,
                );
                if link != rec.chain {
                    break 'chain Some(fail(
                        expected,
                        path,
                        offset,
                        "chain hash mismatch: this record's metadata, commitment or chain value was altered".to_owned(),
                    ));
                }
                if rec.erased {
                    if rec.salt.iter().chain(&rec.payload).any(|b| *b != 0) {
                        break 'chain Some(fail(
                            expected,
                            path,
                            offset,
                            "marked erased but salt or payload bytes remain".to_owned(),
                        ));
                    }
                    summary.erased += 1;
                    erased_at.insert(rec.index, (path.clone(), offset));
                } else if commitment(&rec.salt, &rec.payload) != rec.commitment {
                    break 'chain Some(fail(
                        expected,
                        path,
                        offset,
                        format!(
                            "commitment mismatch: the {} record's payload or salt was altered",
                            rec.kind.name()
                        ),
                    ));
                }
                if rec.kind == RecordKind::Erasure
                    && let Some(p) = rec.payload_json()
                {
                    for id in p
                        .get("records")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                    {
                        if let Some(Ok((h, idx))) = id.as_str().map(parse_record_id)
                            && h == host
                        {
                            claimed.insert(idx);
                        }
                    }
                }
                head = link;
                expected += 1;
                summary.records += 1;
            }
            match scan.tail {
                Tail::Clean => {}
                Tail::Incomplete { offset, reason } if is_last && writer_active => warnings.push(format!(
                    "host {host}: {} ends with an incomplete frame at offset {offset} ({reason}): the running writer is mid-append",
                    path.display()
                )),
                Tail::Incomplete { offset, reason }
                | Tail::BadLastFrame { offset, reason }
                | Tail::Corrupt { offset, reason } => {
                    break 'chain Some(fail(
                        expected,
                        path,
                        offset,
                        format!(
                            "damaged frame: {reason}{}",
                            if is_last {
                                " (a torn write from a crash is cut off into quarantine/ by the next start)"
                            } else {
                                ""
                            }
                        ),
                    ));
                }
            }
        }
        erased_at
            .iter()
            .find(|(idx, _)| !claimed.contains(idx))
            .map(|(idx, (path, offset))| {
                fail(
                    *idx,
                    path,
                    *offset,
                    "payload erased but no erasure record names this record".to_owned(),
                )
            })
    };
    summary.chain_head = hex::encode(head);
    Ok((summary, result))
}
