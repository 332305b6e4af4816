//! TLS client set-up shared by the LDAP and PostgreSQL passdbs: a CA file
//! (`tls_ca=`, `sslrootcert=`) read into a root store, and rustls on the
//! ring provider with its safe protocol versions.

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::WantsVerifier;
use rustls::{ClientConfig, ConfigBuilder, RootCertStore};

/// A CA file that cannot serve as trust roots, or a TLS set-up that failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Unreadable, not PEM, or a certificate rustls refuses.
    #[error("{option} {path}: {source}")]
    Read {
        /// The URI option that named the file.
        option: &'static str,
        /// The file as given.
        path: String,
        /// The PEM reader's or rustls's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A PEM file without a certificate.
    #[error("{option} {path}: no certificate in it")]
    Empty {
        /// The URI option that named the file.
        option: &'static str,
        /// The file as given.
        path: String,
    },
    /// rustls refused the protocol versions (a build problem).
    #[error("{0}")]
    Versions(#[source] rustls::Error),
}

/// The certificates of the PEM file at `path`, named by `option` in errors.
pub fn load_roots(option: &'static str, path: &Path) -> Result<RootCertStore, TlsError> {
    let read = |source: Box<dyn std::error::Error + Send + Sync>| TlsError::Read {
        option,
        path: path.display().to_string(),
        source,
    };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| read(e.into()))? {
        let cert = cert.map_err(|e| read(e.into()))?;
        roots.add(cert).map_err(|e| read(e.into()))?;
    }
    if roots.is_empty() {
        return Err(TlsError::Empty {
            option,
            path: path.display().to_string(),
        });
    }
    Ok(roots)
}

/// A client config builder on the ring provider, before the verifier is chosen.
pub fn builder() -> Result<
    (
        ConfigBuilder<ClientConfig, WantsVerifier>,
        Arc<CryptoProvider>,
    ),
    TlsError,
> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Versions)?;
    Ok((builder, provider))
}
