//! File operations that destroy or hide evidence: delete (unlink, unlinkat, rmdir),
//! rename (rename, renameat, renameat2), truncate (truncate, ftruncate, and open, openat,
//! openat2, creat with O_TRUNC), fallocate erasing a range, and links (link, linkat,
//! symlink, symlinkat) whose new name or target is watched. `iouring.rs` feeds the same
//! entry point with the names an io_uring request carries.
//!
//! At entry the names are raw user arguments; the kernel-side part of each path is the
//! directory a relative name resolves against (the cwd, or the dirfd's directory),
//! walked here, or for `ftruncate` the file the fd refers to. Only operations touching a
//! watched tree are emitted (see `filter.rs`); their exits are matched through
//! `INFLIGHT` so the result is reported only for emitted entries.

use auditor_common::{
    FileEvent, SyscallResultEvent, file_op, file_tail, flags, kind,
    limits::{FILENAME_MAX, INFLIGHT_SLOTS},
    loss_slot, watch_mode,
};
use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid,
        generated::{bpf_probe_read_kernel_str, bpf_probe_read_user_str},
    },
    macros::{map, tracepoint},
    maps::{Array, PerCpuArray, ProgramArray},
    programs::TracePointContext,
};

use crate::{
    emit::Record,
    filter, kernel,
    kernel::syscall_arg as arg,
    path::{self, Walk},
};

pub(crate) const AT_FDCWD: i32 = -100;
const O_TRUNC: u64 = 0o1000;
const O_CREAT_WRONLY_TRUNC: u32 = 0o1101;

/// Threads whose emitted entry waits for its exit: slot `tid % INFLIGHT_SLOTS` holds
/// `tid << 32 | op`, 0 when free.
///
/// A direct-mapped table rather than a hash: an array lookup is a few instructions the
/// verifier inlines, where the LRU hash this replaced was a helper call on every entry
/// and every exit (bpf_stats, file storm: exits 356 -> 282 ns, entries ~160 ns less).
/// Slots are overwritten in place, never inserted or deleted. Two threads whose tids are
/// equal modulo the table size, both inside a watched syscall at the same moment, share a
/// slot: the later entry takes it and the earlier one's result is not reported (the agent
/// emits that entry after 10 s as `result_missing`), as an LRU eviction did before.
#[map(name = "INFLIGHT")]
static INFLIGHT: Array<u64> = Array::with_max_entries(INFLIGHT_SLOTS, 0);

#[inline(always)]
fn inflight_slot(tid: u32) -> Option<*mut u64> {
    INFLIGHT.get_ptr_mut(tid & (INFLIGHT_SLOTS - 1))
}

/// Notes that thread `tid`'s (the current one's) `op` entry was emitted and waits for
/// its exit. The caller passes the tid its record's header already holds: one helper call
/// less per entry.
#[inline(always)]
pub(crate) fn inflight_set(tid: u32, op: u32) {
    if let Some(p) = inflight_slot(tid) {
        // SAFETY: a value of this map; one aligned 8-byte store, so a reader sees either
        // the old or the new (tid, op) pair, never a mix.
        unsafe { core::ptr::write_volatile(p, (u64::from(tid) << 32) | u64::from(op)) };
    }
}

/// The op of this thread's entry waiting for its exit, if any; frees the slot.
#[inline(always)]
fn inflight_take(tid: u32) -> Option<u32> {
    let p = inflight_slot(tid)?;
    // SAFETY: as in `inflight_set`.
    unsafe {
        let v = core::ptr::read_volatile(p);
        let op = v as u32;
        if (v >> 32) as u32 != tid || op == 0 {
            return None;
        }
        core::ptr::write_volatile(p, 0);
        Some(op)
    }
}

/// Tail-call targets (`file_tail` slots): `file_entry_body`, which every file hook
/// hands its arguments to, and `file_rename_part2`, which resolves a two-name
/// operation's second path (splitting the two path walks over a tail call keeps each
/// program well inside the verifier's budget).
///
/// One body for every hook, rather than the body inlined into each: the verifier then
/// checks the name copy, prefix match and path walk once, with arguments it cannot
/// know, instead of once per hook with constants. Inlined into 16 of the 17 syscall hooks
/// and the io_uring one it took 0.30-0.97 s of verification each, most of the agent's
/// start-up, and nothing is captured until the hooks are attached.
#[map(name = "FILE_TAILS")]
static FILE_TAILS: ProgramArray = ProgramArray::with_max_entries(file_tail::COUNT, 0);

