//! The vault: where evidence goes to be kept, and to prove what it holds and what is missing.
//!
//! An agent POSTs batches of events over HTTPS ([`server`]); each host's records go into an
//! append-only chain of segment files ([`store`], [`segment`]), every record bound into a
//! per-host hash chain over a salted *commitment* to its payload ([`record`]). Because the
//! chain covers the commitment and not the payload, [`erase`] can remove a payload for a GDPR
//! request and [`verify`] still passes; because the vault numbers nothing itself but checks
//! the agents' per-boot sequence numbers, every hole becomes a `gap` record.
//!
//! The on-disk format and the wire protocol are described in `docs/VAULT.md`.
//!
//! Layout of a vault directory:
//! ```text
//! DATA/vault.lock             held (flock) by the one writer: a server, a LocalVault or an erase
//! DATA/tokens.json            enrolled hosts and the SHA-256 of their tokens
//! DATA/tls/{cert,key}.pem     the self-signed certificate, when none is configured
//! DATA/hosts/<host>/seg-*.avs one chain per host
//! DATA/hosts/<host>/quarantine/  torn tails cut off at start, kept for inspection
//! ```

pub mod canonical;
mod erase;
mod local;
mod query;
mod record;
mod segment;
mod server;
mod store;
mod tls;
mod token;
mod verify;
mod writeback;

use std::path::PathBuf;

pub use erase::{EraseReport, EraseSelector, erase};
pub use local::LocalVault;
pub use query::{QueryFilter, StoredRecord, for_each_record, query};
pub use record::RecordKind;
pub use server::{
    DEFAULT_MAX_BODY_BYTES, DEFAULT_SILENCE_THRESHOLD, ServeOptions, serve, serve_on,
};
pub use tls::{cert_fingerprint, self_signed_paths};
pub use token::{enroll, revoke};
pub use verify::{HostSummary, VerifyFailure, VerifyReport, verify};

/// Errors at the vault's boundary. Messages say what failed, on what, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "vault directory {0} is in use by another writer (a running `vault serve`, `watch` or `erase`): stop it first"
    )]
    Locked(PathBuf),
    #[error(
        "invalid host name {0:?}: use 1-64 characters from letters, digits, '.', '-', '_', not starting with '.'"
    )]
    InvalidHost(String),
    #[error("host {0:?} is not enrolled")]
    NotEnrolled(String),
    #[error("host {0:?} is already enrolled: revoke it first to issue a new token")]
    AlreadyEnrolled(String),
    #[error("the store of host {host:?} is damaged ({detail}): run `auditor vault verify`")]
    Damaged { host: String, detail: String },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("{0}")]
    Invalid(String),
    #[error("no random numbers from the OS: {0}")]
    Random(#[from] getrandom::Error),
}

impl VaultError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> VaultError {
        let context = context.into();
        move |source| VaultError::Io { context, source }
    }
}

/// Host names become directory names, so they are restricted.
pub(crate) fn check_host(host: &str) -> Result<(), VaultError> {
    let ok = (1..=64).contains(&host.len())
        && !host.starts_with('.')
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(VaultError::InvalidHost(host.to_owned()))
    }
}

pub(crate) fn hosts_dir(data: &std::path::Path) -> PathBuf {
    data.join("hosts")
}

/// "web1/42": a record's id, stable for the life of the vault.
pub(crate) fn record_id(host: &str, index: u64) -> String {
    format!("{host}/{index}")
}

pub(crate) fn parse_record_id(id: &str) -> Result<(String, u64), VaultError> {
    let bad = || VaultError::Invalid(format!("record id {id:?} is not HOST/INDEX, e.g. web1/42"));
    let (host, index) = id.rsplit_once('/').ok_or_else(bad)?;
    check_host(host)?;
    let index = index.parse::<u64>().map_err(|_| bad())?;
    Ok((host.to_owned(), index))
}

pub(crate) fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

pub(crate) fn rfc3339_ns(ns: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ns);
    humantime::format_rfc3339_nanos(t).to_string()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn host_names_are_checked() {
        for ok in ["web1", "db-2.prod", "a_b"] {
            check_host(ok).unwrap();
        }
        for bad in ["", ".", "..", "../x", "a/b", "a b", &"x".repeat(65)] {
            assert!(check_host(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn record_ids_round_trip() {
        assert_eq!(
            parse_record_id(&record_id("web1", 42)).unwrap(),
            ("web1".to_owned(), 42)
        );
        assert!(parse_record_id("web1").is_err());
        assert!(parse_record_id("../x/1").is_err());
    }
}
