//! Certificates made at run time (rcgen) for the gateway demo and the gateway bench: a CA and a
//! server certificate for one name, written as a `credentialName` directory reads them.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// A CA and an ECDSA P-256 server certificate for `name`: `tls.crt` and `tls.key` in `dir`;
/// returns the CA's PEM file (`ca.pem`, written beside `dir`) for clients that verify.
///
/// # Errors
/// rcgen fails or a file cannot be written.
pub fn issue(dir: &Path, name: &str) -> Result<PathBuf> {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "interceptor xtask CA");
    let ca_key = rcgen::KeyPair::generate()?;
    let ca = ca_params.self_signed(&ca_key)?;
    let key = rcgen::KeyPair::generate()?;
    let leaf = rcgen::CertificateParams::new(vec![name.to_owned()])?.signed_by(&key, &ca, &ca_key)?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join("tls.crt"), leaf.pem())?;
    std::fs::write(dir.join("tls.key"), key.serialize_pem())?;
    let ca_file = dir.parent().context("credential directory")?.join("ca.pem");
    std::fs::write(&ca_file, ca.pem())?;
    Ok(ca_file)
}
