//! azure-ml-kong: an identity-aware Proxy-Wasm filter for Kong Gateway (and Envoy) in
//! front of Azure Machine Learning online endpoints.
//!
//! Layout: a sans-IO core (everything but `adapter`) that is plain Rust and unit-tested
//! natively, and a thin `adapter` that owns the Proxy-Wasm contexts and host calls.
//! Time, randomness and HTTP responses enter the core as values.

#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::todo,
        clippy::unimplemented
    )
)]

pub mod annotate;
pub mod audit;
pub mod callers;
pub mod claims;
pub mod concurrency;
pub mod config;
pub mod credential;
// The operator CLI's every-error check of a config; never part of the filter module.
#[cfg(not(target_arch = "wasm32"))]
pub mod diagnose;
pub mod engine;
// The operator CLI's step-by-step story of a decision; never part of the filter module.
#[cfg(not(target_arch = "wasm32"))]
pub mod explain;
pub mod fifo;
pub mod headers;
pub mod jose;
pub mod json_path;
pub mod jwks;
pub mod keycache;
pub mod limits;
pub mod metrics;
pub mod policy;
pub mod providers;
pub mod ratelimit;
pub mod reason;
pub mod rejected;
pub mod request;
pub mod respond;
pub mod rsa;
pub mod shared_verified;
pub mod store;
pub mod strict_json;
pub mod token;
pub mod validate;
pub mod verify;

// Natively only for its tests, which run the adapter's logic against an in-memory host.
#[cfg(any(target_arch = "wasm32", test))]
mod adapter;
