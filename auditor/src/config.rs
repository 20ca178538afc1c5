//! The agent's configuration file (`/etc/auditor/auditor.toml`) and how it meets the flags.
//!
//! Precedence, key by key: command-line flag > configuration file > built-in default. A
//! missing *default* file means built-in defaults; a missing file named with `--config` is
//! an error. Unknown keys are refused (an operator's typo must not silently turn a setting
//! off), and every error names the file, the line, the key and what is allowed.
//!
//! The annotated default file is `dist/auditor.toml`, embedded as [`DEFAULT_TOML`]; a test
//! checks that it parses to exactly [`ConfigFile::default`] and documents every key.
//!
//! SIGHUP: [`WatchConfig::reload`] re-reads the same file with the same flags and returns
//! the new watch paths and rules files, and which other keys changed (those need a restart).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use auditor_common::limits;
use serde::{Deserialize, Deserializer, Serialize};

use crate::{
    bpf::LoadOptions,
    cli::{self, Format, WatchArgs},
};

/// Read when `--config` is not given (and only if it exists).
pub const DEFAULT_CONFIG_PATH: &str = "/etc/auditor/auditor.toml";
/// The annotated default configuration (`auditor config --print-default`).
pub const DEFAULT_TOML: &str = include_str!("../../dist/auditor.toml");
/// Where the agent writes its status for `auditor status`.
pub const DEFAULT_STATUS_FILE: &str = "/run/auditor/status.json";
pub const DEFAULT_SPOOL_MAX: &str = "1G";
pub const DEFAULT_HEARTBEAT: &str = "5s";
const HEARTBEAT_RANGE: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(3600));

/// `auditor config`.
#[derive(Debug, Clone, clap::Args)]
#[command(group = clap::ArgGroup::new("action").required(true))]
pub struct ConfigArgs {
    /// Print the annotated default configuration file.
    #[arg(long, group = "action")]
    pub print_default: bool,
    /// Validate FILE (syntax, keys, values, token file); exit non-zero naming what is wrong.
    #[arg(long, value_name = "FILE", group = "action")]
    pub check: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A syntax error, an unknown key or a bad value, with its position.
    #[error("{} line {line}, column {column}: {message}", path.display())]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        /// Dotted key (`vault.url`), when the error is about one.
        key: Option<String>,
        message: String,
    },
    /// A value that is fine alone but not with the rest (no position).
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Flag(#[from] cli::ConfigError),
}

/// `[output] format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FormatChoice {
    /// Readable on a terminal, JSON Lines otherwise.
    #[default]
    Auto,
    Json,
    Pretty,
}

