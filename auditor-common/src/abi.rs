//! Wire records written by the eBPF programs into the ring buffer.
//!
//! A record is a fixed-size struct (starting with [`Header`]) followed by a variable tail of
//! byte strings whose lengths the struct gives. The tail regions appear in the order the
//! struct lists their lengths. Paths in a tail are *path blobs*: the components of the path
//! from the leaf up to the root, each terminated by a NUL byte (the kernel walks dentries
//! leaf-first; userspace reverses them). An empty blob is the root directory.

use core::mem::{offset_of, size_of};

/// Bumped whenever a wire struct changes; the daemon refuses records of another version.
pub const ABI_VERSION: u16 = 2;

/// Event kinds. The numbers are part of the ABI: never reused, never renumbered.
pub mod kind {
    /// `execve`/`execveat` entry: what was asked for (filename, argv, cwd, creds).
    pub const EXEC: u16 = 1;
    /// `execve`/`execveat` exit: the return code, and for a success the new image's
    /// executable path and credentials.
    pub const EXEC_RESULT: u16 = 2;
    /// A file operation on a watched tree (delete, rename, truncate, open with O_TRUNC),
    /// at syscall entry: the attempt.
    pub const FILE: u16 = 3;
    /// The return value of a syscall whose entry record was emitted (paired on the tid).
    pub const SYSCALL_RESULT: u16 = 4;
    /// `connect(2)` entry: socket address (IPv4, IPv6, unix path, or the raw family).
    pub const CONNECT: u16 = 5;
    /// A syscall that touches the auditor or the kernel's own evidence (syslog clear,
    /// ptrace attach, `bpf()` on objects by id, process_vm_writev, pidfd_getfd), entry.
    pub const SYSCALL: u16 = 6;
    /// A signal generated for one of the auditor's own threads (sender's context).
    pub const SIGNAL: u16 = 7;
    /// Completion of an io_uring request whose submission was emitted (paired on `req`).
    pub const IOURING_RESULT: u16 = 8;
}

/// `FileEvent::op` values: which syscall.
pub mod file_op {
    pub const UNLINK: u32 = 1;
    pub const UNLINKAT: u32 = 2;
    pub const RMDIR: u32 = 3;
    pub const RENAME: u32 = 4;
    pub const RENAMEAT: u32 = 5;
    pub const RENAMEAT2: u32 = 6;
    pub const TRUNCATE: u32 = 7;
    pub const FTRUNCATE: u32 = 8;
    pub const OPEN: u32 = 9;
    pub const OPENAT: u32 = 10;
    pub const OPENAT2: u32 = 11;
    pub const CREAT: u32 = 12;
    /// `fallocate` with PUNCH_HOLE, COLLAPSE_RANGE or ZERO_RANGE (erasing part of a file).
    pub const FALLOCATE: u32 = 13;
    /// Hard links: name1 is the existing file, name2 the new name.
    pub const LINK: u32 = 14;
    pub const LINKAT: u32 = 15;
    /// Symbolic links: name1 is the link's content (never resolved), name2 the new name.
    pub const SYMLINK: u32 = 16;
    pub const SYMLINKAT: u32 = 17;
    /// Not a file op: the `op` of a connect's `SYSCALL_RESULT`.
    pub const CONNECT: u32 = 100;
    /// `SYSCALL_RESULT::op` of a `kind::SYSCALL` entry: `SYSCALL_BASE + sys_op`.
    pub const SYSCALL_BASE: u32 = 200;
}

/// `SyscallEvent::nr`: which watched syscall (not the architecture's syscall number).
pub mod sys_op {
    /// `syslog(2)` with a clearing action (READ_CLEAR or CLEAR). args: type, len.
    pub const SYSLOG: u32 = 1;
    /// `ptrace(2)` ATTACH or SEIZE. args: request, target pid.
    pub const PTRACE: u32 = 2;
    /// `bpf(2)` getting an fd by id, or detaching, by another process. args: cmd, the
    /// first u32 of the attribute (the id, or the fd for detach).
    pub const BPF: u32 = 3;
    /// `process_vm_writev(2)`: writing another process's memory. args: target pid.
    pub const PROCESS_VM_WRITEV: u32 = 4;
    /// `pidfd_getfd(2)`: taking a copy of another process's file descriptor. args: pidfd,
    /// target fd.
    pub const PIDFD_GETFD: u32 = 5;
}

