//! `pkb-edge pairings …`: what an operator does to the token store by hand. Each command opens
//! the store the same way the service does (keys checked first), prints what it did, and never
//! prints a token.

use std::io::Write;
use std::sync::Arc;

use std::path::Path;
use std::process::ExitCode;

use super::PairingsCommand;
use crate::config::Config;
use crate::core::clock::{rfc3339, SystemClock};
use crate::observe::audit::{Action, AuditLog, Event};
use crate::store::{Pairings, StoreError};

const PAGE: u32 = 500;

/// Why a `pairings` command failed; each says what was done before it stopped.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot open the token store: {0}")]
    Open(StoreError),
    /// A store named by URL (migrate's source or target) would not open.
    #[error("{store}: {source}")]
    OpenAt { store: String, source: StoreError },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Audit(String),
    #[error("`{0}` has no pairing; nothing was changed")]
    NotPaired(String),
    #[error("stopped after {done} re-encrypted ({source}); run again to continue")]
    RekeyStopped { done: usize, source: StoreError },
    #[error("reading the source: {0}")]
    ReadSource(StoreError),
    #[error("writing the target after {written} written ({source}); run again to continue")]
    WriteTarget { written: usize, source: StoreError },
    #[error("checking the target: {0}")]
    CheckTarget(StoreError),
    #[error("cannot write: {0}")]
    Output(#[from] std::io::Error),
}

/// What a command reports: done (its text went to standard output), or why it failed.
pub type Outcome = Result<(), AdminError>;

async fn open(config: &Config) -> Result<Arc<Pairings>, AdminError> {
    crate::store::open_pairings(&config.store, Arc::new(SystemClock))
        .await
        .map_err(AdminError::Open)
}

/// Runs `pairings …` on a small runtime of its own.
pub(crate) fn command(command: PairingsCommand) -> ExitCode {
    match command {
        PairingsCommand::List { config } => on_runtime(&config, async |c, out| list(c, out).await),
        PairingsCommand::Revoke { user, config } => {
            on_runtime(&config, async |c, out| revoke(c, &user, out).await)
        }
        PairingsCommand::Rekey { config } => {
            on_runtime(&config, async |c, out| rekey(c, out).await)
        }
        PairingsCommand::Migrate { config, from, to } => on_runtime(&config, async |c, out| {
            let to = to.clone().unwrap_or_else(|| c.store.url.clone());
            migrate(c, &from, &to, out).await
        }),
    }
}

fn on_runtime(
    config: &Path,
    command: impl AsyncFnOnce(&Config, &mut dyn Write) -> Outcome,
) -> ExitCode {
    let config = match super::load(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start a runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let mut out = std::io::stdout().lock();
    match runtime.block_on(command(&config, &mut out)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pkb-edge: {e}");
            ExitCode::from(1)
        }
    }
}

/// One line per pairing: user id, created, last refreshed, access token expiry, key id.
pub async fn list(config: &Config, out: &mut dyn Write) -> Outcome {
    let pairings = open(config).await?;
    let w = |out: &mut dyn Write, line: String| writeln!(out, "{line}").map_err(AdminError::Output);
    w(
        out,
        "user_id\tcreated\trefreshed\taccess_expires\tkey_id".into(),
    )?;
    let (mut after, mut total) = (None::<String>, 0usize);
    loop {
        let page = pairings.list_page(after.as_deref(), PAGE).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.user_id.clone());
        total += page.len();
        for p in &page {
            w(
                out,
                format!(
                    "{}\t{}\t{}\t{}\t{}",
                    p.user_id,
                    rfc3339(p.created_at),
                    rfc3339(p.refreshed_at),
                    rfc3339(p.access_expires_at),
                    p.key_id
                ),
            )?;
        }
    }
    w(out, format!("# {total} pairing(s)"))
}

