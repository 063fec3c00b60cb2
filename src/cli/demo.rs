//! `pkb-edge demo`: everything on loopback. The EHR demo runs the PKB simulator, a sample EHR
//! and a stand-in for the hospital's sign-on in front of pkb-edge; the portal demo (`--portal`)
//! runs the NHS login and PKB simulators and a sample patient portal behind pkb-edge in
//! `nhs_login` mode. The simulators and sample apps share one runtime; Pingora owns the main
//! thread from there on.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use tokio::net::TcpListener;

use crate::config::{Config, ProcessEnv};
use crate::demo;
use crate::demo::tls::{DemoCerts, FRONT_CLIENT_NAME};
use crate::sim::nhs::{demo_users, new_client, NhsLoginSim};
use crate::sim::{demo_patients, SimConfig, Simulator};
use crate::store::crypto::Keyring;

const USER_HEADER: &str = "X-Authenticated-User";

/// What every demo has: its runtime, listeners and state directory, and a way to fail.
struct Demo {
    runtime: tokio::runtime::Runtime,
    state_dir: PathBuf,
}

fn fail(what: &str, e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("demo: {what}: {e}");
    ExitCode::from(1)
}

impl Demo {
    fn new() -> Result<Demo, ExitCode> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| fail("cannot start a runtime", &e))?;
        // One directory per run for the store, the audit log and the keys.
        let state_dir = std::env::temp_dir().join(format!("pkb-edge-demo-{}", std::process::id()));
        std::fs::create_dir_all(&state_dir)
            .map_err(|e| fail("cannot create the demo's state directory", &e))?;
        Ok(Demo { runtime, state_dir })
    }

    /// Listeners on `addrs` (`127.0.0.1:0` for a port of the system's choosing), with their
    /// addresses.
    fn bind<const N: usize>(
        &self,
        addrs: [&str; N],
    ) -> std::io::Result<[(TcpListener, SocketAddr); N]> {
        self.runtime.block_on(async {
            let mut bound = Vec::with_capacity(N);
            for addr in addrs {
                let l = TcpListener::bind(addr).await?;
                let a = l.local_addr()?;
                bound.push((l, a));
            }
            bound
                .try_into()
                .map_err(|_| std::io::Error::other("listener count"))
        })
    }

    /// The `[store]` and `[audit]` tables every demo's config ends with.
    fn store_and_audit(&self) -> String {
        format!(
            "[store]\nurl = \"sqlite://{}\"\nkeys = \"{}\"\n[audit]\nfile = \"{}\"\n",
            self.state_dir.join("pairings.db").display(),
            Keyring::generate_line("demo"),
            self.state_dir.join("audit.log").display(),
        )
    }

    /// With `--tls`, the certificates made for this run.
    fn certs(&self, tls: bool) -> Result<Option<DemoCerts>, ExitCode> {
        tls.then(|| DemoCerts::make(&self.state_dir))
            .transpose()
            .map_err(|e| fail("cannot make the demo's certificates", &e))
    }

    /// Serves the EHR demo's front on `listener`: over HTTPS with `certs`.
    fn serve_front(
        &self,
        listener: TcpListener,
        front: axum::Router,
        certs: Option<&DemoCerts>,
    ) -> Result<(), String> {
        match certs {
            Some(c) => {
                let tls = self.runtime.block_on(async { c.listener(listener) })?;
                self.runtime
                    .spawn(async move { axum::serve(tls, front).await });
            }
            None => {
                self.runtime
                    .spawn(async move { axum::serve(listener, front).await });
            }
        }
        Ok(())
    }

    /// Starts the proxy for `config_text`, prints `banner` and serves until stopped.
    fn serve(self, config_text: &str, banner: String) -> ExitCode {
        let config = match Config::parse(config_text, &ProcessEnv) {
            Ok(c) => c,
            Err(e) => {
                let e = format!("the demo's own configuration is invalid: {e}");
                return fail("cannot start the proxy", &e);
            }
        };
        let server = match crate::edge::service::build_server(&config, Default::default()) {
            Ok(s) => s,
            Err(e) => return fail("cannot start the proxy", &e),
        };
        // Written, not println!: the demo keeps running if whoever reads its stdout goes away.
        let _ = writeln!(std::io::stdout(), "{banner}");
        let _keep_alive = self.runtime;
        server.run_forever()
    }
}

