//! Finding the caller's token in the request: configured sources (header with an
//! optional scheme prefix, query parameter, cookie), checked all together so a token
//! presented twice is refused (`TokenAmbiguous`) instead of one copy silently winning.

use std::borrow::Cow;

use crate::config::{ConfigError, TokenSourceConfig};
use crate::reason::Reason;
use crate::request::{RequestView, TokenLocation};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    /// Lower-case header name, optional scheme prefix (compared case-insensitively).
    Header {
        name: String,
        prefix: Option<String>,
    },
    Query(String),
    Cookie(String),
}

/// Token sources compiled from `token_sources`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenExtractor {
    sources: Vec<Source>,
}

impl TokenExtractor {
    pub fn new(sources: &[TokenSourceConfig]) -> Result<Self, ConfigError> {
        if sources.is_empty() {
            return Err(ConfigError::new(
                "token_sources",
                "at least one token source is required",
            ));
        }
        let mut out: Vec<Source> = Vec::with_capacity(sources.len());
        for (i, s) in sources.iter().enumerate() {
            let p = |f: &str| format!("token_sources[{i}].{f}");
            let set: Vec<&str> = [
                ("header", s.header.is_some()),
                ("query", s.query.is_some()),
                ("cookie", s.cookie.is_some()),
            ]
            .iter()
            .filter(|(_, on)| *on)
            .map(|(n, _)| *n)
            .collect();
            match set.as_slice() {
                [] => {
                    return Err(ConfigError::new(
                        format!("token_sources[{i}]"),
                        "one of header, query or cookie is required",
                    ))
                }
                [_] => {}
                [_, second, ..] => {
                    return Err(ConfigError::new(
                        p(second),
                        "only one of header, query or cookie may be set",
                    ))
                }
            }
            if s.prefix.is_some() && s.header.is_none() {
                return Err(ConfigError::new(p("prefix"), "only allowed with header"));
            }
            let src = if let Some(h) = &s.header {
                if !crate::headers::is_token(h) || h.starts_with(':') {
                    return Err(ConfigError::new(p("header"), "expected a header name"));
                }
                if let Some(pre) = &s.prefix {
                    if pre.trim().is_empty() {
                        return Err(ConfigError::new(
                            p("prefix"),
                            "must not be empty (omit it for a bare token)",
                        ));
                    }
                }
                Source::Header {
                    name: h.to_ascii_lowercase(),
                    prefix: s.prefix.clone(),
                }
            } else if let Some(q) = &s.query {
                if q.is_empty() || q.contains(['&', '=', '#', '?']) {
                    return Err(ConfigError::new(p("query"), "expected a parameter name"));
                }
                Source::Query(q.clone())
            } else if let Some(c) = &s.cookie {
                if c.is_empty() || c.contains([';', '=', ',', ' ', '"']) {
                    return Err(ConfigError::new(p("cookie"), "expected a cookie name"));
                }
                Source::Cookie(c.clone())
            } else {
                return Err(ConfigError::new(
                    format!("token_sources[{i}]"),
                    "one of header, query or cookie is required",
                ));
            };
            let same = out.iter().any(|o| match (o, &src) {
                (Source::Header { name: a, .. }, Source::Header { name: b, .. }) => a == b,
                (a, b) => a == b,
            });
            if same {
                let field = match src {
                    Source::Header { .. } => "header",
                    Source::Query(_) => "query",
                    Source::Cookie(_) => "cookie",
                };
                return Err(ConfigError::new(p(field), "duplicate token source"));
            }
            out.push(src);
        }
        Ok(TokenExtractor { sources: out })
    }

