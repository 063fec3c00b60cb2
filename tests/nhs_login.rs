//! pkb-edge as the NHS login relying party, against the NHS login simulator and the PKB
//! simulator: sign-in, every id_token check, the client assertion, sessions and sign-out, launch
//! into PKB with `assertedLoginIdentity` (single use), silent sign-in coming from PKB, and every
//! error the authorize endpoint can answer with.

mod common;

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use common::nhs::*;
use common::*;
use pkb_edge::sim::nhs::{new_client, IdTokenFault, NhsKnobs, NhsLoginSim};

struct NhsWorld {
    w: World,
    op: Arc<NhsLoginSim>,
    /// The browser's login cookie, as the last sign-in start set it.
    login: std::sync::Mutex<Option<String>>,
}

impl Drop for NhsWorld {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            assert_none_leaked(self.op.issued_secrets(), &self.w.proxy.output());
        }
    }
}

fn start() -> NhsWorld {
    let op = start_op();
    let registered = op.clone();
    let w = World::start_with(move |c| use_nhs_login(c, &registered));
    w.sim
        .sim
        .attach_nhs_login(op.clone(), Some(w.proxy.url("")));
    NhsWorld {
        w,
        op,
        login: Default::default(),
    }
}

impl NhsWorld {
    async fn get(&self, path: &str, cookie: Option<&str>) -> reqwest::Response {
        let mut r = client().get(self.w.proxy.url(path));
        let cookies: Vec<String> = cookie
            .map(str::to_string)
            .into_iter()
            .chain(self.login.lock().unwrap().clone())
            .collect();
        if !cookies.is_empty() {
            r = r.header("cookie", cookies.join("; "));
        }
        let r = r.send().await.unwrap();
        self.remember_login(&r);
        r
    }

    /// Keeps the login cookie as a browser does: set, replaced, or forgotten when cleared.
    fn remember_login(&self, r: &reqwest::Response) {
        if let Some(login) = login_cookie(r) {
            *self.login.lock().unwrap() = (!login.ends_with('=')).then_some(login);
        }
    }

    /// Signs in interactively as simulator user `user` starting at `path`; the session cookie.
    async fn sign_in(&self, path: &str, user: usize) -> String {
        let r = self.get(path, None).await;
        assert_eq!(r.status(), 302);
        let callback = nhs_login_page(header(r.headers(), "location"), user, "allow").await;
        let r = self.callback(&callback).await;
        assert_eq!(r.status(), 302, "{}", r.text().await.unwrap());
        assert_eq!(header(r.headers(), "location"), path);
        session_cookie(&r)
    }

    async fn callback(&self, callback_url: &str) -> reqwest::Response {
        let prefix = self.w.proxy.url("/_pkb/nhs/callback?");
        assert!(callback_url.starts_with(&prefix), "{callback_url}");
        let mut r = client().get(callback_url);
        if let Some(login) = self.login.lock().unwrap().clone() {
            r = r.header("cookie", login);
        }
        let r = r.send().await.unwrap();
        self.remember_login(&r);
        r
    }

    fn knobs(&self, knobs: NhsKnobs) {
        self.op.set_knobs(knobs);
    }
}

/// Whether a response sets a session cookie (a refusal may still clear the login cookie).
fn sets_session(r: &reqwest::Response) -> bool {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.starts_with("__Host-pkb-edge-session="))
}

fn jwt_claims(token: &str) -> serde_json::Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&B64URL.decode(payload).unwrap()).unwrap()
}

fn values<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

