//! The command line: parse, load the config, hand over. Nothing else lives here.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use pkb_edge::config::{Config, ProcessEnv};
use pkb_edge::sim::{SimConfig, Simulator};
use pkb_edge::store::crypto::Keyring;

#[derive(Parser)]
#[command(
    name = "pkb-edge",
    version,
    about = "Edge proxy that launches a hospital system's users into Patients Know Best"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a configuration file and explain each problem by key.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Print a new encryption key line (KEY_ID:BASE64_32_BYTES) for store.keys_file.
    Keygen {
        /// The key's id; defaults to one made from today's date.
        #[arg(long)]
        id: Option<String>,
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
    },
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PKB_EDGE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path, &ProcessEnv).map_err(|e| {
        eprintln!("{}: {e}", path.display());
        ExitCode::from(2)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => {
            init_logging();
            let config = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let server = match pkb_edge::service::build_server(&config) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("pkb-edge cannot start: {e}");
                    return ExitCode::from(1);
                }
            };
            tracing::info!(listen = %config.listen, upstream = %config.upstream.addr, "pkb-edge starting");
            server.run_forever()
        }
        Command::Check { config } => match load(&config) {
            Ok(c) => {
                println!(
                    "{}: OK (listen {}, upstream {}, PKB {})",
                    config.display(),
                    c.listen,
                    c.upstream.addr,
                    c.pkb.base_url
                );
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Keygen { id } => {
            let id = id.unwrap_or_else(|| format!("k{}", chrono_like_today()));
            println!("{}", Keyring::generate_line(&id));
            ExitCode::SUCCESS
        }
        Command::Sim {
            listen,
            client_id,
            client_secret,
            access_token_lifetime_secs,
        } => {
            init_logging();
            let sim = Simulator::new(SimConfig {
                client_id,
                client_secret,
                access_token_lifetime_secs,
                ..SimConfig::default()
            });
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("cannot start a runtime: {e}");
                    return ExitCode::from(1);
                }
            };
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::bind(&listen).await {
                    Ok(l) => l,
                    Err(e) => {
                        eprintln!("cannot listen on {listen}: {e}");
                        return ExitCode::from(1);
                    }
                };
                println!("PKB simulator on http://{listen}/ (stats: /_sim/stats)");
                match sim.serve(listener).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("simulator stopped: {e}");
                        ExitCode::from(1)
                    }
                }
            })
        }
    }
}

/// `YYYYMMDD` in UTC, for default key ids, without a date crate.
fn chrono_like_today() -> String {
    let days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() / 86_400)
        .unwrap_or(0) as i64;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}{m:02}{d:02}")
}
