//! The listeners, the upstream, `[server]` and `[limits]`.
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use serde::Deserialize;
use url::Url;

use super::Validator;

#[derive(Debug, Clone)]
pub struct LimitSettings {
    /// Launches one user may make per minute (bursts up to this many); 0 turns the limit off.
    pub launch_per_minute: u32,
    /// Calls to PKB in flight at once, over all users; more are refused at once (503).
    pub pkb_concurrency: usize,
}

#[derive(Debug, Clone)]
pub struct Upstream {
    /// Resolved once at start-up.
    pub addr: SocketAddr,
    pub tls: bool,
    /// The host name, for SNI and certificate checks when `tls`.
    pub host: String,
}

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub threads: usize,
    /// One tokio runtime shared by all threads (tasks move between them) when true; one
    /// runtime per thread, each connection staying on the thread that accepted it, when false.
    pub work_stealing: bool,
    pub grace_period_seconds: u64,
    pub graceful_shutdown_timeout_seconds: u64,
    pub upstream_keepalive_pool_size: usize,
    /// Downstream connections open at once; `None` derives it from the descriptor limit at
    /// start-up. At the limit the oldest idle keep-alive connection is closed for a new one.
    pub max_connections: Option<usize>,
    /// A keep-alive connection with no request for this long is closed.
    pub keepalive_idle: std::time::Duration,
    /// A request's whole head (request line and headers) must arrive within this long of its
    /// first byte, however it is trickled.
    pub header_timeout: std::time::Duration,
    /// Pingora's pid file, and the socket a new process (`run --upgrade`) takes the listening
    /// sockets over from.
    pub pid_file: PathBuf,
    pub upgrade_sock: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawLimits {
    launch_per_minute: u32,
    pkb_concurrency: usize,
}

impl Default for RawLimits {
    fn default() -> Self {
        RawLimits {
            launch_per_minute: 30,
            pkb_concurrency: 256,
        }
    }
}

pub(super) fn default_prefix() -> String {
    "/_pkb".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawServer {
    threads: usize,
    work_stealing: bool,
    grace_period_seconds: u64,
    graceful_shutdown_timeout_seconds: u64,
    upstream_keepalive_pool_size: usize,
    max_connections: Option<usize>,
    keepalive_idle_secs: u64,
    header_timeout_secs: u64,
    pid_file: Option<PathBuf>,
    upgrade_sock: Option<PathBuf>,
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            threads: 2,
            work_stealing: true,
            grace_period_seconds: 30,
            graceful_shutdown_timeout_seconds: 10,
            upstream_keepalive_pool_size: 256,
            max_connections: None,
            keepalive_idle_secs: 60,
            header_timeout_secs: 10,
            pid_file: None,
            upgrade_sock: None,
        }
    }
}

impl Validator {
    pub(super) fn limits(&mut self, l: RawLimits) -> Option<LimitSettings> {
        if l.launch_per_minute > 6000 {
            self.problem(
                "limits.launch_per_minute",
                "must be at most 6000 (0 turns the limit off)",
            );
        }
        if !(1..=100_000).contains(&l.pkb_concurrency) {
            self.problem("limits.pkb_concurrency", "must be between 1 and 100000");
        }
        Some(LimitSettings {
            launch_per_minute: l.launch_per_minute,
            pkb_concurrency: l.pkb_concurrency,
        })
    }

    pub(super) fn socket_addr(&mut self, key: &str, s: &str) -> Option<SocketAddr> {
        match s.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                self.problem(
                    key,
                    format!("`{s}` is not an IP address and port, e.g. 0.0.0.0:8080"),
                );
                None
            }
        }
    }

    pub(super) fn upstream(&mut self, s: &str) -> Option<Upstream> {
        let key = "upstream";
        let url = match Url::parse(s) {
            Ok(u) => u,
            Err(e) => {
                self.problem(
                    key,
                    format!("`{s}` is not a URL ({e}); e.g. http://127.0.0.1:3000"),
                );
                return None;
            }
        };
        let tls = match url.scheme() {
            "http" => false,
            "https" => true,
            other => {
                self.problem(key, format!("scheme `{other}` is not http or https"));
                return None;
            }
        };
        if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
            self.problem(
                key,
                "must be a scheme, host and port only (requests keep their own paths)",
            );
            return None;
        }
        let host = url.host_str().unwrap_or_default().to_string();
        let port = url.port_or_known_default().unwrap_or(80);
        let lookup_host = host.trim_start_matches('[').trim_end_matches(']');
        match (lookup_host, port).to_socket_addrs().map(|mut a| a.next()) {
            Ok(Some(addr)) => Some(Upstream { addr, tls, host }),
            _ => {
                self.problem(key, format!("cannot resolve `{host}`"));
                None
            }
        }
    }

    pub(super) fn prefix(&mut self, p: &str) -> Option<String> {
        let ok = p.len() > 1
            && p.starts_with('/')
            && !p.ends_with('/')
            && p[1..].split('/').all(|seg| {
                !seg.is_empty()
                    && seg
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                    && seg != "."
                    && seg != ".."
            });
        if ok {
            Some(p.to_string())
        } else {
            self.problem("prefix", format!("`{p}` must be a path like /_pkb: a leading slash, no trailing slash, letters, digits, - _ ."));
            None
        }
    }

    pub(super) fn server(&mut self, s: RawServer, port: u16) -> Option<ServerSettings> {
        if s.threads == 0 || s.threads > 1024 {
            self.problem("server.threads", "must be between 1 and 1024");
            return None;
        }
        if s.upstream_keepalive_pool_size == 0 {
            self.problem("server.upstream_keepalive_pool_size", "must be at least 1");
            return None;
        }
        if s.max_connections
            .is_some_and(|m| !(1..=10_000_000).contains(&m))
        {
            self.problem(
                "server.max_connections",
                "must be between 1 and 10000000 (leave it out to derive it from the descriptor limit)",
            );
            return None;
        }
        if !(1..=3600).contains(&s.keepalive_idle_secs) {
            self.problem("server.keepalive_idle_secs", "must be between 1 and 3600");
            return None;
        }
        if !(1..=300).contains(&s.header_timeout_secs) {
            self.problem("server.header_timeout_secs", "must be between 1 and 300");
            return None;
        }
        Some(ServerSettings {
            threads: s.threads,
            work_stealing: s.work_stealing,
            grace_period_seconds: s.grace_period_seconds,
            graceful_shutdown_timeout_seconds: s.graceful_shutdown_timeout_seconds,
            upstream_keepalive_pool_size: s.upstream_keepalive_pool_size,
            max_connections: s.max_connections,
            keepalive_idle: std::time::Duration::from_secs(s.keepalive_idle_secs),
            header_timeout: std::time::Duration::from_secs(s.header_timeout_secs),
            pid_file: s
                .pid_file
                .unwrap_or_else(|| std::env::temp_dir().join(format!("pkb-edge-{port}.pid"))),
            upgrade_sock: s.upgrade_sock.unwrap_or_else(|| {
                std::env::temp_dir().join(format!("pkb-edge-{port}-upgrade.sock"))
            }),
        })
    }
}
