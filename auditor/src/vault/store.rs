//! One host's chain on disk and the state rebuilt from it: chain head, the (boot_id, seq)
//! index that makes ingest idempotent, loss counters, liveness.
//!
//! Nothing here is persisted apart from the segments: on open every segment is scanned and
//! the index rebuilt, so the segments are the single source of truth. A torn tail (crash
//! mid-append) is cut off, kept under `quarantine/`, and noted by a `recovery` record.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::record::{
    FRAME_HEADER, MAX_BODY, Record, RecordKind, canonical_json, chain_link, commitment, genesis,
    random_salts,
};
use super::segment::{self, MAGIC, SEGMENT_TARGET, Tail};
use super::writeback::Writeback;
use super::{VaultError, check_host, hosts_dir, now_ns, record_id, rfc3339_ns};

/// The exclusive writer lock on a vault directory, held for as long as this lives.
pub(crate) struct VaultLock {
    _file: File,
}

pub(crate) fn lock_vault(data: &Path) -> Result<VaultLock, VaultError> {
    fs::create_dir_all(data).map_err(VaultError::io(format!(
        "creating vault directory {}",
        data.display()
    )))?;
    let path = data.join("vault.lock");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(VaultError::io(format!("opening {}", path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(VaultLock { _file: file }),
        Err(fs::TryLockError::WouldBlock) => Err(VaultError::Locked(data.to_owned())),
        Err(fs::TryLockError::Error(e)) => Err(VaultError::Io {
            context: format!("locking {}", path.display()),
            source: e,
        }),
    }
}

/// Where a record's frame starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Loc {
    pub segment: u32,
    pub offset: u64,
}

/// A record about to be appended; salt, commitment and chain are added by `append`.
pub(crate) struct Pending {
    kind: RecordKind,
    meta: Vec<u8>,
    payload: Vec<u8>,
    /// A data record whose (boot, seq) the caller indexes itself: `append` then skips
    /// parsing its meta back.
    indexed_by_caller: bool,
}

impl Pending {
    pub(crate) fn new(kind: RecordKind, meta: &Value, payload: &Value) -> Self {
        Pending {
            kind,
            meta: canonical_json(meta),
            payload: canonical_json(payload),
            indexed_by_caller: false,
        }
    }
}

/// How an ingest indexes what it stores.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum SeqIndex {
    /// Every (boot, seq) is remembered with its location, so a resend is recognised as a
    /// duplicate (or a conflicting replay) however late it comes: the server.
    Full,
    /// Only the last [`RECENT_SEQS`] seqs of each boot: for a writer whose seqs only ever
    /// increase (the embedded local vault, fed by one sequencer), where the full index
    /// would grow by an entry per event for nothing. A resend of a recent seq is still a
    /// duplicate (or a replay); an older seq at or below the highest is stored with an
    /// `out_of_order` record, as the server does for a seq it never saw.
    Recent,
}

/// `{"boot_id":<boot>,"seq":<seq>}`, canonical, from the boot id already JSON-escaped.
fn data_meta(boot_json: &[u8], seq: u64) -> Vec<u8> {
    let mut m = Vec::with_capacity(boot_json.len() + 32);
    m.extend_from_slice(b"{\"boot_id\":");
    m.extend_from_slice(boot_json);
    m.extend_from_slice(b",\"seq\":");
    m.extend_from_slice(itoa::Buffer::new().format(seq).as_bytes());
    m.push(b'}');
    m
}

#[derive(Default)]
struct BootState {
    max_seq: u64,
    seqs: HashMap<u64, Loc>,
    /// [`SeqIndex::Recent`]: the latest seqs stored in order, ascending, at most
    /// [`RECENT_SEQS`].
    recent: std::collections::VecDeque<(u64, Loc)>,
    loss: Option<(u64, u64)>,
}

/// Seqs a [`SeqIndex::Recent`] boot remembers.
const RECENT_SEQS: usize = 4096;

impl BootState {
    fn find(&self, seq: u64) -> Option<Loc> {
        if let Some(loc) = self.seqs.get(&seq) {
            return Some(*loc);
        }
        let at = self.recent.binary_search_by_key(&seq, |r| r.0).ok()?;
        self.recent.get(at).map(|r| r.1)
    }
}

