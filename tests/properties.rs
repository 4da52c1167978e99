//! Property tests of the engine (issue 11), on the fuzz targets' fixture
//! (`fuzz/targets.rs`): a token signed by a configured key with allowed claims always
//! verifies; any change to the signed bytes never verifies; spoofed identity headers never
//! survive the header plan; path normalization is idempotent and never lets an encoded
//! separator reach a route; a denial never echoes the token.

#[path = "../fuzz/targets.rs"]
mod targets;

use azure_ml_kong::engine::Decision;
use azure_ml_kong::policy::normalize_path;
use proptest::prelude::*;
use serde_json::{json, Value};
use targets::*;

fn bearer(t: &str) -> Vec<(String, String)> {
    vec![("authorization".into(), format!("Bearer {t}"))]
}

fn is_allow(d: &Decision) -> bool {
    matches!(d, Decision::Allow { .. })
}

fn status(d: &Decision) -> u32 {
    match d {
        Decision::Deny { response, .. } => response.status,
        _ => 0,
    }
}

/// Claims the `team` route accepts, varied: who, what else, and when.
fn allowed_claims() -> impl Strategy<Value = Value> {
    (
        "[a-zA-Z0-9 ._@-]{0,40}",
        proptest::collection::vec("[A-Za-z.]{1,12}", 0..4),
        1u64..129_000,
        0u64..3_600,
        proptest::option::of("[ -~]{0,30}"),
    )
        .prop_map(|(oid, mut roles, life, age, name)| {
            roles.push("Endpoint.Score".into());
            let mut c = good_claims();
            c["oid"] = json!(oid);
            c["roles"] = json!(roles);
            c["iat"] = json!(NOW - age);
            c["nbf"] = json!(NOW - age);
            c["exp"] = json!(NOW - age + life.max(age + 1));
            if let Some(n) = name {
                c["name"] = json!(n);
            }
            c
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// The hand-written audit line is the JSON serde_json writes for the same record, for
    /// any text in any field (methods, paths and request ids come from the client).
    #[test]
    fn an_audit_line_is_what_serde_json_writes(
        method in any::<String>(),
        path in any::<String>(),
        request_id in any::<String>(),
        route in proptest::option::of(any::<String>()),
        kid in proptest::option::of(any::<String>()),
        time in any::<u64>(),
        status in any::<u32>(),
    ) {
        use azure_ml_kong::audit::AuditRecord;
        use azure_ml_kong::request::RequestView;
        let req = RequestView { method: &method, path: &path, authority: "", headers: &[] };
        let mut r = AuditRecord::new(time, &request_id, &req);
        r.route = route;
        r.claimed_kid = kid;
        r.status = status;
        prop_assert_eq!(r.to_json_line(), serde_json::to_string(&r).unwrap());
    }

    #[test]
    fn a_token_signed_by_a_configured_key_with_allowed_claims_verifies(c in allowed_claims(), hs in any::<bool>()) {
        let t = if hs {
            let mut c = c.clone();
            c["iss"] = json!(HS_ISS);
            hs256_raw(SECRET.as_bytes(), br#"{"alg":"HS256","typ":"JWT"}"#, c.to_string().as_bytes())
        } else {
            rs256(&c)
        };
        let d = decide_request("POST", "/teams/fraud/score", &bearer(&t));
        prop_assert!(is_allow(&d), "{d:?} for {c}");
    }

    #[test]
    fn any_change_to_the_signed_bytes_never_verifies(
        part in 0usize..3, pos in any::<prop::sample::Index>(), bit in 0u8..8, hs in any::<bool>(),
    ) {
        let t = if hs {
            let mut c = good_claims();
            c["iss"] = json!(HS_ISS);
            hs256_raw(SECRET.as_bytes(), br#"{"alg":"HS256","typ":"JWT"}"#, c.to_string().as_bytes())
        } else {
            rs256(&good_claims())
        };
        let mut parts: Vec<Vec<u8>> = t.split('.').map(|p| {
            use base64::Engine as _;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(p).unwrap()
        }).collect();
        let bytes = &mut parts[part];
        let i = pos.index(bytes.len());
        bytes[i] ^= 1 << bit;
        let forged = parts.iter().map(|p| b64(p)).collect::<Vec<_>>().join(".");
        let d = decide_request("POST", "/teams/fraud/score", &bearer(&forged));
        prop_assert!(!is_allow(&d), "a changed token verified: part {part} byte {i} bit {bit}");
        prop_assert!(status(&d) == 401 || status(&d) == 403, "{d:?}");
    }

    #[test]
    fn spoofed_identity_headers_never_survive_the_header_plan(
        spoofs in proptest::collection::vec(
            (
                proptest::sample::select(vec!["oid", "roles", "name", "admin", "team", "tid", ""]),
                proptest::collection::vec(any::<(bool, bool)>(), 9),
                "[ -~]{0,20}",
            ),
            1..5,
        ),
        route in proptest::sample::select(vec!["/teams/fraud/score", "/any/x", "/health"]),
    ) {
        let mut h = bearer(&rs256(&good_claims()));
        for (suffix, shape, value) in &spoofs {
            let base = format!("x-caller-{suffix}");
            let name: String = base
                .chars()
                .zip(shape.iter().cycle())
                .map(|(c, (upper, under))| match c {
                    '-' if *under => '_',
                    c if *upper => c.to_ascii_uppercase(),
                    c => c,
                })
                .collect();
            h.push((name, value.clone()));
        }
        // `check_decision` (inside) applies the plan as Kong would and fails on any
        // identity header that carries a value the filter did not set.
        let d = decide_request("POST", route, &h);
        if let Decision::Deny { response, .. } = &d {
            prop_assert_eq!(response.status, 400, "{:?}", d);
        }
    }

    #[test]
    fn path_normalization_is_idempotent_and_encoded_separators_never_route(
        segs in proptest::collection::vec(
            proptest::sample::select(vec![
                "teams", "fraud", "score", "any", "x", "..", ".", "", "%2F", "%2f", "%5C",
                "%5c", "%252F", "%2e", "a;b", "%41", "%20", "\\", "a%2Fb", "%", "%zz",
            ]),
            0..7,
        ),
        method in proptest::sample::select(vec!["POST", "GET", "post", "HEAD", "OPTIONS"]),
    ) {
        let path = format!("/{}", segs.join("/"));
        if let Ok(n) = normalize_path(&path) {
            prop_assert_eq!(normalize_path(n), Ok(n));
        }
        let lower = path.to_ascii_lowercase();
        let encoded_sep = lower.contains("%2f") || lower.contains("%5c") || path.contains('\\');
        let d = decide_request(method, &path, &bearer(&rs256(&good_claims())));
        if encoded_sep {
            prop_assert_eq!(status(&d), 400, "{} reached a route: {:?}", path, d);
        }
    }

    #[test]
    fn a_denial_never_echoes_the_token(
        junk in "[A-Za-z0-9_.=+/ -]{16,200}",
        cut in any::<prop::sample::Index>(),
        kind in 0u8..4,
    ) {
        let good = rs256(&good_claims());
        let t = match kind {
            0 => junk.clone(),
            1 => format!("{}{}", &good[..cut.index(good.len())], junk),
            2 => format!("{good}.{junk}"),
            _ => good.replacen('.', &format!(".{junk}"), 1),
        };
        for path in ["/teams/fraud/score", "/teams/other/score", "/nowhere"] {
            let mut h = bearer(&t);
            h.push(("cookie".into(), format!("aml_token={t}")));
            let d = decide_request("POST", &format!("{path}?access_token={t}"), &h);
            if let Decision::Deny { response, .. } = &d {
                prop_assert!(!response.body.contains(&t));
                prop_assert!(response.headers.iter().all(|(_, v)| !v.contains(&t)));
                let sig = t.rsplit('.').next().unwrap_or("");
                if sig.len() >= 16 {
                    prop_assert!(!response.body.contains(sig));
                }
            }
        }
    }
}
