//! Kong Gateway 3.9 (ngx_wasm_module, Wasmtime) with the filter, DB-less, in a test's temp
//! dir: `kong.conf`, a declarative `kong.yml` (service `azureml` → the mock backend, route
//! `score` with the filter chain, the `prometheus` plugin globally), the filters directory
//! (`azure_ml_kong.wasm` + `kong/azure_ml_kong.meta.json`), and the running nginx.
//!
//! Kong daemonizes (`kong start` returns once nginx runs in the background), so the parent's
//! death does not take it down: [`Kong`] stops it on drop (`kong stop`, then SIGKILL to the
//! nginx process group), and a small watchdog process (`sh`, reading a pipe from this process)
//! kills the process group if the test process dies without dropping it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use regex::Regex;
use serde_json::{json, Value};

use crate::{http, repo_root, Artifacts, Cluster, Error};

/// The filter's name in Kong: the `.wasm` file name in `wasm_filters_path`.
pub const FILTER_NAME: &str = "azure_ml_kong";
/// A route without the filter that the harness polls to know the proxy routes requests.
pub const READY_PATH: &str = "/__harness/ready";

/// How to build the Kong under test.
#[derive(Debug, Clone)]
pub struct KongOptions {
    /// The filter's JSON configuration (a JSON object: meta.json declares its schema, and Kong
    /// validates it); `None` runs Kong without the filter chain.
    pub filter_config: Option<Value>,
    /// The mock Azure ML backend's port (service `azureml`).
    pub backend_port: u16,
    /// Named upstreams: every `upstream` in the filter config equal to one of these names
    /// becomes `127.0.0.1:<port>` (Kong's `dispatch_http_call` takes `host:port`).
    pub clusters: Vec<Cluster>,
    /// `nginx_worker_processes`.
    pub workers: u32,
    /// Kong's `log_level` (the filter's audit lines are at warn, JWKS events at info).
    pub log_level: String,
    /// kong.conf overrides and additions (name, value); an empty value drops the line.
    pub conf: Vec<(String, String)>,
    /// Plugins on the `score` route (e.g. `file-log` reading `kong.ctx.shared`).
    pub route_plugins: Vec<Value>,
    /// A whole declarative config instead of the harness's (e.g. the shipped `kong/kong.yml`);
    /// the harness adds its filter-free ready route as a service of its own.
    pub declarative: Option<Value>,
    /// Wasmtime's compiled-module cache, shared by every Kong that sets the same directory
    /// (Kong keeps it in its prefix, so each fresh prefix would compile the module again in
    /// every worker). Entries are keyed by the module's hash and Wasmtime's settings.
    /// `None`: Kong's own, in the prefix (a cold start, as the bench measures it).
    pub compile_cache: Option<PathBuf>,
}

impl KongOptions {
    pub fn new(filter_config: Value, backend_port: u16, idp_port: u16) -> KongOptions {
        KongOptions {
            filter_config: Some(filter_config),
            backend_port,
            clusters: vec![Cluster {
                name: "mock_idp".into(),
                port: idp_port,
            }],
            workers: 2,
            log_level: "info".into(),
            conf: Vec::new(),
            route_plugins: Vec::new(),
            declarative: None,
            compile_cache: Some(crate::target_dir().join("kong-wasmtime-cache")),
        }
    }
}