/// A hook's arguments for `file_entry_body`, per CPU: written right before the tail
/// call, read right after it, on the same CPU within one program run.
#[repr(C)]
#[derive(Clone, Copy)]
struct FileArgs {
    op: u32,
    op_flags: u32,
    arg: u64,
    fd: i32,
    dirfd1: i32,
    dirfd2: i32,
    /// `NAME_*` bits, for the two names.
    name_bits: u32,
    ptr1: u64,
    ptr2: u64,
    ring: u64,
    req: u64,
}

const NAME_KERNEL: u32 = 1;
const NAME_RAW: u32 = 2;

impl Name {
    #[inline(always)]
    fn bits(self) -> u32 {
        (if self.kernel { NAME_KERNEL } else { 0 }) | (if self.raw { NAME_RAW } else { 0 })
    }

    #[inline(always)]
    fn from_bits(dirfd: i32, ptr: u64, bits: u32) -> Self {
        Self {
            dirfd,
            ptr,
            kernel: bits & NAME_KERNEL != 0,
            raw: bits & NAME_RAW != 0,
        }
    }
}

#[map(name = "FILE_ARGS")]
static FILE_ARGS: PerCpuArray<FileArgs> = PerCpuArray::with_max_entries(1, 0);

/// One name argument: the directory fd it is relative to, and where the string is.
#[derive(Clone, Copy)]
pub(crate) struct Name {
    pub dirfd: i32,
    pub ptr: u64,
    /// A kernel string (an io_uring request's `struct filename`), not user memory.
    pub kernel: bool,
    /// Never resolved against a directory: a symlink's content.
    pub raw: bool,
}

impl Name {
    #[inline(always)]
    pub(crate) const fn user(dirfd: i32, ptr: u64) -> Self {
        Self {
            dirfd,
            ptr,
            kernel: false,
            raw: false,
        }
    }

    #[inline(always)]
    const fn cwd(ptr: u64) -> Self {
        Self::user(AT_FDCWD, ptr)
    }
}

pub(crate) const NONE: Name = Name::user(AT_FDCWD, 0);

/// io_uring identity of an entry (zero for a syscall).
#[derive(Clone, Copy)]
pub(crate) struct Ring {
    pub ring: u64,
    pub req: u64,
}

const SYSCALL: Ring = Ring { ring: 0, req: 0 };

macro_rules! enter {
    ($fn:ident, |$ctx:ident| $body:expr) => {
        #[tracepoint]
        pub fn $fn($ctx: TracePointContext) -> u32 {
            if kernel::offsets_ready() {
                $body;
            }
            0
        }
    };
}

macro_rules! exit {
    ($($fn:ident),*) => {$(
        #[tracepoint]
        pub fn $fn(ctx: TracePointContext) -> u32 {
            syscall_exit(&ctx);
            0
        }
    )*};
}

