//! `[pkb]`: the PKB client, its paths and names.
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use super::{Environment, Validator, ENV_CLIENT_SECRET};
use crate::core::secret::ClientSecret;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    Basic,
    Body,
}

#[derive(Debug, Clone)]
pub struct PkbSettings {
    pub base_url: Url,
    pub client_id: String,
    pub client_secret: ClientSecret,
    pub client_auth: ClientAuth,
    pub scope: String,
    pub timeout: Duration,
    pub refresh_skew_secs: i64,
    /// Refresh ahead: a page view of a user who launched PKB within `refresh_ahead_window_secs`
    /// starts a background refresh when the access token expires within this many seconds.
    /// 0 turns refresh-ahead off.
    pub refresh_ahead_secs: i64,
    pub refresh_ahead_window_secs: i64,
    /// How long a pairing may take from `/pair` to `/callback`.
    pub state_ttl_secs: i64,
    /// The registered pairing callback, `{public_url}{prefix}/callback` unless set.
    pub redirect_uri: String,
    pub authorize_path: String,
    pub token_path: String,
    pub otp_path: String,
    pub otp_field: String,
    pub otp_login_path: String,
    pub otp_param: String,
    pub patient_landing_path: String,
    pub national_id_param: String,
    pub national_id_type_param: String,
    pub email_param: String,
    pub data_from_other_org_path: String,
}

