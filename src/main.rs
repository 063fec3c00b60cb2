//! The command line: parse, load the config, hand over. Nothing else lives here.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use pkb_edge::config::{Config, ProcessEnv};
use pkb_edge::demo;
use pkb_edge::sim::{demo_patients, SimConfig, Simulator};
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
    /// Everything on loopback: the PKB simulator, a sample EHR, the proxy, and a stand-in for the
    /// hospital's sign-on in front. Prints the one URL to open.
    Demo {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
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
    // One TLS crypto provider for the whole process, whatever features the dependency graph has.
    let _ = rustls::crypto::ring::default_provider().install_default();
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
        Command::Demo { listen } => {
            init_logging();
            run_demo(&listen)
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

/// Starts the simulator, the sample EHR and the front on one runtime, then the proxy (Pingora
/// owns the main thread from there on).
fn run_demo(listen: &str) -> ExitCode {
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        eprintln!("demo: {what}: {e}");
        ExitCode::from(1)
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail("cannot start a runtime", &e),
    };
    let sim = Simulator::new(SimConfig::default());
    let proxy_port = match std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
        Ok(a) => a.port(),
        Err(e) => return fail("no free port for the proxy", &e),
    };
    let proxy_addr: std::net::SocketAddr = ([127, 0, 0, 1], proxy_port).into();
    let bound = runtime.block_on(async {
        let sim_l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let ehr_l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let front_l = tokio::net::TcpListener::bind(listen).await?;
        Ok::<_, std::io::Error>((sim_l, ehr_l, front_l))
    });
    let (sim_l, ehr_l, front_l) = match bound {
        Ok(b) => b,
        Err(e) => return fail(&format!("cannot listen (is {listen} free?)"), &e),
    };
    let (sim_addr, ehr_addr, front_addr) =
        match (sim_l.local_addr(), ehr_l.local_addr(), front_l.local_addr()) {
            (Ok(a), Ok(b), Ok(c)) => (a, b, c),
            _ => return fail("cannot read the listening addresses", &"local_addr"),
        };
    let front = match runtime.block_on(async { demo::front(proxy_addr, USER_HEADER.to_string()) }) {
        Ok(f) => f,
        Err(e) => return fail("cannot build the front's HTTP client", &e),
    };
    runtime.spawn(sim.clone().serve(sim_l));
    runtime.spawn(async move { axum::serve(ehr_l, demo::sample_ehr(demo_patients())).await });
    runtime.spawn(async move { axum::serve(front_l, front).await });

    let state_dir = std::env::temp_dir().join(format!("pkb-edge-demo-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir_all(&state_dir) {
        return fail("cannot create the demo's state directory", &e);
    }
    let config_text = format!(
        r#"
listen = "{proxy_addr}"
upstream = "http://{ehr_addr}"
public_url = "http://{front_addr}"
[server]
grace_period_seconds = 1
graceful_shutdown_timeout_seconds = 2
[identity]
mode = "header"
header = "{USER_HEADER}"
trusted_peers = ["{front_ip}/32"]
[pkb]
base_url = "http://{sim_addr}"
client_id = "{client_id}"
client_secret = "{client_secret}"
[store]
url = "sqlite://{db}"
keys = "{keys}"
[decorate]
patient_from = {{ path_regex = '^/patients/(\d{{10}})' }}
"#,
        front_ip = demo::FRONT_SOURCE_IP,
        client_id = sim.config().client_id,
        client_secret = sim.config().client_secret,
        db = state_dir.join("pairings.db").display(),
        keys = Keyring::generate_line("demo"),
    );
    let config = match Config::parse(&config_text, &ProcessEnv) {
        Ok(c) => c,
        Err(e) => return fail("the demo's own configuration is invalid", &e),
    };
    let server = match pkb_edge::service::build_server(&config) {
        Ok(s) => s,
        Err(e) => return fail("cannot start the proxy", &e),
    };
    // Written, not println!: the demo keeps running if whoever reads its stdout goes away.
    let _ = writeln!(
        std::io::stdout(),
        "pkb-edge demo is running. Open http://{front_addr}/ in a browser.\n  \
         sign in as anyone, click \"Open in PKB\" on a patient, link your (simulated) PKB account once,\n  \
         and land in the simulator's PKB page for that patient. Ctrl-C to stop.\n  \
         (proxy {proxy_addr}, sample EHR {ehr_addr}, PKB simulator {sim_addr}, state {})",
        state_dir.display()
    );
    let _keep_alive = runtime;
    server.run_forever()
}

const USER_HEADER: &str = "X-Authenticated-User";

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