/// The file, as written. Sizes and durations are kept as text (validated while parsing),
/// so that a message can quote them as the operator wrote them.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConfigFile {
    pub paths: Vec<PathBuf>,
    pub rules: Vec<PathBuf>,
    pub host: Option<String>,
    pub redact: bool,
    #[serde(deserialize_with = "de_argv_bytes")]
    pub argv_max_bytes: u32,
    #[serde(deserialize_with = "de_argv_args")]
    pub argv_max_args: u32,
    #[serde(deserialize_with = "de_ring_size")]
    pub ring_buffer_size: String,
    pub btf: Option<PathBuf>,
    pub obj: Option<PathBuf>,
    /// Empty: do not write one.
    pub status_file: PathBuf,
    #[serde(deserialize_with = "de_nice")]
    pub nice: i32,
    pub output: OutputSection,
    pub vault: VaultSection,
    pub spool: SpoolSection,
    pub local_vault: LocalVaultSection,
    pub metrics: MetricsSection,
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutputSection {
    pub format: FormatChoice,
    pub quiet: bool,
    pub file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct VaultSection {
    #[serde(deserialize_with = "de_vault_url")]
    pub url: Option<String>,
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    pub pin: Option<String>,
    pub ca: Option<PathBuf>,
    pub allow_insecure_http: bool,
    #[serde(deserialize_with = "de_heartbeat")]
    pub heartbeat_interval: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolSection {
    pub dir: PathBuf,
    #[serde(deserialize_with = "de_spool_max")]
    pub max: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocalVaultSection {
    pub enabled: bool,
    pub dir: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    #[serde(deserialize_with = "de_listen")]
    pub listen: Option<String>,
    pub allow_remote: bool,
}

impl Default for ConfigFile {
    fn default() -> Self {
        ConfigFile {
            paths: crate::watchlist::DEFAULT_TREES
                .iter()
                .map(PathBuf::from)
                .collect(),
            rules: Vec::new(),
            host: None,
            redact: true,
            argv_max_bytes: limits::ARGV_BYTES_DEFAULT,
            argv_max_args: limits::ARGV_ARGS_DEFAULT,
            ring_buffer_size: cli::DEFAULT_RING_BUFFER_SIZE.to_owned(),
            btf: None,
            obj: None,
            status_file: PathBuf::from(DEFAULT_STATUS_FILE),
            nice: DEFAULT_NICE,
            output: OutputSection::default(),
            vault: VaultSection::default(),
            spool: SpoolSection::default(),
            local_vault: LocalVaultSection::default(),
            metrics: MetricsSection::default(),
        }
    }
}

impl Default for VaultSection {
    fn default() -> Self {
        VaultSection {
            url: None,
            token: None,
            token_file: None,
            pin: None,
            ca: None,
            allow_insecure_http: false,
            heartbeat_interval: DEFAULT_HEARTBEAT.to_owned(),
        }
    }
}

impl Default for SpoolSection {
    fn default() -> Self {
        SpoolSection {
            dir: PathBuf::from(crate::sink::vault_client::DEFAULT_SPOOL_DIR),
            max: DEFAULT_SPOOL_MAX.to_owned(),
        }
    }
}

impl Default for LocalVaultSection {
    fn default() -> Self {
        LocalVaultSection {
            enabled: true,
            dir: PathBuf::from(cli::DEFAULT_LOCAL_VAULT),
        }
    }
}

// ---- value checks, run while parsing so that the error carries the value's position ----

fn invalid<E: serde::de::Error>(shown: impl std::fmt::Display, why: impl std::fmt::Display) -> E {
    E::custom(format!("{why} (got {shown})"))
}

fn de_argv_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let v = i64::deserialize(d)?;
    match u32::try_from(v) {
        Ok(n) if (1024..=limits::ARGV_BYTES_MAX).contains(&n) => Ok(n),
        _ => Err(invalid(
            v,
            format_args!("must be between 1024 and {}", limits::ARGV_BYTES_MAX),
        )),
    }
}

/// The agent's default nice value: ahead of ordinary processes (0), as auditd's
/// `priority_boost` puts its daemon; see docs/OPERATIONS.md, "Priority".
pub const DEFAULT_NICE: i32 = -10;

/// Why `n` is not a nice value, if it is not.
fn check_nice(n: i64) -> Result<i32, &'static str> {
    match i32::try_from(n) {
        Ok(n) if (-20..=19).contains(&n) => Ok(n),
        _ => Err("must be between -20 (first) and 19 (last)"),
    }
}

fn de_nice<'de, D: Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
    let v = i64::deserialize(d)?;
    check_nice(v).map_err(|why| invalid(v, why))
}

fn de_argv_args<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let v = i64::deserialize(d)?;
    match u32::try_from(v) {
        Ok(n) if (1..=limits::ARGV_ARGS_MAX).contains(&n) => Ok(n),
        _ => Err(invalid(
            v,
            format_args!("must be between 1 and {}", limits::ARGV_ARGS_MAX),
        )),
    }
}

/// A size given as an integer (bytes) or a string with a K/M/G suffix; kept as text.
#[derive(Deserialize)]
#[serde(untagged)]
enum SizeValue {
    Bytes(u64),
    Text(String),
}

fn de_size<'de, D: Deserializer<'de>>(d: D) -> Result<(String, u64), D::Error> {
    let text = match SizeValue::deserialize(d).map_err(|_| {
        serde::de::Error::custom(
            "must be a size: an integer (bytes) or a string such as \"64K\", \"16M\", \"1G\"",
        )
    })? {
        SizeValue::Bytes(n) => n.to_string(),
        SizeValue::Text(s) => s,
    };
    let n = cli::parse_size(&text).map_err(|why| invalid(format_args!("{text:?}"), why))?;
    Ok((text, n))
}

fn de_ring_size<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let (text, n) = de_size(d)?;
    if !n.is_power_of_two() || !(64 << 10..=1 << 30).contains(&n) {
        return Err(invalid(
            format_args!("{text:?}"),
            "must be a power of two between 64K and 1G",
        ));
    }
    Ok(text)
}

