//! Ring-buffer bytes -> typed kernel records. Total: every input either decodes or yields
//! a [`DecodeError`] saying what was wrong; nothing panics and nothing is transmuted.
//! Fields are read little-endian-or-native by explicit offsets checked against the shared
//! ABI structs (`offset_of!`), so a layout change in `auditor-common` cannot silently skew
//! the decoder.

use std::mem::{offset_of, size_of};

use auditor_common::{
    ABI_VERSION, ConnectEvent, Creds, ExecEvent, ExecResultEvent, FileEvent, Header,
    IoUringResultEvent, SignalEvent, SyscallEvent, SyscallResultEvent, kind,
};

/// Why a record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record of {got} bytes is shorter than the {need}-byte {what}")]
    Short {
        what: &'static str,
        need: usize,
        got: usize,
    },
    #[error("record header says {header} bytes but {got} were delivered")]
    LengthMismatch { header: u32, got: usize },
    #[error("record written by ABI version {0}, this daemon speaks {ABI_VERSION}")]
    AbiVersion(u16),
    #[error("unknown record kind {0}")]
    UnknownKind(u16),
    #[error("{what}: tail lengths add up to {need} bytes but only {got} follow the struct")]
    TailOverrun {
        what: &'static str,
        need: u64,
        got: usize,
    },
}

/// A decoded `kind::EXEC` record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRecord {
    pub header: Header,
    pub ppid: u32,
    pub flags: u32,
    pub creds: Creds,
    pub cgroup_id: u64,
    pub syscall: u32,
    pub dirfd: i32,
    pub at_flags: u32,
    pub argc: u32,
    pub comm: Vec<u8>,
    pub tty: Vec<u8>,
    pub filename: Vec<u8>,
    /// Path blob (leaf-first components, NUL-terminated).
    pub cwd_blob: Vec<u8>,
    /// NUL-separated arguments.
    pub argv: Vec<u8>,
}

/// A decoded `kind::EXEC_RESULT` record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecResultRecord {
    pub header: Header,
    pub ret: i64,
    pub flags: u32,
    pub creds: Creds,
    pub comm: Vec<u8>,
    pub exe_blob: Vec<u8>,
}

/// A decoded `kind::FILE` record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRecord {
    pub header: Header,
    pub ppid: u32,
    pub flags: u32,
    pub creds: Creds,
    pub cgroup_id: u64,
    pub op: u32,
    pub dirfd1: i32,
    pub dirfd2: i32,
    pub op_flags: u32,
    pub arg: u64,
    pub fd: i32,
    pub comm: Vec<u8>,
    pub name1: Vec<u8>,
    pub base1_blob: Vec<u8>,
    pub name2: Vec<u8>,
    pub base2_blob: Vec<u8>,
    /// io_uring ring and request (0 for a syscall).
    pub ring: u64,
    pub req: u64,
}

/// A decoded `kind::CONNECT` record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectRecord {
    pub header: Header,
    pub ppid: u32,
    pub flags: u32,
    pub creds: Creds,
    pub cgroup_id: u64,
    pub fd: i32,
    pub family: u16,
    pub port: u16,
    pub addrlen: u32,
    pub addr: [u8; 16],
    pub comm: Vec<u8>,
    pub path: Vec<u8>,
    pub ring: u64,
    pub req: u64,
}

/// A decoded `kind::SYSCALL` record (syslog, ptrace, bpf, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyscallRecord {
    pub header: Header,
    pub ppid: u32,
    pub flags: u32,
    pub creds: Creds,
    pub cgroup_id: u64,
    pub nr: u32,
    pub args: [u64; 4],
    pub comm: Vec<u8>,
}

/// A decoded `kind::SIGNAL` record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignalRecord {
    pub header: Header,
    pub ppid: u32,
    pub flags: u32,
    pub creds: Creds,
    pub cgroup_id: u64,
    pub sig: i32,
    pub code: i32,
    pub target_tid: u32,
    pub target_pid: u32,
    pub result: i32,
    pub comm: Vec<u8>,
}

