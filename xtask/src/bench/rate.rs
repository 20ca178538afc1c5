//! Maximum sustained event rate with zero loss through kernel -> agent -> vault: a
//! paced generator of `connect(2)` calls (UDP sockets to 127.0.0.1:9, which send nothing
//! and need no listener; each call is one `connect` event), stepped up until the first
//! loss (a `loss` record or an event missing from the vault).

use std::{
    path::Path,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::common::{
    Proc, TempDir, check_interrupted, cpu_seconds, median, output, start_agent, thread_cpu_seconds,
};

pub const PORT: u16 = 9;

#[derive(Clone, Debug)]
pub struct Step {
    pub target: f64,
    pub seconds: f64,
    /// connect(2) calls made.
    pub generated: u64,
    /// connect events from the generator found in the vault.
    pub in_vault: u64,
    /// Kernel ring-buffer records the agent reported lost (`loss` events, any process). A
    /// connect is two records (entry and exit), so one lost event usually counts twice.
    pub loss_records: u64,
    /// Generator threads (each paced at `target / generator_threads`).
    pub generator_threads: usize,
    /// Agent CPU over the generation window, % of one core.
    pub agent_cpu: f64,
    /// The same by thread name (the event loop is `auditor`, the sink `auditor-sink`).
    pub threads: Vec<(String, f64)>,
}

impl Step {
    /// `auditor 30%, auditor-sink 60%`.
    pub fn thread_summary(&self) -> String {
        let parts: Vec<String> = self
            .threads
            .iter()
            .map(|(n, pct)| format!("{n} {pct:.0}%"))
            .collect();
        parts.join(", ")
    }
    pub fn achieved(&self) -> f64 {
        self.generated as f64 / self.seconds
    }
    pub fn missing(&self) -> u64 {
        self.generated.saturating_sub(self.in_vault)
    }
    pub fn lossless(&self) -> bool {
        self.missing() == 0 && self.loss_records == 0
    }
}

pub struct RateResults {
    pub ring: String,
    pub threads: usize,
    pub steps: Vec<Step>,
    /// Long holds at the best step's rate, then lower ones while they lose.
    pub holds: Vec<Step>,
    /// The rate held without loss (or the best step's), again with the generator spread
    /// over [`RateOptions::spread_threads`] threads: the load then competes with the agent
    /// for every core instead of leaving it one.
    pub spread: Option<Step>,
    /// `perf report` lines for the agent at [`RateResults::profile_target`].
    pub profile: Vec<String>,
}

impl RateResults {
    /// The highest step with zero loss that the generator actually reached (≥ 95 %).
    pub fn best(&self) -> Option<&Step> {
        self.steps
            .iter()
            .filter(|s| s.lossless())
            .max_by(|a, b| a.achieved().total_cmp(&b.achieved()))
    }
    /// The target rate to profile: the first lossy step's (true), else the last step's
    /// (false: none lost).
    pub fn profile_target(&self) -> Option<(f64, bool)> {
        match self.first_lossy() {
            Some(s) => Some((s.target, true)),
            None => self.steps.last().map(|s| (s.target, false)),
        }
    }

    /// The lossless hold that reached the highest rate.
    pub fn sustained_hold(&self) -> Option<&Step> {
        self.holds
            .iter()
            .filter(|h| h.lossless())
            .max_by(|a, b| a.achieved().total_cmp(&b.achieved()))
    }

    /// The lowest rate that lost events.
    pub fn first_lossy(&self) -> Option<&Step> {
        self.steps
            .iter()
            .filter(|s| !s.lossless())
            .min_by(|a, b| a.target.total_cmp(&b.target))
    }
}

/// Makes `rate` connect(2) calls per second for `secs` on `threads` threads; returns the
/// number made.
fn generate(rate: f64, secs: f64, threads: usize) -> Result<u64> {
    let total = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicBool::new(false));
    let per = rate / threads as f64;
    let start = Instant::now();
    let end = Duration::from_secs_f64(secs);
    let mut hs = Vec::new();
    for _ in 0..threads {
        let (total, failed) = (total.clone(), failed.clone());
        hs.push(std::thread::spawn(move || {
            // SAFETY: plain socket(2); the fd is closed below.
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
            if fd < 0 {
                failed.store(true, Ordering::SeqCst);
                return;
            }
            let sa = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: PORT.to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(std::net::Ipv4Addr::LOCALHOST).to_be(),
                },
                sin_zero: [0; 8],
            };
            let mut done = 0u64;
            loop {
                let el = start.elapsed();
                if el >= end {
                    break;
                }
                let due = (el.as_secs_f64() * per) as u64;
                if done >= due {
                    std::thread::sleep(Duration::from_micros(200));
                    continue;
                }
                for _ in 0..(due - done).min(2000) {
                    // SAFETY: connect(2) on our UDP socket with a valid sockaddr_in.
                    let r = unsafe {
                        libc::connect(
                            fd,
                            (&raw const sa).cast(),
                            size_of::<libc::sockaddr_in>() as libc::socklen_t,
                        )
                    };
                    if r != 0 {
                        failed.store(true, Ordering::SeqCst);
                    }
                    done += 1;
                }
            }
            // SAFETY: closing the socket opened above.
            unsafe { libc::close(fd) };
            total.fetch_add(done, Ordering::SeqCst);
        }));
    }
    for h in hs {
        let _ = h.join();
    }
    if failed.load(Ordering::SeqCst) {
        bail!("the UDP connect generator failed (socket or connect to 127.0.0.1:{PORT})");
    }
    Ok(total.load(Ordering::SeqCst))
}

