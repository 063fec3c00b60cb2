//! Everything one test needs (simulator, upstream, a temp dir and a running proxy), and the
//! pairing flow through them as a browser and the person at PKB's consent page play it.

use super::{assert_no_secrets, client, header, Proxy, ProxyConfig, Sim, Upstream, USER_HEADER};

/// Everything one test needs: simulator, upstream, a temp dir and a running proxy.
pub struct World {
    pub sim: Sim,
    pub upstream: Upstream,
    pub dir: tempfile::TempDir,
    pub proxy: Proxy,
}

impl World {
    pub fn start() -> World {
        World::start_with(|_| {})
    }

    pub fn start_with(adjust: impl FnOnce(&mut ProxyConfig)) -> World {
        World::start_with_args(adjust, &[])
    }

    /// With extra `pkb-edge run` arguments, e.g. `--log-format json`.
    pub fn start_with_args(adjust: impl FnOnce(&mut ProxyConfig), args: &[&str]) -> World {
        let sim = Sim::start();
        let upstream = Upstream::start();
        let dir = tempfile::tempdir().unwrap();
        let mut config = ProxyConfig::new(&dir, &upstream, &sim);
        adjust(&mut config);
        let proxy = Proxy::spawn(&dir, &config, args)
            .unwrap_or_else(|log| panic!("proxy did not start:\n{log}"));
        World {
            sim,
            upstream,
            dir,
            proxy,
        }
    }

    pub fn config(&self) -> &ProxyConfig {
        &self.proxy.config
    }
}

/// Every test with a `World` is also a check that nothing the simulator issued leaked into the
/// proxy's logs or audit lines.
impl Drop for World {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            assert_no_secrets(&self.sim, &self.proxy.output());
        }
    }
}

impl World {
    /// GET a proxy path as `user` (from a trusted peer).
    pub async fn get_as(&self, user: &str, path: &str) -> reqwest::Response {
        client()
            .get(self.proxy.url(path))
            .header(USER_HEADER, user)
            .send()
            .await
            .unwrap()
    }
}

/// /pair as `user`, returning PKB's authorize URL.
pub async fn start_pairing(w: &World, user: &str, return_to: Option<&str>) -> String {
    let path = match return_to {
        Some(r) => format!(
            "/_pkb/pair?return_to={}",
            form_urlencoded::byte_serialize(r.as_bytes()).collect::<String>()
        ),
        None => "/_pkb/pair".to_string(),
    };
    let r = w.get_as(user, &path).await;
    assert_eq!(r.status(), 302, "{}", r.text().await.unwrap());
    header(r.headers(), "location").to_string()
}

/// The callback URL PKB sends the browser back to, as a path on the proxy.
pub fn callback_path(w: &World, callback_url: &str) -> String {
    let prefix = w.proxy.url("");
    assert!(
        callback_url.starts_with(&format!("{prefix}/_pkb/callback?")),
        "{callback_url}"
    );
    callback_url[prefix.len()..].to_string()
}

/// Plays the person at PKB's consent page: loads it, then answers `decision` ("allow" or "deny")
/// as `pkb_user`. Returns where PKB sends the browser back to (the callback URL).
pub async fn consent_at_pkb(authorize_url: &str, pkb_user: &str, decision: &str) -> String {
    let http = client();
    let page = http.get(authorize_url).send().await.unwrap();
    assert_eq!(page.status(), 200, "PKB's consent page");
    let url = url::Url::parse(authorize_url).unwrap();
    let mut form: Vec<(String, String)> = url
        .query_pairs()
        .into_owned()
        .filter(|(k, _)| k != "response_type")
        .collect();
    form.push(("decision".into(), decision.into()));
    form.push(("pkb_user".into(), pkb_user.into()));
    let action = format!(
        "{}://{}{}",
        url.scheme(),
        url.host_str().unwrap(),
        url.port().map(|p| format!(":{p}")).unwrap_or_default()
    );
    let answer = http
        .post(format!("{action}{}", url.path()))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert!(
        answer.status().is_redirection(),
        "consent answers with a redirect"
    );
    header(answer.headers(), "location").to_string()
}

/// Follows a launch's redirect to the simulator's OTP login, as a browser would, and reads who
/// PKB signed in and with what context.
pub async fn landing_of(launch: &reqwest::Response) -> pkb_edge::sim::LoginView {
    client()
        .get(header(launch.headers(), "location"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}
