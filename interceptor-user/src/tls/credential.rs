//! `credentialName` credentials: where they come from — a directory of PEM files under the
//! settings' `credentials` (files source) or a Kubernetes Secret in the agent's own namespace
//! (cluster source) — and Istio's rules for reading one, the same for both sources
//! (`pilot/pkg/credentials/kube/secrets.go`): certificate and key from `cert` + `key`, else
//! `tls.crt` + `tls.key`; a CA from `cacert`, else `ca.crt`, taken from `<name>-cacert` when that
//! exists, else from the credential itself.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{error, Pem, TlsError};

/// The field every credential error is reported on.
const FIELD: &str = "credentialName";
/// Istio's explicit form of a Secret reference (`kubernetes://name`, `kubernetes://ns/name`).
const KUBERNETES_PREFIX: &str = "kubernetes://";
/// Suffix of the credential holding only the CA (Istio's `SdsCaSuffix`).
pub const CA_SUFFIX: &str = "-cacert";
/// Certificate and key keys, in Istio's order: generic first, then `kubernetes.io/tls`.
const KEY_PAIRS: [(&str, &str); 2] = [("cert", "key"), ("tls.crt", "tls.key")];
/// CA keys, in Istio's order.
const CA_KEYS: [&str; 2] = ["cacert", "ca.crt"];

/// The entries of one credential, key to bytes: a Secret's `data`, or a directory's files.
pub type Entries = BTreeMap<String, Vec<u8>>;

/// The Secrets of the agent's namespace as last listed (cluster source).
#[derive(Debug, Default)]
pub struct SecretSet {
    /// The agent's namespace: the only one credentials are read from (Istio reads a gateway's
    /// `credentialName` from the gateway workload's namespace).
    pub namespace: String,
    /// By name (deleted ones as last seen: see `cluster`).
    pub secrets: HashMap<String, Entries>,
}

/// Where `credentialName` credentials come from.
#[derive(Clone, Debug)]
pub enum Credentials {
    /// `<dir>/<name>/` holds the credential's files (files source).
    Files(PathBuf),
    /// Secrets of the agent's namespace (cluster source).
    Secrets(Arc<SecretSet>),
}

/// A certificate chain and its key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyPair {
    /// The chain, leaf first.
    pub certificate: Pem,
    /// The key.
    pub key: Pem,
}

/// One credential's entries and how to name them in messages.
struct Found {
    entries: Entries,
    /// `Secret ns/name` or the directory's path.
    origin: String,
}

impl Found {
    fn pem(&self, key: &str) -> Pem {
        let bytes = self.entries.get(key).cloned().unwrap_or_default();
        let origin = if self.origin.starts_with("Secret ") {
            format!("{} key {key}", self.origin)
        } else {
            format!("{}/{key}", self.origin)
        };
        Pem { bytes, origin, field: FIELD }
    }

    fn has_value(&self, keys: &[&str]) -> bool {
        keys.iter().all(|k| self.entries.get(*k).is_some_and(|v| !v.is_empty()))
    }

    fn has_keys(&self, keys: &[&str]) -> bool {
        keys.iter().all(|k| self.entries.contains_key(*k))
    }

    /// The keys there are, at most three (Istio's message).
    fn found(&self) -> String {
        let keys: Vec<&str> = self.entries.keys().map(String::as_str).collect();
        match keys.len() {
            0 => "no keys".into(),
            1..=3 => keys.join(", "),
            n => format!("{}, and {} more", keys[..3].join(", "), n - 3),
        }
    }

    fn key_pair(&self) -> Result<KeyPair, TlsError> {
        if let Some((cert, key)) = KEY_PAIRS.iter().find(|(c, k)| self.has_value(&[c, k])) {
            return Ok(KeyPair { certificate: self.pem(cert), key: self.pem(key) });
        }
        if let Some((cert, key)) = KEY_PAIRS.iter().find(|(c, k)| self.has_keys(&[c, k])) {
            return Err(error(FIELD, format!("{}: found keys {cert:?} and {key:?}, but they were empty", self.origin)));
        }
        Err(error(
            FIELD,
            format!(
                "{}: no certificate and key: expected keys (cert and key) or (tls.crt and tls.key); found {}",
                self.origin,
                self.found()
            ),
        ))
    }