enter!(sys_enter_unlink, |c| file_enter(
    &c,
    file_op::UNLINK,
    Name::cwd(arg(&c, 0)),
    NONE,
    0,
    0,
    -1
));
enter!(sys_enter_unlinkat, |c| file_enter(
    &c,
    file_op::UNLINKAT,
    Name::user(arg(&c, 0) as i32, arg(&c, 1)),
    NONE,
    arg(&c, 2) as u32,
    0,
    -1
));
enter!(sys_enter_rmdir, |c| file_enter(
    &c,
    file_op::RMDIR,
    Name::cwd(arg(&c, 0)),
    NONE,
    0,
    0,
    -1
));
enter!(sys_enter_rename, |c| file_enter(
    &c,
    file_op::RENAME,
    Name::cwd(arg(&c, 0)),
    Name::cwd(arg(&c, 1)),
    0,
    0,
    -1
));
enter!(sys_enter_renameat, |c| file_enter(
    &c,
    file_op::RENAMEAT,
    Name::user(arg(&c, 0) as i32, arg(&c, 1)),
    Name::user(arg(&c, 2) as i32, arg(&c, 3)),
    0,
    0,
    -1
));
enter!(sys_enter_renameat2, |c| file_enter(
    &c,
    file_op::RENAMEAT2,
    Name::user(arg(&c, 0) as i32, arg(&c, 1)),
    Name::user(arg(&c, 2) as i32, arg(&c, 3)),
    arg(&c, 4) as u32,
    0,
    -1
));
enter!(sys_enter_truncate, |c| file_enter(
    &c,
    file_op::TRUNCATE,
    Name::cwd(arg(&c, 0)),
    NONE,
    0,
    arg(&c, 1),
    -1
));
enter!(sys_enter_ftruncate, |c| file_enter(
    &c,
    file_op::FTRUNCATE,
    NONE,
    NONE,
    0,
    arg(&c, 1),
    arg(&c, 0) as i32
));
enter!(sys_enter_creat, |c| file_enter(
    &c,
    file_op::CREAT,
    Name::cwd(arg(&c, 0)),
    NONE,
    O_CREAT_WRONLY_TRUNC,
    arg(&c, 1),
    -1
));
// open*: the cheap flag test comes first: these are the hottest syscalls there are.
enter!(sys_enter_open, |c| {
    let fl = arg(&c, 1);
    if fl & O_TRUNC != 0 {
        file_enter(
            &c,
            file_op::OPEN,
            Name::cwd(arg(&c, 0)),
            NONE,
            fl as u32,
            arg(&c, 2),
            -1,
        )
    }
});
enter!(sys_enter_openat, |c| {
    let fl = arg(&c, 2);
    if fl & O_TRUNC != 0 {
        file_enter(
            &c,
            file_op::OPENAT,
            Name::user(arg(&c, 0) as i32, arg(&c, 1)),
            NONE,
            fl as u32,
            arg(&c, 3),
            -1,
        )
    }
});
enter!(sys_enter_openat2, |c| {
    // struct open_how { u64 flags; u64 mode; u64 resolve; }
    // SAFETY: reads one u64 from user memory.
    let fl =
        unsafe { aya_ebpf::helpers::bpf_probe_read_user(arg(&c, 2) as *const u64) }.unwrap_or(0);
    if fl & O_TRUNC != 0 {
        file_enter(
            &c,
            file_op::OPENAT2,
            Name::user(arg(&c, 0) as i32, arg(&c, 1)),
            NONE,
            fl as u32,
            0,
            -1,
        )
    }
});

// fallocate: only the modes that erase data (PUNCH_HOLE, COLLAPSE_RANGE, ZERO_RANGE).
enter!(sys_enter_fallocate, |c| {
    let mode = arg(&c, 1) as u32;
    if mode & (0x02 | 0x08 | 0x10) != 0 {
        file_enter(
            &c,
            file_op::FALLOCATE,
            NONE,
            NONE,
            mode,
            arg(&c, 3),
            arg(&c, 0) as i32,
        )
    }
});

// Links. link(old, new): both names resolved. symlink(target, linkpath): the target is
// the link's content, kept raw; emitted when the new name is watched, or the content is
// an absolute name in a watched tree.
enter!(sys_enter_link, |c| file_enter(
    &c,
    file_op::LINK,
    Name::cwd(arg(&c, 0)),
    Name::cwd(arg(&c, 1)),
    0,
    0,
    -1
));
enter!(sys_enter_linkat, |c| file_enter(
    &c,
    file_op::LINKAT,
    Name::user(arg(&c, 0) as i32, arg(&c, 1)),
    Name::user(arg(&c, 2) as i32, arg(&c, 3)),
    arg(&c, 4) as u32,
    0,
    -1
));
enter!(sys_enter_symlink, |c| file_enter(
    &c,
    file_op::SYMLINK,
    Name {
        raw: true,
        ..Name::cwd(arg(&c, 0))
    },
    Name::cwd(arg(&c, 1)),
    0,
    0,
    -1
));
enter!(sys_enter_symlinkat, |c| file_enter(
    &c,
    file_op::SYMLINKAT,
    Name {
        raw: true,
        ..Name::cwd(arg(&c, 0))
    },
    Name::user(arg(&c, 1) as i32, arg(&c, 2)),
    0,
    0,
    -1
));

