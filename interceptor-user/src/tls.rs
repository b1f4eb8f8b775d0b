//! TLS material read from PEM, shared by gateway servers and upstream clusters.
//!
//! Certificates, keys and CA bundles come from file paths or from a `credentialName`
//! credential (`credential`: a directory under the settings' `credentials`, or a Kubernetes
//! Secret), each piece a [`Pem`] that says where it came from, parsed here once for both uses.

pub mod credential;
pub mod upstream;

use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;

pub use credential::{Credentials, SecretSet};

/// Why TLS settings could not be built: the field (below `tls`) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct TlsError {
    /// `serverCertificate`, `clientCertificate`, `privateKey`, `caCertificates`, `credentialName` …
    pub field: &'static str,
    /// What is wrong, naming the file or the Secret and key.
    pub message: String,
}

/// A [`TlsError`] on `field`.
pub(crate) fn error(field: &'static str, message: impl Into<String>) -> TlsError {
    TlsError { field, message: message.into() }
}

/// PEM bytes and where they came from (a file's path, or `Secret ns/name key tls.crt`), with the
/// field that named them: what errors about them say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pem {
    /// The bytes as read.
    pub bytes: Vec<u8>,
    /// Where they came from, for messages and `explain`.
    pub origin: String,
    /// The field (below `tls`) that led to them.
    pub field: &'static str,
}

impl Pem {
    /// The file at `path`, named by `field`.
    ///
    /// # Errors
    /// The file cannot be read.
    pub(crate) fn read(path: &Path, field: &'static str) -> Result<Self, TlsError> {
        let bytes = std::fs::read(path).map_err(|e| error(field, format!("cannot read {}: {e}", path.display())))?;
        Ok(Pem { bytes, origin: path.display().to_string(), field })
    }

    fn error(&self, what: impl std::fmt::Display) -> TlsError {
        error(self.field, format!("{}: {what}", self.origin))
    }

    /// The certificates in it, at least one.
    ///
    /// # Errors
    /// Bad PEM, or no certificate in it.
    pub(crate) fn certificates(&self) -> Result<Vec<CertificateDer<'static>>, TlsError> {
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(&self.bytes).collect::<Result<_, _>>().map_err(|e| self.error(e))?;
        if certs.is_empty() {
            return Err(self.error("no PEM certificate in it"));
        }
        Ok(certs)
    }

    /// The private key in it.
    ///
    /// # Errors
    /// No usable key in it.
    pub(crate) fn private_key(&self) -> Result<PrivateKeyDer<'static>, TlsError> {
        PrivateKeyDer::from_pem_slice(&self.bytes).map_err(|e| self.error(format!("no usable private key: {e}")))
    }

    /// A trust store of every certificate in it.
    ///
    /// # Errors
    /// As [`Pem::certificates`], or a certificate that cannot be a trust anchor.
    pub(crate) fn roots(&self) -> Result<RootCertStore, TlsError> {
        let mut roots = RootCertStore::empty();
        for cert in self.certificates()? {
            roots.add(cert).map_err(|e| self.error(format!("not a CA certificate: {e}")))?;
        }
        Ok(roots)
    }

    /// An error saying the key in `self` does not fit the certificate.
    pub(crate) fn mismatch(&self, why: impl std::fmt::Display) -> TlsError {
        error(self.field, format!("{} does not fit the certificate: {why}", self.origin))
    }
}
