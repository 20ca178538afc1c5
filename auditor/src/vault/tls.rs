//! TLS for the vault server (rustls, ring provider): a configured certificate, or a
//! self-signed one generated into `DATA/tls/` on first start and reused afterwards. Agents
//! pin it by its SHA-256 fingerprint or trust `cert.pem` as their only root. Optional mutual
//! TLS: with a client CA, only clients holding a certificate it signed can connect.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use super::VaultError;

/// Where the generated certificate and key live: `DATA/tls/cert.pem`, `DATA/tls/key.pem`.
pub fn self_signed_paths(data: &Path) -> (PathBuf, PathBuf) {
    let dir = data.join("tls");
    (dir.join("cert.pem"), dir.join("key.pem"))
}

/// SHA-256 of the first certificate's DER in a PEM file, as colon-separated upper-case hex.
pub fn cert_fingerprint(cert_pem: &Path) -> Result<String, VaultError> {
    let certs = load_certs(cert_pem)?;
    let first = certs
        .first()
        .ok_or_else(|| VaultError::Tls(format!("no certificate in {}", cert_pem.display())))?;
    Ok(fingerprint(first))
}

fn fingerprint(der: &CertificateDer<'_>) -> String {
    Sha256::digest(der.as_ref())
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, VaultError> {
    CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| VaultError::Tls(format!("reading certificates from {}: {e}", path.display())))
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, VaultError> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| VaultError::Tls(format!("reading private key from {}: {e}", path.display())))
}

/// Generates the self-signed certificate unless it exists. Returns (cert, key, generated).
pub(crate) fn ensure_self_signed(data: &Path) -> Result<(PathBuf, PathBuf, bool), VaultError> {
    let (cert, key) = self_signed_paths(data);
    if cert.exists() && key.exists() {
        return Ok((cert, key, false));
    }
    let dir = data.join("tls");
    std::fs::create_dir_all(&dir).map_err(VaultError::io(format!("creating {}", dir.display())))?;
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let h = h.trim();
        if !h.is_empty() && h != "localhost" {
            names.push(h.to_owned());
        }
    }
    let ck = rcgen::generate_simple_self_signed(names)
        .map_err(|e| VaultError::Tls(format!("generating a self-signed certificate: {e}")))?;
    write_private(&key, ck.signing_key.serialize_pem().as_bytes(), 0o600)?;
    write_private(&cert, ck.cert.pem().as_bytes(), 0o644)?;
    Ok((cert, key, true))
}

fn write_private(path: &Path, bytes: &[u8], mode: u32) -> Result<(), VaultError> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(mode)
        .open(path)
        .map_err(VaultError::io(format!("creating {}", path.display())))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(VaultError::io(format!("writing {}", path.display())))
}

/// The rustls server configuration, and the fingerprint of the certificate it serves.
pub(crate) fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<(rustls::ServerConfig, String), VaultError> {
    let certs = load_certs(cert)?;
    let fp = certs
        .first()
        .map(fingerprint)
        .ok_or_else(|| VaultError::Tls(format!("no certificate in {}", cert.display())))?;
    let key = load_key(key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| VaultError::Tls(e.to_string()))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in load_certs(ca)? {
                roots
                    .add(c)
                    .map_err(|e| VaultError::Tls(format!("client CA {}: {e}", ca.display())))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| VaultError::Tls(format!("client CA {}: {e}", ca.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| VaultError::Tls(format!("certificate {}: {e}", cert.display())))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((config, fp))
}
