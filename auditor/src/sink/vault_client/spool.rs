//! The on-disk spool: every event the agent captured and the vault has not acknowledged yet.
//!
//! ```text
//! SPOOL/LOCK                          flock: one agent per spool directory
//! SPOOL/<boot>/seg-00000001.spl       segments of one agent boot (one sequence numbering)
//! SPOOL/<boot>/acked                  ack cursor: highest seq the vault acknowledged
//! ```
//! `<boot>` is the boot id when it is made of `[A-Za-z0-9._-]` (and does not start with a
//! dot), otherwise `~` and the SHA-256 of the boot id; the boot id itself is in every
//! segment header, which is the authority.
//!
//! A segment is `AUDSPL01 | header_len u32 LE | crc32(header) u32 LE | header` (header: JSON
//! `{"boot_id","created_ns"}`), written to a temporary file and renamed into place so it is
//! never torn, followed by frames `len u32 LE | crc32(body) u32 LE | body[len]`, body =
//! `seq u64 LE | flags u8 | event JSON`. Frames are appended with one `write` each, so a
//! `kill -9` leaves at most the last frame incomplete; on open every frame is checked
//! (length, checksum, increasing seq) and the file is cut at the first bad one — a torn frame
//! is reported, never sent. The ack file is `AUDSPLA1 | acked u64 LE | crc32 u32 LE`,
//! replaced atomically by rename; it is not fsynced, because a stale cursor only makes the
//! agent resend records the vault already holds, which the vault counts as duplicates.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Instant;

use sha2::{Digest, Sha256};

const SEG_MAGIC: &[u8; 8] = b"AUDSPL01";
const ACK_MAGIC: &[u8; 8] = b"AUDSPLA1";
/// Largest frame body: larger events are refused (and counted as dropped).
pub(crate) const MAX_FRAME: usize = 16 << 20;
/// len + crc + seq + flags.
pub(crate) const FRAME_OVERHEAD: u64 = 4 + 4 + 8 + 1;
/// Frame flag: a tamper-classified event (sent without the batching delay).
pub(crate) const FLAG_URGENT: u8 = 1;
/// A fully acknowledged active segment at least this large is deleted and a new one begun.
const ROTATE_ACKED: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "spool directory {0} is in use by another agent (flock on LOCK): stop it, or give this one another --spool"
    )]
    Locked(PathBuf),
    #[error(
        "spool {dir} already holds records of boot id {boot_id:?}: every agent run needs a fresh boot id"
    )]
    BootReused { dir: PathBuf, boot_id: String },
    #[error("spool is full ({used} of {max} bytes)")]
    Full { used: u64, max: u64 },
    #[error("event of {0} bytes is larger than a spool frame may be ({MAX_FRAME})")]
    TooLarge(usize),
    #[error("seq {seq} is not above the last spooled seq {last} of boot {boot_id:?}")]
    OutOfOrder {
        boot_id: String,
        seq: u64,
        last: u64,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A region cut off at open: a torn write (kill -9 mid-append) or damage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornCut {
    pub boot_id: String,
    pub segment: PathBuf,
    pub offset: u64,
    pub bytes: u64,
    /// The last valid seq of that boot before the cut (0: none).
    pub last_good_seq: u64,
    /// The cut was at the end of the boot's last segment (the shape of a crash).
    pub at_tail: bool,
    pub reason: String,
}

#[derive(Debug)]
struct Segment {
    id: u64,
    path: PathBuf,
    bytes: u64,
    header_len: u64,
    last_seq: u64,
}

/// Where the next unacknowledged frame starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cursor {
    seg: u64,
    offset: u64,
}

#[derive(Debug)]
pub(crate) struct BootSpool {
    pub(crate) boot_id: String,
    dir: PathBuf,
    created_ns: u64,
    segments: VecDeque<Segment>,
    pub(crate) acked_through: u64,
    cursor: Option<Cursor>,
    pub(crate) last_seq: u64,
    pub(crate) unacked: u64,
    writer: Option<File>,
    next_seg: u64,
    /// Highest tamper-classified seq spooled.
    pub(crate) urgent_through: u64,
    /// Since when unacknowledged events wait (for the batching delay).
    pub(crate) pending_since: Option<Instant>,
    dirty: bool,
}

