//! The whole local gateway on one host: mock IdP + mock Azure ML + Envoy or Kong with the
//! filter, and host-neutral questions tests ask of it (URL, log, audit lines, metrics).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::kong::tail;
use crate::{
    Artifacts, Cluster, Envoy, EnvoyOptions, Error, Host, Kong, KongOptions, MockAml, MockIdp,
    ENDPOINT_KEY, ML_AUDIENCE,
};

/// Host-neutral knobs of a gateway (each host maps them to its own settings).
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    /// Envoy `--concurrency`, Kong `nginx_worker_processes` (default 2: per-worker state is
    /// exercised).
    pub workers: u32,
    /// Envoy `-l`, Kong `log_level` (default `info`; `$E2E_LOG_LEVEL` overrides).
    pub log_level: String,
    /// Named upstreams besides `mock_idp` (e.g. a second IdP): Envoy clusters; in Kong the
    /// filter's `upstream` naming one becomes `127.0.0.1:<port>`.
    pub clusters: Vec<Cluster>,
    /// Envoy only: HTTP filters placed before the wasm filter.
    pub envoy_http_filters: Vec<Value>,
    /// Kong only: kong.conf overrides (name, value); an empty value drops the setting (e.g.
    /// `("nginx_wasm_shm_kv", "")`: no shared-data zone).
    pub kong_conf: Vec<(String, String)>,
}

impl Default for GatewayOptions {
    fn default() -> Self {
        GatewayOptions {
            workers: 2,
            log_level: std::env::var("E2E_LOG_LEVEL").unwrap_or_else(|_| "info".into()),
            clusters: Vec::new(),
            envoy_http_filters: Vec::new(),
            kong_conf: Vec::new(),
        }
    }
}

/// The host process of a gateway.
pub enum Proxy {
    Envoy(Envoy),
    Kong(Kong),
}

/// The whole local gateway: IdP + Azure ML mock + Envoy or Kong with the filter. Keeps its
/// temp dir (logs, Kong prefix) when dropped during a panic, and says where.
pub struct Gateway {
    pub artifacts: Artifacts,
    pub idp: MockIdp,
    pub aml: MockAml,
    pub proxy: Proxy,
    dir: Option<tempfile::TempDir>,
}

type IdpHook<'a> = Box<dyn FnOnce(&MockIdp) + 'a>;
type EnvoyHook<'a> = Box<dyn FnOnce(&mut EnvoyOptions) + 'a>;
type KongHook<'a> = Box<dyn FnOnce(&mut KongOptions) + 'a>;

/// Builds a [`Gateway`] on a host: options, a hook run on the IdP before the host starts
/// (hence before the first JWKS fetch), and Envoy-only adjustments.
pub struct GatewayBuilder<'a> {
    host: Host,
    options: GatewayOptions,
    setup_idp: Option<IdpHook<'a>>,
    envoy: Option<EnvoyHook<'a>>,
    kong: Option<KongHook<'a>>,
    /// `Some(app id)`: the backend runs in `aad_token` mode (see [`GatewayBuilder::aad_backend`]).
    aad_app_id: Option<String>,
}

impl<'a> GatewayBuilder<'a> {
    /// The backend in Azure ML's `aad_token` mode instead of `key` mode: it wants a token of
    /// this gateway's mock IdP (its JWKS), for `https://ml.azure.com`, from client app
    /// `app_id` (e.g. [`crate::MANAGED_IDENTITY_CLIENT_ID`]).
    pub fn aad_backend(mut self, app_id: &str) -> Self {
        self.aad_app_id = Some(app_id.to_string());
        self
    }

    pub fn options(mut self, adjust: impl FnOnce(&mut GatewayOptions)) -> Self {
        adjust(&mut self.options);
        self
    }

    pub fn workers(mut self, n: u32) -> Self {
        self.options.workers = n;
        self
    }

    pub fn log_level(mut self, level: &str) -> Self {
        self.options.log_level = level.to_string();
        self
    }

    /// Another named upstream (see [`GatewayOptions::clusters`]).
    pub fn cluster(mut self, name: &str, port: u16) -> Self {
        self.options.clusters.push(Cluster {
            name: name.to_string(),
            port,
        });
        self
    }

    /// Kong only: set (or with `""` drop) a kong.conf setting.
    pub fn kong_conf(mut self, name: &str, value: &str) -> Self {
        self.options
            .kong_conf
            .push((name.to_string(), value.to_string()));
        self
    }

    /// Run on the started IdP before the host starts.
    pub fn setup_idp(mut self, f: impl FnOnce(&MockIdp) + 'a) -> Self {
        self.setup_idp = Some(Box::new(f));
        self
    }

    /// Kong only: adjust the Kong options last (ignored on Envoy).
    pub fn kong(mut self, f: impl FnOnce(&mut KongOptions) + 'a) -> Self {
        self.kong = Some(Box::new(f));
        self
    }