/// A decoded `kind::IOURING_RESULT` record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoUringResultRecord {
    pub header: Header,
    pub req: u64,
    pub ret: i64,
    pub ring: u64,
}

/// A decoded `kind::SYSCALL_RESULT` record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyscallResultRecord {
    pub header: Header,
    pub ret: i64,
    pub op: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Exec(ExecRecord),
    ExecResult(ExecResultRecord),
    File(FileRecord),
    SyscallResult(SyscallResultRecord),
    Connect(ConnectRecord),
    Syscall(SyscallRecord),
    Signal(SignalRecord),
    IoUringResult(IoUringResultRecord),
}

/// Little cursor-free reader over a byte slice whose bounds were checked by the caller.
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn u16(&self, at: usize) -> u16 {
        u16::from_ne_bytes([self.0[at], self.0[at + 1]])
    }
    fn u32(&self, at: usize) -> u32 {
        let mut b = [0u8; 4];
        b.copy_from_slice(&self.0[at..at + 4]);
        u32::from_ne_bytes(b)
    }
    fn i32(&self, at: usize) -> i32 {
        self.u32(at) as i32
    }
    fn u64(&self, at: usize) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.0[at..at + 8]);
        u64::from_ne_bytes(b)
    }
    fn i64(&self, at: usize) -> i64 {
        self.u64(at) as i64
    }
    fn bytes(&self, at: usize, len: usize) -> Vec<u8> {
        self.0[at..at + len].to_vec()
    }
    fn header(&self) -> Header {
        Header {
            kind: self.u16(offset_of!(Header, kind)),
            abi: self.u16(offset_of!(Header, abi)),
            len: self.u32(offset_of!(Header, len)),
            boot_ns: self.u64(offset_of!(Header, boot_ns)),
            pid: self.u32(offset_of!(Header, pid)),
            tid: self.u32(offset_of!(Header, tid)),
            cpu: self.u32(offset_of!(Header, cpu)),
            _pad: 0,
        }
    }
    fn creds(&self, at: usize) -> Creds {
        Creds {
            uid: self.u32(at + offset_of!(Creds, uid)),
            gid: self.u32(at + offset_of!(Creds, gid)),
            euid: self.u32(at + offset_of!(Creds, euid)),
            egid: self.u32(at + offset_of!(Creds, egid)),
            auid: self.u32(at + offset_of!(Creds, auid)),
            sessionid: self.u32(at + offset_of!(Creds, sessionid)),
        }
    }
}

/// Checks that `buf` holds a `T` plus `tail` bytes; returns the tail.
fn split_tail<'a, T>(
    what: &'static str,
    buf: &'a [u8],
    tail: &[u32],
) -> Result<&'a [u8], DecodeError> {
    let need = size_of::<T>();
    if buf.len() < need {
        return Err(DecodeError::Short {
            what,
            need,
            got: buf.len(),
        });
    }
    let rest = &buf[need..];
    let sum: u64 = tail.iter().map(|&l| u64::from(l)).sum();
    if sum > rest.len() as u64 {
        return Err(DecodeError::TailOverrun {
            what,
            need: sum,
            got: rest.len(),
        });
    }
    Ok(rest)
}

/// Decodes one ring-buffer record.
pub fn record(buf: &[u8]) -> Result<Record, DecodeError> {
    if buf.len() < size_of::<Header>() {
        return Err(DecodeError::Short {
            what: "header",
            need: size_of::<Header>(),
            got: buf.len(),
        });
    }
    let f = Fields(buf);
    let header = f.header();
    if header.abi != ABI_VERSION {
        return Err(DecodeError::AbiVersion(header.abi));
    }
    if header.len as usize != buf.len() {
        return Err(DecodeError::LengthMismatch {
            header: header.len,
            got: buf.len(),
        });
    }
    match header.kind {
        kind::EXEC => exec(&f, header).map(Record::Exec),
        kind::EXEC_RESULT => exec_result(&f, header).map(Record::ExecResult),
        kind::FILE => file(&f, header).map(Record::File),
        kind::SYSCALL_RESULT => syscall_result(&f, header).map(Record::SyscallResult),
        kind::CONNECT => connect(&f, header).map(Record::Connect),
        kind::SYSCALL => syscall(&f, header).map(Record::Syscall),
        kind::SIGNAL => signal(&f, header).map(Record::Signal),
        kind::IOURING_RESULT => iouring_result(&f, header).map(Record::IoUringResult),
        other => Err(DecodeError::UnknownKind(other)),
    }
}

