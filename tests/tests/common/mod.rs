//! Shared by the end-to-end test files: the standard service, node and load helpers, and test
//! certificates.
#![allow(unused_imports)]

pub use testbed::fixtures::*;

use std::path::Path;

use testbed::{Agent, Node, GATEWAY};

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};

/// A CA and a server certificate for `name`, written as `ca.pem`, `tls.crt`, `tls.key` in `dir`.
#[allow(dead_code)] // not every test file makes certificates
pub fn certificates(dir: &Path, name: &str) {
    certificates_for(dir, &[name]);
}

/// As [`certificates`], the server certificate naming each of `names`.
#[allow(dead_code)] // not every test file makes certificates
pub fn certificates_for(dir: &Path, names: &[&str]) {
    std::fs::create_dir_all(dir).unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "interceptor e2e CA");
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let leaf = CertificateParams::new(names).unwrap().signed_by(&key, &ca, &ca_key).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("tls.crt"), leaf.pem()).unwrap();
    std::fs::write(dir.join("tls.key"), key.serialize_pem()).unwrap();
}

/// The agent on the node with the gateway address and labels set, credentials under `credentials`.
#[allow(dead_code)] // not every test file runs a gateway
pub fn gateway_agent(node: &Node, files: &[(&str, &str)], credentials: &Path) -> Agent {
    let settings = credentials.join("agent.yaml");
    std::fs::create_dir_all(credentials).unwrap();
    std::fs::write(
        &settings,
        format!(
            "labels: {{istio: ingressgateway}}\ngatewayAddress: {GATEWAY}\ncredentials: {}\n",
            credentials.display()
        ),
    )
    .unwrap();
    let redirect = format!("{GATEWAY}:15001");
    let settings = settings.display().to_string();
    let flags = ["--listen", "0.0.0.0:15001", "--redirect", &redirect, "--settings", &settings];
    Agent::start_with(node, files, &flags, false).unwrap()
}
