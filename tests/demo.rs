//! `DEMO_ONCE=1 make demo` runs the tour once and exits: the demo must keep showing allowed
//! and denied calls through the real gateway.

use std::process::Command;

#[test]
fn demo_tour_shows_allowed_and_denied_calls() {
    // Fails (never skips) with the build command when something is missing.
    let a = aml_harness::Artifacts::locate().unwrap_or_else(|e| panic!("{e}"));
    let demo = a
        .mock_idp
        .parent()
        .map(|d| d.join("demo"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| panic!("target/release/demo not built (run `make mocks`)"));
    let out = Command::new(demo)
        .env("DEMO_ONCE", "1")
        .output()
        .expect("run the demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "ALLOWED 200",
        "DENIED  401  token_missing",
        "DENIED  403  insufficient_scope",
        "DENIED  401  token_expired",
        "DENIED  401  signature_invalid",
        "DENIED  401  tenant_not_allowed",
        "audit lines",
    ] {
        assert!(
            stdout.contains(want),
            "demo output lacks {want:?}:\n{stdout}"
        );
    }
    assert!(
        !stdout.contains("00000000-spoofed"),
        "a spoofed header reached the backend"
    );
}
