//! Network connections: every `connect(2)` on the machine (not filtered), with the
//! socket address read from the caller's memory at entry and the outcome at exit
//! (paired through `INFLIGHT`, like the file hooks). io_uring connects come through
//! [`connect_entry`] too (`iouring.rs`).

use auditor_common::{ConnectEvent, file_op, flags, kind};
use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        generated::bpf_probe_read_user,
    },
    macros::tracepoint,
    programs::TracePointContext,
};

use crate::{
    emit::Record,
    file::{INFLIGHT, Ring},
    kernel,
    kernel::syscall_arg as arg,
};

const AF_UNIX: u16 = 1;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
/// `sizeof(sockaddr_un.sun_path)`.
const UNIX_PATH_MAX: u64 = 108;

/// Reads `len` (<= 16) bytes of user memory into `dst`; false on a fault.
#[inline(always)]
fn user_bytes(dst: *mut u8, len: u32, src: u64) -> bool {
    // SAFETY: the helper validates the source; `dst` has at least `len` bytes.
    unsafe { bpf_probe_read_user(dst.cast(), len, src as *const _) >= 0 }
}

#[tracepoint]
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
    if kernel::offsets_ready() {
        connect_entry(
            arg(&ctx, 0) as i32,
            arg(&ctx, 1),
            arg(&ctx, 2) as u32,
            Ring { ring: 0, req: 0 },
        );
    }
    0
}

/// Emits a connect attempt: socket `fd`, the sockaddr at user address `sa`.
#[inline(always)]
pub(crate) fn connect_entry(fd: i32, sa: u64, addrlen: u32, ring: Ring) {
    let Some(mut rec) = Record::<ConnectEvent>::start(kind::CONNECT) else {
        return;
    };
    let task = kernel::current_task();
    let ev = rec.fixed();
    let mut fl = if ring.req != 0 { flags::IO_URING } else { 0 };
    let mut family: u16 = 0;
    let mut port: u16 = 0;
    let mut addr = [0u8; 16];
    let mut path_len = 0u64;
    if !user_bytes((&raw mut family).cast(), 2, sa) {
        fl |= flags::ADDR_FAULT;
    } else if family == AF_INET || family == AF_INET6 {
        let mut p = [0u8; 2];
        let ok = user_bytes(p.as_mut_ptr(), 2, sa + 2)
            && if family == AF_INET {
                user_bytes(addr.as_mut_ptr(), 4, sa + 4)
            } else {
                user_bytes(addr.as_mut_ptr(), 16, sa + 8)
            };
        if !ok {
            fl |= flags::ADDR_FAULT;
        }
        port = u16::from_be_bytes(p);
    } else if family == AF_UNIX && addrlen > 2 {
        let mut len = (addrlen - 2) as u64;
        if len > UNIX_PATH_MAX {
            len = UNIX_PATH_MAX;
            fl |= flags::ADDR_TRUNCATED;
        }
        // Raw bytes, not a string read: abstract names start with NUL.
        if user_bytes_long(rec.tail_end(), len, sa + 2) {
            path_len = len;
        } else {
            fl |= flags::ADDR_FAULT;
        }
    }
    rec.tail_len += path_len;
    // SAFETY: `ev` points at this CPU's scratch buffer, sized and aligned for the struct.
    unsafe {
        (*ev).ppid = kernel::ppid(task);
        (*ev).flags = fl;
        (*ev).creds = kernel::creds(task);
        (*ev).cgroup_id = bpf_get_current_cgroup_id();
        (*ev).fd = fd;
        (*ev).family = family;
        (*ev).port = port;
        (*ev).addrlen = addrlen;
        (*ev).path_len = path_len as u32;
        (*ev).addr = addr;
        (*ev).comm = bpf_get_current_comm().unwrap_or([0; 16]);
        (*ev).ring = ring.ring;
        (*ev).req = ring.req;
    }
    if ring.req != 0 {
        crate::iouring::track(ring.req, ring.ring);
    } else {
        let tid = bpf_get_current_pid_tgid() as u32;
        let _ = INFLIGHT.insert(tid, file_op::CONNECT, 0);
    }
    rec.submit();
}

/// Reads up to `UNIX_PATH_MAX` bytes into the record tail.
#[inline(always)]
fn user_bytes_long(dst: *mut u8, len: u64, src: u64) -> bool {
    let len = len & 0x7f; // <= 127, and `len` <= UNIX_PATH_MAX already
    // SAFETY: the tail has TAIL_SLACK bytes after any masked offset.
    unsafe { bpf_probe_read_user(dst.cast(), len as u32, src as *const _) >= 0 }
}

#[tracepoint]
pub fn sys_exit_connect(ctx: TracePointContext) -> u32 {
    crate::file::syscall_exit(&ctx);
    0
}