/// Records read for one request.
#[derive(Debug)]
pub(crate) struct Batch {
    pub(crate) boot_id: String,
    pub(crate) records: Vec<(u64, Vec<u8>)>,
    end: Cursor,
}

impl Batch {
    pub(crate) fn last_seq(&self) -> u64 {
        self.records.last().map(|r| r.0).unwrap_or(0)
    }
}

pub(crate) struct Spool {
    dir: PathBuf,
    _lock: File,
    max_bytes: u64,
    segment_max: u64,
    /// Older boots (oldest first), then the current one.
    pub(crate) old: Vec<BootSpool>,
    pub(crate) cur: BootSpool,
    pub(crate) total_bytes: u64,
    last_sync: Instant,
}

pub(crate) fn boot_dir_name(boot_id: &str) -> String {
    let safe = !boot_id.is_empty()
        && !boot_id.starts_with('.')
        && boot_id.len() <= 128
        && boot_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_');
    if safe {
        boot_id.to_owned()
    } else {
        format!("~{}", hex::encode(Sha256::digest(boot_id.as_bytes())))
    }
}

fn seg_name(id: u64) -> String {
    format!("seg-{id:08}.spl")
}

fn parse_seg_name(name: &str) -> Option<u64> {
    name.strip_prefix("seg-")?
        .strip_suffix(".spl")?
        .parse()
        .ok()
}

fn fsync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

