//! io_uring: file and network operations submitted through a ring never pass the
//! syscall tracepoints, so they get their own hook. `io_uring_submit_req` fires in the
//! submitter's context after the request was prepared: the command area of the request
//! already holds the `struct filename` of each name (a kernel copy of the user's
//! string) and the dirfds, so the same resolution as for the syscalls applies
//! (`file::file_entry`). The outcome comes from `io_uring_complete`, paired on the
//! request pointer through `IOURING_INFLIGHT`.
//!
//! Every offset (tracepoint records, `io_kiocb`, `io_unlink`, `io_rename`, `io_link`,
//! `io_open`, `io_connect`) comes from BTF and is optional: on a kernel without them the
//! programs are not attached and `agent_start` says so.

use auditor_common::{
    IoUringResultEvent, file_op, iouring_op, kind, limits::INFLIGHT_MAX, offsets::ABSENT,
};
use aya_ebpf::{
    macros::{map, tracepoint},
    maps::HashMap,
    programs::TracePointContext,
};

use crate::{
    emit::Record,
    file::{self, AT_FDCWD, NONE, Name, Ring},
    kernel::{self, off, read},
};

const O_TRUNC: u64 = 0o1000;

/// Emitted request -> its ring, until the completion.
#[map(name = "IOURING_INFLIGHT")]
static IOURING_INFLIGHT: HashMap<u64, u64> = HashMap::with_max_entries(INFLIGHT_MAX, 0);

/// Remembers an emitted request; a full table only costs its result record.
#[inline(always)]
pub(crate) fn track(req: u64, ring: u64) {
    let _ = IOURING_INFLIGHT.insert(req, ring, 0);
}

#[inline(always)]
fn field<T>(ctx: &TracePointContext, off: u64) -> Option<T> {
    if off == ABSENT as u64 {
        return None;
    }
    // SAFETY: reads inside the tracepoint record; the helper validates the address.
    unsafe { ctx.read_at::<T>(off as usize) }.ok()
}

/// A `struct filename *` member of the command area -> the kernel string.
#[inline(always)]
fn filename(cmd: u64, member: u64) -> u64 {
    if member == ABSENT as u64 || off!(filename_name) == ABSENT as u64 {
        return 0;
    }
    read::<u64>(cmd, member)
        .and_then(|f| read::<u64>(f, off!(filename_name)))
        .unwrap_or(0)
}

#[inline(always)]
fn dirfd(cmd: u64, member: u64) -> i32 {
    if member == ABSENT as u64 {
        return AT_FDCWD;
    }
    read::<i32>(cmd, member).unwrap_or(AT_FDCWD)
}

#[inline(always)]
fn kname(dirfd: i32, ptr: u64) -> Name {
    Name {
        dirfd,
        ptr,
        kernel: true,
        raw: false,
    }
}

#[tracepoint]
pub fn io_uring_submit_req(ctx: TracePointContext) -> u32 {
    if kernel::offsets_ready() {
        submit(&ctx);
    }
    0
}

