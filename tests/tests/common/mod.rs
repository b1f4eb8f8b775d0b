//! Shared by the end-to-end test files: the standard service, node and load helpers.
#![allow(unused_imports)]

pub use testbed::fixtures::*;
