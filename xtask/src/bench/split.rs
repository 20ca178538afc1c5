//! Where the file storm's slowdown comes from: the kernel side (auditor's hooks, run in the
//! storm's own syscalls) or the agent (its CPU, taken from the same two cores while it
//! decodes, chains and writes the events).
//!
//! Rounds of the file storm, interleaved: untraced; with auditor running; with auditor
//! running but pinned apart (every agent thread on the last CPU, the storm on the first),
//! so that the agent never takes the storm's core; with auditor's programs attached but
//! its agent paused (`SIGSTOP`) for the storm, so that only the hooks cost anything while
//! the records wait in a ring big enough for all of them (which makes the programs write
//! to cold memory: a little more than the hooks' cost with a reader). The agent is then
//! resumed, and at the end every event of the traced runs must be in its vault, with no
//! loss. The traced runs share one agent, started per round, in rotating order; the
//! untraced run comes first, before that agent starts.
//!
//! Pausing the agent is itself evidence: it records the `SIGSTOP` and `SIGCONT` it was
//! sent as tamper events, which land in this benchmark's own vault.

use std::{path::Path, time::Duration};

use anyhow::{Context as _, Result, bail};

use super::{
    common::{TempDir, check_interrupted, cpu_seconds, median, start_watching},
    storms::{Cell, count_file_events, measured_file_storm, settle},
};

/// Large enough for every record of a storm while the agent is paused: each iteration
/// writes eight records of at most ~330 bytes (four entries with their paths, four
/// results), 20,000 iterations about 50 MiB.
const PAUSED_RING: &str = "256M";
/// The biggest storm that ring holds with room to spare.
const MAX_FILES: u32 = 80_000;

/// Medians over rounds: wall seconds and the storm's own CPU seconds per variant, and the
/// agent's CPU during the running variant.
pub struct SplitResults {
    pub files: u32,
    pub rounds: u32,
    pub none: Vec<Cell>,
    pub running: Vec<Cell>,
    pub pinned: Vec<Cell>,
    pub paused: Vec<Cell>,
    /// File events found in the vault, and expected, over all rounds; loss records.
    pub captured: u64,
    pub expected: u64,
    pub lost: u64,
}

impl SplitResults {
    fn med(v: &[Cell], of: impl Fn(&Cell) -> f64) -> f64 {
        median(&v.iter().map(of).collect::<Vec<_>>())
    }

    /// (wall, CPU) of a variant against the untraced runs', medians.
    pub fn ratios(&self, v: &[Cell]) -> (f64, f64) {
        let (w0, c0) = (
            Self::med(&self.none, |c| c.seconds),
            Self::med(&self.none, |c| c.cpu),
        );
        (
            Self::med(v, |c| c.seconds) / w0,
            Self::med(v, |c| c.cpu) / c0,
        )
    }

    /// The agent's CPU during the running variant, per event (µs).
    pub fn agent_us_per_event(&self) -> f64 {
        let events = 4.0 * f64::from(self.files);
        Self::med(&self.running, |c| c.tool_cpu) * 1e6 / events
    }

    /// Median untraced wall time, seconds.
    pub fn untraced_seconds(&self) -> f64 {
        Self::med(&self.none, |c| c.seconds)
    }
}

const RUNNING: usize = 0;
const PINNED: usize = 1;

/// The CPUs this process may run on (sorted).
fn online_cpus() -> Result<Vec<usize>> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity fills it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above, with its size.
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } != 0
    {
        bail!("sched_getaffinity: {}", std::io::Error::last_os_error());
    }
    // SAFETY: CPU_ISSET reads the set we own, for indices below CPU_SETSIZE.
    let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect();
    if cpus.len() < 2 {
        bail!("pinning apart needs two CPUs; this process may use {cpus:?}");
    }
    Ok(cpus)
}

fn set_affinity(tid: libc::pid_t, cpus: &[usize]) -> std::io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes into it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus {
        // SAFETY: as above; `c` came from sched_getaffinity, below CPU_SETSIZE.
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    // SAFETY: sched_setaffinity with a set of the right size.
    if unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Pins the calling thread (the storm runs on it) to `cpus`.
fn pin_self(cpus: &[usize]) -> Result<()> {
    set_affinity(0, cpus).context("pinning the storm thread")
}

/// Pins every thread of process `pid` to `cpus`.
fn pin_threads(pid: u32, cpus: &[usize]) -> Result<()> {
    let dir = format!("/proc/{pid}/task");
    for t in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let t = t.with_context(|| format!("reading {dir}"))?;
        let tid: libc::pid_t = t
            .file_name()
            .to_str()
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("a thread id in {dir}"))?;
        match set_affinity(tid, cpus) {
            Ok(()) => {}
            // A thread that ended since the listing.
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
            Err(e) => return Err(e).with_context(|| format!("pinning agent thread {tid}")),
        }
    }
    Ok(())
}

