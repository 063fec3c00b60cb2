//! The launch use case: identity → tokens (cache, store, refresh) → one-time password → the URL
//! of PKB's OTP login, optionally into a patient's record. No Pingora types: the proxy hands in a
//! user id and a query string and gets a URL or a `LaunchError` back.

use std::sync::Arc;
use std::time::Duration;

use crate::config::PkbSettings;
use crate::core::limits::LaunchLimiter;
use crate::core::patient::PatientContext;
use crate::core::relative_path::{self, RelativePath};
use crate::core::secret::{Otp, OtpLoginUrl};
use crate::observe::audit::{Action, AuditLog, Caller, Event};
use crate::observe::metrics::metrics;
use crate::pkb::urls::{self, ContextParams};
use crate::pkb::{PkbClient, PkbError};
use crate::store::{FreshError, Pairing, StoreError};
use crate::tokens::{TokenSource, Trigger};

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("no authenticated user")]
    NoIdentity,
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("not paired with PKB")]
    NotPaired,
    /// More than `limits.launch_per_minute` launches by this user; try again after the wait.
    #[error("too many launches; next one allowed in {} ms", .0.as_millis())]
    RateLimited(Duration),
    /// PKB rejected the grant; the pairing was deleted and must be made again.
    #[error("PKB pairing must be renewed")]
    RelinkNeeded,
    #[error("PKB unavailable: {0}")]
    PkbUnavailable(String),
    /// PKB refused pkb-edge itself (credentials, configuration): an operator must look.
    #[error("PKB refused the request: {0}")]
    PkbRefused(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Every `outcome` of `pkb_edge_launch_total`: a redirect, or a `LaunchError`'s.
pub const LAUNCH_OUTCOMES: [&str; 9] = [
    "redirect",
    "no_identity",
    "bad_request",
    "not_paired",
    "rate_limited",
    "relink_needed",
    "pkb_unavailable",
    "pkb_refused",
    "store_error",
];

impl LaunchError {
    /// The `outcome` label of `pkb_edge_launch_total`.
    pub fn outcome(&self) -> &'static str {
        match self {
            LaunchError::NoIdentity => "no_identity",
            LaunchError::BadRequest(_) => "bad_request",
            LaunchError::NotPaired => "not_paired",
            LaunchError::RateLimited(_) => "rate_limited",
            LaunchError::RelinkNeeded => "relink_needed",
            LaunchError::PkbUnavailable(_) => "pkb_unavailable",
            LaunchError::PkbRefused(_) => "pkb_refused",
            LaunchError::Store(_) => "store_error",
        }
    }
}

/// The parsed query of a launch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchParams {
    pub redirect_uri: Option<RelativePath>,
    pub context: Option<PatientContext>,
}

impl LaunchParams {
    /// Parses the launch query. Ambiguity is refused: a parameter given twice, a national id
    /// without its type, both kinds of context, context hidden inside `redirect_uri`.
    pub fn parse(query: Option<&str>, names: &ContextParams) -> Result<LaunchParams, LaunchError> {
        let bad = |m: String| LaunchError::BadRequest(m);
        let mut redirect_uri = None;
        let mut national_id = None;
        let mut national_id_type = None;
        let mut email = None;
        for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            let slot = if key == "redirect_uri" {
                &mut redirect_uri
            } else if key == names.national_id.as_str() {
                &mut national_id
            } else if key == names.national_id_type.as_str() {
                &mut national_id_type
            } else if key == names.email.as_str() {
                &mut email
            } else {
                continue;
            };
            if slot.replace(value.into_owned()).is_some() {
                return Err(bad(format!("`{key}` is given more than once")));
            }
        }
        let redirect_uri = match redirect_uri {
            Some(r) => Some(landing_path(&r, names)?),
            None => None,
        };
        let context = match (national_id, national_id_type, email) {
            (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => {
                return Err(bad(format!(
                    "give `{}` or `{}`, never both",
                    names.national_id, names.email
                )))
            }
            (Some(id), Some(id_type), None) => Some(
                PatientContext::national_id(&id, &id_type).map_err(|(on_id, e)| {
                    bad(format!(
                        "`{}` {e}",
                        if on_id {
                            &names.national_id
                        } else {
                            &names.national_id_type
                        }
                    ))
                })?,
            ),
            (Some(_), None, None) => {
                return Err(bad(format!(
                    "`{}` needs `{}` (e.g. NHS)",
                    names.national_id, names.national_id_type
                )))
            }
            (None, Some(_), None) => {
                return Err(bad(format!(
                    "`{}` needs `{}`",
                    names.national_id_type, names.national_id
                )))
            }
            (None, None, Some(e)) => {
                Some(PatientContext::email(&e).map_err(|e| bad(format!("`{}` {e}", names.email)))?)
            }
            (None, None, None) => None,
        };
        Ok(LaunchParams {
            redirect_uri,
            context,
        })
    }
}

