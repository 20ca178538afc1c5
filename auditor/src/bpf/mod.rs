//! Loading, patching and attaching the eBPF programs, and reading what they send.
//!
//! - [`btf`]: kernel struct offsets from the running kernel's BTF.
//! - [`tracefs`]: makes sure tracefs is mounted (classic tracepoints need it).
//! - [`ring`]: taking the ring buffer out of the object, and the kernel loss counters.
//! - [`ringbuf`]: the ring buffer's consumer, its data pages mapped once.

pub mod btf;
pub mod ring;
pub mod ringbuf;
pub mod tracefs;

use std::{
    borrow::Cow,
    path::{Path, PathBuf},
};

use auditor_common::{Settings, file_tail, limits, names};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap},
    programs::{RawTracePoint, TracePoint},
};

use crate::watchlist::WatchList;

/// The object built by `auditor/build.rs`; empty when built without the eBPF toolchain.
static EMBEDDED_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/auditor"));

/// Syscall tracepoints attached, as (program, category, tracepoint).
/// Syscall tracepoints attached; each program is named after its tracepoint.
pub const TRACEPOINTS: &[&str] = &[
    "sys_enter_execve",
    "sys_enter_execveat",
    "sys_exit_execve",
    "sys_exit_execveat",
    "sys_enter_unlink",
    "sys_enter_unlinkat",
    "sys_enter_rmdir",
    "sys_enter_rename",
    "sys_enter_renameat",
    "sys_enter_renameat2",
    "sys_enter_truncate",
    "sys_enter_ftruncate",
    "sys_enter_creat",
    "sys_enter_open",
    "sys_enter_openat",
    "sys_enter_openat2",
    "sys_exit_unlink",
    "sys_exit_unlinkat",
    "sys_exit_rmdir",
    "sys_exit_rename",
    "sys_exit_renameat",
    "sys_exit_renameat2",
    "sys_exit_truncate",
    "sys_exit_ftruncate",
    "sys_exit_creat",
    "sys_exit_open",
    "sys_exit_openat",
    "sys_exit_openat2",
    "sys_enter_fallocate",
    "sys_exit_fallocate",
    "sys_enter_connect",
    "sys_exit_connect",
    "sys_enter_link",
    "sys_enter_linkat",
    "sys_enter_symlink",
    "sys_enter_symlinkat",
    "sys_exit_link",
    "sys_exit_linkat",
    "sys_exit_symlink",
    "sys_exit_symlinkat",
    "sys_enter_syslog",
    "sys_exit_syslog",
    "sys_enter_ptrace",
    "sys_exit_ptrace",
    "sys_enter_process_vm_writev",
    "sys_exit_process_vm_writev",
    "sys_enter_pidfd_getfd",
    "sys_exit_pidfd_getfd",
    "sys_enter_bpf",
    "sys_exit_bpf",
];

/// io_uring tracepoints: attached when the kernel has io_uring (and its BTF the request
/// structs); otherwise the agent reports them as not attached, with the reason.
pub const IOURING_TRACEPOINTS: &[&str] = &["io_uring_submit_req", "io_uring_complete"];

/// Raw tracepoints (the program gets the tracepoint's C arguments, e.g. a task pointer).
pub const RAW_TRACEPOINTS: &[&str] = &["signal_generate"];

/// A loaded and attached set of programs.
pub struct Loaded {
    pub ebpf: Ebpf,
    /// Hooks attached.
    pub attached: usize,
    /// Optional hooks that could not be attached, with the reason.
    pub unattached: Vec<(String, String)>,
}

/// How many instructions the kernel's verifier may process for one program before it
/// refuses it (`BPF_COMPLEXITY_LIMIT_INSNS`).
pub const VERIFIER_BUDGET: u32 = 1_000_000;

impl Loaded {
    /// Instructions the verifier processed for each loaded program, largest first
    /// (programs whose count the kernel does not report, before 5.16, are left out).
    /// How close a program is to [`VERIFIER_BUDGET`] is how close a compiler or kernel
    /// change is to making it unloadable.
    pub fn verifier_work(&self) -> Vec<(String, u32)> {
        let mut work: Vec<(String, u32)> = self
            .ebpf
            .programs()
            .filter_map(|(name, p)| {
                let n = p.info().ok()?.verified_instruction_count()?;
                Some((name.to_string(), n))
            })
            .collect();
        work.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        work
    }
}

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
    #[error("the eBPF object has no map `{0}` (object and daemon versions differ?)")]
    MissingMap(&'static str),
    #[error("cannot set up map `{name}`: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
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
    /// Watched trees for the file hooks; `None` emits no file event at all.
    pub watch: Option<WatchList>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            object: None,
            ring_bytes: 16 << 20,
            settings: Settings::DEFAULT,
            btf_path: PathBuf::from(btf::VMLINUX_BTF),
            watch: None,
        }
    }
}

