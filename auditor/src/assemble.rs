//! Decoded kernel records -> events. Pairs each exec entry with its exit on the thread
//! id, turns path blobs into absolute paths, flags into words.
//!
//! Pending entries are bounded ([`MAX_PENDING`]); an entry whose exit does not arrive
//! within [`RESULT_TIMEOUT_NS`] (or that is evicted when the table is full) is still
//! emitted, with `ret: null` and the warning `result_missing`. An exit without an entry
//! (e.g. the agent started mid-exec) is emitted with `entry_missing`. Nothing is dropped.

use std::collections::{HashMap, VecDeque};

use auditor_common::{Header, ID_UNKNOWN, file_op, flags, syscall};

use crate::{
    classify::{self, FileAction, UserRules},
    decode::{
        ConnectRecord, ExecRecord, ExecResultRecord, FileRecord, IoUringResultRecord, Record,
        SyscallRecord, SyscallResultRecord, path_from_blob, split_argv,
    },
    event::{Body, Connect, Creds, Exec, FileOp, IoUringRef, Name, Process},
    guard::{self, AgentSelf},
    watchlist::WatchList,
};

/// Symlinks remembered to recognise `ln -sf /dev/null FILE`, which creates the link
/// under a temporary name and renames it over FILE.
const RECENT_SYMLINKS: usize = 256;

pub const MAX_PENDING: usize = 65_536;
pub const RESULT_TIMEOUT_NS: u64 = 10_000_000_000;

/// An event body with its kernel timestamp; the pipeline adds sequence and wall time.
#[derive(Debug, Clone, PartialEq)]
pub struct Stamped {
    pub boot_ns: u64,
    pub body: Body,
}

/// A syscall entry waiting for its exit. A thread is in one syscall at a time, so one
/// table keyed by thread id holds all of them.
enum Entry {
    Exec(ExecRecord),
    File(FileRecord),
    Connect(ConnectRecord),
    Syscall(SyscallRecord),
}

impl Entry {
    fn header(&self) -> &Header {
        match self {
            Entry::Exec(e) => &e.header,
            Entry::File(f) => &f.header,
            Entry::Connect(c) => &c.header,
            Entry::Syscall(s) => &s.header,
        }
    }
}

/// A symlink seen (watched or not): who made it, where, pointing at what.
struct RecentSymlink {
    pid: u32,
    path: String,
    target: String,
}

#[derive(Default)]
pub struct Assembler {
    /// Syscall entries by thread id.
    pending: HashMap<u32, Entry>,
    /// io_uring submissions by request, until their completion.
    ring_pending: HashMap<u64, Entry>,
    watch: Option<WatchList>,
    rules: UserRules,
    agent: AgentSelf,
    recent_symlinks: VecDeque<RecentSymlink>,
    /// File records the kernel passed up conservatively (a relative name from an
    /// ancestor of a watched tree) that turned out to lie outside every watched tree.
    pub out_of_scope: u64,
}

impl Assembler {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_watch(watch: Option<WatchList>) -> Self {
        Self {
            watch,
            ..Self::default()
        }
    }

    /// Swaps in a new watch list and rules (reload).
    pub fn reconfigure(&mut self, watch: Option<WatchList>, rules: UserRules) {
        self.watch = watch;
        self.rules = rules;
    }

    pub fn set_rules(&mut self, rules: UserRules) {
        self.rules = rules;
    }

    /// Who the agent is, for recognising actions against it.
    pub fn set_agent(&mut self, agent: AgentSelf) {
        self.agent = agent;
    }

    pub fn pending(&self) -> usize {
        self.pending.len() + self.ring_pending.len()
    }

