//! Assembles the running service from a validated config: opens the store (checking the keys),
//! builds the use cases and the Pingora server. `main` and the tests call this.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use pingora::server::configuration::ServerConf;
use pingora::server::Server;

use crate::config::Config;
use crate::config::PatientSource;
use crate::core::clock::{Clock, SystemClock};
use crate::core::limits::LaunchLimiter;
use crate::decorate::Decorator;
use crate::edge::connections::{
    default_max_connections, descriptor_limit, ConnectionLimits, Guarded,
};
use crate::edge::nhs::{NhsLoginLayer, NhsWeb};
use crate::edge::ops::OpsApp;
use crate::edge::proxy::EdgeProxy;
use crate::edge::tls::{CertReload, Handshake, RedirectApp};
use crate::edge::upstream::{UpstreamDns, UpstreamPeers};
use crate::identity::{HeaderIdentity, JwtIdentity, NhsSessionIdentity};
use crate::launch::LaunchService;
use crate::nhs_login::NhsLogin;
use crate::observe::audit::AuditLog;
use crate::pairing::PairingService;
use crate::pkb::PkbClient;
use crate::store::Pairings;
use crate::store::{keyring, open_pairings, StoreError};
use crate::tls::{ListenerTls, UpstreamTls};
use crate::tokens::TokenSource;
use pingora::proxy::ProxyHttp;

