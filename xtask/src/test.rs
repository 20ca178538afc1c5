//! `cargo xtask test`: what CI runs (`.ci/run`). Installs what is missing, runs the
//! unprivileged tests of every host crate, then builds the real binary and runs the root
//! integration tests against the running kernel. No test is skipped silently: without
//! root the integration step fails and says why. The last line sums every test binary's
//! result: `summary: N passed, M failed`.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};
use clap::Args;

use crate::{
    build::{self, is_root, workspace_root},
    setup,
};

#[derive(Args)]
pub struct TestArgs {
    /// Only the unprivileged unit tests (no eBPF toolchain or root needed).
    #[arg(long)]
    pub unit_only: bool,
    /// Extra arguments for the integration test binaries (e.g. a test name filter).
    #[arg(last = true)]
    pub extra: Vec<String>,
}

#[derive(Default)]
struct Tally {
    passed: u64,
    failed: u64,
}

impl Tally {
    /// Runs `cmd`, echoing its output and adding up its `test result:` lines.
    fn run(&mut self, cmd: &mut Command) -> Result<bool> {
        let mut child = cmd
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {cmd:?}"))?;
        let out = child.stdout.take().context("test stdout")?;
        for line in BufReader::new(out).lines() {
            let line = line?;
            println!("{line}");
            if let Some(rest) = line.strip_prefix("test result: ") {
                self.passed += count(rest, " passed");
                self.failed += count(rest, " failed");
            }
        }
        Ok(child.wait()?.success())
    }
}

/// The number before `word` in "ok. 8 passed; 0 failed; ...".
fn count(s: &str, word: &str) -> u64 {
    s.split(';')
        .find(|part| part.ends_with(word))
        .and_then(|part| part.trim_end_matches(word).rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

const HOST_CRATES: [&str; 4] = [
    "--exclude",
    "auditor-ebpf",
    "--exclude",
    "auditor-integration",
];

pub fn run(args: &TestArgs) -> Result<()> {
    let root = workspace_root();
    let mut tally = Tally::default();
    let mut ok = true;
    if args.unit_only {
        ok &= tally.run(
            Command::new("cargo")
                .current_dir(&root)
                .env("AYA_BUILD_SKIP", "1")
                .args(["test", "--workspace"])
                .args(HOST_CRATES),
        )?;
    } else {
        setup::run()?;
        if is_root() {
            setup::test_tools()?;
        }
        println!("== unit tests (unprivileged)");
        ok &= tally.run(
            Command::new("cargo")
                .current_dir(&root)
                .env("AUDITOR_REQUIRE_EBPF", "1")
                .args(["test", "--workspace", "--no-fail-fast"])
                .args(HOST_CRATES),
        )?;
        if !is_root() {
            bail!(
                "the integration tests load eBPF programs and need root: run `sudo cargo xtask test`"
            );
        }
        println!("== integration tests (root, real kernel)");
        let bin = build::build_auditor(false)?;
        ok &= tally.run(
            Command::new("cargo")
                .current_dir(&root)
                .env("AUDITOR_BIN", &bin)
                .args([
                    "test",
                    "--no-fail-fast",
                    "--package",
                    "auditor-integration",
                    "--",
                    "--test-threads=1",
                ])
                .args(&args.extra),
        )?;
    }
    println!("summary: {} passed, {} failed", tally.passed, tally.failed);
    if !ok || tally.failed > 0 {
        bail!("{} test(s) failed", tally.failed.max(1));
    }
    if tally.passed == 0 {
        bail!("no test ran");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::count;

    #[test]
    fn counts_cargo_result_lines() {
        let l = "ok. 8 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 10.56s";
        assert_eq!(count(l, " passed"), 8);
        assert_eq!(count(l, " failed"), 2);
        assert_eq!(count("garbage", " passed"), 0);
    }
}