#[test]
fn sign_in_reaches_the_upstream_as_the_nhs_login_user_and_strips_spoofed_headers() {
    let nw = start();
    rt().block_on(async {
        let r = nw.get("/records?tab=1", None).await;
        assert_eq!(r.status(), 302);
        let authorize = header(r.headers(), "location").to_string();
        assert!(authorize.starts_with(&format!("{}/authorize?", nw.op.issuer())));
        let q = query_of(&authorize);
        assert_eq!(q["response_type"], "code");
        assert_eq!(q["client_id"], RP_CLIENT_ID);
        assert_eq!(q["response_mode"], "query");
        assert_eq!(q["scope"], "openid profile");
        assert_eq!(q["vtr"], r#"["P9.Cp.Cd","P9.Cp.Ck","P9.Cm"]"#);
        assert_eq!(q["redirect_uri"], nw.w.proxy.url("/_pkb/nhs/callback"));
        assert_eq!(q["state"].len(), 43);
        assert_eq!(q["nonce"].len(), 43);
        assert!(!q.contains_key("prompt"), "an interactive sign-in");

        let callback = nhs_login_page(&authorize, 0, "allow").await;
        let r = nw.callback(&callback).await;
        assert_eq!(r.status(), 302);
        assert_eq!(header(r.headers(), "location"), "/records?tab=1");
        let cookie = session_cookie(&r);
        // The callback is spent.
        assert_eq!(nw.callback(&callback).await.status(), 400);

        let r = client()
            .get(nw.w.proxy.url("/records?tab=1"))
            .header("cookie", format!("theme=dark; {cookie}"))
            .header(USER_HEADER, "mallory")
            .header("x-nhs-number", "1234567890")
            .header("x-identity-proofing-level", "P9")
            .header("connection", "x-nhs-number")
            .send()
            .await
            .unwrap();
        let (uri, seen) = upstream_saw(r).await;
        assert_eq!(uri, "/records?tab=1");
        let ada = &nw.op.users()[0];
        assert_eq!(
            values(&seen, "x-authenticated-user"),
            vec![ada.sub.as_str()]
        );
        assert_eq!(values(&seen, "x-nhs-number"), vec![ada.nhs_number.as_str()]);
        assert_eq!(values(&seen, "x-identity-proofing-level"), vec!["P9"]);
        assert_eq!(
            values(&seen, "cookie"),
            vec!["theme=dark"],
            "the session cookie stays with pkb-edge"
        );

        // Without a session: pages go to sign in, API calls and writes get 401.
        let r = client()
            .get(nw.w.proxy.url("/api/records"))
            .header("accept", "application/json")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"], "unauthenticated");
        assert_eq!(body["action"], "/_pkb/nhs/login?return_to=%2Fapi%2Frecords");
        let r = client()
            .post(nw.w.proxy.url("/records"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let r = nw
            .get(
                "/records",
                Some("__Host-pkb-edge-session=forged-forged-forged-forged-forged-forged-f"),
            )
            .await;
        assert_eq!(r.status(), 302, "an unknown session id is no session");

        for endpoint in ["discovery", "token", "userinfo", "login_page"] {
            assert_eq!(nw.op.count(endpoint), 1, "{endpoint}");
        }
        assert_eq!(nw.op.count("client_assertion_refused"), 0);
        let signed_in: Vec<serde_json::Value> =
            nw.w.proxy
                .audit_lines()
                .into_iter()
                .filter(|l| l["action"] == "nhs_login" && l["outcome"] == "signed_in")
                .collect();
        assert_eq!(signed_in.len(), 1);
        assert_eq!(signed_in[0]["user"], ada.sub.as_str());
    });
}

#[test]
fn every_id_token_and_userinfo_check_refuses_the_sign_in() {
    let nw = start();
    rt().block_on(async {
        let faults = [
            (Some(IdTokenFault::BadSignature), false, "bad signature"),
            (Some(IdTokenFault::UnknownKid), false, "unknown key"),
            (Some(IdTokenFault::WrongIssuer), false, "wrong issuer"),
            (Some(IdTokenFault::WrongAudience), false, "aud"),
            (Some(IdTokenFault::Expired), false, "expired"),
            (Some(IdTokenFault::WrongNonce), false, "nonce"),
            (Some(IdTokenFault::WeakVot), false, "vot"),
            (None, true, "sub"),
        ];
        for (fault, other_sub, reason) in faults {
            nw.knobs(NhsKnobs {
                id_token_fault: fault,
                userinfo_other_sub: other_sub,
                ..NhsKnobs::default()
            });
            let r = nw.get("/", None).await;
            let callback = nhs_login_page(header(r.headers(), "location"), 0, "allow").await;
            let r = nw.callback(&callback).await;
            assert_eq!(r.status(), 502, "{fault:?}");
            assert!(!sets_session(&r), "{fault:?}: no session");
            let page = r.text().await.unwrap();
            assert!(page.contains(reason), "{fault:?}: {page}");
        }
        // The same sign-in, unspoiled, works: the refusals came from the checks alone.
        nw.knobs(NhsKnobs::default());
        nw.sign_in("/", 0).await;
        let outcomes: Vec<String> =
            nw.w.proxy
                .audit_lines()
                .into_iter()
                .filter(|l| l["action"] == "nhs_login" && l["refused"] == true)
                .map(|l| l["outcome"].as_str().unwrap().to_string())
                .collect();
        assert_eq!(
            outcomes.iter().filter(|o| *o == "id_token_invalid").count(),
            7
        );
        assert_eq!(
            outcomes.iter().filter(|o| *o == "userinfo_invalid").count(),
            1
        );
    });
}

#[test]
fn the_simulator_refuses_a_client_assertion_signed_with_another_key() {
    let nw = start();
    rt().block_on(async {
        // NHS login now holds a different public key for pkb-edge's client id.
        let callback = nw.w.proxy.url("/_pkb/nhs/callback");
        let (_, other) = new_client(RP_CLIENT_ID, vec![callback]);
        nw.op.register(other);
        let r = nw.get("/", None).await;
        let callback = nhs_login_page(header(r.headers(), "location"), 0, "allow").await;
        let r = nw.callback(&callback).await;
        assert_eq!(r.status(), 502);
        assert!(r.text().await.unwrap().contains("invalid_client"));
        assert_eq!(nw.op.count("client_assertion_refused"), 1);
        assert_eq!(nw.op.count("userinfo"), 0);
    });
}

#[test]
fn launch_into_pkb_carries_a_fresh_single_use_asserted_identity() {
    let nw = start();
    rt().block_on(async {
        // Not signed in yet: sign in first, then carry on into PKB.
        let r = nw
            .get("/_pkb/nhs/launch-pkb?path=%2Fpatient%2Frecord", None)
            .await;
        assert_eq!(r.status(), 302);
        let callback = nhs_login_page(header(r.headers(), "location"), 1, "allow").await;
        let r = nw.callback(&callback).await;
        assert_eq!(
            header(r.headers(), "location"),
            "/_pkb/nhs/launch-pkb?path=%2Fpatient%2Frecord"
        );
        let cookie = session_cookie(&r);

        let r = nw
            .get(
                "/_pkb/nhs/launch-pkb?path=%2Fpatient%2Frecord",
                Some(&cookie),
            )
            .await;
        assert_eq!(r.status(), 302);
        let into_pkb = header(r.headers(), "location").to_string();
        assert!(
            into_pkb.starts_with(&format!(
                "{}/patient/record?assertedLoginIdentity=",
                nw.w.sim.url()
            )),
            "{into_pkb}"
        );
        let q = query_of(&into_pkb);
        assert_eq!(q["prompt"], "none");
        let claims = jwt_claims(&q["assertedLoginIdentity"]);
        assert_eq!(claims["iss"], RP_CLIENT_ID);
        let lifetime = claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap();
        assert!((1..=60).contains(&lifetime), "{lifetime}");

        let at_pkb = |url: String| async move {
            client()
                .get(url)
                .header("accept", "application/json")
                .send()
                .await
                .unwrap()
        };
        let r = at_pkb(into_pkb.clone()).await;
        assert_eq!(r.status(), 200);
        let view: pkb_edge::sim::NhsLoginView = r.json().await.unwrap();
        assert_eq!(view.sub, nw.op.users()[1].sub);
        assert_eq!(view.path, "/patient/record");
        assert_eq!(
            at_pkb(into_pkb).await.status(),
            401,
            "an assertion is used once"
        );
        assert_eq!(nw.op.count("assertion_accepted"), 1);
        assert_eq!(nw.op.count("assertion_refused"), 1);

        // Every launch gets its own.
        let a = nw.get("/_pkb/nhs/launch-pkb?path=%2F", Some(&cookie)).await;
        let b = nw.get("/_pkb/nhs/launch-pkb?path=%2F", Some(&cookie)).await;
        let (a, b) = (
            query_of(header(a.headers(), "location")),
            query_of(header(b.headers(), "location")),
        );
        assert_ne!(
            jwt_claims(&a["assertedLoginIdentity"])["jti"],
            jwt_claims(&b["assertedLoginIdentity"])["jti"]
        );
        // Relative paths only.
        let r = nw
            .get(
                "/_pkb/nhs/launch-pkb?path=%2F%2Fevil.example",
                Some(&cookie),
            )
            .await;
        assert_eq!(r.status(), 400);
        // pkb-edge's own parameters cannot be smuggled in through `path`.
        let r = nw
            .get(
                "/_pkb/nhs/launch-pkb?path=%2Fx%3Fprompt%3Dlogin",
                Some(&cookie),
            )
            .await;
        assert_eq!(r.status(), 400);
        // A cross-site page cannot send a signed-in user into PKB.
        let r = client()
            .get(nw.w.proxy.url("/_pkb/nhs/launch-pkb?path=%2F"))
            .header("cookie", &cookie)
            .header("sec-fetch-site", "cross-site")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
        assert!(
            nw.w.proxy
                .output()
                .matches("assertedLoginIdentity=ey")
                .next()
                .is_none(),
            "never logged"
        );
    });
}

#[test]
fn arriving_from_pkb_with_an_asserted_identity_signs_in_silently() {
    let nw = start();
    rt().block_on(async {
        let assertion = nw.w.sim.sim.assertion_from_pkb(1).unwrap();
        let r = nw
            .get(
                &format!("/appointments?assertedLoginIdentity={assertion}&tab=2"),
                None,
            )
            .await;
        assert_eq!(r.status(), 302);
        let authorize = header(r.headers(), "location").to_string();
        let q = query_of(&authorize);
        assert_eq!(q["prompt"], "none");
        assert_eq!(q["asserted_login_identity"], assertion);
        // NHS login answers at once: no page, no credentials.
        let r = client().get(&authorize).send().await.unwrap();
        assert!(r.status().is_redirection());
        let r = nw.callback(header(r.headers(), "location")).await;
        assert_eq!(r.status(), 302);
        assert_eq!(header(r.headers(), "location"), "/appointments?tab=2");
        let cookie = session_cookie(&r);
        let (uri, seen) = upstream_saw(nw.get("/appointments?tab=2", Some(&cookie)).await).await;
        assert_eq!(uri, "/appointments?tab=2");
        assert_eq!(
            values(&seen, "x-authenticated-user"),
            vec![nw.op.users()[1].sub.as_str()]
        );
        assert_eq!(nw.op.count("login_page"), 0, "no credentials entered");
        assert_eq!(nw.op.count("authorize_silent"), 1);
        assert_eq!(nw.op.count("assertion_accepted"), 1);
    });
}

#[test]
fn a_refused_silent_sign_in_falls_back_to_one_interactive_sign_in() {
    let nw = start();
    rt().block_on(async {
        nw.knobs(NhsKnobs {
            silent_error: Some("login_required".into()),
            ..NhsKnobs::default()
        });
        let assertion = nw.w.sim.sim.assertion_from_pkb(0).unwrap();
        let r = nw
            .get(&format!("/?assertedLoginIdentity={assertion}"), None)
            .await;
        let r = client()
            .get(header(r.headers(), "location"))
            .send()
            .await
            .unwrap();
        let callback = header(r.headers(), "location").to_string();
        assert_eq!(query_of(&callback)["error"], "login_required");
        let r = nw.callback(&callback).await;
        assert_eq!(r.status(), 302);
        let interactive = header(r.headers(), "location").to_string();
        let q = query_of(&interactive);
        assert!(
            !q.contains_key("prompt") && !q.contains_key("asserted_login_identity"),
            "{interactive}"
        );
        // The person signs in once more, and is where they were going.
        let callback = nhs_login_page(&interactive, 0, "allow").await;
        let r = nw.callback(&callback).await;
        assert_eq!(header(r.headers(), "location"), "/");
        session_cookie(&r);
        assert_eq!(nw.op.count("authorize_silent"), 1);
        assert_eq!(nw.op.count("login_page"), 1);

        // An assertion used twice: NHS login refuses it the second time, the same fallback.
        nw.knobs(NhsKnobs::default());
        let assertion = nw.w.sim.sim.assertion_from_pkb(0).unwrap();
        for _ in 0..2 {
            let r = nw
                .get(&format!("/?assertedLoginIdentity={assertion}"), None)
                .await;
            let r = client()
                .get(header(r.headers(), "location"))
                .send()
                .await
                .unwrap();
            let r = nw.callback(header(r.headers(), "location")).await;
            assert_eq!(r.status(), 302);
        }
        assert_eq!(nw.op.count("assertion_accepted"), 1);
        assert_eq!(nw.op.count("assertion_refused"), 1);
    });
}

#[test]
fn a_callback_in_another_browser_never_signs_it_in() {
    let nw = start();
    rt().block_on(async {
        // The attacker starts a sign-in and signs in as themselves, then sends the callback
        // link to someone else.
        let r = nw.get("/", None).await;
        let callback = nhs_login_page(header(r.headers(), "location"), 0, "allow").await;
        for other_browser in [
            None,
            Some("__Host-pkb-edge-session-login=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
        ] {
            let mut req = client().get(&callback);
            if let Some(c) = other_browser {
                req = req.header("cookie", c);
            }
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 400);
            assert!(!sets_session(&r), "no session");
            assert!(r.text().await.unwrap().contains("another browser"));
        }
        assert_eq!(nw.op.count("token"), 0, "the code was never exchanged");
        // Refusals elsewhere take nothing from the browser that started the sign-in: it
        // finishes there, once.
        assert_eq!(nw.callback(&callback).await.status(), 302);
        assert_eq!(nw.callback(&callback).await.status(), 400, "replayed");
        assert_eq!(nw.op.count("token"), 1);
    });
}

#[test]
fn consent_not_given_shows_a_page_with_a_way_home() {
    let nw = start();
    rt().block_on(async {
        let r = nw.get("/records", None).await;
        let callback = nhs_login_page(header(r.headers(), "location"), 0, "deny").await;
        assert_eq!(query_of(&callback)["error_description"], "ConsentNotGiven");
        let r = nw.callback(&callback).await;
        assert_eq!(r.status(), 403);
        assert!(!sets_session(&r));
        let page = r.text().await.unwrap();
        assert!(
            page.contains("You chose not to share your NHS login information"),
            "{page}"
        );
        assert!(page.contains("href=\"/\""), "a way home: {page}");
    });
}

#[test]
fn every_authorize_error_gets_its_own_page_and_none_loops() {
    let nw = start();
    rt().block_on(async {
        let cases = [
            ("invalid_request", 502, "did not accept"),
            ("unauthorized_client", 502, "did not accept"),
            ("unsupported_response_type", 502, "did not accept"),
            ("invalid_scope", 502, "did not accept"),
            ("server_error", 503, "not working at the moment"),
            ("temporarily_unavailable", 503, "not working at the moment"),
            ("login_required", 401, "needs you to sign in"),
            ("interaction_required", 401, "needs you to sign in"),
            ("access_denied", 403, "did not let you sign in"),
            ("something_new", 502, "something_new"),
        ];
        for (code, status, text) in cases {
            nw.knobs(NhsKnobs {
                authorize_error: Some((code.into(), "simulated".into())),
                ..NhsKnobs::default()
            });
            let r = nw.get("/", None).await;
            let r = client()
                .get(header(r.headers(), "location"))
                .send()
                .await
                .unwrap();
            let callback = header(r.headers(), "location").to_string();
            assert_eq!(query_of(&callback)["error"], code);
            let r = nw.callback(&callback).await;
            assert_eq!(r.status(), status, "{code}");
            let page = r.text().await.unwrap();
            assert!(page.contains(text), "{code}: {page}");
        }
        assert_eq!(
            nw.op.count("authorize"),
            cases.len() as u64,
            "one authorize each: no loop"
        );
        // A callback nobody started.
        let r =
            client()
                .get(nw.w.proxy.url(
                    "/_pkb/nhs/callback?code=x&state=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
                ))
                .send()
                .await
                .unwrap();
        assert_eq!(r.status(), 400);
    });
}

#[test]
fn sign_out_ends_the_session_and_refuses_cross_site_requests() {
    let nw = start();
    rt().block_on(async {
        let cookie = nw.sign_in("/", 0).await;
        assert_eq!(nw.get("/", Some(&cookie)).await.status(), 200);
        let logout = |site: &'static str| {
            client()
                .post(nw.w.proxy.url("/_pkb/nhs/logout"))
                .header("cookie", cookie.clone())
                .header("sec-fetch-site", site)
                .send()
        };
        assert_eq!(logout("cross-site").await.unwrap().status(), 403);
        assert_eq!(
            nw.get("/", Some(&cookie)).await.status(),
            200,
            "still signed in"
        );
        let r = logout("same-origin").await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(header(r.headers(), "set-cookie").contains("Max-Age=0"));
        assert_eq!(
            nw.get("/", Some(&cookie)).await.status(),
            302,
            "the old cookie is dead"
        );
        let steps: Vec<String> =
            nw.w.proxy
                .audit_lines()
                .into_iter()
                .filter(|l| l["action"] == "nhs_logout")
                .map(|l| l["outcome"].as_str().unwrap().to_string())
                .collect();
        assert_eq!(steps, vec!["cross_site", "signed_out"]);
    });
}

/// The `Set-Cookie` a response sends for the login cookie, if any.
fn set_login_cookie(r: &reqwest::Response) -> Option<String> {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("__Host-pkb-edge-session-login="))
        .map(str::to_string)
}

#[test]
fn anonymous_requests_write_nothing_to_the_store() {
    let nw = start();
    rt().block_on(async {
        // Page requests without a session, as a crawler or a flood sends them: each one is sent
        // to NHS login, and none costs a row in the store.
        let mut last = None;
        for n in 0..200 {
            let r = client()
                .get(nw.w.proxy.url(&format!("/records?page={n}")))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 302);
            last = Some(r);
        }
        let r = nw.get("/_pkb/nhs/login?return_to=%2Fstart", None).await;
        assert_eq!(r.status(), 302);
        assert_eq!(
            nw.w.config().record_rows(None),
            0,
            "no row in the store for an anonymous request"
        );

        // The sign-in in progress travels in its cookie, for the sign-in's time, and completes.
        let last = last.unwrap();
        let set = set_login_cookie(&last).expect("a login cookie");
        for attribute in [
            "HttpOnly",
            "Secure",
            "SameSite=Lax",
            "Path=/",
            "Max-Age=600",
        ] {
            assert!(set.contains(attribute), "{attribute} missing: {set}");
        }
        let cookie = set.split(';').next().unwrap().to_string();
        let callback = nhs_login_page(header(last.headers(), "location"), 0, "allow").await;
        let r = client()
            .get(&callback)
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 302);
        assert_eq!(header(r.headers(), "location"), "/records?page=199");
        session_cookie(&r);
        let cleared = set_login_cookie(&r).unwrap_or_default();
        assert!(
            cleared.starts_with("__Host-pkb-edge-session-login=;") && cleared.contains("Max-Age=0"),
            "the login cookie is cleared at the callback: {cleared}"
        );
        assert_eq!(nw.w.config().record_rows(None), 1, "the session alone");
    });
}

