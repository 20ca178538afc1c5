//! `auditor install` / `auditor uninstall`: put the running binary, the systemd units and
//! the default configuration in place, and start the agent when systemd runs.
//!
//! The unit files and the default configuration are embedded from `dist/` so that the
//! binary alone is the whole installation medium. Rules:
//! - the binary and the units are ours: replaced on every install (that is the upgrade);
//! - the configuration file is the operator's: written only if absent, never overwritten;
//! - nothing under /var/lib/auditor (the evidence) is ever removed, not even by uninstall.
//!
//! `--root DIR` installs under a prefix (tests, image builds) and never touches systemd;
//! `--dry-run` prints the plan and changes nothing.

use std::{
    io::Write as _,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

pub const AGENT_UNIT: &str = include_str!("../../dist/systemd/auditor.service");
pub const VAULT_UNIT: &str = include_str!("../../dist/systemd/auditor-vault.service");
pub const VAULT_SYSUSERS: &str = include_str!("../../dist/sysusers/auditor-vault.conf");
/// The units' `Documentation=` points here.
pub const OPERATIONS_DOC: &str = include_str!("../../docs/OPERATIONS.md");
pub const DOC_PATH: &str = "/usr/local/share/doc/auditor/OPERATIONS.md";

pub const BIN_PATH: &str = "/usr/local/bin/auditor";
pub const UNIT_DIR: &str = "/etc/systemd/system";
pub const SYSUSERS_PATH: &str = "/etc/sysusers.d/auditor-vault.conf";
pub const STATE_DIR: &str = "/var/lib/auditor";

#[derive(Debug, Clone, Default, clap::Args)]
pub struct InstallArgs {
    /// Print what would be done; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Install under this directory instead of / (never runs systemctl).
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Put the files in place but do not enable or start the agent.
    #[arg(long)]
    pub no_start: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error(
        "installing needs root (it writes {BIN_PATH}, {UNIT_DIR} and /etc/auditor): run it with sudo, or use --root DIR to install under a prefix"
    )]
    NotRoot,
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}); the files are in place, run it by hand to see why")]
    Command { command: String, status: String },
}

/// One step of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Copy the running binary (`from`) to `to`.
    Binary {
        from: PathBuf,
        to: PathBuf,
    },
    /// The binary already is `to`.
    BinaryInPlace {
        to: PathBuf,
    },
    /// Write a file we own (replaced when different).
    File {
        path: PathBuf,
        content: &'static str,
        mode: u32,
    },
    /// Write the default configuration: only because `path` does not exist.
    Config {
        path: PathBuf,
    },
    /// The configuration exists: left alone.
    ConfigKept {
        path: PathBuf,
        edited: bool,
    },
    Dir {
        path: PathBuf,
        mode: u32,
    },
    /// Run a command (systemd is running, `--root` not given).
    Run(Vec<String>),
    /// Systemd is not running: tell the operator.
    Advise(String),
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::Binary { from, to } => {
                write!(
                    f,
                    "install the binary {} -> {}",
                    from.display(),
                    to.display()
                )
            }
            Step::BinaryInPlace { to } => write!(f, "binary {} already in place", to.display()),
            Step::File { path, mode, .. } => write!(f, "write {} (mode {mode:o})", path.display()),
            Step::Config { path } => write!(
                f,
                "write the default configuration {} (it does not exist yet)",
                path.display()
            ),
            Step::ConfigKept { path, edited: true } => write!(
                f,
                "keep {}: it has been edited and is never overwritten (compare with `auditor config --print-default`)",
                path.display()
            ),
            Step::ConfigKept {
                path,
                edited: false,
            } => {
                write!(f, "keep {} (the default, unchanged)", path.display())
            }
            Step::Dir { path, mode } => {
                write!(f, "create directory {} (mode {mode:o})", path.display())
            }
            Step::Run(cmd) => write!(f, "run `{}`", cmd.join(" ")),
            Step::Advise(text) => write!(f, "{text}"),
        }
    }
}

fn under(root: &Path, abs: &str) -> PathBuf {
    root.join(abs.trim_start_matches('/'))
}

/// True when systemd is the running init (the check sd_booted(3) makes).
pub fn systemd_running() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