fn exec(f: &Fields<'_>, header: Header) -> Result<ExecRecord, DecodeError> {
    const WHAT: &str = "exec record";
    if f.0.len() < size_of::<ExecEvent>() {
        return Err(DecodeError::Short {
            what: WHAT,
            need: size_of::<ExecEvent>(),
            got: f.0.len(),
        });
    }
    let filename_len = f.u32(offset_of!(ExecEvent, filename_len));
    let cwd_len = f.u32(offset_of!(ExecEvent, cwd_len));
    let argv_len = f.u32(offset_of!(ExecEvent, argv_len));
    split_tail::<ExecEvent>(WHAT, f.0, &[filename_len, cwd_len, argv_len])?;
    let t = size_of::<ExecEvent>();
    let (fl, cl, al) = (filename_len as usize, cwd_len as usize, argv_len as usize);
    Ok(ExecRecord {
        header,
        ppid: f.u32(offset_of!(ExecEvent, ppid)),
        flags: f.u32(offset_of!(ExecEvent, flags)),
        creds: f.creds(offset_of!(ExecEvent, creds)),
        cgroup_id: f.u64(offset_of!(ExecEvent, cgroup_id)),
        syscall: f.u32(offset_of!(ExecEvent, syscall)),
        dirfd: f.i32(offset_of!(ExecEvent, dirfd)),
        at_flags: f.u32(offset_of!(ExecEvent, at_flags)),
        argc: f.u32(offset_of!(ExecEvent, argc)),
        comm: cstr(&f.bytes(
            offset_of!(ExecEvent, comm),
            auditor_common::limits::COMM_LEN,
        )),
        tty: cstr(&f.bytes(offset_of!(ExecEvent, tty), auditor_common::limits::TTY_LEN)),
        filename: f.bytes(t, fl),
        cwd_blob: f.bytes(t + fl, cl),
        argv: f.bytes(t + fl + cl, al),
    })
}

fn exec_result(f: &Fields<'_>, header: Header) -> Result<ExecResultRecord, DecodeError> {
    const WHAT: &str = "exec result record";
    if f.0.len() < size_of::<ExecResultEvent>() {
        return Err(DecodeError::Short {
            what: WHAT,
            need: size_of::<ExecResultEvent>(),
            got: f.0.len(),
        });
    }
    let exe_len = f.u32(offset_of!(ExecResultEvent, exe_len));
    split_tail::<ExecResultEvent>(WHAT, f.0, &[exe_len])?;
    let t = size_of::<ExecResultEvent>();
    Ok(ExecResultRecord {
        header,
        ret: f.i64(offset_of!(ExecResultEvent, ret)),
        flags: f.u32(offset_of!(ExecResultEvent, flags)),
        creds: f.creds(offset_of!(ExecResultEvent, creds)),
        comm: cstr(&f.bytes(
            offset_of!(ExecResultEvent, comm),
            auditor_common::limits::COMM_LEN,
        )),
        exe_blob: f.bytes(t, exe_len as usize),
    })
}

