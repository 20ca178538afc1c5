//! Exec capture against the real kernel: each test performs a real exec and asserts the
//! exact fields of the resulting event. Needs root (run by `cargo xtask test`).
#![allow(clippy::unwrap_used)]

use std::{os::unix::fs::PermissionsExt, process::Command, time::Duration};

use auditor_integration::{Auditor, TempDir, marker, run};
use serde_json::{Value, json};

fn argv(e: &Value) -> Vec<String> {
    e["argv"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

fn true_path() -> String {
    std::fs::canonicalize("/bin/true")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string()
}

#[test]
fn plain_exec_has_every_field() {
    let a = Auditor::start(&[]);
    let dir = TempDir::new("plain");
    let m = marker("plain");
    let (pid, st) = run(Command::new("/bin/true")
        .arg(&m)
        .arg("two words")
        .current_dir(dir.path()));
    assert!(st.success());
    let e = a.exec_with(&m);
    assert_eq!(e["schema_version"], 1);
    assert_eq!(e["pid"], pid);
    assert_eq!(e["tid"], pid);
    assert_eq!(e["ppid"], std::process::id());
    assert_eq!(
        argv(&e),
        vec!["/bin/true".to_string(), m.clone(), "two words".into()]
    );
    assert_eq!(e["filename"], "/bin/true");
    assert_eq!(e["exe"], true_path());
    assert_eq!(e["exe_source"], "kernel");
    assert_eq!(e["cwd"], dir.str());
    assert_eq!(
        (
            e["uid"].clone(),
            e["gid"].clone(),
            e["euid"].clone(),
            e["egid"].clone()
        ),
        (json!(0), json!(0), json!(0), json!(0))
    );
    assert_eq!(e["ret"], 0);
    assert_eq!(e["success"], true);
    assert_eq!(e["errno"], Value::Null);
    assert_eq!(e["argv_truncated"], false);
    assert_eq!(e["syscall"], "execve");
    assert_eq!(e["comm_after"], "true");
    assert!(e["cgroup_id"].as_u64().unwrap() > 0);
    assert!(e["seq"].as_u64().unwrap() > 1);
    let t = e["time"].as_str().unwrap();
    assert!(
        t.len() == 30 && t.ends_with('Z') && t.as_bytes()[19] == b'.',
        "RFC 3339 with ns: {t}"
    );
    assert!(e["warnings"].is_null(), "{e}");

    // The same event is in the embedded local vault, and its chain verifies.
    let (st, vault) = a.stop_keeping_vault();
    assert!(st.success(), "auditor exit: {st}");
    let bin = auditor_integration::auditor_bin();
    let q = Command::new(&bin)
        .args(["vault", "query", "--data"])
        .arg(&vault)
        .args(["--argv", &m])
        .output()
        .unwrap();
    assert!(q.status.success(), "{}", String::from_utf8_lossy(&q.stderr));
    let lines: Vec<Value> = String::from_utf8_lossy(&q.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["payload"]["pid"], pid);
    assert_eq!(lines[0]["payload"]["seq"], e["seq"]);
    let v = Command::new(&bin)
        .args(["vault", "verify", "--data"])
        .arg(&vault)
        .output()
        .unwrap();
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
    let _ = std::fs::remove_dir_all(&vault);
}

#[test]
fn history_bypass_does_not_hide_commands() {
    let a = Auditor::start(&[]);
    let dir = TempDir::new("hist");

    // bash without rc files and with history switched off.
    let m1 = marker("norc");
    let (bash, st) = run(Command::new("bash")
        .args(["--norc", "--noprofile", "-c"])
        .arg(format!(
            "unset HISTFILE; set +o history; export HISTSIZE=0; /bin/true {m1}; true"
        ))
        .current_dir(dir.path()));
    assert!(st.success());
    let e = a.exec_where(&m1, |e| e["filename"] == "/bin/true");
    assert_eq!(e["ppid"], bash, "the bash that ran it is the parent");
    assert_eq!(argv(&e), vec!["/bin/true".to_string(), m1]);
    assert_eq!(e["comm"], "bash");
    assert_eq!(e["cwd"], dir.str());

    // env -i: empty environment; env itself execs in the same pid.
    let m2 = marker("envi");
    let (pid, st) = run(Command::new("env").args(["-i", "/bin/true"]).arg(&m2));
    assert!(st.success());
    let e = a.exec_where(&m2, |e| e["filename"] == "/bin/true");
    assert_eq!(e["pid"], pid);
    assert_eq!(e["comm"], "env");
    assert_eq!(e["exe"], true_path());

    // exec -a: argv[0] is a lie; exe is the truth.
    let m3 = marker("fakename");
    let (pid, st) = run(Command::new("bash")
        .args(["--norc", "-c"])
        .arg(format!("exec -a fakename /bin/true {m3}")));
    assert!(st.success());
    let e = a.exec_where(&m3, |e| e["filename"] == "/bin/true");
    assert_eq!(e["pid"], pid, "exec replaces the bash process");
    assert_eq!(argv(&e), vec!["fakename".to_string(), m3]);
    assert_eq!(e["exe"], true_path());
    assert_eq!(e["exe_source"], "kernel");
    a.stop();
}

#[test]
fn large_argument_is_captured_whole_by_default_and_flagged_when_cut() {
    let big: String = "x".repeat(20 * 1024);
    let m = marker("big");
    let a = Auditor::start(&[]);
    let (pid, st) = run(Command::new("/bin/true").arg(&m).arg(&big));
    assert!(st.success());
    let e = a.exec_with(&m);
    assert_eq!(e["pid"], pid);
    assert_eq!(
        argv(&e),
        vec!["/bin/true".to_string(), m.clone(), big.clone()]
    );
    assert_eq!(e["argv_truncated"], false);
    a.stop();

    let a = Auditor::start(&["--argv-max-bytes", "16384"]);
    let m = marker("cut");
    let (pid, _) = run(Command::new("/bin/true").arg(&m).arg(&big).arg("after"));
    let e = a.exec_with(&m);
    assert_eq!(e["pid"], pid);
    assert_eq!(e["argv_truncated"], true);
    let got = argv(&e);
    assert_eq!(got.len(), 3, "the argument after the cut is not reported");
    // 16384 bytes in all, NULs included: "/bin/true\0" + marker + "\0" + the cut part.
    let kept = 16384 - ("/bin/true".len() + 1) - (m.len() + 1);
    assert_eq!(got[2], big[..kept]);
    a.stop();
}

/// The nice value of each thread of `pid`, from /proc/PID/task/TID/stat (field 19).
fn thread_nice(pid: u32) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).expect("task dir") {
        let stat = std::fs::read_to_string(t.expect("task").path().join("stat")).expect("stat");
        let (head, rest) = stat.rsplit_once(')').expect("stat format");
        let name = head
            .split_once('(')
            .map(|(_, n)| n.to_owned())
            .unwrap_or_default();
        // `rest` starts at field 3 (state): field 19 is its 17th.
        let nice = rest.split_whitespace().nth(16).expect("nice field");
        out.push((name, nice.parse().expect("numeric nice")));
    }
    out
}

