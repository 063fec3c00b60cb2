//! Server-side sessions of users signed in with NHS login, kept in the pairing store (so every
//! instance sees them). The browser holds only an opaque random id; the store holds its SHA-256
//! and the sealed session. NHS login's rules: a session ends after `idle` without a request, and
//! `max` after sign-in whatever the activity.

use serde::{Deserialize, Serialize};

use crate::store::records::Records;
use crate::store::{RecordKind, StoreError};

/// How often the idle deadline is moved forward: at most one store write per session per this
/// many seconds, so a busy page does not write on every request.
const TOUCH_EVERY_SECS: i64 = 60;

/// The opaque id in the session cookie.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionId(pub String);

impl std::fmt::Debug for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionId(…)")
    }
}

/// A signed-in user.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// NHS login's subject: the user id pkb-edge passes upstream and pairs with PKB.
    pub sub: String,
    pub nhs_number: Option<String>,
    pub identity_proofing_level: Option<String>,
    /// The `jti` of the user's NHS login id_token: the `code` of `asserted_login_identity`.
    pub id_token_jti: String,
    pub vot: String,
    pub created_at: i64,
    /// With the `gp_integration_credentials` scope: what the upstream is told, and the
    /// credentials when `valid`.
    #[serde(default)]
    pub gp_status: Option<super::gp::GpStatus>,
    #[serde(default)]
    pub gp: Option<super::gp::GpCredentials>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("sub", &self.sub)
            .field("vot", &self.vot)
            .field("created_at", &self.created_at)
            .field("gp_status", &self.gp_status)
            .finish_non_exhaustive()
    }
}

pub struct Sessions {
    records: Records,
    idle_secs: i64,
    max_secs: i64,
}

impl Sessions {
    pub fn new(records: Records, idle_secs: i64, max_secs: i64) -> Self {
        Sessions {
            records,
            idle_secs,
            max_secs,
        }
    }

    fn deadline(&self, created_at: i64, now: i64) -> i64 {
        (now + self.idle_secs).min(created_at + self.max_secs)
    }

    pub async fn create(&self, session: &Session) -> Result<SessionId, StoreError> {
        let id = crate::core::random::random_token();
        let expires_at = self.deadline(session.created_at, self.records.now());
        self.records
            .put(RecordKind::Session, &id, session, expires_at)
            .await?;
        Ok(SessionId(id))
    }

    /// The live session for a cookie value, its idle deadline moved forward.
    pub async fn get(&self, id: &str) -> Result<Option<Session>, StoreError> {
        if !crate::core::random::state_is_well_formed(id) {
            return Ok(None);
        }
        let Some(record) = self.records.get::<Session>(RecordKind::Session, id).await? else {
            return Ok(None);
        };
        let now = self.records.now();
        let session = record.value;
        let deadline = self.deadline(session.created_at, now);
        if deadline - record.expires_at >= TOUCH_EVERY_SECS
            && !self
                .records
                .extend(RecordKind::Session, id, deadline)
                .await?
        {
            return Ok(None); // ended meanwhile (signed out elsewhere)
        }
        Ok(Some(session))
    }

    /// Writes a changed session under the same id, keeping its expiry; false if it is gone
    /// (a sign-out meanwhile stays a sign-out).
    pub async fn replace(&self, id: &str, session: &Session) -> Result<bool, StoreError> {
        self.records.update(RecordKind::Session, id, session).await
    }

    pub async fn end(&self, id: &str) -> Result<bool, StoreError> {
        if !crate::core::random::state_is_well_formed(id) {
            return Ok(false);
        }
        self.records.delete(RecordKind::Session, id).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::core::clock::{Clock, ManualClock};
    use crate::store::crypto::Keyring;
    use crate::store::Pairings;

    struct Fixture {
        _dir: tempfile::TempDir,
        clock: Arc<ManualClock>,
        sessions: Sessions,
    }

    async fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::at(1_000_000));
        let backend =
            crate::store::open_backend(&format!("sqlite://{}", dir.path().join("s.db").display()))
                .await
                .unwrap();
        let pairings = Pairings::open(
            backend,
            Keyring::parse(&Keyring::generate_line("k1")).unwrap(),
            10,
            std::time::Duration::from_secs(60),
            clock.clone(),
        )
        .await
        .unwrap();
        Fixture {
            sessions: Sessions::new(pairings.records(), 30 * 60, 12 * 3600),
            clock,
            _dir: dir,
        }
    }

    fn session(created_at: i64) -> Session {
        Session {
            sub: "nhs-sub-1".into(),
            nhs_number: Some("9990000018".into()),
            identity_proofing_level: Some("P9".into()),
            id_token_jti: "jti-1".into(),
            vot: "P9.Cp.Cd".into(),
            created_at,
            gp_status: None,
            gp: None,
        }
    }

    #[tokio::test]
    async fn idle_sessions_end_after_thirty_minutes_and_activity_keeps_them() {
        let f = fixture().await;
        let id = f.sessions.create(&session(f.clock.now())).await.unwrap();
        f.clock.advance(29 * 60);
        assert!(
            f.sessions.get(&id.0).await.unwrap().is_some(),
            "29 min idle"
        );
        f.clock.advance(29 * 60);
        assert!(
            f.sessions.get(&id.0).await.unwrap().is_some(),
            "29 min after the last request"
        );
        f.clock.advance(30 * 60);
        assert!(
            f.sessions.get(&id.0).await.unwrap().is_none(),
            "30 min idle"
        );
    }

    #[tokio::test]
    async fn sessions_end_twelve_hours_after_sign_in_however_busy() {
        let f = fixture().await;
        let start = f.clock.now();
        let id = f.sessions.create(&session(start)).await.unwrap();
        while f.clock.now() < start + 12 * 3600 - 20 * 60 {
            f.clock.advance(20 * 60);
            assert!(f.sessions.get(&id.0).await.unwrap().is_some());
        }
        // 11 h 40 min in, just used: still 20 minutes to go, not 30.
        f.clock.advance(20 * 60 - 1);
        assert!(f.sessions.get(&id.0).await.unwrap().is_some(), "12 h − 1 s");
        f.clock.advance(1);
        assert!(f.sessions.get(&id.0).await.unwrap().is_none(), "12 h");
    }

    #[tokio::test]
    async fn ended_and_unknown_sessions_are_absent() {
        let f = fixture().await;
        let id = f.sessions.create(&session(f.clock.now())).await.unwrap();
        let mut changed = session(f.clock.now());
        changed.vot = "P9.Cm".into();
        assert!(f.sessions.replace(&id.0, &changed).await.unwrap());
        assert_eq!(f.sessions.get(&id.0).await.unwrap().unwrap().vot, "P9.Cm");
        assert!(f.sessions.end(&id.0).await.unwrap());
        assert!(f.sessions.get(&id.0).await.unwrap().is_none());
        assert!(
            !f.sessions.replace(&id.0, &changed).await.unwrap(),
            "a replace never brings an ended session back"
        );
        assert!(f.sessions.get(&id.0).await.unwrap().is_none());
        assert!(f
            .sessions
            .get("not-a-session-id-at-all-000000000000000")
            .await
            .unwrap()
            .is_none());
        assert!(f.sessions.get("../../etc").await.unwrap().is_none());
    }
}
