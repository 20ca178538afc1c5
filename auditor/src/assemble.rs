//! Decoded kernel records -> events. Pairs each exec entry with its exit on the thread
//! id, turns path blobs into absolute paths, flags into words.
//!
//! Pending entries are bounded ([`MAX_PENDING`]); an entry whose exit does not arrive
//! within [`RESULT_TIMEOUT_NS`] (or that is evicted when the table is full) is still
//! emitted, with `ret: null` and the warning `result_missing`. An exit without an entry
//! (e.g. the agent started mid-exec) is emitted with `entry_missing`. Nothing is dropped.

use std::collections::HashMap;

use auditor_common::{ID_UNKNOWN, flags, syscall};

use crate::{
    decode::{ExecRecord, ExecResultRecord, Record, path_from_blob, split_argv},
    event::{Body, Creds, Exec},
};

pub const MAX_PENDING: usize = 65_536;
pub const RESULT_TIMEOUT_NS: u64 = 10_000_000_000;

/// An event body with its kernel timestamp; the pipeline adds sequence and wall time.
#[derive(Debug, Clone, PartialEq)]
pub struct Stamped {
    pub boot_ns: u64,
    pub body: Body,
}

#[derive(Default)]
pub struct Assembler {
    pending: HashMap<u32, ExecRecord>,
}

impl Assembler {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    pub fn push(&mut self, rec: Record, out: &mut Vec<Stamped>) {
        match rec {
            Record::Exec(e) => {
                if self.pending.len() >= MAX_PENDING {
                    self.evict_oldest(out);
                }
                // A second entry on the same thread without an exit between: the first
                // exit was lost; emit the first entry as is.
                if let Some(prev) = self.pending.insert(e.header.tid, e) {
                    out.push(exec_event(prev, None));
                }
            }
            Record::ExecResult(r) => {
                let entry = self.pending.remove(&r.header.tid).or_else(|| {
                    // A non-leader thread that execs takes over the leader's tid: match on
                    // the thread group instead.
                    let tid = self
                        .pending
                        .iter()
                        .filter(|(_, e)| e.header.pid == r.header.pid)
                        .min_by_key(|(_, e)| e.header.boot_ns)
                        .map(|(&tid, _)| tid)?;
                    self.pending.remove(&tid)
                });
                match entry {
                    Some(e) => out.push(exec_event(e, Some(r))),
                    None => out.push(orphan_result(r)),
                }
            }
        }
    }

    /// Emits entries whose exit is overdue.
    pub fn expire(&mut self, now_boot_ns: u64, out: &mut Vec<Stamped>) {
        let overdue: Vec<u32> = self
            .pending
            .iter()
            .filter(|(_, e)| now_boot_ns.saturating_sub(e.header.boot_ns) > RESULT_TIMEOUT_NS)
            .map(|(&tid, _)| tid)
            .collect();
        for tid in overdue {
            if let Some(e) = self.pending.remove(&tid) {
                out.push(exec_event(e, None));
            }
        }
    }

    /// Emits every pending entry (shutdown).
    pub fn drain(&mut self, out: &mut Vec<Stamped>) {
        let mut all: Vec<ExecRecord> = self.pending.drain().map(|(_, e)| e).collect();
        all.sort_by_key(|e| e.header.boot_ns);
        out.extend(all.into_iter().map(|e| exec_event(e, None)));
    }

    fn evict_oldest(&mut self, out: &mut Vec<Stamped>) {
        let oldest = self
            .pending
            .iter()
            .min_by_key(|(_, e)| e.header.boot_ns)
            .map(|(&t, _)| t);
        if let Some(e) = oldest.and_then(|t| self.pending.remove(&t)) {
            out.push(exec_event(e, None));
        }
    }
}

