//! `DEMO_ONCE=1 make demo` runs the tour once and exits: the demo must keep showing allowed
//! and denied calls through the real gateway, on Envoy and (`DEMO_HOST=kong`) on Kong.

use std::process::Command;

use aml_harness::{both_hosts, Host};

both_hosts! {
    fn demo_tour_shows_allowed_and_denied_calls(host: Host) {
        // Fails (never skips) with the build command when something is missing.
        let a = aml_harness::Artifacts::locate_for(host).unwrap_or_else(|e| panic!("{e}"));
        // The demo binary sits beside the mocks (the same profile as this test's harness).
        let demo = a.mock_idp.with_file_name("demo");
        assert!(demo.exists(), "{} not built (run `make mocks`)", demo.display());
        let out = Command::new(demo)
            .env("DEMO_ONCE", "1")
            .env("DEMO_HOST", host.name())
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
}
