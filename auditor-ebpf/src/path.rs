//! Absolute paths from `(vfsmount, dentry)`, resolved in the kernel.
//!
//! The walk goes from the leaf up: each dentry's name is appended to the record's tail
//! (NUL-terminated), then its parent; at the root of a mount it continues from the
//! mountpoint in the parent mount (so bind mounts and mount stacking resolve to the path
//! the process actually used), and it stops at the root of the mount tree. Userspace
//! reverses the components. Both the depth and the byte budget are bounded; hitting
//! either sets the caller's truncation flag.
//!
//! The loop runs under `bpf_loop`, so the verifier checks one step once instead of
//! unrolling every iteration against every exit of the surrounding program.

use core::ffi::c_void;

use auditor_common::{
    limits::{NAME_MAX, PATH_BYTES_MAX, PATH_DEPTH_MAX},
    watch_mode,
};
use aya_ebpf::{
    helpers::generated::{bpf_loop, bpf_probe_read_kernel_str},
    macros::map,
    maps::PerCpuArray,
};

use crate::{
    emit::{Record, scratch_base, tail_ptr},
    filter,
    kernel::{self, off, read},
};

/// How a walk ended.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Walk {
    /// Reached the root: the blob is the whole path.
    Complete,
    /// Depth or byte budget exhausted: root-most components are missing.
    Truncated,
    /// A kernel read failed part-way.
    Fault,
}

const STATE_RUNNING: u32 = 0;
const STATE_COMPLETE: u32 = 1;
const STATE_FAULT: u32 = 2;
const STATE_FULL: u32 = 3;

/// The walk's state, in this CPU's slot of a map rather than on the stack. The
/// verifier tracks values on the stack: each refinement a step made to one (a non-NULL
/// check on a pointer, a branch on a flag) gave the next iteration of the callback a new
/// state to explore, and the file body exceeded the 1M-instruction budget with the
/// walk's iterations not converging. Map values are unknown to it on every load, so the
/// callback is the same state every iteration, and is checked once per call site.
#[map(name = "WALK")]
static WALK: PerCpuArray<WalkCtx> = PerCpuArray::with_max_entries(1, 0);

#[repr(C)]
struct WalkCtx {
    vfsmnt: u64,
    dentry: u64,
    mnt: u64,
    /// Tail offset where the blob starts, and bytes written so far.
    start: u64,
    used: u64,
    state: u32,
    /// File events: check each directory against the watched inodes; `in_tree` is set
    /// when one is a watched tree, `first_mode` is the start dentry's own mode and
    /// `parent_mode` its parent's (for an fd's file: the directory it is in).
    check: u32,
    in_tree: u64,
    first_mode: u64,
    parent_mode: u64,
    /// How many `d_parent` steps were taken (a mount crossing takes none: a file or
    /// directory that is a mount root is looked at again as its mountpoint).
    level: u64,
    /// The current mount's root dentry and, for `check`, its device
    /// (`filter::DEV_UNKNOWN` if unreadable): read once per mount, not per component.
    mnt_root: u64,
    dev: u64,
}

/// Appends the path blob of `(vfsmnt, dentry)` to `rec`'s tail. Returns how the walk
/// ended and the blob's length.
#[inline(always)]
pub fn append<T>(rec: &mut Record<T>, vfsmnt: u64, dentry: u64) -> (Walk, u32) {
    let (walk, len, _, _) = walk::<T>(rec, vfsmnt, dentry, false);
    (walk, len)
}

/// Like [`append`], also returning the watch modes: first that of the start dentry, `TREE`
/// if it or an ancestor (across mounts) is a watched tree, else its own
/// `ENTRIES`/`ANCESTOR` mode, else 0; then its parent's own mode (0 if none).
#[inline(always)]
pub fn append_checked<T>(rec: &mut Record<T>, vfsmnt: u64, dentry: u64) -> (Walk, u32, u8, u8) {
    walk::<T>(rec, vfsmnt, dentry, true)
}

#[inline(always)]
fn walk<T>(rec: &mut Record<T>, vfsmnt: u64, dentry: u64, check: bool) -> (Walk, u32, u8, u8) {
    let Some(c) = WALK.get_ptr_mut(0) else {
        return (Walk::Fault, 0, 0, 0);
    };
    // Read here and at each mount crossing, not in every step: a step that branched on
    // "already read?" gave the verifier two states per step to explore. An unreadable
    // root (never seen: the vfsmount comes from a live `struct path`) leaves 0, and the
    // walk then ends in a fault at the top of the mount.
    let (mnt_root, dev) = mount_root_dev(vfsmnt, check);
    // SAFETY: this CPU's value of a per-CPU map, sized for WalkCtx.
    unsafe {
        c.write(WalkCtx {
            vfsmnt,
            dentry,
            mnt: vfsmnt.wrapping_sub(off!(mount_mnt)),
            start: rec.tail_len,
            used: 0,
            state: STATE_RUNNING,
            check: check as u32,
            in_tree: 0,
            first_mode: 0,
            parent_mode: 0,
            level: 0,
            mnt_root,
            dev,
        });
    }
    // SAFETY: the callback only touches `WALK` and this CPU's scratch buffer.
    unsafe {
        bpf_loop(
            PATH_DEPTH_MAX,
            walk_step::<T> as *mut c_void,
            core::ptr::null_mut(),
            0,
        );
    }
    // SAFETY: as above; read back after the loop (map values: unknown to the verifier).
    let c = unsafe { c.read() };
    let used = c.used & 0xffff;
    rec.tail_len = c.start + used;
    let walk = match c.state {
        STATE_COMPLETE => Walk::Complete,
        STATE_FAULT => Walk::Fault,
        _ => Walk::Truncated, // out of depth, or of bytes
    };
    let mode = if c.in_tree != 0 {
        watch_mode::TREE
    } else {
        c.first_mode as u8
    };
    (walk, used as u32, mode, c.parent_mode as u8)
}

