//! The consumer side of the kernel's BPF ring buffer, with its data pages mapped once.
//!
//! libbpf and aya map the data pages twice in a row, so that a record wrapping around the
//! end reads as one slice. `VmRSS` (what `top` and `ps` show) then counts every page of
//! the ring twice: a 16 MiB ring made the agent look 32 MiB larger than it is. Here the
//! data is mapped once, and the rare record that wraps (at most one per lap of the ring)
//! is copied into a buffer instead.
//!
//! The protocol (kernel/bpf/ringbuf.c): page 0 holds the consumer position (written by
//! us), page 1 the producer position (written by the kernel), the data starts at page 2.
//! Positions only grow; a position's place in the data is `pos & (size - 1)`. Each record
//! is an 8-byte header (`u32` length with the busy and discard bits, `u32` page offset)
//! followed by the data, padded to 8 bytes. The kernel clears the busy bit when the
//! record is complete, and reuses its space only after the consumer position moved past
//! it, which happens when the [`Record`] handed out is dropped.

use std::{
    os::fd::{AsFd, AsRawFd, RawFd},
    ptr::NonNull,
    sync::atomic::{AtomicU32, AtomicUsize, Ordering, fence},
};

use aya::maps::MapData;

const BUSY_BIT: u32 = 1 << 31;
const DISCARD_BIT: u32 = 1 << 30;
const HEADER: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum RingBufError {
    #[error("reading the ring buffer's size: {0}")]
    Info(#[from] aya::maps::MapError),
    #[error("ring buffer size {size} is not a power-of-two multiple of the page size {page}")]
    Size { size: usize, page: usize },
    #[error("mapping the ring buffer's {what}: {source}")]
    Mmap {
        what: &'static str,
        source: std::io::Error,
    },
}

/// A shared mapping of part of the ring buffer map, unmapped on drop.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn new(
        fd: RawFd,
        len: usize,
        prot: libc::c_int,
        offset: usize,
        what: &'static str,
    ) -> Result<Self, RingBufError> {
        let mmap_err = |source| RingBufError::Mmap { what, source };
        let offset = libc::off_t::try_from(offset)
            .map_err(|_| mmap_err(std::io::Error::other("offset out of range")))?;
        // SAFETY: a fresh shared mapping of the map's fd; the kernel checks length,
        // offset and protection against the ring buffer's layout.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                fd,
                offset,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(mmap_err(std::io::Error::last_os_error()));
        }
        let ptr = NonNull::new(p.cast::<u8>())
            .ok_or_else(|| mmap_err(std::io::Error::other("mmap returned NULL")))?;
        Ok(Mapping { ptr, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped; no reference into it outlives
        // the owning `EventRing` (records borrow the ring).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// The ring buffer map, mapped for reading: consumer page read-write, producer page and
/// data (once) read-only.
pub struct EventRing {
    cursor: Cursor,
    _consumer: Mapping,
    _data: Mapping,
    map: MapData,
}

// SAFETY: the mappings are owned by the ring and only read or written through `&mut self`
// (the consumer position) or borrows of it; nothing in them is tied to a thread.
unsafe impl Send for EventRing {}

impl EventRing {
    /// Maps the ring buffer `map` (a `BPF_MAP_TYPE_RINGBUF`).
    pub fn new(map: MapData) -> Result<Self, RingBufError> {
        let size = map.info()?.max_entries() as usize;
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        if !size.is_power_of_two() || size < page {
            return Err(RingBufError::Size { size, page });
        }
        let fd = map.fd().as_fd().as_raw_fd();
        let consumer = Mapping::new(
            fd,
            page,
            libc::PROT_READ | libc::PROT_WRITE,
            0,
            "consumer page",
        )?;
        let data = Mapping::new(fd, page + size, libc::PROT_READ, page, "data pages")?;
        // SAFETY: the consumer position is the first word of the consumer page and the
        // producer position the first of the page mapped at `data`; the data follows that
        // page and is `size` bytes long. All stay mapped as long as the cursor lives.
        let cursor = unsafe {
            Cursor::new(
                consumer.ptr.as_ptr().cast(),
                data.ptr.as_ptr().cast(),
                data.ptr.as_ptr().add(page),
                size,
            )
        };
        Ok(EventRing {
            cursor,
            _consumer: consumer,
            _data: data,
            map,
        })
    }

    /// The next complete record, or `None` when none is ready (wait for the fd to become
    /// readable). The record's space is released to the kernel when it is dropped.
    #[allow(clippy::should_implement_trait)] // items borrow the ring: not an Iterator
    pub fn next(&mut self) -> Option<Record<'_>> {
        self.cursor.next()
    }

    /// True when the last `next` found nothing because the record at the head was still
    /// being written. Its producer's commit wakes the reader only if it saw the reader
    /// idle (records are otherwise committed with `BPF_RB_NO_WAKEUP`), so the caller must
    /// look again soon rather than sleep as if the ring were empty.
    pub fn record_in_progress(&self) -> bool {
        self.cursor.stopped_at_busy
    }

    /// Releases every record consumed so far to the kernel now (records are otherwise
    /// released in batches, see [`PUBLISH_BYTES`]): for a reader that stops before the
    /// ring is empty.
    pub fn publish(&mut self) {
        self.cursor.position.publish();
    }
}

impl Drop for EventRing {
    fn drop(&mut self) {
        // A ring reused after us (a reload) starts where this consumer stopped.
        self.cursor.position.publish();
    }
}

impl AsRawFd for EventRing {
    fn as_raw_fd(&self) -> RawFd {
        self.map.fd().as_fd().as_raw_fd()
    }
}

/// One record's bytes, borrowed from the ring (or from the copy of a record that wrapped).
pub struct Record<'a> {
    data: &'a [u8],
    position: &'a mut Position,
}

