//! The reserved routes under the prefix (header mode's; NHS login adds its own in `edge::nhs`):
//! one handler each, from the request to a [`Reply`]. The use cases decide; the handlers read
//! the request, record the step (metric, log line, audit line) and map errors through `reply`.

use http::Method;
use pingora::http::RequestHeader;

use super::proxy::{EdgeProxy, RequestCtx};
use super::reply::{self, Format, Reply};
use crate::core::patient::PatientContext;
use crate::core::same_origin::same_origin;
use crate::launch::LaunchError;
use crate::observe::audit::{Action, Event};
use crate::observe::metrics::metrics;
use crate::pairing::PairingError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Launch,
    Pair,
    Callback,
    Unpair,
    Status,
    DataAvailability,
    Unknown,
}

impl Route {
    /// The reserved route `path` names, or `None` when the path is the upstream's.
    pub fn of(prefix: &str, path: &str) -> Option<Route> {
        let rest = path.strip_prefix(prefix)?;
        if !(rest.is_empty() || rest.starts_with('/')) {
            return None; // `/_pkbfoo` is the upstream's
        }
        Some(match rest {
            "/launch" => Route::Launch,
            "/pair" => Route::Pair,
            "/callback" => Route::Callback,
            "/unpair" => Route::Unpair,
            "/status" => Route::Status,
            "/data-availability" => Route::DataAvailability,
            _ => Route::Unknown,
        })
    }

    /// The one method the route answers.
    fn method(self) -> Method {
        match self {
            Route::Unpair => Method::POST,
            _ => Method::GET,
        }
    }
}

/// The request as the handlers read it.
struct Request<'a> {
    req: &'a RequestHeader,
    ctx: &'a RequestCtx,
    format: Format,
}

impl Request<'_> {
    fn header(&self, name: http::HeaderName) -> Option<&str> {
        self.req.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn query(&self) -> Option<&str> {
        self.req.uri.query()
    }

    fn user(&self) -> Option<&str> {
        self.ctx.user.as_deref()
    }

    fn this_url(&self) -> &str {
        self.req.uri.path_and_query().map_or("", |p| p.as_str())
    }
}

pub fn format_of(req: &RequestHeader) -> Format {
    Format::from_accept(
        req.headers
            .get(http::header::ACCEPT)
            .and_then(|v| v.to_str().ok()),
    )
}

impl EdgeProxy {
    pub async fn serve(&self, route: Route, req: &RequestHeader, ctx: &RequestCtx) -> Reply {
        let r = Request {
            req,
            ctx,
            format: format_of(req),
        };
        if route == Route::Unknown {
            return Reply::not_found(r.format);
        }
        let allowed = route.method();
        if req.method != allowed {
            let allow = if allowed == Method::POST {
                "POST"
            } else {
                "GET"
            };
            return Reply::method_not_allowed(r.format, allow);
        }
        match route {
            Route::Launch => self.launch(&r).await,
            Route::Pair => self.pair(&r).await,
            Route::Callback => self.pairing_callback(&r).await,
            Route::Unpair => self.unpair(&r).await,
            Route::DataAvailability => self.data_availability(&r).await,
            Route::Status => match self.pairing.is_paired(r.user()).await {
                Ok(paired) => Reply::status(paired),
                Err(e) => reply::pairing_error(&e, Format::Json, &self.restart_pairing()),
            },
            Route::Unknown => Reply::not_found(r.format),
        }
    }

    fn restart_pairing(&self) -> String {
        format!("{}/pair", self.prefix)
    }

    /// `GET {prefix}/launch`: into PKB with a one-time password.
    async fn launch(&self, r: &Request<'_>) -> Reply {
        let started = std::time::Instant::now();
        let mut patient = None;
        let result = async {
            let user = r.user().ok_or(LaunchError::NoIdentity)?;
            let params = self.launch.params(r.query())?;
            patient = params.context.clone();
            self.launch.launch(user, &params).await
        }
        .await;
        let m = metrics();
        m.launch_duration_seconds
            .observe(started.elapsed().as_secs_f64());
        let outcome = result.as_ref().map_or_else(|e| e.outcome(), |_| "redirect");
        m.launch_total.with_label_values(&[outcome]).inc();
        let reason = result.as_ref().err().map(ToString::to_string);
        tracing::info!(user = r.user().unwrap_or(""), outcome, reason, "launch");
        self.audit.record(Event {
            request_id: &r.ctx.request_id,
            user: r.user(),
            action: Action::Launch,
            outcome,
            refused: result.is_err(),
            patient: patient.as_ref(),
            reason,
        });
        match result {
            Ok(location) => Reply::redirect(location.into_exposed()),
            Err(e) => reply::launch_error(&e, r.format, &self.prefix, r.this_url()),
        }
    }

