//! Benchmarks. Figures are ratios measured side by side in one run, rounds interleaved
//! (baseline, auditor, baseline, auditor, ...), medians reported: these machines are
//! shared and noisy, so absolute times mean little.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand};

use crate::build::{self, unsafe_is_root};

#[derive(Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    which: Which,
}

#[derive(Subcommand)]
enum Which {
    /// N execs of /bin/true with and without the auditor running.
    Exec {
        #[arg(long, default_value_t = 2000)]
        count: u32,
        #[arg(long, default_value_t = 5)]
        rounds: u32,
    },
}

pub fn run(args: &BenchArgs) -> Result<()> {
    if !unsafe_is_root() {
        bail!("benchmarks load eBPF programs and need root");
    }
    match args.which {
        Which::Exec { count, rounds } => exec(count, rounds),
    }
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

/// Starts the auditor writing JSON Lines to `out`; returns once its programs are attached.
fn start_auditor(bin: &Path, out: &Path) -> Result<Child> {
    let mut child = Command::new(bin)
        .args(["watch", "--quiet", "--output"])
        .arg(out)
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

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
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
        let child = start_auditor(&bin, &out)?;
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
        median(ratios),
        median(base),
        median(with)
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
