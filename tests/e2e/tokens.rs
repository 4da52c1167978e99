//! End-to-end on both real hosts — Envoy 1.40 (V8) and Kong Gateway 3.9 (Wasmtime), two
//! workers each — loading the built filter: token verification acceptance (issue 3). One token per algorithm family, Entra v1 and v2
//! tokens and tenant allow-lists, two identity providers side by side (each verified with
//! its own keys), unknown issuers costing no JWKS traffic, and JOSE hygiene (`alg: none`,
//! `crit`, `jku`, oversize tokens) with no token ever echoed. Every test runs twice:
//! `<name>_envoy` and `<name>_kong`.

use std::time::{Duration, Instant};

use aml_harness::{
    both_hosts, default_filter_config, Artifacts, Gateway, Host, MockIdp, Resp, AUDIENCE,
    ENDPOINT_KEY, OTHER_TENANT, TENANT,
};
use serde_json::{json, Value};

/// The mock IdP's default `--hmac-secret` (test-only, never a real secret).
const MOCK_HMAC_SECRET: &str = "mock-hmac-secret-change-me-0123456789";
/// Issuer of the HS256-only provider (tokens minted by the mock with `iss` overridden).
const HS_ISSUER: &str = "https://issuer.internal.example/hs";
/// Issuer of the second (Okta-like) IdP.
const OKTA_ISSUER: &str = "https://dev-123456.okta.com/oauth2/default";

fn v2_issuer(tenant: &str) -> String {
    format!("https://login.microsoftonline.com/{tenant}/v2.0")
}

fn entra_provider(idp_port: u16, algorithms: &[&str]) -> Value {
    let mut p = aml_harness::entra_provider(idp_port);
    p["algorithms"] = json!(algorithms);
    p
}

fn score_routes() -> Value {
    json!([
        {"name": "health", "match": {"path": "/health"}, "auth": "none"},
        {"name": "score", "match": {"path_prefix": "/"},
         "set_request_headers": {"authorization": format!("Bearer {ENDPOINT_KEY}")}}
    ])
}

/// Values of one header in a list of (name, value) pairs.
fn backend_values<'a>(h: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    h.iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

fn post(gw: &Gateway, token: &str) -> Resp {
    aml_harness::post_score(&gw.url("/score"), Some(token), &[]).unwrap_or_else(|e| panic!("{e}"))
}

fn mint(idp: &MockIdp, spec: Value) -> String {
    idp.token(spec.clone())
        .unwrap_or_else(|e| panic!("mint {spec}: {e}"))
}

/// Neither the whole token nor its signature appears in the response (body or headers).
fn assert_not_echoed(what: &str, r: &Resp, token: &str) {
    let sig = token.rsplit('.').next().unwrap_or(token);
    for needle in [token, sig] {
        if needle.len() < 16 {
            continue;
        }
        assert!(!r.body.contains(needle), "{what}: token echoed in body");
        assert!(
            r.headers.iter().all(|(_, v)| !v.contains(needle)),
            "{what}: token echoed in headers {:?}",
            r.headers
        );
    }
}

fn assert_allowed(what: &str, gw: &Gateway, r: &Resp, token: &str) {
    assert_eq!(r.status, 200, "{what}: {}\n{}", r.body, gw.log_tail(40));
    let h = r.backend_headers();
    assert_eq!(
        backend_values(&h, "authorization"),
        [format!("Bearer {ENDPOINT_KEY}").as_str()],
        "{what}: the endpoint key replaces the caller's token"
    );
    assert!(
        !r.body.contains(token),
        "{what}: the caller's token reached the backend"
    );
}

fn assert_denied(what: &str, r: &Resp, token: &str, status: u16, reason: &str) {
    assert_eq!(r.status, status, "{what}: {}", r.body);
    assert_eq!(r.json()["error"], reason, "{what}: {}", r.body);
    if status == 401 {
        let www = r.header("www-authenticate").unwrap_or_default();
        assert!(www.contains("error=\"invalid_token\""), "{what}: {www}");
    }
    assert_not_echoed(what, r, token);
}

/// The audit line (from the host's log) with this request id.
fn audit_line(gw: &Gateway, request_id: &str) -> Value {
    gw.audit_line(request_id)
        .unwrap_or_else(|| panic!("no audit line for {request_id}:\n{}", gw.log_tail(40)))
}

