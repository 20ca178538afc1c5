//! `auditor`: an eBPF-based, kernel-level activity auditor.
//!
//! The data path, in module order:
//! kernel programs (`auditor-ebpf`) -> [`bpf`] (load, attach, ring buffer, loss counters)
//! -> [`decode`] (bytes -> typed records, total) -> [`assemble`] (pair entry/exit, paths)
//! -> [`watch`] (sequence, stamp, queue) -> [`sink`] (stdout, file, vault).

pub mod assemble;
pub mod bpf;
pub mod check;
pub mod cli;
pub mod clock;
pub mod decode;
pub mod event;
pub mod sink;
pub mod vault;
pub mod watch;
