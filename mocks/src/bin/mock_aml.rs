//! mock-aml: an Azure ML managed online endpoint look-alike. See `aml_mocks::aml`.

use aml_mocks::aml::{self, Config};
use aml_mocks::common::{self, Flags};
use aml_mocks::http;

const USAGE: &str =
    "usage: mock-aml [--listen 127.0.0.1:0] [--key ENDPOINT_KEY] [--quiet] [--exit-on-stdin-eof]";

fn main() {
    let flags = match Flags::parse(
        std::env::args().skip(1),
        &["listen", "key"],
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
    let config = Config {
        key: flags.value("key").map(str::to_string),
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
    let mode = if config.key.is_some() { "key" } else { "open" };
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
