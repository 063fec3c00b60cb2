//! Who is asking. Each identity mode is a source that looks at a request and finds a user, or
//! nobody: `header` (a header believed from trusted peers), `nhs_session` (pkb-edge's own NHS
//! login session), and `jwt` (a signed assertion from the proxy in front). The edge asks the
//! configured source and never decides identity itself.

use std::future::Future;
use std::net::IpAddr;

use http::HeaderMap;

mod header;
mod jwt;
mod nhs_session;

pub use header::HeaderIdentity;
pub use jwt::{JwtIdentity, Outcome as JwtOutcome, MAX_TOKEN_BYTES};
pub use nhs_session::{NhsSessionIdentity, SignedInSession};

/// What an identity source may look at.
pub struct Asking<'a> {
    /// The TCP peer, when known: a source that trusts peers fails closed without it.
    pub peer: Option<IpAddr>,
    /// The names of the connection's verified client certificate (mTLS), when it has one.
    pub client: Option<&'a [String]>,
    pub headers: &'a HeaderMap,
}

/// A source of "who is asking" could not be consulted (its store is down). Never the same as
/// "nobody": a signed-in user must not be treated as signed out.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct IdentityError(pub String);

/// One identity mode.
pub trait Identify: Send + Sync {
    /// What the source found: the user, and whatever the mode carries with them.
    type Found: Send;

    /// `Ok(None)`: nobody (a missing, spoofed or malformed claim is never an error a client
    /// could probe).
    fn identify(
        &self,
        asking: &Asking<'_>,
    ) -> impl Future<Output = Result<Option<Self::Found>, IdentityError>> + Send;
}
