//! Guard: the built filter imports only host functions that Kong 3.9 implements.
//!
//! Kong 3.9.x bundles ngx_wasm_module at commit 9136e463 (Kong's `.requirements`,
//! `NGX_WASM_MODULE=`). A module importing a function the host does not provide fails to
//! load; one calling a function the host provides only as a "not yet implemented" stub
//! traps at run time (HTTP 500 and a recycled instance). Both are caught here, before the
//! module ever reaches Kong.
//!
//! Sources of the lists below (read at that commit):
//! - Proxy-Wasm ABI functions: ngx_wasm_module `docs/PROXY_WASM.md`, section
//!   "Supported Specifications" → host functions table, and the host function
//!   definitions in `src/common/proxy_wasm/ngx_proxy_wasm_host.c`
//!   (<https://github.com/Kong/ngx_wasm_module/blob/main/docs/PROXY_WASM.md>).
//! - WASI preview1: `src/wasm/wasi/ngx_wasi_preview1_host.c` (the module's own functions)
//!   and `src/wasm/wrt/ngx_wrt_wasmtime.c` (Wasmtime's WASI linked underneath).
//!
//! The test FAILS (never skips) when the .wasm has not been built: run `make wasm`.

use std::collections::BTreeSet;
use std::path::PathBuf;

/// `env` functions Kong 3.9 implements (Proxy-Wasm ABI 0.2.1).
const ENV_IMPLEMENTED: &[&str] = &[
    "proxy_log",
    "proxy_get_current_time_nanoseconds",
    "proxy_set_effective_context",
    "proxy_set_tick_period_milliseconds",
    "proxy_get_buffer_bytes",
    "proxy_set_buffer_bytes",
    "proxy_get_header_map_pairs",
    "proxy_get_header_map_value",
    "proxy_set_header_map_pairs",
    "proxy_add_header_map_value",
    "proxy_replace_header_map_value",
    "proxy_remove_header_map_value",
    "proxy_get_property",
    "proxy_set_property",
    "proxy_continue_stream",
    "proxy_continue_request",
    "proxy_send_local_response",
    "proxy_http_call",
    "proxy_get_shared_data",
    "proxy_set_shared_data",
    "proxy_register_shared_queue",
    "proxy_dequeue_shared_queue",
    "proxy_enqueue_shared_queue",
    "proxy_define_metric",
    "proxy_get_metric",
    "proxy_record_metric",
    "proxy_increment_metric",
];

/// `env` functions present in Kong 3.9 only as stubs that trap ("NYI",
/// `ngx_proxy_wasm_hfuncs_nop`). Importing them links; calling one kills the request.
/// They are NOT allowed, except the ones in `SDK_VTABLE_ONLY` below.
const ENV_TRAPPING: &[&str] = &[
    "proxy_get_log_level",
    "proxy_done",
    "proxy_resume_downstream",
    "proxy_resume_upstream",
    "proxy_close_stream",
    "proxy_continue_response",
    "proxy_get_status",
    "proxy_resolve_shared_queue",
    "proxy_grpc_call",
    "proxy_grpc_stream",
    "proxy_grpc_send",
    "proxy_grpc_cancel",
    "proxy_grpc_close",
    // ABI 0.2.1 lists it, but at 9136e463 it is bound to the NYI stub
    // (docs/PROXY_WASM.md marks it :x: too).
    "proxy_call_foreign_function",
];

/// Trapping functions that every proxy-wasm 0.2.x filter imports whether it uses them or
/// not: the SDK requires `Box<dyn RootContext>` / `Box<dyn HttpContext>`, and those trait
/// objects' vtables contain the traits' default methods (`done`, `get_grpc_status`,
/// `dispatch_grpc_call`, `call_foreign_function`, `reset_http_request`, ...), which wrap
/// these host calls. (Measured: a filter whose only code is a `RootContext` returning true
/// from `on_configure` imports all of them but `proxy_close_stream`, which comes with
/// `HttpContext`.) The import is harmless as long as the filter never CALLS those
/// methods; `filter_source_never_calls_trapping_sdk_methods` checks that in src/.
const SDK_VTABLE_ONLY: &[&str] = &[
    "proxy_done",
    "proxy_get_status",
    "proxy_grpc_call",
    "proxy_grpc_stream",
    "proxy_grpc_send",
    "proxy_grpc_cancel",
    "proxy_grpc_close",
    "proxy_resolve_shared_queue",
    "proxy_call_foreign_function",
    "proxy_close_stream",
];

