//! The command line: parse, load the config, hand over. Nothing else lives here.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use pkb_edge::config::{Config, ProcessEnv};
use pkb_edge::demo;
use pkb_edge::sim::{demo_patients, SimConfig, Simulator};
use pkb_edge::store::crypto::Keyring;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "pkb-edge",
    version,
    about = "Edge proxy that launches a hospital system's users into Patients Know Best"
)]
struct Cli {
    /// How log lines are written to standard error (the filter is the PKB_EDGE_LOG variable,
    /// e.g. `info` or `pkb_edge=debug`).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum PairingsCommand {
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
        /// Also open what start-up opens: the token store (keys checked against it) and the
        /// audit file. Use before a reload.
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
        out: Option<std::path::PathBuf>,
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
        nhs_rp_public_key: Option<std::path::PathBuf>,
        /// ...and its redirect URI(s).
        #[arg(long, requires = "nhs_rp_client_id")]
        nhs_rp_redirect_uri: Vec<String>,
        /// Where the simulated PKB's pages link back to, with an `assertedLoginIdentity`.
        #[arg(long, requires = "nhs_login")]
        portal_url: Option<String>,
    },
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PKB_EDGE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        // One JSON object per line; the request span's `request_id` comes along on each.
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Runs an admin command on a small runtime of its own.
fn admin(
    config: &std::path::Path,
    command: impl AsyncFnOnce(&Config, &mut dyn Write) -> pkb_edge::admin::Outcome,
) -> ExitCode {
    let config = match load(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start a runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let mut out = std::io::stdout().lock();
    match runtime.block_on(command(&config, &mut out)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pkb-edge: {e}");
            ExitCode::from(1)
        }
    }
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
    let log_format = cli.log_format;
    match cli.command {
        Command::Run {
            config,
            upgrade,
            daemon,
        } => {
            init_logging(log_format);
            let config = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let options = pkb_edge::service::StartOptions { upgrade, daemon };
            let server = match pkb_edge::service::build_server(&config, options) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("pkb-edge cannot start: {e}");
                    return ExitCode::from(1);
                }
            };
            tracing::info!(listen = %config.listen, upstream = %config.upstream.addr, upgrade, "pkb-edge starting");
            server.run_forever()
        }
        Command::Pairings { command } => match command {
            PairingsCommand::List { config } => {
                admin(&config, async |c, out| pkb_edge::admin::list(c, out).await)
            }
            PairingsCommand::Revoke { user, config } => admin(&config, async |c, out| {
                pkb_edge::admin::revoke(c, &user, out).await
            }),
            PairingsCommand::Rekey { config } => {
                admin(&config, async |c, out| pkb_edge::admin::rekey(c, out).await)
            }
            PairingsCommand::Migrate { config, from, to } => admin(&config, async |c, out| {
                let to = to.clone().unwrap_or_else(|| c.store.url.clone());
                pkb_edge::admin::migrate(c, &from, &to, out).await
            }),
        },
        Command::Check { config, deep } => match load(&config) {
            Ok(c) => {
                if deep {
                    if let Err(e) = pkb_edge::service::preflight(&c) {
                        eprintln!("{}: {e}", config.display());
                        return ExitCode::from(1);
                    }
                }
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
        Command::Keygen {
            nhs_login: true,
            out,
            ..
        } => keygen_nhs_login(out.as_deref()),
        Command::Keygen { id, out, .. } => {
            if out.is_some() {
                eprintln!("--out is for --nhs-login keys; store keys are printed");
                return ExitCode::from(2);
            }
            let id = id.unwrap_or_else(|| format!("k{}", chrono_like_today()));
            println!("{}", Keyring::generate_line(&id));
            ExitCode::SUCCESS
        }
        Command::Demo { listen, portal } => {
            init_logging(log_format);
            if portal {
                run_portal_demo(&listen)
            } else {
                run_demo(&listen)
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
            let sim = Simulator::new(SimConfig {
                client_id,
                client_secret,
                access_token_lifetime_secs,
                ..SimConfig::default()
            });
            let rp = match (nhs_rp_client_id, nhs_rp_public_key) {
                (Some(client_id), Some(key_file)) => {
                    let pem = match std::fs::read_to_string(&key_file) {
                        Ok(p) => p,
                        Err(e) => {
                            eprintln!(
                                "--nhs-rp-public-key: cannot read {}: {e}",
                                key_file.display()
                            );
                            return ExitCode::from(2);
                        }
                    };
                    if jsonwebtoken::DecodingKey::from_rsa_pem(pem.as_bytes()).is_err() {
                        eprintln!(
                            "--nhs-rp-public-key: {} is not an RSA public key in PEM",
                            key_file.display()
                        );
                        return ExitCode::from(2);
                    }
                    Some(pkb_edge::sim::nhs::RegisteredClient {
                        client_id,
                        public_key_pem: pem,
                        redirect_uris: nhs_rp_redirect_uri,
                    })
                }
                _ => None,
            };
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
                if let Some(addr) = nhs_login {
                    let op_listener = match tokio::net::TcpListener::bind(&addr).await {
                        Ok(l) => l,
                        Err(e) => {
                            eprintln!("cannot listen on {addr}: {e}");
                            return ExitCode::from(1);
                        }
                    };
                    let op = pkb_edge::sim::nhs::NhsLoginSim::new(
                        &format!("http://{addr}"),
                        pkb_edge::sim::nhs::demo_users(),
                        false,
                    );
                    if let Some(rp) = rp {
                        println!(
                            "NHS login simulator: registered relying party `{}`",
                            rp.client_id
                        );
                        op.register(rp);
                    }
                    sim.attach_nhs_login(op.clone(), portal_url);
                    println!("NHS login simulator on http://{addr}/ (issuer http://{addr})");
                    tokio::spawn(op.serve(op_listener));
                }
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
    let runtime = match demo_runtime() {
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

    let state_dir = match demo_state_dir() {
        Ok(d) => d,
        Err(e) => return fail("cannot create the demo's state directory", &e),
    };
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
[audit]
file = "{audit}"
"#,
        front_ip = demo::FRONT_SOURCE_IP,
        client_id = sim.config().client_id,
        client_secret = sim.config().client_secret,
        db = state_dir.join("pairings.db").display(),
        audit = state_dir.join("audit.log").display(),
        keys = Keyring::generate_line("demo"),
    );
    let server = match demo_server(&config_text) {
        Ok(s) => s,
        Err(e) => return fail("cannot start the proxy", &e),
    };
    // Written, not println!: the demo keeps running if whoever reads its stdout goes away.
    let _ = writeln!(
        std::io::stdout(),
        "pkb-edge demo is running. Open http://{front_addr}/ in a browser.\n  \
         sign in as anyone, click \"Open in PKB\" on a patient, link your (simulated) PKB account once,\n  \
         and land in the simulator's PKB page for that patient. Ctrl-C to stop.\n  \
         (proxy {proxy_addr}, sample EHR {ehr_addr}, PKB simulator {sim_addr}, state and audit log {})",
        state_dir.display()
    );
    let _keep_alive = runtime;
    server.run_forever()
}

const USER_HEADER: &str = "X-Authenticated-User";

/// The runtime the demo's simulators and sample apps run on (the proxy has its own).
fn demo_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

/// Where a demo keeps its store, audit log and keys: one directory per run.
fn demo_state_dir() -> std::io::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("pkb-edge-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The proxy for a demo's own configuration.
fn demo_server(config_text: &str) -> Result<pingora::server::Server, String> {
    let config = Config::parse(config_text, &ProcessEnv)
        .map_err(|e| format!("the demo's own configuration is invalid: {e}"))?;
    pkb_edge::service::build_server(&config, Default::default()).map_err(|e| e.to_string())
}

/// `keygen --nhs-login --out FILE`: the private key to FILE (0600, never overwritten), the
/// public key to stdout.
fn keygen_nhs_login(out: Option<&std::path::Path>) -> ExitCode {
    let Some(out) = out else {
        eprintln!("keygen --nhs-login needs --out FILE: the private key is written there (mode 0600), the public key printed");
        return ExitCode::from(2);
    };
    let private = match pkb_edge::nhs_login::keys::generate_private_key() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    let public = match pkb_edge::nhs_login::keys::public_pem(&private) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("cannot derive the public key: {e}");
            return ExitCode::from(1);
        }
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = options
        .open(out)
        .and_then(|mut f| f.write_all(private.as_bytes()));
    if let Err(e) = written {
        eprintln!("cannot write {}: {e}", out.display());
        return ExitCode::from(1);
    }
    let _ = writeln!(
        std::io::stdout(),
        "{public}# private key written to {}; set nhs_login.private_key_file to it and register the public key above with NHS login",
        out.display()
    );
    ExitCode::SUCCESS
}

/// `demo --portal`: the NHS login and PKB simulators, a sample patient portal, and pkb-edge in
/// `nhs_login` mode in front of it on `listen`.
fn run_portal_demo(listen: &str) -> ExitCode {
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        eprintln!("demo: {what}: {e}");
        ExitCode::from(1)
    };
    let runtime = match demo_runtime() {
        Ok(r) => r,
        Err(e) => return fail("cannot start a runtime", &e),
    };
    let listen_addr: std::net::SocketAddr = match listen.parse() {
        Ok(a) => a,
        Err(e) => return fail(&format!("--listen {listen}"), &e),
    };
    let bound = runtime.block_on(async {
        let sim_l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let op_l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let portal_l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        Ok::<_, std::io::Error>((sim_l, op_l, portal_l))
    });
    let (sim_l, op_l, portal_l) = match bound {
        Ok(b) => b,
        Err(e) => return fail("cannot listen on loopback", &e),
    };
    let (sim_addr, op_addr, portal_addr) =
        match (sim_l.local_addr(), op_l.local_addr(), portal_l.local_addr()) {
            (Ok(a), Ok(b), Ok(c)) => (a, b, c),
            _ => return fail("cannot read the listening addresses", &"local_addr"),
        };
    let public_url = format!("http://{listen_addr}");
    let client_id = "pkb-edge-portal";
    let op = pkb_edge::sim::nhs::NhsLoginSim::new(
        &format!("http://{op_addr}"),
        pkb_edge::sim::nhs::demo_users(),
        false,
    );
    let (rp_key, registration) =
        pkb_edge::sim::nhs::new_client(client_id, vec![format!("{public_url}/_pkb/nhs/callback")]);
    op.register(registration);
    let sim = Simulator::new(SimConfig::default());
    sim.attach_nhs_login(op.clone(), Some(public_url.clone()));
    runtime.spawn(sim.clone().serve(sim_l));
    runtime.spawn(op.clone().serve(op_l));
    runtime.spawn(async move { axum::serve(portal_l, demo::sample_portal()).await });

    let state_dir = match demo_state_dir() {
        Ok(d) => d,
        Err(e) => return fail("cannot create the demo's state directory", &e),
    };
    let key_file = state_dir.join("nhs_login_rp.pem");
    if let Err(e) = std::fs::write(&key_file, rp_key) {
        return fail("cannot write the demo's NHS login key", &e);
    }
    let config_text = format!(
        r#"
listen = "{listen_addr}"
upstream = "http://{portal_addr}"
public_url = "{public_url}"
[server]
grace_period_seconds = 1
graceful_shutdown_timeout_seconds = 2
[identity]
mode = "nhs_login"
[nhs_login]
issuer = "http://{op_addr}"
client_id = "{client_id}"
private_key_file = "{key_file}"
[pkb]
base_url = "http://{sim_addr}"
client_id = "{pkb_client_id}"
client_secret = "{pkb_client_secret}"
scope = "PATIENT"
[store]
url = "sqlite://{db}"
keys = "{keys}"
[audit]
file = "{audit}"
"#,
        key_file = key_file.display(),
        pkb_client_id = sim.config().client_id,
        pkb_client_secret = sim.config().client_secret,
        db = state_dir.join("pairings.db").display(),
        audit = state_dir.join("audit.log").display(),
        keys = Keyring::generate_line("demo"),
    );
    let server = match demo_server(&config_text) {
        Ok(s) => s,
        Err(e) => return fail("cannot start the proxy", &e),
    };
    let _ = writeln!(
        std::io::stdout(),
        "pkb-edge patient-portal demo is running. Open {public_url}/ in a browser.\n  \
         sign in with the simulated NHS login, click \"Open my record in Patients Know Best\" (no second sign-in),\n  \
         then PKB's \"Open the patient portal\" link brings you back signed in. Ctrl-C to stop.\n  \
         (portal {portal_addr}, NHS login simulator http://{op_addr}, PKB simulator {sim_addr}, state and audit log {})",
        state_dir.display()
    );
    let _keep_alive = runtime;
    server.run_forever()
}

/// `YYYYMMDD` in UTC, for default key ids.
fn chrono_like_today() -> String {
    let days = pkb_edge::clock::unix_millis_now().div_euclid(86_400_000);
    let (y, m, d) = pkb_edge::clock::civil_from_days(days);
    format!("{y:04}{m:02}{d:02}")
}
