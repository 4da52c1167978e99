//! Panic-free host calls: a thin layer over the raw Proxy-Wasm ABI imports.
//!
//! `proxy_wasm::hostcalls` (SDK 0.2.5) `panic!`s on every host status it does not expect,
//! and a panic traps the VM (the worker's filter instance is lost). Kong's ngx_wasm_module
//! returns several of those: `proxy_set_property` answers NotFound when there is no request
//! (root context), `proxy_get_header_map_pairs` BadArgument for a map the phase does not
//! have, several calls InvalidMemoryAccess. Here every status but Ok is an `Err(status)`;
//! nothing panics, unwraps or indexes.
//!
//! The imports have the SDK's names, module (`env`) and Wasm signatures, so the linker
//! merges them with the SDK's own: one import per function, whoever calls it. One deliberate
//! difference: they return the status as a plain `u32`, not as `Status`. `Status` is a Rust
//! enum without the ABI's codes 5, 6, 9, 11 and 12 (BadExpression, InvalidMemoryAccess,
//! ResultMismatch, BrokenConnection, Unimplemented), and a foreign function returning a
//! value that is not a variant is undefined behaviour before any `match` sees it (the
//! SDK's declarations even promise LLVM a result in `0..=10`). [`status_from_raw`] maps
//! those codes to `Status::InternalFailure`. The Wasm signature is the same either way
//! (`i32`); the built module has one import per name.
//!
//! Returned buffers are allocated by the host through the SDK's exported
//! `proxy_on_memory_allocate` (a boxed slice, capacity == length) and are taken back with
//! `Vec::from_raw_parts(ptr, len, len)`, exactly as the SDK does.
//!
//! The wire formats (header maps, property paths) are plain functions, unit-tested
//! natively (the adapter is compiled natively for its tests). Natively the host-call
//! wrappers compile (and link, unreferenced) but nothing calls them: the tests use an
//! in-memory host (`host::Host`) instead. Hence the `dead_code` allowance off Wasm.

#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

use std::fmt::Write as _;
use std::ptr::{null, null_mut};
use std::time::Duration;

use proxy_wasm::types::{BufferType, LogLevel, MapType, MetricType, Status, StreamType};

// --- raw imports (signatures as in proxy-wasm 0.2.5 `hostcalls.rs`, status as `u32`) ---

