//! Every exec on the machine: `execve`/`execveat` entry (what was asked: filename, argv,
//! cwd, credentials) and exit (the return code; for a success the executable the kernel
//! actually mapped, resolved from `mm->exe_file`, and the post-exec credentials).
//!
//! Entry and exit are separate records paired by the daemon on the thread id, so a large
//! argv never has to be parked in a map between the two. Hooks are syscall tracepoints:
//! they fire for every caller, whatever its shell history settings.

use auditor_common::{
    Creds, ExecEvent, ExecResultEvent, flags, kind,
    limits::{ARGV_ARGS_MAX, ARGV_BYTES_MAX, FILENAME_MAX},
    syscall,
};
use aya_ebpf::{
    helpers::generated::{bpf_loop, bpf_probe_read_user, bpf_probe_read_user_str},
    macros::tracepoint,
    programs::TracePointContext,
};

use core::ffi::c_void;

use crate::{
    emit::{Record, scratch_base, tail_ptr},
    kernel,
    kernel::syscall_arg as arg,
    path::{self, Walk},
};

const AT_FDCWD: i32 = -100;
const AT_EMPTY_PATH: u32 = 0x1000;

#[tracepoint]
pub fn sys_enter_execve(ctx: TracePointContext) -> u32 {
    exec_enter(&ctx, syscall::EXECVE);
    0
}

#[tracepoint]
pub fn sys_enter_execveat(ctx: TracePointContext) -> u32 {
    exec_enter(&ctx, syscall::EXECVEAT);
    0
}

#[tracepoint]
pub fn sys_exit_execve(ctx: TracePointContext) -> u32 {
    exec_exit(&ctx);
    0
}

#[tracepoint]
pub fn sys_exit_execveat(ctx: TracePointContext) -> u32 {
    exec_exit(&ctx);
    0
}

#[inline(always)]
fn exec_enter(ctx: &TracePointContext, which: u32) {
    let Some(mut rec) = Record::<ExecEvent>::start(kind::EXEC) else {
        return;
    };
    let ev = rec.fixed();
    let task = kernel::Task::current();
    let ready = kernel::offsets_ready();
    // SAFETY: `ev` points at this CPU's scratch buffer, sized and aligned for ExecEvent.
    unsafe {
        (*ev).syscall = which;
        (*ev).flags = 0;
        (*ev).argc = 0;
        (*ev).filename_len = 0;
        (*ev).cwd_len = 0;
        (*ev).argv_len = 0;
        (*ev)._pad = 0;
        (*ev).cgroup_id = task.cgroup_id();
        task.comm_into(&raw mut (*ev).comm);
        (*ev).tty = [0; auditor_common::limits::TTY_LEN];
    }
    if !ready {
        // SAFETY: as above.
        unsafe {
            (*ev).flags = flags::NO_OFFSETS;
            (*ev).ppid = 0;
            (*ev).creds = Creds::default();
            (*ev).dirfd = AT_FDCWD;
            (*ev).at_flags = 0;
        }
        rec.submit();
        return;
    }
    let (dirfd, filename, argv, at_flags) = if which == syscall::EXECVE {
        (AT_FDCWD, arg(ctx, 0), arg(ctx, 1), 0)
    } else {
        (
            arg(ctx, 0) as i32,
            arg(ctx, 1),
            arg(ctx, 2),
            arg(ctx, 4) as u32,
        )
    };
    let mut fl = 0u32;
    // SAFETY: as above.
    unsafe {
        (*ev).ppid = task.ppid();
        (*ev).creds = task.creds();
        (*ev).dirfd = dirfd;
        (*ev).at_flags = at_flags;
        kernel::tty_name(task.addr(), &mut (*ev).tty);
    }

    // Filename, without its NUL.
    let filename_at = rec.tail_len;
    // SAFETY: the tail has TAIL_SLACK >= FILENAME_MAX bytes after any masked offset.
    let n = unsafe {
        bpf_probe_read_user_str(rec.tail_end().cast(), FILENAME_MAX, filename as *const _)
    };
    let mut filename_len = 0u64;
    if n <= 0 {
        fl |= flags::FILENAME_FAULT;
    } else {
        filename_len = (n - 1) as u64;
        if n as u32 >= FILENAME_MAX {
            fl |= flags::FILENAME_TRUNCATED;
        }
    }
    rec.tail_len += filename_len;
    // SAFETY: reading back a byte we just wrote to the tail.
    let absolute = filename_len > 0 && unsafe { *rec.tail_at(filename_at) } == b'/';

    // The directory a relative filename resolves against: the dirfd's, or the cwd.
    let base = if dirfd != AT_FDCWD && (!absolute || at_flags & AT_EMPTY_PATH != 0) {
        fl |= flags::DIRFD_RESOLVED;
        task.fd_path(dirfd)
    } else {
        kernel::cwd(task.addr())
    };
    let mut cwd_len = 0u32;
    match base {
        Ok((mnt, dentry)) => {
            let (walk, len) = path::append(&mut rec, mnt, dentry);
            cwd_len = len;
            match walk {
                Walk::Complete => {}
                Walk::Truncated => fl |= flags::CWD_TRUNCATED,
                Walk::Fault => fl |= flags::CWD_FAULT,
            }
        }
        Err(_) => fl |= flags::CWD_FAULT,
    }

    let (argc, argv_len, argv_flags) = read_argv(&mut rec, argv);
    fl |= argv_flags;

    // SAFETY: as above.
    unsafe {
        (*ev).flags = fl;
        (*ev).filename_len = filename_len as u32;
        (*ev).cwd_len = cwd_len;
        (*ev).argc = argc;
        (*ev).argv_len = argv_len;
    }
    rec.submit();
}

