//! Reads of kernel memory at offsets taken from the running kernel's BTF.
//!
//! The loader patches [`OFFSETS`] and [`SETTINGS`] before the programs are verified. They
//! are read with volatile loads so the compiler cannot fold in the zeros the object file
//! carries.

use auditor_common::{
    Creds, ID_UNKNOWN, Settings,
    offsets::{ABSENT, KernelOffsets, OFFSETS_MAGIC},
};
use aya_ebpf::helpers::bpf_probe_read_kernel;

#[unsafe(no_mangle)]
pub(crate) static OFFSETS: KernelOffsets = KernelOffsets::ZERO;

#[unsafe(no_mangle)]
static SETTINGS: Settings = Settings::DEFAULT;

/// The offset of one field, e.g. `off!(task_cred)`.
macro_rules! off {
    ($field:ident) => {
        crate::kernel::offset_at(&raw const crate::kernel::OFFSETS.$field)
    };
}
pub(crate) use off;

/// Volatile read of one offset-table entry (see `off!`).
#[inline(always)]
pub fn offset_at(field: *const u32) -> u64 {
    // SAFETY: `field` points into the OFFSETS static.
    (unsafe { core::ptr::read_volatile(field) }) as u64
}

#[inline(always)]
pub fn offsets_ready() -> bool {
    // SAFETY: as in `off!`.
    unsafe { core::ptr::read_volatile(&raw const OFFSETS.magic) == OFFSETS_MAGIC }
}

#[inline(always)]
pub fn settings() -> Settings {
    // SAFETY: reading a static through a raw pointer.
    unsafe { core::ptr::read_volatile(&raw const SETTINGS) }
}

/// Reads a `T` at `base + off` in kernel memory.
#[inline(always)]
pub fn read<T>(base: u64, off: u64) -> Result<T, i64> {
    if base == 0 {
        return Err(-14); // EFAULT: never chase a NULL pointer
    }
    // SAFETY: bpf_probe_read_kernel validates the address and fails cleanly.
    unsafe { bpf_probe_read_kernel((base + off) as *const T).map_err(|e| e as i64) }
}

/// Two pointer-sized fields of `base` at `a` and `b`: one read when adjacent.
#[inline(always)]
pub fn read_u64_pair(base: u64, a: u64, b: u64) -> Result<(u64, u64), i64> {
    if a & 7 == 0 && b == a + 8 {
        let [x, y] = read::<[u64; 2]>(base, a)?;
        return Ok((x, y));
    }
    Ok((read(base, a)?, read(base, b)?))
}

/// The current task as the verifier's typed `task_struct` pointer.
///
/// Loads through it, and through the struct pointers read from it (`real_parent`,
/// `cred`, `files`, `fdt`), are plain instructions: the verifier checks each against
/// the kernel's BTF (the offsets come from the same BTF, see `auditor-common`'s
/// offsets) and the JIT guards them with an exception table, so a bad pointer reads as
/// zero instead of faulting. A `bpf_probe_read_kernel` per field is a helper call
/// (~20 ns here), and every emitted record paid eight of them for its parent,
/// credentials, comm and cgroup. Pointers to anything but structs (the fd array, names) are scalars to
/// the verifier and are still read with the helpers.
#[derive(Clone, Copy)]
pub struct Task(*const u8);

impl Task {
    #[inline(always)]
    pub fn current() -> Self {
        // SAFETY: helper without preconditions; never NULL in a program's context.
        Self(unsafe { aya_ebpf::helpers::generated::bpf_get_current_task_btf() }.cast())
    }

    /// The task's address, for the helpers that take it as a number.
    #[inline(always)]
    pub fn addr(self) -> u64 {
        self.0 as u64
    }

    /// The parent's thread-group id.
    #[inline(always)]
    pub fn ppid(self) -> u32 {
        let parent: *const u8 = load(self.0, off!(task_real_parent));
        load(parent, off!(task_tgid))
    }

    /// Credentials and audit identity. Fields this kernel lacks are `ID_UNKNOWN`.
    #[inline(always)]
    pub fn creds(self) -> Creds {
        let cred: *const u8 = load(self.0, off!(task_cred));
        let optional = |off: u64| {
            if off == ABSENT as u64 {
                ID_UNKNOWN
            } else {
                load(self.0, off)
            }
        };
        Creds {
            uid: load(cred, off!(cred_uid)),
            gid: load(cred, off!(cred_gid)),
            euid: load(cred, off!(cred_euid)),
            egid: load(cred, off!(cred_egid)),
            auid: optional(off!(task_loginuid)),
            sessionid: optional(off!(task_sessionid)),
        }
    }

