//! TLS for `tls_listen`: the certificate and key from PEM files, the rustls
//! server configuration the shards handshake with, and the reload on
//! SIGHUP. The shards do the handshakes and the records (shard's `tls/`).
//!
//! Reload: the configuration's certificate resolver holds the current
//! certificate behind a lock that handshakes read once each. A reload
//! builds and checks the new certificate first and swaps it in only if it
//! is good, so a bad file keeps the old one (and says so); handshakes that
//! already started and established connections are not touched (their
//! keys do not depend on the certificate once the handshake is done).
//!
//! Choices, and why:
//! - TLS 1.3 only: every client this gateway serves (browsers, Node,
//!   Python, consoles' current TLS stacks) speaks it, and the shard's
//!   record layer implements TLS 1.3 records only.
//! - Cipher suites in the server's order: AES-128-GCM, AES-256-GCM,
//!   ChaCha20-Poly1305 (the client's order is ignored, so the choice is
//!   predictable: AES-128-GCM wherever the client offers it).
//! - No session tickets and no resumption cache: a ticket key or a cache is
//!   state per process (or per client) that a push gateway does not need;
//!   reconnects pay a full handshake (bounded per round by the shards).
//! - No ALPN: WebSocket and SSE are HTTP/1.1; a client that offers h2 and
//!   http/1.1 gets HTTP/1.1 by default.

/// The shard's TLS record layer and handshake for the fuzz targets
/// (`fuzz/bodies.rs`); not an API.
#[doc(hidden)]
pub use shard::tls_fuzzing as fuzzing;

use rustls::crypto::ring as provider;
use rustls::server::{ClientHello, NoServerSessionStorage, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// The certificate and key files, and the certificate handshakes use now.
#[derive(Debug)]
pub struct CertStore {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

impl CertStore {
    /// Loads both files; the error says which file and what to do.
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<Arc<CertStore>, String> {
        let key = load_certified_key(cert_file, key_file)?;
        Ok(Arc::new(CertStore {
            cert_file: cert_file.to_owned(),
            key_file: key_file.to_owned(),
            current: RwLock::new(key),
        }))
    }

    /// Reads the files again; on success new handshakes use the new
    /// certificate, on failure the old one stays. Returns what to log.
    pub fn reload(&self) -> Result<(), String> {
        let key = load_certified_key(&self.cert_file, &self.key_file)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = key;
        Ok(())
    }

    /// The server configuration every shard handshakes with.
    pub fn server_config(self: &Arc<Self>) -> Arc<ServerConfig> {
        let provider = rustls::crypto::CryptoProvider {
            cipher_suites: vec![
                provider::cipher_suite::TLS13_AES_128_GCM_SHA256,
                provider::cipher_suite::TLS13_AES_256_GCM_SHA384,
                provider::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
            ],
            ..provider::default_provider()
        };
        let mut config = ServerConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("ring supports TLS 1.3")
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        // The shard takes the traffic keys after the handshake (see
        // shard/src/tls/record.rs) and drops the rustls connection.
        config.enable_secret_extraction = true;
        config.send_tls13_tickets = 0;
        config.session_storage = Arc::new(NoServerSessionStorage {});
        config.ignore_client_order = true;
        Arc::new(config)
    }
}

fn load_certified_key(cert_file: &Path, key_file: &Path) -> Result<Arc<CertifiedKey>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            format!(
                "tls_cert_file ({}): {e}; point it at a PEM file with the certificate chain, leaf first (e.g. fullchain.pem)",
                cert_file.display()
            )
        })?;
    if certs.is_empty() {
        return Err(format!(
            "tls_cert_file ({}) holds no certificate (no \"-----BEGIN CERTIFICATE-----\" block); \
             point it at the PEM certificate chain, leaf first",
            cert_file.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| {
        format!(
            "tls_key_file ({}): {e}; point it at the PEM private key (PKCS#8, SEC1 or PKCS#1) of the certificate",
            key_file.display()
        )
    })?;
    let signing_key = provider::default_provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| {
            format!(
                "tls_key_file ({}): {e}; use an ECDSA (P-256/P-384), Ed25519 or RSA key",
                key_file.display()
            )
        })?;
    let certified = CertifiedKey::new(certs, signing_key);
    certified.keys_match().map_err(|e| {
        format!(
            "tls_key_file ({}) does not belong to the certificate in tls_cert_file ({}): {e}",
            key_file.display(),
            cert_file.display()
        )
    })?;
    Ok(Arc::new(certified))
}
