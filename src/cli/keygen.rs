//! `pkb-edge keygen`: a store encryption key line, or (`--nhs-login`) an NHS login RP key.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use crate::store::crypto::Keyring;

pub fn keygen(id: Option<String>, nhs_login: bool, out: Option<&Path>) -> ExitCode {
    if nhs_login {
        return keygen_nhs_login(out);
    }
    if out.is_some() {
        eprintln!("--out is for --nhs-login keys; store keys are printed");
        return ExitCode::from(2);
    }
    let id = id.unwrap_or_else(|| format!("k{}", today()));
    println!("{}", Keyring::generate_line(&id));
    ExitCode::SUCCESS
}

/// `keygen --nhs-login --out FILE`: the private key to FILE (0600, never overwritten), the
/// public key to stdout.
fn keygen_nhs_login(out: Option<&Path>) -> ExitCode {
    let Some(out) = out else {
        eprintln!("keygen --nhs-login needs --out FILE: the private key is written there (mode 0600), the public key printed");
        return ExitCode::from(2);
    };
    let private = match crate::core::rsa_keys::generate_private_key() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    let public = match crate::core::rsa_keys::public_pem(&private) {
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

/// `YYYYMMDD` in UTC, for default key ids.
fn today() -> String {
    let days = crate::core::clock::unix_millis_now().div_euclid(86_400_000);
    let (y, m, d) = crate::core::clock::civil_from_days(days);
    format!("{y:04}{m:02}{d:02}")
}
