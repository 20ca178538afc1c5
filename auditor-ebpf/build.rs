//! Rebuild the eBPF object when `bpf-linker` changes. A missing linker is not an error
//! here: the build of this crate for the BPF target will say so itself, and the host build
//! (this crate is a build-dependency of `auditor`) needs no linker at all.
//!
//! Also passes `--disable-expand-memcpy-in-order` to bpf-linker (the same for aya-build
//! and `cargo xtask build-ebpf`, which set the rest of the flags). By default it asks LLVM
//! to keep constant-size memcpy in order for the kernel JITs, which also turns off LLVM's
//! inline expansion of memset: every zeroed array or run of zero fields of 16 bytes or more
//! became a call of the byte-at-a-time `memset` (up to seven per program, ~5 BPF
//! instructions per byte). Expanded, they are a few 8-byte stores.
fn main() {
    if std::env::var("CARGO_CFG_TARGET_ARCH").is_ok_and(|a| a == "bpf") {
        println!("cargo:rustc-link-arg-bins=--disable-expand-memcpy-in-order");
    }
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(_) => println!("cargo:rerun-if-env-changed=PATH"),
    }
}
