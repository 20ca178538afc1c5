//! Tamper classification: which events destroy or hide evidence.
//!
//! Rules are data ([`FILE_RULES`], [`EXEC_RULES`]) so that each one can be read, tested
//! and documented on its own (docs/EVENTS.md lists them). Users add rules in TOML files
//! (`--rules FILE`, see [`UserRules`] and docs/EVENTS.md); a user rule is checked before
//! the built-in ones, so it can name a more specific kind. The built-in rules stay.

use std::path::{Path, PathBuf};

use serde::Deserialize;

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
    /// A symbolic link created at the watched name (or renamed over it) pointing
    /// somewhere else.
    Symlink,
    /// The same, pointing at /dev/null (or another sink device): writes vanish.
    LinkToNull,
}

impl FileAction {
    pub const ALL: [FileAction; 7] = [
        FileAction::Delete,
        FileAction::RenameAway,
        FileAction::RenameOnto,
        FileAction::Truncate,
        FileAction::Punch,
        FileAction::Symlink,
        FileAction::LinkToNull,
    ];

    /// The name used in rules files.
    pub fn name(self) -> &'static str {
        match self {
            FileAction::Delete => "delete",
            FileAction::RenameAway => "rename_away",
            FileAction::RenameOnto => "rename_onto",
            FileAction::Truncate => "truncate",
            FileAction::Punch => "punch",
            FileAction::Symlink => "symlink",
            FileAction::LinkToNull => "link_to_null",
        }
    }
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
    FileRule {
        action: FileAction::Symlink,
        scope: Scope::Tree,
        kind: "log_symlinked",
        reason: "a symbolic link was made at a watched log name (reads and writes go elsewhere)",
    },
    FileRule {
        action: FileAction::Symlink,
        scope: Scope::History,
        kind: "history_symlinked",
        reason: "a symbolic link was made at a shell history file name",
    },
    FileRule {
        action: FileAction::LinkToNull,
        scope: Scope::Tree,
        kind: "log_linked_to_null",
        reason: "a watched log name now links to a sink device: what is written there vanishes",
    },
    FileRule {
        action: FileAction::LinkToNull,
        scope: Scope::History,
        kind: "history_linked_to_null",
        reason: "a shell history file now links to a sink device: history is not kept",
    },
];

/// Symlink targets that swallow what is written to them.
pub fn is_sink_device(target: &str) -> bool {
    matches!(target, "/dev/null" | "/dev/zero" | "/dev/full")
}

