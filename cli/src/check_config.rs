//! `check-config`: load every filter config of a file exactly as the filter does
//! (`Filter::from_json`), report each of its independent errors (`diagnose::all_errors`,
//! the filter's own first) with its field path and a hint, and with `--online` check what
//! only the real IdP can tell.

use std::path::Path;
use std::time::Duration;

use azure_ml_kong::config::ConfigError;
use azure_ml_kong::diagnose::all_errors;
use azure_ml_kong::engine::Filter;
use azure_ml_kong::jwks::KeySet;
use azure_ml_kong::keycache::response::parse_discovery;
use azure_ml_kong::keycache::{HttpUri, JwksSource, SourceKind};
use serde_json::{json, Value};

use crate::load::{find_configs, Found};
use crate::normalized::normalized;
use crate::style;
use crate::Outcome;

/// What to try, by the field at fault or the message.
pub fn hint(e: &ConfigError) -> &'static str {
    let (p, m) = (e.path.as_str(), e.message.as_str());
    if m.contains("unknown field") {
        "a field name is misspelt or not supported here: see the configuration reference in the README"
    } else if m.contains("missing field") {
        "a required field is missing: see the configuration reference in the README"
    } else if p.contains("require") {
        "each require node is exactly one of {all: [..]}, {any: [..]}, {not: ..} or {claim: PATH, OP: VALUE} \
         with OP one of equals, one_of, contains_any, contains_all, exists"
    } else if p.ends_with("issuers") || p.contains("issuers[") {
        "Entra issuers: https://login.microsoftonline.com/{tenantid}/v2.0 (v2 tokens) and \
         https://sts.windows.net/{tenantid}/ (v1 tokens)"
    } else if p.contains("tenants") {
        "tenants are tenant ids (GUIDs) of your Entra directory"
    } else if p.contains("discovery_uri") || p.contains("jwks_uri") {
        "give discovery_uri or jwks_uri, an http(s) URL; Entra: \
         https://login.microsoftonline.com/<tenant>/v2.0/.well-known/openid-configuration"
    } else if p.ends_with("upstream_credential") {
        "name an entry of upstream_credentials (managed_identity or client_credentials)"
    } else if p.contains("upstream") {
        "Kong: host[:port] of the IdP; Envoy: the name of a cluster in the bootstrap"
    } else if p.contains("jwks_") || p.contains("clock_skew") || p.contains("max_lifetime") {
        "durations are whole seconds (jwks_timeout_ms: milliseconds); the JWKS refresh and \
         timeout must be positive; max_lifetime_seconds 0 switches that check off"
    } else if p.contains("callers") {
        "callers[].name is a-z, 0-9 and `-`, app_ids the client app ids (azp/appid) of that caller; \
         routes[].callers names entries of callers"
    } else if p == "realm" {
        "the WWW-Authenticate realm: 1 to 256 characters without quotes or backslashes"
    } else if p.starts_with("cache") {
        "cache.max_entries is at least 1, cache.max_token_bytes from 1024 to 65536"
    } else if p.contains("algorithms") || p.contains("hmac_secret") {
        "Entra signs with RS256; HS256/384/512 need the provider's hmac_secret"
    } else if p.contains("audiences") {
        "the App ID URI of your gateway's app registration (e.g. api://azureml-gateway), as in the token's aud"
    } else if p.contains("header") {
        "header names are lower-case HTTP tokens; identity headers the filter owns cannot be set"
    } else if p.contains("match") {
        "match.path is a template ({name} binds a segment), match.path_prefix a prefix at a segment boundary"
    } else {
        "see the configuration reference in the README"
    }
}

