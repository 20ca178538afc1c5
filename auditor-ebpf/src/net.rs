//! Network connections: every `connect(2)` on the machine (not filtered), with the
//! socket address read from the caller's memory at entry and the outcome at exit.
//! Because every entry is emitted, every exit is too: unlike the filtered file hooks,
//! connect needs no `INFLIGHT` entry to tell its exit whether to report (an insert and a
//! delete in a hash map were ~7% of a connect's time under a storm). An exit whose entry
//! was lost (ring full, counted) or came before the agent attached reaches userspace as
//! an `entry_missing` connect. io_uring connects come through [`connect_entry`] too
//! (`iouring.rs`), paired by request.

use auditor_common::{ConnectEvent, file_op, flags, kind};
use aya_ebpf::{
    helpers::generated::bpf_probe_read_user, macros::tracepoint, programs::TracePointContext,
};

use crate::{emit::Record, file::Ring, kernel, kernel::syscall_arg as arg};

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
    let task = kernel::Task::current();
    let ev = rec.fixed();
    let mut fl = if ring.req != 0 { flags::IO_URING } else { 0 };
    let mut family: u16 = 0;
    let mut port: u16 = 0;
    let mut addr = [0u64; 2];
    let mut path_len = 0u64;
    // The usual case in one helper call rather than three (each is a fault-handling user
    // copy): the whole sockaddr_in (16 bytes), or sockaddr_in6 up to its address (24),
    // when `addrlen` says the caller's memory holds that much. Words, so that the
    // little-endian fields are shifts of them.
    let mut buf = [0u64; 3];
    let whole = if addrlen >= 24 {
        user_bytes(buf.as_mut_ptr().cast(), 24, sa)
    } else if addrlen >= 16 {
        user_bytes(buf.as_mut_ptr().cast(), 16, sa)
    } else {
        false
    };
    let have_family = if whole {
        family = buf[0] as u16;
        true
    } else {
        user_bytes((&raw mut family).cast(), 2, sa)
    };
    if !have_family {
        fl |= flags::ADDR_FAULT;
    } else if family == AF_INET || family == AF_INET6 {
        if whole && (family == AF_INET || addrlen >= 24) {
            // Little-endian words: family at bits 0..16, the port (network order) at
            // 16..32, the IPv4 address at 32..64; IPv6's address is words 1 and 2.
            port = u16::from_be((buf[0] >> 16) as u16);
            if family == AF_INET {
                addr[0] = buf[0] >> 32;
            } else {
                addr = [buf[1], buf[2]];
            }
        } else {
            // A short `addrlen` (the kernel refuses it, but the attempt is recorded):
            // read the fields one by one, as far as the memory allows.
            let mut p = [0u8; 2];
            let ok = user_bytes(p.as_mut_ptr(), 2, sa + 2)
                && if family == AF_INET {
                    user_bytes(addr.as_mut_ptr().cast(), 4, sa + 4)
                } else {
                    user_bytes(addr.as_mut_ptr().cast(), 16, sa + 8)
                };
            if !ok {
                fl |= flags::ADDR_FAULT;
            }
            port = u16::from_be_bytes(p);
        }
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
        (*ev).ppid = task.ppid();
        (*ev).flags = fl;
        (*ev).creds = task.creds();
        (*ev).cgroup_id = task.cgroup_id();
        (*ev).fd = fd;
        (*ev).family = family;
        (*ev).port = port;
        (*ev).addrlen = addrlen;
        (*ev).path_len = path_len as u32;
        // `addr` is at offset 88 of the 8-aligned struct (asserted in auditor-common).
        (&raw mut (*ev).addr).cast::<[u64; 2]>().write(addr);
        task.comm_into(&raw mut (*ev).comm);
        (*ev).ring = ring.ring;
        (*ev).req = ring.req;
    }
    if ring.req != 0 {
        crate::iouring::track(ring.req, ring.ring);
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
    if kernel::offsets_ready() {
        crate::file::syscall_result(&ctx, file_op::CONNECT);
    }
    0
}
