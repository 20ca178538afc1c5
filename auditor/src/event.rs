//! The events `auditor` emits: one JSON object per line (docs/EVENTS.md is the schema).
//! Every record carries `schema_version`; fields are only ever added in a version.

use serde::Serialize;

/// A name that is almost always a constant ("inet", "unlinkat") and only sometimes built
/// ("family_42", "io_uring:renameat"): no allocation per event for the common case.
pub type Name = std::borrow::Cow<'static, str>;

/// Version of the JSON schema in docs/EVENTS.md.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Event {
    pub schema_version: u32,
    /// Per-boot sequence number assigned by the daemon (1, 2, 3, ...; no gaps).
    pub seq: u64,
    /// Wall-clock time of the kernel capture (RFC 3339, UTC, nanoseconds).
    pub time: String,
    /// Kernel boot-clock nanoseconds of the capture (monotonic; for ordering).
    pub boot_ns: u64,
    #[serde(flatten)]
    pub body: Body,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Body {
    Exec(Box<Exec>),
    Delete(Box<FileOp>),
    Rename(Box<FileOp>),
    Truncate(Box<FileOp>),
    /// link, linkat, symlink, symlinkat.
    Link(Box<FileOp>),
    Connect(Box<Connect>),
    /// syslog(2) clearing the kernel ring.
    Syslog(Box<Guarded>),
    /// ptrace ATTACH/SEIZE.
    Ptrace(Box<Guarded>),
    /// bpf(2) opening BPF objects by id or detaching, by another process.
    Bpf(Box<Guarded>),
    ProcessVmWritev(Box<Guarded>),
    PidfdGetfd(Box<Guarded>),
    /// A signal sent to the auditor.
    Signal(Box<Signal>),
    Loss(Loss),
    DecodeError(DecodeErrorEvent),
    AgentStart(AgentStart),
    AgentReload(AgentReload),
    AgentStopping(AgentStopping),
}

impl Body {
    pub fn kind(&self) -> &'static str {
        match self {
            Body::Exec(_) => "exec",
            Body::Delete(_) => "delete",
            Body::Rename(_) => "rename",
            Body::Truncate(_) => "truncate",
            Body::Link(_) => "link",
            Body::Connect(_) => "connect",
            Body::Syslog(_) => "syslog",
            Body::Ptrace(_) => "ptrace",
            Body::Bpf(_) => "bpf",
            Body::ProcessVmWritev(_) => "process_vm_writev",
            Body::PidfdGetfd(_) => "pidfd_getfd",
            Body::Signal(_) => "signal",
            Body::Loss(_) => "loss",
            Body::DecodeError(_) => "decode_error",
            Body::AgentStart(_) => "agent_start",
            Body::AgentReload(_) => "agent_reload",
            Body::AgentStopping(_) => "agent_stopping",
        }
    }

    /// The tamper classification, if the event carries one.
    pub fn tamper(&self) -> Option<&Tamper> {
        match self {
            Body::Exec(e) => e.tamper.as_ref(),
            Body::Delete(f) | Body::Rename(f) | Body::Truncate(f) | Body::Link(f) => {
                f.tamper.as_ref()
            }
            Body::Syslog(g)
            | Body::Ptrace(g)
            | Body::Bpf(g)
            | Body::ProcessVmWritev(g)
            | Body::PidfdGetfd(g) => g.tamper.as_ref(),
            Body::Signal(s) => s.tamper.as_ref(),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct Creds {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub euid: Option<u32>,
    pub egid: Option<u32>,
}

/// The process an event is about. Flattened into each event's JSON object.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct Process {
    pub pid: u32,
    pub tid: u32,
    pub ppid: u32,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub euid: Option<u32>,
    pub egid: Option<u32>,
    /// Login uid; null when unset (a process not descended from a login).
    pub auid: Option<u32>,
    pub sessionid: Option<u32>,
    pub comm: String,
    pub cgroup_id: u64,
}

/// One exec attempt: the entry (what was asked) joined with its exit (what happened).
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct Exec {
    /// The caller (its `comm` is the name before the exec), flattened.
    #[serde(flatten)]
    pub process: Process,
    /// Controlling terminal (e.g. "pts/0"); null without one.
    pub tty: Option<String>,
    /// Absolute path of the executable: from the kernel's `mm->exe_file` when the exec
    /// succeeded, otherwise the filename argument made absolute against `cwd`.
    pub exe: Option<String>,
    /// "kernel" or "argument" (see `exe`).
    pub exe_source: &'static str,
    /// The filename argument exactly as passed.
    pub filename: String,
    pub argv: Vec<String>,
    pub argv_truncated: bool,
    /// Absolute working directory, resolved in the kernel.
    pub cwd: Option<String>,
    /// "execve" or "execveat".
    pub syscall: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dirfd: Option<i32>,
    /// Return code: 0 or -errno; null when the result never arrived.
    pub ret: Option<i64>,
    pub errno: Option<String>,
    pub success: Option<bool>,
    /// After a successful exec: the new image's name and credentials.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comm_after: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub creds_after: Option<Creds>,
    /// Set when the command itself destroys or hides evidence (see docs/EVENTS.md).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tamper: Option<Tamper>,
    /// Capture problems, as words: "argv_fault", "cwd_truncated", "result_missing", ...
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<&'static str>,
}

/// Why an event destroys or hides evidence.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Tamper {
    /// e.g. "log_deleted", "history_truncated", "audit_disabled" (or a user rule's kind).
    pub kind: String,
    /// The rule that matched, in words.
    pub reason: String,
}

