//! The `auditor` binary: parses the command line and hands over to the library.

use std::{io::IsTerminal, process::ExitCode};

use anyhow::Context as _;
use auditor::{
    cli::{Cli, Command, Format, WatchArgs},
    metrics::{Metrics, MetricsSink},
    sink::{JsonLines, Sink, file, local_vault::LocalVaultSink, pretty::Pretty},
    status::{StatusContext, StatusWriter},
    watch::{self, WatchOptions},
};
use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::try_new(&cli.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .with_target(false)
        .init();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("auditor: error: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, leaving out a cause its parent's message already spells out.
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Check(args) => {
            let ok = auditor::check::report(&auditor::check::run(args.obj));
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Watch(args) => watch_cmd(args),
        Command::Vault(args) => {
            let ok = auditor::vault_cmd::run(args.command)?;
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Config(args) => Ok(exit(auditor::config::run(&args))),
        Command::Install(args) => Ok(exit(auditor::install::install(&args)?)),
        Command::Uninstall(args) => Ok(exit(auditor::install::uninstall(&args)?)),
        Command::Status(args) => Ok(exit(auditor::status::run(&args)?)),
    }
}

fn exit(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn watch_cmd(args: WatchArgs) -> anyhow::Result<ExitCode> {
    // flag > configuration file > built-in default (config.rs).
    let cfg = auditor::config::resolve(args)?;
    if let Some(f) = &cfg.file {
        tracing::info!("configuration: {}", f.display());
    }
    let mut load = cfg.load.clone();
    // SAFETY: no preconditions. Checked before any file is opened, so the error is the
    // one that matters.
    if unsafe { libc::geteuid() } != 0 {
        return Err(auditor::bpf::LoadError::NotRoot.into());
    }
    // Before any thread is spawned: they all inherit it (priority.rs).
    if let Err(e) = auditor::priority::apply(cfg.nice) {
        tracing::warn!("{e}; the agent runs on at its current priority");
    }
    let nice = auditor::priority::current().ok();
    let rules = auditor::classify::UserRules::load(&cfg.rules)?;
    let watch = auditor::watchlist::WatchList::for_trees(&cfg.watch_paths()?)?;
    tracing::debug!(prefixes = ?watch.prefixes, inodes = watch.inodes.len(), "watch list");
    let trees = watch.trees.clone();
    load.watch = Some(watch);
    let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
    if !cfg.quiet {
        let tty = std::io::stdout().is_terminal();
        let format = cfg
            .format
            .unwrap_or(if tty { Format::Pretty } else { Format::Json });
        let stdout = std::io::LineWriter::new(std::io::stdout());
        sinks.push(match format {
            Format::Json => Box::new(JsonLines::new(stdout, "stdout")),
            Format::Pretty => Box::new(Pretty::new(stdout, tty)),
        });
    }
    if let Some(path) = &cfg.output {
        sinks.push(Box::new(file::open(path)?));
    }
    let boot_id = watch::new_boot_id();
    let kernel_losses = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let metrics = Metrics::new(kernel_losses.clone());
    sinks.push(Box::new(MetricsSink::new(metrics.clone())));
    // Bound before anything starts (vault client, programs): a taken port fails the start.
    let metrics_addr = match cfg.metrics_listen {
        Some(addr) => Some(auditor::metrics::serve(addr, metrics.clone())?),
        None => None,
    };
    let host = cfg.host.clone().unwrap_or_else(watch::hostname);
    let evidence;
    if let Some(v) = &cfg.vault {
        use auditor::sink::vault_client::{VaultClientOptions, VaultSink};
        let opts = VaultClientOptions {
            spool_dir: cfg.spool_dir.clone(),
            spool_max_bytes: cfg.spool_max_bytes,
            heartbeat_interval: cfg.heartbeat_interval,
            tls_pin_sha256: v.pin.clone(),
            ca_cert: v.ca.clone(),
            allow_insecure_http: v.allow_insecure_http,
            redaction: if cfg.redact {
                auditor::redact::Redactor::default()
            } else {
                auditor::redact::Redactor::disabled()
            },
            ..VaultClientOptions::new(
                v.url.clone(),
                v.token.clone(),
                host.clone(),
                boot_id.clone(),
            )
        };
        let sink = VaultSink::start(opts, kernel_losses.clone())
            .with_context(|| format!("starting delivery to {}", v.url))?;
        metrics.set_vault(sink.stats_handle());
        sinks.push(Box::new(sink));
        evidence = format!("remote vault {}", v.url);
    } else if let Some(dir) = &cfg.local_vault {
        let sink = LocalVaultSink::open(dir, &host, &boot_id).with_context(|| {
            format!(
                "opening the local vault {} (--vault-dir / [local_vault] dir)",
                dir.display()
            )
        })?;
        sinks.push(Box::new(sink));
        evidence = format!("local vault {}", dir.display());
    } else {
        evidence = "none (no vault: stdout and the output file only)".to_owned();
    }
    // Not fatal: an auditor that refuses to audit because /run is read-only helps no one.
    let _status = cfg.status_file.as_ref().and_then(|path| {
        let ctx = StatusContext {
            watch_paths: trees.clone(),
            evidence,
            metrics: metrics_addr.map(|a| a.to_string()),
        };
        StatusWriter::start(path.clone(), metrics.clone(), ctx)
            .map_err(|e| {
                tracing::warn!("{e}; `auditor status` will not see this agent (set --status-file or status_file)")
            })
            .ok()
    });
    // SIGHUP: the configuration file is read again (flags still win), the watch paths
    // re-resolved and the rules files re-read. Keys that only take effect at a start
    // are named in the log.
    let reload: watch::Reloader = Box::new(move || {
        let new = cfg.reload().map_err(|e| e.to_string())?;
        if !new.restart_needed.is_empty() {
            tracing::warn!(
                "changed in the configuration but only applied at the next start: {}",
                new.restart_needed.join(", ")
            );
        }
        let rules = auditor::classify::UserRules::load(&new.rules).map_err(|e| e.to_string())?;
        let watch =
            auditor::watchlist::WatchList::for_trees(&new.paths).map_err(|e| e.to_string())?;
        Ok(watch::Reconfig { watch, rules })
    });
    let opts = WatchOptions {
        load,
        nice,
        boot_id,
        kernel_losses,
        rules,
        reload: Some(reload),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = rt.block_on(async move {
        let shutdown = auditor::shutdown_signal();
        let ready = |n: usize| {
            let watched: Vec<String> = trees.iter().map(|p| p.display().to_string()).collect();
            tracing::info!("watching: {n} tracepoints attached; exec capture is global; watch paths: {watched:?}");
            notify_systemd(&[sd_notify::NotifyState::Ready]);
            start_watchdog();
        };
        watch::run(opts, sinks, ready, async {
            let reason = shutdown.await;
            notify_systemd(&[sd_notify::NotifyState::Stopping]);
            reason
        })
        .await
    });
    result?;
    Ok(ExitCode::SUCCESS)
}

/// Tells systemd (Type=notify) about a state change; a no-op outside systemd.
fn notify_systemd(state: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!("cannot notify systemd ($NOTIFY_SOCKET): {e}");
    }
}

/// With `WatchdogSec=` set, pings systemd at half the interval from a task on the event
/// loop's own runtime: if the loop wedges, the pings stop and systemd restarts the agent.
fn start_watchdog() {
    let Some(every) = sd_notify::watchdog_enabled() else {
        return;
    };
    let every = (every / 2).max(std::time::Duration::from_millis(100));
    tracing::info!("systemd watchdog on: pinging every {every:?}");
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            notify_systemd(&[sd_notify::NotifyState::Watchdog]);
        }
    });
}