/// What one ingest request did.
#[derive(Debug, Default)]
pub(crate) struct IngestOutcome {
    pub stored: u64,
    pub duplicates: u64,
    pub conflicts: u64,
    pub gaps: Vec<(u64, u64)>,
    pub acked_through: u64,
    pub chain_head: [u8; 32],
    pub last_index: u64,
}

pub(crate) struct HostStore {
    pub host: String,
    dir: PathBuf,
    /// Segment number, file opened for appending, its length.
    active: Option<(u32, File, u64)>,
    next_index: u64,
    head: [u8; 32],
    boots: HashMap<String, BootState>,
    /// Set when the segments cannot be appended to safely; ingest answers 503.
    pub damaged: Option<String>,
    /// When this host last sent something (monotonic, and wall clock for records).
    pub last_seen: Option<(Instant, u64)>,
    /// Set while a silence episode is open (an `agent_silent` record was written).
    pub silent_since: Option<u64>,
    last_boot: Option<(String, u64)>,
    /// The frames of the last append, kept for the next one (see `append`).
    write_buf: Vec<u8>,
    /// The active segment's streaming writeback (see [`writeback`](super::writeback)).
    writeback: Writeback,
}

/// Largest append buffer kept between appends (a batch of ordinary events is far less).
const WRITE_BUF_KEEP: usize = 4 << 20;

impl HostStore {
    /// Opens (or creates) the host's chain, repairing a torn tail.
    pub(crate) fn open(data: &Path, host: &str) -> Result<HostStore, VaultError> {
        check_host(host)?;
        let dir = hosts_dir(data).join(host);
        fs::create_dir_all(&dir).map_err(VaultError::io(format!("creating {}", dir.display())))?;
        segment::recover_erase_tmps(&dir).map_err(VaultError::io(format!(
            "recovering erase in {}",
            dir.display()
        )))?;
        let segments = segment::list_segments(&dir)
            .map_err(VaultError::io(format!("listing {}", dir.display())))?;
        let mut store = HostStore {
            host: host.to_owned(),
            dir: dir.clone(),
            active: None,
            next_index: 1,
            head: genesis(host),
            boots: HashMap::new(),
            damaged: None,
            last_seen: None,
            silent_since: None,
            last_boot: None,
            write_buf: Vec::new(),
            writeback: Writeback::default(),
        };
        let mut torn: Option<(PathBuf, u64, String)> = None;
        let count = segments.len();
        for (i, (n, path)) in segments.iter().enumerate() {
            let is_last = i + 1 == count;
            if let Some(expected) = u32::try_from(i + 1).ok().filter(|e| e != n) {
                store.damaged = Some(format!(
                    "segment {} found where number {expected} was expected",
                    path.display()
                ));
                break;
            }
            let bytes = segment::read_segment(path)
                .map_err(VaultError::io(format!("reading {}", path.display())))?;
            let scan = match segment::scan_bytes(&bytes) {
                Ok(scan) => scan,
                // A crash while creating the segment leaves it empty or with part of the magic.
                Err(_) if is_last && MAGIC.starts_with(&bytes) => {
                    torn = Some((path.clone(), 0, "segment header incomplete".to_owned()));
                    break;
                }
                Err(e) => {
                    store.damaged = Some(format!("{}: {e}", path.display()));
                    break;
                }
            };
            for (offset, rec) in &scan.records {
                if rec.index != store.next_index {
                    store.damaged = Some(format!(
                        "{} offset {offset}: record index {} where {} was expected",
                        path.display(),
                        rec.index,
                        store.next_index
                    ));
                    break;
                }
                store.apply(
                    rec,
                    Loc {
                        segment: *n,
                        offset: *offset,
                    },
                );
            }
            if store.damaged.is_some() {
                break;
            }
            match scan.tail {
                Tail::Clean => {}
                Tail::Incomplete { offset, reason } | Tail::BadLastFrame { offset, reason }
                    if is_last =>
                {
                    torn = Some((path.clone(), offset, reason));
                }
                Tail::Incomplete { offset, reason }
                | Tail::BadLastFrame { offset, reason }
                | Tail::Corrupt { offset, reason } => {
                    store.damaged = Some(format!("{} offset {offset}: {reason}", path.display()));
                    break;
                }
            }
        }
        if let Some(why) = &store.damaged {
            tracing::error!(host, %why, "host store damaged: refusing to append to it");
            return Ok(store);
        }
        let recovery = match torn {
            Some((path, offset, reason)) => Some(store.cut_torn_tail(&path, offset, &reason)?),
            None => None,
        };
        store.open_active(&segments)?;
        if let Some(payload) = recovery {
            store.append(
                vec![Pending::new(RecordKind::Recovery, &json!({}), &payload)],
                true,
            )?;
        }
        Ok(store)
    }