/// The provider an allowed request was verified by, from its audit line.
fn provider_of(gw: &Gateway, r: &Resp) -> String {
    let h = r.backend_headers();
    let id = backend_values(&h, "x-request-id")
        .first()
        .map(|s| s.to_string())
        .unwrap_or_else(|| panic!("backend saw no x-request-id: {h:?}"));
    audit_line(gw, &id)["provider"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// JWKS request count, once it has stopped moving (initial loads and refetches settled).
fn settled_jwks_requests(idp: &MockIdp) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = idp.jwks_requests().unwrap_or_else(|e| panic!("{e}"));
    loop {
        std::thread::sleep(Duration::from_millis(400));
        let now = idp.jwks_requests().unwrap_or_else(|e| panic!("{e}"));
        if now == last || Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}

both_hosts! {
    fn one_token_per_algorithm_family_and_hs256_provider(host: Host) {
        let gw = Gateway::start_on(host, |port| {
            json!({
                "providers": [
                    entra_provider(port, &["RS256", "PS256", "ES256", "EdDSA"]),
                    {"name": "internal-hs", "issuers": [HS_ISSUER], "audiences": [AUDIENCE],
                     "algorithms": ["HS256"], "hmac_secret": MOCK_HMAC_SECRET}
                ],
                "routes": score_routes()
            })
        })
        .unwrap_or_else(|e| panic!("{e}"));
        let idp = &gw.idp;

        for alg in ["RS256", "PS256", "ES256", "EdDSA"] {
            let t = mint(idp, json!({"alg": alg, "client_id": format!("app-{alg}")}));
            let r = post(&gw, &t);
            assert_allowed(alg, &gw, &r, &t);
            let h = r.backend_headers();
            assert_eq!(backend_values(&h, "x-caller-tid"), [TENANT], "{alg}");
            assert_eq!(
                backend_values(&h, "x-caller-app"),
                [format!("app-{alg}")],
                "{alg}"
            );
        }

        // The shared-secret provider: its own issuer, no JWKS.
        let hs = mint(idp, json!({"alg": "HS256", "claims": {"iss": HS_ISSUER}}));
        let r = post(&gw, &hs);
        assert_allowed("HS256", &gw, &r, &hs);
        assert_eq!(provider_of(&gw, &r), "internal-hs");

        let cases = [
            // Families the Entra provider does not list.
            (
                "RS512 not listed",
                json!({"alg": "RS512"}),
                "alg_not_allowed",
            ),
            (
                "ES384 not listed",
                json!({"alg": "ES384"}),
                "alg_not_allowed",
            ),
            // Algorithm confusion: a symmetric token for the asymmetric provider.
            (
                "HS256 for the RSA provider",
                json!({"alg": "HS256"}),
                "alg_not_allowed",
            ),
            // HS256 signed with another secret.
            (
                "HS256 wrong secret",
                json!({"alg": "HS256", "claims": {"iss": HS_ISSUER}, "sign_with": "forged"}),
                "signature_invalid",
            ),
            // The HS provider lists only HS256.
            (
                "RS256 for the HS provider",
                json!({"alg": "RS256", "claims": {"iss": HS_ISSUER}}),
                "alg_not_allowed",
            ),
            (
                "ES256 forged",
                json!({"alg": "ES256", "sign_with": "forged"}),
                "signature_invalid",
            ),
            (
                "EdDSA forged",
                json!({"alg": "EdDSA", "sign_with": "forged"}),
                "signature_invalid",
            ),
        ];
        for (what, spec, reason) in cases {
            let t = mint(idp, spec);
            assert_denied(what, &post(&gw, &t), &t, 401, reason);
        }
    }
}

both_hosts! {
    fn entra_v1_and_v2_tokens_and_tenant_allow_list(host: Host) {
        let gw = Gateway::start_on(host, default_filter_config).unwrap_or_else(|e| panic!("{e}"));
        let idp = &gw.idp;

        let v2 = mint(idp, json!({"client_id": "v2-app"}));
        let r = post(&gw, &v2);
        assert_allowed("v2", &gw, &r, &v2);
        assert_eq!(r.backend_values("x-caller-app"), ["v2-app"]);

        let v1 = mint(idp, json!({"ver": 1, "client_id": "v1-app"}));
        let r = post(&gw, &v1);
        assert_allowed("v1", &gw, &r, &v1);
        let h = r.backend_headers();
        // v1 names the caller app `appid` (no `azp`); the header falls back to it.
        assert_eq!(backend_values(&h, "x-caller-app"), ["v1-app"]);
        assert_eq!(backend_values(&h, "x-caller-tid"), [TENANT]);
        let line = audit_line(&gw, backend_values(&h, "x-request-id")[0]);
        assert_eq!(line["iss"], format!("https://sts.windows.net/{TENANT}/"));

        // Another (valid GUID) tenant, both versions: not in `tenants`.
        for ver in [1, 2] {
            let t = mint(idp, json!({"ver": ver, "tenant": OTHER_TENANT}));
            let what = format!("v{ver} other tenant");
            assert_denied(&what, &post(&gw, &t), &t, 401, "tenant_not_allowed");
        }
        // The issuer names the allowed tenant but `tid` another one: the template is filled
        // from `tid`, so it does not match.
        let t = mint(
            idp,
            json!({"tenant": OTHER_TENANT, "claims": {"iss": v2_issuer(TENANT)}}),
        );
        assert_ne!(post(&gw, &t).status, 200, "iss/tid mismatch accepted");
        // `tid` that is not a GUID.
        let t = mint(
            idp,
            json!({"claims": {"tid": "contoso", "iss": v2_issuer("contoso")}}),
        );
        assert_denied("non-GUID tid", &post(&gw, &t), &t, 401, "tenant_invalid");
    }
}

both_hosts! {
    fn two_providers_side_by_side_each_with_its_own_keys(host: Host) {
        let a = Artifacts::locate_for(host).unwrap_or_else(|e| panic!("{e}"));
        let dir2 = tempfile::Builder::new()
            .prefix("aml-idp2-")
            .tempdir()
            .unwrap();
        let okta = MockIdp::start(
            &a,
            dir2.path(),
            &[
                "--issuer-template",
                OKTA_ISSUER,
                "--v1-issuer-template",
                OKTA_ISSUER,
                "--kid-prefix",
                "okta",
                "--hmac-secret",
                "okta-hmac-secret-not-used-0123456789abcdef",
            ],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let okta_port = okta.port;
        let gw = Gateway::builder(host).cluster("mock_idp2", okta_port).start(
            |port| {
                json!({
                    "providers": [
                        entra_provider(port, &["RS256"]),
                        {"name": "okta", "issuers": [OKTA_ISSUER],
                         "jwks_uri": format!("http://127.0.0.1:{okta_port}/default/discovery/v2.0/keys"),
                         "upstream": "mock_idp2", "audiences": [AUDIENCE],
                         "algorithms": ["RS256", "ES256"], "jwks_timeout_ms": 1500}
                    ],
                    "routes": score_routes()
                })
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let entra = &gw.idp;

        // Tokens from both IdPs are accepted, each by its own provider.
        let te = mint(entra, json!({"client_id": "entra-app"}));
        let r = post(&gw, &te);
        assert_allowed("entra", &gw, &r, &te);
        assert_eq!(provider_of(&gw, &r), "entra");
        for alg in ["RS256", "ES256"] {
            let to = mint(&okta, json!({"alg": alg, "client_id": "okta-app"}));
            let r = post(&gw, &to);
            assert_allowed(&format!("okta {alg}"), &gw, &r, &to);
            assert_eq!(r.backend_values("x-caller-app"), ["okta-app"]);
            assert_eq!(provider_of(&gw, &r), "okta");
        }
        assert!(
            okta.jwks_requests().unwrap() >= 1,
            "okta keys never fetched"
        );
        assert!(
            entra.jwks_requests().unwrap() >= 1,
            "entra keys never fetched"
        );

        // An unknown issuer is refused before any key lookup: no JWKS traffic at either IdP.
        let (e0, o0) = (settled_jwks_requests(entra), settled_jwks_requests(&okta));
        let unknown = [
            json!({"claims": {"iss": "https://evil.example.com/"}}),
            json!({"claims": {"iss": "https://dev-123456.okta.com/oauth2/other"}}),
            json!({"sign_with": "unpublished", "claims": {"iss": "https://evil.example.com/"}}),
            json!({"claims": {"iss": null}}),
        ];
        for spec in unknown {
            for idp in [entra, &okta] {
                let t = mint(idp, spec.clone());
                assert_denied(
                    &format!("{spec}"),
                    &post(&gw, &t),
                    &t,
                    401,
                    "issuer_unknown",
                );
            }
        }
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(
            (
                entra.jwks_requests().unwrap(),
                okta.jwks_requests().unwrap()
            ),
            (e0, o0),
            "an unknown issuer caused JWKS requests"
        );

        // A token claiming one provider's issuer but signed by the other IdP's key.
        let entra_kid = entra.control("GET", "keys").unwrap()["rsa"]
            .as_str()
            .unwrap()
            .to_string();
        let okta_kid = okta.control("GET", "keys").unwrap()["rsa"]
            .as_str()
            .unwrap()
            .to_string();
        assert_ne!(entra_kid, okta_kid);
        // Okta's key under Entra's published kid: Entra's key does not verify it.
        let t = mint(
            &okta,
            json!({"tenant": TENANT, "claims": {"iss": v2_issuer(TENANT), "tid": TENANT},
                   "header": {"kid": entra_kid}}),
        );
        assert_denied(
            "okta key, entra kid",
            &post(&gw, &t),
            &t,
            401,
            "signature_invalid",
        );
        // Okta's key under its own kid, claiming Entra: the kid is not in Entra's set.
        let t = mint(
            &okta,
            json!({"tenant": TENANT, "claims": {"iss": v2_issuer(TENANT), "tid": TENANT}}),
        );
        assert_denied("okta key, okta kid", &post(&gw, &t), &t, 401, "kid_unknown");
        // And the other way round.
        let t = mint(
            entra,
            json!({"claims": {"iss": OKTA_ISSUER}, "header": {"kid": okta_kid}}),
        );
        assert_denied(
            "entra key, okta kid",
            &post(&gw, &t),
            &t,
            401,
            "signature_invalid",
        );
        let t = mint(entra, json!({"claims": {"iss": OKTA_ISSUER}}));
        assert_denied(
            "entra key, entra kid",
            &post(&gw, &t),
            &t,
            401,
            "kid_unknown",
        );

        // Both still work afterwards.
        assert_eq!(post(&gw, &te).status, 200);
        let to = mint(&okta, json!({}));
        assert_eq!(post(&gw, &to).status, 200);
        drop(gw);
        drop(okta);
    }
}

both_hosts! {
    fn jose_hygiene_through_the_real_host(host: Host) {
        let gw = Gateway::start_on(host, |port| {
            let mut c = default_filter_config(port);
            c["cache"] = json!({"max_token_bytes": 4096});
            c
        })
        .unwrap_or_else(|e| panic!("{e}"));
        let idp = &gw.idp;

        // A valid token first: keys loaded, baseline JWKS count settled.
        let good = mint(idp, json!({}));
        assert_allowed("baseline", &gw, &post(&gw, &good), &good);
        let jwks0 = settled_jwks_requests(idp);

        // `jku`/`x5u` pointing at a key set the IdP serves (and at a host nobody serves):
        // never fetched, and the token verifies with the configured keys as usual.
        let elsewhere = idp.jwks_uri(OTHER_TENANT);
        let t = mint(
            idp,
            json!({"header": {"jku": elsewhere, "x5u": "http://127.0.0.1:9/cert.pem"}}),
        );
        assert_allowed("jku ignored", &gw, &post(&gw, &t), &t);
        // `jku` cannot smuggle in a key: an unpublished key with a jku is still unknown.
        let t = mint(
            idp,
            json!({"sign_with": "unpublished", "header": {"jku": elsewhere}}),
        );
        let r = post(&gw, &t);
        assert_eq!(r.status, 401, "{}", r.body);
        assert_eq!(r.json()["error"], "kid_unknown", "{}", r.body);
        assert_not_echoed("jku + unpublished key", &r, &t);
        // The unknown kid may legitimately trigger one refetch of the configured JWKS URI;
        // the `jku` target itself (another tenant's path) is never requested. The mock counts
        // JWKS requests for every path, so allow at most the one configured refetch.
        std::thread::sleep(Duration::from_millis(300));
        let jwks1 = settled_jwks_requests(idp);
        assert!(
            jwks1 <= jwks0 + 1,
            "jku fetched? JWKS requests {jwks0} -> {jwks1}"
        );
        let log = std::fs::read_to_string(&gw.idp.proc.stderr_path).unwrap_or_default();
        assert!(
            !log.contains(&format!("/{OTHER_TENANT}/discovery")),
            "the jku URL was fetched:\n{log}"
        );

        // Oversize: a validly signed token just above max_token_bytes.
        let big = mint(idp, json!({"claims": {"pad": "x".repeat(4200)}}));
        assert!(big.len() > 4096);
        let cases = [
            (
                "alg none",
                mint(idp, json!({"alg": "none"})),
                "alg_not_allowed",
            ),
            (
                "crit",
                mint(
                    idp,
                    json!({"header": {"crit": ["urn:example:policy"], "urn:example:policy": "x"}}),
                ),
                "crit_unsupported",
            ),
            ("oversize", big, "token_too_large"),
            (
                "alg none, no signature",
                {
                    let t = mint(idp, json!({"alg": "none"}));
                    let (head, _) = t.rsplit_once('.').unwrap();
                    format!("{head}.")
                },
                "alg_not_allowed",
            ),
        ];
        for (what, t, reason) in cases {
            let r = post(&gw, &t);
            assert_denied(what, &r, &t, 401, reason);
            assert_eq!(r.backend_headers().len(), 0, "{what}: reached the backend");
        }
        // The host's log (audit lines included) never holds a token either.
        let log = gw.log();
        assert!(!log.contains(&good), "a token appeared in the {host} log");
    }
}