/// `redirect_uri`: a relative path on PKB that does not smuggle patient context past the
/// launch parameters' checks.
fn landing_path(r: &str, names: &ContextParams) -> Result<RelativePath, LaunchError> {
    let bad = |m: String| LaunchError::BadRequest(m);
    let path = relative_path::parse(r).map_err(|e| bad(format!("`redirect_uri` {e}")))?;
    let hides_context =
        form_urlencoded::parse(path.query().unwrap_or_default().as_bytes()).any(|(k, _)| {
            k == names.national_id.as_str()
                || k == names.national_id_type.as_str()
                || k == names.email.as_str()
        });
    if hides_context {
        return Err(bad(
            "`redirect_uri` must not carry patient context; pass it as launch parameters".into(),
        ));
    }
    Ok(path)
}

pub struct LaunchService {
    tokens: Arc<TokenSource>,
    limiter: LaunchLimiter,
    pkb: Arc<PkbClient>,
    names: ContextParams,
    base_url: String,
    otp_login_path: String,
    otp_param: String,
    patient_landing_path: String,
    /// The longest a launch waits for PKB in all (refresh and OTP together).
    deadline: Duration,
    audit: Arc<AuditLog>,
}

impl LaunchService {
    pub fn new(tokens: Arc<TokenSource>, limiter: LaunchLimiter, audit: Arc<AuditLog>) -> Self {
        let pkb = tokens.pkb().clone();
        let s: &PkbSettings = pkb.settings();
        for outcome in LAUNCH_OUTCOMES {
            metrics().launch_total.with_label_values(&[outcome]);
        }
        LaunchService {
            names: ContextParams {
                national_id: s.national_id_param.clone(),
                national_id_type: s.national_id_type_param.clone(),
                email: s.email_param.clone(),
            },
            base_url: s.base_url.as_str().to_string(),
            otp_login_path: s.otp_login_path.clone(),
            otp_param: s.otp_param.clone(),
            patient_landing_path: s.patient_landing_path.clone(),
            deadline: s.timeout,
            limiter,
            tokens,
            pkb,
            audit,
        }
    }

    /// A launch as a request asks for it (`query` is the launch query): the URL to send the
    /// browser to, or why not. Timed, counted, logged and audited here.
    pub async fn launch_for(
        &self,
        caller: Caller<'_>,
        query: Option<&str>,
    ) -> Result<OtpLoginUrl, LaunchError> {
        let started = std::time::Instant::now();
        let mut patient = None;
        let result = async {
            let user = caller.user.ok_or(LaunchError::NoIdentity)?;
            let params = self.params(query)?;
            patient = params.context.clone();
            self.launch(user, &params).await
        }
        .await;
        let m = metrics();
        m.launch_duration_seconds
            .observe(started.elapsed().as_secs_f64());
        let outcome = result.as_ref().map_or_else(|e| e.outcome(), |_| "redirect");
        m.launch_total.with_label_values(&[outcome]).inc();
        let reason = result.as_ref().err().map(ToString::to_string);
        tracing::info!(user = caller.user.unwrap_or(""), outcome, reason, "launch");
        self.audit.record(Event {
            request_id: caller.request_id,
            user: caller.user,
            action: Action::Launch,
            outcome,
            refused: result.is_err(),
            patient: patient.as_ref(),
            reason,
        });
        result
    }

    /// The token source launches use (page views tell it about users, for refresh-ahead).
    pub fn token_source(&self) -> &Arc<TokenSource> {
        &self.tokens
    }

    pub fn context_names(&self) -> &ContextParams {
        &self.names
    }

    /// The longest a call to PKB on a user's behalf may take.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// The launch query, parsed with the configured parameter names.
    pub fn params(&self, query: Option<&str>) -> Result<LaunchParams, LaunchError> {
        LaunchParams::parse(query, &self.names)
    }

    /// The URL to send the browser to: PKB's OTP login with a fresh OTP. Counts towards the
    /// user's rate limit.
    pub async fn launch(
        &self,
        user_id: &str,
        params: &LaunchParams,
    ) -> Result<OtpLoginUrl, LaunchError> {
        self.limiter
            .check(user_id)
            .map_err(LaunchError::RateLimited)?;
        let otp = tokio::time::timeout(self.deadline, self.otp_for(user_id))
            .await
            .map_err(|_| LaunchError::PkbUnavailable("no answer within pkb.timeout_ms".into()))??;
        self.tokens.launched(user_id).await;
        Ok(urls::otp_login_url(
            &self.base_url,
            &self.otp_login_path,
            &self.otp_param,
            &otp,
            self.landing(params).as_deref(),
        ))
    }