    fn open_active(&mut self, segments: &[(u32, PathBuf)]) -> Result<(), VaultError> {
        let (n, file) = match segments.last() {
            Some((n, path)) => {
                let f = fs::OpenOptions::new()
                    .append(true)
                    .open(path)
                    .map_err(VaultError::io(format!("opening {}", path.display())))?;
                let len = f
                    .metadata()
                    .map_err(VaultError::io(format!("stat {}", path.display())))?
                    .len();
                if len < MAGIC.len() as u64 {
                    // Recreated by cut_torn_tail below the magic: write it again.
                    (&f).write_all(&MAGIC[len as usize..])
                        .and_then(|()| f.sync_all())
                        .map_err(VaultError::io(format!("repairing {}", path.display())))?;
                }
                (*n, f)
            }
            None => {
                let (f, _) = segment::create_segment(&self.dir, 1).map_err(VaultError::io(
                    format!("creating a segment in {}", self.dir.display()),
                ))?;
                (1, f)
            }
        };
        let len = file
            .metadata()
            .map_err(VaultError::io("stat of the active segment"))?
            .len();
        self.active = Some((n, file, len));
        self.writeback = Writeback::at(len);
        Ok(())
    }

    /// Moves the bytes of a torn tail to `quarantine/` and truncates the segment before them.
    fn cut_torn_tail(&self, path: &Path, offset: u64, reason: &str) -> Result<Value, VaultError> {
        let ctx = |what: &str| VaultError::io(format!("{what} {}", path.display()));
        let bytes = fs::read(path).map_err(ctx("reading"))?;
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        let torn = &bytes[start..];
        let qdir = self.dir.join("quarantine");
        fs::create_dir_all(&qdir).map_err(ctx("creating quarantine for"))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let qpath = qdir.join(format!("{name}-at-{offset}-{}.torn", now_ns()));
        let mut q = File::create(&qpath).map_err(ctx("quarantining tail of"))?;
        q.write_all(torn)
            .and_then(|()| q.sync_all())
            .map_err(ctx("quarantining tail of"))?;
        segment::sync_dir(&qdir).map_err(ctx("syncing quarantine of"))?;
        let f = fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(ctx("opening"))?;
        f.set_len(offset).map_err(ctx("truncating"))?;
        f.sync_all().map_err(ctx("syncing"))?;
        tracing::warn!(
            host = %self.host,
            segment = %path.display(),
            offset,
            bytes = torn.len(),
            reason,
            quarantine = %qpath.display(),
            "torn tail cut off (crash mid-append?); bytes kept in quarantine"
        );
        Ok(json!({
            "host": self.host,
            "segment": name,
            "offset": offset,
            "bytes": torn.len(),
            "reason": reason,
            "quarantine_file": qpath.file_name().map(|n| n.to_string_lossy().into_owned()),
        }))
    }

    /// Updates the in-memory state with a record now on disk.
    fn apply(&mut self, rec: &Record, loc: Loc) {
        self.advance(rec);
        self.index(rec, loc);
    }

    /// The chain head and next index after `rec`.
    fn advance(&mut self, rec: &Record) {
        self.next_index = rec.index + 1;
        self.head = rec.chain;
    }

    /// The (boot, seq) index and loss counters, from a record's meta and payload.
    fn index(&mut self, rec: &Record, loc: Loc) {
        let meta = rec.meta_json();
        let boot = meta
            .as_ref()
            .and_then(|m| m.get("boot_id"))
            .and_then(Value::as_str);
        let seq = meta
            .as_ref()
            .and_then(|m| m.get("seq"))
            .and_then(Value::as_u64);
        match (rec.kind, boot, seq) {
            (RecordKind::Data, Some(boot), Some(seq)) => {
                let b = self.boots.entry(boot.to_owned()).or_default();
                b.seqs.insert(seq, loc);
                b.max_seq = b.max_seq.max(seq);
            }
            (RecordKind::LossReport, Some(boot), _) => {
                if let Some(p) = rec.payload_json() {
                    let get = |k: &str| p.get(k).and_then(Value::as_u64).unwrap_or(0);
                    self.boots.entry(boot.to_owned()).or_default().loss =
                        Some((get("kernel_records"), get("spool_dropped")));
                }
            }
            _ => {}
        }
    }