/// Rewrite every `upstream` (at any depth) that names one of `clusters` to
/// `127.0.0.1:<port>`: the filter's `upstream` is an Envoy cluster name in Envoy and
/// `host:port` in Kong. Other values (already `host:port`) stay.
pub fn translate_upstreams(config: &mut Value, clusters: &[Cluster]) {
    match config {
        Value::Object(m) => {
            for (k, v) in m.iter_mut() {
                if k == "upstream" {
                    if let Some(c) = v
                        .as_str()
                        .and_then(|s| clusters.iter().find(|c| c.name == s))
                    {
                        *v = json!(format!("127.0.0.1:{}", c.port));
                        continue;
                    }
                }
                translate_upstreams(v, clusters);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|v| translate_upstreams(v, clusters)),
        _ => {}
    }
}

/// The declarative configuration (JSON is valid YAML): service `azureml` → the backend, route
/// `score` (`/`, path kept, client's Host kept) with the filter chain, a filter-free route
/// [`READY_PATH`] answered by `request-termination`, and `prometheus` globally.
pub fn kong_declarative(backend_port: u16, filter_config: Option<&Value>) -> Value {
    let mut score = json!({
        "name": "score",
        "paths": ["/"],
        "strip_path": false,
        "preserve_host": true
    });
    if let Some(cfg) = filter_config {
        score["filter_chains"] = json!([{
            "name": "azure-ml-chain",
            "filters": [{"name": FILTER_NAME, "config": cfg}]
        }]);
    }
    json!({
        "_format_version": "3.0",
        "services": [{
            "name": "azureml",
            "url": format!("http://127.0.0.1:{backend_port}"),
            "connect_timeout": 2000,
            "read_timeout": 15000,
            "write_timeout": 15000,
            "retries": 0,
            "routes": [
                score,
                {
                    "name": "harness-ready",
                    "paths": [READY_PATH],
                    "strip_path": false,
                    "plugins": [{"name": "request-termination",
                                 "config": {"status_code": 200, "message": "ready"}}]
                }
            ]
        }],
        "plugins": [{"name": "prometheus"}]
    })
}

/// `declarative` plus a service holding the harness's filter-free ready route.
fn with_ready_route(mut declarative: Value) -> Value {
    let ready = json!({
        "name": "harness",
        "url": "http://127.0.0.1:9",
        "routes": [{
            "name": "harness-ready",
            "paths": [READY_PATH],
            "strip_path": false,
            "plugins": [{"name": "request-termination",
                         "config": {"status_code": 200, "message": "ready"}}]
        }]
    });
    match declarative["services"].as_array_mut() {
        Some(services) => services.push(ready),
        None => declarative["services"] = json!([ready]),
    }
    declarative
}

/// Ports Kong listens on.
#[derive(Debug, Clone, Copy)]
struct Ports {
    proxy: u16,
    admin: u16,
    status: u16,
}

/// Three distinct free ports (bound together, then released: a small race is accepted; Kong's
/// start is retried once on "address in use").
fn free_ports() -> Result<Ports, Error> {
    let bind = || std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string());
    let (a, b, c) = (bind()?, bind()?, bind()?);
    let port =
        |l: &std::net::TcpListener| l.local_addr().map(|a| a.port()).map_err(|e| e.to_string());
    Ok(Ports {
        proxy: port(&a)?,
        admin: port(&b)?,
        status: port(&c)?,
    })
}

