//! Command line: raw flags (clap) -> validated options. Every bad value is refused with
//! a message naming the flag, the value and what is allowed.

use std::path::PathBuf;

use auditor_common::{Settings, limits};
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::bpf::LoadOptions;

#[derive(Debug, Parser)]
#[command(
    name = "auditor",
    version,
    about = "Kernel-level activity auditor: every exec, log tampering and connection, from eBPF."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log level for the daemon's own diagnostics (stderr): error, warn, info, debug, trace.
    #[arg(long, global = true, default_value = "info")]
    pub log_level: String,
}

#[derive(Debug, Subcommand)]
// Parsed once per process: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Load the eBPF programs and stream events.
    Watch(WatchArgs),
    /// Probe what this kernel allows and explain it; exits non-zero if auditor cannot run.
    Check(CheckArgs),
    /// The evidence vault: serve, enroll agents, verify, query, erase.
    Vault(VaultArgs),
    /// The configuration file: print the annotated default, or check a file.
    Config(crate::config::ConfigArgs),
    /// Install the binary, systemd units and default configuration (root).
    Install(crate::install::InstallArgs),
    /// Remove what `install` put in place (keeps the configuration and the evidence).
    Uninstall(crate::install::InstallArgs),
    /// Summarise the running agent: uptime, event rate, losses, spool, vault.
    Status(crate::status::StatusArgs),
}

/// Where `auditor watch` keeps evidence when no remote vault is configured.
pub const DEFAULT_LOCAL_VAULT: &str = "/var/lib/auditor/vault";
/// `--ring-buffer-size` when neither the flag nor the configuration file sets it.
pub const DEFAULT_RING_BUFFER_SIZE: &str = "16M";

#[derive(Debug, Args)]
pub struct VaultArgs {
    #[command(subcommand)]
    pub command: VaultCommand,
}

#[derive(Debug, Subcommand)]
pub enum VaultCommand {
    /// Run the vault server.
    Serve {
        /// Address to listen on, e.g. 0.0.0.0:8443 or 127.0.0.1:8443.
        #[arg(long, value_name = "ADDR")]
        listen: std::net::SocketAddr,
        /// Vault data directory (created if missing).
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        /// Serve plain HTTP (no TLS). Only for tests and trusted networks.
        #[arg(long)]
        insecure_http: bool,
        /// TLS certificate (PEM); without it a self-signed one is generated in DATA.
        #[arg(long, value_name = "PEM", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// TLS private key (PEM).
        #[arg(long, value_name = "PEM", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Require client certificates signed by this CA (mutual TLS).
        #[arg(long, value_name = "PEM")]
        client_ca: Option<PathBuf>,
        /// Seconds of silence after which a host gets an `agent_silent` record.
        #[arg(long, value_name = "SECS", default_value_t = 10.0)]
        silence_threshold: f64,
        /// Largest accepted request body, compressed or not.
        #[arg(long, value_name = "SIZE", default_value = "16M")]
        max_body: String,
    },
    /// Enroll a host: prints its token once.
    Enroll {
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        #[arg(long, value_name = "NAME")]
        host: String,
    },
    /// Revoke a host's token.
    Revoke {
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        #[arg(long, value_name = "NAME")]
        host: String,
    },
    /// Check every chain; exits non-zero naming the first broken record.
    Verify {
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        #[arg(long, value_name = "NAME")]
        host: Option<String>,
    },
    /// Search the vault.
    Query {
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        #[arg(long, value_name = "NAME")]
        host: Option<String>,
        /// Inclusive start, RFC 3339 (2026-11-23T10:00:00Z).
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        /// Exclusive end, RFC 3339.
        #[arg(long, value_name = "TIME")]
        until: Option<String>,
        /// Event or record kind (repeatable): exec, loss, gap, agent_silent, erasure, ...
        #[arg(long = "kind", value_name = "KIND")]
        kinds: Vec<String>,
        /// Glob over path, exe and paths[] (`*` stays within a directory, `**` crosses).
        #[arg(long = "path", value_name = "GLOB")]
        path_glob: Option<String>,
        /// Only tamper-classified events.
        #[arg(long)]
        tamper_only: bool,
        /// Text that argv (joined by spaces) must contain.
        #[arg(long = "argv", value_name = "TEXT")]
        argv_contains: Option<String>,
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
        /// json (JSON Lines) or table.
        #[arg(long, value_enum, default_value = "json")]
        format: QueryFormat,
    },
    /// Erase payloads (e.g. a GDPR request); the chain still verifies.
    Erase {
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        /// A record id, as `query` prints it (HOST/INDEX).
        #[arg(
            long,
            value_name = "ID",
            conflicts_with = "matching",
            required_unless_present = "matching"
        )]
        record: Option<String>,
        /// Every record whose FIELD (dotted, e.g. argv or tamper.kind) equals VALUE.
        #[arg(long = "match", value_name = "FIELD=VALUE")]
        matching: Option<String>,
        /// Why (kept in the erasure record).
        #[arg(long, value_name = "TEXT")]
        reason: String,
        /// Who asked [default: $SUDO_USER or $USER].
        #[arg(long, value_name = "NAME")]
        who: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum QueryFormat {
    Json,
    Table,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// JSON Lines (default when stdout is not a terminal).
    Json,
    /// One readable line per event (default on a terminal).
    Pretty,
}

