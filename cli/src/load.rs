//! Finding filter configs in a file: a bare filter config (JSON or YAML), a Kong declarative
//! file (`filter_chains[].filters[]` and `plugins[]` entries named `azure_ml_kong`) or an
//! Envoy bootstrap (every `envoy.filters.http.wasm` filter's `configuration` StringValue).

use std::path::Path;

use serde_json::{json, Value};

pub const FILTER: &str = "azure_ml_kong";

/// One filter config found in a file.
pub struct Found {
    /// Where in the file, e.g. `services[0].routes[1].filter_chains[0].filters[0].config`.
    pub at: String,
    /// The config, or why it could not be read as JSON.
    pub config: Result<Value, String>,
}

pub fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Parse a document as JSON, else YAML.
pub fn parse_doc(text: &str) -> Result<Value, String> {
    match serde_json::from_str::<Value>(text) {
        Ok(v) => Ok(v),
        Err(je) => serde_norway::from_str::<Value>(text)
            .map_err(|ye| format!("neither JSON ({je}) nor YAML ({ye})")),
    }
}

pub fn find_configs(path: &Path) -> Result<Vec<Found>, String> {
    let doc = parse_doc(&read(path)?).map_err(|e| format!("{}: {e}", path.display()))?;
    // A Kong or Envoy file has one of these at the top; anything else is read as a bare
    // filter config (so a broken one gets the filter's own errors).
    let host_file = ["_format_version", "services", "static_resources", "plugins"]
        .iter()
        .any(|k| doc.get(k).is_some())
        && doc.get("providers").is_none();
    if !host_file {
        return Ok(vec![Found {
            at: "(whole file)".into(),
            config: Ok(doc),
        }]);
    }
    let mut out = Vec::new();
    walk(&doc, "", &mut out);
    if out.is_empty() {
        return Err(format!(
            "{}: no filter config found (expected a filter config with providers and routes, \
             a kong.yml with {FILTER} filters or plugins, or an Envoy bootstrap with a wasm filter)",
            path.display()
        ));
    }
    Ok(out)
}

fn config_value(v: &Value) -> Result<Value, String> {
    match v {
        // Without meta.json Kong takes the config as a JSON string.
        Value::String(s) => {
            serde_json::from_str(s).map_err(|e| format!("config string is not JSON: {e}"))
        }
        other => Ok(other.clone()),
    }
}

fn join(at: &str, k: &str) -> String {
    if at.is_empty() {
        k.to_string()
    } else {
        format!("{at}.{k}")
    }
}

fn walk(v: &Value, at: &str, out: &mut Vec<Found>) {
    match v {
        Value::Object(m) => {
            for key in ["filter_chains", "plugins"] {
                let Some(Value::Array(items)) = m.get(key) else {
                    continue;
                };
                for (i, item) in items.iter().enumerate() {
                    let here = format!("{}[{i}]", join(at, key));
                    if key == "filter_chains" {
                        let Some(Value::Array(filters)) = item.get("filters") else {
                            continue;
                        };
                        for (j, f) in filters.iter().enumerate() {
                            if f.get("name") == Some(&json!(FILTER)) {
                                let at = format!("{here}.filters[{j}].config");
                                let config = f
                                    .get("config")
                                    .ok_or_else(|| "filter without config".to_string())
                                    .and_then(config_value);
                                out.push(Found { at, config });
                            }
                        }
                    } else if item.get("name") == Some(&json!(FILTER)) {
                        let at = format!("{here}.config");
                        let config = item
                            .get("config")
                            .ok_or_else(|| "plugin without config".to_string())
                            .and_then(config_value);
                        out.push(Found { at, config });
                    }
                }
            }
            let is_wasm = m
                .get("@type")
                .and_then(Value::as_str)
                .is_some_and(|t| t.ends_with("envoy.extensions.filters.http.wasm.v3.Wasm"));
            if is_wasm {
                let here = format!("{}.config.configuration.value", at);
                let config = match v.pointer("/config/configuration/value") {
                    Some(Value::String(s)) => {
                        serde_json::from_str(s).map_err(|e| format!("not JSON: {e}"))
                    }
                    _ => Err(
                        "wasm filter without a google.protobuf.StringValue configuration".into(),
                    ),
                };
                out.push(Found { at: here, config });
            }
            for (k, child) in m {
                walk(child, &join(at, k), out);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                walk(child, &format!("{at}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// The one config `explain` uses: `--at` picks among several.
pub fn one_config(path: &Path, at: Option<&str>) -> Result<(String, Value), String> {
    let found = find_configs(path)?;
    let names: Vec<String> = found.iter().map(|f| f.at.clone()).collect();
    let pick = match at {
        Some(a) => found
            .into_iter()
            .find(|f| f.at == a || f.at.contains(a) || has_route(f, a))
            .ok_or_else(|| format!("--at {a}: none of {names:?}"))?,
        None if found.len() == 1 => found.into_iter().next().ok_or("no config")?,
        None => {
            return Err(format!(
                "{} holds {} filter configs; pick one with --at (e.g. a route name): {names:?}",
                path.display(),
                names.len()
            ))
        }
    };
    let config = pick.config.map_err(|e| format!("{}: {e}", pick.at))?;
    Ok((pick.at, config))
}

/// The config has a filter route of this name.
fn has_route(f: &Found, name: &str) -> bool {
    let routes = f
        .config
        .as_ref()
        .ok()
        .and_then(|c| c.get("routes"))
        .and_then(Value::as_array);
    routes.is_some_and(|r| {
        r.iter()
            .any(|r| r.get("name").and_then(Value::as_str) == Some(name))
    })
}
