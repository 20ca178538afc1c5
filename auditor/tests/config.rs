//! The configuration file: defaults, errors with their line, precedence, reload.
//! Unprivileged.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use auditor::{
    cli::{Cli, Command, Format, WatchArgs},
    config::{self, ConfigError, ConfigFile, DEFAULT_TOML},
};
use clap::Parser;

fn flags(args: &[&str]) -> WatchArgs {
    let mut v = vec!["auditor", "watch"];
    v.extend_from_slice(args);
    match Cli::try_parse_from(v).unwrap().command {
        Command::Watch(w) => w,
        other => panic!("{other:?}"),
    }
}

fn parse(text: &str) -> Result<ConfigFile, ConfigError> {
    ConfigFile::parse(Path::new("/etc/auditor/auditor.toml"), text)
}

fn err(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

#[test]
fn the_printed_default_parses_to_the_defaults() {
    assert_eq!(parse(DEFAULT_TOML).unwrap(), ConfigFile::default());
    // And resolves, with no flag, to what the flags alone give.
    let from_file = config::resolve_with(
        WatchArgs::default(),
        Some((PathBuf::from("x.toml"), parse(DEFAULT_TOML).unwrap())),
    )
    .unwrap();
    let builtin = config::resolve_with(WatchArgs::default(), None).unwrap();
    assert_eq!(from_file.paths, builtin.paths);
    assert_eq!(from_file.load.ring_bytes, builtin.load.ring_bytes);
    assert_eq!((from_file.nice, builtin.nice), (-10, -10));
    assert_eq!(from_file.spool_max_bytes, 1 << 30);
    assert_eq!(
        from_file.heartbeat_interval,
        std::time::Duration::from_secs(5)
    );
    assert_eq!(
        from_file.local_vault,
        Some(PathBuf::from("/var/lib/auditor/vault"))
    );
    assert_eq!(
        from_file.status_file,
        Some(PathBuf::from("/run/auditor/status.json"))
    );
    assert_eq!(from_file.metrics_listen, None);
}

/// Every key of the schema appears in the default file, set or commented out, in its section.
#[test]
fn the_printed_default_documents_every_key() {
    let v = serde_json::to_value(ConfigFile::default()).unwrap();
    let mut sections: Vec<(String, Vec<String>)> = vec![(String::new(), Vec::new())];
    for line in DEFAULT_TOML.lines() {
        let l = line.trim();
        if let Some(h) = l.strip_prefix('[') {
            sections.push((h.trim_end_matches(']').to_owned(), Vec::new()));
        } else if let Some(last) = sections.last_mut() {
            last.1.push(l.trim_start_matches("# ").to_owned());
        }
    }
    let documented = |section: &str, key: &str| {
        sections
            .iter()
            .filter(|(s, _)| s == section)
            .any(|(_, lines)| lines.iter().any(|l| l.starts_with(&format!("{key} = "))))
    };
    let mut missing = Vec::new();
    for (k, val) in v.as_object().unwrap() {
        match val.as_object() {
            Some(table) => {
                assert!(
                    sections.iter().any(|(s, _)| s == k),
                    "no [{k}] section in dist/auditor.toml"
                );
                for sub in table.keys() {
                    if !documented(k, sub) {
                        missing.push(format!("{k}.{sub}"));
                    }
                }
            }
            None => {
                if !documented("", k) {
                    missing.push(k.clone());
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "keys not documented in dist/auditor.toml: {missing:?}"
    );
}

#[test]
fn unknown_keys_name_the_key_and_the_line() {
    let e = err("paths = [\"/var/log\"]\n\n[output]\nformat = \"json\"\ncolour = \"red\"\n");
    assert_eq!(
        e,
        "/etc/auditor/auditor.toml line 5, column 1: unknown key `output.colour`; allowed keys here: `format`, `quiet`, `file`"
    );
    let e = err("# comment\nredcat = true\n");
    assert!(
        e.starts_with("/etc/auditor/auditor.toml line 2, column 1: unknown key `redcat`; allowed keys here: `paths`, "),
        "{e}"
    );
    let e = err("[metrix]\nlisten = \"127.0.0.1:9464\"\n");
    assert!(
        e.starts_with("/etc/auditor/auditor.toml line 1, column 2: unknown key `metrix`"),
        "{e}"
    );
    match parse("[vault]\nurl = \"https://v:1\"\nbogus = 1\n").unwrap_err() {
        ConfigError::Syntax { line, key, .. } => {
            assert_eq!(line, 3);
            assert_eq!(key.as_deref(), Some("vault.bogus"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn bad_values_name_the_key_the_line_and_what_is_allowed() {
    let cases: &[(&str, &str)] = &[
        (
            "argv_max_bytes = 10\n",
            "line 1, column 18: key `argv_max_bytes`: must be between 1024 and 65536 (got 10)",
        ),
        (
            "nice = 20\n",
            "line 1, column 8: key `nice`: must be between -20 (first) and 19 (last) (got 20)",
        ),
        (
            "\nargv_max_args = 5000\n",
            "line 2, column 17: key `argv_max_args`: must be between 1 and 1024 (got 5000)",
        ),
        (
            "ring_buffer_size = \"3M\"\n",
            "line 1, column 20: key `ring_buffer_size`: must be a power of two between 64K and 1G (got \"3M\")",
        ),
        (
            "ring_buffer_size = \"lots\"\n",
            "key `ring_buffer_size`: not a size (examples: 65536, 64K, 16M, 1G) (got \"lots\")",
        ),
        (
            "[spool]\nmax = \"10K\"\n",
            "line 2, column 7: key `spool.max`: must be at least 1M (got \"10K\")",
        ),
        (
            "[spool]\nmax = true\n",
            "key `spool.max`: must be a size: an integer (bytes) or a string such as \"64K\", \"16M\", \"1G\"",
        ),
        (
            "paths = \"/var/log\"\n",
            "line 1, column 9: key `paths`: invalid type: string \"/var/log\", expected a sequence",
        ),
        (
            "redact = \"no\"\n",
            "key `redact`: invalid type: string \"no\", expected a boolean",
        ),
        (
            "[output]\nformat = \"xml\"\n",
            "line 2, column 10: key `output.format`: unknown variant `xml`, expected one of `auto`, `json`, `pretty`",
        ),
        (
            "[vault]\nheartbeat_interval = \"1d\"\n",
            "key `vault.heartbeat_interval`: must be between 100ms and 1h (got \"1d\")",
        ),
        (
            "[vault]\nurl = \"ftp://v\"\n",
            "line 2, column 7: key `vault.url`: must start with https:// (or http:// with allow_insecure_http = true) (got \"ftp://v\")",
        ),
        (
            "[metrics]\nlisten = \"localhost\"\n",
            "key `metrics.listen`: not an IP address and port (examples: \"127.0.0.1:9464\", \"[::1]:9464\") (got \"localhost\")",
        ),
        (
            "paths = [\n",
            "line 1, column 10: key `paths`: unclosed array",
        ),
    ];
    for (text, want) in cases {
        let e = err(text);
        assert!(e.contains(want), "for {text:?}:\n got: {e}\nwant: {want}");
        assert!(e.starts_with("/etc/auditor/auditor.toml line "), "{e}");
    }
}

#[test]
fn an_explicit_missing_file_is_an_error_a_missing_default_is_not() {
    let e = config::resolve(flags(&["--config", "/nonexistent/auditor.toml"])).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("configuration file /nonexistent/auditor.toml: "),
        "{e}"
    );
    // resolve_with(None) is the missing-default case.
    assert!(config::resolve_with(WatchArgs::default(), None).is_ok());
}

#[test]
fn flags_override_the_file_key_by_key() {
    let file = parse(
        r#"
paths = ["/var/log", "/srv/logs"]
rules = ["/etc/auditor/rules.toml"]
host = "from-file"
redact = false
argv_max_bytes = 2048
ring_buffer_size = "64M"
status_file = ""
nice = -5
[output]
format = "pretty"
quiet = true
[spool]
dir = "/srv/spool"
max = "2G"
[local_vault]
dir = "/srv/vault"
[metrics]
listen = "127.0.0.1:9999"
"#,
    )
    .unwrap();
    let with = |args: &[&str]| {
        config::resolve_with(flags(args), Some((PathBuf::from("f.toml"), file.clone()))).unwrap()
    };

    // File alone.
    let c = with(&[]);
    assert_eq!(
        c.paths,
        vec![PathBuf::from("/var/log"), PathBuf::from("/srv/logs")]
    );
    assert_eq!(c.rules, vec![PathBuf::from("/etc/auditor/rules.toml")]);
    assert_eq!(c.host.as_deref(), Some("from-file"));
    assert!(!c.redact);
    assert_eq!(c.load.settings.argv_bytes, 2048);
    assert_eq!(c.load.ring_bytes, 64 << 20);
    assert_eq!(c.format, Some(Format::Pretty));
    assert!(c.quiet);
    assert_eq!(c.spool_dir, PathBuf::from("/srv/spool"));
    assert_eq!(c.spool_max_bytes, 2 << 30);
    assert_eq!(c.local_vault, Some(PathBuf::from("/srv/vault")));
    assert_eq!(c.metrics_listen, Some("127.0.0.1:9999".parse().unwrap()));
    assert_eq!(c.status_file, None, "\"\" turns the status file off");
    assert_eq!(c.nice, -5);

    // Each flag wins over its key; the others stay from the file.
    let c = with(&[
        "--path",
        "/tmp",
        "--rules",
        "/r.toml",
        "--host",
        "from-flag",
        "--argv-max-bytes",
        "4096",
        "--ring-buffer-size",
        "1M",
        "--format",
        "json",
        "--spool",
        "/s",
        "--spool-max",
        "3G",
        "--vault-dir",
        "/v",
        "--metrics-listen",
        "[::1]:1234",
        "--status-file",
        "/run/x.json",
        "--nice",
        "-15",
    ]);
    assert_eq!(c.paths, vec![PathBuf::from("/tmp")]);
    assert_eq!(c.rules, vec![PathBuf::from("/r.toml")]);
    assert_eq!(c.host.as_deref(), Some("from-flag"));
    assert_eq!(c.load.settings.argv_bytes, 4096);
    assert_eq!(c.load.settings.argv_args, 512, "not set anywhere: built-in");
    assert_eq!(c.load.ring_bytes, 1 << 20);
    assert_eq!(c.format, Some(Format::Json));
    assert!(c.quiet, "no flag turns quiet off: stays from the file");
    assert_eq!(c.spool_dir, PathBuf::from("/s"));
    assert_eq!(c.spool_max_bytes, 3 << 30);
    assert_eq!(c.local_vault, Some(PathBuf::from("/v")));
    assert_eq!(c.metrics_listen, Some("[::1]:1234".parse().unwrap()));
    assert_eq!(c.status_file, Some(PathBuf::from("/run/x.json")));
    assert_eq!(c.nice, -15);

    // Switches can only turn on.
    let c = with(&["--no-local-vault"]);
    assert_eq!(c.local_vault, None);
}

#[test]
fn flag_errors_name_the_flag() {
    let e = |args: &[&str]| {
        config::resolve_with(flags(args), None)
            .unwrap_err()
            .to_string()
    };
    assert_eq!(
        e(&["--argv-max-bytes", "10"]),
        "--argv-max-bytes 10: must be between 1024 and 65536"
    );
    assert!(e(&["--spool-max", "x"]).starts_with("--spool-max \"x\": not a size"));
    assert_eq!(
        e(&["--nice", "-21"]),
        "--nice -21: must be between -20 (first) and 19 (last)"
    );
    assert!(e(&["--heartbeat-interval", "0s"]).contains("must be between 100ms and 1h"));
    assert!(e(&["--metrics-listen", "nope"]).starts_with("--metrics-listen \"nope\": not an IP"));
    let remote = e(&["--metrics-listen", "0.0.0.0:9464"]);
    assert!(
        remote.contains("not a loopback address") && remote.contains("--metrics-allow-remote"),
        "{remote}"
    );
    assert!(
        config::resolve_with(
            flags(&["--metrics-listen", "0.0.0.0:9464", "--metrics-allow-remote"]),
            None
        )
        .is_ok()
    );
}

#[test]
fn the_vault_token_comes_from_flag_file_or_token_file() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "tok-from-file\n").unwrap();
    let file = parse(&format!(
        "[vault]\nurl = \"https://vault:8443\"\npin = \"AB:CD\"\ntoken_file = \"{}\"\n",
        token_file.display()
    ))
    .unwrap();
    let with = |args: &[&str], f: &ConfigFile| {
        config::resolve_with(flags(args), Some((PathBuf::from("f.toml"), f.clone())))
    };
    let v = with(&[], &file).unwrap().vault.unwrap();
    assert_eq!(v.url, "https://vault:8443");
    assert_eq!(v.token, "tok-from-file");
    assert_eq!(v.pin.as_deref(), Some("AB:CD"));
    assert!(
        !format!("{v:?}").contains("tok-from-file"),
        "token redacted in Debug"
    );
    let c = with(&["--token", "tok-flag"], &file).unwrap();
    assert_eq!(c.vault.unwrap().token, "tok-flag");
    assert_eq!(c.local_vault, None, "a remote vault replaces the local one");

    std::fs::write(&token_file, "\n").unwrap();
    let e = with(&[], &file).unwrap_err().to_string();
    assert!(e.contains("the file is empty"), "{e}");
    std::fs::remove_file(&token_file).unwrap();
    let e = with(&[], &file).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!("[vault] token_file {}: ", token_file.display())),
        "{e}"
    );

    let no_token = parse("[vault]\nurl = \"https://vault:8443\"\n").unwrap();
    let e = with(&[], &no_token).unwrap_err().to_string();
    assert!(e.contains("no token") && e.contains("--token-file"), "{e}");
    let both =
        parse("[vault]\nurl = \"https://v:1\"\ntoken = \"a\"\ntoken_file = \"/b\"\n").unwrap();
    let e = with(&[], &both).unwrap_err().to_string();
    assert!(e.contains("both token and token_file"), "{e}");
}

#[test]
fn reload_rereads_paths_and_rules_and_lists_what_needs_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    let cfg_path = dir.path().join("auditor.toml");
    std::fs::write(&cfg_path, format!("paths = [\"{}\"]\n", a.display())).unwrap();
    let running = config::resolve(flags(&["--config", cfg_path.to_str().unwrap()])).unwrap();
    assert_eq!(
        running.watch_paths().unwrap(),
        vec![a.canonicalize().unwrap()]
    );

    std::fs::write(
        &cfg_path,
        format!(
            "paths = [\"{}\", \"{}\"]\nrules = [\"/etc/auditor/r.toml\"]\nargv_max_args = 64\n",
            a.display(),
            b.display()
        ),
    )
    .unwrap();
    let r = running.reload().unwrap();
    assert_eq!(
        r.paths,
        vec![a.canonicalize().unwrap(), b.canonicalize().unwrap()]
    );
    assert_eq!(r.rules, vec![PathBuf::from("/etc/auditor/r.toml")]);
    assert_eq!(
        r.restart_needed,
        vec!["argv_max_bytes/argv_max_args/ring_buffer_size/btf/obj"]
    );

    // A broken file is reported, and the caller keeps what runs.
    std::fs::write(&cfg_path, "paths = [\n").unwrap();
    assert!(matches!(running.reload(), Err(ConfigError::Syntax { .. })));
    // A path that is gone is named as coming from the file.
    std::fs::write(&cfg_path, "paths = [\"/nonexistent/dir\"]\n").unwrap();
    let e = running.reload().unwrap_err().to_string();
    assert!(
        e.starts_with(&format!(
            "`paths` in {}: /nonexistent/dir: ",
            cfg_path.display()
        )),
        "{e}"
    );

    // A --path flag still wins over the file after a reload.
    let pinned = config::resolve(flags(&[
        "--config",
        cfg_path.to_str().unwrap(),
        "--path",
        a.to_str().unwrap(),
    ]))
    .unwrap();
    assert_eq!(
        pinned.reload().unwrap().paths,
        vec![a.canonicalize().unwrap()]
    );
}

#[test]
fn config_check_and_print_default_commands() {
    let bin = env!("CARGO_BIN_EXE_auditor");
    let out = std::process::Command::new(bin)
        .args(["config", "--print-default"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap(), DEFAULT_TOML);

    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, DEFAULT_TOML).unwrap();
    let out = std::process::Command::new(bin)
        .args(["config", "--check", good.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains(": OK"));

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[vault]\nurll = \"https://x\"\n").unwrap();
    let out = std::process::Command::new(bin)
        .args(["config", "--check", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("line 2, column 1: unknown key `vault.urll`"),
        "{stderr}"
    );
}
