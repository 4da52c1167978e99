//! Verified token claims and the claim paths shared by policy, rate limits and
//! annotation: their syntax (checked at load) and their lookup.

use serde_json::Value;

use crate::config::ConfigError;

/// A token's claim set (the JWT payload object).
pub type Claims = serde_json::Map<String, Value>;

/// Look up a claim by name or dotted path into nested objects (`"a.b.c"`).
/// A top-level claim whose name itself contains dots wins over the nested reading.
pub fn lookup<'c>(claims: &'c Claims, path: &str) -> Option<&'c Value> {
    if let Some(v) = claims.get(path) {
        return Some(v);
    }
    let mut parts = path.split('.');
    let first = parts.next()?;
    let mut cur = claims.get(first)?;
    for p in parts {
        cur = cur.as_object()?.get(p)?;
    }
    Some(cur)
}

/// A claim path as configured (`oid`, `a.b`): non-empty segments, no control characters
/// or braces. `path` names the field in the error.
pub fn check_claim_path(path: &str, claim: &str) -> Result<(), ConfigError> {
    if claim.is_empty() || claim.split('.').any(str::is_empty) {
        return Err(ConfigError::new(
            path,
            "expected a claim name or a dotted path such as `a.b`",
        ));
    }
    if claim
        .chars()
        .any(|c| c.is_control() || c == '{' || c == '}')
    {
        return Err(ConfigError::new(
            path,
            "claim names cannot contain control characters or braces",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotted_paths() {
        let c: Claims =
            serde_json::from_str(r#"{"a":{"b":{"c":1}},"x.y":2,"roles":["r"]}"#).unwrap();
        assert_eq!(lookup(&c, "a.b.c"), Some(&Value::from(1)));
        assert_eq!(lookup(&c, "x.y"), Some(&Value::from(2)));
        assert_eq!(lookup(&c, "a.z"), None);
        assert!(lookup(&c, "roles").is_some());
    }
}
