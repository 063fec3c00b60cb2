//! `pkb-edge run`: the proxy, until it is told to stop.

use std::path::Path;
use std::process::ExitCode;

use crate::edge::service::{build_server, StartOptions};

pub fn run(config: &Path, upgrade: bool, daemon: bool) -> ExitCode {
    let config = match super::load(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let server = match build_server(&config, StartOptions { upgrade, daemon }) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("pkb-edge cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    tracing::info!(listen = %config.listen, upstream = %config.upstream.addr, upgrade, "pkb-edge starting");
    server.run_forever()
}
