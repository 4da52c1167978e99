//! The requirement grammar (`require`), compiled once and evaluated per request.
//!
//! Semantics (where CONFIG.md is silent):
//! - A missing claim (or a JSON `null`) fails every test except `exists: false`.
//! - `equals` / `one_of` compare type-strictly: a string matches a string, a number a
//!   number (numerically: `1` equals `1.0`), a bool a bool.
//! - `contains_any` / `contains_all` read a claim that is an array (its string items)
//!   or a string split on ASCII whitespace (`scp`, `scope`).
//! - `{path.NAME}` / `{claims.NAME}` in string values are substituted at evaluation.
//!   `{claims.NAME}` renders a string, number or bool claim; anything else, or a path
//!   parameter that is not bound, is *unbound*: a value with an unbound substitution
//!   never matches (so `contains_all` with it fails, and `not` of it succeeds). Every
//!   `{` in a value must start one of these two forms (there is no escape).

use serde_json::Value;

use crate::claims::{check_claim_path, lookup, Claims};
use crate::config::{ConfigError, RequirementConfig};

#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    Lit(String),
    Path(String),
    Claim(String),
}

/// A string value, possibly with substitutions.
#[derive(Debug, Clone, PartialEq)]
pub struct Text {
    pieces: Vec<Piece>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    Str(Text),
    Num(serde_json::Number),
    Bool(bool),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Equals(Scalar),
    OneOf(Vec<Scalar>),
    ContainsAny(Vec<Text>),
    ContainsAll(Vec<Text>),
    Exists(bool),
}

/// A compiled requirement node.
#[derive(Debug, Clone, PartialEq)]
pub enum Requirement {
    All(Vec<Requirement>),
    Any(Vec<Requirement>),
    Not(Box<Requirement>),
    Claim { claim: String, op: Op },
}

/// What a requirement is evaluated against: the verified claims and the path
/// parameters the route's template bound.
pub struct EvalInput<'a> {
    pub claims: &'a Claims,
    pub params: &'a [(String, String)],
}

const FORMS: &str = "expected exactly one of all, any, not, claim";
const OPS: &str = "expected exactly one of equals, one_of, contains_any, contains_all, exists";

fn parse_text(path: &str, s: &str, params: &[&str]) -> Result<Text, ConfigError> {
    let mut pieces = Vec::new();
    let mut rest = s;
    while let Some(open) = rest.find('{') {
        let (lit, after) = rest.split_at(open);
        if !lit.is_empty() {
            pieces.push(Piece::Lit(lit.to_string()));
        }
        let after = after.get(1..).unwrap_or("");
        let Some(close) = after.find('}') else {
            return Err(ConfigError::new(
                path,
                "unclosed `{`: substitutions are `{path.NAME}` or `{claims.NAME}`",
            ));
        };
        let inner = after.get(..close).unwrap_or("");
        if let Some(name) = inner.strip_prefix("path.") {
            if !params.contains(&name) {
                return Err(ConfigError::new(
                    path,
                    format!("{{path.{name}}}: the route's match.path binds no parameter `{name}`"),
                ));
            }
            pieces.push(Piece::Path(name.to_string()));
        } else if let Some(name) = inner.strip_prefix("claims.") {
            check_claim_path(path, name)?;
            pieces.push(Piece::Claim(name.to_string()));
        } else {
            return Err(ConfigError::new(
                path,
                format!(
                    "unknown substitution {{{inner}}}: expected {{path.NAME}} or {{claims.NAME}}"
                ),
            ));
        }
        rest = after.get(close + 1..).unwrap_or("");
    }
    if rest.contains('}') {
        return Err(ConfigError::new(path, "unmatched `}`"));
    }
    if !rest.is_empty() {
        pieces.push(Piece::Lit(rest.to_string()));
    }
    Ok(Text { pieces })
}

fn parse_scalar(path: &str, v: &Value, params: &[&str]) -> Result<Scalar, ConfigError> {
    match v {
        Value::String(s) => Ok(Scalar::Str(parse_text(path, s, params)?)),
        Value::Number(n) => Ok(Scalar::Num(n.clone())),
        Value::Bool(b) => Ok(Scalar::Bool(*b)),
        _ => Err(ConfigError::new(
            path,
            "expected a string, number or boolean",
        )),
    }
}