    pub fn push(&mut self, rec: Record, out: &mut Vec<Stamped>) {
        match rec {
            Record::Exec(e) => self.open(Entry::Exec(e), out),
            Record::File(f) if f.req != 0 => self.open_ring(f.req, Entry::File(f), out),
            Record::Connect(c) if c.req != 0 => self.open_ring(c.req, Entry::Connect(c), out),
            Record::File(f) => self.open(Entry::File(f), out),
            Record::Connect(c) => self.open(Entry::Connect(c), out),
            Record::Syscall(c) => self.open(Entry::Syscall(c), out),
            Record::Signal(sig) => out.push(guard::signal_event(sig, &self.agent)),
            Record::IoUringResult(r) => match self.ring_pending.remove(&r.req) {
                Some(e) => self.close_ring(e, &r, out),
                None => out.push(orphan_ring_result(&r)),
            },
            Record::ExecResult(r) => {
                let entry = match self.pending.remove(&r.header.tid) {
                    Some(Entry::Exec(e)) => Some(e),
                    other => {
                        if let Some(o) = other {
                            self.close(o, out);
                        }
                        self.exec_of_thread_group(r.header.pid)
                    }
                };
                match entry {
                    Some(e) => out.push(exec_event(e, Some(r), &self.rules)),
                    None => out.push(orphan_result(r)),
                }
            }
            Record::SyscallResult(r) => {
                let is_connect = r.op == file_op::CONNECT;
                let is_guard = r.op >= file_op::SYSCALL_BASE;
                match self.pending.remove(&r.header.tid) {
                    Some(Entry::Connect(c)) if is_connect => {
                        out.push(connect_event(c, Some(r.ret)));
                    }
                    Some(Entry::Syscall(c)) if is_guard => {
                        out.push(guard::syscall_event(c, Some(r.ret), &self.agent));
                    }
                    Some(Entry::File(f)) if !is_connect && !is_guard => {
                        self.emit_file(f, Some(r.ret), out);
                    }
                    other => {
                        if let Some(o) = other {
                            self.close(o, out);
                        }
                        out.push(if is_connect {
                            orphan_connect_result(&r)
                        } else if is_guard {
                            guard::orphan_result(&r)
                        } else {
                            orphan_file_result(&r)
                        });
                    }
                }
            }
        }
    }

    /// A non-leader thread that execs takes over the leader's tid: its exit is matched on
    /// the thread group instead.
    fn exec_of_thread_group(&mut self, pid: u32) -> Option<ExecRecord> {
        let tid = self
            .pending
            .iter()
            .filter(|(_, e)| matches!(e, Entry::Exec(x) if x.header.pid == pid))
            .min_by_key(|(_, e)| e.header().boot_ns)
            .map(|(&tid, _)| tid)?;
        match self.pending.remove(&tid) {
            Some(Entry::Exec(e)) => Some(e),
            _ => None,
        }
    }

    /// Records a syscall entry under its thread id.
    fn open(&mut self, entry: Entry, out: &mut Vec<Stamped>) {
        let tid = entry.header().tid;
        for e in insert_bounded(&mut self.pending, tid, entry) {
            self.close(e, out);
        }
    }

    /// Records an io_uring submission under its request until its completion.
    fn open_ring(&mut self, req: u64, entry: Entry, out: &mut Vec<Stamped>) {
        for e in insert_bounded(&mut self.ring_pending, req, entry) {
            self.close(e, out);
        }
    }

    fn close_ring(&mut self, entry: Entry, r: &IoUringResultRecord, out: &mut Vec<Stamped>) {
        match entry {
            Entry::File(f) => self.emit_file(f, Some(r.ret), out),
            Entry::Connect(c) => out.push(connect_event(c, Some(r.ret))),
            other => self.close(other, out),
        }
    }

    /// Emits an entry whose exit will not come (`result_missing`).
    fn close(&mut self, entry: Entry, out: &mut Vec<Stamped>) {
        match entry {
            Entry::Exec(e) => out.push(exec_event(e, None, &self.rules)),
            Entry::File(f) => self.emit_file(f, None, out),
            Entry::Connect(c) => out.push(connect_event(c, None)),
            Entry::Syscall(c) => out.push(guard::syscall_event(c, None, &self.agent)),
        }
    }

