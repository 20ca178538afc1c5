//! Log tampering against the real kernel: each test deletes, renames or truncates a file
//! in a watched tree for real — with the usual tools and with ones that bypass them — and
//! asserts the exact absolute path, pid, uid, outcome and tamper kind.
#![allow(clippy::unwrap_used)]

use std::{process::Command, time::Duration};

use auditor_integration::{Auditor, TempDir, TempUser, marker, run};
use serde_json::Value;

/// A watched tree of our own (so tests never touch the real /var/log) with a log in it.
fn setup(name: &str) -> (TempDir, String) {
    let dir = TempDir::new(name);
    let log = format!("{}/app.log", dir.str());
    std::fs::write(&log, "line 1\nline 2\n").unwrap();
    (dir, log)
}

fn start(dir: &TempDir) -> Auditor {
    Auditor::start(&["--path", dir.str()])
}

/// The file event of `kind` on `path` by process `pid`.
fn file_event(a: &Auditor, kind: &str, path: &str, pid: Option<u32>) -> Value {
    a.wait_for(&format!("{kind} of {path}"), Duration::from_secs(20), |e| {
        e["kind"] == kind
            && e["path"] == path
            && e["ret"].is_i64()
            && pid.is_none_or(|p| e["pid"] == p)
    })
}

fn sh(script: &str, cwd: &str) -> u32 {
    let (pid, st) = run(Command::new("bash")
        .args(["--norc", "-c", script])
        .current_dir(cwd));
    assert!(st.success(), "{script}");
    pid
}

#[test]
fn rm_by_absolute_path() {
    let (dir, log) = setup("rm-abs");
    let a = start(&dir);
    let (pid, st) = run(Command::new("/bin/rm").arg(&log));
    assert!(st.success());
    let e = file_event(&a, "delete", &log, Some(pid));
    assert_eq!(e["raw_path"], log);
    assert_eq!(e["uid"], 0);
    assert_eq!(e["ret"], 0);
    assert_eq!(e["success"], true);
    assert_eq!(e["comm"], "rm");
    assert!(["unlink", "unlinkat"].contains(&e["syscall"].as_str().unwrap()));
    assert_eq!(e["tamper"]["kind"], "log_deleted");
    a.stop();
}

#[test]
fn rm_relative_after_cd_and_find_delete() {
    let (dir, log) = setup("rm-rel");
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    let nested = format!("{}/sub/old.log", dir.str());
    std::fs::write(&nested, "x").unwrap();
    let a = start(&dir);
    // cd into the tree, then a relative name.
    let pid = sh("exec rm app.log", dir.str());
    let e = file_event(&a, "delete", &log, Some(pid));
    assert_eq!(e["raw_path"], "app.log");
    assert_eq!(e["tamper"]["kind"], "log_deleted");
    // find -delete works with unlinkat(dirfd, name).
    let (pid, st) = run(Command::new("find")
        .arg(dir.path().join("sub"))
        .arg("-delete"));
    assert!(st.success());
    let e = file_event(&a, "delete", &nested, Some(pid));
    assert_eq!(
        e["raw_path"], "old.log",
        "find passes the bare name with a dirfd"
    );
    assert_eq!(e["syscall"], "unlinkat");
    let sub = format!("{}/sub", dir.str());
    let e = file_event(&a, "delete", &sub, Some(pid));
    assert_eq!(e["flags"][0], "AT_REMOVEDIR");
    a.stop();
}

#[test]
fn relative_name_from_an_ancestor_reaches_the_tree() {
    let (dir, log) = setup("ancestor");
    let parent = dir.path().parent().unwrap().to_str().unwrap().to_string();
    let leaf = dir.name();
    let a = start(&dir);
    let pid = sh(&format!("exec rm {leaf}/app.log"), &parent);
    let e = file_event(&a, "delete", &log, Some(pid));
    assert_eq!(e["raw_path"], format!("{leaf}/app.log"));
    assert_eq!(e["tamper"]["kind"], "log_deleted");
    a.stop();
}

