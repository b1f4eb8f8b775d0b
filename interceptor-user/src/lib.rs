//! The interceptor node agent: Istio routing rules enforced by eBPF capture and a Rust proxy.
#![deny(missing_docs)]

pub mod admin;
pub mod agent;
pub mod bpf;
pub mod cluster;
pub mod config;
pub mod endpoints;
#[doc(hidden)]
pub mod fuzzing;
pub mod privileges;
pub mod proxy;
pub mod routing;
pub mod tls;
