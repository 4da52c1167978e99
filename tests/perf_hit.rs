//! Ad-hoc measurement of the warm (cache-hit) path on both real hosts: one gateway worker
//! pinned to `PERF_GATEWAY_CPU` (default 0), Debian `wrk` and the mocks on the core this
//! test runs on, one valid token on every request. Prints numbers and asserts none
//! (ignored; not part of any suite):
//!
//! ```text
//! PERF_WASMS=before.wasm,after.wasm taskset -c 1 cargo test --test perf_hit -- \
//!     --ignored --nocapture --test-threads 1
//! ```

use std::process::Command;

use aml_harness::{default_filter_config, Gateway, Host};
use serde_json::json;

/// Requests/s and requests completed.
fn wrk(url: &str, headers: &[String], seconds: u64) -> (f64, f64) {
    let mut cmd = Command::new("wrk");
    cmd.args(["-t1", "-c16"]).arg(format!("-d{seconds}s"));
    for h in headers {
        cmd.args(["-H", h]);
    }
    let out = cmd.arg(url).output().expect("wrk (apt-get install -y wrk)");
    let text = String::from_utf8_lossy(&out.stdout);
    let non_2xx = text
        .lines()
        .find(|l| l.contains("Non-2xx"))
        .unwrap_or("")
        .to_string();
    assert!(non_2xx.is_empty(), "{text}");
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Requests/sec in {text}"));
    let requests = text
        .lines()
        .find_map(|l| l.trim().split_once(" requests in "))
        .and_then(|(n, _)| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no request count in {text}"));
    (rps, requests)
}

/// CPU time the gateway's threads have run, in ns (`/proc/<pid>/task/*/schedstat`): per
/// request, it does not depend on what else competes for the core.
fn cpu_ns(pids: &[u32]) -> u64 {
    pids.iter()
        .flat_map(|p| {
            std::fs::read_dir(format!("/proc/{p}/task"))
                .into_iter()
                .flatten()
                .flatten()
        })
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// (requests/s, gateway CPU µs per request) of one wrk run.
fn run(pids: &[u32], url: &str, headers: &[String], seconds: u64) -> (f64, f64) {
    let before = cpu_ns(pids);
    let (rps, n) = wrk(url, headers, seconds);
    let cpu = (cpu_ns(pids) - before) as f64 / 1000.0;
    (rps, cpu / n.max(1.0))
}

/// One gateway per module in `PERF_WASMS` (comma-separated; default: the built one), all
/// up at once and measured in turn, round after round, so machine noise spreads evenly.
fn measure(host: Host) {
    let wasms: Vec<String> = std::env::var("PERF_WASMS")
        .map(|v| v.split(',').map(str::to_string).collect())
        .unwrap_or_else(|_| vec![String::new()]);
    let seconds: u64 = env_num("PERF_SECONDS", 8);
    let rounds = env_num("PERF_ROUNDS", 3) as usize;
    let mut gws = Vec::new();
    for w in &wasms {
        if !w.is_empty() {
            // Read by the harness when the gateway starts; the tests run one at a time.
            std::env::set_var("FILTER_WASM", w);
        }
        let level = if host == Host::Kong {
            "notice"
        } else {
            "warning"
        };
        let gw = Gateway::builder(host)
            .workers(1)
            .log_level(level)
            .start(default_filter_config)
            .unwrap_or_else(|e| panic!("{e}"));
        let pids = pin(&gw.dir().display().to_string());
        let token = gw.idp.token(json!({})).unwrap_or_else(|e| panic!("{e}"));
        let auth = vec![format!("Authorization: Bearer {token}")];
        // Warm: keys fetched, token verified and cached, the VM's code compiled.
        wrk(&gw.url("/"), &auth, 2);
        wrk(&gw.url("/health"), &[], 1);
        gws.push((w.clone(), gw, pids, auth, Vec::new(), Vec::new()));
    }
    for _ in 0..rounds {
        for (_, gw, pids, auth, warm, anon) in gws.iter_mut() {
            warm.push(run(pids, &gw.url("/"), auth, seconds));
            anon.push(run(pids, &gw.url("/health"), &[], seconds));
        }
    }
    let median = |v: &[(f64, f64)], f: fn(&(f64, f64)) -> f64| {
        let mut v: Vec<f64> = v.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    for (w, gw, _, _, warm, anon) in &gws {
        println!(
            "PERF {host} {w}: warm token {:.0} req/s, {:.1} CPU µs/req; auth:none route {:.0} req/s, {:.1} CPU µs/req; rounds {warm:.1?} / {anon:.1?}; verifications_total {:?}",
            median(warm, |x| x.0),
            median(warm, |x| x.1),
            median(anon, |x| x.0),
            median(anon, |x| x.1),
            gw.metric("verifications_total")
        );
    }
}

/// Move the gateway's processes (those naming its directory, and their children: Kong's
/// workers) to `PERF_GATEWAY_CPU`; returns them.
fn pin(dir: &str) -> Vec<u32> {
    let cpu = std::env::var("PERF_GATEWAY_CPU").unwrap_or_else(|_| "0".into());
    let procs: Vec<(u32, u32, String)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let ppid = stat
                .rsplit(')')
                .next()?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            Some((pid, ppid, String::from_utf8_lossy(&cmd).into_owned()))
        })
        .collect();
    let mut set: Vec<u32> = procs
        .iter()
        .filter(|(_, _, c)| c.contains(dir) && !c.contains("mock-"))
        .map(|p| p.0)
        .collect();
    for (pid, ppid, _) in &procs {
        if set.contains(ppid) && !set.contains(pid) {
            set.push(*pid);
        }
    }
    assert!(!set.is_empty(), "no gateway process names {dir}");
    println!("PERF pinned {set:?} to cpu {cpu}");
    for pid in &set {
        let _ = Command::new("taskset")
            .args(["-a", "-p", "-c", &cpu, &pid.to_string()])
            .output();
    }
    set
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

#[test]
#[ignore = "measurement: prints numbers, run by hand"]
fn warm_path_envoy() {
    measure(Host::Envoy);
}

#[test]
#[ignore = "measurement: prints numbers, run by hand"]
fn warm_path_kong() {
    measure(Host::Kong);
}