/// Names that climb with `..` out of where they start: from a sibling directory of the
/// tree (its own base is not watched, nor an ancestor of a tree) and through an absolute
/// name that does not start with the tree's prefix. Both reach the log.
#[test]
fn names_climbing_with_dot_dot_into_the_tree() {
    let (dir, log) = setup("dotdot");
    let second = format!("{}/second.log", dir.str());
    std::fs::write(&second, "x").unwrap();
    let sibling = TempDir::new("dotdot-sibling");
    let leaf = dir.name();
    let a = start(&dir);
    let pid = sh(&format!("exec rm ../{leaf}/app.log"), sibling.str());
    let e = file_event(&a, "delete", &log, Some(pid));
    assert_eq!(e["raw_path"], format!("../{leaf}/app.log"));
    assert_eq!(e["success"], true);
    assert_eq!(e["tamper"]["kind"], "log_deleted");
    let climbing = format!("{}/../{leaf}/second.log", sibling.str());
    let (pid, st) = run(Command::new("rm").arg(&climbing));
    assert!(st.success());
    let e = file_event(&a, "delete", &second, Some(pid));
    assert_eq!(e["raw_path"], climbing.as_str());
    assert_eq!(e["tamper"]["kind"], "log_deleted");
    a.stop();
}

#[test]
fn python_and_perl_bypass_the_usual_tools() {
    let (dir, log) = setup("py");
    let log2 = format!("{}/other.log", dir.str());
    std::fs::write(&log2, "y").unwrap();
    let a = start(&dir);
    // unlink relative to a directory fd.
    let (pid, st) = run(Command::new("python3").arg("-c").arg(format!(
        "import os\nfd=os.open({:?}, os.O_RDONLY|os.O_DIRECTORY)\nos.unlink('app.log', dir_fd=fd)",
        dir.str()
    )));
    assert!(st.success());
    let e = file_event(&a, "delete", &log, Some(pid));
    assert_eq!(e["syscall"], "unlinkat");
    assert_eq!(e["raw_path"], "app.log");
    assert!(e["dirfd"].as_i64().unwrap() >= 0);
    let (pid, st) = run(Command::new("perl")
        .arg("-e")
        .arg(format!("unlink({log2:?}) or die")));
    assert!(st.success());
    let e = file_event(&a, "delete", &log2, Some(pid));
    assert_eq!(e["comm"], "perl");
    a.stop();
}