    /// Envoy only: adjust the Envoy options last (ignored on Kong).
    pub fn envoy(mut self, f: impl FnOnce(&mut EnvoyOptions) + 'a) -> Self {
        self.envoy = Some(Box::new(f));
        self
    }

    /// Start IdP and backend, then the host with the config `make_config(idp_port)` returns.
    pub fn start(self, make_config: impl FnOnce(u16) -> Value) -> Result<Gateway, Error> {
        let GatewayBuilder {
            host,
            options: o,
            setup_idp,
            envoy,
            kong,
            aad_app_id,
        } = self;
        let artifacts = Artifacts::locate_for(host)?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("aml-gw-{host}-"))
            .tempdir()
            .map_err(|e| e.to_string())?;
        let idp = MockIdp::start(&artifacts, dir.path(), &[])?;
        if let Some(f) = setup_idp {
            f(&idp);
        }
        let aml = match &aad_app_id {
            None => MockAml::start(&artifacts, dir.path(), Some(ENDPOINT_KEY))?,
            Some(app_id) => MockAml::start_aad(
                &artifacts,
                dir.path(),
                &format!("{}/common/discovery/v2.0/keys", idp.base()),
                ML_AUDIENCE,
                Some(app_id),
            )?,
        };
        let config = make_config(idp.port);
        let started = match host {
            Host::Envoy => {
                let mut eo = EnvoyOptions::new(config, aml.port, idp.port);
                eo.concurrency = o.workers;
                eo.log_level = o.log_level.clone();
                if let Ok(level) = std::env::var("E2E_ENVOY_LOG_LEVEL") {
                    eo.log_level = level;
                }
                eo.clusters.extend(o.clusters.iter().cloned());
                eo.extra_http_filters = o.envoy_http_filters.clone();
                if let Some(f) = envoy {
                    f(&mut eo);
                }
                Envoy::start(&artifacts, dir.path(), &eo).map(Proxy::Envoy)
            }
            Host::Kong => {
                let mut ko = KongOptions::new(config, aml.port, idp.port);
                ko.workers = o.workers;
                ko.log_level = o.log_level.clone();
                ko.clusters.extend(o.clusters.iter().cloned());
                ko.conf = o.kong_conf.clone();
                if let Some(f) = kong {
                    f(&mut ko);
                }
                Kong::start(&artifacts, dir.path(), &ko).map(Proxy::Kong)
            }
        };
        let proxy = match started {
            Ok(p) => p,
            Err(e) => {
                if std::env::var_os("E2E_KEEP_LOGS").is_some() {
                    return Err(format!("{e}\n(logs kept in {})", dir.keep().display()));
                }
                return Err(e);
            }
        };
        Ok(Gateway {
            artifacts,
            idp,
            aml,
            proxy,
            dir: Some(dir),
        })
    }
}

impl Gateway {
    /// Start IdP and backend, then Envoy with the config `make_config(idp_port)` returns.
    pub fn start(make_config: impl FnOnce(u16) -> Value) -> Result<Gateway, Error> {
        Gateway::builder(Host::Envoy).start(make_config)
    }

    /// Like `start` (Envoy), with a hook to adjust Envoy options.
    pub fn start_with(
        make_config: impl FnOnce(u16) -> Value,
        adjust: impl FnOnce(&mut EnvoyOptions),
    ) -> Result<Gateway, Error> {
        Gateway::builder(Host::Envoy)
            .envoy(adjust)
            .start(make_config)
    }

    /// Start IdP and backend, then `host` with the config `make_config(idp_port)` returns.
    pub fn start_on(host: Host, make_config: impl FnOnce(u16) -> Value) -> Result<Gateway, Error> {
        Gateway::builder(host).start(make_config)
    }

    /// Like `start_on`, with a hook to adjust the host-neutral options.
    pub fn start_with_on(
        host: Host,
        make_config: impl FnOnce(u16) -> Value,
        adjust: impl FnOnce(&mut GatewayOptions),
    ) -> Result<Gateway, Error> {
        Gateway::builder(host).options(adjust).start(make_config)
    }

    pub fn builder<'a>(host: Host) -> GatewayBuilder<'a> {
        GatewayBuilder {
            host,
            options: GatewayOptions::default(),
            setup_idp: None,
            envoy: None,
            kong: None,
            aad_app_id: None,
        }
    }

    pub fn host(&self) -> Host {
        match self.proxy {
            Proxy::Envoy(_) => Host::Envoy,
            Proxy::Kong(_) => Host::Kong,
        }
    }

    pub fn is_kong(&self) -> bool {
        self.host() == Host::Kong
    }