/// Both flags are settings the agent applies at start: the argv cap in the kernel, the
/// nice value on every one of its threads (and `agent_start` says which it runs at).
#[test]
fn argument_count_cap_is_flagged_and_the_priority_applied() {
    let a = Auditor::start(&["--argv-max-args", "4", "--nice", "-7"]);
    let start = a.wait_for("agent_start", Duration::from_secs(5), |e| {
        e["kind"] == "agent_start"
    });
    assert_eq!(start["nice"], -7);
    assert_eq!(start["argv_max_args"], 4);
    let threads = thread_nice(a.pid());
    assert!(
        threads.iter().any(|(n, _)| n == "auditor-sink"),
        "{threads:?}"
    );
    assert!(threads.iter().all(|(_, n)| *n == -7), "{threads:?}");
    let m = marker("count");
    let (pid, _) = run(Command::new("/bin/true").args([m.as_str(), "a", "b", "c", "d"]));
    let e = a.exec_with(&m);
    assert_eq!(e["pid"], pid);
    assert_eq!(
        argv(&e),
        vec!["/bin/true".to_string(), m, "a".into(), "b".into()]
    );
    assert_eq!(e["argv_truncated"], true);
    a.stop();
}

/// A python process that performs one raw execve and reports its errno.
fn python_exec(path: &str, m: &str, cwd: &std::path::Path) -> (u32, std::process::ExitStatus) {
    run(Command::new("python3")
        .arg("-c")
        .arg("import os,sys\ntry: os.execv(sys.argv[1], [sys.argv[1], sys.argv[2]])\nexcept OSError as e: sys.exit(e.errno)")
        .args([path, m])
        .current_dir(cwd))
}

