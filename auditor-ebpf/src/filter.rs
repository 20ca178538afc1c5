//! In-kernel scope filter for file events: only operations on watched trees reach
//! userspace, so file churn elsewhere costs one early return.
//!
//! Two tests, because at syscall entry the kernel has not resolved the name yet:
//! - an absolute name is compared with the watched prefixes (`WATCH_PREFIXES`, written by
//!   the loader: each watched tree and every other mountpoint of the same directories,
//!   so bind mounts are covered), only those whose first eight bytes its own agree
//!   with (`WATCH_HEADS`): none, for most other names;
//! - a relative name is resolved against its base directory, whose dentry walk
//!   (`path.rs`) checks every ancestor's (device, inode) against `WATCH_INODES`.

use core::ffi::c_void;

use auditor_common::{
    InodeKey, PrefixHeads, WatchPrefix,
    limits::{PREFIX_HEADS, PREFIX_LEN_MAX, WATCH_INODES_MAX, WATCH_PREFIXES_MAX},
    watch_mode,
};
use aya_ebpf::{
    helpers::generated::bpf_loop,
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
};

use crate::{
    emit::{scratch_base, tail_ptr},
    kernel::{off, read},
};

#[map(name = "WATCH_PREFIXES")]
static WATCH_PREFIXES: Array<WatchPrefix> = Array::with_max_entries(WATCH_PREFIXES_MAX, 0);

/// Slot 0: how many `WATCH_PREFIXES` entries are valid. A map rather than a load-time
/// constant, so that a reload can change the watch list while the programs run.
#[map(name = "WATCH_COUNT")]
static WATCH_COUNT: Array<u32> = Array::with_max_entries(1, 0);

/// Slot 0: the prefixes' first words and runs, for [`head_run`].
#[map(name = "WATCH_HEADS")]
static WATCH_HEADS: Array<PrefixHeads> = Array::with_max_entries(1, 0);

#[map(name = "WATCH_INODES")]
static WATCH_INODES: HashMap<InodeKey, u8> = HashMap::with_max_entries(WATCH_INODES_MAX, 0);

/// The watch mode of the directory whose inode is `inode` on device `dev` (0 if not
/// watched). The path walk reads the device once per mount, from the mount's superblock
/// (`path::mount_root_dev`): every dentry reached through `d_parent` within a mount has
/// that superblock, so reading `i_sb->s_dev` per component was always the same value.
#[inline(always)]
pub fn inode_mode(inode: u64, dev: u64) -> u8 {
    if dev == DEV_UNKNOWN {
        return 0;
    }
    let Ok(ino) = read::<u64>(inode, off!(inode_ino)) else {
        return 0;
    };
    let key = InodeKey {
        dev: dev as u32,
        _pad: 0,
        ino,
    };
    // SAFETY: read-only lookup; the value is a plain byte.
    unsafe { WATCH_INODES.get(key).copied().unwrap_or(0) }
}

/// A device that could not be read (no `dev_t` is this wide).
pub const DEV_UNKNOWN: u64 = u64::MAX;

/// The loops' states, in this CPU's slots of maps rather than on the stack: values the
/// verifier does not track, so a callback's iterations are all one state (see
/// `path::WALK`; with the compare loop's state on the stack, its refinements of the
/// name's length made the file body cost the verifier 242,000 instructions).
#[map(name = "PREFIX_CTX")]
static PREFIX_CTX: PerCpuArray<PrefixCtx> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "SLASH_CTX")]
static SLASH_CTX: PerCpuArray<SlashCtx> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "DOTS_CTX")]
static DOTS_CTX: PerCpuArray<DotsCtx> = PerCpuArray::with_max_entries(1, 0);

#[repr(C)]
struct PrefixCtx {
    /// Tail offset and length of the name in the record of type `T`.
    name_off: u64,
    name_len: u64,
    /// Longest `ENTRIES` prefix the name starts with (0: none), and its `lead` and
    /// `entry_max << 8`.
    entries_len: u64,
    entry_rule: u64,
    /// The first prefix of the run compared.
    start: u64,
    matched: u32,
    _pad: u32,
}