    fn emit_file(&mut self, e: FileRecord, ret: Option<i64>, out: &mut Vec<Stamped>) {
        let built = file_event(
            e,
            ret,
            self.watch.as_ref(),
            &self.rules,
            &self.recent_symlinks,
        );
        if let Some(link) = built.symlink {
            if self.recent_symlinks.len() >= RECENT_SYMLINKS {
                self.recent_symlinks.pop_front();
            }
            self.recent_symlinks.push_back(link);
        }
        match built.event {
            Some(s) => out.push(s),
            None => self.out_of_scope += 1,
        }
    }

    /// Emits entries whose exit is overdue.
    pub fn expire(&mut self, now_boot_ns: u64, out: &mut Vec<Stamped>) {
        let mut overdue = take_overdue(&mut self.pending, now_boot_ns);
        overdue.extend(take_overdue(&mut self.ring_pending, now_boot_ns));
        for e in overdue {
            self.close(e, out);
        }
    }

    /// Emits every pending entry, oldest first (shutdown).
    pub fn drain(&mut self, out: &mut Vec<Stamped>) {
        let mut all: Vec<Entry> = self.pending.drain().map(|(_, e)| e).collect();
        all.extend(self.ring_pending.drain().map(|(_, e)| e));
        all.sort_by_key(|e| e.header().boot_ns);
        for e in all {
            self.close(e, out);
        }
    }
}

/// Inserts into a bounded pending table. Returns what must be emitted without its result:
/// the oldest entry when the table is full, and an earlier entry under the same key (a
/// second entry on a thread whose exit never came).
fn insert_bounded<K: std::hash::Hash + Eq + Copy>(
    table: &mut HashMap<K, Entry>,
    key: K,
    entry: Entry,
) -> Vec<Entry> {
    let mut evicted = Vec::new();
    if table.len() >= MAX_PENDING {
        let oldest = table
            .iter()
            .min_by_key(|(_, e)| e.header().boot_ns)
            .map(|(&k, _)| k);
        evicted.extend(oldest.and_then(|k| table.remove(&k)));
    }
    evicted.extend(table.insert(key, entry));
    evicted
}

/// Removes and returns the entries older than [`RESULT_TIMEOUT_NS`].
fn take_overdue<K: std::hash::Hash + Eq + Copy>(
    table: &mut HashMap<K, Entry>,
    now_boot_ns: u64,
) -> Vec<Entry> {
    let overdue: Vec<K> = table
        .iter()
        .filter(|(_, e)| now_boot_ns.saturating_sub(e.header().boot_ns) > RESULT_TIMEOUT_NS)
        .map(|(&k, _)| k)
        .collect();
    overdue.iter().filter_map(|k| table.remove(k)).collect()
}

pub(crate) fn id(v: u32) -> Option<u32> {
    (v != ID_UNKNOWN).then_some(v)
}

/// Who did it, from a record's header and task fields.
pub(crate) fn process(
    h: &Header,
    ppid: u32,
    c: &auditor_common::Creds,
    comm: &[u8],
    cgroup_id: u64,
) -> Process {
    Process {
        pid: h.pid,
        tid: h.tid,
        ppid,
        uid: id(c.uid),
        gid: id(c.gid),
        euid: id(c.euid),
        egid: id(c.egid),
        auid: id(c.auid),
        sessionid: id(c.sessionid),
        comm: lossy(comm),
        cgroup_id,
    }
}

/// For an exit whose entry was lost: only the header is known.
pub(crate) fn orphan_process(h: &Header) -> Process {
    Process {
        pid: h.pid,
        tid: h.tid,
        ..Default::default()
    }
}