#[test]
fn failed_execs_are_recorded_with_their_errno() {
    let a = Auditor::start(&[]);
    let dir = TempDir::new("fail");

    let m = marker("missing");
    let missing = dir.path().join("no-such-program");
    let (pid, st) = python_exec(missing.to_str().unwrap(), &m, dir.path());
    assert_eq!(st.code(), Some(libc::ENOENT));
    let e = a.exec_where(&m, |e| e["filename"] == missing.to_str().unwrap());
    assert_eq!(e["pid"], pid);
    assert_eq!(e["ret"], -libc::ENOENT);
    assert_eq!(e["errno"], "ENOENT");
    assert_eq!(e["success"], false);
    assert_eq!(e["exe"], missing.to_str().unwrap());
    assert_eq!(e["exe_source"], "argument");
    assert_eq!(e["comm"], "python3");
    assert!(e.get("comm_after").is_none());

    let m = marker("noexec");
    let file = dir.path().join("not-executable");
    std::fs::write(&file, "#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (pid, st) = python_exec(file.to_str().unwrap(), &m, dir.path());
    assert_eq!(st.code(), Some(libc::EACCES));
    let e = a.exec_where(&m, |e| e["filename"] == file.to_str().unwrap());
    assert_eq!(e["pid"], pid);
    assert_eq!(e["ret"], -libc::EACCES);
    assert_eq!(e["errno"], "EACCES");
    assert_eq!(e["exe"], file.to_str().unwrap());

    // A relative path is made absolute against the kernel-resolved cwd.
    let m = marker("relative");
    let (pid, _) = python_exec("./sub/../missing-relative", &m, dir.path());
    let e = a.exec_where(&m, |e| e["filename"] == "./sub/../missing-relative");
    assert_eq!(e["pid"], pid);
    assert_eq!(e["filename"], "./sub/../missing-relative");
    assert_eq!(e["cwd"], dir.str());
    assert_eq!(e["exe"], format!("{}/missing-relative", dir.str()));
    a.stop();
}

#[test]
fn relative_success_and_execveat_resolve_in_the_kernel() {
    let a = Auditor::start(&[]);
    let dir = TempDir::new("rel");
    let script = dir.path().join("tool.sh");
    std::fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();

    let m = marker("dotslash");
    let (pid, st) = run(Command::new("./tool.sh").arg(&m).current_dir(dir.path()));
    assert!(st.success());
    let e = a.wait_for("script exec", Duration::from_secs(20), |e| {
        e["kind"] == "exec" && e["pid"] == pid && e["filename"] == "./tool.sh" && e["ret"].is_i64()
    });
    assert_eq!(e["ret"], 0);
    // The kernel maps the interpreter for a #! script; exe is what actually runs.
    assert_eq!(
        e["exe"],
        std::fs::canonicalize("/bin/sh").unwrap().to_str().unwrap()
    );
    assert_eq!(e["cwd"], dir.str());

    // fexecve -> execveat(fd, "", AT_EMPTY_PATH): the path comes from the fd, in the kernel.
    let m = marker("fexecve");
    let (pid, st) = run(Command::new("python3")
        .arg("-c")
        .arg("import os,sys\nfd=os.open('/bin/true', os.O_RDONLY)\nos.execve(fd, ['true', sys.argv[1]], {})")
        .arg(&m));
    assert!(st.success());
    let e = a.exec_where(&m, |e| e["syscall"] == "execveat");
    assert_eq!(e["pid"], pid);
    assert_eq!(e["exe"], true_path());
    assert_eq!(e["exe_source"], "kernel");
    a.stop();
}

#[test]
fn identity_fields_follow_the_process() {
    let a = Auditor::start(&[]);
    let m = marker("ids");
    // Set a login uid (as a login would), drop to nobody, then exec.
    let (pid, st) = run(Command::new("python3")
        .arg("-c")
        .arg("import os,sys\nopen('/proc/self/loginuid','w').write('4321')\nos.setgid(65534)\nos.setuid(65534)\nos.execv('/bin/true', ['/bin/true', sys.argv[1]])")
        .arg(&m));
    assert!(st.success());
    let e = a.exec_where(&m, |e| e["filename"] == "/bin/true");
    assert_eq!(e["pid"], pid);
    assert_eq!(e["auid"], 4321);
    assert!(
        e["sessionid"].is_u64(),
        "a login uid write starts a session: {e}"
    );
    assert_eq!(
        (
            e["uid"].clone(),
            e["gid"].clone(),
            e["euid"].clone(),
            e["egid"].clone()
        ),
        (json!(65534), json!(65534), json!(65534), json!(65534))
    );
    a.stop();
}

#[test]
fn kernel_losses_are_reported_inline() {
    // A tiny ring buffer and a stopped reader: the kernel must drop and count.
    let a = Auditor::start(&["--ring-buffer-size", "64K"]);
    a.signal(libc::SIGSTOP);
    let m = marker("flood");
    let big = "y".repeat(8000);
    let pids: Vec<u32> = (0..100)
        .map(|_| run(Command::new("/bin/true").arg(&m).arg(&big)).0)
        .collect();
    a.signal(libc::SIGCONT);
    let loss = a.wait_for("loss", Duration::from_secs(20), |e| e["kind"] == "loss");
    assert_eq!(loss["source"], "kernel_ring_buffer");
    assert!(
        loss["records"].as_u64().unwrap() > 0 && loss["bytes"].as_u64().unwrap() > 0,
        "{loss}"
    );
    assert!(loss["since"].as_str().unwrap() <= loss["until"].as_str().unwrap());
    // What arrived plus what was counted covers what happened (two records per exec;
    // other processes' execs may be among the losses too). Stopping the auditor flushes
    // entries still waiting for an exit that was lost; then every loss window is added up.
    let (st, events) = a.stop_and_collect();
    assert!(st.success(), "{st}");
    let losses: Vec<&Value> = events.iter().filter(|e| e["kind"] == "loss").collect();
    let lost: u64 = losses.iter().map(|l| l["records"].as_u64().unwrap()).sum();
    assert_eq!(
        losses.last().unwrap()["total_records"].as_u64().unwrap(),
        lost,
        "windows add up to the total"
    );
    let ours = |e: &&Value| {
        e["kind"] == "exec"
            && e["pid"]
                .as_u64()
                .is_some_and(|p| pids.contains(&(p as u32)))
    };
    let seen_records: u64 = events
        .iter()
        .filter(ours)
        .map(|e| {
            if e["warnings"].to_string().contains("missing") {
                1
            } else {
                2
            }
        })
        .sum();
    assert!(
        seen_records + lost >= 200,
        "seen {seen_records} records + lost {lost} < 200"
    );
}

#[test]
fn records_that_wrap_around_the_ring_end_arrive_whole() {
    // The reader maps the ring's data pages once, so the record that straddles the end of
    // each lap is copied out in two pieces (auditor/src/bpf/ringbuf.rs). A 64 KiB ring and
    // exec records of ~2.7 KiB whose lengths vary: the ring laps many times, and its end
    // falls inside a different part of a record each time.
    let a = Auditor::start(&["--ring-buffer-size", "64K"]);
    let m = marker("wrap");
    let args: Vec<String> = (0..300)
        .map(|i| {
            format!(
                "{i:04}-{}",
                "abcdefghijklmnopqrstuvwxyz".repeat(100 + i % 7)
            )
        })
        .collect();
    for arg in &args {
        let (_, st) = run(Command::new("/bin/true").arg(&m).arg(arg));
        assert!(st.success());
        // Paced so the reader (polling every 5 ms) keeps up with so small a ring.
        std::thread::sleep(Duration::from_millis(4));
    }
    let (st, events) = a.stop_and_collect();
    assert!(st.success(), "{st}");
    let broken: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == "decode_error")
        .collect();
    assert!(broken.is_empty(), "records that did not decode: {broken:?}");
    let mut bytes = 0;
    let mut seen = std::collections::HashSet::new();
    for e in events.iter().filter(|e| e["kind"] == "exec") {
        let got = argv(e);
        if got.get(1) != Some(&m) {
            continue;
        }
        assert_eq!(got.len(), 3, "{e}");
        let i: usize = got[2][..4].parse().unwrap();
        assert_eq!(got[2], args[i], "argument of exec {i} changed on the way");
        assert!(seen.insert(i), "exec {i} reported twice");
        bytes += got[2].len();
    }
    // Whatever the pacing could not save was counted; what arrived went round the ring
    // at least eight times.
    assert!(
        bytes >= 8 * 64 * 1024,
        "only {} of 300 execs ({bytes} bytes of argument) arrived",
        seen.len()
    );
}