    /// `GET {prefix}/pair`: off to PKB's consent page.
    async fn pair(&self, r: &Request<'_>) -> Reply {
        match self.pairing.start(r.user(), r.query()).await {
            Ok(authorize_url) => {
                self.pairing_step(r.ctx, Action::Pair, "started", None);
                Reply::redirect(authorize_url)
            }
            Err(e) => self.pairing_refused(r, Action::Pair, &e),
        }
    }

    /// `GET {prefix}/callback`: PKB's answer; the tokens are stored.
    async fn pairing_callback(&self, r: &Request<'_>) -> Reply {
        match self.pairing.callback(r.user(), r.query()).await {
            Ok(return_to) => {
                self.pairing_step(r.ctx, Action::PairCallback, "paired", None);
                match return_to {
                    Some(path) => Reply::redirect(path.to_string()),
                    None => Reply::linked(r.format, &self.prefix),
                }
            }
            Err(e) => self.pairing_refused(r, Action::PairCallback, &e),
        }
    }

    /// `POST {prefix}/unpair` (same-origin only).
    async fn unpair(&self, r: &Request<'_>) -> Reply {
        let origin = r.header(http::header::ORIGIN);
        let site = r.header(http::HeaderName::from_static("sec-fetch-site"));
        if !same_origin(&self.public_origin, origin, site) {
            let why = "not sent by this site's own pages (Origin / Sec-Fetch-Site)";
            self.pairing_step(r.ctx, Action::Unpair, "cross_site", Some(why.into()));
            return Reply::cross_site(r.format);
        }
        match self.pairing.unpair(r.user()).await {
            Ok(was_paired) => {
                let outcome = if was_paired {
                    "unpaired"
                } else {
                    "was_not_paired"
                };
                self.pairing_step(r.ctx, Action::Unpair, outcome, None);
                Reply::unlinked(r.format, &self.prefix, was_paired)
            }
            Err(e) => self.pairing_refused(r, Action::Unpair, &e),
        }
    }

    /// `GET {prefix}/data-availability`: `{"available": true|false|null}` for the patient
    /// named by PKB's context parameters.
    async fn data_availability(&self, r: &Request<'_>) -> Reply {
        let json_error = |e: LaunchError| reply::launch_error(&e, Format::Json, &self.prefix, "");
        let Some(user) = r.user() else {
            return json_error(LaunchError::NoIdentity);
        };
        let names = self.launch.context_names();
        let (mut id, mut id_type) = (None, None);
        for (k, v) in form_urlencoded::parse(r.query().unwrap_or_default().as_bytes()) {
            if k == names.national_id.as_str() {
                id = Some(v.into_owned());
            } else if k == names.national_id_type.as_str() {
                id_type = Some(v.into_owned());
            }
        }
        let id_type = id_type.unwrap_or_else(|| self.decorator.settings().national_id_type.clone());
        let Some(id) = id else {
            let why = format!("`{}` is required", names.national_id);
            return json_error(LaunchError::BadRequest(why));
        };
        if let Err((_, e)) = PatientContext::national_id(&id, &id_type) {
            return json_error(LaunchError::BadRequest(format!(
                "`{}` {e}",
                names.national_id
            )));
        }
        let wait = self.launch.deadline();
        let available = self.decorator.ask(user, &id, &id_type, wait).await;
        Reply::json(200, serde_json::json!({ "available": available.as_json() }))
    }

    /// A pairing step (or its refusal, when `reason` is given): counted, logged and audited.
    fn pairing_step(
        &self,
        ctx: &RequestCtx,
        action: Action,
        outcome: &str,
        reason: Option<String>,
    ) {
        metrics().pairing_total.with_label_values(&[outcome]).inc();
        let user = ctx.user.as_deref();
        tracing::info!(user, ?action, outcome, reason, "pairing");
        self.audit.record(Event {
            request_id: &ctx.request_id,
            user,
            action,
            outcome,
            refused: reason.is_some(),
            patient: None,
            reason,
        });
    }

    fn pairing_refused(&self, r: &Request<'_>, action: Action, e: &PairingError) -> Reply {
        self.pairing_step(r.ctx, action, e.outcome(), Some(e.to_string()));
        reply::pairing_error(e, r.format, &self.restart_pairing())
    }
}
