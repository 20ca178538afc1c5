//! PII redaction of command lines, applied before an event is spooled or sent: a secret
//! typed on a command line must not leave the host (and must not sit in the spool either).
//!
//! Redaction works on the serialized event (a JSON object), on the strings of `argv` and on
//! `filename`. Each rule can be turned off. Every change is marked in the event itself:
//! `"redacted": ["argv[2]:password", "argv[4]:email"]` (field, then rule), so a reader of
//! the vault knows the value was there and was removed on purpose, and by which rule.
//!
//! Rules (docs/DELIVERY.md has the table with examples):
//! - `password`: the value of `--password VALUE`, `--password=VALUE`, `--passwd[=]VALUE`
//!   for any program; `-p VALUE` and `-pVALUE` only for programs listed in
//!   [`Redactor::short_p_programs`] (mysql and friends, sshpass), because for most programs
//!   `-p` means something else (`mkdir -p`, `ssh -p 22`, `cp -p`).
//! - `url_credentials`: the password of `scheme://user:password@host` (the user is kept).
//! - `bearer`: the credentials of `Authorization: Bearer|Basic|Token X` and of a bare
//!   `bearer X` where X looks like a token (8 or more token characters).
//! - `email`: e-mail addresses.

use std::sync::LazyLock;

use regex::Regex;
use serde_json::Value;

/// What a redacted value is replaced by.
pub const MARK: &str = "[REDACTED]";

/// The redaction rules in force. `Default` turns every rule on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redactor {
    pub password: bool,
    pub url_credentials: bool,
    pub bearer: bool,
    pub email: bool,
    /// Programs (basename of argv[0] or of the executed file) for which `-p VALUE` and
    /// `-pVALUE` carry a password.
    pub short_p_programs: Vec<String>,
}

/// The programs whose `-p` is a password by default.
pub const DEFAULT_SHORT_P_PROGRAMS: &[&str] = &[
    "mysql",
    "mysqldump",
    "mysqladmin",
    "mysqlimport",
    "mysqlcheck",
    "mysqlshow",
    "mysqlpump",
    "mariadb",
    "mariadb-dump",
    "mariadb-admin",
    "sshpass",
];

impl Default for Redactor {
    fn default() -> Self {
        Redactor {
            password: true,
            url_credentials: true,
            bearer: true,
            email: true,
            short_p_programs: DEFAULT_SHORT_P_PROGRAMS
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
        }
    }
}

static URL_CREDENTIALS: LazyLock<Regex> = LazyLock::new(|| {
    // scheme://user:password@ ; the password may contain '@' (greedy up to the last '@'
    // before the path) but not '/' or whitespace.
    #[allow(clippy::unwrap_used)] // a constant pattern, covered by the tests
    Regex::new(r"([A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*):([^/\s]*)@").unwrap()
});

static AUTH_HEADER: LazyLock<Regex> = LazyLock::new(|| {
    #[allow(clippy::unwrap_used)] // a constant pattern, covered by the tests
    Regex::new(r"(?i)(authorization\s*[:=]\s*(?:bearer|basic|token|digest)\s+)\S+").unwrap()
});

static BARE_BEARER: LazyLock<Regex> = LazyLock::new(|| {
    #[allow(clippy::unwrap_used)] // a constant pattern, covered by the tests
    Regex::new(r"(?i)\b(bearer[\s=:]+)[A-Za-z0-9._~+/=-]{8,}").unwrap()
});

static EMAIL: LazyLock<Regex> = LazyLock::new(|| {
    #[allow(clippy::unwrap_used)] // a constant pattern, covered by the tests
    Regex::new(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}").unwrap()
});

