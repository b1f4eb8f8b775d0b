//! ServiceEntry rules: hosts, addresses, ports, resolution against endpoints, workload selector.

use super::rules::{self, Protocol};
use super::workload_entry::{endpoint_ports, workload_entry};
use super::{Findings, Validate};
use crate::config::{ObjectMeta, ServiceEntry};

/// Label that puts a ServiceEntry behind a waypoint proxy.
const USE_WAYPOINT_LABEL: &str = "istio.io/use-waypoint";

impl Validate for ServiceEntry {
    fn validate(&self, meta: &ObjectMeta, f: &mut Findings<'_>) {
        if let Some(selector) = &self.workload_selector {
            let mut refused = false;
            for (key, value) in &selector.labels {
                if key.is_empty() {
                    f.error(
                        "spec.workloadSelector.labels",
                        format!("empty key is not supported in selector: \"{key}={value}\""),
                    );
                    refused = true;
                }
                if key.contains('*') || value.contains('*') {
                    f.error(
                        "spec.workloadSelector.labels",
                        format!("wildcard is not supported in selector: \"{key}={value}\""),
                    );
                    refused = true;
                }
            }
            // Istio stops at a bad selector.
            if refused {
                return;
            }
            if selector.labels.is_empty() {
                f.warning(
                    "spec.workloadSelector",
                    "service entry: workload selector specified without labels, will be applied to all services in namespace",
                );
            }
            if !self.endpoints.is_empty() {
                f.error("spec.endpoints", "only one of WorkloadSelector or Endpoints is allowed in Service Entry");
            }
        }
        let resolution = self.resolution.as_deref().unwrap_or("NONE");
        hosts(self, resolution, f);
        let mut cidr = false;
        for (i, address) in self.addresses.iter().enumerate() {
            cidr |= address.contains('/');
            f.check(format!("spec.addresses[{i}]"), rules::ip_subnet(address));
        }
        if cidr && resolution != "NONE" && resolution != "STATIC" {
            f.error("spec.addresses", "CIDR addresses are allowed only for NONE/STATIC resolution types");
        }
        let port_names = ports(self, f);
        if let Some(location) = &self.location {
            if location != "MESH_EXTERNAL" && location != "MESH_INTERNAL" {
                f.error("spec.location", format!("{location:?} is not MESH_EXTERNAL or MESH_INTERNAL"));
            }
        }
        resolution_rules(self, resolution, &port_names, meta, f);
        if resolution != "NONE" && self.hosts.len() > 1 {
            let plain =
                self.ports.iter().any(|p| Protocol::parse(&p.protocol).is_none_or(|p| !p.is_http() && !p.is_tls()));
            if plain {
                f.error("spec.hosts", "multiple hosts provided with non-HTTP, non-TLS ports");
            }
        }
        f.errors(|| "spec.exportTo".into(), rules::export_to(&meta.namespace, &self.export_to, true, false));
    }
}

fn hosts(se: &ServiceEntry, resolution: &str, f: &mut Findings<'_>) {
    if se.hosts.is_empty() {
        f.error("spec.hosts", "service entry must have at least one host");
    }
    for (i, host) in se.hosts.iter().enumerate() {
        let at = format!("spec.hosts[{i}]");
        if host == "*" {
            f.error(at, format!("invalid host {host}"));
            continue;
        }
        f.check(&at, rules::wildcard_domain(host));
        if resolution != "DYNAMIC_DNS" {
            if let Err(warning) = rules::partial_wildcard(host) {
                f.warning(at, warning);
            }
        }
    }
}

/// Checks the ports; returns their names.
fn ports<'a>(se: &'a ServiceEntry, f: &mut Findings<'_>) -> Vec<&'a str> {
    let mut names: Vec<&str> = Vec::new();
    let mut numbers: Vec<u32> = Vec::new();
    for (i, port) in se.ports.iter().enumerate() {
        let at = format!("spec.ports[{i}]");
        if names.contains(&port.name.as_str()) {
            f.error(format!("{at}.name"), format!("service entry port name {:?} already defined", port.name));
        }
        names.push(&port.name);
        if numbers.contains(&port.number) {
            f.error(format!("{at}.number"), format!("service entry port {} already defined", port.number));
        }
        numbers.push(port.number);
        if let Some(target) = port.target_port.filter(|t| *t != 0) {
            f.check(format!("{at}.targetPort"), rules::port(u64::from(target)));
        }
        f.check(format!("{at}.name"), rules::port_name(&port.name));
        f.check(format!("{at}.protocol"), rules::protocol(&port.protocol));
        f.check(format!("{at}.number"), rules::port(u64::from(port.number)));
    }
    names
}

