//! Every independent error of a configuration, for operators (`azure-ml-kong check-config`).
//!
//! The filter loads with `Filter::from_json`, which stops at its first error. This runs that
//! same load again and again, each time setting aside the part the last error named (an
//! optional field dropped to its default, or a list element replaced by a valid stand-in that
//! keeps its name, so references to it still resolve), until the config loads. Every error is
//! thus found by the filter's own checks, and the first one is exactly the filter's.

use serde_json::{json, Map, Value};

use crate::config::ConfigError;
use crate::engine::Filter;

/// Enough for any real config; bounds the work on a pathological one.
const MAX_ERRORS: usize = 64;

/// Top-level fields that are lists of named or unnamed parts.
const LISTS: [&str; 6] = [
    "providers",
    "routes",
    "token_sources",
    "claims_to_headers",
    "upstream_credentials",
    "callers",
];

/// Per list: the fields of an element that cannot be dropped on their own (required, or tied
/// to others); an error in one of them sets the whole element aside.
fn kept_fields(list: &str) -> &'static [&'static str] {
    match list {
        "routes" => &["name"],
        "providers" => &[
            "name",
            "issuers",
            "audiences",
            "discovery_uri",
            "jwks_uri",
            "hmac_secret",
            "algorithms",
        ],
        "callers" => &["name", "app_ids"],
        "upstream_credentials" => &["name", "managed_identity", "client_credentials"],
        "token_sources" => &["header", "prefix", "query", "cookie"],
        "claims_to_headers" => &["claim", "header"],
        _ => &[],
    }
}

/// Every error `Filter::from_json(bytes)` would meet if the earlier ones were fixed, the
/// filter's own first. Empty when the filter loads the config.
pub fn all_errors(bytes: &[u8]) -> Vec<ConfigError> {
    let first = match Filter::from_json(bytes) {
        Ok(_) => return Vec::new(),
        Err(e) => e,
    };
    let mut doc = match serde_json::from_slice::<Value>(bytes) {
        Ok(v @ Value::Object(_)) => v,
        _ => return vec![first],
    };
    let mut errors = vec![first.clone()];
    let (mut current, mut coarse) = (first, false);
    while errors.len() < MAX_ERRORS && set_aside(&mut doc, &current, coarse) {
        let bytes = serde_json::to_vec(&doc).unwrap_or_default();
        match Filter::from_json(&bytes) {
            Ok(_) => break,
            // The same error again: setting aside the field was not enough; set aside its
            // whole part once, then give up.
            Err(e) if errors.contains(&e) => {
                if coarse {
                    break;
                }
                (current, coarse) = (e, true);
            }
            Err(e) => {
                errors.push(e.clone());
                (current, coarse) = (e, false);
            }
        }
    }
    errors
}

/// One step of a field path: `routes[2].require.any[0]` is `routes`, 2, `require`, `any`, 0.
#[derive(Debug, PartialEq)]
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

fn steps(path: &str) -> Vec<Step<'_>> {
    let mut out = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let mut rest = part;
        if let Some(i) = rest.find('[') {
            if let Some(key) = rest.get(..i).filter(|k| !k.is_empty()) {
                out.push(Step::Key(key));
            }
            rest = rest.get(i..).unwrap_or("");
            while let Some(end) = rest.find(']') {
                match rest.get(1..end).and_then(|n| n.parse().ok()) {
                    Some(n) => out.push(Step::Index(n)),
                    None => return out,
                }
                rest = rest.get(end + 1..).unwrap_or("");
                if !rest.starts_with('[') {
                    break;
                }
            }
        } else {
            out.push(Step::Key(rest));
        }
    }
    out
}