/// What `install` would do, given where the running binary is.
pub fn plan(args: &InstallArgs, current_exe: &Path) -> Vec<Step> {
    let root = args.root.clone().unwrap_or_else(|| PathBuf::from("/"));
    let mut steps = Vec::new();
    let bin = under(&root, BIN_PATH);
    let same = match (
        std::fs::canonicalize(current_exe),
        std::fs::canonicalize(&bin),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    steps.push(if same {
        Step::BinaryInPlace { to: bin }
    } else {
        Step::Binary {
            from: current_exe.to_owned(),
            to: bin,
        }
    });
    for (name, content) in [
        ("auditor.service", AGENT_UNIT),
        ("auditor-vault.service", VAULT_UNIT),
    ] {
        steps.push(Step::File {
            path: under(&root, UNIT_DIR).join(name),
            content,
            mode: 0o644,
        });
    }
    steps.push(Step::File {
        path: under(&root, SYSUSERS_PATH),
        content: VAULT_SYSUSERS,
        mode: 0o644,
    });
    steps.push(Step::File {
        path: under(&root, DOC_PATH),
        content: OPERATIONS_DOC,
        mode: 0o644,
    });
    steps.push(Step::Dir {
        path: under(&root, "/etc/auditor"),
        mode: 0o750,
    });
    let cfg = under(&root, crate::config::DEFAULT_CONFIG_PATH);
    steps.push(match std::fs::read_to_string(&cfg) {
        Ok(text) => Step::ConfigKept {
            edited: text != crate::config::DEFAULT_TOML,
            path: cfg,
        },
        Err(_) if cfg.exists() => Step::ConfigKept {
            path: cfg,
            edited: true,
        },
        Err(_) => Step::Config { path: cfg },
    });
    steps.push(Step::Dir {
        path: under(&root, STATE_DIR),
        mode: 0o700,
    });
    let cmds: [&[&str]; 3] = [
        &["systemctl", "daemon-reload"],
        &["systemctl", "enable", "auditor.service"],
        // restart, not start: on an upgrade the new binary must replace the running one.
        &["systemctl", "restart", "auditor.service"],
    ];
    let sysusers: &[&str] = &["systemd-sysusers", SYSUSERS_PATH];
    if args.root.is_some() {
        steps.push(Step::Advise(format!(
            "installed under {}: systemd not touched",
            root.display()
        )));
    } else if args.no_start {
        steps.push(Step::Run(sysusers.iter().map(|s| s.to_string()).collect()));
        steps.push(Step::Run(cmds[0].iter().map(|s| s.to_string()).collect()));
        steps.push(Step::Advise(
            "not started (--no-start): `systemctl enable --now auditor` starts it".into(),
        ));
    } else if systemd_running() {
        steps.push(Step::Run(sysusers.iter().map(|s| s.to_string()).collect()));
        for c in cmds {
            steps.push(Step::Run(c.iter().map(|s| s.to_string()).collect()));
        }
    } else {
        steps.push(Step::Advise(
            "systemd is not running here (/run/systemd/system is missing): nothing enabled. \
             On a systemd host run `systemd-sysusers && systemctl daemon-reload && systemctl enable --now auditor`; \
             here, start the agent by hand: `auditor watch --config /etc/auditor/auditor.toml`"
                .into(),
        ));
    }
    steps
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> InstallError {
    let path = path.to_owned();
    move |source| InstallError::Io { what, path, source }
}

/// Writes `bytes` to `path` through a temporary file and a rename: a reader (or systemd,
/// or the running binary being replaced) never sees half a file.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), InstallError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io("creating the directory", dir))?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".auditor-new");
    let tmp = PathBuf::from(tmp);
    let mut f = std::fs::File::create(&tmp).map_err(io("writing", &tmp))?;
    f.write_all(bytes).map_err(io("writing", &tmp))?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(io("setting the mode of", &tmp))?;
    f.sync_all().map_err(io("syncing", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io("renaming into place", path))
}

fn execute(step: &Step) -> Result<String, InstallError> {
    Ok(match step {
        Step::Binary { from, to } => {
            let bytes = std::fs::read(from).map_err(io("reading the running binary", from))?;
            write_atomic(to, &bytes, 0o755)?;
            format!("installed {}", to.display())
        }
        Step::File {
            path,
            content,
            mode,
        } => {
            let old = std::fs::read_to_string(path).ok();
            if old.as_deref() == Some(*content) {
                format!("{} unchanged", path.display())
            } else {
                write_atomic(path, content.as_bytes(), *mode)?;
                format!(
                    "{} {}",
                    if old.is_some() { "updated" } else { "wrote" },
                    path.display()
                )
            }
        }
        Step::Config { path } => {
            // create_new: never overwrite, even if one appeared since the plan was made.
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(io("creating the directory", dir))?;
            }
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
            {
                Ok(mut f) => {
                    f.write_all(crate::config::DEFAULT_TOML.as_bytes())
                        .map_err(io("writing", path))?;
                    f.set_permissions(std::fs::Permissions::from_mode(0o640))
                        .map_err(io("setting the mode of", path))?;
                    format!("wrote the default configuration {}", path.display())
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    format!("kept {}: it appeared meanwhile", path.display())
                }
                Err(e) => return Err(io("writing", path)(e)),
            }
        }
        Step::Dir { path, mode } => {
            std::fs::create_dir_all(path).map_err(io("creating the directory", path))?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(*mode))
                .map_err(io("setting the mode of", path))?;
            format!("directory {} ready", path.display())
        }
        Step::Run(cmd) => {
            let status = Command::new(&cmd[0])
                .args(&cmd[1..])
                .status()
                .map_err(|e| InstallError::Command {
                    command: cmd.join(" "),
                    status: e.to_string(),
                })?;
            if !status.success() {
                return Err(InstallError::Command {
                    command: cmd.join(" "),
                    status: status.to_string(),
                });
            }
            format!("ran `{}`", cmd.join(" "))
        }
        Step::BinaryInPlace { .. } | Step::ConfigKept { .. } | Step::Advise(_) => step.to_string(),
    })
}