/// The cgroup v2 mount point, from /proc/self/mounts.
fn cgroup2_mount() -> Option<String> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.get(2) == Some(&"cgroup2")).then(|| f[1].to_string())
    })
}

/// The exec record's cgroup id is the kernel's id of the cgroup v2 the process runs in:
/// the inode number of that cgroup's directory. The process is moved into a fresh cgroup
/// so the id is one no other process shares.
#[test]
fn exec_cgroup_id_is_the_cgroup_v2_inode() {
    use std::os::unix::fs::MetadataExt;
    let mount = cgroup2_mount().expect("cgroup2 is mounted on the test machines");
    let m = marker("cgroup");
    let cg = std::path::Path::new(&mount).join(&m);
    std::fs::create_dir(&cg).unwrap();
    let ino = std::fs::metadata(&cg).unwrap().ino();
    let a = Auditor::start(&[]);
    let procs = cg.join("cgroup.procs");
    let script = format!("echo $$ > {} && exec /bin/true {m}", procs.display());
    let (_, st) = run(Command::new("/bin/sh").args(["-c", &script]));
    assert!(st.success());
    let e = a.exec_where(&m, |e| e["filename"] == "/bin/true");
    let _ = std::fs::remove_dir(&cg);
    assert_eq!(e["cgroup_id"], ino, "{e}");
}
