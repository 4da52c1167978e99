//! `explain`: one request, decided by the filter's own `Filter::decide`, told step by step
//! (`azure_ml_kong::explain`).

use std::path::PathBuf;
use std::rc::Rc;

use azure_ml_kong::annotate::HeaderOp;
use azure_ml_kong::engine::{Decision, Filter};
use azure_ml_kong::explain::{
    explain, Explanation, Keys, Mark, Verdict, GATEWAY_TOKEN_PLACEHOLDER,
};
use azure_ml_kong::jose;
use azure_ml_kong::jwks::KeySet;
use azure_ml_kong::request::RequestView;
use serde_json::{json, Value};

use crate::sign::{read_json_arg, resign, sign_jws, throwaway, Signer};
use crate::style;
use crate::Outcome;

const SKIPPED: &str = "SIGNATURE NOT CHECKED: no key set was given (--jwks-file). The token was re-signed \
with a throwaway key so the filter's own code runs every other check; a forged token would get the same answer.";

#[derive(clap::Args)]
pub struct Args {
    /// The filter config: JSON, kong.yml or Envoy bootstrap.
    #[arg(long)]
    config: PathBuf,
    /// Which config of a file holding several (its place, or a part of it such as a route name).
    #[arg(long)]
    at: Option<String>,
    /// The caller's token (placed where the first token source looks).
    #[arg(long, conflicts_with_all = ["token_file", "claims"])]
    token: Option<String>,
    #[arg(long, conflicts_with = "claims")]
    token_file: Option<PathBuf>,
    /// Claims (JSON or @FILE) instead of a token: the signature is not checked.
    #[arg(long, conflicts_with = "jwks_file")]
    claims: Option<String>,
    #[arg(long, default_value = "GET")]
    method: String,
    /// The raw request target, query string included.
    #[arg(long)]
    path: String,
    #[arg(long, default_value = "localhost")]
    host: String,
    /// A request header `name: value` (repeatable).
    #[arg(long = "header", value_name = "K:V")]
    headers: Vec<String>,
    /// The IdP's key set (JSON file): the signature is then really checked.
    #[arg(long)]
    jwks_file: Option<PathBuf>,
    /// Unix time to decide at (default: now).
    #[arg(long)]
    now: Option<u64>,
    #[arg(long)]
    json: bool,
}

/// Put the token where the config's first token source looks for it.
fn place_token(f: &Filter, token: &str, path: &mut String, headers: &mut Vec<(String, String)>) {
    let Some(src) = f.config.token_sources.first() else {
        return;
    };
    if let Some(h) = &src.header {
        let v = format!("{}{token}", src.prefix.as_deref().unwrap_or(""));
        headers.push((h.to_ascii_lowercase(), v));
    } else if let Some(q) = &src.query {
        let sep = if path.contains('?') { '&' } else { '?' };
        path.push_str(&format!("{sep}{q}={token}"));
    } else if let Some(c) = &src.cookie {
        headers.push(("cookie".into(), format!("{c}={token}")));
    }
}

fn parse_header(h: &str) -> Result<(String, String), String> {
    let (k, v) = h
        .split_once(':')
        .ok_or_else(|| format!("--header {h:?}: expected name: value"))?;
    Ok((k.trim().to_ascii_lowercase(), v.trim().to_string()))
}

/// The token to decide on, and the keys to check it with (a throwaway key set when the
/// operator gave none: see [`SKIPPED`]).
fn token_and_keys(
    a: &Args,
    f: &Filter,
    probe: &RequestView<'_>,
) -> Result<(Option<String>, Keys), String> {
    if let Some(c) = &a.claims {
        let claims = read_json_arg(c)?;
        let obj = claims.as_object().ok_or("--claims must be a JSON object")?;
        let route = f.routes.find_request(probe);
        let allowed = route.as_ref().and_then(|m| m.route.providers.as_deref());
        let provider = f
            .providers
            .select(obj, allowed)
            .ok()
            .and_then(|i| f.providers.get(i));
        let alg = provider
            .and_then(|p| p.algorithms.first().copied())
            .map_or("RS256", |a| a.as_str());
        let header = json!({"alg": alg, "typ": "JWT", "kid": "explain-claims"});
        if let Some(secret) = provider
            .and_then(|p| p.hmac_secret())
            .filter(|_| alg.starts_with("HS"))
        {
            let t = sign_jws(&header, &claims, &Signer::Secret(secret.to_vec()))?;
            return Ok((Some(t), Keys::Substitute(None)));
        }
        let (kp, set) = throwaway(alg, "explain-claims")?;
        let t = sign_jws(&header, &claims, &Signer::Pair(kp))?;
        return Ok((Some(t), Keys::Substitute(Some(Rc::new(set)))));
    }
    let token = match (&a.token, &a.token_file) {
        (Some(t), _) => Some(crate::token_cmd::read_token(t)?),
        (None, Some(p)) => {
            let t = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
            Some(crate::token_cmd::read_token(&t)?)
        }
        (None, None) => None,
    };
    if let Some(p) = &a.jwks_file {
        let body = std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?;
        let set = KeySet::parse(&body).map_err(|e| format!("{}: {e}", p.display()))?;
        return Ok((token, Keys::Real(Rc::new(set))));
    }
    let Some(t) = token else {
        return Ok((None, Keys::None));
    };
    // Refused on its size before anything is decoded: decided as it is.
    if t.len() > f.config.cache.max_token_bytes {
        return Ok((Some(t), Keys::None));
    }
    // A token that does not decode, or an HS* one (the config's secret verifies it), is
    // decided as it is.
    match jose::decode(&t, usize::MAX) {
        Ok(jwt) if !jwt.header.alg.is_hmac() => {
            let alg = jwt.header.alg.as_str();
            let kid = jwt.header.kid.as_deref().unwrap_or("explain-substitute");
            let (kp, set) = throwaway(alg, kid)?;
            Ok((
                Some(resign(&t, alg, &kp)?),
                Keys::Substitute(Some(Rc::new(set))),
            ))
        }
        _ => Ok((Some(t), Keys::None)),
    }
}