impl Redactor {
    /// No rule: events pass unchanged.
    pub fn disabled() -> Self {
        Redactor {
            password: false,
            url_credentials: false,
            bearer: false,
            email: false,
            short_p_programs: Vec::new(),
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.password || self.url_credentials || self.bearer || self.email
    }

    /// Redacts `argv` and `filename` of a serialized event in place and appends what was
    /// done to its `redacted` array (created when something was redacted). Returns the
    /// number of redactions. A value that is not an object, or fields that are not
    /// strings, are left alone.
    pub fn redact_event(&self, event: &mut Value) -> usize {
        if !self.is_enabled() {
            return 0;
        }
        let Some(obj) = event.as_object_mut() else {
            return 0;
        };
        let mut marks: Vec<String> = Vec::new();
        let filename = obj
            .get("filename")
            .and_then(Value::as_str)
            .map(str::to_owned);
        if let Some(Value::Array(argv)) = obj.get_mut("argv") {
            let program = argv
                .first()
                .and_then(Value::as_str)
                .or(filename.as_deref())
                .map(basename)
                .unwrap_or("")
                .to_owned();
            let mut args: Vec<Option<String>> =
                argv.iter().map(|v| v.as_str().map(str::to_owned)).collect();
            self.redact_argv(&program, &mut args, &mut marks);
            for (slot, new) in argv.iter_mut().zip(args) {
                if let Some(new) = new
                    && slot.as_str() != Some(new.as_str())
                {
                    *slot = Value::String(new);
                }
            }
        }
        if let Some(Value::String(f)) = obj.get_mut("filename") {
            for rule in self.redact_text(f) {
                marks.push(format!("filename:{rule}"));
            }
        }
        let n = marks.len();
        if n > 0 {
            let list = obj
                .entry("redacted")
                .or_insert_with(|| Value::Array(Vec::new()));
            if !list.is_array() {
                *list = Value::Array(Vec::new());
            }
            if let Value::Array(list) = list {
                list.extend(marks.into_iter().map(Value::String));
            }
        }
        n
    }

    /// The argv rules; `args[i] == None` is a non-string element, skipped.
    fn redact_argv(&self, program: &str, args: &mut [Option<String>], marks: &mut Vec<String>) {
        let short_p = self.password && self.short_p_programs.iter().any(|p| p == program);
        let mut redact_next = false;
        for (i, slot) in args.iter_mut().enumerate() {
            let Some(arg) = slot.as_mut() else {
                redact_next = false;
                continue;
            };
            if i == 0 {
                // The program name itself: only the free-text rules.
                for rule in self.redact_text(arg) {
                    marks.push(format!("argv[{i}]:{rule}"));
                }
                continue;
            }
            if redact_next {
                redact_next = false;
                if !arg.is_empty() {
                    *arg = MARK.to_owned();
                    marks.push(format!("argv[{i}]:password"));
                    continue;
                }
            }
            if self.password {
                match password_flag(arg, short_p) {
                    PasswordFlag::None => {}
                    PasswordFlag::ValueFollows => {
                        redact_next = true;
                        continue;
                    }
                    PasswordFlag::Inline(prefix_len) => {
                        if arg.len() > prefix_len {
                            arg.truncate(prefix_len);
                            arg.push_str(MARK);
                            marks.push(format!("argv[{i}]:password"));
                        }
                        continue;
                    }
                }
            }
            for rule in self.redact_text(arg) {
                marks.push(format!("argv[{i}]:{rule}"));
            }
        }
    }

    /// The rules that apply inside any string; returns the names of those that fired.
    fn redact_text(&self, s: &mut String) -> Vec<&'static str> {
        let mut fired = Vec::new();
        if self.url_credentials && replace(s, &URL_CREDENTIALS, &format!("$1:{MARK}@")) {
            fired.push("url_credentials");
        }
        if self.bearer {
            let a = replace(s, &AUTH_HEADER, &format!("${{1}}{MARK}"));
            let b = replace(s, &BARE_BEARER, &format!("${{1}}{MARK}"));
            if a || b {
                fired.push("bearer");
            }
        }
        if self.email && replace(s, &EMAIL, MARK) {
            fired.push("email");
        }
        fired
    }
}

enum PasswordFlag {
    None,
    /// `--password` / `-p`: the next argument is the secret.
    ValueFollows,
    /// `--password=S` / `-pS`: the secret starts at this byte offset.
    Inline(usize),
}

fn password_flag(arg: &str, short_p: bool) -> PasswordFlag {
    for long in ["--password", "--passwd"] {
        if arg == long {
            return PasswordFlag::ValueFollows;
        }
        if let Some(rest) = arg.strip_prefix(long)
            && rest.starts_with('=')
        {
            return PasswordFlag::Inline(long.len() + 1);
        }
    }
    if short_p {
        if arg == "-p" {
            return PasswordFlag::ValueFollows;
        }
        if arg.starts_with("-p") && arg.len() > 2 {
            return PasswordFlag::Inline(2);
        }
    }
    PasswordFlag::None
}

