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
    common::{TempDir, check_interrupted, cpu_seconds, median, output, start_watching},
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
    /// CPU seconds (user + system) of the storm itself: its thread and the children it
    /// waited for. Hooks run in the syscall's context, so this includes their time.
    pub cpu: f64,
    /// CPU seconds the tool's own processes used meanwhile (the agent; auditd and the
    /// kernel's kauditd thread; bpftrace).
    pub tool_cpu: f64,
    /// Events the tool recorded for this storm (None for the untraced run).
    pub captured: Option<u64>,
}

pub struct Round {
    /// [tool][storm]; `cells[0]` is the untraced run that opens the round (`before[0]`).
    pub cells: [[Cell; 3]; 4],
    /// [tracer][storm]: the untraced run right before each tracer's (`Tool::TRACERS`
    /// order), so that each traced run has an untraced one on either side of it.
    pub before: [[Cell; 3]; 3],
    /// Loss the tool reported over the whole round (auditor loss records, auditd `lost`,
    /// bpftrace "Lost N events").
    pub lost: [u64; 4],
}

pub struct StormResults {
    pub counts: StormCounts,
    pub rounds: Vec<Round>,
    /// The untraced run after the last round.
    pub closing: Option<[Cell; 3]>,
    /// Kernel time per auditor hook over one untimed pass (see [`hook_costs`]).
    pub hooks: Vec<(String, u64, f64)>,
}

impl StormResults {
    /// The untraced wall time `tool`'s run in `round` is compared with: the mean of the
    /// untraced runs right before and right after it (the next tracer's `before`, or the
    /// next round's first, or the closing one), so that drifts of the machine's load
    /// over the minutes a round takes cancel out.
    pub fn baseline(&self, tool: Tool, round: usize, storm: usize) -> f64 {
        self.bracket(tool, round, storm, |c| c.seconds)
    }

    fn bracket(&self, tool: Tool, round: usize, storm: usize, of: impl Fn(&Cell) -> f64) -> f64 {
        let k = Tool::TRACERS.iter().position(|&t| t == tool).unwrap_or(0);
        let r = &self.rounds[round];
        let first = of(&r.before[k][storm]);
        let next = if k + 1 < r.before.len() {
            Some(of(&r.before[k + 1][storm]))
        } else {
            self.rounds
                .get(round + 1)
                .map(|n| of(&n.before[0][storm]))
                .or(self.closing.as_ref().map(|c| of(&c[storm])))
        };
        (first + next.unwrap_or(first)) / 2.0
    }

    fn median_of(&self, tool: Tool, storm: usize, of: impl Fn(&Cell) -> f64) -> f64 {
        let v: Vec<f64> = if tool == Tool::None {
            // Every untraced run, not only the one opening each round.
            self.rounds
                .iter()
                .flat_map(|r| r.before.iter().map(|b| of(&b[storm])))
                .collect()
        } else {
            self.rounds
                .iter()
                .map(|r| of(&r.cells[tool as usize][storm]))
                .collect()
        };
        median(&v)
    }

    /// Median over rounds of (traced time / bracketing untraced time).
    pub fn ratio(&self, tool: Tool, storm: usize) -> f64 {
        median(&self.ratios(tool, storm))
    }

    pub fn ratios(&self, tool: Tool, storm: usize) -> Vec<f64> {
        let t = tool as usize;
        (0..self.rounds.len())
            .map(|r| self.rounds[r].cells[t][storm].seconds / self.baseline(tool, r, storm))
            .collect()
    }

    /// (min, max) of the untraced runs: how noisy the machine was.
    pub fn untraced_spread(&self, storm: usize) -> (f64, f64) {
        let v = self
            .rounds
            .iter()
            .flat_map(|r| r.before.iter().map(move |b| b[storm].seconds))
            .chain(self.closing.as_ref().map(|c| c[storm].seconds));
        v.fold((f64::INFINITY, 0.0f64), |(lo, hi), x| {
            (lo.min(x), hi.max(x))
        })
    }

