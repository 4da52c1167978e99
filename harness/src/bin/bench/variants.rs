//! What `make bench` measures: per host, the variants (a gateway configuration and the
//! traffic sent to it), and how one variant's gateway is started. Upstreams answer from the
//! gateway itself (Envoy `direct_response`; Kong an extra nginx `server` block included with
//! `nginx_http_include`), so the variants differ only in their filters.

use std::path::{Path, PathBuf};
use std::time::Instant;

use aml_harness::kong::{translate_upstreams, FILTER_NAME};
use aml_harness::{
    default_filter_config, http, Artifacts, Cluster, Envoy, EnvoyOptions, Host, Kong, KongOptions,
    AUDIENCE, TENANT,
};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};

/// The upstream's answer on both hosts.
pub const BODY: &str = "{\"status\":\"ok\"}";

/// Which requests a variant sends (all `GET /`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Traffic {
    /// The same valid token on every request.
    One,
    /// The pool of distinct valid tokens, round-robin.
    Distinct,
    /// Valid callers with one token, and beside them a second load of distinct forged tokens.
    Flood,
}

/// The gateway's configuration.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Setup {
    NoFilter,
    Minimal,
    /// Envoy `jwt_authn`, with or without `jwt_cache_config`.
    JwtAuthn {
        cache: bool,
    },
    /// Kong's bundled Lua `jwt` plugin, an RS256 consumer credential.
    KongJwt,
    /// Our filter, `default_filter_config`, with `cache.max_entries` when given.
    Ours {
        max_entries: Option<u64>,
        extras: Extras,
    },
}

/// What a variant of ours adds to the configuration, to price each feature.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Extras {
    None,
    /// The audit line at `debug`, below the host's level (Envoy `warning`, Kong `notice`):
    /// the line is still built (the filter cannot ask Kong for its level) but not written.
    QuietAudit,
    /// A caller registry naming the bench's warm token (audit, metric label, x-caller-name).
    Callers,
    /// The registry and a `rate_limit` keyed by caller, never reached.
    CallersRate,
    /// The registry, the `rate_limit` and a `concurrency_limit` keyed by caller, never full.
    CallersRateConcurrency,
}

pub struct Variant {
    pub host: Host,
    pub id: &'static str,
    pub title: &'static str,
    pub setup: Setup,
    pub traffic: Traffic,
}

/// Every variant of `host`, in the order a round runs them.
pub fn variants(host: Host) -> Vec<Variant> {
    let v = |id, title, setup, traffic| Variant {
        host,
        id,
        title,
        setup,
        traffic,
    };
    let mut out = vec![
        v("none", "no filter", Setup::NoFilter, Traffic::One),
        v(
            "minimal",
            "minimal Proxy-Wasm filter (floor)",
            Setup::Minimal,
            Traffic::One,
        ),
    ];
    match host {
        Host::Envoy => {
            out.push(v(
                "native",
                "jwt_authn, no cache",
                Setup::JwtAuthn { cache: false },
                Traffic::One,
            ));
            out.push(v(
                "native_cache",
                "jwt_authn + jwt_cache_config",
                Setup::JwtAuthn { cache: true },
                Traffic::One,
            ));
        }
        Host::Kong => out.push(v(
            "native",
            "Lua jwt plugin, RS256",
            Setup::KongJwt,
            Traffic::One,
        )),
    }
    let ours = |max_entries| Setup::Ours {
        max_entries,
        extras: Extras::None,
    };
    let priced = |extras| Setup::Ours {
        max_entries: None,
        extras,
    };
    out.extend([
        v("ours_warm", "ours, warm token", ours(None), Traffic::One),
        v(
            "ours_quiet",
            "ours, warm, audit line below the log level",
            priced(Extras::QuietAudit),
            Traffic::One,
        ),
        v(
            "ours_distinct",
            "ours, distinct tokens (cache hits)",
            ours(None),
            Traffic::Distinct,
        ),
        v(
            "ours_flood",
            "ours, valid callers in a forged flood",
            ours(None),
            Traffic::Flood,
        ),
        v(
            "ours_cache1",
            "ours, cache.max_entries 1 (verify each)",
            ours(Some(1)),
            Traffic::Distinct,
        ),
        v(
            "ours_callers",
            "ours, warm + caller registry",
            priced(Extras::Callers),
            Traffic::One,
        ),
        v(
            "ours_rate",
            "ours, warm + registry + rate_limit",
            priced(Extras::CallersRate),
            Traffic::One,
        ),
        v(
            "ours_limits",
            "ours, warm + registry + rate_limit + concurrency_limit",
            priced(Extras::CallersRateConcurrency),
            Traffic::One,
        ),
    ]);
    out
}