/// An error's field path, message and hint.
type Finding = (String, String, &'static str);

struct Report {
    at: String,
    /// Every independent error, the one the filter reports first.
    errors: Vec<Finding>,
    filter: Option<Filter>,
    online: Vec<(bool, String)>,
}

pub fn run(file: &Path, print_normalized: bool, online: bool, json_out: bool) -> Outcome {
    let found = find_configs(file)?;
    let mut reports: Vec<Report> = found.into_iter().map(check_one).collect();
    if online {
        for r in reports.iter_mut() {
            if let Some(f) = &r.filter {
                r.online = check_online(f);
            }
        }
    }
    let failed = reports
        .iter()
        .any(|r| !r.errors.is_empty() || r.online.iter().any(|(ok, _)| !ok));
    if json_out {
        let list: Vec<Value> = reports
            .iter()
            .map(|r| {
                let errors: Vec<Value> = r
                    .errors
                    .iter()
                    .map(|(p, m, h)| json!({"path": p, "message": m, "hint": h}))
                    .collect();
                json!({
                    "at": r.at,
                    "valid": r.errors.is_empty(),
                    // The filter's own error: the one it logs when it refuses this config.
                    "error": errors.first(),
                    "errors": errors,
                    "normalized": r.filter.as_ref().filter(|_| print_normalized).map(|f| normalized(&f.config)),
                    "online": r.online.iter().map(|(ok, m)| json!({"ok": ok, "check": m})).collect::<Vec<_>>(),
                })
            })
            .collect();
        let doc = json!({"file": file.display().to_string(), "configs": list, "ok": !failed});
        println!(
            "{}",
            serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?
        );
        return Ok(u8::from(failed));
    }
    for r in &reports {
        println!(
            "{} {}",
            style::bold(&file.display().to_string()),
            style::dim(&r.at)
        );
        if r.errors.len() > 1 {
            println!(
                "  {} {} errors (the filter refuses the config at the first)",
                style::bad("✗"),
                r.errors.len()
            );
        }
        for (path, msg, hint) in &r.errors {
            let shown = if path.is_empty() { "(top level)" } else { path };
            println!("  {} {}: {msg}", style::bad("✗ error"), style::bold(shown));
            println!("    {} {hint}", style::dim("hint:"));
        }
        if let (true, Some(f)) = (r.errors.is_empty(), &r.filter) {
            let c = &f.config;
            println!(
                "  {} {} provider(s), {} route(s), {} token source(s)",
                style::ok("✓ valid:"),
                c.providers.len(),
                c.routes.len(),
                c.token_sources.len()
            );
            if print_normalized {
                let text =
                    serde_json::to_string_pretty(&normalized(c)).map_err(|e| e.to_string())?;
                println!("{text}");
            }
        }
        for (ok, m) in &r.online {
            let mark = if *ok {
                style::ok("✓ online:")
            } else {
                style::bad("✗ online:")
            };
            println!("  {mark} {m}");
        }
    }
    Ok(u8::from(failed))
}

fn check_one(f: Found) -> Report {
    let mut r = Report {
        at: f.at,
        errors: Vec::new(),
        filter: None,
        online: Vec::new(),
    };
    let cfg = match f.config {
        Ok(c) => c,
        Err(e) => {
            r.errors
                .push((String::new(), e, "the filter config must be a JSON object"));
            return r;
        }
    };
    let bytes = serde_json::to_vec(&cfg).unwrap_or_default();
    match Filter::from_json(&bytes) {
        Ok(filter) => r.filter = Some(filter),
        Err(_) => {
            r.errors = all_errors(&bytes)
                .into_iter()
                .map(|e| {
                    let h = hint(&e);
                    (e.path, e.message, h)
                })
                .collect()
        }
    }
    r
}

/// A blocking GET with the provider's timeout and the filter's body limit.
pub fn fetch(url: &str, timeout_ms: u64, limit: usize) -> Result<Vec<u8>, String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_millis(timeout_ms.max(1))))
        .build()
        .into();
    let mut resp = agent
        .get(url)
        .call()
        .map_err(|e| format!("GET {url}: {e}"))?;
    // One byte over the limit tells "too large" from "exactly the limit".
    let body = resp
        .body_mut()
        .with_config()
        .limit(limit as u64 + 1)
        .read_to_vec()
        .map_err(|e| format!("GET {url}: {e}"))?;
    if body.len() > limit {
        return Err(format!(
            "GET {url}: body larger than the filter's limit of {limit} bytes"
        ));
    }
    Ok(body)
}

fn check_online(f: &Filter) -> Vec<(bool, String)> {
    let mut out = Vec::new();
    for (i, src) in f.jwks_sources.iter().enumerate() {
        let Some(src) = src else { continue };
        let Some(provider) = f.providers.get(i) else {
            continue;
        };
        let name = &provider.name;
        let jwks_uri = match src.kind {
            SourceKind::Discovery => match discover(src) {
                Ok((uri, checks)) => {
                    for c in checks {
                        out.push((c.0, format!("provider {name}: {}", c.1)));
                    }
                    uri
                }
                Err(e) => {
                    out.push((false, format!("provider {name}: {e}")));
                    continue;
                }
            },
            _ => src.uri.to_string(),
        };
        let body = match fetch(&jwks_uri, src.timeout_ms, src.max_body_bytes) {
            Ok(b) => b,
            Err(e) => {
                out.push((false, format!("provider {name}: JWKS {e}")));
                continue;
            }
        };
        out.push((
            true,
            format!(
                "provider {name}: JWKS {jwks_uri}: {} bytes (limit {})",
                body.len(),
                src.max_body_bytes
            ),
        ));
        let keys = match KeySet::parse(&body) {
            Ok(k) => k,
            Err(e) => {
                out.push((false, format!("provider {name}: JWKS unusable: {e}")));
                continue;
            }
        };
        for s in keys.skipped() {
            out.push((
                true,
                format!("provider {name}: key skipped by the filter: {s}"),
            ));
        }
        for alg in provider.algorithms.iter().filter(|a| !a.is_hmac()) {
            let n = keys.iter().filter(|k| k.fits(*alg)).count();
            let msg = format!("provider {name}: {n} key(s) usable for {alg}");
            out.push((n > 0, msg));
        }
    }
    out
}

/// Fetch the discovery document: its `jwks_uri`, and whether its `issuer` fits.
fn discover(src: &JwksSource) -> Result<(String, Vec<(bool, String)>), String> {
    let uri = src.uri.to_string();
    let body = fetch(&uri, src.timeout_ms, src.max_body_bytes)?;
    let via = HttpUri::parse(&uri).map_err(|e| format!("discovery_uri: {e}"))?;
    let d = parse_discovery(&body, &via).map_err(|(_, e)| e)?;
    let mut checks = vec![(true, format!("discovery {uri}: jwks_uri {}", d.jwks_uri))];
    match d.issuer {
        Some(iss) if src.issuer_fits(&iss) => {
            checks.push((true, format!("discovery issuer {iss} fits the configured issuers")))
        }
        Some(iss) => checks.push((
            false,
            format!(
                "discovery issuer {iss} fits none of the configured issuers {:?} \
                 (v1 tokens: https://sts.windows.net/{{tenantid}}/, v2: https://login.microsoftonline.com/{{tenantid}}/v2.0)",
                src.issuers
            ),
        )),
        None => checks.push((false, "discovery document has no issuer".to_string())),
    }
    Ok((d.jwks_uri.to_string(), checks))
}