    /// Median over rounds of (storm CPU + tool CPU) / the bracketing untraced runs'
    /// CPU: the machine's CPU a storm costs with the tool, against without. Much less
    /// disturbed than wall time by other tenants (time spent waiting for a core is not
    /// in it); it leaves out work the kernel does elsewhere on the storm's behalf
    /// (journal commits, RCU callbacks).
    pub fn cpu_ratio(&self, tool: Tool, storm: usize) -> f64 {
        self.cpu_ratio_of(tool, storm, |c| c.cpu + c.tool_cpu)
    }

    /// Median over rounds of the storm's own CPU against the untraced runs' (the hooks'
    /// share of the cost, without the tool's processes).
    pub fn own_cpu_ratio(&self, tool: Tool, storm: usize) -> f64 {
        self.cpu_ratio_of(tool, storm, |c| c.cpu)
    }

    /// Median over rounds of `of` of the tool's run against the bracketing untraced
    /// runs' CPU.
    fn cpu_ratio_of(&self, tool: Tool, storm: usize, of: impl Fn(&Cell) -> f64) -> f64 {
        let v: Vec<f64> = (0..self.rounds.len())
            .map(|r| {
                of(&self.rounds[r].cells[tool as usize][storm])
                    / self.bracket(tool, r, storm, |c| c.cpu)
            })
            .collect();
        median(&v)
    }

    /// Median CPU seconds of a tool's storm runs (storm and tool together).
    pub fn median_cpu(&self, tool: Tool, storm: usize) -> f64 {
        self.median_of(tool, storm, |c| c.cpu + c.tool_cpu)
    }

    pub fn median_seconds(&self, tool: Tool, storm: usize) -> f64 {
        self.median_of(tool, storm, |c| c.seconds)
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

/// What the machine is still doing after the previous tool stopped (a tracer's programs
/// freed after an RCU grace period, its output files deleted and written back, an agent's
/// start-up) must not land in the next measurement: in one 5-round run every untraced run
/// came right after bpftrace stopped and was the slowest of its round. So every
/// measurement, untraced included, starts after a `sync` and the same pause.
const SETTLE: Duration = Duration::from_secs(2);

/// A `sync` and the [`SETTLE`] pause, before every measurement.
pub fn settle() {
    // SAFETY: sync(2) has no preconditions.
    unsafe { libc::sync() };
    std::thread::sleep(SETTLE);
}

/// `tool_pids`: the tool's processes, whose CPU time is read around each storm.
fn settled_storms(env: &Env, marker: &str, tool_pids: &[u32]) -> Result<[Cell; 3]> {
    settle();
    run_storms(env, marker, tool_pids)
}

fn run_storms(env: &Env, marker: &str, tool_pids: &[u32]) -> Result<[Cell; 3]> {
    let e = measured(tool_pids, || exec_storm(env.counts.execs, marker))?;
    let f = measured(tool_pids, || file_storm(&env.watched, env.counts.files))?;
    let c = measured(tool_pids, || {
        connect_storm(&env.listener, env.counts.connects)
    })?;
    Ok([e, f, c])
}

/// The file storm of `count` iterations in `dir`, measured as [`measured`] does.
pub fn measured_file_storm(dir: &Path, count: u32, tool_pids: &[u32]) -> Result<Cell> {
    measured(tool_pids, || file_storm(dir, count))
}

/// Runs one storm; its wall time, its own CPU and the tool's CPU meanwhile.
fn measured(tool_pids: &[u32], storm: impl FnOnce() -> Result<Duration>) -> Result<Cell> {
    let (own0, tool0) = (own_cpu_seconds(), pids_cpu_seconds(tool_pids)?);
    let wall = storm()?;
    let (own1, tool1) = (own_cpu_seconds(), pids_cpu_seconds(tool_pids)?);
    Ok(Cell {
        seconds: wall.as_secs_f64(),
        cpu: own1 - own0,
        tool_cpu: tool1 - tool0,
        captured: None,
    })
}

/// CPU seconds of this thread plus this process's waited-for children (the storms'
/// `/bin/true`s; nothing else is reaped while a storm runs).
fn own_cpu_seconds() -> f64 {
    let secs = |who| {
        // SAFETY: getrusage into a zeroed struct we own.
        let mut u: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::getrusage(who, &raw mut u) } != 0 {
            return 0.0;
        }
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        tv(u.ru_utime) + tv(u.ru_stime)
    };
    secs(libc::RUSAGE_THREAD) + secs(libc::RUSAGE_CHILDREN)
}

fn pids_cpu_seconds(pids: &[u32]) -> Result<f64> {
    pids.iter()
        .map(|&p| cpu_seconds(p).with_context(|| format!("CPU time of the tool's pid {p}")))
        .sum()
}

/// The kernel's audit thread, which formats and sends auditd's records.
fn kauditd_pid() -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.find_map(|e| {
        let e = e.ok()?;
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
        (comm.trim() == "kauditd").then_some(pid)
    })
}