    /// The CA; `None` when neither CA key is there.
    fn ca(&self) -> Result<Option<Pem>, TlsError> {
        if let Some(key) = CA_KEYS.iter().find(|k| self.has_value(&[k])) {
            return Ok(Some(self.pem(key)));
        }
        if let Some(key) = CA_KEYS.iter().find(|k| self.has_keys(&[k])) {
            return Err(error(FIELD, format!("{}: found key {key:?}, but it was empty", self.origin)));
        }
        Ok(None)
    }
}

/// Whether every certificate and key a credential's entries hold parses (its CA keys as
/// certificates too); the first one that does not, named by `origin` and key. What makes an
/// updated Secret usable.
///
/// # Errors
/// A certificate or key entry that does not parse.
pub fn check_entries(origin: &str, entries: &Entries) -> Result<(), TlsError> {
    let found = Found { entries: entries.clone(), origin: origin.to_owned() };
    for key in entries.iter().filter(|(_, v)| !v.is_empty()).map(|(k, _)| k) {
        let pem = found.pem(key);
        if KEY_PAIRS.iter().any(|(cert, _)| cert == key) || CA_KEYS.contains(&key.as_str()) {
            pem.certificates()?;
        } else if KEY_PAIRS.iter().any(|(_, k)| k == key) {
            pem.private_key()?;
        }
    }
    Ok(())
}

impl Credentials {
    /// The files source: credentials in directories under `dir`.
    pub fn files(dir: impl Into<PathBuf>) -> Self {
        Credentials::Files(dir.into())
    }

    /// Where a credential that cannot be found was looked for, for messages.
    fn describe(&self, name: &str) -> String {
        match self {
            Credentials::Files(dir) => format!("no credential directory {}", dir.join(name).display()),
            Credentials::Secrets(set) => format!(
                "Secret {}/{name} not found (credentials are read from the agent's namespace, {})",
                set.namespace, set.namespace
            ),
        }
    }

    /// The bare name `credential_name` refers to (`name`, `kubernetes://name`, or
    /// `kubernetes://<the agent's namespace>/name` for Secrets).
    fn name<'a>(&self, credential_name: &'a str) -> Result<&'a str, TlsError> {
        let bare = credential_name.strip_prefix(KUBERNETES_PREFIX).unwrap_or(credential_name);
        let name = match (self, bare.split_once('/')) {
            (_, None) => bare,
            (Credentials::Secrets(set), Some((namespace, name))) if namespace == set.namespace => name,
            (Credentials::Secrets(set), Some((namespace, _))) => {
                return Err(error(
                    FIELD,
                    format!(
                        "{credential_name:?}: a Secret of namespace {namespace}; Istio reads a gateway's credentials \
                         from its own namespace only ({})",
                        set.namespace
                    ),
                ))
            }
            (Credentials::Files(_), Some(_)) => "",
        };
        if name.is_empty() || name.starts_with('.') || name.contains("://") {
            return Err(error(FIELD, format!("{credential_name:?} is not a credential name")));
        }
        Ok(name)
    }

    /// The entries of credential `name`; `None` when there is none.
    fn find(&self, name: &str) -> Option<Found> {
        match self {
            Credentials::Files(dir) => {
                let dir = dir.join(name);
                if !dir.is_dir() {
                    return None;
                }
                // Only the keys credentials hold: a mounted Secret's directory has `..data` links too.
                let entries = KEY_PAIRS
                    .iter()
                    .flat_map(|(c, k)| [*c, *k])
                    .chain(CA_KEYS)
                    .filter_map(|key| std::fs::read(dir.join(key)).ok().map(|bytes| (key.to_owned(), bytes)))
                    .collect();
                Some(Found { entries, origin: dir.display().to_string() })
            }
            Credentials::Secrets(set) => set
                .secrets
                .get(name)
                .map(|entries| Found { entries: entries.clone(), origin: format!("Secret {}/{name}", set.namespace) }),
        }
    }

    /// The certificate chain and key of `credential_name`.
    ///
    /// # Errors
    /// No such credential, or neither key pair in it (each naming the Secret or directory).
    pub fn key_pair(&self, credential_name: &str) -> Result<KeyPair, TlsError> {
        let name = self.name(credential_name)?;
        self.find(name).ok_or_else(|| error(FIELD, self.describe(name)))?.key_pair()
    }

    /// The CA bundle of `credential_name`: from `<name>-cacert` when that exists (it must hold a
    /// CA), else from the credential itself; `None` when it has none.
    ///
    /// # Errors
    /// No such credential (neither), a `-cacert` credential without a CA, or an empty CA key.
    pub fn ca(&self, credential_name: &str) -> Result<Option<Pem>, TlsError> {
        let name = self.name(credential_name)?;
        if let Some(separate) = self.find(&format!("{name}{CA_SUFFIX}")) {
            return match separate.ca()? {
                Some(ca) => Ok(Some(ca)),
                None => Err(error(
                    FIELD,
                    format!("{}: no CA: expected key cacert or ca.crt; found {}", separate.origin, separate.found()),
                )),
            };
        }
        self.find(name).ok_or_else(|| error(FIELD, self.describe(name)))?.ca()
    }

    /// The CA bundle of `credential_name`, which must have one (a MUTUAL gateway server's).
    ///
    /// # Errors
    /// As [`Credentials::ca`], or no CA at all.
    pub fn required_ca(&self, credential_name: &str) -> Result<Pem, TlsError> {
        self.ca(credential_name)?.ok_or_else(|| {
            let name = self.name(credential_name).unwrap_or(credential_name);
            let origin = self.find(name).map_or_else(|| name.to_owned(), |f| f.origin);
            error(
                FIELD,
                format!(
                    "{origin}: no CA to verify client certificates with: expected key cacert or ca.crt, or a credential {name}{CA_SUFFIX}"
                ),
            )
        })
    }
}

