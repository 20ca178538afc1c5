//! Events about the evidence itself and the agent: the kernel ring cleared, signals
//! sent to the agent, ptrace of it, its memory or descriptors taken, its BPF objects
//! opened by id. The kernel hooks (auditor-ebpf `guard.rs`) keep only a cheap test;
//! here each record is matched against the agent's own identity ([`AgentSelf`]).

use std::collections::HashSet;

use auditor_common::sys_op;

use crate::{
    assemble::{Stamped, lossy, orphan_process, outcome, process},
    decode::{SignalRecord, SyscallRecord, SyscallResultRecord},
    event::{Body, Guarded, Signal, Tamper},
};

/// Who the agent is: its pid and the ids of its BPF programs, maps and links.
#[derive(Debug, Clone, Default)]
pub struct AgentSelf {
    pub pid: u32,
    pub bpf_ids: HashSet<u32>,
}

impl AgentSelf {
    /// This process, with the given BPF object ids.
    pub fn current(bpf_ids: HashSet<u32>) -> Self {
        Self {
            pid: std::process::id(),
            bpf_ids,
        }
    }

    /// Is `pid` (a process or thread id) one of the agent's threads?
    pub fn owns(&self, pid: u32) -> bool {
        self.pid != 0
            && (pid == self.pid
                || std::path::Path::new(&format!("/proc/{}/task/{pid}", self.pid)).exists())
    }
}

fn tamper(kind: &str, reason: String) -> Option<Tamper> {
    Some(Tamper {
        kind: kind.to_string(),
        reason,
    })
}

/// Sets the event's target process; true when it is the agent.
fn aimed_at_agent(ev: &mut Guarded, agent: &AgentSelf, target: u32) -> bool {
    ev.target_pid = Some(target);
    ev.targets_agent = agent.owns(target);
    ev.targets_agent
}

/// The process a pidfd refers to, read while the caller is (usually) still alive.
fn pidfd_target(pid: u32, fd: u64) -> Option<u32> {
    let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .and_then(|v| v.trim().parse::<i64>().ok())
        .and_then(|v| u32::try_from(v).ok())
}

fn bpf_cmd(cmd: u64) -> String {
    match cmd {
        9 => "prog_detach".into(),
        13 => "prog_get_fd_by_id".into(),
        14 => "map_get_fd_by_id".into(),
        30 => "link_get_fd_by_id".into(),
        34 => "link_detach".into(),
        n => format!("bpf_cmd_{n}"),
    }
}

/// A guard syscall entry joined with its result.
pub fn syscall_event(c: SyscallRecord, ret: Option<i64>, agent: &AgentSelf) -> Stamped {
    let mut ev = Guarded {
        process: process(&c.header, c.ppid, &c.creds, &c.comm, c.cgroup_id),
        ..Default::default()
    };
    let who = format!("{} (pid {})", lossy(&c.comm), c.header.pid);
    let body: fn(Box<Guarded>) -> Body;
    match c.nr {
        sys_op::SYSLOG => {
            body = Body::Syslog;
            ev.action = if c.args[0] == 4 {
                "read_clear".into()
            } else {
                "clear".into()
            };
            ev.tamper = tamper(
                "kernel_ring_cleared",
                format!(
                    "syslog({}) by {who} clears the kernel ring buffer",
                    ev.action
                ),
            );
        }
        sys_op::PTRACE => {
            body = Body::Ptrace;
            ev.action = if c.args[0] == 16 {
                "attach".into()
            } else {
                "seize".into()
            };
            let target = c.args[1] as u32;
            if aimed_at_agent(&mut ev, agent, target) {
                ev.tamper = tamper(
                    "agent_ptraced",
                    format!("{who} ptrace-{}ed the auditor (pid {target})", ev.action),
                );
            }
        }
        sys_op::PROCESS_VM_WRITEV => {
            body = Body::ProcessVmWritev;
            ev.action = "write".into();
            if aimed_at_agent(&mut ev, agent, c.args[0] as u32) {
                ev.tamper = tamper(
                    "agent_memory_written",
                    format!("{who} wrote into the auditor's memory"),
                );
            }
        }
        sys_op::PIDFD_GETFD => {
            body = Body::PidfdGetfd;
            ev.action = "getfd".into();
            ev.target_pid = pidfd_target(c.header.pid, c.args[0]);
            if ev.target_pid.is_none() {
                ev.warnings.push("pidfd_target_unknown");
            }
            ev.targets_agent = ev.target_pid.is_some_and(|p| agent.owns(p));
            if ev.targets_agent {
                ev.tamper = tamper(
                    "agent_fd_taken",
                    format!(
                        "{who} took a copy of the auditor's file descriptor {}",
                        c.args[1]
                    ),
                );
            }
        }
        _ => {
            body = Body::Bpf;
            ev.action = bpf_cmd(c.args[0]);
            let id = c.args[1] as u32;
            ev.bpf_id = Some(id);
            let by_id = matches!(c.args[0], 13 | 14 | 30);
            ev.targets_agent = by_id && agent.bpf_ids.contains(&id);
            if ev.targets_agent {
                ev.tamper = tamper(
                    "agent_bpf_access",
                    format!("{who} opened the auditor's BPF object {id} ({})", ev.action),
                );
            }
        }
    }
    match ret {
        Some(r) => (ev.ret, ev.success, ev.errno) = outcome(r),
        None => ev.warnings.push("result_missing"),
    }
    Stamped {
        boot_ns: c.header.boot_ns,
        body: body(Box::new(ev)),
    }
}