/// True if the absolute name at tail offset `name_off` (`name_len` bytes) of a record of
/// type `T` lies in a watched tree.
///
/// The prefixes are compared first; only when the name is a possible history file of an
/// `ENTRIES` prefix (a directory holding history files: the entry's first byte and
/// length fit) and no tree matched is the entry scanned for a '/': that scan costs a
/// callback per byte, and most names never need it.
#[inline(always)]
pub fn prefix_match<T>(name_off: u64, name_len: u64) -> bool {
    let count = WATCH_COUNT.get(0).copied().unwrap_or(0);
    let count = if count > WATCH_PREFIXES_MAX {
        WATCH_PREFIXES_MAX
    } else {
        count
    };
    let (start, len) = head_run::<T>(name_off, count);
    if len == 0 {
        return false;
    }
    let Some(pc) = PREFIX_CTX.get_ptr_mut(0) else {
        return true; // never: let userspace decide rather than miss a watched path
    };
    // SAFETY: this CPU's value of a per-CPU map, sized for PrefixCtx; the callback only
    // reads it, the prefix map and this CPU's scratch buffer, and writes it.
    let c = unsafe {
        pc.write(PrefixCtx {
            name_off,
            name_len,
            entries_len: 0,
            entry_rule: 0,
            start: u64::from(start),
            matched: 0,
            _pad: 0,
        });
        bpf_loop(
            len & 0xff,
            prefix_step::<T> as *mut c_void,
            core::ptr::null_mut(),
            0,
        );
        pc.read()
    };
    if c.matched != 0 {
        return true;
    }
    let entries_len = c.entries_len;
    if entries_len == 0 {
        return false;
    }
    // A possible history file of that directory: right after the '/' that ends the
    // prefix ("/" ends in its own), starting with the byte they all start with, no
    // longer than the longest, and with no '/' in it.
    let Some(base) = scratch_base() else {
        return false;
    };
    let rule = c.entry_rule;
    let (lead, entry_max) = (rule & 0xff, (rule >> 8) & 0xff);
    let from = if entries_len == 1 { 1 } else { entries_len + 1 };
    // SAFETY: a masked tail offset has TAIL_SLACK after it.
    let (sep, first) = unsafe {
        (
            *tail_ptr::<T>(base, name_off + entries_len),
            *tail_ptr::<T>(base, name_off + from),
        )
    };
    let rest = name_len.saturating_sub(from);
    if (entries_len != 1 && sep != b'/')
        || rest == 0
        || (lead != 0 && u64::from(first) != lead)
        || (entry_max != 0 && rest > entry_max)
    {
        return false;
    }
    // Looked up only here: most names are decided before the entry scan.
    let Some(sc) = SLASH_CTX.get_ptr_mut(0) else {
        return true; // never: as above
    };
    // SAFETY: as above, for SlashCtx and `slash_step`.
    unsafe {
        sc.write(SlashCtx {
            name_off: name_off + from,
            found: 0,
        });
        bpf_loop(
            (rest & 0xff) as u32,
            slash_step::<T> as *mut c_void,
            core::ptr::null_mut(),
            0,
        );
        (*sc).found == 0
    }
}