/// A delete, rename or truncate touching a watched tree (the attempt and its outcome).
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct FileOp {
    /// Who: pid, tid, ppid, credentials, audit identity, comm, cgroup (flattened).
    #[serde(flatten)]
    pub process: Process,
    /// The syscall: unlink, unlinkat, rmdir, rename, renameat, renameat2, truncate,
    /// ftruncate, open, openat, openat2, creat, fallocate, link, linkat, symlink,
    /// symlinkat. Through io_uring: "io_uring:unlinkat", "io_uring:renameat", ...
    pub syscall: Name,
    /// Absolute path, its directory part resolved in the kernel. For a link: the new
    /// name created.
    pub path: String,
    /// The name argument exactly as passed ("" for ftruncate).
    pub raw_path: String,
    /// rename: the destination.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw_new_path: Option<String>,
    /// link: the existing file (absolute); symlink: the link's content, as given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// link events: true for a symbolic link, false for a hard link.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub symbolic: Option<bool>,
    /// Submitted through io_uring: which ring and request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub io_uring: Option<IoUringRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dirfd: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_dirfd: Option<i32>,
    /// ftruncate's file descriptor.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fd: Option<i32>,
    /// truncate/ftruncate: the new length.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub length: Option<u64>,
    /// AT_REMOVEDIR, RENAME_NOREPLACE, RENAME_EXCHANGE, RENAME_WHITEOUT, O_TRUNC, O_CREAT...
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<&'static str>,
    pub ret: Option<i64>,
    pub errno: Option<String>,
    pub success: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tamper: Option<Tamper>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<&'static str>,
}

/// One `connect(2)` attempt and its outcome.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct Connect {
    /// Who: pid, tid, ppid, credentials, audit identity, comm, cgroup (flattened).
    #[serde(flatten)]
    pub process: Process,
    pub fd: i32,
    /// "inet", "inet6", "unix", "unspec" or "family_<n>".
    pub family: Name,
    /// IP address (inet, inet6).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Unix socket path; an abstract name is shown with a leading "@".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    pub ret: Option<i64>,
    pub errno: Option<String>,
    /// true for 0; EINPROGRESS (non-blocking connect) counts as not yet known: null.
    pub success: Option<bool>,
    /// "connected", "in_progress" or "failed".
    pub outcome: Option<&'static str>,
    /// Submitted through io_uring: which ring and request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub io_uring: Option<IoUringRef>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<&'static str>,
}