/// The root dentry of `vfsmnt` (0 if unreadable) and, when `check`, the device of its
/// superblock, which every dentry of the mount shares (`filter::DEV_UNKNOWN` if
/// unreadable, or not asked for: no lookup matches then). `mnt_root` and `mnt_sb` are
/// adjacent, so this is two helper reads where going through the dentry's inode was
/// four.
#[inline(always)]
fn mount_root_dev(vfsmnt: u64, check: bool) -> (u64, u64) {
    let (root, sb) =
        kernel::read_u64_pair(vfsmnt, off!(vfsmount_root), off!(vfsmount_sb)).unwrap_or((0, 0));
    let dev = if check {
        read::<u32>(sb, off!(sb_dev)).map_or(filter::DEV_UNKNOWN, u64::from)
    } else {
        filter::DEV_UNKNOWN
    };
    (root, dev)
}

/// One step up the tree. Returns 1 to stop the loop. `_i` is not the level: see
/// `WalkCtx::level`.
///
/// Kernel reads are the cost of a walk (each `bpf_probe_read_kernel` is a helper call), so
/// a step makes as few as it can: the dentry's fields in one read
/// (`kernel::dentry_fields`), the inode number, the name. The mount's root and device
/// are read once per mount, at the start and at each crossing.
#[inline(never)]
extern "C" fn walk_step<T>(_i: u64, _ctx: *mut c_void) -> i64 {
    let Some(c) = WALK.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: this CPU's value, written by `walk` before the loop.
    let c = unsafe { &mut *c };
    let stop = |c: &mut WalkCtx, state: u32| {
        c.state = state;
        1
    };
    let Ok(d) = kernel::dentry_fields(c.dentry) else {
        return stop(c, STATE_FAULT);
    };
    // Once a watched tree is among the ancestors, the rest of the walk only builds the
    // path: its directories' lookups (an inode read and a hash lookup each) cannot
    // change the verdict.
    if c.check != 0 && c.in_tree == 0 {
        let mode = u64::from(filter::inode_mode(d.inode, c.dev));
        // TREE is 1: bit 0 set, bit 1 clear (ENTRIES = 2, ANCESTOR = 3).
        c.in_tree |= mode & !(mode >> 1) & 1;
        // The start dentry's own mode, and its parent's, by level rather than step: a
        // mount root is looked at again as its mountpoint, one step on (a bind-mounted
        // history file's directory is two steps up). Branch-free: `x == 0` as 0 or 1.
        let is_zero = |x: u64| ((x | x.wrapping_neg()) >> 63) ^ 1;
        c.first_mode |= mode * is_zero(c.level);
        c.parent_mode |= mode * is_zero(c.level ^ 1);
    }
    if c.dentry == c.mnt_root || c.dentry == d.parent {
        // Root of this mount: continue from its mountpoint in the parent mount.
        let Ok(mnt_parent) = read::<u64>(c.mnt, off!(mount_parent)) else {
            return stop(c, STATE_FAULT);
        };
        if mnt_parent == c.mnt || mnt_parent == 0 {
            return stop(c, STATE_COMPLETE);
        }
        let Ok(mountpoint) = read::<u64>(c.mnt, off!(mount_mountpoint)) else {
            return stop(c, STATE_FAULT);
        };
        c.dentry = mountpoint;
        c.mnt = mnt_parent;
        c.vfsmnt = mnt_parent + off!(mount_mnt);
        // The mountpoint is a dentry of the parent mount: its device is that mount's.
        let (root, dev) = mount_root_dev(c.vfsmnt, c.check != 0);
        c.mnt_root = root;
        c.dev = dev;
        return 0;
    }
    let used = c.used;
    if used + d.name_len as u64 + 1 > PATH_BYTES_MAX as u64 {
        return stop(c, STATE_FULL);
    }
    let Some(base) = scratch_base() else {
        return stop(c, STATE_FAULT);
    };
    let dst = tail_ptr::<T>(base, c.start + used);
    // SAFETY: dst has at least TAIL_SLACK >= NAME_MAX bytes after it.
    let n = unsafe { bpf_probe_read_kernel_str(dst.cast(), NAME_MAX, d.name as *const _) };
    if n <= 0 {
        return stop(c, STATE_FAULT);
    }
    c.used = used + n as u64;
    c.dentry = d.parent;
    c.level += 1;
    0
}