fn is_root() -> bool {
    // SAFETY: no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// `auditor install`.
pub fn install(args: &InstallArgs) -> Result<bool, InstallError> {
    let exe = std::env::current_exe().map_err(io(
        "finding the running binary",
        Path::new("/proc/self/exe"),
    ))?;
    let steps = plan(args, &exe);
    if args.dry_run {
        println!("auditor install --dry-run: would");
        for s in &steps {
            println!("  - {s}");
        }
        return Ok(true);
    }
    if args.root.is_none() && !is_root() {
        return Err(InstallError::NotRoot);
    }
    for s in &steps {
        println!("{}", execute(s)?);
    }
    Ok(true)
}

/// `auditor uninstall`: stops and disables the agent, removes the binary and the units;
/// keeps /etc/auditor (the operator's configuration) and /var/lib/auditor (the evidence).
pub fn uninstall(args: &InstallArgs) -> Result<bool, InstallError> {
    let root = args.root.clone().unwrap_or_else(|| PathBuf::from("/"));
    let mut steps: Vec<String> = Vec::new();
    let run_systemd = args.root.is_none() && systemd_running();
    if run_systemd {
        steps.push("run `systemctl disable --now auditor.service auditor-vault.service`".into());
    }
    let files = [
        under(&root, UNIT_DIR).join("auditor.service"),
        under(&root, UNIT_DIR).join("auditor-vault.service"),
        under(&root, SYSUSERS_PATH),
        under(&root, DOC_PATH),
        under(&root, BIN_PATH),
    ];
    for f in &files {
        steps.push(format!("remove {}", f.display()));
    }
    steps.push(format!(
        "keep {} and {} (configuration and evidence): remove them by hand if you mean to",
        under(&root, "/etc/auditor").display(),
        under(&root, STATE_DIR).display()
    ));
    if args.dry_run {
        println!("auditor uninstall --dry-run: would");
        for s in &steps {
            println!("  - {s}");
        }
        return Ok(true);
    }
    if args.root.is_none() && !is_root() {
        return Err(InstallError::NotRoot);
    }
    if run_systemd {
        // Best effort: a unit that is not loaded is not an error here.
        let _ = Command::new("systemctl")
            .args([
                "disable",
                "--now",
                "auditor.service",
                "auditor-vault.service",
            ])
            .status();
        println!("stopped and disabled auditor.service, auditor-vault.service");
    }
    for f in &files {
        match std::fs::remove_file(f) {
            Ok(()) => println!("removed {}", f.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                println!("{} was not there", f.display())
            }
            Err(e) => return Err(io("removing", f)(e)),
        }
    }
    if run_systemd {
        let _ = Command::new("systemctl").arg("daemon-reload").status();
    }
    println!(
        "kept {} and {}",
        under(&root, "/etc/auditor").display(),
        under(&root, STATE_DIR).display()
    );
    Ok(true)
}