fn de_spool_max<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let (text, n) = de_size(d)?;
    if n < 1 << 20 {
        return Err(invalid(format_args!("{text:?}"), "must be at least 1M"));
    }
    Ok(text)
}

fn parse_heartbeat(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text.trim())
        .map_err(|e| format!("{e} (examples: \"5s\", \"500ms\", \"1m\")"))?;
    if d < HEARTBEAT_RANGE.0 || d > HEARTBEAT_RANGE.1 {
        return Err("must be between 100ms and 1h".to_owned());
    }
    Ok(d)
}

fn de_heartbeat<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let text = String::deserialize(d)?;
    parse_heartbeat(&text).map_err(|why| invalid(format_args!("{text:?}"), why))?;
    Ok(text)
}

fn de_vault_url<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let url = String::deserialize(d)?;
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        return Err(invalid(
            format_args!("{url:?}"),
            "must start with https:// (or http:// with allow_insecure_http = true)",
        ));
    }
    Ok(Some(url))
}

fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    text.trim().parse().map_err(|_| {
        "not an IP address and port (examples: \"127.0.0.1:9464\", \"[::1]:9464\")".to_owned()
    })
}

fn de_listen<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let text = String::deserialize(d)?;
    parse_listen(&text).map_err(|why| invalid(format_args!("{text:?}"), why))?;
    Ok(Some(text))
}

// ---- parsing ----

impl ConfigFile {
    /// Parses configuration text; `path` only names the file in errors.
    pub fn parse(path: &Path, text: &str) -> Result<ConfigFile, ConfigError> {
        toml::from_str::<ConfigFile>(text).map_err(|e| syntax_error(path, text, &e))
    }

    /// Reads and parses `path`.
    pub fn read(path: &Path) -> Result<ConfigFile, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }
}

fn syntax_error(path: &Path, text: &str, e: &toml::de::Error) -> ConfigError {
    let offset = e.span().map(|s| s.start).unwrap_or(0);
    let (line, column) = line_col(text, offset);
    let key = e.span().and_then(|_| key_at(text, offset));
    let raw = e.message().trim().to_owned();
    let message = if let Some(rest) = raw.strip_prefix("unknown field `") {
        // serde: "unknown field `x`, expected one of `a`, `b`" / "expected `a`"
        let allowed = rest
            .split_once(", expected ")
            .map(|(_, a)| a.trim_start_matches("one of ").to_owned())
            .unwrap_or_default();
        let shown = key
            .clone()
            .unwrap_or_else(|| rest.split('`').next().unwrap_or_default().to_owned());
        format!("unknown key `{shown}`; allowed keys here: {allowed}")
    } else if let Some(k) = &key {
        format!("key `{k}`: {raw}")
    } else {
        raw
    };
    ConfigError::Syntax {
        path: path.to_owned(),
        line,
        column,
        key,
        message,
    }
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text.as_bytes()[..offset.min(text.len())];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let column = before.iter().rev().take_while(|&&b| b != b'\n').count() + 1;
    (line, column)
}

/// The dotted key an error at `offset` is about: the `key =` on that line (or the nearest
/// one above, for a value spanning lines), prefixed by the `[table]` it sits in.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let upto = text.get(..offset)?;
    let line_start = upto.rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
    let this_line = &text[line_start..line_end];
    let is_key = |l: &str| -> Option<String> {
        let l = l.trim();
        if l.starts_with('#') || l.starts_with('[') {
            return None;
        }
        let (k, _) = l.split_once('=')?;
        let k = k.trim().trim_matches('"');
        (!k.is_empty()
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
        .then(|| k.to_owned())
    };
    let header = |l: &str| -> Option<String> {
        let l = l.trim();
        let inner = l.strip_prefix('[')?.split(']').next()?;
        Some(inner.trim().trim_matches('[').trim().to_owned())
    };
    // An error on a table header is about the table itself.
    if let Some(h) = header(this_line) {
        return Some(h);
    }
    let mut key = is_key(this_line);
    let mut table = None;
    for l in text[..line_start].lines().rev() {
        if key.is_none() {
            key = is_key(l);
            continue;
        }
        if let Some(h) = header(l) {
            table = Some(h);
            break;
        }
    }
    let key = key?;
    Some(match table {
        Some(t) => format!("{t}.{key}"),
        None => key,
    })
}

// ---- resolution: flags > file > built-in defaults ----

