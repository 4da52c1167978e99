//! The thin Proxy-Wasm adapter: owns the root and HTTP contexts and every host call.
//! All decisions are made by the sans-IO core (`crate::engine`); this layer only moves
//! data between the host and the core and carries out what the core decided.
//!
//! Host calls go through `abi` (raw imports, every status a `Result`) rather than the
//! SDK's `hostcalls` or trait helpers, which panic on statuses they do not expect (Kong's
//! engine returns some): a panic traps the VM and kills the worker's filter instance.

mod abi;
mod host;
mod http;
mod keys;
mod metrics;
mod root;

proxy_wasm::main! {{
    // The host filters by its own level too. Not the SDK's logger: it unwraps host errors.
    abi::init_logger(log::LevelFilter::Trace);
    proxy_wasm::set_root_context(|context_id| Box::new(root::Root::new(context_id)));
}}
