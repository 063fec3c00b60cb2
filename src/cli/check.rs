//! `pkb-edge check`: validate a configuration file, naming each problem's key; with `--deep`,
//! also open what start-up opens.

use std::path::Path;
use std::process::ExitCode;

pub fn check(path: &Path, deep: bool) -> ExitCode {
    let config = match super::load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if deep {
        if let Err(e) = crate::edge::service::preflight(&config) {
            eprintln!("{}: {e}", path.display());
            return ExitCode::from(1);
        }
    }
    println!(
        "{}: OK (listen {}, upstream {}, PKB {})",
        path.display(),
        config.listen,
        config.upstream.addr,
        config.pkb.base_url
    );
    ExitCode::SUCCESS
}
