//! `[identity]` with `mode = "jwt"`: the keys of a signed assertion from the identity-aware proxy
//! in front, and the presets that fill them for Pomerium, Cloudflare Access, AWS ALB and OIDC.
use std::path::PathBuf;
use std::time::Duration;

use http::HeaderName;
use ipnet::IpNet;
use jsonwebtoken::Algorithm;
use url::Url;

use super::identity::RawIdentity;
use super::Validator;
use crate::core::public_keys::{KeySet, KeyType};

/// Which product signs the assertion; fills the defaults of the other keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtPreset {
    Pomerium,
    CloudflareAccess,
    AwsAlb,
    Oidc,
}

/// Where the verification keys come from.
#[derive(Debug, Clone)]
pub enum JwtKeySource {
    /// A JWKS document, fetched and refetched.
    JwksUrl(Url),
    /// One PEM per `kid`: the template with `{kid}` replaced (AWS ALB).
    KeyUrlTemplate(String),
    /// PEM public keys (or a JWKS) read once at start-up.
    File { path: PathBuf, keys: KeySet },
}

#[derive(Debug, Clone)]
pub struct JwtSettings {
    pub preset: Option<JwtPreset>,
    /// The header carrying the token; `authorization` means `Bearer <jwt>`.
    pub header: HeaderName,
    pub keys: JwtKeySource,
    pub issuer: String,
    /// `aud` must contain one of these (empty: not checked, only with `signer`).
    pub audience: Vec<String>,
    /// AWS ALB: the `signer` claim must equal this ARN.
    pub signer: Option<String>,
    pub algorithms: Vec<Algorithm>,
    /// The user id's claim, as a path (`email`, or `user.email` for a nested one).
    pub user_claim: Vec<String>,
    pub clock_skew_secs: i64,
    /// Where the upstream gets the verified user id.
    pub forward_header: HeaderName,
    /// When set, the TCP peer must be one of these as well.
    pub trusted_peers: Vec<IpNet>,
    pub jwks_refresh: Duration,
    /// AWS ALB pads its base64 segments with `=`; only then is padding accepted.
    pub padded_segments: bool,
}

impl JwtSettings {
    /// Whether the token is `Authorization: Bearer <jwt>`.
    pub fn bearer(&self) -> bool {
        self.header == http::header::AUTHORIZATION
    }
}

struct Preset {
    header: &'static str,
    algorithms: &'static [Algorithm],
    user_claim: &'static str,
}

impl JwtPreset {
    fn parse(s: &str) -> Option<JwtPreset> {
        Some(match s {
            "pomerium" => JwtPreset::Pomerium,
            "cloudflare_access" => JwtPreset::CloudflareAccess,
            "aws_alb" => JwtPreset::AwsAlb,
            "oidc" => JwtPreset::Oidc,
            _ => return None,
        })
    }

    fn defaults(self) -> Preset {
        use Algorithm::*;
        match self {
            JwtPreset::Pomerium => Preset {
                header: "X-Pomerium-Jwt-Assertion",
                algorithms: &[ES256],
                user_claim: "email",
            },
            JwtPreset::CloudflareAccess => Preset {
                header: "Cf-Access-Jwt-Assertion",
                algorithms: &[RS256],
                user_claim: "email",
            },
            JwtPreset::AwsAlb => Preset {
                header: "x-amzn-oidc-data",
                algorithms: &[ES256],
                user_claim: "email",
            },
            JwtPreset::Oidc => Preset {
                header: "Authorization",
                algorithms: &[RS256, ES256],
                user_claim: "sub",
            },
        }
    }
}

/// The keys only jwt mode reads, for the "used only with jwt" check.
pub(super) fn jwt_only_keys(i: &RawIdentity) -> Vec<&'static str> {
    let set = [
        ("preset", i.preset.is_some()),
        ("jwks_url", i.jwks_url.is_some()),
        ("key_url_template", i.key_url_template.is_some()),
        ("public_keys_file", i.public_keys_file.is_some()),
        ("issuer", i.issuer.is_some()),
        ("audience", i.audience.is_some()),
        ("signer", i.signer.is_some()),
        ("algorithms", i.algorithms.is_some()),
        ("user_claim", i.user_claim.is_some()),
        ("clock_skew_secs", i.clock_skew_secs.is_some()),
        ("forward_header", i.forward_header.is_some()),
        ("jwks_refresh_secs", i.jwks_refresh_secs.is_some()),
    ];
    set.into_iter()
        .filter(|(_, s)| *s)
        .map(|(k, _)| k)
        .collect()
}

