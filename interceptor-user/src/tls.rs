//! TLS material read from PEM files, shared by gateway servers and upstream clusters.
//!
//! Certificates, keys and CA bundles come from file paths or from a `credentialName` directory
//! under the settings' `credentials` (`<credentials>/<name>/tls.crt`, `tls.key`, `ca.crt`, or
//! Istio's generic `cert`, `key`, `cacert`; a CA alone may sit in `<name>-cacert/ca.crt`).

pub mod upstream;

use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;

/// Why TLS settings could not be built: the field (below `tls`) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct TlsError {
    /// `serverCertificate`, `clientCertificate`, `privateKey`, `caCertificates`, `credentialName` …
    pub field: &'static str,
    /// What is wrong, naming the file.
    pub message: String,
}

/// A [`TlsError`] on `field`.
pub(crate) fn error(field: &'static str, message: impl Into<String>) -> TlsError {
    TlsError { field, message: message.into() }
}

/// The first of `names` that exists in `dir` (Kubernetes TLS Secret keys first, then Istio's
/// generic ones); the first name when none does, so the error names what was expected.
pub(crate) fn first_existing(dir: &Path, names: &[&str]) -> PathBuf {
    names.iter().map(|n| dir.join(n)).find(|p| p.exists()).unwrap_or_else(|| dir.join(names[0]))
}

/// The directory of credential `name` under `credentials`.
///
/// # Errors
/// A name that could leave the directory, or no such directory.
pub(crate) fn credential_dir(credentials: &Path, name: &str) -> Result<PathBuf, TlsError> {
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return Err(error("credentialName", format!("{name:?} is not a credential name")));
    }
    let dir = credentials.join(name);
    if !dir.is_dir() {
        return Err(error("credentialName", format!("no credential directory {}", dir.display())));
    }
    Ok(dir)
}

/// The CA bundle of credential `name` (in `dir`): its own `ca.crt` / `cacert`, else Istio's
/// separate `<name>-cacert/ca.crt`; `None` when neither exists.
pub(crate) fn credential_ca(credentials: &Path, name: &str, dir: &Path) -> Option<PathBuf> {
    let own = first_existing(dir, &["ca.crt", "cacert"]);
    let separate = credentials.join(format!("{name}-cacert")).join("ca.crt");
    [own, separate].into_iter().find(|p| p.exists())
}

/// The bytes of `path`, for `field`.
pub(crate) fn read(path: &Path, field: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| error(field, format!("cannot read {}: {e}", path.display())))
}

/// The PEM certificates in `pem` (read from `path`), at least one.
pub(crate) fn parse_certificates(
    pem: &[u8],
    path: &Path,
    field: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| error(field, format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(error(field, format!("{}: no PEM certificate in it", path.display())));
    }
    Ok(certs)
}

/// The PEM certificates of the file at `path`, at least one.
pub(crate) fn certificates(path: &Path, field: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    parse_certificates(&read(path, field)?, path, field)
}

/// The PEM private key in `pem` (read from `path`).
pub(crate) fn parse_private_key(
    pem: &[u8],
    path: &Path,
    field: &'static str,
) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem)
        .map_err(|e| error(field, format!("{}: no usable private key: {e}", path.display())))
}

/// A trust store of every certificate in `pem` (read from `path`).
pub(crate) fn parse_roots(pem: &[u8], path: &Path, field: &'static str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in parse_certificates(pem, path, field)? {
        roots.add(cert).map_err(|e| error(field, format!("{}: not a CA certificate: {e}", path.display())))?;
    }
    Ok(roots)
}