    pub(crate) fn has_records(&self) -> bool {
        self.next_index > 1
    }

    pub(crate) fn head(&self) -> ([u8; 32], u64) {
        (self.head, self.next_index - 1)
    }

    /// Appends records as one write; durable when `sync`. On failure nothing is kept:
    /// the segment is cut back to its previous length and the state is untouched.
    pub(crate) fn append(
        &mut self,
        pending: Vec<Pending>,
        sync: bool,
    ) -> Result<Vec<(u64, Loc)>, VaultError> {
        if let Some(detail) = &self.damaged {
            return Err(VaultError::Damaged {
                host: self.host.clone(),
                detail: detail.clone(),
            });
        }
        if pending.is_empty() {
            return Ok(Vec::new());
        }
        let received_at_ns = now_ns();
        let mut head = self.head;
        let mut records = Vec::with_capacity(pending.len());
        let mut caller_indexed = Vec::with_capacity(pending.len());
        let salts = random_salts(pending.len())?;
        for ((i, p), salt) in pending.into_iter().enumerate().zip(salts) {
            if p.payload.len() + p.meta.len() + 256 > MAX_BODY {
                return Err(VaultError::Invalid(format!(
                    "record of {} bytes is larger than the {MAX_BODY}-byte limit",
                    p.payload.len()
                )));
            }
            let index = self.next_index + i as u64;
            let c = commitment(&salt, &p.payload);
            let chain = chain_link(&head, index, p.kind, received_at_ns, &p.meta, &c);
            head = chain;
            caller_indexed.push(p.indexed_by_caller);
            records.push(Record {
                kind: p.kind,
                erased: false,
                index,
                received_at_ns,
                commitment: c,
                chain,
                meta: p.meta,
                salt,
                payload: p.payload,
            });
        }
        let total: usize = records.iter().map(Record::frame_len).sum();
        // Reused from one append to the next: a fresh buffer of this size is a fresh
        // mapping, and faulting its pages in was a visible cost per batch.
        let mut buf = std::mem::take(&mut self.write_buf);
        buf.clear();
        buf.reserve(total);
        let mut offsets = Vec::with_capacity(records.len());
        self.rotate_if_full(total)?;
        let Some((seg_no, file, len)) = self.active.as_mut() else {
            return Err(VaultError::Damaged {
                host: self.host.clone(),
                detail: "no active segment".to_owned(),
            });
        };
        for r in &records {
            offsets.push(*len + buf.len() as u64);
            r.encode_into(&mut buf);
        }
        let old_len = *len;
        let writeback = &mut self.writeback;
        let write = (&*file).write_all(&buf).and_then(|()| {
            if sync {
                writeback.sync_data(file)
            } else {
                Ok(())
            }
        });
        if let Err(e) = write {
            // Leave no partial frames behind; if even that fails, stop appending.
            if let Err(e2) = file.set_len(old_len).and_then(|()| file.sync_data()) {
                self.damaged = Some(format!(
                    "append failed ({e}) and could not be undone ({e2})"
                ));
            }
            return Err(VaultError::Io {
                context: format!("appending to the chain of host {}", self.host),
                source: e,
            });
        }
        *len += buf.len() as u64;
        self.writeback.appended(file, *len);
        let seg_no = *seg_no;
        if buf.capacity() <= WRITE_BUF_KEEP {
            self.write_buf = buf;
        }
        let mut out = Vec::with_capacity(records.len());
        for ((r, offset), by_caller) in records.iter().zip(offsets).zip(caller_indexed) {
            let loc = Loc {
                segment: seg_no,
                offset,
            };
            self.advance(r);
            if !by_caller {
                self.index(r, loc);
            }
            out.push((r.index, loc));
        }
        Ok(out)
    }

