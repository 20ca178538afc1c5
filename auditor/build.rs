//! Builds the eBPF programs (crate `auditor-ebpf`) for the BPF target with aya-build and
//! embeds the object in the `auditor` binary.
//!
//! Without the eBPF toolchain (or with `AYA_BUILD_SKIP=1`) an empty placeholder is written
//! instead, so unit tests build and run anywhere; the binary then says, when asked to
//! watch, that it was built without eBPF and how to fix that.
use std::{env, fs, path::PathBuf, process::Command};

use anyhow::{Context as _, anyhow};

const OBJ: &str = "auditor"; // the eBPF crate's [[bin]] name

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?);
    let obj = out_dir.join(OBJ);
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    println!("cargo:rerun-if-env-changed=AUDITOR_REQUIRE_EBPF");
    println!("cargo::rustc-check-cfg=cfg(auditor_ebpf_stub)");

    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    let require = env::var("AUDITOR_REQUIRE_EBPF").is_ok_and(|v| v == "1");
    let missing = toolchain_missing();

    if skip || missing.is_some() {
        if require {
            return Err(anyhow!(
                "AUDITOR_REQUIRE_EBPF=1 but the eBPF build is unavailable: {}; run `cargo xtask setup`",
                missing.unwrap_or_else(|| "AYA_BUILD_SKIP is set".into())
            ));
        }
        if let Some(why) = &missing {
            println!(
                "cargo:warning=building auditor WITHOUT eBPF programs: {why}; run `cargo xtask setup`"
            );
        }
        fs::write(&obj, []).with_context(|| format!("writing placeholder {}", obj.display()))?;
        println!("cargo:rustc-cfg=auditor_ebpf_stub");
        return Ok(());
    }

    let ebpf_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../auditor-ebpf");
    let ebpf_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", ebpf_dir.display()))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "auditor-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .context("building the eBPF programs (auditor-ebpf)")?;
    Ok(())
}

/// Why the eBPF object cannot be built here, if it cannot.
fn toolchain_missing() -> Option<String> {
    let linker = Command::new("bpf-linker").arg("--version").output();
    if !linker.is_ok_and(|o| o.status.success()) {
        return Some("bpf-linker not found on PATH".into());
    }
    let src = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .output();
    match src {
        Ok(o) if o.status.success() => {
            let sysroot = String::from_utf8_lossy(&o.stdout).trim().to_string();
            let rust_src = PathBuf::from(sysroot).join("lib/rustlib/src/rust/library/core");
            if !rust_src.exists() {
                return Some("the nightly toolchain has no rust-src component".into());
            }
            None
        }
        _ => Some("no nightly toolchain (rustup run nightly rustc failed)".into()),
    }
}