/// Counts the generator's connect events and the loss records in a stopped agent's vault,
/// reading `vault query` line by line: a 60 s hold at 400,000/s is 24 million records,
/// over 10 GB of JSON, which must not be held in memory.
fn count(bin: &Path, vault: &Path) -> Result<(u64, u64)> {
    use std::io::BufRead as _;
    let mut child = Command::new(bin)
        .args(["vault", "query", "--data"])
        .arg(vault)
        .args(["--kind", "connect", "--kind", "loss"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("running {} vault query", bin.display()))?;
    let stdout = child.stdout.take().context("vault query stdout")?;
    let (pid, port) = (
        format!("\"pid\":{},", std::process::id()),
        format!("\"port\":{PORT},"),
    );
    let (mut n, mut lost) = (0, 0);
    for l in std::io::BufReader::with_capacity(1 << 20, stdout).lines() {
        let l = l.context("reading vault query output")?;
        if l.contains("\"kind\":\"connect\"") {
            if l.contains(&pid) && l.contains(&port) {
                n += 1;
            }
        } else if l.contains("\"kind\":\"loss\"") {
            let v: serde_json::Value = serde_json::from_str(&l).context("loss record")?;
            lost += v["payload"]["records"].as_u64().unwrap_or(0);
        }
    }
    let out = child
        .wait_with_output()
        .context("waiting for vault query")?;
    if !out.status.success() {
        bail!(
            "vault query --data {} failed ({}): {}",
            vault.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok((n, lost))
}

fn step(
    agent: &Side,
    tmp: &Path,
    ring: &str,
    rate: f64,
    secs: f64,
    threads: usize,
    perf_out: Option<&Path>,
) -> Result<Step> {
    check_interrupted()?;
    let vault = tmp.join("vault");
    let _ = std::fs::remove_dir_all(&vault);
    let mut args = vec![
        "--ring-buffer-size",
        ring,
        "--vault-dir",
        vault.to_str().context("UTF-8 path")?,
    ];
    args.extend(agent.args.iter().map(String::as_str));
    let mut proc = start_agent(agent.bin, &args)?;
    let pid = proc.pid();
    let perf = match perf_out {
        Some(out) => Some(Proc::spawn(
            "perf record",
            Command::new("perf")
                .args(["record", "-g", "-F", "999", "-o"])
                .arg(out)
                .args(["-p", &pid.to_string()])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null()),
            libc::SIGINT,
        )?),
        None => None,
    };
    let cpu0 = cpu_seconds(pid)?;
    let by_thread0 = thread_cpu_seconds(pid)?;
    let t0 = Instant::now();
    let generated = generate(rate, secs, threads)?;
    let seconds = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid)? - cpu0;
    let by_thread: Vec<(String, f64)> = thread_cpu_seconds(pid)?
        .into_iter()
        .map(|(name, s)| {
            let before = by_thread0
                .iter()
                .find(|(n, _)| *n == name)
                .map_or(0.0, |(_, b)| *b);
            (name, 100.0 * (s - before) / seconds)
        })
        .filter(|(_, pct)| *pct >= 0.5)
        .collect();
    if let Some(mut p) = perf {
        p.stop(Duration::from_secs(30))?;
    }
    proc.stop(Duration::from_secs(300))?;
    let (in_vault, loss_records) = count(agent.bin, &vault)?;
    let _ = std::fs::remove_dir_all(&vault);
    let s = Step {
        target: rate,
        seconds,
        generated,
        in_vault,
        loss_records,
        generator_threads: threads,
        agent_cpu: 100.0 * cpu / seconds,
        threads: by_thread,
    };
    println!(
        "  target {:>7.0}/s on {} generator thread(s): generated {} in {:.1}s = {:.0}/s, in vault {}, missing {}, ring records lost {}, agent CPU {:.0}% ({})",
        rate,
        threads,
        s.generated,
        s.seconds,
        s.achieved(),
        s.in_vault,
        s.missing(),
        s.loss_records,
        s.agent_cpu,
        s.thread_summary()
    );
    Ok(s)
}

pub struct RateOptions {
    pub start: f64,
    pub factor: f64,
    pub max: f64,
    pub step_seconds: f64,
    pub hold_seconds: f64,
    pub ring: String,
    pub threads: usize,
    pub profile: bool,
    /// Bisection steps between the last lossless and the first lossy rate.
    pub refine: u32,
    /// Generator threads for one more step at the sustained rate (0: none).
    pub spread_threads: usize,
    /// The rate the question is about (issue #6: 300,000/s): tried when the ladder steps
    /// over it, and held when a hold above it loses.
    pub goal: Option<f64>,
}

pub fn run(bin: &Path, o: &RateOptions) -> Result<RateResults> {
    let tmp = TempDir::new("rate")?;
    let agent = &Side { bin, args: &[] };
    println!(
        "max zero-loss rate: connect events, {} s steps from {:.0}/s x{}, ring {}",
        o.step_seconds, o.start, o.factor, o.ring
    );
    let mut steps = Vec::new();
    let mut rate = o.start;
    loop {
        let s = step(
            agent,
            &tmp.0,
            &o.ring,
            rate,
            o.step_seconds,
            o.threads,
            None,
        )?;
        let lossless = s.lossless();
        let generator_bound = s.achieved() < 0.95 * rate;
        steps.push(s);
        if !lossless || generator_bound || rate * o.factor > o.max {
            if generator_bound && lossless {
                println!("  the generator fell short of its target: stopping here");
            }
            break;
        }
        rate *= o.factor;
    }
    // Narrow the gap between the last lossless and the first lossy rate.
    for _ in 0..o.refine {
        let lo = steps
            .iter()
            .filter(|s| s.lossless())
            .map(|s| s.target)
            .fold(0.0, f64::max);
        let hi = steps
            .iter()
            .filter(|s| !s.lossless())
            .map(|s| s.target)
            .fold(f64::INFINITY, f64::min);
        if lo <= 0.0 || !hi.is_finite() {
            break;
        }
        // The goal rate first when it lies in the gap: the question is whether it holds.
        let mid = match o.goal {
            Some(g) if lo < g && g < hi => g,
            _ => (lo * hi).sqrt(),
        };
        println!("  refining between {lo:.0}/s and {hi:.0}/s: {mid:.0}/s");
        steps.push(step(
            agent,
            &tmp.0,
            &o.ring,
            mid,
            o.step_seconds,
            o.threads,
            None,
        )?);
    }
    steps.sort_by(|a, b| a.target.total_cmp(&b.target));
    let mut res = RateResults {
        ring: o.ring.clone(),
        threads: o.threads,
        steps,
        holds: Vec::new(),
        spread: None,
        profile: Vec::new(),
    };
    // Hold the best rate the generator reached for hold_seconds; a short step can hide a
    // slow fill of the ring, so on loss hold again lower (at most four holds): ×0.8 of
    // the rate that hold reached, or the goal rate when that lies between. (Holding the
    // best step's target, which the generator had fallen short of, repeated the same
    // achieved rate three times on a fast host.)
    if o.hold_seconds > 0.0
        && let Some(best) = res.best()
    {
        let mut r = best.target.min(best.achieved());
        for _ in 0..4 {
            println!("holding {r:.0}/s for {} s", o.hold_seconds);
            let h = step(agent, &tmp.0, &o.ring, r, o.hold_seconds, o.threads, None)?;
            let ok = h.lossless();
            let reached = r.min(h.achieved());
            res.holds.push(h);
            if ok {
                break;
            }
            r = match o.goal {
                Some(g) if g < reached && reached * 0.8 < g => g,
                _ => reached * 0.8,
            };
        }
    }
    let sustained = res.sustained_hold().or(res.best()).map(|s| s.target);
    if o.spread_threads > 0
        && o.spread_threads != o.threads
        && let Some(r) = sustained
    {
        println!(
            "the same {r:.0}/s from {} generator threads (the load on every core)",
            o.spread_threads
        );
        res.spread = Some(step(
            agent,
            &tmp.0,
            &o.ring,
            r,
            o.step_seconds,
            o.spread_threads,
            None,
        )?);
    }
    if o.profile && Path::new("/usr/bin/perf").exists() {
        let r = res.profile_target().map_or(o.start, |(r, _)| r);
        let data = tmp.0.join("perf.data");
        println!("profiling the agent at {r:.0}/s (perf record -g, not counted above)");
        step(agent, &tmp.0, &o.ring, r, 5.0, o.threads, Some(&data))?;
        let rep = output(
            Command::new("perf")
                .args(["report", "--stdio", "--no-children", "-g", "none", "-i"])
                .arg(&data)
                .args(["--percent-limit", "1.5", "--sort", "comm,dso,symbol"]),
        )?;
        res.profile = rep
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .take(30)
            .map(|l| l.trim_end_matches([' ', '-']).to_owned())
            .collect();
        for l in &res.profile {
            println!("    {l}");
        }
    }
    Ok(res)
}

/// One side of an A/B comparison: a binary and extra `auditor watch` arguments.
pub struct Side<'a> {
    pub bin: &'a Path,
    pub args: &'a [String],
}

