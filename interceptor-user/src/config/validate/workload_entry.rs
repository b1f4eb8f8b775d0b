//! WorkloadEntry rules (also applied to ServiceEntry endpoints): address, ports, labels.

use super::rules;
use super::{Findings, Validate};
use crate::config::{ObjectMeta, WorkloadEntry};

/// Prefix of Unix domain socket addresses.
const UNIX_PREFIX: &str = "unix://";

impl Validate for WorkloadEntry {
    fn validate(&self, _meta: &ObjectMeta, f: &mut Findings<'_>) {
        // Alone, a WorkloadEntry may name its workload by DNS name; its service's ports are unknown.
        workload_entry(self, None, true, "spec", f);
    }
}

/// Checks one workload; `service_ports` are the port names of the ServiceEntry it belongs to.
pub(super) fn workload_entry(
    we: &WorkloadEntry,
    service_ports: Option<&[&str]>,
    allow_fqdn: bool,
    at: &str,
    f: &mut Findings<'_>,
) {
    let address = we.address.as_str();
    let network = we.network.as_deref().unwrap_or_default();
    if address.is_empty() {
        if network.is_empty() {
            f.error(format!("{at}.address"), "address is required");
            return;
        }
        f.warning(format!("{at}.address"), format!("address is unset with network {network:?}"));
    }
    let unix = address.strip_prefix(UNIX_PREFIX);
    if let Some(path) = unix {
        f.check(format!("{at}.address"), unix_address(path));
        if !we.ports.is_empty() {
            f.error(format!("{at}.ports"), format!("unix endpoint {address} must not include ports"));
        }
    } else if !address.is_empty() && !rules::is_ip(address) {
        if !allow_fqdn {
            f.error(format!("{at}.address"), format!("endpoint address {address:?} is not a valid IP address"));
        } else if rules::fqdn(address).is_err() {
            f.error(
                format!("{at}.address"),
                format!("endpoint address {address:?} is not a valid FQDN or an IP address"),
            );
        }
    }
    endpoint_ports(we, service_ports, at, f);
    f.errors(|| format!("{at}.labels"), rules::labels(&we.labels));
    if unix.is_some() && service_ports.is_some_and(|ports| ports.len() != 1) {
        f.error(format!("{at}.address"), "exactly 1 service port required for unix endpoints");
    }
}

/// Port names must be service port names (when known) and DNS labels; numbers in range.
pub(super) fn endpoint_ports(we: &WorkloadEntry, service_ports: Option<&[&str]>, at: &str, f: &mut Findings<'_>) {
    for (name, number) in &we.ports {
        let undefined = service_ports.is_some_and(|ports| !ports.contains(&name.as_str()));
        let (named, numbered) = (rules::port_name(name), rules::port(u64::from(*number)));
        if !undefined && named.is_ok() && numbered.is_ok() {
            continue;
        }
        let pat = format!("{at}.ports.{name}");
        if undefined {
            f.error(&pat, format!("endpoint port {number} is not defined by the service entry"));
        }
        f.check(&pat, named);
        f.check(&pat, numbered);
    }
}

fn unix_address(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("unix address must not be empty".into());
    }
    // Abstract sockets (`@name`) have no path.
    if path.starts_with('@') {
        return Ok(());
    }
    if !path.starts_with('/') || path.ends_with('/') {
        return Err(format!("{path} is not an absolute path to a file"));
    }
    Ok(())
}