    fn rotate_if_full(&mut self, incoming: usize) -> Result<(), VaultError> {
        let Some((n, full, len)) = &self.active else {
            return Ok(());
        };
        if *len <= MAGIC.len() as u64 || *len + incoming as u64 <= SEGMENT_TARGET {
            return Ok(());
        }
        // The segment left behind is synced now: a later sync covers the new one only.
        self.writeback.finish(full).map_err(VaultError::io(format!(
            "syncing the full segment {n} of {}",
            self.host
        )))?;
        let next = n + 1;
        let (f, _) = segment::create_segment(&self.dir, next).map_err(VaultError::io(format!(
            "creating segment {next} of {}",
            self.host
        )))?;
        self.active = Some((next, f, MAGIC.len() as u64));
        self.writeback = Writeback::at(MAGIC.len() as u64);
        Ok(())
    }

    /// fsync of the active segment (for callers that appended with `sync = false`).
    pub(crate) fn sync(&mut self) -> Result<(), VaultError> {
        if let Some((_, f, _)) = &self.active {
            self.writeback.sync_data(f).map_err(VaultError::io(format!(
                "syncing the chain of {}",
                self.host
            )))?;
        }
        Ok(())
    }

    /// The stored payload at `loc`, or None when it was erased.
    fn read_payload(&self, loc: Loc) -> Result<Option<Vec<u8>>, VaultError> {
        let path = self.dir.join(segment::segment_name(loc.segment));
        let ctx = VaultError::io(format!("reading {} at {}", path.display(), loc.offset));
        let f = File::open(&path).map_err(ctx)?;
        let mut header = [0u8; FRAME_HEADER];
        let read = f
            .read_exact_at(&mut header, loc.offset)
            .and_then(|()| {
                let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
                if len > MAX_BODY {
                    return Err(std::io::Error::other("frame length out of range"));
                }
                let mut frame = vec![0u8; FRAME_HEADER + len];
                f.read_exact_at(&mut frame, loc.offset)?;
                Ok(frame)
            })
            .map_err(VaultError::io(format!(
                "reading {} at {}",
                path.display(),
                loc.offset
            )))?;
        let (rec, _) = Record::decode(&read).map_err(|e| VaultError::Damaged {
            host: self.host.clone(),
            detail: format!("{} offset {}: {e}", path.display(), loc.offset),
        })?;
        Ok((!rec.erased).then_some(rec.payload))
    }

    /// A `agent_resumed` record if a silence episode is open.
    fn resumed(&self, now: u64) -> Option<Pending> {
        let since = self.silent_since?;
        Some(Pending::new(
            RecordKind::AgentResumed,
            &json!({}),
            &json!({
                "host": self.host,
                "silent_since": rfc3339_ns(since),
                "resumed_at": rfc3339_ns(now),
            }),
        ))
    }

    fn seen(&mut self, now: u64) {
        self.last_seen = Some((Instant::now(), now));
        self.silent_since = None;
    }

    /// Stores a batch of one boot's records: idempotent per (boot_id, seq); gaps,
    /// out-of-order arrivals and conflicting replays become records of their own.
    pub(crate) fn ingest(
        &mut self,
        boot_id: &str,
        records: Vec<(u64, Value)>,
        sync: bool,
    ) -> Result<IngestOutcome, VaultError> {
        let canonical = records
            .into_iter()
            .map(|(seq, event)| (seq, canonical_json(&event)))
            .collect();
        self.ingest_canonical(boot_id, canonical, sync, SeqIndex::Full)
    }