fn id(v: u32) -> Option<u32> {
    (v != ID_UNKNOWN).then_some(v)
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Joins an exec entry and (if it arrived) its exit.
fn exec_event(e: ExecRecord, r: Option<ExecResultRecord>) -> Stamped {
    let mut warnings = Vec::new();
    let f = e.flags;
    for (bit, word) in [
        (flags::ARGV_FAULT, "argv_fault"),
        (flags::FILENAME_TRUNCATED, "filename_truncated"),
        (flags::FILENAME_FAULT, "filename_fault"),
        (flags::CWD_TRUNCATED, "cwd_truncated"),
        (flags::CWD_FAULT, "cwd_fault"),
        (flags::NO_OFFSETS, "no_kernel_offsets"),
    ] {
        if f & bit != 0 {
            warnings.push(word);
        }
    }
    let cwd_ok = f & (flags::CWD_FAULT | flags::NO_OFFSETS) == 0;
    let base = cwd_ok.then(|| path_from_blob(&e.cwd_blob, f & flags::CWD_TRUNCATED == 0));
    let filename = lossy(&e.filename);
    let (cwd, dirfd) = if e.syscall == syscall::EXECVEAT {
        // With DIRFD_RESOLVED the base is the dirfd's directory, not the cwd.
        if f & flags::DIRFD_RESOLVED != 0 {
            (None, Some(e.dirfd))
        } else {
            (base.clone(), Some(e.dirfd))
        }
    } else {
        (base.clone(), None)
    };
    let mut ev = Exec {
        pid: e.header.pid,
        tid: e.header.tid,
        ppid: e.ppid,
        uid: id(e.creds.uid),
        gid: id(e.creds.gid),
        euid: id(e.creds.euid),
        egid: id(e.creds.egid),
        auid: id(e.creds.auid),
        sessionid: id(e.creds.sessionid),
        tty: (!e.tty.is_empty()).then(|| lossy(&e.tty)),
        comm: lossy(&e.comm),
        exe: None,
        exe_source: "argument",
        argv: split_argv(&e.argv),
        argv_truncated: f & flags::ARGV_TRUNCATED != 0,
        cwd,
        cgroup_id: e.cgroup_id,
        syscall: if e.syscall == syscall::EXECVEAT {
            "execveat"
        } else {
            "execve"
        },
        dirfd,
        ret: None,
        errno: None,
        success: None,
        comm_after: None,
        creds_after: None,
        warnings,
        filename: filename.clone(),
    };
    // Until the kernel tells us which file it mapped, the best we have is the argument.
    ev.exe = match (&base, filename.starts_with('/')) {
        (_, true) => Some(normalize(&filename)),
        (Some(b), false) if !filename.is_empty() => Some(normalize(&format!("{b}/{filename}"))),
        _ => None,
    };
    match r {
        Some(r) => apply_result(&mut ev, &r),
        None => ev.warnings.push("result_missing"),
    }
    Stamped {
        boot_ns: e.header.boot_ns,
        body: Body::Exec(Box::new(ev)),
    }
}

fn apply_result(ev: &mut Exec, r: &ExecResultRecord) {
    if r.flags & flags::NO_OFFSETS != 0 {
        ev.warnings.push("no_kernel_offsets");
        return;
    }
    ev.ret = Some(r.ret);
    ev.success = Some(r.ret == 0);
    if r.ret != 0 {
        ev.errno = Some(errno_name(r.ret));
        return;
    }
    ev.comm_after = Some(lossy(&r.comm));
    ev.creds_after = Some(Creds {
        uid: id(r.creds.uid),
        gid: id(r.creds.gid),
        euid: id(r.creds.euid),
        egid: id(r.creds.egid),
    });
    if r.flags & flags::EXE_FAULT != 0 {
        ev.warnings.push("exe_fault");
    } else {
        ev.exe = Some(path_from_blob(
            &r.exe_blob,
            r.flags & flags::EXE_TRUNCATED == 0,
        ));
        ev.exe_source = "kernel";
        if r.flags & flags::EXE_TRUNCATED != 0 {
            ev.warnings.push("exe_truncated");
        }
    }
}

/// An exit whose entry never arrived.
fn orphan_result(r: ExecResultRecord) -> Stamped {
    let mut ev = Exec {
        pid: r.header.pid,
        tid: r.header.tid,
        comm: String::new(),
        exe_source: "argument",
        syscall: "execve",
        warnings: vec!["entry_missing"],
        ..Default::default()
    };
    apply_result(&mut ev, &r);
    Stamped {
        boot_ns: r.header.boot_ns,
        body: Body::Exec(Box::new(ev)),
    }
}

/// Lexical normalisation of an absolute path: collapses `//`, `.` and `..`.
pub fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for p in path.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    format!("/{}", parts.join("/"))
}