/// True when this binary carries real eBPF programs.
pub fn has_embedded_object() -> bool {
    !EMBEDDED_OBJECT.is_empty()
}

/// Reads the object to load: `--obj`, or the embedded one (borrowed, not copied: a copy
/// was 2.8 MB more on the agent's peak memory).
pub fn object_bytes(object: Option<&Path>) -> Result<Cow<'static, [u8]>, LoadError> {
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
            Ok(Cow::Owned(bytes))
        }
        None if EMBEDDED_OBJECT.is_empty() => Err(LoadError::NoEmbeddedObject),
        None => Ok(Cow::Borrowed(EMBEDDED_OBJECT)),
    }
}

/// Loads the programs with offsets and settings patched in, and attaches them all.
pub fn load_and_attach(opts: &LoadOptions) -> Result<Loaded, LoadError> {
    let bytes = object_bytes(opts.object.as_deref())?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(LoadError::NotRoot);
    }
    // The parsed BTF is dropped before aya parses it again for the load: holding both
    // set the agent's peak RSS.
    let offsets = {
        let btf = btf::load(&opts.btf_path)?;
        btf::kernel_offsets(&btf)?
    };
    tracefs::ensure_mounted()?;
    let cpus = aya::util::nr_cpus().map_err(|(what, e)| LoadError::Cpus(what, e))? as u32;
    let mut settings = opts.settings;
    settings.argv_bytes = settings.argv_bytes.min(limits::ARGV_BYTES_MAX);
    settings.argv_args = settings.argv_args.min(limits::ARGV_ARGS_MAX);
    settings.self_tgid = std::process::id();
    settings.file_filter = 1;

    // No kernel BTF for aya: Rust eBPF carries no CO-RE relocations (the offsets above
    // are how kernel layouts reach the programs), and parsing the kernel's BTF a second
    // time only raised the agent's peak memory.
    let mut ebpf = EbpfLoader::new()
        .btf(None)
        .override_global(names::OFFSETS, &offsets, true)
        .override_global(names::SETTINGS, &settings, true)
        .map_max_entries(names::EVENTS, opts.ring_bytes)
        .map_max_entries(names::SCRATCH, cpus)
        .load(&bytes)
        .map_err(LoadError::Load)?;

    write_watch_list(&mut ebpf, opts.watch.as_ref())?;
    load_tail_calls(&mut ebpf)?;

    let mut attached = 0;
    for &name in TRACEPOINTS {
        attach_tracepoint(&mut ebpf, "syscalls", name)?;
        attached += 1;
    }
    for &name in RAW_TRACEPOINTS {
        loaded::<RawTracePoint>(&mut ebpf, name)?
            .attach(name)
            .map_err(|source| LoadError::Program { name, source })?;
        attached += 1;
    }
    let mut unattached = Vec::new();
    let iouring_missing = ["tp_iou_submit_opcode", "iou_req_cmd", "filename_name"]
        .iter()
        .find(|f| offsets.get(f) == Some(auditor_common::offsets::ABSENT));
    for &name in IOURING_TRACEPOINTS {
        if let Some(field) = iouring_missing {
            unattached.push((
                format!("io_uring/{name}"),
                format!("kernel BTF lacks {field} (no io_uring in this kernel?)"),
            ));
            continue;
        }
        match attach_tracepoint(&mut ebpf, "io_uring", name) {
            Ok(()) => attached += 1,
            Err(e) => {
                tracing::warn!("io_uring/{name} not attached: {e}");
                unattached.push((format!("io_uring/{name}"), e.to_string()));
            }
        }
    }
    drop(bytes);
    release_freed_heap();
    Ok(Loaded {
        ebpf,
        attached,
        unattached,
    })
}

/// Gives the heap that parsing the BTF and the object used back to the kernel. glibc keeps
/// freed memory for reuse, and nothing after startup needs that much: measured here,
/// the agent's anonymous memory went from 11.9 MB to 1.9 MB once attached.
fn release_freed_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free heap pages; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Program `name` of type `P`, loaded (verified) into the kernel.
fn loaded<'a, P>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut P, LoadError>
where
    P: LoadableProgram,
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let program: &mut P = ebpf
        .program_mut(name)
        .ok_or(LoadError::MissingProgram(name))?
        .try_into()
        .map_err(|source| LoadError::Program { name, source })?;
    program
        .load_program()
        .map_err(|source| LoadError::Program { name, source })?;
    Ok(program)
}

/// `load()` of the program types used here (aya gives each its own inherent method).
trait LoadableProgram {
    fn load_program(&mut self) -> Result<(), aya::programs::ProgramError>;
}

impl LoadableProgram for TracePoint {
    fn load_program(&mut self) -> Result<(), aya::programs::ProgramError> {
        self.load()
    }
}

