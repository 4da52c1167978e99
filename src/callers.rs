//! The caller registry: "who owns this token?".
//!
//! `callers` maps client application ids to a registered name, owner and contact. A
//! verified token names its caller by `azp` (v2 tokens) or, without it, `appid` (v1). Only
//! verified claims are ever looked up here: an unverified token has no caller.
//!
//! Names are lower-case `[a-z0-9-]`, 1–64 characters: the same string is the metric label,
//! the `x-caller-name` header value and the audit field, so they can never disagree.
//! `unregistered` is reserved: it stands for every request without a registered caller
//! (metric label and audit field), which keeps the label set bounded by the registry.

use std::collections::HashMap;

use serde_json::Value;

use crate::claims::{lookup, Claims};
use crate::config::{AuthMode, ConfigError, FilterConfig, UnknownCallers};
use crate::reason::Reason;

/// The label and audit value for a request without a registered caller.
pub const UNREGISTERED: &str = "unregistered";
/// The upstream header naming the registered caller (set in place, `""` when none).
pub const X_CALLER_NAME: &str = "x-caller-name";
/// Claims that name the client application, in order of preference.
pub const APP_ID_CLAIMS: [&str; 2] = ["azp", "appid"];

const MAX_NAME: usize = 64;
const MAX_TEXT: usize = 256;

/// One registered caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub owner: Option<String>,
    pub contact: Option<String>,
}

/// The compiled registry and each route's allow-list.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    callers: Vec<Caller>,
    by_app_id: HashMap<String, usize>,
    /// Per route index: the caller indexes it admits (`None`: any caller).
    route_allow: Vec<Option<Vec<usize>>>,
    unknown: UnknownCallers,
}

impl Registry {
    /// Compile `callers`, `unknown_callers` and every route's `callers`.
    pub fn compile(cfg: &FilterConfig) -> Result<Registry, ConfigError> {
        let mut reg = Registry {
            unknown: cfg.unknown_callers,
            ..Registry::default()
        };
        for (i, c) in cfg.callers.iter().enumerate() {
            let base = format!("callers[{i}]");
            check_name(&format!("{base}.name"), &c.name)?;
            if let Some(j) = reg.callers.iter().position(|o| o.name == c.name) {
                return Err(ConfigError::new(
                    format!("{base}.name"),
                    format!("duplicate caller name (also callers[{j}].name)"),
                ));
            }
            if c.app_ids.is_empty() {
                return Err(ConfigError::new(
                    format!("{base}.app_ids"),
                    "expected at least one client application id",
                ));
            }
            for (k, id) in c.app_ids.iter().enumerate() {
                let p = format!("{base}.app_ids[{k}]");
                if id.is_empty() || id.len() > MAX_TEXT || id.chars().any(char::is_control) {
                    return Err(ConfigError::new(
                        p,
                        "expected 1 to 256 characters without control characters",
                    ));
                }
                if let Some(&j) = reg.by_app_id.get(id) {
                    return Err(ConfigError::new(
                        p,
                        format!("this app id is already registered by callers[{j}]"),
                    ));
                }
                reg.by_app_id.insert(id.clone(), i);
            }
            for (field, v) in [("owner", &c.owner), ("contact", &c.contact)] {
                if let Some(v) = v {
                    if v.len() > MAX_TEXT || v.chars().any(char::is_control) {
                        return Err(ConfigError::new(
                            format!("{base}.{field}"),
                            "expected at most 256 characters without control characters",
                        ));
                    }
                }
            }
            reg.callers.push(Caller {
                name: c.name.clone(),
                owner: c.owner.clone(),
                contact: c.contact.clone(),
            });
        }
        for (i, r) in cfg.routes.iter().enumerate() {
            let Some(names) = &r.callers else {
                reg.route_allow.push(None);
                continue;
            };
            let base = format!("routes[{i}].callers");
            if r.auth != AuthMode::Required {
                return Err(ConfigError::new(
                    base,
                    "a caller allow-list needs `auth: required` (only verified tokens name a caller)",
                ));
            }
            if names.is_empty() {
                return Err(ConfigError::new(
                    base,
                    "expected at least one caller name (leave it out to admit every caller)",
                ));
            }
            let mut allow = Vec::with_capacity(names.len());
            for (k, n) in names.iter().enumerate() {
                match reg.callers.iter().position(|c| c.name == *n) {
                    Some(idx) => allow.push(idx),
                    None => {
                        return Err(ConfigError::new(
                            format!("{base}[{k}]"),
                            "no caller of this name in `callers`",
                        ))
                    }
                }
            }
            reg.route_allow.push(Some(allow));
        }
        if !reg.callers.is_empty() {
            if let Some(i) = cfg
                .claims_to_headers
                .iter()
                .position(|c| c.header.eq_ignore_ascii_case(X_CALLER_NAME))
            {
                return Err(ConfigError::new(
                    format!("claims_to_headers[{i}].header"),
                    "x-caller-name is set from the caller registry (`callers`)",
                ));
            }
        }
        Ok(reg)
    }

