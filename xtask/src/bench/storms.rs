//! The three storms, each run with no tracer, with auditor (every event into a local
//! vault), with auditd holding equivalent rules and with a bpftrace script printing the
//! same syscalls. Rounds are interleaved (none, auditor, auditd, bpftrace, none, ...) and
//! ratios are taken within a round against that round's untraced run.

use std::{
    io::Write as _,
    net::{TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    common::{TempDir, check_interrupted, median, output, start_agent},
    peers::{Auditd, Bpftrace, ensure_auditd, ensure_bpftrace},
};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Tool {
    None,
    Auditor,
    Auditd,
    Bpftrace,
}

impl Tool {
    pub const ALL: [Tool; 4] = [Tool::None, Tool::Auditor, Tool::Auditd, Tool::Bpftrace];
    pub const TRACERS: [Tool; 3] = [Tool::Auditor, Tool::Auditd, Tool::Bpftrace];
    pub fn name(self) -> &'static str {
        match self {
            Tool::None => "none",
            Tool::Auditor => "auditor",
            Tool::Auditd => "auditd",
            Tool::Bpftrace => "bpftrace",
        }
    }
}

pub const STORMS: [&str; 3] = ["exec", "files", "connect"];

#[derive(Clone, Copy)]
pub struct StormCounts {
    pub execs: u32,
    pub files: u32,
    pub connects: u32,
}

impl StormCounts {
    /// Events each storm should produce for a tracer that sees every hooked syscall.
    pub fn expected(&self) -> [u64; 3] {
        [
            u64::from(self.execs),
            4 * u64::from(self.files),
            u64::from(self.connects),
        ]
    }
}

/// One tool's result for one storm in one round.
#[derive(Clone, Default)]
pub struct Cell {
    pub seconds: f64,
    /// Events the tool recorded for this storm (None for the untraced run).
    pub captured: Option<u64>,
}

pub struct Round {
    /// [tool][storm]
    pub cells: [[Cell; 3]; 4],
    /// Loss the tool reported over the whole round (auditor loss records, auditd `lost`,
    /// bpftrace "Lost N events").
    pub lost: [u64; 4],
}

pub struct StormResults {
    pub counts: StormCounts,
    pub rounds: Vec<Round>,
}

impl StormResults {
    /// Median over rounds of (traced time / untraced time of the same round).
    pub fn ratio(&self, tool: Tool, storm: usize) -> f64 {
        let t = tool as usize;
        let v: Vec<f64> = self
            .rounds
            .iter()
            .map(|r| r.cells[t][storm].seconds / r.cells[0][storm].seconds)
            .collect();
        median(&v)
    }

    pub fn ratios(&self, tool: Tool, storm: usize) -> Vec<f64> {
        let t = tool as usize;
        self.rounds
            .iter()
            .map(|r| r.cells[t][storm].seconds / r.cells[0][storm].seconds)
            .collect()
    }

    pub fn median_seconds(&self, tool: Tool, storm: usize) -> f64 {
        let v: Vec<f64> = self
            .rounds
            .iter()
            .map(|r| r.cells[tool as usize][storm].seconds)
            .collect();
        median(&v)
    }

    /// (smallest captured over rounds, expected) for a tracer and storm.
    pub fn captured(&self, tool: Tool, storm: usize) -> (u64, u64) {
        let min = self
            .rounds
            .iter()
            .filter_map(|r| r.cells[tool as usize][storm].captured)
            .min()
            .unwrap_or(0);
        (min, self.counts.expected()[storm])
    }

    pub fn lost(&self, tool: Tool) -> u64 {
        self.rounds.iter().map(|r| r.lost[tool as usize]).sum()
    }
}

pub fn exec_storm(count: u32, marker: &str) -> Result<Duration> {
    let start = Instant::now();
    for i in 0..count {
        if i % 64 == 0 {
            check_interrupted()?;
        }
        let st = Command::new("/bin/true")
            .arg(marker)
            .status()
            .context("running /bin/true")?;
        if !st.success() {
            bail!("/bin/true failed: {st}");
        }
    }
    Ok(start.elapsed())
}