fn file(f: &Fields<'_>, header: Header) -> Result<FileRecord, DecodeError> {
    const WHAT: &str = "file record";
    if f.0.len() < size_of::<FileEvent>() {
        return Err(DecodeError::Short {
            what: WHAT,
            need: size_of::<FileEvent>(),
            got: f.0.len(),
        });
    }
    let lens = [
        f.u32(offset_of!(FileEvent, name1_len)),
        f.u32(offset_of!(FileEvent, base1_len)),
        f.u32(offset_of!(FileEvent, name2_len)),
        f.u32(offset_of!(FileEvent, base2_len)),
    ];
    split_tail::<FileEvent>(WHAT, f.0, &lens)?;
    let mut at = size_of::<FileEvent>();
    let mut take = |len: u32| {
        let b = f.bytes(at, len as usize);
        at += len as usize;
        b
    };
    let (name1, base1_blob, name2, base2_blob) =
        (take(lens[0]), take(lens[1]), take(lens[2]), take(lens[3]));
    Ok(FileRecord {
        header,
        ppid: f.u32(offset_of!(FileEvent, ppid)),
        flags: f.u32(offset_of!(FileEvent, flags)),
        creds: f.creds(offset_of!(FileEvent, creds)),
        cgroup_id: f.u64(offset_of!(FileEvent, cgroup_id)),
        op: f.u32(offset_of!(FileEvent, op)),
        dirfd1: f.i32(offset_of!(FileEvent, dirfd1)),
        dirfd2: f.i32(offset_of!(FileEvent, dirfd2)),
        op_flags: f.u32(offset_of!(FileEvent, op_flags)),
        arg: f.u64(offset_of!(FileEvent, arg)),
        fd: f.i32(offset_of!(FileEvent, fd)),
        comm: cstr(&f.bytes(
            offset_of!(FileEvent, comm),
            auditor_common::limits::COMM_LEN,
        )),
        name1,
        base1_blob,
        name2,
        base2_blob,
        ring: f.u64(offset_of!(FileEvent, ring)),
        req: f.u64(offset_of!(FileEvent, req)),
    })
}

fn connect(f: &Fields<'_>, header: Header) -> Result<ConnectRecord, DecodeError> {
    const WHAT: &str = "connect record";
    if f.0.len() < size_of::<ConnectEvent>() {
        return Err(DecodeError::Short {
            what: WHAT,
            need: size_of::<ConnectEvent>(),
            got: f.0.len(),
        });
    }
    let path_len = f.u32(offset_of!(ConnectEvent, path_len));
    split_tail::<ConnectEvent>(WHAT, f.0, &[path_len])?;
    let mut addr = [0u8; 16];
    addr.copy_from_slice(&f.0[offset_of!(ConnectEvent, addr)..offset_of!(ConnectEvent, addr) + 16]);
    Ok(ConnectRecord {
        header,
        ppid: f.u32(offset_of!(ConnectEvent, ppid)),
        flags: f.u32(offset_of!(ConnectEvent, flags)),
        creds: f.creds(offset_of!(ConnectEvent, creds)),
        cgroup_id: f.u64(offset_of!(ConnectEvent, cgroup_id)),
        fd: f.i32(offset_of!(ConnectEvent, fd)),
        family: f.u16(offset_of!(ConnectEvent, family)),
        port: f.u16(offset_of!(ConnectEvent, port)),
        addrlen: f.u32(offset_of!(ConnectEvent, addrlen)),
        addr,
        comm: cstr(&f.bytes(
            offset_of!(ConnectEvent, comm),
            auditor_common::limits::COMM_LEN,
        )),
        path: f.bytes(size_of::<ConnectEvent>(), path_len as usize),
        ring: f.u64(offset_of!(ConnectEvent, ring)),
        req: f.u64(offset_of!(ConnectEvent, req)),
    })
}

/// Checks that a tail-less record holds its whole struct.
fn fixed<T>(f: &Fields<'_>, what: &'static str) -> Result<(), DecodeError> {
    if f.0.len() < size_of::<T>() {
        return Err(DecodeError::Short {
            what,
            need: size_of::<T>(),
            got: f.0.len(),
        });
    }
    Ok(())
}

fn syscall(f: &Fields<'_>, header: Header) -> Result<SyscallRecord, DecodeError> {
    fixed::<SyscallEvent>(f, "syscall record")?;
    let a = offset_of!(SyscallEvent, args);
    Ok(SyscallRecord {
        header,
        ppid: f.u32(offset_of!(SyscallEvent, ppid)),
        flags: f.u32(offset_of!(SyscallEvent, flags)),
        creds: f.creds(offset_of!(SyscallEvent, creds)),
        cgroup_id: f.u64(offset_of!(SyscallEvent, cgroup_id)),
        nr: f.u32(offset_of!(SyscallEvent, nr)),
        args: [f.u64(a), f.u64(a + 8), f.u64(a + 16), f.u64(a + 24)],
        comm: cstr(&f.bytes(
            offset_of!(SyscallEvent, comm),
            auditor_common::limits::COMM_LEN,
        )),
    })
}

