//! Per-host bearer tokens. `DATA/tokens.json` holds only the SHA-256 of each token, so a copy
//! of the vault directory does not let anyone send as an agent. The server re-reads the file
//! when it changes, so `enroll` and `revoke` take effect on a running server at once.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{VaultError, check_host, now_ns, rfc3339_ns};

const TOKEN_PREFIX: &str = "avt_";

#[derive(Serialize, Deserialize, Default)]
struct TokenFile {
    version: u32,
    hosts: BTreeMap<String, Enrollment>,
}

#[derive(Serialize, Deserialize, Clone)]
struct Enrollment {
    token_sha256: String,
    enrolled_at: String,
}

fn tokens_path(data: &Path) -> PathBuf {
    data.join("tokens.json")
}

pub(crate) fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn read_file(path: &Path) -> Result<TokenFile, VaultError> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            VaultError::Invalid(format!(
                "{} is not a valid token file ({e}); fix or remove it",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(TokenFile {
            version: 1,
            ..TokenFile::default()
        }),
        Err(e) => Err(VaultError::Io {
            context: format!("reading {}", path.display()),
            source: e,
        }),
    }
}

/// Read-modify-write of tokens.json under its own lock, replaced atomically (temp + rename).
fn update<T>(
    data: &Path,
    f: impl FnOnce(&mut TokenFile) -> Result<T, VaultError>,
) -> Result<T, VaultError> {
    fs::create_dir_all(data).map_err(VaultError::io(format!("creating {}", data.display())))?;
    let lock_path = data.join("tokens.lock");
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(VaultError::io(format!("opening {}", lock_path.display())))?;
    lock.lock()
        .map_err(VaultError::io(format!("locking {}", lock_path.display())))?;
    let path = tokens_path(data);
    let mut file = read_file(&path)?;
    let out = f(&mut file)?;
    file.version = 1;
    let json = serde_json::to_vec_pretty(&file)
        .map_err(|e| VaultError::Invalid(format!("serializing tokens: {e}")))?;
    let tmp = data.join("tokens.json.tmp");
    let ctx = VaultError::io(format!("writing {}", tmp.display()));
    let mut t = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(ctx)?;
    t.write_all(&json)
        .and_then(|()| t.sync_all())
        .map_err(VaultError::io(format!("writing {}", tmp.display())))?;
    fs::rename(&tmp, &path).map_err(VaultError::io(format!("replacing {}", path.display())))?;
    fs::File::open(data)
        .and_then(|d| d.sync_all())
        .map_err(VaultError::io(format!("syncing {}", data.display())))?;
    Ok(out)
}

/// Enrolls `host` and returns its new token. Only the token's SHA-256 is stored: show the
/// token to the operator once; it cannot be recovered later (revoke and enroll again).
pub fn enroll(data: &Path, host: &str) -> Result<String, VaultError> {
    check_host(host)?;
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw)?;
    let token = format!("{TOKEN_PREFIX}{}", hex::encode(raw));
    let hash = token_hash(&token);
    update(data, |f| {
        if f.hosts.contains_key(host) {
            return Err(VaultError::AlreadyEnrolled(host.to_owned()));
        }
        f.hosts.insert(
            host.to_owned(),
            Enrollment {
                token_sha256: hash,
                enrolled_at: rfc3339_ns(now_ns()),
            },
        );
        Ok(())
    })?;
    Ok(token)
}

/// Revokes `host`'s token: its next request gets 401. Its records stay in the vault.
pub fn revoke(data: &Path, host: &str) -> Result<(), VaultError> {
    check_host(host)?;
    update(data, |f| {
        f.hosts
            .remove(host)
            .map(|_| ())
            .ok_or_else(|| VaultError::NotEnrolled(host.to_owned()))
    })
}

/// The server's view of tokens.json, reloaded when the file changes (inode, size or mtime).
pub(crate) struct TokenCache {
    path: PathBuf,
    state: Mutex<Option<(FileStamp, BTreeMap<String, String>)>>,
}

type FileStamp = (u64, u64, i64, i64);

impl TokenCache {
    pub(crate) fn new(data: &Path) -> Self {
        TokenCache {
            path: tokens_path(data),
            state: Mutex::new(None),
        }
    }

    fn stamp(&self) -> Option<FileStamp> {
        let m = fs::metadata(&self.path).ok()?;
        Some((m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
    }

    /// token hash -> host, current as of this call.
    fn with_map<T>(&self, f: impl FnOnce(&BTreeMap<String, String>) -> T) -> Result<T, VaultError> {
        let mut state = self
            .state
            .lock()
            .map_err(|_| VaultError::Invalid("token cache poisoned".to_owned()))?;
        let stamp = self.stamp().unwrap_or_default();
        let fresh = matches!(&*state, Some((s, _)) if *s == stamp);
        if !fresh {
            let file = read_file(&self.path)?;
            let map = file
                .hosts
                .into_iter()
                .map(|(host, e)| (e.token_sha256, host))
                .collect();
            *state = Some((stamp, map));
        }
        let empty = BTreeMap::new();
        Ok(f(state.as_ref().map_or(&empty, |(_, m)| m)))
    }

    /// The host a token belongs to, if it is enrolled.
    pub(crate) fn host_for(&self, token: &str) -> Result<Option<String>, VaultError> {
        let h = token_hash(token);
        self.with_map(|m| m.get(&h).cloned())
    }

    pub(crate) fn is_enrolled(&self, host: &str) -> Result<bool, VaultError> {
        self.with_map(|m| m.values().any(|h| h == host))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn enroll_revoke_and_cache() {
        let d = tempfile::tempdir().unwrap();
        let cache = TokenCache::new(d.path());
        let t = enroll(d.path(), "web1").unwrap();
        assert!(t.starts_with(TOKEN_PREFIX));
        assert_eq!(cache.host_for(&t).unwrap().as_deref(), Some("web1"));
        assert!(matches!(
            enroll(d.path(), "web1"),
            Err(VaultError::AlreadyEnrolled(_))
        ));
        let raw = fs::read_to_string(d.path().join("tokens.json")).unwrap();
        assert!(!raw.contains(&t), "the token itself is never stored");
        revoke(d.path(), "web1").unwrap();
        assert_eq!(cache.host_for(&t).unwrap(), None);
        assert!(matches!(
            revoke(d.path(), "web1"),
            Err(VaultError::NotEnrolled(_))
        ));
    }
}
