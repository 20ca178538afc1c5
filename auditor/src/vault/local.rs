//! The embedded vault `auditor watch` writes to when no remote vault is configured: the same
//! directory layout, chain and records as the server (so `vault verify`/`query`/`erase` work
//! on it), appended in-process. It holds the vault's writer lock while open.

use std::path::Path;

use serde_json::Value;

use super::VaultError;
use super::store::{HostStore, SeqIndex, VaultLock, lock_vault};

pub struct LocalVault {
    store: HostStore,
    boot_id: String,
    _lock: VaultLock,
}

impl LocalVault {
    /// Opens (creating if needed) `data` for `host`; `boot_id` names this run's sequence
    /// numbering (seq restarts at 1 with every new boot_id).
    pub fn open(data: &Path, host: &str, boot_id: &str) -> Result<Self, VaultError> {
        if boot_id.is_empty() || !boot_id.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(VaultError::Invalid(format!(
                "boot_id {boot_id:?} must be printable ASCII"
            )));
        }
        let lock = lock_vault(data)?;
        let store = HostStore::open(data, host)?;
        if let Some(detail) = &store.damaged {
            return Err(VaultError::Damaged {
                host: host.to_owned(),
                detail: detail.clone(),
            });
        }
        Ok(LocalVault {
            store,
            boot_id: boot_id.to_owned(),
            _lock: lock,
        })
    }

    /// Appends one event (written, not yet fsynced: call [`flush`](Self::flush)). Same
    /// rules as the server: a repeated seq is stored once, a skipped one leaves a gap
    /// record; only the last few thousand seqs are remembered (see [`SeqIndex::Recent`]).
    pub fn append(&mut self, seq: u64, event: &Value) -> Result<(), VaultError> {
        self.append_canonical(vec![(seq, super::record::canonical_json(event))])
    }

    /// Appends events already in canonical JSON ([`super::canonical`]) in one write (not
    /// synced: see [`LocalVault::flush`]).
    pub fn append_canonical(&mut self, events: Vec<(u64, Vec<u8>)>) -> Result<(), VaultError> {
        if events.iter().any(|(seq, _)| *seq == 0) {
            return Err(VaultError::Invalid("seq starts at 1".to_owned()));
        }
        if events.is_empty() {
            return Ok(());
        }
        self.store
            .ingest_canonical(&self.boot_id, events, false, SeqIndex::Recent)?;
        Ok(())
    }

    /// fsync: everything appended so far is durable when this returns.
    pub fn flush(&mut self) -> Result<(), VaultError> {
        self.store.sync()
    }

    /// Hex of the chain head and its index, to record elsewhere as an anchor.
    pub fn chain_head(&self) -> (String, u64) {
        let (h, i) = self.store.head();
        (hex::encode(h), i)
    }
}

impl Drop for LocalVault {
    fn drop(&mut self) {
        if let Err(e) = self.store.sync() {
            tracing::error!(error = %e, "syncing the local vault on close failed");
        }
    }
}