/// What starting any variant needs.
pub struct Ctx {
    /// `wasm` is our filter (`BENCH_FILTER_WASM` or `make wasm`'s).
    pub artifacts: Artifacts,
    pub minimal_wasm: PathBuf,
    pub idp_port: u16,
    pub envoy_log_level: String,
    pub kong_log_level: String,
    pub gateway_cpu: Option<usize>,
    /// Smoke: one Wasmtime code cache for every Kong start (Kong keeps it in its prefix, so a
    /// fresh prefix compiles the module again, which is what the full bench measures).
    pub wasmtime_cache: Option<PathBuf>,
    /// Kong `jwt` consumer credential: (`iss` of the tokens, PEM public key).
    pub kong_jwt: Option<(String, String)>,
}

pub enum Running {
    Envoy(Envoy),
    Kong(Kong),
}

pub struct Started {
    pub gw: Running,
    /// From starting the process until it answers requests.
    pub start_ms: f64,
    /// Kong: ngx_wasm_module's "successfully loaded ... module in N ms", one per worker.
    pub module_load_ms: Vec<f64>,
}

impl Started {
    pub fn port(&self) -> u16 {
        match &self.gw {
            Running::Envoy(e) => e.port,
            Running::Kong(k) => k.port,
        }
    }

    /// Processes of the gateway outside the bench's own process tree: Kong's nginx master
    /// daemonizes (its parent becomes init), so its CPU would otherwise count as "other".
    pub fn detached_pids(&self) -> Vec<u32> {
        match &self.gw {
            Running::Envoy(_) => Vec::new(),
            Running::Kong(k) => u32::try_from(k.pid)
                .into_iter()
                .filter(|p| *p > 1)
                .collect(),
        }
    }

    pub fn log_tail(&self, n: usize) -> String {
        let log = match &self.gw {
            Running::Envoy(e) => e.log(),
            Running::Kong(k) => k.log(),
        };
        aml_harness::kong::tail(&log, n)
    }
}

/// Start `v`'s gateway in `dir` (pinned to `ctx.gateway_cpu`: children inherit the affinity
/// of the thread that starts them).
pub fn start(ctx: &Ctx, v: &Variant, dir: &Path) -> Result<Started, String> {
    let mut a = ctx.artifacts.clone();
    // Kong loads every module in its filters directory, chain or not: the small one keeps
    // starts without our filter short.
    if !matches!(v.setup, Setup::Ours { .. }) {
        a.wasm = ctx.minimal_wasm.clone();
    }
    let saved = crate::machine::pin_this_thread(ctx.gateway_cpu);
    let t0 = Instant::now();
    let started = match v.host {
        Host::Envoy => start_envoy(ctx, v, &a, dir).map(Running::Envoy),
        Host::Kong => start_kong(ctx, v, &a, dir).map(Running::Kong),
    };
    let start_ms = t0.elapsed().as_secs_f64() * 1000.0;
    crate::machine::restore_this_thread(saved);
    let gw = started.map_err(|e| format!("{} {}: {e}", v.host, v.id))?;
    let module_load_ms = match (&gw, v.setup) {
        (Running::Kong(_), Setup::Minimal | Setup::Ours { .. }) => {
            module_load_lines(&aml_harness::read_lossy(&dir.join("wasm.log")))
        }
        _ => Vec::new(),
    };
    Ok(Started {
        gw,
        start_ms,
        module_load_ms,
    })
}

fn ours_config(ctx: &Ctx, setup: Setup) -> Value {
    let mut cfg = default_filter_config(ctx.idp_port);
    let Setup::Ours {
        max_entries,
        extras,
    } = setup
    else {
        return cfg;
    };
    if let Some(n) = max_entries {
        cfg["cache"] = json!({ "max_entries": n });
    }
    if extras == Extras::None {
        return cfg;
    }
    if extras == Extras::QuietAudit {
        cfg["audit"] = json!({"log_level": "debug"});
        return cfg;
    }
    // The warm token's client (`bench.rs`): a registered caller.
    cfg["callers"] = json!([{"name": "bench", "app_ids": ["bench-client"], "owner": "bench"}]);
    for r in cfg["routes"].as_array_mut().into_iter().flatten() {
        if r["auth"] == "none" {
            continue;
        }
        if extras != Extras::Callers {
            // Counted, never reached.
            r["rate_limit"] =
                json!({"requests": 4_000_000_000u64, "window_seconds": 60, "key": "caller"});
        }
        if extras == Extras::CallersRateConcurrency {
            r["concurrency_limit"] = json!({"max_in_flight": 1000, "key": "caller"});
        }
    }
    cfg
}

