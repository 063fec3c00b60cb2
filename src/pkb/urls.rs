//! Builders for the URLs a browser is sent to in PKB. Pure functions: all the encoding decisions
//! live here and are tested with tables.
//!
//! The landing path travels inside `redirect_uri`, so it is encoded twice over: context values are
//! encoded as query values inside the landing path (an `@` may stay, as in PKB's documented
//! example), then the whole landing path is encoded as one query value.

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::core::patient::PatientContext;
use crate::core::secret::{Otp, OtpLoginUrl};

/// Everything but RFC 3986 unreserved characters: for a whole value placed in a query.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// For a value inside the landing path's own query: the characters that would end or split it.
const INNER_VALUE: &AsciiSet = &percent_encoding::CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'&')
    .add(b'+')
    .add(b'<')
    .add(b'=')
    .add(b'>')
    .add(b'?')
    .add(b'[')
    .add(b'\\')
    .add(b']')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

/// PKB's parameter names for patient context.
#[derive(Debug, Clone)]
pub struct ContextParams {
    pub national_id: String,
    pub national_id_type: String,
    pub email: String,
}

impl Default for ContextParams {
    /// PKB's documented names (`pkb.national_id_param` and the others, unset).
    fn default() -> Self {
        use crate::config::pkb_default;
        ContextParams {
            national_id: pkb_default::national_id_param.into(),
            national_id_type: pkb_default::national_id_type_param.into(),
            email: pkb_default::email_param.into(),
        }
    }
}

/// The landing path with the patient context added to its query, before any fragment.
pub fn landing_with_context(path: &str, context: &PatientContext, names: &ContextParams) -> String {
    let (before_fragment, fragment) = match path.split_once('#') {
        Some((p, f)) => (p, Some(f)),
        None => (path, None),
    };
    let mut out = String::with_capacity(path.len() + 64);
    out.push_str(before_fragment);
    let mut add = |name: &str, value: &str| {
        out.push(if out.contains('?') { '&' } else { '?' });
        out.push_str(name);
        out.push('=');
        out.extend(utf8_percent_encode(value, INNER_VALUE));
    };
    match context {
        PatientContext::NationalId { id, id_type } => {
            add(&names.national_id, id);
            add(&names.national_id_type, id_type);
        }
        PatientContext::Email(email) => add(&names.email, email),
    }
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    out
}

/// `{base}{otp_login_path}?{otp_param}=OTP[&redirect_uri=LANDING]`.
pub fn otp_login_url(
    base: &str,
    otp_login_path: &str,
    otp_param: &str,
    otp: &Otp,
    landing: Option<&str>,
) -> OtpLoginUrl {
    let base = base.trim_end_matches('/');
    let mut url = String::with_capacity(base.len() + otp_login_path.len() + 160);
    url.push_str(base);
    url.push_str(otp_login_path);
    url.push(if otp_login_path.contains('?') {
        '&'
    } else {
        '?'
    });
    url.push_str(otp_param);
    url.push('=');
    url.extend(utf8_percent_encode(otp.expose(), COMPONENT));
    if let Some(landing) = landing {
        url.push_str("&redirect_uri=");
        url.extend(utf8_percent_encode(landing, COMPONENT));
    }
    OtpLoginUrl::new(url)
}

/// PKB's authorize endpoint, for the browser: code flow with PKCE S256.
pub struct AuthorizeRequest<'a> {
    pub base: &'a str,
    pub authorize_path: &'a str,
    pub client_id: &'a str,
    pub redirect_uri: &'a str,
    pub scope: &'a str,
    pub state: &'a str,
    pub code_challenge: &'a str,
}

