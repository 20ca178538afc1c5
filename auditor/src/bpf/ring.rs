//! The kernel -> user channel: the ring buffer, and the per-CPU loss counters that the
//! programs bump when a record cannot reach it.

use auditor_common::{LossCounter, loss_slot, names};
use aya::{
    Ebpf,
    maps::{Array, Map, MapData, PerCpuArray},
};

use super::ringbuf::{EventRing, RingBufError};

#[derive(Debug, thiserror::Error)]
pub enum RingError {
    #[error("the eBPF object has no map `{0}`")]
    MissingMap(&'static str),
    #[error("map `{name}`: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error("map `{0}` is not a ring buffer")]
    NotRing(&'static str),
    #[error(transparent)]
    RingBuf(#[from] RingBufError),
}

/// Takes the ring buffer out of the loaded object.
pub fn take_ring(ebpf: &mut Ebpf) -> Result<EventRing, RingError> {
    let map = ebpf
        .take_map(names::EVENTS)
        .ok_or(RingError::MissingMap(names::EVENTS))?;
    let Map::RingBuf(data) = map else {
        return Err(RingError::NotRing(names::EVENTS));
    };
    Ok(EventRing::new(data)?)
}

/// Takes map `name` out of the loaded object as the typed map `M`.
fn take_typed<M: TryFrom<Map, Error = aya::maps::MapError>>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<M, RingError> {
    let map = ebpf.take_map(name).ok_or(RingError::MissingMap(name))?;
    M::try_from(map).map_err(|source| RingError::Map { name, source })
}

/// The reader's "I sleep now" flag (`READER_IDLE`): armed, the next record the programs
/// write wakes the reader, and they disarm it.
pub struct IdleFlag {
    map: Array<MapData, u32>,
}

impl IdleFlag {
    pub fn new(ebpf: &mut Ebpf) -> Result<Self, RingError> {
        Ok(Self {
            map: take_typed(ebpf, names::READER_IDLE)?,
        })
    }

    /// Asks the programs to wake the reader for the next record. The caller drains the
    /// ring once more afterwards: a record written just before the flag was set did not
    /// see it.
    pub fn arm(&mut self) -> Result<(), RingError> {
        self.map.set(0, 1, 0).map_err(|source| RingError::Map {
            name: names::READER_IDLE,
            source,
        })
    }
}

/// Reads the kernel's per-CPU loss counters and reports what changed since last time.
pub struct LossReader {
    map: PerCpuArray<MapData, LossCounter>,
    /// Per slot of [`loss_slot`], the counters as last read.
    last: [Vec<LossCounter>; loss_slot::COUNT as usize],
}

/// The `source` of a `loss` event for each slot of [`loss_slot`].
const SOURCES: [(u32, &str); loss_slot::COUNT as usize] = [
    (loss_slot::RING, "kernel_ring_buffer"),
    (loss_slot::HANDOFF, "kernel_handoff"),
];

/// Losses newly counted since the previous poll, for one reason.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LossDelta {
    /// Why: "kernel_ring_buffer" (full) or "kernel_handoff" (a file hook could not reach
    /// the shared body).
    pub source: &'static str,
    pub records: u64,
    pub bytes: u64,
    /// Earliest and latest drop among the CPUs that dropped (boot-clock ns).
    pub first_boot_ns: u64,
    pub last_boot_ns: u64,
    /// `(cpu, records)` for each CPU that dropped.
    pub per_cpu: Vec<(u32, u64)>,
    /// Cumulative totals since load, for this reason.
    pub total_records: u64,
    pub total_bytes: u64,
}

impl LossReader {
    pub fn new(ebpf: &mut Ebpf) -> Result<Self, RingError> {
        Ok(Self {
            map: take_typed(ebpf, names::LOSS)?,
            last: Default::default(),
        })
    }

    /// Polls the counters: what was newly dropped, per reason (empty when nothing was).
    pub fn poll(&mut self) -> Result<Vec<LossDelta>, RingError> {
        let mut out = Vec::new();
        for ((slot, source), last) in SOURCES.iter().zip(self.last.iter_mut()) {
            let values = self.map.get(slot, 0).map_err(|source| RingError::Map {
                name: names::LOSS,
                source,
            })?;
            let now: Vec<LossCounter> = values.iter().copied().collect();
            if let Some(mut d) = diff(last, &now) {
                d.source = source;
                out.push(d);
            }
            *last = now;
        }
        Ok(out)
    }

    /// Records lost since load, for every reason, as of the last poll.
    pub fn total_records(&self) -> u64 {
        self.last.iter().flatten().map(|c| c.records).sum()
    }
}

/// Pure part of [`LossReader::poll`], unit-tested.
pub fn diff(before: &[LossCounter], now: &[LossCounter]) -> Option<LossDelta> {
    let mut d = LossDelta::default();
    for (cpu, c) in now.iter().enumerate() {
        let prev = before.get(cpu).copied().unwrap_or_default();
        d.total_records += c.records;
        d.total_bytes += c.bytes;
        let records = c.records.saturating_sub(prev.records);
        if records == 0 {
            continue;
        }
        d.records += records;
        d.bytes += c.bytes.saturating_sub(prev.bytes);
        // The first drop of this window on this CPU is at or after the previous `last`.
        let first = if prev.records == 0 {
            c.first_boot_ns
        } else {
            prev.last_boot_ns
        };
        if d.first_boot_ns == 0 || first < d.first_boot_ns {
            d.first_boot_ns = first;
        }
        d.last_boot_ns = d.last_boot_ns.max(c.last_boot_ns);
        d.per_cpu.push((cpu as u32, records));
    }
    (d.records > 0).then_some(d)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn c(records: u64, first: u64, last: u64) -> LossCounter {
        LossCounter {
            records,
            bytes: records * 100,
            first_boot_ns: first,
            last_boot_ns: last,
        }
    }

    #[test]
    fn reports_only_new_losses_with_their_window() {
        assert_eq!(diff(&[], &[c(0, 0, 0), c(0, 0, 0)]), None);
        let d = diff(&[], &[c(3, 10, 30), c(0, 0, 0)]).unwrap();
        assert_eq!(
            (d.records, d.bytes, d.first_boot_ns, d.last_boot_ns),
            (3, 300, 10, 30)
        );
        assert_eq!(d.per_cpu, vec![(0, 3)]);
        let d = diff(&[c(3, 10, 30), c(0, 0, 0)], &[c(3, 10, 30), c(2, 40, 50)]).unwrap();
        assert_eq!(
            (d.records, d.first_boot_ns, d.last_boot_ns, d.total_records),
            (2, 40, 50, 5)
        );
        assert_eq!(diff(&[c(3, 10, 30)], &[c(3, 10, 30)]), None);
    }

    #[test]
    fn every_loss_slot_has_its_own_source() {
        for (i, (slot, source)) in SOURCES.iter().enumerate() {
            assert_eq!(*slot as usize, i, "SOURCES is indexed like the slots");
            assert!(source.starts_with("kernel_"));
        }
        assert_eq!(SOURCES.len(), loss_slot::COUNT as usize);
        assert_ne!(SOURCES[0].1, SOURCES[1].1);
    }
}