    /// The Envoy (panics on Kong: for Envoy-only checks).
    pub fn envoy(&self) -> &Envoy {
        match &self.proxy {
            Proxy::Envoy(e) => e,
            Proxy::Kong(_) => panic!("this gateway runs on Kong, not Envoy"),
        }
    }

    /// The Kong (panics on Envoy: for Kong-only checks).
    pub fn kong(&self) -> &Kong {
        match &self.proxy {
            Proxy::Kong(k) => k,
            Proxy::Envoy(_) => panic!("this gateway runs on Envoy, not Kong"),
        }
    }

    /// The proxy's URL for `path`.
    pub fn url(&self, path: &str) -> String {
        match &self.proxy {
            Proxy::Envoy(e) => e.url(path),
            Proxy::Kong(k) => k.url(path),
        }
    }

    /// The host's log file: Envoy's `--log-path`, Kong's `<prefix>/logs/error.log`.
    pub fn log_path(&self) -> PathBuf {
        match &self.proxy {
            Proxy::Envoy(e) => e.log_path.clone(),
            Proxy::Kong(k) => k.log_path(),
        }
    }

    /// The host's log (the filter's lines, audit lines included, are in it on both hosts).
    pub fn log(&self) -> String {
        crate::read_lossy(&self.log_path())
    }