fn resolution_rules(se: &ServiceEntry, resolution: &str, port_names: &[&str], meta: &ObjectMeta, f: &mut Findings<'_>) {
    match resolution {
        "NONE" => {
            if !se.endpoints.is_empty() {
                f.error("spec.endpoints", "no endpoints should be provided for resolution type none");
            }
            if se.workload_selector.is_some() {
                f.warning("spec.workloadSelector", "workloadSelector should not be set when resolution mode is NONE");
            }
        }
        "STATIC" => {
            for (i, endpoint) in se.endpoints.iter().enumerate() {
                workload_entry(endpoint, Some(port_names), false, &format!("spec.endpoints[{i}]"), f);
            }
        }
        "DNS" | "DNS_ROUND_ROBIN" => {
            if se.endpoints.is_empty() {
                if let Some(Err(e)) = se.hosts.iter().map(|h| rules::fqdn(h)).find(Result::is_err) {
                    f.error(
                        "spec.hosts",
                        format!(
                            "hosts must be FQDN or contain only prefix wildcards if no endpoints are provided for resolution mode {resolution}, {e}"
                        ),
                    );
                }
            }
            if resolution == "DNS_ROUND_ROBIN" && se.endpoints.len() > 1 {
                f.error(
                    "spec.endpoints",
                    format!("there must only be 0 or 1 endpoint for resolution mode {resolution}"),
                );
            }
            for (i, endpoint) in se.endpoints.iter().enumerate() {
                let at = format!("spec.endpoints[{i}]");
                if !rules::is_ip(&endpoint.address) && rules::fqdn(&endpoint.address).is_err() {
                    f.error(
                        format!("{at}.address"),
                        format!("endpoint address {:?} is not a valid FQDN or an IP address", endpoint.address),
                    );
                }
                f.errors(|| format!("{at}.labels"), rules::labels(&endpoint.labels));
                endpoint_ports(endpoint, Some(port_names), &at, f);
            }
            if !se.addresses.is_empty() && se.hosts.len() > 1 {
                let first_tcp = se.ports.iter().find(|p| Protocol::parse(&p.protocol).is_some_and(Protocol::is_tcp));
                if first_tcp.is_some() {
                    f.warning(
                        "spec.hosts",
                        "service entry can not have more than one host specified simultaneously with address and tcp port",
                    );
                }
            }
        }
        "DYNAMIC_DNS" => {
            if se.hosts.is_empty() {
                f.error(
                    "spec.hosts",
                    format!("at least one wildcard host must be provided for resolution type {resolution}"),
                );
            }
            for (i, host) in se.hosts.iter().enumerate() {
                if !host.starts_with('*') {
                    f.error(
                        format!("spec.hosts[{i}]"),
                        format!("host must be wildcarded for resolution mode {resolution}"),
                    );
                }
            }
            if !se.addresses.is_empty() {
                f.error(
                    "spec.addresses",
                    format!("addresses cannot be set for resolution type {resolution}. HTTP route domains will only be generatedfrom the hosts field values"),
                );
            }
            if !se.endpoints.is_empty() {
                f.error(
                    "spec.endpoints",
                    format!("endpoints cannot be set for resolution type {resolution}. Destination IP address determined from hostsfield values"),
                );
            }
            for (i, port) in se.ports.iter().enumerate() {
                let supported = matches!(
                    Protocol::parse(&port.protocol),
                    Some(Protocol::Http | Protocol::Tls | Protocol::Grpc | Protocol::Http2)
                );
                if !supported {
                    f.error(
                        format!("spec.ports[{i}].protocol"),
                        format!(
                            "only HTTP, TLS, GRPC, and HTTP2 protocols are supported for resolution type {resolution}"
                        ),
                    );
                }
            }
            let waypoint =
                meta.labels.get(USE_WAYPOINT_LABEL).is_some_and(|v| !v.is_empty() && !v.eq_ignore_ascii_case("none"));
            if se.location.as_deref() == Some("MESH_INTERNAL") && waypoint {
                f.error(
                    "spec.location",
                    format!("location MESH_INTERNAL with resolution type {resolution} is not supported when using waypoints"),
                );
            }
        }
        other => f.error("spec.resolution", format!("unsupported resolution type {other}")),
    }
}