/// A URL keys may be fetched from: https, or http to a loopback address (tests, a sidecar).
fn key_url_problem(u: &Url) -> Option<&'static str> {
    let loopback = match u.host() {
        Some(url::Host::Ipv4(a)) => a.is_loopback(),
        Some(url::Host::Ipv6(a)) => a.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => return Some("has no host"),
    };
    match u.scheme() {
        "https" => None,
        "http" if loopback => None,
        "http" => Some("must be https (plain http only to a loopback address): keys fetched in the clear could be swapped"),
        _ => Some("must be an https URL"),
    }
}

/// The AWS region in a load balancer's ARN (`arn:aws:elasticloadbalancing:REGION:…`).
fn alb_region(signer: &str) -> Option<&str> {
    let mut parts = signer.split(':');
    let (arn, _, service, region) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let ok = arn == "arn"
        && service == "elasticloadbalancing"
        && !region.is_empty()
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    ok.then_some(region)
}

impl Validator {
    fn header_name(&mut self, key: &str, value: &str) -> Option<HeaderName> {
        match HeaderName::try_from(value) {
            Ok(h) => Some(h),
            Err(_) => {
                self.problem(key, format!("`{value}` is not a valid header name"));
                None
            }
        }
    }

    pub(super) fn jwt(&mut self, i: RawIdentity, trusted_peers: Vec<IpNet>) -> Option<JwtSettings> {
        let preset = match i.preset.as_deref() {
            None => Some(None),
            Some(p) => match JwtPreset::parse(p) {
                Some(p) => Some(Some(p)),
                None => {
                    self.problem(
                        "identity.preset",
                        format!("`{p}` is not one of pomerium, cloudflare_access, aws_alb, oidc"),
                    );
                    None
                }
            },
        }?;
        let defaults = preset.map(JwtPreset::defaults);
        let (header, forward_header) = self.jwt_headers(&i, defaults.as_ref());
        let algorithms = self.jwt_algorithms(i.algorithms.as_deref(), defaults.as_ref());
        let issuer = match i.issuer.as_deref().map(str::trim) {
            Some(s) if !s.is_empty() => Some(s.to_string()),
            _ => {
                self.problem(
                    "identity.issuer",
                    "is required in jwt mode: the `iss` tokens must carry",
                );
                None
            }
        };
        let signer = i.signer.clone().filter(|s| !s.is_empty());
        let audience = self.jwt_audience(preset, i.audience.clone(), signer.as_deref());
        let keys = self.jwt_keys(&i, preset, issuer.as_deref(), signer.as_deref());
        let path = self.jwt_user_claim(i.user_claim.as_deref(), defaults.as_ref());
        let skew = i.clock_skew_secs.unwrap_or(30);
        if !(0..=300).contains(&skew) {
            self.problem("identity.clock_skew_secs", "must be between 0 and 300");
        }
        let refresh = i.jwks_refresh_secs.unwrap_or(300);
        if !(10..=86_400).contains(&refresh) {
            self.problem("identity.jwks_refresh_secs", "must be between 10 and 86400");
        }
        Some(JwtSettings {
            preset,
            header: header?,
            keys: keys?,
            issuer: issuer?,
            audience: audience?,
            signer,
            algorithms: algorithms?,
            user_claim: path,
            clock_skew_secs: skew,
            forward_header: forward_header?,
            trusted_peers,
            jwks_refresh: Duration::from_secs(refresh),
            padded_segments: preset == Some(JwtPreset::AwsAlb),
        })
    }

