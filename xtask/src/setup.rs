//! Installs what a fresh machine of this kind lacks for the eBPF build, checking before
//! doing: the Debian LLVM 22 dev package, nightly `rust-src`, and bpf-linker 0.13.0 built
//! against that LLVM (its LLVM major must equal nightly rustc's; see
//! ../shared/TOOLCHAIN.md). A ready machine passes in seconds.

use std::{path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

const LLVM_MAJOR: &str = "22";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const BPF_LINKER: &str = "0.13.0";

pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn status(cmd: &mut Command) -> Result<()> {
    let st = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed with {st}");
    }
    Ok(())
}

pub fn run() -> Result<()> {
    // 1. The nightly toolchain (preinstalled on this machine kind; it cannot be fetched).
    let vv = output(Command::new("rustup").args(["run", "nightly", "rustc", "-vV"])).context(
        "the nightly toolchain is required for the eBPF build (rustup run nightly rustc failed)",
    )?;
    let llvm = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .context("cannot read nightly rustc's LLVM version")?;
    if llvm.split('.').next() != Some(LLVM_MAJOR) {
        bail!(
            "nightly rustc uses LLVM {llvm}, but bpf-linker here is built for LLVM {LLVM_MAJOR}: \
             their majors must match. Use a nightly with LLVM {LLVM_MAJOR} or change LLVM_MAJOR in xtask/src/setup.rs"
        );
    }
    println!("ok: nightly rustc with LLVM {llvm}");

    // 2. rust-src for -Z build-std=core.
    let sysroot =
        output(Command::new("rustup").args(["run", "nightly", "rustc", "--print", "sysroot"]))?;
    let core_src = Path::new(sysroot.trim()).join("lib/rustlib/src/rust/library/core");
    if core_src.exists() {
        println!("ok: nightly rust-src");
    } else {
        println!("installing: nightly rust-src");
        status(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }

    // 3. Debian's LLVM 22 (bpf-linker links against it).
    let llvm_config = Path::new(LLVM_PREFIX).join("bin/llvm-config");
    if llvm_config.exists() {
        println!("ok: {LLVM_PREFIX}");
    } else {
        println!("installing: llvm-{LLVM_MAJOR}-dev (apt)");
        status(Command::new("apt-get").args(["update", "-qq"]))?;
        status(
            Command::new("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args([
                    "install",
                    "-y",
                    "-qq",
                    "--no-install-recommends",
                    &format!("llvm-{LLVM_MAJOR}-dev"),
                ]),
        )?;
    }

    // 4. bpf-linker built for that LLVM.
    let have = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success());
    let version = have.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if version.as_deref() == Some(&format!("bpf-linker {BPF_LINKER}")) {
        println!("ok: bpf-linker {BPF_LINKER}");
    } else {
        println!("installing: bpf-linker {BPF_LINKER} for LLVM {LLVM_MAJOR} (about 75 s)");
        status(Command::new("cargo").env("LLVM_PREFIX", LLVM_PREFIX).args([
            "install",
            "--locked",
            &format!("bpf-linker@{BPF_LINKER}"),
            "--no-default-features",
            "--features",
            &format!("llvm-{LLVM_MAJOR}"),
        ]))?;
    }
    println!("setup complete");
    Ok(())
}

/// Programs the integration tests drive, and the Debian package of each. Installed only
/// when missing (`cargo xtask test` calls this).
const TEST_TOOLS: &[(&str, &str)] = &[
    ("systemd-analyze", "systemd"),
    ("chattr", "e2fsprogs"),
    ("useradd", "passwd"),
    ("su", "util-linux"),
    ("dmesg", "util-linux"),
    ("perl", "perl-base"),
    ("python3", "python3"),
    ("shred", "coreutils"),
];

fn on_path(bin: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| {
        std::env::split_paths(&p)
            .chain(["/usr/sbin".into(), "/sbin".into()])
            .any(|d| d.join(bin).is_file())
    })
}

pub fn test_tools() -> Result<()> {
    let mut missing: Vec<&str> = TEST_TOOLS
        .iter()
        .filter(|(bin, _)| !on_path(bin))
        .map(|&(_, pkg)| pkg)
        .collect();
    missing.dedup();
    if missing.is_empty() {
        println!("ok: test tools");
        return Ok(());
    }
    println!("installing test tools: {} (apt)", missing.join(" "));
    status(Command::new("apt-get").args(["update", "-qq"]))?;
    status(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing),
    )
}