/// An io_uring submission: kernel addresses, hashed into stable opaque ids (addresses
/// themselves are not leaked off the host).
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct IoUringRef {
    pub ring: String,
    pub request: String,
}

/// A syscall that touches the kernel's evidence or the auditor itself.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct Guarded {
    #[serde(flatten)]
    pub process: Process,
    /// What was asked: "clear", "read_clear" (syslog); "attach", "seize" (ptrace);
    /// "prog_get_fd_by_id", "map_get_fd_by_id", "link_get_fd_by_id", "link_detach",
    /// "prog_detach" (bpf); "write" (process_vm_writev); "getfd" (pidfd_getfd).
    pub action: String,
    /// The process acted on (ptrace, process_vm_writev, pidfd_getfd).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_pid: Option<u32>,
    /// bpf: the object id asked for (or the fd, for detach).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bpf_id: Option<u32>,
    /// The target is the auditor (its process, or one of its BPF objects).
    pub targets_agent: bool,
    pub ret: Option<i64>,
    pub errno: Option<String>,
    pub success: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tamper: Option<Tamper>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<&'static str>,
}

/// A signal generated for the auditor (the sender is the flattened process).
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct Signal {
    #[serde(flatten)]
    pub process: Process,
    /// "SIGTERM", "SIGKILL", ... or "SIG<n>".
    pub signal: String,
    pub signo: i32,
    /// How it was sent: "SI_USER" (kill), "SI_TKILL" (tgkill), "SI_QUEUE", "SI_KERNEL"...
    pub code: String,
    pub target_pid: u32,
    pub target_tid: u32,
    /// Process-directed (kill) rather than thread-directed (tgkill).
    pub group: bool,
    /// The kernel's verdict: "delivered", "ignored", "already_pending", ...
    pub result: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tamper: Option<Tamper>,
}

/// The watch list and rules were reloaded (SIGHUP).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AgentReload {
    pub watch_paths: Vec<String>,
    pub rule_files: Vec<String>,
    pub user_rules: usize,
    /// Why a reload was refused (the old configuration stays in force), or null.
    pub error: Option<String>,
}

/// The agent is stopping: the last record of its boot.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AgentStopping {
    /// "SIGTERM", "SIGINT", or "error: ...".
    pub reason: String,
    /// Events sequenced in this boot, this one included.
    pub events: u64,
    /// Kernel records lost in this boot.
    pub kernel_losses: u64,
}

/// Records the kernel could not deliver (ring buffer full), or that were lost elsewhere.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Loss {
    /// Where the loss happened: "kernel_ring_buffer" (full), "kernel_handoff" (a file
    /// hook could not reach the shared body); with a remote vault also the agent's own
    /// sources (docs/EVENTS.md).
    pub source: &'static str,
    /// Records lost in this window.
    pub records: u64,
    pub bytes: u64,
    /// Wall-clock time of the first and latest loss in this window.
    pub since: String,
    pub until: String,
    /// Records lost since the agent started.
    pub total_records: u64,
    pub per_cpu: Vec<CpuLoss>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CpuLoss {
    pub cpu: u32,
    pub records: u64,
}

/// A ring-buffer record that did not decode: kept, not dropped.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DecodeErrorEvent {
    pub error: String,
    pub len: usize,
    /// The first bytes, hex.
    pub head: String,
}

/// First record of every agent boot.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AgentStart {
    pub version: &'static str,
    pub boot_id: String,
    pub hostname: String,
    pub kernel: String,
    pub argv_max_bytes: u32,
    pub argv_max_args: u32,
    pub ring_bytes: u32,
    /// The agent's scheduling nice value (`None`: unreadable).
    pub nice: Option<i32>,
    /// Kernel hooks attached.
    pub hooks: usize,
    /// Optional hooks this kernel does not allow, with the reason (a blind spot, said).
    pub hooks_missing: Vec<String>,
}
