//! Building records in a per-CPU scratch buffer and handing them to userspace.
//!
//! Records are larger than the 512-byte BPF stack, so each CPU gets a scratch buffer (an
//! array map indexed by CPU: per-CPU array values are capped at 32 KiB). A record is the
//! fixed struct at the start of the buffer followed by its tail; `bpf_ringbuf_output`
//! copies exactly the used length into the ring buffer.
//!
//! Full-queue policy: when the ring buffer has no room the record is dropped *and
//! counted* in the per-CPU [`LOSS`] counter, which the daemon turns into `loss` events.

use core::mem::size_of;

use auditor_common::{
    ABI_VERSION, Header, LossCounter,
    limits::{TAIL_BUF, TAIL_WINDOW},
    loss_slot,
};
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_ktime_get_boot_ns},
    macros::map,
    maps::{Array, PerCpuArray, RingBuf},
};

/// Room for the largest fixed struct; tails start right after their struct.
pub const HEAD_MAX: usize = 256;
pub const SCRATCH_SIZE: usize = HEAD_MAX + TAIL_BUF;
/// Mask keeping a tail offset inside the window (for the verifier).
pub const TAIL_MASK: u64 = (TAIL_WINDOW as u64) - 1;

#[repr(C, align(8))]
pub struct Scratch {
    pub bytes: [u8; SCRATCH_SIZE],
}

/// The kernel -> user channel. Its size is set by the loader from the configuration.
#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(8 << 20, 0);

/// Records lost, per CPU and per reason ([`loss_slot`]): a full ring buffer, a failed
/// hand-off from a file hook to the shared body.
#[map(name = "LOSS")]
static LOSS: PerCpuArray<LossCounter> = PerCpuArray::with_max_entries(loss_slot::COUNT, 0);

/// One scratch buffer per possible CPU; the loader sets `max_entries` to the CPU count.
#[map(name = "SCRATCH")]
static SCRATCH: Array<Scratch> = Array::with_max_entries(1, 0);

/// Slot 0 is 1 while the reader sleeps on an empty ring (it sets it after a quiet poll
/// interval): the next record forces a wakeup and clears it, so the first record after
/// a quiet spell reaches the reader at once, and an idle agent needs no fast polling.
#[map(name = "READER_IDLE")]
static READER_IDLE: Array<u32> = Array::with_max_entries(1, 0);

/// One u64 per CPU to pass values through, see [`launder`].
#[map(name = "LAUNDER")]
static LAUNDER: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Returns `v` unchanged, but as a value the verifier does not know: it is stored in a
/// map and read back. After a bounded loop the exact byte count it produced is
/// irrelevant to safety (every later use is masked), yet the verifier would otherwise
/// explore everything after the loop once per possible count, multiplying states until
/// it gives up (two path walks in one program exceeded the 1M-instruction budget).
#[inline(always)]
pub fn launder(v: u64) -> u64 {
    match LAUNDER.get_ptr_mut(0) {
        Some(p) => {
            // SAFETY: per-CPU value owned by this CPU for the program's duration.
            unsafe {
                core::ptr::write_volatile(p, v);
                core::ptr::read_volatile(p)
            }
        }
        None => v,
    }
}

/// This CPU's scratch buffer. Loop callbacks (`bpf_loop`) look it up again rather than
/// receive a pointer through their context: simpler for the verifier, and the CPU cannot
/// change while a program runs.
#[inline(always)]
pub fn scratch_base() -> Option<*mut u8> {
    // SAFETY: helper without preconditions.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    SCRATCH.get_ptr_mut(cpu).map(|p| p.cast::<u8>())
}

/// Tail offset `off` of a record of type `T` whose buffer starts at `base`. The mask
/// proves to the verifier that a write of at most `TAIL_SLACK` bytes stays inside.
#[inline(always)]
pub fn tail_ptr<T>(base: *mut u8, off: u64) -> *mut u8 {
    // SAFETY: size_of::<T>() <= HEAD_MAX, and HEAD_MAX + TAIL_MASK + TAIL_SLACK <= SCRATCH_SIZE.
    unsafe { base.add(size_of::<T>() + (off & TAIL_MASK) as usize) }
}