impl From<&Path> for Credentials {
    fn from(dir: &Path) -> Self {
        Credentials::files(dir)
    }
}

/// Secrets of namespace `gw` from (name, [(key, value)]) lists, for unit tests.
#[cfg(test)]
pub(crate) fn test_secrets(list: &[(&str, &[(&str, &str)])]) -> Credentials {
    let secrets = list
        .iter()
        .map(|(name, entries)| {
            let entries = entries.iter().map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec())).collect();
            ((*name).to_owned(), entries)
        })
        .collect();
    Credentials::Secrets(Arc::new(SecretSet { namespace: "gw".into(), secrets }))
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::test_secrets as secrets;

    fn origin(pem: &Pem) -> &str {
        &pem.origin
    }

    #[test]
    fn a_tls_secret_and_a_generic_one_give_their_pair_generic_first() {
        let c = secrets(&[
            ("tls", &[("tls.crt", "C"), ("tls.key", "K"), ("ca.crt", "A")]),
            ("generic", &[("cert", "c"), ("key", "k"), ("cacert", "a")]),
            ("both", &[("cert", "c"), ("key", "k"), ("tls.crt", "C"), ("tls.key", "K")]),
        ]);
        let pair = c.key_pair("tls").unwrap();
        assert_eq!((pair.certificate.bytes.as_slice(), pair.key.bytes.as_slice()), (&b"C"[..], &b"K"[..]));
        assert_eq!(origin(&pair.certificate), "Secret gw/tls key tls.crt");
        assert_eq!(c.ca("tls").unwrap().unwrap().bytes, b"A");
        assert_eq!(c.key_pair("generic").unwrap().key.bytes, b"k");
        assert_eq!(c.ca("generic").unwrap().unwrap().origin, "Secret gw/generic key cacert");
        assert_eq!(c.key_pair("both").unwrap().certificate.bytes, b"c");
        assert_eq!(c.ca("both").unwrap(), None);
    }

    #[test]
    fn entries_check_their_certificates_and_keys_and_ignore_other_keys() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["a.example.com".to_owned()]).unwrap().self_signed(&key).unwrap();
        let entries = |pairs: &[(&str, String)]| -> Entries {
            pairs.iter().map(|(k, v)| ((*k).to_owned(), v.clone().into_bytes())).collect()
        };
        let (cert, key) = (cert.pem(), key.serialize_pem());
        let good = entries(&[("tls.crt", cert.clone()), ("tls.key", key.clone()), ("note", "x".into())]);
        assert!(check_entries("Secret gw/good", &good).is_ok());
        assert!(check_entries("Secret gw/ca", &entries(&[("ca.crt", cert.clone())])).is_ok());
        let bad_cert = entries(&[("cert", "nope".into()), ("key", key)]);
        let err = check_entries("Secret gw/bad", &bad_cert).unwrap_err();
        assert!(err.message.contains("Secret gw/bad key cert"), "{err}");
        let bad_key = entries(&[("tls.crt", cert), ("tls.key", "nope".into())]);
        let err = check_entries("Secret gw/bad", &bad_key).unwrap_err();
        assert!(err.message.contains("Secret gw/bad key tls.key"), "{err}");
    }

    #[test]
    fn the_ca_comes_from_the_cacert_secret_first() {
        let c = secrets(&[
            ("srv", &[("tls.crt", "C"), ("tls.key", "K"), ("ca.crt", "own")]),
            ("srv-cacert", &[("ca.crt", "separate")]),
            ("bad", &[("tls.crt", "C"), ("tls.key", "K")]),
            ("bad-cacert", &[("other", "x")]),
        ]);
        assert_eq!(c.ca("srv").unwrap().unwrap().bytes, b"separate");
        let err = c.ca("bad").unwrap_err();
        assert!(err.message.contains("Secret gw/bad-cacert: no CA") && err.message.contains("found other"), "{err}");
    }

    #[test]
    fn missing_secrets_and_keys_name_the_secret_and_what_was_found() {
        let c = secrets(&[
            ("empty", &[("tls.crt", ""), ("tls.key", "")]),
            ("wrong", &[("tls.cert", "x"), ("a", ""), ("b", ""), ("c", "")]),
            ("noca", &[("tls.crt", "C"), ("tls.key", "K"), ("ca.crt", "")]),
        ]);
        let err = c.key_pair("absent").unwrap_err();
        assert_eq!(err.field, "credentialName");
        assert!(err.message.contains("Secret gw/absent not found"), "{err}");
        let err = c.key_pair("empty").unwrap_err();
        assert!(err.message.contains("found keys \"tls.crt\" and \"tls.key\", but they were empty"), "{err}");
        let err = c.key_pair("wrong").unwrap_err();
        assert!(err.message.contains("Secret gw/wrong: no certificate and key"), "{err}");
        assert!(err.message.contains("found a, b, c, and 1 more"), "{err}");
        let err = c.ca("noca").unwrap_err();
        assert!(err.message.contains("found key \"ca.crt\", but it was empty"), "{err}");
    }

    #[test]
    fn names_follow_istios_kubernetes_form_within_the_agents_namespace() {
        let c = secrets(&[("srv", &[("cert", "c"), ("key", "k")])]);
        assert!(c.key_pair("kubernetes://srv").is_ok());
        assert!(c.key_pair("kubernetes://gw/srv").is_ok());
        let err = c.key_pair("kubernetes://other/srv").unwrap_err();
        assert!(err.message.contains("namespace other"), "{err}");
        assert!(c.key_pair("configmap://gw/srv").is_err());
        let files = Credentials::files("/nonexistent");
        assert!(files.key_pair("a/b").unwrap_err().message.contains("not a credential name"));
        assert!(files.key_pair("..").unwrap_err().message.contains("not a credential name"));
        assert!(files.key_pair("x").unwrap_err().message.contains("no credential directory /nonexistent/x"));
    }

    #[test]
    fn bad_pem_in_a_secret_names_the_secret_and_key() {
        let c = secrets(&[("srv", &[("tls.crt", "not pem"), ("tls.key", "-----BEGIN PRIVATE KEY-----\nAA\n")])]);
        let pair = c.key_pair("srv").unwrap();
        let err = pair.certificate.certificates().unwrap_err();
        assert_eq!(err.to_string(), "credentialName: Secret gw/srv key tls.crt: no PEM certificate in it");
        let err = pair.key.private_key().unwrap_err();
        assert!(err.message.starts_with("Secret gw/srv key tls.key: no usable private key"), "{err}");
    }

    #[test]
    fn a_directory_is_read_by_the_same_rules() {
        let dir = std::env::temp_dir().join(format!("interceptor-cred-unit-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("srv")).unwrap();
        std::fs::create_dir_all(dir.join("srv-cacert")).unwrap();
        std::fs::write(dir.join("srv/cert"), "c").unwrap();
        std::fs::write(dir.join("srv/key"), "k").unwrap();
        std::fs::write(dir.join("srv-cacert/ca.crt"), "a").unwrap();
        let c = Credentials::files(&dir);
        let pair = c.key_pair("srv").unwrap();
        assert_eq!(pair.certificate.origin, dir.join("srv/cert").display().to_string());
        assert_eq!(c.ca("srv").unwrap().unwrap().bytes, b"a");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