fn signal(pid: u32, sig: libc::c_int) -> Result<()> {
    let p = libc::pid_t::try_from(pid).context("agent pid out of range")?;
    // SAFETY: kill(2) on the agent this benchmark started.
    if unsafe { libc::kill(p, sig) } != 0 {
        bail!(
            "sending signal {sig} to the agent (pid {pid}): {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

pub fn run(bin: &Path, files: u32, rounds: u32) -> Result<SplitResults> {
    if rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    if files == 0 || files > MAX_FILES {
        bail!(
            "--files must be between 1 and {MAX_FILES} (the paused agent's ring holds that many)"
        );
    }
    let tmp = TempDir::new("split")?;
    let watched = tmp.0.join("watched");
    std::fs::create_dir_all(&watched)?;
    let mut r = SplitResults {
        files,
        rounds,
        none: Vec::new(),
        running: Vec::new(),
        pinned: Vec::new(),
        paused: Vec::new(),
        captured: 0,
        expected: 0,
        lost: 0,
    };
    for round in 0..rounds {
        check_interrupted()?;
        settle();
        let none = measured_file_storm(&watched, files, &[])?;
        let vault = tmp.0.join(format!("vault-{round}"));
        let mut agent =
            start_watching(bin, &watched, &vault, &["--ring-buffer-size", PAUSED_RING])?;
        let pid = agent.pid();
        let mut cells: [Cell; 3] = Default::default();
        for k in 0..3 {
            let variant = (k + round as usize) % 3;
            settle();
            cells[variant] = match variant {
                RUNNING => measured_file_storm(&watched, files, &[pid])?,
                PINNED => {
                    let cpus = online_cpus()?;
                    let (first, last) = (cpus[0], cpus[cpus.len() - 1]);
                    pin_threads(pid, &[last])?;
                    pin_self(&[first])?;
                    let cell = measured_file_storm(&watched, files, &[pid]);
                    pin_self(&cpus)?;
                    pin_threads(pid, &cpus)?;
                    cell?
                }
                _ => {
                    signal(pid, libc::SIGSTOP)?;
                    let cell = measured_file_storm(&watched, files, &[]);
                    signal(pid, libc::SIGCONT)?;
                    cell?
                }
            };
        }
        let [running, pinned, paused] = cells;
        // Let it drain what the paused run left, then stop it (which flushes the rest).
        settle();
        let agent_cpu = cpu_seconds(pid)?;
        agent.stop(Duration::from_secs(120))?;
        let (n, lost) = count_file_events(bin, &vault)?;
        r.captured += n;
        r.expected += 3 * 4 * u64::from(files);
        r.lost += lost;
        println!(
            "round {round}: none {:.3}s cpu {:.3}s | running {:.3}s cpu {:.3}s (agent {:.3}s) | \
             pinned apart {:.3}s cpu {:.3}s | paused {:.3}s cpu {:.3}s | {n}/{} file events \
             in the vault, {lost} lost (agent CPU in all {agent_cpu:.2}s)",
            none.seconds,
            none.cpu,
            running.seconds,
            running.cpu,
            running.tool_cpu,
            pinned.seconds,
            pinned.cpu,
            paused.seconds,
            paused.cpu,
            3 * 4 * u64::from(files),
        );
        r.none.push(none);
        r.running.push(running);
        r.pinned.push(pinned);
        r.paused.push(paused);
    }
    Ok(r)
}

pub fn print(r: &SplitResults) {
    let (rw, rc) = r.ratios(&r.running);
    let (pw, pc) = r.ratios(&r.paused);
    println!(
        "file storm, {} iterations, {} rounds (untraced median {:.3}s):",
        r.files,
        r.rounds,
        r.untraced_seconds()
    );
    let (nw, nc) = r.ratios(&r.pinned);
    println!("  auditor running:            wall {rw:.3}x, storm CPU {rc:.3}x");
    println!("  pinned apart:               wall {nw:.3}x, storm CPU {nc:.3}x");
    println!("  agent paused (hooks only):  wall {pw:.3}x, storm CPU {pc:.3}x");
    println!(
        "  agent CPU during the running storm: {:.2} us per event; {}/{} events in the vault, {} lost",
        r.agent_us_per_event(),
        r.captured,
        r.expected,
        r.lost
    );
}