fn start_envoy(ctx: &Ctx, v: &Variant, a: &Artifacts, dir: &Path) -> Result<Envoy, String> {
    // The backend cluster is never used: the route answers directly.
    let mut o = EnvoyOptions::new(Value::Null, 9, ctx.idp_port);
    o.filter_config = match v.setup {
        // The minimal filter ignores its configuration.
        Setup::Minimal => Some(json!({})),
        Setup::Ours { .. } => Some(ours_config(ctx, v.setup)),
        _ => None,
    };
    if let Setup::JwtAuthn { cache } = v.setup {
        o.extra_http_filters = vec![native_jwt_authn(ctx.idp_port, cache)];
    }
    o.concurrency = 1;
    o.log_level = ctx.envoy_log_level.clone();
    o.direct_response = Some(BODY.into());
    Envoy::start(a, dir, &o)
}

fn native_jwt_authn(idp_port: u16, cache: bool) -> Value {
    let mut provider = json!({
        "issuer": format!("https://login.microsoftonline.com/{TENANT}/v2.0"),
        "audiences": [AUDIENCE],
        "remote_jwks": {
            "http_uri": {
                "uri": format!("http://127.0.0.1:{idp_port}/{TENANT}/discovery/v2.0/keys"),
                "cluster": "mock_idp",
                "timeout": "2s"
            },
            "cache_duration": "3600s",
            // Keys fetched before the listener opens (no first-request wait).
            "async_fetch": {}
        },
        "forward": false
    });
    if cache {
        provider["jwt_cache_config"] = json!({"jwt_cache_size": 100});
    }
    json!({
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": {"entra": provider},
            "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "entra"}}]
        }
    })
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

fn start_kong(ctx: &Ctx, v: &Variant, a: &Artifacts, dir: &Path) -> Result<Kong, String> {
    let static_port = free_port()?;
    // Plain nginx in the same worker: no Kong phase handlers run in this server.
    let static_conf = dir.join("static-upstream.conf");
    std::fs::write(
        &static_conf,
        format!(
            "server {{\n    listen 127.0.0.1:{static_port};\n    access_log off;\n    \
             location / {{\n        default_type application/json;\n        \
             return 200 '{BODY}';\n    }}\n}}\n"
        ),
    )
    .map_err(|e| e.to_string())?;
    let clusters = vec![Cluster {
        name: "mock_idp".into(),
        port: ctx.idp_port,
    }];
    let mut route = json!({"name": "score", "paths": ["/"], "strip_path": false});
    let mut consumers = json!([]);
    let filter = match v.setup {
        // Under our filter's name, so Kong validates the (ignored) configuration against our
        // meta.json: the minimal filter reads none.
        Setup::Minimal | Setup::Ours { .. } => {
            let mut cfg = ours_config(ctx, v.setup);
            translate_upstreams(&mut cfg, &clusters);
            Some(cfg)
        }
        _ => None,
    };
    if let Some(cfg) = filter {
        route["filter_chains"] = json!([{
            "name": "bench-chain",
            "filters": [{"name": FILTER_NAME, "config": cfg}]
        }]);
    }
    if let Setup::KongJwt = v.setup {
        let (iss, pem) = ctx
            .kong_jwt
            .clone()
            .ok_or("no RS256 public key for Kong's jwt plugin")?;
        route["plugins"] = json!([{"name": "jwt", "config": {"claims_to_verify": ["exp"]}}]);
        consumers = json!([{
            "username": "bench-caller",
            "jwt_secrets": [{"key": iss, "algorithm": "RS256", "rsa_public_key": pem}]
        }]);
    }
    let declarative = json!({
        "_format_version": "3.0",
        "services": [{
            "name": "bench",
            "url": format!("http://127.0.0.1:{static_port}"),
            "retries": 0,
            "routes": [route]
        }],
        "consumers": consumers
    });
    let mut o = KongOptions::new(Value::Null, static_port, ctx.idp_port);
    o.filter_config = None;
    o.declarative = Some(declarative);
    o.workers = 1;
    o.log_level = ctx.kong_log_level.clone();
    o.compile_cache = ctx.wasmtime_cache.clone();
    let wasm_log = dir.join("wasm.log");
    o.conf = vec![
        (
            "nginx_http_include".into(),
            static_conf.display().to_string(),
        ),
        // A second main-level error log at info: ngx_wasm_module's module load line, without
        // writing request-time info lines (those go to the proxy server's log level).
        (
            "nginx_main_error_log".into(),
            format!("{} info", wasm_log.display()),
        ),
    ];
    Kong::start(a, dir, &o)
}

