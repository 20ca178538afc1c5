//! The embedded local vault: the default store of `auditor watch` when no remote vault is
//! configured. Same on-disk format as the vault server (chained, verifiable, erasable), so
//! `auditor vault verify|query|erase --data DIR` work on a single machine too.

use std::path::Path;

use super::{Sink, SinkError};
use crate::{
    event::Event,
    vault::{LocalVault, VaultError},
};

pub struct LocalVaultSink {
    vault: LocalVault,
    target: String,
}

impl LocalVaultSink {
    pub fn open(dir: &Path, host: &str, boot_id: &str) -> Result<Self, VaultError> {
        Ok(Self {
            vault: LocalVault::open(dir, host, boot_id)?,
            target: format!("local vault {}", dir.display()),
        })
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
        let value = serde_json::to_value(ev)?;
        self.vault.append(ev.seq, &value).map_err(|e| self.err(e))
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.vault.flush().map_err(|e| self.err(e))
    }
}