exit!(
    sys_exit_link,
    sys_exit_linkat,
    sys_exit_symlink,
    sys_exit_symlinkat,
    sys_exit_fallocate,
    sys_exit_unlink,
    sys_exit_unlinkat,
    sys_exit_rmdir,
    sys_exit_rename,
    sys_exit_renameat,
    sys_exit_renameat2,
    sys_exit_truncate,
    sys_exit_ftruncate,
    sys_exit_creat,
    sys_exit_open,
    sys_exit_openat,
    sys_exit_openat2
);

/// Bits for a path argument's flags: (name truncated, name fault, base truncated,
/// base fault, watched).
const PATH1: [u32; 5] = [
    flags::NAME1_TRUNCATED,
    flags::NAME1_FAULT,
    flags::BASE1_TRUNCATED,
    flags::BASE1_FAULT,
    flags::PATH1_WATCHED,
];
const PATH2: [u32; 5] = [
    flags::NAME2_TRUNCATED,
    flags::NAME2_FAULT,
    flags::BASE2_TRUNCATED,
    flags::BASE2_FAULT,
    flags::PATH2_WATCHED,
];

/// Appends one path argument (name, then base blob). Returns `(name_len, base_len,
/// flags)`; the watched bit is set when the path may lie in a watched tree.
#[inline(always)]
fn path_arg(
    rec: &mut Record<FileEvent>,
    task: kernel::Task,
    name: Name,
    fd: i32,
    bits: &[u32; 5],
) -> (u32, u32, u32) {
    let mut fl = 0u32;
    let filter_on = kernel::settings().file_filter != 0;
    let mut name_len = 0u64;
    let name_at = rec.tail_len;
    if name.ptr != 0 {
        let at = name_at;
        // SAFETY: the tail has TAIL_SLACK >= FILENAME_MAX bytes after any masked offset;
        // both helpers validate the source address.
        let n = unsafe {
            if name.kernel {
                bpf_probe_read_kernel_str(rec.tail_end().cast(), FILENAME_MAX, name.ptr as *const _)
            } else {
                bpf_probe_read_user_str(rec.tail_end().cast(), FILENAME_MAX, name.ptr as *const _)
            }
        };
        if n <= 0 {
            fl |= bits[1];
        } else {
            name_len = (n - 1) as u64;
            if n as u32 >= FILENAME_MAX {
                fl |= bits[0];
            }
        }
        rec.tail_len += name_len;
        // Laundered: its three possible values here (none, truncated, fault) would reach
        // the loops below (prefix compare, path walk) as three caller states, each making
        // the verifier check those loops' callbacks again.
        fl = crate::emit::launder(u64::from(fl)) as u32;
        // SAFETY: reading back a byte we just wrote.
        let absolute = name_len > 0 && unsafe { *rec.tail_at(at) } == b'/';
        if absolute {
            if !filter_on
                || filter::prefix_match::<FileEvent>(at, name_len)
                || filter::has_dot_dot::<FileEvent>(at, name_len)
            {
                fl |= bits[4];
            }
            return (name_len as u32, 0, fl);
        }
        if name.raw {
            // A symlink's relative content: meaningful only against the link's own
            // directory, never the caller's cwd. Not a reason to emit.
            return (name_len as u32, 0, fl);
        }
    }
    // Relative name (or fd-based op): walk the base directory / the fd's file.
    let base = if name.ptr == 0 {
        task.fd_path(fd)
    } else if name.dirfd == AT_FDCWD {
        kernel::cwd(task.addr())
    } else {
        task.fd_path(name.dirfd)
    };
    let Ok((mnt, dentry)) = base else {
        // Unknown base: let userspace see it rather than miss a watched path.
        return (name_len as u32, 0, fl | bits[3] | bits[4]);
    };
    let (walk, base_len, mode, parent_mode) = path::append_checked(rec, mnt, dentry);
    match walk {
        Walk::Complete => {}
        Walk::Truncated => fl |= bits[2],
        Walk::Fault => fl |= bits[3],
    }
    let watched = match mode {
        watch_mode::TREE => true,
        // A name straight in this directory (home: history files), or one that may lead
        // into a watched tree below it: userspace decides exactly.
        watch_mode::ENTRIES | watch_mode::ANCESTOR => name.ptr != 0,
        // An fd's file straight in such a directory: a history file truncated or
        // punched through its fd (`truncate -s 0 ~/.bash_history` opens it without
        // O_TRUNC, then calls ftruncate). Userspace decides exactly.
        _ => name.ptr == 0 && parent_mode == watch_mode::ENTRIES,
    };
    // A relative name that climbs (`../log/x` from a sibling of the tree) can leave
    // its base: userspace joins and normalises it, then decides.
    if watched
        || !filter_on
        || walk == Walk::Fault
        || (name.ptr != 0 && filter::has_dot_dot::<FileEvent>(name_at, name_len))
    {
        fl |= bits[4];
    }
    (name_len as u32, base_len, fl)
}

