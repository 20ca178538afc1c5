//! `auditor`: an eBPF-based, kernel-level activity auditor.
//!
//! The data path, in module order:
//! kernel programs (`auditor-ebpf`) -> [`bpf`] (load, attach, ring buffer, loss counters)
//! -> [`decode`] (bytes -> typed records, total) -> [`assemble`] (pair entry/exit, paths)
//! -> [`watch`] (sequence, stamp, queue) -> [`sink`] (stdout, file, vault).

pub mod assemble;
pub mod bpf;
pub mod check;
pub mod classify;
pub mod cli;
pub mod clock;
pub mod config;
pub mod decode;
pub mod event;
pub mod guard;
pub mod install;
pub mod metrics;
pub mod priority;
pub mod redact;
pub mod sink;
pub mod status;
pub mod vault;
pub mod vault_cmd;
pub mod watch;
pub mod watchlist;

/// Resolves on SIGTERM or Ctrl-C (logging which) with the reason, for graceful
/// shutdown.
pub async fn shutdown_signal() -> String {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot install the SIGTERM handler: {e}");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {
            tracing::info!("interrupted; flushing");
            "SIGINT".into()
        }
        _ = term.recv() => {
            tracing::info!("SIGTERM; flushing");
            "SIGTERM".into()
        }
    }
}