/// The EHR demo: sign-on front → pkb-edge → sample EHR, with the PKB simulator. With `jwt`, the
/// front signs a Pomerium-style assertion and pkb-edge runs in jwt mode.
pub fn ehr(listen: &str, jwt: bool, tls: bool) -> ExitCode {
    let d = match Demo::new() {
        Ok(d) => d,
        Err(code) => return code,
    };
    let certs = match d.certs(tls) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let sim = Simulator::new(SimConfig::default());
    let bound = d.bind(["127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0", listen]);
    let [(proxy_l, proxy_addr), (sim_l, sim_addr), (ehr_l, ehr_addr), (front_l, front_addr)] =
        match bound {
            Ok(b) => b,
            Err(e) => return fail(&format!("cannot listen (is {listen} free?)"), &e),
        };
    // Pingora binds the proxy's address itself.
    drop(proxy_l);
    // The front's own host, as the proxy reaches it for the keys (loopback when it listens on
    // every address).
    let front_host = match front_addr.ip() {
        ip if ip.is_unspecified() => format!("127.0.0.1:{}", front_addr.port()),
        _ => front_addr.to_string(),
    };
    let (identity_header, signer) = if jwt {
        match demo::AssertionSigner::new(&front_host, &front_host) {
            Ok(s) => (demo::POMERIUM_HEADER, Some(s)),
            Err(e) => return fail("cannot make the front's signing key", &e),
        }
    } else {
        (USER_HEADER, None)
    };
    let front = match d.runtime.block_on(async {
        demo::front(
            proxy_addr,
            identity_header.to_string(),
            signer,
            certs.as_ref(),
        )
    }) {
        Ok(f) => f,
        Err(e) => return fail("cannot build the front's HTTP client", &e),
    };
    d.runtime.spawn(sim.clone().serve(sim_l));
    d.runtime
        .spawn(async move { axum::serve(ehr_l, demo::sample_ehr(demo_patients())).await });
    if let Err(e) = d.serve_front(front_l, front, certs.as_ref()) {
        return fail("cannot serve the front over HTTPS", &e);
    }
    let scheme = if tls { "https" } else { "http" };
    let config_text = format!(
        r#"
listen = "{proxy_addr}"
upstream = "http://{ehr_addr}"
public_url = "{scheme}://{front_addr}"
[server]
grace_period_seconds = 1
graceful_shutdown_timeout_seconds = 2
[identity]
{identity}
[pkb]
base_url = "http://{sim_addr}"
client_id = "{client_id}"
client_secret = "{client_secret}"
[decorate]
patient_from = {{ path_regex = '^/patients/(\d{{10}})' }}
{store_and_audit}
{tls_table}"#,
        tls_table = certs.as_ref().map(|c| c.table(true)).unwrap_or_default(),
        identity = ehr_identity(jwt, tls, &front_host),
        client_id = sim.config().client_id,
        client_secret = sim.config().client_secret,
        store_and_audit = d.store_and_audit(),
    );
    let where_ = format!("proxy {proxy_addr}, sample EHR {ehr_addr}, PKB simulator {sim_addr}");
    let banner = ehr_banner(
        &format!("{scheme}://{front_addr}/"),
        &where_,
        &d,
        certs.as_ref(),
    );
    d.serve(&config_text, banner)
}

fn ehr_banner(url: &str, where_: &str, d: &Demo, certs: Option<&DemoCerts>) -> String {
    format!(
        "pkb-edge demo is running. Open {url} in a browser.{}\n  \
         sign in as anyone, click \"Open in PKB\" on a patient, link your (simulated) PKB account once,\n  \
         and land in the simulator's PKB page for that patient. Ctrl-C to stop.\n  \
         ({where_}, state and audit log {})",
        trust_hint(certs),
        d.state_dir.display()
    )
}