    /// The token, if the request carries one. Every source is examined: two tokens
    /// (two sources, or one source twice) → `TokenAmbiguous`; a source that is present
    /// but empty (`Authorization: Bearer`, `?access_token=`) → `TokenMalformed`.
    /// A header whose value does not start with the configured scheme (e.g. `Basic …`
    /// when `Bearer ` is expected) is not a token: it is ignored.
    pub fn extract<'a>(
        &self,
        req: &RequestView<'a>,
    ) -> Result<Option<(Cow<'a, str>, TokenLocation)>, Reason> {
        let mut found: Option<(Cow<'a, str>, TokenLocation)> = None;
        let mut push = |tok: Cow<'a, str>, loc: &dyn Fn() -> TokenLocation| {
            if found.is_some() {
                return Err(Reason::TokenAmbiguous);
            }
            found = Some((tok, loc()));
            Ok(())
        };
        for src in &self.sources {
            match src {
                Source::Header { name, prefix } => {
                    for (k, v) in req.headers.iter() {
                        if !k.eq_ignore_ascii_case(name) {
                            continue;
                        }
                        if let Some(t) = header_token(v, prefix.as_deref()) {
                            push(Cow::Borrowed(t), &|| TokenLocation::Header(name.clone()))?;
                        }
                    }
                }
                Source::Query(qname) => {
                    if let Some(q) = req.query() {
                        for (k, v) in query_pairs(q) {
                            if percent_decode(k).as_deref() == Some(qname.as_str()) {
                                let v = percent_decode(v).ok_or(Reason::TokenMalformed)?;
                                push(v, &|| TokenLocation::Query(qname.clone()))?;
                            }
                        }
                    }
                }
                Source::Cookie(cname) => {
                    for (k, v) in req.headers.iter() {
                        if !k.eq_ignore_ascii_case("cookie") {
                            continue;
                        }
                        for crumb in v.as_str().split(';') {
                            let crumb = crumb.trim_matches([' ', '\t']);
                            let (n, val) = crumb.split_once('=').unwrap_or((crumb, ""));
                            if n.trim() != cname {
                                continue;
                            }
                            let val = val.trim();
                            let val = val
                                .strip_prefix('"')
                                .and_then(|x| x.strip_suffix('"'))
                                .unwrap_or(val);
                            push(Cow::Borrowed(val), &|| TokenLocation::Cookie(cname.clone()))?;
                        }
                    }
                }
            }
        }
        match found {
            Some((t, _)) if t.is_empty() => Err(Reason::TokenMalformed),
            // Hosts may fold repeated headers into one comma-separated value.
            Some((t, _)) if t.contains(',') => Err(Reason::TokenAmbiguous),
            other => Ok(other),
        }
    }
}

/// The token part of a header value, `None` when the scheme does not match.
fn header_token<'a>(value: &'a str, prefix: Option<&str>) -> Option<&'a str> {
    let v = value.trim_matches([' ', '\t']);
    let Some(prefix) = prefix else {
        return Some(v);
    };
    let want = prefix.trim_end();
    let head = v.get(..want.len())?;
    if !head.eq_ignore_ascii_case(want) {
        return None;
    }
    let rest = v.get(want.len()..)?;
    if rest.is_empty() {
        // "Bearer" alone: the scheme with an empty token.
        return Some(rest);
    }
    // When the prefix ends in whitespace ("Bearer "), that separator must be there
    // (extra spaces tolerated): "Bearerxyz" is another scheme.
    if want.len() != prefix.len() {
        let trimmed = rest.trim_start_matches([' ', '\t']);
        if trimmed.len() == rest.len() {
            return None;
        }
        return Some(trimmed);
    }
    Some(rest)
}

fn query_pairs(q: &str) -> impl Iterator<Item = (&str, &str)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// `application/x-www-form-urlencoded` decoding (`%XX`, `+` = space). `None` for a bad
/// escape or a result that is not UTF-8.
fn percent_decode(s: &str) -> Option<Cow<'_, str>> {
    if !s.contains(['%', '+']) {
        return Some(Cow::Borrowed(s));
    }
    let mut out = Vec::with_capacity(s.len());
    let mut it = s.bytes();
    while let Some(b) = it.next() {
        match b {
            b'%' => {
                let hi = hex(it.next()?)?;
                let lo = hex(it.next()?)?;
                out.push(hi << 4 | lo);
            }
            b'+' => out.push(b' '),
            _ => out.push(b),
        }
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}

