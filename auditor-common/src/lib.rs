//! The kernel <-> userspace ABI of `auditor`, shared by the eBPF programs (`auditor-ebpf`)
//! and the daemon (`auditor`). Nothing else lives here.
//!
//! Every wire struct holds only integers and byte arrays, is `#[repr(C)]` with explicit
//! padding, and has its size and field offsets pinned by `const` assertions, so that a
//! change on one side that the other side does not know about fails the build instead of
//! silently mis-decoding events.
#![no_std]

pub mod abi;
pub mod offsets;

pub use abi::*;
pub use offsets::KernelOffsets;