/// io_uring opcodes (`IORING_OP_*`, uapi, stable) the programs record.
pub mod iouring_op {
    pub const CONNECT: u8 = 16;
    pub const FALLOCATE: u8 = 17;
    pub const OPENAT: u8 = 18;
    pub const OPENAT2: u8 = 28;
    pub const RENAMEAT: u8 = 35;
    pub const UNLINKAT: u8 = 36;
    pub const SYMLINKAT: u8 = 38;
    pub const LINKAT: u8 = 39;
    /// Linux 6.9+.
    pub const FTRUNCATE: u8 = 55;
}

/// `ExecEvent::syscall` values.
pub mod syscall {
    pub const EXECVE: u32 = 1;
    pub const EXECVEAT: u32 = 2;
}

/// Bits of `ExecEvent::flags` / `ExecResultEvent::flags`.
pub mod flags {
    /// argv was cut at the byte or argument cap; the last argument may be partial.
    pub const ARGV_TRUNCATED: u32 = 1 << 0;
    /// Reading argv from user memory failed part-way (e.g. a paged-out or bad pointer).
    pub const ARGV_FAULT: u32 = 1 << 1;
    /// The filename argument did not fit the filename cap.
    pub const FILENAME_TRUNCATED: u32 = 1 << 2;
    /// The filename argument could not be read from user memory.
    pub const FILENAME_FAULT: u32 = 1 << 3;
    /// The cwd path blob hit the depth or byte cap: the root-most components are missing.
    pub const CWD_TRUNCATED: u32 = 1 << 4;
    /// The cwd could not be walked (a kernel read failed).
    pub const CWD_FAULT: u32 = 1 << 5;
    /// The executable path blob hit the depth or byte cap.
    pub const EXE_TRUNCATED: u32 = 1 << 6;
    /// The executable path could not be walked.
    pub const EXE_FAULT: u32 = 1 << 7;
    /// The kernel-offset table was not initialised: the record carries only what the
    /// helpers give without BTF offsets (pid, tid, uid, gid, comm).
    pub const NO_OFFSETS: u32 = 1 << 8;
    /// `execveat` was given a directory fd whose path was resolved into the cwd region.
    pub const DIRFD_RESOLVED: u32 = 1 << 9;
    /// File events: the first / second name argument did not fit or could not be read.
    pub const NAME1_TRUNCATED: u32 = 1 << 10;
    pub const NAME1_FAULT: u32 = 1 << 11;
    pub const NAME2_TRUNCATED: u32 = 1 << 12;
    pub const NAME2_FAULT: u32 = 1 << 13;
    /// File events: the base directory (or the fd's file) walk of path 1 / 2 was cut or
    /// failed.
    pub const BASE1_TRUNCATED: u32 = 1 << 14;
    pub const BASE1_FAULT: u32 = 1 << 15;
    pub const BASE2_TRUNCATED: u32 = 1 << 16;
    pub const BASE2_FAULT: u32 = 1 << 17;
    /// Connect: the socket address could not be read from user memory.
    pub const ADDR_FAULT: u32 = 1 << 20;
    /// Connect: the unix path was longer than the capture.
    pub const ADDR_TRUNCATED: u32 = 1 << 21;
    /// File and connect events: submitted through io_uring (`ring`/`req` are set; the
    /// outcome comes as an `IOURING_RESULT`).
    pub const IO_URING: u32 = 1 << 22;
    /// Signal: process-directed (kill, sigqueue) rather than thread-directed (tgkill).
    pub const SIGNAL_GROUP: u32 = 1 << 23;
    /// File events: path 1 / 2 is inside a watched tree (why the record was emitted).
    pub const PATH1_WATCHED: u32 = 1 << 18;
    pub const PATH2_WATCHED: u32 = 1 << 19;
}

