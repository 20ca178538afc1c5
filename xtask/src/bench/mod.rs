//! Benchmarks. Figures are ratios measured side by side in one run, rounds interleaved
//! (baseline, auditor, baseline, auditd, baseline, bpftrace, baseline, ...), medians reported: these machines
//! are shared and noisy, so absolute times mean little.
//!
//! `cargo xtask bench` (= `bench all`) runs everything and rewrites docs/BENCHMARKS.md and
//! docs/bench-slowdown.svg; the other subcommands run one part and print it.

mod common;
mod peers;
mod pipeline;
mod rate;
mod report;
mod split;
mod storms;

use std::time::Instant;

use anyhow::{Result, bail};
use clap::{Args, Subcommand};

use crate::build::{self, is_root, workspace_root};

#[derive(Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    which: Option<Which>,
}

#[derive(Args, Clone)]
struct AllArgs {
    /// Interleaved rounds of the storms (medians need at least 3).
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Smaller storms and shorter rate steps, no 60 s hold: a few minutes in all.
    #[arg(long)]
    quick: bool,
    /// Seconds of each step of the max-rate search.
    #[arg(long)]
    step_seconds: Option<f64>,
    /// Seconds to hold the best zero-loss rate (0: skip).
    #[arg(long)]
    hold_seconds: Option<f64>,
    /// First rate of the max-rate search (events/s); each step multiplies it by 1.5.
    #[arg(long, default_value_t = 10000.0)]
    start_rate: f64,
    /// `--ring-buffer-size` of the agent in the max-rate search.
    #[arg(long, default_value = "16M")]
    ring: String,
    /// Skip parts: storms, split, rate, pipeline (repeatable).
    #[arg(long = "skip", value_name = "PART")]
    skip: Vec<String>,
    /// Do not profile the agent with perf at the first lossy rate.
    #[arg(long)]
    no_profile: bool,
    /// Print results only; leave docs/ untouched.
    #[arg(long)]
    no_docs: bool,
}

/// Issue #6's target: zero loss at this many events/s for 60 s.
const GOAL_RATE: f64 = 300_000.0;