fn basename(s: &str) -> &str {
    s.rsplit('/').next().unwrap_or(s)
}

/// Replaces every match; true when something changed.
fn replace(s: &mut String, re: &Regex, with: &str) -> bool {
    if !re.is_match(s) {
        return false;
    }
    let new = re.replace_all(s, with).into_owned();
    let changed = new != *s;
    *s = new;
    changed
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use serde_json::json;

    use super::*;

    fn run(r: &Redactor, argv: &[&str]) -> (Vec<String>, Vec<String>) {
        let mut ev = json!({"kind": "exec", "filename": argv[0], "argv": argv});
        r.redact_event(&mut ev);
        let argv = ev["argv"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect();
        let marks = ev
            .get("redacted")
            .map(|m| {
                m.as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default();
        (argv, marks)
    }

    fn all() -> Redactor {
        Redactor::default()
    }

    #[test]
    fn long_password_flags_any_program() {
        let (a, m) = run(&all(), &["/usr/bin/tool", "--password", "hunter2", "x"]);
        assert_eq!(a, ["/usr/bin/tool", "--password", MARK, "x"]);
        assert_eq!(m, ["argv[2]:password"]);
        let (a, m) = run(&all(), &["tool", "--password=hunter2"]);
        assert_eq!(a, ["tool", "--password=[REDACTED]"]);
        assert_eq!(m, ["argv[1]:password"]);
        let (a, _) = run(&all(), &["tool", "--passwd=s3cr3t"]);
        assert_eq!(a, ["tool", "--passwd=[REDACTED]"]);
    }

    #[test]
    fn long_password_negative() {
        // Not the flag: a longer option name, an empty value, the flag as the last word.
        let argv = ["tool", "--password-file", "/etc/pw", "--password="];
        let (a, m) = run(&all(), &argv);
        assert_eq!(a, argv);
        assert!(m.is_empty());
        let (a, m) = run(&all(), &["tool", "--password"]);
        assert_eq!(a, ["tool", "--password"]);
        assert!(m.is_empty());
    }

    #[test]
    fn short_p_for_mysql_style_programs() {
        let (a, m) = run(&all(), &["/usr/bin/mysql", "-u", "root", "-phunter2", "db"]);
        assert_eq!(a, ["/usr/bin/mysql", "-u", "root", "-p[REDACTED]", "db"]);
        assert_eq!(m, ["argv[3]:password"]);
        let (a, m) = run(&all(), &["sshpass", "-p", "hunter2", "ssh", "host"]);
        assert_eq!(a, ["sshpass", "-p", MARK, "ssh", "host"]);
        assert_eq!(m, ["argv[2]:password"]);
    }

    #[test]
    fn short_p_negative_for_other_programs() {
        for argv in [
            &["mkdir", "-p", "/tmp/a/b"][..],
            &["ssh", "-p", "2222", "host"],
            &["find", ".", "-print"],
            &["cp", "-pr", "a", "b"],
            &["mysql", "-u", "root", "db"],
        ] {
            let (a, m) = run(&all(), argv);
            assert_eq!(a, argv, "{argv:?}");
            assert!(m.is_empty(), "{argv:?}: {m:?}");
        }
        // The list is configuration: without mysql in it, -pX stays.
        let r = Redactor {
            short_p_programs: vec![],
            ..Redactor::default()
        };
        let (a, _) = run(&r, &["mysql", "-phunter2"]);
        assert_eq!(a, ["mysql", "-phunter2"]);
    }

    #[test]
    fn url_credentials() {
        let (a, m) = run(
            &all(),
            &["curl", "https://alice:p@ss:w0rd@example.com/x?y=1"],
        );
        assert_eq!(a, ["curl", "https://alice:[REDACTED]@example.com/x?y=1"]);
        assert_eq!(m, ["argv[1]:url_credentials"]);
        let (a, _) = run(
            &all(),
            &["git", "clone", "https://bob:tok@git.example/r.git"],
        );
        assert_eq!(a[2], "https://bob:[REDACTED]@git.example/r.git");
    }

    #[test]
    fn url_credentials_negative() {
        for argv in [
            &["curl", "https://example.com:8443/path"][..],
            &["curl", "http://example.com/a@b"],
            &["scp", "file", "host:/tmp/x"],
            &["psql", "postgres://localhost:5432/db"],
        ] {
            let (a, m) = run(&all(), argv);
            assert_eq!(a, argv, "{argv:?}");
            assert!(m.is_empty(), "{argv:?}: {m:?}");
        }
    }

    #[test]
    fn bearer_tokens() {
        let (a, m) = run(
            &all(),
            &[
                "curl",
                "-H",
                "Authorization: Bearer eyJhbGciOi.abc.def",
                "https://api",
            ],
        );
        assert_eq!(a[2], "Authorization: Bearer [REDACTED]");
        assert_eq!(m, ["argv[2]:bearer"]);
        let (a, _) = run(&all(), &["curl", "-H", "authorization: basic dXNlcjpwYXNz"]);
        assert_eq!(a[2], "authorization: basic [REDACTED]");
        let (a, m) = run(&all(), &["tool", "--auth", "bearer abcdefgh12345678"]);
        assert_eq!(a[2], "bearer [REDACTED]");
        assert_eq!(m, ["argv[2]:bearer"]);
    }

    #[test]
    fn bearer_negative() {
        for argv in [
            &["echo", "the bearer of bad news"][..],
            &["curl", "-H", "Accept: application/json"],
            &["grep", "-r", "Bearer"],
        ] {
            let (a, m) = run(&all(), argv);
            assert_eq!(a, argv, "{argv:?}");
            assert!(m.is_empty(), "{argv:?}: {m:?}");
        }
    }

    #[test]
    fn email_addresses() {
        let (a, m) = run(
            &all(),
            &["mail", "-s", "hi", "alice.smith+x@mail.example.org"],
        );
        assert_eq!(a[3], MARK);
        assert_eq!(m, ["argv[3]:email"]);
        let (a, _) = run(&all(), &["git", "config", "user.email=bob@example.com"]);
        assert_eq!(a[2], "user.email=[REDACTED]");
    }

    #[test]
    fn email_negative() {
        for argv in [
            &["ssh", "root@10.0.0.1"][..],
            &["echo", "@everyone", "a@b"],
            &["npm", "i", "@types/node@20"],
        ] {
            let (a, m) = run(&all(), argv);
            assert_eq!(a, argv, "{argv:?}");
            assert!(m.is_empty(), "{argv:?}: {m:?}");
        }
    }

    #[test]
    fn each_rule_can_be_turned_off() {
        let argv = [
            "curl",
            "--password=pw",
            "https://u:pw@h/",
            "bearer abcdefgh12345678",
            "a@example.com",
        ];
        let (a, m) = run(&Redactor::disabled(), &argv);
        assert_eq!(a, argv);
        assert!(m.is_empty());
        let only = |f: fn(&mut Redactor)| {
            let mut r = Redactor::disabled();
            f(&mut r);
            run(&r, &argv).1
        };
        assert_eq!(only(|r| r.password = true), ["argv[1]:password"]);
        assert_eq!(
            only(|r| r.url_credentials = true),
            ["argv[2]:url_credentials"]
        );
        assert_eq!(only(|r| r.bearer = true), ["argv[3]:bearer"]);
        assert_eq!(only(|r| r.email = true), ["argv[4]:email"]);
    }

    #[test]
    fn filename_and_non_exec_events() {
        let mut ev =
            json!({"kind": "exec", "filename": "/home/a@example.com/run", "argv": ["run"]});
        assert_eq!(all().redact_event(&mut ev), 1);
        assert_eq!(ev["filename"], "/home/[REDACTED]/run");
        assert_eq!(ev["redacted"], json!(["filename:email"]));
        let mut ev = json!({"kind": "loss", "records": 3});
        let before = ev.clone();
        assert_eq!(all().redact_event(&mut ev), 0);
        assert_eq!(ev, before);
        // A non-string argv element is skipped, not an error.
        let mut ev = json!({"kind": "exec", "argv": ["x", 5, "--password=a"]});
        assert_eq!(all().redact_event(&mut ev), 1);
        assert_eq!(ev["argv"], json!(["x", 5, "--password=[REDACTED]"]));
    }
}