fn parse_texts(path: &str, list: &[String], params: &[&str]) -> Result<Vec<Text>, ConfigError> {
    if list.is_empty() {
        return Err(ConfigError::new(path, "expected at least one value"));
    }
    list.iter()
        .enumerate()
        .map(|(i, s)| parse_text(&format!("{path}[{i}]"), s, params))
        .collect()
}

fn compile_list(
    path: &str,
    list: &[RequirementConfig],
    params: &[&str],
) -> Result<Vec<Requirement>, ConfigError> {
    if list.is_empty() {
        return Err(ConfigError::new(path, "expected at least one requirement"));
    }
    list.iter()
        .enumerate()
        .map(|(i, r)| Requirement::compile(&format!("{path}[{i}]"), r, params))
        .collect()
}

impl Requirement {
    /// Compile one node found at `path`; `params` are the names the route's template binds.
    pub fn compile(
        path: &str,
        r: &RequirementConfig,
        params: &[&str],
    ) -> Result<Requirement, ConfigError> {
        let ops = usize::from(r.equals.is_some())
            + usize::from(r.one_of.is_some())
            + usize::from(r.contains_any.is_some())
            + usize::from(r.contains_all.is_some())
            + usize::from(r.exists.is_some());
        let forms = usize::from(r.all.is_some())
            + usize::from(r.any.is_some())
            + usize::from(r.not.is_some())
            + usize::from(r.claim.is_some() || ops > 0);
        if forms != 1 {
            return Err(ConfigError::new(path, FORMS));
        }
        if let Some(list) = &r.all {
            return Ok(Requirement::All(compile_list(
                &format!("{path}.all"),
                list,
                params,
            )?));
        }
        if let Some(list) = &r.any {
            return Ok(Requirement::Any(compile_list(
                &format!("{path}.any"),
                list,
                params,
            )?));
        }
        if let Some(inner) = &r.not {
            return Ok(Requirement::Not(Box::new(Requirement::compile(
                &format!("{path}.not"),
                inner,
                params,
            )?)));
        }
        let Some(claim) = &r.claim else {
            return Err(ConfigError::new(
                format!("{path}.claim"),
                "required with an operator",
            ));
        };
        check_claim_path(&format!("{path}.claim"), claim)?;
        if ops != 1 {
            return Err(ConfigError::new(path, OPS));
        }
        let op = if let Some(v) = &r.equals {
            Op::Equals(parse_scalar(&format!("{path}.equals"), v, params)?)
        } else if let Some(list) = &r.one_of {
            let p = format!("{path}.one_of");
            if list.is_empty() {
                return Err(ConfigError::new(p, "expected at least one value"));
            }
            Op::OneOf(
                list.iter()
                    .enumerate()
                    .map(|(i, v)| parse_scalar(&format!("{p}[{i}]"), v, params))
                    .collect::<Result<_, _>>()?,
            )
        } else if let Some(list) = &r.contains_any {
            Op::ContainsAny(parse_texts(&format!("{path}.contains_any"), list, params)?)
        } else if let Some(list) = &r.contains_all {
            Op::ContainsAll(parse_texts(&format!("{path}.contains_all"), list, params)?)
        } else if let Some(b) = r.exists {
            Op::Exists(b)
        } else {
            return Err(ConfigError::new(path, OPS));
        };
        Ok(Requirement::Claim {
            claim: claim.clone(),
            op,
        })
    }

    /// Whether any claim test reads `name` (top-level claim, or a path below it).
    pub fn reads_claim(&self, name: &str) -> bool {
        match self {
            Requirement::All(l) | Requirement::Any(l) => l.iter().any(|r| r.reads_claim(name)),
            Requirement::Not(r) => r.reads_claim(name),
            Requirement::Claim { claim, .. } => {
                claim == name
                    || claim
                        .strip_prefix(name)
                        .is_some_and(|rest| rest.starts_with('.'))
            }
        }
    }