#[derive(Subcommand)]
enum Which {
    /// Everything below, then rewrite docs/BENCHMARKS.md and the plot (the default).
    All(AllArgs),
    /// Exec, file and connect storms with no tracer, auditor, auditd and bpftrace,
    /// interleaved; slowdown medians and loss per tool.
    Storms {
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        #[arg(long, default_value_t = 2000)]
        execs: u32,
        #[arg(long, default_value_t = 20000)]
        files: u32,
        #[arg(long, default_value_t = 5000)]
        connects: u32,
        /// Run this auditor binary instead of building this tree's (for before/after).
        #[arg(long)]
        bin: Option<std::path::PathBuf>,
    },
    /// The file storm untraced, with auditor running, and with auditor's agent paused
    /// for the storm (its hooks alone): how much of the slowdown is the kernel side and
    /// how much the agent's CPU.
    Split {
        #[arg(long, default_value_t = 5)]
        rounds: u32,
        #[arg(long, default_value_t = 20000)]
        files: u32,
        /// Run this auditor binary instead of building this tree's.
        #[arg(long)]
        bin: Option<std::path::PathBuf>,
    },
    /// Kernel time per auditor hook over one pass of the three storms (bpf_stats on):
    /// runs and mean ns per program, for before/after claims about the eBPF side, which
    /// the storms' wall-clock ratios are too noisy to resolve.
    Hooks {
        #[arg(long, default_value_t = 2000)]
        execs: u32,
        #[arg(long, default_value_t = 20000)]
        files: u32,
        #[arg(long, default_value_t = 5000)]
        connects: u32,
        /// Run this auditor binary instead of building this tree's.
        #[arg(long)]
        bin: Option<std::path::PathBuf>,
        /// Compare with this binary: passes of both, in balanced order (A B, B A, ...:
        /// the second of two back-to-back passes measures ~10 ns slower per program),
        /// and the median of each program's mean ns per binary.
        #[arg(long)]
        against: Option<std::path::PathBuf>,
        /// Passes per binary with `--against`.
        #[arg(long, default_value_t = 4)]
        rounds: u32,
    },
    /// Step the connect-event rate up until the first loss through kernel -> agent -> vault.
    MaxRate {
        #[arg(long, default_value_t = 10000.0)]
        start: f64,
        #[arg(long, default_value_t = 10.0)]
        step_seconds: f64,
        #[arg(long, default_value_t = 0.0)]
        hold_seconds: f64,
        #[arg(long, default_value = "16M")]
        ring: String,
        /// Generator threads. One leaves the agent one of the two cores; two compete with
        /// it for both (at 300,000/s: 5,127 events lost in 10 s, against none from one
        /// thread in 60 s), which `--spread-threads` measures separately.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// After the ladder (and hold), one more step at the sustained rate from this many
        /// generator threads, so the load competes with the agent for every core (0: skip).
        #[arg(long, default_value_t = 2)]
        spread_threads: usize,
        /// The rate in question: tried when the ladder steps over it, and held when a
        /// hold above it loses.
        #[arg(long, default_value_t = GOAL_RATE)]
        goal: f64,
        /// perf-profile the agent at the first lossy rate.
        #[arg(long)]
        profile: bool,
    },
    /// Two agents side by side (rounds interleaved: A, B, A, B, ...) at fixed
    /// connect-event rates: rate reached, agent CPU per event and loss. Two binaries for
    /// before/after claims, or one binary with two argument sets (`--a-arg`, `--b-arg`).
    Ab {
        /// The "before" binary (e.g. built at an earlier commit).
        #[arg(long)]
        a: std::path::PathBuf,
        /// The "after" binary; default: this tree's release build.
        #[arg(long)]
        b: Option<std::path::PathBuf>,
        /// Rates to hold, events/s (repeatable).
        #[arg(long = "rate", default_values_t = [40000.0, 80000.0])]
        rates: Vec<f64>,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        #[arg(long, default_value = "16M")]
        ring: String,
        /// Generator threads (as for max-rate).
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Extra `auditor watch` argument for A (repeatable; e.g. `--a-arg=--nice=0`).
        #[arg(long = "a-arg", value_name = "ARG", allow_hyphen_values = true)]
        a_args: Vec<String>,
        /// Extra `auditor watch` argument for B (repeatable).
        #[arg(long = "b-arg", value_name = "ARG", allow_hyphen_values = true)]
        b_args: Vec<String>,
    },
    /// Vault ingest rate: batches POSTed directly to `vault serve` (chained, fsynced).
    Ingest {
        #[arg(long, default_value_t = 200)]
        batches: u64,
        #[arg(long, default_value_t = 500)]
        batch: u64,
    },
}

/// The agent binary given on the command line, else this tree's release build.
fn given_or_built(bin: &Option<std::path::PathBuf>) -> Result<std::path::PathBuf> {
    match bin {
        Some(b) => Ok(b.clone()),
        None => build::build_auditor(true),
    }
}

