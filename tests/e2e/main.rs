//! End-to-end tests on both real hosts, Kong Gateway 3.9 (Wasmtime) and Envoy 1.40 (V8),
//! loading the built filter. Every test runs twice, as `<module>::<name>_kong` and
//! `<module>::<name>_envoy` (`aml_harness::both_hosts!`).
//!
//! One test binary, not one per file: the gateways' tests spend most of their time waiting
//! on timers and start-ups, so one pool of test threads keeps both cores busy across all of
//! them (and the test profile links one binary instead of fourteen).

mod callers;
mod credentials;
mod faults;
mod foundation;
mod harden;
mod hit;
mod host_defects;
mod hostile;
mod jwks;
mod kong;
mod policy;
mod pressure;
mod revocation;
mod tokens;