/// The payloads of the records of `kinds` in auditor's vault at `vault`.
fn vault_payloads(bin: &Path, vault: &Path, kinds: &[&str]) -> Result<Vec<serde_json::Value>> {
    let mut cmd = Command::new(bin);
    cmd.args(["vault", "query", "--data"]).arg(vault);
    for k in kinds {
        cmd.args(["--kind", k]);
    }
    output(&mut cmd)?
        .lines()
        .map(|line| {
            let mut v: serde_json::Value =
                serde_json::from_str(line).context("vault query printed a non-JSON line")?;
            Ok(v["payload"].take())
        })
        .collect()
}

/// File events (delete, rename, truncate) this process caused, and records lost, in
/// auditor's vault at `vault`.
pub fn count_file_events(bin: &Path, vault: &Path) -> Result<(u64, u64)> {
    let me = i64::from(std::process::id());
    let (mut n, mut lost) = (0, 0);
    for ev in vault_payloads(bin, vault, &["delete", "rename", "truncate", "loss"])? {
        match ev["kind"].as_str() {
            Some("loss") => lost += ev["records"].as_u64().unwrap_or(0),
            Some(_) if ev["pid"].as_i64() == Some(me) => n += 1,
            _ => {}
        }
    }
    Ok((n, lost))
}