/// N x (create with O_TRUNC and write a byte, ftruncate to 0, rename, unlink): four
/// hooked syscalls per iteration, all on files directly in `dir`.
pub fn file_storm(dir: &Path, count: u32) -> Result<Duration> {
    let (a, b) = (dir.join("a.log"), dir.join("b.log"));
    let start = Instant::now();
    for i in 0..count {
        if i % 1024 == 0 {
            check_interrupted()?;
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&a)
            .with_context(|| format!("creating {}", a.display()))?;
        f.write_all(b"x")?;
        f.set_len(0).context("ftruncate")?;
        drop(f);
        std::fs::rename(&a, &b).context("rename")?;
        std::fs::remove_file(&b).context("unlink")?;
    }
    Ok(start.elapsed())
}

/// A listener on 127.0.0.1 for the connect storm.
pub fn loopback_listener() -> Result<TcpListener> {
    TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")
}

/// N TCP connects to `listener` (loopback), each accepted right away by the same thread
/// (so no accept queue overflows and no SYN waits for a retransmission: that made the
/// untraced run bimodal, 0.3 s or 5 s) and closed with SO_LINGER 0 (RST), so that tens of
/// thousands of connects leave no TIME_WAIT behind to exhaust ports.
pub fn connect_storm(listener: &TcpListener, count: u32) -> Result<Duration> {
    let addr = listener.local_addr()?;
    if !addr.ip().is_loopback() {
        bail!("connect storm target {addr} is not loopback");
    }
    let start = Instant::now();
    for i in 0..count {
        if i % 256 == 0 {
            check_interrupted()?;
        }
        let s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
        let (server_side, _) = listener
            .accept()
            .context("accepting on the loopback listener")?;
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: setsockopt on a socket we own with a correctly sized linger struct.
        unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&raw const linger).cast(),
                size_of::<libc::linger>() as libc::socklen_t,
            )
        };
        drop(s);
        drop(server_side);
    }
    Ok(start.elapsed())
}

struct Env {
    bin: PathBuf,
    root: PathBuf,
    watched: PathBuf,
    listener: TcpListener,
    counts: StormCounts,
}

fn run_storms(env: &Env, marker: &str) -> Result<[Cell; 3]> {
    let e = exec_storm(env.counts.execs, marker)?;
    let f = file_storm(&env.watched, env.counts.files)?;
    let c = connect_storm(&env.listener, env.counts.connects)?;
    Ok([e, f, c].map(|d| Cell {
        seconds: d.as_secs_f64(),
        captured: None,
    }))
}

/// Counts auditor's vault: (exec with our marker, file events from us, connects from us
/// to the listener, loss records).
fn count_vault(env: &Env, vault: &Path, marker: &str) -> Result<([u64; 3], u64)> {
    let text = output(
        Command::new(&env.bin)
            .args(["vault", "query", "--data"])
            .arg(vault)
            .args([
                "--kind", "exec", "--kind", "delete", "--kind", "rename", "--kind", "truncate",
                "--kind", "connect", "--kind", "loss",
            ]),
    )?;
    let me = i64::from(std::process::id());
    let port = u64::from(env.listener.local_addr()?.port());
    let mut n = [0u64; 3];
    let mut lost = 0;
    for line in text.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).context("vault query printed a non-JSON line")?;
        let ev = &v["payload"];
        match ev["kind"].as_str() {
            Some("exec") if ev["argv"][1] == marker => n[0] += 1,
            Some("delete" | "rename" | "truncate") if ev["pid"].as_i64() == Some(me) => n[1] += 1,
            Some("connect")
                if ev["pid"].as_i64() == Some(me) && ev["port"].as_u64() == Some(port) =>
            {
                n[2] += 1
            }
            Some("loss") => lost += ev["records"].as_u64().unwrap_or(0),
            _ => {}
        }
    }
    Ok((n, lost))
}

fn count_audit_log(log: &Path, marker: &str) -> Result<[u64; 3]> {
    let text =
        std::fs::read_to_string(log).with_context(|| format!("reading {}", log.display()))?;
    let me = format!(" pid={} ", std::process::id());
    let mut n = [0u64; 3];
    let quoted = format!("a1=\"{marker}\"");
    for l in text.lines() {
        if l.starts_with("type=EXECVE") && l.contains(&quoted) {
            n[0] += 1;
        } else if l.starts_with("type=SYSCALL") && l.contains(&me) {
            if l.contains("key=\"ab_file\"") {
                n[1] += 1;
            } else if l.contains("key=\"ab_net\"") {
                n[2] += 1;
            }
        }
    }
    Ok(n)
}

