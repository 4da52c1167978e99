//! Cold-path (every request verifies RS256) throughput of one or more filter builds in
//! real Envoy and real Kong: one gateway worker pinned to core 0, `wrk` (one thread) on
//! core 1, `cache.max_entries: 1` and a pool of distinct tokens walked round-robin.
//! Rounds interleave the builds and hosts; prints requests/s per run and the medians.
//!
//! `cargo run --release -p aml-harness --example cold -- ROUNDS SECONDS name=path.wasm ...`
//! (`COLD_HOSTS=envoy,kong` by default).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use aml_harness::{default_filter_config, Gateway, Host, MockIdp};
use serde_json::json;

fn mint(idp: &MockIdp, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            idp.token(json!({"client_id": format!("cold-client-{i}")}))
                .unwrap()
        })
        .collect()
}

/// Pin to core 0 every nginx/envoy process whose command line names `dir`, and their
/// children (the nginx workers).
fn pin(dir: &str) {
    let mut pids = Vec::new();
    let mut parents = BTreeMap::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let ppid: u32 = stat
            .rsplit(')')
            .next()
            .and_then(|s| s.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        parents.insert(pid, ppid);
        if cmd.contains(dir) && (cmd.contains("nginx") || cmd.contains("envoy")) {
            pids.push(pid);
        }
    }
    let roots = pids.clone();
    for (pid, ppid) in &parents {
        if roots.contains(ppid) {
            pids.push(*pid);
        }
    }
    for pid in &pids {
        let _ = Command::new("taskset")
            .args(["-a", "-p", "-c", "0", &pid.to_string()])
            .output();
    }
    eprintln!("pinned {pids:?} to core 0");
}

fn run_one(host: Host, wasm: &Path, seconds: u32, tmp: &Path) -> f64 {
    std::env::set_var("FILTER_WASM", wasm);
    let gw = Gateway::builder(host)
        .workers(1)
        .log_level("error")
        .start(|port| {
            let mut c = default_filter_config(port);
            c["cache"] = json!({"max_entries": 1});
            c
        })
        .unwrap();
    let dir = match host {
        Host::Kong => gw
            .kong()
            .log_path()
            .parent()
            .unwrap()
            .parent()
            .unwrap()
            .to_path_buf(),
        Host::Envoy => gw.envoy().log_path.parent().unwrap().to_path_buf(),
    };
    pin(&dir.to_string_lossy());
    let tokens = mint(&gw.idp, 200);
    let tfile = tmp.join("tokens.txt");
    std::fs::write(&tfile, tokens.join("\n")).unwrap();
    let first = aml_harness::http(
        "GET",
        &gw.url("/"),
        &[("authorization", &format!("Bearer {}", tokens[0]))],
        None,
    )
    .unwrap();
    assert_eq!(first.status, 200, "{}", first.body);
    let script = tmp.join("rotate.lua");
    std::fs::write(
        &script,
        format!(
            r#"local tokens = {{}}
for line in io.lines("{}") do tokens[#tokens + 1] = line end
local i = 0
request = function()
  i = i % #tokens + 1
  return wrk.format("GET", "/", {{["Authorization"] = "Bearer " .. tokens[i]}})
end
"#,
            tfile.display()
        ),
    )
    .unwrap();
    let out = Command::new("taskset")
        .args(["-c", "1", "wrk", "-t1", "-c4"])
        .arg(format!("-d{seconds}s"))
        .arg("-s")
        .arg(&script)
        .arg(gw.url("/"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    if let Some(l) = text.lines().find(|l| l.contains("Non-2xx")) {
        eprintln!("  {l}");
    }
    rps
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rounds: usize = args[0].parse().unwrap();
    let seconds: u32 = args[1].parse().unwrap();
    let builds: Vec<(String, String)> = args[2..]
        .iter()
        .map(|a| {
            let (n, p) = a.split_once('=').unwrap();
            (
                n.to_string(),
                std::fs::canonicalize(p).unwrap().display().to_string(),
            )
        })
        .collect();
    let hosts: Vec<Host> = std::env::var("COLD_HOSTS")
        .unwrap_or_else(|_| "envoy,kong".into())
        .split(',')
        .map(|h| Host::parse(h).unwrap())
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    let mut all: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
    for r in 0..rounds {
        for host in &hosts {
            for (name, path) in &builds {
                let rps = run_one(*host, Path::new(path), seconds, tmp.path());
                println!("round {r} {host} {name}: {rps:.0} req/s");
                all.entry((host.to_string(), name.clone()))
                    .or_default()
                    .push(rps);
            }
        }
    }
    for ((host, name), mut v) in all {
        v.sort_by(f64::total_cmp);
        let median = v[v.len() / 2];
        println!("median {host} {name}: {median:.0} req/s  (runs {v:?})");
    }
}
