//! One vault record: its kinds, its frame on disk, and the commitment and chain hashes.
//!
//! A frame is `len: u32 LE | crc32: u32 LE | body[len]`. The CRC is there to tell a torn write
//! (a crash mid-append) from a valid record; integrity against a person is the job of the
//! chain, which `verify` recomputes. Decoding is total: any byte string gives either a record
//! or a [`FrameError`], never a panic.
//!
//! Body layout (all integers little-endian):
//! ```text
//!  0  version u8 (= 1)
//!  1  kind u8 (RecordKind, numbers never reused)
//!  2  flags u8 (bit 0: payload erased)
//!  3  reserved u8 (= 0)
//!  4  index u64            position in the host's chain, from 1
//! 12  received_at u64      vault clock, ns since the Unix epoch
//! 20  commitment [32]      SHA-256(domain || salt || payload)
//! 52  chain [32]           SHA-256(domain || chain[index-1] || index || kind || received_at || meta || commitment)
//! 84  meta_len u32, meta   canonical JSON, never erased (boot_id, seq)
//!     salt [32]            zeros once erased
//!     payload_len u32, payload   canonical JSON; zeros once erased (same length, so offsets hold)
//! ```

use serde_json::Value;
use sha2::{Digest, Sha256};

/// Bytes before the body: length and CRC.
pub(crate) const FRAME_HEADER: usize = 8;
/// Largest body accepted when decoding. Bigger than any request the server takes (16 MiB by
/// default, decompressed), so a valid record never hits it; a garbage length does.
pub(crate) const MAX_BODY: usize = 64 << 20;
const FIXED_BODY: usize = 88;
const BODY_VERSION: u8 = 1;
const FLAG_ERASED: u8 = 1;

const COMMITMENT_DOMAIN: &[u8] = b"auditor-vault/commitment/v1\0";
const CHAIN_DOMAIN: &[u8] = b"auditor-vault/chain/v1\0";
const GENESIS_DOMAIN: &[u8] = b"auditor-vault/genesis/v1\0";

/// What a record is. The numbers are part of the on-disk format: never reuse one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RecordKind {
    /// An event sent by an agent; the payload is the event.
    Data = 1,
    /// Sequence numbers the vault never received (`from..=to` of one boot).
    Gap = 2,
    /// A sequence number that arrived after a higher one of the same boot.
    OutOfOrder = 3,
    /// An already stored (boot_id, seq) sent again with a different event.
    Replay = 4,
    /// An enrolled host went silent past the threshold.
    AgentSilent = 5,
    /// A silent host spoke again.
    AgentResumed = 6,
    /// A heartbeat reported loss counters different from the last ones recorded.
    LossReport = 7,
    /// Payloads were erased: who, why, which records.
    Erasure = 8,
    /// The vault truncated a damaged tail on start (torn write) and quarantined the bytes.
    Recovery = 9,
}

impl RecordKind {
    pub fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            1 => Self::Data,
            2 => Self::Gap,
            3 => Self::OutOfOrder,
            4 => Self::Replay,
            5 => Self::AgentSilent,
            6 => Self::AgentResumed,
            7 => Self::LossReport,
            8 => Self::Erasure,
            9 => Self::Recovery,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Data => "data",
            Self::Gap => "gap",
            Self::OutOfOrder => "out_of_order",
            Self::Replay => "replay",
            Self::AgentSilent => "agent_silent",
            Self::AgentResumed => "agent_resumed",
            Self::LossReport => "loss_report",
            Self::Erasure => "erasure",
            Self::Recovery => "recovery",
        }
    }

    /// Kinds whose payload carries what an agent sent, and so may be erased.
    pub fn erasable(self) -> bool {
        matches!(self, Self::Data | Self::Replay)
    }
}

/// A decoded record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub kind: RecordKind,
    pub erased: bool,
    pub index: u64,
    pub received_at_ns: u64,
    pub commitment: [u8; 32],
    pub chain: [u8; 32],
    pub meta: Vec<u8>,
    pub salt: [u8; 32],
    pub payload: Vec<u8>,
}

