//! Where events go: stdout (JSON Lines or a readable view), a JSON Lines file, and (see
//! the vault module) the local or remote vault. Sinks run on one dedicated thread fed by
//! a bounded channel whose full-queue policy is *block*: the ring-buffer reader waits,
//! the kernel ring fills, and only the kernel drops, counting every record it drops.

pub mod file;
pub mod local_vault;
pub mod pretty;
pub mod vault_client;

use std::io::Write;

use crate::event::Event;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("writing events to {target}: {source}")]
    Io {
        target: String,
        source: std::io::Error,
    },
    #[error("encoding an event as JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Canonical(#[from] crate::vault::canonical::CanonicalError),
}

pub trait Sink: Send {
    fn write(&mut self, ev: &Event) -> Result<(), SinkError>;
    /// Called when the queue is momentarily empty and at shutdown.
    fn flush(&mut self) -> Result<(), SinkError>;
    /// Graceful end (after the final flush): e.g. the vault client's last delivery try.
    fn close(self: Box<Self>) {}
}

/// JSON Lines to any writer.
pub struct JsonLines<W: Write + Send> {
    out: W,
    target: String,
}

impl<W: Write + Send> JsonLines<W> {
    pub fn new(out: W, target: impl Into<String>) -> Self {
        Self {
            out,
            target: target.into(),
        }
    }

    fn io(&self, source: std::io::Error) -> SinkError {
        SinkError::Io {
            target: self.target.clone(),
            source,
        }
    }
}

impl<W: Write + Send> Sink for JsonLines<W> {
    fn write(&mut self, ev: &Event) -> Result<(), SinkError> {
        serde_json::to_writer(&mut self.out, ev)?;
        self.out.write_all(b"\n").map_err(|e| self.io(e))
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.out.flush().map_err(|e| self.io(e))
    }
}