/// `auditor watch` flags. Every flag that has a configuration-file key is an `Option` (or a
/// switch that can only turn something on): flag > file > built-in default, resolved by
/// [`crate::config::resolve`]. Defaults in `[default: ...]` below are the built-in ones.
#[derive(Debug, Clone, Default, Args)]
pub struct WatchArgs {
    /// Configuration file [default: /etc/auditor/auditor.toml if it exists].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Directory tree to watch for log tampering (repeatable) [default: /var/log].
    /// Exec events are global.
    #[arg(long = "path", value_name = "DIR")]
    pub paths: Vec<PathBuf>,
    /// Tamper rules file (TOML, repeatable), checked before the built-in rules; see
    /// docs/EVENTS.md. Re-read on SIGHUP.
    #[arg(long = "rules", value_name = "FILE")]
    pub rules: Vec<PathBuf>,
    /// Output format on stdout [default: pretty on a terminal, json otherwise].
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Also append JSON Lines to FILE.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Print nothing on stdout (use with --output).
    #[arg(long)]
    pub quiet: bool,
    /// Load this eBPF object instead of the embedded one (from `cargo xtask build-ebpf`).
    #[arg(long, value_name = "PATH")]
    pub obj: Option<PathBuf>,
    /// Stream events to this vault (https://HOST:PORT; http:// needs --allow-insecure-http).
    #[arg(long, value_name = "URL")]
    pub vault: Option<String>,
    /// This host's token from `auditor vault enroll` (or $AUDITOR_TOKEN).
    #[arg(
        long,
        value_name = "TOKEN",
        env = "AUDITOR_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Read this host's token from FILE (first line).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Pin the vault's TLS certificate by its SHA-256 fingerprint (printed by `vault serve`).
    #[arg(long, value_name = "SHA256")]
    pub vault_pin: Option<String>,
    /// Trust this CA (PEM) for the vault's certificate.
    #[arg(long, value_name = "PEM")]
    pub vault_ca: Option<PathBuf>,
    /// Allow a plain http:// vault URL.
    #[arg(long)]
    pub allow_insecure_http: bool,
    /// Spool directory: every event stays here until the vault acknowledged it
    /// [default: /var/lib/auditor/spool].
    #[arg(long, value_name = "DIR")]
    pub spool: Option<PathBuf>,
    /// Spool size limit (beyond it new events are dropped and counted) [default: 1G].
    #[arg(long, value_name = "SIZE")]
    pub spool_max: Option<String>,
    /// Interval of the heartbeats to the vault [default: 5s].
    #[arg(long, value_name = "DURATION")]
    pub heartbeat_interval: Option<String>,
    /// Do not redact passwords, tokens, URL credentials and e-mail addresses in argv
    /// before events leave the host.
    #[arg(long)]
    pub no_redact: bool,
    /// Name this host reports to the vault [default: the kernel hostname].
    #[arg(long, value_name = "NAME")]
    pub host: Option<String>,
    /// Local vault directory used when no remote vault is configured
    /// [default: /var/lib/auditor/vault].
    #[arg(long, value_name = "DIR")]
    pub vault_dir: Option<PathBuf>,
    /// Do not keep events in the local vault (stdout/--output only).
    #[arg(long)]
    pub no_local_vault: bool,
    /// Kernel BTF to take struct offsets from [default: /sys/kernel/btf/vmlinux].
    #[arg(long, value_name = "PATH")]
    pub btf: Option<PathBuf>,
    /// argv capture cap in bytes (1024..=65536) [default: 32768].
    #[arg(long, value_name = "BYTES")]
    pub argv_max_bytes: Option<u32>,
    /// argv capture cap in arguments (1..=1024) [default: 512].
    #[arg(long, value_name = "N")]
    pub argv_max_args: Option<u32>,
    /// Kernel ring buffer size: a power of two from 64K to 1G (suffixes K, M, G) [default: 16M].
    #[arg(long, value_name = "SIZE")]
    pub ring_buffer_size: Option<String>,
    /// Serve Prometheus metrics on ADDR (e.g. 127.0.0.1:9464) [default: off].
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<String>,
    /// Allow --metrics-listen on a non-loopback address.
    #[arg(long)]
    pub metrics_allow_remote: bool,
    /// Where the agent writes its status every second, for `auditor status`
    /// [default: /run/auditor/status.json].
    #[arg(long, value_name = "FILE")]
    pub status_file: Option<PathBuf>,
    /// Scheduling nice value of the agent's threads, -20..=19 [default: -10]: ahead of
    /// the workload, so that a storm slows the workload rather than overflow the ring.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub nice: Option<i32>,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Check with this eBPF object instead of the embedded one.
    #[arg(long, value_name = "PATH")]
    pub obj: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("--argv-max-bytes {0}: must be between 1024 and {max}", max = limits::ARGV_BYTES_MAX)]
    ArgvBytes(u32),
    #[error("--argv-max-args {0}: must be between 1 and {max}", max = limits::ARGV_ARGS_MAX)]
    ArgvArgs(u32),
    #[error("--ring-buffer-size {0:?}: {1}")]
    RingSize(String, &'static str),
    #[error("--path {0}: {1}")]
    Path(String, String),
    #[error("--output {0}: {1}")]
    Output(String, String),
}

