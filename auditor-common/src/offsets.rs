//! Offsets of the kernel struct fields the eBPF programs read.
//!
//! Rust eBPF cannot emit CO-RE relocations, so the daemon reads these from the running
//! kernel's BTF (`/sys/kernel/btf/vmlinux`) at load time and writes the table into the
//! programs' read-only data. A hand-typed offset would be wrong on the next kernel.
//! `ABSENT` marks a field this kernel does not have (e.g. `loginuid` without CONFIG_AUDIT);
//! the programs then report the value as unknown instead of reading garbage.

/// Marks a field missing from this kernel's BTF.
pub const ABSENT: u32 = u32::MAX;

/// Set in [`KernelOffsets::magic`] by the loader; the programs refuse to walk kernel
/// structs while it is zero (an unpatched object), and flag their records instead.
pub const OFFSETS_MAGIC: u32 = 0x4155_4449; // "AUDI"

macro_rules! kernel_offsets {
    ($( $(#[$doc:meta])* $field:ident => $ty:literal . $path:literal ),* $(,)?) => {
        /// Byte offsets of kernel struct members, from BTF.
        #[repr(C)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub struct KernelOffsets {
            pub magic: u32,
            $( $(#[$doc])* pub $field: u32, )*
        }

        impl KernelOffsets {
            /// An uninitialised table (what the object file carries before loading).
            pub const ZERO: Self = Self { magic: 0, $( $field: 0, )* };

            /// `(field name, C struct, member path)` for every offset: the loader
            /// resolves each member path (dot-separated, through anonymous members) in BTF.
            pub const FIELDS: &'static [(&'static str, &'static str, &'static str)] =
                &[ $( (stringify!($field), $ty, $path), )* ];

            /// Sets a field by name; false if the name is unknown.
            pub fn set(&mut self, name: &str, value: u32) -> bool {
                match name {
                    $( stringify!($field) => { self.$field = value; true } )*
                    _ => false,
                }
            }

            /// Reads a field by name.
            pub fn get(&self, name: &str) -> Option<u32> {
                match name {
                    $( stringify!($field) => Some(self.$field), )*
                    _ => None,
                }
            }
        }
    };
}

kernel_offsets! {
    task_real_parent => "task_struct"."real_parent",
    task_tgid => "task_struct"."tgid",
    task_cred => "task_struct"."cred",
    /// Needs CONFIG_AUDIT.
    task_loginuid => "task_struct"."loginuid",
    /// Needs CONFIG_AUDIT.
    task_sessionid => "task_struct"."sessionid",
    task_signal => "task_struct"."signal",
    task_fs => "task_struct"."fs",
    task_mm => "task_struct"."mm",
    task_files => "task_struct"."files",
    cred_uid => "cred"."uid",
    cred_gid => "cred"."gid",
    cred_euid => "cred"."euid",
    cred_egid => "cred"."egid",
    signal_tty => "signal_struct"."tty",
    tty_name => "tty_struct"."name",
    fs_pwd => "fs_struct"."pwd",
    fs_root => "fs_struct"."root",
    path_mnt => "path"."mnt",
    path_dentry => "path"."dentry",
    dentry_parent => "dentry"."d_parent",
    dentry_name => "dentry"."d_name",
    qstr_len => "qstr"."len",
    qstr_name => "qstr"."name",
    mount_mnt => "mount"."mnt",
    mount_parent => "mount"."mnt_parent",
    mount_mountpoint => "mount"."mnt_mountpoint",
    vfsmount_root => "vfsmount"."mnt_root",
    vfsmount_sb => "vfsmount"."mnt_sb",
    mm_exe_file => "mm_struct"."exe_file",
    file_path => "file"."f_path",
    files_fdt => "files_struct"."fdt",
    fdtable_max_fds => "fdtable"."max_fds",
    fdtable_fd => "fdtable"."fd",
    dentry_inode => "dentry"."d_inode",
    inode_ino => "inode"."i_ino",
    inode_sb => "inode"."i_sb",
    sb_dev => "super_block"."s_dev",
    /// Start of the argument array in a syscall tracepoint record.
    tp_enter_args => "syscall_trace_enter"."args",
    /// Return value in a syscall-exit tracepoint record.
    tp_exit_ret => "syscall_trace_exit"."ret",
    task_pid => "task_struct"."pid",
    task_comm => "task_struct"."comm",
    /// The cgroup v2 id, as `bpf_get_current_cgroup_id` computes it (needs CONFIG_CGROUPS):
    /// `task->cgroups->dfl_cgrp->kn->id`.
    task_cgroups => "task_struct"."cgroups",
    css_set_dfl_cgrp => "css_set"."dfl_cgrp",
    cgroup_kn => "cgroup"."kn",
    kernfs_node_id => "kernfs_node"."id",
    siginfo_code => "kernel_siginfo"."si_code",
    // io_uring (optional: absent on kernels without CONFIG_IO_URING). Submission and
    // completion tracepoint records, then the per-opcode command structs the request's
    // `cmd` area holds after preparation (filled before `io_uring_submit_req` fires).
    tp_iou_submit_ctx => "trace_event_raw_io_uring_submit_req"."ctx",
    tp_iou_submit_req => "trace_event_raw_io_uring_submit_req"."req",
    tp_iou_submit_opcode => "trace_event_raw_io_uring_submit_req"."opcode",
    tp_iou_complete_ctx => "trace_event_raw_io_uring_complete"."ctx",
    tp_iou_complete_req => "trace_event_raw_io_uring_complete"."req",
    tp_iou_complete_res => "trace_event_raw_io_uring_complete"."res",
    iou_req_cmd => "io_kiocb"."cmd",
    /// The sqe's fd, kept in the request's completion slot.
    iou_req_fd => "io_kiocb"."cqe.fd",
    iou_unlink_dfd => "io_unlink"."dfd",
    iou_unlink_flags => "io_unlink"."flags",
    iou_unlink_filename => "io_unlink"."filename",
    iou_rename_old_dfd => "io_rename"."old_dfd",
    iou_rename_new_dfd => "io_rename"."new_dfd",
    iou_rename_oldpath => "io_rename"."oldpath",
    iou_rename_newpath => "io_rename"."newpath",
    iou_rename_flags => "io_rename"."flags",
    iou_link_old_dfd => "io_link"."old_dfd",
    iou_link_new_dfd => "io_link"."new_dfd",
    iou_link_oldpath => "io_link"."oldpath",
    iou_link_newpath => "io_link"."newpath",
    iou_open_dfd => "io_open"."dfd",
    iou_open_filename => "io_open"."filename",
    iou_open_how => "io_open"."how",
    open_how_flags => "open_how"."flags",
    iou_connect_addr => "io_connect"."addr",
    iou_connect_addr_len => "io_connect"."addr_len",
    filename_name => "filename"."name",
}

/// Fields the programs can do without: `ABSENT` when this kernel's BTF lacks them.
pub const OPTIONAL: &[&str] = &[
    "task_loginuid",
    "task_sessionid",
    "task_cgroups",
    "css_set_dfl_cgrp",
    "cgroup_kn",
    "kernfs_node_id",
    "tp_iou_submit_ctx",
    "tp_iou_submit_req",
    "tp_iou_submit_opcode",
    "tp_iou_complete_ctx",
    "tp_iou_complete_req",
    "tp_iou_complete_res",
    "iou_req_cmd",
    "iou_req_fd",
    "iou_unlink_dfd",
    "iou_unlink_flags",
    "iou_unlink_filename",
    "iou_rename_old_dfd",
    "iou_rename_new_dfd",
    "iou_rename_oldpath",
    "iou_rename_newpath",
    "iou_rename_flags",
    "iou_link_old_dfd",
    "iou_link_new_dfd",
    "iou_link_oldpath",
    "iou_link_newpath",
    "iou_open_dfd",
    "iou_open_filename",
    "iou_open_how",
    "open_how_flags",
    "iou_connect_addr",
    "iou_connect_addr_len",
    "filename_name",
];

const _: () = assert!(core::mem::size_of::<KernelOffsets>().is_multiple_of(4));
