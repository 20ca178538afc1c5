//! `cargo xtask test`: what CI runs (`.ci/run`). Installs what is missing, runs the
//! unprivileged tests of every host crate, then builds the real binary and runs the root
//! integration tests against the running kernel. No test is skipped silently: without
//! root the integration step fails and says why.

use std::process::Command;

use anyhow::{Result, bail};
use clap::Args;

use crate::{
    build::{self, unsafe_is_root, workspace_root},
    setup::{self, status},
};

#[derive(Args)]
pub struct TestArgs {
    /// Only the unprivileged unit tests (no eBPF toolchain or root needed).
    #[arg(long)]
    pub unit_only: bool,
    /// Extra arguments for the integration test binary (e.g. a test name filter).
    #[arg(last = true)]
    pub extra: Vec<String>,
}

pub fn run(args: &TestArgs) -> Result<()> {
    let root = workspace_root();
    if args.unit_only {
        return status(
            Command::new("cargo")
                .current_dir(&root)
                .env("AYA_BUILD_SKIP", "1")
                .args([
                    "test",
                    "--workspace",
                    "--exclude",
                    "auditor-ebpf",
                    "--exclude",
                    "auditor-integration",
                ]),
        );
    }
    setup::run()?;
    println!("== unit tests (unprivileged)");
    status(
        Command::new("cargo")
            .current_dir(&root)
            .env("AUDITOR_REQUIRE_EBPF", "1")
            .args([
                "test",
                "--workspace",
                "--exclude",
                "auditor-ebpf",
                "--exclude",
                "auditor-integration",
            ]),
    )?;
    if !unsafe_is_root() {
        bail!(
            "the integration tests load eBPF programs and need root: run `sudo cargo xtask test`"
        );
    }
    println!("== integration tests (root, real kernel)");
    let bin = build::build_auditor(false)?;
    status(
        Command::new("cargo")
            .current_dir(&root)
            .env("AUDITOR_BIN", &bin)
            .args([
                "test",
                "--package",
                "auditor-integration",
                "--",
                "--test-threads=1",
            ])
            .args(&args.extra),
    )
}