/// Caps compiled into the eBPF programs. Runtime configuration may lower, never raise them.
pub mod limits {
    /// Largest argv capture in bytes (NUL separators included).
    pub const ARGV_BYTES_MAX: u32 = 65_536;
    /// Largest number of arguments captured.
    pub const ARGV_ARGS_MAX: u32 = 1024;
    /// Default argv byte cap.
    pub const ARGV_BYTES_DEFAULT: u32 = 32_768;
    /// Default argument-count cap.
    pub const ARGV_ARGS_DEFAULT: u32 = 512;
    /// Filename capture, NUL included (PATH_MAX).
    pub const FILENAME_MAX: u32 = 4096;
    /// Path blob capture in bytes.
    pub const PATH_BYTES_MAX: u32 = 4096;
    /// Deepest path walked (components, mount crossings included).
    pub const PATH_DEPTH_MAX: u32 = 96;
    /// Longest single path component read, NUL included (NAME_MAX + 1).
    pub const NAME_MAX: u32 = 256;
    /// The per-CPU scratch tail: offsets are masked with `TAIL_WINDOW - 1` for the
    /// verifier, and `TAIL_SLACK` bytes follow so that any bounded write at a masked offset
    /// stays inside the buffer.
    pub const TAIL_WINDOW: usize = 1 << 17;
    pub const TAIL_SLACK: usize = 1 << 17;
    pub const TAIL_BUF: usize = TAIL_WINDOW + TAIL_SLACK;
    /// Watched path prefixes (absolute, no trailing slash) the kernel compares names with.
    pub const WATCH_PREFIXES_MAX: u32 = 64;
    /// Longest watched prefix, bytes.
    pub const PREFIX_LEN_MAX: usize = 256;
    /// Slots of [`super::PrefixHeads`].
    pub const PREFIX_HEADS: usize = 16;
    /// Watched directories identified by (device, inode) for relative names.
    pub const WATCH_INODES_MAX: u32 = 4096;
    /// Pending io_uring requests with an emitted entry.
    pub const INFLIGHT_MAX: u32 = 16_384;
    /// Slots of the direct-mapped table of threads with an emitted entry waiting for
    /// their syscall exit (a power of two: the slot is `tid` masked).
    pub const INFLIGHT_SLOTS: u32 = 1 << 16;
    /// The kernel's TASK_COMM_LEN.
    pub const COMM_LEN: usize = 16;
    /// `tty_struct::name` length.
    pub const TTY_LEN: usize = 64;
}

/// Map and global names, shared so that the loader and the programs cannot disagree.
pub mod names {
    pub const EVENTS: &str = "EVENTS";
    pub const LOSS: &str = "LOSS";
    pub const SCRATCH: &str = "SCRATCH";
    pub const OFFSETS: &str = "OFFSETS";
    pub const WATCH_PREFIXES: &str = "WATCH_PREFIXES";
    pub const WATCH_INODES: &str = "WATCH_INODES";
    pub const INFLIGHT: &str = "INFLIGHT";
    /// The file hooks' tail-call targets, slots in [`super::file_tail`].
    pub const FILE_TAILS: &str = "FILE_TAILS";
    pub const WATCH_COUNT: &str = "WATCH_COUNT";
    pub const WATCH_HEADS: &str = "WATCH_HEADS";
    pub const IOURING_INFLIGHT: &str = "IOURING_INFLIGHT";
    /// The program in `FILE_TAILS` slot [`super::file_tail::PART2`].
    pub const RENAME_PART2_PROG: &str = "file_rename_part2";
    /// The program in `FILE_TAILS` slot [`super::file_tail::BODY`].
    pub const FILE_BODY_PROG: &str = "file_entry_body";
    pub const SETTINGS: &str = "SETTINGS";
    /// One u32 the reader sets to 1 before it sleeps on an empty ring; the next record
    /// wakes it and sets it back to 0.
    pub const READER_IDLE: &str = "READER_IDLE";
}

/// Slots of the `FILE_TAILS` program array.
pub mod file_tail {
    /// `file_rename_part2`: resolves a two-name operation's second name.
    pub const PART2: u32 = 0;
    /// `file_entry_body`: builds and emits a file record from the arguments a hook left
    /// in `FILE_ARGS`.
    pub const BODY: u32 = 1;
    /// Slots in all.
    pub const COUNT: u32 = 2;
}