/// The EHR demo's `[identity]` table: the front's assertions (jwt), or its address (header),
/// and with `--tls` its client certificate too.
fn ehr_identity(jwt: bool, tls: bool, front_host: &str) -> String {
    if jwt {
        return format!(
            "mode = \"jwt\"\npreset = \"pomerium\"\njwks_url = \"http://{front_host}{}\"\nissuer = \"{front_host}\"\naudience = [\"{front_host}\"]",
            demo::POMERIUM_JWKS_PATH
        );
    }
    let mut identity = format!(
        "mode = \"header\"\nheader = \"{USER_HEADER}\"\ntrusted_peers = [\"{}/32\"]",
        demo::FRONT_SOURCE_IP
    );
    if tls {
        identity += &format!("\ntrusted_clients = [\"{FRONT_CLIENT_NAME}\"]");
    }
    identity
}

/// With `--tls`: how to make a browser trust the run's CA (on the first line, after the URL).
fn trust_hint(certs: Option<&DemoCerts>) -> String {
    match certs {
        Some(c) => format!(
            " (TLS with a CA made for this run: import {} into the browser, or start Chromium with --ignore-certificate-errors-spki-list={})",
            c.ca_file.display(),
            c.spki_sha256
        ),
        None => String::new(),
    }
}

/// The portal demo: pkb-edge in `nhs_login` mode in front of a sample patient portal, with the
/// NHS login and PKB simulators.
pub fn portal(listen: &str, tls: bool) -> ExitCode {
    let d = match Demo::new() {
        Ok(d) => d,
        Err(code) => return code,
    };
    let certs = match d.certs(tls) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let listen_addr: SocketAddr = match listen.parse() {
        Ok(a) => a,
        Err(e) => return fail(&format!("--listen {listen}"), &e),
    };
    let bound = d.bind(["127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"]);
    let [(sim_l, sim_addr), (op_l, op_addr), (portal_l, portal_addr)] = match bound {
        Ok(b) => b,
        Err(e) => return fail("cannot listen on loopback", &e),
    };
    let scheme = if tls { "https" } else { "http" };
    let public_url = format!("{scheme}://{listen_addr}");
    let client_id = "pkb-edge-portal";
    let op = NhsLoginSim::new(&format!("http://{op_addr}"), demo_users(), false);
    let (rp_key, registration) =
        new_client(client_id, vec![format!("{public_url}/_pkb/nhs/callback")]);
    op.register(registration);
    let sim = Simulator::new(SimConfig::default());
    sim.attach_nhs_login(op.clone(), Some(public_url.clone()));
    d.runtime.spawn(sim.clone().serve(sim_l));
    d.runtime.spawn(op.clone().serve(op_l));
    d.runtime
        .spawn(async move { axum::serve(portal_l, demo::sample_portal()).await });
    let key_file = d.state_dir.join("nhs_login_rp.pem");
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
{store_and_audit}
{tls_table}"#,
        tls_table = certs.as_ref().map(|c| c.table(false)).unwrap_or_default(),
        key_file = key_file.display(),
        pkb_client_id = sim.config().client_id,
        pkb_client_secret = sim.config().client_secret,
        store_and_audit = d.store_and_audit(),
    );
    let banner = format!(
        "pkb-edge patient-portal demo is running. Open {public_url}/ in a browser.{}\n  \
         sign in with the simulated NHS login, click \"Open my record in Patients Know Best\" (no second sign-in),\n  \
         then PKB's \"Open the patient portal\" link brings you back signed in. Ctrl-C to stop.\n  \
         (portal {portal_addr}, NHS login simulator http://{op_addr}, PKB simulator {sim_addr}, state and audit log {})",
        trust_hint(certs.as_ref()),
        d.state_dir.display()
    );
    d.serve(&config_text, banner)
}