/// `bpf_ringbuf_query` flag: bytes not yet consumed.
const BPF_RB_AVAIL_DATA: u64 = 0;
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
/// The reader is woken when the waiting data crosses a multiple of this (a power of two);
/// below it, its 5 ms poll collects the records (or, when it is idle, the wakeup
/// `READER_IDLE` asks for). A wakeup per record cost a context
/// switch per event under a storm.
const WAKE_BYTES: u64 = 256 << 10;

/// A record being built in this CPU's scratch buffer. `T` is its fixed struct.
pub struct Record<T> {
    base: *mut u8,
    /// Bytes used in the tail so far.
    pub tail_len: u64,
    _t: core::marker::PhantomData<T>,
}

impl<T> Record<T> {
    /// Takes this CPU's scratch buffer and fills the header. Counts a loss and returns
    /// `None` if there is no buffer (a loader bug: max_entries below the CPU count).
    #[inline(always)]
    pub fn start(kind: u16) -> Option<Self> {
        const { assert!(size_of::<T>() <= HEAD_MAX) };
        // SAFETY: helpers without preconditions.
        let (cpu, pid_tgid, now) = unsafe {
            (
                bpf_get_smp_processor_id(),
                bpf_get_current_pid_tgid(),
                bpf_ktime_get_boot_ns(),
            )
        };
        let Some(base) = scratch_base() else {
            count_loss(0);
            return None;
        };
        let header = Header {
            kind,
            abi: ABI_VERSION,
            len: 0,
            boot_ns: now,
            pid: (pid_tgid >> 32) as u32,
            tid: pid_tgid as u32,
            cpu,
            _pad: 0,
        };
        // SAFETY: the buffer is at least HEAD_MAX bytes and 8-aligned; every record struct
        // starts with a Header.
        unsafe { base.cast::<Header>().write(header) };
        Some(Self {
            base,
            tail_len: 0,
            _t: core::marker::PhantomData,
        })
    }

    /// Picks up a record a previous program (before a tail call) left in this CPU's
    /// scratch buffer, with `tail_len` bytes of tail already written.
    #[inline(always)]
    pub fn resume(tail_len: u64) -> Option<Self> {
        let base = scratch_base()?;
        Some(Self {
            base,
            tail_len,
            _t: core::marker::PhantomData,
        })
    }

    /// The thread id in the header (the current thread's).
    #[inline(always)]
    pub fn tid(&self) -> u32 {
        // SAFETY: the header is at the start of the buffer, written by `start`.
        unsafe { (*self.base.cast::<Header>()).tid }
    }

    /// The fixed struct (its header already filled).
    #[inline(always)]
    pub fn fixed(&mut self) -> *mut T {
        self.base.cast()
    }

    /// Where tail offset `off` lives. The mask proves to the verifier that any write of at
    /// most `TAIL_SLACK` bytes there stays inside the buffer.
    #[inline(always)]
    pub fn tail_at(&self, off: u64) -> *mut u8 {
        tail_ptr::<T>(self.base, off)
    }

    /// Where the next tail byte goes.
    #[inline(always)]
    pub fn tail_end(&self) -> *mut u8 {
        self.tail_at(self.tail_len)
    }

    /// Sets the header length and copies the record into the ring buffer; on failure
    /// the record is counted as lost.
    #[inline(always)]
    pub fn submit(self) {
        let mut total = size_of::<T>() as u64 + self.tail_len;
        if total > SCRATCH_SIZE as u64 {
            total = SCRATCH_SIZE as u64;
        }
        let wake = wake_flags(EVENTS.query(BPF_RB_AVAIL_DATA), total);
        // SAFETY: the header is at the start of the buffer; `total` <= the buffer size.
        unsafe {
            (*self.base.cast::<Header>()).len = total as u32;
            let bytes = core::slice::from_raw_parts(self.base as *const u8, total as usize);
            if EVENTS.output::<[u8]>(bytes, wake).is_err() {
                count_loss(total);
            }
        }
    }
}