    /// Log lines containing every one of `pats`.
    pub fn log_lines(&self, pats: &[&str]) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| pats.iter().all(|p| l.contains(p)))
            .map(str::to_string)
            .collect()
    }

    /// The last `n` lines of the log, for failure messages.
    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log(), n)
    }

    /// The filter's audit lines (one JSON object per decision), in log order. Envoy logs the
    /// object at the end of its line; nginx appends `, client: ..., request: ...` after it.
    pub fn audit_lines(&self) -> Vec<Value> {
        self.log().lines().filter_map(audit_json).collect()
    }

    /// Wait until at least `n` audit lines are in the log (or `within` passed); returns them.
    pub fn wait_audit_lines(&self, n: usize, within: Duration) -> Vec<Value> {
        let deadline = Instant::now() + within;
        loop {
            let lines = self.audit_lines();
            if lines.len() >= n || Instant::now() > deadline {
                return lines;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The audit line with this request id, waiting up to 10 s for it.
    pub fn audit_line(&self, request_id: &str) -> Option<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(v) = self
                .audit_lines()
                .into_iter()
                .find(|v| v["request_id"] == request_id)
            {
                return Some(v);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The filter's metric `name` as the filter defines it (e.g.
    /// `decisions_total_route=score_caller=unregistered_decision=allow_reason=authenticated`): Envoy's
    /// `wasmcustom.<name>` in `/stats`, Kong's `pw_azure_ml_kong_<base>{labels}` in the status
    /// listener's `/metrics`. `None` until the filter defined it.
    pub fn try_metric(&self, name: &str) -> Result<Option<f64>, Error> {
        match &self.proxy {
            Proxy::Envoy(e) => e.metric(name),
            Proxy::Kong(k) => k.metric(name),
        }
    }

    /// [`Gateway::try_metric`], with errors reported on stderr as `None`.
    pub fn metric(&self, name: &str) -> Option<f64> {
        self.try_metric(name).unwrap_or_else(|e| {
            eprintln!("metric {name}: {e}");
            None
        })
    }

    /// All the filter's metrics as the host shows them (for failure messages).
    pub fn metrics_text(&self) -> String {
        let r = match &self.proxy {
            Proxy::Envoy(e) => e.stats("wasmcustom"),
            Proxy::Kong(k) => k.metrics().map(|t| {
                t.lines()
                    .filter(|l| l.contains("pw_azure_ml_kong"))
                    .collect::<Vec<_>>()
                    .join("\n")
            }),
        };
        r.unwrap_or_else(|e| format!("(metrics unavailable: {e})"))
    }

    /// The host process is still running.
    pub fn is_running(&mut self) -> bool {
        match &mut self.proxy {
            Proxy::Envoy(e) => e.is_running(),
            Proxy::Kong(k) => k.is_running(),
        }
    }

    /// Where this gateway's files are (logs, configs, Kong's prefix).
    pub fn dir(&self) -> &Path {
        self.dir
            .as_ref()
            .map(tempfile::TempDir::path)
            .unwrap_or_else(|| Path::new("."))
    }

    /// Keep the logs of a failed test for inspection.
    pub fn keep_logs(mut self) -> PathBuf {
        self.dir
            .take()
            .map(tempfile::TempDir::keep)
            .unwrap_or_default()
    }
}

impl Gateway {
    /// Kong: lines of the error.log saying a worker died (nginx restarts it, so a request may
    /// still be answered and the crash would go unnoticed), or that nginx finalized a request
    /// that was no longer active or closed it twice (use-after-free / double free: nginx then
    /// prints the request line as garbage, or glibc aborts).
    /// Envoy: none (a crash ends Envoy).
    pub fn crash_lines(&self) -> Vec<String> {
        const SIGNS: [&str; 4] = [
            "exited on signal",
            "[emerg]",
            "finalize non-active request",
            "already closed",
        ];
        match self.proxy {
            Proxy::Envoy(_) => Vec::new(),
            Proxy::Kong(_) => kong_crash_lines(&self.log(), &SIGNS),
        }
    }

    /// Lines of the host's log where a Wasm VM panicked or trapped, with the Kong worker
    /// crash signs of [`Self::crash_lines`].
    pub fn vm_fault_lines(&self) -> Vec<String> {
        const SIGNS: [&str; 4] = [
            "panicked",
            "wasm trap",
            "Uncaught RuntimeError",
            "unreachable",
        ];
        let mut out: Vec<String> = self
            .log()
            .lines()
            .filter(|l| SIGNS.iter().any(|s| l.contains(s)))
            .map(str::to_string)
            .collect();
        out.extend(self.crash_lines());
        out
    }

    /// The worker that wrote a line of the host's log: nginx prefixes its error-log lines
    /// with the worker's `pid#tid`, Envoy with `[time][thread id]`.
    pub fn worker_of(&self, line: &str) -> Option<String> {
        if self.is_kong() {
            let (_, rest) = line.split_once("] ")?;
            rest.split_once('#').map(|(pid, _)| pid.to_string())
        } else {
            line.split("][").nth(1).map(str::to_string)
        }
    }
}

impl Drop for Gateway {
    /// Stops the host, keeps the temp dir when the test panicked, and fails a test during
    /// which a Kong worker crashed.
    fn drop(&mut self) {
        // Stop the host before the temp dir (its prefix) goes away; read the log after the
        // stop, so that a worker that dies between the test's last check and the stop (e.g.
        // a Lua timer waking on a freed request) still fails the test.
        if let Proxy::Kong(k) = &mut self.proxy {
            k.stop();
        }
        let crashed = self.crash_lines();
        let panicking = std::thread::panicking();
        if panicking || !crashed.is_empty() {
            if let Some(d) = self.dir.take() {
                eprintln!(
                    "gateway ({}) logs kept in {}",
                    self.host(),
                    d.keep().display()
                );
            }
        }
        if !panicking && !crashed.is_empty() {
            panic!(
                "a {} worker crashed during the test:\n{}",
                self.host(),
                crashed.join("\n")
            );
        }
    }
}

/// The lines of a Kong error log with one of `signs`, except a worker's SIGKILL once the
/// master is shutting down: nginx's master kills the workers that have not exited a second
/// after its own SIGTERM (`kong stop`), which on a busy machine is a slow exit, not a crash.
/// Any other signal (SIGSEGV, SIGABRT, ...) counts whenever it comes.
fn kong_crash_lines(log: &str, signs: &[&str]) -> Vec<String> {
    let mut stopping = false;
    let mut out = Vec::new();
    for line in log.lines() {
        if line.contains("signal 15 (SIGTERM) received") {
            stopping = true;
        }
        let shutdown_kill = stopping && line.contains("exited on signal 9");
        // nginx tries a busy listen port again after 500 ms; a Kong that is running got it
        // (one that never did fails its start), so this `[emerg]` is not a crash.
        let bind_retried =
            line.contains("bind() to") && line.contains("(98: Address already in use)");
        if !shutdown_kill && !bind_retried && signs.iter().any(|s| line.contains(s)) {
            out.push(line.to_string());
        }
    }
    out
}

/// The audit JSON object in one log line, if it holds one.
fn audit_json(line: &str) -> Option<Value> {
    let i = line.find("{\"time\"")?;
    serde_json::Deserializer::from_str(&line[i..])
        .into_iter::<Value>()
        .next()?
        .ok()
}

#[cfg(test)]
mod tests {
    use super::kong_crash_lines;

    #[test]
    fn a_shutdown_kill_is_not_a_crash_but_a_segfault_is() {
        let signs = ["exited on signal", "[emerg]"];
        let log = "\
[alert] 1#0: worker process 7 exited on signal 9
[notice] 1#0: signal 15 (SIGTERM) received from 9, exiting
[alert] 1#0: worker process 8 exited on signal 9
[alert] 1#0: worker process 6 exited on signal 11 (core dumped)
[emerg] 1#0: bind() to 127.0.0.1:36073 failed (98: Address already in use)
[emerg] 1#0: still could not bind()
";
        assert_eq!(
            kong_crash_lines(log, &signs),
            [
                "[alert] 1#0: worker process 7 exited on signal 9",
                "[alert] 1#0: worker process 6 exited on signal 11 (core dumped)",
                "[emerg] 1#0: still could not bind()"
            ]
        );
    }
}