    fn landing(&self, params: &LaunchParams) -> Option<String> {
        match (&params.redirect_uri, &params.context) {
            (path, Some(context)) => {
                let path = path
                    .as_ref()
                    .map_or(self.patient_landing_path.as_str(), RelativePath::as_str);
                Some(urls::landing_with_context(path, context, &self.names))
            }
            (Some(path), None) => Some(path.as_str().to_string()),
            (None, None) => None,
        }
    }

    async fn otp_for(&self, user_id: &str) -> Result<Otp, LaunchError> {
        let pairing = self.tokens(user_id, None).await?;
        match self.pkb.request_otp(&pairing.tokens.access_token).await {
            Ok(otp) => Ok(otp),
            // PKB no longer honours a token our clock thinks is valid (revoked, clock skew):
            // refresh that version once and try again.
            Err(PkbError::Unauthorized) => {
                let pairing = self.tokens(user_id, Some(pairing.version)).await?;
                self.pkb
                    .request_otp(&pairing.tokens.access_token)
                    .await
                    .map_err(pkb_error)
            }
            Err(e) => Err(pkb_error(e)),
        }
    }

    async fn tokens(
        &self,
        user_id: &str,
        stale_version: Option<i64>,
    ) -> Result<Arc<Pairing>, LaunchError> {
        self.tokens
            .fresh(user_id, stale_version, Trigger::Launch)
            .await
            .map_err(|e| match e {
                FreshError::NotPaired => LaunchError::NotPaired,
                FreshError::Revoked => LaunchError::RelinkNeeded,
                FreshError::Store(e) => LaunchError::Store(e),
                FreshError::Refresh(e) => pkb_error(e),
            })
    }
}

fn pkb_error(e: PkbError) -> LaunchError {
    match e {
        PkbError::Unavailable(why) => LaunchError::PkbUnavailable(why),
        // A grant PKB rejects outside a refresh (an OTP after a fresh refresh still refused).
        PkbError::InvalidGrant | PkbError::Unauthorized => {
            LaunchError::PkbRefused("PKB refused a freshly refreshed token".into())
        }
        PkbError::Refused(why) | PkbError::Protocol(why) => LaunchError::PkbRefused(why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> ContextParams {
        ContextParams::default()
    }

    fn parse(q: &str) -> Result<LaunchParams, String> {
        LaunchParams::parse(Some(q), &names()).map_err(|e| e.to_string())
    }

    /// Every outcome a launch can count is exported from start-up.
    #[test]
    fn every_launch_outcome_is_known() {
        let errors = [
            LaunchError::NoIdentity,
            LaunchError::BadRequest(String::new()),
            LaunchError::NotPaired,
            LaunchError::RateLimited(Duration::ZERO),
            LaunchError::RelinkNeeded,
            LaunchError::PkbUnavailable(String::new()),
            LaunchError::PkbRefused(String::new()),
            LaunchError::Store(StoreError::Unavailable(String::new())),
        ];
        let mut counted: Vec<&str> = errors.iter().map(LaunchError::outcome).collect();
        counted.insert(0, "redirect");
        assert_eq!(counted, LAUNCH_OUTCOMES);
    }

    #[test]
    fn launch_queries() {
        assert_eq!(
            parse("").unwrap(),
            LaunchParams {
                redirect_uri: None,
                context: None
            }
        );
        let p = parse("contextNationalId=9434765919&contextNationalIdType=NHS&redirect_uri=%2Fx")
            .unwrap();
        assert_eq!(p.redirect_uri.unwrap().as_str(), "/x");
        assert!(matches!(p.context, Some(PatientContext::NationalId { .. })));
        assert!(matches!(
            parse("contextUserEmail=a%40b.example").unwrap().context,
            Some(PatientContext::Email(_))
        ));
        assert!(parse("unrelated=1&_=123").is_ok());
    }

    #[test]
    fn ambiguous_or_invalid_queries_are_refused() {
        for (q, says) in [
            ("redirect_uri=/a&redirect_uri=/b", "more than once"),
            ("contextNationalId=9434765919", "needs `contextNationalIdType`"),
            ("contextNationalIdType=NHS", "needs `contextNationalId`"),
            ("contextNationalId=9434765919&contextNationalIdType=NHS&contextUserEmail=a%40b.example", "never both"),
            ("contextNationalId=9434765918&contextNationalIdType=NHS", "NHS number"),
            ("contextUserEmail=nope", "email"),
            ("redirect_uri=//evil.example", "redirect_uri"),
            ("redirect_uri=/x%3FcontextNationalId%3D1", "must not carry patient context"),
            ("redirect_uri=%2Fx%3FcontextUserEmail%3Da%2540b.example", "must not carry patient context"),
        ] {
            let err = parse(q).unwrap_err();
            assert!(err.contains(says), "{q}: {err}");
        }
    }
}