/// Everything `auditor watch` runs with, resolved.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    /// The file that was read (`None`: built-in defaults only).
    pub file: Option<PathBuf>,
    /// The flags as given: kept for [`WatchConfig::reload`].
    pub flags: WatchArgs,
    /// Watch trees as configured (not yet canonicalised: see [`WatchConfig::watch_paths`]).
    pub paths: Vec<PathBuf>,
    pub rules: Vec<PathBuf>,
    /// `None`: pretty on a terminal, JSON Lines otherwise.
    pub format: Option<Format>,
    pub quiet: bool,
    pub output: Option<PathBuf>,
    pub host: Option<String>,
    pub redact: bool,
    pub vault: Option<VaultConfig>,
    pub spool_dir: PathBuf,
    pub spool_max_bytes: u64,
    pub heartbeat_interval: Duration,
    /// The local vault directory, when it is in use (no remote vault, and enabled).
    pub local_vault: Option<PathBuf>,
    pub metrics_listen: Option<SocketAddr>,
    pub status_file: Option<PathBuf>,
    /// Nice value for every thread of the agent (see [`DEFAULT_NICE`]).
    pub nice: i32,
    /// argv caps, ring size, BTF, object; `watch` is left for the caller to fill.
    pub load: LoadOptions,
}

/// The remote vault and how to reach it.
#[derive(Clone, PartialEq, Eq)]
pub struct VaultConfig {
    pub url: String,
    pub token: String,
    pub pin: Option<String>,
    pub ca: Option<PathBuf>,
    pub allow_insecure_http: bool,
}

impl std::fmt::Debug for VaultConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultConfig")
            .field("url", &self.url)
            .field("token", &"<redacted>")
            .field("pin", &self.pin)
            .field("ca", &self.ca)
            .field("allow_insecure_http", &self.allow_insecure_http)
            .finish()
    }
}

/// What SIGHUP can change without a restart, and what it cannot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reload {
    /// Watch trees, canonicalised (existing directories).
    pub paths: Vec<PathBuf>,
    pub rules: Vec<PathBuf>,
    /// Keys whose new value differs but only takes effect at the next start.
    pub restart_needed: Vec<&'static str>,
}

