//! A test's proxy settings, the config file they render to, and the store they point at.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pkb_edge::core::clock::SystemClock;
use pkb_edge::store::crypto::Keyring;
use pkb_edge::store::{open_backend, Pairing, Pairings};

use super::{free_port, Sim, Upstream, CLIENT_ID, CLIENT_SECRET, USER_HEADER};

/// A test's proxy settings; `toml()` renders the config file.
#[derive(Clone)]
pub struct ProxyConfig {
    pub port: u16,
    pub upstream: SocketAddr,
    pub pkb_base: String,
    pub db_path: PathBuf,
    pub keys: String,
    pub trusted_peers: Vec<String>,
    pub timeout_ms: u64,
    pub refresh_skew_secs: i64,
    pub grace_period_seconds: u64,
    pub state_ttl_secs: i64,
    /// Lines added to the `[pkb]` table as they are (e.g. `refresh_ahead_secs = 0`).
    pub pkb_extra: String,
    /// Appended to the config file as is (e.g. a `[decorate]` table).
    pub extra_toml: String,
    /// Serve `/metrics`, `/livez`, `/readyz` on this port.
    pub ops_port: Option<u16>,
    /// `limits.launch_per_minute`: high by default so that load tests are not limited.
    pub launch_per_minute: u32,
    pub pkb_concurrency: usize,
    /// Where a new process (`run --upgrade`) takes the listening sockets over.
    pub upgrade_sock: PathBuf,
    pub pid_file: PathBuf,
    /// `store.url` when not the SQLite file at `db_path` (a PostgreSQL schema).
    pub store_url: Option<String>,
    /// The `[identity]` table's lines instead of header mode's (e.g. `mode = "jwt"` and its keys).
    pub identity: Option<String>,
    /// An `[nhs_login]` table: the proxy then runs in `nhs_login` identity mode.
    pub nhs_login: Option<String>,
    /// Lines added to the `[server]` table as they are (e.g. `header_timeout_secs = 1`).
    pub server_extra: String,
    /// Start the process with this limit on open descriptors (soft and hard).
    pub descriptor_limit: Option<u64>,
    /// `PKB_EDGE_LOG` for the process (default `info,pkb_edge=debug`).
    pub log_filter: Option<String>,
    /// Start the process with `PKB_EDGE_LOG_UNSAFE_DEBUG=1` (otherwise it never has it, even when
    /// the test runner's environment does).
    pub log_unsafe_debug: bool,
    /// A `[tls]` table's lines: the public listener then speaks HTTPS (and `url()` says so).
    pub tls: Option<String>,
    /// `upstream` when not `http://{upstream}` (e.g. an https upstream), with an
    /// `[upstream_tls]` table in `extra_toml` if it needs one.
    pub upstream_url: Option<String>,
    /// Top-level keys, placed before the first table (e.g. `upstream_dns_secs = 1`).
    pub top_extra: String,
}

impl ProxyConfig {
    pub fn new(dir: &tempfile::TempDir, upstream: &Upstream, sim: &Sim) -> ProxyConfig {
        ProxyConfig {
            port: free_port(),
            upstream: upstream.addr,
            pkb_base: sim.url(),
            db_path: dir.path().join("pairings.db"),
            keys: Keyring::generate_line("k1"),
            trusted_peers: vec!["127.0.0.1/32".into()],
            timeout_ms: 3000,
            refresh_skew_secs: 60,
            grace_period_seconds: 1,
            state_ttl_secs: 600,
            pkb_extra: String::new(),
            extra_toml: String::new(),
            ops_port: None,
            launch_per_minute: 6000,
            pkb_concurrency: 256,
            upgrade_sock: dir.path().join("upgrade.sock"),
            pid_file: dir.path().join("pkb-edge.pid"),
            store_url: None,
            identity: None,
            nhs_login: None,
            server_extra: String::new(),
            descriptor_limit: None,
            log_filter: None,
            log_unsafe_debug: false,
            tls: None,
            upstream_url: None,
            top_extra: String::new(),
        }
    }

