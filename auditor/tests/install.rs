//! `auditor install --root`, the unit files under `systemd-analyze verify`, the status file
//! and the metrics endpoint. Unprivileged (except that `--root` needs write access to a
//! temporary directory only).
#![allow(clippy::unwrap_used)]

use std::{
    io::{Read as _, Write as _},
    path::Path,
    process::Command,
    sync::{Arc, atomic::AtomicU64},
};

const BIN: &str = env!("CARGO_BIN_EXE_auditor");

fn auditor(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn install_into(root: &Path) -> String {
    let out = auditor(&["install", "--root", root.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn install_under_a_root_puts_everything_in_place_and_keeps_an_edited_config() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();

    // --dry-run changes nothing.
    let out = auditor(&["install", "--root", root.to_str().unwrap(), "--dry-run"]);
    assert!(out.status.success());
    let plan = String::from_utf8(out.stdout).unwrap();
    assert!(plan.contains("write the default configuration"), "{plan}");
    assert_eq!(
        std::fs::read_dir(root).unwrap().count(),
        0,
        "dry run wrote files"
    );

    let first = install_into(root);
    for f in [
        "usr/local/bin/auditor",
        "etc/systemd/system/auditor.service",
        "etc/systemd/system/auditor-vault.service",
        "etc/sysusers.d/auditor-vault.conf",
        "etc/auditor/auditor.toml",
        "usr/local/share/doc/auditor/OPERATIONS.md",
    ] {
        assert!(root.join(f).is_file(), "{f} missing; output:\n{first}");
    }
    assert!(root.join("var/lib/auditor").is_dir());
    assert_eq!(
        std::fs::read(root.join("usr/local/bin/auditor")).unwrap(),
        std::fs::read(BIN).unwrap()
    );
    assert_eq!(
        std::fs::read_to_string(root.join("etc/auditor/auditor.toml")).unwrap(),
        auditor::config::DEFAULT_TOML
    );
    assert!(first.contains("systemd not touched"), "{first}");

    // An edited configuration survives a second install (an upgrade), and it says so.
    let edited = "paths = [\"/srv/logs\"]\n";
    std::fs::write(root.join("etc/auditor/auditor.toml"), edited).unwrap();
    let second = install_into(root);
    assert_eq!(
        std::fs::read_to_string(root.join("etc/auditor/auditor.toml")).unwrap(),
        edited
    );
    assert!(
        second.contains("has been edited and is never overwritten"),
        "{second}"
    );
    assert!(second.contains("auditor.service unchanged"), "{second}");

    // uninstall removes ours, keeps configuration and evidence.
    let out = auditor(&["uninstall", "--root", root.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert!(!root.join("etc/systemd/system/auditor.service").exists());
    assert!(!root.join("usr/local/bin/auditor").exists());
    assert!(root.join("etc/auditor/auditor.toml").exists());
    assert!(root.join("var/lib/auditor").is_dir());
}

/// The units as `auditor install` writes them must pass `systemd-analyze verify` with no
/// warning about them. Run against the install root (so ExecStart= exists), with this
/// host's own unit library copied in for the targets they name.
#[test]
fn unit_files_pass_systemd_analyze_verify() {
    let which = Command::new("sh")
        .args(["-c", "command -v systemd-analyze"])
        .output()
        .unwrap();
    assert!(
        which.status.success(),
        "systemd-analyze not found: install systemd (Debian: `apt-get install systemd`) to run this test; it checks the unit files `auditor install` ships"
    );
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    install_into(root);
    // ExecReload=/bin/kill must exist in the root, and the standard targets must resolve.
    std::fs::create_dir_all(root.join("bin")).unwrap();
    let kill = ["/bin/kill", "/usr/bin/kill"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("kill(1) not found on this host");
    std::fs::copy(kill, root.join("bin/kill")).unwrap();
    std::fs::create_dir_all(root.join("usr/lib/systemd")).unwrap();
    let lib = Path::new("/usr/lib/systemd/system");
    if lib.is_dir() {
        let st = Command::new("cp")
            .arg("-a")
            .arg(lib)
            .arg(root.join("usr/lib/systemd/system"))
            .status()
            .unwrap();
        assert!(st.success());
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.display()))
        .args([
            "/etc/systemd/system/auditor.service",
            "/etc/systemd/system/auditor-vault.service",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let ours: Vec<&str> = stderr.lines().filter(|l| l.contains("auditor")).collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify: {}\n{stderr}",
        out.status
    );
}

#[test]
fn status_reports_a_running_a_dead_and_no_agent() {
    use auditor::{
        metrics::Metrics,
        status::{self, Found, StatusContext, StatusWriter},
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run/auditor/status.json");

    // No agent: non-zero, says what to do.
    let out = auditor(&["status", "--status-file", path.to_str().unwrap()]);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("auditor is not running") && text.contains("systemctl start auditor"),
        "{text}"
    );

    // A live writer (this process): running, with the figures.
    let m = Metrics::new(Arc::new(AtomicU64::new(3)));
    m.add(&[("exec", 2)]);
    let writer = StatusWriter::start(
        path.clone(),
        m.clone(),
        StatusContext {
            watch_paths: vec!["/var/log".into()],
            evidence: "local vault /x".into(),
            metrics: None,
        },
    )
    .unwrap();
    match status::read(&path).unwrap() {
        Found::Running(s) => {
            assert_eq!(s.pid, std::process::id());
            assert_eq!(s.events_total, 2);
            assert_eq!(s.events_by_kind.get("exec"), Some(&2));
            assert_eq!(s.kernel_lost_records, 3);
            let text = status::render(&s);
            assert!(text.contains("2 in total (exec 2)"), "{text}");
            assert!(
                text.contains("losses:   3 kernel records dropped"),
                "{text}"
            );
        }
        other => panic!("{other:?}"),
    }
    let out = auditor(&["status", "--status-file", path.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("running (pid"));
    drop(writer);
    assert!(!path.exists(), "a clean stop removes the status file");

    // A file left by a killed agent: stale, non-zero.
    let mut s = status::snapshot(
        &m,
        &StatusContext {
            watch_paths: vec![],
            evidence: "x".into(),
            metrics: None,
        },
        0.0,
    );
    s.pid = u32::MAX - 1;
    status::write_atomic(&path, &s).unwrap();
    assert!(matches!(status::read(&path).unwrap(), Found::Stale { .. }));
    let out = auditor(&["status", "--status-file", path.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("no longer running"),
        "{out:?}"
    );
}

#[test]
fn metrics_endpoint_serves_the_text_format() {
    use auditor::metrics::{self, Metrics, MetricsSink};
    use auditor::sink::Sink as _;
    let m = Metrics::new(Arc::new(AtomicU64::new(0)));
    let mut sink = MetricsSink::new(m.clone());
    let ev = auditor::event::Event {
        schema_version: auditor::event::SCHEMA_VERSION,
        seq: 1,
        time: String::new(),
        boot_ns: 0,
        body: auditor::event::Body::Loss(auditor::event::Loss {
            source: "kernel_ring_buffer",
            records: 1,
            bytes: 0,
            since: String::new(),
            until: String::new(),
            total_records: 1,
            per_cpu: vec![],
        }),
    };
    sink.write(&ev).unwrap();
    sink.flush().unwrap();
    let addr = metrics::serve("127.0.0.1:0".parse().unwrap(), m).unwrap();
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut resp = String::new();
    conn.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("text/plain; version=0.0.4"), "{resp}");
    assert!(
        resp.contains("auditor_events_total{kind=\"loss\"} 1\n"),
        "{resp}"
    );
    assert!(resp.contains("auditor_uptime_seconds "), "{resp}");

    // A taken port fails at once, naming the address.
    let e = metrics::serve(addr, Metrics::new(Arc::new(AtomicU64::new(0)))).unwrap_err();
    assert!(
        e.to_string()
            .starts_with(&format!("cannot listen on {addr} for metrics: ")),
        "{e}"
    );
}
