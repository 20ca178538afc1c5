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

use crate::build::{self, is_root};

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

pub fn run(args: &BenchArgs) -> Result<()> {
    if !is_root() {
        bail!("benchmarks load eBPF programs and need root");
    }
    match args.which {
        Which::Exec { count, rounds } => exec(count, rounds),
        Which::Files { count, rounds } => files(count, rounds),
        Which::Vault {
            rate,
            seconds,
            burst,
        } => vault(rate, seconds, burst),
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
    let ratio = |w: &Vec<f64>, b: &Vec<f64>| median(w.iter().zip(b).map(|(w, b)| w / b).collect());
    println!(
        "file storm ({count} x create+O_TRUNC, rename, unlink; {rounds} interleaved rounds): median slowdown outside watched trees {:.3}x, inside {:.3}x",
        ratio(&r[1], &r[0]),
        ratio(&r[3], &r[2])
    );
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}

/// Starts the auditor writing JSON Lines to `out`; returns once its programs are attached.
fn start_auditor(bin: &Path, out: &Path) -> Result<Child> {
    start_auditor_args(bin, out, &[])
}

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

fn output(cmd: &mut Command) -> Result<String> {
    let o = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !o.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

fn rfc3339_ns(s: &str) -> Option<i128> {
    let t = humantime::parse_rfc3339(s).ok()?;
    Some(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_nanos() as i128)
}

/// (capture time, vault receive time) in ns for every stored exec whose argv has `marker`.
fn vault_times(bin: &Path, data: &Path, marker: &str) -> Result<Vec<(i128, i128)>> {
    let text = output(
        Command::new(bin)
            .args(["vault", "query", "--data"])
            .arg(data)
            .args(["--kind", "exec", "--argv", marker]),
    )?;
    let mut out = Vec::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        let ev = &v["payload"];
        if ev["filename"] != "/bin/true" {
            continue;
        }
        if let (Some(t), Some(r)) = (
            ev["time"].as_str().and_then(rfc3339_ns),
            v["received_at"].as_str().and_then(rfc3339_ns),
        ) {
            out.push((t, r));
        }
    }
    Ok(out)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn vault(rate: u32, seconds: u32, burst: u32) -> Result<()> {
    let bin = build::build_auditor(true)?;
    let dir = std::env::temp_dir().join(format!("auditor-bench-vault-{}", std::process::id()));
    let (data, spool) = (dir.join("data"), dir.join("spool"));
    std::fs::create_dir_all(&dir)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let token = output(
        Command::new(&bin)
            .args(["vault", "enroll", "--data"])
            .arg(&data)
            .args(["--host", "bench"]),
    )?;
    let mut server = Command::new(&bin)
        .args([
            "vault",
            "serve",
            "--insecure-http",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data",
        ])
        .arg(&data)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("vault did not start");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
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
    let times = vault_times(&bin, &data, &m)?;
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
        let n = vault_times(&bin, &data, &mb)?;
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
    let _ = server.kill();
    server.wait()?;
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
