//! mock-aml: looks like an Azure ML managed online endpoint. Scores any path, echoes
//! what it received (method, path, every header in order) and optionally checks the
//! endpoint key (`Authorization: Bearer <key>`, `key` mode) or an Entra access token
//! (`aad_token` mode, `aad`).

mod aad;

use std::net::SocketAddr;

use serde_json::{json, Value};

use crate::common::{self, Reply};
use crate::http::{self, BodyError, Method, Request, Running, Server};

pub use aad::{AadConfig, AadVerifier};

/// Request bodies above this get 413.
pub const MAX_BODY: usize = 5 * 1024 * 1024;
/// A scoring request with this header is answered after that many milliseconds (at most
/// [`MAX_DELAY_MS`]): a slow GPU model, for concurrency-limit tests.
pub const DELAY_HEADER: &str = "x-mock-delay-ms";
pub const MAX_DELAY_MS: u64 = 30_000;
/// A scoring request with this header gets no answer: the connection is dropped (after
/// the delay, if any), as a backend that crashes or resets mid-request.
pub const DROP_HEADER: &str = "x-mock-drop";

#[derive(Debug, Clone, Default)]
pub struct Config {
    /// Endpoint key: when set, requests must carry `Authorization: Bearer <key>`.
    pub key: Option<String>,
    /// `aad_token` mode: when set, requests must carry an Entra token it accepts.
    pub aad: Option<AadConfig>,
    /// Don't log each request to stderr (for load benchmarks).
    pub quiet: bool,
}

/// Binds `listen` and serves in the background until the process exits (for tests).
pub fn spawn(config: Config, listen: &str) -> Result<SocketAddr, String> {
    let running = start(config, listen)?;
    let addr = running.addr();
    running.detach();
    Ok(addr)
}

/// Binds `listen` and serves in the background until the handle is dropped.
pub fn start(config: Config, listen: &str) -> Result<Running, String> {
    let (server, _) = http::bind(listen)?;
    serve(server, config)
}

/// Serves in the background until the handle is dropped.
/// Logs one line per request to stderr unless `quiet`.
pub fn serve(server: Server, config: Config) -> Result<Running, String> {
    let server = if config.quiet {
        server
    } else {
        server.log_as("mock-aml")
    };
    let aad = config.aad.clone().map(AadVerifier::new);
    server.spawn(move |req| {
        if req.header(DROP_HEADER).is_some() {
            delay(req);
            return http::Outcome {
                reply: None,
                delay: std::time::Duration::ZERO,
            };
        }
        handle(&config, aad.as_ref(), req).into()
    })
}

/// Waits what the request's [`DELAY_HEADER`] asks for.
fn delay(req: &Request) {
    if let Some(ms) = req
        .header(DELAY_HEADER)
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        // Handlers run on the blocking pool: a sleep holds one thread, not the server.
        std::thread::sleep(std::time::Duration::from_millis(ms.min(MAX_DELAY_MS)));
    }
}

/// Answers one request (`aad`: the verifier of `config.aad`).
pub fn handle(config: &Config, aad: Option<&AadVerifier>, req: &mut Request) -> Reply {
    let method = req.method().clone();
    let path = req.url().split('?').next().unwrap_or("").to_string();
    route(config, aad, req, &method, &path)
}

fn route(
    config: &Config,
    aad: Option<&AadVerifier>,
    req: &mut Request,
    method: &Method,
    path: &str,
) -> Reply {
    let is_get = *method == Method::GET || *method == Method::HEAD;
    if is_get && (path == "/health" || path == "/") {
        return Reply::json(200, &json!({"status": "ok"}));
    }
    delay(req);
    let received = json!({
        "method": method.as_str(),
        "path": req.url(),
        "headers": req
            .headers()
            .iter()
            .map(|h| json!([h.name.to_ascii_lowercase(), h.value]))
            .collect::<Vec<_>>(),
    });
    if let Some(key) = &config.key {
        let auth = req.header("authorization");
        let expected = format!("Bearer {key}");
        if auth != Some(expected.as_str()) {
            let message = match auth {
                None => "missing Authorization header",
                Some(_) => "Authorization is not `Bearer <endpoint key>`",
            };
            return Reply::json(
                401,
                &json!({"error": "unauthorized", "message": message, "received": received}),
            );
        }
    }
    let caller_appid = match aad.map(|v| v.verify(req.header("authorization"))) {
        None => None,
        Some(Ok(app)) => Some(app),
        // No `received` here: it would echo the token.
        Some(Err(message)) => {
            return Reply::json(401, &json!({"error": "unauthorized", "message": message}))
        }
    };
    let body = match req.read_body(MAX_BODY) {
        Ok(b) => b,
        Err(BodyError::TooLarge) => {
            return Reply::error(413, "payload_too_large", "request body is over 5 MiB")
        }
        Err(BodyError::Io(e)) => {
            return Reply::error(400, "bad_request", format!("cannot read body: {e}"))
        }
    };
    let deployment = req
        .header("azureml-model-deployment")
        .unwrap_or("blue")
        .to_string();
    let request_id = common::random_hex(16);
    let mut answer = json!({
        "predictions": predictions(&body),
        "deployment": deployment,
        "received": received,
    });
    if let Some(app) = caller_appid {
        answer["caller_appid"] = json!(app);
    }
    Reply::json(200, &answer)
        .with_header("azureml-model-deployment", deployment)
        .with_header("x-request-id", request_id)
}

/// One number per input row (the row's sum, 4 decimals) for `{"input_data": {"data": rows}}`,
/// `{"input_data": rows}` or `{"data": rows}`; `[0.0]` for anything else.
pub fn predictions(body: &[u8]) -> Vec<f64> {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return vec![0.0];
    };
    let rows = v
        .pointer("/input_data/data")
        .or_else(|| v.get("input_data").filter(|d| d.is_array()))
        .or_else(|| v.get("data"))
        .and_then(Value::as_array);
    match rows {
        Some(rows) if !rows.is_empty() => rows.iter().map(row_score).collect(),
        _ => vec![0.0],
    }
}

fn row_score(row: &Value) -> f64 {
    let sum: f64 = match row {
        Value::Array(cells) => cells.iter().filter_map(Value::as_f64).sum(),
        other => other.as_f64().unwrap_or(0.0),
    };
    (sum * 10_000.0).round() / 10_000.0
}
