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

use auditor_common::limits::{NAME_MAX, PATH_BYTES_MAX, PATH_DEPTH_MAX};
use aya_ebpf::helpers::generated::{bpf_loop, bpf_probe_read_kernel_str};

use crate::{
    emit::{Record, scratch_base, tail_ptr},
    kernel::{off, read},
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

#[repr(C)]
struct WalkCtx {
    vfsmnt: u64,
    dentry: u64,
    mnt: u64,
    /// Tail offset where the blob starts, and bytes written so far.
    start: u64,
    used: u64,
    state: u32,
    _pad: u32,
}

/// Appends the path blob of `(vfsmnt, dentry)` to `rec`'s tail. Returns how the walk
/// ended and the blob's length.
#[inline(always)]
pub fn append<T>(rec: &mut Record<T>, vfsmnt: u64, dentry: u64) -> (Walk, u32) {
    let mut ctx = WalkCtx {
        vfsmnt,
        dentry,
        mnt: vfsmnt.wrapping_sub(off!(mount_mnt)),
        start: rec.tail_len,
        used: 0,
        state: STATE_RUNNING,
        _pad: 0,
    };
    // SAFETY: the callback only touches `ctx` and this CPU's scratch buffer.
    unsafe {
        bpf_loop(
            PATH_DEPTH_MAX,
            walk_step::<T> as *mut c_void,
            (&raw mut ctx).cast(),
            0,
        );
    }
    let used = ctx.used & 0xffff;
    rec.tail_len = ctx.start + used;
    let walk = match ctx.state {
        STATE_COMPLETE => Walk::Complete,
        STATE_FAULT => Walk::Fault,
        _ => Walk::Truncated, // out of depth, or of bytes
    };
    (walk, used as u32)
}

/// One step up the tree. Returns 1 to stop the loop.
#[inline(never)]
extern "C" fn walk_step<T>(_i: u64, ctx: *mut c_void) -> i64 {
    let ctx = ctx.cast::<WalkCtx>();
    // SAFETY: bpf_loop hands back the pointer `append` gave it.
    let c = unsafe { &mut *ctx };
    let stop = |c: &mut WalkCtx, state: u32| {
        c.state = state;
        1
    };
    let Ok(mnt_root) = read::<u64>(c.vfsmnt, off!(vfsmount_root)) else {
        return stop(c, STATE_FAULT);
    };
    let Ok(parent) = read::<u64>(c.dentry, off!(dentry_parent)) else {
        return stop(c, STATE_FAULT);
    };
    if c.dentry == mnt_root || c.dentry == parent {
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
        return 0;
    }
    let Ok(len) = read::<u32>(c.dentry, off!(dentry_name) + off!(qstr_len)) else {
        return stop(c, STATE_FAULT);
    };
    if c.used + len as u64 + 1 > PATH_BYTES_MAX as u64 {
        return stop(c, STATE_FULL);
    }
    let Ok(name) = read::<u64>(c.dentry, off!(dentry_name) + off!(qstr_name)) else {
        return stop(c, STATE_FAULT);
    };
    let Some(base) = scratch_base() else {
        return stop(c, STATE_FAULT);
    };
    let dst = tail_ptr::<T>(base, c.start + c.used);
    // SAFETY: dst has at least TAIL_SLACK >= NAME_MAX bytes after it.
    let n = unsafe { bpf_probe_read_kernel_str(dst.cast(), NAME_MAX, name as *const _) };
    if n <= 0 {
        return stop(c, STATE_FAULT);
    }
    c.used += n as u64;
    c.dentry = parent;
    0
}