pub(crate) fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Joins an exec entry and (if it arrived) its exit.
fn exec_event(e: ExecRecord, r: Option<ExecResultRecord>, rules: &UserRules) -> Stamped {
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
        process: process(&e.header, e.ppid, &e.creds, &e.comm, e.cgroup_id),
        tty: (!e.tty.is_empty()).then(|| lossy(&e.tty)),
        exe: None,
        exe_source: "argument",
        argv: split_argv(&e.argv),
        argv_truncated: f & flags::ARGV_TRUNCATED != 0,
        cwd,
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
        tamper: None,
        filename: filename.clone(),
    };
    // Until the kernel tells us which file it mapped, the best we have is the argument.
    if !e.filename.is_empty() {
        ev.exe = join_path(
            &e.filename,
            &e.cwd_blob,
            f & flags::CWD_TRUNCATED != 0,
            !cwd_ok,
        );
    }
    match r {
        Some(r) => apply_result(&mut ev, &r),
        None => ev.warnings.push("result_missing"),
    }
    ev.tamper = classify::exec(rules, &ev);
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
        process: orphan_process(&r.header),
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

fn op_name(op: u32) -> &'static str {
    match op {
        file_op::UNLINK => "unlink",
        file_op::UNLINKAT => "unlinkat",
        file_op::RMDIR => "rmdir",
        file_op::RENAME => "rename",
        file_op::RENAMEAT => "renameat",
        file_op::RENAMEAT2 => "renameat2",
        file_op::TRUNCATE => "truncate",
        file_op::FTRUNCATE => "ftruncate",
        file_op::OPEN => "open",
        file_op::OPENAT => "openat",
        file_op::OPENAT2 => "openat2",
        file_op::CREAT => "creat",
        file_op::FALLOCATE => "fallocate",
        file_op::LINK => "link",
        file_op::LINKAT => "linkat",
        file_op::SYMLINK => "symlink",
        file_op::SYMLINKAT => "symlinkat",
        _ => "unknown",
    }
}

const AT_FDCWD: i32 = -100;

/// Absolute path of one name argument: the name if absolute, else the kernel-resolved
/// base joined with it. `None` when the base could not be resolved.
fn join_path(
    name: &[u8],
    base_blob: &[u8],
    base_truncated: bool,
    base_fault: bool,
) -> Option<String> {
    let name = lossy(name);
    if name.starts_with('/') {
        return Some(normalize_owned(name));
    }
    if base_fault {
        return None;
    }
    let base = path_from_blob(base_blob, !base_truncated);
    Some(if name.is_empty() {
        base
    } else if base_truncated {
        format!("{base}/{name}")
    } else {
        normalize_owned(format!("{base}/{name}"))
    })
}

fn op_flag_words(op: u32, fl: u32) -> Vec<&'static str> {
    let mut w = Vec::new();
    match op {
        file_op::UNLINKAT if fl & 0x200 != 0 => w.push("AT_REMOVEDIR"),
        file_op::LINKAT if fl & 0x400 != 0 => w.push("AT_SYMLINK_FOLLOW"),
        file_op::RENAMEAT2 => {
            for (bit, name) in [
                (1, "RENAME_NOREPLACE"),
                (2, "RENAME_EXCHANGE"),
                (4, "RENAME_WHITEOUT"),
            ] {
                if fl & bit != 0 {
                    w.push(name);
                }
            }
        }
        file_op::FALLOCATE => {
            for (bit, name) in [
                (0x01, "FALLOC_FL_KEEP_SIZE"),
                (0x02, "FALLOC_FL_PUNCH_HOLE"),
                (0x08, "FALLOC_FL_COLLAPSE_RANGE"),
                (0x10, "FALLOC_FL_ZERO_RANGE"),
            ] {
                if fl & bit != 0 {
                    w.push(name);
                }
            }
        }
        file_op::OPEN | file_op::OPENAT | file_op::OPENAT2 | file_op::CREAT => {
            for (bit, name) in [
                (0o1000, "O_TRUNC"),
                (0o100, "O_CREAT"),
                (0o200, "O_EXCL"),
                (0o2000, "O_APPEND"),
            ] {
                if fl & bit != 0 {
                    w.push(name);
                }
            }
        }
        _ => {}
    }
    w
}