fn signal(f: &Fields<'_>, header: Header) -> Result<SignalRecord, DecodeError> {
    fixed::<SignalEvent>(f, "signal record")?;
    Ok(SignalRecord {
        header,
        ppid: f.u32(offset_of!(SignalEvent, ppid)),
        flags: f.u32(offset_of!(SignalEvent, flags)),
        creds: f.creds(offset_of!(SignalEvent, creds)),
        cgroup_id: f.u64(offset_of!(SignalEvent, cgroup_id)),
        sig: f.i32(offset_of!(SignalEvent, sig)),
        code: f.i32(offset_of!(SignalEvent, code)),
        target_tid: f.u32(offset_of!(SignalEvent, target_tid)),
        target_pid: f.u32(offset_of!(SignalEvent, target_pid)),
        result: f.i32(offset_of!(SignalEvent, result)),
        comm: cstr(&f.bytes(
            offset_of!(SignalEvent, comm),
            auditor_common::limits::COMM_LEN,
        )),
    })
}

fn iouring_result(f: &Fields<'_>, header: Header) -> Result<IoUringResultRecord, DecodeError> {
    fixed::<IoUringResultEvent>(f, "io_uring result record")?;
    Ok(IoUringResultRecord {
        header,
        req: f.u64(offset_of!(IoUringResultEvent, req)),
        ret: f.i64(offset_of!(IoUringResultEvent, ret)),
        ring: f.u64(offset_of!(IoUringResultEvent, ring)),
    })
}

fn syscall_result(f: &Fields<'_>, header: Header) -> Result<SyscallResultRecord, DecodeError> {
    if f.0.len() < size_of::<SyscallResultEvent>() {
        return Err(DecodeError::Short {
            what: "syscall result record",
            need: size_of::<SyscallResultEvent>(),
            got: f.0.len(),
        });
    }
    Ok(SyscallResultRecord {
        header,
        ret: f.i64(offset_of!(SyscallResultEvent, ret)),
        op: f.u32(offset_of!(SyscallResultEvent, op)),
    })
}

/// The bytes before the first NUL.
pub fn cstr(b: &[u8]) -> Vec<u8> {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    b[..end].to_vec()
}

/// Turns a leaf-first path blob into an absolute path. `complete` is false when the walk
/// was cut short: the result then starts with `…/` to show components are missing.
pub fn path_from_blob(blob: &[u8], complete: bool) -> String {
    let mut out = String::with_capacity(blob.len() + 4);
    if !complete {
        out.push('…');
    }
    for p in blob.split(|&c| c == 0).rev().filter(|p| !p.is_empty()) {
        out.push('/');
        out.push_str(&String::from_utf8_lossy(p));
    }
    if out.is_empty() || out == "…" {
        out.push('/');
    }
    out
}

