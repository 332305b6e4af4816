//! TLS to Redis (`rediss://`, `rediss+sentinel://`): the files named by
//! `state_ca_file`, `state_cert_file` and `state_key_file`, read and
//! checked when the state is opened (start-up, `check-config`, reload), and
//! handed to the client library, which speaks rustls on the ring provider.
//!
//! Without `state_ca_file` the server is verified against the system's
//! roots. The client certificate and its key go together; the key is a
//! secret, and `check-config` warns when others can read it. A server
//! whose certificate does not verify, or that refuses ours, fails the
//! connection like a server that is down: logged once, and the instance
//! goes on with its own state.

#[cfg(feature = "redis")]
use std::path::Path;
use std::path::PathBuf;

#[cfg(feature = "redis")]
use rustls::pki_types::pem::PemObject;
#[cfg(feature = "redis")]
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::SharedStateError;

/// The TLS files of a `rediss://` state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// `state_ca_file`: the CA certificates (PEM) the server's certificate
    /// must chain to; `None`: the system's roots.
    pub ca_file: Option<PathBuf>,
    /// `state_cert_file`: our client certificate chain (PEM).
    pub cert_file: Option<PathBuf>,
    /// `state_key_file`: its private key (PEM).
    pub key_file: Option<PathBuf>,
}

/// Why one TLS file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsFileError {
    /// It cannot be read.
    #[error("{0}")]
    Read(#[source] std::io::Error),
    /// It is not PEM, or a PEM section is broken.
    #[cfg(feature = "redis")]
    #[error("not PEM: {0}")]
    Pem(#[source] rustls::pki_types::pem::Error),
    /// It holds no certificate.
    #[error("no certificate in it")]
    NoCertificate,
}

impl TlsFiles {
    /// True when no file is named.
    pub fn is_empty(&self) -> bool {
        self.ca_file.is_none() && self.cert_file.is_none() && self.key_file.is_none()
    }

    /// A certificate needs its key and a key its certificate.
    pub fn check(&self) -> Result<(), SharedStateError> {
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) => Err(SharedStateError::TlsPair {
                given: "state_cert_file",
                missing: "state_key_file",
            }),
            (None, Some(_)) => Err(SharedStateError::TlsPair {
                given: "state_key_file",
                missing: "state_cert_file",
            }),
            _ => Ok(()),
        }
    }

    /// The files read and checked, as the client library takes them.
    #[cfg(feature = "redis")]
    pub(super) fn certificates(&self) -> Result<redis::TlsCertificates, SharedStateError> {
        self.check()?;
        let root_cert = match &self.ca_file {
            Some(path) => Some(certificates("state_ca_file", path)?),
            None => None,
        };
        let client_tls = match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
                client_cert: certificates("state_cert_file", cert)?,
                client_key: private_key(key)?,
            }),
            _ => None,
        };
        Ok(redis::TlsCertificates {
            client_tls,
            root_cert,
        })
    }
}

#[cfg(feature = "redis")]
fn failure<'a>(
    option: &'static str,
    path: &'a Path,
) -> impl Fn(TlsFileError) -> SharedStateError + 'a {
    move |source| SharedStateError::TlsFile {
        option,
        path: path.to_owned(),
        source,
    }
}

#[cfg(feature = "redis")]
/// The PEM file at `path`, checked to hold one or more certificates.
fn certificates(option: &'static str, path: &Path) -> Result<Vec<u8>, SharedStateError> {
    let fail = failure(option, path);
    let pem = std::fs::read(path).map_err(|e| fail(TlsFileError::Read(e)))?;
    let mut n = 0;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        cert.map_err(|e| fail(TlsFileError::Pem(e)))?;
        n += 1;
    }
    if n == 0 {
        return Err(fail(TlsFileError::NoCertificate));
    }
    Ok(pem)
}

#[cfg(feature = "redis")]
/// The PEM file at `path`, checked to hold a private key.
fn private_key(path: &Path) -> Result<Vec<u8>, SharedStateError> {
    let fail = failure("state_key_file", path);
    let pem =
        zeroize::Zeroizing::new(std::fs::read(path).map_err(|e| fail(TlsFileError::Read(e)))?);
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| fail(TlsFileError::Pem(e)))?;
    Ok(pem.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_needs_its_key_and_a_key_its_certificate() {
        let cert_only = TlsFiles {
            cert_file: Some("c.pem".into()),
            ..TlsFiles::default()
        };
        assert_eq!(
            cert_only.check().unwrap_err().to_string(),
            "state_cert_file needs state_key_file as well"
        );
        let key_only = TlsFiles {
            key_file: Some("k.pem".into()),
            ..TlsFiles::default()
        };
        assert_eq!(
            key_only.check().unwrap_err().to_string(),
            "state_key_file needs state_cert_file as well"
        );
        let ca_only = TlsFiles {
            ca_file: Some("ca.pem".into()),
            ..TlsFiles::default()
        };
        assert!(ca_only.check().is_ok() && !ca_only.is_empty());
        assert!(TlsFiles::default().is_empty());
    }

    #[cfg(feature = "redis")]
    #[test]
    fn unreadable_or_non_pem_files_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let missing = TlsFiles {
            ca_file: Some(dir.path().join("nope.pem")),
            ..TlsFiles::default()
        };
        let e = missing.certificates().unwrap_err().to_string();
        assert!(
            e.starts_with("state_ca_file ") && e.contains("nope.pem"),
            "{e}"
        );
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "hello\n").unwrap();
        let e = TlsFiles {
            ca_file: Some(junk.clone()),
            ..TlsFiles::default()
        }
        .certificates()
        .unwrap_err()
        .to_string();
        assert!(e.ends_with("no certificate in it"), "{e}");
        let e = TlsFiles {
            cert_file: Some(junk.clone()),
            key_file: Some(junk),
            ..TlsFiles::default()
        }
        .certificates()
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("state_cert_file "), "{e}");
    }
}
