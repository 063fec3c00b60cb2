//! What pkb-edge logs at the most verbose level anyone can ask for: no secret, whatever
//! `PKB_EDGE_LOG` says (other crates' debug and trace lines, which print whole requests, are
//! capped at info unless `PKB_EDGE_LOG_UNSAFE_DEBUG=1`).

mod common;

use common::nhs::query_of;
use common::*;

const NHS_NUMBER: &str = "9990000018";

#[test]
fn a_pairing_a_launch_and_a_decorated_page_at_trace_level_log_no_secret() {
    let w = World::start_with(|c| {
        c.log_filter = Some("trace".into());
        c.extra_toml =
            "[decorate]\npatient_from = { path_regex = '^/patients/(\\d{10})' }\n".into();
    });
    let (code, state) = rt().block_on(async {
        let authorize = start_pairing(&w, "dr.jones", Some("/ward")).await;
        let state = query_of(&authorize)["state"].clone();
        let callback = consent_at_pkb(&authorize, "jones@pkb.example", "allow").await;
        let code = query_of(&callback)["code"].clone();
        let r = w.get_as("dr.jones", &callback_path(&w, &callback)).await;
        assert_eq!(r.status(), 302);
        let launch =
            format!("/_pkb/launch?contextNationalId={NHS_NUMBER}&contextNationalIdType=NHS");
        let r = w.get_as("dr.jones", &launch).await;
        assert_eq!(r.status(), 302);
        let r = w
            .get_as("dr.jones", &format!("/patients/{NHS_NUMBER}"))
            .await;
        assert_eq!(r.status(), 200);
        assert_eq!(header(r.headers(), "x-pkb-data-available"), "true");
        (code, state)
    });
    let output = w.proxy.output();
    // Verbose logging was on: pkb-edge's own debug lines are there.
    assert!(output.contains("DEBUG"), "{output}");
    assert_none_leaked(vec![code, state, NHS_NUMBER.to_string()], &output);
    // (The World checks every token, refresh token and OTP the simulator issued when dropped.)
}