/// The run of `WATCH_PREFIXES` (start, length) the name at tail offset `name_off` may lie
/// under, by its first eight bytes (`WATCH_HEADS`): length 0 for most names outside the
/// watched trees, and a run of one or two prefixes for most others. Inline and
/// branch-free. The compare loop behind it calls a `bpf_loop` callback per prefix, and
/// on these machines a call's return costs far more than its compare (the kernel's
/// return thunk, SRSO "Safe RET"): with the 21 prefixes of a machine whose 10 accounts
/// each have a home directory and a fish history directory, an unwatched unlink's entry
/// took 449 ns. Heads not written yet send the name to every prefix.
#[inline(always)]
fn head_run<T>(name_off: u64, count: u32) -> (u32, u32) {
    let (Some(h), Some(base)) = (WATCH_HEADS.get(0), scratch_base()) else {
        return (0, count);
    };
    if h.ready == 0 {
        return (0, count);
    }
    // SAFETY: a masked tail offset has TAIL_SLACK >= 8 bytes after it.
    let a = u64::from_le(unsafe {
        core::ptr::read_unaligned(tail_ptr::<T>(base, name_off).cast::<u64>())
    });
    // At most one slot matches: its run, with no branch per slot (no verifier state,
    // no misprediction).
    let mut run = 0u64;
    for i in 0..PREFIX_HEADS {
        let x = (a & h.mask[i]) ^ h.word[i];
        let eq = ((x | x.wrapping_neg()) >> 63) ^ 1;
        run |= eq.wrapping_neg() & h.range[i];
    }
    let run = crate::emit::launder(run);
    ((run & 0xff) as u32, ((run >> 8) & 0xff) as u32)
}

#[repr(C)]
struct DotsCtx {
    /// Tail offset and length of the name.
    name_off: u64,
    name_len: u64,
    /// Bit 7 set when the previous word's last byte was a '.'.
    carry: u64,
    /// 1 once two '.' in a row were seen.
    found: u64,
}

/// True if the name at tail offset `name_off` (`name_len` bytes) of a record of type `T`
/// has two dots in a row: it may climb out of the directory it starts from (`../log/x`
/// from a sibling of a watched tree, `/var/lib/../log/x`), so neither the prefixes nor
/// the base directory can rule it out. Eight bytes per step; a false positive
/// (`a..b`) only costs userspace a look.
#[inline(always)]
pub fn has_dot_dot<T>(name_off: u64, name_len: u64) -> bool {
    if name_len < 2 {
        return false;
    }
    let Some(dc) = DOTS_CTX.get_ptr_mut(0) else {
        return true; // never: let userspace decide rather than miss a watched path
    };
    // SAFETY: this CPU's value of a per-CPU map, sized for DotsCtx; the callback only
    // reads it and this CPU's scratch buffer, and writes it.
    unsafe {
        dc.write(DotsCtx {
            name_off,
            name_len,
            carry: 0,
            found: 0,
        });
        bpf_loop(
            (((name_len + 7) / 8) & 0x3ff) as u32,
            dots_step::<T> as *mut c_void,
            core::ptr::null_mut(),
            0,
        );
        (*dc).found != 0
    }
}

/// Word `i` of the name: stops when it holds two '.' in a row (or the previous word
/// ended in one and this one starts with one).
#[inline(never)]
extern "C" fn dots_step<T>(i: u64, _ctx: *mut c_void) -> i64 {
    let Some(c) = DOTS_CTX.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: this CPU's value, written by `has_dot_dot` before the loop.
    let c = unsafe { &mut *c };
    let Some(base) = scratch_base() else {
        return 1;
    };
    let at = (i & 0x3ff) * 8;
    // SAFETY: a masked tail offset has TAIL_SLACK >= 8 bytes after it.
    let w = u64::from_le(unsafe {
        core::ptr::read_unaligned(tail_ptr::<T>(base, c.name_off + at).cast::<u64>())
    });
    // Bytes past the name are stale: masked out.
    let rem = c.name_len.saturating_sub(at);
    let valid = if rem >= 8 {
        u64::MAX
    } else {
        (1u64 << (rem * 8)) - 1
    };
    // 0x80 in each byte equal to '.', exactly (no borrow between bytes).
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    let x = w ^ 0x2e2e_2e2e_2e2e_2e2e;
    let dots = !(((x & LOW7).wrapping_add(LOW7)) | x | LOW7) & valid;
    // Byte k and byte k + 1 (the next one in memory is the next higher byte).
    let pair = dots & (dots >> 8);
    // The previous word's last byte (carried to bit 7) and this word's first.
    let across = c.carry & dots & 0x80;
    if pair | across != 0 {
        c.found = 1;
        return 1;
    }
    c.carry = (dots >> 56) & 0x80;
    0
}