fn kong_conf(dir: &Path, prefix: &Path, ports: Ports, o: &KongOptions) -> String {
    let mut lines: Vec<(String, String)> = vec![
        ("prefix", prefix.display().to_string()),
        ("database", "off".into()),
        (
            "declarative_config",
            dir.join("kong.yml").display().to_string(),
        ),
        ("wasm", "on".into()),
        (
            "wasm_filters_path",
            dir.join("filters").display().to_string(),
        ),
        ("nginx_wasm_shm_kv", "4m".into()),
        ("nginx_wasm_proxy_wasm_lua_resolver", "on".into()),
        ("nginx_worker_processes", o.workers.to_string()),
        ("proxy_listen", format!("127.0.0.1:{}", ports.proxy)),
        ("admin_listen", format!("127.0.0.1:{}", ports.admin)),
        ("admin_gui_listen", "off".into()),
        ("status_listen", format!("127.0.0.1:{}", ports.status)),
        ("log_level", o.log_level.clone()),
        ("plugins", "bundled".into()),
        ("proxy_error_log", "logs/error.log".into()),
        ("admin_error_log", "logs/error.log".into()),
        ("status_error_log", "logs/error.log".into()),
        ("proxy_access_log", "logs/access.log".into()),
        ("anonymous_reports", "off".into()),
        ("mem_cache_size", "16m".into()),
        // As kong/kong.conf recommends: nginx drops client headers with `_` (Kong's template
        // turns underscores_in_headers on), so `x_caller_oid` cannot ride next to `x-caller-oid`.
        ("nginx_proxy_underscores_in_headers", "off".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    // Workers write the prefix (LMDB, sockets): as root they must stay root.
    if is_root() {
        lines.push(("nginx_user".into(), "root root".into()));
    }
    // For debugging a failure: E2E_KONG_CONF='name=value;name=value' (e.g. core dumps with
    // `nginx_main_worker_rlimit_core=512m;nginx_main_working_directory=/tmp/cores`).
    let from_env: Vec<(String, String)> = std::env::var("E2E_KONG_CONF")
        .unwrap_or_default()
        .split(';')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    for (k, v) in o.conf.iter().chain(&from_env) {
        lines.retain(|(name, _)| name != k);
        if !v.is_empty() {
            lines.push((k.clone(), v.clone()));
        }
    }
    let mut out = String::from("# Rendered by aml-harness (harness/src/kong.rs) for one test.\n");
    for (k, v) in lines {
        out.push_str(&format!("{k} = {v}\n"));
    }
    out
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The process is alive (exists and is not a zombie).
fn alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "pid (comm) S ...": the state follows the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) => false,
    }
}