/// proxy-wasm SDK methods (and `proxy_wasm::hostcalls` functions) that reach a trapping
/// host function when called, with the function they reach.
const TRAPPING_SDK_CALLS: &[(&str, &str)] = &[
    ("done", "proxy_done"),
    ("get_grpc_status", "proxy_get_status"),
    ("dispatch_grpc_call", "proxy_grpc_call"),
    ("open_grpc_stream", "proxy_grpc_stream"),
    ("send_grpc_stream_message", "proxy_grpc_send"),
    ("cancel_grpc_call", "proxy_grpc_cancel"),
    ("cancel_grpc_stream", "proxy_grpc_cancel"),
    ("close_grpc_stream", "proxy_grpc_close"),
    ("resolve_shared_queue", "proxy_resolve_shared_queue"),
    ("call_foreign_function", "proxy_call_foreign_function"),
    ("reset_http_request", "proxy_close_stream"),
    ("reset_http_response", "proxy_close_stream"),
    ("close_downstream", "proxy_close_stream"),
    ("close_upstream", "proxy_close_stream"),
    ("get_log_level", "proxy_get_log_level"),
    ("resume_downstream", "proxy_resume_downstream"),
    ("resume_upstream", "proxy_resume_upstream"),
];

/// `wasi_snapshot_preview1` functions ngx_wasm_module implements itself
/// (`ngx_wasi_hfuncs[]` in src/wasm/wasi/ngx_wasi_preview1_host.c at 9136e463). Most
/// fd_* calls just return EBADF; `proc_exit` is a trapping stub (never called by a filter
/// built with panic=abort, but std may import it).
const WASI_NGX: &[&str] = &[
    "args_get",
    "args_sizes_get",
    "clock_time_get",
    "environ_get",
    "environ_sizes_get",
    "fd_close",
    "fd_fdstat_get",
    "fd_prestat_get",
    "fd_prestat_dir_name",
    "fd_read",
    "fd_seek",
    "fd_write",
    "path_open",
    "proc_exit",
    "random_get",
];

/// Also resolvable in Kong's official builds, whose runtime is Wasmtime 26: ngx_wasm_module
/// links Wasmtime's own WASI first (`wasmtime_linker_define_wasi` in
/// src/wasm/wrt/ngx_wrt_wasmtime.c), then overrides it with the list above. Only the few
/// that Rust's std for wasm32-wasip1 may pull in are accepted; anything else (sockets,
/// directories, ...) has no business in a gateway filter.
const WASI_WASMTIME_ONLY: &[&str] = &["fd_fdstat_set_flags", "sched_yield", "poll_oneoff"];

fn wasm_path() -> PathBuf {
    // Always the default target dir: that is what `make wasm` builds and what Kong mounts
    // (docker-compose.yml), whatever CARGO_TARGET_DIR the tests themselves use.
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target/wasm32-wasip1/release/azure_ml_kong.wasm")
}

/// (module, name, kind) of every import.
fn imports(bytes: &[u8]) -> Vec<(String, String, &'static str)> {
    let mut out = Vec::new();
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        let payload = payload.unwrap_or_else(|e| panic!("not a valid wasm module: {e}"));
        if let wasmparser::Payload::ImportSection(reader) = payload {
            for imp in reader.into_imports() {
                let imp = imp.unwrap_or_else(|e| panic!("bad import entry: {e}"));
                let kind = match imp.ty {
                    wasmparser::TypeRef::Func(_) => "func",
                    wasmparser::TypeRef::Table(_) => "table",
                    wasmparser::TypeRef::Memory(_) => "memory",
                    wasmparser::TypeRef::Global(_) => "global",
                    _ => "other",
                };
                out.push((imp.module.to_string(), imp.name.to_string(), kind));
            }
        }
    }
    out
}

