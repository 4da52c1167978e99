//! The host calls the adapter's logic makes, behind a narrow trait: [`AbiHost`] carries
//! them out through `abi` (Wasm), and the native tests put an in-memory recorder in its
//! place to check which calls are made, in which context and in what order.
//!
//! Calls act on the *current* context, as in Proxy-Wasm: the HTTP context whose callback
//! is running, or the one [`Host::set_effective_context`] switched to.

use std::time::Duration;

use proxy_wasm::types::{MetricType, Status};

use crate::config::LogLevel;
use crate::credential::spec::CredentialSpec;
use crate::keycache::FetchRequest;
use crate::respond::LocalResponse;

/// One dispatched HTTP call, as `dispatch_http_call` takes it.
#[derive(Debug, Clone, Copy)]
pub struct Outbound<'a> {
    /// Kong: `host:port`; Envoy: a cluster name.
    pub upstream: &'a str,
    pub headers: &'a [(String, String)],
    pub body: Option<&'a [u8]>,
    pub timeout_ms: u64,
}

impl<'a> Outbound<'a> {
    /// A key-set or discovery request.
    pub fn fetch(req: &'a FetchRequest) -> Outbound<'a> {
        Outbound {
            upstream: &req.upstream,
            headers: &req.headers,
            body: None,
            timeout_ms: req.timeout_ms,
        }
    }

    /// A request for the gateway's own token (its body may hold a client secret).
    pub fn credential(spec: &'a CredentialSpec) -> Outbound<'a> {
        Outbound {
            upstream: &spec.upstream,
            headers: &spec.headers,
            body: spec.body.as_deref(),
            timeout_ms: spec.timeout_ms,
        }
    }
}

pub trait Host {
    /// Host time in milliseconds since the epoch (never `std::time::SystemTime::now`).
    fn now_ms(&self) -> u64;
    fn plugin_configuration(&self) -> Vec<u8>;
    fn set_tick_period(&self, period: Duration) -> Result<(), Status>;
    fn request_headers(&self) -> Vec<(String, String)>;
    /// Set (`Some`) or remove (`None`) a request header.
    fn set_request_header(&self, name: &str, value: Option<&str>) -> Result<(), Status>;
    /// In the response-headers phase: set a header of the response to the client.
    fn set_response_header(&self, name: &str, value: &str) -> Result<(), Status>;
    fn property(&self, path: &[&str]) -> Option<Vec<u8>>;
    fn set_property(&self, path: &[&str], value: Option<&[u8]>) -> Result<(), Status>;
    fn send_response(&self, resp: &LocalResponse) -> Result<(), Status>;
    /// Resume the paused request (`proxy_continue_stream`).
    fn resume_request(&self) -> Result<(), Status>;
    /// Envoy: act for that paused request from the root context. A no-op in Kong.
    fn set_effective_context(&self, context_id: u32) -> Result<(), Status>;
    /// Send an HTTP call; the answer comes to the calling context.
    fn dispatch(&self, call: &Outbound<'_>) -> Result<u32, Status>;
    fn call_response_headers(&self) -> Vec<(String, String)>;
    /// Up to `max` bytes of the answer's body.
    fn call_response_body(&self, max: usize) -> Option<Vec<u8>>;
    /// The value (if any) and its cas.
    fn get_shared_data(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), Status>;
    fn set_shared_data(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), Status>;
    /// `set_shared_data` without a value: Kong removes the key, Envoy stores an empty value.
    fn delete_shared_data(&self, key: &str, cas: Option<u32>) -> Result<(), Status>;
    fn define_metric(&self, kind: MetricType, name: &str) -> Result<u32, Status>;
    fn increment_metric(&self, id: u32, offset: i64) -> Result<(), Status>;
    fn record_metric(&self, id: u32, value: u64) -> Result<(), Status>;
    /// The audit line, at the configured level: one `proxy_log`, without the copy the
    /// `log` facade makes of a formatted message.
    fn audit_line(&self, level: LogLevel, line: &str);

    /// A property as UTF-8 text.
    fn property_str(&self, path: &[&str]) -> Option<String> {
        self.property(path).and_then(|b| String::from_utf8(b).ok())
    }
}

/// The real host: every call through `abi` (raw imports, a `Result` for every status).
#[cfg(target_arch = "wasm32")]
#[derive(Debug, Clone, Copy, Default)]
pub struct AbiHost;

#[cfg(target_arch = "wasm32")]
impl Host for AbiHost {
    fn now_ms(&self) -> u64 {
        super::abi::get_current_time_ms().unwrap_or(0)
    }

    fn plugin_configuration(&self) -> Vec<u8> {
        use proxy_wasm::types::BufferType;
        super::abi::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
            .ok()
            .flatten()
            .unwrap_or_default()
    }

    fn set_tick_period(&self, period: Duration) -> Result<(), Status> {
        super::abi::set_tick_period(period)
    }

    fn request_headers(&self) -> Vec<(String, String)> {
        super::abi::get_map(proxy_wasm::types::MapType::HttpRequestHeaders).unwrap_or_default()
    }

    fn set_response_header(&self, name: &str, value: &str) -> Result<(), Status> {
        super::abi::set_map_value(
            proxy_wasm::types::MapType::HttpResponseHeaders,
            name,
            Some(value),
        )
    }

    fn set_request_header(&self, name: &str, value: Option<&str>) -> Result<(), Status> {
        super::abi::set_map_value(proxy_wasm::types::MapType::HttpRequestHeaders, name, value)
    }

    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        super::abi::get_property(path).ok().flatten()
    }

    fn set_property(&self, path: &[&str], value: Option<&[u8]>) -> Result<(), Status> {
        super::abi::set_property(path, value)
    }

    fn send_response(&self, resp: &LocalResponse) -> Result<(), Status> {
        let headers: Vec<(&str, &str)> = resp
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        super::abi::send_http_response(resp.status, &headers, Some(resp.body.as_bytes()))
    }

    fn resume_request(&self) -> Result<(), Status> {
        super::abi::resume_http_request()
    }

    fn set_effective_context(&self, context_id: u32) -> Result<(), Status> {
        super::abi::set_effective_context(context_id)
    }

    fn dispatch(&self, call: &Outbound<'_>) -> Result<u32, Status> {
        let headers: Vec<(&str, &str)> = call
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        super::abi::dispatch_http_call(
            call.upstream,
            &headers,
            call.body,
            &[],
            Duration::from_millis(call.timeout_ms),
        )
    }

    fn call_response_headers(&self) -> Vec<(String, String)> {
        super::abi::get_map(proxy_wasm::types::MapType::HttpCallResponseHeaders).unwrap_or_default()
    }

    fn call_response_body(&self, max: usize) -> Option<Vec<u8>> {
        use proxy_wasm::types::BufferType;
        super::abi::get_buffer(BufferType::HttpCallResponseBody, 0, max)
            .ok()
            .flatten()
    }

    fn get_shared_data(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), Status> {
        super::abi::get_shared_data(key)
    }

    fn set_shared_data(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), Status> {
        super::abi::set_shared_data(key, Some(value), cas)
    }

    fn delete_shared_data(&self, key: &str, cas: Option<u32>) -> Result<(), Status> {
        super::abi::set_shared_data(key, None, cas)
    }

    fn define_metric(&self, kind: MetricType, name: &str) -> Result<u32, Status> {
        super::abi::define_metric(kind, name)
    }

    fn increment_metric(&self, id: u32, offset: i64) -> Result<(), Status> {
        super::abi::increment_metric(id, offset)
    }

    fn record_metric(&self, id: u32, value: u64) -> Result<(), Status> {
        super::abi::record_metric(id, value)
    }

    fn audit_line(&self, level: LogLevel, line: &str) {
        use proxy_wasm::types::LogLevel as L;
        let level = match level {
            LogLevel::Trace => L::Trace,
            LogLevel::Debug => L::Debug,
            LogLevel::Info => L::Info,
            LogLevel::Warn => L::Warn,
            LogLevel::Error => L::Error,
        };
        let _ = super::abi::log(level, line);
    }
}
