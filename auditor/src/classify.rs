//! Tamper classification: which events destroy or hide evidence.
//!
//! Rules are data ([`FILE_RULES`], [`EXEC_RULES`]) so that each one can be read, tested
//! and documented on its own (docs/EVENTS.md lists them). A later version loads extra
//! rules from a file; the built-in ones stay.

use crate::{
    event::{Exec, FileOp, Tamper},
    watchlist::Scope,
};

/// What happened to a watched path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileAction {
    Delete,
    /// The path is the source of a rename whose destination is outside every watched tree.
    RenameAway,
    /// The path is the destination of a rename whose source is outside: it is replaced.
    RenameOnto,
    Truncate,
    /// Part of the file erased in place (fallocate PUNCH_HOLE / COLLAPSE / ZERO).
    Punch,
}

/// A built-in file rule: (action, scope) -> tamper kind.
pub struct FileRule {
    pub action: FileAction,
    pub scope: Scope,
    pub kind: &'static str,
    pub reason: &'static str,
}

pub const FILE_RULES: &[FileRule] = &[
    FileRule {
        action: FileAction::Delete,
        scope: Scope::Tree,
        kind: "log_deleted",
        reason: "a file in a watched log tree was deleted",
    },
    FileRule {
        action: FileAction::RenameAway,
        scope: Scope::Tree,
        kind: "log_renamed_away",
        reason: "a log was moved out of its watched tree",
    },
    FileRule {
        action: FileAction::RenameOnto,
        scope: Scope::Tree,
        kind: "log_replaced",
        reason: "a file from outside was renamed over a watched log",
    },
    FileRule {
        action: FileAction::Truncate,
        scope: Scope::Tree,
        kind: "log_truncated",
        reason: "a watched log was truncated",
    },
    FileRule {
        action: FileAction::Punch,
        scope: Scope::Tree,
        kind: "log_punched",
        reason: "part of a watched log was erased in place (fallocate)",
    },
    FileRule {
        action: FileAction::Punch,
        scope: Scope::History,
        kind: "history_punched",
        reason: "part of a shell history file was erased in place (fallocate)",
    },
    FileRule {
        action: FileAction::Delete,
        scope: Scope::History,
        kind: "history_deleted",
        reason: "a shell history file was deleted",
    },
    FileRule {
        action: FileAction::RenameAway,
        scope: Scope::History,
        kind: "history_renamed_away",
        reason: "a shell history file was moved away",
    },
    FileRule {
        action: FileAction::RenameOnto,
        scope: Scope::History,
        kind: "history_replaced",
        reason: "a shell history file was replaced by a rename",
    },
    FileRule {
        action: FileAction::Truncate,
        scope: Scope::History,
        kind: "history_truncated",
        reason: "a shell history file was truncated",
    },
];

pub fn file(action: FileAction, scope: Scope, ev: &FileOp) -> Option<Tamper> {
    FILE_RULES
        .iter()
        .find(|r| r.action == action && r.scope == scope)
        .map(|r| Tamper {
            kind: r.kind,
            reason: format!("{}: {}", r.reason, ev.path),
        })
}

/// A built-in exec rule: the program's base name and a predicate on its arguments.
pub struct ExecRule {
    pub programs: &'static [&'static str],
    pub kind: &'static str,
    pub reason: &'static str,
    /// argv[1..] must satisfy this.
    pub args: fn(&[String]) -> bool,
}

fn any(args: &[String], f: impl Fn(&str) -> bool) -> bool {
    args.iter().any(|a| f(a))
}

const LOGGING_DAEMONS: &[&str] = &[
    "rsyslog",
    "rsyslogd",
    "systemd-journald",
    "journald",
    "auditd",
    "syslog-ng",
    "syslogd",
    "auditor",
];

fn names_logging_daemon(a: &str) -> bool {
    let a = a.trim_end_matches(".service").trim_end_matches(".socket");
    LOGGING_DAEMONS.contains(&a)
}

