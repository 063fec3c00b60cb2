//! `pkb-edge sim`: the PKB simulator alone, and optionally the NHS login simulator beside it
//! with a relying party registered from its public key (for staging tests).

use std::path::PathBuf;
use std::process::ExitCode;

use crate::sim::nhs::{demo_users, NhsLoginSim, RegisteredClient};
use crate::sim::{SimConfig, Simulator};

pub struct SimArgs {
    pub listen: String,
    pub client_id: String,
    pub client_secret: String,
    pub access_token_lifetime_secs: i64,
    /// Where the NHS login simulator listens, if it runs.
    pub nhs_login: Option<String>,
    pub rp: Option<RegisteredClient>,
    pub portal_url: Option<String>,
}

/// The relying party `--nhs-rp-*` describes, its public key read and checked.
pub fn relying_party(
    client_id: Option<String>,
    public_key: Option<PathBuf>,
    redirect_uris: Vec<String>,
) -> Result<Option<RegisteredClient>, ExitCode> {
    let (Some(client_id), Some(key_file)) = (client_id, public_key) else {
        return Ok(None);
    };
    let pem = std::fs::read_to_string(&key_file).map_err(|e| {
        eprintln!(
            "--nhs-rp-public-key: cannot read {}: {e}",
            key_file.display()
        );
        ExitCode::from(2)
    })?;
    if jsonwebtoken::DecodingKey::from_rsa_pem(pem.as_bytes()).is_err() {
        eprintln!(
            "--nhs-rp-public-key: {} is not an RSA public key in PEM",
            key_file.display()
        );
        return Err(ExitCode::from(2));
    }
    Ok(Some(RegisteredClient {
        client_id,
        public_key_pem: pem,
        redirect_uris,
    }))
}

pub fn run(args: SimArgs) -> ExitCode {
    let sim = Simulator::new(SimConfig {
        client_id: args.client_id,
        client_secret: args.client_secret,
        access_token_lifetime_secs: args.access_token_lifetime_secs,
        ..SimConfig::default()
    });
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start a runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async move {
        let bind = |addr: String| async move {
            tokio::net::TcpListener::bind(&addr).await.map_err(|e| {
                eprintln!("cannot listen on {addr}: {e}");
                ExitCode::from(1)
            })
        };
        let listener = match bind(args.listen.clone()).await {
            Ok(l) => l,
            Err(code) => return code,
        };
        if let Some(addr) = args.nhs_login {
            let op_listener = match bind(addr.clone()).await {
                Ok(l) => l,
                Err(code) => return code,
            };
            let op = NhsLoginSim::new(&format!("http://{addr}"), demo_users(), false);
            if let Some(rp) = args.rp {
                println!(
                    "NHS login simulator: registered relying party `{}`",
                    rp.client_id
                );
                op.register(rp);
            }
            sim.attach_nhs_login(op.clone(), args.portal_url);
            println!("NHS login simulator on http://{addr}/ (issuer http://{addr})");
            tokio::spawn(op.serve(op_listener));
        }
        println!(
            "PKB simulator on http://{}/ (stats: /_sim/stats)",
            args.listen
        );
        match sim.serve(listener).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("simulator stopped: {e}");
                ExitCode::from(1)
            }
        }
    })
}
