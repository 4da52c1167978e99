//! `make bench` in smoke mode (`BENCH_SMOKE=1`: every variant for a second, two connections,
//! no warm-up, one round) on each host, so the bench cannot rot. Nothing about speed is
//! asserted: only that every variant ran, answered its valid callers, refused every forged
//! token, and that the report has the fields docs/BENCH.md describes.

use std::process::Command;

use aml_harness::Host;
use serde_json::Value;

fn smoke(host: Host) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("results.json");
    let run = Command::new(env!("CARGO_BIN_EXE_bench"))
        .env("BENCH_SMOKE", "1")
        .env("BENCH_HOSTS", host.name())
        .env("BENCH_OUT", &out)
        .env_remove("BENCH_VARIANTS")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "bench smoke on {host} failed ({}):\n{stdout}\n{stderr}",
        run.status
    );
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(doc["smoke"], true);
    let variants = doc["variants"].as_array().unwrap();
    let ids: Vec<&str> = variants.iter().filter_map(|v| v["id"].as_str()).collect();
    let mut want = vec!["none", "minimal", "native"];
    if host == Host::Envoy {
        want.push("native_cache");
    }
    want.extend([
        "ours_warm",
        "ours_quiet",
        "ours_distinct",
        "ours_flood",
        "ours_cache1",
        "ours_callers",
        "ours_rate",
        "ours_limits",
    ]);
    assert_eq!(ids, want, "{stdout}");
    for v in variants {
        assert_eq!(v["host"], host.name());
        let round = &v["rounds"][0];
        assert!(round["load"]["ok"].as_u64().unwrap() > 0, "{v}");
        assert!(
            v["median"]["requests_per_second"].as_f64().unwrap() > 0.0,
            "{v}"
        );
        if v["id"] == "ours_flood" {
            assert!(round["forged"]["requests"].as_u64().unwrap() > 0, "{v}");
            assert_eq!(round["forged"]["ok"], 0, "a forged token was accepted: {v}");
        }
    }
    assert!(doc["wasm"]["ours"]["bytes"].as_u64().unwrap() > 0);
    assert!(doc["wasm"]["minimal"]["bytes"].as_u64().unwrap() > 0);
    assert!(stdout.contains("ratios (medians):"), "{stdout}");
}

#[test]
fn bench_smoke_envoy() {
    smoke(Host::Envoy)
}

#[test]
fn bench_smoke_kong() {
    smoke(Host::Kong)
}
