//! The `auditor` binary: parses the command line and hands over to the library.

use std::{io::IsTerminal, process::ExitCode};

use anyhow::Context as _;
use auditor::{
    cli::{Cli, Command, Format, WatchArgs, watch_paths},
    sink::{JsonLines, Sink, file, pretty::Pretty},
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
            eprintln!("auditor: error: {e:#}");
            ExitCode::FAILURE
        }
    }
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
    }
}

fn watch_cmd(args: WatchArgs) -> anyhow::Result<ExitCode> {
    let load = args.load_options()?;
    let paths = watch_paths(&args.paths)?;
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
    let opts = WatchOptions {
        load,
        boot_id: watch::new_boot_id(),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let shutdown = async {
            let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!("cannot install the SIGTERM handler: {e}");
                    return std::future::pending().await;
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; flushing"),
                _ = term.recv() => tracing::info!("SIGTERM; flushing"),
            }
        };
        let ready = |n: usize| {
            let watched: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
            tracing::info!("watching: {n} tracepoints attached; exec capture is global; watch paths: {watched:?}");
        };
        watch::run(opts, sinks, ready, shutdown).await
    })?;
    Ok(ExitCode::SUCCESS)
}
