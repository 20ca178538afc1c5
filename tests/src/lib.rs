//! Harness for the root-only integration tests: start the real `auditor` binary, perform
//! real actions, and wait for the exact events they must produce.
//!
//! The auditor sees the whole machine, so tests find their events by pid or by a unique
//! marker in argv, never by "the next event".

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::Value;

/// The binary under test: `$AUDITOR_BIN` (set by `cargo xtask test`), else the debug build.
pub fn auditor_bin() -> PathBuf {
    std::env::var_os("AUDITOR_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/auditor")
        })
}

/// A unique token for this test run, to find our own events among the machine's.
pub fn marker(name: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("auditor-test-{name}-{}-{n}", std::process::id())
}

/// A running `auditor watch --format json`, with every event it printed.
pub struct Auditor {
    child: Child,
    /// Set when the auditor's stdout closed (it exited).
    closed: Arc<std::sync::atomic::AtomicBool>,
    /// The local vault this instance writes (removed on drop).
    pub vault_dir: PathBuf,
    events: Arc<Mutex<Vec<Value>>>,
    stderr: Arc<Mutex<String>>,
}

impl Auditor {
    /// Starts the auditor with extra `watch` arguments and waits until its programs are
    /// attached (its `agent_start` event).
    pub fn start(extra: &[&str]) -> Self {
        let bin = auditor_bin();
        assert!(
            bin.exists(),
            "{} not built: run `cargo xtask test`",
            bin.display()
        );
        let vault_dir = std::env::temp_dir().join(marker("vault"));
        let mut child = Command::new(&bin)
            .args(["watch", "--format", "json", "--vault-dir"])
            .arg(&vault_dir)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn auditor");
        let events = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let out = child.stdout.take().expect("stdout");
        let ev = events.clone();
        let closed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let cl = closed.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("auditor printed invalid JSON ({e}): {line}"));
                ev.lock().expect("lock").push(v);
            }
            cl.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        let err = child.stderr.take().expect("stderr");
        let se = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                let mut s = se.lock().expect("lock");
                s.push_str(&line);
                s.push('\n');
            }
        });
        let a = Self {
            child,
            closed,
            vault_dir,
            events,
            stderr,
        };
        a.wait_for("agent_start", Duration::from_secs(60), |e| {
            e["kind"] == "agent_start"
        });
        a
    }

    /// Waits for the first event matching `pred`; panics with context on timeout.
    pub fn wait_for(&self, what: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = self.events.lock().expect("lock").iter().find(|e| pred(e)) {
                return v.clone();
            }
            let gone = self.closed.load(std::sync::atomic::Ordering::SeqCst);
            if gone {
                // One last look: the final lines may have just arrived.
                std::thread::sleep(Duration::from_millis(200));
                if let Some(v) = self.events.lock().expect("lock").iter().find(|e| pred(e)) {
                    return v.clone();
                }
            }
            if gone || Instant::now() > deadline {
                panic!(
                    "no {what} event within {timeout:?} (auditor exited: {gone}); auditor stderr:\n{}",
                    self.stderr.lock().expect("lock")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The exec event whose argv contains `marker`, with its result.
    pub fn exec_with(&self, marker: &str) -> Value {
        self.exec_where(marker, |_| true)
    }

    /// The exec event whose argv contains `marker` and that also satisfies `pred` (the
    /// launcher, e.g. a `bash -c` or `python3 -c` whose own argv carries the marker, is an
    /// exec too).
    pub fn exec_where(&self, marker: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.wait_for(
            &format!("exec with {marker}"),
            Duration::from_secs(20),
            |e| {
                e["kind"] == "exec"
                    && e["ret"].is_i64()
                    && e["argv"].as_array().is_some_and(|a| {
                        a.iter()
                            .any(|x| x.as_str().is_some_and(|s| s.contains(marker)))
                    })
                    && pred(e)
            },
        )
    }

    /// Every event seen so far that matches.
    pub fn all(&self, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        self.events
            .lock()
            .expect("lock")
            .iter()
            .filter(|e| pred(e))
            .cloned()
            .collect()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// SIGTERM and wait; returns the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.signal(libc::SIGTERM);
        let st = self.child.wait().expect("wait auditor");
        std::thread::sleep(Duration::from_millis(100)); // let the reader threads finish
        st
    }

    /// Stops the auditor (it flushes everything it holds, e.g. exec entries still waiting
    /// for their exit) and returns every event it printed.
    pub fn stop_and_collect(self) -> (std::process::ExitStatus, Vec<Value>) {
        let events = self.events.clone();
        let st = self.stop();
        let all = events.lock().expect("lock").clone();
        (st, all)
    }

    /// Like [`Auditor::stop`], but leaves the local vault on disk for the caller.
    pub fn stop_keeping_vault(mut self) -> (std::process::ExitStatus, PathBuf) {
        let dir = std::mem::take(&mut self.vault_dir);
        (self.stop(), dir)
    }
}

impl Drop for Auditor {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child (no-op if it already exited and was reaped).
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        let _ = self.child.wait();
        if !self.vault_dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.vault_dir);
        }
    }
}

/// Runs a command to completion; returns its pid and exit status.
pub fn run(cmd: &mut Command) -> (u32, std::process::ExitStatus) {
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let pid = child.id();
    let st = child.wait().expect("wait");
    (pid, st)
}

/// A fresh directory under /tmp, canonical (no symlinks), removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(marker(name));
        std::fs::create_dir_all(&p).expect("mkdir");
        Self(std::fs::canonicalize(&p).expect("canonicalize"))
    }
    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
    pub fn str(&self) -> &str {
        self.0.to_str().expect("utf-8 path")
    }
    /// The directory's own name (its last component).
    pub fn name(&self) -> &str {
        self.0
            .file_name()
            .and_then(|n| n.to_str())
            .expect("utf-8 name")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A throwaway login user whose home holds nothing yet; removed on drop. The auditor
/// watches the history files of the users in /etc/passwd, as read at its start, so one
/// must be made before the auditor starts.
pub struct TempUser {
    pub name: String,
    pub home: TempDir,
}

impl TempUser {
    pub fn new() -> Self {
        static MADE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let home = TempDir::new("home");
        // useradd wants a short name: "aud", the pid and a count (tests run in parallel).
        let n = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("aud{}x{n}", std::process::id());
        let (_, st) = run(Command::new("useradd")
            .args(["-M", "-s", "/bin/bash", "-d"])
            .arg(home.path())
            .arg(&name));
        assert!(st.success(), "useradd {name}");
        let (_, st) = run(Command::new("chown").arg(&name).arg(home.path()));
        assert!(st.success(), "chown home");
        Self { name, home }
    }

    /// Writes `~/.bash_history` (owned by the user); returns its path.
    pub fn history(&self, text: &str) -> String {
        let history = format!("{}/.bash_history", self.home.str());
        std::fs::write(&history, text).expect("writing the history file");
        let (_, st) = run(Command::new("chown").arg(&self.name).arg(&history));
        assert!(st.success(), "chown history");
        history
    }
}

impl Default for TempUser {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TempUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.name).status();
    }
}
