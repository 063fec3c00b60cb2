//! Assembles the running service from a validated config: opens the store (checking the keys),
//! builds the use cases and the Pingora server. `main` and the tests call this.

use std::sync::Arc;

use pingora::server::configuration::ServerConf;
use pingora::server::Server;

use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::decorate::{Decorator, PatientSource};
use crate::identity::IdentityResolver;
use crate::launch::LaunchService;
use crate::ops::OpsApp;
use crate::pairing::PairingService;
use crate::pkb::PkbClient;
use crate::proxy::EdgeProxy;
use crate::store::crypto::Keyring;
use crate::store::{open_backend, Pairings, StoreError};
use crate::tokens::TokenSource;

/// Opens the token store named by the config, with its keys checked.
pub async fn open_pairings(
    config: &Config,
    clock: Arc<dyn Clock>,
) -> Result<Arc<Pairings>, StoreError> {
    let keyring = Keyring::parse(config.store.keys.expose())
        .map_err(|e| StoreError::Keys(format!("{}: {e}", config.store.keys_source)))?;
    let backend = open_backend(&config.store.url).await?;
    Ok(Arc::new(
        Pairings::open(
            backend,
            keyring,
            config.store.cache_capacity,
            config.store.cache_ttl,
            clock,
        )
        .await?,
    ))
}

/// Builds the Pingora server for `config`. Opening the store happens here, on a short-lived
/// runtime; nothing built on it (no HTTP client, no pool) outlives it.
pub fn build_server(config: &Config) -> Result<Server, StoreError> {
    // Register the metrics now: a registration problem shows at start-up, never on a request.
    crate::ops::metrics();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let setup = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
    let pairings = setup.block_on(open_pairings(config, clock.clone()))?;
    let ops_pairings = pairings.clone();
    drop(setup);

    let pkb = Arc::new(PkbClient::new(Arc::new(config.pkb.clone())));
    let pairing = Arc::new(PairingService::new(
        pairings.clone(),
        pkb.clone(),
        clock.clone(),
        config.pkb.state_ttl_secs,
    ));
    let tokens = Arc::new(TokenSource::new(pairings, pkb, clock));
    let launch = Arc::new(LaunchService::new(tokens.clone()));
    let decorator = Arc::new(Decorator::new(config.decorate.clone(), tokens));
    let mut vary_on = vec![config.identity.header().to_string()];
    if let Some(PatientSource::Header(name)) = &config.decorate.patient_from {
        vary_on.push(name.to_string());
    }
    let identity = IdentityResolver::new(&config.identity);
    let proxy = EdgeProxy {
        upstream: config.upstream.clone(),
        prefix: config.prefix.clone(),
        identity,
        launch,
        pairing,
        decorator,
        vary_on,
        public_origin: config.public_url.origin().ascii_serialization(),
        proxy_set_headers: vec![config.decorate.header.clone()],
    };

    let port = config.listen.port();
    let conf = ServerConf {
        threads: config.server.threads,
        grace_period_seconds: Some(config.server.grace_period_seconds),
        graceful_shutdown_timeout_seconds: Some(config.server.graceful_shutdown_timeout_seconds),
        upstream_keepalive_pool_size: config.server.upstream_keepalive_pool_size,
        pid_file: format!("/tmp/pkb-edge-{port}.pid"),
        upgrade_sock: format!("/tmp/pkb-edge-{port}-upgrade.sock"),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut service = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        proxy,
        "pkb-edge proxy",
    );
    service.add_tcp(&config.listen.to_string());
    server.add_service(service);
    if let Some(ops_listen) = config.ops_listen {
        let app = pingora::apps::http_app::HttpServer::new_app(OpsApp {
            pairings: ops_pairings,
        });
        let mut ops = pingora::services::listening::Service::new("pkb-edge ops".to_string(), app);
        ops.add_tcp(&ops_listen.to_string());
        server.add_service(ops);
    }
    Ok(server)
}