pub(crate) fn encode_frame(seq: u64, flags: u8, json: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(9 + json.len());
    body.extend_from_slice(&seq.to_le_bytes());
    body.push(flags);
    body.extend_from_slice(json);
    let mut out = Vec::with_capacity(8 + body.len());
    // A body is at most MAX_FRAME + 9 bytes (checked by the caller), far below u32::MAX.
    out.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

enum FrameRead {
    Frame { seq: u64, json: Vec<u8>, len: u64 },
    End,
    Bad(String),
}

/// Reads one frame; `remaining` is how many bytes of the segment are left.
fn read_frame(r: &mut impl Read, remaining: u64) -> Result<FrameRead, std::io::Error> {
    if remaining == 0 {
        return Ok(FrameRead::End);
    }
    if remaining < 8 {
        return Ok(FrameRead::Bad(format!(
            "{remaining} bytes: shorter than a frame header"
        )));
    }
    let mut head = [0u8; 8];
    r.read_exact(&mut head)?;
    let [l0, l1, l2, l3, c0, c1, c2, c3] = head;
    let len = u32::from_le_bytes([l0, l1, l2, l3]) as usize;
    let crc = u32::from_le_bytes([c0, c1, c2, c3]);
    if !(9..=MAX_FRAME + 9).contains(&len) {
        return Ok(FrameRead::Bad(format!("frame length {len} out of range")));
    }
    if (len as u64) > remaining - 8 {
        return Ok(FrameRead::Bad(format!(
            "frame of {len} bytes but only {} left: torn write",
            remaining - 8
        )));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    if crc32fast::hash(&body) != crc {
        return Ok(FrameRead::Bad("checksum mismatch".to_owned()));
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&body[..8]);
    // body[8] holds the flags; only the live sender needs them (kept in memory).
    let json = body.split_off(9);
    Ok(FrameRead::Frame {
        seq: u64::from_le_bytes(seq),
        json,
        len: 8 + len as u64,
    })
}

impl Spool {
    /// Opens (creating) the spool, takes its lock, checks every frame (cutting torn ones),
    /// and starts a new boot. Returns the cuts it made, for reporting.
    pub(crate) fn open(
        dir: &Path,
        boot_id: &str,
        max_bytes: u64,
    ) -> Result<(Spool, Vec<TornCut>), SpoolError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let lock_path = dir.join("LOCK");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        // SAFETY: flock on a file descriptor we own; no memory is passed.
        let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            return Err(SpoolError::Locked(dir.to_owned()));
        }
        let mut cuts = Vec::new();
        let mut old = Vec::new();
        let entries = std::fs::read_dir(dir).map_err(io_err(dir))?;
        for e in entries {
            let e = e.map_err(io_err(dir))?;
            let path = e.path();
            if !path.is_dir() {
                continue;
            }
            if let Some(b) = BootSpool::load(&path, &mut cuts)? {
                old.push(b);
            }
        }
        old.sort_by_key(|b| (b.created_ns, b.boot_id.clone()));
        if old.iter().any(|b| b.boot_id == boot_id) {
            return Err(SpoolError::BootReused {
                dir: dir.to_owned(),
                boot_id: boot_id.to_owned(),
            });
        }
        let cur = BootSpool::new(dir.join(boot_dir_name(boot_id)), boot_id);
        let total_bytes = old
            .iter()
            .flat_map(|b| b.segments.iter())
            .map(|s| s.bytes)
            .sum();
        let spool = Spool {
            dir: dir.to_owned(),
            _lock: lock,
            max_bytes,
            // Segments small enough that acknowledged space comes back promptly.
            segment_max: (max_bytes / 8).clamp(64 << 10, 64 << 20),
            old,
            cur,
            total_bytes,
            last_sync: Instant::now(),
        };
        Ok((spool, cuts))
    }

    pub(crate) fn unacked_events(&self) -> u64 {
        self.cur.unacked + self.old.iter().map(|b| b.unacked).sum::<u64>()
    }

    /// Whether a frame with this much JSON fits, after giving back the space of the
    /// current boot's acknowledged segment if that is what it takes.
    pub(crate) fn make_room(&mut self, json_len: usize) -> bool {
        let need = FRAME_OVERHEAD + json_len as u64 + 256;
        if self.total_bytes + need > self.max_bytes && self.cur.unacked == 0 {
            match self.cur.drop_acked_segments() {
                Ok(freed) => self.total_bytes = self.total_bytes.saturating_sub(freed),
                Err(e) => tracing::error!(error = %e, "removing acknowledged spool segments"),
            }
        }
        self.total_bytes + need <= self.max_bytes
    }

    /// Appends one event of the current boot.
    pub(crate) fn append(&mut self, seq: u64, flags: u8, json: &[u8]) -> Result<(), SpoolError> {
        self.append_to(None, seq, flags, json)
    }

    /// Appends to an older boot (`Some(boot_id)`) or the current one.
    pub(crate) fn append_to(
        &mut self,
        boot: Option<&str>,
        seq: u64,
        flags: u8,
        json: &[u8],
    ) -> Result<(), SpoolError> {
        if json.len() > MAX_FRAME {
            return Err(SpoolError::TooLarge(json.len()));
        }
        if !self.make_room(json.len()) {
            return Err(SpoolError::Full {
                used: self.total_bytes,
                max: self.max_bytes,
            });
        }
        let segment_max = self.segment_max;
        let b = match boot {
            None => &mut self.cur,
            Some(id) => match self.old.iter_mut().find(|b| b.boot_id == id) {
                Some(b) => b,
                None => &mut self.cur,
            },
        };
        let added = b.append(seq, flags, json, segment_max)?;
        self.total_bytes += added;
        if flags & FLAG_URGENT != 0 || self.last_sync.elapsed().as_millis() >= 200 {
            self.sync()?;
        }
        Ok(())
    }

    /// fdatasync of everything written since the last sync.
    pub(crate) fn sync(&mut self) -> Result<(), SpoolError> {
        for b in self.old.iter_mut().chain(std::iter::once(&mut self.cur)) {
            b.sync()?;
        }
        self.last_sync = Instant::now();
        Ok(())
    }

    fn boot_mut(&mut self, boot_id: &str) -> Option<&mut BootSpool> {
        if self.cur.boot_id == boot_id {
            return Some(&mut self.cur);
        }
        self.old.iter_mut().find(|b| b.boot_id == boot_id)
    }

    /// Reads up to `max_events` / about `max_bytes` unacknowledged records of a boot.
    /// Frames found damaged while reading (the disk changed under us) are skipped to the
    /// end of their segment and returned as cuts.
    pub(crate) fn read_batch(
        &mut self,
        boot_id: &str,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<(Option<Batch>, Vec<TornCut>), SpoolError> {
        let Some(b) = self.boot_mut(boot_id) else {
            return Ok((None, Vec::new()));
        };
        b.read_batch(max_events.max(1), max_bytes)
    }

    /// The vault holds everything in `batch`: advance the cursor, free what is acked.
    pub(crate) fn ack(&mut self, batch: &Batch, send_started: Instant) -> Result<(), SpoolError> {
        let boot_id = batch.boot_id.clone();
        let Some(b) = self.boot_mut(&boot_id) else {
            return Ok(());
        };
        let freed = b.ack(batch, send_started)?;
        self.total_bytes = self.total_bytes.saturating_sub(freed);
        // An older boot fully delivered: its directory goes.
        if let Some(i) = self
            .old
            .iter()
            .position(|b| b.boot_id == boot_id && b.unacked == 0)
        {
            let b = self.old.remove(i);
            let freed: u64 = b.segments.iter().map(|s| s.bytes).sum();
            self.total_bytes = self.total_bytes.saturating_sub(freed);
            std::fs::remove_dir_all(&b.dir).map_err(io_err(&b.dir))?;
            fsync_dir(&self.dir)?;
            tracing::info!(boot_id = %b.boot_id, "spooled records of an earlier boot all delivered");
        }
        Ok(())
    }
}

impl BootSpool {
    fn new(dir: PathBuf, boot_id: &str) -> Self {
        BootSpool {
            boot_id: boot_id.to_owned(),
            dir,
            created_ns: crate::vault::now_ns(),
            segments: VecDeque::new(),
            acked_through: 0,
            cursor: None,
            last_seq: 0,
            unacked: 0,
            writer: None,
            next_seg: 1,
            urgent_through: 0,
            pending_since: None,
            dirty: false,
        }
    }

    /// Loads one boot directory of an earlier run; `None` when it holds nothing.
    fn load(dir: &Path, cuts: &mut Vec<TornCut>) -> Result<Option<BootSpool>, SpoolError> {
        let mut ids = Vec::new();
        for e in std::fs::read_dir(dir).map_err(io_err(dir))? {
            let e = e.map_err(io_err(dir))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") {
                // A segment or ack file that was never renamed into place.
                let _ = std::fs::remove_file(e.path());
            } else if let Some(id) = parse_seg_name(&name) {
                ids.push(id);
            }
        }
        ids.sort_unstable();
        let acked_through = read_ack(&dir.join("acked"));
        let mut boot: Option<BootSpool> = None;
        let mut last_good_seq = 0u64;
        let n = ids.len();
        for (i, id) in ids.into_iter().enumerate() {
            let path = dir.join(seg_name(id));
            let is_last = i + 1 == n;
            let mut f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(io_err(&path))?;
            let file_len = f.metadata().map_err(io_err(&path))?.len();
            let (boot_id, created_ns, header_len) = match read_header(&mut f, file_len) {
                Ok(h) => h,
                Err(reason) => {
                    // Headers are renamed into place whole, so this is damage: set it aside.
                    let aside = path.with_extension("damaged");
                    let _ = std::fs::rename(&path, &aside);
                    tracing::error!(segment = %path.display(), %reason, "spool segment header unreadable; moved aside, not sent");
                    cuts.push(TornCut {
                        boot_id: boot.as_ref().map(|b| b.boot_id.clone()).unwrap_or_default(),
                        segment: path,
                        offset: 0,
                        bytes: file_len,
                        last_good_seq,
                        at_tail: is_last,
                        reason: format!("segment header: {reason}"),
                    });
                    continue;
                }
            };
            let b = boot.get_or_insert_with(|| {
                let mut b = BootSpool::new(dir.to_owned(), &boot_id);
                b.created_ns = created_ns;
                b.acked_through = acked_through;
                b
            });
            if b.boot_id != boot_id {
                tracing::error!(segment = %path.display(), "segment of boot {boot_id:?} in the directory of {:?}; ignored", b.boot_id);
                continue;
            }
            let mut r = BufReader::new(&mut f);
            r.seek(SeekFrom::Start(header_len)).map_err(io_err(&path))?;
            let mut pos = header_len;
            let mut seg_last = 0u64;
            let mut first_unacked: Option<u64> = None;
            loop {
                match read_frame(&mut r, file_len - pos).map_err(io_err(&path))? {
                    FrameRead::End => break,
                    FrameRead::Frame { seq, len, .. } if seq > last_good_seq => {
                        if seq > b.acked_through {
                            b.unacked += 1;
                            first_unacked.get_or_insert(pos);
                        }
                        last_good_seq = seq;
                        seg_last = seq;
                        pos += len;
                    }
                    FrameRead::Frame { seq, .. } => {
                        cut(&path, &mut f_reopen(&path)?, pos, file_len)?;
                        cuts.push(TornCut {
                            boot_id: b.boot_id.clone(),
                            segment: path.clone(),
                            offset: pos,
                            bytes: file_len - pos,
                            last_good_seq,
                            at_tail: is_last,
                            reason: format!("seq {seq} not above {last_good_seq}"),
                        });
                        break;
                    }
                    FrameRead::Bad(reason) => {
                        cut(&path, &mut f_reopen(&path)?, pos, file_len)?;
                        cuts.push(TornCut {
                            boot_id: b.boot_id.clone(),
                            segment: path.clone(),
                            offset: pos,
                            bytes: file_len - pos,
                            last_good_seq,
                            at_tail: is_last,
                            reason,
                        });
                        break;
                    }
                }
            }
            if b.cursor.is_none()
                && let Some(off) = first_unacked
            {
                b.cursor = Some(Cursor {
                    seg: id,
                    offset: off,
                });
            }
            b.next_seg = id + 1;
            b.segments.push_back(Segment {
                id,
                path,
                bytes: pos,
                header_len,
                last_seq: seg_last,
            });
        }
        let Some(mut b) = boot else {
            let _ = std::fs::remove_dir_all(dir);
            return Ok(None);
        };
        b.last_seq = last_good_seq;
        if b.unacked == 0 && cuts.iter().all(|c| c.boot_id != b.boot_id) {
            std::fs::remove_dir_all(dir).map_err(io_err(dir))?;
            return Ok(None);
        }
        if b.unacked > 0 {
            // Earlier boots' records are overdue already.
            b.pending_since = Some(Instant::now());
        }
        tracing::info!(boot_id = %b.boot_id, unacked = b.unacked, acked_through = b.acked_through, "spool holds records of an earlier boot; resending");
        Ok(Some(b))
    }

    fn append(
        &mut self,
        seq: u64,
        flags: u8,
        json: &[u8],
        segment_max: u64,
    ) -> Result<u64, SpoolError> {
        if seq <= self.last_seq {
            return Err(SpoolError::OutOfOrder {
                boot_id: self.boot_id.clone(),
                seq,
                last: self.last_seq,
            });
        }
        let frame = encode_frame(seq, flags, json);
        let mut added = 0;
        let need_new = match self.segments.back() {
            None => true,
            Some(s) => s.bytes + frame.len() as u64 > segment_max && s.bytes > s.header_len,
        };
        if need_new || self.writer.is_none() {
            if need_new {
                added += self.new_segment()?;
            } else if let Some(s) = self.segments.back() {
                let f = OpenOptions::new()
                    .append(true)
                    .open(&s.path)
                    .map_err(io_err(&s.path))?;
                self.writer = Some(f);
            }
        }
        let (Some(w), Some(s)) = (self.writer.as_mut(), self.segments.back_mut()) else {
            return Err(SpoolError::Io {
                path: self.dir.clone(),
                source: std::io::Error::other("no open segment"),
            });
        };
        if let Err(e) = w.write_all(&frame) {
            // Cut a partial write back at once so the file stays a sequence of whole frames.
            let _ = w.set_len(s.bytes);
            return Err(SpoolError::Io {
                path: s.path.clone(),
                source: e,
            });
        }
        if self.cursor.is_none() || self.unacked == 0 {
            self.cursor = Some(Cursor {
                seg: s.id,
                offset: s.bytes,
            });
        }
        s.bytes += frame.len() as u64;
        s.last_seq = seq;
        added += frame.len() as u64;
        self.last_seq = seq;
        self.unacked += 1;
        self.dirty = true;
        if flags & FLAG_URGENT != 0 {
            self.urgent_through = seq;
        }
        if self.pending_since.is_none() {
            self.pending_since = Some(Instant::now());
        }
        Ok(added)
    }

    /// Creates the next segment (header written to a temp file, renamed into place).
    fn new_segment(&mut self) -> Result<u64, SpoolError> {
        let created_dir = !self.dir.exists();
        std::fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        if created_dir && let Some(parent) = self.dir.parent() {
            fsync_dir(parent)?;
        }
        let id = self.next_seg;
        let path = self.dir.join(seg_name(id));
        let tmp = self.dir.join(format!("{}.tmp", seg_name(id)));
        let header = serde_json::json!({"boot_id": self.boot_id, "created_ns": self.created_ns});
        let header = serde_json::to_vec(&header).map_err(|e| SpoolError::Io {
            path: tmp.clone(),
            source: std::io::Error::other(e),
        })?;
        let mut bytes = Vec::with_capacity(16 + header.len());
        bytes.extend_from_slice(SEG_MAGIC);
        bytes.extend_from_slice(&u32::try_from(header.len()).unwrap_or(0).to_le_bytes());
        bytes.extend_from_slice(&crc32fast::hash(&header).to_le_bytes());
        bytes.extend_from_slice(&header);
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        f.write_all(&bytes)
            .and_then(|()| f.sync_all())
            .map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
        fsync_dir(&self.dir)?;
        if let Some(w) = self.writer.take() {
            let _ = w.sync_data();
        }
        let f = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        self.writer = Some(f);
        self.next_seg = id + 1;
        let len = bytes.len() as u64;
        self.segments.push_back(Segment {
            id,
            path,
            bytes: len,
            header_len: len,
            last_seq: 0,
        });
        Ok(len)
    }

    /// With everything acknowledged: deletes the segments (the next append starts a new
    /// one). Returns the bytes freed.
    fn drop_acked_segments(&mut self) -> Result<u64, SpoolError> {
        let mut freed = 0;
        self.writer = None;
        self.dirty = false;
        self.cursor = None;
        while let Some(s) = self.segments.pop_front() {
            std::fs::remove_file(&s.path).map_err(io_err(&s.path))?;
            freed += s.bytes;
        }
        Ok(freed)
    }

    fn sync(&mut self) -> Result<(), SpoolError> {
        if self.dirty
            && let Some(w) = &self.writer
        {
            w.sync_data().map_err(io_err(&self.dir))?;
        }
        self.dirty = false;
        Ok(())
    }

    fn read_batch(
        &mut self,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<(Option<Batch>, Vec<TornCut>), SpoolError> {
        let mut cuts = Vec::new();
        let Some(mut cur) = self.cursor else {
            return Ok((None, cuts));
        };
        if self.unacked == 0 {
            return Ok((None, cuts));
        }
        let mut records = Vec::new();
        let mut bytes = 0usize;
        let mut end = cur;
        'segments: while records.len() < max_events && bytes < max_bytes {
            let Some(seg) = self.segments.iter().find(|s| s.id >= cur.seg) else {
                break;
            };
            if seg.id != cur.seg || cur.offset < seg.header_len {
                cur = Cursor {
                    seg: seg.id,
                    offset: seg.header_len,
                };
            }
            if cur.offset >= seg.bytes {
                // End of this segment: on to the next one, if any.
                if self.segments.iter().any(|s| s.id > seg.id) {
                    cur = Cursor {
                        seg: seg.id + 1,
                        offset: 0,
                    };
                    end = Cursor {
                        seg: seg.id,
                        offset: seg.bytes,
                    };
                    continue;
                }
                break;
            }
            let f = File::open(&seg.path).map_err(io_err(&seg.path))?;
            let mut r = BufReader::new(f);
            r.seek(SeekFrom::Start(cur.offset))
                .map_err(io_err(&seg.path))?;
            let mut pos = cur.offset;
            while records.len() < max_events && bytes < max_bytes {
                match read_frame(&mut r, seg.bytes - pos).map_err(io_err(&seg.path))? {
                    FrameRead::End => break,
                    FrameRead::Frame { seq, json, len, .. } => {
                        pos += len;
                        end = Cursor {
                            seg: seg.id,
                            offset: pos,
                        };
                        if seq <= self.acked_through {
                            continue;
                        }
                        bytes += json.len();
                        records.push((seq, json));
                    }
                    FrameRead::Bad(reason) => {
                        tracing::error!(segment = %seg.path.display(), offset = pos, %reason, "spool frame damaged since it was written; skipping the rest of the segment");
                        cuts.push(TornCut {
                            boot_id: self.boot_id.clone(),
                            segment: seg.path.clone(),
                            offset: pos,
                            bytes: seg.bytes - pos,
                            last_good_seq: records.last().map(|r| r.0).unwrap_or(0),
                            at_tail: false,
                            reason,
                        });
                        end = Cursor {
                            seg: seg.id,
                            offset: seg.bytes,
                        };
                        cur = end;
                        continue 'segments;
                    }
                }
            }
            cur = end;
        }
        if records.is_empty() {
            // Nothing left to read although the count says otherwise (damage skipped):
            // resynchronise the bookkeeping.
            self.cursor = Some(end);
            self.unacked = 0;
            return Ok((None, cuts));
        }
        Ok((
            Some(Batch {
                boot_id: self.boot_id.clone(),
                records,
                end,
            }),
            cuts,
        ))
    }

    /// Returns the bytes freed (segments deleted).
    fn ack(&mut self, batch: &Batch, send_started: Instant) -> Result<u64, SpoolError> {
        let last = batch.last_seq();
        self.acked_through = self.acked_through.max(last);
        self.unacked = self.unacked.saturating_sub(batch.records.len() as u64);
        self.cursor = Some(batch.end);
        self.pending_since = (self.unacked > 0).then_some(send_started);
        write_ack(&self.dir.join("acked"), self.acked_through)?;
        let mut freed = 0;
        // Segments wholly before the cursor are acknowledged.
        while let Some(s) = self.segments.front() {
            let before_cursor = s.id < batch.end.seg;
            let active = self.segments.len() == 1;
            let fully_acked_active = active
                && self.unacked == 0
                && s.id == batch.end.seg
                && batch.end.offset >= s.bytes
                && s.bytes >= ROTATE_ACKED;
            if !(before_cursor || fully_acked_active) {
                break;
            }
            if active {
                self.writer = None;
            }
            if let Some(s) = self.segments.pop_front() {
                std::fs::remove_file(&s.path).map_err(io_err(&s.path))?;
                freed += s.bytes;
            }
        }
        Ok(freed)
    }
}