/// Reads the configuration file (the `--config` one, or the default one if it exists) and
/// resolves it with the flags.
pub fn resolve(flags: WatchArgs) -> Result<WatchConfig, ConfigError> {
    let file = match &flags.config {
        Some(p) => Some((p.clone(), ConfigFile::read(p)?)),
        None => {
            let p = PathBuf::from(DEFAULT_CONFIG_PATH);
            match std::fs::read_to_string(&p) {
                Ok(text) => Some((p.clone(), ConfigFile::parse(&p, &text)?)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(source) => return Err(ConfigError::Read { path: p, source }),
            }
        }
    };
    resolve_with(flags, file)
}

/// [`resolve`] with the file already parsed (`None`: no file).
pub fn resolve_with(
    flags: WatchArgs,
    file: Option<(PathBuf, ConfigFile)>,
) -> Result<WatchConfig, ConfigError> {
    let (path, f) = match file {
        Some((p, f)) => (Some(p), f),
        None => (None, ConfigFile::default()),
    };
    let in_file = |key: &str| match &path {
        Some(p) => format!("`{key}` in {}", p.display()),
        None => format!("built-in default `{key}`"),
    };

    // Flags and file values merged into one WatchArgs, so that the loader options are
    // built (and flag values checked, named by their flag) in one place: cli.rs.
    let mut merged = flags.clone();
    merged.argv_max_bytes = merged.argv_max_bytes.or(Some(f.argv_max_bytes));
    merged.argv_max_args = merged.argv_max_args.or(Some(f.argv_max_args));
    merged.ring_buffer_size = merged
        .ring_buffer_size
        .or_else(|| Some(f.ring_buffer_size.clone()));
    merged.btf = merged.btf.or_else(|| f.btf.clone());
    merged.obj = merged.obj.or_else(|| f.obj.clone());
    merged.output = merged.output.or_else(|| f.output.file.clone());
    let load = merged.load_options()?;

    let format = flags.format.or(match f.output.format {
        FormatChoice::Auto => None,
        FormatChoice::Json => Some(Format::Json),
        FormatChoice::Pretty => Some(Format::Pretty),
    });

    let spool_max_bytes = match &flags.spool_max {
        Some(s) => cli::parse_size(s)
            .map_err(|why| ConfigError::Invalid(format!("--spool-max {s:?}: {why}")))?,
        None => cli::parse_size(&f.spool.max)
            .map_err(|why| ConfigError::Invalid(format!("{}: {why}", in_file("spool.max"))))?,
    };
    let heartbeat_interval = match &flags.heartbeat_interval {
        Some(s) => parse_heartbeat(s)
            .map_err(|why| ConfigError::Invalid(format!("--heartbeat-interval {s:?}: {why}")))?,
        None => parse_heartbeat(&f.vault.heartbeat_interval).map_err(|why| {
            ConfigError::Invalid(format!("{}: {why}", in_file("vault.heartbeat_interval")))
        })?,
    };

    let vault = match flags.vault.clone().or_else(|| f.vault.url.clone()) {
        None => None,
        Some(url) => {
            let token = resolve_token(&flags, &f, path.as_deref())?.ok_or_else(|| {
                ConfigError::Invalid(format!(
                    "a vault is configured ({url}) but no token: set --token, $AUDITOR_TOKEN, --token-file, or [vault] token_file in {}",
                    path.as_deref().unwrap_or(Path::new(DEFAULT_CONFIG_PATH)).display()
                ))
            })?;
            Some(VaultConfig {
                url,
                token,
                pin: flags.vault_pin.clone().or_else(|| f.vault.pin.clone()),
                ca: flags.vault_ca.clone().or_else(|| f.vault.ca.clone()),
                allow_insecure_http: flags.allow_insecure_http || f.vault.allow_insecure_http,
            })
        }
    };

    let local_vault_on = !flags.no_local_vault && f.local_vault.enabled;
    let local_vault = (vault.is_none() && local_vault_on).then(|| {
        flags
            .vault_dir
            .clone()
            .unwrap_or_else(|| f.local_vault.dir.clone())
    });

    let allow_remote = flags.metrics_allow_remote || f.metrics.allow_remote;
    let metrics_listen = match (&flags.metrics_listen, &f.metrics.listen) {
        (Some(s), _) => Some(
            parse_listen(s)
                .map_err(|why| ConfigError::Invalid(format!("--metrics-listen {s:?}: {why}")))?,
        ),
        (None, Some(s)) => Some(parse_listen(s).map_err(|why| {
            ConfigError::Invalid(format!("{}: {why}", in_file("metrics.listen")))
        })?),
        (None, None) => None,
    };
    if let Some(addr) = metrics_listen
        && !addr.ip().is_loopback()
        && !allow_remote
    {
        return Err(ConfigError::Invalid(format!(
            "metrics listen address {addr} is not a loopback address: the metrics tell anyone who connects how busy this host is and whether its vault is reachable; use 127.0.0.1 or [::1], or allow it with --metrics-allow-remote or [metrics] allow_remote = true"
        )));
    }

    let status_file = flags
        .status_file
        .clone()
        .unwrap_or_else(|| f.status_file.clone());
    let status_file = (!status_file.as_os_str().is_empty()).then_some(status_file);
    let nice = match flags.nice {
        Some(n) => check_nice(i64::from(n))
            .map_err(|why| ConfigError::Invalid(format!("--nice {n}: {why}")))?,
        None => f.nice,
    };

    Ok(WatchConfig {
        paths: if flags.paths.is_empty() {
            f.paths.clone()
        } else {
            flags.paths.clone()
        },
        rules: if flags.rules.is_empty() {
            f.rules.clone()
        } else {
            flags.rules.clone()
        },
        format,
        quiet: flags.quiet || f.output.quiet,
        output: merged.output.clone(),
        host: flags.host.clone().or_else(|| f.host.clone()),
        redact: !flags.no_redact && f.redact,
        vault,
        spool_dir: flags.spool.clone().unwrap_or_else(|| f.spool.dir.clone()),
        spool_max_bytes,
        heartbeat_interval,
        local_vault,
        metrics_listen,
        status_file,
        nice,
        load,
        file: path,
        flags,
    })
}

/// --token (or $AUDITOR_TOKEN) > --token-file > file `token` / `token_file`.
fn resolve_token(
    flags: &WatchArgs,
    f: &ConfigFile,
    path: Option<&Path>,
) -> Result<Option<String>, ConfigError> {
    if let Some(t) = &flags.token {
        return Ok(Some(t.clone()));
    }
    if let Some(p) = &flags.token_file {
        return read_token(p, "--token-file").map(Some);
    }
    match (&f.vault.token, &f.vault.token_file) {
        (Some(_), Some(_)) => Err(ConfigError::Invalid(format!(
            "{}: [vault] sets both token and token_file; keep one (token_file is preferred: the configuration file then holds no secret)",
            path.unwrap_or(Path::new(DEFAULT_CONFIG_PATH)).display()
        ))),
        (Some(t), None) => Ok(Some(t.clone())),
        (None, Some(p)) => read_token(p, "[vault] token_file").map(Some),
        (None, None) => Ok(None),
    }
}

fn read_token(path: &Path, what: &str) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::Invalid(format!("{what} {}: {e}", path.display())))?;
    let token = text.lines().next().unwrap_or_default().trim().to_owned();
    if token.is_empty() {
        return Err(ConfigError::Invalid(format!(
            "{what} {}: the file is empty; put the token printed by `auditor vault enroll` on its first line",
            path.display()
        )));
    }
    Ok(token)
}