/// Slots of the per-CPU `LOSS` counters: why a record never reached the ring.
pub mod loss_slot {
    /// The ring buffer was full (or the scratch buffer unavailable).
    pub const RING: u32 = 0;
    /// A file hook could not hand its arguments to the shared body (`FILE_ARGS` or the
    /// `FILE_TAILS` tail call failed): counted once per hooked call, whether or not it
    /// would have produced a record.
    pub const HANDOFF: u32 = 1;
    /// Slots in all.
    pub const COUNT: u32 = 2;
}

/// Value for a credential or id the running kernel does not have (e.g. `loginuid` without
/// CONFIG_AUDIT), as the kernel itself uses for "unset".
pub const ID_UNKNOWN: u32 = u32::MAX;

/// Common start of every record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// One of [`kind`].
    pub kind: u16,
    /// [`ABI_VERSION`] of the program that wrote the record.
    pub abi: u16,
    /// Total record length in bytes: the struct plus its tail.
    pub len: u32,
    /// `bpf_ktime_get_boot_ns()` when the record was made.
    pub boot_ns: u64,
    /// Thread-group id (the user-visible pid).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// CPU that wrote the record.
    pub cpu: u32,
    pub _pad: u32,
}

/// Credentials and audit identity of the task.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Creds {
    pub uid: u32,
    pub gid: u32,
    pub euid: u32,
    pub egid: u32,
    /// Login uid (`/proc/PID/loginuid`); [`ID_UNKNOWN`] when unset.
    pub auid: u32,
    /// Audit session id; [`ID_UNKNOWN`] when unset.
    pub sessionid: u32,
}

/// `kind::EXEC`. Tail: filename, cwd path blob, argv (NUL-separated).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExecEvent {
    pub header: Header,
    pub ppid: u32,
    pub flags: u32,
    pub creds: Creds,
    pub cgroup_id: u64,
    /// One of [`syscall`].
    pub syscall: u32,
    /// `execveat` dirfd (AT_FDCWD for execve).
    pub dirfd: i32,
    /// `execveat` flags.
    pub at_flags: u32,
    /// Arguments captured.
    pub argc: u32,
    pub filename_len: u32,
    /// Path blob of the directory a relative filename is resolved against: the cwd, or the
    /// `execveat` dirfd's directory when [`flags::DIRFD_RESOLVED`] is set.
    pub cwd_len: u32,
    pub argv_len: u32,
    pub _pad: u32,
    pub comm: [u8; limits::COMM_LEN],
    pub tty: [u8; limits::TTY_LEN],
}

/// `kind::EXEC_RESULT`. Tail: executable path blob (empty on failure).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExecResultEvent {
    pub header: Header,
    /// The syscall's return value: 0 or `-errno`.
    pub ret: i64,
    pub flags: u32,
    pub exe_len: u32,
    /// Credentials after the exec (set-id binaries change them).
    pub creds: Creds,
    /// Name of the new image.
    pub comm: [u8; limits::COMM_LEN],
}

/// `kind::FILE`. Tail: name1 (raw argument, no NUL), base1 path blob, name2, base2 blob.
///
/// `base` is the directory a relative name resolves against (the cwd or the dirfd's
/// directory), walked in the kernel; empty for an absolute name. For `ftruncate` name1 is
/// empty and base1 is the path of the file the fd refers to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileEvent {
    pub header: Header,
    pub ppid: u32,
    pub flags: u32,
    pub creds: Creds,
    pub cgroup_id: u64,
    /// One of [`file_op`].
    pub op: u32,
    pub dirfd1: i32,
    pub dirfd2: i32,
    /// AT_REMOVEDIR, RENAME_* or open flags.
    pub op_flags: u32,
    /// truncate length, open mode, or fallocate length.
    pub arg: u64,
    /// ftruncate's fd (-1 otherwise).
    pub fd: i32,
    pub name1_len: u32,
    pub base1_len: u32,
    pub name2_len: u32,
    pub base2_len: u32,
    pub _pad: u32,
    pub comm: [u8; limits::COMM_LEN],
    /// io_uring: the ring (`struct io_ring_ctx *`, an identity only) and the request
    /// (pairs the entry with its `IOURING_RESULT`); 0 for a syscall.
    pub ring: u64,
    pub req: u64,
    /// Kernel-internal: where the second name is read from (user memory for a syscall,
    /// a kernel string for io_uring); zeroed before the record leaves the kernel.
    pub name2_ptr: u64,
}

