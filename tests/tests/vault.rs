//! Evidence leaves the host: a real `auditor vault serve` on loopback, a real agent
//! streaming to it, real actions. Needs root (the agent loads eBPF programs).
#![allow(clippy::unwrap_used)]

use std::{
    net::TcpStream,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use auditor_integration::{Auditor, TempDir, auditor_bin, marker, run};
use serde_json::Value;

struct Vault {
    child: Child,
}

impl Vault {
    fn start(data: &Path, port: u16) -> Self {
        let child = Command::new(auditor_bin())
            .args([
                "vault",
                "serve",
                "--insecure-http",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data",
            ])
            .arg(data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "vault did not start listening");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child }
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Vault {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn enroll(data: &Path, host: &str) -> String {
    let o = Command::new(auditor_bin())
        .args(["vault", "enroll", "--data"])
        .arg(data)
        .args(["--host", host])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

/// Polls `auditor vault query` until a record matches.
fn query_until(data: &Path, args: &[&str], pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let o = Command::new(auditor_bin())
            .args(["vault", "query", "--data"])
            .arg(data)
            .args(args)
            .output()
            .unwrap();
        if o.status.success() {
            for line in String::from_utf8_lossy(&o.stdout).lines() {
                let v: Value = serde_json::from_str(line).unwrap();
                if pred(&v) {
                    return v;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "no matching record in the vault for {args:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn agent(port: u16, token: &str, spool: &Path, watched: &TempDir) -> Auditor {
    Auditor::start(&[
        "--vault",
        &format!("http://127.0.0.1:{port}"),
        "--token",
        token,
        "--allow-insecure-http",
        "--host",
        "agent1",
        "--spool",
        spool.to_str().unwrap(),
        "--path",
        watched.str(),
    ])
}

#[test]
fn an_rm_on_the_agent_is_in_the_vault_with_its_tamper_kind() {
    let data = TempDir::new("vault-data");
    let spool = TempDir::new("spool");
    let watched = TempDir::new("vault-watched");
    let log = format!("{}/app.log", watched.str());
    std::fs::write(&log, "evidence").unwrap();
    let port = free_port();
    let token = enroll(data.path(), "agent1");
    let vault = Vault::start(data.path(), port);
    let a = agent(port, &token, spool.path(), &watched);

    let (pid, st) = run(Command::new("/bin/rm").arg(&log));
    assert!(st.success());
    let rec = query_until(data.path(), &["--kind", "delete", "--tamper-only"], |r| {
        r["payload"]["path"] == log.as_str()
    });
    assert_eq!(rec["host"], "agent1");
    let ev = &rec["payload"];
    assert_eq!(ev["pid"], pid);
    assert_eq!(ev["tamper"]["kind"], "log_deleted");
    assert_eq!(ev["ret"], 0);
    // The rm command itself, too.
    let rec = query_until(data.path(), &["--kind", "exec", "--argv", &log], |r| {
        r["payload"]["pid"] == pid
    });
    assert_eq!(
        rec["payload"]["exe"],
        std::fs::canonicalize("/bin/rm").unwrap().to_str().unwrap()
    );

    let st = a.stop();
    assert!(st.success());
    vault.kill();
    let v = Command::new(auditor_bin())
        .args(["vault", "verify", "--data"])
        .arg(data.path())
        .output()
        .unwrap();
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
}

#[test]
fn events_spooled_while_the_vault_is_down_survive_kill_9_of_the_agent() {
    let data = TempDir::new("vault-data");
    let spool = TempDir::new("spool");
    let watched = TempDir::new("vault-watched");
    let port = free_port();
    let token = enroll(data.path(), "agent1");

    // Vault down: the agent spools.
    let a = agent(port, &token, spool.path(), &watched);
    let m = marker("spooled");
    let (pid, _) = run(Command::new("/bin/true").arg(&m));
    let ev = a.exec_with(&m);
    assert_eq!(ev["pid"], pid);
    let boot1 = a.wait_for("agent_start", Duration::from_secs(5), |e| {
        e["kind"] == "agent_start"
    })["boot_id"]
        .clone();
    // Give the spool its fsync window, then kill -9: no graceful anything.
    std::thread::sleep(Duration::from_millis(500));
    a.signal(libc::SIGKILL);
    drop(a);

    // Vault up, a new agent on the same spool: the old boot's events are delivered.
    let vault = Vault::start(data.path(), port);
    let a = agent(port, &token, spool.path(), &watched);
    let rec = query_until(data.path(), &["--kind", "exec", "--argv", &m], |r| {
        r["payload"]["pid"] == pid
    });
    assert_eq!(
        rec["boot_id"], boot1,
        "delivered under the boot that captured it"
    );
    assert_eq!(rec["payload"]["seq"], ev["seq"]);
    // Exactly once.
    let o = Command::new(auditor_bin())
        .args(["vault", "query", "--data"])
        .arg(data.path())
        .args(["--argv", &m, "--kind", "exec"])
        .output()
        .unwrap();
    let n = String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| l.contains(&format!("\"pid\":{pid}")))
        .count();
    assert_eq!(n, 1);
    a.stop();
    vault.kill();
}
