//! A parsed config with every default filled in, as JSON (`check-config --print-normalized`).
//! Secrets (`hmac_secret`, `client_secret`, `set_request_headers` values) are redacted.

use azure_ml_kong::config::{
    AuthMode, CorsPreflight, FilterConfig, LogLevel, OnNoRoute, RequirementConfig,
};
use serde_json::{json, Map, Value};

const REDACTED: &str = "<redacted>";

fn auth(a: AuthMode) -> &'static str {
    match a {
        AuthMode::Required => "required",
        AuthMode::Optional => "optional",
        AuthMode::None => "none",
    }
}

fn level(l: LogLevel) -> &'static str {
    match l {
        LogLevel::Trace => "trace",
        LogLevel::Debug => "debug",
        LogLevel::Info => "info",
        LogLevel::Warn => "warn",
        LogLevel::Error => "error",
    }
}

fn opt<T: serde::Serialize>(m: &mut Map<String, Value>, k: &str, v: &Option<T>) {
    if let Some(v) = v {
        m.insert(k.into(), json!(v));
    }
}

pub fn requirement(r: &RequirementConfig) -> Value {
    let mut m = Map::new();
    if let Some(l) = &r.all {
        m.insert("all".into(), l.iter().map(requirement).collect());
    }
    if let Some(l) = &r.any {
        m.insert("any".into(), l.iter().map(requirement).collect());
    }
    if let Some(n) = &r.not {
        m.insert("not".into(), requirement(n));
    }
    opt(&mut m, "claim", &r.claim);
    opt(&mut m, "equals", &r.equals);
    opt(&mut m, "one_of", &r.one_of);
    opt(&mut m, "contains_any", &r.contains_any);
    opt(&mut m, "contains_all", &r.contains_all);
    opt(&mut m, "exists", &r.exists);
    Value::Object(m)
}

pub fn normalized(c: &FilterConfig) -> Value {
    let providers: Vec<Value> = c
        .providers
        .iter()
        .map(|p| {
            let mut m = Map::new();
            m.insert("name".into(), json!(p.name));
            m.insert("issuers".into(), json!(p.issuers));
            opt(&mut m, "tenants", &p.tenants);
            opt(&mut m, "discovery_uri", &p.discovery_uri);
            opt(&mut m, "jwks_uri", &p.jwks_uri);
            opt(&mut m, "upstream", &p.upstream);
            m.insert("audiences".into(), json!(p.audiences));
            m.insert("algorithms".into(), json!(p.algorithms));
            if p.hmac_secret.is_some() {
                m.insert("hmac_secret".into(), json!(REDACTED));
            }
            m.insert("clock_skew_seconds".into(), json!(p.clock_skew_seconds));
            m.insert("max_lifetime_seconds".into(), json!(p.max_lifetime_seconds));
            m.insert("jwks_refresh_seconds".into(), json!(p.jwks_refresh_seconds));
            m.insert(
                "jwks_min_refetch_seconds".into(),
                json!(p.jwks_min_refetch_seconds),
            );
            m.insert("jwks_timeout_ms".into(), json!(p.jwks_timeout_ms));
            Value::Object(m)
        })
        .collect();
    let token_sources: Vec<Value> = c
        .token_sources
        .iter()
        .map(|t| {
            let mut m = Map::new();
            opt(&mut m, "header", &t.header);
            opt(&mut m, "prefix", &t.prefix);
            opt(&mut m, "query", &t.query);
            opt(&mut m, "cookie", &t.cookie);
            Value::Object(m)
        })
        .collect();
    let routes: Vec<Value> = c
        .routes
        .iter()
        .map(|r| {
            let mut m = Map::new();
            m.insert("name".into(), json!(r.name));
            let mut mm = Map::new();
            opt(&mut mm, "path", &r.matcher.path);
            opt(&mut mm, "path_prefix", &r.matcher.path_prefix);
            opt(&mut mm, "methods", &r.matcher.methods);
            opt(&mut mm, "hosts", &r.matcher.hosts);
            m.insert("match".into(), Value::Object(mm));
            m.insert("auth".into(), json!(auth(r.auth)));
            opt(&mut m, "providers", &r.providers);
            opt(&mut m, "audiences", &r.audiences);
            if let Some(q) = &r.require {
                m.insert("require".into(), requirement(q));
            }
            let headers: Map<String, Value> = r
                .set_request_headers
                .iter()
                .map(|(k, _)| (k.clone(), json!(REDACTED)))
                .collect();
            m.insert("set_request_headers".into(), Value::Object(headers));
            if let Some(rl) = &r.rate_limit {
                m.insert(
                    "rate_limit".into(),
                    json!({"requests": rl.requests, "window_seconds": rl.window_seconds, "key": rl.key}),
                );
            }
            let cors = match r.cors_preflight {
                CorsPreflight::Allow => "allow",
                CorsPreflight::Deny => "deny",
            };
            m.insert("cors_preflight".into(), json!(cors));
            opt(&mut m, "upstream_credential", &r.upstream_credential);
            Value::Object(m)
        })
        .collect();
    let credentials: Vec<Value> = c
        .upstream_credentials
        .iter()
        .map(|u| {
            let mut m = Map::new();
            m.insert("name".into(), json!(u.name));
            if let Some(mi) = &u.managed_identity {
                let mut x = Map::new();
                x.insert("resource".into(), json!(mi.resource));
                opt(&mut x, "client_id", &mi.client_id);
                x.insert("endpoint".into(), json!(mi.endpoint));
                opt(&mut x, "upstream", &mi.upstream);
                m.insert("managed_identity".into(), Value::Object(x));
            }
            if let Some(cc) = &u.client_credentials {
                let mut x = Map::new();
                x.insert("token_endpoint".into(), json!(cc.token_endpoint));
                x.insert("client_id".into(), json!(cc.client_id));
                x.insert("client_secret".into(), json!(REDACTED));
                x.insert("scope".into(), json!(cc.scope));
                opt(&mut x, "upstream", &cc.upstream);
                m.insert("client_credentials".into(), Value::Object(x));
            }
            Value::Object(m)
        })
        .collect();
    let on_no_route = match c.on_no_route {
        OnNoRoute::Deny => "deny",
        OnNoRoute::AllowAuthenticated => "allow_authenticated",
    };
    json!({
        "providers": providers,
        "token_sources": token_sources,
        "routes": routes,
        "on_no_route": on_no_route,
        "claims_to_headers": c.claims_to_headers.iter()
            .map(|h| json!({"claim": h.claim, "header": h.header})).collect::<Vec<_>>(),
        "forward_token": c.forward_token,
        "realm": c.realm,
        "audit": {"log_level": level(c.audit.log_level),
                  "kong_lua_properties": c.audit.kong_lua_properties},
        "cache": {"max_entries": c.cache.max_entries,
                  "max_token_bytes": c.cache.max_token_bytes,
                  "shared_data": c.cache.shared_data},
        "upstream_credentials": credentials,
    })
}