    pub fn toml(&self) -> String {
        let peers: Vec<String> = self
            .trusted_peers
            .iter()
            .map(|p| format!("\"{p}\""))
            .collect();
        format!(
            r#"
{ops}
{top_extra}
listen = "127.0.0.1:{port}"
upstream = "{upstream}"
public_url = "{scheme}://127.0.0.1:{port}"
[server]
threads = 2
grace_period_seconds = {grace}
graceful_shutdown_timeout_seconds = 5
upgrade_sock = "{upgrade_sock}"
pid_file = "{pid_file}"
{server_extra}
[identity]
{identity}
[pkb]
base_url = "{pkb}"
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"
timeout_ms = {timeout}
refresh_skew_secs = {skew}
state_ttl_secs = {state_ttl}
{pkb_extra}
[store]
url = "{store_url}"
keys = "{keys}"
[limits]
launch_per_minute = {per_minute}
pkb_concurrency = {pkb_concurrency}
{nhs}
{tls}
{extra}
"#,
            tls = self
                .tls
                .as_ref()
                .map(|t| format!("[tls]\n{t}"))
                .unwrap_or_default(),
            per_minute = self.launch_per_minute,
            upgrade_sock = self.upgrade_sock.display(),
            pid_file = self.pid_file.display(),
            server_extra = self.server_extra,
            pkb_concurrency = self.pkb_concurrency,
            port = self.port,
            upstream = self
                .upstream_url
                .clone()
                .unwrap_or_else(|| format!("http://{}", self.upstream)),
            scheme = self.scheme(),
            top_extra = self.top_extra,
            pkb = self.pkb_base,
            timeout = self.timeout_ms,
            skew = self.refresh_skew_secs,
            grace = self.grace_period_seconds,
            state_ttl = self.state_ttl_secs,
            store_url = self.store_url(),
            keys = self.keys,
            extra = self.extra_toml,
            pkb_extra = self.pkb_extra,
            identity = self.identity.clone().unwrap_or_else(|| {
                let mode = if self.nhs_login.is_some() {
                    "nhs_login"
                } else {
                    "header"
                };
                format!(
                    "mode = \"{mode}\"\nheader = \"{USER_HEADER}\"\ntrusted_peers = [{}]",
                    peers.join(", ")
                )
            }),
            nhs = self.nhs_login.as_deref().unwrap_or_default(),
            ops = self
                .ops_port
                .map(|p| format!("ops_listen = \"127.0.0.1:{p}\""))
                .unwrap_or_default(),
        )
    }

    /// `https` when the listener speaks TLS.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}://127.0.0.1:{}{path}", self.scheme(), self.port)
    }

    pub fn store_url(&self) -> String {
        self.store_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.db_path.display()))
    }

    /// The store as the proxy sees it, opened from the test process.
    pub async fn pairings(&self) -> Arc<Pairings> {
        let backend = open_backend(&self.store_url()).await.unwrap();
        let keyring = Keyring::parse(&self.keys).unwrap();
        Arc::new(
            Pairings::open(
                backend,
                keyring,
                10,
                Duration::from_secs(1),
                Arc::new(SystemClock),
            )
            .await
            .unwrap(),
        )
    }

    /// Pairs `user` with the PKB account `pkb_user` through the simulator's OAuth endpoints.
    pub async fn pair(&self, sim: &Sim, user: &str, pkb_user: &str) -> Arc<Pairing> {
        let tokens = sim.tokens_for(pkb_user).await;
        self.pairings().await.save(user, tokens).await.unwrap()
    }

    pub async fn stored(&self, user: &str) -> Option<Arc<Pairing>> {
        self.pairings().await.get(user).await.unwrap()
    }

    /// How many sealed records (states, sessions) the SQLite store holds: of `kind` (its name in
    /// the `records` table, e.g. `session`), or of every kind.
    pub fn record_rows(&self, kind: Option<&str>) -> i64 {
        let db = rusqlite::Connection::open_with_flags(
            &self.db_path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        match kind {
            Some(k) => db.query_row("SELECT count(*) FROM records WHERE kind = ?1", [k], |r| {
                r.get(0)
            }),
            None => db.query_row("SELECT count(*) FROM records", [], |r| r.get(0)),
        }
        .unwrap()
    }
}
