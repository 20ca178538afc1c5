//! The `auditor` binary: parses the command line and hands over to the library.

use std::{io::IsTerminal, process::ExitCode};

use anyhow::Context as _;
use auditor::{
    cli::{Cli, Command, Format, WatchArgs, watch_paths},
    sink::{JsonLines, Sink, file, local_vault::LocalVaultSink, pretty::Pretty},
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
    }
}

fn watch_cmd(args: WatchArgs) -> anyhow::Result<ExitCode> {
    let mut load = args.load_options()?;
    // SAFETY: no preconditions. Checked before any file is opened, so the error is the
    // one that matters.
    if unsafe { libc::geteuid() } != 0 {
        return Err(auditor::bpf::LoadError::NotRoot.into());
    }
    let rules = auditor::classify::UserRules::load(&args.rules)?;
    let watch = auditor::watchlist::WatchList::for_trees(&watch_paths(&args.paths)?)?;
    tracing::debug!(prefixes = ?watch.prefixes, inodes = watch.inodes.len(), "watch list");
    let trees = watch.trees.clone();
    load.watch = Some(watch);
    let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
    if !args.quiet {
        let tty = std::io::stdout().is_terminal();
        let format = args
            .format
            .unwrap_or(if tty { Format::Pretty } else { Format::Json });
        let stdout = std::io::LineWriter::new(std::io::stdout());
        sinks.push(match format {
            Format::Json => Box::new(JsonLines::new(stdout, "stdout")),
            Format::Pretty => Box::new(Pretty::new(stdout, tty)),
        });
    }
    if let Some(path) = &args.output {
        sinks.push(Box::new(file::open(path)?));
    }
    let boot_id = watch::new_boot_id();
    let kernel_losses = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let host = args.host.clone().unwrap_or_else(watch::hostname);
    if let Some(url) = &args.vault {
        use auditor::sink::vault_client::{VaultClientOptions, VaultSink};
        let token = args
            .token
            .clone()
            .context("--vault needs --token (or $AUDITOR_TOKEN)")?;
        let max = auditor::cli::parse_size(&args.spool_max)
            .map_err(|why| anyhow::anyhow!("--spool-max {:?}: {why}", args.spool_max))?;
        let opts = VaultClientOptions {
            spool_dir: args.spool.clone(),
            spool_max_bytes: max,
            tls_pin_sha256: args.vault_pin.clone(),
            ca_cert: args.vault_ca.clone(),
            allow_insecure_http: args.allow_insecure_http,
            redaction: if args.no_redact {
                auditor::redact::Redactor::disabled()
            } else {
                auditor::redact::Redactor::default()
            },
            ..VaultClientOptions::new(url.clone(), token, host.clone(), boot_id.clone())
        };
        let sink = VaultSink::start(opts, kernel_losses.clone())
            .with_context(|| format!("starting delivery to {url}"))?;
        sinks.push(Box::new(sink));
    } else if !args.no_local_vault {
        let sink = LocalVaultSink::open(&args.vault_dir, &host, &boot_id).with_context(|| {
            format!(
                "opening the local vault {} (--vault-dir)",
                args.vault_dir.display()
            )
        })?;
        sinks.push(Box::new(sink));
    }
    // SIGHUP: the watch paths are re-resolved (a tree created or re-mounted since
    // start) and the rules files re-read.
    let (paths, rule_files) = (args.paths.clone(), args.rules.clone());
    let reload: watch::Reloader = Box::new(move || {
        let rules = auditor::classify::UserRules::load(&rule_files).map_err(|e| e.to_string())?;
        let trees = watch_paths(&paths).map_err(|e| e.to_string())?;
        let watch = auditor::watchlist::WatchList::for_trees(&trees).map_err(|e| e.to_string())?;
        Ok(watch::Reconfig { watch, rules })
    });
    let opts = WatchOptions {
        load,
        boot_id,
        kernel_losses,
        rules,
        reload: Some(reload),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let shutdown = auditor::shutdown_signal();
        let ready = |n: usize| {
            let watched: Vec<String> = trees.iter().map(|p| p.display().to_string()).collect();
            tracing::info!("watching: {n} tracepoints attached; exec capture is global; watch paths: {watched:?}");
        };
        watch::run(opts, sinks, ready, shutdown).await
    })?;
    Ok(ExitCode::SUCCESS)
}
