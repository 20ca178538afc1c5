//! Host-side placeholder: the programs live in the `auditor` binary target, built for the
//! BPF target by `auditor/build.rs` (aya-build) and `cargo xtask build-ebpf`. This library
//! exists so that `auditor` can declare a build-dependency on this crate and be rebuilt
//! when it changes.
#![no_std]