#[inline(always)]
fn file_enter(
    ctx: &TracePointContext,
    op: u32,
    n1: Name,
    n2: Name,
    op_flags: u32,
    arg: u64,
    fd: i32,
) {
    file_entry(ctx, op, n1, n2, op_flags, arg, fd, SYSCALL);
}

/// Hands one file operation to `file_entry_body` (which builds the record: path 1
/// there, path 2 if any in `file_rename_part2`). Shared by the syscall hooks and
/// io_uring. A failed hand-off (the slot empty: a loader bug) is counted as a lost
/// record, so that it shows in the event stream.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn file_entry(
    ctx: &TracePointContext,
    op: u32,
    n1: Name,
    n2: Name,
    op_flags: u32,
    arg: u64,
    fd: i32,
    ring: Ring,
) {
    let Some(slot) = FILE_ARGS.get_ptr_mut(0) else {
        crate::emit::count_loss_in(loss_slot::HANDOFF, 0);
        return;
    };
    let args = FileArgs {
        op,
        op_flags,
        arg,
        fd,
        dirfd1: n1.dirfd,
        dirfd2: n2.dirfd,
        name_bits: n1.bits() | (n2.bits() << 8),
        ptr1: n1.ptr,
        ptr2: n2.ptr,
        ring: ring.ring,
        req: ring.req,
    };
    // SAFETY: this CPU's value of a per-CPU map, sized for FileArgs; the tail call
    // replaces this program, so nothing else runs on this CPU in between.
    unsafe {
        slot.write(args);
        let _ = FILE_TAILS.tail_call(ctx, file_tail::BODY);
    }
    // Only reached when the tail call failed (an empty slot).
    crate::emit::count_loss_in(loss_slot::HANDOFF, 0);
}

/// The body of every file hook: builds and emits the record for the arguments the hook
/// left in `FILE_ARGS`. Reached only by tail call (`FILE_TAILS`).
#[tracepoint]
pub fn file_entry_body(ctx: TracePointContext) -> u32 {
    let Some(slot) = FILE_ARGS.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's value, written by the hook that tail-called here.
    let a = unsafe { slot.read() };
    let n1 = Name::from_bits(a.dirfd1, a.ptr1, a.name_bits);
    let n2 = Name::from_bits(a.dirfd2, a.ptr2, a.name_bits >> 8);
    let ring = Ring {
        ring: a.ring,
        req: a.req,
    };
    build(&ctx, a.op, n1, n2, a.op_flags, a.arg, a.fd, ring);
    0
}

/// Builds the record for one file operation: path 1 here, path 2 (if any) in
/// `file_rename_part2` after a tail call.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn build(
    ctx: &TracePointContext,
    op: u32,
    n1: Name,
    n2: Name,
    op_flags: u32,
    arg: u64,
    fd: i32,
    ring: Ring,
) {
    let Some(mut rec) = Record::<FileEvent>::start(kind::FILE) else {
        return;
    };
    let task = kernel::Task::current();
    let (name1_len, base1_len, f1) = path_arg(&mut rec, task, n1, fd, &PATH1);
    let ev = rec.fixed();
    let ring_bit = if ring.req != 0 { flags::IO_URING } else { 0 };
    // SAFETY: `ev` points at this CPU's scratch buffer, sized and aligned for FileEvent.
    unsafe {
        (*ev).op = op;
        (*ev).flags = f1 | ring_bit;
        (*ev).dirfd1 = n1.dirfd;
        (*ev).dirfd2 = n2.dirfd;
        (*ev).op_flags = op_flags;
        (*ev).arg = arg;
        (*ev).fd = fd;
        (*ev).name1_len = name1_len;
        (*ev).base1_len = base1_len;
        (*ev).name2_len = 0;
        (*ev).base2_len = 0;
        (*ev).ring = ring.ring;
        (*ev).req = ring.req;
        (*ev).name2_ptr = n2.ptr;
        // The tail length travels to the second program in the header's length field,
        // which `submit` overwrites.
        (*ev).header.len = rec.tail_len as u32;
    }
    if n2.ptr != 0 {
        // SAFETY: the tail call replaces this program; the scratch buffer carries the state.
        unsafe { FILE_TAILS.tail_call(ctx, file_tail::PART2) };
        // Reached only if the tail call failed: report path 1, and say path 2 is missing.
        // SAFETY: as above.
        unsafe { (*ev).flags |= flags::NAME2_FAULT | flags::BASE2_FAULT | flags::PATH2_WATCHED };
    }
    finish(rec, task);
}