pub fn authorize_url(r: &AuthorizeRequest<'_>) -> String {
    let query: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("response_type", "code")
        .append_pair("client_id", r.client_id)
        .append_pair("redirect_uri", r.redirect_uri)
        .append_pair("scope", r.scope)
        .append_pair("state", r.state)
        .append_pair("code_challenge", r.code_challenge)
        .append_pair("code_challenge_method", "S256")
        .finish();
    let sep = if r.authorize_path.contains('?') {
        '&'
    } else {
        '?'
    };
    format!(
        "{}{}{sep}{query}",
        r.base.trim_end_matches('/'),
        r.authorize_path
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> ContextParams {
        ContextParams::default()
    }

    #[test]
    fn matches_pkbs_documented_example() {
        let landing = landing_with_context(
            "/auth/patientSummary.action?tab=patientSummary",
            &PatientContext::Email("patient@example.com".into()),
            &names(),
        );
        let url = otp_login_url(
            "https://sandbox.patientsknowbest.com/",
            "/otp.action",
            "otpToken",
            &Otp::new("abc"),
            Some(&landing),
        );
        assert_eq!(
            url.expose(),
            "https://sandbox.patientsknowbest.com/otp.action?otpToken=abc&redirect_uri=\
             %2Fauth%2FpatientSummary.action%3Ftab%3DpatientSummary%26contextUserEmail%3Dpatient%40example.com"
        );
    }

    #[test]
    fn landing_table() {
        let nhs = PatientContext::NationalId {
            id: "9434765919".into(),
            id_type: "NHS".into(),
        };
        let cases = [
            (
                "/summary",
                &nhs,
                "/summary?contextNationalId=9434765919&contextNationalIdType=NHS",
            ),
            (
                "/s?tab=x",
                &nhs,
                "/s?tab=x&contextNationalId=9434765919&contextNationalIdType=NHS",
            ),
            (
                "/s?tab=x#top",
                &nhs,
                "/s?tab=x&contextNationalId=9434765919&contextNationalIdType=NHS#top",
            ),
        ];
        for (path, ctx, want) in cases {
            assert_eq!(landing_with_context(path, ctx, &names()), want);
        }
        let plus = PatientContext::Email("a+b&c=d@example.com".into());
        assert_eq!(
            landing_with_context("/s", &plus, &names()),
            "/s?contextUserEmail=a%2Bb%26c%3Dd@example.com"
        );
    }

    #[test]
    fn no_landing_means_no_redirect_uri_and_otp_is_encoded() {
        let url = otp_login_url(
            "http://127.0.0.1:9",
            "/otp.action",
            "otpToken",
            &Otp::new("a/b+c"),
            None,
        );
        assert_eq!(
            url.expose(),
            "http://127.0.0.1:9/otp.action?otpToken=a%2Fb%2Bc"
        );
    }

    #[test]
    fn authorize_url_carries_every_parameter() {
        let url = authorize_url(&AuthorizeRequest {
            base: "https://sandbox.patientsknowbest.com/",
            authorize_path: "/apiAuthorize.action",
            client_id: "pkb-edge",
            redirect_uri: "https://ehr.example.nhs.uk/_pkb/callback",
            scope: "CLINICIAN",
            state: "st",
            code_challenge: "ch",
        });
        assert_eq!(
            url,
            "https://sandbox.patientsknowbest.com/apiAuthorize.action?response_type=code&client_id=pkb-edge\
             &redirect_uri=https%3A%2F%2Fehr.example.nhs.uk%2F_pkb%2Fcallback&scope=CLINICIAN&state=st\
             &code_challenge=ch&code_challenge_method=S256"
        );
    }

    #[test]
    fn redirect_uri_round_trips() {
        let nhs = PatientContext::NationalId {
            id: "9434765919".into(),
            id_type: "NHS".into(),
        };
        let landing = landing_with_context("/a?b=c%20d", &nhs, &names());
        let url = url::Url::parse(
            &otp_login_url(
                "https://pkb.example",
                "/otp.action",
                "otpToken",
                &Otp::new("x"),
                Some(&landing),
            )
            .into_exposed(),
        )
        .unwrap();
        let got = url
            .query_pairs()
            .find(|(k, _)| k == "redirect_uri")
            .unwrap()
            .1
            .into_owned();
        assert_eq!(got, landing);
    }
}