/// "successfully loaded "NAME" module in 78ms" lines → milliseconds.
fn module_load_lines(log: &str) -> Vec<f64> {
    log.lines()
        .filter(|l| l.contains("successfully loaded"))
        .filter_map(|l| {
            let ms = l.split(" module in ").nth(1)?.split("ms").next()?;
            ms.trim().parse::<f64>().ok()
        })
        .collect()
}

/// Kong's `jwt` plugin needs the signing key as PEM and the tokens' `iss` as the credential
/// key: both from the token itself and the IdP's JWKS (the key its `kid` names).
pub fn kong_jwt_credential(idp_base: &str, token: &str) -> Result<(String, String), String> {
    let part = |i: usize| -> Result<Value, String> {
        let seg = token.split('.').nth(i).ok_or("token is not a JWS")?;
        let bytes = URL_SAFE_NO_PAD.decode(seg).map_err(|e| e.to_string())?;
        serde_json::from_slice(&bytes).map_err(|e| e.to_string())
    };
    let (header, claims) = (part(0)?, part(1)?);
    let kid = header["kid"].as_str().ok_or("token header has no kid")?;
    let iss = claims["iss"]
        .as_str()
        .ok_or("token has no iss")?
        .to_string();
    let jwks = http(
        "GET",
        &format!("{idp_base}/{TENANT}/discovery/v2.0/keys"),
        &[],
        None,
    )?
    .json();
    let jwk = jwks["keys"]
        .as_array()
        .and_then(|ks| ks.iter().find(|k| k["kid"] == kid))
        .ok_or_else(|| format!("kid {kid} not in the JWKS"))?;
    let b64 = |f: &str| {
        jwk[f]
            .as_str()
            .ok_or(format!("JWK has no {f}"))
            .and_then(|s| URL_SAFE_NO_PAD.decode(s).map_err(|e| e.to_string()))
    };
    Ok((iss, rsa_public_pem(&b64("n")?, &b64("e")?)))
}

/// DER length octets.
fn der_len(n: usize, out: &mut Vec<u8>) {
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes: Vec<u8> = n
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
}

fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    der_len(content.len(), &mut out);
    out.extend_from_slice(content);
    out
}

fn der_uint(be: &[u8]) -> Vec<u8> {
    let trimmed: Vec<u8> = be.iter().copied().skip_while(|b| *b == 0).collect();
    let mut v = Vec::with_capacity(trimmed.len() + 1);
    if trimmed.first().is_none_or(|b| b & 0x80 != 0) {
        v.push(0);
    }
    v.extend(trimmed);
    der(0x02, &v)
}

/// SubjectPublicKeyInfo (rsaEncryption) as "BEGIN PUBLIC KEY" PEM.
fn rsa_public_pem(n: &[u8], e: &[u8]) -> String {
    let rsa_key = der(0x30, &[der_uint(n), der_uint(e)].concat());
    let mut bits = vec![0u8];
    bits.extend(rsa_key);
    // AlgorithmIdentifier { rsaEncryption (1.2.840.113549.1.1.1), NULL }
    let alg = [
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    let spki = der(0x30, &[&alg[..], &der(0x03, &bits)].concat());
    let b64 = base64::engine::general_purpose::STANDARD.encode(spki);
    let mut pem = String::from("-----BEGIN PUBLIC KEY-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(chunk));
        pem.push('\n');
    }
    pem.push_str("-----END PUBLIC KEY-----\n");
    pem
}

/// Forged tokens: each valid token's header and claims with another token's signature (right
/// length, right `kid`, wrong signature), so only signature work can reject them.
pub fn forge(pool: &[String], n: usize) -> Vec<String> {
    let len = pool.len();
    (0..n.min(len))
        .filter_map(|i| {
            let (signed, _) = pool[i].rsplit_once('.')?;
            let (_, sig) = pool[(i + 1) % len].rsplit_once('.')?;
            Some(format!("{signed}.{sig}"))
        })
        .collect()
}
