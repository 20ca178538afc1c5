//! Rebuild the eBPF object when `bpf-linker` changes. A missing linker is not an error
//! here: the build of this crate for the BPF target will say so itself, and the host build
//! (this crate is a build-dependency of `auditor`) needs no linker at all.
fn main() {
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(_) => println!("cargo:rerun-if-env-changed=PATH"),
    }
}
