//! The peers auditor is compared with: auditd (kernel audit) holding rules equivalent to
//! what auditor captures, and a bpftrace script printing the same syscalls. Both are
//! started for one measurement and always cleaned up (rules deleted, audit disabled again,
//! processes stopped), on errors and Ctrl-C too: other people test on these machines.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::common::{Proc, output};

/// Installs auditd from Debian when `auditctl`/`auditd` are missing (idempotent).
pub fn ensure_auditd() -> Result<()> {
    if Path::new("/sbin/auditd").exists() && Path::new("/sbin/auditctl").exists() {
        return Ok(());
    }
    println!("installing auditd from Debian (apt-get install -y auditd)");
    let st = Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends", "auditd"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get install auditd")?;
    if !st.success() {
        bail!("apt-get install -y auditd failed ({st})");
    }
    // The package may start the service where an init system allows it: we want it off.
    if let Ok(pid) = std::fs::read_to_string("/run/auditd.pid")
        && let Ok(pid) = pid.trim().parse::<i32>()
    {
        // SAFETY: kill(2) on the auditd the installation just started.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    Ok(())
}

pub fn ensure_bpftrace() -> Result<()> {
    if Path::new("/usr/bin/bpftrace").exists() {
        return Ok(());
    }
    println!("installing bpftrace from Debian (apt-get install -y bpftrace)");
    let st = Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends", "bpftrace"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get install bpftrace")?;
    if !st.success() {
        bail!("apt-get install -y bpftrace failed ({st})");
    }
    Ok(())
}

/// Set in the environment of the re-spawned bench (see [`run_auditable`]).
const AUDITABLE_ENV: &str = "AUDITOR_BENCH_AUDITABLE";

/// Runs the rest of the bench in a child process that kernel audit can see.
///
/// The kernel gives a task an audit context at fork, and only if audit has ever been
/// enabled since boot. The file and connect storms run in this process, so on a machine
/// where audit was never enabled before `cargo xtask bench` started, auditd's rules
/// never matched them: one run recorded 0 of 80,000 file and 0 of 5,000 connect
/// syscalls (execs, made by children forked later, were all there), and auditd looked
/// free. So audit is switched on and back off once (its previous state restored), and
/// the bench continues in a freshly forked copy of this command. Returns `None` in that
/// child, else the child's exit code.
pub fn run_auditable() -> Result<Option<i32>> {
    if std::env::var_os(AUDITABLE_ENV).is_some() {
        return Ok(None);
    }
    ensure_auditd()?;
    let enabled = status_u64(&audit_status()?, "enabled")?;
    if enabled == 0 {
        auditctl(&["-e", "1"]).context("enabling kernel audit once")?;
        auditctl(&["-e", "0"]).context("restoring kernel audit to disabled")?;
    }
    let exe = std::env::current_exe().context("locating the xtask binary")?;
    // SAFETY: ignoring SIGINT in the parent; the child installs its own handler (an
    // ignored signal stays ignored across exec until a handler is set).
    unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
    let st = Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(AUDITABLE_ENV, "1")
        .status()
        .context("re-spawning the bench")?;
    Ok(Some(st.code().unwrap_or(1)))
}

/// Kernel audit status fields (`auditctl -s`).
fn audit_status() -> Result<Vec<(String, String)>> {
    let text = output(Command::new("auditctl").arg("-s"))?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut it = l.splitn(2, ' ');
            Some((it.next()?.to_owned(), it.next()?.trim().to_owned()))
        })
        .collect())
}

fn status_u64(st: &[(String, String)], key: &str) -> Result<u64> {
    st.iter()
        .find(|(k, _)| k == key)
        .and_then(|(_, v)| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("`auditctl -s` printed no numeric {key}"))
}

fn auditctl(args: &[&str]) -> Result<()> {
    output(Command::new("auditctl").args(args)).map(|_| ())
}

/// auditd running with our rules; dropping it deletes the rules, restores the kernel's
/// audit settings and stops the daemon.
pub struct Auditd {
    proc: Option<Proc>,
    pub log: PathBuf,
    lost_before: u64,
    /// Rules loaded (each carries a `-k ab_*` key).
    rules: usize,
    restore: (u64, u64, u64), // enabled, backlog_limit, backlog_wait_time
    armed: bool,
}

impl Auditd {
    /// auditd's pid (0 once stopped).
    pub fn pid(&self) -> u32 {
        self.proc.as_ref().map_or(0, Proc::pid)
    }

