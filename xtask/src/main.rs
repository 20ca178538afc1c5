//! Developer tasks for auditor. `cargo xtask --help` lists them.
//!
//! - `setup`: installs what a fresh machine lacks for the eBPF build (idempotent).
//! - `build-ebpf`: builds the eBPF object to a path you can inspect or `--obj`-load.
//! - `run`: setup, build, then `auditor watch --path /var/log` (the main job).
//! - `test`: setup, unprivileged tests, then the root integration tests.
//! - `bench`: side-by-side overhead measurements.

mod bench;
mod build;
mod setup;
mod test;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "auditor developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the eBPF toolchain pieces this machine lacks (idempotent; seconds when ready).
    Setup,
    /// Build the eBPF object (prints its path).
    BuildEbpf(build::BuildEbpfArgs),
    /// Install what is missing, build, and run `auditor watch --path /var/log`.
    Run(build::RunArgs),
    /// Install what is missing and run every test (unit, then root integration tests).
    Test(test::TestArgs),
    /// Benchmarks (ratios measured side by side in one run).
    Bench(bench::BenchArgs),
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::run(),
        Task::BuildEbpf(a) => build::build_ebpf(&a).map(|p| println!("{}", p.display())),
        Task::Run(a) => build::run(&a),
        Task::Test(a) => test::run(&a),
        Task::Bench(a) => bench::run(&a),
    }
}