#[repr(C)]
struct SlashCtx {
    /// Tail offset of the entry's first byte.
    name_off: u64,
    /// 1 once a '/' was seen.
    found: u64,
}

/// Stops at byte `i` of the entry if it is a '/'.
#[inline(never)]
extern "C" fn slash_step<T>(i: u64, _ctx: *mut c_void) -> i64 {
    let Some(c) = SLASH_CTX.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: this CPU's value, written by `prefix_match` before the loop.
    let c = unsafe { &mut *c };
    let Some(base) = scratch_base() else {
        return 1;
    };
    let p = tail_ptr::<T>(base, c.name_off + (i & 0xff));
    // SAFETY: a masked tail offset has TAIL_SLACK >= 4096 bytes after it.
    if unsafe { *p } == b'/' {
        c.found = 1;
        return 1;
    }
    0
}

/// Compares the name with prefix `start + i`. Returns 1 (stop) on a match.
#[inline(never)]
extern "C" fn prefix_step<T>(i: u64, _ctx: *mut c_void) -> i64 {
    let Some(c) = PREFIX_CTX.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: this CPU's value, written by `prefix_match` before the loop.
    let c = unsafe { &mut *c };
    let Some(p) = WATCH_PREFIXES.get((c.start + i) as u32) else {
        return 1;
    };
    let plen = p.len as u64;
    if plen == 0 || plen > PREFIX_LEN_MAX as u64 || plen > c.name_len {
        return 0;
    }
    let Some(base) = scratch_base() else {
        return 1;
    };
    let name = tail_ptr::<T>(base, c.name_off);
    // Eight bytes at a time: 32 steps instead of 256 keeps the verifier's work small.
    for w in 0..PREFIX_LEN_MAX / 8 {
        let at = (w * 8) as u64;
        if at >= plen {
            break;
        }
        // SAFETY: at < PREFIX_LEN_MAX, and a masked tail offset has TAIL_SLACK after it.
        let a = unsafe { core::ptr::read_unaligned(name.add(at as usize).cast::<u64>()) };
        // One load, not eight byte loads and their shifts: `bytes` is at offset 8 of the
        // map value.
        // SAFETY: w * 8 + 8 <= PREFIX_LEN_MAX.
        let b = unsafe { core::ptr::read_unaligned(p.bytes.as_ptr().add(w * 8).cast::<u64>()) };
        let rem = plen - at;
        let mask = if rem >= 8 {
            u64::MAX
        } else {
            (1u64 << (rem * 8)) - 1
        };
        if (u64::from_le(a) ^ u64::from_le(b)) & mask != 0 {
            return 0;
        }
    }
    // "/var/log" matches "/var/log" and "/var/log/x", not "/var/logs"; "/" matches all.
    // SAFETY: as above (plen <= PREFIX_LEN_MAX).
    let next = unsafe { *name.add(plen as usize) };
    let root = plen == 1 && p.bytes[0] == b'/';
    if !(plen == c.name_len || next == b'/' || root) {
        return 0;
    }
    // ENTRIES: only a direct entry of the directory; decided after the loop. The loader
    // orders the ENTRIES prefixes of each run by length, so the last one that matches is
    // the longest.
    if p.mode == u16::from(watch_mode::ENTRIES) {
        // Whether the name is an entry of interest of this directory is decided after
        // the loop, for the longest match only (the only one that can be its parent):
        // here, no more branches, which every one of the compare loop's exits would
        // have the verifier explore.
        c.entries_len = plen;
        c.entry_rule = u64::from(p.lead) | (u64::from(p.entry_max) << 8);
        return 0;
    }
    c.matched = 1;
    1
}