#[test]
fn a_tampered_login_cookie_an_older_tab_and_a_replay_are_refused() {
    let nw = start();
    rt().block_on(async {
        // Two tabs of one browser start signing in; the browser keeps the newer login cookie.
        let r = nw.get("/older", None).await;
        let older = nhs_login_page(header(r.headers(), "location"), 0, "allow").await;
        let r = nw.get("/newer", None).await;
        let newer = nhs_login_page(header(r.headers(), "location"), 0, "allow").await;
        let login = nw.login.lock().unwrap().clone().unwrap();

        // The cookie altered: refused, no session.
        let mut tampered: Vec<char> = login.chars().collect();
        let i = tampered.len() - 10;
        tampered[i] = if tampered[i] == 'A' { 'B' } else { 'A' };
        let tampered: String = tampered.into_iter().collect();
        let r = client()
            .get(&newer)
            .header("cookie", &tampered)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        assert!(!sets_session(&r));
        assert!(r.text().await.unwrap().contains("another browser"));

        // The older tab's callback: not the sign-in this browser's cookie holds. Refused with a
        // way to sign in again; the newer sign-in's cookie is left alone.
        let r = nw.callback(&older).await;
        assert_eq!(r.status(), 400);
        assert!(r.headers().get("set-cookie").is_none());
        let page = r.text().await.unwrap();
        assert!(page.contains("Sign in again"), "{page}");

        // The newer tab signs in, and its login cookie is cleared.
        let r = nw.callback(&newer).await;
        assert_eq!(r.status(), 302);
        assert_eq!(header(r.headers(), "location"), "/newer");
        session_cookie(&r);
        assert!(
            nw.login.lock().unwrap().is_none(),
            "the login cookie is cleared"
        );

        // Replayed: this browser holds no sign-in in progress any more.
        let r = nw.callback(&newer).await;
        assert_eq!(r.status(), 400);
        assert!(r.headers().get("set-cookie").is_none());
        assert_eq!(
            nw.op.count("token"),
            1,
            "only the newer sign-in's code was exchanged"
        );
    });
}

