//! Loading, patching and attaching the eBPF programs, and reading what they send.
//!
//! - [`btf`]: kernel struct offsets from the running kernel's BTF.
//! - [`tracefs`]: makes sure tracefs is mounted (classic tracepoints need it).
//! - [`ring`]: the ring-buffer reader and the kernel loss counters.

pub mod btf;
pub mod ring;
pub mod tracefs;

use std::path::{Path, PathBuf};

use auditor_common::{Settings, limits, names};
use aya::{Ebpf, EbpfLoader, programs::TracePoint};

/// The object built by `auditor/build.rs`; empty when built without the eBPF toolchain.
static EMBEDDED_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/auditor"));

/// Syscall tracepoints attached, as (program, category, tracepoint).
pub const TRACEPOINTS: &[(&str, &str, &str)] = &[
    ("sys_enter_execve", "syscalls", "sys_enter_execve"),
    ("sys_enter_execveat", "syscalls", "sys_enter_execveat"),
    ("sys_exit_execve", "syscalls", "sys_exit_execve"),
    ("sys_exit_execveat", "syscalls", "sys_exit_execveat"),
];

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "this auditor binary was built without its eBPF programs (the eBPF toolchain was \
         missing at build time). Run `cargo xtask setup` and rebuild, or pass --obj PATH \
         with an object from `cargo xtask build-ebpf`"
    )]
    NoEmbeddedObject,
    #[error("cannot read eBPF object {path}: {source}")]
    ReadObject {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not an eBPF object (empty file); build one with `cargo xtask build-ebpf`")]
    EmptyObject { path: PathBuf },
    #[error(
        "loading eBPF programs needs root (CAP_BPF, CAP_PERFMON and CAP_SYS_RESOURCE); \
         run `sudo auditor watch ...`"
    )]
    NotRoot,
    #[error(transparent)]
    Btf(#[from] btf::BtfError),
    #[error(transparent)]
    Tracefs(#[from] tracefs::TracefsError),
    #[error("cannot count possible CPUs ({0}): {1}")]
    Cpus(&'static str, std::io::Error),
    #[error("the kernel refused the eBPF object: {0}")]
    Load(#[source] aya::EbpfError),
    #[error("the eBPF object has no program `{0}` (object and daemon versions differ?)")]
    MissingProgram(&'static str),
    #[error("program `{name}` was refused by the kernel: {source}")]
    Program {
        name: &'static str,
        source: aya::programs::ProgramError,
    },
}

/// What the loader needs from the configuration.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Load this object instead of the embedded one.
    pub object: Option<PathBuf>,
    /// Ring buffer size in bytes (a power of two, multiple of the page size).
    pub ring_bytes: u32,
    pub settings: Settings,
    pub btf_path: PathBuf,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            object: None,
            ring_bytes: 16 << 20,
            settings: Settings::DEFAULT,
            btf_path: PathBuf::from(btf::VMLINUX_BTF),
        }
    }
}

/// True when this binary carries real eBPF programs.
pub fn has_embedded_object() -> bool {
    !EMBEDDED_OBJECT.is_empty()
}

/// Reads the object to load: `--obj` or the embedded one.
pub fn object_bytes(object: Option<&Path>) -> Result<Vec<u8>, LoadError> {
    match object {
        Some(path) => {
            let bytes = std::fs::read(path).map_err(|source| LoadError::ReadObject {
                path: path.to_path_buf(),
                source,
            })?;
            if bytes.is_empty() {
                return Err(LoadError::EmptyObject {
                    path: path.to_path_buf(),
                });
            }
            Ok(bytes)
        }
        None if EMBEDDED_OBJECT.is_empty() => Err(LoadError::NoEmbeddedObject),
        None => Ok(EMBEDDED_OBJECT.to_vec()),
    }
}

/// Loads the programs with offsets and settings patched in, and attaches them all.
pub fn load_and_attach(opts: &LoadOptions) -> Result<Ebpf, LoadError> {
    let bytes = object_bytes(opts.object.as_deref())?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(LoadError::NotRoot);
    }
    let btf = btf::load(&opts.btf_path)?;
    let offsets = btf::kernel_offsets(&btf)?;
    tracefs::ensure_mounted()?;
    let cpus = aya::util::nr_cpus().map_err(|(what, e)| LoadError::Cpus(what, e))? as u32;
    let mut settings = opts.settings;
    settings.argv_bytes = settings.argv_bytes.min(limits::ARGV_BYTES_MAX);
    settings.argv_args = settings.argv_args.min(limits::ARGV_ARGS_MAX);
    settings.self_tgid = std::process::id();

    let mut ebpf = EbpfLoader::new()
        .override_global(names::OFFSETS, &offsets, true)
        .override_global(names::SETTINGS, &settings, true)
        .map_max_entries(names::EVENTS, opts.ring_bytes)
        .map_max_entries(names::SCRATCH, cpus)
        .load(&bytes)
        .map_err(LoadError::Load)?;

    for &(name, category, tracepoint) in TRACEPOINTS {
        let program: &mut TracePoint = ebpf
            .program_mut(name)
            .ok_or(LoadError::MissingProgram(name))?
            .try_into()
            .map_err(|source| LoadError::Program { name, source })?;
        program
            .load()
            .map_err(|source| LoadError::Program { name, source })?;
        program
            .attach(category, tracepoint)
            .map_err(|source| LoadError::Program { name, source })?;
        tracing::debug!(program = name, "attached {category}/{tracepoint}");
    }
    Ok(ebpf)
}
