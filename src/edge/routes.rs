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
use crate::observe::audit::Caller;
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

    fn caller(&self) -> Caller<'_> {
        Caller {
            request_id: &self.ctx.request_id,
            user: self.user(),
        }
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
        match self.launch.launch_for(r.caller(), r.query()).await {
            Ok(location) => Reply::redirect(location.into_exposed()),
            Err(e) => reply::launch_error(&e, r.format, &self.prefix, r.this_url()),
        }
    }

    /// `GET {prefix}/pair`: off to PKB's consent page.
    async fn pair(&self, r: &Request<'_>) -> Reply {
        match self.pairing.start(r.caller(), r.query()).await {
            Ok(authorize_url) => Reply::redirect(authorize_url),
            Err(e) => self.pairing_refused(r, &e),
        }
    }

    /// `GET {prefix}/callback`: PKB's answer; the tokens are stored.
    async fn pairing_callback(&self, r: &Request<'_>) -> Reply {
        match self.pairing.callback(r.caller(), r.query()).await {
            Ok(Some(path)) => Reply::redirect(path.to_string()),
            Ok(None) => Reply::linked(r.format, &self.prefix),
            Err(e) => self.pairing_refused(r, &e),
        }
    }

    /// `POST {prefix}/unpair` (same-origin only).
    async fn unpair(&self, r: &Request<'_>) -> Reply {
        let origin = r.header(http::header::ORIGIN);
        let site = r.header(http::HeaderName::from_static("sec-fetch-site"));
        let same_origin = same_origin(&self.public_origin, origin, site);
        match self.pairing.unpair(r.caller(), same_origin).await {
            Ok(was_paired) => Reply::unlinked(r.format, &self.prefix, was_paired),
            Err(e) => self.pairing_refused(r, &e),
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

    fn pairing_refused(&self, r: &Request<'_>, e: &PairingError) -> Reply {
        reply::pairing_error(e, r.format, &self.restart_pairing())
    }
}