/// "ENOENT" for -2, etc.; "E<n>" for numbers without a well-known name.
pub fn errno_name(ret: i64) -> String {
    let n = ret.unsigned_abs();
    let name = match n as i32 {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::ESRCH => "ESRCH",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::E2BIG => "E2BIG",
        libc::ENOEXEC => "ENOEXEC",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::ENFILE => "ENFILE",
        libc::EMFILE => "EMFILE",
        libc::ETXTBSY => "ETXTBSY",
        libc::EROFS => "EROFS",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ELOOP => "ELOOP",
        libc::ELIBBAD => "ELIBBAD",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ECONNREFUSED => "ECONNREFUSED",
        _ => return format!("E{n}"),
    };
    name.to_string()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use auditor_common::Header;

    fn entry(tid: u32, pid: u32, t: u64) -> ExecRecord {
        ExecRecord {
            header: Header {
                kind: 1,
                abi: 1,
                len: 0,
                boot_ns: t,
                pid,
                tid,
                cpu: 0,
                _pad: 0,
            },
            ppid: 1,
            flags: 0,
            creds: auditor_common::Creds {
                uid: 0,
                gid: 0,
                euid: 0,
                egid: 0,
                auid: ID_UNKNOWN,
                sessionid: 3,
            },
            cgroup_id: 9,
            syscall: syscall::EXECVE,
            dirfd: -100,
            at_flags: 0,
            argc: 2,
            comm: b"bash".to_vec(),
            tty: b"pts/0".to_vec(),
            filename: b"../bin/./ls".to_vec(),
            cwd_blob: b"tmp\0".to_vec(),
            argv: b"ls\0-l\0".to_vec(),
        }
    }

    fn result(tid: u32, pid: u32, ret: i64) -> ExecResultRecord {
        ExecResultRecord {
            header: Header {
                kind: 2,
                abi: 1,
                len: 0,
                boot_ns: 5,
                pid,
                tid,
                cpu: 0,
                _pad: 0,
            },
            ret,
            flags: 0,
            creds: auditor_common::Creds {
                uid: 0,
                gid: 0,
                euid: 0,
                egid: 0,
                auid: 0,
                sessionid: 0,
            },
            comm: b"ls".to_vec(),
            exe_blob: b"ls\0bin\0usr\0".to_vec(),
        }
    }

    fn exec(s: &Stamped) -> &Exec {
        match &s.body {
            Body::Exec(e) => e,
            other => panic!("not an exec: {other:?}"),
        }
    }

    #[test]
    fn pairs_entry_and_success() {
        let mut a = Assembler::new();
        let mut out = Vec::new();
        a.push(Record::Exec(entry(7, 7, 1)), &mut out);
        assert!(out.is_empty());
        a.push(Record::ExecResult(result(7, 7, 0)), &mut out);
        let e = exec(&out[0]);
        assert_eq!(e.exe.as_deref(), Some("/usr/bin/ls"));
        assert_eq!(e.exe_source, "kernel");
        assert_eq!(e.cwd.as_deref(), Some("/tmp"));
        assert_eq!(e.argv, vec!["ls", "-l"]);
        assert_eq!(e.auid, None);
        assert_eq!(e.tty.as_deref(), Some("pts/0"));
        assert_eq!((e.ret, e.success), (Some(0), Some(true)));
        assert_eq!(a.pending(), 0);
    }

    #[test]
    fn failure_keeps_the_argument_path() {
        let mut a = Assembler::new();
        let mut out = Vec::new();
        a.push(Record::Exec(entry(7, 7, 1)), &mut out);
        a.push(Record::ExecResult(result(7, 7, -2)), &mut out);
        let e = exec(&out[0]);
        assert_eq!(e.exe.as_deref(), Some("/bin/ls"));
        assert_eq!(e.exe_source, "argument");
        assert_eq!(e.errno.as_deref(), Some("ENOENT"));
        assert_eq!(e.success, Some(false));
    }

    #[test]
    fn thread_exec_matches_on_thread_group_and_nothing_is_dropped() {
        let mut a = Assembler::new();
        let mut out = Vec::new();
        a.push(Record::Exec(entry(8, 7, 1)), &mut out);
        a.push(Record::ExecResult(result(7, 7, 0)), &mut out);
        assert_eq!(exec(&out[0]).tid, 8);
        out.clear();
        a.push(Record::ExecResult(result(9, 9, 0)), &mut out);
        assert_eq!(exec(&out[0]).warnings, vec!["entry_missing"]);
        out.clear();
        a.push(Record::Exec(entry(10, 10, 1)), &mut out);
        a.expire(1 + RESULT_TIMEOUT_NS + 1, &mut out);
        assert_eq!(exec(&out[0]).warnings, vec!["result_missing"]);
        assert_eq!(exec(&out[0]).ret, None);
    }

    #[test]
    fn normalizes() {
        assert_eq!(normalize("/a/./b/../c//d"), "/a/c/d");
        assert_eq!(normalize("/../x"), "/x");
        assert_eq!(errno_name(-13), "EACCES");
        assert_eq!(errno_name(-4095), "E4095");
    }
}