/// Second half of a two-name operation (rename, link, symlink): resolves the second
/// name, which the first half left in the record, then emits it.
#[tracepoint]
pub fn file_rename_part2(_ctx: TracePointContext) -> u32 {
    let Some(base) = crate::emit::scratch_base() else {
        return 0;
    };
    let ev = base.cast::<FileEvent>();
    // SAFETY: the first half wrote a FileEvent at the start of this CPU's buffer.
    let (tail_len, dirfd, ptr, io_uring) = unsafe {
        (
            (*ev).header.len as u64,
            (*ev).dirfd2,
            (*ev).name2_ptr,
            (*ev).flags & flags::IO_URING != 0,
        )
    };
    let Some(mut rec) = Record::<FileEvent>::resume(tail_len) else {
        return 0;
    };
    let n2 = Name {
        dirfd,
        ptr,
        kernel: io_uring,
        raw: false,
    };
    let task = kernel::Task::current();
    let (name2_len, base2_len, f2) = path_arg(&mut rec, task, n2, -1, &PATH2);
    // SAFETY: as above.
    unsafe {
        (*ev).flags |= f2;
        (*ev).name2_len = name2_len;
        (*ev).base2_len = base2_len;
    }
    finish(rec, task);
    0
}

/// Emits the record if either path is watched, and remembers the thread (or the
/// io_uring request) for the outcome.
#[inline(always)]
fn finish(mut rec: Record<FileEvent>, task: kernel::Task) {
    let ev = rec.fixed();
    // SAFETY: `ev` points at this CPU's scratch buffer, sized and aligned for FileEvent.
    unsafe {
        if (*ev).flags & (flags::PATH1_WATCHED | flags::PATH2_WATCHED) == 0 {
            return; // Not ours: nothing reaches userspace.
        }
        (*ev).ppid = task.ppid();
        (*ev).creds = task.creds();
        (*ev).cgroup_id = task.cgroup_id();
        (*ev)._pad = 0;
        (*ev).name2_ptr = 0;
        task.comm_into(&raw mut (*ev).comm);
    }
    // SAFETY: as above.
    let (op, req, ring) = unsafe { ((*ev).op, (*ev).req, (*ev).ring) };
    if req != 0 {
        crate::iouring::track(req, ring);
    } else {
        inflight_set(rec.tid(), op);
    }
    rec.submit();
}

/// Emits the result of a syscall whose entry was emitted (file ops and the guard hooks).
#[inline(always)]
pub(crate) fn syscall_exit(ctx: &TracePointContext) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(op) = inflight_take(pid_tgid as u32) else {
        return;
    };
    result_record(ctx, op, pid_tgid);
}

/// Emits a `SYSCALL_RESULT` record: the return value of syscall `op`.
#[inline(always)]
pub(crate) fn syscall_result(ctx: &TracePointContext, op: u32) {
    result_record(ctx, op, bpf_get_current_pid_tgid());
}

#[inline(always)]
fn result_record(ctx: &TracePointContext, op: u32, pid_tgid: u64) {
    let ret = kernel::syscall_ret(ctx);
    crate::emit::emit_fixed::<SyscallResultEvent>(kind::SYSCALL_RESULT, pid_tgid, |ev| {
        // SAFETY: `ev` is the record's reservation; the header is written.
        unsafe {
            (*ev).ret = ret;
            (*ev).op = op;
            (*ev)._pad = 0;
        }
    });
}
