//! mock-idp: a Microsoft Entra ID look-alike for tests. See `aml_mocks::idp`.

use std::sync::Arc;
use std::time::Instant;

use aml_mocks::common::{self, Flags};
use aml_mocks::http;
use aml_mocks::idp::{self, Config, Idp};

const USAGE: &str = "usage: mock-idp [--listen 127.0.0.1:0] [--issuer-template T] \
[--v1-issuer-template T] [--default-tenant GUID] [--kid-prefix P] [--hmac-secret S] \
[--exit-on-stdin-eof]";

fn main() {
    let flags = match Flags::parse(
        std::env::args().skip(1),
        &[
            "listen",
            "issuer-template",
            "v1-issuer-template",
            "default-tenant",
            "kid-prefix",
            "hmac-secret",
        ],
        &["exit-on-stdin-eof", "help"],
    ) {
        Ok(f) if !f.switch("help") => f,
        Ok(_) => {
            println!("{USAGE}");
            return;
        }
        Err(e) => {
            eprintln!("mock-idp: {e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    if flags.switch("exit-on-stdin-eof") {
        common::exit_on_stdin_eof();
    }
    let config = Config {
        issuer_template: flags.value_or("issuer-template", idp::DEFAULT_ISSUER_TEMPLATE),
        v1_issuer_template: flags.value_or("v1-issuer-template", idp::DEFAULT_V1_ISSUER_TEMPLATE),
        default_tenant: flags.value_or("default-tenant", idp::DEFAULT_TENANT),
        kid_prefix: flags.value_or("kid-prefix", idp::DEFAULT_KID_PREFIX),
        hmac_secret: flags.value_or("hmac-secret", idp::DEFAULT_HMAC_SECRET),
    };
    let listen = flags.value_or("listen", "127.0.0.1:0");
    let (server, addr) = match http::bind(&listen) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("mock-idp: {e}");
            std::process::exit(1);
        }
    };
    let started = Instant::now();
    let idp = match Idp::new(config, addr) {
        Ok(idp) => Arc::new(idp),
        Err(e) => {
            eprintln!("mock-idp: {e}");
            std::process::exit(1);
        }
    };
    eprintln!(
        "mock-idp: generated keys (RSA-2048, P-256, P-384, Ed25519) in {} ms",
        started.elapsed().as_millis()
    );
    let running = match idp.serve(server) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mock-idp: {e}");
            std::process::exit(1);
        }
    };
    common::announce(addr);
    running.wait();
}