    /// The header the token comes in, and the one the user goes upstream in.
    fn jwt_headers(
        &mut self,
        i: &RawIdentity,
        defaults: Option<&Preset>,
    ) -> (Option<HeaderName>, Option<HeaderName>) {
        let header = match (i.header.as_deref(), defaults) {
            (Some(h), _) => self.header_name("identity.header", h),
            (None, Some(d)) => self.header_name("identity.header", d.header),
            (None, None) => {
                self.problem("identity.header", "jwt mode without a preset needs the header that carries the token (\"Authorization\" for a Bearer token)");
                None
            }
        };
        let forward = i
            .forward_header
            .as_deref()
            .unwrap_or("X-Authenticated-User");
        let forward_header = self.header_name("identity.forward_header", forward);
        if let (Some(h), Some(f)) = (&header, &forward_header) {
            if h == f {
                self.problem(
                    "identity.forward_header",
                    "must differ from identity.header: the assertion is passed upstream unchanged",
                );
            }
        }
        (header, forward_header)
    }

    /// `user_claim` as a path of claim names.
    fn jwt_user_claim(&mut self, written: Option<&str>, defaults: Option<&Preset>) -> Vec<String> {
        let user_claim = written
            .map(str::to_string)
            .or_else(|| defaults.map(|d| d.user_claim.to_string()))
            .unwrap_or_else(|| "sub".into());
        let path: Vec<String> = user_claim.split('.').map(str::to_string).collect();
        if path.iter().any(String::is_empty) {
            self.problem(
                "identity.user_claim",
                format!(
                    "`{user_claim}` is not a claim name or a dotted path (e.g. `email`, `user.id`)"
                ),
            );
        }
        path
    }

    fn jwt_algorithms(
        &mut self,
        written: Option<&[String]>,
        defaults: Option<&Preset>,
    ) -> Option<Vec<Algorithm>> {
        let Some(written) = written else {
            return match defaults {
                Some(d) => Some(d.algorithms.to_vec()),
                None => {
                    self.problem(
                        "identity.algorithms",
                        "jwt mode without a preset needs the allowed algorithms (e.g. [\"ES256\"])",
                    );
                    None
                }
            };
        };
        if written.is_empty() {
            self.problem("identity.algorithms", "must name at least one algorithm");
        }
        let mut algorithms = Vec::new();
        for (n, a) in written.iter().enumerate() {
            let key = format!("identity.algorithms[{n}]");
            match a.parse::<Algorithm>() {
                Ok(alg) if KeyType::for_algorithm(alg).is_some() => algorithms.push(alg),
                Ok(_) => self.problem(&key, format!("`{a}` is refused: an HMAC key is a shared secret, and a public key must never be taken for one")),
                Err(_) if a.eq_ignore_ascii_case("none") => self.problem(&key, "`none` is refused: an unsigned token proves nothing"),
                Err(_) => self.problem(&key, format!("`{a}` is not one of RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA")),
            }
        }
        (algorithms.len() == written.len() && !written.is_empty()).then_some(algorithms)
    }

    fn jwt_audience(
        &mut self,
        preset: Option<JwtPreset>,
        audience: Option<Vec<String>>,
        signer: Option<&str>,
    ) -> Option<Vec<String>> {
        let audience = audience.unwrap_or_default();
        if audience.iter().any(|a| a.trim().is_empty()) {
            self.problem("identity.audience", "holds an empty entry");
            return None;
        }
        if preset == Some(JwtPreset::AwsAlb) {
            if signer.is_none() {
                self.problem("identity.signer", "aws_alb needs the load balancer's ARN: its tokens carry no `aud`, and the `signer` claim must equal it");
                return None;
            }
            if !audience.is_empty() {
                self.problem(
                    "identity.audience",
                    "AWS ALB tokens carry no `aud`; leave audience out and set identity.signer",
                );
                return None;
            }
        } else if audience.is_empty() && signer.is_none() {
            self.problem("identity.audience", "is required in jwt mode: the `aud` values meant for this application (Cloudflare Access: the AUD tag; OIDC: the client_id)");
            return None;
        }
        Some(audience)
    }