/// What `file_event` produced: the event (or `None`: outside every watched tree), and a
/// symlink to remember.
struct BuiltFile {
    event: Option<Stamped>,
    symlink: Option<RecentSymlink>,
}

/// An opaque, stable id for a kernel address (not the address itself).
fn kernel_ref(addr: u64) -> String {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(addr.to_ne_bytes());
    hex::encode(&d[..6])
}

fn ring_ref(ring: u64, req: u64) -> Option<IoUringRef> {
    (req != 0).then(|| IoUringRef {
        ring: kernel_ref(ring),
        request: kernel_ref(req),
    })
}

/// Builds a file event (`event: None` when neither path is in a watched tree: the
/// kernel passes relative names from ancestors of watched trees up for this exact
/// check).
fn file_event(
    e: FileRecord,
    ret: Option<i64>,
    watch: Option<&WatchList>,
    rules: &UserRules,
    recent: &VecDeque<RecentSymlink>,
) -> BuiltFile {
    let f = e.flags;
    let mut warnings = Vec::new();
    for (bit, word) in [
        (flags::NAME1_TRUNCATED, "path_truncated"),
        (flags::NAME1_FAULT, "path_fault"),
        (flags::BASE1_TRUNCATED, "base_truncated"),
        (flags::BASE1_FAULT, "base_unresolved"),
        (flags::NAME2_TRUNCATED, "new_path_truncated"),
        (flags::NAME2_FAULT, "new_path_fault"),
        (flags::BASE2_TRUNCATED, "new_base_truncated"),
        (flags::BASE2_FAULT, "new_base_unresolved"),
    ] {
        if f & bit != 0 {
            warnings.push(word);
        }
    }
    let is_rename = matches!(
        e.op,
        file_op::RENAME | file_op::RENAMEAT | file_op::RENAMEAT2
    );
    let is_symlink = matches!(e.op, file_op::SYMLINK | file_op::SYMLINKAT);
    let is_link = is_symlink || matches!(e.op, file_op::LINK | file_op::LINKAT);
    let two_names = is_rename || is_link;
    let raw1 = lossy(&e.name1);
    // A symlink's content is not a path of the caller: it stays as given.
    let path1 = if is_symlink {
        Some(raw1.clone())
    } else {
        join_path(
            &e.name1,
            &e.base1_blob,
            f & flags::BASE1_TRUNCATED != 0,
            f & flags::BASE1_FAULT != 0,
        )
    };
    let path2 = two_names
        .then(|| {
            join_path(
                &e.name2,
                &e.base2_blob,
                f & flags::BASE2_TRUNCATED != 0,
                f & flags::BASE2_FAULT != 0,
            )
        })
        .flatten();
    let scope = |p: &Option<String>| match (watch, p) {
        (Some(w), Some(p)) if p.starts_with('/') => w.classify(p),
        _ => None,
    };
    let (s1, s2) = (scope(&path1), scope(&path2));
    let succeeded = ret.is_some_and(|r| r >= 0);
    // Every successful symlink that reached us is remembered, watched or not: `ln -sf`
    // makes its link under a temporary name, then renames it over the target.
    let symlink = (is_symlink && succeeded)
        .then(|| {
            path2.as_ref().map(|p| RecentSymlink {
                pid: e.header.pid,
                path: p.clone(),
                target: raw1.clone(),
            })
        })
        .flatten();
    // An unresolved path the kernel flagged stays: better an extra event than a miss.
    let unresolved = path1.is_none() || (two_names && path2.is_none());
    if watch.is_some() && s1.is_none() && s2.is_none() && !unresolved {
        return BuiltFile {
            event: None,
            symlink,
        };
    }
    let syscall: Name = if e.req != 0 {
        format!("io_uring:{}", op_name(e.op)).into()
    } else {
        op_name(e.op).into()
    };
    let (path, raw_path, new_path, raw_new_path, target) = if is_link {
        // A link event's path is the name created; target what it points at.
        (
            path2.clone().unwrap_or_else(|| lossy(&e.name2)),
            lossy(&e.name2),
            None,
            None,
            Some(path1.clone().unwrap_or_else(|| raw1.clone())),
        )
    } else {
        (
            path1.clone().unwrap_or_else(|| raw1.clone()),
            raw1.clone(),
            is_rename.then(|| path2.clone().unwrap_or_else(|| lossy(&e.name2))),
            is_rename.then(|| lossy(&e.name2)),
            None,
        )
    };
    let mut ev = FileOp {
        process: process(&e.header, e.ppid, &e.creds, &e.comm, e.cgroup_id),
        syscall,
        path,
        raw_path,
        new_path,
        raw_new_path,
        target,
        symbolic: is_link.then_some(is_symlink),
        io_uring: ring_ref(e.ring, e.req),
        dirfd: (matches!(
            e.op,
            file_op::UNLINKAT
                | file_op::RENAMEAT
                | file_op::RENAMEAT2
                | file_op::OPENAT
                | file_op::OPENAT2
                | file_op::LINKAT
        ) && e.dirfd1 != AT_FDCWD)
            .then_some(e.dirfd1),
        new_dirfd: (matches!(
            e.op,
            file_op::RENAMEAT | file_op::RENAMEAT2 | file_op::LINKAT | file_op::SYMLINKAT
        ) && e.dirfd2 != AT_FDCWD)
            .then_some(e.dirfd2),
        fd: matches!(e.op, file_op::FTRUNCATE | file_op::FALLOCATE).then_some(e.fd),
        length: matches!(
            e.op,
            file_op::TRUNCATE | file_op::FTRUNCATE | file_op::FALLOCATE
        )
        .then_some(e.arg),
        flags: op_flag_words(e.op, e.op_flags),
        ret: None,
        errno: None,
        success: None,
        tamper: None,
        warnings,
    };
    match ret {
        Some(r) => file_result(&mut ev, r),
        None => ev.warnings.push("result_missing"),
    }
    let (action1, action2) = match e.op {
        file_op::UNLINK | file_op::UNLINKAT | file_op::RMDIR => (Some(FileAction::Delete), None),
        file_op::RENAME | file_op::RENAMEAT | file_op::RENAMEAT2 => {
            // RENAME_EXCHANGE swaps: both sides are replaced.
            let exchange = e.op == file_op::RENAMEAT2 && e.op_flags & 2 != 0;
            // A symlink this process just made, renamed over the watched name.
            let from_symlink = path1.as_ref().and_then(|p| {
                recent
                    .iter()
                    .rev()
                    .find(|l| l.pid == e.header.pid && l.path == *p)
            });
            if let Some(l) = from_symlink
                && s2.is_some()
            {
                ev.target = Some(l.target.clone());
                (None, Some(link_action(&l.target)))
            } else {
                match (s1, s2) {
                    (Some(_), None) => (Some(FileAction::RenameAway), None),
                    (None, Some(_)) => (None, Some(FileAction::RenameOnto)),
                    (Some(_), Some(_)) if exchange => (None, Some(FileAction::RenameOnto)),
                    _ => (None, None), // within the tree (e.g. rotation): recorded, not tamper
                }
            }
        }
        // A symlink at a watched name hides the log behind it.
        file_op::SYMLINK | file_op::SYMLINKAT => (None, Some(link_action(&raw1))),
        // A hard link adds a name; it destroys nothing (an unlink that follows does).
        file_op::LINK | file_op::LINKAT => (None, None),
        file_op::FALLOCATE => (Some(FileAction::Punch), None),
        _ => (Some(FileAction::Truncate), None),
    };
    ev.tamper = match (action1, s1, action2, s2) {
        (Some(a), Some(s), _, _) => classify::file(rules, a, s, &ev),
        (_, _, Some(a), Some(s)) => {
            // The event's path is the name the action hit.
            let mut shown = ev.clone();
            if let Some(p) = &path2 {
                shown.path = p.clone();
            }
            classify::file(rules, a, s, &shown)
        }
        _ => None,
    };
    let body = file_body(e.op, ev);
    BuiltFile {
        event: Some(Stamped {
            boot_ns: e.header.boot_ns,
            body,
        }),
        symlink,
    }
}

