//! Shared set-up for the integration tests: the PKB simulator and a small upstream on one
//! long-lived runtime, the real `pkb-edge` binary as a child process on ephemeral loopback ports,
//! and pairings seeded through the simulator's real OAuth endpoints.
//!
//! - `process`: child processes and ports (also used by `benches/edge.rs`)
//! - `sim`: the PKB simulator, and the check that none of its secrets leaked
//! - `upstream`: the echo upstream standing in for the EHR
//! - `config`: a test's proxy settings and the store they point at
//! - `proxy`: the real binary, running `pkb-edge run`
//! - `world`: simulator, upstream and proxy together, and the pairing flow through them
//! - `client`: HTTP clients and reading their answers
//! - `nhs`: NHS login: its simulator and a proxy as its relying party
//! - `certs`: a private CA and the certificates it signs (TLS tests)
#![allow(dead_code)]

pub mod certs;
mod client;
mod config;
pub mod nhs;
mod process;
mod proxy;
mod sim;
mod upstream;
mod world;

use std::sync::OnceLock;

// Each test binary uses a part of them, as `common::*`.
#[allow(unused_imports)]
pub use self::{client::*, config::*, process::*, proxy::*, sim::*, upstream::*, world::*};

pub const CLIENT_ID: &str = "pkb-edge";
pub const CLIENT_SECRET: &str = "sim-secret";
pub const USER_HEADER: &str = "X-Authenticated-User";

/// One runtime for every server a test binary starts (servers must outlive each test's futures).
pub fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("test runtime")
    })
}
