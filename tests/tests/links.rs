//! Links that redirect or outlive logs, and shredding, against the real kernel:
//! `ln -sf /dev/null` over a log and over a shell history file, a hard link taken
//! before the unlink, `shred -u`. Exact path, pid, outcome and tamper kind asserted.
#![allow(clippy::unwrap_used)]

use std::{process::Command, time::Duration};

use auditor_integration::{Auditor, TempDir, TempUser, marker, run};
use serde_json::Value;

fn event(a: &Auditor, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    a.wait_for(what, Duration::from_secs(20), |e| {
        e["ret"].is_i64() && pred(e)
    })
}

#[test]
fn symlink_to_dev_null_over_a_log_and_a_history_file() {
    let user = TempUser::new();
    let history = user.history("ls\n");
    let dir = TempDir::new("ln-null");
    let log = format!("{}/app.log", dir.str());
    std::fs::write(&log, "line\n").unwrap();
    let a = Auditor::start(&["--path", dir.str()]);

    // `ln -sf` makes the link under a temporary name and renames it over the target.
    let (pid, st) = run(Command::new("ln").args(["-sf", "/dev/null", &log]));
    assert!(st.success());
    let e = event(&a, "rename of the temporary link over the log", |e| {
        e["kind"] == "rename" && e["new_path"] == log.as_str() && e["pid"] == pid
    });
    assert_eq!(e["success"], true);
    assert_eq!(e["target"], "/dev/null");
    assert_eq!(e["tamper"]["kind"], "log_linked_to_null");
    // The first attempt, straight at the name, failed: recorded with its errno.
    let e = event(&a, "symlinkat at the log", |e| {
        e["kind"] == "link" && e["path"] == log.as_str() && e["pid"] == pid
    });
    assert_eq!(e["symbolic"], true);
    assert_eq!(e["errno"], "EEXIST");
    assert_eq!(
        std::fs::read_link(&log).unwrap().to_str(),
        Some("/dev/null")
    );

    // The same done to a history file, by the user, from its home with a relative name.
    // `su` forks: the ln is a grandchild; it is matched by path and comm.
    let (_, st) = run(Command::new("su")
        .args([&user.name, "-c", "ln -sf /dev/null .bash_history"])
        .current_dir(user.home.path()));
    assert!(st.success());
    let e = event(&a, "history linked to /dev/null", |e| {
        e["kind"] == "rename" && e["new_path"] == history.as_str() && e["comm"] == "ln"
    });
    assert_eq!(e["tamper"]["kind"], "history_linked_to_null");
    assert_eq!(e["raw_new_path"], ".bash_history");
    assert_ne!(e["uid"], 0, "done as the user, not root: {e}");
    a.stop();
}

#[test]
fn hardlink_then_unlink_and_shred() {
    let dir = TempDir::new("ln-hard");
    let log = format!("{}/auth.log", dir.str());
    let other = format!("{}/syslog", dir.str());
    std::fs::write(&log, "secret\n").unwrap();
    std::fs::write(&other, "more\n").unwrap();
    let keep = TempDir::new("keep");
    let copy = format!("{}/{}", keep.str(), marker("kept"));
    let a = Auditor::start(&["--path", dir.str()]);

    let (pid, st) = run(Command::new("ln").args([&log, &copy]));
    assert!(st.success());
    let e = event(&a, "hard link out of the tree", |e| {
        e["kind"] == "link" && e["path"] == copy.as_str() && e["pid"] == pid
    });
    assert_eq!(e["target"], log);
    assert_eq!(e["symbolic"], false);
    assert_eq!(e["success"], true);
    assert!(e.get("tamper").is_none(), "a link destroys nothing: {e}");
    let (pid, st) = run(Command::new("rm").arg(&log));
    assert!(st.success());
    let e = event(&a, "unlink of the linked log", |e| {
        e["kind"] == "delete" && e["path"] == log.as_str() && e["pid"] == pid
    });
    assert_eq!(e["tamper"]["kind"], "log_deleted");

    // shred overwrites, renames the file to ever shorter names, then unlinks it.
    let (pid, st) = run(Command::new("shred").args(["-u", &other]));
    assert!(st.success());
    let e = a.exec_where(&other, |e| e["pid"] == pid && e["comm_after"] == "shred");
    assert_eq!(e["tamper"]["kind"], "shredding_tool");
    let e = event(&a, "shred's final unlink", |e| {
        e["kind"] == "delete" && e["pid"] == pid && e["success"] == true
    });
    assert!(
        e["path"].as_str().unwrap().starts_with(dir.str()),
        "deleted inside the tree: {e}"
    );
    assert_eq!(e["tamper"]["kind"], "log_deleted");
    a.stop();
}