fn link_action(target: &str) -> FileAction {
    if classify::is_sink_device(target) {
        FileAction::LinkToNull
    } else {
        FileAction::Symlink
    }
}

fn family_name(f: u16) -> Name {
    match f {
        0 => "unspec".into(),
        1 => "unix".into(),
        2 => "inet".into(),
        10 => "inet6".into(),
        n => format!("family_{n}").into(),
    }
}

/// Dotted-quad text of an IPv4 address, as `Ipv4Addr`'s `Display` writes it, without the
/// formatting machinery (a visible item per connect event at high rates).
fn ipv4_text(a: [u8; 4]) -> String {
    let mut s = String::with_capacity(15);
    for (i, b) in a.into_iter().enumerate() {
        if i > 0 {
            s.push('.');
        }
        s.push_str(itoa::Buffer::new().format(b));
    }
    s
}

fn connect_outcome(ev: &mut Connect, ret: i64) {
    ev.ret = Some(ret);
    if ret == -i64::from(libc::EINPROGRESS) {
        ev.outcome = Some("in_progress");
        ev.errno = Some("EINPROGRESS".into());
    } else if ret == 0 {
        ev.outcome = Some("connected");
        ev.success = Some(true);
    } else {
        ev.outcome = Some("failed");
        ev.success = Some(false);
        ev.errno = Some(errno_name(ret));
    }
}