/// Change `doc` so that the part `e` names no longer fails; false when no change applies.
/// `coarse` sets aside a whole list element or top-level object instead of one field.
fn set_aside(doc: &mut Value, e: &ConfigError, coarse: bool) -> bool {
    let Some(top) = doc.as_object_mut() else {
        return false;
    };
    let path = steps(&e.path);
    let Some(Step::Key(k0)) = path.first() else {
        return missing_top_level(top, &e.message);
    };
    let k0 = *k0;
    if LISTS.contains(&k0) {
        return set_aside_in_list(top, k0, path.get(1..).unwrap_or(&[]), &e.message, coarse);
    }
    match (top.get_mut(k0), path.get(1)) {
        (Some(Value::Object(o)), Some(Step::Key(k1))) if !coarse && o.contains_key(*k1) => {
            o.remove(*k1);
            true
        }
        (Some(_), _) => top.remove(k0).is_some(),
        (None, _) => false,
    }
}

/// `missing field `providers``: a stand-in list, so the rest can be checked.
fn missing_top_level(top: &mut Map<String, Value>, message: &str) -> bool {
    for list in ["providers", "routes"] {
        if message.contains(&format!("`{list}`")) && !top.contains_key(list) {
            top.insert(list.into(), json!([stand_in(list, 0, None)]));
            return true;
        }
    }
    false
}

fn set_aside_in_list(
    top: &mut Map<String, Value>,
    list: &str,
    rest: &[Step],
    message: &str,
    coarse: bool,
) -> bool {
    let Some(Step::Index(i)) = rest.first() else {
        // The list itself (empty, or not a list): required ones get a stand-in element,
        // the others their default.
        return match list {
            "providers" | "routes" => {
                let had = top.insert(list.into(), json!([stand_in(list, 0, None)]));
                had.is_some()
            }
            _ => top.remove(list).is_some(),
        };
    };
    let i = *i;
    let Some(Value::Array(items)) = top.get_mut(list) else {
        return false;
    };
    let Some(item) = items.get_mut(i) else {
        return false;
    };
    let field = match rest.get(1) {
        Some(Step::Key(k)) => Some(*k),
        _ => None,
    };
    if let (false, Some(k1), Some(obj)) = (coarse, field, item.as_object_mut()) {
        if !kept_fields(list).contains(&k1) && obj.contains_key(k1) {
            // One header of `set_request_headers`, not all of them.
            if let (Some(Step::Key(k2)), Some(Value::Object(m))) = (rest.get(2), obj.get_mut(k1)) {
                if k1 == "set_request_headers" && m.remove(*k2).is_some() {
                    return true;
                }
            }
            obj.remove(k1);
            return true;
        }
    }
    // A required field missing: the stand-in's, so the element's other fields are checked.
    if let (false, None, Some(obj)) = (coarse, field, item.as_object_mut()) {
        let missing = message
            .strip_prefix("missing field `")
            .and_then(|m| m.strip_suffix('`'));
        let filler = missing.and_then(|m| stand_in(list, i, None).get(m).cloned());
        if let (Some(m), Some(v)) = (missing, filler) {
            if !obj.contains_key(m) {
                obj.insert(m.to_string(), v);
                return true;
            }
        }
    }
    let name = item
        .get("name")
        .and_then(Value::as_str)
        .filter(|_| !coarse && field != Some("name"))
        .map(str::to_string);
    *item = stand_in(list, i, name.as_deref());
    true
}

/// A valid element for `list` at index `i`, named `name` if given, else uniquely.
fn stand_in(list: &str, i: usize, name: Option<&str>) -> Value {
    let named = |kind: &str| name.map_or_else(|| format!("set-aside-{kind}-{i}"), str::to_string);
    match list {
        "providers" => json!({
            "name": named("provider"),
            "issuers": [format!("https://set-aside.invalid/{i}/")],
            "jwks_uri": "https://set-aside.invalid/keys",
            "audiences": ["set-aside"],
        }),
        "routes" => json!({"name": named("route")}),
        "token_sources" => json!({"header": format!("x-set-aside-token-{i}")}),
        "claims_to_headers" => {
            json!({"claim": "sub", "header": format!("x-set-aside-claim-{i}")})
        }
        "upstream_credentials" => json!({"name": named("credential"), "managed_identity": {}}),
        "callers" => json!({
            "name": named("caller"),
            "app_ids": [format!("set-aside-app-{i}")],
        }),
        _ => Value::Null,
    }
}

#[cfg(test)]
mod tests;
