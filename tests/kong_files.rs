//! Offline checks of the Kong and example files (no Docker, no network):
//!
//! - every filter config embedded in `kong/*.yml` and `examples/*.{yaml,yml,json}` loads with
//!   the filter's own parser (`azure_ml_kong::config::parse`, and the full load that
//!   `on_configure` runs, `engine::Filter::from_json`) AND validates against
//!   `kong/azure_ml_kong.meta.json`'s `config_schema` (JSON Schema draft-04, as Kong does);
//! - invalid samples are rejected by both, and both name the same field;
//! - the schema's documented defaults are the filter's defaults;
//! - meta.json has the shape Kong 3.9 accepts (`kong/runloop/wasm.lua` FILTER_META_SCHEMA)
//!   and its metric label patterns extract labels the way Kong's Prometheus exporter does;
//! - `docker-compose.yml` parses and everything it mounts or builds exists (or, for the
//!   `.wasm`, is built by the Makefile), and the Kong settings the filter needs are there.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

const FILTER: &str = "azure_ml_kong";
const SCHEMA_URL: &str = "https://azure-ml-kong.invalid/azure_ml_kong.config_schema.json";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    let p = root().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()))
}

fn yaml(rel: &str) -> Value {
    serde_norway::from_str::<Value>(&read(rel)).unwrap_or_else(|e| panic!("{rel}: bad YAML: {e}"))
}

fn meta() -> Value {
    serde_json::from_str(&read("kong/azure_ml_kong.meta.json"))
        .unwrap_or_else(|e| panic!("kong/azure_ml_kong.meta.json: bad JSON: {e}"))
}

// ------------------------------------------------------------------------------------------
// JSON Schema validation (boon, draft-04)

struct Schema {
    schemas: boon::Schemas,
    index: boon::SchemaIndex,
}

impl Schema {
    fn config() -> Schema {
        let config_schema = meta()
            .get("config_schema")
            .cloned()
            .expect("meta.json has no config_schema");
        Schema::compile(config_schema)
    }

    fn compile(schema: Value) -> Schema {
        let mut compiler = boon::Compiler::new();
        compiler.set_default_draft(boon::Draft::V4);
        compiler
            .add_resource(SCHEMA_URL, schema)
            .unwrap_or_else(|e| panic!("schema resource: {e}"));
        let mut schemas = boon::Schemas::new();
        let index = compiler
            .compile(SCHEMA_URL, &mut schemas)
            .unwrap_or_else(|e| panic!("schema does not compile (draft-04): {e:#}"));
        Schema { schemas, index }
    }

    /// `Ok` or the error locations (see `error_paths`) and the rendered error.
    fn validate(&self, v: &Value) -> Result<(), (Vec<ErrPath>, String)> {
        match self.schemas.validate(v, self.index) {
            Ok(()) => Ok(()),
            Err(e) => {
                let mut out = Vec::new();
                error_paths(&e, &mut out);
                Err((out, format!("{e:#}")))
            }
        }
    }
}

/// One path segment, shared by the filter's `a.b[0].c` and JSON pointers `/a/b/0/c`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Seg {
    Key(String),
    Index(usize),
}

type Path_ = Vec<Seg>;

/// A location a validator error points at; `specific` when the error is about that exact
/// value (type, enum, additional/required property, ...), not a combinator over a subtree.
#[derive(Debug, Clone)]
struct ErrPath {
    path: Path_,
    specific: bool,
}

/// Collect the locations of every error in boon's error tree. For `additionalProperties`
/// and `required`, the offending property is appended, as the filter names it.
fn error_paths(e: &boon::ValidationError, out: &mut Vec<ErrPath>) {
    let base: Path_ = e
        .instance_location
        .tokens
        .iter()
        .map(|t| match t {
            boon::InstanceToken::Prop(p) => Seg::Key(p.to_string()),
            boon::InstanceToken::Item(i) => Seg::Index(*i),
        })
        .collect();
    use boon::ErrorKind as K;
    match &e.kind {
        K::Group | K::Schema { .. } | K::Reference { .. } | K::AllOf => {}
        K::AdditionalProperties { got } => {
            for p in got {
                let mut q = base.clone();
                q.push(Seg::Key(p.to_string()));
                out.push(ErrPath {
                    path: q,
                    specific: true,
                });
            }
        }
        K::Required { want } => {
            out.push(ErrPath {
                path: base.clone(),
                specific: true,
            });
            for p in want {
                let mut q = base.clone();
                q.push(Seg::Key(p.to_string()));
                out.push(ErrPath {
                    path: q,
                    specific: true,
                });
            }
        }
        K::OneOf(_) | K::AnyOf | K::Not => out.push(ErrPath {
            path: base.clone(),
            specific: false,
        }),
        _ => out.push(ErrPath {
            path: base.clone(),
            specific: true,
        }),
    }
    for c in &e.causes {
        error_paths(c, out);
    }
}