/// Counts auditor's vault: (exec with our marker, file events from us, connects from us
/// to the listener, loss records).
fn count_vault(env: &Env, vault: &Path, marker: &str) -> Result<([u64; 3], u64)> {
    let kinds = ["exec", "delete", "rename", "truncate", "connect", "loss"];
    let me = i64::from(std::process::id());
    let port = u64::from(env.listener.local_addr()?.port());
    let mut n = [0u64; 3];
    let mut lost = 0;
    for ev in vault_payloads(&env.bin, vault, &kinds)? {
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
        Tool::None => (settled_storms(env, &marker, &[])?, 0),
        Tool::Auditor => {
            let vault = dir.join("vault");
            let mut agent = start_watching(&env.bin, &env.watched, &vault, &[])?;
            let mut cells = settled_storms(env, &marker, &[agent.pid()])?;
            agent.stop(Duration::from_secs(120))?;
            let (n, lost) = count_vault(env, &vault, &marker)?;
            for (c, n) in cells.iter_mut().zip(n) {
                c.captured = Some(n);
            }
            (cells, lost)
        }
        Tool::Auditd => {
            let mut a = Auditd::start(&dir, &env.watched)?;
            let pids: Vec<u32> = [Some(a.pid()), kauditd_pid()]
                .into_iter()
                .flatten()
                .collect();
            let mut cells = settled_storms(env, &marker, &pids)?;
            let lost = a.finish()?;
            let n = count_audit_log(&a.log, &marker)?;
            for (c, n) in cells.iter_mut().zip(n) {
                c.captured = Some(n);
            }
            (cells, lost)
        }
        Tool::Bpftrace => {
            let b = Bpftrace::start(&dir, &env.watched)?;
            let mut cells = settled_storms(env, &marker, &[b.pid()])?;
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

/// One line per run: each storm's time and CPU, what the tool captured, its loss.
fn print_run(round: u32, tool: Tool, cells: &[Cell; 3], lost: u64, expected: [u64; 3]) {
    let shown: Vec<String> = STORMS
        .iter()
        .zip(cells)
        .zip(expected)
        .map(|((s, c), e)| match c.captured {
            Some(n) => format!(
                "{s} {:.2}s cpu {:.2}+{:.2}s ({n}/{e})",
                c.seconds, c.cpu, c.tool_cpu
            ),
            None => format!("{s} {:.2}s cpu {:.2}s", c.seconds, c.cpu),
        })
        .collect();
    let lost = if lost > 0 {
        format!(", LOST {lost}")
    } else {
        String::new()
    };
    println!("round {round} {:9} {}{lost}", tool.name(), shown.join(", "));
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
        let mut before: [[Cell; 3]; 3] = Default::default();
        let mut lost = [0u64; 4];
        // none, auditor, none, auditd, none, bpftrace; the next round's (or the closing)
        // none follows: every traced run between two untraced ones.
        for (k, tracer) in Tool::TRACERS.into_iter().enumerate() {
            for tool in [Tool::None, tracer] {
                check_interrupted()?;
                let (c, l) = one(&env, tool, round)
                    .with_context(|| format!("round {round}, {}", tool.name()))?;
                print_run(round, tool, &c, l, counts.expected());
                if tool == Tool::None {
                    before[k] = c;
                } else {
                    cells[tool as usize] = c;
                    lost[tool as usize] = l;
                }
            }
        }
        cells[0] = before[0].clone();
        out.push(Round {
            cells,
            before,
            lost,
        });
    }
    let closing = settled_storms(&env, "bench-closing", &[])?;
    println!(
        "closing   none      exec {:.2}s, files {:.2}s, connect {:.2}s",
        closing[0].seconds, closing[1].seconds, closing[2].seconds
    );
    Ok(StormResults {
        counts,
        rounds: out,
        closing: Some(closing),
        hooks: Vec::new(),
    })
}

/// Kernel time per hook: one untimed pass of the three storms with auditor running and
/// `kernel.bpf_stats_enabled` on (restored afterwards), reading `run_cnt`/`run_time_ns`
/// from the agent's program fds (/proc/PID/fdinfo) and each program's name by its id.
/// Returns (name, runs, mean ns), costliest in total first.
pub fn hook_costs(bin: &Path, counts: StormCounts) -> Result<Vec<(String, u64, f64)>> {
    const SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";
    let tmp = TempDir::new("hooks")?;
    let watched = tmp.0.join("watched");
    std::fs::create_dir_all(&watched)?;
    let listener = loopback_listener()?;
    let vault = tmp.0.join("vault");
    let mut agent = start_watching(bin, &watched, &vault, &[])?;
    let before = std::fs::read_to_string(SYSCTL)
        .with_context(|| format!("reading {SYSCTL}"))?
        .trim()
        .to_owned();
    std::fs::write(SYSCTL, "1").with_context(|| format!("writing 1 to {SYSCTL}"))?;
    let run = (|| -> Result<()> {
        exec_storm(counts.execs, "bench-hooks")?;
        file_storm(&watched, counts.files)?;
        connect_storm(&listener, counts.connects)?;
        Ok(())
    })();
    let stats = read_prog_stats(agent.pid());
    std::fs::write(SYSCTL, &before).with_context(|| format!("restoring {SYSCTL}"))?;
    agent.stop(Duration::from_secs(120))?;
    run?;
    let mut v = stats?;
    v.sort_by(|a, b| (b.2 * b.1 as f64).total_cmp(&(a.2 * a.1 as f64)));
    Ok(v)
}

/// A BPF program's name by id: BPF_PROG_GET_FD_BY_ID, then BPF_OBJ_GET_INFO_BY_FD
/// (`struct bpf_prog_info.name` is 16 bytes at offset 64). Programs with the same code
/// share a tag, so the name cannot come from the tag.
fn prog_name(id: u32) -> Option<String> {
    const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    let mut attr = [0u64; 16];
    attr[0] = u64::from(id);
    // SAFETY: bpf(2) with a zeroed, large enough attr; the returned fd is closed below.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_GET_FD_BY_ID,
            attr.as_mut_ptr(),
            size_of_val(&attr),
        )
    };
    if fd < 0 {
        return None;
    }
    let mut info = [0u8; 256];
    let mut attr = [0u64; 16];
    attr[0] = (fd as u64) | ((info.len() as u64) << 32); // bpf_fd, info_len
    attr[1] = info.as_mut_ptr() as u64;
    // SAFETY: bpf(2) writing at most info_len bytes into `info`, which outlives the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            attr.as_mut_ptr(),
            size_of_val(&attr),
        )
    };
    // SAFETY: closing the fd opened above.
    unsafe { libc::close(fd as i32) };
    if r != 0 {
        return None;
    }
    let name = &info[64..80];
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    Some(String::from_utf8_lossy(&name[..end]).into_owned())
}