/// `kind::CONNECT`. Tail: the unix socket path (`path_len` bytes; an abstract name
/// starts with a NUL byte), empty for other families.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectEvent {
    pub header: Header,
    pub ppid: u32,
    pub flags: u32,
    pub creds: Creds,
    pub cgroup_id: u64,
    pub fd: i32,
    /// `sa_family` as read from user memory (0 if unreadable, see `flags`).
    pub family: u16,
    /// Port in host byte order (IPv4/IPv6).
    pub port: u16,
    /// `addrlen` as passed.
    pub addrlen: u32,
    pub path_len: u32,
    /// IPv4 address in the first 4 bytes, or the IPv6 address.
    pub addr: [u8; 16],
    pub comm: [u8; limits::COMM_LEN],
    /// io_uring ring and request (see `FileEvent::ring`); 0 for a syscall.
    pub ring: u64,
    pub req: u64,
}

/// `kind::SYSCALL`. No tail.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyscallEvent {
    pub header: Header,
    pub ppid: u32,
    pub flags: u32,
    pub creds: Creds,
    pub cgroup_id: u64,
    /// One of [`sys_op`].
    pub nr: u32,
    pub _pad: u32,
    /// Arguments, as each [`sys_op`] documents.
    pub args: [u64; 4],
    pub comm: [u8; limits::COMM_LEN],
}

/// `kind::SIGNAL`: made in the sender's context. No tail.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SignalEvent {
    pub header: Header,
    pub ppid: u32,
    pub flags: u32,
    pub creds: Creds,
    pub cgroup_id: u64,
    pub sig: i32,
    /// `si_code` (SI_USER for kill(2), SI_TKILL for tgkill, SI_KERNEL, ...).
    pub code: i32,
    /// The target thread and its thread group.
    pub target_tid: u32,
    pub target_pid: u32,
    /// The kernel's verdict (TRACE_SIGNAL_DELIVERED, _IGNORED, _ALREADY_PENDING, ...).
    pub result: i32,
    pub _pad: u32,
    pub comm: [u8; limits::COMM_LEN],
}

/// `kind::IOURING_RESULT`. No tail.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoUringResultEvent {
    pub header: Header,
    pub req: u64,
    pub ret: i64,
    pub ring: u64,
}

/// `kind::SYSCALL_RESULT`: the exit of a syscall whose entry record was emitted.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyscallResultEvent {
    pub header: Header,
    pub ret: i64,
    /// The entry's `op`.
    pub op: u32,
    pub _pad: u32,
}

/// A watched prefix as the kernel compares it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WatchPrefix {
    pub len: u32,
    /// `watch_mode::TREE`: the prefix and everything below it; `watch_mode::ENTRIES`:
    /// only the prefix directory's direct entries (home directories: history files).
    pub mode: u16,
    /// `ENTRIES` only: the first byte every entry of interest starts with ('.' in a
    /// home: every history file there is a dotfile), 0 for any.
    pub lead: u8,
    /// `ENTRIES` only: the longest entry of interest, bytes (0: no bound).
    pub entry_max: u8,
    pub bytes: [u8; limits::PREFIX_LEN_MAX],
}