pub fn run(a: &Args) -> Outcome {
    let (at, config) = crate::load::one_config(&a.config, a.at.as_deref())?;
    let bytes = serde_json::to_vec(&config).map_err(|e| e.to_string())?;
    let f = Filter::from_json(&bytes).map_err(|e| {
        format!("{at}: the config does not load ({e}); run `azure-ml-kong check-config`")
    })?;
    let mut headers = a
        .headers
        .iter()
        .map(|h| parse_header(h))
        .collect::<Result<Vec<_>, _>>()?;
    let mut path = a.path.clone();
    let probe_headers = headers.clone();
    let probe = RequestView {
        method: &a.method,
        path: &a.path,
        authority: &a.host,
        headers: &probe_headers,
    };
    let (token, keys) = token_and_keys(a, &f, &probe)?;
    if let Some(t) = &token {
        place_token(&f, t, &mut path, &mut headers);
    }
    let req = RequestView {
        method: &a.method,
        path: &path,
        authority: &a.host,
        headers: &headers,
    };
    let now = a.now.unwrap_or_else(crate::now_secs);
    let e = explain(&f, &req, now.saturating_mul(1000), keys);
    let code = match (e.agrees(), e.verdict()) {
        (false, _) => 3,
        (true, Some(Verdict::Allow)) => 0,
        _ => 1,
    };
    if a.json {
        let doc = to_json(&f, &req, &at, &e);
        println!(
            "{}",
            serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?
        );
    } else {
        print_human(&f, &req, &at, &e);
    }
    Ok(code)
}

/// Upstream header changes, with secrets (`set_request_headers` values, the gateway's
/// token) shown as placeholders.
fn header_plan(f: &Filter, req: &RequestView<'_>, e: &Explanation) -> Vec<Value> {
    let Decision::Allow { ops, .. } = &e.decision else {
        return Vec::new();
    };
    let route = f.routes.find_request(req);
    let secret = |name: &str| {
        route
            .as_ref()
            .is_some_and(|m| m.route.set_request_headers.iter().any(|(n, _)| n == name))
    };
    let mut out: Vec<Value> = ops
        .iter()
        .map(|op| match op {
            HeaderOp::Set { name, value } => {
                let shown = if value.contains(GATEWAY_TOKEN_PLACEHOLDER) {
                    value.clone()
                } else if secret(name) {
                    format!("<set_request_headers value, {} bytes>", value.len())
                } else {
                    value.clone()
                };
                json!({"op": "set", "name": name, "value": shown})
            }
            HeaderOp::Clear { name } => json!({"op": "clear", "name": name}),
            HeaderOp::SetPath { path, strip } => {
                json!({"op": "set_path", "path": path, "strip": strip})
            }
            HeaderOp::SetResponse { name, value } => {
                json!({"op": "set_response", "name": name, "value": value})
            }
        })
        .collect();
    let owned: Vec<&str> = f
        .annotator
        .owned_headers(route.as_ref().map(|m| m.route))
        .collect();
    for (name, _) in req
        .headers
        .iter()
        .filter(|(n, _)| owned.contains(&n.as_str()))
    {
        if name != "authorization" && name != "cookie" {
            out.push(json!({"op": "client_value_dropped", "name": name}));
        }
    }
    out
}

