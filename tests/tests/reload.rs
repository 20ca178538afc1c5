//! SIGHUP reloads the rules files (and re-resolves the watch paths) while the programs
//! stay attached: an event right after the reload is classified by the new rules, and
//! a broken rules file is refused with the old configuration kept.
#![allow(clippy::unwrap_used)]

use std::{process::Command, time::Duration};

use auditor_integration::{Auditor, TempDir, run};

const SITE_RULE: &str = r#"
[[file]]
kind = "site_log_deleted"
reason = "a log of the site's app was deleted"
actions = ["delete"]
path = "**/site-*.log"
"#;

#[test]
fn sighup_applies_new_rules_and_refuses_broken_ones() {
    let dir = TempDir::new("reload");
    let rules_dir = TempDir::new("rules");
    let rules = format!("{}/rules.toml", rules_dir.str());
    std::fs::write(&rules, "# no rules yet\n").unwrap();
    let (first, second) = (
        format!("{}/site-a.log", dir.str()),
        format!("{}/site-b.log", dir.str()),
    );
    std::fs::write(&first, "x").unwrap();
    std::fs::write(&second, "x").unwrap();
    let a = Auditor::start(&["--path", dir.str(), "--rules", &rules]);

    let (pid, _) = run(Command::new("rm").arg(&first));
    let e = a.wait_for("delete before the reload", Duration::from_secs(20), |e| {
        e["kind"] == "delete" && e["pid"] == pid && e["ret"].is_i64()
    });
    assert_eq!(e["tamper"]["kind"], "log_deleted");

    std::fs::write(&rules, SITE_RULE).unwrap();
    a.signal(libc::SIGHUP);
    let r = a.wait_for("reload", Duration::from_secs(20), |e| {
        e["kind"] == "agent_reload"
    });
    assert!(r["error"].is_null(), "{r}");
    assert_eq!(r["user_rules"], 1);
    assert_eq!(r["rule_files"][0], rules);
    let (pid, _) = run(Command::new("rm").arg(&second));
    let e = a.wait_for("delete after the reload", Duration::from_secs(20), |e| {
        e["kind"] == "delete" && e["pid"] == pid && e["ret"].is_i64()
    });
    assert_eq!(e["tamper"]["kind"], "site_log_deleted");

    // A broken file: refused, said, and the rules in force stay.
    std::fs::write(&rules, "[[file]]\nkind = \"x\"\nbogus = 1\n").unwrap();
    a.signal(libc::SIGHUP);
    let r = a.wait_for("refused reload", Duration::from_secs(20), |e| {
        e["kind"] == "agent_reload" && e["error"].is_string()
    });
    let why = r["error"].as_str().unwrap();
    assert!(
        why.contains("rules.toml") && why.contains("line 3"),
        "{why}"
    );
    let third = format!("{}/site-c.log", dir.str());
    std::fs::write(&third, "x").unwrap();
    let (pid, _) = run(Command::new("rm").arg(&third));
    let e = a.wait_for(
        "delete after the refused reload",
        Duration::from_secs(20),
        |e| e["kind"] == "delete" && e["pid"] == pid && e["ret"].is_i64(),
    );
    assert_eq!(e["tamper"]["kind"], "site_log_deleted");
    a.stop();
}

#[test]
fn sighup_moves_the_watch_to_the_paths_of_the_edited_config_file() {
    let (old, new) = (TempDir::new("watch-old"), TempDir::new("watch-new"));
    let cfg_dir = TempDir::new("cfg");
    let cfg = format!("{}/auditor.toml", cfg_dir.str());
    std::fs::write(&cfg, format!("paths = [{:?}]\n", old.str())).unwrap();
    let a = Auditor::start(&["--config", &cfg]);
    let in_old = format!("{}/before.log", old.str());
    std::fs::write(&in_old, "x").unwrap();
    let (pid, _) = run(Command::new("rm").arg(&in_old));
    a.wait_for("delete in the old tree", Duration::from_secs(20), |e| {
        e["kind"] == "delete" && e["pid"] == pid && e["path"] == in_old.as_str()
    });

    std::fs::write(&cfg, format!("paths = [{:?}]\n", new.str())).unwrap();
    a.signal(libc::SIGHUP);
    let r = a.wait_for("reload", Duration::from_secs(20), |e| {
        e["kind"] == "agent_reload"
    });
    assert!(r["error"].is_null(), "{r}");
    assert_eq!(r["watch_paths"], serde_json::json!([new.str()]));

    let (in_old, in_new) = (
        format!("{}/after.log", old.str()),
        format!("{}/after.log", new.str()),
    );
    std::fs::write(&in_old, "x").unwrap();
    std::fs::write(&in_new, "x").unwrap();
    let (old_pid, _) = run(Command::new("rm").arg(&in_old));
    let (new_pid, _) = run(Command::new("rm").arg(&in_new));
    let e = a.wait_for("delete in the new tree", Duration::from_secs(20), |e| {
        e["kind"] == "delete" && e["pid"] == new_pid && e["ret"].is_i64()
    });
    assert_eq!(e["path"], in_new);
    assert_eq!(e["tamper"]["kind"], "log_deleted");
    // The old tree is no longer watched: its delete (made first) never reached userspace.
    let (_, events) = a.stop_and_collect();
    assert!(
        !events
            .iter()
            .any(|e| e["kind"] == "delete" && e["pid"] == old_pid),
        "a delete in the tree no longer watched was reported"
    );
}