/// The wakeup flag for a record of `total` bytes committed after `before` bytes that the
/// reader has not consumed yet.
#[inline(always)]
fn wake_flags(before: u64, total: u64) -> u64 {
    // Force a wakeup only for the record that carries the backlog across a multiple of
    // WAKE_BYTES, not for every record while WAKE_BYTES or more wait. A forced wakeup
    // is an irq_work, i.e. a self-IPI: in a VM an APIC write that exits to the
    // hypervisor, measured at ~3 µs per record on the 2-core test VMs. When the reader
    // falls behind (its sink blocks) the backlog stays above the threshold for the
    // whole burst, and every record of every hook paid that (the ~3.3 µs "mean cost"
    // of the exit hooks in docs/BENCHMARKS.md was almost all this IPI). The reader
    // drains everything each time it runs and polls every 5 ms while records keep
    // coming (an idle reader asks for a wakeup through READER_IDLE), so one wakeup
    // per WAKE_BYTES of backlog is plenty; using every multiple (not only the first)
    // also covers two CPUs racing past the first one without either seeing it.
    let mut wake = if before / WAKE_BYTES != (before + total) / WAKE_BYTES {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    // The reader sleeps: wake it for this record. Two CPUs may both see the flag
    // set and both wake it; that costs one spare wakeup, no record.
    if let Some(idle) = READER_IDLE.get_ptr_mut(0) {
        // SAFETY: a value of this map; aligned 4-byte accesses.
        unsafe {
            if core::ptr::read_volatile(idle) != 0 {
                core::ptr::write_volatile(idle, 0);
                wake = BPF_RB_FORCE_WAKEUP;
            }
        }
    }
    wake
}

/// Emits a record of fixed type `T` (no tail) straight into the ring: reserved there,
/// filled by `fill` after the header, submitted. No scratch buffer and no copy: for the
/// small records of every syscall exit. A full ring counts the record as lost.
#[inline(always)]
pub fn emit_fixed<T: 'static>(kind: u16, pid_tgid: u64, fill: impl FnOnce(*mut T)) {
    const { assert!(size_of::<T>() >= size_of::<Header>()) };
    let total = size_of::<T>() as u64;
    let Some(mut entry) = EVENTS.reserve::<T>(0) else {
        count_loss(total);
        return;
    };
    let p = entry.as_mut_ptr();
    // SAFETY: helpers without preconditions.
    let (cpu, now) = unsafe { (bpf_get_smp_processor_id(), bpf_ktime_get_boot_ns()) };
    // SAFETY: `p` is a reservation of size_of::<T>() bytes, 8-aligned; every record struct
    // starts with a Header, and `fill` writes the rest of the struct.
    unsafe {
        p.cast::<Header>().write(Header {
            kind,
            abi: ABI_VERSION,
            len: total as u32,
            boot_ns: now,
            pid: (pid_tgid >> 32) as u32,
            tid: pid_tgid as u32,
            cpu,
            _pad: 0,
        });
    }
    fill(p);
    // The reservation (with the kernel's 8-byte record header, rounded up to 8) already
    // counts in the unconsumed bytes the query reports.
    let before = EVENTS
        .query(BPF_RB_AVAIL_DATA)
        .saturating_sub((total + 8).next_multiple_of(8));
    entry.submit(wake_flags(before, total));
}

/// Counts one record lost to a full ring (`bytes` long, 0 when it was never built).
#[inline(always)]
pub(crate) fn count_loss(bytes: u64) {
    count_loss_in(loss_slot::RING, bytes);
}

/// Counts one record lost for the reason `slot` ([`loss_slot`]) names.
#[inline(always)]
pub(crate) fn count_loss_in(slot: u32, bytes: u64) {
    let Some(counter) = LOSS.get_ptr_mut(slot) else {
        return;
    };
    // SAFETY: per-CPU value owned by this CPU; helper without preconditions.
    unsafe {
        let now = bpf_ktime_get_boot_ns();
        (*counter).records += 1;
        (*counter).bytes += bytes;
        if (*counter).first_boot_ns == 0 {
            (*counter).first_boot_ns = now;
        }
        (*counter).last_boot_ns = now;
    }
}