    pub fn eval(&self, input: &EvalInput<'_>) -> bool {
        match self {
            Requirement::All(l) => l.iter().all(|r| r.eval(input)),
            Requirement::Any(l) => l.iter().any(|r| r.eval(input)),
            Requirement::Not(r) => !r.eval(input),
            Requirement::Claim { claim, op } => {
                let v = lookup(input.claims, claim).filter(|v| !v.is_null());
                match (op, v) {
                    (Op::Exists(want), v) => v.is_some() == *want,
                    (_, None) => false,
                    (Op::Equals(s), Some(v)) => scalar_eq(s, v, input),
                    (Op::OneOf(list), Some(v)) => list.iter().any(|s| scalar_eq(s, v, input)),
                    (Op::ContainsAny(list), Some(v)) => list.iter().any(|t| contains(v, t, input)),
                    (Op::ContainsAll(list), Some(v)) => list.iter().all(|t| contains(v, t, input)),
                }
            }
        }
    }
}

/// Render a claim used in `{claims.NAME}`; `None` when it is not a scalar.
fn claim_text<'a>(input: &EvalInput<'a>, name: &str) -> Option<std::borrow::Cow<'a, str>> {
    match lookup(input.claims, name)? {
        Value::String(s) => Some(std::borrow::Cow::Borrowed(s.as_str())),
        Value::Number(n) => Some(std::borrow::Cow::Owned(n.to_string())),
        Value::Bool(b) => Some(std::borrow::Cow::Borrowed(if *b {
            "true"
        } else {
            "false"
        })),
        _ => None,
    }
}

impl Text {
    /// Does `candidate` equal this text after substitution? `None` if a substitution
    /// is unbound. Compares piece by piece, without building the string.
    fn equals(&self, candidate: &str, input: &EvalInput<'_>) -> Option<bool> {
        let mut rest = candidate;
        let mut ok = true;
        for p in &self.pieces {
            let part: std::borrow::Cow<'_, str> = match p {
                Piece::Lit(l) => std::borrow::Cow::Borrowed(l.as_str()),
                Piece::Path(n) => std::borrow::Cow::Borrowed(
                    input
                        .params
                        .iter()
                        .find(|(k, _)| k == n)
                        .map(|(_, v)| v.as_str())?,
                ),
                Piece::Claim(n) => claim_text(input, n)?,
            };
            // Keep checking later pieces so an unbound substitution is always reported.
            if ok {
                match rest.strip_prefix(part.as_ref()) {
                    Some(r) => rest = r,
                    None => ok = false,
                }
            }
        }
        Some(ok && rest.is_empty())
    }

    fn matches(&self, candidate: &str, input: &EvalInput<'_>) -> bool {
        self.equals(candidate, input).unwrap_or(false)
    }
}

fn num_eq(a: &serde_json::Number, b: &serde_json::Number) -> bool {
    if let (Some(x), Some(y)) = (a.as_i64(), b.as_i64()) {
        return x == y;
    }
    if let (Some(x), Some(y)) = (a.as_u64(), b.as_u64()) {
        return x == y;
    }
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}

fn scalar_eq(s: &Scalar, v: &Value, input: &EvalInput<'_>) -> bool {
    match (s, v) {
        (Scalar::Str(t), Value::String(c)) => t.matches(c, input),
        (Scalar::Num(n), Value::Number(c)) => num_eq(n, c),
        (Scalar::Bool(b), Value::Bool(c)) => b == c,
        _ => false,
    }
}