#[inline(always)]
fn submit(ctx: &TracePointContext) {
    let Some(opcode) = field::<u8>(ctx, off!(tp_iou_submit_opcode)) else {
        return;
    };
    // The cheap test first: most io_uring traffic is reads and writes.
    if !matches!(
        opcode,
        iouring_op::UNLINKAT
            | iouring_op::RENAMEAT
            | iouring_op::LINKAT
            | iouring_op::SYMLINKAT
            | iouring_op::OPENAT
            | iouring_op::OPENAT2
            | iouring_op::CONNECT
    ) {
        return;
    }
    let (Some(req), Some(ring)) = (
        field::<u64>(ctx, off!(tp_iou_submit_req)),
        field::<u64>(ctx, off!(tp_iou_submit_ctx)),
    ) else {
        return;
    };
    let cmd_off = off!(iou_req_cmd);
    if req == 0 || cmd_off == ABSENT as u64 {
        return;
    }
    let cmd = req + cmd_off;
    let r = Ring { ring, req };
    if opcode == iouring_op::CONNECT {
        // The address is still in the submitter's memory (copied at issue).
        if off!(iou_connect_addr) == ABSENT as u64 {
            return;
        }
        let addr = read::<u64>(cmd, off!(iou_connect_addr)).unwrap_or(0);
        let len = if off!(iou_connect_addr_len) == ABSENT as u64 {
            0
        } else {
            read::<i32>(cmd, off!(iou_connect_addr_len)).unwrap_or(0) as u32
        };
        let fd = if off!(iou_req_fd) == ABSENT as u64 {
            -1
        } else {
            read::<i32>(req, off!(iou_req_fd)).unwrap_or(-1)
        };
        crate::net::connect_entry(fd, addr, len, r);
        return;
    }
    // One call site for the file entry: each inlined copy carries a path walk, and the
    // verifier's budget is per program.
    let (op, n1, n2, fl) = match opcode {
        iouring_op::UNLINKAT => (
            file_op::UNLINKAT,
            kname(
                dirfd(cmd, off!(iou_unlink_dfd)),
                filename(cmd, off!(iou_unlink_filename)),
            ),
            NONE,
            opt_u32(cmd, off!(iou_unlink_flags)),
        ),
        iouring_op::RENAMEAT => (
            file_op::RENAMEAT2,
            kname(
                dirfd(cmd, off!(iou_rename_old_dfd)),
                filename(cmd, off!(iou_rename_oldpath)),
            ),
            kname(
                dirfd(cmd, off!(iou_rename_new_dfd)),
                filename(cmd, off!(iou_rename_newpath)),
            ),
            opt_u32(cmd, off!(iou_rename_flags)),
        ),
        iouring_op::LINKAT | iouring_op::SYMLINKAT => {
            let symlink = opcode == iouring_op::SYMLINKAT;
            let mut n1 = kname(
                dirfd(cmd, off!(iou_link_old_dfd)),
                filename(cmd, off!(iou_link_oldpath)),
            );
            n1.raw = symlink;
            let n2 = kname(
                dirfd(cmd, off!(iou_link_new_dfd)),
                filename(cmd, off!(iou_link_newpath)),
            );
            let op = if symlink {
                file_op::SYMLINKAT
            } else {
                file_op::LINKAT
            };
            (op, n1, n2, 0)
        }
        _ => {
            // OPENAT / OPENAT2: only with O_TRUNC.
            if off!(iou_open_how) == ABSENT as u64 || off!(open_how_flags) == ABSENT as u64 {
                return;
            }
            let fl = read::<u64>(cmd, off!(iou_open_how) + off!(open_how_flags)).unwrap_or(O_TRUNC);
            if fl & O_TRUNC == 0 {
                return;
            }
            let op = if opcode == iouring_op::OPENAT {
                file_op::OPENAT
            } else {
                file_op::OPENAT2
            };
            let n1 = kname(
                dirfd(cmd, off!(iou_open_dfd)),
                filename(cmd, off!(iou_open_filename)),
            );
            (op, n1, NONE, fl as u32)
        }
    };
    file::file_entry(ctx, op, n1, n2, fl, 0, -1, r);
}

#[inline(always)]
fn opt_u32(base: u64, member: u64) -> u32 {
    if member == ABSENT as u64 {
        return 0;
    }
    read::<u32>(base, member).unwrap_or(0)
}

#[tracepoint]
pub fn io_uring_complete(ctx: TracePointContext) -> u32 {
    if !kernel::offsets_ready() {
        return 0;
    }
    let Some(req) = field::<u64>(&ctx, off!(tp_iou_complete_req)) else {
        return 0;
    };
    // SAFETY: plain value copy out of the map.
    let Some(ring) = (unsafe { IOURING_INFLIGHT.get(req).copied() }) else {
        return 0;
    };
    let _ = IOURING_INFLIGHT.remove(req);
    let res = field::<i32>(&ctx, off!(tp_iou_complete_res)).unwrap_or(i32::MIN);
    let Some(mut rec) = Record::<IoUringResultEvent>::start(kind::IOURING_RESULT) else {
        return 0;
    };
    let ev = rec.fixed();
    // SAFETY: `ev` points at this CPU's scratch buffer, sized and aligned for the struct.
    unsafe {
        (*ev).req = req;
        (*ev).ret = res as i64;
        (*ev).ring = ring;
    }
    rec.submit();
    0
}