/// What start-up would open, opened and closed again: the token store (migrated, keys checked
/// against it) and the audit sink. `pkb-edge check --deep` runs this, so a reload that would
/// fail is refused before the running process is asked to hand over.
pub fn preflight(config: &Config) -> Result<(), String> {
    let now = SystemClock.now();
    let mut lines: Vec<String> = (config.tls.as_ref())
        .map(|tls| crate::tls::check(tls, now))
        .unwrap_or_default()
        .iter()
        .map(|p| format!("tls: {p}"))
        .collect();
    if config.upstream.tls {
        let upstream = UpstreamTls::check(&config.upstream_tls, now);
        lines.extend(upstream.iter().map(|p| format!("upstream_tls: {p}")));
    }
    if !lines.is_empty() {
        return Err(lines.join("\n"));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    runtime
        .block_on(open_pairings(&config.store, Arc::new(SystemClock)))
        .map_err(|e| format!("token store: {e}"))?;
    let keys = keyring(&config.store).map_err(|e| e.to_string())?;
    AuditLog::open(&config.audit, keys.derived_key())?;
    Ok(())
}

/// Bytes of response buffered before a send (the header plus the start of the body).
const DOWNSTREAM_WRITE_BUFFER: usize = 16 * 1024;

/// How the process was started.
#[derive(Debug, Clone, Copy, Default)]
pub struct StartOptions {
    /// Take the listening sockets over from a running pkb-edge (`run --upgrade`); that process is
    /// then sent SIGQUIT and finishes its in-flight requests.
    pub upgrade: bool,
    /// Fork into the background after start-up (`run --daemon`); standard output and error are
    /// kept, so the journal still gets the logs and the audit lines.
    pub daemon: bool,
}

/// Why pkb-edge could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot start a runtime: {0}")]
    Runtime(std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Audit(String),
    #[error("{0}")]
    NhsLogin(String),
    #[error("identity: {0}")]
    Identity(String),
    #[error("tls: {0}")]
    Tls(#[from] crate::tls::FileProblem),
    #[error("upstream_tls: {0}")]
    UpstreamTls(crate::tls::FileProblem),
}

/// Builds the Pingora server for `config`. Opening the store happens here, on a short-lived
/// runtime; nothing built on it (no HTTP client, no pool) outlives it.
pub fn build_server(config: &Config, options: StartOptions) -> Result<Server, StartError> {
    // Register the metrics now: a registration problem shows at start-up, never on a request.
    crate::observe::metrics::metrics();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let setup = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(StartError::Runtime)?;
    let pairings = setup.block_on(open_pairings(&config.store, clock.clone()))?;
    drop(setup);
    let draining = Arc::new(AtomicBool::new(false));
    let (tls, upstream) = tls_files(config, clock.now())?;
    let mut proxy = header_proxy(config, pairings.clone(), clock.clone(), draining.clone())?;
    proxy.client_certs = tls.as_ref().and_then(|t| t.clients.clone());
    proxy.upstream = upstream;

    // Everything that can fail is built before Pingora bootstraps (with `--upgrade`, that takes
    // the listening sockets over from the running process).
    let layer = match &config.nhs_login {
        Some(settings) => {
            let nhs = NhsLogin::new(
                Arc::new(settings.clone()),
                pairings.records(),
                clock,
                proxy.audit.clone(),
            )
            .map_err(StartError::NhsLogin)?;
            let nhs = Arc::new(nhs);
            Some((
                NhsSessionIdentity { nhs: nhs.clone() },
                NhsWeb {
                    nhs,
                    prefix: config.prefix.clone(),
                    pkb_base: config.pkb.base_url.clone(),
                    public_origin: config.public_url.origin().ascii_serialization(),
                },
            ))
        }
        None => None,
    };
    let jwt = proxy.jwt.clone();
    let proxy_upstream_addr = proxy.upstream.addr();
    let mut server = pingora_server(config, options);
    let handshake = tls
        .as_ref()
        .map(|t| Handshake::new(t, config.server.header_timeout));
    match layer {
        Some((sessions, web)) => add_proxy(
            &mut server,
            config,
            NhsLoginLayer::new(proxy, web, sessions),
            handshake,
        ),
        None => add_proxy(&mut server, config, proxy, handshake),
    }
    if let (Some(tls), Some(settings)) = (&tls, &config.tls) {
        add_tls_services(&mut server, config, tls, settings);
    }
    if UpstreamDns::wanted(&config.upstream) {
        server.add_service(pingora::services::background::background_service(
            "upstream dns",
            UpstreamDns::new(config, proxy_upstream_addr),
        ));
    }
    server.add_service(pingora::services::background::background_service(
        "drain watch",
        DrainWatch { draining },
    ));
    if let Some(jwt) = &jwt {
        // Start-up does not wait for the key source: this fetches the keys, then keeps them fresh.
        server.add_service(pingora::services::background::background_service(
            "identity keys",
            KeyRefresh { jwt: jwt.clone() },
        ));
    }
    if let Some(ops_listen) = config.ops_listen {
        let app = pingora::apps::http_app::HttpServer::new_app(OpsApp { pairings, jwt });
        let mut ops = pingora::services::listening::Service::new("pkb-edge ops".to_string(), app);
        ops.add_tcp(&ops_listen.to_string());
        server.add_service(ops);
    }
    Ok(server)
}

/// The listener's TLS (with `[tls]`) and the upstream's peers (with its TLS files for an https
/// upstream), read from their files; a broken file is named.
fn tls_files(
    config: &Config,
    now: i64,
) -> Result<(Option<ListenerTls>, Arc<UpstreamPeers>), StartError> {
    let tls = match &config.tls {
        Some(settings) => Some(ListenerTls::open(settings, now)?),
        None => None,
    };
    let files = match config.upstream.tls {
        true => UpstreamTls::load(&config.upstream_tls, now).map_err(StartError::UpstreamTls)?,
        false => UpstreamTls::default(),
    };
    let upstream = UpstreamPeers::new(&config.upstream, &config.upstream_tls, files);
    Ok((tls, Arc::new(upstream)))
}

/// The header-mode proxy and the use cases behind it.
fn header_proxy(
    config: &Config,
    pairings: Arc<Pairings>,
    clock: Arc<dyn Clock>,
    draining: Arc<AtomicBool>,
) -> Result<EdgeProxy, StartError> {
    let keys = keyring(&config.store)?;
    let audit =
        Arc::new(AuditLog::open(&config.audit, keys.derived_key()).map_err(StartError::Audit)?);
    let pkb = Arc::new(PkbClient::new(
        Arc::new(config.pkb.clone()),
        config.limits.pkb_concurrency,
    ));
    let pairing = Arc::new(PairingService::new(
        pairings.clone(),
        pkb.clone(),
        clock.clone(),
        config.pkb.state_ttl_secs,
        audit.clone(),
    ));
    let tokens = Arc::new(TokenSource::new(
        pairings,
        pkb,
        clock.clone(),
        config.store.cache_capacity,
    ));
    let launch = Arc::new(LaunchService::new(
        tokens.clone(),
        LaunchLimiter::per_minute(config.limits.launch_per_minute),
        audit.clone(),
    ));
    let decorator = Arc::new(Decorator::new(config.decorate.clone(), tokens));
    let jwt = match config.identity.jwt() {
        Some(settings) => Some(Arc::new(
            JwtIdentity::new(Arc::new(settings.clone()), clock.clone())
                .map_err(StartError::Identity)?,
        )),
        None => None,
    };
    let mut vary_on = vec![config.identity.header().to_string()];
    if let Some(PatientSource::Header(name)) = &config.decorate.patient_from {
        vary_on.push(name.to_string());
    }
    Ok(EdgeProxy {
        upstream: Arc::new(UpstreamPeers::new(
            &config.upstream,
            &config.upstream_tls,
            UpstreamTls::default(),
        )),
        prefix: config.prefix.clone(),
        identity: HeaderIdentity::new(&config.identity),
        jwt,
        launch,
        pairing,
        decorator,
        vary_on,
        public_origin: config.public_url.origin().ascii_serialization(),
        protected_headers: vec![
            config.decorate.header.clone(),
            // jwt mode: the header pkb-edge sets is `forward_header`; the assertion passes.
            match config.identity.jwt() {
                Some(jwt) => jwt.forward_header.clone(),
                None => config.identity.header().clone(),
            },
        ],
        audit,
        draining,
        client_certs: None,
        hsts_max_age_secs: config
            .tls
            .as_ref()
            .map(|t| t.hsts_max_age_secs)
            .filter(|age| *age > 0),
    })
}

/// Connections the redirect listener keeps open at once.
const REDIRECT_CONNECTIONS: usize = 64;

/// With `[tls]`: the certificate reload, and the plain listener that redirects to https.
fn add_tls_services(
    server: &mut Server,
    config: &Config,
    tls: &ListenerTls,
    settings: &crate::config::TlsSettings,
) {
    server.add_service(pingora::services::background::background_service(
        "certificate reload",
        CertReload {
            serving: tls.serving.clone(),
            every: settings.reload,
        },
    ));
    if let Some(redirect) = settings.redirect_listen {
        let app = pingora::apps::http_app::HttpServer::new_app(RedirectApp {
            https_origin: config.public_url.origin().ascii_serialization(),
        });
        // Its own connection limits: 64 at once (the oldest idle shed for a new one; each
        // holds one descriptor, out of the reserve the public listener's share leaves), the
        // same idle and head deadlines; its draining ends nothing.
        let limits = ConnectionLimits {
            max: REDIRECT_CONNECTIONS,
            keepalive_idle: config.server.keepalive_idle,
            header_timeout: config.server.header_timeout,
            grace: std::time::Duration::from_secs(config.server.grace_period_seconds),
        };
        let app = Guarded::new(app, limits, None, |_| {});
        let mut plain =
            pingora::services::listening::Service::new("pkb-edge https redirect".into(), app);
        plain.add_tcp(&redirect.to_string());
        server.add_service(plain);
    }
}

fn pingora_server(config: &Config, options: StartOptions) -> Server {
    let conf = ServerConf {
        threads: config.server.threads,
        work_stealing: config.server.work_stealing,
        grace_period_seconds: Some(config.server.grace_period_seconds),
        graceful_shutdown_timeout_seconds: Some(config.server.graceful_shutdown_timeout_seconds),
        upstream_keepalive_pool_size: config.server.upstream_keepalive_pool_size,
        pid_file: config.server.pid_file.display().to_string(),
        upgrade_sock: config.server.upgrade_sock.display().to_string(),
        ..ServerConf::default()
    };
    let opt = pingora::server::configuration::Opt {
        upgrade: options.upgrade,
        daemon: options.daemon,
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(Some(opt), conf);
    server.bootstrap();
    server
}

/// The public listener, serving `proxy` within the connection limits.
fn add_proxy<P>(server: &mut Server, config: &Config, proxy: P, tls: Option<Handshake>)
where
    P: ProxyHttp + Send + Sync + 'static,
    P::CTX: Send + Sync,
{
    let proxy = pingora::proxy::http_proxy(&server.configuration, proxy);
    let app = Guarded::new(proxy, connection_limits(config), tls, |took| {
        // Nothing is left in flight: no need to sit out the rest of the grace period, which
        // Pingora's shutdown would otherwise always wait in full.
        tracing::info!(
            after_ms = took.as_millis() as u64,
            "every connection closed; exiting"
        );
        std::process::exit(0);
    });
    let mut service = pingora::services::listening::Service::new("pkb-edge proxy".into(), app);
    // No read buffer: Pingora reads a request into its own buffer, so the 64 KiB it would
    // otherwise keep per connection (most of an idle connection's memory) only copied bytes
    // twice. A write buffer larger than Pingora's one-MSS default, so a response's header and a
    // small body leave in one send instead of two (Pingora flushes at the end of every write).
    service.add_listener(
        pingora::listeners::ListenerConfig::tcp(config.listen.to_string()).l4_buffer(
            pingora::listeners::L4BufferSettings::default()
                .read(0)
                .write(DOWNSTREAM_WRITE_BUFFER),
        ),
    );
    server.add_service(service);
}

/// The connection limits from `[server]`; `max_connections` by default from the descriptor
/// limit (raised to its hard limit first).
fn connection_limits(config: &Config) -> ConnectionLimits {
    let descriptors = descriptor_limit();
    let derived = default_max_connections(descriptors);
    let max = config.server.max_connections.unwrap_or(derived);
    if max > derived {
        tracing::warn!(
            max_connections = max,
            descriptors,
            "server.max_connections is more than the descriptor limit leaves room for ({derived}); \
             clients may time out before the limit is reached"
        );
    }
    tracing::info!(
        max_connections = max,
        descriptors,
        keepalive_idle_secs = config.server.keepalive_idle.as_secs(),
        header_timeout_secs = config.server.header_timeout.as_secs(),
        "connection limits"
    );
    ConnectionLimits {
        max,
        keepalive_idle: config.server.keepalive_idle,
        header_timeout: config.server.header_timeout,
        grace: std::time::Duration::from_secs(config.server.grace_period_seconds),
    }
}

/// Watches for SIGQUIT (graceful upgrade) and SIGTERM. From then on every response closes its
/// connection (`Connection: close`), so by the time Pingora stops reading (5 s after SIGQUIT)
/// busy keep-alive clients have already moved to new connections, which the new process
/// accepts, instead of racing a request against the close of an idle connection.
struct DrainWatch {
    draining: Arc<AtomicBool>,
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for DrainWatch {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut quit), Ok(mut term)) =
            (signal(SignalKind::quit()), signal(SignalKind::terminate()))
        else {
            tracing::warn!("cannot watch SIGQUIT/SIGTERM; connections are not drained early");
            return;
        };
        tokio::select! {
            _ = quit.recv() => {}
            _ = term.recv() => {}
            _ = shutdown.changed() => {}
        }
        self.draining.store(true, Ordering::Relaxed);
        tracing::info!("draining: every response now closes its connection");
    }
}

/// jwt mode's keys: fetched at start (in the background, so start-up does not wait), then kept
/// fresh every `jwks_refresh_secs`; while the source is down the cached keys stay in use.
struct KeyRefresh {
    jwt: Arc<JwtIdentity>,
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for KeyRefresh {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        loop {
            let wait = self.jwt.refresh_keys().await;
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}