    /// Whether the registry is in use (then `x-caller-name` is the filter's header).
    pub fn is_active(&self) -> bool {
        !self.callers.is_empty()
    }

    /// The registered caller of verified `claims`: `azp`, else `appid`.
    pub fn identify(&self, claims: &Claims) -> Option<usize> {
        let app = APP_ID_CLAIMS.iter().find_map(|c| match lookup(claims, c) {
            Some(Value::String(s)) if !s.is_empty() => Some(s.as_str()),
            _ => None,
        })?;
        self.by_app_id.get(app).copied()
    }

    /// The registered callers' names (label-safe, checked at load).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.callers.iter().map(|c| c.name.as_str())
    }

    pub fn get(&self, caller: usize) -> Option<&Caller> {
        self.callers.get(caller)
    }

    /// The caller's name, or [`UNREGISTERED`].
    pub fn name_of(&self, caller: Option<usize>) -> &str {
        caller
            .and_then(|c| self.callers.get(c))
            .map_or(UNREGISTERED, |c| c.name.as_str())
    }

    /// May this verified caller use the route at `route_index` (`None`: no route matched)?
    pub fn admit(&self, route_index: Option<usize>, caller: Option<usize>) -> Result<(), Reason> {
        if caller.is_none() && self.unknown == UnknownCallers::Deny {
            return Err(Reason::CallerUnknown);
        }
        let allow = route_index
            .and_then(|i| self.route_allow.get(i))
            .and_then(Option::as_ref);
        match (allow, caller) {
            (None, _) => Ok(()),
            (Some(list), Some(c)) if list.contains(&c) => Ok(()),
            (Some(_), _) => Err(Reason::CallerNotAllowed),
        }
    }
}