impl WatchConfig {
    /// The watch trees, canonicalised; an error names where the bad path came from.
    pub fn watch_paths(&self) -> Result<Vec<PathBuf>, ConfigError> {
        cli::watch_paths(&self.paths).map_err(|e| match (&self.file, self.flags.paths.is_empty()) {
            (Some(file), true) => ConfigError::Invalid(format!(
                "`paths` in {}: {}",
                file.display(),
                e.to_string().trim_start_matches("--path ")
            )),
            _ => e.into(),
        })
    }

    /// Re-reads the configuration (SIGHUP): the same file, the same flags (a flag still
    /// wins over the file). Returns the new watch paths (canonicalised) and rules files, and
    /// the keys that changed but need a restart. On error the running configuration stays.
    pub fn reload(&self) -> Result<Reload, ConfigError> {
        let new = resolve(self.flags.clone())?;
        let paths = new.watch_paths()?;
        let mut restart_needed = Vec::new();
        let mut differs = |key: &'static str, changed: bool| {
            if changed {
                restart_needed.push(key);
            }
        };
        differs(
            "output",
            self.format != new.format || self.quiet != new.quiet || self.output != new.output,
        );
        differs("host", self.host != new.host);
        differs("redact", self.redact != new.redact);
        differs(
            "vault",
            self.vault != new.vault || self.heartbeat_interval != new.heartbeat_interval,
        );
        differs(
            "spool",
            self.spool_dir != new.spool_dir || self.spool_max_bytes != new.spool_max_bytes,
        );
        differs("local_vault", self.local_vault != new.local_vault);
        differs("metrics", self.metrics_listen != new.metrics_listen);
        differs("status_file", self.status_file != new.status_file);
        differs("nice", self.nice != new.nice);
        differs(
            "argv_max_bytes/argv_max_args/ring_buffer_size/btf/obj",
            self.load.ring_bytes != new.load.ring_bytes
                || self.load.settings.argv_bytes != new.load.settings.argv_bytes
                || self.load.settings.argv_args != new.load.settings.argv_args
                || self.load.btf_path != new.load.btf_path
                || self.load.object != new.load.object,
        );
        Ok(Reload {
            paths,
            rules: new.rules,
            restart_needed,
        })
    }
}

/// `auditor config`: prints the default, or checks a file. Ok(false): the file is bad
/// (the reason already printed on stderr).
pub fn run(args: &ConfigArgs) -> bool {
    if args.print_default {
        print!("{DEFAULT_TOML}");
        return true;
    }
    let Some(path) = &args.check else {
        return false;
    };
    let result = ConfigFile::read(path)
        .and_then(|f| resolve_with(WatchArgs::default(), Some((path.clone(), f))));
    match result.and_then(|c| c.watch_paths().map(|p| (c, p))) {
        Ok((c, paths)) => {
            println!("{}: OK", path.display());
            println!("  watch paths: {paths:?}");
            if !c.rules.is_empty() {
                println!("  rules files: {:?}", c.rules);
            }
            match (&c.vault, &c.local_vault) {
                (Some(v), _) => println!("  evidence: remote vault {}", v.url),
                (None, Some(d)) => println!("  evidence: local vault {}", d.display()),
                (None, None) => println!("  evidence: no vault (stdout/output file only)"),
            }
            if let Some(m) = c.metrics_listen {
                println!("  metrics: http://{m}/metrics");
            }
            true
        }
        Err(e) => {
            eprintln!("auditor: error: {e}");
            false
        }
    }
}