/// Deletes one user's pairing, and writes an audit line for it.
pub async fn revoke(config: &Config, user: &str, out: &mut dyn Write) -> Outcome {
    let pairings = open(config).await?;
    let keys = crate::store::keyring(&config.store)?;
    let audit = AuditLog::open(&config.audit, keys.derived_key()).map_err(AdminError::Audit)?;
    let removed = pairings.remove(user).await?;
    let request_id = format!("admin-{:016x}", rand::random::<u64>());
    audit.record(Event {
        request_id: &request_id,
        user: Some(user),
        action: Action::Revoke,
        outcome: if removed { "revoked" } else { "was_not_paired" },
        refused: false,
        patient: None,
        reason: None,
    });
    if !removed {
        return Err(AdminError::NotPaired(user.to_string()));
    }
    writeln!(
        out,
        "revoked the pairing of `{user}`; running instances stop using it within store.cache_ttl_secs ({} s)",
        config.store.cache_ttl.as_secs()
    )
    .map_err(AdminError::Output)
}

/// Re-encrypts every pairing under the first configured key, a page at a time.
pub async fn rekey(config: &Config, out: &mut dyn Write) -> Outcome {
    let pairings = open(config).await?;
    let primary = crate::store::keyring(&config.store)?
        .primary_id()
        .to_string();
    let (mut after, mut scanned, mut rekeyed, mut already, mut changed) =
        (None::<String>, 0, 0, 0, 0);
    loop {
        let page = pairings
            .rekey_page(after.as_deref(), PAGE)
            .await
            .map_err(|source| AdminError::RekeyStopped {
                done: rekeyed,
                source,
            })?;
        let Some(last) = page.last else { break };
        after = Some(last);
        scanned += page.scanned;
        rekeyed += page.rekeyed;
        already += page.already;
        changed += page.changed;
    }
    writeln!(
        out,
        "{scanned} pairing(s): {rekeyed} re-encrypted under key `{primary}`, {already} already were, {changed} changed meanwhile{}",
        if changed > 0 { " (run again to take them)" } else { "" }
    )
    .map_err(AdminError::Output)
}

/// Copies every pairing from the store at `from` to the store at `to`, sealed rows as they are
/// (the same keys open both): new users are inserted, rows the source has refreshed since are
/// replaced, the rest left alone; then opens every row of the target with the configured keys.
/// Idempotent: run it again to resume, or just before the cut-over to bring rotated tokens over.
pub async fn migrate(config: &Config, from: &str, to: &str, out: &mut dyn Write) -> Outcome {
    let open = |url: &str| {
        let mut c = config.clone();
        c.store.url = url.to_string();
        async move {
            crate::store::open_pairings(&c.store, Arc::new(SystemClock))
                .await
                .map_err(|source| AdminError::OpenAt {
                    store: crate::store::redact_url(&c.store.url),
                    source,
                })
        }
    };
    let source = open(from).await?;
    let target = open(to).await?;
    // The target learns the source's key checks, so it refuses the wrong keys the same way.
    for (key_id, check) in source.backend().key_checks().await? {
        target.backend().add_key_check(&key_id, check).await?;
    }
    let (mut after, mut written, mut current) = (None::<String>, 0usize, 0usize);
    loop {
        let rows = source
            .backend()
            .page(after.clone(), PAGE)
            .await
            .map_err(AdminError::ReadSource)?;
        let Some(last) = rows.last() else { break };
        after = Some(last.user_id.clone());
        let n = rows.len();
        let done = target
            .backend()
            .import(rows)
            .await
            .map_err(|source| AdminError::WriteTarget { written, source })?;
        written += done;
        current += n - done;
    }
    let (mut after, mut verified) = (None::<String>, 0usize);
    loop {
        let (n, last) = target
            .verify_page(after.as_deref(), PAGE)
            .await
            .map_err(AdminError::CheckTarget)?;
        verified += n;
        match last {
            Some(l) => after = Some(l),
            None => break,
        }
    }
    writeln!(
        out,
        "{written} pairing(s) written, {current} already up to date; the target holds {verified}, all of which open with the configured keys"
    )
    .map_err(AdminError::Output)
}