    /// `struct file *` of descriptor `fd` in the task's fd table, or an error. The table
    /// is reached by plain loads; the array slot (a pointer to pointers, untyped to the
    /// verifier) with one helper read.
    #[inline(always)]
    pub fn fd_file(self, fd: i32) -> Result<u64, i64> {
        if fd < 0 {
            return Err(-9); // EBADF
        }
        let files: *const u8 = load(self.0, off!(task_files));
        let fdt: *const u8 = load(files, off!(files_fdt));
        let max: u32 = load(fdt, off!(fdtable_max_fds));
        let array: u64 = load(fdt, off!(fdtable_fd));
        if fd as u32 >= max {
            return Err(-9);
        }
        let file: u64 = read(array, (fd as u64) * 8)?;
        if file == 0 {
            return Err(-9);
        }
        Ok(file)
    }

    /// The task's cgroup v2 id (what `bpf_get_current_cgroup_id` returns), by four loads
    /// instead of the helper call; the helper where this kernel lacks a field.
    #[inline(always)]
    pub fn cgroup_id(self) -> u64 {
        let offs = [
            off!(task_cgroups),
            off!(css_set_dfl_cgrp),
            off!(cgroup_kn),
            off!(kernfs_node_id),
        ];
        if offs.contains(&(ABSENT as u64)) {
            // SAFETY: helper without preconditions.
            return unsafe { aya_ebpf::helpers::bpf_get_current_cgroup_id() };
        }
        let css: *const u8 = load(self.0, offs[0]);
        let cgroup: *const u8 = load(css, offs[1]);
        let kn: *const u8 = load(cgroup, offs[2]);
        load(kn, offs[3])
    }

    /// `(vfsmount, dentry)` of the file descriptor `fd` refers to.
    #[inline(always)]
    pub fn fd_path(self, fd: i32) -> Result<(u64, u64), i64> {
        self.fd_file(fd)
            .and_then(|f| path_parts(f + off!(file_path)))
    }

    /// Writes the task's `comm` (16 bytes, NUL-padded by the kernel) into `dst`.
    #[inline(always)]
    pub fn comm_into(self, dst: *mut [u8; 16]) {
        let at = off!(task_comm);
        let (a, b): (u64, u64) = (load(self.0, at), load(self.0, at + 8));
        // SAFETY: `dst` is 16 writable bytes, 8-aligned in every record struct.
        unsafe {
            dst.cast::<u64>().write_unaligned(a);
            dst.cast::<u64>().add(1).write_unaligned(b);
        }
    }
}

/// A `T` at `base + off`, `base` being a typed kernel pointer (see [`Task`]).
#[inline(always)]
fn load<T: Copy>(base: *const u8, off: u64) -> T {
    // SAFETY: the verifier checks the access against the pointee's BTF type, and the
    // JIT turns a fault into a zero result.
    unsafe { core::ptr::read_volatile(base.wrapping_add(off as usize).cast::<T>()) }
}

/// The fields of a dentry a path walk needs.
pub struct DentryFields {
    pub parent: u64,
    pub name_len: u32,
    pub name: u64,
    pub inode: u64,
}

/// Reads `d_parent`, `d_name.len`, `d_name.name` and `d_inode` of `dentry`.
///
/// Each `bpf_probe_read_kernel` is a helper call with its own fault handling (~30 ns
/// here), and a path walk pays them per component. The four fields sit within 32 bytes on
/// the kernels we know (6.18: 24..56), so when the offsets say so they come in one read
/// and are picked out of it; otherwise (a future layout) they are read one by one. The
/// offsets are constants of the loaded program, so only one of the branches ever runs.
#[inline(always)]
pub fn dentry_fields(dentry: u64) -> Result<DentryFields, i64> {
    let parent = off!(dentry_parent);
    let len = off!(dentry_name) + off!(qstr_len);
    let name = off!(dentry_name) + off!(qstr_name);
    let inode = off!(dentry_inode);
    let lo = parent.min(len).min(name).min(inode) & !7;
    let hi = (parent + 8).max(len + 4).max(name + 8).max(inode + 8);
    let aligned = (parent | name | inode) & 7 == 0 && len & 3 == 0;
    if aligned && hi - lo <= 32 {
        let block: [u64; 4] = read(dentry, lo)?;
        // Masked indices: always inside the block, whatever the offsets.
        let word = |off: u64| block[(((off - lo) >> 3) & 3) as usize];
        return Ok(DentryFields {
            parent: word(parent),
            name_len: (word(len) >> ((len & 4) * 8)) as u32,
            name: word(name),
            inode: word(inode),
        });
    }
    Ok(DentryFields {
        parent: read(dentry, parent)?,
        name_len: read(dentry, len)?,
        name: read(dentry, name)?,
        inode: read(dentry, inode)?,
    })
}