fn contains(v: &Value, t: &Text, input: &EvalInput<'_>) -> bool {
    match v {
        Value::Array(items) => items
            .iter()
            .any(|i| i.as_str().is_some_and(|s| t.matches(s, input))),
        Value::String(s) => s.split_ascii_whitespace().any(|w| t.matches(w, input)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(json: &str, params: &[&str]) -> Result<Requirement, ConfigError> {
        let r = crate::config::from_json::requirement(json)?;
        Requirement::compile("r", &r, params)
    }

    fn claims(json: &str) -> Claims {
        serde_json::from_str(json).unwrap()
    }

    fn eval(r: &str, c: &str, params: &[(&str, &str)]) -> bool {
        let names: Vec<&str> = params.iter().map(|(k, _)| *k).collect();
        let p: Vec<(String, String)> = params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let c = claims(c);
        req(r, &names).unwrap().eval(&EvalInput {
            claims: &c,
            params: &p,
        })
    }

    #[test]
    fn equals_types() {
        let c = r#"{"s":"x","n":3,"f":1.5,"b":true,"nested":{"k":"v"}}"#;
        assert!(eval(r#"{"claim":"s","equals":"x"}"#, c, &[]));
        assert!(!eval(r#"{"claim":"s","equals":"X"}"#, c, &[]));
        assert!(eval(r#"{"claim":"n","equals":3}"#, c, &[]));
        assert!(eval(r#"{"claim":"n","equals":3.0}"#, c, &[]));
        assert!(!eval(r#"{"claim":"n","equals":"3"}"#, c, &[]));
        assert!(eval(r#"{"claim":"f","equals":1.5}"#, c, &[]));
        assert!(eval(r#"{"claim":"b","equals":true}"#, c, &[]));
        assert!(!eval(r#"{"claim":"b","equals":false}"#, c, &[]));
        assert!(!eval(r#"{"claim":"b","equals":"true"}"#, c, &[]));
        assert!(eval(r#"{"claim":"nested.k","equals":"v"}"#, c, &[]));
        assert!(!eval(r#"{"claim":"missing","equals":"v"}"#, c, &[]));
    }

    #[test]
    fn one_of_and_exists() {
        let c = r#"{"idtyp":"app","n":2,"z":null}"#;
        assert!(eval(r#"{"claim":"idtyp","one_of":["user","app"]}"#, c, &[]));
        assert!(!eval(r#"{"claim":"idtyp","one_of":["user"]}"#, c, &[]));
        assert!(eval(r#"{"claim":"n","one_of":[1,2]}"#, c, &[]));
        assert!(eval(r#"{"claim":"idtyp","exists":true}"#, c, &[]));
        assert!(eval(r#"{"claim":"nope","exists":false}"#, c, &[]));
        assert!(!eval(r#"{"claim":"nope","exists":true}"#, c, &[]));
        assert!(eval(r#"{"claim":"z","exists":false}"#, c, &[]));
    }

    #[test]
    fn contains_array_and_space_separated() {
        let c = r#"{"roles":["A","B"],"scp":"read  write","n":5}"#;
        assert!(eval(
            r#"{"claim":"roles","contains_any":["X","B"]}"#,
            c,
            &[]
        ));
        assert!(!eval(r#"{"claim":"roles","contains_any":["X"]}"#, c, &[]));
        assert!(eval(
            r#"{"claim":"roles","contains_all":["A","B"]}"#,
            c,
            &[]
        ));
        assert!(!eval(
            r#"{"claim":"roles","contains_all":["A","C"]}"#,
            c,
            &[]
        ));
        assert!(eval(r#"{"claim":"scp","contains_any":["write"]}"#, c, &[]));
        assert!(eval(
            r#"{"claim":"scp","contains_all":["read","write"]}"#,
            c,
            &[]
        ));
        assert!(!eval(r#"{"claim":"scp","contains_any":["rea"]}"#, c, &[]));
        assert!(!eval(r#"{"claim":"n","contains_any":["5"]}"#, c, &[]));
    }

    #[test]
    fn combinators() {
        let c = r#"{"a":"1","b":"2"}"#;
        let t = r#"{"claim":"a","equals":"1"}"#;
        let f = r#"{"claim":"b","equals":"1"}"#;
        assert!(eval(&format!(r#"{{"all":[{t},{t}]}}"#), c, &[]));
        assert!(!eval(&format!(r#"{{"all":[{t},{f}]}}"#), c, &[]));
        assert!(eval(&format!(r#"{{"any":[{f},{t}]}}"#), c, &[]));
        assert!(!eval(&format!(r#"{{"any":[{f},{f}]}}"#), c, &[]));
        assert!(eval(&format!(r#"{{"not":{f}}}"#), c, &[]));
        assert!(!eval(&format!(r#"{{"not":{t}}}"#), c, &[]));
    }

    #[test]
    fn substitutions() {
        let guard = r#"{"claim":"team","equals":"{path.team}"}"#;
        assert!(eval(guard, r#"{"team":"a"}"#, &[("team", "a")]));
        assert!(!eval(guard, r#"{"team":"a"}"#, &[("team", "b")]));
        assert!(!eval(guard, r#"{}"#, &[("team", "a")]));
        let pre = r#"{"claim":"roles","contains_any":["Team.{path.team}.Score"]}"#;
        assert!(eval(pre, r#"{"roles":["Team.a.Score"]}"#, &[("team", "a")]));
        assert!(!eval(
            pre,
            r#"{"roles":["Team.a.Score"]}"#,
            &[("team", "ab")]
        ));
        let cl = r#"{"claim":"azp","equals":"{claims.appid}"}"#;
        assert!(eval(cl, r#"{"azp":"x","appid":"x"}"#, &[]));
        assert!(!eval(cl, r#"{"azp":"x","appid":"y"}"#, &[]));
        // Unbound claim substitution never matches, even an empty candidate.
        assert!(!eval(cl, r#"{"azp":""}"#, &[]));
        let num = r#"{"claim":"s","equals":"v{claims.n}"}"#;
        assert!(eval(num, r#"{"s":"v2","n":2}"#, &[]));
        // Unbound path parameter (compiled with the name, but not bound at runtime).
        let c = claims(r#"{"team":""}"#);
        let r = req(guard, &["team"]).unwrap();
        assert!(!r.eval(&EvalInput {
            claims: &c,
            params: &[]
        }));
    }

    #[test]
    fn compile_errors_name_the_node() {
        let e = req(r#"{"any":[{"claim":"a"}]}"#, &[]).unwrap_err();
        assert_eq!(e.path, "r.any[0]");
        assert_eq!(e.message, OPS);
        let e = req(r#"{"any":[{"claim":"a","equals":"x","exists":true}]}"#, &[]).unwrap_err();
        assert_eq!((e.path.as_str(), e.message.as_str()), ("r.any[0]", OPS));
        let e = req(
            r#"{"all":[{"claim":"a","equals":"x"}],"not":{"claim":"a","exists":true}}"#,
            &[],
        )
        .unwrap_err();
        assert_eq!((e.path.as_str(), e.message.as_str()), ("r", FORMS));
        let e = req(r#"{}"#, &[]).unwrap_err();
        assert_eq!(e.message, FORMS);
        let e = req(r#"{"equals":"x"}"#, &[]).unwrap_err();
        assert_eq!(e.path, "r.claim");
        let e = req(r#"{"all":[]}"#, &[]).unwrap_err();
        assert_eq!(e.path, "r.all");
        let e = req(r#"{"not":{"all":[{"claim":"","exists":true}]}}"#, &[]).unwrap_err();
        assert_eq!(e.path, "r.not.all[0].claim");
        let e = req(r#"{"claim":"a","equals":[1]}"#, &[]).unwrap_err();
        assert_eq!(e.path, "r.equals");
        let e = req(r#"{"claim":"a","one_of":["x",{}]}"#, &[]).unwrap_err();
        assert_eq!(e.path, "r.one_of[1]");
        let e = req(r#"{"claim":"a","contains_all":[]}"#, &[]).unwrap_err();
        assert_eq!(e.path, "r.contains_all");
        let e = req(r#"{"claim":"a","equals":"{path.team}"}"#, &[]).unwrap_err();
        assert_eq!(e.path, "r.equals");
        assert!(e.message.contains("team"), "{e}");
        let e = req(r#"{"claim":"a","contains_any":["ok","{env.X}"]}"#, &[]).unwrap_err();
        assert_eq!(e.path, "r.contains_any[1]");
        let e = req(r#"{"claim":"a","equals":"{claims.x"}"#, &[]).unwrap_err();
        assert_eq!(e.path, "r.equals");
        let e = req(r#"{"claim":"a","equals":"x}"}"#, &[]).unwrap_err();
        assert_eq!(e.path, "r.equals");
    }

    #[test]
    fn reads_claim() {
        let r = req(
            r#"{"any":[{"claim":"roles","contains_any":["x"]},{"not":{"claim":"groups.x","exists":true}}]}"#,
            &[],
        )
        .unwrap();
        assert!(r.reads_claim("groups"));
        assert!(r.reads_claim("roles"));
        assert!(!r.reads_claim("group"));
    }
}