    /// [`ingest`](Self::ingest) of events already in canonical JSON.
    pub(crate) fn ingest_canonical(
        &mut self,
        boot_id: &str,
        records: Vec<(u64, Vec<u8>)>,
        sync: bool,
        index: SeqIndex,
    ) -> Result<IngestOutcome, VaultError> {
        let now = now_ns();
        let mut out = IngestOutcome::default();
        let mut pending: Vec<Pending> = self.resumed(now).into_iter().collect();
        let boot_json = canonical_json(&Value::String(boot_id.to_owned()));
        let empty = BootState::default();
        let boot = self.boots.get(boot_id).unwrap_or(&empty);
        let mut max = boot.max_seq;
        // Data records of this batch: seq, and position in `pending` (for a resend of the
        // same seq within the batch).
        let mut stored: Vec<(u64, usize)> = Vec::with_capacity(records.len());
        let seq_meta = |seq: u64| json!({"boot_id": boot_id, "seq": seq});
        for (seq, payload) in records {
            // Only a seq at or below the highest so far can have been stored before.
            let earlier = if seq > max {
                None
            } else {
                match stored.iter().rev().find(|s| s.0 == seq) {
                    Some(&(_, i)) => Some((pending.get(i).map(|p| p.payload.clone()), None)),
                    None => match boot.find(seq) {
                        Some(loc) => Some((self.read_payload(loc)?, Some(loc))),
                        None => None,
                    },
                }
            };
            if let Some((previous, loc)) = earlier {
                match previous {
                    // An erased payload cannot be compared: treat the resend as a duplicate.
                    Some(previous) if previous != payload => {
                        out.conflicts += 1;
                        let stored_record = loc
                            .and_then(|l| self.index_at(l))
                            .map(|i| record_id(&self.host, i));
                        let offered: Value =
                            serde_json::from_slice(&payload).unwrap_or_else(|_| {
                                Value::String(String::from_utf8_lossy(&payload).into_owned())
                            });
                        pending.push(Pending::new(
                            RecordKind::Replay,
                            &seq_meta(seq),
                            &json!({
                                "host": self.host,
                                "boot_id": boot_id,
                                "seq": seq,
                                "stored_record": stored_record,
                                "offered_event": offered,
                            }),
                        ));
                    }
                    _ => out.duplicates += 1,
                }
                continue;
            }
            if seq > max.saturating_add(1) {
                out.gaps.push((max + 1, seq - 1));
                pending.push(Pending::new(
                    RecordKind::Gap,
                    &json!({"boot_id": boot_id}),
                    &json!({
                        "host": self.host,
                        "boot_id": boot_id,
                        "from": max + 1,
                        "to": seq - 1,
                        "count": seq - 1 - max,
                        "noticed_at": rfc3339_ns(now),
                    }),
                ));
            } else if seq <= max {
                pending.push(Pending::new(
                    RecordKind::OutOfOrder,
                    &seq_meta(seq),
                    &json!({
                        "host": self.host,
                        "boot_id": boot_id,
                        "seq": seq,
                        "highest_seen": max,
                        "noticed_at": rfc3339_ns(now),
                    }),
                ));
            }
            stored.push((seq, pending.len()));
            pending.push(Pending {
                kind: RecordKind::Data,
                meta: data_meta(&boot_json, seq),
                payload,
                indexed_by_caller: true,
            });
            max = max.max(seq);
            out.stored += 1;
        }
        let locs = self.append(pending, sync)?;
        let b = self.boots.entry(boot_id.to_owned()).or_default();
        for (seq, at) in stored {
            let Some(&(_, loc)) = locs.get(at) else {
                continue;
            };
            match index {
                SeqIndex::Full => {
                    b.seqs.insert(seq, loc);
                }
                // In order only, so the window stays sorted for its binary search.
                SeqIndex::Recent if seq > b.max_seq => {
                    if b.recent.len() >= RECENT_SEQS {
                        b.recent.pop_front();
                    }
                    b.recent.push_back((seq, loc));
                }
                SeqIndex::Recent => {}
            }
            b.max_seq = b.max_seq.max(seq);
        }
        self.seen(now);
        let acked = self.boots.get(boot_id).map_or(0, |b| b.max_seq);
        self.last_boot = Some((boot_id.to_owned(), acked));
        out.acked_through = acked;
        (out.chain_head, out.last_index) = self.head();
        Ok(out)
    }

    /// The chain index of the data record at `loc` (only used to name a replay's original).
    fn index_at(&self, loc: Loc) -> Option<u64> {
        let path = self.dir.join(segment::segment_name(loc.segment));
        let f = File::open(path).ok()?;
        let mut b = [0u8; FRAME_HEADER + 12];
        f.read_exact_at(&mut b, loc.offset).ok()?;
        let mut idx = [0u8; 8];
        idx.copy_from_slice(&b[FRAME_HEADER + 4..FRAME_HEADER + 12]);
        Some(u64::from_le_bytes(idx))
    }