impl std::ops::Deref for Record<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.data
    }
}

impl Drop for Record<'_> {
    fn drop(&mut self) {
        self.position.consume(self.data.len());
    }
}

/// Consumed bytes are published to the kernel at least this often (and whenever the
/// reader catches up with the producer or stops reading), not after every record. The
/// consumer position shares a cache line with nothing, but each store to it takes that
/// line from the producing CPU, whose next reserve (and `bpf_ringbuf_query`) then waits
/// for it: published per record, under a storm the line crossed cores once per record
/// (perf, file storm: `bpf_ringbuf_query` 10 % of the programs' time with the reader
/// running, under 1 % with it stopped). A later publication only makes the kernel see
/// less free space, for at most this many bytes (the ring is 8 MiB by default).
const PUBLISH_BYTES: usize = 32 << 10;

/// Where the consumer is, and the page it publishes that to.
struct Position {
    shared: *const AtomicUsize,
    pos: usize,
    /// The position the kernel last saw from us.
    published: usize,
    /// Set after publishing a new position: before concluding the ring is empty (or a
    /// record still busy), a full fence makes sure that either we see the producer's
    /// newer position or it sees ours and sends a wakeup (the kernel's side of this is a
    /// full barrier too). Same pairing as libbpf's and aya's consumers.
    needs_wakeup: bool,
}

impl Position {
    fn consume(&mut self, len: usize) {
        self.pos = self.pos.wrapping_add((HEADER + len).next_multiple_of(8));
        if self.pos.wrapping_sub(self.published) >= PUBLISH_BYTES {
            self.publish();
        }
    }

    /// Tells the kernel everything consumed so far may be reused.
    fn publish(&mut self) {
        if self.pos == self.published {
            return;
        }
        // SAFETY: `shared` points at the mapped consumer position (see `Cursor::new`).
        // Release: the kernel may reuse the records' space once it sees this.
        unsafe { &*self.shared }.store(self.pos, Ordering::Release);
        self.published = self.pos;
        self.needs_wakeup = true;
    }

    /// Publishes what is consumed, then makes the fence owed after publishing (see
    /// `needs_wakeup`); true if there was one to make, i.e. the ring is worth looking at
    /// again.
    fn settle(&mut self) -> bool {
        self.publish();
        if !self.needs_wakeup {
            return false;
        }
        fence(Ordering::SeqCst);
        self.needs_wakeup = false;
        true
    }
}

/// The protocol, on raw pointers so that tests can run it on plain memory.
struct Cursor {
    position: Position,
    producer: *const AtomicUsize,
    data: *const u8,
    mask: usize,
    producer_cache: usize,
    /// A record that wraps around the end of the data, copied contiguous.
    wrapped: Vec<u8>,
    /// The last `next` returned `None` at a record still being written.
    stopped_at_busy: bool,
}