pub fn run(args: &BenchArgs) -> Result<()> {
    if !is_root() {
        bail!("benchmarks load eBPF programs and need root");
    }
    if matches!(
        args.which,
        None | Some(Which::All(_) | Which::Storms { .. })
    ) && let Some(code) = peers::run_auditable()?
    {
        std::process::exit(code);
    }
    common::catch_ctrl_c();
    // The agent is built with its eBPF programs: on a fresh machine that needs the
    // toolchain `cargo xtask test` and `run` install too.
    crate::setup::run()?;
    let default = Which::All(AllArgs {
        rounds: 3,
        quick: false,
        step_seconds: None,
        hold_seconds: None,
        start_rate: 10000.0,
        ring: "16M".into(),
        skip: Vec::new(),
        no_profile: false,
        no_docs: false,
    });
    match args.which.as_ref().unwrap_or(&default) {
        Which::All(a) => all(a),
        &Which::Storms {
            rounds,
            execs,
            files,
            connects,
            ref bin,
        } => {
            let bin = given_or_built(bin)?;
            let r = storms::run(
                &bin,
                storms::StormCounts {
                    execs,
                    files,
                    connects,
                },
                rounds,
            )?;
            print_storms(&r);
            Ok(())
        }
        &Which::Split {
            rounds,
            files,
            ref bin,
        } => {
            let bin = given_or_built(bin)?;
            split::print(&split::run(&bin, files, rounds)?);
            Ok(())
        }
        &Which::Hooks {
            execs,
            files,
            connects,
            ref bin,
            ref against,
            rounds,
        } => {
            let bin = given_or_built(bin)?;
            let counts = storms::StormCounts {
                execs,
                files,
                connects,
            };
            match against {
                None => print_hooks(&storms::hook_costs(&bin, counts)?, usize::MAX),
                Some(other) => hooks_ab(&bin, other, counts, rounds)?,
            }
            Ok(())
        }
        Which::Ab {
            a,
            b,
            rates,
            seconds,
            rounds,
            ring,
            threads,
            a_args,
            b_args,
        } => rate::ab(
            rate::Side {
                bin: a,
                args: a_args,
            },
            rate::Side {
                bin: &given_or_built(b)?,
                args: b_args,
            },
            rates,
            *seconds,
            *rounds,
            ring,
            *threads,
        ),
        Which::MaxRate {
            start,
            step_seconds,
            hold_seconds,
            ring,
            threads,
            spread_threads,
            goal,
            profile,
        } => {
            let bin = build::build_auditor(true)?;
            rate::run(
                &bin,
                &rate::RateOptions {
                    start: *start,
                    factor: 1.5,
                    max: 2_000_000.0,
                    step_seconds: *step_seconds,
                    hold_seconds: *hold_seconds,
                    ring: ring.clone(),
                    threads: *threads,
                    spread_threads: *spread_threads,
                    goal: Some(*goal),
                    profile: *profile,
                    refine: 2,
                },
            )
            .map(|_| ())
        }
        &Which::Ingest { batches, batch } => {
            let bin = build::build_auditor(true)?;
            pipeline::ingest(&bin, batches, batch).map(|_| ())
        }
    }
}

fn print_storms(r: &storms::StormResults) {
    for (i, name) in storms::STORMS.iter().enumerate() {
        let per: Vec<String> = storms::Tool::TRACERS
            .iter()
            .map(|&t| {
                let (n, e) = r.captured(t, i);
                format!("{} {:.3}x ({n}/{e})", t.name(), r.ratio(t, i))
            })
            .collect();
        println!("{name:8} median slowdown: {}", per.join(", "));
        let cpu: Vec<String> = storms::Tool::TRACERS
            .iter()
            .map(|&t| {
                format!(
                    "{} {:.3}x (storm alone {:.3}x)",
                    t.name(),
                    r.cpu_ratio(t, i),
                    r.own_cpu_ratio(t, i)
                )
            })
            .collect();
        println!("{name:8} median CPU cost: {}", cpu.join(", "));
    }
    for t in storms::Tool::TRACERS {
        println!("{:9} loss reported: {}", t.name(), r.lost(t));
    }
}

/// `bench hooks --against`: passes of `a` and `b` in balanced order, then per program
/// (those of `a`'s first pass with 1,000 runs or more) the median of its mean ns for
/// each binary, their ratio, and the spread.
fn hooks_ab(
    a: &std::path::Path,
    b: &std::path::Path,
    counts: storms::StormCounts,
    rounds: u32,
) -> Result<()> {
    if rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    let mut ns: [std::collections::BTreeMap<String, Vec<f64>>; 2] = Default::default();
    let mut order: Vec<String> = Vec::new();
    for round in 0..rounds {
        let pair = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for which in pair {
            let bin = [a, b][which];
            let costs = storms::hook_costs(bin, counts)?;
            println!(
                "round {round} {}: {} programs",
                ["A", "B"][which],
                costs.len()
            );
            for (name, runs, mean) in costs {
                if which == 0 && round == 0 && runs >= 1000 {
                    order.push(name.clone());
                }
                ns[which].entry(name).or_default().push(mean);
            }
        }
    }
    println!(
        "A = {}, B = {}; {rounds} passes each, balanced order",
        a.display(),
        b.display()
    );
    println!(
        "  {:16} {:>9} {:>9} {:>7}   A min-max   B min-max",
        "program", "A ns", "B ns", "B/A"
    );
    for name in order {
        let (Some(x), Some(y)) = (ns[0].get(&name), ns[1].get(&name)) else {
            println!("  {name:16} missing from one binary's passes");
            continue;
        };
        let (mx, my) = (common::median(x), common::median(y));
        let span = |v: &[f64]| {
            let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            format!("{lo:.0}-{hi:.0}")
        };
        println!(
            "  {name:16} {mx:>9.1} {my:>9.1} {:>7.3}   {:9}   {:9}",
            my / mx,
            span(x),
            span(y)
        );
    }
    Ok(())
}

