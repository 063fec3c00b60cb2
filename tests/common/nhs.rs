//! NHS login for the tests: the simulator on the shared runtime, a proxy configured as its relying
//! party, and the person at NHS login's page.

use std::sync::Arc;

use pkb_edge::sim::nhs::{new_client, NhsLoginSim};

use super::{client, header, rt, ProxyConfig};

pub const RP_CLIENT_ID: &str = "pkb-edge-test";

/// The NHS login simulator, serving on an ephemeral loopback port.
pub fn start_op() -> Arc<NhsLoginSim> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let issuer = format!("http://{}", listener.local_addr().unwrap());
    let op = NhsLoginSim::new(&issuer, pkb_edge::sim::nhs::demo_users(), true);
    let serving = op.clone();
    listener.set_nonblocking(true).unwrap();
    rt().spawn(async move {
        let l = tokio::net::TcpListener::from_std(listener).unwrap();
        serving.serve(l).await
    });
    op
}

/// Makes `c` an NHS login relying party of `op`: a key of its own (registered with `op` with the
/// proxy's callback), `identity.mode = "nhs_login"`.
pub fn use_nhs_login(c: &mut ProxyConfig, op: &NhsLoginSim) {
    let callback = format!("http://127.0.0.1:{}/_pkb/nhs/callback", c.port);
    let (key, mut registration) = new_client(RP_CLIENT_ID, vec![callback]);
    // Several instances share one registration (and one key), as behind a load balancer.
    let key_file = c
        .db_path
        .with_file_name(format!("nhs_login_rp-{}.pem", c.port));
    let key = match op.registration(RP_CLIENT_ID) {
        Some(existing) => {
            registration.public_key_pem = existing.public_key_pem.clone();
            registration.redirect_uris.extend(existing.redirect_uris);
            existing_key(&existing.public_key_pem)
        }
        None => {
            remember_key(&registration.public_key_pem, &key);
            key
        }
    };
    op.register(registration);
    std::fs::write(&key_file, key).unwrap();
    c.nhs_login = Some(format!(
        "[nhs_login]\nissuer = \"{}\"\nclient_id = \"{RP_CLIENT_ID}\"\nprivate_key_file = \"{}\"\n",
        op.issuer(),
        key_file.display()
    ));
}

static KEYS: std::sync::Mutex<Vec<(String, String)>> = std::sync::Mutex::new(Vec::new());

fn remember_key(public: &str, private: &str) {
    KEYS.lock()
        .unwrap()
        .push((public.to_string(), private.to_string()));
}

fn existing_key(public: &str) -> String {
    KEYS.lock()
        .unwrap()
        .iter()
        .find(|(p, _)| p == public)
        .map(|(_, k)| k.clone())
        .expect("the registered key was made here")
}

/// `name=value` of the session cookie a response sets, after checking its attributes.
pub fn session_cookie(r: &reqwest::Response) -> String {
    let set = header(r.headers(), "set-cookie");
    let set = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("__Host-pkb-edge-session="))
        .unwrap_or_else(|| panic!("no session cookie set: {set}"));
    for attribute in ["HttpOnly", "Secure", "SameSite=Lax", "Path=/"] {
        assert!(set.contains(attribute), "{attribute} missing: {set}");
    }
    set.split(';').next().unwrap().to_string()
}

/// `name=value` of the login cookie a sign-in's start sets (it ties the callback to this
/// browser), if it sets one.
pub fn login_cookie(r: &reqwest::Response) -> Option<String> {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("__Host-pkb-edge-session-login="))
        .map(|v| v.split(';').next().unwrap().to_string())
}

/// Plays the person at NHS login's page: loads it, then continues as `user` or declines.
/// Returns where NHS login sends the browser (the callback URL).
pub async fn nhs_login_page(authorize_url: &str, user: usize, decision: &str) -> String {
    let page = client().get(authorize_url).send().await.unwrap();
    assert_eq!(page.status(), 200, "NHS login's sign-in page");
    let url = url::Url::parse(authorize_url).unwrap();
    let mut form: Vec<(String, String)> = url
        .query_pairs()
        .into_owned()
        .filter(|(k, _)| {
            [
                "client_id",
                "redirect_uri",
                "state",
                "nonce",
                "vtr",
                "scope",
            ]
            .contains(&k.as_str())
        })
        .collect();
    form.push(("user".into(), user.to_string()));
    form.push(("decision".into(), decision.into()));
    let origin = url.origin().ascii_serialization();
    let answer = client()
        .post(format!("{origin}/authorize"))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert!(answer.status().is_redirection(), "{}", answer.status());
    header(answer.headers(), "location").to_string()
}

pub fn query_of(url: &str) -> std::collections::HashMap<String, String> {
    url::Url::parse(url)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect()
}
