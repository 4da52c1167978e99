//! The thin Proxy-Wasm adapter: owns the root and HTTP contexts and every host call.
//! All decisions are made by the sans-IO core (`crate::engine`); this layer only moves
//! data between the host and the core and carries out what the core decided.
//!
//! * `root`, `http`: the context callbacks (Proxy-Wasm traits), and the waiting a host
//!   allows: parked with the root context (Envoy) or riding its own fetch (Kong).
//! * `outcome`: carrying out a final decision (header operations, local answer, audit
//!   line, Kong's `kong.ctx.shared`).
//! * `state`: the per-worker state both kinds of context share; `env`: the engine's view of
//!   it for one request; `waiting`: how a request waits on each host; `keys`: the key
//!   caches and rate limits; `credentials`: the gateway's own tokens; `store`: shared data;
//!   `pressure`: limit state lost to a full zone; `shelf`: the node's verified tokens in it;
//!   `metrics`: host metrics.
//! * `host`: the [`host::Host`] trait the logic above makes its host calls through: `abi`
//!   on Wasm, an in-memory recorder in the native tests (`tests`). Only the logger and the
//!   entry point below use `abi` directly.
//!
//! Host calls go through `abi` (raw imports, every status a `Result`) rather than the
//! SDK's `hostcalls` or trait helpers, which panic on statuses they do not expect (Kong's
//! engine returns some): a panic traps the VM and kills the worker's filter instance.

mod abi;
mod credentials;
mod env;
mod host;
mod http;
mod keys;
mod metrics;
mod outcome;
mod pressure;
mod root;
mod shelf;
mod slots;
mod state;
mod store;
mod waiting;

#[cfg(test)]
mod tests;

#[cfg(target_arch = "wasm32")]
proxy_wasm::main! {{
    // The host filters by its own level too. Not the SDK's logger: it unwraps host errors.
    abi::init_logger(log::LevelFilter::Trace);
    proxy_wasm::set_root_context(|context_id| {
        Box::new(root::Root::new(context_id, host::AbiHost))
    });
}}