pub const EXEC_RULES: &[ExecRule] = &[
    ExecRule {
        programs: &["auditctl"],
        kind: "audit_rules_deleted",
        reason: "auditctl -D deletes every audit rule",
        args: |a| any(a, |x| x == "-D"),
    },
    ExecRule {
        programs: &["auditctl"],
        kind: "audit_disabled",
        reason: "auditctl -e 0 disables kernel auditing",
        args: |a| a.windows(2).any(|w| w[0] == "-e" && w[1] == "0"),
    },
    ExecRule {
        programs: &["journalctl"],
        kind: "journal_vacuumed",
        reason: "journalctl vacuum/rotate removes journal files",
        args: |a| {
            any(a, |x| {
                x.starts_with("--vacuum-") || x == "--rotate" || x == "--flush"
            })
        },
    },
    ExecRule {
        programs: &["dmesg"],
        kind: "kernel_ring_cleared",
        reason: "dmesg -c/-C clears the kernel ring buffer",
        args: |a| {
            any(a, |x| {
                x == "--clear"
                    || x == "--read-clear"
                    || (x.starts_with('-')
                        && !x.starts_with("--")
                        && (x.contains('c') || x.contains('C')))
            })
        },
    },
    ExecRule {
        programs: &["shred", "wipe", "srm"],
        kind: "shredding_tool",
        reason: "a shredding tool was run",
        args: |_| true,
    },
    ExecRule {
        programs: &["systemctl", "service"],
        kind: "logging_stopped",
        reason: "a logging or auditing service was stopped or disabled",
        args: |a| {
            any(a, |x| {
                matches!(x, "stop" | "kill" | "disable" | "mask" | "restart")
            }) && any(a, names_logging_daemon)
        },
    },
    ExecRule {
        programs: &["kill", "pkill", "killall"],
        kind: "logging_stopped",
        reason: "a logging or auditing daemon was signalled",
        args: |a| any(a, names_logging_daemon),
    },
    ExecRule {
        programs: &["ln"],
        kind: "history_linked_to_null",
        reason: "a history file was linked to /dev/null",
        args: |a| any(a, |x| x == "/dev/null") && any(a, |x| x.ends_with("history")),
    },
];

/// Classifies a successful or attempted exec by what the command does.
pub fn exec(ev: &Exec) -> Option<Tamper> {
    let prog = ev.exe.as_deref().or(ev.argv.first().map(String::as_str))?;
    let base = prog.rsplit('/').next().unwrap_or(prog);
    let args = ev.argv.get(1..).unwrap_or(&[]);
    EXEC_RULES
        .iter()
        .find(|r| r.programs.contains(&base) && (r.args)(args))
        .map(|r| Tamper {
            kind: r.kind,
            reason: format!("{}: {}", r.reason, ev.argv.join(" ")),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(exe: &str, argv: &[&str]) -> Exec {
        Exec {
            exe: Some(exe.into()),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn kind(exe: &str, argv: &[&str]) -> Option<&'static str> {
        exec(&ex(exe, argv)).map(|t| t.kind)
    }

    #[test]
    fn every_file_action_has_a_rule_for_every_scope() {
        let ev = FileOp {
            path: "/var/log/x".into(),
            ..Default::default()
        };
        for a in [
            FileAction::Delete,
            FileAction::RenameAway,
            FileAction::RenameOnto,
            FileAction::Truncate,
            FileAction::Punch,
        ] {
            for s in [Scope::Tree, Scope::History] {
                assert!(file(a, s, &ev).is_some(), "{a:?} {s:?}");
            }
        }
        assert_eq!(
            file(FileAction::Punch, Scope::Tree, &ev).map(|t| t.kind),
            Some("log_punched")
        );
    }

    #[test]
    fn exec_rules() {
        assert_eq!(
            kind("/usr/sbin/auditctl", &["auditctl", "-D"]),
            Some("audit_rules_deleted")
        );
        assert_eq!(
            kind("/usr/sbin/auditctl", &["auditctl", "-e", "0"]),
            Some("audit_disabled")
        );
        assert_eq!(kind("/usr/sbin/auditctl", &["auditctl", "-e", "1"]), None);
        assert_eq!(
            kind("/usr/bin/journalctl", &["journalctl", "--vacuum-time=1s"]),
            Some("journal_vacuumed")
        );
        assert_eq!(kind("/usr/bin/journalctl", &["journalctl", "-f"]), None);
        assert_eq!(
            kind("/usr/bin/dmesg", &["dmesg", "-C"]),
            Some("kernel_ring_cleared")
        );
        assert_eq!(kind("/usr/bin/dmesg", &["dmesg", "-T"]), None);
        assert_eq!(
            kind("/usr/bin/shred", &["shred", "-u", "/var/log/x"]),
            Some("shredding_tool")
        );
        assert_eq!(
            kind(
                "/usr/bin/systemctl",
                &["systemctl", "stop", "rsyslog.service"]
            ),
            Some("logging_stopped")
        );
        assert_eq!(
            kind("/usr/bin/systemctl", &["systemctl", "status", "rsyslog"]),
            None
        );
        assert_eq!(
            kind("/usr/bin/pkill", &["pkill", "auditd"]),
            Some("logging_stopped")
        );
        assert_eq!(
            kind(
                "/usr/bin/ln",
                &["ln", "-sf", "/dev/null", "/root/.bash_history"]
            ),
            Some("history_linked_to_null")
        );
        assert_eq!(kind("/usr/bin/ls", &["ls", "-D"]), None);
    }
}
