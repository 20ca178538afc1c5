//! Helpers shared by the benchmarks: child processes that are always cleaned up, Ctrl-C
//! that unwinds through those guards, medians, percentiles, /proc readings.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Seconds from spawn to "tracepoints attached" of every agent `start_agent` started.
static STARTUPS: Mutex<Vec<f64>> = Mutex::new(Vec::new());

/// The start-up times of the agents started so far in this process.
pub fn agent_startups() -> Vec<f64> {
    STARTUPS.lock().map(|v| v.clone()).unwrap_or_default()
}

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Ctrl-C sets a flag instead of killing us, so the guards below can remove audit rules
/// and stop auditd/bpftrace/the agent on the way out. The children run in their own
/// process groups, so the terminal's SIGINT reaches only us.
pub fn catch_ctrl_c() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_sigint as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
    }
}

/// Fails once Ctrl-C was pressed; storms call it in their loops.
pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted (Ctrl-C): cleaning up");
    }
    Ok(())
}

/// A child process stopped (signal, then wait; SIGKILL after a grace period) when the
/// guard is dropped, on every path out, errors included.
pub struct Proc {
    pub child: Option<Child>,
    name: &'static str,
    signal: i32,
}

impl Proc {
    pub fn spawn(name: &'static str, cmd: &mut Command, signal: i32) -> Result<Self> {
        use std::os::unix::process::CommandExt as _;
        let child = cmd
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {name} ({cmd:?})"))?;
        Ok(Self {
            child: Some(child),
            name,
            signal,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Signals the child and waits for it (up to `grace`, then SIGKILL).
    pub fn stop(&mut self, grace: Duration) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        // SAFETY: kill(2) on our own child's pid, which we have not reaped yet.
        unsafe { libc::kill(child.id() as i32, self.signal) };
        let deadline = Instant::now() + grace;
        loop {
            if child
                .try_wait()
                .with_context(|| format!("waiting for {}", self.name))?
                .is_some()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                eprintln!("{} did not stop within {grace:?}: killing it", self.name);
                let _ = child.kill();
                let _ = child.wait();
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Err(e) = self.stop(Duration::from_secs(60)) {
            eprintln!("stopping {}: {e:#}", self.name);
        }
    }
}

/// Starts `auditor watch --quiet` with `args`; returns once its programs are attached.
/// The time that takes (every program verified and attached) is recorded for
/// [`agent_startups`]: nothing is captured before it.
pub fn start_agent(bin: &Path, args: &[&str]) -> Result<Proc> {
    let spawned = Instant::now();
    let mut p = Proc::spawn(
        "auditor watch",
        Command::new(bin)
            .args(["watch", "--quiet"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
        libc::SIGTERM,
    )?;
    let stderr = p
        .child
        .as_mut()
        .and_then(|c| c.stderr.take())
        .context("auditor stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    let mut last = Vec::new();
    loop {
        match lines.next() {
            Some(Ok(l)) if l.contains("tracepoints attached") => {
                if let Ok(mut v) = STARTUPS.lock() {
                    v.push(spawned.elapsed().as_secs_f64());
                }
                break;
            }
            Some(Ok(l)) => last.push(l),
            _ => bail!(
                "auditor watch exited before attaching its programs: {}",
                last.join(" | ")
            ),
        }
    }
    // Keep draining stderr so the child never blocks on it; show warnings about loss.
    std::thread::spawn(move || {
        for l in lines.map_while(Result::ok) {
            if l.contains("ERROR") {
                eprintln!("  auditor: {l}");
            }
        }
    });
    Ok(p)
}

/// Starts `auditor watch` on the tree `watched`, chaining every event into a local vault
/// at `vault`, with `extra` arguments after those.
pub fn start_watching(bin: &Path, watched: &Path, vault: &Path, extra: &[&str]) -> Result<Proc> {
    let mut args = vec![
        "--path",
        watched.to_str().context("UTF-8 path")?,
        "--vault-dir",
        vault.to_str().context("UTF-8 path")?,
    ];
    args.extend_from_slice(extra);
    start_agent(bin, &args)
}

/// Runs a command, returns its stdout; fails with its stderr.
pub fn output(cmd: &mut Command) -> Result<String> {
    let o = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !o.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    }
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub fn rfc3339_ns(s: &str) -> Option<i128> {
    let t = humantime::parse_rfc3339(s).ok()?;
    Some(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_nanos() as i128)
}

/// A scratch directory under the temp dir, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(what: &str) -> Result<Self> {
        let p = std::env::temp_dir().join(format!("auditor-bench-{what}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        Ok(Self(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// CPU time (user + system) of a process so far, from /proc/PID/stat.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    stat_cpu_seconds(&format!("/proc/{pid}/stat")).map(|(_, s)| s)
}

/// utime + stime of each thread of `pid`, by thread name (threads of one name summed),
/// sorted by name.
pub fn thread_cpu_seconds(pid: u32) -> Result<Vec<(String, f64)>> {
    let dir = format!("/proc/{pid}/task");
    let mut by_name = std::collections::BTreeMap::<String, f64>::new();
    for t in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let t = t.with_context(|| format!("reading {dir}"))?;
        // A thread that exited between the listing and the read is simply left out.
        if let Ok((name, secs)) = stat_cpu_seconds(&format!("{}/stat", t.path().display())) {
            *by_name.entry(name).or_default() += secs;
        }
    }
    Ok(by_name.into_iter().collect())
}

/// The command name and utime + stime (seconds) in a `/proc/.../stat` file.
fn stat_cpu_seconds(path: &str) -> Result<(String, f64)> {
    let stat = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let (head, rest) = stat
        .rsplit_once(')')
        .with_context(|| format!("malformed {path}"))?;
    let name = head
        .split_once('(')
        .map(|(_, n)| n.to_owned())
        .unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime 15.
    let tick = |i: usize| -> Result<f64> {
        f.get(i)
            .context("short /proc/PID/stat")?
            .parse::<f64>()
            .context("non-numeric /proc/PID/stat field")
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((name, (tick(11)? + tick(12)?) / hz))
}

/// The KiB value of the `key:` line of a /proc/PID file (`status`, `smaps_rollup`).
fn proc_kib(pid: u32, file: &str, key: &str) -> Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .with_context(|| format!("reading /proc/{pid}/{file}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no {key} in /proc/PID/{file}"))
}

/// Peak resident set size (VmHWM) in KiB.
pub fn peak_rss_kib(pid: u32) -> Result<u64> {
    proc_kib(pid, "status", "VmHWM")
}

/// Proportional set size in KiB (`Pss` of /proc/PID/smaps_rollup): each physical page
/// once, shared pages split among their mappings (a page mapped twice counts once).
pub fn pss_kib(pid: u32) -> Result<u64> {
    proc_kib(pid, "smaps_rollup", "Pss")
}

/// Samples [`pss_kib`] of `pid` every `every` until [`PssSampler::peak`] (the largest
/// sample) or drop; the kernel keeps a peak for RSS (VmHWM), but none for PSS.
pub struct PssSampler {
    stop: std::sync::Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl PssSampler {
    pub fn start(pid: u32, every: Duration) -> Self {
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peak = 0;
            while !flag.load(Ordering::Relaxed) {
                if let Ok(kib) = pss_kib(pid) {
                    peak = peak.max(kib);
                }
                std::thread::sleep(every);
            }
            peak
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops sampling; the peak in KiB (0 if no sample could be read).
    pub fn peak(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().and_then(|t| t.join().ok()).unwrap_or(0)
    }
}

impl Drop for PssSampler {
    /// A run that fails part-way stops the sampling thread too.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Resident KiB of the BPF maps mapped into `pid` (for the agent: the ring buffer; kernel
/// memory, counted in RSS).
pub fn bpf_map_rss_kib(pid: u32) -> Result<u64> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))
        .with_context(|| format!("reading /proc/{pid}/smaps"))?;
    let mut in_map = false;
    let mut kib = 0;
    for l in smaps.lines() {
        let mut words = l.split_whitespace();
        match words.next() {
            Some("Rss:") if in_map => {
                kib += words
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
            Some(first) if first.contains('-') && !first.ends_with(':') => {
                in_map = l.ends_with("anon_inode:bpf-map");
            }
            _ => {}
        }
    }
    Ok(kib)
}

/// The agent's resident memory by kind right now (RssAnon, RssFile, RssShmem), in KiB:
/// says whether the peak is heap or mapped ring-buffer pages.
pub fn rss_breakdown(pid: u32) -> Result<Vec<(String, u64)>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    Ok(status
        .lines()
        .filter(|l| l.starts_with("Rss"))
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.to_owned(), v.split_whitespace().next()?.parse().ok()?))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kib_values_of_this_process_are_read() {
        let me = std::process::id();
        assert!(peak_rss_kib(me).expect("VmHWM") > 0);
        assert!(pss_kib(me).expect("Pss") > 0);
        assert!(proc_kib(me, "status", "NoSuchKey").is_err());
    }
}