/// Run `cmd` to completion within `within`, output to `out` (stdout and stderr together).
fn run_with_timeout(
    mut cmd: Command,
    out: &Path,
    within: Duration,
) -> Result<(bool, String), Error> {
    let file = std::fs::File::create(out).map_err(|e| e.to_string())?;
    let err = file.try_clone().map_err(|e| e.to_string())?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::from(file))
        .stderr(Stdio::from(err))
        .spawn()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    let deadline = Instant::now() + within;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(e.to_string()),
        }
    };
    let text = crate::read_lossy(out);
    match status {
        Some(s) => Ok((s.success(), text)),
        None => Ok((false, format!("{text}\n(timed out after {within:?})"))),
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A running Kong (nginx master + workers, daemonized), stopped on drop.
pub struct Kong {
    pub prefix: PathBuf,
    /// Proxy listener.
    pub port: u16,
    pub admin_port: u16,
    /// Status listener: `/status`, `/metrics` (Prometheus, the filter's `pw_azure_ml_kong_*`).
    pub status_port: u16,
    /// The nginx master (its process group holds the workers).
    pub pid: i32,
    kong: PathBuf,
    conf_path: PathBuf,
    watchdog: Option<Child>,
    stopped: bool,
}

impl Kong {
    /// Render the files into `dir` and start Kong; waits until the status listener answers
    /// `/status` 200 and the proxy routes requests (60 s at most).
    pub fn start(a: &Artifacts, dir: &Path, o: &KongOptions) -> Result<Kong, Error> {
        if !a.kong.exists() {
            return Err(format!(
                "Kong not found at {} (build Kong 3.9 from source as docs/kong.md says, or set AMLK_KONG)",
                a.kong.display()
            ));
        }
        let filters = dir.join("filters");
        std::fs::create_dir_all(&filters).map_err(|e| e.to_string())?;
        // Copies: a rebuild of the module during the test does not change what Kong runs.
        std::fs::copy(&a.wasm, filters.join(format!("{FILTER_NAME}.wasm")))
            .map_err(|e| format!("copy {}: {e}", a.wasm.display()))?;
        let meta = repo_root()
            .join("kong")
            .join(format!("{FILTER_NAME}.meta.json"));
        std::fs::copy(&meta, filters.join(format!("{FILTER_NAME}.meta.json")))
            .map_err(|e| format!("copy {}: {e}", meta.display()))?;

        let filter_config = o.filter_config.clone().map(|mut c| {
            translate_upstreams(&mut c, &o.clusters);
            c
        });
        let yml = match &o.declarative {
            Some(d) => with_ready_route(d.clone()),
            None => {
                let mut yml = kong_declarative(o.backend_port, filter_config.as_ref());
                if let Some(route) = yml["services"][0]["routes"][0].as_object_mut() {
                    route.insert("plugins".into(), Value::Array(o.route_plugins.clone()));
                }
                yml
            }
        };
        std::fs::write(
            dir.join("kong.yml"),
            serde_json::to_string_pretty(&yml).map_err(|e| e.to_string())?,
        )
        .map_err(|e| e.to_string())?;

        let prefix = dir.join("kong-prefix");
        if let Some(cache) = &o.compile_cache {
            std::fs::create_dir_all(cache).map_err(|e| format!("{}: {e}", cache.display()))?;
            std::fs::create_dir_all(&prefix).map_err(|e| e.to_string())?;
            std::os::unix::fs::symlink(cache, prefix.join(".wasmtime_cache"))
                .map_err(|e| format!("wasmtime cache link: {e}"))?;
        }
        let conf_path = dir.join("kong.conf");
        let mut last_err = String::new();
        for attempt in 0..2 {
            let ports = free_ports()?;
            std::fs::write(&conf_path, kong_conf(dir, &prefix, ports, o))
                .map_err(|e| e.to_string())?;
            let mut kong = Kong {
                prefix: prefix.clone(),
                port: ports.proxy,
                admin_port: ports.admin,
                status_port: ports.status,
                pid: 0,
                kong: a.kong.clone(),
                conf_path: conf_path.clone(),
                watchdog: None,
                stopped: false,
            };
            match kong.launch(dir) {
                Ok(()) => {
                    kong.wait_ready(Duration::from_secs(60))?;
                    return Ok(kong);
                }
                Err(e) if attempt == 0 && e.contains("in use") => {
                    // Another process took a port between choosing and binding it. The failed
                    // start's `[emerg]` lines go to their own file, so the log that the crash
                    // checks read holds only the Kong that runs.
                    drop(kong);
                    let log = prefix.join("logs/error.log");
                    let _ = std::fs::rename(&log, dir.join("kong-error.port-in-use.log"));
                    last_err = e;
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_err)
    }

    /// `kong start -c kong.conf`: exits 0 once nginx runs in the background.
    fn launch(&mut self, dir: &Path) -> Result<(), Error> {
        let mut cmd = Command::new(&self.kong);
        cmd.arg("start").arg("-c").arg(&self.conf_path);
        let (ok, out) =
            run_with_timeout(cmd, &dir.join("kong-start.log"), Duration::from_secs(90))?;
        self.pid = self.read_pid().unwrap_or(0);
        if self.pid > 0 {
            self.arm_watchdog();
        }
        if ok && self.pid > 0 {
            return Ok(());
        }
        Err(format!(
            "`{} start -c {}` failed:\n{}\nerror.log:\n{}",
            self.kong.display(),
            self.conf_path.display(),
            out.trim(),
            tail(&self.log(), 60)
        ))
    }

    fn read_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.prefix.join("pids/nginx.pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    /// A process that kills the nginx process group when this process's end of its stdin
    /// closes without `stop` having run first (the test process died).
    fn arm_watchdog(&mut self) {
        let pid = self.pid;
        let script = format!("read _ignored; kill -KILL -- -{pid} {pid} 2>/dev/null");
        self.watchdog = Command::new("/bin/sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok();
    }

    fn wait_ready(&mut self, within: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + within;
        loop {
            if !self.is_running() {
                return Err(format!(
                    "Kong's nginx (pid {}) exited during start-up; error.log:\n{}",
                    self.pid,
                    tail(&self.log(), 80)
                ));
            }
            let status = http("GET", &self.status_url("/status"), &[], None);
            let ready = http("GET", &self.url(READY_PATH), &[], None);
            if let (Ok(s), Ok(r)) = (&status, &ready) {
                if s.status == 200 && r.status == 200 {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                let last = format!(
                    "/status: {:?}; {READY_PATH}: {:?}",
                    status.map(|r| r.status),
                    ready.map(|r| r.status)
                );
                return Err(format!(
                    "Kong not ready after {within:?} ({last}); error.log:\n{}",
                    tail(&self.log(), 80)
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn status_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.status_port)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin_port)
    }

    pub fn log_path(&self) -> PathBuf {
        self.prefix.join("logs/error.log")
    }

    /// Kong's error.log (nginx, Kong and the filter's log lines).
    pub fn log(&self) -> String {
        crate::read_lossy(&self.log_path())
    }

    /// The Prometheus exposition of the status listener's `/metrics`.
    pub fn metrics(&self) -> Result<String, Error> {
        let r = http("GET", &self.status_url("/metrics"), &[], None)?;
        if r.status != 200 {
            return Err(format!("GET /metrics: {} {}", r.status, r.body));
        }
        Ok(r.body)
    }

    /// The filter's metric `name` (as the filter defines it, e.g.
    /// `decisions_total_route=score_caller=unregistered_decision=allow_reason=authenticated`), read from
    /// `/metrics` as Kong exports it (`pw_azure_ml_kong_decisions_total{route=..,...}`).
    pub fn metric(&self, name: &str) -> Result<Option<f64>, Error> {
        let (series, labels) = prometheus_series(name);
        let text = self.metrics()?;
        Ok(parse_exposition(&text)
            .into_iter()
            .find(|(n, l, _)| *n == series && same_labels(l, &labels))
            .map(|(_, _, v)| v))
    }

    /// The nginx master is alive.
    pub fn is_running(&self) -> bool {
        alive(self.pid)
    }

    /// Stop Kong (`kong stop -p <prefix>`; SIGKILL to the process group if that fails).
    /// Idempotent; also done on drop.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
        if self.pid <= 0 {
            self.pid = self.read_pid().unwrap_or(0);
        }
        let pid = self.pid;
        if pid <= 0 {
            return;
        }
        if alive(pid) {
            let mut cmd = Command::new(&self.kong);
            cmd.arg("stop").arg("-p").arg(&self.prefix);
            let out = self.prefix.join("logs/kong-stop.log");
            let _ = run_with_timeout(cmd, &out, Duration::from_secs(20));
            let deadline = Instant::now() + Duration::from_secs(5);
            while alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        // Whatever is left of the group (workers included), and the master if it survived.
        // SAFETY: kill(2) with a process-group id / pid; no memory is involved.
        unsafe {
            if libc::kill(-pid, 0) == 0 {
                libc::kill(-pid, libc::SIGKILL);
            }
            if alive(pid) {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Kong {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Kong 3.9's `label_patterns` from `kong/azure_ml_kong.meta.json`, compiled.
fn label_patterns() -> &'static [(String, Regex)] {
    static PATTERNS: OnceLock<Vec<(String, Regex)>> = OnceLock::new();
    PATTERNS.get_or_init(|| {
        let path = repo_root()
            .join("kong")
            .join(format!("{FILTER_NAME}.meta.json"));
        let meta: Value = std::fs::read_to_string(&path)
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or(Value::Null);
        meta["metrics"]["label_patterns"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| {
                        let label = p["label"].as_str()?.to_string();
                        let re = Regex::new(p["pattern"].as_str()?).ok()?;
                        Some((label, re))
                    })
                    .collect()
            })
            .unwrap_or_default()
    })
}

/// The Prometheus series (name, labels) Kong 3.9 exports for the filter's metric `name`,
/// replaying `kong/plugins/prometheus/wasmx.lua` `parse_pw_key`: the key is
/// `pw:azure_ml_kong:<name>`; each label pattern searches from where the previous successful
/// one ended; capture 2 is the value; the name is cut where the first label starts; `:` → `_`.
pub fn prometheus_series(name: &str) -> (String, Labels) {
    let key = format!("pw:{FILTER_NAME}:{name}");
    let mut labels = Vec::new();
    let mut pos = 0;
    let mut first = key.len();
    for (label, re) in label_patterns() {
        if let Some(c) = re.captures_at(&key, pos) {
            let (Some(whole), Some(outer), Some(value)) = (c.get(0), c.get(1), c.get(2)) else {
                continue;
            };
            pos = whole.end();
            first = first.min(whole.end() - outer.as_str().len());
            labels.push((label.clone(), value.as_str().to_string()));
        }
    }
    (key[..first].replace(':', "_"), labels)
}

/// Label (name, value) pairs of one sample.
pub type Labels = Vec<(String, String)>;

/// Samples of a Prometheus text exposition: (name, labels, value).
pub fn parse_exposition(text: &str) -> Vec<(String, Labels, f64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = match line.rsplit_once(' ') {
            Some(p) => p,
            None => continue,
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => {
                let body = rest.trim_end_matches('}');
                let labels = body
                    .split(',')
                    .filter_map(|kv| {
                        let (k, v) = kv.split_once('=')?;
                        Some((k.trim().to_string(), v.trim().trim_matches('"').to_string()))
                    })
                    .collect();
                (n.to_string(), labels)
            }
            None => (series.to_string(), Vec::new()),
        };
        out.push((name, labels, value));
    }
    out
}

fn same_labels(a: &[(String, String)], b: &[(String, String)]) -> bool {
    let mut a = a.to_vec();
    let mut b = b.to_vec();
    a.sort();
    b.sort();
    a == b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_follow_kong_label_patterns() {
        let (n, l) = prometheus_series(
            "decisions_total_route=team-score_caller=unregistered_decision=allow_reason=authenticated",
        );
        assert_eq!(n, "pw_azure_ml_kong_decisions_total");
        assert_eq!(
            l,
            [
                ("route".to_string(), "team-score".to_string()),
                ("caller".into(), "unregistered".into()),
                ("decision".into(), "allow".into()),
                ("reason".into(), "authenticated".into())
            ]
        );
        let (n, l) = prometheus_series("jwks_fetches_total_provider=entra_result=ok");
        assert_eq!(n, "pw_azure_ml_kong_jwks_fetches_total");
        assert_eq!(l.len(), 2);
        let (n, l) = prometheus_series("jwks_keys_provider=entra");
        assert_eq!(n, "pw_azure_ml_kong_jwks_keys");
        assert_eq!(l, [("provider".to_string(), "entra".to_string())]);
    }

    #[test]
    fn exposition_lines_parse() {
        let text = "# HELP x\n# TYPE x counter\n\
                    pw_azure_ml_kong_decisions_total{route=\"score\",decision=\"deny\",reason=\"token_missing\"} 3\n\
                    kong_nginx_connections_total{node_id=\"a\",subsystem=\"http\",state=\"active\"} 1\n\
                    plain 2.5\n";
        let s = parse_exposition(text);
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].0, "pw_azure_ml_kong_decisions_total");
        assert_eq!(s[0].2, 3.0);
        assert_eq!(s[2], ("plain".to_string(), vec![], 2.5));
    }

    #[test]
    fn upstreams_naming_a_cluster_become_host_port() {
        let mut c = json!({"providers": [
            {"name": "a", "upstream": "mock_idp"},
            {"name": "b", "upstream": "login.microsoftonline.com:443"},
            {"name": "c"}
        ]});
        translate_upstreams(
            &mut c,
            &[Cluster {
                name: "mock_idp".into(),
                port: 4242,
            }],
        );
        assert_eq!(c["providers"][0]["upstream"], "127.0.0.1:4242");
        assert_eq!(
            c["providers"][1]["upstream"],
            "login.microsoftonline.com:443"
        );
        assert!(c["providers"][2].get("upstream").is_none());
    }
}