    fn jwt_keys(
        &mut self,
        i: &RawIdentity,
        preset: Option<JwtPreset>,
        issuer: Option<&str>,
        signer: Option<&str>,
    ) -> Option<JwtKeySource> {
        let given = [
            i.jwks_url.is_some(),
            i.key_url_template.is_some(),
            i.public_keys_file.is_some(),
        ];
        if given.iter().filter(|g| **g).count() > 1 {
            self.problem(
                "identity.jwks_url",
                "give one of jwks_url, key_url_template or public_keys_file",
            );
            return None;
        }
        if let Some(u) = &i.jwks_url {
            return self
                .key_url("identity.jwks_url", u)
                .map(JwtKeySource::JwksUrl);
        }
        if let Some(t) = &i.key_url_template {
            return self.key_url_template(t);
        }
        if let Some(path) = &i.public_keys_file {
            return self.public_keys_file(path);
        }
        match (preset, issuer, signer.and_then(alb_region)) {
            (Some(JwtPreset::CloudflareAccess), Some(iss), _) if iss.starts_with("https://") => {
                let url = format!("{}/cdn-cgi/access/certs", iss.trim_end_matches('/'));
                self.key_url("identity.issuer", &url)
                    .map(JwtKeySource::JwksUrl)
            }
            (Some(JwtPreset::AwsAlb), _, Some(region)) => Some(JwtKeySource::KeyUrlTemplate(
                format!("https://public-keys.auth.elb.{region}.amazonaws.com/{{kid}}"),
            )),
            (Some(JwtPreset::AwsAlb), _, None) => {
                self.problem("identity.key_url_template", "give it, or an identity.signer ARN naming the region (arn:aws:elasticloadbalancing:REGION:…)");
                None
            }
            _ => {
                self.problem(
                    "identity.jwks_url",
                    "jwt mode needs a key source: jwks_url, key_url_template or public_keys_file",
                );
                None
            }
        }
    }

    fn key_url(&mut self, key: &str, s: &str) -> Option<Url> {
        let url = match Url::parse(s) {
            Ok(u) => u,
            Err(e) => {
                self.problem(key, format!("`{s}` is not a URL ({e})"));
                return None;
            }
        };
        if let Some(why) = key_url_problem(&url) {
            self.problem(key, format!("`{s}` {why}"));
            return None;
        }
        Some(url)
    }

    fn key_url_template(&mut self, t: &str) -> Option<JwtKeySource> {
        let key = "identity.key_url_template";
        if t.matches("{kid}").count() != 1 {
            self.problem(key, "must hold `{kid}` once, where the key id goes");
            return None;
        }
        let url = self.key_url(key, &t.replace("{kid}", "kid"))?;
        if url.query().is_some() || url.fragment().is_some() || !url.path().contains("kid") {
            self.problem(key, "`{kid}` must be in the URL's path");
            return None;
        }
        Some(JwtKeySource::KeyUrlTemplate(t.to_string()))
    }