/// Classifies a file event: user rules first, then the built-in table.
pub fn file(rules: &UserRules, action: FileAction, scope: Scope, ev: &FileOp) -> Option<Tamper> {
    if let Some(t) = rules.file(action, scope, ev) {
        return Some(t);
    }
    FILE_RULES
        .iter()
        .find(|r| r.action == action && r.scope == scope)
        .map(|r| Tamper {
            kind: r.kind.to_string(),
            reason: match &ev.target {
                Some(t) => format!("{}: {} -> {t}", r.reason, ev.path),
                None => format!("{}: {}", r.reason, ev.path),
            },
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

/// The program's base name and its arguments.
fn program_and_args(ev: &Exec) -> Option<(&str, &[String])> {
    let prog = ev.exe.as_deref().or(ev.argv.first().map(String::as_str))?;
    let base = prog.rsplit('/').next().unwrap_or(prog);
    Some((base, ev.argv.get(1..).unwrap_or(&[])))
}

/// Classifies a successful or attempted exec by what the command does: user rules
/// first, then the built-in table.
pub fn exec(rules: &UserRules, ev: &Exec) -> Option<Tamper> {
    if let Some(t) = rules.exec(ev) {
        return Some(t);
    }
    let (base, args) = program_and_args(ev)?;
    EXEC_RULES
        .iter()
        .find(|r| r.programs.contains(&base) && (r.args)(args))
        .map(|r| Tamper {
            kind: r.kind.to_string(),
            reason: format!("{}: {}", r.reason, ev.argv.join(" ")),
        })
}

/// Why a rules file was refused. Every message names the file, and the line where
/// the TOML parser or a check can point at one.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("rules file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("rules file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("rules file {path}: rule {index} ({section}, kind {kind:?}): {why}")]
    Invalid {
        path: PathBuf,
        section: &'static str,
        index: usize,
        kind: String,
        why: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    #[serde(default)]
    file: Vec<FileRuleSpec>,
    #[serde(default)]
    exec: Vec<ExecRuleSpec>,
}

/// `[[file]]` in a rules file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRuleSpec {
    kind: String,
    reason: String,
    /// delete, rename_away, rename_onto, truncate, punch, symlink, link_to_null.
    actions: Vec<String>,
    /// "tree" or "history"; both when absent.
    scope: Option<String>,
    /// Glob over the event's absolute path (`*` stays in a directory, `**` crosses).
    path: Option<String>,
    /// Only when the acting process's comm is one of these.
    comm: Option<Vec<String>>,
}

/// `[[exec]]` in a rules file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecRuleSpec {
    kind: String,
    reason: String,
    /// Base names of the executable (`exe`, else argv[0]).
    programs: Vec<String>,
    /// Some argument equals one of these.
    args_any: Option<Vec<String>>,
    /// Some argument starts with one of these.
    args_prefix: Option<Vec<String>>,
}

#[derive(Debug, Clone)]
struct UserFileRule {
    kind: String,
    reason: String,
    actions: Vec<FileAction>,
    scope: Option<Scope>,
    path: Option<globset::GlobMatcher>,
    comm: Option<Vec<String>>,
}

#[derive(Debug, Clone)]
struct UserExecRule {
    kind: String,
    reason: String,
    programs: Vec<String>,
    args_any: Option<Vec<String>>,
    args_prefix: Option<Vec<String>>,
}

/// Rules loaded from the user's rules files.
#[derive(Debug, Clone, Default)]
pub struct UserRules {
    file: Vec<UserFileRule>,
    exec: Vec<UserExecRule>,
    /// The files they came from.
    pub sources: Vec<PathBuf>,
}

/// A tamper kind: lowercase letters, digits and underscores (it is a query key).
fn valid_kind(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 64
        && k.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

impl UserRules {
    /// Loads and checks every file; the first problem refuses the whole set.
    pub fn load(paths: &[PathBuf]) -> Result<Self, RulesError> {
        let mut rules = UserRules::default();
        for p in paths {
            let text = std::fs::read_to_string(p).map_err(|source| RulesError::Read {
                path: p.clone(),
                source,
            })?;
            rules.add(p, &text)?;
        }
        Ok(rules)
    }

    /// Parses one file's text (`path` names it in errors).
    pub fn add(&mut self, path: &Path, text: &str) -> Result<(), RulesError> {
        let parsed: RulesFile = toml::from_str(text).map_err(|e| RulesError::Parse {
            path: path.to_path_buf(),
            message: toml_message(text, &e),
        })?;
        let invalid = |section, index: usize, kind: &str, why: String| RulesError::Invalid {
            path: path.to_path_buf(),
            section,
            index: index + 1,
            kind: kind.to_string(),
            why,
        };
        for (i, r) in parsed.file.into_iter().enumerate() {
            if !valid_kind(&r.kind) {
                return Err(invalid(
                    "file",
                    i,
                    &r.kind,
                    "kind must be 1-64 of a-z, 0-9, _".into(),
                ));
            }
            if r.actions.is_empty() {
                return Err(invalid("file", i, &r.kind, "actions is empty".into()));
            }
            let mut actions = Vec::new();
            for a in &r.actions {
                match FileAction::ALL.iter().find(|x| x.name() == a) {
                    Some(x) => actions.push(*x),
                    None => {
                        let allowed: Vec<&str> = FileAction::ALL.iter().map(|x| x.name()).collect();
                        return Err(invalid(
                            "file",
                            i,
                            &r.kind,
                            format!("unknown action {a:?}; allowed: {}", allowed.join(", ")),
                        ));
                    }
                }
            }
            let scope = match r.scope.as_deref() {
                None => None,
                Some("tree") => Some(Scope::Tree),
                Some("history") => Some(Scope::History),
                Some(other) => {
                    return Err(invalid(
                        "file",
                        i,
                        &r.kind,
                        format!("unknown scope {other:?}; allowed: tree, history"),
                    ));
                }
            };
            let path_glob = match &r.path {
                None => None,
                Some(g) => Some(
                    globset::GlobBuilder::new(g)
                        .literal_separator(true)
                        .build()
                        .map_err(|e| invalid("file", i, &r.kind, format!("path glob: {e}")))?
                        .compile_matcher(),
                ),
            };
            self.file.push(UserFileRule {
                kind: r.kind,
                reason: r.reason,
                actions,
                scope,
                path: path_glob,
                comm: r.comm,
            });
        }
        for (i, r) in parsed.exec.into_iter().enumerate() {
            if !valid_kind(&r.kind) {
                return Err(invalid(
                    "exec",
                    i,
                    &r.kind,
                    "kind must be 1-64 of a-z, 0-9, _".into(),
                ));
            }
            if r.programs.is_empty() {
                return Err(invalid("exec", i, &r.kind, "programs is empty".into()));
            }
            if let Some(p) = r.programs.iter().find(|p| p.contains('/')) {
                return Err(invalid(
                    "exec",
                    i,
                    &r.kind,
                    format!("programs are base names, not paths: {p:?}"),
                ));
            }
            self.exec.push(UserExecRule {
                kind: r.kind,
                reason: r.reason,
                programs: r.programs,
                args_any: r.args_any,
                args_prefix: r.args_prefix,
            });
        }
        self.sources.push(path.to_path_buf());
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.file.len() + self.exec.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn file(&self, action: FileAction, scope: Scope, ev: &FileOp) -> Option<Tamper> {
        self.file
            .iter()
            .find(|r| {
                r.actions.contains(&action)
                    && r.scope.is_none_or(|s| s == scope)
                    && r.path.as_ref().is_none_or(|g| g.is_match(&ev.path))
                    && r.comm.as_ref().is_none_or(|c| c.contains(&ev.process.comm))
            })
            .map(|r| Tamper {
                kind: r.kind.clone(),
                reason: format!("{}: {}", r.reason, ev.path),
            })
    }

    fn exec(&self, ev: &Exec) -> Option<Tamper> {
        let (base, args) = program_and_args(ev)?;
        self.exec
            .iter()
            .find(|r| {
                r.programs.iter().any(|p| p == base)
                    && r.args_any
                        .as_ref()
                        .is_none_or(|want| args.iter().any(|a| want.contains(a)))
                    && r.args_prefix.as_ref().is_none_or(|want| {
                        args.iter()
                            .any(|a| want.iter().any(|w| a.starts_with(w.as_str())))
                    })
            })
            .map(|r| Tamper {
                kind: r.kind.clone(),
                reason: format!("{}: {}", r.reason, ev.argv.join(" ")),
            })
    }
}

/// A TOML error as "line N, column M: message".
pub fn toml_message(text: &str, e: &toml::de::Error) -> String {
    let msg = e.message().trim_end().to_string();
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let col = before
                .rfind('\n')
                .map_or(before.len(), |i| before.len() - i - 1)
                + 1;
            format!("line {line}, column {col}: {msg}")
        }
        None => msg,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ex(exe: &str, argv: &[&str]) -> Exec {
        Exec {
            exe: Some(exe.into()),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn kind(exe: &str, argv: &[&str]) -> Option<String> {
        exec(&UserRules::default(), &ex(exe, argv)).map(|t| t.kind)
    }

    #[test]
    fn every_file_action_has_a_rule_for_every_scope() {
        let ev = FileOp {
            path: "/var/log/x".into(),
            ..Default::default()
        };
        let none = UserRules::default();
        for a in FileAction::ALL {
            for s in [Scope::Tree, Scope::History] {
                assert!(file(&none, a, s, &ev).is_some(), "{a:?} {s:?}");
            }
        }
        assert_eq!(
            file(&none, FileAction::Punch, Scope::Tree, &ev).map(|t| t.kind),
            Some("log_punched".into())
        );
    }

    #[test]
    fn exec_rules() {
        assert_eq!(
            kind("/usr/sbin/auditctl", &["auditctl", "-D"]),
            Some("audit_rules_deleted".into())
        );
        assert_eq!(
            kind("/usr/sbin/auditctl", &["auditctl", "-e", "0"]),
            Some("audit_disabled".into())
        );
        assert_eq!(kind("/usr/sbin/auditctl", &["auditctl", "-e", "1"]), None);
        assert_eq!(
            kind("/usr/bin/journalctl", &["journalctl", "--vacuum-time=1s"]),
            Some("journal_vacuumed".into())
        );
        assert_eq!(kind("/usr/bin/journalctl", &["journalctl", "-f"]), None);
        assert_eq!(
            kind("/usr/bin/dmesg", &["dmesg", "-C"]),
            Some("kernel_ring_cleared".into())
        );
        assert_eq!(kind("/usr/bin/dmesg", &["dmesg", "-T"]), None);
        assert_eq!(
            kind("/usr/bin/shred", &["shred", "-u", "/var/log/x"]),
            Some("shredding_tool".into())
        );
        assert_eq!(
            kind(
                "/usr/bin/systemctl",
                &["systemctl", "stop", "rsyslog.service"]
            ),
            Some("logging_stopped".into())
        );
        assert_eq!(
            kind("/usr/bin/systemctl", &["systemctl", "status", "rsyslog"]),
            None
        );
        assert_eq!(
            kind("/usr/bin/pkill", &["pkill", "auditd"]),
            Some("logging_stopped".into())
        );
        assert_eq!(
            kind(
                "/usr/bin/ln",
                &["ln", "-sf", "/dev/null", "/root/.bash_history"]
            ),
            Some("history_linked_to_null".into())
        );
        assert_eq!(kind("/usr/bin/ls", &["ls", "-D"]), None);
    }

    const RULES: &str = r#"
# A site rule: nginx logs get their own kind.
[[file]]
kind = "nginx_log_deleted"
reason = "an nginx log was deleted"
actions = ["delete", "truncate"]
scope = "tree"
path = "/var/log/nginx/**"

[[exec]]
kind = "logrotate_forced"
reason = "a forced rotation"
programs = ["logrotate"]
args_any = ["-f", "--force"]
"#;

    #[test]
    fn user_rules_come_first_and_match_exactly() {
        let mut r = UserRules::default();
        r.add(Path::new("site.toml"), RULES).unwrap();
        assert_eq!(r.len(), 2);
        let ev = |path: &str| FileOp {
            path: path.into(),
            ..Default::default()
        };
        let t = file(
            &r,
            FileAction::Delete,
            Scope::Tree,
            &ev("/var/log/nginx/a/access.log"),
        );
        assert_eq!(t.unwrap().kind, "nginx_log_deleted");
        // Outside the glob: the built-in kind.
        let t = file(&r, FileAction::Delete, Scope::Tree, &ev("/var/log/syslog"));
        assert_eq!(t.unwrap().kind, "log_deleted");
        // Not one of the rule's actions.
        let t = file(&r, FileAction::Punch, Scope::Tree, &ev("/var/log/nginx/x"));
        assert_eq!(t.unwrap().kind, "log_punched");
        let e = ex(
            "/usr/sbin/logrotate",
            &["logrotate", "-f", "/etc/logrotate.conf"],
        );
        assert_eq!(exec(&r, &e).unwrap().kind, "logrotate_forced");
        let e = ex("/usr/sbin/logrotate", &["logrotate", "/etc/logrotate.conf"]);
        assert!(exec(&r, &e).is_none());
    }

    fn err(text: &str) -> String {
        UserRules::default()
            .add(Path::new("r.toml"), text)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn bad_rules_files_are_refused_with_the_line_or_the_rule() {
        let e = err("[[file]]\nkind = \"x\"\nreason = \"y\"\nactions = [\"delete\"]\ncolour = 1\n");
        assert!(
            e.starts_with("rules file r.toml: line 5, column 1: unknown field `colour`"),
            "{e}"
        );
        let e = err("[[file]]\nkind = \"x\"\nreason = \"y\"\nactions = [\"erase\"]\n");
        assert!(
            e.contains("rule 1 (file, kind \"x\"): unknown action \"erase\"; allowed: delete"),
            "{e}"
        );
        let e = err("[[exec]]\nkind = \"Bad Kind\"\nreason = \"y\"\nprograms = [\"a\"]\n");
        assert!(e.contains("kind must be"), "{e}");
        let e = err("[[exec]]\nkind = \"k\"\nreason = \"y\"\nprograms = [\"/bin/a\"]\n");
        assert!(e.contains("base names"), "{e}");
        let e =
            err("[[file]]\nkind = \"k\"\nreason = \"y\"\nactions = [\"delete\"]\npath = \"[\"\n");
        assert!(e.contains("path glob"), "{e}");
        let e = err("[[file]]\nkind = 3\n");
        assert!(e.contains("line 2"), "{e}");
        let e = UserRules::load(&[PathBuf::from("/nonexistent/rules.toml")]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("rules file /nonexistent/rules.toml: "),
            "{e}"
        );
    }
}
