//! `make demo`: runs the gateway locally (Envoy or Kong + filter + mock IdP + mock Azure ML),
//! walks through allowed and denied calls, then keeps it up with ready-to-paste curl commands.
//! `DEMO_ONCE=1` exits after the tour; `DEMO_HOST=kong` runs it through Kong Gateway 3.9
//! (`/opt/kong/bin/kong` or `$AMLK_KONG`) instead of Envoy.

use aml_harness::{
    default_filter_config, teams_filter_config, Gateway, Host, Proxy, Resp, AUDIENCE,
    MANAGED_IDENTITY_CLIENT_ID, OTHER_TENANT,
};
use serde_json::{json, Value};

const BODY: &str = r#"{"input_data": {"data": [[1.0, 2.0, 3.5], [0.5, 0.5, 0.5]]}}"#;

/// One call of the tour: who, which path, with which token, with which extra headers.
type Stop<'a> = (&'a str, &'a str, Option<&'a str>, Vec<(&'a str, &'a str)>);

fn main() {
    if let Err(e) = run() {
        eprintln!("demo failed: {e}");
        std::process::exit(1);
    }
}

fn call(
    gw: &Gateway,
    path: &str,
    token: Option<&str>,
    extra: &[(&str, &str)],
) -> Result<Resp, String> {
    let auth;
    let mut headers: Vec<(&str, &str)> = vec![("content-type", "application/json")];
    if let Some(t) = token {
        auth = format!("Bearer {t}");
        headers.push(("authorization", &auth));
    }
    headers.extend_from_slice(extra);
    aml_harness::http("POST", &gw.url(path), &headers, Some(BODY))
}

fn outcome(r: &Resp) -> String {
    let j = r.json();
    match r.status {
        200 => {
            let seen = &j["received"]["headers"];
            let get = |n: &str| {
                seen.as_array()
                    .and_then(|a| a.iter().find(|p| p[0] == n))
                    .and_then(|p| p[1].as_str())
                    .unwrap_or("-")
                    .to_string()
            };
            format!(
                "ALLOWED 200  predictions={}  backend saw x-caller-oid={} x-caller-team={} deployment={}",
                j["predictions"], get("x-caller-oid"), get("x-caller-team"), j["deployment"]
            )
        }
        s => format!(
            "DENIED  {s}  {}  ({})",
            j["error"].as_str().unwrap_or("?"),
            r.header("www-authenticate")
                .unwrap_or("no WWW-Authenticate")
        ),
    }
}

/// The gateway's own identity instead of an endpoint key: a second gateway whose backend is
/// in `aad_token` mode and accepts only the gateway's managed-identity token (from the mock
/// IdP's IMDS).
fn keyless(host: Host, caller_token: &str) -> Result<(), String> {
    println!("\nAzure ML without endpoint keys: the backend (aad_token mode) accepts only the gateway's own");
    println!(
        "Entra token, which the filter gets from (mock) IMDS as the gateway's managed identity ..."
    );
    let gw = Gateway::builder(host)
        .aad_backend(MANAGED_IDENTITY_CLIENT_ID)
        .start(|idp_port| {
            let mut c = default_filter_config(idp_port);
            c["upstream_credentials"] = json!([{"name": "aml", "managed_identity": {
                "endpoint": format!("http://127.0.0.1:{idp_port}/metadata/identity/oauth2/token"),
                "upstream": "mock_idp"}}]);
            let score = &mut c["routes"][1];
            score["upstream_credential"] = json!("aml");
            if let Some(o) = score.as_object_mut() {
                o.remove("set_request_headers");
            }
            c
        })?;
    let token = gw
        .idp
        .client_credentials("fraud-scoring-svc", "Endpoint.Score", Some("fraud"))
        .unwrap_or_else(|_| caller_token.to_string());
    // The first token request goes out on the workers' first tick.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let r = loop {
        let r = aml_harness::post_score(&gw.url("/score"), Some(&token), &[])?;
        if r.status == 200 || std::time::Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let j = r.json();
    let auth = r.backend_values("authorization");
    let caller_token_seen = r.body.contains(&token);
    println!(
        "{:<52} POST /score\n    -> {}",
        "fraud service, route with upstream_credential",
        if r.status == 200 {
            format!(
                "ALLOWED 200  backend verified the caller app {} (the gateway), Authorization: Bearer {}...; caller's token upstream: {}",
                j["caller_appid"].as_str().unwrap_or("?"),
                auth.first()
                    .and_then(|a| a.strip_prefix("Bearer "))
                    .map(|t| t.chars().take(12).collect::<String>())
                    .unwrap_or_default(),
                if caller_token_seen { "YES (bug)" } else { "no" }
            )
        } else {
            outcome(&r)
        }
    );
    let denied = aml_harness::post_score(&gw.url("/score"), None, &[])?;
    println!(
        "{:<52} POST /score\n    -> {}",
        "anonymous caller, same route",
        outcome(&denied)
    );
    println!(
        "    mock IMDS answered {} token request(s) for the whole node",
        gw.idp.imds_requests().unwrap_or(0)
    );
    Ok(())
}

