//! GP integration credentials (`gp_integration_credentials` in userinfo) for IM1 services: which
//! ones can be used, per NHS login's rules. Only P9 users get them; NHS login returns dummies for
//! some practices (Microtest), which are `unusable`; anything absent or malformed is `missing`.

use serde::{Deserialize, Serialize};

use crate::config::{ods_code_is_well_formed, GpCredentialSettings};

/// What the upstream is told (`X-GP-Credentials-Status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GpStatus {
    Valid,
    Unusable,
    Missing,
    /// Refreshing them failed too often; the user was told.
    Unavailable,
}

impl GpStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            GpStatus::Valid => "valid",
            GpStatus::Unusable => "unusable",
            GpStatus::Missing => "missing",
            GpStatus::Unavailable => "unavailable",
        }
    }
}

/// The credentials themselves. `Debug` shows the practice only.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpCredentials {
    /// NHS login's `gp_user_id` ("Account ID").
    pub user_id: String,
    pub linkage_key: String,
    pub ods_code: String,
    pub system_id: Option<String>,
}

impl std::fmt::Debug for GpCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpCredentials")
            .field("ods_code", &self.ods_code)
            .finish_non_exhaustive()
    }
}

/// The verdict on one userinfo answer: the status, the credentials when `valid`, and why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub status: GpStatus,
    pub credentials: Option<GpCredentials>,
    pub reason: Option<&'static str>,
}

pub fn evaluate(
    claim: Option<&serde_json::Value>,
    proofing_level: Option<&str>,
    settings: &GpCredentialSettings,
) -> Verdict {
    let missing = |reason| Verdict {
        status: GpStatus::Missing,
        credentials: None,
        reason: Some(reason),
    };
    if proofing_level != Some("P9") {
        return missing("only P9 users have GP credentials");
    }
    let Some(claim) = claim.filter(|c| !c.is_null()) else {
        return missing("not in userinfo");
    };
    let text = |name: &str| {
        claim
            .get(name)
            .and_then(|v| v.as_str())
            .map(str::trim)
            .filter(|v| !v.is_empty() && v.len() <= 256)
            .map(str::to_string)
    };
    let (Some(user_id), Some(linkage_key), Some(ods_code)) = (
        text("gp_user_id"),
        text("gp_linkage_key"),
        text("gp_ods_code"),
    ) else {
        return missing("incomplete");
    };
    let ods_code = ods_code.to_ascii_uppercase();
    if !ods_code_is_well_formed(&ods_code) {
        return missing("malformed ODS code");
    }
    let system_id = text("gp_system_id");
    let dummy_practice = settings.unusable_ods_codes.contains(&ods_code);
    let dummy_system = system_id.as_deref().is_some_and(|s| {
        settings
            .unusable_gp_systems
            .contains(&s.to_ascii_uppercase())
    });
    if dummy_practice || dummy_system {
        return Verdict {
            status: GpStatus::Unusable,
            credentials: None,
            reason: Some(if dummy_practice {
                "practice listed in unusable_ods_codes"
            } else {
                "GP system listed in unusable_gp_systems"
            }),
        };
    }
    Verdict {
        status: GpStatus::Valid,
        credentials: Some(GpCredentials {
            user_id,
            linkage_key,
            ods_code,
            system_id,
        }),
        reason: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn settings() -> GpCredentialSettings {
        GpCredentialSettings {
            paths: vec!["/im1/register".into()],
            unusable_ods_codes: vec!["Z99999".into()],
            unusable_gp_systems: vec!["MICROTEST".into()],
            max_refreshes: 2,
            window_secs: 3600,
        }
    }

    #[test]
    fn statuses_follow_nhs_logins_rules() {
        let s = settings();
        let full = json!({"gp_user_id": "u1", "gp_linkage_key": "lk1", "gp_ods_code": "a12345"});
        let v = evaluate(Some(&full), Some("P9"), &s);
        assert_eq!(v.status, GpStatus::Valid);
        assert_eq!(v.credentials.unwrap().ods_code, "A12345");
        assert_eq!(
            evaluate(Some(&full), Some("P5"), &s).status,
            GpStatus::Missing
        );
        assert_eq!(evaluate(None, Some("P9"), &s).status, GpStatus::Missing);
        for partial in [
            json!({"gp_user_id": "u1", "gp_ods_code": "A12345"}),
            json!({"gp_user_id": "", "gp_linkage_key": "lk1", "gp_ods_code": "A12345"}),
            json!({"gp_user_id": "u1", "gp_linkage_key": "lk1", "gp_ods_code": "12345"}),
            json!({"gp_user_id": 7, "gp_linkage_key": "lk1", "gp_ods_code": "A12345"}),
        ] {
            assert_eq!(
                evaluate(Some(&partial), Some("P9"), &s).status,
                GpStatus::Missing,
                "{partial}"
            );
        }
        let dummy = json!({"gp_user_id": "u", "gp_linkage_key": "k", "gp_ods_code": "Z99999"});
        assert_eq!(
            evaluate(Some(&dummy), Some("P9"), &s).status,
            GpStatus::Unusable
        );
        let microtest = json!({"gp_user_id": "u", "gp_linkage_key": "k", "gp_ods_code": "B12345", "gp_system_id": "Microtest"});
        let v = evaluate(Some(&microtest), Some("P9"), &s);
        assert_eq!((v.status, v.credentials), (GpStatus::Unusable, None));
    }

    #[test]
    fn applies_to_exact_paths_and_prefixes() {
        let mut s = settings();
        s.paths.push("/im1/api/*".into());
        assert!(s.applies_to("/im1/register"));
        assert!(!s.applies_to("/im1/register/x"));
        assert!(s.applies_to("/im1/api/token"));
        assert!(!s.applies_to("/"));
        for tricky in [
            "/im1/api/..%2fother",
            "/im1/api/../x",
            "/im1/api//x",
            "/im1/api/%2E%2E/x",
        ] {
            assert!(!s.applies_to(tricky), "{tricky}");
        }
    }
}