#[test]
fn the_asserted_identity_never_reaches_the_upstream_whatever_the_method() {
    let nw = start();
    rt().block_on(async {
        let cookie = nw.sign_in("/", 0).await;
        let assertion = nw.w.sim.sim.assertion_from_pkb(1).unwrap();
        let send = |method: &str, path: &str| {
            client()
                .request(
                    reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                    nw.w.proxy.url(path),
                )
                .header("cookie", &cookie)
                .send()
        };
        for method in ["POST", "PUT", "OPTIONS", "DELETE", "PATCH"] {
            for query in [
                format!("assertedLoginIdentity={assertion}&keep=1"),
                // Spelt as the gate reads it for a GET: percent-decoded; with the `prompt`
                // that comes with it, and given twice.
                format!("keep=1&%61ssertedLoginIdentity={assertion}&prompt=none"),
                "assertedLoginIdentity=a.b.c&prompt=none&keep=1&assertedLoginIdentity=x"
                    .to_string(),
            ] {
                let r = send(method, &format!("/forms?{query}")).await.unwrap();
                let (uri, _) = upstream_saw(r).await;
                assert_eq!(uri, "/forms?keep=1", "{method} ?{query}");
            }
            let r = send(method, &format!("/forms?assertedLoginIdentity={assertion}"))
                .await
                .unwrap();
            assert_eq!(upstream_saw(r).await.0, "/forms", "{method}");
            // Without one, the query goes on byte for byte, `prompt` and all.
            let untouched = "/forms?prompt=login&a=%20b+c&assertedLoginIdentityX=1";
            let r = send(method, untouched).await.unwrap();
            assert_eq!(upstream_saw(r).await.0, untouched, "{method}");
        }
        assert_eq!(nw.op.count("assertion_accepted"), 0, "never used");
    });
}