/// The watched prefixes' first eight bytes, so that a name is compared in full only
/// with the prefixes it could lie under. A slot is a head (`word`, `mask`) and the run
/// of `WATCH_PREFIXES` whose heads imply it (`range`: start | len << 8); a name can lie
/// under a prefix only if `name_word & mask[i] == word[i]` for that prefix's slot `i`,
/// where `name_word` is the name's first eight bytes read as a little-endian u64
/// (whatever follows a shorter name is outside every mask that could match it). No
/// slot's head implies another's, so a name matches at most one slot. The loader fills
/// it (`watchlist::KernelFilter`); unused slots match no absolute name; with more heads
/// than slots, slot 0 matches every name with the whole map as its run. Until `ready`
/// is set every name is compared with every prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrefixHeads {
    pub word: [u64; limits::PREFIX_HEADS],
    pub mask: [u64; limits::PREFIX_HEADS],
    pub range: [u64; limits::PREFIX_HEADS],
    pub ready: u64,
}

/// Key of a watched directory: `super_block.s_dev` and inode number.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct InodeKey {
    pub dev: u32,
    pub _pad: u32,
    pub ino: u64,
}

/// `WATCH_INODES` values.
pub mod watch_mode {
    /// The whole tree below this directory is watched.
    pub const TREE: u8 = 1;
    /// Only the directory's own entries are of interest (a home directory, for its shell
    /// history files); userspace filters by name.
    pub const ENTRIES: u8 = 2;
    /// An ancestor of a watched tree (e.g. `/var` for `/var/log`): a relative name from
    /// here may lead into the tree (`cd /var && rm log/x`); userspace decides.
    pub const ANCESTOR: u8 = 3;
}

/// Per-CPU counter of records the kernel could not hand to userspace (ring buffer full).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LossCounter {
    /// Records dropped on this CPU since load.
    pub records: u64,
    /// Bytes those records would have taken.
    pub bytes: u64,
    /// `boot_ns` of the first and the latest drop on this CPU (0 if none).
    pub first_boot_ns: u64,
    pub last_boot_ns: u64,
}

/// Runtime settings written into the programs' read-only data at load time.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// argv byte cap, `<= limits::ARGV_BYTES_MAX`.
    pub argv_bytes: u32,
    /// argv argument cap, `<= limits::ARGV_ARGS_MAX`.
    pub argv_args: u32,
    /// The daemon's own tgid: its execs are still recorded (nothing is exempt), this is
    /// reserved for the self-protection hooks.
    pub self_tgid: u32,
    /// Unused (the number of watched prefixes lives in the `WATCH_COUNT` map, so that
    /// the watch list can change while the programs run).
    pub _reserved: u32,
    /// 1: file events only for watched trees; 0: every file event (debugging).
    pub file_filter: u32,
    pub _pad: u32,
}

impl Settings {
    pub const DEFAULT: Self = Self {
        argv_bytes: limits::ARGV_BYTES_DEFAULT,
        argv_args: limits::ARGV_ARGS_DEFAULT,
        self_tgid: 0,
        _reserved: 0,
        file_filter: 1,
        _pad: 0,
    };
}