/// Why an import is not acceptable to Kong 3.9, or `None` when it is.
fn rejection(module: &str, name: &str, kind: &str) -> Option<String> {
    if kind != "func" {
        return Some(format!(
            "imports a {kind}: the host provides functions only"
        ));
    }
    match module {
        "env" if ENV_IMPLEMENTED.contains(&name) => None,
        "env" if SDK_VTABLE_ONLY.contains(&name) => None,
        "env" if ENV_TRAPPING.contains(&name) => {
            Some("Kong 3.9 has it only as a stub that traps when called".into())
        }
        "env" => Some("Kong 3.9 does not provide it".into()),
        "wasi_snapshot_preview1"
            if WASI_NGX.contains(&name) || WASI_WASMTIME_ONLY.contains(&name) =>
        {
            None
        }
        "wasi_snapshot_preview1" => {
            Some("neither ngx_wasm_module's WASI nor the accepted Wasmtime extras".into())
        }
        _ => Some(format!("module `{module}` does not exist in Kong")),
    }
}

#[test]
fn filter_imports_only_what_kong_3_9_implements() {
    let path = wasm_path();
    let bytes = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read the built filter {}: {e}\n\
             Build it first: `make wasm` (cargo build --release --target wasm32-wasip1 --lib).",
            path.display()
        )
    });
    let imports = imports(&bytes);
    assert!(
        !imports.is_empty(),
        "{} has no imports at all: not a Proxy-Wasm filter?",
        path.display()
    );
    let bad: Vec<String> = imports
        .iter()
        .filter_map(|(m, n, k)| rejection(m, n, k).map(|why| format!("  {m}::{n}: {why}")))
        .collect();
    assert!(
        bad.is_empty(),
        "{} imports host functions Kong 3.9 cannot serve:\n{}\n\
         Remove the code path that needs them (see docs/kong.md and ngx_wasm_module's \
         docs/PROXY_WASM.md for what Kong implements).",
        path.display(),
        bad.join("\n")
    );
}

#[test]
fn the_lists_do_not_overlap() {
    let implemented: BTreeSet<&str> = ENV_IMPLEMENTED.iter().copied().collect();
    for t in ENV_TRAPPING {
        assert!(
            !implemented.contains(t),
            "{t} is listed as implemented and trapping"
        );
    }
    assert_eq!(
        implemented.len(),
        ENV_IMPLEMENTED.len(),
        "duplicate in ENV_IMPLEMENTED"
    );
    for t in SDK_VTABLE_ONLY {
        assert!(
            ENV_TRAPPING.contains(t),
            "{t} is in SDK_VTABLE_ONLY but not trapping"
        );
    }
    for (_, f) in TRAPPING_SDK_CALLS {
        assert!(ENV_TRAPPING.contains(f), "{f} is not a trapping function");
    }
}

/// Rust sources of the filter (src/), recursively.
fn rust_sources(dir: &std::path::Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The import check cannot tell "imported through an SDK vtable" from "called": make sure
/// the filter's code never calls an SDK method that ends in a trapping host function.
#[test]
fn filter_source_never_calls_trapping_sdk_methods() {
    let mut files = Vec::new();
    rust_sources(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut files,
    );
    assert!(!files.is_empty(), "no sources under src/");
    let mut hits = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for (method, host_fn) in TRAPPING_SDK_CALLS {
                let called = [format!(".{method}("), format!("::{method}(")]
                    .iter()
                    .any(|pat| code.contains(pat.as_str()));
                if called {
                    hits.push(format!(
                        "  {}:{}: `{method}` calls {host_fn}, which traps in Kong 3.9",
                        f.display(),
                        n + 1
                    ));
                }
            }
        }
    }
    assert!(hits.is_empty(), "{}", hits.join("\n"));
}

#[test]
fn rejection_rules() {
    assert_eq!(rejection("env", "proxy_log", "func"), None);
    assert_eq!(
        rejection("wasi_snapshot_preview1", "random_get", "func"),
        None
    );
    assert!(rejection("env", "proxy_get_log_level", "func").is_some());
    assert!(rejection("env", "proxy_continue_response", "func").is_some());
    assert_eq!(
        rejection("env", "proxy_done", "func"),
        None,
        "SDK vtable import"
    );
    assert!(rejection("env", "proxy_does_not_exist", "func").is_some());
    assert!(rejection("wasi_snapshot_preview1", "sock_accept", "func").is_some());
    assert!(rejection("wasi_snapshot_preview1", "fd_readdir", "func").is_some());
    assert!(rejection("env", "memory", "memory").is_some());
    assert!(rejection("wasi_unstable", "fd_write", "func").is_some());
}