/// Parse the filter's error path: `routes[1].require.any[0].claim` (empty = the root).
fn filter_path(s: &str) -> Path_ {
    let mut out = Vec::new();
    for part in s.split('.').filter(|p| !p.is_empty()) {
        let (name, rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !name.is_empty() {
            out.push(Seg::Key(name.to_string()));
        }
        for idx in rest.split('[').filter(|x| !x.is_empty()) {
            let n = idx
                .trim_end_matches(']')
                .parse()
                .unwrap_or_else(|_| panic!("bad index in filter path {s:?}"));
            out.push(Seg::Index(n));
        }
    }
    out
}

fn show(p: &Path_) -> String {
    let mut s = String::new();
    for seg in p {
        match seg {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// What the filter does with its configuration in `on_configure`: parse (`config::parse`),
/// then compile providers, token sources, routes, identity headers and key sources and
/// check the rules that span them (`engine::Filter::from_json`).
fn filter_load(v: &Value) -> Result<(), azure_ml_kong::config::ConfigError> {
    let bytes = serde_json::to_vec(v).expect("serialize config");
    azure_ml_kong::engine::Filter::from_json(&bytes).map(|_| ())
}

// ------------------------------------------------------------------------------------------
// Finding the filter configs in Kong and Envoy files

#[derive(Debug)]
struct Found {
    file: String,
    /// Where in the file (for messages).
    at: String,
    config: Value,
    host: Host,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Host {
    Kong,
    Envoy,
    /// A bare filter config (a JSON file holding just the config).
    Bare,
}

fn config_value(v: &Value, file: &str, at: &str) -> Value {
    match v {
        // Without meta.json Kong takes the config as a JSON string.
        Value::String(s) => serde_json::from_str(s)
            .unwrap_or_else(|e| panic!("{file} {at}: config string is not JSON: {e}")),
        other => other.clone(),
    }
}

fn walk(v: &Value, file: &str, at: &str, out: &mut Vec<Found>) {
    match v {
        Value::Object(m) => {
            // Kong: filter_chains[].filters[] and plugins[] entries named after the filter.
            for key in ["filter_chains", "plugins"] {
                if let Some(Value::Array(items)) = m.get(key) {
                    for (i, item) in items.iter().enumerate() {
                        let here = format!("{at}.{key}[{i}]");
                        if key == "filter_chains" {
                            if let Some(Value::Array(filters)) = item.get("filters") {
                                for (j, f) in filters.iter().enumerate() {
                                    if f.get("name") == Some(&json!(FILTER)) {
                                        let at = format!("{here}.filters[{j}].config");
                                        let cfg = f.get("config").unwrap_or_else(|| {
                                            panic!("{file} {at}: filter without config")
                                        });
                                        out.push(Found {
                                            file: file.into(),
                                            config: config_value(cfg, file, &at),
                                            at,
                                            host: Host::Kong,
                                        });
                                    }
                                }
                            }
                        } else if item.get("name") == Some(&json!(FILTER)) {
                            let at = format!("{here}.config");
                            let cfg = item
                                .get("config")
                                .unwrap_or_else(|| panic!("{file} {at}: plugin without config"));
                            out.push(Found {
                                file: file.into(),
                                config: config_value(cfg, file, &at),
                                at,
                                host: Host::Kong,
                            });
                        }
                    }
                }
            }
            // Envoy: envoy.filters.http.wasm typed_config → config.configuration (StringValue).
            let is_wasm = m
                .get("@type")
                .and_then(Value::as_str)
                .is_some_and(|t| t.ends_with("envoy.extensions.filters.http.wasm.v3.Wasm"));
            if is_wasm {
                let at = format!("{at}.config.configuration.value");
                let value = v
                    .pointer("/config/configuration/value")
                    .and_then(Value::as_str)
                    .unwrap_or_else(|| {
                        panic!("{file} {at}: wasm filter without a StringValue configuration")
                    });
                let ty = v
                    .pointer("/config/configuration/@type")
                    .and_then(Value::as_str);
                assert_eq!(
                    ty,
                    Some("type.googleapis.com/google.protobuf.StringValue"),
                    "{file} {at}: configuration must be a google.protobuf.StringValue"
                );
                out.push(Found {
                    file: file.into(),
                    config: serde_json::from_str(value)
                        .unwrap_or_else(|e| panic!("{file} {at}: not JSON: {e}")),
                    at,
                    host: Host::Envoy,
                });
            }
            for (k, child) in m {
                walk(child, file, &format!("{at}.{k}"), out);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                walk(child, file, &format!("{at}[{i}]"), out);
            }
        }
        _ => {}
    }
}

fn files_in(dir: &str, exts: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(root().join(dir))
        .unwrap_or_else(|e| panic!("cannot list {dir}/: {e}"))
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| exts.iter().any(|x| n.ends_with(&format!(".{x}"))))
        .map(|n| format!("{dir}/{n}"))
        .collect();
    out.sort();
    out
}

fn load_any(file: &str) -> Value {
    if file.ends_with(".json") {
        serde_json::from_str(&read(file)).unwrap_or_else(|e| panic!("{file}: bad JSON: {e}"))
    } else {
        yaml(file)
    }
}

fn find_configs(file: &str) -> Vec<Found> {
    let doc = load_any(file);
    let mut out = Vec::new();
    if doc.get("providers").is_some() && doc.get("routes").is_some() {
        out.push(Found {
            file: file.into(),
            at: "(whole file)".into(),
            config: doc,
            host: Host::Bare,
        });
    } else {
        walk(&doc, file, "", &mut out);
    }
    out
}

fn all_configs() -> Vec<Found> {
    let mut files = files_in("kong", &["yml", "yaml"]);
    files.extend(files_in("examples", &["yaml", "yml", "json"]));
    files.iter().flat_map(|f| find_configs(f)).collect()
}

// ------------------------------------------------------------------------------------------
// Embedded configs are valid for the filter and for Kong

#[test]
fn embedded_filter_configs_are_valid_for_filter_and_schema() {
    let schema = Schema::config();
    let found = all_configs();
    let count = |file: &str| found.iter().filter(|f| f.file == file).count();
    assert_eq!(
        count("kong/kong.yml"),
        3,
        "kong/kong.yml: fraud, churn and health chains"
    );
    assert_eq!(
        count("kong/kong.plugins.yml"),
        1,
        "kong/kong.plugins.yml: one plugin entry"
    );
    assert_eq!(count("examples/envoy-production.yaml"), 1);

    let mut failures = Vec::new();
    for f in &found {
        let bytes = serde_json::to_vec(&f.config).expect("serialize config");
        if let Err(e) = azure_ml_kong::config::parse(&bytes) {
            failures.push(format!(
                "{} {}: config::parse rejects it: {e}",
                f.file, f.at
            ));
        }
        if let Err(e) = filter_load(&f.config) {
            failures.push(format!("{} {}: filter rejects it: {e}", f.file, f.at));
        }
        if let Err((_, msg)) = schema.validate(&f.config) {
            failures.push(format!(
                "{} {}: meta.json schema rejects it:\n{msg}",
                f.file, f.at
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Kong dispatches to `host[:port]`; Envoy to a cluster name defined in the same bootstrap.
#[test]
fn provider_upstreams_fit_their_host() {
    let host_port = regex::Regex::new(r"^[A-Za-z0-9.-]+(:[0-9]{1,5})?$").expect("regex");
    for f in all_configs() {
        let providers = f.config["providers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for (i, p) in providers.iter().enumerate() {
            let Some(up) = p.get("upstream").and_then(Value::as_str) else {
                continue;
            };
            match f.host {
                Host::Kong => assert!(
                    host_port.is_match(up) && up.contains(['.', ':']),
                    "{} {}: providers[{i}].upstream {up:?} must be host[:port] in Kong",
                    f.file,
                    f.at
                ),
                Host::Envoy => {
                    let doc = load_any(&f.file);
                    let clusters: Vec<&str> = doc
                        .pointer("/static_resources/clusters")
                        .and_then(Value::as_array)
                        .map(|c| c.iter().filter_map(|c| c["name"].as_str()).collect())
                        .unwrap_or_default();
                    assert!(
                        clusters.contains(&up),
                        "{} {}: providers[{i}].upstream {up:?} is not a cluster of this bootstrap ({clusters:?})",
                        f.file,
                        f.at
                    );
                }
                Host::Bare => {}
            }
        }
    }
}

/// The demo config's upstreams and the endpoint key match what docker-compose.yml runs.
#[test]
fn kong_demo_matches_compose_services() {
    let compose = yaml("docker-compose.yml");
    let services = compose["services"].as_object().expect("services");
    let listen_port = |svc: &str| -> String {
        let cmd: Vec<&str> = services[svc]["command"]
            .as_array()
            .unwrap_or_else(|| panic!("{svc}: command list"))
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let i = cmd.iter().position(|a| *a == "--listen").expect("--listen");
        cmd[i + 1].rsplit(':').next().expect("port").to_string()
    };
    let idp = format!("mock-idp:{}", listen_port("mock-idp"));
    let aml = format!("mock-aml:{}", listen_port("mock-aml"));
    let aml_cmd = services["mock-aml"]["command"].to_string();

    let kong = yaml("kong/kong.yml");
    let urls: Vec<&str> = kong["services"]
        .as_array()
        .expect("services")
        .iter()
        .filter_map(|s| s["url"].as_str())
        .collect();
    assert!(
        urls.iter()
            .any(|u| u.starts_with(&format!("http://{aml}/"))),
        "kong.yml should proxy to {aml}: {urls:?}"
    );
    for f in find_configs("kong/kong.yml") {
        for p in f.config["providers"].as_array().expect("providers") {
            assert_eq!(p["upstream"], json!(idp), "{}: provider upstream", f.at);
            let uri = p["jwks_uri"]
                .as_str()
                .or(p["discovery_uri"].as_str())
                .unwrap_or("");
            assert!(
                uri.starts_with(&format!("http://{idp}/")),
                "{}: {uri}",
                f.at
            );
        }
        for r in f.config["routes"].as_array().expect("routes") {
            if let Some(auth) = r
                .pointer("/set_request_headers/authorization")
                .and_then(Value::as_str)
            {
                let key = auth.strip_prefix("Bearer ").expect("Bearer <key>");
                assert!(
                    aml_cmd.contains(&format!("\"{key}\"")),
                    "{}: endpoint key {key} is not the one mock-aml is started with ({aml_cmd})",
                    f.at
                );
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// Invalid samples: rejected by both, same field

fn base_config() -> Value {
    json!({
        "providers": [{
            "name": "entra",
            "issuers": ["https://login.microsoftonline.com/{tenantid}/v2.0"],
            "tenants": ["72f988bf-86f1-41af-91ab-2d7cd011db47"],
            "jwks_uri": "https://login.microsoftonline.com/common/discovery/v2.0/keys",
            "audiences": ["api://azureml-gateway"]
        }],
        "routes": [
            {"name": "health", "match": {"path": "/health"}, "auth": "none"},
            {"name": "score", "match": {"path": "/teams/{team}/score", "methods": ["POST"]},
             "require": {"all": [
                 {"claim": "roles", "contains_any": ["Endpoint.Score"]},
                 {"claim": "team", "equals": "{path.team}"}
             ]},
             "set_request_headers": {"authorization": "Bearer k", "azureml-model-deployment": "blue"}}
        ]
    })
}

/// Apply `f` to a copy of the base config.
fn mutate(f: impl FnOnce(&mut Value)) -> Value {
    let mut v = base_config();
    f(&mut v);
    v
}

fn at<'a>(v: &'a mut Value, pointer: &str) -> &'a mut Value {
    v.pointer_mut(pointer)
        .unwrap_or_else(|| panic!("no {pointer} in the base config"))
}

fn remove(v: &mut Value, pointer: &str) {
    let (parent, key) = pointer.rsplit_once('/').expect("pointer");
    at(v, parent)
        .as_object_mut()
        .expect("object")
        .remove(key)
        .unwrap_or_else(|| panic!("nothing at {pointer}"));
}

#[test]
fn base_sample_is_valid() {
    let v = base_config();
    filter_load(&v).unwrap_or_else(|e| panic!("filter: {e}"));
    Schema::config()
        .validate(&v)
        .unwrap_or_else(|(_, m)| panic!("schema: {m}"));
}

/// Structural errors (serde level in the filter): both must point at the same field.
#[test]
fn invalid_samples_rejected_by_both_with_the_same_path() {
    let samples: Vec<(&str, Value)> = vec![
        (
            "unknown top-level field",
            mutate(|v| v["forward_tokens"] = json!(true)),
        ),
        (
            "unknown field in a route",
            mutate(|v| {
                let m = at(v, "/routes/1").as_object_mut().expect("route");
                let x = m.remove("match").expect("match");
                m.insert("matchh".into(), x);
            }),
        ),
        (
            "unknown field in a provider",
            mutate(|v| at(v, "/providers/0")["audience"] = json!(["a"])),
        ),
        (
            "unknown token source kind",
            mutate(|v| v["token_sources"] = json!([{"headers": "authorization"}])),
        ),
        (
            "unknown requirement operator",
            mutate(|v| {
                *at(v, "/routes/1/require/all/0") = json!({"claim": "roles", "contains": ["x"]})
            }),
        ),
        (
            "wrong type: number as string",
            mutate(|v| at(v, "/providers/0")["jwks_timeout_ms"] = json!("fast")),
        ),
        (
            "wrong type: claim is a number",
            mutate(|v| *at(v, "/routes/1/require/all/1/claim") = json!(5)),
        ),
        (
            "wrong type: requirement list is an object",
            mutate(|v| {
                *at(v, "/routes/1/require") = json!({"all": {"claim": "roles", "exists": true}})
            }),
        ),
        (
            "wrong type: forward_token",
            mutate(|v| v["forward_token"] = json!("yes")),
        ),
        (
            "unknown field in a caller",
            mutate(|v| v["callers"] = json!([{"name": "a", "app_ids": ["x"], "team": "t"}])),
        ),
        (
            "unknown_callers not allow/deny",
            mutate(|v| v["unknown_callers"] = json!("block")),
        ),
        (
            "unknown field in a concurrency limit",
            mutate(|v| {
                at(v, "/routes/1")["concurrency_limit"] = json!({"max_in_flight": 2, "per": "oid"})
            }),
        ),
        (
            "wrong type: issuers",
            mutate(|v| {
                at(v, "/providers/0")["issuers"] = json!("https://sts.windows.net/{tenantid}/")
            }),
        ),
        (
            "bad enum: auth",
            mutate(|v| at(v, "/routes/0")["auth"] = json!("sometimes")),
        ),
        (
            "bad enum: on_no_route",
            mutate(|v| v["on_no_route"] = json!("allow")),
        ),
        (
            "bad enum: cors_preflight",
            mutate(|v| at(v, "/routes/1")["cors_preflight"] = json!("yes")),
        ),
        (
            "bad enum: audit level",
            mutate(|v| v["audit"] = json!({"log_level": "verbose"})),
        ),
        (
            "missing required: audiences",
            mutate(|v| remove(v, "/providers/0/audiences")),
        ),
        (
            "missing required: issuers",
            mutate(|v| remove(v, "/providers/0/issuers")),
        ),
        (
            "missing required: route name",
            mutate(|v| remove(v, "/routes/0/name")),
        ),
        ("missing required: routes", mutate(|v| remove(v, "/routes"))),
        (
            "missing required: claims_to_headers header",
            mutate(|v| v["claims_to_headers"] = json!([{"claim": "oid"}])),
        ),
        (
            "missing required: rate_limit window",
            mutate(|v| at(v, "/routes/1")["rate_limit"] = json!({"requests": 10})),
        ),
        (
            "unknown field in a managed identity",
            mutate(|v| {
                v["upstream_credentials"] =
                    json!([{"name": "aml", "managed_identity": {"resourse": "x"}}])
            }),
        ),
        (
            "missing required: client_secret",
            mutate(|v| {
                v["upstream_credentials"] = json!([{"name": "aml", "client_credentials":
                    {"token_endpoint": "https://login.microsoftonline.com/t/oauth2/v2.0/token",
                     "client_id": "app"}}])
            }),
        ),
    ];
    let schema = Schema::config();
    let mut failures = Vec::new();
    for (what, v) in &samples {
        let fe = match filter_load(v) {
            Ok(()) => {
                failures.push(format!("{what}: the filter accepts it"));
                continue;
            }
            Err(e) => e,
        };
        let (paths, msg) = match schema.validate(v) {
            Ok(()) => {
                failures.push(format!("{what}: meta.json's schema accepts it"));
                continue;
            }
            Err(x) => x,
        };
        let fp = filter_path(&fe.path);
        if !paths.iter().any(|p| p.specific && p.path == fp) {
            let got: BTreeSet<String> = paths.iter().map(|p| show(&p.path)).collect();
            failures.push(format!(
                "{what}: filter says `{fe}`, the schema validator points at {got:?}\n{msg}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Cross-field rules (the filter's `validate` stage): both reject; the validator's error is
/// at the filter's field or at an enclosing object (a oneOf/not over that object).
#[test]
fn cross_field_samples_rejected_by_both() {
    let samples: Vec<(&str, Value)> = vec![
        // serde's derived structs also accept a JSON array (fields by position), so the
        // filter reports the first element; the validator reports the array itself.
        (
            "wrong type: not is a list",
            mutate(|v| {
                *at(v, "/routes/1/require") = json!({"not": [{"claim": "idtyp", "equals": "app"}]})
            }),
        ),
        ("no providers", mutate(|v| v["providers"] = json!([]))),
        (
            "a caller name that is no metric label",
            mutate(|v| v["callers"] = json!([{"name": "Fraud Scoring", "app_ids": ["x"]}])),
        ),
        (
            "a caller without app ids",
            mutate(|v| v["callers"] = json!([{"name": "a", "app_ids": []}])),
        ),
        (
            "max_in_flight 0",
            mutate(|v| at(v, "/routes/1")["concurrency_limit"] = json!({"max_in_flight": 0})),
        ),
        ("no routes", mutate(|v| v["routes"] = json!([]))),
        (
            "no token sources",
            mutate(|v| v["token_sources"] = json!([])),
        ),
        (
            "both discovery_uri and jwks_uri",
            mutate(|v| {
                at(v, "/providers/0")["discovery_uri"] = json!("https://login.microsoftonline.com/common/v2.0/.well-known/openid-configuration")
            }),
        ),
        (
            "neither discovery_uri nor jwks_uri",
            mutate(|v| remove(v, "/providers/0/jwks_uri")),
        ),
        (
            "no audiences",
            mutate(|v| at(v, "/providers/0")["audiences"] = json!([])),
        ),
        (
            "no issuers",
            mutate(|v| at(v, "/providers/0")["issuers"] = json!([])),
        ),
        (
            "unknown algorithm",
            mutate(|v| at(v, "/providers/0")["algorithms"] = json!(["none"])),
        ),
        (
            "tenant is not a GUID",
            mutate(|v| at(v, "/providers/0")["tenants"] = json!(["contoso.onmicrosoft.com"])),
        ),
        (
            "token source with header and query",
            mutate(|v| {
                v["token_sources"] = json!([{"header": "authorization", "query": "access_token"}])
            }),
        ),
        (
            "token source with nothing",
            mutate(|v| v["token_sources"] = json!([{}])),
        ),
        (
            "prefix without header",
            mutate(|v| {
                v["token_sources"] = json!([{"query": "access_token", "prefix": "Bearer "}])
            }),
        ),
        (
            "claim test with two operators",
            mutate(|v| {
                *at(v, "/routes/1/require/all/0") =
                    json!({"claim": "roles", "contains_any": ["a"], "exists": true})
            }),
        ),
        (
            "claim test without operator",
            mutate(|v| *at(v, "/routes/1/require/all/0") = json!({"claim": "roles"})),
        ),
        (
            "operator without claim",
            mutate(|v| *at(v, "/routes/1/require/all/0") = json!({"equals": "x"})),
        ),
        (
            "empty requirement node",
            mutate(|v| *at(v, "/routes/1/require/all/0") = json!({})),
        ),
        (
            "all and claim in one node",
            mutate(|v| {
                *at(v, "/routes/1/require") = json!({"all": [], "claim": "x", "exists": true})
            }),
        ),
        (
            "path and path_prefix",
            mutate(|v| at(v, "/routes/0/match")["path_prefix"] = json!("/")),
        ),
        (
            "rate limit of zero",
            mutate(|v| {
                at(v, "/routes/1")["rate_limit"] = json!({"requests": 0, "window_seconds": 60})
            }),
        ),
        (
            "set a hop-by-hop header",
            mutate(|v| {
                at(v, "/routes/1/set_request_headers")["transfer-encoding"] = json!("chunked")
            }),
        ),
        (
            "claim header is host",
            mutate(|v| v["claims_to_headers"] = json!([{"claim": "oid", "header": "host"}])),
        ),
        (
            "upper-case claim header",
            mutate(|v| {
                v["claims_to_headers"] = json!([{"claim": "oid", "header": "X-Caller-Oid"}])
            }),
        ),
        (
            "realm with a quote",
            mutate(|v| v["realm"] = json!("azure\"ml")),
        ),
        (
            "cache of zero entries",
            mutate(|v| v["cache"] = json!({"max_entries": 0})),
        ),
        (
            "tiny token cap",
            mutate(|v| v["cache"] = json!({"max_token_bytes": 100})),
        ),
        (
            "empty tenants list",
            mutate(|v| at(v, "/providers/0")["tenants"] = json!([])),
        ),
        (
            "short hmac secret",
            mutate(|v| {
                at(v, "/providers/0")["hmac_secret"] = json!("short");
                at(v, "/providers/0")["algorithms"] = json!(["HS256"]);
            }),
        ),
        (
            "clock skew above an hour",
            mutate(|v| at(v, "/providers/0")["clock_skew_seconds"] = json!(7200)),
        ),
        (
            "blank token prefix",
            mutate(|v| v["token_sources"] = json!([{"header": "authorization", "prefix": " "}])),
        ),
        (
            "empty all list",
            mutate(|v| *at(v, "/routes/1/require") = json!({"all": []})),
        ),
        (
            "empty one_of list",
            mutate(|v| *at(v, "/routes/1/require/all/0") = json!({"claim": "roles", "one_of": []})),
        ),
        (
            "lower-case method",
            mutate(|v| at(v, "/routes/1/match")["methods"] = json!(["post"])),
        ),
        (
            "empty methods list",
            mutate(|v| at(v, "/routes/1/match")["methods"] = json!([])),
        ),
        (
            "host with port",
            mutate(|v| at(v, "/routes/1/match")["hosts"] = json!(["ml.example.com:443"])),
        ),
        (
            "credential with both kinds",
            mutate(|v| {
                v["upstream_credentials"] = json!([{"name": "aml", "managed_identity": {},
                    "client_credentials": {"token_endpoint": "https://h/t", "client_id": "a",
                                           "client_secret": "s"}}])
            }),
        ),
        (
            "credential with no kind",
            mutate(|v| v["upstream_credentials"] = json!([{"name": "aml"}])),
        ),
        (
            "credential route that also sets authorization",
            mutate(|v| {
                v["upstream_credentials"] = json!([{"name": "aml", "managed_identity": {}}]);
                at(v, "/routes/1")["upstream_credential"] = json!("aml");
            }),
        ),
        (
            "credential name with a space",
            mutate(|v| {
                v["upstream_credentials"] = json!([{"name": "a ml", "managed_identity": {}}])
            }),
        ),
        (
            "header value with a newline",
            mutate(|v| {
                at(v, "/routes/1/set_request_headers")["azureml-model-deployment"] =
                    json!("blue\r\nx-evil: 1")
            }),
        ),
    ];
    let schema = Schema::config();
    let mut failures = Vec::new();
    for (what, v) in &samples {
        let schema_result = schema.validate(v);
        let filter_result = filter_load(v);
        match (&filter_result, &schema_result) {
            (Ok(()), _) => failures.push(format!("{what}: the filter accepts it")),
            (_, Ok(())) => failures.push(format!("{what}: meta.json's schema accepts it")),
            (Err(fe), Err((paths, msg))) => {
                let fp = filter_path(&fe.path);
                let agrees = paths
                    .iter()
                    .filter(|p| !p.path.is_empty() || fp.is_empty())
                    .any(|p| fp.starts_with(&p.path));
                if !agrees {
                    let got: BTreeSet<String> = paths.iter().map(|p| show(&p.path)).collect();
                    failures.push(format!(
                        "{what}: filter says `{fe}`, the schema validator points at {got:?}\n{msg}"
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn path_normalization() {
    assert_eq!(
        filter_path("routes[1].require.any[0].claim"),
        vec![
            Seg::Key("routes".into()),
            Seg::Index(1),
            Seg::Key("require".into()),
            Seg::Key("any".into()),
            Seg::Index(0),
            Seg::Key("claim".into())
        ]
    );
    assert_eq!(filter_path(""), Vec::<Seg>::new());
    assert_eq!(show(&filter_path("a[0][2].b")), "a[0][2].b");
}

// ------------------------------------------------------------------------------------------
// meta.json itself

/// Every object schema closes itself with `additionalProperties: false`. (A `not`
/// subschema is a constraint on its parent, not a shape: it is not checked.)
#[test]
fn schema_is_closed_everywhere() {
    fn check(v: &Value, at: &str, bad: &mut Vec<String>) {
        match v {
            Value::Object(_) if at.ends_with(".not") => {}
            Value::Object(m) => {
                let is_object_schema = m.get("type") == Some(&json!("object"))
                    || (m.contains_key("properties") && !at.ends_with(".properties"));
                if is_object_schema && m.get("additionalProperties") != Some(&json!(false)) {
                    bad.push(at.to_string());
                }
                for (k, c) in m {
                    check(c, &format!("{at}.{k}"), bad);
                }
            }
            Value::Array(a) => {
                for (i, c) in a.iter().enumerate() {
                    check(c, &format!("{at}[{i}]"), bad);
                }
            }
            _ => {}
        }
    }
    let mut bad = Vec::new();
    check(&meta()["config_schema"], "config_schema", &mut bad);
    assert!(
        bad.is_empty(),
        "object schemas without additionalProperties: false: {bad:?}"
    );
}

/// Kong 3.9 refuses to start on a malformed meta.json: check it the way
/// `kong/runloop/wasm.lua` does (FILTER_META_SCHEMA: config_schema is a draft-04 schema,
/// metrics.label_patterns[] = {label, pattern}), and that `$schema` is draft-04.
#[test]
fn meta_json_has_the_shape_kong_accepts() {
    let kong_meta_schema = json!({
        "$schema": "http://json-schema.org/draft-04/schema#",
        "type": "object",
        "properties": {
            "config_schema": {"$ref": "http://json-schema.org/draft-04/schema#"},
            "metrics": {
                "type": "object",
                "properties": {
                    "label_patterns": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["label", "pattern"],
                            "properties": {
                                "label": {"type": "string"},
                                "pattern": {"type": "string"}
                            }
                        }
                    }
                }
            }
        }
    });
    let m = meta();
    Schema::compile(kong_meta_schema)
        .validate(&m)
        .unwrap_or_else(|(_, e)| {
            panic!("meta.json does not match Kong's FILTER_META_SCHEMA:\n{e}")
        });
    assert_eq!(
        m["config_schema"]["$schema"],
        json!("http://json-schema.org/draft-04/schema#")
    );
    let keys: BTreeSet<&str> = m
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, BTreeSet::from(["config_schema", "metrics"]));
}

/// The schema's `default`s are the filter's defaults (a minimal config, parsed by the filter).
#[test]
fn schema_defaults_are_the_filter_defaults() {
    let m = meta();
    let s = &m["config_schema"];
    let d = |ptr: &str| -> Value {
        s.pointer(&format!("{ptr}/default"))
            .cloned()
            .unwrap_or_else(|| panic!("no default at config_schema{ptr}"))
    };
    let minimal = json!({
        "providers": [{"name": "p", "issuers": ["i"], "jwks_uri": "https://x/k", "audiences": ["a"]}],
        "routes": [{"name": "r", "rate_limit": {"requests": 1, "window_seconds": 1}}]
    });
    let cfg = match azure_ml_kong::engine::Filter::from_json(minimal.to_string().as_bytes()) {
        Ok(f) => f.config,
        Err(e) => panic!("minimal config: {e}"),
    };
    let p = &cfg.providers[0];
    let r = &cfg.routes[0];
    let prov = "/definitions/provider/properties";
    assert_eq!(d(&format!("{prov}/algorithms")), json!(p.algorithms));
    assert_eq!(
        d(&format!("{prov}/clock_skew_seconds")),
        json!(p.clock_skew_seconds)
    );
    assert_eq!(
        d(&format!("{prov}/jwks_refresh_seconds")),
        json!(p.jwks_refresh_seconds)
    );
    assert_eq!(
        d(&format!("{prov}/jwks_min_refetch_seconds")),
        json!(p.jwks_min_refetch_seconds)
    );
    assert_eq!(
        d(&format!("{prov}/jwks_timeout_ms")),
        json!(p.jwks_timeout_ms)
    );
    assert_eq!(d("/properties/realm"), json!(cfg.realm));
    assert_eq!(d("/properties/forward_token"), json!(cfg.forward_token));
    assert_eq!(
        d("/properties/cache/properties/max_entries"),
        json!(cfg.cache.max_entries)
    );
    assert_eq!(
        d("/properties/cache/properties/max_token_bytes"),
        json!(cfg.cache.max_token_bytes)
    );
    assert_eq!(
        d("/definitions/rate_limit/properties/key"),
        json!(r.rate_limit.as_ref().map(|l| l.key.clone()))
    );
    let ts: Vec<Value> = cfg
        .token_sources
        .iter()
        .map(|t| {
            let mut o = serde_json::Map::new();
            for (k, v) in [
                ("header", &t.header),
                ("prefix", &t.prefix),
                ("query", &t.query),
                ("cookie", &t.cookie),
            ] {
                if let Some(v) = v {
                    o.insert(k.into(), json!(v));
                }
            }
            Value::Object(o)
        })
        .collect();
    assert_eq!(d("/properties/token_sources"), json!(ts));
    let ch: Vec<Value> = cfg
        .claims_to_headers
        .iter()
        .map(|c| json!({"claim": c.claim, "header": c.header}))
        .collect();
    assert_eq!(d("/properties/claims_to_headers"), json!(ch));
    // Enum defaults: compare through the filter (the default value must parse to the default).
    use azure_ml_kong::config::{AuthMode, CorsPreflight, LogLevel, OnNoRoute};
    assert_eq!(cfg.on_no_route, OnNoRoute::Deny);
    assert_eq!(d("/properties/on_no_route"), json!("deny"));
    assert_eq!(r.auth, AuthMode::Required);
    assert_eq!(d("/definitions/route/properties/auth"), json!("required"));
    assert_eq!(r.cors_preflight, CorsPreflight::Deny);
    assert_eq!(
        d("/definitions/route/properties/cors_preflight"),
        json!("deny")
    );
    assert_eq!(cfg.audit.log_level, LogLevel::Warn);
    assert_eq!(d("/properties/audit/properties/log_level"), json!("warn"));
    assert_eq!(
        cfg.unknown_callers,
        azure_ml_kong::config::UnknownCallers::Allow
    );
    assert_eq!(d("/properties/unknown_callers"), json!("allow"));
    assert_eq!(
        d("/definitions/concurrency_limit/properties/key"),
        d("/definitions/rate_limit/properties/key")
    );
    assert!(!cfg.audit.kong_lua_properties);
    assert_eq!(
        d("/properties/audit/properties/kong_lua_properties"),
        json!(false)
    );
}

// ------------------------------------------------------------------------------------------
// Metric label extraction, as Kong 3.9's Prometheus exporter does it

/// Kong 3.9 `kong/plugins/prometheus/wasmx.lua` `parse_pw_key`: the stored key is
/// `pw:<filter>:<metric name>`; each label pattern is matched in list order with ONE shared
/// `ngx.re.match` ctx, so a pattern starts where the previous successful match ended; the
/// label value is capture 2; capture 1 must end where the match ends, and the metric name is
/// the key up to the first label's capture 1, with `:` turned into `_`.
fn kong_parse(key: &str, patterns: &[(String, regex::Regex)]) -> (String, Vec<(String, String)>) {
    let mut labels = Vec::new();
    let mut pos = 0usize; // 0-based start offset (ctx.pos - 1)
    let mut first = key.len();
    for (label, re) in patterns {
        if let Some(c) = re.captures_at(key, pos) {
            let whole = c.get(0).expect("match");
            let g1 = c.get(1).expect("pattern needs capture 1");
            let g2 = c.get(2).expect("pattern needs capture 2");
            pos = whole.end();
            // Kong computes the label position as ctx.pos - #capture1.
            let l_pos = whole.end() - g1.as_str().len();
            labels.push((label.clone(), g2.as_str().to_string()));
            first = first.min(l_pos);
        }
    }
    (key[..first].replace(':', "_"), labels)
}

/// meta.json's `label_patterns`, compiled.
fn label_patterns(meta: &Value) -> Vec<(String, regex::Regex)> {
    meta["metrics"]["label_patterns"]
        .as_array()
        .expect("label_patterns")
        .iter()
        .map(|p| {
            let label = p["label"].as_str().expect("label").to_string();
            let pat = p["pattern"].as_str().expect("pattern");
            let re = regex::Regex::new(pat).unwrap_or_else(|e| panic!("{label}: {e}"));
            (label, re)
        })
        .collect()
}

/// Every Prometheus series the filter emits in Kong, as (name, labels): the metric names
/// the filter builds (src/metrics.rs), through the label patterns.
fn emitted_series() -> Vec<(String, Vec<String>)> {
    use azure_ml_kong::credential::cache::CredEvent;
    use azure_ml_kong::keycache::Event;
    use azure_ml_kong::metrics;
    let mut audit = denied_audit();
    audit.caller = Some("fraud-scoring".into());
    let fetched = Event::FetchOk {
        uri: String::new(),
        keys: 1,
        bytes: 1,
        changed: true,
        generation: 1,
        ttl_ms: 1,
        cut: 3,
    };
    let acquired = CredEvent::Acquired {
        lifetime_secs: 60,
        fetched: true,
    };
    let (keys, age) = metrics::jwks_gauges("entra");
    let names = [
        metrics::decision_counter(&audit),
        metrics::jwks_counter("entra", &fetched).expect("a fetch counts"),
        metrics::jwks_cut_counter("entra", &fetched).expect("a cut set counts"),
        metrics::VERIFICATIONS.to_string(),
        metrics::SHARED_HITS.to_string(),
        metrics::REJECTED_HITS.to_string(),
        keys,
        age,
        metrics::credential_counter("aml", &acquired).expect("a grant counts"),
        metrics::credential_gauge("aml"),
        metrics::credential_age_gauge("aml"),
        metrics::LOST_WINDOWS.to_string(),
        metrics::LOST_SLOTS.to_string(),
        metrics::DROPPED.to_string(),
    ];
    let patterns = label_patterns(&meta());
    names
        .iter()
        .map(|n| {
            let (name, labels) = kong_parse(&format!("pw:{FILTER}:{n}"), &patterns);
            (name, labels.into_iter().map(|(l, _)| l).collect())
        })
        .collect()
}

#[test]
fn the_grafana_dashboard_queries_only_what_the_filter_emits() {
    let dash: Value =
        serde_json::from_str(&read("examples/grafana/azure-ml-kong.json")).expect("dashboard JSON");
    let emitted = emitted_series();
    let metric_re = regex::Regex::new(r"pw_azure_ml_kong_[a-z_]+").expect("re");
    let matcher_re = regex::Regex::new(r#"([a-z_]+)\s*(=~|!~|!=|=)\s*""#).expect("re");
    let by_re = regex::Regex::new(r"by \(([^)]*)\)").expect("re");
    let legend_re = regex::Regex::new(r"\{\{([a-z_]+)\}\}").expect("re");
    let mut queries: Vec<(String, String)> = Vec::new();
    for p in dash["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().expect("targets") {
            let expr = t["expr"].as_str().expect("expr").to_string();
            let legend = t["legendFormat"].as_str().unwrap_or_default().to_string();
            queries.push((expr, legend));
        }
    }
    for v in dash["templating"]["list"].as_array().expect("templating") {
        if let Some(q) = v["query"]
            .as_str()
            .filter(|q| q.starts_with("label_values("))
        {
            let inner = q.trim_start_matches("label_values(").trim_end_matches(')');
            let (metric, label) = inner.split_once(',').expect("label_values(metric, label)");
            queries.push((format!("{metric}{{}} by ({label})"), String::new()));
        }
    }
    assert!(queries.len() >= 9, "{queries:?}");
    let mut used = std::collections::BTreeSet::new();
    for (expr, legend) in &queries {
        let metrics: Vec<&str> = metric_re.find_iter(expr).map(|m| m.as_str()).collect();
        assert!(!metrics.is_empty(), "{expr}: queries no filter metric");
        let mut labels: Vec<String> = Vec::new();
        for m in &metrics {
            let (_, l) = emitted.iter().find(|(n, _)| n == m).unwrap_or_else(|| {
                panic!("{expr}: {m} is not a metric the filter emits: {emitted:?}")
            });
            labels.extend(l.iter().cloned());
            used.insert(m.to_string());
        }
        let by: Vec<String> = by_re
            .captures_iter(expr)
            .flat_map(|c| {
                c[1].split(',')
                    .map(|l| l.trim().to_string())
                    .collect::<Vec<_>>()
            })
            .collect();
        let matchers = matcher_re.captures_iter(expr).map(|c| c[1].to_string());
        for l in by.iter().cloned().chain(matchers) {
            assert!(
                labels.contains(&l),
                "{expr}: label {l} is not one of {labels:?}"
            );
        }
        for c in legend_re.captures_iter(legend) {
            assert!(
                by.contains(&c[1].to_string()),
                "{legend}: {{{{{}}}}} is not grouped by in {expr}",
                &c[1]
            );
        }
    }
    // Every metric the filter emits has a panel.
    for (name, _) in &emitted {
        assert!(used.contains(name), "the dashboard shows nothing of {name}");
    }
}

/// An audit record of a 403 on route `team-score`, as the filter would make it.
fn denied_audit() -> azure_ml_kong::audit::AuditRecord {
    let h = vec![];
    let req = azure_ml_kong::request::RequestView {
        method: "POST",
        path: "/teams/a/score",
        authority: "ml.example.com",
        headers: &h,
    };
    let mut a = azure_ml_kong::audit::AuditRecord::new(0, "rid", &req);
    a.route = Some("team-score".into());
    a.deny(azure_ml_kong::reason::Reason::InsufficientScope, 403);
    a
}

#[test]
fn metric_names_yield_the_documented_labels() {
    let m = meta();
    let patterns = label_patterns(&m);
    let l = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    };
    let cases = [
        (
            "decisions_total_route=team-score_caller=unregistered_decision=deny_reason=insufficient_scope",
            "pw_azure_ml_kong_decisions_total",
            l(&[
                ("route", "team-score"),
                ("caller", "unregistered"),
                ("decision", "deny"),
                ("reason", "insufficient_scope"),
            ]),
        ),
        (
            "decisions_total_route=health_caller=unregistered_decision=allow_reason=anonymous",
            "pw_azure_ml_kong_decisions_total",
            l(&[
                ("route", "health"),
                ("caller", "unregistered"),
                ("decision", "allow"),
                ("reason", "anonymous"),
            ]),
        ),
        (
            "decisions_total_route=unmatched_caller=unregistered_decision=deny_reason=no_route",
            "pw_azure_ml_kong_decisions_total",
            l(&[
                ("route", "unmatched"),
                ("caller", "unregistered"),
                ("decision", "deny"),
                ("reason", "no_route"),
            ]),
        ),
        (
            "jwks_fetches_total_provider=entra_result=http_error",
            "pw_azure_ml_kong_jwks_fetches_total",
            l(&[("provider", "entra"), ("result", "http_error")]),
        ),
        (
            "jwks_key_sets_cut_total_provider=entra",
            "pw_azure_ml_kong_jwks_key_sets_cut_total",
            l(&[("provider", "entra")]),
        ),
        (
            "jwks_fetches_total_provider=entra_result=issuer_mismatch",
            "pw_azure_ml_kong_jwks_fetches_total",
            l(&[("provider", "entra"), ("result", "issuer_mismatch")]),
        ),
        (
            "jwks_keys_provider=entra",
            "pw_azure_ml_kong_jwks_keys",
            l(&[("provider", "entra")]),
        ),
        (
            "jwks_age_seconds_provider=entra",
            "pw_azure_ml_kong_jwks_age_seconds",
            l(&[("provider", "entra")]),
        ),
        (
            "credential_fetches_total_credential=aml-sp_result=timeout",
            "pw_azure_ml_kong_credential_fetches_total",
            l(&[("credential", "aml-sp"), ("result", "timeout")]),
        ),
        (
            "credential_valid_seconds_credential=aml-sp",
            "pw_azure_ml_kong_credential_valid_seconds",
            l(&[("credential", "aml-sp")]),
        ),
        (
            "credential_age_seconds_credential=aml-sp",
            "pw_azure_ml_kong_credential_age_seconds",
            l(&[("credential", "aml-sp")]),
        ),
    ];
    // The names above are the ones the filter builds (src/metrics.rs).
    let (keys, age) = azure_ml_kong::metrics::jwks_gauges("Entra");
    let filter_names = [
        keys,
        age,
        azure_ml_kong::metrics::decision_counter(&denied_audit()),
        azure_ml_kong::metrics::credential_gauge("aml_sp"),
        azure_ml_kong::metrics::credential_age_gauge("aml_sp"),
        azure_ml_kong::metrics::jwks_cut_counter(
            "entra",
            &azure_ml_kong::keycache::Event::FetchOk {
                uri: String::new(),
                keys: 100,
                cut: 1,
                bytes: 1,
                changed: true,
                generation: 1,
                ttl_ms: 1,
            },
        )
        .expect("a cut key set is counted"),
    ];
    for name in &filter_names {
        assert!(
            cases.iter().any(|(n, _, _)| n == name),
            "{name}: the filter builds a metric name this test does not check"
        );
    }
    for (name, want_name, want_labels) in cases {
        let key = format!("pw:{FILTER}:{name}");
        assert!(
            key.len() <= 256,
            "{key}: longer than ngx_wasm_module's max_metric_name_length (256)"
        );
        let (got_name, got_labels) = kong_parse(&key, &patterns);
        assert_eq!(got_name, want_name, "{name}");
        assert_eq!(got_labels, want_labels, "{name}");
    }
}

/// Every series a shipped configuration defines at load fits under the cap, fits Kong's
/// name length, and Kong's label patterns read a decision counter's labels back.
#[test]
fn shipped_configs_define_every_series_at_load_within_the_cap() {
    use azure_ml_kong::metrics::{catalog, MAX_SERIES};
    let patterns = label_patterns(&meta());
    let found = all_configs();
    assert!(!found.is_empty());
    for f in found {
        let bytes = serde_json::to_vec(&f.config).expect("serialize config");
        let filter = azure_ml_kong::engine::Filter::from_json(&bytes)
            .unwrap_or_else(|e| panic!("{} {}: {e}", f.file, f.at));
        let (series, cut) = catalog(Some(&filter));
        assert_eq!(cut, 0, "{} {}: over {MAX_SERIES} series", f.file, f.at);
        for s in &series {
            let key = format!("pw:{FILTER}:{}", s.name);
            assert!(
                key.len() <= 256,
                "{key}: longer than max_metric_name_length"
            );
            let (name, labels) = kong_parse(&key, &patterns);
            assert!(name.starts_with("pw_azure_ml_kong_"), "{key} -> {name}");
            if let Some(d) = &s.decision {
                let route = d
                    .route
                    .as_deref()
                    .map_or("unmatched".to_string(), azure_ml_kong::metrics::label);
                let want = [
                    ("route", route.as_str()),
                    ("caller", d.caller.as_str()),
                    ("decision", d.decision),
                    ("reason", d.reason),
                ]
                .map(|(a, b)| (a.to_string(), b.to_string()));
                assert_eq!(name, "pw_azure_ml_kong_decisions_total", "{key}");
                assert_eq!(labels, want.to_vec(), "{key}");
            }
        }
        eprintln!("{} {}: {} series", f.file, f.at, series.len());
    }
}

// ------------------------------------------------------------------------------------------
// docker-compose.yml, Dockerfiles, kong.conf

fn compose() -> Value {
    yaml("docker-compose.yml")
}

/// (source, target) of every bind mount of a service, short or long syntax.
fn binds(svc: &Value) -> Vec<(String, String)> {
    svc["volumes"]
        .as_array()
        .map(|vs| {
            vs.iter()
                .filter_map(|v| match v {
                    Value::String(s) => {
                        let mut it = s.split(':');
                        Some((it.next()?.to_string(), it.next()?.to_string()))
                    }
                    Value::Object(o) if o.get("type") == Some(&json!("bind")) => Some((
                        o["source"].as_str()?.to_string(),
                        o["target"].as_str()?.to_string(),
                    )),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

fn kong_conf() -> Vec<(String, String)> {
    read("kong/kong.conf")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("kong.conf: bad line {l:?}"));
            let v = v.split(" #").next().unwrap_or("").trim();
            (k.trim().to_string(), v.to_string())
        })
        .collect()
}

#[test]
fn compose_parses_and_everything_it_uses_exists() {
    let c = compose();
    let services = c["services"].as_object().expect("compose: services");
    let makefile = read("Makefile");
    let mut problems = Vec::new();
    for (name, svc) in services {
        if let Some(b) = svc.get("build") {
            let ctx = b["context"].as_str().unwrap_or(".");
            let df = b["dockerfile"].as_str().unwrap_or("Dockerfile");
            let df_path = root().join(ctx).join(df);
            if !df_path.is_file() {
                problems.push(format!("{name}: Dockerfile {} missing", df_path.display()));
            }
            let ignore = PathBuf::from(format!("{}.dockerignore", df_path.display()));
            if !ignore.is_file() && !root().join(ctx).join(".dockerignore").is_file() {
                problems.push(format!(
                    "{name}: no .dockerignore: target/ would be sent as build context"
                ));
            }
        }
        for (src, _) in binds(svc) {
            let rel = src.trim_start_matches("./");
            if rel.starts_with("target/") {
                // A build artifact: fine if the Makefile builds it before `docker compose up`.
                let built = makefile.contains(rel);
                let kong_up_builds = makefile
                    .lines()
                    .any(|l| l.starts_with("kong-up:") && l.contains("wasm"));
                if !(built && kong_up_builds) {
                    problems.push(format!(
                        "{name}: mounts {rel}, which the Makefile's kong-up target does not build"
                    ));
                }
            } else if !root().join(rel).exists() {
                problems.push(format!("{name}: mounts {rel}, which does not exist"));
            }
        }
        for p in svc["ports"].as_array().cloned().unwrap_or_default() {
            let p = p.as_str().unwrap_or("").to_string();
            if !p.starts_with("127.0.0.1:") {
                problems.push(format!("{name}: port {p} is not bound to 127.0.0.1"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn compose_runs_kong_3_9_with_the_filter() {
    let c = compose();
    let kong = &c["services"]["kong"];
    let image = kong["image"].as_str().expect("kong image");
    assert!(
        regex::Regex::new(r"^kong:3\.9\.[0-9]+$")
            .expect("re")
            .is_match(image),
        "pin an exact Kong 3.9.x release (Wasm filters are gone after 3.9): {image}"
    );
    let mounts = binds(kong);
    let target_of = |src: &str| {
        mounts
            .iter()
            .find(|(s, _)| s.trim_start_matches("./") == src)
            .map(|(_, t)| t.clone())
            .unwrap_or_else(|| panic!("kong does not mount {src}"))
    };
    let conf = kong_conf();
    let get = |k: &str| {
        conf.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("kong/kong.conf lacks {k}"))
    };
    assert_eq!(target_of("kong/kong.conf"), "/etc/kong/kong.conf");
    let filters_path = get("wasm_filters_path");
    assert_eq!(
        target_of("target/wasm32-wasip1/release/azure_ml_kong.wasm"),
        format!("{filters_path}/{FILTER}.wasm")
    );
    assert_eq!(
        target_of("kong/azure_ml_kong.meta.json"),
        format!("{filters_path}/{FILTER}.meta.json")
    );
    assert_eq!(target_of("kong/kong.yml"), get("declarative_config"));
    assert_eq!(get("wasm"), "on");
    assert_eq!(get("database"), "off");
    assert!(
        !get("nginx_wasm_shm_kv").is_empty(),
        "the filter needs the `*` shm_kv zone"
    );
    assert_eq!(get("nginx_wasm_proxy_wasm_lua_resolver"), "on");
    assert_eq!(get("log_level"), "notice");
    // The environment must not silently override those.
    let env = kong["environment"].as_object().cloned().unwrap_or_default();
    for k in [
        "KONG_WASM",
        "KONG_WASM_FILTERS_PATH",
        "KONG_DATABASE",
        "KONG_LOG_LEVEL",
        "KONG_NGINX_WASM_SHM_KV",
    ] {
        assert!(
            !env.contains_key(k),
            "{k} in compose overrides kong/kong.conf"
        );
    }
    let kong_yml = yaml("kong/kong.yml");
    assert_eq!(kong_yml["_format_version"], json!("3.0"));
}

#[test]
fn mock_dockerfiles_build_the_workspace_binaries() {
    let cargo = read("Cargo.toml");
    let rust_version = cargo
        .lines()
        .find_map(|l| l.trim().strip_prefix("rust-version = "))
        .map(|v| v.trim_matches('"').to_string())
        .expect("rust-version in Cargo.toml");
    let mocks = read("mocks/Cargo.toml");
    let c = compose();
    for svc in ["mock-idp", "mock-aml"] {
        let df_rel = c["services"][svc]["build"]["dockerfile"]
            .as_str()
            .expect("dockerfile");
        let df = read(df_rel);
        assert!(
            df.contains(&format!("ARG RUST_VERSION={rust_version}\n")),
            "{df_rel}: builder must use rust {rust_version} (rust-version in Cargo.toml)"
        );
        assert!(
            df.contains("-p aml-mocks") && df.contains(&format!("--bin {svc}")),
            "{df_rel}"
        );
        assert!(
            mocks.contains(&format!("name = \"{svc}\"")),
            "mocks/Cargo.toml has no bin {svc}"
        );
        assert!(
            df.contains("USER "),
            "{df_rel}: run the mock as a non-root user"
        );
    }
}

#[test]
fn docs_and_examples_exist() {
    for f in [
        "docs/kong.md",
        "examples/README.md",
        "kong/kong.plugins.yml",
    ] {
        assert!(Path::new(&root().join(f)).is_file(), "{f} missing");
    }
}

/// `routes[0].match`: keys (strings) joined by `.`, indices (numbers) as `[i]`.
fn render_path(at: &[Value]) -> String {
    let mut out = String::new();
    for step in at {
        match step {
            Value::String(k) if out.is_empty() => out.push_str(k),
            Value::String(k) => {
                out.push('.');
                out.push_str(k);
            }
            n => out.push_str(&format!("[{n}]")),
        }
    }
    out
}

/// One change to a config and where an error about it must point.
struct Broken {
    doc: Value,
    /// The field an error must name.
    path: String,
    /// What its message must contain.
    says: String,
}

/// Every variant of a config with one change: a wrong-typed value, a container of the other
/// kind, an unknown key or a missing key.
fn broken_variants(v: &Value) -> Vec<Broken> {
    fn walk(v: &Value, at: &mut Vec<Value>, out: &mut Vec<Broken>, root: &Value) {
        // `at` holds the path as keys (strings) and indices (numbers).
        let replace = |with: Option<Value>, rename: Option<String>| {
            let mut doc = root.clone();
            let (last, parents) = at.split_last().expect("not the root");
            let mut node = &mut doc;
            for step in parents {
                node = match step {
                    Value::String(k) => node.get_mut(k.as_str()).expect("key"),
                    n => node
                        .get_mut(n.as_u64().expect("index") as usize)
                        .expect("index"),
                };
            }
            let (path, says) = match (last, node) {
                (Value::String(k), Value::Object(m)) => {
                    let old = m.remove(k.as_str()).expect("key");
                    if let Some(new_key) = rename {
                        m.insert(new_key.clone(), old);
                        let mut to = parents.to_vec();
                        to.push(Value::String(new_key.clone()));
                        (render_path(&to), format!("unknown field `{new_key}`"))
                    } else if let Some(w) = with {
                        m.insert(k.clone(), w);
                        (render_path(at), String::new())
                    } else {
                        (render_path(parents), format!("missing field `{k}`"))
                    }
                }
                (n, Value::Array(a)) => {
                    let i = n.as_u64().expect("index") as usize;
                    a[i] = with.unwrap_or(Value::Null);
                    (render_path(at), String::new())
                }
                _ => unreachable!(),
            };
            Broken { doc, path, says }
        };
        if !at.is_empty() {
            let wrong = match v {
                Value::String(_) => json!(5),
                Value::Number(_) | Value::Bool(_) => json!("x"),
                Value::Array(_) => json!("x"),
                Value::Object(_) => json!(7),
                Value::Null => json!({"x": 1}),
            };
            out.push(replace(Some(wrong), None));
            // Containers of the other kind, with something in them.
            let other = match v {
                Value::Array(_) | Value::String(_) => json!({"x": 1}),
                _ => json!([1]),
            };
            out.push(replace(Some(other), None));
            if let Some(Value::String(k)) = at.last() {
                out.push(replace(None, Some(format!("{k}_x"))));
                out.push(replace(None, None));
            }
        }
        match v {
            Value::Object(m) => {
                for (k, child) in m {
                    at.push(Value::String(k.clone()));
                    walk(child, at, out, root);
                    at.pop();
                }
            }
            Value::Array(a) => {
                for (i, child) in a.iter().enumerate() {
                    at.push(json!(i));
                    walk(child, at, out, root);
                    at.pop();
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(v, &mut Vec::new(), &mut out, v);
    out
}

/// Each config with one thing broken: the error names the field that was broken (an
/// unknown key itself; for a missing key, the object that lacks it), whether the document
/// is compact or pretty-printed.
#[test]
fn config_errors_name_the_field_that_was_broken() {
    let mut compared = 0;
    let mut differ = Vec::new();
    for f in all_configs() {
        for broken in broken_variants(&f.config) {
            for text in [
                serde_json::to_string(&broken.doc).expect("json"),
                serde_json::to_string_pretty(&broken.doc).expect("json"),
            ] {
                // Some changes are still valid (an optional field dropped, any value
                // where `equals` takes any JSON).
                let Err(ours) = azure_ml_kong::config::parse(text.as_bytes()) else {
                    continue;
                };
                compared += 1;
                if ours.path != broken.path || !ours.message.contains(&broken.says) {
                    differ.push(format!(
                        "{}: {ours}, want {:?} saying {:?}",
                        f.file, broken.path, broken.says
                    ));
                }
            }
        }
    }
    eprintln!("{compared} broken configs: each error names the broken field");
    assert!(compared > 200, "only {compared} broken configs");
    assert!(
        differ.is_empty(),
        "{} of {compared} differ:\n{}",
        differ.len(),
        differ.join("\n")
    );
}
