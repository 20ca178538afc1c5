//! The delivery path to a real vault server on loopback: time-to-vault at a steady exec
//! rate, the agent's CPU and peak RSS at 1,600 execs/s, and the vault's own ingest rate
//! (batches POSTed directly, each appended to the host's hash chain and fsynced before
//! the reply).

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::common::{
    Proc, PssSampler, TempDir, bpf_map_rss_kib, check_interrupted, cpu_seconds, output,
    peak_rss_kib, percentile, rfc3339_ns, rss_breakdown, start_agent,
};

pub struct Vault {
    _proc: Proc,
    pub port: u16,
    pub data: PathBuf,
}

/// Starts `auditor vault serve --insecure-http` on 127.0.0.1 and enrolls `host`;
/// returns it with the host's token.
pub fn serve(bin: &Path, dir: &Path, host: &str) -> Result<(Vault, String)> {
    let data = dir.join("data");
    let token = output(
        Command::new(bin)
            .args(["vault", "enroll", "--data"])
            .arg(&data)
            .args(["--host", host]),
    )?
    .trim()
    .to_owned();
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let proc = Proc::spawn(
        "auditor vault serve",
        Command::new(bin)
            .args(["vault", "serve", "--insecure-http", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data")
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
        libc::SIGTERM,
    )?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("the vault did not listen on 127.0.0.1:{port} within 20 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((
        Vault {
            _proc: proc,
            port,
            data,
        },
        token,
    ))
}

/// A statically linked program that exits 0 at once, built with `cc` in `dir`: the exec
/// target of the paced phases. `/bin/true` spends most of its exec in the dynamic loader
/// (here about 1.2-1.6x the time of a static exit), and that cost falls on the same two
/// cores the agent runs on, which kept the generator under 1,600 execs/s.
pub fn static_exit(dir: &Path) -> Result<PathBuf> {
    let src = dir.join("exit0.c");
    let exe = dir.join("exit0");
    std::fs::write(&src, "int main(void) { return 0; }\n")
        .with_context(|| format!("writing {}", src.display()))?;
    let out = Command::new("cc")
        .args(["-static", "-O2", "-o"])
        .arg(&exe)
        .arg(&src)
        .output()
        .context("running cc (the C compiler; `cargo xtask setup` installs it)")?;
    if !out.status.success() {
        bail!(
            "cc -static failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(exe)
}

/// Runs `prog MARKER` at `rate` per second for `secs` from `threads` threads; returns
/// how many ran.
pub fn exec_at(prog: &Path, rate: f64, secs: f64, threads: usize, marker: &str) -> Result<u64> {
    let total = Arc::new(AtomicU64::new(0));
    let per = rate / threads as f64;
    let start = Instant::now();
    let mut hs = Vec::new();
    for _ in 0..threads {
        let (total, marker, prog) = (total.clone(), marker.to_owned(), prog.to_owned());
        hs.push(std::thread::spawn(move || -> Result<()> {
            let mut done = 0u64;
            while start.elapsed().as_secs_f64() < secs {
                let due = (start.elapsed().as_secs_f64() * per) as u64;
                if done >= due {
                    std::thread::sleep(Duration::from_micros(300));
                    continue;
                }
                check_interrupted()?;
                let st = Command::new(&prog)
                    .arg(&marker)
                    .status()
                    .with_context(|| format!("running {}", prog.display()))?;
                if !st.success() {
                    bail!("{} failed: {st}", prog.display());
                }
                done += 1;
            }
            total.fetch_add(done, Ordering::SeqCst);
            Ok(())
        }));
    }
    for h in hs {
        h.join()
            .map_err(|_| anyhow::anyhow!("exec generator thread panicked"))??;
    }
    Ok(total.load(Ordering::SeqCst))
}

/// (capture time, vault receive time) in ns of every stored exec of `prog` with `marker`.
pub fn vault_times(
    bin: &Path,
    data: &Path,
    prog: &Path,
    marker: &str,
) -> Result<Vec<(i128, i128)>> {
    let prog = prog.to_str().context("UTF-8 path")?;
    let text = output(
        Command::new(bin)
            .args(["vault", "query", "--data"])
            .arg(data)
            .args(["--kind", "exec", "--argv", marker]),
    )?;
    let mut out = Vec::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).context("vault query output")?;
        let ev = &v["payload"];
        if ev["filename"] != prog {
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

#[derive(Clone, Debug, Default)]
pub struct Phase {
    pub rate: f64,
    pub seconds: f64,
    pub ran: u64,
    pub stored: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub agent_cpu: f64,
}

pub struct PipelineResults {
    pub phases: Vec<Phase>,
    pub peak_rss_mib: f64,
    /// Largest PSS sampled every 250 ms over the run (the ring's pages once), MiB.
    pub peak_pss_mib: f64,
    /// Resident size of the ring buffer's mapping in the agent, MiB.
    pub ring_mapped_mib: f64,
    /// VmHWM right after the agent attached (before any load), MiB.
    pub hwm_attached: f64,
    /// fdatasync latency on the vault's disk: p50, p99, max (ms).
    pub fsync: (f64, f64, f64),
    /// RssAnon/RssFile/RssShmem at the end of the run, MiB.
    pub rss_now: Vec<(String, f64)>,
    pub ingest: Option<Ingest>,
}

#[derive(Clone, Debug)]
pub struct Ingest {
    pub records: u64,
    pub batch: u64,
    pub seconds: f64,
    pub bytes: u64,
}

impl Ingest {
    pub fn rate(&self) -> f64 {
        self.records as f64 / self.seconds
    }
}

/// fdatasync latency of a 4 KiB append in `dir` (p50, p99, max in ms, 200 samples): the
/// vault acknowledges only after an fsync, so this bounds time-to-vault from below.
pub fn fsync_probe(dir: &Path) -> Result<(f64, f64, f64)> {
    let path = dir.join("fsync-probe");
    let mut f =
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    let mut lat = Vec::new();
    for _ in 0..200 {
        f.write_all(&[b'x'; 4096])?;
        let t = Instant::now();
        f.sync_data().context("fdatasync")?;
        lat.push(t.elapsed().as_secs_f64() * 1e3);
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = std::fs::remove_file(&path);
    lat.sort_by(f64::total_cmp);
    Ok((
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat.last().copied().unwrap_or(f64::NAN),
    ))
}

/// Time-to-vault and agent cost at each (rate, seconds): the agent streams to the vault
/// over HTTP on loopback (spool on disk, batches, ack after fsync).
pub fn run(bin: &Path, phases: &[(f64, f64)], threads: usize) -> Result<PipelineResults> {
    let tmp = TempDir::new("pipeline")?;
    let fsync = fsync_probe(&tmp.0)?;
    println!(
        "  fdatasync of 4 KiB here: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        fsync.0, fsync.1, fsync.2
    );
    let prog = static_exit(&tmp.0)?;
    let (vault, token) = serve(bin, &tmp.0, "bench")?;
    let spool = tmp.0.join("spool");
    let url = format!("http://127.0.0.1:{}", vault.port);
    let mut agent = start_agent(
        bin,
        &[
            "--allow-insecure-http",
            "--host",
            "bench",
            "--vault",
            &url,
            "--token",
            &token,
            "--spool",
            spool.to_str().context("UTF-8 path")?,
        ],
    )?;
    let pid = agent.pid();
    let hwm_attached = peak_rss_kib(pid)? as f64 / 1024.0;
    println!("  agent VmHWM once its programs are attached: {hwm_attached:.1} MiB");
    let pss = PssSampler::start(pid, Duration::from_millis(250));
    let mut out = Vec::new();
    for (i, &(rate, secs)) in phases.iter().enumerate() {
        let marker = format!("ttv-{i}-{}", std::process::id());
        let cpu0 = cpu_seconds(pid)?;
        let t0 = Instant::now();
        let ran = exec_at(&prog, rate, secs, threads, &marker)?;
        let seconds = t0.elapsed().as_secs_f64();
        let cpu = cpu_seconds(pid)? - cpu0;
        // Let the last batches arrive.
        let deadline = Instant::now() + Duration::from_secs(30);
        let times = loop {
            std::thread::sleep(Duration::from_secs(1));
            let t = vault_times(bin, &vault.data, &prog, &marker)?;
            if t.len() as u64 >= ran || Instant::now() > deadline {
                break t;
            }
        };
        let mut lat: Vec<f64> = times.iter().map(|(t, r)| (r - t) as f64 / 1e6).collect();
        lat.sort_by(f64::total_cmp);
        let p = Phase {
            rate: ran as f64 / seconds,
            seconds,
            ran,
            stored: lat.len() as u64,
            p50_ms: percentile(&lat, 0.5),
            p99_ms: percentile(&lat, 0.99),
            max_ms: lat.last().copied().unwrap_or(f64::NAN),
            agent_cpu: 100.0 * cpu / seconds,
        };
        println!(
            "  {:.0} execs/s for {:.0}s (target {rate:.0}): {}/{} in the vault, time-to-vault p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; agent CPU {:.1}%",
            p.rate, p.seconds, p.stored, p.ran, p.p50_ms, p.p99_ms, p.max_ms, p.agent_cpu
        );
        out.push(p);
    }
    let rss = peak_rss_kib(pid)? as f64 / 1024.0;
    let peak_pss = pss.peak() as f64 / 1024.0;
    let ring_mapped = bpf_map_rss_kib(pid)? as f64 / 1024.0;
    let rss_now: Vec<(String, f64)> = rss_breakdown(pid)?
        .into_iter()
        .map(|(k, v)| (k, v as f64 / 1024.0))
        .collect();
    let shown: Vec<String> = rss_now.iter().map(|(k, v)| format!("{k} {v:.1}")).collect();
    println!(
        "  agent peak RSS (VmHWM) {rss:.1} MiB, of which {ring_mapped:.1} MiB is the ring buffer mapping; peak PSS {peak_pss:.1} MiB; at the end (MiB): {}",
        shown.join(", ")
    );
    agent.stop(Duration::from_secs(60))?;
    Ok(PipelineResults {
        phases: out,
        peak_rss_mib: rss,
        peak_pss_mib: peak_pss,
        ring_mapped_mib: ring_mapped,
        hwm_attached,
        fsync,
        rss_now,
        ingest: None,
    })
}

/// POSTs `batches` x `batch` exec-like events to a fresh vault, one request at a time,
/// as the agent does; every reply comes after the records are chained and fsynced.
pub fn ingest(bin: &Path, batches: u64, batch: u64) -> Result<Ingest> {
    let tmp = TempDir::new("ingest")?;
    let (vault, token) = serve(bin, &tmp.0, "ingest")?;
    let boot = format!("bench-{}", std::process::id());
    let body_for = |b: u64| -> String {
        let recs: Vec<serde_json::Value> = (0..batch)
            .map(|i| {
                let seq = b * batch + i + 1;
                serde_json::json!({"seq": seq, "event": {
                    "schema_version": 1, "seq": seq, "time": "2026-01-01T00:00:00.000000000Z",
                    "boot_ns": seq * 1000, "kind": "exec", "pid": 1000 + i, "tid": 1000 + i,
                    "ppid": 999, "uid": 0, "gid": 0, "euid": 0, "egid": 0, "auid": null,
                    "sessionid": null, "comm": "bash", "cgroup_id": 1, "tty": null,
                    "exe": "/usr/bin/true", "exe_source": "kernel", "filename": "/bin/true",
                    "argv": ["/bin/true", format!("ingest-{seq}")], "argv_truncated": false,
                    "cwd": "/tmp", "syscall": "execve", "ret": 0, "errno": null, "success": true,
                    "comm_after": "true",
                    "creds_after": {"uid": 0, "gid": 0, "euid": 0, "egid": 0}}})
            })
            .collect();
        serde_json::json!({"host": "ingest", "boot_id": boot, "records": recs}).to_string()
    };
    // Bodies are built before the clock starts: the figure is the vault's.
    let bodies: Vec<String> = (0..batches).map(body_for).collect();
    let bytes: u64 = bodies.iter().map(|b| b.len() as u64).sum();
    let t0 = Instant::now();
    for (i, body) in bodies.iter().enumerate() {
        check_interrupted()?;
        let mut s = TcpStream::connect(("127.0.0.1", vault.port))
            .with_context(|| format!("connecting to the vault on 127.0.0.1:{}", vault.port))?;
        write!(
            s,
            "POST /v1/ingest HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )?;
        s.write_all(body.as_bytes())?;
        let mut reply = String::new();
        s.read_to_string(&mut reply)
            .context("reading the vault's reply")?;
        if !reply.starts_with("HTTP/1.1 200") {
            bail!(
                "batch {i}: the vault answered {}",
                reply.lines().next().unwrap_or("nothing")
            );
        }
    }
    let seconds = t0.elapsed().as_secs_f64();
    drop(vault);
    let r = Ingest {
        records: batches * batch,
        batch,
        seconds,
        bytes,
    };
    println!(
        "  vault ingest: {} records in batches of {batch} in {:.2}s = {:.0} records/s ({:.1} MB/s of JSON)",
        r.records,
        r.seconds,
        r.rate(),
        bytes as f64 / 1e6 / seconds
    );
    Ok(r)
}
