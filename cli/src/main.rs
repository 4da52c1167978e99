//! `azure-ml-kong`: the operator CLI. Every check and decision comes from the filter's own
//! sans-IO core (the `azure-ml-kong` crate); this binary only reads files, talks to IdPs
//! for `--online` / `check-jwks URL`, and prints.

mod check_config;
mod explain_cmd;
mod jwks_cmd;
mod load;
mod normalized;
mod sign;
mod style;
mod token_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

const EXIT_CODES: &str = "\
Exit codes:
  0  success: the config is valid, the request is allowed, the key set is usable
  1  findings: config errors, the request is denied, weak/unusable keys, an online check failed
  2  usage error, or an input that could not be read or fetched (mint: the IdP refused)
  3  explain: its step-by-step story and the filter's decision differ (a bug: please report)";

#[derive(Parser)]
#[command(
    name = "azure-ml-kong",
    version,
    about = "Check a config, explain a decision, inspect a token or key set, with the filter's own code",
    after_help = EXIT_CODES
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check filter configs: a JSON config, a kong.yml (filter_chains / plugins entries named
    /// azure_ml_kong) or an Envoy bootstrap (each wasm filter's configuration).
    #[command(after_help = EXIT_CODES)]
    CheckConfig {
        file: PathBuf,
        /// Print each config with every default filled in (secrets redacted).
        #[arg(long)]
        print_normalized: bool,
        /// Also fetch each provider's discovery document and JWKS and check them.
        #[arg(long)]
        online: bool,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Explain, step by step, how the filter decides one request.
    #[command(after_help = EXIT_CODES)]
    Explain(explain_cmd::Args),
    /// Decode a token WITHOUT verifying it (header, claims, times); the signature is redacted.
    #[command(after_help = EXIT_CODES)]
    InspectToken {
        /// The token, or `-` to read it from standard input.
        token: String,
        /// Unix time to compute "expires in" against (default: now).
        #[arg(long)]
        now: Option<u64>,
        #[arg(long)]
        json: bool,
    },
    /// List a key set's keys and flag weak, unusable and duplicate ones.
    #[command(after_help = EXIT_CODES)]
    CheckJwks {
        /// A JWKS file, or an http(s) URL.
        source: String,
        #[arg(long)]
        json: bool,
    },
    /// FOR LOCAL TESTING ONLY: have a running mock IdP sign a token (--idp URL), or sign one
    /// with a local key (--key FILE).
    #[command(after_help = EXIT_CODES)]
    Mint(sign::MintArgs),
}

/// A command's outcome: exit code 0, 1 or 3 (2 is an `Err`).
pub type Outcome = Result<u8, String>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.command {
        Command::CheckConfig {
            file,
            print_normalized,
            online,
            json,
        } => check_config::run(&file, print_normalized, online, json),
        Command::Explain(a) => explain_cmd::run(&a),
        Command::InspectToken { token, now, json } => token_cmd::inspect(&token, now, json),
        Command::CheckJwks { source, json } => jwks_cmd::run(&source, json),
        Command::Mint(a) => sign::mint(&a),
    };
    match r {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("azure-ml-kong: {e}");
            ExitCode::from(2)
        }
    }
}

/// Now, in unix seconds.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