    /// Records a heartbeat: liveness, and a `loss_report` when the counters changed.
    pub(crate) fn heartbeat(
        &mut self,
        boot_id: &str,
        last_seq: u64,
        kernel_records: u64,
        spool_dropped: u64,
    ) -> Result<u64, VaultError> {
        let now = now_ns();
        let mut pending: Vec<Pending> = self.resumed(now).into_iter().collect();
        let previous = self
            .boots
            .get(boot_id)
            .and_then(|b| b.loss)
            .unwrap_or((0, 0));
        if previous != (kernel_records, spool_dropped) {
            pending.push(Pending::new(
                RecordKind::LossReport,
                &json!({"boot_id": boot_id}),
                &json!({
                    "host": self.host,
                    "boot_id": boot_id,
                    "last_seq": last_seq,
                    "kernel_records": kernel_records,
                    "spool_dropped": spool_dropped,
                    "previous": {"kernel_records": previous.0, "spool_dropped": previous.1},
                }),
            ));
        }
        self.append(pending, true)?;
        self.seen(now);
        Ok(self.boots.get(boot_id).map_or(0, |b| b.max_seq))
    }

    /// Writes one `agent_silent` record when the host has been silent longer than
    /// `threshold` and no episode is open yet. Returns the record's payload if written.
    pub(crate) fn check_silence(
        &mut self,
        threshold: Duration,
    ) -> Result<Option<Value>, VaultError> {
        let Some((seen, seen_ns)) = self.last_seen else {
            return Ok(None);
        };
        if self.silent_since.is_some() || self.damaged.is_some() || seen.elapsed() <= threshold {
            return Ok(None);
        }
        let payload = json!({
            "host": self.host,
            "last_seen_at": rfc3339_ns(seen_ns),
            "silent_for_ms": u64::try_from(seen.elapsed().as_millis()).unwrap_or(u64::MAX),
            "threshold_ms": u64::try_from(threshold.as_millis()).unwrap_or(u64::MAX),
            "last_boot_id": self.last_boot.as_ref().map(|b| b.0.clone()),
            "last_seq": self.last_boot.as_ref().map(|b| b.1),
        });
        self.append(
            vec![Pending::new(RecordKind::AgentSilent, &json!({}), &payload)],
            true,
        )?;
        self.silent_since = Some(seen_ns);
        Ok(Some(payload))
    }
}

/// Every host's store, for the server. Holds the writer lock.
pub(crate) struct Vault {
    data: PathBuf,
    hosts: Mutex<HashMap<String, Arc<Mutex<HostStore>>>>,
    _lock: VaultLock,
}

pub(crate) fn lock_host(store: &Mutex<HostStore>) -> Result<MutexGuard<'_, HostStore>, VaultError> {
    store.lock().map_err(|_| VaultError::Damaged {
        host: "?".to_owned(),
        detail: "a writer panicked while holding the host's store".to_owned(),
    })
}

impl Vault {
    /// Locks the directory and opens every host found in it (rebuilding their indexes).
    pub(crate) fn open(data: &Path) -> Result<Vault, VaultError> {
        let lock = lock_vault(data)?;
        let hdir = hosts_dir(data);
        fs::create_dir_all(&hdir)
            .map_err(VaultError::io(format!("creating {}", hdir.display())))?;
        let mut hosts = HashMap::new();
        for name in host_names(data)? {
            let store = HostStore::open(data, &name)?;
            hosts.insert(name, Arc::new(Mutex::new(store)));
        }
        Ok(Vault {
            data: data.to_owned(),
            hosts: Mutex::new(hosts),
            _lock: lock,
        })
    }

    pub(crate) fn host(&self, host: &str) -> Result<Arc<Mutex<HostStore>>, VaultError> {
        let mut hosts = self.hosts.lock().map_err(|_| VaultError::Damaged {
            host: host.to_owned(),
            detail: "host table poisoned".to_owned(),
        })?;
        if let Some(h) = hosts.get(host) {
            return Ok(h.clone());
        }
        let store = Arc::new(Mutex::new(HostStore::open(&self.data, host)?));
        hosts.insert(host.to_owned(), store.clone());
        Ok(store)
    }

    pub(crate) fn all(&self) -> Vec<Arc<Mutex<HostStore>>> {
        self.hosts
            .lock()
            .map(|h| h.values().cloned().collect())
            .unwrap_or_default()
    }
}