    fn public_keys_file(&mut self, path: &str) -> Option<JwtKeySource> {
        let key = "identity.public_keys_file";
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) => {
                self.problem(key, format!("cannot read {path}: {e}"));
                return None;
            }
        };
        match KeySet::from_document(&bytes) {
            Ok(keys) => Some(JwtKeySource::File {
                path: PathBuf::from(path),
                keys,
            }),
            Err(e) => {
                self.problem(key, format!("{path} {e}"));
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, ConfigError, IdentitySettings};
    use std::collections::BTreeMap;

    fn parse(identity: &str) -> Result<Config, ConfigError> {
        let text = format!(
            r#"
listen = "127.0.0.1:8080"
upstream = "http://127.0.0.1:3000"
public_url = "https://ehr.example.nhs.uk"
[identity]
{identity}
[pkb]
base_url = "https://sandbox.patientsknowbest.com"
client_id = "pkb-edge"
client_secret = "s3cret"
[store]
url = "sqlite:///tmp/x.db"
keys = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
"#
        );
        Config::parse(&text, &BTreeMap::<String, String>::new())
    }

    fn jwt(identity: &str) -> JwtSettings {
        match parse(identity).unwrap_or_else(|e| panic!("{e}")).identity {
            IdentitySettings::Jwt(j) => *j,
            other => panic!("{other:?}"),
        }
    }

    /// The keys the problems name, each with its message.
    fn problems(identity: &str) -> Vec<(String, String)> {
        parse(identity)
            .unwrap_err()
            .problems
            .into_iter()
            .map(|p| (p.key, p.message))
            .collect()
    }

    fn names(identity: &str, key: &str, says: &str) {
        let found = problems(identity);
        assert!(
            found.iter().any(|(k, m)| k == key && m.contains(says)),
            "{identity}\nwanted {key}: …{says}…, got {found:?}"
        );
    }

    #[test]
    fn presets_fill_the_defaults_and_every_key_can_be_set() {
        let p = jwt("mode = \"jwt\"\npreset = \"pomerium\"\njwks_url = \"https://auth.example/.well-known/pomerium/jwks.json\"\nissuer = \"auth.example\"\naudience = [\"ehr.example\"]");
        assert_eq!(p.header, "x-pomerium-jwt-assertion");
        assert_eq!(p.algorithms, [Algorithm::ES256]);
        assert_eq!(p.user_claim, ["email"]);
        assert_eq!(p.forward_header, "x-authenticated-user");
        assert_eq!((p.clock_skew_secs, p.jwks_refresh.as_secs()), (30, 300));
        assert!(!p.padded_segments && !p.bearer());

        let cf = jwt("mode = \"jwt\"\npreset = \"cloudflare_access\"\nissuer = \"https://trust.cloudflareaccess.com\"\naudience = [\"aud-tag\"]\nuser_claim = \"custom.upn\"\nheader = \"X-Other\"");
        assert_eq!(cf.header, "x-other");
        assert_eq!(cf.algorithms, [Algorithm::RS256]);
        assert_eq!(cf.user_claim, ["custom", "upn"]);
        assert!(
            matches!(&cf.keys, JwtKeySource::JwksUrl(u) if u.as_str() == "https://trust.cloudflareaccess.com/cdn-cgi/access/certs")
        );

        let alb = jwt("mode = \"jwt\"\npreset = \"aws_alb\"\nissuer = \"https://idp.example\"\nsigner = \"arn:aws:elasticloadbalancing:eu-west-2:123456789012:loadbalancer/app/ehr/1\"");
        assert_eq!(alb.header, "x-amzn-oidc-data");
        assert!(alb.padded_segments && alb.audience.is_empty());
        assert!(
            matches!(&alb.keys, JwtKeySource::KeyUrlTemplate(t) if t == "https://public-keys.auth.elb.eu-west-2.amazonaws.com/{kid}")
        );

        let oidc = jwt("mode = \"jwt\"\npreset = \"oidc\"\nissuer = \"https://idp.example\"\naudience = [\"client\"]\njwks_url = \"https://idp.example/jwks\"\nalgorithms = [\"PS256\"]\nclock_skew_secs = 5\ntrusted_peers = [\"10.0.0.0/8\"]");
        assert!(oidc.bearer());
        assert_eq!(oidc.algorithms, [Algorithm::PS256]);
        assert_eq!(
            (oidc.user_claim[0].as_str(), oidc.clock_skew_secs),
            ("sub", 5)
        );
        assert_eq!(oidc.trusted_peers.len(), 1);
    }

    #[test]
    fn each_problem_names_its_key() {
        let base = "mode = \"jwt\"\npreset = \"pomerium\"\njwks_url = \"https://a.example/jwks\"\naudience = [\"x\"]\n";
        names(base, "identity.issuer", "required");
        let with = |more: &str| format!("{base}issuer = \"a.example\"\n{more}");
        names(
            &with("algorithms = [\"HS256\"]"),
            "identity.algorithms[0]",
            "HMAC",
        );
        names(
            &with("algorithms = [\"ES256\", \"none\"]"),
            "identity.algorithms[1]",
            "unsigned",
        );
        names(
            &with("algorithms = [\"XX1\"]"),
            "identity.algorithms[0]",
            "not one of",
        );
        names(
            &with("forward_header = \"X-Pomerium-Jwt-Assertion\""),
            "identity.forward_header",
            "differ",
        );
        names(
            &with("clock_skew_secs = 3600"),
            "identity.clock_skew_secs",
            "between",
        );
        names(
            &with("jwks_refresh_secs = 1"),
            "identity.jwks_refresh_secs",
            "between",
        );
        names(
            &with("user_claim = \"a..b\""),
            "identity.user_claim",
            "dotted path",
        );
        names(
            &with("key_url_template = \"https://k.example/{kid}\""),
            "identity.jwks_url",
            "one of",
        );
        names(
            &base.replace("preset = \"pomerium\"", "preset = \"okta\""),
            "identity.preset",
            "not one of",
        );
        names(
            &with("").replace("https://a.example", "http://a.example"),
            "identity.jwks_url",
            "https",
        );
        names(
            "mode = \"jwt\"\npreset = \"pomerium\"\nissuer = \"a\"\naudience = [\"x\"]",
            "identity.jwks_url",
            "key source",
        );
        names("mode = \"jwt\"\nissuer = \"a\"\naudience = [\"x\"]\njwks_url = \"https://a.example/j\"", "identity.header", "preset");
        names("mode = \"jwt\"\nheader = \"Authorization\"\nissuer = \"a\"\naudience = [\"x\"]\njwks_url = \"https://a.example/j\"", "identity.algorithms", "preset");
        names(
            "mode = \"jwt\"\npreset = \"oidc\"\nissuer = \"a\"\njwks_url = \"https://a.example/j\"",
            "identity.audience",
            "required",
        );
        let alb = "mode = \"jwt\"\npreset = \"aws_alb\"\nissuer = \"a\"\n";
        names(alb, "identity.signer", "ARN");
        names(
            &format!(
                "{alb}signer = \"arn:aws:elasticloadbalancing:eu-west-2:1:lb\"\naudience = [\"x\"]"
            ),
            "identity.audience",
            "no `aud`",
        );
        names(
            &format!("{alb}signer = \"not-an-arn\""),
            "identity.key_url_template",
            "region",
        );
        names(
            &format!("{alb}signer = \"s\"\nkey_url_template = \"https://k.example/key\""),
            "identity.key_url_template",
            "{kid}",
        );
        names(
            &with("").replace(
                "jwks_url = \"https://a.example/jwks\"",
                "public_keys_file = \"/nonexistent/keys.pem\"",
            ),
            "identity.public_keys_file",
            "cannot read",
        );
        names(
            "mode = \"header\"\ntrusted_peers = [\"10.0.0.1\"]\nissuer = \"a\"",
            "identity.issuer",
            "only with identity.mode = \"jwt\"",
        );
    }

    #[test]
    fn a_public_keys_file_is_read_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.pem");
        let key = crate::core::ec_keys::EcSigningKey::generate().unwrap();
        std::fs::write(&path, format!("{}{}", key.public_pem(), key.public_pem())).unwrap();
        let settings = jwt(&format!("mode = \"jwt\"\nheader = \"X-Assertion\"\nalgorithms = [\"ES256\"]\nissuer = \"a\"\naudience = [\"x\"]\npublic_keys_file = \"{}\"", path.display()));
        assert!(matches!(&settings.keys, JwtKeySource::File { keys, .. } if keys.len() == 2));
        std::fs::write(&path, "not a key").unwrap();
        let found = problems(&format!("mode = \"jwt\"\nheader = \"X-Assertion\"\nalgorithms = [\"ES256\"]\nissuer = \"a\"\naudience = [\"x\"]\npublic_keys_file = \"{}\"", path.display()));
        assert_eq!(found[0].0, "identity.public_keys_file");
    }

    #[test]
    fn alb_regions_come_from_the_signer_arn() {
        let arn = "arn:aws:elasticloadbalancing:eu-west-2:123456789012:loadbalancer/app/ehr/50dc6c495c0c9188";
        assert_eq!(alb_region(arn), Some("eu-west-2"));
        assert_eq!(alb_region("arn:aws:s3:::bucket"), None);
        assert_eq!(alb_region("nonsense"), None);
        assert_eq!(alb_region("arn:aws:elasticloadbalancing:EU/x:1:lb"), None);
    }

    #[test]
    fn keys_are_fetched_over_https_or_from_loopback() {
        let ok = |s: &str| key_url_problem(&Url::parse(s).unwrap()).is_none();
        assert!(ok("https://idp.example/jwks.json"));
        assert!(ok("http://127.0.0.1:8080/jwks.json"));
        assert!(ok("http://[::1]:8080/jwks.json"));
        assert!(ok("http://localhost/jwks.json"));
        assert!(!ok("http://idp.example/jwks.json"));
        assert!(!ok("ftp://idp.example/jwks.json"));
    }
}