/// Sides `a` and `b` at each rate, `rounds` times, interleaved: prints each step, then
/// per side and rate the median rate reached, agent CPU per event (µs of CPU time, user +
/// system) and the total loss.
pub fn ab(
    a: Side<'_>,
    b: Side<'_>,
    rates: &[f64],
    secs: f64,
    rounds: u32,
    ring: &str,
    threads: usize,
) -> Result<()> {
    for side in [&a, &b] {
        if !side.bin.is_file() {
            bail!("{}: no such binary", side.bin.display());
        }
    }
    let tmp = TempDir::new("ab")?;
    let mut rows = Vec::new();
    for &rate in rates {
        let mut per: [Vec<Step>; 2] = [Vec::new(), Vec::new()];
        for round in 0..rounds {
            for (i, side) in [&a, &b].into_iter().enumerate() {
                println!("rate {rate:.0}/s, round {}, {}:", round + 1, ["A", "B"][i]);
                per[i].push(step(side, &tmp.0, ring, rate, secs, threads, None)?);
            }
        }
        rows.push((rate, per));
    }
    let shown = |s: &Side| format!("{} {}", s.bin.display(), s.args.join(" "));
    println!("\nA = {}\nB = {}", shown(&a), shown(&b));
    println!(
        "| rate/s | binary | reached/s (median) | agent CPU µs/event (median) | agent CPU % (median) | missing | ring records lost |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (rate, per) in &rows {
        for (i, steps) in per.iter().enumerate() {
            let us: Vec<f64> = steps
                .iter()
                .map(|s| s.agent_cpu / 100.0 * s.seconds * 1e6 / s.generated.max(1) as f64)
                .collect();
            let pct: Vec<f64> = steps.iter().map(|s| s.agent_cpu).collect();
            let reached: Vec<f64> = steps.iter().map(Step::achieved).collect();
            let missing: u64 = steps.iter().map(Step::missing).sum();
            let lost: u64 = steps.iter().map(|s| s.loss_records).sum();
            println!(
                "| {rate:.0} | {} | {:.0} | {:.2} | {:.0} % | {missing} | {lost} |",
                ["A", "B"][i],
                median(&reached),
                median(&us),
                median(&pct),
            );
        }
    }
    Ok(())
}
