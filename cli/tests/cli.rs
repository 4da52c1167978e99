//! The `azure-ml-kong` binary, run as an operator runs it: on every config in `kong/` and
//! `examples/`, on broken configs, on tokens from the mock IdP (explain, inspect-token),
//! on key sets (check-jwks, from a file and from the mock IdP), and `check-config --online`
//! against the mock IdP on 127.0.0.1.

use std::path::{Path, PathBuf};

use aml_harness::{teams_filter_config, Artifacts, MockIdp, AUDIENCE, TENANT};
use assert_cmd::Command;
use serde_json::{json, Value};

fn root() -> PathBuf {
    aml_harness::repo_root()
}

fn cli() -> Command {
    let mut c = Command::cargo_bin("azure-ml-kong").expect("the azure-ml-kong binary");
    c.env_remove("NO_COLOR");
    c
}

struct Run {
    code: i32,
    out: String,
    err: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.out).unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", self.out))
    }
}

fn run(args: &[&str]) -> Run {
    let o = cli().args(args).output().expect("run azure-ml-kong");
    Run {
        code: o.status.code().unwrap_or(-1),
        out: String::from_utf8_lossy(&o.stdout).into_owned(),
        err: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn host_files() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in ["kong", "examples"] {
        for e in std::fs::read_dir(root().join(dir)).expect("list dir") {
            let p = e.expect("entry").path();
            let ext = p.extension().and_then(|x| x.to_str()).unwrap_or("");
            if ["yml", "yaml"].contains(&ext) {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn write(dir: &Path, name: &str, v: &Value) -> String {
    let p = dir.join(name);
    std::fs::write(&p, serde_json::to_string_pretty(v).expect("json")).expect("write");
    p.display().to_string()
}

#[test]
fn every_shipped_config_checks_clean_with_json_and_normalized_forms() {
    let files = host_files();
    assert!(files.len() >= 3, "{files:?}");
    for f in &files {
        let f = f.display().to_string();
        let r = run(&["check-config", &f]);
        assert_eq!(r.code, 0, "{f}: {}{}", r.out, r.err);
        assert!(r.out.contains("✓ valid"), "{f}: {}", r.out);
        assert!(!r.out.contains('\x1b'), "no colour when piped: {}", r.out);
        let j = run(&["check-config", "--json", "--print-normalized", &f]).json();
        assert_eq!(j["ok"], true, "{f}: {j}");
        for c in j["configs"].as_array().expect("configs") {
            assert_eq!(c["valid"], true);
            let n = &c["normalized"];
            // Defaults filled in, secrets redacted, and the result still loads.
            assert!(n["providers"][0]["clock_skew_seconds"].is_u64(), "{n}");
            assert!(n["cache"]["max_token_bytes"].is_u64(), "{n}");
            assert!(!n.to_string().contains("demo-endpoint-key"), "{n}");
            let bytes = serde_json::to_vec(n).expect("json");
            azure_ml_kong::engine::Filter::from_json(&bytes)
                .unwrap_or_else(|e| panic!("{f}: normalized config does not load: {e}"));
        }
    }
}

fn base() -> Value {
    json!({
        "providers": [{"name": "entra",
            "issuers": ["https://login.microsoftonline.com/{tenantid}/v2.0"],
            "tenants": [TENANT],
            "jwks_uri": "https://login.microsoftonline.com/common/discovery/v2.0/keys",
            "audiences": [AUDIENCE]}],
        "routes": [{"name": "all", "match": {"path_prefix": "/"}}]
    })
}

type Mutation = Box<dyn Fn(&mut Value)>;

#[test]
fn broken_configs_exit_1_with_the_field_path_and_a_hint() {
    let dir = tempfile::tempdir().expect("tmp");
    let cases: Vec<(Mutation, &str)> = vec![
        (
            Box::new(|v| v["routes"][0]["matchh"] = json!({})),
            "routes[0].matchh",
        ),
        (
            Box::new(|v| v["providers"][0]["tenants"] = json!(["not-a-guid"])),
            "providers[0].tenants[0]",
        ),
        (
            Box::new(|v| v["routes"][0]["require"] = json!({"claim": "roles"})),
            "routes[0].require",
        ),
        (
            Box::new(|v| v["providers"][0]["algorithms"] = json!(["HS256"])),
            "providers[0]",
        ),
        (
            Box::new(|v| {
                v.as_object_mut().expect("obj").remove("providers");
            }),
            "",
        ),
    ];
    for (i, (mutate, path)) in cases.iter().enumerate() {
        let mut v = base();
        mutate(&mut v);
        let f = write(dir.path(), &format!("bad{i}.json"), &v);
        let r = run(&["check-config", &f]);
        assert_eq!(r.code, 1, "{f}: {}", r.out);
        assert!(
            r.out.contains("✗ error") && r.out.contains("hint:"),
            "{}",
            r.out
        );
        let j = run(&["check-config", "--json", &f]).json();
        let e = &j["configs"][0]["error"];
        let got = e["path"].as_str().expect("path");
        assert!(
            got.starts_with(path),
            "case {i}: path {got:?}, want {path:?}: {e}"
        );
        assert!(!e["hint"].as_str().unwrap_or("").is_empty());
    }
    // A broken filter inside a kong.yml: the place in the file and the field path.
    let kong = root().join("kong/kong.yml");
    let text = std::fs::read_to_string(kong).expect("kong.yml");
    let broken = text.replacen(
        "audiences: [\"api://azureml-gateway\"]",
        "audiencez: [\"x\"]",
        1,
    );
    let p = dir.path().join("kong.yml");
    std::fs::write(&p, broken).expect("write");
    let j = run(&["check-config", "--json", &p.display().to_string()]).json();
    assert_eq!(j["ok"], false);
    let first = &j["configs"][0];
    assert_eq!(
        first["at"],
        "services[0].routes[0].filter_chains[0].filters[0].config"
    );
    assert_eq!(first["error"]["path"], "providers[0].audiencez");
    assert_eq!(j["configs"][1]["valid"], true);
    // Unreadable input: exit 2.
    assert_eq!(run(&["check-config", "/nonexistent/x.json"]).code, 2);
}

#[test]
fn every_independent_error_is_listed_with_its_path_the_filters_first() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut v = base();
    v["providers"][0]["tenants"] = json!(["not-a-guid"]);
    v["routes"][0]["require"] = json!({"any": [{"claim": "roles"}]});
    v["routes"].as_array_mut().expect("routes").push(json!({
        "name": "admin", "match": {"path_prefix": "/admin"}, "callers": ["nobody"]}));
    v["callers"] = json!([{"name": "fraud", "app_ids": []}]);
    v["realm"] = json!("");
    v["cache"] = json!({"max_entries": 0, "colour": "blue"});
    let f = write(dir.path(), "many.json", &v);
    let want = [
        "providers[0].tenants[0]",
        "routes[0].require.any[0]",
        "callers[0].app_ids",
        "routes[1].callers[0]",
        "realm",
        "cache.colour",
        "cache.max_entries",
    ];
    let r = run(&["check-config", &f]);
    assert_eq!(r.code, 1, "{}{}", r.out, r.err);
    for p in want {
        assert!(r.out.contains(&format!("✗ error {p}:")), "{p}: {}", r.out);
    }
    assert!(r.out.matches("hint:").count() >= want.len(), "{}", r.out);
    let j = run(&["check-config", "--json", &f]).json();
    assert_eq!(j["ok"], false);
    let c = &j["configs"][0];
    assert_eq!(c["valid"], false);
    let errors = c["errors"].as_array().expect("errors");
    let paths: Vec<&str> = errors.iter().filter_map(|e| e["path"].as_str()).collect();
    for p in want {
        assert!(paths.contains(&p), "{p} not in {paths:?}");
    }
    assert!(errors
        .iter()
        .all(|e| e["hint"].as_str().is_some_and(|h| !h.is_empty())));
    // The first is the error the filter itself refuses the config with.
    let bytes = serde_json::to_vec(&v).expect("json");
    let Err(filter) = azure_ml_kong::engine::Filter::from_json(&bytes) else {
        panic!("the filter accepted a broken config")
    };
    assert_eq!(errors[0]["path"], filter.path.as_str());
    assert_eq!(errors[0]["message"], filter.message.as_str());
    assert_eq!(c["error"], errors[0]);
}

#[test]
fn a_kong_yml_with_two_broken_filters_reports_both() {
    let dir = tempfile::tempdir().expect("tmp");
    let text = std::fs::read_to_string(root().join("kong/kong.yml")).expect("kong.yml");
    // Two errors in the first filter (fraud), one in the second (churn).
    let aud = "audiences: [\"api://azureml-gateway\"]";
    let broken = text
        .replacen(aud, "audiencez: [\"x\"]", 1)
        .replacen("jwks_timeout_ms: 1500", "jwks_timeout_ms: 0", 1)
        .replacen(aud, "audiences: []", 1);
    let p = dir.path().join("kong.yml");
    std::fs::write(&p, broken).expect("write");
    let p = p.display().to_string();
    let r = run(&["check-config", &p]);
    assert_eq!(r.code, 1, "{}{}", r.out, r.err);
    let j = run(&["check-config", "--json", &p]).json();
    assert_eq!(j["ok"], false);
    let configs = j["configs"].as_array().expect("configs");
    let paths = |c: &Value| -> Vec<String> {
        c["errors"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e["path"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let first = paths(&configs[0]);
    assert!(
        first.iter().any(|p| p == "providers[0].audiencez"),
        "{first:?}"
    );
    assert!(
        first.iter().any(|p| p == "providers[0].jwks_timeout_ms"),
        "{first:?}"
    );
    assert_eq!(configs[1]["valid"], false, "{:#}", configs[1]);
    assert!(
        paths(&configs[1])
            .iter()
            .any(|p| p.starts_with("providers[0].audiences")),
        "{:#}",
        configs[1]
    );
    let broken_places: Vec<&str> = configs
        .iter()
        .filter(|c| c["valid"] == false)
        .filter_map(|c| c["at"].as_str())
        .collect();
    assert_eq!(broken_places.len(), 2, "{broken_places:?}");
    for at in broken_places {
        assert!(r.out.contains(at), "{at}: {}", r.out);
    }
}

/// The mock IdP, the teams config pointed at it, and a temp dir.
struct Idp {
    idp: MockIdp,
    dir: tempfile::TempDir,
    config: String,
}

fn idp() -> Idp {
    let a = Artifacts::locate().unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().expect("tmp");
    let idp = MockIdp::start(&a, dir.path(), &[]).unwrap_or_else(|e| panic!("{e}"));
    let config = write(dir.path(), "teams.json", &teams_filter_config(idp.port));
    Idp { idp, dir, config }
}

fn jwks_file(i: &Idp) -> String {
    let body = aml_harness::http("GET", &i.idp.jwks_uri(TENANT), &[], None).expect("jwks");
    let p = i.dir.path().join("jwks.json");
    std::fs::write(&p, body.body).expect("write");
    p.display().to_string()
}

fn explain(i: &Idp, path: &str, token: Option<&str>, extra: &[&str]) -> (i32, Value) {
    let mut args = vec![
        "explain", "--config", &i.config, "--method", "POST", "--path", path, "--json",
    ];
    if let Some(t) = token {
        args.extend(["--token", t]);
    }
    args.extend_from_slice(extra);
    let r = run(&args);
    assert!(
        r.code == 0 || r.code == 1,
        "exit {}: {}{}",
        r.code,
        r.out,
        r.err
    );
    let j = r.json();
    assert_eq!(j["story_agrees"], true, "{j:#}");
    (r.code, j)
}

const FRAUD: &str = "/teams/fraud/endpoints/fraud-v2/score";
const CHURN: &str = "/teams/churn/endpoints/churn-v1/score";

#[test]
fn explain_inspect_and_online_checks_with_mock_idp_tokens() {
    let i = idp();
    let t = |id: &str, roles: &str, team: Option<&str>| {
        i.idp
            .client_credentials(id, roles, team)
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let fraud = t("fraud-svc", "Endpoint.Score", Some("fraud"));
    let admin = t("platform-admin", "Admin.All", None);
    let no_role = t("intern-app", "", Some("fraud"));
    let forged = i
        .idp
        .token(json!({"sign_with": "forged",
        "claims": {"roles": ["Endpoint.Score"], "team": "fraud"}}))
        .expect("forged");
    let expired = i.idp.token(json!({"expires_in": -600})).expect("expired");
    let jwks = jwks_file(&i);
    let cases: Vec<(&str, Option<&str>, i32, Option<&str>)> = vec![
        (FRAUD, Some(&fraud), 0, None),
        (CHURN, Some(&fraud), 1, Some("insufficient_scope")),
        (CHURN, Some(&admin), 0, None),
        (FRAUD, Some(&no_role), 1, Some("insufficient_scope")),
        (FRAUD, None, 1, Some("token_missing")),
        (FRAUD, Some(&expired), 1, Some("token_expired")),
        ("/elsewhere", Some(&fraud), 1, Some("no_route")),
    ];
    for (path, token, code, reason) in &cases {
        for keys in [vec![], vec!["--jwks-file", jwks.as_str()]] {
            let (c, j) = explain(&i, path, *token, &keys);
            assert_eq!(c, *code, "{path} {keys:?}: {j:#}");
            assert_eq!(j["decision"]["reason"].as_str(), *reason, "{path}: {j:#}");
            assert_eq!(j["decided_by"], "Filter::decide");
            let checked = !keys.is_empty() || token.is_none();
            assert_eq!(j["signature_checked"], checked, "{path} {keys:?}");
        }
    }
    // A forged signature: only a key set tells; without one the output says so loudly.
    let (c, j) = explain(&i, FRAUD, Some(&forged), &["--jwks-file", &jwks]);
    assert_eq!(
        (c, j["decision"]["reason"].as_str()),
        (1, Some("signature_invalid"))
    );
    let r = run(&[
        "explain", "--config", &i.config, "--method", "POST", "--path", FRAUD, "--token", &forged,
    ]);
    assert_eq!(r.code, 0, "{}", r.out);
    assert!(r.out.contains("SIGNATURE NOT CHECKED"), "{}", r.out);
    // The story names the requirement that failed and the claim value it read.
    let r = run(&[
        "explain", "--config", &i.config, "--method", "POST", "--path", CHURN, "--token", &fraud,
    ]);
    assert_eq!(r.code, 1);
    assert!(
        r.out.contains("claim team equals \"churn\"") && r.out.contains("token has \"fraud\""),
        "{}",
        r.out
    );
    assert!(r.out.contains("DENY 403 insufficient_scope"), "{}", r.out);
    assert!(
        !r.out.contains(&fraud) && !r.out.contains("demo-endpoint-key"),
        "no token or secret echoed"
    );
    // --claims and --now.
    let claims = json!({"iss": format!("https://login.microsoftonline.com/{TENANT}/v2.0"), "tid": TENANT,
        "aud": AUDIENCE, "roles": ["Endpoint.Score"], "team": "fraud", "exp": 2_000_000_000u64});
    let c = claims.to_string();
    let (code, j) = explain(&i, FRAUD, None, &["--claims", &c, "--now", "1999990000"]);
    assert_eq!(
        (code, j["signature_checked"].as_bool()),
        (0, Some(false)),
        "{j:#}"
    );
    let (code, j) = explain(&i, FRAUD, None, &["--claims", &c, "--now", "2000001000"]);
    assert_eq!(
        (code, j["decision"]["reason"].as_str()),
        (1, Some("token_expired")),
        "{j:#}"
    );

    // inspect-token: decoded, loudly unverified, signature redacted.
    let r = run(&["inspect-token", &fraud]);
    assert_eq!(r.code, 0, "{}", r.err);
    assert!(
        r.out.contains("NOT VERIFIED") && r.out.contains("expires in"),
        "{}",
        r.out
    );
    let sig = fraud.rsplit('.').next().expect("sig");
    assert!(!r.out.contains(sig), "signature printed");
    let j = run(&["inspect-token", "--json", &fraud]).json();
    assert_eq!(j["verified"], false);
    assert_eq!(j["claims"]["team"], "fraud");
    assert!(j["times"]["exp"]["utc"]
        .as_str()
        .expect("utc")
        .ends_with("UTC"));
    let piped = cli()
        .args(["inspect-token", "-"])
        .write_stdin(format!("Bearer {expired}\n"))
        .output()
        .expect("run");
    assert!(String::from_utf8_lossy(&piped.stdout).contains("EXPIRED"));

    // check-jwks on the mock IdP's key set, by URL and by file.
    let j = run(&["check-jwks", "--json", &i.idp.jwks_uri(TENANT)]).json();
    assert_eq!(j["ok"], true, "{j:#}");
    assert!(j["usable"].as_u64().expect("usable") >= 1);
    assert_eq!(run(&["check-jwks", &jwks]).code, 0);

    // check-config --online: discovery issuer and keys from the mock IdP.
    let mut cfg = teams_filter_config(i.idp.port);
    cfg["providers"][0]["jwks_uri"] = Value::Null;
    cfg["providers"][0]["discovery_uri"] = json!(i.idp.discovery_uri(TENANT));
    cfg["providers"][0]
        .as_object_mut()
        .expect("p")
        .remove("jwks_uri");
    let online = write(i.dir.path(), "online.json", &cfg);
    let r = run(&["check-config", "--online", &online]);
    assert_eq!(r.code, 0, "{}{}", r.out, r.err);
    assert!(
        r.out.contains("fits the configured issuers") && r.out.contains("usable for RS256"),
        "{}",
        r.out
    );
    // Only v1 issuers configured: the v2 discovery document's issuer does not fit.
    cfg["providers"][0]["issuers"] = json!(["https://sts.windows.net/{tenantid}/"]);
    let v1 = write(i.dir.path(), "v1.json", &cfg);
    let j = run(&["check-config", "--online", "--json", &v1]).json();
    assert_eq!(j["ok"], false, "{j:#}");
    let bad: Vec<&Value> = j["configs"][0]["online"]
        .as_array()
        .expect("online")
        .iter()
        .filter(|c| c["ok"] == false)
        .collect();
    assert!(
        bad.iter()
            .any(|c| c["check"].as_str().unwrap_or("").contains("fits none")),
        "{j:#}"
    );
    // An algorithm the IdP has no key for.
    cfg["providers"][0]["issuers"] = json!(["https://login.microsoftonline.com/{tenantid}/v2.0"]);
    cfg["providers"][0]["algorithms"] = json!(["RS256", "ES512"]);
    let es = write(i.dir.path(), "es.json", &cfg);
    let r = run(&["check-config", "--online", &es]);
    // ES512 is not an algorithm the filter accepts at all, or has no key: either way exit 1.
    assert_eq!(r.code, 1, "{}", r.out);
}

#[test]
fn check_jwks_flags_weak_duplicate_and_private_keys() {
    let dir = tempfile::tempdir().expect("tmp");
    let small_n = aml_mocks_b64(&[0xc5; 128]); // 1024 bits
    let big_n = aml_mocks_b64(&[0xd1; 256]);
    let jwks = json!({"keys": [
        {"kty": "RSA", "kid": "a", "use": "sig", "n": big_n, "e": "AQAB"},
        {"kty": "RSA", "kid": "a", "use": "sig", "n": big_n, "e": "AQAB"},
        {"kty": "RSA", "kid": "weak", "use": "sig", "n": small_n, "e": "AQAB"},
        {"kty": "RSA", "kid": "enc", "use": "enc", "n": big_n, "e": "AQAB", "d": "AQAB"},
    ]});
    let f = write(dir.path(), "jwks.json", &jwks);
    let r = run(&["check-jwks", &f]);
    assert_eq!(r.code, 1, "{}", r.out);
    let j = run(&["check-jwks", "--json", &f]).json();
    let flags = |i: usize| j["keys"][i]["flags"].to_string();
    assert!(flags(0).contains("duplicate kid"), "{j:#}");
    assert!(flags(2).contains("weak"), "{j:#}");
    assert!(
        flags(3).contains("PRIVATE") && flags(3).contains("not a signing key"),
        "{j:#}"
    );
    assert_eq!(j["keys"][2]["size"], "1024 bits");
}

fn aml_mocks_b64(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

#[test]
fn mint_signs_for_local_tests_and_explain_verifies_it_with_the_key_set() {
    use jwt_simple::prelude::*;
    let dir = tempfile::tempdir().expect("tmp");
    let pem = ES256KeyPair::generate().to_pem().expect("pem");
    let key = dir.path().join("k.pem");
    std::fs::write(&key, pem).expect("write");
    let jwks = dir.path().join("jwks.json");
    let iss = format!("https://login.microsoftonline.com/{TENANT}/v2.0");
    let claims = json!({"iss": iss, "tid": TENANT, "aud": AUDIENCE, "oid": "o-1"}).to_string();
    let o = cli()
        .args([
            "mint",
            "--key",
            &key.display().to_string(),
            "--claims",
            &claims,
            "--kid",
            "k1",
        ])
        .args(["--jwks-out", &jwks.display().to_string()])
        .output()
        .expect("mint");
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("FOR LOCAL TESTING ONLY"));
    let token = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let mut cfg = base();
    cfg["providers"][0]["algorithms"] = json!(["ES256"]);
    let c = write(dir.path(), "c.json", &cfg);
    let j = dir.path().join("jwks.json").display().to_string();
    let r = run(&[
        "explain",
        "--config",
        &c,
        "--path",
        "/x",
        "--token",
        &token,
        "--jwks-file",
        &j,
        "--json",
    ]);
    assert_eq!(r.code, 0, "{}{}", r.out, r.err);
    let v = r.json();
    assert_eq!(v["signature_checked"], true);
    assert_eq!(v["decision"]["outcome"], "allow");
    // Another key set: the signature no longer fits.
    let other = dir.path().join("other.json");
    let o = cli()
        .args([
            "mint",
            "--key",
            &key.display().to_string(),
            "--claims",
            &claims,
            "--kid",
            "k1",
        ])
        .output()
        .expect("mint");
    assert!(o.status.success());
    let p2 = dir.path().join("k2.pem");
    std::fs::write(&p2, ES256KeyPair::generate().to_pem().expect("pem")).expect("write");
    let o2 = cli()
        .args([
            "mint",
            "--key",
            &p2.display().to_string(),
            "--claims",
            &claims,
            "--kid",
            "k1",
        ])
        .args(["--jwks-out", &other.display().to_string()])
        .output()
        .expect("mint");
    assert!(o2.status.success());
    let r = run(&[
        "explain",
        "--config",
        &c,
        "--path",
        "/x",
        "--token",
        &token,
        "--jwks-file",
        &other.display().to_string(),
        "--json",
    ]);
    assert_eq!(r.code, 1, "{}", r.out);
    assert_eq!(r.json()["decision"]["reason"], "signature_invalid");
}

#[test]
fn help_documents_the_exit_codes() {
    let r = run(&["--help"]);
    assert_eq!(r.code, 0);
    for s in [
        "Exit codes",
        "0  success",
        "1  findings",
        "2  usage",
        "3  explain",
    ] {
        assert!(r.out.contains(s), "{s}: {}", r.out);
    }
    assert_eq!(
        run(&["explain"]).code,
        2,
        "missing arguments are a usage error"
    );
    // Several configs in one file: --at picks one (a route name does), none is a usage error.
    let kong = root().join("kong/kong.yml").display().to_string();
    let r = run(&["explain", "--config", &kong, "--path", "/health"]);
    assert_eq!(r.code, 2, "{}", r.err);
    assert!(r.err.contains("--at"), "{}", r.err);
    let r = run(&[
        "explain", "--config", &kong, "--at", "health", "--path", "/health", "--json",
    ]);
    assert_eq!(r.code, 0, "{}{}", r.out, r.err);
    assert_eq!(r.json()["decision"]["outcome"], "allow");
}

#[test]
fn mint_via_the_mock_idp_gives_tokens_its_key_set_verifies() {
    let i = idp();
    let jwks = i.dir.path().join("minted-jwks.json").display().to_string();
    let claims = json!({"roles": ["Endpoint.Score"], "team": "fraud"}).to_string();
    let r = run(&[
        "mint",
        "--idp",
        &i.idp.base(),
        "--claims",
        &claims,
        "--client-id",
        "my-app",
        "--jwks-out",
        &jwks,
    ]);
    assert_eq!(r.code, 0, "{}", r.err);
    assert!(r.err.contains("FOR LOCAL TESTING ONLY"), "{}", r.err);
    let token = r.out.trim().to_string();
    let (code, j) = explain(&i, FRAUD, Some(&token), &["--jwks-file", &jwks]);
    assert_eq!(
        (code, &j["decision"]["outcome"]),
        (0, &json!("allow")),
        "{j:#}"
    );
    assert_eq!(j["signature_checked"], true, "{j:#}");
    let claims = run(&["inspect-token", "--json", &token]).json();
    assert_eq!(claims["claims"]["azp"], "my-app", "{claims:#}");
    assert_eq!(claims["claims"]["tid"], TENANT, "{claims:#}");
    // A v1 token of another lifetime.
    let r = run(&[
        "mint",
        "--idp",
        &i.idp.base(),
        "--ver",
        "1",
        "--lifetime",
        "60",
    ]);
    assert_eq!(r.code, 0, "{}", r.err);
    let v1 = run(&["inspect-token", "--json", r.out.trim()]).json();
    assert_eq!(v1["claims"]["ver"], "1.0", "{v1:#}");
    let (iat, exp) = (&v1["claims"]["iat"], &v1["claims"]["exp"]);
    assert_eq!(exp.as_u64().zip(iat.as_u64()).map(|(e, i)| e - i), Some(60));
    // Not a mock IdP, an alg it refuses, both signers or none: exit 2 with why.
    let r = run(&["mint", "--idp", &format!("{}/nowhere", i.idp.base())]);
    assert_eq!(r.code, 2, "{}", r.err);
    assert!(r.err.contains("not a mock IdP"), "{}", r.err);
    let r = run(&["mint", "--idp", &i.idp.base(), "--alg", "XX1"]);
    assert_eq!(r.code, 2, "{}", r.err);
    assert!(r.err.contains("alg"), "{}", r.err);
    assert_eq!(
        run(&["mint", "--idp", "http://127.0.0.1:9", "--key", "k.pem"]).code,
        2
    );
    assert_eq!(run(&["mint", "--claims", "{}"]).code, 2);
    assert!(r.out.is_empty());
}
