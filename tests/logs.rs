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
    // Whatever secret the flow had, another crate's debug or trace line never shows: there is none.
    let others = verbose_lines_of_other_crates(&output);
    assert!(others.is_empty(), "{}", others.join("\n"));
    assert!(
        !output.contains("PKB_EDGE_LOG_UNSAFE_DEBUG"),
        "no warning: {output}"
    );
}

#[test]
fn the_unsafe_switch_lets_other_crates_debug_lines_through_and_warns_at_start_up() {
    let w = World::start_with(|c| {
        c.log_filter = Some("trace".into());
        c.log_unsafe_debug = true;
    });
    rt().block_on(async {
        let r = w.get_as("dr.jones", "/page").await;
        assert_eq!(r.status(), 200);
    });
    let output = w.proxy.output();
    let warning = output
        .lines()
        .find(|l| l.contains("PKB_EDGE_LOG_UNSAFE_DEBUG=1"))
        .unwrap_or_else(|| panic!("no start-up warning: {output}"));
    assert!(warning.contains("WARN"), "{warning}");
    assert!(warning.contains("NHS numbers"), "{warning}");
    // The warning comes before the first request is logged.
    let warned_at = output.find(warning).unwrap();
    let others = verbose_lines_of_other_crates(&output);
    assert!(
        others.iter().any(|l| l.contains("pingora")),
        "Pingora's debug lines are let through: {output}"
    );
    assert!(
        others
            .iter()
            .all(|l| output.find(l.as_str()) > Some(warned_at)),
        "{output}"
    );
}

/// The `DEBUG` and `TRACE` lines of `output` (the text log format) whose target is not
/// pkb-edge's own: `TIME LEVEL [span{…}: …] target: message`.
fn verbose_lines_of_other_crates(output: &str) -> Vec<String> {
    output
        .lines()
        .filter(|line| {
            let mut words = line.split_whitespace();
            let level = words.nth(1).unwrap_or_default();
            if level != "DEBUG" && level != "TRACE" {
                return false;
            }
            let target = words.find(|w| w.ends_with(':') && !w.contains('{'));
            !target.is_some_and(|t| t == "pkb_edge:" || t.starts_with("pkb_edge::"))
        })
        .map(str::to_string)
        .collect()
}