fn check_name(path: &str, name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !ok {
        return Err(ConfigError::new(
            path,
            "expected 1 to 64 characters from a-z, 0-9 and `-` (the name is a metric label and a header value)",
        ));
    }
    if name == UNREGISTERED {
        return Err(ConfigError::new(
            path,
            "`unregistered` is reserved for requests without a registered caller",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    fn registry(extra: &str) -> Result<Registry, ConfigError> {
        let json = format!(
            r#"{{"providers": [{{"name": "p", "issuers": ["https://i/"], "jwks_uri": "https://i/k", "audiences": ["a"]}}],
                "routes": [{{"name": "fraud", "callers": ["fraud-scoring"]}}, {{"name": "open"}}],
                "callers": [
                  {{"name": "fraud-scoring", "app_ids": ["app-1", "app-1b"], "owner": "fraud-team", "contact": "oncall@x"}},
                  {{"name": "batch", "app_ids": ["app-2"]}}
                ]{extra}}}"#
        );
        Registry::compile(&parse(json.as_bytes())?)
    }

    fn claims(json: &str) -> Claims {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn azp_then_appid_names_the_caller() {
        let r = registry("").unwrap();
        assert_eq!(r.identify(&claims(r#"{"azp": "app-1"}"#)), Some(0));
        assert_eq!(r.identify(&claims(r#"{"appid": "app-1b"}"#)), Some(0));
        assert_eq!(r.identify(&claims(r#"{"appid": "app-2"}"#)), Some(1));
        // azp wins over appid; an unknown azp is not rescued by a known appid.
        assert_eq!(
            r.identify(&claims(r#"{"azp": "other", "appid": "app-2"}"#)),
            None
        );
        assert_eq!(r.identify(&claims(r#"{"azp": 7}"#)), None);
        assert_eq!(r.identify(&claims(r#"{}"#)), None);
        assert_eq!(r.name_of(Some(0)), "fraud-scoring");
        assert_eq!(r.name_of(None), UNREGISTERED);
        assert_eq!(
            r.get(0).and_then(|c| c.owner.as_deref()),
            Some("fraud-team")
        );
        assert!(r.is_active());
    }

    #[test]
    fn route_allow_lists_and_unknown_callers() {
        let r = registry("").unwrap();
        assert_eq!(r.admit(Some(0), Some(0)), Ok(()));
        assert_eq!(r.admit(Some(0), Some(1)), Err(Reason::CallerNotAllowed));
        assert_eq!(r.admit(Some(0), None), Err(Reason::CallerNotAllowed));
        assert_eq!(
            r.admit(Some(1), None),
            Ok(()),
            "unknown_callers defaults to allow"
        );
        assert_eq!(r.admit(None, None), Ok(()));
        let deny = registry(r#", "unknown_callers": "deny""#).unwrap();
        assert_eq!(deny.admit(Some(1), None), Err(Reason::CallerUnknown));
        assert_eq!(deny.admit(None, None), Err(Reason::CallerUnknown));
        assert_eq!(deny.admit(Some(1), Some(1)), Ok(()));
        assert_eq!(deny.admit(Some(0), None), Err(Reason::CallerUnknown));
    }

    #[test]
    fn config_errors_name_the_field() {
        let err = |json: &str| {
            let cfg = parse(json.as_bytes()).map(|c| Registry::compile(&c).map(|_| ()));
            match cfg {
                Ok(Err(e)) | Err(e) => e.path,
                Ok(Ok(())) => panic!("accepted: {json}"),
            }
        };
        let base = |routes: &str, callers: &str| {
            format!(
                r#"{{"providers": [{{"name": "p", "issuers": ["https://i/"], "jwks_uri": "https://i/k", "audiences": ["a"]}}],
                    "routes": {routes}, "callers": {callers}}}"#
            )
        };
        let one = r#"[{"name": "a", "app_ids": ["x"]}]"#;
        let cases = [
            (
                base(
                    r#"[{"name": "r"}]"#,
                    r#"[{"name": "a", "app_ids": ["x"]}, {"name": "a", "app_ids": ["y"]}]"#,
                ),
                "callers[1].name",
            ),
            (
                base(
                    r#"[{"name": "r"}]"#,
                    r#"[{"name": "a", "app_ids": ["x"]}, {"name": "b", "app_ids": ["y", "x"]}]"#,
                ),
                "callers[1].app_ids[1]",
            ),
            (
                base(
                    r#"[{"name": "r"}]"#,
                    r#"[{"name": "Fraud Scoring", "app_ids": ["x"]}]"#,
                ),
                "callers[0].name",
            ),
            (
                base(
                    r#"[{"name": "r"}]"#,
                    r#"[{"name": "unregistered", "app_ids": ["x"]}]"#,
                ),
                "callers[0].name",
            ),
            (
                base(r#"[{"name": "r"}]"#, r#"[{"name": "a", "app_ids": []}]"#),
                "callers[0].app_ids",
            ),
            (
                base(r#"[{"name": "r"}]"#, r#"[{"name": "a", "app_ids": [""]}]"#),
                "callers[0].app_ids[0]",
            ),
            (
                base(
                    r#"[{"name": "r"}]"#,
                    r#"[{"name": "a", "app_ids": ["x"], "owner": "a\nb"}]"#,
                ),
                "callers[0].owner",
            ),
            (
                base(
                    r#"[{"name": "r"}]"#,
                    r#"[{"name": "a", "app_ids": ["x"], "phone": "1"}]"#,
                ),
                "callers[0].phone",
            ),
            (
                base(r#"[{"name": "r", "callers": ["b"]}]"#, one),
                "routes[0].callers[0]",
            ),
            (
                base(r#"[{"name": "r", "callers": []}]"#, one),
                "routes[0].callers",
            ),
            (
                base(
                    r#"[{"name": "r", "auth": "optional", "callers": ["a"]}]"#,
                    one,
                ),
                "routes[0].callers",
            ),
        ];
        for (json, want) in cases {
            assert_eq!(err(&json), want, "{json}");
        }
        let clash = base(r#"[{"name": "r"}]"#, one).replace(
            r#""routes""#,
            r#""claims_to_headers": [{"claim": "azp", "header": "x-caller-name"}], "routes""#,
        );
        assert_eq!(err(&clash), "claims_to_headers[0].header");
    }
}