// Layout pins: the kernel and userspace compile these structs separately, for different
// targets; these asserts make any drift a build error on both sides.
const _: () = {
    assert!(size_of::<Header>() == 32);
    assert!(offset_of!(Header, len) == 4);
    assert!(offset_of!(Header, boot_ns) == 8);
    assert!(offset_of!(Header, pid) == 16);
    assert!(offset_of!(Header, tid) == 20);
    assert!(offset_of!(Header, cpu) == 24);
    assert!(size_of::<Creds>() == 24);
    assert!(offset_of!(ExecEvent, ppid) == 32);
    assert!(offset_of!(ExecEvent, flags) == 36);
    assert!(offset_of!(ExecEvent, creds) == 40);
    assert!(offset_of!(ExecEvent, cgroup_id) == 64);
    assert!(offset_of!(ExecEvent, syscall) == 72);
    assert!(offset_of!(ExecEvent, dirfd) == 76);
    assert!(offset_of!(ExecEvent, at_flags) == 80);
    assert!(offset_of!(ExecEvent, argc) == 84);
    assert!(offset_of!(ExecEvent, filename_len) == 88);
    assert!(offset_of!(ExecEvent, cwd_len) == 92);
    assert!(offset_of!(ExecEvent, argv_len) == 96);
    assert!(offset_of!(ExecEvent, comm) == 104);
    assert!(offset_of!(ExecEvent, tty) == 120);
    assert!(size_of::<ExecEvent>() == 184);
    assert!(offset_of!(ExecResultEvent, ret) == 32);
    assert!(offset_of!(ExecResultEvent, flags) == 40);
    assert!(offset_of!(ExecResultEvent, exe_len) == 44);
    assert!(offset_of!(ExecResultEvent, creds) == 48);
    assert!(offset_of!(ExecResultEvent, comm) == 72);
    assert!(size_of::<ExecResultEvent>() == 88);
    assert!(size_of::<LossCounter>() == 32);
    assert!(size_of::<Settings>() == 24);
    assert!(offset_of!(FileEvent, ppid) == 32);
    assert!(offset_of!(FileEvent, creds) == 40);
    assert!(offset_of!(FileEvent, cgroup_id) == 64);
    assert!(offset_of!(FileEvent, op) == 72);
    assert!(offset_of!(FileEvent, op_flags) == 84);
    assert!(offset_of!(FileEvent, arg) == 88);
    assert!(offset_of!(FileEvent, fd) == 96);
    assert!(offset_of!(FileEvent, name1_len) == 100);
    assert!(offset_of!(FileEvent, base2_len) == 112);
    assert!(offset_of!(FileEvent, comm) == 120);
    assert!(offset_of!(FileEvent, ring) == 136);
    assert!(offset_of!(FileEvent, req) == 144);
    assert!(size_of::<FileEvent>() == 160);
    assert!(offset_of!(ConnectEvent, cgroup_id) == 64);
    assert!(offset_of!(ConnectEvent, fd) == 72);
    assert!(offset_of!(ConnectEvent, family) == 76);
    assert!(offset_of!(ConnectEvent, port) == 78);
    assert!(offset_of!(ConnectEvent, addrlen) == 80);
    assert!(offset_of!(ConnectEvent, path_len) == 84);
    assert!(offset_of!(ConnectEvent, addr) == 88);
    assert!(offset_of!(ConnectEvent, comm) == 104);
    assert!(offset_of!(ConnectEvent, ring) == 120);
    assert!(size_of::<ConnectEvent>() == 136);
    assert!(offset_of!(SyscallEvent, nr) == 72);
    assert!(offset_of!(SyscallEvent, args) == 80);
    assert!(offset_of!(SyscallEvent, comm) == 112);
    assert!(size_of::<SyscallEvent>() == 128);
    assert!(offset_of!(SignalEvent, sig) == 72);
    assert!(offset_of!(SignalEvent, target_tid) == 80);
    assert!(offset_of!(SignalEvent, result) == 88);
    assert!(offset_of!(SignalEvent, comm) == 96);
    assert!(size_of::<SignalEvent>() == 112);
    assert!(size_of::<IoUringResultEvent>() == 56);
    assert!(offset_of!(SyscallResultEvent, ret) == 32);
    assert!(offset_of!(SyscallResultEvent, op) == 40);
    assert!(size_of::<SyscallResultEvent>() == 48);
    assert!(size_of::<WatchPrefix>() == 8 + limits::PREFIX_LEN_MAX);
    assert!(size_of::<InodeKey>() == 16);
    assert!(size_of::<PrefixHeads>() == 24 * limits::PREFIX_HEADS + 8);
    // A run's start and length fit in 8 bits each.
    assert!(limits::WATCH_PREFIXES_MAX < 256);
    // Every tail region fits the slack after a masked offset.
    assert!((limits::ARGV_BYTES_MAX as usize) < limits::TAIL_SLACK);
    assert!(
        (limits::FILENAME_MAX + 2 * limits::PATH_BYTES_MAX + limits::ARGV_BYTES_MAX) as usize
            <= limits::TAIL_WINDOW
    );
    // File records: two names and two path blobs.
    assert!(
        (2 * limits::FILENAME_MAX + 2 * limits::PATH_BYTES_MAX) as usize <= limits::TAIL_WINDOW
    );
};

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain-old-data: #[repr(C)], integer fields only, explicit padding.
    unsafe impl aya::Pod for super::LossCounter {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Settings {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::offsets::KernelOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::WatchPrefix {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PrefixHeads {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::InodeKey {}
}
