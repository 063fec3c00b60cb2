//! The command line: clap's definitions and one small module per verb. `main.rs` only calls
//! [`main`]. Exit codes: 0 done, 1 failed, 2 bad input (a config problem, a bad argument).

mod check;
mod demo;
mod keygen;
pub mod pairings;
mod run;
mod sim;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Config, ProcessEnv};

#[derive(Parser)]
#[command(
    name = "pkb-edge",
    version,
    about = "Edge proxy that launches a hospital system's users into Patients Know Best"
)]
pub struct Cli {
    /// How log lines are written to standard error (the filter is the PKB_EDGE_LOG variable,
    /// e.g. `info` or `pkb_edge=debug`).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// `demo --identity`: how the EHR demo's front names the user.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DemoIdentity {
    Header,
    Jwt,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
pub(crate) enum PairingsCommand {
    /// Every pairing: user id, created, last refreshed, access-token expiry, key id. No tokens.
    List {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Delete one user's pairing (they must link again); written to the audit log.
    Revoke {
        user: String,
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Re-encrypt every pairing under the first key in store.keys. Safe to interrupt and run
    /// again, and to run beside a live pkb-edge.
    Rekey {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Copy every pairing from one store to another (e.g. sqlite://… to postgres://…), as
    /// sealed, with the config's keys; skips users already there, so it resumes when run again.
    Migrate {
        #[arg(long, short)]
        config: PathBuf,
        /// The store to copy from.
        #[arg(long)]
        from: String,
        /// The store to copy to; defaults to the config's store.url.
        #[arg(long)]
        to: Option<String>,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Run {
        #[arg(long, short)]
        config: PathBuf,
        /// Take the listening sockets over from the running pkb-edge (same server.upgrade_sock);
        /// then send that process SIGQUIT. No connection is refused and in-flight requests finish.
        #[arg(long)]
        upgrade: bool,
        /// Fork into the background once the sockets are ready, writing server.pid_file (for
        /// systemd's Type=forking, which lets `systemctl reload` upgrade without a gap).
        #[arg(long)]
        daemon: bool,
    },
    /// Look after the token store: list, revoke, re-encrypt.
    Pairings {
        #[command(subcommand)]
        command: PairingsCommand,
    },
    /// Validate a configuration file and explain each problem by key.
    Check {
        #[arg(long, short)]
        config: PathBuf,
        /// Also open what start-up opens: every certificate and key (each broken file named),
        /// the token store (keys checked against it) and the audit file. Use before a reload.
        #[arg(long)]
        deep: bool,
    },
    /// Print a new encryption key line (KEY_ID:BASE64_32_BYTES) for store.keys_file; with
    /// --nhs-login, write a new NHS login RP key (RSA 2048, PEM) to --out and print its public
    /// half, the PEM to register with NHS login.
    Keygen {
        /// The key's id; defaults to one made from today's date.
        #[arg(long)]
        id: Option<String>,
        #[arg(long)]
        nhs_login: bool,
        /// Where the NHS login private key goes (created with mode 0600; never overwritten).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Everything on loopback: the PKB simulator, a sample EHR, the proxy, and a stand-in for the
    /// hospital's sign-on in front. Prints the one URL to open.
    Demo {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        /// A patient portal instead of an EHR: pkb-edge signs patients in with (simulated) NHS
        /// login, and single sign-on works both ways with (simulated) PKB.
        #[arg(long)]
        portal: bool,
        /// How the EHR demo's sign-on front tells pkb-edge who the user is: `header` (a header
        /// from a trusted address) or `jwt` (an ES256 assertion signed the way Pomerium does).
        #[arg(long, value_enum, default_value = "header")]
        identity: DemoIdentity,
        /// Over HTTPS, with a CA made for the run: pkb-edge's listener speaks TLS (in the EHR
        /// demo the front serves the browser over HTTPS too and reaches pkb-edge with a client
        /// certificate, trusted by name). The banner says how to make the browser trust it.
        #[arg(long)]
        tls: bool,
    },
    /// Run the PKB simulator alone.
    Sim {
        #[arg(long, default_value = "127.0.0.1:9400")]
        listen: String,
        #[arg(long, default_value = "pkb-edge")]
        client_id: String,
        #[arg(long, default_value = "sim-secret")]
        client_secret: String,
        #[arg(long, default_value_t = 1800)]
        access_token_lifetime_secs: i64,
        /// Also run the NHS login simulator on this address (its issuer is http://ADDR).
        #[arg(long)]
        nhs_login: Option<String>,
        /// A relying party to register with the NHS login simulator: its client id...
        #[arg(long, requires_all = ["nhs_login", "nhs_rp_public_key", "nhs_rp_redirect_uri"])]
        nhs_rp_client_id: Option<String>,
        /// ...its public key (PEM, as `keygen --nhs-login` prints it)...
        #[arg(long, requires = "nhs_rp_client_id")]
        nhs_rp_public_key: Option<PathBuf>,
        /// ...and its redirect URI(s).
        #[arg(long, requires = "nhs_rp_client_id")]
        nhs_rp_redirect_uri: Vec<String>,
        /// Where the simulated PKB's pages link back to, with an `assertedLoginIdentity`.
        #[arg(long, requires = "nhs_login")]
        portal_url: Option<String>,
    },
}

/// Parses the command line and runs the verb.
pub fn main() -> ExitCode {
    // One TLS crypto provider for the whole process, whatever features the dependency graph has.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let log_format = cli.log_format;
    match cli.command {
        Command::Run {
            config,
            upgrade,
            daemon,
        } => {
            init_logging(log_format);
            run::run(&config, upgrade, daemon)
        }
        Command::Pairings { command } => pairings::command(command),
        Command::Check { config, deep } => check::check(&config, deep),
        Command::Keygen { id, nhs_login, out } => keygen::keygen(id, nhs_login, out.as_deref()),
        Command::Demo {
            listen,
            portal,
            identity,
            tls,
        } => {
            init_logging(log_format);
            if portal {
                demo::portal(&listen, tls)
            } else {
                demo::ehr(&listen, identity == DemoIdentity::Jwt, tls)
            }
        }
        Command::Sim {
            listen,
            client_id,
            client_secret,
            access_token_lifetime_secs,
            nhs_login,
            nhs_rp_client_id,
            nhs_rp_public_key,
            nhs_rp_redirect_uri,
            portal_url,
        } => {
            init_logging(log_format);
            let rp = match sim::relying_party(
                nhs_rp_client_id,
                nhs_rp_public_key,
                nhs_rp_redirect_uri,
            ) {
                Ok(rp) => rp,
                Err(code) => return code,
            };
            sim::run(sim::SimArgs {
                listen,
                client_id,
                client_secret,
                access_token_lifetime_secs,
                nhs_login,
                rp,
                portal_url,
            })
        }
    }
}

/// Set to 1 to let other crates' debug and trace lines through (see `init_logging`).
const UNSAFE_DEBUG: &str = "PKB_EDGE_LOG_UNSAFE_DEBUG";

/// Logs to standard error, filtered by `PKB_EDGE_LOG` (default `info`). Other crates' lines
/// (Pingora's above all, which print whole request headers and targets at debug and trace:
/// cookies, codes, states, NHS numbers, GP credentials) are capped at `info` whatever
/// `PKB_EDGE_LOG` says, unless `PKB_EDGE_LOG_UNSAFE_DEBUG=1`, which is announced with a warning.
fn init_logging(format: LogFormat) {
    use tracing_subscriber::filter::FilterExt;
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_env("PKB_EDGE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let unsafe_debug = std::env::var(UNSAFE_DEBUG).is_ok_and(|v| v == "1");
    // The cap only ever removes lines, so it never raises the level `PKB_EDGE_LOG` asks for:
    // saying so keeps the `log` crate's level check static, and Pingora's many debug and trace
    // calls cost nothing when filtered out (without the hint, each would be dispatched).
    let capped = tracing_subscriber::filter::filter_fn(move |meta| {
        unsafe_debug
            || *meta.level() <= tracing::Level::INFO
            || meta.target() == "pkb_edge"
            || meta.target().starts_with("pkb_edge::")
    })
    .with_max_level_hint(tracing::level_filters::LevelFilter::TRACE);
    let wanted = filter.max_level_hint();
    let filter = filter.and(capped);
    let layer = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry();
    match format {
        LogFormat::Text => registry.with(layer.with_filter(filter)).init(),
        // One JSON object per line; the request span's `request_id` comes along on each.
        LogFormat::Json => registry
            .with(layer.json().flatten_event(true).with_filter(filter))
            .init(),
    }
    // Only other crates log through the `log` crate (pkb-edge uses `tracing`): cap its static
    // level too, so Pingora's debug and trace calls end at the macro instead of being
    // formatted, dispatched and then filtered out.
    if !unsafe_debug {
        let level = match wanted {
            Some(l) if l < tracing::level_filters::LevelFilter::INFO => l,
            _ => tracing::level_filters::LevelFilter::INFO,
        };
        log::set_max_level(match level.into_level() {
            None => log::LevelFilter::Off,
            Some(tracing::Level::ERROR) => log::LevelFilter::Error,
            Some(tracing::Level::WARN) => log::LevelFilter::Warn,
            Some(_) => log::LevelFilter::Info,
        });
    }
    if unsafe_debug {
        tracing::warn!(
            "{UNSAFE_DEBUG}=1: other crates' debug and trace lines are logged; they can hold \
             cookies, authorization codes, NHS numbers and GP credentials"
        );
    }
}

fn load(path: &Path) -> Result<Config, ExitCode> {
    Config::load(path, &ProcessEnv).map_err(|e| {
        eprintln!("{}: {e}", path.display());
        ExitCode::from(2)
    })
}