#[test]
fn truncations_by_redirect_truncate_and_cp() {
    let (dir, log) = setup("trunc");
    let a = start(&dir);
    let pid = sh(&format!(": > {log}"), dir.str());
    let e = file_event(&a, "truncate", &log, Some(pid));
    assert_eq!(e["tamper"]["kind"], "log_truncated");
    assert!(
        e["flags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "O_TRUNC")
    );
    assert_eq!(e["ret"].as_i64().map(|r| r >= 0), Some(true));

    let (pid, st) = run(Command::new("truncate").args(["-s0", &log]));
    assert!(st.success());
    let e = a.wait_for("truncate -s0", Duration::from_secs(20), |e| {
        e["kind"] == "truncate"
            && e["pid"] == pid
            && e["path"] == log.as_str()
            && e["length"] == 0
            && e["ret"].is_i64()
    });
    assert!(["ftruncate", "truncate"].contains(&e["syscall"].as_str().unwrap()));
    assert_eq!(e["tamper"]["kind"], "log_truncated");

    let (pid, st) = run(Command::new("cp").args(["/dev/null", &log]));
    assert!(st.success());
    let e = file_event(&a, "truncate", &log, Some(pid));
    assert_eq!(e["comm"], "cp");
    a.stop();
}

#[test]
fn punching_a_hole_in_a_log_is_tamper() {
    let (dir, log) = setup("punch");
    std::fs::write(&log, vec![b'x'; 65536]).unwrap();
    let a = start(&dir);
    let (pid, st) = run(Command::new("fallocate").args([
        "--punch-hole",
        "--offset",
        "0",
        "--length",
        "8192",
        &log,
    ]));
    assert!(st.success());
    let e = a.wait_for("fallocate", Duration::from_secs(20), |e| {
        e["kind"] == "truncate"
            && e["pid"] == pid
            && e["syscall"] == "fallocate"
            && e["ret"].is_i64()
    });
    assert_eq!(e["path"], log, "resolved from the fd in the kernel");
    assert_eq!(e["length"], 8192);
    assert!(
        e["flags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "FALLOC_FL_PUNCH_HOLE"),
        "{e}"
    );
    assert_eq!(e["ret"], 0);
    assert_eq!(e["tamper"]["kind"], "log_punched");
    a.stop();
}

#[test]
fn ftruncate_reports_the_file_behind_the_fd() {
    let (dir, log) = setup("ftrunc");
    let a = start(&dir);
    let (pid, st) = run(Command::new("python3").arg("-c").arg(format!(
        "import os\nfd=os.open({log:?}, os.O_WRONLY)\nos.ftruncate(fd, 3)"
    )));
    assert!(st.success());
    let e = a.wait_for("ftruncate", Duration::from_secs(20), |e| {
        e["kind"] == "truncate"
            && e["pid"] == pid
            && e["syscall"] == "ftruncate"
            && e["ret"].is_i64()
    });
    assert_eq!(e["path"], log, "resolved from the fd in the kernel");
    assert_eq!(e["raw_path"], "");
    assert_eq!(e["length"], 3);
    assert_eq!(e["tamper"]["kind"], "log_truncated");
    a.stop();
}

/// A history file emptied or punched through an fd: `truncate -s 0` opens it without
/// `O_TRUNC` and calls `ftruncate`, `fallocate -p` punches a hole; both name no path, so
/// the kernel side must see that the fd's file sits straight in a home directory.
#[test]
fn history_file_truncated_and_punched_through_its_fd() {
    let user = TempUser::new();
    let history = user.history("ls\nrm -rf /var/log/*\n");
    let a = Auditor::start(&["--path", TempDir::new("hist-fd-tree").str()]);
    for (cmd, syscall, tamper) in [
        (
            "truncate -s 0 .bash_history",
            "ftruncate",
            "history_truncated",
        ),
        (
            "echo ls > .bash_history; fallocate -p -o 0 -l 2 .bash_history",
            "fallocate",
            "history_punched",
        ),
    ] {
        // `su` forks: the tool is a grandchild; it is matched by path and syscall.
        let (_, st) = run(Command::new("su")
            .args([&user.name, "-c", cmd])
            .current_dir(user.home.path()));
        assert!(st.success(), "{cmd}");
        let e = a.wait_for(
            &format!("{syscall} of {history}"),
            Duration::from_secs(20),
            |e| {
                e["kind"] == "truncate"
                    && e["syscall"] == syscall
                    && e["path"] == history.as_str()
                    && e["ret"].is_i64()
            },
        );
        assert_eq!(e["success"], true, "{e}");
        assert_eq!(
            e["raw_path"], "",
            "no name: resolved from the fd in the kernel"
        );
        assert_eq!(e["tamper"]["kind"], tamper, "{e}");
        assert_ne!(e["uid"], 0, "done as the user, not root: {e}");
    }
    a.stop();
}

#[test]
fn renames_away_over_and_within() {
    let (dir, log) = setup("mv");
    let outside = TempDir::new("mv-outside");
    let away = format!("{}/stolen.log", outside.str());
    let a = start(&dir);
    let (pid, st) = run(Command::new("mv").args([&log, &away]));
    assert!(st.success());
    let e = file_event(&a, "rename", &log, Some(pid));
    assert_eq!(e["new_path"], away);
    assert_eq!(e["tamper"]["kind"], "log_renamed_away");

    // Replace a log by renaming another file over it.
    std::fs::write(&log, "real").unwrap();
    let fake = format!("{}/fake.log", outside.str());
    std::fs::write(&fake, "fake").unwrap();
    let (pid, st) = run(Command::new("mv").args(["-f", &fake, &log]));
    assert!(st.success());
    let e = a.wait_for("rename onto", Duration::from_secs(20), |e| {
        e["kind"] == "rename"
            && e["pid"] == pid
            && e["new_path"] == log.as_str()
            && e["ret"].is_i64()
    });
    assert_eq!(e["path"], fake);
    assert_eq!(e["tamper"]["kind"], "log_replaced");

    // Rotation inside the tree is recorded, but is not tamper.
    let rotated = format!("{log}.1");
    let (pid, _) = run(Command::new("mv").args([&log, &rotated]));
    let e = file_event(&a, "rename", &log, Some(pid));
    assert_eq!(e["new_path"], rotated);
    assert!(e.get("tamper").is_none(), "{e}");
    a.stop();
}

#[test]
fn failed_attempt_on_an_append_only_log_is_recorded() {
    let (dir, log) = setup("chattr");
    let chattr = Command::new("chattr").arg("+a").arg(&log).status();
    if !chattr.is_ok_and(|s| s.success()) {
        panic!(
            "chattr +a failed: this test needs a filesystem with append-only support (ext4 here)"
        );
    }
    let a = start(&dir);
    let (pid, st) = run(Command::new("python3").arg("-c").arg(format!(
        "import os,sys\ntry: os.unlink({log:?})\nexcept OSError as e: sys.exit(e.errno)"
    )));
    assert_eq!(st.code(), Some(libc::EPERM));
    let e = file_event(&a, "delete", &log, Some(pid));
    assert_eq!(e["ret"], -libc::EPERM);
    assert_eq!(e["errno"], "EPERM");
    assert_eq!(e["success"], false);
    assert_eq!(
        e["tamper"]["kind"], "log_deleted",
        "the attempt is what matters"
    );
    let _ = Command::new("chattr").arg("-a").arg(&log).status();
    a.stop();
}

#[test]
fn churn_outside_the_watched_trees_never_reaches_userspace() {
    let (dir, _log) = setup("quiet");
    let elsewhere = TempDir::new("churn");
    let a = start(&dir);
    let m = marker("churn");
    for i in 0..50 {
        let p = elsewhere.path().join(format!("{m}-{i}"));
        std::fs::write(&p, "x").unwrap();
        std::fs::remove_file(&p).unwrap();
    }
    // A watched deletion after the churn: once it is seen, the churn would have been too.
    let probe = format!("{}/probe.log", dir.str());
    std::fs::write(&probe, "p").unwrap();
    std::fs::remove_file(&probe).unwrap();
    file_event(&a, "delete", &probe, Some(std::process::id()));
    let leaked = a.all(|e| e["path"].as_str().is_some_and(|p| p.contains(&m)));
    assert!(leaked.is_empty(), "{leaked:?}");
    a.stop();
}

/// Python: finds the agent's one prog array (`FILE_TAILS`; its map ids are in
/// /proc/AGENT/fdinfo), opens it by id and deletes slot `BODY` (1), as an attacker with
/// CAP_BPF would to blind the file hooks.
const EMPTY_BODY_SLOT: &str = r#"
import ctypes, os, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
def bpf(cmd, attr):
    buf = ctypes.create_string_buffer(attr, 128)
    return libc.syscall(321, cmd, buf, 128)
ids = []
d = f"/proc/{sys.argv[1]}/fdinfo"
for fd in os.listdir(d):
    try:
        lines = open(f"{d}/{fd}").read().splitlines()
    except OSError:
        continue
    info = dict(l.split(":\t", 1) for l in lines if ":\t" in l)
    if info.get("map_type", "").strip() == "3":
        ids.append(int(info["map_id"]))
if len(ids) != 1:
    sys.exit(f"expected one prog array in the agent, found {ids}")
fd = bpf(14, struct.pack("I", ids[0]))
if fd < 0:
    sys.exit(f"BPF_MAP_GET_FD_BY_ID: errno {ctypes.get_errno()}")
key = ctypes.c_uint32(1)
if bpf(3, struct.pack("IIQ", fd, 0, ctypes.addressof(key))) != 0:
    sys.exit(f"BPF_MAP_DELETE_ELEM: errno {ctypes.get_errno()}")
"#;

#[test]
fn an_emptied_tail_call_slot_is_reported_as_handoff_loss() {
    let (dir, log) = setup("handoff");
    let a = start(&dir);
    let (pid, st) =
        run(Command::new("python3").args(["-c", EMPTY_BODY_SLOT, &a.pid().to_string()]));
    assert!(st.success(), "emptying FILE_TAILS[BODY] failed: {st:?}");
    // The tampering itself is seen by the bpf(2) guard.
    let g = a.wait_for("bpf map access", Duration::from_secs(20), |e| {
        e["kind"] == "bpf" && e["pid"] == pid && e["action"] == "map_get_fd_by_id"
    });
    assert_eq!(g["targets_agent"], true);
    assert_eq!(g["tamper"]["kind"], "agent_bpf_access");
    // The file hooks can no longer reach their body: the rm is not recorded, but every
    // hooked call is counted as lost, under its own source.
    let (_, st) = run(Command::new("/bin/rm").arg(&log));
    assert!(st.success());
    let loss = a.wait_for("kernel_handoff loss", Duration::from_secs(20), |e| {
        e["kind"] == "loss" && e["source"] == "kernel_handoff"
    });
    assert!(loss["records"].as_u64().unwrap() >= 1, "{loss}");
    assert_eq!(loss["bytes"], 0);
    assert!(loss["total_records"].as_u64().unwrap() >= loss["records"].as_u64().unwrap());
    let ring = a.all(|e| e["kind"] == "loss" && e["source"] == "kernel_ring_buffer");
    assert!(
        ring.is_empty(),
        "a hand-off failure is not a full ring: {ring:?}"
    );
    let seen = a.all(|e| e["kind"] == "delete" && e["path"] == log.as_str());
    assert!(seen.is_empty(), "{seen:?}");
    a.stop();
}
