//! The embedded local vault: the default store of `auditor watch` when no remote vault is
//! configured. Same on-disk format as the vault server (chained, verifiable, erasable), so
//! `auditor vault verify|query|erase --data DIR` work on a single machine too.

use std::path::Path;

use super::{Sink, SinkError};
use crate::{
    event::Event,
    vault::{LocalVault, VaultError, canonical},
};

pub struct LocalVaultSink {
    vault: LocalVault,
    target: String,
    last_sync: std::time::Instant,
    /// Events not yet written: appended in one batch (one write, one salt draw) at the
    /// next flush, which the sink thread calls whenever its queue runs empty, or when
    /// [`BATCH_MAX`] are waiting.
    batch: Vec<(u64, Vec<u8>)>,
    /// Canonical JSON, as the vault server stores it, straight from the event.
    encoder: canonical::Encoder,
}

/// Largest batch held in memory before it is written.
const BATCH_MAX: usize = 256;

/// fsyncs are coalesced to at most one per interval: the local vault sits on the same
/// host as the attacker anyway, and an fsync per idle moment cost the exec storm
/// benchmark ~15 %. Shutdown always syncs.
const SYNC_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

impl LocalVaultSink {
    pub fn open(dir: &Path, host: &str, boot_id: &str) -> Result<Self, VaultError> {
        Ok(Self {
            vault: LocalVault::open(dir, host, boot_id)?,
            target: format!("local vault {}", dir.display()),
            last_sync: std::time::Instant::now(),
            batch: Vec::with_capacity(BATCH_MAX),
            encoder: canonical::Encoder::default(),
        })
    }

    fn write_batch(&mut self) -> Result<(), SinkError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH_MAX));
        self.vault.append_canonical(batch).map_err(|e| self.err(e))
    }

    fn err(&self, e: VaultError) -> SinkError {
        SinkError::Io {
            target: self.target.clone(),
            source: std::io::Error::other(e.to_string()),
        }
    }
}

impl Sink for LocalVaultSink {
    fn write(&mut self, ev: &Event) -> Result<(), SinkError> {
        let payload = self.encoder.encode(ev)?.to_vec();
        self.batch.push((ev.seq, payload));
        if self.batch.len() >= BATCH_MAX {
            self.write_batch()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.write_batch()?;
        if self.last_sync.elapsed() < SYNC_INTERVAL {
            return Ok(());
        }
        self.last_sync = std::time::Instant::now();
        self.vault.flush().map_err(|e| self.err(e))
    }

    fn close(mut self: Box<Self>) {
        if let Err(e) = self.write_batch() {
            tracing::error!("final write to the {}: {e}", self.target);
        }
        if let Err(e) = self.vault.flush() {
            tracing::error!("final sync of the {}: {e}", self.target);
        }
    }
}
