//! The upstream as Pingora connects to it: its current address (a host name resolved again every
//! `upstream_dns_secs` in the background), and for an https upstream the CA, pkb-edge's client
//! certificate and the name to verify (`[upstream_tls]`), read once at start-up.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::upstreams::peer::HttpPeer;
use pingora::utils::tls::{parse_x509, CertKey, WrappedX509};

use crate::config::{Upstream, UpstreamTlsSettings};
use crate::core::resolved::{Resolution, ResolvedAddr};
use crate::tls::UpstreamTls;

/// What every request's `HttpPeer` is made of.
pub struct UpstreamPeers {
    addr: Arc<ResolvedAddr>,
    tls: bool,
    /// SNI and the name verified: `upstream_tls.server_name`, or the upstream's host. Never
    /// empty (Pingora skips verification for an empty SNI).
    sni: String,
    ca: Option<Arc<[WrappedX509]>>,
    client: Option<Arc<CertKey>>,
}

impl UpstreamPeers {
    pub fn new(upstream: &Upstream, settings: &UpstreamTlsSettings, files: UpstreamTls) -> Self {
        let host = upstream.host.trim_start_matches('[').trim_end_matches(']');
        let sni = settings
            .server_name
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| host.to_string());
        let ca = files.ca.map(|certs| {
            certs
                .into_iter()
                .map(|der| WrappedX509::new(der, parse_x509))
                .collect::<Vec<_>>()
                .into()
        });
        let client = files
            .client
            .map(|(chain, key)| Arc::new(CertKey::new(chain, key)));
        UpstreamPeers {
            addr: Arc::new(ResolvedAddr::new(upstream.addr)),
            tls: upstream.tls,
            sni,
            ca,
            client,
        }
    }

    /// The peer for one request.
    pub fn peer(&self) -> HttpPeer {
        let mut peer = HttpPeer::new(self.addr.get(), self.tls, self.sni.clone());
        if self.tls {
            peer.options.ca = self.ca.clone();
            peer.client_cert_key = self.client.clone();
        }
        peer
    }

    /// Where the address lives (for the DNS refresh).
    pub fn addr(&self) -> Arc<ResolvedAddr> {
        self.addr.clone()
    }
}

/// Resolves a host name in `upstream` again every `every`; a failure keeps the last good
/// address (logged once per streak), a change is logged.
pub struct UpstreamDns {
    pub host: String,
    pub port: u16,
    pub every: Duration,
    pub addr: Arc<ResolvedAddr>,
}

impl UpstreamDns {
    pub fn new(config: &crate::config::Config, addr: Arc<ResolvedAddr>) -> UpstreamDns {
        UpstreamDns {
            host: config.upstream.host.clone(),
            port: config.upstream.addr.port(),
            every: config.upstream_dns,
            addr,
        }
    }

    /// Only for a host name: an IP address never changes.
    pub fn wanted(upstream: &Upstream) -> bool {
        let host = upstream.host.trim_start_matches('[').trim_end_matches(']');
        host.parse::<std::net::IpAddr>().is_err()
    }
}

#[async_trait]
impl pingora::services::background::BackgroundService for UpstreamDns {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(self.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // resolved at start-up just now
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            let found = tokio::net::lookup_host((self.host.as_str(), self.port))
                .await
                .map(|addrs| addrs.collect());
            match self.addr.update(found) {
                Resolution::Unchanged => {}
                Resolution::Changed { from, to } => {
                    tracing::info!(host = %self.host, %from, %to, "the upstream's address changed");
                }
                Resolution::Recovered(addr) => {
                    tracing::info!(host = %self.host, %addr, "the upstream's name resolves again");
                }
                Resolution::Failed { first: true, error } => {
                    tracing::warn!(host = %self.host, addr = %self.addr.get(), "cannot resolve the upstream's name ({error}); the last good address stays in use");
                }
                Resolution::Failed { first: false, .. } => {}
            }
        }
    }
}