fn run() -> Result<(), String> {
    let host = Host::from_env("DEMO_HOST")?;
    println!(
        "Starting the local gateway: mock Entra ID, mock Azure ML endpoint, {} + azure_ml_kong.wasm ...",
        host.product()
    );
    let gw = Gateway::start_on(host, teams_filter_config)?;
    println!("  gateway   {}", gw.url(""));
    println!("  mock IdP  {}", gw.idp.base());
    println!("  backend   http://127.0.0.1:{}", gw.aml.port);
    println!();

    let idp = &gw.idp;
    let fraud = idp.client_credentials("fraud-scoring-svc", "Endpoint.Score", Some("fraud"))?;
    let admin = idp.client_credentials("ml-platform-admin", "Admin.All", None)?;
    let expired = idp.token(
        json!({"claims": {"roles": ["Endpoint.Score"], "team": "fraud"}, "expires_in": -600}),
    )?;
    let wrong_aud = idp.token(json!({"claims": {"aud": "api://some-other-api", "roles": ["Endpoint.Score"], "team": "fraud"}}))?;
    let forged = idp.token(
        json!({"claims": {"roles": ["Endpoint.Score"], "team": "fraud"}, "sign_with": "forged"}),
    )?;
    let other_tenant = idp.token(
        json!({"tenant": OTHER_TENANT, "claims": {"roles": ["Endpoint.Score"], "team": "fraud"}}),
    )?;

    let fraud_path = "/teams/fraud/endpoints/fraud-v2/score";
    let churn_path = "/teams/churn/endpoints/churn-v1/score";
    let tour: Vec<Stop> = vec![
        ("anonymous caller", fraud_path, None, vec![]),
        (
            "fraud service (role Endpoint.Score, team fraud)",
            fraud_path,
            Some(&fraud),
            vec![],
        ),
        (
            "fraud service -> churn team's model",
            churn_path,
            Some(&fraud),
            vec![],
        ),
        (
            "platform admin (role Admin.All) -> churn",
            churn_path,
            Some(&admin),
            vec![],
        ),
        (
            "fraud service spoofing x-caller-oid",
            fraud_path,
            Some(&fraud),
            vec![("x-caller-oid", "00000000-spoofed")],
        ),
        ("expired token", fraud_path, Some(&expired), vec![]),
        (
            "token for another API (aud)",
            fraud_path,
            Some(&wrong_aud),
            vec![],
        ),
        ("forged signature", fraud_path, Some(&forged), vec![]),
        (
            "token from a foreign tenant",
            fraud_path,
            Some(&other_tenant),
            vec![],
        ),
    ];
    let health = aml_harness::http("GET", &gw.url("/health"), &[], None)?;
    println!(
        "{:<52} GET  /health\n    -> {}\n",
        "health probe (auth: none)",
        if health.status == 200 {
            "ALLOWED 200 (no token needed)".to_string()
        } else {
            outcome(&health)
        }
    );
    for (who, path, token, extra) in &tour {
        let r = call(&gw, path, *token, extra)?;
        println!("{who:<52} POST {path}\n    -> {}\n", outcome(&r));
    }

    // Envoy flushes its log file every 50 ms (see the harness); nginx writes at once.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let audit = gw.wait_audit_lines(tour.len() + 1, std::time::Duration::from_secs(5));
    println!(
        "{} logged {} audit lines, one JSON line per decision ({}). The last one:",
        host.product(),
        audit.len(),
        gw.log_path().display()
    );
    if let Some(line) = audit.last() {
        println!("    {line}");
    }
    keyless(host, &fraud)?;
    if std::env::var("DEMO_ONCE")
        .map(|v| v == "1")
        .unwrap_or(false)
    {
        return Ok(());
    }
    println!("\nThe gateway stays up. Try it yourself (Ctrl-C to stop):\n");
    println!("TOKEN=$(curl -s -X POST {}/{}/oauth2/v2.0/token -d 'grant_type=client_credentials&client_id=my-app&client_secret=x&scope={AUDIENCE}/.default&roles=Endpoint.Score&team=fraud' | sed -E 's/.*\"access_token\":\"([^\"]+)\".*/\\1/')",
        gw.idp.base(), aml_harness::TENANT);
    println!("# or, with the operator CLI: TOKEN=$(cargo run -q -p azure-ml-kong-cli -- mint --idp {} --claims '{{\"roles\": [\"Endpoint.Score\"], \"team\": \"fraud\"}}')",
        gw.idp.base());
    println!("curl -i -X POST {} -H \"Authorization: Bearer $TOKEN\" -H 'content-type: application/json' -d '{BODY}'", gw.url(fraud_path));
    println!(
        "curl -i -X POST {} -H \"Authorization: Bearer $TOKEN\" -d '{{}}'   # other team: 403",
        gw.url(churn_path)
    );
    println!(
        "curl -i -X POST {} -d '{{}}'   # no token: 401",
        gw.url(fraud_path)
    );
    match &gw.proxy {
        Proxy::Envoy(e) => println!(
            "curl -s 'http://127.0.0.1:{}/stats?filter=wasmcustom'   # the filter's metrics",
            e.admin_port
        ),
        Proxy::Kong(k) => println!(
            "curl -s {} | grep pw_azure_ml_kong   # the filter's metrics",
            k.status_url("/metrics")
        ),
    }
    let _: Value = Value::Null;
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