/// Why bytes are not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame incomplete: {needed} bytes needed, {available} available")]
    Incomplete { needed: usize, available: usize },
    #[error("frame length {0} is out of range")]
    BadLength(usize),
    #[error("frame checksum mismatch (stored {stored:08x}, computed {computed:08x})")]
    Checksum { stored: u32, computed: u32 },
    #[error("frame body malformed: {0}")]
    Body(&'static str),
}

impl FrameError {
    /// True when the bytes simply stop before the frame ends: what a torn append looks like.
    pub fn is_incomplete(&self) -> bool {
        matches!(self, Self::Incomplete { .. })
    }
}

impl Record {
    /// Size of the encoded frame.
    pub fn frame_len(&self) -> usize {
        FRAME_HEADER + FIXED_BODY + self.meta.len() + 32 + 4 + self.payload.len()
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut frame = Vec::with_capacity(self.frame_len());
        self.encode_into(&mut frame);
        frame
    }

    /// Appends the frame to `out` (the body is written in place, then its length and CRC
    /// filled in before it).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let at = out.len();
        out.extend_from_slice(&[0u8; FRAME_HEADER]);
        out.push(BODY_VERSION);
        out.push(self.kind as u8);
        out.push(if self.erased { FLAG_ERASED } else { 0 });
        out.push(0);
        out.extend_from_slice(&self.index.to_le_bytes());
        out.extend_from_slice(&self.received_at_ns.to_le_bytes());
        out.extend_from_slice(&self.commitment);
        out.extend_from_slice(&self.chain);
        out.extend_from_slice(&len_u32(self.meta.len()).to_le_bytes());
        out.extend_from_slice(&self.meta);
        out.extend_from_slice(&self.salt);
        out.extend_from_slice(&len_u32(self.payload.len()).to_le_bytes());
        out.extend_from_slice(&self.payload);
        let body = &out[at + FRAME_HEADER..];
        let len = len_u32(body.len()).to_le_bytes();
        let crc = crc32fast::hash(body).to_le_bytes();
        out[at..at + 4].copy_from_slice(&len);
        out[at + 4..at + 8].copy_from_slice(&crc);
    }

    /// Decodes the frame at the start of `buf`; returns the record and the bytes it used.
    pub fn decode(buf: &[u8]) -> Result<(Record, usize), FrameError> {
        let header = buf.get(..FRAME_HEADER).ok_or(FrameError::Incomplete {
            needed: FRAME_HEADER,
            available: buf.len(),
        })?;
        let len = u32_at(header, 0) as usize;
        let stored_crc = u32_at(header, 4);
        if !(FIXED_BODY + 36..=MAX_BODY).contains(&len) {
            return Err(FrameError::BadLength(len));
        }
        let body = buf
            .get(FRAME_HEADER..FRAME_HEADER + len)
            .ok_or(FrameError::Incomplete {
                needed: FRAME_HEADER + len,
                available: buf.len(),
            })?;
        let computed = crc32fast::hash(body);
        if computed != stored_crc {
            return Err(FrameError::Checksum {
                stored: stored_crc,
                computed,
            });
        }
        let record = decode_body(body)?;
        Ok((record, FRAME_HEADER + len))
    }

    /// This record with salt and payload overwritten by zeros: same length, same commitment
    /// and chain, so the chain still verifies and offsets in the segment do not move.
    pub fn erased_copy(&self) -> Record {
        Record {
            erased: true,
            salt: [0; 32],
            payload: vec![0; self.payload.len()],
            ..self.clone()
        }
    }

    pub fn meta_json(&self) -> Option<Value> {
        serde_json::from_slice(&self.meta).ok()
    }

    pub fn payload_json(&self) -> Option<Value> {
        if self.erased {
            return None;
        }
        serde_json::from_slice(&self.payload).ok()
    }
}