/// A guard syscall's result whose entry was lost.
pub fn orphan_result(r: &SyscallResultRecord) -> Stamped {
    let (ret, success, errno) = outcome(r.ret);
    let ev = Guarded {
        process: orphan_process(&r.header),
        action: "unknown".into(),
        ret,
        success,
        errno,
        warnings: vec!["entry_missing"],
        ..Default::default()
    };
    let op = r.op.saturating_sub(auditor_common::file_op::SYSCALL_BASE);
    let body: fn(Box<Guarded>) -> Body = match op {
        sys_op::SYSLOG => Body::Syslog,
        sys_op::PTRACE => Body::Ptrace,
        sys_op::PROCESS_VM_WRITEV => Body::ProcessVmWritev,
        sys_op::PIDFD_GETFD => Body::PidfdGetfd,
        _ => Body::Bpf,
    };
    Stamped {
        boot_ns: r.header.boot_ns,
        body: body(Box::new(ev)),
    }
}

pub fn signal_name(sig: i32) -> String {
    let name = match sig {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        5 => "SIGTRAP",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        10 => "SIGUSR1",
        11 => "SIGSEGV",
        12 => "SIGUSR2",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        17 => "SIGCHLD",
        18 => "SIGCONT",
        19 => "SIGSTOP",
        20 => "SIGTSTP",
        21 => "SIGTTIN",
        22 => "SIGTTOU",
        23 => "SIGURG",
        24 => "SIGXCPU",
        25 => "SIGXFSZ",
        26 => "SIGVTALRM",
        27 => "SIGPROF",
        28 => "SIGWINCH",
        29 => "SIGIO",
        30 => "SIGPWR",
        31 => "SIGSYS",
        n => return format!("SIG{n}"),
    };
    name.to_string()
}

fn si_code(code: i32) -> String {
    match code {
        0 => "SI_USER".into(),
        0x80 => "SI_KERNEL".into(),
        -1 => "SI_QUEUE".into(),
        -6 => "SI_TKILL".into(),
        n if n > 0 => format!("kernel_{n}"),
        n => format!("SI_{n}"),
    }
}

fn signal_result(r: i32) -> String {
    match r {
        0 => "delivered".into(),
        1 => "ignored".into(),
        2 => "already_pending".into(),
        3 => "overflow_fail".into(),
        4 => "lose_info".into(),
        n => format!("result_{n}"),
    }
}

/// A signal for one of the agent's threads. Every one is tamper-classified: stopping or
/// disturbing the auditor is what an attacker does right before covering tracks.
pub fn signal_event(s: SignalRecord, _agent: &AgentSelf) -> Stamped {
    let name = signal_name(s.sig);
    let sender = format!(
        "{} (pid {}, uid {})",
        lossy(&s.comm),
        s.header.pid,
        s.creds.uid
    );
    let kind = match s.sig {
        2 | 3 | 9 | 15 | 19 | 20 => "agent_stop_requested",
        _ => "agent_signalled",
    };
    let ev = Signal {
        process: process(&s.header, s.ppid, &s.creds, &s.comm, s.cgroup_id),
        tamper: tamper(kind, format!("{name} sent to the auditor by {sender}")),
        signal: name,
        signo: s.sig,
        code: si_code(s.code),
        target_pid: s.target_pid,
        target_tid: s.target_tid,
        group: s.flags & auditor_common::flags::SIGNAL_GROUP != 0,
        result: signal_result(s.result),
    };
    Stamped {
        boot_ns: s.header.boot_ns,
        body: Body::Signal(Box::new(ev)),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use auditor_common::{Creds, Header};

    fn header(pid: u32) -> Header {
        Header {
            pid,
            tid: pid,
            boot_ns: 5,
            ..Default::default()
        }
    }

    fn sys(nr: u32, args: [u64; 4]) -> SyscallRecord {
        SyscallRecord {
            header: header(4242),
            ppid: 1,
            flags: 0,
            creds: Creds::default(),
            cgroup_id: 0,
            nr,
            args,
            comm: b"evil".to_vec(),
        }
    }

    #[test]
    fn bpf_access_is_tamper_only_for_the_agents_objects() {
        let agent = AgentSelf {
            pid: 99,
            bpf_ids: [7, 8].into_iter().collect(),
        };
        let s = syscall_event(sys(sys_op::BPF, [13, 7, 0, 0]), Some(3), &agent);
        let Body::Bpf(g) = &s.body else { panic!() };
        assert_eq!(g.action, "prog_get_fd_by_id");
        assert!(g.targets_agent);
        assert_eq!(g.tamper.as_ref().unwrap().kind, "agent_bpf_access");
        let s = syscall_event(sys(sys_op::BPF, [14, 1234, 0, 0]), Some(3), &agent);
        assert!(s.body.tamper().is_none());
    }

    #[test]
    fn syslog_clear_and_signals() {
        let s = syscall_event(
            sys(sys_op::SYSLOG, [5, 0, 0, 0]),
            Some(0),
            &AgentSelf::default(),
        );
        assert_eq!(s.body.kind(), "syslog");
        assert_eq!(s.body.tamper().unwrap().kind, "kernel_ring_cleared");
        let sig = SignalRecord {
            header: header(4242),
            ppid: 1,
            flags: auditor_common::flags::SIGNAL_GROUP,
            creds: Creds::default(),
            cgroup_id: 0,
            sig: 15,
            code: 0,
            target_tid: 99,
            target_pid: 99,
            result: 0,
            comm: b"kill".to_vec(),
        };
        let s = signal_event(sig, &AgentSelf::default());
        let Body::Signal(v) = &s.body else { panic!() };
        assert_eq!(v.signal, "SIGTERM");
        assert_eq!(v.code, "SI_USER");
        assert!(v.group);
        assert_eq!(v.tamper.as_ref().unwrap().kind, "agent_stop_requested");
    }
}