#[link(wasm_import_module = "env")]
unsafe extern "C" {
    fn proxy_log(level: LogLevel, message_data: *const u8, message_size: usize) -> u32;

    fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;

    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;

    fn proxy_set_effective_context(context_id: u32) -> u32;

    fn proxy_get_buffer_bytes(
        buffer_type: BufferType,
        start: usize,
        max_size: usize,
        return_buffer_data: *mut *mut u8,
        return_buffer_size: *mut usize,
    ) -> u32;

    fn proxy_get_header_map_pairs(
        map_type: MapType,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> u32;

    fn proxy_get_header_map_value(
        map_type: MapType,
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;

    fn proxy_add_header_map_value(
        map_type: MapType,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;

    fn proxy_replace_header_map_value(
        map_type: MapType,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;

    fn proxy_remove_header_map_value(
        map_type: MapType,
        key_data: *const u8,
        key_size: usize,
    ) -> u32;

    fn proxy_get_property(
        path_data: *const u8,
        path_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;

    fn proxy_set_property(
        path_data: *const u8,
        path_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;

    fn proxy_get_shared_data(
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
        return_cas: *mut u32,
    ) -> u32;

    fn proxy_set_shared_data(
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
        cas: u32,
    ) -> u32;

    fn proxy_continue_stream(stream_type: StreamType) -> u32;

    #[allow(clippy::too_many_arguments)]
    fn proxy_send_local_response(
        status_code: u32,
        status_code_details_data: *const u8,
        status_code_details_size: usize,
        body_data: *const u8,
        body_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;

    fn proxy_define_metric(
        metric_type: MetricType,
        name_data: *const u8,
        name_size: usize,
        return_id: *mut u32,
    ) -> u32;

    fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;

    fn proxy_record_metric(metric_id: u32, value: u64) -> u32;
}

// --- statuses ---

/// A raw ABI status as the SDK's `Status`. Codes `Status` has no variant for (5, 6, 9, 11,
/// 12 and anything unknown) become `InternalFailure`; 0 is `Ok`.
pub fn status_from_raw(raw: u32) -> Status {
    match raw {
        0 => Status::Ok,
        1 => Status::NotFound,
        2 => Status::BadArgument,
        3 => Status::SerializationFailure,
        4 => Status::ParseFailure,
        7 => Status::Empty,
        8 => Status::CasMismatch,
        _ => Status::InternalFailure,
    }
}

/// `Ok(())` for status 0, `Err(status)` for anything else.
fn check(raw: u32) -> Result<(), Status> {
    match raw {
        0 => Ok(()),
        other => Err(status_from_raw(other)),
    }
}

/// Takes back a buffer the host allocated through `proxy_on_memory_allocate`.
///
/// # Safety
/// `data` is null, or was returned by the SDK's `proxy_on_memory_allocate(size)` (a leaked
/// boxed slice of exactly `size` bytes) and is owned by nobody else.
unsafe fn take_host_buffer(data: *mut u8, size: usize) -> Option<Vec<u8>> {
    if data.is_null() {
        None
    } else {
        // SAFETY: per this function's contract, as in the SDK's `hostcalls.rs`.
        Some(unsafe { Vec::from_raw_parts(data, size, size) })
    }
}

/// Host-side milliseconds from a `Duration`, saturating (the SDK truncates with `as u32`).
fn millis_u32(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

/// `(ptr, len)` of an optional byte slice, null/0 for `None` (as the SDK passes it).
fn opt_parts(v: Option<&[u8]>) -> (*const u8, usize) {
    v.map_or((null(), 0), |v| (v.as_ptr(), v.len()))
}

// --- wire formats (pure) ---

/// Serialises a header map: a little-endian u32 count, then per pair the u32 key and value
/// lengths, then per pair `key NUL value NUL` (the SDK's `utils::serialize_map`).
/// `Err(BadArgument)` if a count or length does not fit a u32.
pub fn serialize_map(map: &[(&str, &str)]) -> Result<Vec<u8>, Status> {
    fn le(n: usize) -> Result<[u8; 4], Status> {
        u32::try_from(n)
            .map(u32::to_le_bytes)
            .map_err(|_| Status::BadArgument)
    }
    let size = map.iter().fold(4usize, |acc, (k, v)| {
        acc.saturating_add(k.len())
            .saturating_add(v.len())
            .saturating_add(10)
    });
    let mut bytes = Vec::with_capacity(size);
    bytes.extend_from_slice(&le(map.len())?);
    for (k, v) in map {
        bytes.extend_from_slice(&le(k.len())?);
        bytes.extend_from_slice(&le(v.len())?);
    }
    for (k, v) in map {
        bytes.extend_from_slice(k.as_bytes());
        bytes.push(0);
        bytes.extend_from_slice(v.as_bytes());
        bytes.push(0);
    }
    Ok(bytes)
}

/// Reads the little-endian u32 at `at`, as a `usize`.
fn read_u32(bytes: &[u8], at: usize) -> Option<usize> {
    let raw: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
    usize::try_from(u32::from_le_bytes(raw)).ok()
}

/// The `len` bytes at `*pos` followed by a NUL; advances `*pos` past the NUL.
fn read_nul_terminated<'a>(bytes: &'a [u8], pos: &mut usize, len: usize) -> Option<&'a [u8]> {
    let end = pos.checked_add(len)?;
    let data = bytes.get(*pos..end)?;
    if *bytes.get(end)? != 0 {
        return None;
    }
    *pos = end.checked_add(1)?;
    Some(data)
}

/// Parses a header map in the format of [`serialize_map`]. An empty buffer is an empty map
/// (as in the SDK). Keys and values that are not UTF-8 are converted lossily; a buffer that
/// is short, whose count or lengths overrun it, or whose separators are not NUL is
/// `Err(ParseFailure)`. Bytes after the last pair are ignored.
pub fn deserialize_map(bytes: &[u8]) -> Result<Vec<(String, String)>, Status> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let count = read_u32(bytes, 0).ok_or(Status::ParseFailure)?;
    // The length table must fit before any allocation sized by `count`.
    let mut pos = count
        .checked_mul(8)
        .and_then(|n| n.checked_add(4))
        .filter(|&end| end <= bytes.len())
        .ok_or(Status::ParseFailure)?;
    let mut map = Vec::with_capacity(count);
    for n in 0..count {
        let entry = n
            .checked_mul(8)
            .and_then(|o| o.checked_add(4))
            .ok_or(Status::ParseFailure)?;
        let key_len = read_u32(bytes, entry).ok_or(Status::ParseFailure)?;
        let value_len = read_u32(bytes, entry.saturating_add(4)).ok_or(Status::ParseFailure)?;
        let key = read_nul_terminated(bytes, &mut pos, key_len).ok_or(Status::ParseFailure)?;
        let value = read_nul_terminated(bytes, &mut pos, value_len).ok_or(Status::ParseFailure)?;
        map.push((utf8_or_lossy(key), utf8_or_lossy(value)));
    }
    Ok(map)
}

/// Valid UTF-8 (every header in practice) is checked by `from_utf8`'s word-at-a-time path;
/// only invalid bytes go through the slower lossy conversion.
fn utf8_or_lossy(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_owned(),
        Err(_) => String::from_utf8_lossy(bytes).into_owned(),
    }
}

/// Serialises a property path: the segments joined by NUL, no trailing NUL; the empty path
/// is empty (the SDK's `utils::serialize_property_path`). `Err(BadArgument)` if a segment
/// contains a NUL (it would silently become two segments).
pub fn serialize_property_path(path: &[&str]) -> Result<Vec<u8>, Status> {
    if path.iter().any(|part| part.as_bytes().contains(&0)) {
        return Err(Status::BadArgument);
    }
    let size = path.iter().fold(0usize, |acc, part| {
        acc.saturating_add(part.len()).saturating_add(1)
    });
    let mut bytes = Vec::with_capacity(size);
    for (i, part) in path.iter().enumerate() {
        if i > 0 {
            bytes.push(0);
        }
        bytes.extend_from_slice(part.as_bytes());
    }
    Ok(bytes)
}

// --- host calls ---

/// Writes `msg` to the host's log.
pub fn log(level: LogLevel, msg: &str) -> Result<(), Status> {
    // SAFETY: pointer and length of a live `&str`.
    check(unsafe { proxy_log(level, msg.as_ptr(), msg.len()) })
}

/// Host time, milliseconds since the Unix epoch.
pub fn get_current_time_ms() -> Result<u64, Status> {
    let mut nanos: u64 = 0;
    // SAFETY: the host writes one u64 to a live local.
    check(unsafe { proxy_get_current_time_nanoseconds(&mut nanos) })?;
    Ok(nanos / 1_000_000)
}

/// Sets the root context's tick period (`Duration::ZERO` stops it); milliseconds,
/// saturating at `u32::MAX`.
pub fn set_tick_period(period: Duration) -> Result<(), Status> {
    // SAFETY: plain value argument.
    check(unsafe { proxy_set_tick_period_milliseconds(millis_u32(period)) })
}

/// Makes `context_id` the context later host calls act on (used when resuming a request
/// from the root context).
pub fn set_effective_context(context_id: u32) -> Result<(), Status> {
    // SAFETY: plain value argument.
    check(unsafe { proxy_set_effective_context(context_id) })
}

/// Up to `max_size` bytes of a buffer from `start`. `Ok(None)` when the host has no such
/// buffer (NotFound, Empty) or returns no data.
pub fn get_buffer(
    buffer_type: BufferType,
    start: usize,
    max_size: usize,
) -> Result<Option<Vec<u8>>, Status> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: the host writes a pointer and a length to live locals.
    let raw = unsafe { proxy_get_buffer_bytes(buffer_type, start, max_size, &mut data, &mut size) };
    match check(raw) {
        // SAFETY: on Ok, `data` is null or the host's allocation of `size` bytes.
        Ok(()) => Ok(unsafe { take_host_buffer(data, size) }),
        Err(Status::NotFound | Status::Empty) => Ok(None),
        Err(e) => Err(e),
    }
}

/// All pairs of a header map, in host order. NotFound and Empty are an empty map; values
/// that are not UTF-8 are converted lossily; a malformed buffer is `Err(ParseFailure)`.
pub fn get_map(map_type: MapType) -> Result<Vec<(String, String)>, Status> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: the host writes a pointer and a length to live locals.
    let raw = unsafe { proxy_get_header_map_pairs(map_type, &mut data, &mut size) };
    match check(raw) {
        // SAFETY: on Ok, `data` is null or the host's allocation of `size` bytes.
        Ok(()) => match unsafe { take_host_buffer(data, size) } {
            Some(bytes) => deserialize_map(&bytes),
            None => Ok(Vec::new()),
        },
        Err(Status::NotFound | Status::Empty) => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// One header's value. `Ok(None)` when absent (NotFound, Empty); `Some("")` when the host
/// answers Ok without data (as the SDK). Non-UTF-8 is converted lossily.
// Not called by the adapter (yet): part of the layer so no one reaches for the SDK's.
#[allow(dead_code)]
pub fn get_map_value(map_type: MapType, key: &str) -> Result<Option<String>, Status> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: `key` is a live `&str`; the host writes a pointer and a length to live locals.
    let raw = unsafe {
        proxy_get_header_map_value(map_type, key.as_ptr(), key.len(), &mut data, &mut size)
    };
    match check(raw) {
        // SAFETY: on Ok, `data` is null or the host's allocation of `size` bytes.
        Ok(()) => Ok(Some(match unsafe { take_host_buffer(data, size) } {
            Some(bytes) => String::from_utf8(bytes)
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
            None => String::new(),
        })),
        Err(Status::NotFound | Status::Empty) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Sets (replaces) a header; `None` removes it (as the SDK's `set_map_value`).
pub fn set_map_value(map_type: MapType, key: &str, value: Option<&str>) -> Result<(), Status> {
    match value {
        Some(value) => replace_map_value(map_type, key, value),
        None => {
            // SAFETY: pointer and length of a live `&str`.
            check(unsafe { proxy_remove_header_map_value(map_type, key.as_ptr(), key.len()) })
        }
    }
}

/// Adds a header (keeps existing values of the same name).
// Not called by the adapter (yet): part of the layer so no one reaches for the SDK's.
#[allow(dead_code)]
pub fn add_map_value(map_type: MapType, key: &str, value: &str) -> Result<(), Status> {
    // SAFETY: pointers and lengths of live `&str`s.
    check(unsafe {
        proxy_add_header_map_value(
            map_type,
            key.as_ptr(),
            key.len(),
            value.as_ptr(),
            value.len(),
        )
    })
}

/// Replaces a header's value (adds it if absent).
pub fn replace_map_value(map_type: MapType, key: &str, value: &str) -> Result<(), Status> {
    // SAFETY: pointers and lengths of live `&str`s.
    check(unsafe {
        proxy_replace_header_map_value(
            map_type,
            key.as_ptr(),
            key.len(),
            value.as_ptr(),
            value.len(),
        )
    })
}

/// A host property. `Ok(None)` when unknown (NotFound, Empty) or when the host returns no
/// data (as the SDK).
pub fn get_property(path: &[&str]) -> Result<Option<Vec<u8>>, Status> {
    let path = serialize_property_path(path)?;
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: `path` is a live buffer; the host writes a pointer and a length to live locals.
    let raw = unsafe { proxy_get_property(path.as_ptr(), path.len(), &mut data, &mut size) };
    match check(raw) {
        // SAFETY: on Ok, `data` is null or the host's allocation of `size` bytes.
        Ok(()) => Ok(unsafe { take_host_buffer(data, size) }),
        Err(Status::NotFound | Status::Empty) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Sets a host property (`None`: null value, as the SDK passes it). Kong answers NotFound
/// where there is no request (root context): that is `Err(NotFound)` here.
pub fn set_property(path: &[&str], value: Option<&[u8]>) -> Result<(), Status> {
    let path = serialize_property_path(path)?;
    let (value_data, value_size) = opt_parts(value);
    // SAFETY: `path` and `value` are live buffers (or null/0).
    check(unsafe { proxy_set_property(path.as_ptr(), path.len(), value_data, value_size) })
}

/// A shared-data value and its CAS token (0 from the host is `None`). NotFound and Empty
/// are `(None, None)`.
pub fn get_shared_data(key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), Status> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    let mut cas: u32 = 0;
    // SAFETY: `key` is a live `&str`; the host writes to live locals.
    let raw =
        unsafe { proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas) };
    match check(raw) {
        Ok(()) => {
            let cas = (cas != 0).then_some(cas);
            // SAFETY: on Ok, `data` is null or the host's allocation of `size` bytes.
            Ok((unsafe { take_host_buffer(data, size) }, cas))
        }
        Err(Status::NotFound | Status::Empty) => Ok((None, None)),
        Err(e) => Err(e),
    }
}

/// Stores a shared-data value; `cas` `None` is 0 (unconditional). A stale CAS is
/// `Err(CasMismatch)`.
pub fn set_shared_data(key: &str, value: Option<&[u8]>, cas: Option<u32>) -> Result<(), Status> {
    let (value_data, value_size) = opt_parts(value);
    // SAFETY: `key` and `value` are live buffers (or null/0).
    check(unsafe {
        proxy_set_shared_data(
            key.as_ptr(),
            key.len(),
            value_data,
            value_size,
            cas.unwrap_or(0),
        )
    })
}

/// Sends a local response (no status details; gRPC status -1, as the SDK's
/// `send_http_response`).
pub fn send_http_response(
    status: u32,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Result<(), Status> {
    let headers = serialize_map(headers)?;
    let (body_data, body_size) = opt_parts(body);
    // SAFETY: `headers` and `body` are live buffers (or null/0).
    check(unsafe {
        proxy_send_local_response(
            status,
            null(),
            0,
            body_data,
            body_size,
            headers.as_ptr(),
            headers.len(),
            -1,
        )
    })
}

/// Dispatches an HTTP call; returns its token.
///
/// NOT a raw call: this goes through the SDK's `hostcalls::dispatch_http_call`, because
/// the SDK's dispatcher (which owns `proxy_on_http_call_response`) must register the token
/// with the calling context, and it `expect`s the token when the response arrives: a call
/// made past it would trap then. The SDK returns Ok/BadArgument/InternalFailure and panics
/// on any other status (and on a duplicate token). Kong's `proxy_http_call` (at 9136e463)
/// answers only Ok or InternalFailure (or traps host-side); Envoy's host only those three.
pub fn dispatch_http_call(
    upstream: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    trailers: &[(&str, &str)],
    timeout: Duration,
) -> Result<u32, Status> {
    proxy_wasm::hostcalls::dispatch_http_call(
        upstream,
        headers.to_vec(),
        body,
        trailers.to_vec(),
        timeout,
    )
}

/// Resumes the paused HTTP request.
pub fn resume_http_request() -> Result<(), Status> {
    // SAFETY: plain value argument.
    check(unsafe { proxy_continue_stream(StreamType::HttpRequest) })
}

/// Defines (or looks up) a metric; returns its id.
pub fn define_metric(metric_type: MetricType, name: &str) -> Result<u32, Status> {
    let mut id: u32 = 0;
    // SAFETY: `name` is a live `&str`; the host writes one u32 to a live local.
    check(unsafe { proxy_define_metric(metric_type, name.as_ptr(), name.len(), &mut id) })?;
    Ok(id)
}

/// Adds `offset` to a counter or gauge.
pub fn increment_metric(metric_id: u32, offset: i64) -> Result<(), Status> {
    // SAFETY: plain value arguments.
    check(unsafe { proxy_increment_metric(metric_id, offset) })
}

/// Sets a gauge (or records a histogram value).
pub fn record_metric(metric_id: u32, value: u64) -> Result<(), Status> {
    // SAFETY: plain value arguments.
    check(unsafe { proxy_record_metric(metric_id, value) })
}

// --- logging ---

/// `log` records to the host's log through [`log()`], errors ignored. Replaces the SDK's
/// logger, which `unwrap`s `proxy_log`'s status.
pub struct HostLogger;

/// The host level for a `log` level (the host's Critical has no `log` counterpart).
fn host_level(level: log::Level) -> LogLevel {
    match level {
        log::Level::Error => LogLevel::Error,
        log::Level::Warn => LogLevel::Warn,
        log::Level::Info => LogLevel::Info,
        log::Level::Debug => LogLevel::Debug,
        log::Level::Trace => LogLevel::Trace,
    }
}

impl log::Log for HostLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = host_level(record.level());
        if let Some(msg) = record.args().as_str() {
            let _ = log(level, msg);
        } else {
            // `write!`, not `to_string()`: the latter panics if a `Display` impl errors.
            let mut msg = String::new();
            let _ = write!(msg, "{}", record.args());
            let _ = log(level, &msg);
        }
    }

    fn flush(&self) {}
}

/// Installs [`HostLogger`] (an already installed logger is left in place) and sets the
/// maximum level. Also installs a panic hook that logs the panic at Critical, as the
/// SDK's `proxy_wasm::set_log_level` did (a panic still traps; this only reports it).
/// Call this instead of `proxy_wasm::set_log_level`, not after it.
pub fn init_logger(max: log::LevelFilter) {
    static HOST_LOGGER: HostLogger = HostLogger;
    if log::set_logger(&HOST_LOGGER).is_ok() {
        std::panic::set_hook(Box::new(|info| {
            let mut msg = String::new();
            let _ = write!(msg, "{info}");
            let _ = log(LogLevel::Critical, &msg);
        }));
    }
    log::set_max_level(max);
}

#[cfg(test)]
mod tests {
    use super::*;

    static MAP: &[(&str, &str)] = &[
        (":method", "GET"),
        (":path", "/bytes/1"),
        (":authority", "httpbin.org"),
        ("Powered-By", "proxy-wasm"),
    ];

    // The SDK's own test vector (proxy-wasm 0.2.5, `hostcalls::utils::tests::SERIALIZED_MAP`).
    #[rustfmt::skip]
    static SERIALIZED_MAP: &[u8] = &[
        4, 0, 0, 0,
        7, 0, 0, 0, 3, 0, 0, 0,
        5, 0, 0, 0, 8, 0, 0, 0,
        10, 0, 0, 0, 11, 0, 0, 0,
        10, 0, 0, 0, 10, 0, 0, 0,
        58, 109, 101, 116, 104, 111, 100, 0,
        71, 69, 84, 0,
        58, 112, 97, 116, 104, 0,
        47, 98, 121, 116, 101, 115, 47, 49, 0,
        58, 97, 117, 116, 104, 111, 114, 105, 116, 121, 0,
        104, 116, 116, 112, 98, 105, 110, 46, 111, 114, 103, 0,
        80, 111, 119, 101, 114, 101, 100, 45, 66, 121, 0,
        112, 114, 111, 120, 121, 45, 119, 97, 115, 109, 0,
    ];

    fn owned(map: &[(&str, &str)]) -> Vec<(String, String)> {
        map.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn serialize_map_matches_the_sdk_vector() {
        assert_eq!(serialize_map(MAP).unwrap(), SERIALIZED_MAP);
        assert_eq!(serialize_map(&[]).unwrap(), [0, 0, 0, 0]);
    }

    #[test]
    fn deserialize_map_reads_the_sdk_vector() {
        assert_eq!(deserialize_map(SERIALIZED_MAP).unwrap(), owned(MAP));
        assert!(deserialize_map(&[]).unwrap().is_empty());
        assert!(deserialize_map(&[0, 0, 0, 0]).unwrap().is_empty());
    }

    #[test]
    fn map_round_trips() {
        let maps: &[&[(&str, &str)]] = &[
            &[],
            &[("", "")],
            &[("a", "")],
            &[("", "b")],
            &[("x-dup", "1"), ("x-dup", "2")],
            &[("k\0inner", "v\0inner")], // lengths are explicit: NULs inside survive
            &[
                ("ünïcödé", "värde ✓"),
                ("authorization", "Bearer abc.def.ghi"),
            ],
        ];
        for map in maps {
            let bytes = serialize_map(map).unwrap();
            assert_eq!(deserialize_map(&bytes).unwrap(), owned(map), "{map:?}");
        }
        let big: Vec<(String, String)> =
            (0..300).map(|i| (format!("h{i}"), "v".repeat(i))).collect();
        let refs: Vec<(&str, &str)> = big.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            deserialize_map(&serialize_map(&refs).unwrap()).unwrap(),
            big
        );
    }

    #[test]
    fn deserialize_map_is_lossy_for_non_utf8() {
        // key "k\xff", value "\xfe"
        let bytes = [1, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, b'k', 0xff, 0, 0xfe, 0];
        let map = deserialize_map(&bytes).unwrap();
        assert_eq!(map, vec![("k\u{fffd}".to_string(), "\u{fffd}".to_string())]);
    }

    #[test]
    fn deserialize_map_ignores_trailing_bytes() {
        let mut bytes = SERIALIZED_MAP.to_vec();
        bytes.extend_from_slice(&[1, 2, 3]);
        assert_eq!(deserialize_map(&bytes).unwrap(), owned(MAP));
    }

    #[test]
    fn deserialize_map_rejects_malformed_input() {
        let pf = Err(Status::ParseFailure);
        // Shorter than the count.
        for n in 1..4 {
            assert_eq!(deserialize_map(&SERIALIZED_MAP[..n]), pf, "{n} bytes");
        }
        // Every truncation of a valid buffer fails (never panics).
        for n in 1..SERIALIZED_MAP.len() {
            assert_eq!(deserialize_map(&SERIALIZED_MAP[..n]), pf, "{n} bytes");
        }
        // Count larger than the length table (and huge counts: no huge allocation).
        assert_eq!(deserialize_map(&[1, 0, 0, 0]), pf);
        assert_eq!(
            deserialize_map(&[2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            pf
        );
        assert_eq!(deserialize_map(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]), pf);
        assert_eq!(deserialize_map(&[0xff, 0xff, 0xff, 0x7f]), pf);
        // Lengths overrunning the buffer, including ones that would wrap.
        assert_eq!(
            deserialize_map(&[1, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, b'a', 0, 0]),
            pf
        );
        assert_eq!(
            deserialize_map(&[1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0]),
            pf
        );
        // Separator not NUL.
        let mut bad = SERIALIZED_MAP.to_vec();
        let sep = 4 + 4 * 8 + ":method".len();
        assert_eq!(bad[sep], 0);
        bad[sep] = b'x';
        assert_eq!(deserialize_map(&bad), pf);
        // A length off by one shifts every separator.
        let mut shifted = SERIALIZED_MAP.to_vec();
        shifted[4] = 6;
        assert_eq!(deserialize_map(&shifted), pf);
    }

    #[test]
    fn deserialize_map_never_panics_on_arbitrary_bytes() {
        // A cheap deterministic fuzz: random buffers and mutated valid ones.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20_000 {
            let len = (next() % 64) as usize;
            let mut buf: Vec<u8> = (0..len).map(|_| (next() % 8) as u8).collect();
            if let Some(first) = buf.first_mut() {
                *first %= 4;
            }
            let _ = deserialize_map(&buf);
            let mut m = SERIALIZED_MAP.to_vec();
            let i = (next() as usize) % m.len();
            m[i] = next() as u8;
            let _ = deserialize_map(&m);
        }
    }

    #[test]
    fn property_path_serialisation() {
        assert_eq!(serialize_property_path(&[]).unwrap(), b"");
        assert_eq!(
            serialize_property_path(&["plugin_name"]).unwrap(),
            b"plugin_name"
        );
        assert_eq!(
            serialize_property_path(&["kong", "ctx", "shared", "x"]).unwrap(),
            b"kong\0ctx\0shared\0x"
        );
        assert_eq!(serialize_property_path(&["a", ""]).unwrap(), b"a\0");
        assert_eq!(serialize_property_path(&["", ""]).unwrap(), b"\0");
        assert_eq!(serialize_property_path(&["a\0b"]), Err(Status::BadArgument));
    }

    #[test]
    fn statuses() {
        assert_eq!(check(0), Ok(()));
        assert_eq!(check(1), Err(Status::NotFound));
        assert_eq!(check(2), Err(Status::BadArgument));
        assert_eq!(check(3), Err(Status::SerializationFailure));
        assert_eq!(check(4), Err(Status::ParseFailure));
        assert_eq!(check(7), Err(Status::Empty));
        assert_eq!(check(8), Err(Status::CasMismatch));
        assert_eq!(check(10), Err(Status::InternalFailure));
        // Codes `Status` lacks, and garbage.
        for raw in [5, 6, 9, 11, 12, 13, u32::MAX] {
            assert_eq!(check(raw), Err(Status::InternalFailure), "{raw}");
        }
    }

    #[test]
    fn log_levels() {
        assert_eq!(host_level(log::Level::Error), LogLevel::Error);
        assert_eq!(host_level(log::Level::Warn), LogLevel::Warn);
        assert_eq!(host_level(log::Level::Info), LogLevel::Info);
        assert_eq!(host_level(log::Level::Debug), LogLevel::Debug);
        assert_eq!(host_level(log::Level::Trace), LogLevel::Trace);
    }

    #[test]
    fn helpers() {
        assert_eq!(millis_u32(Duration::from_millis(1500)), 1500);
        assert_eq!(millis_u32(Duration::from_secs(u64::MAX)), u32::MAX);
        assert_eq!(opt_parts(None), (null(), 0));
        let v = [1u8, 2, 3];
        assert_eq!(opt_parts(Some(&v)), (v.as_ptr(), 3));
        // SAFETY: null is always accepted.
        assert_eq!(unsafe { take_host_buffer(null_mut(), 5) }, None);
    }
}
