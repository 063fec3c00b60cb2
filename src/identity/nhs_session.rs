//! `nhs_login` mode: the user is whoever pkb-edge's own NHS login session cookie names.

use std::sync::Arc;

use super::{Asking, Identify, IdentityError};
use crate::core::cookies::cookie_value;
use crate::nhs_login::{NhsLogin, Session};

pub struct NhsSessionIdentity {
    pub nhs: Arc<NhsLogin>,
}

/// A live session and its id (the cookie's value).
pub struct SignedInSession {
    pub id: String,
    pub session: Session,
}

impl Identify for NhsSessionIdentity {
    type Found = SignedInSession;

    async fn identify(
        &self,
        asking: &Asking<'_>,
    ) -> Result<Option<SignedInSession>, IdentityError> {
        let Some(id) = cookie_value(asking.headers, &self.nhs.settings().cookie_name) else {
            return Ok(None);
        };
        match self.nhs.sessions().get(&id).await {
            Ok(found) => Ok(found.map(|session| SignedInSession { id, session })),
            Err(e) => Err(IdentityError(e.to_string())),
        }
    }
}
