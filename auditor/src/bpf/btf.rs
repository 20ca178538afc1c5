//! Kernel struct member offsets from the running kernel's BTF.
//!
//! Every offset the eBPF programs use is listed in [`KernelOffsets::FIELDS`]; each is
//! looked up here by struct name and member name, descending through anonymous structs and
//! unions (e.g. `qstr.len` lives in an anonymous struct inside an anonymous union). Nothing
//! is hand-typed: a kernel whose layout differs simply yields different numbers.

use std::path::{Path, PathBuf};

use auditor_common::offsets::{ABSENT, KernelOffsets, OFFSETS_MAGIC, OPTIONAL};
use btf_rs::{Btf, BtfType, Type};

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error(
        "cannot read kernel BTF at {path}: {source}. This kernel was built without \
         CONFIG_DEBUG_INFO_BTF (or /sys is not mounted); auditor needs BTF to find kernel \
         struct offsets"
    )]
    Open {
        path: PathBuf,
        source: btf_rs::Error,
    },
    #[error("kernel BTF has no struct `{0}`")]
    NoStruct(String),
    #[error("kernel BTF struct `{ty}` has no member `{member}`")]
    NoMember { ty: String, member: String },
    #[error("kernel BTF member `{ty}.{member}` is a bitfield or not byte-aligned")]
    Unaligned { ty: String, member: String },
    #[error("kernel BTF lookup of `{ty}.{member}` failed: {source}")]
    Lookup {
        ty: String,
        member: String,
        source: btf_rs::Error,
    },
}

/// Loads the BTF of the running kernel (or the file at `path`).
///
/// Mapped rather than read when the file allows it (sysfs does since Linux 6.16): only
/// the few structs looked up are ever decoded, where reading parses every type of the
/// kernel into memory (that parse alone set the agent's peak memory).
pub fn load(path: &Path) -> Result<Btf, BtfError> {
    Btf::from_file_with_backend(path, btf_rs::Backend::Mmap)
        .or_else(|_| Btf::from_file(path))
        .map_err(|source| BtfError::Open {
            path: path.to_path_buf(),
            source,
        })
}

/// Resolves every entry of the offset table.
pub fn kernel_offsets(btf: &Btf) -> Result<KernelOffsets, BtfError> {
    let mut table = KernelOffsets::ZERO;
    for &(field, ty, member) in KernelOffsets::FIELDS {
        let value = match member_offset(btf, ty, member) {
            Ok(v) => v,
            Err(BtfError::NoMember { .. } | BtfError::NoStruct(_)) if OPTIONAL.contains(&field) => {
                ABSENT
            }
            Err(e) => return Err(e),
        };
        // `set` only fails for names not in FIELDS, which we are iterating.
        let _known = table.set(field, value);
    }
    table.magic = OFFSETS_MAGIC;
    Ok(table)
}

/// Byte offset of `member` in struct (or union) `ty`.
pub fn member_offset(btf: &Btf, ty: &str, member: &str) -> Result<u32, BtfError> {
    let lookup = |source| BtfError::Lookup {
        ty: ty.into(),
        member: member.into(),
        source,
    };
    let candidates = btf
        .resolve_types_by_name(ty)
        .map_err(|_| BtfError::NoStruct(ty.into()))?;
    // A name can also denote a typedef or a forward declaration; take the full definition.
    let s = candidates
        .into_iter()
        .find_map(|t| match t {
            Type::Struct(s) | Type::Union(s) if !s.members.is_empty() => Some(s),
            _ => None,
        })
        .ok_or_else(|| BtfError::NoStruct(ty.into()))?;
    let bits = find_member(btf, &s, member, 0)
        .map_err(lookup)?
        .ok_or_else(|| BtfError::NoMember {
            ty: ty.into(),
            member: member.into(),
        })?;
    if bits % 8 != 0 {
        return Err(BtfError::Unaligned {
            ty: ty.into(),
            member: member.into(),
        });
    }
    Ok(bits / 8)
}

/// Bit offset of `name` inside `s`, searching anonymous members recursively.
fn find_member(
    btf: &Btf,
    s: &btf_rs::Struct,
    name: &str,
    base_bits: u32,
) -> Result<Option<u32>, btf_rs::Error> {
    for m in &s.members {
        let mname = btf.resolve_name(m)?;
        if mname == name {
            if m.bitfield_size().is_some_and(|b| b != 0) {
                return Ok(Some(base_bits + m.bit_offset() + 1)); // forces Unaligned
            }
            return Ok(Some(base_bits + m.bit_offset()));
        }
        if mname.is_empty()
            && let Type::Struct(inner) | Type::Union(inner) = resolve_through_modifiers(btf, m)?
            && let Some(off) = find_member(btf, &inner, name, base_bits + m.bit_offset())?
        {
            return Ok(Some(off));
        }
    }
    Ok(None)
}

/// The member's type with typedefs and qualifiers stripped.
fn resolve_through_modifiers(btf: &Btf, m: &dyn BtfType) -> Result<Type, btf_rs::Error> {
    let mut t = btf.resolve_chained_type(m)?;
    for _ in 0..16 {
        match &t {
            Type::Typedef(x) => t = btf.resolve_chained_type(x)?,
            Type::Const(x) | Type::Volatile(x) | Type::Restrict(x) => {
                t = btf.resolve_chained_type(x)?
            }
            _ => break,
        }
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Runs against this machine's kernel BTF when it has one (every kernel auditor
    /// supports does); asserts offsets that C code fixes by layout rules.
    #[test]
    fn resolves_every_field_of_the_running_kernel() {
        let path = Path::new(VMLINUX_BTF);
        // Every kernel auditor supports has BTF; CI machines do. No silent skip.
        assert!(
            path.exists(),
            "{} missing: this kernel has no BTF",
            path.display()
        );
        let btf = load(path).unwrap();
        let t = kernel_offsets(&btf).unwrap();
        assert_eq!(t.magic, OFFSETS_MAGIC);
        // `struct path { struct vfsmount *mnt; struct dentry *dentry; }` on every kernel.
        assert_eq!(t.path_mnt, 0);
        assert_eq!(t.path_dentry, 8);
        // qstr: union { struct { u32 hash; u32 len; }; u64 hash_len; }; const char *name;
        assert_eq!(t.qstr_len, 4);
        assert_eq!(t.qstr_name, 8);
        // The syscall tracepoint records: 8-byte trace_entry, int nr, then args/ret.
        assert_eq!(t.tp_enter_args, 16);
        assert_eq!(t.tp_exit_ret, 16);
        assert!(t.task_cred > 0 && t.task_fs > 0 && t.mount_parent > 0);
    }

    #[test]
    fn missing_btf_is_a_clear_error() {
        let Err(err) = load(Path::new("/nonexistent/vmlinux")) else {
            panic!("loading a missing BTF file succeeded");
        };
        assert!(err.to_string().contains("CONFIG_DEBUG_INFO_BTF"), "{err}");
    }

    #[test]
    fn unknown_member_is_named() {
        let btf = load(Path::new(VMLINUX_BTF)).unwrap();
        let err = member_offset(&btf, "task_struct", "no_such_member").unwrap_err();
        assert_eq!(
            err.to_string(),
            "kernel BTF struct `task_struct` has no member `no_such_member`"
        );
    }
}