macro_rules! pkb_defaults {
    ($($field:ident = $value:expr),* $(,)?) => {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        pub(super) struct RawPkb {
            base_url: Option<String>,
            client_id: Option<String>,
            client_secret: Option<String>,
            client_secret_file: Option<PathBuf>,
            #[serde(default = "default_client_auth")]
            client_auth: ClientAuth,
            #[serde(default = "default_scope")]
            scope: String,
            #[serde(default = "default_timeout_ms")]
            timeout_ms: u64,
            #[serde(default = "default_refresh_skew")]
            refresh_skew_secs: i64,
            #[serde(default = "default_refresh_ahead")]
            refresh_ahead_secs: i64,
            #[serde(default = "default_refresh_ahead_window")]
            refresh_ahead_window_secs: i64,
            #[serde(default = "default_state_ttl")]
            state_ttl_secs: i64,
            redirect_uri: Option<String>,
            $(#[serde(default)] $field: Option<String>,)*
        }

        /// PKB's documented (or, where PKB publishes none, the simulator's) paths and names.
        /// Named after their config keys, so `pkb_default::otp_path` reads as the key it defaults.
        #[allow(non_upper_case_globals)]
        pub mod pkb_default {
            $(pub const $field: &str = $value;)*
        }

        impl RawPkb {
            fn names(&self) -> Vec<(&'static str, String)> {
                vec![$((stringify!($field), self.$field.clone().unwrap_or_else(|| $value.to_string())),)*]
            }
        }
    };
}

pkb_defaults! {
    authorize_path = "/apiAuthorize.action",
    token_path = "/apiToken.action",
    otp_path = "/json/v1/users/self/otp",
    otp_field = "otp",
    otp_login_path = "/otp.action",
    otp_param = "otpToken",
    patient_landing_path = "/auth/patientSummary.action?tab=patientSummary",
    national_id_param = "contextNationalId",
    national_id_type_param = "contextNationalIdType",
    email_param = "contextUserEmail",
    data_from_other_org_path = "/json/v1/patients/dataFromOtherOrg",
}

fn default_client_auth() -> ClientAuth {
    ClientAuth::Basic
}
fn default_scope() -> String {
    "CLINICIAN".into()
}
fn default_timeout_ms() -> u64 {
    3000
}
fn default_refresh_skew() -> i64 {
    60
}
fn default_refresh_ahead() -> i64 {
    300
}
/// A shift.
fn default_refresh_ahead_window() -> i64 {
    43_200
}
pub(super) fn default_state_ttl() -> i64 {
    600
}

impl Validator {
    /// PKB's paths (each starting with a single `/`) and parameter names.
    fn pkb_names(&mut self, names: &[(&'static str, String)]) {
        for (name, value) in names {
            let key = format!("pkb.{name}");
            let is_path = name.ends_with("_path");
            if is_path && (!value.starts_with('/') || value.starts_with("//")) {
                self.problem(
                    &key,
                    format!("`{value}` must be a path starting with a single /"),
                );
            }
            if !is_path
                && (value.is_empty()
                    || !value
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b)))
            {
                self.problem(
                    &key,
                    format!("`{value}` must be a non-empty name of letters, digits, _ - ."),
                );
            }
        }
    }

    /// The numbers of `[pkb]`, each in its range.
    fn pkb_numbers(&mut self, p: &RawPkb) {
        if !(100..=60_000).contains(&p.timeout_ms) {
            self.problem("pkb.timeout_ms", "must be between 100 and 60000");
        }
        if !(0..=3600).contains(&p.refresh_skew_secs) {
            self.problem("pkb.refresh_skew_secs", "must be between 0 and 3600");
        }
        if !(0..=3600).contains(&p.refresh_ahead_secs) {
            self.problem(
                "pkb.refresh_ahead_secs",
                "must be between 0 (refresh-ahead off) and 3600",
            );
        }
        if !(60..=604_800).contains(&p.refresh_ahead_window_secs) {
            self.problem(
                "pkb.refresh_ahead_window_secs",
                "must be between 60 and 604800 (a week)",
            );
        }
        if !(1..=3600).contains(&p.state_ttl_secs) {
            self.problem("pkb.state_ttl_secs", "must be between 1 and 3600");
        }
    }

    pub(super) fn pkb(
        &mut self,
        p: RawPkb,
        callback: Option<String>,
        env: &dyn Environment,
    ) -> Option<PkbSettings> {
        let names = p.names();
        self.pkb_names(&names);
        self.pkb_numbers(&p);
        let name = |n: &str| {
            names
                .iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let base_url = self
            .required("pkb.base_url", p.base_url)
            .and_then(|s| self.base_url("pkb.base_url", &s));
        let client_id = self.required("pkb.client_id", p.client_id.filter(|c| !c.is_empty()));
        let client_secret = self.secret(
            "pkb.client_secret",
            p.client_secret,
            "pkb.client_secret_file",
            p.client_secret_file.as_deref(),
            ENV_CLIENT_SECRET,
            env,
        );
        if !["PATIENT", "CLINICIAN", "TEAMCOORD"].contains(&p.scope.as_str()) {
            self.problem(
                "pkb.scope",
                format!("`{}` is not one of PATIENT, CLINICIAN, TEAMCOORD", p.scope),
            );
        }
        let redirect_uri = match p.redirect_uri {
            Some(r) => self.base_url("pkb.redirect_uri", &r).map(|u| u.to_string()),
            None => callback,
        };
        Some(PkbSettings {
            base_url: base_url?,
            client_id: client_id?,
            client_secret: ClientSecret::new(client_secret?.expose()),
            client_auth: p.client_auth,
            scope: p.scope,
            timeout: Duration::from_millis(p.timeout_ms),
            refresh_skew_secs: p.refresh_skew_secs,
            refresh_ahead_secs: p.refresh_ahead_secs,
            refresh_ahead_window_secs: p.refresh_ahead_window_secs,
            state_ttl_secs: p.state_ttl_secs,
            redirect_uri: redirect_uri?,
            authorize_path: name("authorize_path"),
            token_path: name("token_path"),
            otp_path: name("otp_path"),
            otp_field: name("otp_field"),
            otp_login_path: name("otp_login_path"),
            otp_param: name("otp_param"),
            patient_landing_path: name("patient_landing_path"),
            national_id_param: name("national_id_param"),
            national_id_type_param: name("national_id_type_param"),
            email_param: name("email_param"),
            data_from_other_org_path: name("data_from_other_org_path"),
        })
    }
}