fn f_reopen(path: &Path) -> Result<File, SpoolError> {
    OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_err(path))
}

/// Truncates a segment at `at` (the end of its last good frame).
fn cut(path: &Path, f: &mut File, at: u64, file_len: u64) -> Result<(), SpoolError> {
    tracing::warn!(segment = %path.display(), offset = at, bytes = file_len - at, "torn or damaged spool frame cut; it will not be sent");
    f.set_len(at)
        .and_then(|()| f.sync_all())
        .map_err(io_err(path))
}

fn read_header(f: &mut File, file_len: u64) -> Result<(String, u64, u64), String> {
    let mut fixed = [0u8; 16];
    if file_len < 16 {
        return Err(format!("{file_len} bytes: too short"));
    }
    f.read_exact(&mut fixed).map_err(|e| e.to_string())?;
    if &fixed[..8] != SEG_MAGIC {
        return Err("bad magic".to_owned());
    }
    let len = u32::from_le_bytes([fixed[8], fixed[9], fixed[10], fixed[11]]) as u64;
    let crc = u32::from_le_bytes([fixed[12], fixed[13], fixed[14], fixed[15]]);
    if len > 4096 || 16 + len > file_len {
        return Err(format!("header length {len} out of range"));
    }
    let mut header = vec![0u8; len as usize];
    f.read_exact(&mut header).map_err(|e| e.to_string())?;
    if crc32fast::hash(&header) != crc {
        return Err("header checksum mismatch".to_owned());
    }
    let v: serde_json::Value = serde_json::from_slice(&header).map_err(|e| e.to_string())?;
    let boot_id = v
        .get("boot_id")
        .and_then(|b| b.as_str())
        .ok_or("header without boot_id")?
        .to_owned();
    let created = v.get("created_ns").and_then(|c| c.as_u64()).unwrap_or(0);
    Ok((boot_id, created, 16 + len))
}