/// Splits NUL-separated arguments (a trailing partial argument is kept).
pub fn split_argv(argv: &[u8]) -> Vec<String> {
    if argv.is_empty() {
        return Vec::new();
    }
    let body = argv.strip_suffix(&[0]).unwrap_or(argv);
    body.split(|&c| c == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn header(kind: u16, len: usize) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&kind.to_ne_bytes());
        b.extend_from_slice(&ABI_VERSION.to_ne_bytes());
        b.extend_from_slice(&(len as u32).to_ne_bytes());
        b.extend_from_slice(&123u64.to_ne_bytes());
        b.extend_from_slice(&10u32.to_ne_bytes()); // pid
        b.extend_from_slice(&11u32.to_ne_bytes()); // tid
        b.extend_from_slice(&1u32.to_ne_bytes()); // cpu
        b.extend_from_slice(&0u32.to_ne_bytes());
        b
    }

    fn exec_bytes(filename: &[u8], cwd: &[u8], argv: &[u8]) -> Vec<u8> {
        let len = size_of::<ExecEvent>() + filename.len() + cwd.len() + argv.len();
        let mut b = header(kind::EXEC, len);
        b.resize(size_of::<ExecEvent>(), 0);
        let put =
            |b: &mut Vec<u8>, at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_ne_bytes());
        put(&mut b, offset_of!(ExecEvent, ppid), 1);
        put(
            &mut b,
            offset_of!(ExecEvent, creds) + offset_of!(Creds, euid),
            1000,
        );
        put(
            &mut b,
            offset_of!(ExecEvent, filename_len),
            filename.len() as u32,
        );
        put(&mut b, offset_of!(ExecEvent, cwd_len), cwd.len() as u32);
        put(&mut b, offset_of!(ExecEvent, argv_len), argv.len() as u32);
        put(&mut b, offset_of!(ExecEvent, argc), 2);
        b[offset_of!(ExecEvent, comm)..offset_of!(ExecEvent, comm) + 4].copy_from_slice(b"bash");
        b.extend_from_slice(filename);
        b.extend_from_slice(cwd);
        b.extend_from_slice(argv);
        b
    }

    #[test]
    fn decodes_exec() {
        let b = exec_bytes(b"/bin/ls", b"log\0var\0", b"ls\0-l\0");
        let Record::Exec(r) = record(&b).unwrap() else {
            panic!("wrong kind")
        };
        assert_eq!(r.header.pid, 10);
        assert_eq!(r.header.tid, 11);
        assert_eq!(r.ppid, 1);
        assert_eq!(r.creds.euid, 1000);
        assert_eq!(r.comm, b"bash");
        assert_eq!(r.filename, b"/bin/ls");
        assert_eq!(path_from_blob(&r.cwd_blob, true), "/var/log");
        assert_eq!(split_argv(&r.argv), vec!["ls", "-l"]);
    }

    #[test]
    fn rejects_tail_overrun_and_bad_lengths() {
        let mut b = exec_bytes(b"/bin/ls", b"", b"ls\0");
        let at = offset_of!(ExecEvent, argv_len);
        b[at..at + 4].copy_from_slice(&1000u32.to_ne_bytes());
        assert!(matches!(record(&b), Err(DecodeError::TailOverrun { .. })));
        let b = exec_bytes(b"/x", b"", b"");
        assert!(matches!(
            record(&b[..b.len() - 1]),
            Err(DecodeError::LengthMismatch { .. })
        ));
        let mut b = exec_bytes(b"/x", b"", b"");
        b[0] = 0xEE;
        assert!(matches!(record(&b), Err(DecodeError::UnknownKind(_))));
        let mut b = exec_bytes(b"/x", b"", b"");
        b[2] = 0x7F;
        assert!(matches!(record(&b), Err(DecodeError::AbiVersion(_))));
        assert!(matches!(record(&[1, 2, 3]), Err(DecodeError::Short { .. })));
    }

    #[test]
    fn paths_and_argv() {
        assert_eq!(path_from_blob(b"", true), "/");
        assert_eq!(path_from_blob(b"c\0b\0a\0", true), "/a/b/c");
        assert_eq!(path_from_blob(b"c\0b\0", false), "…/b/c");
        assert_eq!(split_argv(b"a\0\0b\0"), vec!["a", "", "b"]);
        assert_eq!(split_argv(b"a\0partial"), vec!["a", "partial"]);
        assert!(split_argv(b"").is_empty());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]
        /// Random bytes never panic the decoder.
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = record(&bytes);
        }

        /// Random bytes behind a valid header of every kind never panic either (this is
        /// where the length arithmetic lives).
        #[test]
        fn random_bodies_never_panic(k in 0u16..10, body in proptest::collection::vec(any::<u8>(), 0..400)) {
            let len = size_of::<Header>() + body.len();
            let mut b = header(k, len);
            b.extend_from_slice(&body);
            let _ = record(&b);
        }

        #[test]
        fn blobs_never_panic(blob in proptest::collection::vec(any::<u8>(), 0..300)) {
            let p = path_from_blob(&blob, true);
            prop_assert!(p.starts_with('/'));
            let _ = split_argv(&blob);
        }
    }
}