fn connect_event(c: ConnectRecord, ret: Option<i64>) -> Stamped {
    let mut ev = Connect {
        process: process(&c.header, c.ppid, &c.creds, &c.comm, c.cgroup_id),
        fd: c.fd,
        family: family_name(c.family),
        io_uring: ring_ref(c.ring, c.req),
        ..Default::default()
    };
    if c.flags & flags::ADDR_FAULT != 0 {
        ev.warnings.push("address_fault");
    } else {
        match c.family {
            2 => {
                ev.address = Some(ipv4_text([c.addr[0], c.addr[1], c.addr[2], c.addr[3]]));
                ev.port = Some(c.port);
            }
            10 => {
                ev.address = Some(std::net::Ipv6Addr::from(c.addr).to_string());
                ev.port = Some(c.port);
            }
            1 => {
                let p = &c.path;
                ev.path = Some(match p.first() {
                    Some(0) => format!("@{}", lossy(&p[1..]).trim_end_matches('\0')),
                    _ => lossy(&crate::decode::cstr(p)),
                });
            }
            _ => {}
        }
    }
    if c.flags & flags::ADDR_TRUNCATED != 0 {
        ev.warnings.push("address_truncated");
    }
    match ret {
        Some(r) => connect_outcome(&mut ev, r),
        None => ev.warnings.push("result_missing"),
    }
    Stamped {
        boot_ns: c.header.boot_ns,
        body: Body::Connect(Box::new(ev)),
    }
}

fn orphan_connect_result(r: &SyscallResultRecord) -> Stamped {
    let mut ev = Connect {
        process: orphan_process(&r.header),
        warnings: vec!["entry_missing"],
        ..Default::default()
    };
    connect_outcome(&mut ev, r.ret);
    Stamped {
        boot_ns: r.header.boot_ns,
        body: Body::Connect(Box::new(ev)),
    }
}

