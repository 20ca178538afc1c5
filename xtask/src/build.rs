//! `build-ebpf` and `run`.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use clap::Args;

use crate::setup::{self, status};

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

#[derive(Args)]
pub struct BuildEbpfArgs {
    /// Copy the object here too.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Builds `auditor-ebpf` for the BPF target with the same flags as aya-build uses from
/// `auditor/build.rs`, so the object is the one the binary embeds.
pub fn build_ebpf(args: &BuildEbpfArgs) -> Result<PathBuf> {
    let root = workspace_root();
    let target_dir = root.join("target/ebpf");
    let rustflags = [
        "--cfg=bpf_target_arch=\"x86_64\"",
        "-Cdebuginfo=2",
        "-Clink-arg=--btf",
    ]
    .join("\x1f");
    status(
        Command::new("rustup")
            .current_dir(&root)
            .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
            .env_remove("RUSTC")
            .env_remove("RUSTC_WORKSPACE_WRAPPER")
            .args([
                "run",
                "nightly",
                "cargo",
                "build",
                "--package",
                "auditor-ebpf",
                "--bins",
                "--release",
            ])
            .args([
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
                "--target-dir",
            ])
            .arg(&target_dir),
    )
    .context("building the eBPF object (run `cargo xtask setup` if the toolchain is missing)")?;
    let obj = target_dir.join("bpfel-unknown-none/release/auditor");
    if !obj.exists() {
        bail!("the build succeeded but {} is missing", obj.display());
    }
    if let Some(out) = &args.out {
        std::fs::copy(&obj, out).with_context(|| format!("copying to {}", out.display()))?;
        return Ok(out.clone());
    }
    Ok(obj)
}

/// Builds the auditor binary with its eBPF programs (fails if they cannot be built).
pub fn build_auditor(release: bool) -> Result<PathBuf> {
    let root = workspace_root();
    let mut cmd = Command::new("cargo");
    cmd.current_dir(&root)
        .env("AUDITOR_REQUIRE_EBPF", "1")
        .args(["build", "--package", "auditor"]);
    if release {
        cmd.arg("--release");
    }
    status(&mut cmd)?;
    Ok(root.join(if release {
        "target/release/auditor"
    } else {
        "target/debug/auditor"
    }))
}

#[derive(Args)]
pub struct RunArgs {
    /// Extra arguments for `auditor watch` (after --).
    #[arg(last = true)]
    pub extra: Vec<String>,
}

pub fn run(args: &RunArgs) -> Result<()> {
    setup::run()?;
    let bin = build_auditor(true)?;
    println!(
        "starting: {} watch --path /var/log {}",
        bin.display(),
        args.extra.join(" ")
    );
    let mut cmd = Command::new(&bin);
    cmd.args(["watch", "--path", "/var/log"]).args(&args.extra);
    if is_root() {
        status(&mut cmd)
    } else {
        status(
            Command::new("sudo")
                .arg(&bin)
                .args(["watch", "--path", "/var/log"])
                .args(&args.extra),
        )
    }
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