    /// Starts `auditd -n` with a configuration in `dir` (its log goes there too, not to
    /// /var/log/audit) and loads rules equivalent to auditor's hooks, restricted to
    /// `watched` for file operations like `auditor watch --path`. Debian's default
    /// service settings: backlog 8192, backlog_wait_time 60000.
    pub fn start(dir: &Path, watched: &Path) -> Result<Self> {
        if Path::new("/run/auditd.pid").exists()
            && let Ok(pid) = std::fs::read_to_string("/run/auditd.pid")
            && Path::new(&format!("/proc/{}", pid.trim())).exists()
        {
            bail!(
                "an auditd is already running (pid {}): not touching it",
                pid.trim()
            );
        }
        let before = audit_status()?;
        let restore = (
            status_u64(&before, "enabled")?,
            status_u64(&before, "backlog_limit")?,
            status_u64(&before, "backlog_wait_time")?,
        );
        if !output(Command::new("auditctl").arg("-l"))?.contains("No rules") {
            bail!("kernel audit already holds rules (auditctl -l): not touching them");
        }
        let conf = dir.join("auditd-conf");
        std::fs::create_dir_all(&conf)?;
        let log = dir.join("audit.log");
        let _ = std::fs::remove_file(&log);
        // Debian's configuration, with the log moved here and never rotated mid-run.
        let system = std::fs::read_to_string("/etc/audit/auditd.conf")
            .context("reading /etc/audit/auditd.conf")?;
        let log_line = format!("log_file = {}", log.display());
        let mut conf_text: String = system
            .lines()
            .filter(|l| {
                let k = l.split('=').next().unwrap_or("").trim();
                !matches!(k, "log_file" | "max_log_file_action" | "num_logs")
            })
            .map(|l| format!("{l}\n"))
            .collect();
        conf_text += &format!("{log_line}\nmax_log_file_action = IGNORE\nnum_logs = 1\n");
        let conf_file = conf.join("auditd.conf");
        std::fs::write(&conf_file, conf_text)?;
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&conf_file, std::fs::Permissions::from_mode(0o640))?;
        let mut me = Self {
            proc: None,
            log,
            lost_before: 0,
            rules: 0,
            restore,
            armed: true,
        };
        me.proc = Some(Proc::spawn(
            "auditd",
            Command::new("auditd")
                .args(["-n", "-c"])
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
            libc::SIGTERM,
        )?);
        // auditd registers itself as the audit daemon: wait until the kernel says so.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let st = audit_status()?;
            if status_u64(&st, "pid")? != 0 {
                break;
            }
            if Instant::now() > deadline {
                bail!("auditd did not register with the kernel within 10 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let w = watched.to_str().context("watched path is not UTF-8")?;
        let dir_f = format!("dir={w}");
        auditctl(&["-b", "8192"])?;
        auditctl(&["--backlog_wait_time", "60000"])?;
        let rules: [&[&str]; 6] = [
            &["-S", "execve,execveat", "-k", "ab_exec"],
            &[
                "-S",
                "unlink,unlinkat,rmdir,rename,renameat,renameat2,truncate,ftruncate,creat,openat2",
                "-F",
                &dir_f,
                "-k",
                "ab_file",
            ],
            &["-S", "open", "-F", "a1&512", "-F", &dir_f, "-k", "ab_file"],
            &[
                "-S", "openat", "-F", "a2&512", "-F", &dir_f, "-k", "ab_file",
            ],
            &["-S", "connect", "-k", "ab_net"],
            &["-S", "fallocate", "-F", &dir_f, "-k", "ab_file"],
        ];
        for r in rules {
            let mut args = vec!["-a", "always,exit", "-F", "arch=b64"];
            args.extend_from_slice(r);
            auditctl(&args).context("loading an audit rule")?;
        }
        me.rules = rules.len();
        me.check_rules("after loading them")?;
        auditctl(&["-e", "1"])?;
        me.lost_before = status_u64(&audit_status()?, "lost")?;
        Ok(me)
    }

    /// Fails unless the kernel still holds every rule loaded: a storm measured with a rule
    /// missing would make auditd look cheaper than it is and its capture count short.
    fn check_rules(&self, when: &str) -> Result<()> {
        let listed = output(Command::new("auditctl").arg("-l"))?;
        let ours = listed.lines().filter(|l| l.contains("key=ab_")).count();
        if ours != self.rules {
            bail!(
                "kernel audit holds {ours} of the {} bench rules {when} (auditctl -l: {})",
                self.rules,
                listed.trim()
            );
        }
        Ok(())
    }

    /// Removes the rules, reads how many records the kernel lost meanwhile, stops auditd
    /// (which flushes its log). Returns the lost count.
    pub fn finish(&mut self) -> Result<u64> {
        self.check_rules("after the storms")?;
        let lost = status_u64(&audit_status()?, "lost")?.saturating_sub(self.lost_before);
        self.cleanup()?;
        Ok(lost)
    }

    fn cleanup(&mut self) -> Result<()> {
        if !self.armed {
            return Ok(());
        }
        self.armed = false;
        let mut errs = Vec::new();
        for args in [
            vec!["-D".to_owned()],
            vec!["-e".to_owned(), self.restore.0.min(1).to_string()],
            vec!["-b".to_owned(), self.restore.1.to_string()],
            vec!["--backlog_wait_time".to_owned(), self.restore.2.to_string()],
        ] {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            if let Err(e) = auditctl(&a) {
                errs.push(format!("{e:#}"));
            }
        }
        if let Some(mut p) = self.proc.take()
            && let Err(e) = p.stop(Duration::from_secs(30))
        {
            errs.push(format!("{e:#}"));
        }
        if errs.is_empty() {
            Ok(())
        } else {
            bail!("cleaning up after auditd: {}", errs.join("; "))
        }
    }
}

impl Drop for Auditd {
    fn drop(&mut self) {
        if let Err(e) = self.cleanup() {
            eprintln!("{e:#}");
        }
    }
}

/// The bpftrace script: the same syscalls as auditor hooks, entry side, one line each,
/// file operations filtered on the watched prefix in the kernel (as auditor filters).
pub fn bpftrace_script(watched: &str) -> String {
    let n = watched.len();
    let p = |arg: &str| format!("/strncmp(str(args->{arg}), \"{watched}\", {n}) == 0/");
    let mut s = String::from("BEGIN { printf(\"READY\\n\"); }\n");
    for sc in ["execve", "execveat"] {
        s += &format!(
            "tracepoint:syscalls:sys_enter_{sc} {{ printf(\"exec %d %s %s\\n\", pid, comm, str(args->filename)); }}\n"
        );
    }
    for (sc, arg) in [
        ("unlink", "pathname"),
        ("unlinkat", "pathname"),
        ("rmdir", "pathname"),
        ("truncate", "path"),
        ("creat", "pathname"),
        ("openat2", "filename"),
    ] {
        s += &format!(
            "tracepoint:syscalls:sys_enter_{sc} {} {{ printf(\"file %d {sc} %s\\n\", pid, str(args->{arg})); }}\n",
            p(arg)
        );
    }
    for sc in ["rename", "renameat", "renameat2"] {
        s += &format!(
            "tracepoint:syscalls:sys_enter_{sc} {} {{ printf(\"file %d {sc} %s %s\\n\", pid, str(args->oldname), str(args->newname)); }}\n",
            p("oldname")
        );
    }
    s += &format!(
        "tracepoint:syscalls:sys_enter_openat /(args->flags & 512) && strncmp(str(args->filename), \"{watched}\", {n}) == 0/ {{ printf(\"file %d openat %s\\n\", pid, str(args->filename)); }}\n"
    );
    s += &format!(
        "tracepoint:syscalls:sys_enter_open /(args->flags & 512) && strncmp(str(args->filename), \"{watched}\", {n}) == 0/ {{ printf(\"file %d open %s\\n\", pid, str(args->filename)); }}\n"
    );
    // fd-based: no path at entry; printed unfiltered.
    s += "tracepoint:syscalls:sys_enter_ftruncate { printf(\"file %d ftruncate %d\\n\", pid, args->fd); }\n";
    s += "tracepoint:syscalls:sys_enter_fallocate { printf(\"file %d fallocate %d\\n\", pid, args->fd); }\n";
    s += "tracepoint:syscalls:sys_enter_connect { printf(\"connect %d %d\\n\", pid, args->fd); }\n";
    s
}

/// bpftrace running the script, printing to a file.
pub struct Bpftrace {
    proc: Proc,
    pub out: PathBuf,
    pub err: PathBuf,
}

impl Bpftrace {
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub fn start(dir: &Path, watched: &Path) -> Result<Self> {
        let script = dir.join("bench.bt");
        std::fs::write(
            &script,
            bpftrace_script(watched.to_str().context("watched path is not UTF-8")?),
        )?;
        let (out, err) = (dir.join("bpftrace.out"), dir.join("bpftrace.err"));
        let proc = Proc::spawn(
            "bpftrace",
            Command::new("bpftrace")
                .arg(&script)
                .stdout(File::create(&out)?)
                .stderr(File::create(&err)?),
            libc::SIGINT,
        )?;
        let mut me = Self { proc, out, err };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if std::fs::read_to_string(&me.out)?.contains("READY") {
                return Ok(me);
            }
            let exited = match me.proc.child.as_mut() {
                Some(c) => c.try_wait()?.is_some(),
                None => true,
            };
            if exited || Instant::now() > deadline {
                bail!(
                    "bpftrace did not attach (exited, or 60 s passed): {}",
                    std::fs::read_to_string(&me.err).unwrap_or_default().trim()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops bpftrace (SIGINT: it flushes); returns (stdout, events it reported lost).
    pub fn finish(mut self) -> Result<(String, u64)> {
        // Let it drain its perf buffers before SIGINT (events still in them at exit are
        // dropped without a "Lost" line).
        std::thread::sleep(Duration::from_secs(1));
        self.proc.stop(Duration::from_secs(60))?;
        let text = std::fs::read_to_string(&self.out)
            .with_context(|| format!("reading {}", self.out.display()))?;
        let err = std::fs::read_to_string(&self.err).unwrap_or_default();
        // "Lost 123 events" (perf/ring buffer full), possibly several times.
        let lost = err
            .lines()
            .chain(text.lines())
            .filter_map(|l| {
                let i = l.to_ascii_lowercase().find("lost ")?;
                l[i + 5..].split_whitespace().next()?.parse::<u64>().ok()
            })
            .sum();
        Ok((text, lost))
    }
}