fn count_bpftrace(text: &str) -> [u64; 3] {
    let me = std::process::id().to_string();
    let mut n = [0u64; 3];
    for l in text.lines() {
        let mut f = l.split(' ');
        match (f.next(), f.next(), f.next(), f.next()) {
            // exec PID COMM FILENAME: at entry the child still has our comm.
            (Some("exec"), _, Some("xtask"), Some("/bin/true")) => n[0] += 1,
            (Some("file"), Some(pid), _, _) if pid == me => n[1] += 1,
            (Some("connect"), Some(pid), _, _) if pid == me => n[2] += 1,
            _ => {}
        }
    }
    n
}

fn one(env: &Env, tool: Tool, round: u32) -> Result<([Cell; 3], u64)> {
    let marker = format!("bench-{}-{round}-{}", tool.name(), std::process::id());
    let dir = env.root.join(format!("{}-{round}", tool.name()));
    std::fs::create_dir_all(&dir)?;
    let res = match tool {
        Tool::None => (run_storms(env, &marker)?, 0),
        Tool::Auditor => {
            let vault = dir.join("vault");
            let mut agent = start_agent(
                &env.bin,
                &[
                    "--path",
                    env.watched.to_str().context("UTF-8 path")?,
                    "--vault-dir",
                    vault.to_str().context("UTF-8 path")?,
                ],
            )?;
            let mut cells = run_storms(env, &marker)?;
            agent.stop(Duration::from_secs(120))?;
            let (n, lost) = count_vault(env, &vault, &marker)?;
            for (c, n) in cells.iter_mut().zip(n) {
                c.captured = Some(n);
            }
            (cells, lost)
        }
        Tool::Auditd => {
            let mut a = Auditd::start(&dir, &env.watched)?;
            let mut cells = run_storms(env, &marker)?;
            let lost = a.finish()?;
            let n = count_audit_log(&a.log, &marker)?;
            for (c, n) in cells.iter_mut().zip(n) {
                c.captured = Some(n);
            }
            (cells, lost)
        }
        Tool::Bpftrace => {
            let b = Bpftrace::start(&dir, &env.watched)?;
            let mut cells = run_storms(env, &marker)?;
            let (text, lost) = b.finish()?;
            let n = count_bpftrace(&text);
            for (c, n) in cells.iter_mut().zip(n) {
                c.captured = Some(n);
            }
            (cells, lost)
        }
    };
    let _ = std::fs::remove_dir_all(&dir);
    Ok(res)
}

pub fn run(bin: &Path, counts: StormCounts, rounds: u32) -> Result<StormResults> {
    ensure_auditd()?;
    ensure_bpftrace()?;
    let tmp = TempDir::new("storms")?;
    let watched = tmp.0.join("watched");
    std::fs::create_dir_all(&watched)?;
    let env = Env {
        bin: bin.to_path_buf(),
        root: tmp.0.clone(),
        watched,
        listener: loopback_listener()?,
        counts,
    };
    // Warm caches (binary, dentries, sockets) before the first measured run.
    exec_storm(100, "bench-warmup")?;
    file_storm(&env.watched, 1000)?;
    connect_storm(&env.listener, 500)?;
    let mut out = Vec::new();
    for round in 0..rounds {
        let mut cells: [[Cell; 3]; 4] = Default::default();
        let mut lost = [0u64; 4];
        for tool in Tool::ALL {
            check_interrupted()?;
            let (c, l) = one(&env, tool, round)
                .with_context(|| format!("round {round}, {}", tool.name()))?;
            let exp = counts.expected();
            let shown: Vec<String> = STORMS
                .iter()
                .zip(&c)
                .zip(exp)
                .map(|((s, c), e)| match c.captured {
                    Some(n) => format!("{s} {:.2}s ({n}/{e})", c.seconds),
                    None => format!("{s} {:.2}s", c.seconds),
                })
                .collect();
            println!(
                "round {round} {:9} {}{}",
                tool.name(),
                shown.join(", "),
                if l > 0 {
                    format!(", LOST {l}")
                } else {
                    String::new()
                }
            );
            cells[tool as usize] = c;
            lost[tool as usize] = l;
        }
        out.push(Round { cells, lost });
    }
    Ok(StormResults {
        counts,
        rounds: out,
    })
}