fn read_ack(path: &Path) -> u64 {
    let Ok(b) = std::fs::read(path) else {
        return 0;
    };
    if b.len() != 20 || &b[..8] != ACK_MAGIC {
        tracing::warn!(file = %path.display(), "ack cursor unreadable; records will be resent (the vault skips duplicates)");
        return 0;
    }
    let mut n = [0u8; 8];
    n.copy_from_slice(&b[8..16]);
    let crc = u32::from_le_bytes([b[16], b[17], b[18], b[19]]);
    if crc32fast::hash(&n) != crc {
        tracing::warn!(file = %path.display(), "ack cursor checksum mismatch; records will be resent");
        return 0;
    }
    u64::from_le_bytes(n)
}

fn write_ack(path: &Path, acked: u64) -> Result<(), SpoolError> {
    let mut b = Vec::with_capacity(20);
    b.extend_from_slice(ACK_MAGIC);
    b.extend_from_slice(&acked.to_le_bytes());
    b.extend_from_slice(&crc32fast::hash(&acked.to_le_bytes()).to_le_bytes());
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, &b).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn open(dir: &Path, boot: &str) -> (Spool, Vec<TornCut>) {
        Spool::open(dir, boot, 1 << 20).unwrap()
    }

    #[test]
    fn frames_round_trip_and_survive_reopen() {
        let d = tempfile::tempdir().unwrap();
        let (mut s, cuts) = open(d.path(), "b1");
        assert!(cuts.is_empty());
        for seq in 1..=5 {
            s.append(seq, 0, format!("{{\"n\":{seq}}}").as_bytes())
                .unwrap();
        }
        let (batch, _) = s.read_batch("b1", 2, 1 << 20).unwrap();
        let batch = batch.unwrap();
        assert_eq!(batch.records.len(), 2);
        s.ack(&batch, Instant::now()).unwrap();
        drop(s);
        let (s, cuts) = open(d.path(), "b2");
        assert!(cuts.is_empty());
        assert_eq!(s.old.len(), 1);
        assert_eq!(s.old[0].acked_through, 2);
        assert_eq!(s.old[0].unacked, 3);
        let mut s = s;
        let (batch, _) = s.read_batch("b1", 10, 1 << 20).unwrap();
        let seqs: Vec<u64> = batch.unwrap().records.iter().map(|r| r.0).collect();
        assert_eq!(seqs, [3, 4, 5]);
    }

    #[test]
    fn torn_tail_is_cut() {
        let d = tempfile::tempdir().unwrap();
        let (mut s, _) = open(d.path(), "b1");
        for seq in 1..=3 {
            s.append(seq, 0, b"{\"x\":1}").unwrap();
        }
        drop(s);
        let seg = d.path().join("b1").join(seg_name(1));
        let len = std::fs::metadata(&seg).unwrap().len();
        let f = OpenOptions::new().write(true).open(&seg).unwrap();
        f.set_len(len - 3).unwrap();
        let (mut s, cuts) = open(d.path(), "b2");
        assert_eq!(cuts.len(), 1);
        assert_eq!(cuts[0].last_good_seq, 2);
        assert!(cuts[0].at_tail);
        let (batch, _) = s.read_batch("b1", 10, 1 << 20).unwrap();
        let seqs: Vec<u64> = batch.unwrap().records.iter().map(|r| r.0).collect();
        assert_eq!(seqs, [1, 2]);
    }

    #[test]
    fn full_spool_refuses_and_the_lock_is_exclusive() {
        let d = tempfile::tempdir().unwrap();
        let (mut s, _) = Spool::open(d.path(), "b1", 2048).unwrap();
        let json = vec![b'x'; 400];
        let mut ok = 0;
        for seq in 1..=10 {
            match s.append(seq, 0, &json) {
                Ok(()) => ok += 1,
                Err(SpoolError::Full { .. }) => {}
                Err(e) => panic!("{e}"),
            }
        }
        assert!((1..10).contains(&ok), "{ok}");
        assert!(s.total_bytes <= 2048);
        assert!(matches!(
            Spool::open(d.path(), "b2", 2048),
            Err(SpoolError::Locked(_))
        ));
        drop(s);
        assert!(matches!(
            Spool::open(d.path(), "b1", 2048),
            Err(SpoolError::BootReused { .. })
        ));
    }

    #[test]
    fn boot_dir_names_are_safe() {
        assert_eq!(boot_dir_name("6f1c-aa"), "6f1c-aa");
        assert!(boot_dir_name("../x").starts_with('~'));
        assert!(boot_dir_name(".hidden").starts_with('~'));
        assert!(boot_dir_name("a/b").starts_with('~'));
    }
}