#[repr(C)]
struct ArgvCtx {
    argv: u64,
    /// Tail offset where argv starts, and bytes written so far.
    start: u64,
    used: u64,
    cap_bytes: u64,
    cap_args: u32,
    argc: u32,
    flags: u32,
    _pad: u32,
}

/// Appends argv (each argument NUL-terminated) within the configured caps.
/// Returns `(argc, bytes, flags)`.
#[inline(always)]
fn read_argv(rec: &mut Record<ExecEvent>, argv: u64) -> (u32, u32, u32) {
    if argv == 0 {
        return (0, 0, 0);
    }
    let settings = kernel::settings();
    let mut ctx = ArgvCtx {
        argv,
        start: rec.tail_len,
        used: 0,
        cap_bytes: settings.argv_bytes.min(ARGV_BYTES_MAX) as u64,
        cap_args: settings.argv_args.min(ARGV_ARGS_MAX),
        argc: 0,
        flags: 0,
        _pad: 0,
    };
    // One iteration more than the argument cap, to see whether more arguments follow.
    // SAFETY: the callback only touches `ctx` and this CPU's scratch buffer.
    unsafe {
        bpf_loop(
            ARGV_ARGS_MAX + 1,
            argv_step as *mut c_void,
            (&raw mut ctx).cast(),
            0,
        );
    }
    let used = if ctx.used > ARGV_BYTES_MAX as u64 {
        ARGV_BYTES_MAX as u64
    } else {
        ctx.used
    };
    rec.tail_len = ctx.start + used;
    (ctx.argc, used as u32, ctx.flags)
}

/// Reads argument `i`. Returns 1 to stop the loop.
#[inline(never)]
extern "C" fn argv_step(i: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop hands back the pointer `read_argv` gave it.
    let c = unsafe { &mut *ctx.cast::<ArgvCtx>() };
    let mut ptr: u64 = 0;
    // SAFETY: reads one pointer from user memory into a local.
    let r = unsafe { bpf_probe_read_user((&raw mut ptr).cast(), 8, (c.argv + 8 * i) as *const _) };
    if r < 0 {
        c.flags |= flags::ARGV_FAULT;
        return 1;
    }
    if ptr == 0 {
        return 1;
    }
    if i >= c.cap_args as u64 || c.used >= c.cap_bytes {
        c.flags |= flags::ARGV_TRUNCATED;
        return 1;
    }
    let remaining = c.cap_bytes - c.used;
    // Read one byte more than fits: a full read means the argument was cut.
    let mut size = remaining + 1;
    if size > ARGV_BYTES_MAX as u64 + 1 {
        size = ARGV_BYTES_MAX as u64 + 1;
    }
    let Some(base) = scratch_base() else {
        c.flags |= flags::ARGV_FAULT;
        return 1;
    };
    let dst = tail_ptr::<ExecEvent>(base, c.start + c.used);
    // SAFETY: dst has TAIL_SLACK > ARGV_BYTES_MAX + 1 bytes after it.
    let n = unsafe { bpf_probe_read_user_str(dst.cast(), size as u32, ptr as *const _) };
    if n <= 0 {
        c.flags |= flags::ARGV_FAULT;
        return 1;
    }
    c.argc += 1;
    if n as u64 > remaining {
        c.used += remaining;
        c.flags |= flags::ARGV_TRUNCATED;
        return 1;
    }
    c.used += n as u64;
    0
}

#[inline(always)]
fn exec_exit(ctx: &TracePointContext) {
    let Some(mut rec) = Record::<ExecResultEvent>::start(kind::EXEC_RESULT) else {
        return;
    };
    let ev = rec.fixed();
    let task = kernel::Task::current();
    let ready = kernel::offsets_ready();
    let ret = if ready {
        kernel::syscall_ret(ctx)
    } else {
        i64::MIN
    };
    let mut fl = 0u32;
    // SAFETY: `ev` points at this CPU's scratch buffer, sized and aligned for the struct.
    unsafe {
        (*ev).ret = ret;
        (*ev).exe_len = 0;
        task.comm_into(&raw mut (*ev).comm);
        (*ev).creds = if ready {
            task.creds()
        } else {
            Creds::default()
        };
    }
    if !ready {
        fl |= flags::NO_OFFSETS;
    } else if ret == 0 {
        match kernel::exe(task.addr()) {
            Ok((mnt, dentry)) => {
                let (walk, len) = path::append(&mut rec, mnt, dentry);
                // SAFETY: as above.
                unsafe { (*ev).exe_len = len };
                match walk {
                    Walk::Complete => {}
                    Walk::Truncated => fl |= flags::EXE_TRUNCATED,
                    Walk::Fault => fl |= flags::EXE_FAULT,
                }
            }
            Err(_) => fl |= flags::EXE_FAULT,
        }
    }
    // SAFETY: as above.
    unsafe { (*ev).flags = fl };
    rec.submit();
}