fn read_prog_stats(pid: u32) -> Result<Vec<(String, u64, f64)>> {
    let mut out = Vec::new();
    let dir = format!("/proc/{pid}/fdinfo");
    for e in std::fs::read_dir(&dir).with_context(|| format!("listing {dir}"))? {
        let Ok(text) = std::fs::read_to_string(e?.path()) else {
            continue;
        };
        let field = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|v| v.trim_start_matches([':', '\t', ' ']).trim().to_owned())
        };
        let (Some(id), Some(cnt), Some(ns)) = (
            field("prog_id").and_then(|v| v.parse::<u32>().ok()),
            field("run_cnt").and_then(|v| v.parse::<u64>().ok()),
            field("run_time_ns").and_then(|v| v.parse::<u64>().ok()),
        ) else {
            continue;
        };
        if cnt == 0 {
            continue;
        }
        let name = prog_name(id).unwrap_or_else(|| format!("prog id {id}"));
        out.push((name, cnt, ns as f64 / cnt as f64));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cells(secs: f64) -> [Cell; 3] {
        std::array::from_fn(|i| Cell {
            seconds: secs + i as f64,
            cpu: secs / 2.0,
            ..Cell::default()
        })
    }

    fn round(before: [f64; 3], traced: [f64; 3]) -> Round {
        let mut c: [[Cell; 3]; 4] = Default::default();
        c[0] = cells(before[0]);
        for (k, t) in traced.iter().enumerate() {
            c[k + 1] = cells(*t);
        }
        Round {
            cells: c,
            before: before.map(cells),
            lost: [0; 4],
        }
    }

    #[test]
    fn each_traced_run_is_compared_with_the_untraced_runs_on_either_side() {
        let st = StormResults {
            counts: StormCounts {
                execs: 1,
                files: 1,
                connects: 1,
            },
            rounds: vec![
                round([10.0, 12.0, 14.0], [11.0, 26.0, 30.0]),
                round([16.0, 18.0, 20.0], [17.0, 38.0, 42.0]),
            ],
            closing: Some(cells(22.0)),
            hooks: Vec::new(),
        };
        // Auditor between before[0] and before[1] of its round.
        assert_eq!(st.baseline(Tool::Auditor, 0, 0), 11.0);
        // Auditd between before[1] and before[2].
        assert_eq!(st.baseline(Tool::Auditd, 0, 0), 13.0);
        // bpftrace between before[2] and the next round's first untraced run...
        assert_eq!(st.baseline(Tool::Bpftrace, 0, 0), 15.0);
        // ...or, in the last round, the closing one.
        assert_eq!(st.baseline(Tool::Bpftrace, 1, 0), 21.0);
        // Per storm: the second storm's cells are one second longer.
        assert_eq!(st.baseline(Tool::Auditor, 1, 1), 18.0);
        assert_eq!(st.ratios(Tool::Auditor, 0), vec![1.0, 1.0]);
        assert_eq!(st.ratios(Tool::Auditd, 1), vec![27.0 / 14.0, 39.0 / 20.0]);
        // CPU brackets the same way (cpu = secs / 2 in every storm).
        assert_eq!(
            st.own_cpu_ratio(Tool::Auditd, 0),
            (13.0 / 6.5 + 19.0 / 9.5) / 2.0
        );
        // The untraced spread and median cover every untraced run.
        assert_eq!(st.untraced_spread(0), (10.0, 22.0));
        assert_eq!(st.median_seconds(Tool::None, 0), 15.0);
    }
}