impl Cursor {
    /// # Safety
    /// `consumer` and `producer` point at the positions and `data` at `size` bytes of ring
    /// data (`size` a power of two), all valid, aligned and mapped for as long as the
    /// cursor lives, with the ring protocol's writers on the other side.
    unsafe fn new(
        consumer: *const AtomicUsize,
        producer: *const AtomicUsize,
        data: *const u8,
        size: usize,
    ) -> Self {
        // SAFETY: as the caller promised. A ring used before (a reload) starts where its
        // consumer stopped.
        let (pos, producer_cache) = unsafe {
            (
                (*consumer).load(Ordering::Acquire),
                (*producer).load(Ordering::Acquire),
            )
        };
        Cursor {
            position: Position {
                shared: consumer,
                pos,
                published: pos,
                needs_wakeup: false,
            },
            producer,
            data,
            mask: size - 1,
            producer_cache,
            wrapped: Vec::new(),
            stopped_at_busy: false,
        }
    }

    fn next(&mut self) -> Option<Record<'_>> {
        self.stopped_at_busy = false;
        loop {
            let p = &mut self.position;
            if p.pos == self.producer_cache {
                p.settle();
                // SAFETY: `producer` is the mapped producer position. Acquire pairs with
                // the kernel's release store, after the record headers it covers.
                self.producer_cache = unsafe { &*self.producer }.load(Ordering::Acquire);
                if p.pos == self.producer_cache {
                    return None;
                }
            }
            let size = self.mask + 1;
            let at = p.pos & self.mask;
            // SAFETY: `at` is 8-aligned (every record is padded to 8) and below `size`, so
            // the 4-byte header lies inside the data. Acquire pairs with the kernel's
            // ordered clearing of the busy bit: the data is complete when we see it clear.
            let header = unsafe { &*self.data.add(at).cast::<AtomicU32>() }.load(Ordering::Acquire);
            if header & BUSY_BIT != 0 {
                if !p.settle() {
                    // Its commit may not wake us: see `EventRing::record_in_progress`.
                    self.stopped_at_busy = true;
                    return None;
                }
                continue; // look again, now that the producer sees our position
            }
            // The kernel never writes a longer record than fits; the clamp keeps a broken
            // header from reading outside the data (the decoder reports the mismatch).
            let len = ((header & !(BUSY_BIT | DISCARD_BIT)) as usize).min(size - HEADER);
            if header & DISCARD_BIT != 0 {
                p.consume(len);
                continue;
            }
            let from = (at + HEADER) & self.mask;
            let data = if from + len <= size {
                // SAFETY: inside the data; the kernel leaves these bytes alone until the
                // consumer position passes them, i.e. until the record is dropped.
                unsafe { std::slice::from_raw_parts(self.data.add(from), len) }
            } else {
                let first = size - from;
                self.wrapped.clear();
                // SAFETY: the record's two pieces: the end of the data, then its start.
                unsafe {
                    self.wrapped
                        .extend_from_slice(std::slice::from_raw_parts(self.data.add(from), first));
                    self.wrapped
                        .extend_from_slice(std::slice::from_raw_parts(self.data, len - first));
                }
                &self.wrapped
            };
            return Some(Record {
                data,
                position: &mut self.position,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const SIZE: usize = 64;

    /// A ring in plain memory with a producer that writes records as the kernel does
    /// (through a raw pointer, as the kernel's writes are invisible to Rust's borrows).
    struct FakeRing {
        consumer: Box<AtomicUsize>,
        producer: Box<AtomicUsize>,
        data: *mut u8,
    }

    impl Drop for FakeRing {
        fn drop(&mut self) {
            // SAFETY: allocated by `new` as a boxed array of this type.
            drop(unsafe { Box::from_raw(self.data.cast::<[u64; SIZE / 8]>()) });
        }
    }

    impl FakeRing {
        fn new(start: usize) -> Self {
            FakeRing {
                consumer: Box::new(AtomicUsize::new(start)),
                producer: Box::new(AtomicUsize::new(start)),
                data: Box::into_raw(Box::new([0u64; SIZE / 8])).cast(),
            }
        }

        fn cursor(&self) -> Cursor {
            // SAFETY: the ring outlives the cursor in every test.
            unsafe { Cursor::new(&*self.consumer, &*self.producer, self.data, SIZE) }
        }

        fn write(&mut self, at: usize, bytes: &[u8]) {
            for (i, b) in bytes.iter().enumerate() {
                // SAFETY: wrapped into the SIZE-byte allocation.
                unsafe { self.data.add((at + i) % SIZE).write(*b) };
            }
        }

        /// Writes a record at the producer position with header flags `bits`; returns
        /// where its header is.
        fn produce(&mut self, payload: &[u8], bits: u32) -> usize {
            let pos = self.producer.load(Ordering::Relaxed);
            let at = pos % SIZE;
            self.write(at, &(payload.len() as u32 | bits).to_le_bytes());
            self.write(at + HEADER, payload);
            let next = pos + (HEADER + payload.len()).next_multiple_of(8);
            self.producer.store(next, Ordering::Release);
            at
        }

        fn commit(&mut self, at: usize, len: u32) {
            self.write(at, &len.to_le_bytes());
        }
    }

    #[test]
    fn reads_records_in_order_and_releases_them() {
        let mut ring = FakeRing::new(0);
        ring.produce(b"first", 0);
        ring.produce(b"second record", 0);
        let mut c = ring.cursor();
        assert_eq!(&*c.next().unwrap(), b"first");
        assert_eq!(&*c.next().unwrap(), b"second record");
        assert_eq!(
            ring.consumer.load(Ordering::Relaxed),
            0,
            "released in batches, not per record"
        );
        assert!(c.next().is_none());
        assert_eq!(
            ring.consumer.load(Ordering::Relaxed),
            40,
            "all released once the reader caught up"
        );
    }

    #[test]
    fn consumed_bytes_are_released_at_least_every_publish_bytes() {
        let shared = AtomicUsize::new(0);
        let mut p = Position {
            shared: &shared,
            pos: 0,
            published: 0,
            needs_wakeup: false,
        };
        let record = 248; // 256 bytes with its header
        let mut highest_lag = 0;
        for _ in 0..1000 {
            p.consume(record);
            let lag = p.pos - shared.load(Ordering::Relaxed);
            highest_lag = highest_lag.max(lag);
        }
        assert!(highest_lag < PUBLISH_BYTES, "lag {highest_lag}");
        assert!(shared.load(Ordering::Relaxed) > 0);
        p.publish();
        assert_eq!(shared.load(Ordering::Relaxed), 1000 * 256);
        assert!(p.settle(), "a fence is owed after publishing");
        assert!(!p.settle());
    }

    #[test]
    fn a_record_wrapping_the_end_comes_out_whole() {
        // Start 16 bytes before the end: the header fits, the payload wraps.
        let mut ring = FakeRing::new(SIZE - 16 + 10 * SIZE);
        ring.produce(b"0123456789abcdef", 0);
        ring.produce(b"next", 0);
        let mut c = ring.cursor();
        assert_eq!(&*c.next().unwrap(), b"0123456789abcdef");
        assert_eq!(&*c.next().unwrap(), b"next");
        assert!(c.next().is_none());
        // A header in the last 8 bytes: the payload starts at the beginning.
        let mut ring = FakeRing::new(SIZE - 8);
        ring.produce(b"abc", 0);
        let mut c = ring.cursor();
        assert_eq!(&*c.next().unwrap(), b"abc");
    }

    #[test]
    fn discarded_records_are_skipped_and_busy_ones_wait() {
        let mut ring = FakeRing::new(0);
        ring.produce(b"dropped", DISCARD_BIT);
        let busy = ring.produce(b"pending", BUSY_BIT);
        let mut c = ring.cursor();
        assert!(c.next().is_none(), "a busy record is not handed out");
        assert!(c.stopped_at_busy, "and the caller is told one is coming");
        assert_eq!(
            ring.consumer.load(Ordering::Relaxed),
            16,
            "the discard was released"
        );
        ring.commit(busy, 7);
        assert_eq!(&*c.next().unwrap(), b"pending");
        assert!(!c.stopped_at_busy);
        assert!(c.next().is_none());
        assert!(
            !c.stopped_at_busy,
            "an empty ring is not a record in progress"
        );
    }

    #[test]
    fn a_header_claiming_more_than_the_ring_is_clamped() {
        let mut ring = FakeRing::new(0);
        ring.write(0, &1000u32.to_le_bytes());
        ring.producer.store(SIZE, Ordering::Release);
        let mut c = ring.cursor();
        assert_eq!(c.next().unwrap().len(), SIZE - HEADER);
    }
}
