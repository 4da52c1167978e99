//! mock-aml: an Azure ML managed online endpoint look-alike. See `aml_mocks::aml`.

use aml_mocks::aml::{self, AadConfig, Config};
use aml_mocks::common::{self, Flags};
use aml_mocks::http;

const USAGE: &str = "usage: mock-aml [--listen 127.0.0.1:0] [--key ENDPOINT_KEY] \
[--aad-jwks URL --aad-audience AUDIENCE [--aad-app-id CLIENT_ID]] [--quiet] [--exit-on-stdin-eof]";

fn main() {
    let flags = match Flags::parse(
        std::env::args().skip(1),
        &["listen", "key", "aad-jwks", "aad-audience", "aad-app-id"],
        &["exit-on-stdin-eof", "quiet", "help"],
    ) {
        Ok(f) if !f.switch("help") => f,
        Ok(_) => {
            println!("{USAGE}");
            return;
        }
        Err(e) => {
            eprintln!("mock-aml: {e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    if flags.switch("exit-on-stdin-eof") {
        common::exit_on_stdin_eof();
    }
    let aad = match (flags.value("aad-jwks"), flags.value("aad-audience")) {
        (Some(jwks), Some(audience)) => Some(AadConfig {
            jwks_url: jwks.to_string(),
            audience: audience.to_string(),
            app_id: flags.value("aad-app-id").map(str::to_string),
        }),
        (None, None) if flags.value("aad-app-id").is_none() => None,
        _ => {
            eprintln!("mock-aml: --aad-jwks and --aad-audience go together (--aad-app-id needs both)\n{USAGE}");
            std::process::exit(2);
        }
    };
    if aad.is_some() && flags.value("key").is_some() {
        eprintln!("mock-aml: --key and --aad-jwks are two auth modes: choose one\n{USAGE}");
        std::process::exit(2);
    }
    let config = Config {
        key: flags.value("key").map(str::to_string),
        aad,
        quiet: flags.switch("quiet"),
    };
    let listen = flags.value_or("listen", "127.0.0.1:0");
    let (server, addr) = match http::bind(&listen) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("mock-aml: {e}");
            std::process::exit(1);
        }
    };
    let mode = match (&config.key, &config.aad) {
        (Some(_), _) => "key".to_string(),
        (None, Some(a)) => format!(
            "aad_token (audience {}, app {})",
            a.audience,
            a.app_id.as_deref().unwrap_or("any")
        ),
        (None, None) => "open".to_string(),
    };
    let running = match aml::serve(server, config) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mock-aml: {e}");
            std::process::exit(1);
        }
    };
    eprintln!("mock-aml: auth mode {mode}");
    common::announce(addr);
    running.wait();
}
