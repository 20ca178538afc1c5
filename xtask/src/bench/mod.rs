//! Benchmarks. Figures are ratios measured side by side in one run, rounds interleaved
//! (baseline, auditor, auditd, bpftrace, baseline, ...), medians reported: these machines
//! are shared and noisy, so absolute times mean little.
//!
//! `cargo xtask bench` (= `bench all`) runs everything and rewrites docs/BENCHMARKS.md and
//! docs/bench-slowdown.svg; the other subcommands run one part and print it.

mod common;
mod peers;
mod pipeline;
mod rate;
mod report;
mod storms;

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand};

use crate::build::{self, is_root, workspace_root};
use common::{median, percentile};

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
    /// Skip parts: storms, rate, pipeline (repeatable).
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
    /// N execs of /bin/true with and without the auditor running.
    Exec {
        #[arg(long, default_value_t = 2000)]
        count: u32,
        #[arg(long, default_value_t = 5)]
        rounds: u32,
    },
    /// N x (create+truncate, rename, unlink) outside and inside a watched tree, with and
    /// without the auditor.
    Files {
        #[arg(long, default_value_t = 20000)]
        count: u32,
        #[arg(long, default_value_t = 3)]
        rounds: u32,
    },
    /// Time-to-vault (kernel capture -> vault receive, after which it fsyncs and acks)
    /// at a steady exec rate, and sustained throughput of a burst through the whole path.
    Vault {
        /// Execs per second for the latency run.
        #[arg(long, default_value_t = 200)]
        rate: u32,
        #[arg(long, default_value_t = 10)]
        seconds: u32,
        /// Execs in the throughput burst.
        #[arg(long, default_value_t = 5000)]
        burst: u32,
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
        &Which::Exec { count, rounds } => exec(count, rounds),
        &Which::Files { count, rounds } => files(count, rounds),
        &Which::Vault {
            rate,
            seconds,
            burst,
        } => vault(rate, seconds, burst),
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
    }
    for t in storms::Tool::TRACERS {
        println!("{:9} loss reported: {}", t.name(), r.lost(t));
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
        for (name, n, ns) in r.hooks.iter().take(12) {
            println!("  {name:24} {n:>9} runs, {ns:>7.0} ns mean");
        }
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
        rate,
        pipeline,
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

fn exec_storm(count: u32, marker: &str) -> Result<Duration> {
    let start = Instant::now();
    for _ in 0..count {
        let st = Command::new("/bin/true").arg(marker).status()?;
        if !st.success() {
            bail!("/bin/true failed");
        }
    }
    Ok(start.elapsed())
}

fn file_storm(dir: &Path, count: u32) -> Result<Duration> {
    let (a, b) = (dir.join("a.log"), dir.join("b.log"));
    let start = Instant::now();
    for _ in 0..count {
        std::fs::write(&a, b"x")?; // open(O_CREAT|O_TRUNC)
        std::fs::rename(&a, &b)?;
        std::fs::remove_file(&b)?;
    }
    Ok(start.elapsed())
}

fn files(count: u32, rounds: u32) -> Result<()> {
    let bin = build::build_auditor(true)?;
    let root = std::env::temp_dir().join(format!("auditor-bench-files-{}", std::process::id()));
    let (inside, outside) = (root.join("watched"), root.join("elsewhere"));
    std::fs::create_dir_all(&inside)?;
    std::fs::create_dir_all(&outside)?;
    let out = root.join("events.jsonl");
    let mut r: [Vec<f64>; 4] = Default::default(); // out-base, out-with, in-base, in-with
    file_storm(&outside, 1000)?;
    for round in 0..rounds {
        let ob = file_storm(&outside, count)?.as_secs_f64();
        let ib = file_storm(&inside, count)?.as_secs_f64();
        let child = start_auditor_args(
            &bin,
            &out,
            &[
                "--path",
                inside.to_str().context("utf-8 path")?,
                "--no-local-vault",
            ],
        )?;
        let ow = file_storm(&outside, count)?.as_secs_f64();
        let iw = file_storm(&inside, count)?.as_secs_f64();
        stop(child)?;
        let text = std::fs::read_to_string(&out)?;
        let seen = text
            .lines()
            .filter(|l| l.contains("\"kind\":\"delete\"") && l.contains("watched/b.log"))
            .count();
        let leaked = text.lines().filter(|l| l.contains("elsewhere/")).count();
        let lost = text.lines().any(|l| l.contains("\"kind\":\"loss\""));
        println!(
            "round {round}: outside {:.3}x, inside {:.3}x; deletes captured {seen}/{count}, outside events {leaked}{}",
            ow / ob,
            iw / ib,
            if lost { ", LOSS reported" } else { "" }
        );
        let _ = std::fs::remove_file(&out);
        for (v, x) in r.iter_mut().zip([ob, ow, ib, iw]) {
            v.push(x);
        }
    }
    let ratio = |w: &Vec<f64>, b: &Vec<f64>| {
        median(&w.iter().zip(b).map(|(w, b)| w / b).collect::<Vec<_>>())
    };
    println!(
        "file storm ({count} x create+O_TRUNC, rename, unlink; {rounds} interleaved rounds): median slowdown outside watched trees {:.3}x, inside {:.3}x",
        ratio(&r[1], &r[0]),
        ratio(&r[3], &r[2])
    );
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}

/// Starts the auditor writing JSON Lines to `out`; returns once its programs are attached.
fn start_auditor_args(bin: &Path, out: &Path, extra: &[&str]) -> Result<Child> {
    let mut child = Command::new(bin)
        .args(["watch", "--quiet", "--output"])
        .arg(out)
        .args(extra)
        .stderr(Stdio::piped())
        .spawn()
        .context("starting auditor")?;
    let stderr = child.stderr.take().context("auditor stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    loop {
        match lines.next() {
            Some(Ok(l)) if l.contains("tracepoints attached") => break,
            Some(Ok(_)) => continue,
            _ => bail!("auditor exited before attaching"),
        }
    }
    // Keep draining stderr so the child never blocks on it.
    std::thread::spawn(move || for _ in lines {});
    Ok(child)
}

fn stop(mut child: Child) -> Result<()> {
    // SAFETY: plain kill(2) on our child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait()?;
    Ok(())
}

fn exec(count: u32, rounds: u32) -> Result<()> {
    let bin = build::build_auditor(true)?;
    let dir = std::env::temp_dir().join(format!("auditor-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut base = Vec::new();
    let mut with = Vec::new();
    let mut captured_all = true;
    exec_storm(200, "warmup")?;
    for r in 0..rounds {
        let b = exec_storm(count, "bench-baseline")?;
        let out = dir.join(format!("round{r}.jsonl"));
        // Its own vault, not the machine's /var/lib/auditor/vault.
        let vault_dir = dir.join(format!("vault{r}"));
        let child = start_auditor_args(
            &bin,
            &out,
            &["--vault-dir", vault_dir.to_str().context("utf-8 path")?],
        )?;
        let marker = format!("bench-marker-{r}");
        let w = exec_storm(count, &marker)?;
        stop(child)?;
        let text = std::fs::read_to_string(&out)?;
        let seen = text
            .lines()
            .filter(|l| l.contains(&marker) && l.contains("\"success\":true"))
            .count();
        let lost = text.lines().any(|l| l.contains("\"kind\":\"loss\""));
        captured_all &= seen == count as usize && !lost;
        println!(
            "round {r}: baseline {:.3}s, with auditor {:.3}s, ratio {:.3}, execs captured {seen}/{count}{}",
            b.as_secs_f64(),
            w.as_secs_f64(),
            w.as_secs_f64() / b.as_secs_f64(),
            if lost { ", LOSS reported" } else { "" }
        );
        base.push(b.as_secs_f64());
        with.push(w.as_secs_f64());
    }
    let ratios: Vec<f64> = base.iter().zip(&with).map(|(b, w)| w / b).collect();
    println!(
        "exec storm ({count} x /bin/true, {rounds} interleaved rounds): median slowdown {:.3}x \
         (median baseline {:.3}s, with auditor {:.3}s); every exec captured: {captured_all}",
        median(&ratios),
        median(&base),
        median(&with)
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn vault(rate: u32, seconds: u32, burst: u32) -> Result<()> {
    let bin = build::build_auditor(true)?;
    let dir = std::env::temp_dir().join(format!("auditor-bench-vault-{}", std::process::id()));
    let spool = dir.join("spool");
    std::fs::create_dir_all(&dir)?;
    let (server, token) = pipeline::serve(&bin, &dir, "bench")?;
    let (port, data) = (server.port, server.data.clone());
    let mut agent = Command::new(&bin)
        .args([
            "watch",
            "--quiet",
            "--allow-insecure-http",
            "--host",
            "bench",
            "--vault",
        ])
        .arg(format!("http://127.0.0.1:{port}"))
        .args(["--token", token.trim(), "--spool"])
        .arg(&spool)
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = agent.stderr.take().context("agent stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    loop {
        match lines.next() {
            Some(Ok(l)) if l.contains("tracepoints attached") => break,
            Some(Ok(_)) => continue,
            _ => bail!("agent exited before attaching"),
        }
    }
    std::thread::spawn(move || for _ in lines {});

    // Steady rate: latency.
    let m = format!("ttv-{}", std::process::id());
    let total = rate * seconds;
    let period = Duration::from_secs_f64(1.0 / f64::from(rate));
    let start = Instant::now();
    for i in 0..total {
        let due = start + period * i;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        Command::new("/bin/true").arg(&m).status()?;
    }
    std::thread::sleep(Duration::from_secs(3));
    let times = pipeline::vault_times(&bin, &data, &m)?;
    let mut lat: Vec<f64> = times.iter().map(|(t, r)| (r - t) as f64 / 1e6).collect();
    lat.sort_by(f64::total_cmp);

    // Burst: sustained events/s through kernel -> agent -> vault.
    let mb = format!("burst-{}", std::process::id());
    let t0 = Instant::now();
    for _ in 0..burst {
        Command::new("/bin/true").arg(&mb).status()?;
    }
    let spawn_s = t0.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(120);
    let arrived = loop {
        let n = pipeline::vault_times(&bin, &data, &mb)?;
        if n.len() >= burst as usize || Instant::now() > deadline {
            break n;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let first = arrived.iter().map(|x| x.0).min().unwrap_or(0);
    let last = arrived.iter().map(|x| x.1).max().unwrap_or(0);
    let span_s = (last - first) as f64 / 1e9;

    // SAFETY: kill(2) on our children.
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    agent.wait()?;
    drop(server);
    println!(
        "time-to-vault at {rate} execs/s for {seconds}s: {} of {total} execs in the vault; p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        lat.len(),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "burst of {burst} execs (spawned in {spawn_s:.2}s): {} in the vault, first capture to last receive {span_s:.2}s = {:.0} execs/s end to end",
        arrived.len(),
        arrived.len() as f64 / span_s
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