fn decision_json(e: &Explanation) -> Value {
    match &e.decision {
        Decision::Allow { audit, .. } => json!({"outcome": "allow", "status": null, "reason": null,
            "request_id": audit.request_id, "route": audit.route}),
        Decision::Deny { response, audit } => json!({
            "outcome": "deny", "status": response.status,
            "reason": audit.reason.map(|r| r.code()),
            "description": audit.reason.map(|r| r.description()),
            "request_id": audit.request_id, "route": audit.route,
            "response_headers": response.headers.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>(),
        }),
        other => json!({"outcome": format!("{other:?}")}),
    }
}

fn to_json(f: &Filter, req: &RequestView<'_>, at: &str, e: &Explanation) -> Value {
    let story = match e.story {
        Verdict::Allow => json!({"outcome": "allow"}),
        Verdict::Deny(r) => json!({"outcome": "deny", "reason": r.code()}),
    };
    json!({
        "request": {"method": req.method, "path": req.path_only(), "host": req.authority},
        "config": at,
        "signature_checked": !e.signature_skipped,
        "warnings": if e.signature_skipped { vec![SKIPPED] } else { vec![] },
        "steps": e.steps,
        "decision": decision_json(e),
        "decided_by": "Filter::decide",
        "story": story,
        "story_agrees": e.agrees(),
        "headers_upstream": header_plan(f, req, e),
        "rate_limits_not_counted": e.rate_limits.iter().map(|(b, n, w)| json!({"bucket": b, "requests": n, "window_seconds": w})).collect::<Vec<_>>(),
    })
}

fn mark(m: Mark) -> (String, &'static str) {
    match m {
        Mark::Pass => (style::ok("✓"), "✓"),
        Mark::Fail => (style::bad("✗"), "✗"),
        Mark::Skip => (style::warn("SKIPPED"), "SKIPPED"),
        Mark::Info => (style::dim("·"), "·"),
    }
}

fn print_human(f: &Filter, req: &RequestView<'_>, at: &str, e: &Explanation) {
    println!(
        "{} {} {}  host {}",
        style::bold("explain"),
        req.method,
        req.path_only(),
        req.authority
    );
    println!("{}", style::dim(&format!("config: {at}")));
    if e.signature_skipped {
        println!("{}", style::warn(&format!("!!! {SKIPPED} !!!")));
    }
    let width = e
        .steps
        .iter()
        .map(|s| s.what.chars().count() + 2 * s.depth)
        .max()
        .unwrap_or(0)
        .min(60);
    for s in &e.steps {
        let (m, plain) = mark(s.mark);
        let indent = "  ".repeat(s.depth);
        let what = format!("{indent}{}", s.what);
        let marked = style::pad(plain, 7, m);
        let detail = if s.mark == Mark::Info {
            style::dim(&s.detail)
        } else {
            s.detail.clone()
        };
        println!(
            "  {:<10} {marked} {} {detail}",
            s.stage,
            style::pad(&what, width, what.clone())
        );
    }
    println!();
    match &e.decision {
        Decision::Allow { audit, .. } => {
            println!(
                "{} {}",
                style::ok("decision: ALLOW"),
                style::dim(&format!("(request id {})", audit.request_id))
            );
        }
        Decision::Deny { response, audit } => {
            let r = audit.reason;
            println!(
                "{} {} {} — {}",
                style::bad("decision: DENY"),
                response.status,
                style::bold(r.map_or("?", |r| r.code())),
                r.map_or("", |r| r.description())
            );
            for (k, v) in &response.headers {
                println!("  response header {k}: {v}");
            }
        }
        other => println!("decision: {other:?}"),
    }
    let verdict = if e.agrees() {
        style::dim("decided by Filter::decide, the filter's own code; the steps above agree")
    } else {
        style::bad(&format!(
            "THE STEPS ABOVE END WITH {:?}, BUT Filter::decide DECIDED OTHERWISE: the decision shown is the filter's; please report this",
            e.story
        ))
    };
    println!("{verdict}");
    let plan = header_plan(f, req, e);
    if !plan.is_empty() {
        println!("{}", style::bold("upstream request headers"));
        for p in plan {
            let g = |k: &str| p.get(k).and_then(Value::as_str).unwrap_or("").to_string();
            match g("op").as_str() {
                "set" => println!("  set     {}: {}", g("name"), g("value")),
                "clear" => println!("  clear   {}", g("name")),
                "set_path" => println!("  path    {} (token removed from the query)", g("path")),
                "set_response" => {
                    println!("  reply   {}: {} (on the response)", g("name"), g("value"))
                }
                _ => println!(
                    "  dropped {} (the client's value never reaches the upstream)",
                    g("name")
                ),
            }
        }
    }
    if e.signature_skipped {
        println!("{}", style::warn(&format!("!!! {SKIPPED} !!!")));
    }
}