/// The `n` costliest hooks (total kernel time), one line each.
fn print_hooks(hooks: &[(String, u64, f64)], n: usize) {
    for (name, runs, ns) in hooks.iter().take(n) {
        println!(
            "  {name:24} {runs:>9} runs, {ns:>7.0} ns mean, {:>8.1} ms in all",
            *runs as f64 * ns / 1e6
        );
    }
}

fn all(a: &AllArgs) -> Result<()> {
    let t0 = Instant::now();
    let started = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let skip = |p: &str| a.skip.iter().any(|s| s == p);
    let bin = build::build_auditor(true)?;
    let counts = if a.quick {
        storms::StormCounts {
            execs: 500,
            files: 5000,
            connects: 1500,
        }
    } else {
        storms::StormCounts {
            execs: 2000,
            files: 20000,
            connects: 5000,
        }
    };
    let storms = if skip("storms") {
        None
    } else {
        println!("== storms ({} rounds)", a.rounds);
        let mut r = storms::run(&bin, counts, a.rounds)?;
        print_storms(&r);
        println!("== kernel time per auditor hook (one untimed pass, bpf_stats on)");
        r.hooks = storms::hook_costs(&bin, counts)?;
        print_hooks(&r.hooks, 12);
        Some(r)
    };
    let split = if skip("split") {
        None
    } else {
        println!("== where the file storm's slowdown comes from");
        let r = split::run(&bin, counts.files, a.rounds)?;
        split::print(&r);
        Some(r)
    };
    let rate = if skip("rate") {
        None
    } else {
        println!("== max zero-loss rate");
        Some(rate::run(
            &bin,
            &rate::RateOptions {
                start: a.start_rate,
                factor: 1.5,
                max: 2_000_000.0,
                step_seconds: a.step_seconds.unwrap_or(if a.quick { 4.0 } else { 10.0 }),
                hold_seconds: a.hold_seconds.unwrap_or(if a.quick { 0.0 } else { 60.0 }),
                ring: a.ring.clone(),
                threads: 1,
                spread_threads: 2,
                goal: Some(GOAL_RATE),
                profile: !a.no_profile,
                refine: if a.quick { 1 } else { 2 },
            },
        )?)
    };
    let pipeline = if skip("pipeline") {
        None
    } else {
        println!("== time to vault, agent CPU and RSS");
        let secs = if a.quick { 5.0 } else { 10.0 };
        let mut p = pipeline::run(&bin, &[(200.0, secs), (1600.0, secs)], 8)?;
        println!("== vault ingest");
        p.ingest = Some(pipeline::ingest(&bin, if a.quick { 50 } else { 200 }, 500)?);
        Some(p)
    };
    let minutes = t0.elapsed().as_secs_f64() / 60.0;
    let mut command = String::from("cargo xtask bench all");
    if a.quick {
        command += " --quick";
    }
    if a.rounds != 3 {
        command += &format!(" --rounds {}", a.rounds);
    }
    let res = report::All {
        storms,
        split,
        rate,
        pipeline,
        startups: common::agent_startups(),
        command,
        started,
        minutes,
    };
    if a.no_docs {
        print!("{}", report::markdown(&res));
    } else {
        report::write(&res, &workspace_root().join("docs"))?;
    }
    println!("done in {minutes:.1} min");
    Ok(())
}