/// The event kind of a file op: delete, rename or truncate.
fn file_body(op: u32, ev: FileOp) -> Body {
    match op {
        file_op::UNLINK | file_op::UNLINKAT | file_op::RMDIR => Body::Delete(Box::new(ev)),
        file_op::RENAME | file_op::RENAMEAT | file_op::RENAMEAT2 => Body::Rename(Box::new(ev)),
        file_op::LINK | file_op::LINKAT | file_op::SYMLINK | file_op::SYMLINKAT => {
            Body::Link(Box::new(ev))
        }
        _ => Body::Truncate(Box::new(ev)),
    }
}

/// Sets a file op's outcome from the syscall's return value.
fn file_result(ev: &mut FileOp, ret: i64) {
    (ev.ret, ev.success, ev.errno) = outcome(ret);
}

/// `(ret, success, errno)` of a syscall that returns 0/positive or `-errno`.
pub(crate) fn outcome(ret: i64) -> (Option<i64>, Option<bool>, Option<String>) {
    (
        Some(ret),
        Some(ret >= 0),
        (ret < 0).then(|| errno_name(ret)),
    )
}

/// A file result whose entry was lost.
fn orphan_file_result(r: &SyscallResultRecord) -> Stamped {
    let mut ev = FileOp {
        process: orphan_process(&r.header),
        syscall: op_name(r.op).into(),
        warnings: vec!["entry_missing"],
        ..Default::default()
    };
    file_result(&mut ev, r.ret);
    let body = file_body(r.op, ev);
    Stamped {
        boot_ns: r.header.boot_ns,
        body,
    }
}

/// An io_uring completion whose submission was not seen (or already emitted).
fn orphan_ring_result(r: &IoUringResultRecord) -> Stamped {
    let mut ev = FileOp {
        process: orphan_process(&r.header),
        syscall: "io_uring".into(),
        io_uring: ring_ref(r.ring, r.req),
        warnings: vec!["entry_missing"],
        ..Default::default()
    };
    file_result(&mut ev, r.ret);
    Stamped {
        boot_ns: r.header.boot_ns,
        body: Body::Truncate(Box::new(ev)),
    }
}

/// Lexical normalisation of an absolute path: collapses `//`, `.` and `..`.
pub fn normalize(path: &str) -> String {
    if is_normal(path) {
        return path.to_owned();
    }
    normalize_slow(path)
}

/// [`normalize`], keeping `path`'s allocation when it is already normal (most are).
fn normalize_owned(path: String) -> String {
    if is_normal(&path) {
        return path;
    }
    normalize_slow(&path)
}

/// True when [`normalize`] leaves `path` as it is: absolute, and no component empty
/// (no `//`, no trailing `/` but the root's), `.` or `..`.
fn is_normal(path: &str) -> bool {
    match path.strip_prefix('/') {
        Some("") => true,
        Some(rest) => rest.split('/').all(|c| !matches!(c, "" | "." | "..")),
        None => false,
    }
}

fn normalize_slow(path: &str) -> String {
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
        assert_eq!(e.process.auid, None);
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
        assert_eq!(exec(&out[0]).process.tid, 8);
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
        for p in ["/", "/a", "/a/b.log", "/a/.b", "/a/..b", "/a/b/"] {
            assert_eq!(normalize(p), normalize_slow(p), "{p}");
        }
        assert_eq!(normalize("/../x"), "/x");
        assert_eq!(errno_name(-13), "EACCES");
        assert_eq!(errno_name(-4095), "E4095");
    }

    proptest::proptest! {
        #[test]
        fn ipv4_text_is_what_display_writes(a: [u8; 4]) {
            proptest::prop_assert_eq!(ipv4_text(a), std::net::Ipv4Addr::from(a).to_string());
        }

        #[test]
        fn the_normal_path_shortcut_changes_nothing(p in "[/.ab]{0,16}") {
            proptest::prop_assert_eq!(normalize(&p), normalize_slow(&p));
            proptest::prop_assert_eq!(normalize_owned(p.clone()), normalize_slow(&p));
        }
    }
}
