//! Segment files: `DATA/hosts/<host>/seg-00000001.avs`, ... Each starts with an 8-byte magic
//! and holds frames back to back (see `record.rs`). Only the last segment of a host is ever
//! appended to; a new one starts when it passes [`SEGMENT_TARGET`] bytes.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use super::record::{FrameError, Record};

pub(crate) const MAGIC: &[u8; 8] = b"AUDVSEG1";
/// Start a new segment once the active one is this large.
pub(crate) const SEGMENT_TARGET: u64 = 64 << 20;
pub(crate) const ERASE_TMP_SUFFIX: &str = ".erase-tmp";

pub(crate) fn segment_name(n: u32) -> String {
    format!("seg-{n:08}.avs")
}

fn parse_segment_name(name: &str) -> Option<u32> {
    let digits = name.strip_prefix("seg-")?.strip_suffix(".avs")?;
    if digits.len() != 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The host's segments, in order.
pub(crate) fn list_segments(host_dir: &Path) -> io::Result<Vec<(u32, PathBuf)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(host_dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if let Some(n) = name.to_str().and_then(parse_segment_name) {
            out.push((n, entry.path()));
        }
    }
    out.sort_by_key(|(n, _)| *n);
    Ok(out)
}

/// How a segment's bytes end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Tail {
    /// Every byte belongs to a valid frame.
    Clean,
    /// The bytes from `offset` on are a frame cut short, or zeros: a torn append.
    Incomplete { offset: u64, reason: String },
    /// The last frame is complete in length but fails its checksum or decoding: a torn
    /// write that reached the disk partly, or tampering.
    BadLastFrame { offset: u64, reason: String },
    /// A frame in the middle fails: the segment is damaged from `offset` on.
    Corrupt { offset: u64, reason: String },
}

pub(crate) struct Scan {
    /// Each valid frame with its offset in the file.
    pub records: Vec<(u64, Record)>,
    pub tail: Tail,
    pub len: u64,
}

/// Parses a whole segment. Total: any bytes give a `Scan` or a header error.
pub(crate) fn scan_bytes(bytes: &[u8]) -> Result<Scan, String> {
    if bytes.get(..MAGIC.len()) != Some(MAGIC.as_slice()) {
        return Err("segment header (magic) is missing or damaged".to_owned());
    }
    let mut records = Vec::new();
    let mut pos = MAGIC.len();
    let tail = loop {
        if pos == bytes.len() {
            break Tail::Clean;
        }
        let rest = &bytes[pos..];
        match Record::decode(rest) {
            Ok((rec, used)) => {
                records.push((pos as u64, rec));
                pos += used;
            }
            Err(e) => break classify(rest, pos as u64, &e),
        }
    };
    Ok(Scan {
        records,
        tail,
        len: bytes.len() as u64,
    })
}

fn classify(rest: &[u8], offset: u64, err: &FrameError) -> Tail {
    let reason = err.to_string();
    if err.is_incomplete() || rest.iter().all(|b| *b == 0) {
        return Tail::Incomplete { offset, reason };
    }
    // A frame whose declared length reaches exactly the end of the file is the last one.
    let declared = rest
        .get(..4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize + 8);
    if declared == Some(rest.len()) {
        Tail::BadLastFrame { offset, reason }
    } else {
        Tail::Corrupt { offset, reason }
    }
}

pub(crate) fn read_segment(path: &Path) -> io::Result<Vec<u8>> {
    fs::read(path)
}

/// Creates a new segment holding only the magic, durably (file and directory fsynced).
pub(crate) fn create_segment(host_dir: &Path, n: u32) -> io::Result<(File, PathBuf)> {
    use std::io::Write;
    let path = host_dir.join(segment_name(n));
    let mut f = fs::OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&path)?;
    f.write_all(MAGIC)?;
    f.sync_all()?;
    sync_dir(host_dir)?;
    Ok((f, path))
}

pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Finishes or abandons an erase that a crash interrupted (see `erase.rs`): a complete,
/// valid `seg-N.avs.erase-tmp` of the same length as `seg-N.avs` replaces it; anything
/// else is removed.
pub(crate) fn recover_erase_tmps(host_dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(host_dir)? {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let Some(seg_name) = name.strip_suffix(ERASE_TMP_SUFFIX) else {
            continue;
        };
        let tmp = entry.path();
        let seg = host_dir.join(seg_name);
        let tmp_bytes = fs::read(&tmp)?;
        let complete = match (fs::metadata(&seg), scan_bytes(&tmp_bytes)) {
            (Ok(m), Ok(scan)) => m.len() == scan.len && scan.tail == Tail::Clean,
            _ => false,
        };
        if complete {
            tracing::warn!(segment = %seg.display(), "completing an erase interrupted by a crash");
            fs::rename(&tmp, &seg)?;
        } else {
            tracing::warn!(file = %tmp.display(), "removing the temp file of an interrupted erase");
            fs::remove_file(&tmp)?;
        }
        sync_dir(host_dir)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::vault::record::{RecordKind, chain_link, commitment, genesis};

    fn rec(i: u64) -> Vec<u8> {
        let c = commitment(&[1; 32], b"{}");
        Record {
            kind: RecordKind::Data,
            erased: false,
            index: i,
            received_at_ns: 1,
            commitment: c,
            chain: chain_link(&genesis("h"), i, RecordKind::Data, 1, b"{}", &c),
            meta: b"{}".to_vec(),
            salt: [1; 32],
            payload: b"{}".to_vec(),
        }
        .encode()
    }

    fn segment(n: u64) -> Vec<u8> {
        let mut b = MAGIC.to_vec();
        for i in 1..=n {
            b.extend(rec(i));
        }
        b
    }

    #[test]
    fn names_round_trip() {
        assert_eq!(parse_segment_name(&segment_name(42)), Some(42));
        assert_eq!(parse_segment_name("seg-1.avs"), None);
        assert_eq!(parse_segment_name("seg-00000001.avs.erase-tmp"), None);
    }

    #[test]
    fn tails_are_classified() {
        let full = segment(3);
        let s = scan_bytes(&full).unwrap();
        assert_eq!(s.records.len(), 3);
        assert_eq!(s.tail, Tail::Clean);

        let cut = &full[..full.len() - 5];
        let s = scan_bytes(cut).unwrap();
        assert_eq!(s.records.len(), 2);
        assert!(matches!(s.tail, Tail::Incomplete { .. }));

        let mut zeros = full.clone();
        zeros.extend([0u8; 40]);
        assert!(matches!(
            scan_bytes(&zeros).unwrap().tail,
            Tail::Incomplete { .. }
        ));

        let mut last = full.clone();
        let n = last.len();
        last[n - 1] ^= 1;
        assert!(matches!(
            scan_bytes(&last).unwrap().tail,
            Tail::BadLastFrame { .. }
        ));

        let mut mid = full.clone();
        mid[MAGIC.len() + 20] ^= 1;
        let s = scan_bytes(&mid).unwrap();
        assert_eq!(s.records.len(), 0);
        assert!(matches!(s.tail, Tail::Corrupt { .. }));

        assert!(scan_bytes(b"AUDVSEG0").is_err());
    }

    proptest::proptest! {
        #[test]
        fn scanning_random_bytes_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            let mut b = MAGIC.to_vec();
            b.extend(bytes);
            let _ = scan_bytes(&b);
        }
    }
}
