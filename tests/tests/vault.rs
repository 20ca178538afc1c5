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

/// Python that lists every loaded BPF program (BPF_PROG_GET_NEXT_ID) and opens each by
/// id (BPF_PROG_GET_FD_BY_ID), as `bpftool prog show` does.
const BPF_PROBE: &str = r#"
import ctypes, os, struct
libc = ctypes.CDLL(None, use_errno=True)
def bpf(cmd, attr):
    buf = ctypes.create_string_buffer(attr, 128)
    return libc.syscall(321, cmd, buf, 128), buf
start, n = 0, 0
while True:
    r, buf = bpf(11, struct.pack("II", start, 0))
    if r < 0:
        break
    start = struct.unpack_from("II", buf.raw)[1]
    fd, _ = bpf(13, struct.pack("I", start))
    if fd >= 0:
        os.close(fd)
        n += 1

"#;

/// PTRACE_SEIZE of the agent (which does not stop it); detached when python exits.
const PTRACE_SEIZE: &str = r#"
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
sys.exit(0 if libc.ptrace(0x4206, int(sys.argv[1]), None, None) == 0 else ctypes.get_errno())
"#;

#[test]
fn attacks_on_the_agent_and_its_stop_reach_the_vault() {
    let data = TempDir::new("vault-data");
    let spool = TempDir::new("spool");
    let watched = TempDir::new("vault-watched");
    let port = free_port();
    let token = enroll(data.path(), "agent1");
    let vault = Vault::start(data.path(), port);
    let a = agent(port, &token, spool.path(), &watched);
    let agent_pid = a.pid();

    // Clearing the kernel ring.
    let (pid, st) = run(Command::new("dmesg").arg("-C"));
    assert!(st.success());
    let rec = query_until(data.path(), &["--kind", "syslog", "--tamper-only"], |r| {
        r["payload"]["pid"] == pid
    });
    assert_eq!(rec["payload"]["tamper"]["kind"], "kernel_ring_cleared");
    assert_eq!(rec["payload"]["action"], "clear");
    assert_eq!(rec["payload"]["success"], true);

    // Opening the agent's BPF programs by id.
    let (pid, st) = run(Command::new("python3").args(["-c", BPF_PROBE]));
    assert!(st.success());
    let rec = query_until(data.path(), &["--kind", "bpf", "--tamper-only"], |r| {
        r["payload"]["pid"] == pid
    });
    assert_eq!(rec["payload"]["tamper"]["kind"], "agent_bpf_access");
    assert_eq!(rec["payload"]["action"], "prog_get_fd_by_id");
    assert_eq!(rec["payload"]["targets_agent"], true);

    // ptrace of the agent.
    let (pid, st) = run(Command::new("python3").args(["-c", PTRACE_SEIZE, &agent_pid.to_string()]));
    assert!(st.success(), "PTRACE_SEIZE of the agent failed: {st:?}");
    let rec = query_until(data.path(), &["--kind", "ptrace", "--tamper-only"], |r| {
        r["payload"]["pid"] == pid
    });
    assert_eq!(rec["payload"]["tamper"]["kind"], "agent_ptraced");
    assert_eq!(rec["payload"]["action"], "seize");
    assert_eq!(rec["payload"]["target_pid"], agent_pid);

    // A signal from another process: who sent which.
    let (pid, st) = run(Command::new("kill").args(["-HUP", &agent_pid.to_string()]));
    assert!(st.success());
    let rec = query_until(data.path(), &["--kind", "signal", "--tamper-only"], |r| {
        r["payload"]["pid"] == pid
    });
    assert_eq!(rec["payload"]["signal"], "SIGHUP");
    assert_eq!(rec["payload"]["comm"], "kill");
    assert_eq!(rec["payload"]["target_pid"], agent_pid);
    assert_eq!(rec["payload"]["tamper"]["kind"], "agent_signalled");
    query_until(data.path(), &["--kind", "agent_reload"], |r| {
        r["payload"]["error"].is_null()
    });

    // SIGTERM: flushed, and the last record of the boot says why it stopped.
    let (st, _) = a.stop_keeping_vault();
    assert!(st.success());
    let me = std::process::id();
    let rec = query_until(data.path(), &["--kind", "signal"], |r| {
        r["payload"]["signal"] == "SIGTERM"
    });
    assert_eq!(rec["payload"]["pid"], me, "the sender is this test process");
    assert_eq!(rec["payload"]["tamper"]["kind"], "agent_stop_requested");
    let rec = query_until(data.path(), &["--kind", "agent_stopping"], |_| true);
    assert_eq!(rec["payload"]["reason"], "SIGTERM");
    assert_eq!(rec["payload"]["kernel_losses"], 0);
    vault.kill();
}