fn decode_body(body: &[u8]) -> Result<Record, FrameError> {
    let mut r = Reader { buf: body, pos: 0 };
    if r.u8()? != BODY_VERSION {
        return Err(FrameError::Body("unknown record version"));
    }
    let kind = RecordKind::from_u8(r.u8()?).ok_or(FrameError::Body("unknown record kind"))?;
    let flags = r.u8()?;
    if flags & !FLAG_ERASED != 0 {
        return Err(FrameError::Body("unknown flag bits"));
    }
    if r.u8()? != 0 {
        return Err(FrameError::Body("reserved byte not zero"));
    }
    let index = r.u64()?;
    let received_at_ns = r.u64()?;
    let commitment = r.array32()?;
    let chain = r.array32()?;
    let meta_len = r.u32()? as usize;
    let meta = r.bytes(meta_len)?.to_vec();
    let salt = r.array32()?;
    let payload_len = r.u32()? as usize;
    let payload = r.bytes(payload_len)?.to_vec();
    if r.pos != body.len() {
        return Err(FrameError::Body("trailing bytes after payload"));
    }
    Ok(Record {
        kind,
        erased: flags & FLAG_ERASED != 0,
        index,
        received_at_ns,
        commitment,
        chain,
        meta,
        salt,
        payload,
    })
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or(FrameError::Body("length overflow"))?;
        let s = self
            .buf
            .get(self.pos..end)
            .ok_or(FrameError::Body("field runs past the end of the body"))?;
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, FrameError> {
        Ok(self.bytes(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, FrameError> {
        let mut a = [0; 4];
        a.copy_from_slice(self.bytes(4)?);
        Ok(u32::from_le_bytes(a))
    }
    fn u64(&mut self) -> Result<u64, FrameError> {
        let mut a = [0; 8];
        a.copy_from_slice(self.bytes(8)?);
        Ok(u64::from_le_bytes(a))
    }
    fn array32(&mut self) -> Result<[u8; 32], FrameError> {
        let mut a = [0; 32];
        a.copy_from_slice(self.bytes(32)?);
        Ok(a)
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn len_u32(n: usize) -> u32 {
    // Bodies are capped at MAX_BODY (64 MiB) long before this could truncate.
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The salted commitment to a payload.
pub fn commitment(salt: &[u8; 32], payload: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(COMMITMENT_DOMAIN);
    h.update(salt);
    h.update(payload);
    h.finalize().into()
}

/// The chain value before a host's first record: binds the chain to the host name.
pub fn genesis(host: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(GENESIS_DOMAIN);
    h.update((host.len() as u64).to_be_bytes());
    h.update(host.as_bytes());
    h.finalize().into()
}

/// chain_i from chain_{i-1} and record i's metadata and commitment (never its payload).
pub fn chain_link(
    prev: &[u8; 32],
    index: u64,
    kind: RecordKind,
    received_at_ns: u64,
    meta: &[u8],
    commitment: &[u8; 32],
) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(CHAIN_DOMAIN);
    h.update(prev);
    h.update(index.to_be_bytes());
    h.update([kind as u8]);
    h.update(received_at_ns.to_be_bytes());
    h.update((meta.len() as u64).to_be_bytes());
    h.update(meta);
    h.update(commitment);
    h.finalize().into()
}

/// Canonical JSON: object keys sorted by their bytes, no whitespace, numbers and strings as
/// serde_json writes them. Independent of serde_json's `preserve_order` feature.
pub fn canonical_json(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (k, val)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(k, out);
                out.push(b':');
                write_canonical(val, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        Value::String(s) => write_string(s, out),
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Number(n) => out.extend_from_slice(n.to_string().as_bytes()),
    }
}

fn write_string(s: &str, out: &mut Vec<u8>) {
    // Serializing a &str into a Vec cannot fail; fall back to an empty string just in case.
    match serde_json::to_vec(s) {
        Ok(b) => out.extend_from_slice(&b),
        Err(_) => out.extend_from_slice(b"\"\""),
    }
}

/// Fresh random salt.
/// `n` fresh salts from one `getrandom` call (a syscall per record was a visible cost
/// of ingesting at tens of thousands of records per second).
pub fn random_salts(n: usize) -> Result<Vec<[u8; 32]>, getrandom::Error> {
    let mut bytes = vec![0u8; n * 32];
    getrandom::fill(&mut bytes)?;
    Ok(bytes
        .chunks_exact(32)
        .map(|c| {
            let mut s = [0u8; 32];
            s.copy_from_slice(c);
            s
        })
        .collect())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn sample(index: u64) -> Record {
        let salt = [7; 32];
        let payload = canonical_json(&serde_json::json!({"kind":"exec","argv":["rm","x"]}));
        let meta = canonical_json(&serde_json::json!({"boot_id":"b","seq":index}));
        let c = commitment(&salt, &payload);
        let chain = chain_link(&genesis("h"), index, RecordKind::Data, 5, &meta, &c);
        Record {
            kind: RecordKind::Data,
            erased: false,
            index,
            received_at_ns: 5,
            commitment: c,
            chain,
            meta,
            salt,
            payload,
        }
    }

    #[test]
    fn frame_round_trips() {
        let r = sample(1);
        let bytes = r.encode();
        assert_eq!(bytes.len(), r.frame_len());
        let (back, used) = Record::decode(&bytes).unwrap();
        assert_eq!(back, r);
        assert_eq!(used, bytes.len());
    }

    #[test]
    fn every_truncation_is_incomplete_and_every_flip_is_caught() {
        let bytes = sample(3).encode();
        for n in 0..bytes.len() {
            let err = Record::decode(&bytes[..n]).unwrap_err();
            assert!(
                err.is_incomplete() || matches!(err, FrameError::BadLength(_)),
                "{n}: {err}"
            );
        }
        for i in 0..bytes.len() {
            for bit in [0x01u8, 0x80] {
                let mut b = bytes.clone();
                b[i] ^= bit;
                match Record::decode(&b) {
                    Err(_) => {}
                    Ok((r, _)) => panic!("flip at {i} accepted: {r:?}"),
                }
            }
        }
    }

    #[test]
    fn erasing_keeps_length_commitment_and_chain() {
        let r = sample(2);
        let e = r.erased_copy();
        assert_eq!(e.encode().len(), r.encode().len());
        assert_eq!(e.commitment, r.commitment);
        assert_eq!(e.chain, r.chain);
        assert!(e.payload.iter().all(|b| *b == 0));
        let (back, _) = Record::decode(&e.encode()).unwrap();
        assert!(back.erased);
        assert_eq!(back.payload_json(), None);
    }

    #[test]
    fn commitment_depends_on_salt_and_payload() {
        let a = commitment(&[1; 32], b"x");
        assert_ne!(a, commitment(&[2; 32], b"x"));
        assert_ne!(a, commitment(&[1; 32], b"y"));
        assert_eq!(a, commitment(&[1; 32], b"x"));
    }

    #[test]
    fn chain_binds_every_field() {
        let g = genesis("h");
        let base = chain_link(&g, 1, RecordKind::Data, 9, b"{}", &[3; 32]);
        assert_ne!(
            base,
            chain_link(&genesis("h2"), 1, RecordKind::Data, 9, b"{}", &[3; 32])
        );
        assert_ne!(
            base,
            chain_link(&g, 2, RecordKind::Data, 9, b"{}", &[3; 32])
        );
        assert_ne!(base, chain_link(&g, 1, RecordKind::Gap, 9, b"{}", &[3; 32]));
        assert_ne!(
            base,
            chain_link(&g, 1, RecordKind::Data, 8, b"{}", &[3; 32])
        );
        assert_ne!(
            base,
            chain_link(&g, 1, RecordKind::Data, 9, b"{ }", &[3; 32])
        );
        assert_ne!(
            base,
            chain_link(&g, 1, RecordKind::Data, 9, b"{}", &[4; 32])
        );
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_depth() {
        let a: Value =
            serde_json::from_str(r#"{"b":1,"a":{"z":[1,{"y":2,"x":3}],"c":"\u00e9"}}"#).unwrap();
        assert_eq!(
            String::from_utf8(canonical_json(&a)).unwrap(),
            r#"{"a":{"c":"é","z":[1,{"x":3,"y":2}]},"b":1}"#
        );
    }

    proptest! {
        #[test]
        fn decoding_random_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Record::decode(&bytes);
        }

        #[test]
        fn decoding_a_frame_with_a_random_corruption_never_panics_or_accepts(
            pos in 0usize..200, val in any::<u8>()
        ) {
            let good = sample(9).encode();
            let mut bytes = good.clone();
            let pos = pos % bytes.len();
            prop_assume!(bytes[pos] != val);
            bytes[pos] = val;
            prop_assert!(Record::decode(&bytes).is_err());
        }
    }
}