/// Host directories under DATA/hosts with valid names, sorted.
pub(crate) fn host_names(data: &Path) -> Result<Vec<String>, VaultError> {
    let hdir = hosts_dir(data);
    let mut out = Vec::new();
    let entries = match fs::read_dir(&hdir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => {
            return Err(VaultError::Io {
                context: format!("listing {}", hdir.display()),
                source: e,
            });
        }
    };
    for entry in entries {
        let entry = entry.map_err(VaultError::io(format!("listing {}", hdir.display())))?;
        if let Some(name) = entry.file_name().to_str()
            && check_host(name).is_ok()
            && entry.path().is_dir()
        {
            out.push(name.to_owned());
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ev(n: u64) -> Value {
        json!({"schema_version":1,"kind":"exec","pid":n,"time":"2026-11-23T12:00:00Z"})
    }

    #[test]
    fn reopen_rebuilds_the_index_and_dedups() {
        let d = tempfile::tempdir().unwrap();
        {
            let mut s = HostStore::open(d.path(), "h").unwrap();
            let o = s.ingest("b", vec![(1, ev(1)), (2, ev(2))], true).unwrap();
            assert_eq!((o.stored, o.duplicates, o.acked_through), (2, 0, 2));
        }
        let mut s = HostStore::open(d.path(), "h").unwrap();
        let o = s.ingest("b", vec![(2, ev(2)), (3, ev(3))], true).unwrap();
        assert_eq!((o.stored, o.duplicates, o.conflicts), (1, 1, 0));
        let o = s.ingest("b", vec![(3, ev(99))], true).unwrap();
        assert_eq!((o.stored, o.duplicates, o.conflicts), (0, 0, 1));
        assert_eq!(s.head().1, 4);
    }

    #[test]
    fn the_recent_index_dedups_recent_seqs_and_keeps_memory_bounded() {
        let d = tempfile::tempdir().unwrap();
        let mut s = HostStore::open(d.path(), "h").unwrap();
        let total = RECENT_SEQS as u64 + 10;
        let batch = (1..=total)
            .map(|n| (n, canonical_json(&ev(n))))
            .collect::<Vec<_>>();
        let o = s
            .ingest_canonical("b", batch, false, SeqIndex::Recent)
            .unwrap();
        assert_eq!(o.stored, total);
        let boot = &s.boots["b"];
        assert_eq!((boot.seqs.len(), boot.recent.len()), (0, RECENT_SEQS));
        // A recent seq resent: a duplicate, or a replay when it differs.
        let again = vec![(total, canonical_json(&ev(total)))];
        let o = s
            .ingest_canonical("b", again, false, SeqIndex::Recent)
            .unwrap();
        assert_eq!((o.stored, o.duplicates, o.conflicts), (0, 1, 0));
        let changed = vec![(total - 1, canonical_json(&ev(1)))];
        let o = s
            .ingest_canonical("b", changed, false, SeqIndex::Recent)
            .unwrap();
        assert_eq!((o.stored, o.duplicates, o.conflicts), (0, 0, 1));
        // One from before the window: stored again, with an out_of_order record.
        let old = vec![(1, canonical_json(&ev(1)))];
        let head = s.head().1;
        let o = s
            .ingest_canonical("b", old, false, SeqIndex::Recent)
            .unwrap();
        assert_eq!((o.stored, o.duplicates), (1, 0));
        assert_eq!(s.head().1, head + 2);
    }

    #[test]
    fn torn_tail_is_cut_quarantined_and_recorded() {
        let d = tempfile::tempdir().unwrap();
        let seg = d.path().join("hosts/h").join(segment::segment_name(1));
        {
            let mut s = HostStore::open(d.path(), "h").unwrap();
            s.ingest("b", vec![(1, ev(1)), (2, ev(2))], true).unwrap();
        }
        let full = fs::read(&seg).unwrap();
        fs::write(&seg, &full[..full.len() - 7]).unwrap();
        let mut s = HostStore::open(d.path(), "h").unwrap();
        // Record 2 was torn; 2 is now the recovery record, and seq 2 can be resent.
        assert_eq!(s.head().1, 2);
        let o = s.ingest("b", vec![(2, ev(2))], true).unwrap();
        assert_eq!(o.stored, 1);
        assert_eq!(
            fs::read_dir(d.path().join("hosts/h/quarantine"))
                .unwrap()
                .count(),
            1
        );
    }

    #[test]
    fn a_failed_host_lock_is_reported() {
        let d = tempfile::tempdir().unwrap();
        let _l = lock_vault(d.path()).unwrap();
        assert!(matches!(lock_vault(d.path()), Err(VaultError::Locked(_))));
    }
}