impl LoadableProgram for RawTracePoint {
    fn load_program(&mut self) -> Result<(), aya::programs::ProgramError> {
        self.load()
    }
}

fn attach_tracepoint(ebpf: &mut Ebpf, category: &str, name: &'static str) -> Result<(), LoadError> {
    loaded::<TracePoint>(ebpf, name)?
        .attach(category, name)
        .map_err(|source| LoadError::Program { name, source })?;
    tracing::debug!(program = name, "attached {category}/{name}");
    Ok(())
}

/// Loads the programs reached only by tail call and puts them in their slots, before
/// anything is attached (so no hook can run before the body it hands over to exists).
fn load_tail_calls(ebpf: &mut Ebpf) -> Result<(), LoadError> {
    const TAILS: [(&str, u32); 2] = [
        (names::FILE_BODY_PROG, file_tail::BODY),
        (names::RENAME_PART2_PROG, file_tail::PART2),
    ];
    let mut fds = Vec::with_capacity(TAILS.len());
    for (name, slot) in TAILS {
        let fd = loaded::<TracePoint>(ebpf, name)?
            .fd()
            .map_err(|source| LoadError::Program { name, source })?
            .try_clone()
            .map_err(|e| LoadError::Program {
                name,
                source: aya::programs::ProgramError::IOError(e),
            })?;
        fds.push((slot, fd));
    }
    let map = ebpf
        .map_mut(names::FILE_TAILS)
        .ok_or(LoadError::MissingMap(names::FILE_TAILS))?;
    let mut slots = aya::maps::ProgramArray::try_from(map).map_err(|source| LoadError::Map {
        name: names::FILE_TAILS,
        source,
    })?;
    for (slot, fd) in &fds {
        slots.set(*slot, fd, 0).map_err(|source| LoadError::Map {
            name: names::FILE_TAILS,
            source,
        })?;
    }
    Ok(())
}

/// Writes the watch list into the kernel maps: the prefixes (grouped into runs by head),
/// the runs' heads, the prefixes' count, then the directory inodes (stale ones removed).
/// Used at load and on reload; a file operation racing a reload is judged against the
/// old or the new list.
pub fn write_watch_list(ebpf: &mut Ebpf, watch: Option<&WatchList>) -> Result<(), LoadError> {
    let err = |name| move |source| LoadError::Map { name, source };
    let filter = watch.map_or_else(
        || crate::watchlist::KernelFilter::of(Vec::new()),
        WatchList::kernel_filter,
    );
    let kernel_prefixes = &filter.prefixes;
    let map = ebpf
        .map_mut(names::WATCH_PREFIXES)
        .ok_or(LoadError::MissingMap(names::WATCH_PREFIXES))?;
    let mut prefixes: Array<_, auditor_common::WatchPrefix> =
        Array::try_from(map).map_err(err(names::WATCH_PREFIXES))?;
    for (i, p) in kernel_prefixes.iter().enumerate() {
        prefixes
            .set(i as u32, p, 0)
            .map_err(err(names::WATCH_PREFIXES))?;
    }
    let map = ebpf
        .map_mut(names::WATCH_HEADS)
        .ok_or(LoadError::MissingMap(names::WATCH_HEADS))?;
    let mut heads: Array<_, auditor_common::PrefixHeads> =
        Array::try_from(map).map_err(err(names::WATCH_HEADS))?;
    heads
        .set(0, filter.heads, 0)
        .map_err(err(names::WATCH_HEADS))?;
    let map = ebpf
        .map_mut(names::WATCH_COUNT)
        .ok_or(LoadError::MissingMap(names::WATCH_COUNT))?;
    let mut count: Array<_, u32> = Array::try_from(map).map_err(err(names::WATCH_COUNT))?;
    count
        .set(0, kernel_prefixes.len() as u32, 0)
        .map_err(err(names::WATCH_COUNT))?;
    let map = ebpf
        .map_mut(names::WATCH_INODES)
        .ok_or(LoadError::MissingMap(names::WATCH_INODES))?;
    let mut inodes: HashMap<_, auditor_common::InodeKey, u8> =
        HashMap::try_from(map).map_err(err(names::WATCH_INODES))?;
    let wanted: Vec<(auditor_common::InodeKey, u8)> =
        watch.map_or_else(Vec::new, WatchList::kernel_inodes);
    let stale: Vec<auditor_common::InodeKey> = inodes
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !wanted.iter().any(|(w, _)| w == k))
        .collect();
    for (k, mode) in &wanted {
        inodes
            .insert(k, mode, 0)
            .map_err(err(names::WATCH_INODES))?;
    }
    for k in stale {
        inodes.remove(&k).map_err(err(names::WATCH_INODES))?;
    }
    Ok(())
}