/// `(vfsmount, dentry)` of a `struct path` at `path_addr`.
#[inline(always)]
pub fn path_parts(path_addr: u64) -> Result<(u64, u64), i64> {
    read_u64_pair(path_addr, off!(path_mnt), off!(path_dentry))
}

/// `(vfsmount, dentry)` of the task's working directory.
#[inline(always)]
pub fn cwd(task: u64) -> Result<(u64, u64), i64> {
    let fs: u64 = read(task, off!(task_fs))?;
    if fs == 0 {
        return Err(-2);
    }
    path_parts(fs + off!(fs_pwd))
}

/// `(vfsmount, dentry)` of the task's executable.
#[inline(always)]
pub fn exe(task: u64) -> Result<(u64, u64), i64> {
    let mm: u64 = read(task, off!(task_mm))?;
    let file: u64 = read(mm, off!(mm_exe_file))?;
    if file == 0 {
        return Err(-2);
    }
    path_parts(file + off!(file_path))
}

/// Copies the controlling terminal's name into `out` (NUL-padded); empty if none.
#[inline(always)]
pub fn tty_name(task: u64, out: &mut [u8; auditor_common::limits::TTY_LEN]) {
    let Ok(signal) = read::<u64>(task, off!(task_signal)) else {
        return;
    };
    let Ok(tty) = read::<u64>(signal, off!(signal_tty)) else {
        return;
    };
    if tty == 0 {
        return;
    }
    // SAFETY: bounded by `out`'s length; the helper NUL-terminates.
    unsafe {
        let _ = aya_ebpf::helpers::bpf_probe_read_kernel_str_bytes(
            (tty + off!(tty_name)) as *const u8,
            out,
        );
    }
}

/// Where `sys_enter_*` records keep their arguments and `sys_exit_*` records their return
/// value on the kernels we know: right after the 8-byte `trace_entry` and the `int`
/// syscall number (padded). The loader takes the real offsets from BTF; when they are
/// these, the programs load the value straight from the record (one instruction), not
/// through `bpf_probe_read_kernel` (a helper call each: every `openat` on the machine
/// pays one for its flags before the hook knows it is not interested).
const TP_USUAL_OFFSET: u64 = 16;

/// Argument `i` (a constant at every call site) of a `sys_enter_*` tracepoint record.
#[inline(always)]
pub fn syscall_arg(ctx: &aya_ebpf::programs::TracePointContext, i: u64) -> u64 {
    record_word(ctx, off!(tp_enter_args), i).unwrap_or(0)
}

/// The return value in a `sys_exit_*` tracepoint record (`i64::MIN` if unreadable).
#[inline(always)]
pub fn syscall_ret(ctx: &aya_ebpf::programs::TracePointContext) -> i64 {
    record_word(ctx, off!(tp_exit_ret), 0).map_or(i64::MIN, |v| v as i64)
}

/// Word `i` (a constant) from offset `at` of a syscall tracepoint record: a plain load
/// when `at` is [`TP_USUAL_OFFSET`], else `bpf_probe_read_kernel`.
#[inline(always)]
fn record_word(ctx: &aya_ebpf::programs::TracePointContext, at: u64, i: u64) -> Option<u64> {
    if at == TP_USUAL_OFFSET {
        // SAFETY: the offsets are constants of the loaded program (the verifier removes
        // the other branch), so this is a load at a fixed offset inside the record, which
        // the verifier checks against the tracepoint's record size at attach time.
        return Some(unsafe {
            core::ptr::read(
                aya_ebpf::EbpfContext::as_ptr(ctx)
                    .cast::<u64>()
                    .add(2 + i as usize),
            )
        });
    }
    // SAFETY: reads inside the tracepoint record; the helper validates the address.
    unsafe { ctx.read_at::<u64>((at + 8 * i) as usize) }.ok()
}
