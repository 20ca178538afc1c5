//! Hooks that guard the evidence itself: the kernel ring (`syslog(2)` clearing it) and
//! the auditor (signals sent to it, ptrace attach, another process's memory written,
//! file descriptors taken from it, its BPF objects opened by id).
//!
//! All of these are rare, so the syscall hooks keep only a cheap argument test in the
//! kernel and let userspace decide what targets the auditor. The signal hook runs on the
//! raw `signal_generate` tracepoint, which hands over the target `task_struct`: only
//! signals for the auditor's own thread group are emitted.

use auditor_common::{SignalEvent, SyscallEvent, file_op, flags, kind, sys_op};
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user},
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};

use crate::{
    emit::Record,
    file::{inflight_set, syscall_exit},
    kernel::{self, off, read, syscall_arg as arg},
};

const SYSLOG_ACTION_READ_CLEAR: u64 = 4;
const SYSLOG_ACTION_CLEAR: u64 = 5;
const PTRACE_ATTACH: u64 = 16;
const PTRACE_SEIZE: u64 = 0x4206;
const BPF_PROG_DETACH: u64 = 9;
const BPF_PROG_GET_FD_BY_ID: u64 = 13;
const BPF_MAP_GET_FD_BY_ID: u64 = 14;
const BPF_LINK_GET_FD_BY_ID: u64 = 30;
const BPF_LINK_DETACH: u64 = 34;

/// Emits a `kind::SYSCALL` entry and remembers the thread for the result.
#[inline(always)]
fn emit(nr: u32, args: [u64; 4]) {
    let Some(mut rec) = Record::<SyscallEvent>::start(kind::SYSCALL) else {
        return;
    };
    let task = kernel::Task::current();
    let ev = rec.fixed();
    // SAFETY: `ev` points at this CPU's scratch buffer, sized and aligned for the struct.
    unsafe {
        (*ev).ppid = task.ppid();
        (*ev).flags = 0;
        (*ev).creds = task.creds();
        (*ev).cgroup_id = task.cgroup_id();
        (*ev).nr = nr;
        (*ev)._pad = 0;
        (*ev).args = args;
        task.comm_into(&raw mut (*ev).comm);
    }
    inflight_set(rec.tid(), file_op::SYSCALL_BASE + nr);
    rec.submit();
}

/// The caller is the auditor itself (its own `bpf()` calls at load time).
#[inline(always)]
fn is_self() -> bool {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    tgid == kernel::settings().self_tgid
}

#[tracepoint]
pub fn sys_enter_syslog(ctx: TracePointContext) -> u32 {
    let action = arg(&ctx, 0);
    if action == SYSLOG_ACTION_CLEAR || action == SYSLOG_ACTION_READ_CLEAR {
        emit(sys_op::SYSLOG, [action, arg(&ctx, 2), 0, 0]);
    }
    0
}

#[tracepoint]
pub fn sys_enter_ptrace(ctx: TracePointContext) -> u32 {
    let request = arg(&ctx, 0);
    if request == PTRACE_ATTACH || request == PTRACE_SEIZE {
        emit(sys_op::PTRACE, [request, arg(&ctx, 1), 0, 0]);
    }
    0
}

#[tracepoint]
pub fn sys_enter_process_vm_writev(ctx: TracePointContext) -> u32 {
    if !is_self() {
        emit(sys_op::PROCESS_VM_WRITEV, [arg(&ctx, 0), 0, 0, 0]);
    }
    0
}

#[tracepoint]
pub fn sys_enter_pidfd_getfd(ctx: TracePointContext) -> u32 {
    if !is_self() {
        emit(sys_op::PIDFD_GETFD, [arg(&ctx, 0), arg(&ctx, 1), 0, 0]);
    }
    0
}

#[tracepoint]
pub fn sys_enter_bpf(ctx: TracePointContext) -> u32 {
    let cmd = arg(&ctx, 0);
    if !matches!(
        cmd,
        BPF_PROG_GET_FD_BY_ID
            | BPF_MAP_GET_FD_BY_ID
            | BPF_LINK_GET_FD_BY_ID
            | BPF_LINK_DETACH
            | BPF_PROG_DETACH
    ) || is_self()
    {
        return 0;
    }
    // The first u32 of `union bpf_attr` is the id for *_GET_FD_BY_ID, the link fd for
    // LINK_DETACH and the target fd for PROG_DETACH.
    // SAFETY: the helper validates the user address.
    let first = unsafe { bpf_probe_read_user(arg(&ctx, 1) as *const u32) }.unwrap_or(u32::MAX);
    emit(sys_op::BPF, [cmd, first as u64, 0, 0]);
    0
}

macro_rules! exits {
    ($($fn:ident),*) => {$(
        #[tracepoint]
        pub fn $fn(ctx: TracePointContext) -> u32 {
            syscall_exit(&ctx);
            0
        }
    )*};
}

exits!(
    sys_exit_syslog,
    sys_exit_ptrace,
    sys_exit_process_vm_writev,
    sys_exit_pidfd_getfd,
    sys_exit_bpf
);

/// `signal_generate(int sig, struct kernel_siginfo *info, struct task_struct *task,
/// int group, int result)`, in the sender's context.
#[raw_tracepoint(tracepoint = "signal_generate")]
pub fn signal_generate(ctx: RawTracePointContext) -> u32 {
    if kernel::offsets_ready() {
        signal(&ctx);
    }
    0
}

#[inline(always)]
fn signal(ctx: &RawTracePointContext) {
    let task: u64 = ctx.arg(2);
    let Ok(target_pid) = read::<u32>(task, off!(task_tgid)) else {
        return;
    };
    if target_pid != kernel::settings().self_tgid || target_pid == 0 {
        return;
    }
    let sig: u64 = ctx.arg(0);
    let info: u64 = ctx.arg(1);
    let group: u64 = ctx.arg(3);
    let result: u64 = ctx.arg(4);
    let target_tid = read::<u32>(task, off!(task_pid)).unwrap_or(0);
    // The kernel passes small constants instead of a pointer for SEND_SIG_NOINFO (0)
    // and SEND_SIG_PRIV (1).
    let code = if info > 1 {
        read::<i32>(info, off!(siginfo_code)).unwrap_or(0)
    } else if info == 1 {
        0x80 // SI_KERNEL
    } else {
        0 // SI_USER
    };
    let Some(mut rec) = Record::<SignalEvent>::start(kind::SIGNAL) else {
        return;
    };
    let me = kernel::Task::current();
    let ev = rec.fixed();
    // SAFETY: `ev` points at this CPU's scratch buffer, sized and aligned for the struct.
    unsafe {
        (*ev).ppid = me.ppid();
        (*ev).flags = if group != 0 { flags::SIGNAL_GROUP } else { 0 };
        (*ev).creds = me.creds();
        (*ev).cgroup_id = me.cgroup_id();
        (*ev).sig = sig as i32;
        (*ev).code = code;
        (*ev).target_tid = target_tid;
        (*ev).target_pid = target_pid;
        (*ev).result = result as i32;
        (*ev)._pad = 0;
        me.comm_into(&raw mut (*ev).comm);
    }
    rec.submit();
}
