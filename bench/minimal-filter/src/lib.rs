//! The least a Proxy-Wasm HTTP filter can do on every request and still touch it: read the
//! request headers once and set one header. `make bench` runs it beside ours so the host's
//! own cost of running any Wasm filter (VM entry, host calls, header maps) is measured in the
//! same run: the floor our filter is compared with.

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_http_context(|_, _| -> Box<dyn HttpContext> { Box::new(Minimal) });
}}

struct Minimal;

impl Context for Minimal {}

impl HttpContext for Minimal {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // One read of the whole map, as a real filter's first step; its content is unused.
        let headers = self.get_http_request_headers();
        let value = if headers.is_empty() { "0" } else { "1" };
        self.set_http_request_header("x-bench-minimal", Some(value));
        Action::Continue
    }
}