/// `path` with every `name` query parameter removed (other parameters kept verbatim
/// and in order; the `?` dropped when nothing is left).
pub fn strip_query_param(path: &str, name: &str) -> String {
    let Some((base, query)) = path.split_once('?') else {
        return path.to_string();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|p| {
            let k = p.split_once('=').map_or(*p, |(k, _)| k);
            !p.is_empty() && percent_decode(k).as_deref() != Some(name)
        })
        .collect();
    if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(
        h: Option<&str>,
        p: Option<&str>,
        q: Option<&str>,
        c: Option<&str>,
    ) -> TokenSourceConfig {
        TokenSourceConfig {
            header: h.map(Into::into),
            prefix: p.map(Into::into),
            query: q.map(Into::into),
            cookie: c.map(Into::into),
        }
    }

    fn all3() -> TokenExtractor {
        TokenExtractor::new(&[
            src(Some("Authorization"), Some("Bearer "), None, None),
            src(None, None, Some("access_token"), None),
            src(None, None, None, Some("aml_token")),
        ])
        .unwrap()
    }

    fn run(
        x: &TokenExtractor,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Option<(String, TokenLocation)>, Reason> {
        let h: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let r = RequestView {
            method: "GET",
            path,
            authority: "h",
            headers: &h,
        };
        x.extract(&r).map(|o| o.map(|(t, l)| (t.into_owned(), l)))
    }

    #[test]
    fn config_errors_name_the_field() {
        let cases = vec![
            (vec![], "token_sources", "at least one"),
            (
                vec![src(None, None, None, None)],
                "token_sources[0]",
                "one of",
            ),
            (
                vec![src(Some("a"), None, Some("q"), None)],
                "token_sources[0].query",
                "only one",
            ),
            (
                vec![
                    src(Some("a"), None, None, None),
                    src(None, Some("B "), Some("q"), None),
                ],
                "token_sources[1].prefix",
                "only allowed with header",
            ),
            (
                vec![src(Some("bad name"), None, None, None)],
                "token_sources[0].header",
                "header name",
            ),
            (
                vec![src(Some(""), None, None, None)],
                "token_sources[0].header",
                "header name",
            ),
            (
                vec![src(Some("a"), Some(" "), None, None)],
                "token_sources[0].prefix",
                "empty",
            ),
            (
                vec![src(None, None, Some(""), None)],
                "token_sources[0].query",
                "parameter",
            ),
            (
                vec![src(None, None, None, Some("a;b"))],
                "token_sources[0].cookie",
                "cookie",
            ),
            (
                vec![
                    src(Some("X-T"), None, None, None),
                    src(Some("x-t"), Some("B "), None, None),
                ],
                "token_sources[1].header",
                "duplicate",
            ),
        ];
        for (cfg, path, msg) in cases {
            let e = TokenExtractor::new(&cfg).unwrap_err();
            assert_eq!(e.path, path, "{e}");
            assert!(e.message.contains(msg), "{e}");
        }
    }

    #[test]
    fn header_prefix_is_case_insensitive() {
        let x = all3();
        for v in [
            "Bearer abc",
            "bearer abc",
            "BEARER abc",
            "Bearer   abc",
            " Bearer abc ",
        ] {
            assert_eq!(
                run(&x, "/", &[("authorization", v)]).unwrap(),
                Some(("abc".into(), TokenLocation::Header("authorization".into()))),
                "{v}"
            );
        }
        // Another scheme is not a bearer token.
        assert_eq!(
            run(&x, "/", &[("authorization", "Basic abc")]).unwrap(),
            None
        );
        assert_eq!(
            run(&x, "/", &[("authorization", "Bearerabc")]).unwrap(),
            None
        );
        assert_eq!(run(&x, "/", &[]).unwrap(), None);
    }

    #[test]
    fn present_but_empty_is_malformed() {
        let x = all3();
        for (p, h) in [
            ("/", vec![("authorization", "Bearer")]),
            ("/", vec![("authorization", "Bearer ")]),
            ("/?access_token=", vec![]),
            ("/?access_token", vec![]),
            ("/", vec![("cookie", "aml_token=")]),
            ("/", vec![("cookie", "aml_token=\"\"")]),
        ] {
            assert_eq!(run(&x, p, &h), Err(Reason::TokenMalformed), "{p} {h:?}");
        }
        assert_eq!(
            run(&x, "/?access_token=%zz", &[]),
            Err(Reason::TokenMalformed)
        );
        assert_eq!(
            run(&x, "/?access_token=%ff", &[]),
            Err(Reason::TokenMalformed)
        );
    }

    #[test]
    fn query_and_cookie() {
        let x = all3();
        assert_eq!(
            run(&x, "/score?a=1&access_token=ab%2Ec&b=2", &[]).unwrap(),
            Some(("ab.c".into(), TokenLocation::Query("access_token".into())))
        );
        assert_eq!(
            run(&x, "/", &[("cookie", "x=1; aml_token=tok; y=2")]).unwrap(),
            Some(("tok".into(), TokenLocation::Cookie("aml_token".into())))
        );
        assert_eq!(
            run(
                &x,
                "/",
                &[("cookie", "x=1"), ("cookie", "aml_token=\"tok\"")]
            )
            .unwrap(),
            Some(("tok".into(), TokenLocation::Cookie("aml_token".into())))
        );
        // Another cookie whose name merely contains ours is not ours.
        assert_eq!(run(&x, "/", &[("cookie", "xaml_token=1")]).unwrap(), None);
    }

    #[test]
    fn two_tokens_are_ambiguous() {
        let x = all3();
        let cases: Vec<(&str, Vec<(&str, &str)>)> = vec![
            ("/?access_token=a", vec![("authorization", "Bearer b")]),
            ("/?access_token=a&access_token=a", vec![]),
            (
                "/",
                vec![("authorization", "Bearer a"), ("authorization", "Bearer a")],
            ),
            ("/", vec![("authorization", "Bearer a, Bearer b")]),
            ("/", vec![("cookie", "aml_token=a; aml_token=b")]),
            (
                "/",
                vec![("cookie", "aml_token=a"), ("authorization", "Bearer a")],
            ),
        ];
        for (p, h) in cases {
            assert_eq!(run(&x, p, &h), Err(Reason::TokenAmbiguous), "{p} {h:?}");
        }
        // A non-bearer Authorization next to a query token is fine.
        assert!(run(&x, "/?access_token=a", &[("authorization", "Basic x")])
            .unwrap()
            .is_some());
    }

    #[test]
    fn bare_header_without_prefix() {
        let x = TokenExtractor::new(&[src(Some("x-aml-token"), None, None, None)]).unwrap();
        assert_eq!(
            run(&x, "/", &[("X-AML-Token", " t1 ")]).unwrap(),
            Some(("t1".into(), TokenLocation::Header("x-aml-token".into())))
        );
    }

    #[test]
    fn strip_query() {
        assert_eq!(strip_query_param("/s?access_token=x", "access_token"), "/s");
        assert_eq!(
            strip_query_param(
                "/s?a=1&access_token=x&b=%20&access_token=y&c",
                "access_token"
            ),
            "/s?a=1&b=%20&c"
        );
        assert_eq!(
            strip_query_param("/s?access%5Ftoken=x&a", "access_token"),
            "/s?a"
        );
        assert_eq!(strip_query_param("/s", "access_token"), "/s");
        assert_eq!(strip_query_param("/s?a=1", "access_token"), "/s?a=1");
        assert_eq!(
            strip_query_param("/s?access_tokenx=1", "access_token"),
            "/s?access_tokenx=1"
        );
    }
}
