//! The thin Proxy-Wasm adapter: owns the root and HTTP contexts and every host call.
//! All decisions are made by the sans-IO core (`crate::engine`); this layer only moves
//! data between the host and the core and carries out what the core decided.
//!
//! Host calls go through `proxy_wasm::hostcalls` (which return `Result`) rather than the
//! SDK trait helpers, which `unwrap()` host errors: a panic would kill the worker's VM.

mod host;
mod http;
mod keys;
mod metrics;
mod root;

use proxy_wasm::types::LogLevel;

proxy_wasm::main! {{
    // The host filters by its own level too; ours only drops what nobody asked for.
    proxy_wasm::set_log_level(LogLevel::Debug);
    proxy_wasm::set_root_context(|context_id| Box::new(root::Root::new(context_id)));
}}