/// `--path` values, validated: existing directories, absolute and canonical.
pub fn watch_paths(raw: &[PathBuf]) -> Result<Vec<PathBuf>, ConfigError> {
    raw.iter()
        .map(|p| {
            let shown = p.display().to_string();
            let canon = std::fs::canonicalize(p)
                .map_err(|e| ConfigError::Path(shown.clone(), e.to_string()))?;
            if !canon.is_dir() {
                return Err(ConfigError::Path(shown, "not a directory".into()));
            }
            Ok(canon)
        })
        .collect()
}

/// Parses "16M", "65536", "1G".
pub fn parse_size(s: &str) -> Result<u64, &'static str> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 1u64 << 10),
        Some((i, 'M' | 'm')) => (&s[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| "not a size (examples: 65536, 64K, 16M, 1G)")?;
    n.checked_mul(mult).ok_or("too large")
}

impl WatchArgs {
    /// Turns the flags into loader options.
    pub fn load_options(&self) -> Result<LoadOptions, ConfigError> {
        let argv_bytes = self.argv_max_bytes.unwrap_or(limits::ARGV_BYTES_DEFAULT);
        let argv_args = self.argv_max_args.unwrap_or(limits::ARGV_ARGS_DEFAULT);
        if !(1024..=limits::ARGV_BYTES_MAX).contains(&argv_bytes) {
            return Err(ConfigError::ArgvBytes(argv_bytes));
        }
        if !(1..=limits::ARGV_ARGS_MAX).contains(&argv_args) {
            return Err(ConfigError::ArgvArgs(argv_args));
        }
        let raw = self
            .ring_buffer_size
            .clone()
            .unwrap_or_else(|| DEFAULT_RING_BUFFER_SIZE.to_owned());
        let ring = parse_size(&raw).map_err(|why| ConfigError::RingSize(raw.clone(), why))?;
        if !ring.is_power_of_two() || !(64 << 10..=1 << 30).contains(&ring) {
            return Err(ConfigError::RingSize(
                raw,
                "must be a power of two between 64K and 1G",
            ));
        }
        if let Some(out) = &self.output
            && out.is_dir()
        {
            return Err(ConfigError::Output(
                out.display().to_string(),
                "is a directory".into(),
            ));
        }
        Ok(LoadOptions {
            object: self.obj.clone(),
            ring_bytes: ring as u32,
            settings: Settings {
                argv_bytes,
                argv_args,
                ..Settings::DEFAULT
            },
            btf_path: self
                .btf
                .clone()
                .unwrap_or_else(|| PathBuf::from(crate::bpf::btf::VMLINUX_BTF)),
            watch: None,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn watch(args: &[&str]) -> Result<WatchArgs, clap::Error> {
        let mut v = vec!["auditor", "watch"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v).map(|c| match c.command {
            Command::Watch(w) => w,
            other => panic!("{other:?}"),
        })
    }

    #[test]
    fn defaults_are_valid() {
        let o = watch(&[]).unwrap().load_options().unwrap();
        assert_eq!(o.ring_bytes, 16 << 20);
        assert_eq!(o.settings.argv_bytes, limits::ARGV_BYTES_DEFAULT);
        assert!(o.settings.argv_bytes >= 16 * 1024 && o.settings.argv_args >= 512);
    }

    #[test]
    fn bad_values_are_named() {
        let e = watch(&["--argv-max-bytes", "10"])
            .unwrap()
            .load_options()
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "--argv-max-bytes 10: must be between 1024 and 65536"
        );
        let e = watch(&["--argv-max-args", "0"])
            .unwrap()
            .load_options()
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "--argv-max-args 0: must be between 1 and 1024"
        );
        let e = watch(&["--ring-buffer-size", "3M"])
            .unwrap()
            .load_options()
            .unwrap_err();
        assert!(e.to_string().contains("power of two"), "{e}");
        let e = watch(&["--ring-buffer-size", "lots"])
            .unwrap()
            .load_options()
            .unwrap_err();
        assert!(e.to_string().contains("not a size"), "{e}");
        let e = watch(&["--output", "/"])
            .unwrap()
            .load_options()
            .unwrap_err();
        assert!(e.to_string().contains("is a directory"), "{e}");
        let e = watch_paths(&[PathBuf::from("/nonexistent/dir")]).unwrap_err();
        assert!(
            e.to_string().starts_with("--path /nonexistent/dir: "),
            "{e}"
        );
        let e = watch_paths(&[PathBuf::from("/etc/hostname")]).unwrap_err();
        assert_eq!(e.to_string(), "--path /etc/hostname: not a directory");
    }

    #[test]
    fn unknown_flags_are_refused() {
        let e = watch(&["--no-such-flag"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::UnknownArgument);
        assert!(e.to_string().contains("--no-such-flag"));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64K"), Ok(65536));
        assert_eq!(parse_size("16M"), Ok(16 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999G").is_err());
    }
}
