//! The demo in a real browser (headless Chromium through chromedriver): sign in at the front,
//! open a patient in PKB, be offered linking, consent at the PKB simulator, come back, land in
//! PKB's page for that patient, then launch again without linking. A screenshot of each step goes
//! to `target/tmp/browser-screenshots/`.

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};

use common::{free_port, wait_listening, Killed};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

struct Steps {
    browser: Client,
    dir: PathBuf,
    n: u32,
}

impl Steps {
    async fn shot(&mut self, name: &str) {
        self.n += 1;
        let png = self.browser.screenshot().await.unwrap();
        std::fs::write(self.dir.join(format!("{:02}-{name}.png", self.n)), png).unwrap();
    }

    async fn text(&self, css: &str) -> String {
        self.browser
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .text()
            .await
            .unwrap()
    }

    async fn click(&self, css: &str) {
        self.browser
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .click()
            .await
            .unwrap();
    }

    /// Waits for the page titled `want` (a click may return before its navigation finishes).
    async fn expect_page(&self, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let title = self.browser.title().await.unwrap_or_default();
            if title.starts_with(want) {
                return;
            }
            if Instant::now() > deadline {
                let url = self.browser.current_url().await.map(|u| u.to_string());
                let source = self.browser.source().await.unwrap_or_default();
                let start = source.len().saturating_sub(1500);
                panic!(
                    "expected the page {want:?}, still on {title:?} at {url:?}:\n{}",
                    &source[start..]
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A running `pkb-edge demo` (with `extra` arguments), chromedriver, and a headless Chromium
/// session; `None` (skipped) when Chromium is not installed outside CI.
struct Session {
    _demo: Killed,
    _state: tempfile::TempDir,
    _driver: Killed,
    _profile: tempfile::TempDir,
    url: String,
    rt: tokio::runtime::Runtime,
    steps: Option<Steps>,
}

fn start_session(extra: &[&str], screenshots: &str) -> Option<Session> {
    if !std::path::Path::new(CHROMIUM).exists() || !std::path::Path::new(CHROMEDRIVER).exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have Chromium: scripts/setup.sh installs it"
        );
        eprintln!("skipped: {CHROMIUM} or {CHROMEDRIVER} missing (scripts/setup.sh installs them)");
        return None;
    }
    let port = free_port();
    // The demo keeps its state under the temp directory: this test's own, removed afterwards.
    let state = tempfile::tempdir().unwrap();
    let demo_log = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{screenshots}.log"));
    let mut demo = Command::new(env!("CARGO_BIN_EXE_pkb-edge"))
        .args(["demo", "--listen", &format!("127.0.0.1:{port}")])
        .args(extra)
        .env("TMPDIR", state.path())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&demo_log).unwrap())
        .spawn()
        .unwrap();
    // Keep reading the demo's output for as long as it runs.
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    let stdout = demo.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let demo = Killed(demo);
    let first_line = lines_rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("the demo printed no URL; its log: {}", demo_log.display()));
    let scheme = if extra.contains(&"--tls") {
        "https"
    } else {
        "http"
    };
    let url = format!("{scheme}://127.0.0.1:{port}/");
    assert!(
        first_line.contains(&url),
        "the demo prints the URL to open: {first_line}"
    );
    // With --tls, Chromium trusts the run's certificate by its public key's pin (the flag the
    // demo's banner gives), and nothing else.
    let pin: Vec<String> = first_line
        .split_whitespace()
        .filter(|w| w.starts_with("--ignore-certificate-errors-spki-list="))
        .map(|w| w.trim_end_matches(')').to_string())
        .collect();
    assert_eq!(pin.len(), usize::from(scheme == "https"), "{first_line}");

    let driver_port = free_port();
    let driver = Killed(
        Command::new(CHROMEDRIVER)
            .arg(format!("--port={driver_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_listening(driver_port, "chromedriver", Duration::from_secs(30));
    wait_listening(port, "the demo", Duration::from_secs(30));

    let profile = tempfile::tempdir().unwrap();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(screenshots);
    std::fs::create_dir_all(&dir).unwrap();

    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let browser = rt.block_on(async {
        let mut caps = serde_json::Map::new();
        let mut args = vec![
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            "--window-size=1100,800".into(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        args.extend(pin);
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({ "binary": CHROMIUM, "args": args }),
        );
        ClientBuilder::rustls()
            .unwrap()
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{driver_port}"))
            .await
            .expect("chromedriver session")
    });
    Some(Session {
        _demo: demo,
        _state: state,
        _driver: driver,
        _profile: profile,
        url,
        rt,
        steps: Some(Steps { browser, dir, n: 0 }),
    })
}

#[test]
fn demo_click_through_in_chromium() {
    click_through(&[], "browser-screenshots");
}

/// The same over HTTPS: the browser to the front and the front to pkb-edge (with its client
/// certificate, which pkb-edge trusts by name).
#[test]
fn demo_click_through_over_https_in_chromium() {
    click_through(&["--tls"], "browser-screenshots-https");
}

/// The same, with the front signing a Pomerium-style assertion and pkb-edge in jwt mode.
#[test]
fn jwt_demo_click_through_in_chromium() {
    click_through(&["--identity", "jwt"], "browser-screenshots-jwt");
}

fn click_through(extra: &[&str], screenshots: &str) {
    let Some(mut session) = start_session(extra, screenshots) else {
        return;
    };
    let url = session.url.clone();
    let mut s = session.steps.take().unwrap();
    session.rt.block_on(async {
        // The hospital's sign-on (the demo's front).
        s.browser.goto(&url).await.unwrap();
        s.expect_page("Sign in").await;
        s.shot("sign-in").await;
        s.click("#signin").await;

        // The EHR's patient list, through the proxy.
        s.expect_page("Patients").await;
        assert_eq!(s.text("#signed-in").await, "Signed in as dr.jones");
        s.shot("ehr-patients").await;
        s.click("#open-9990000018").await;

        // Not linked yet: offered linking.
        s.expect_page("Link your Patients Know Best account").await;
        s.shot("offered-linking").await;
        s.browser
            .find(Locator::LinkText("Link your PKB account"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();

        // PKB's consent page (the simulator).
        s.expect_page("Allow access to your PKB account?").await;
        let user_field = s.browser.find(Locator::Css("#pkb_user")).await.unwrap();
        user_field.clear().await.unwrap();
        user_field.send_keys("jones@pkb.example").await.unwrap();
        s.shot("pkb-consent").await;
        s.click("#allow").await;

        // Back through the callback to the launch, and into PKB for Ada Lovelace.
        s.expect_page("You are signed in to PKB").await;
        assert_eq!(s.text("#user").await, "jones@pkb.example");
        assert_eq!(s.text("#patient-name").await, "Ada Lovelace");
        assert_eq!(
            s.text("dd[data-context=contextNationalId]").await,
            "9990000018"
        );
        s.shot("in-pkb-ada").await;

        // Launch again, another patient: no linking this time.
        s.browser.goto(&url).await.unwrap();
        s.click("#open-9990000026").await;
        s.expect_page("You are signed in to PKB").await;
        assert_eq!(s.text("#patient-name").await, "Mary Seacole");
        s.shot("in-pkb-mary").await;

        s.browser.close().await.unwrap();
    });
}

#[test]
fn portal_demo_single_sign_on_both_ways_in_chromium() {
    portal_flow(&["--portal"], "browser-screenshots-portal");
}

/// The same with pkb-edge's listener on HTTPS: the `__Host-` session cookie over real TLS.
#[test]
fn portal_demo_over_https_in_chromium() {
    portal_flow(&["--portal", "--tls"], "browser-screenshots-portal-https");
}

fn portal_flow(extra: &[&str], screenshots: &str) {
    let Some(mut session) = start_session(extra, screenshots) else {
        return;
    };
    let url = session.url.clone();
    let mut s = session.steps.take().unwrap();
    session.rt.block_on(async {
        // The portal sends an unknown browser to NHS login (the simulator).
        s.browser.goto(&url).await.unwrap();
        s.expect_page("Sign in with NHS login").await;
        s.shot("nhs-login").await;
        s.click("#continue").await;

        // Back in the portal, signed in: pkb-edge told the portal who this is.
        s.expect_page("Patient portal").await;
        assert_eq!(s.text("#portal-nhs-number").await, "9990000018");
        let sub = s.text("#portal-user").await;
        assert!(!sub.is_empty() && sub != "(none)", "{sub}");
        s.shot("portal-signed-in").await;

        // Into PKB with NHS login: no second sign-in.
        s.click("#open-pkb").await;
        s.expect_page("Signed in to PKB with NHS login").await;
        assert_eq!(s.text("#nhs-number").await, "9990000018");
        assert_eq!(s.text("#pkb-path").await, "/patient/record");
        s.shot("pkb-via-nhs-login").await;

        // The portal session ends (as after 30 minutes idle); PKB's link brings the user back
        // signed in, silently, with no NHS login page on the way.
        s.browser
            .delete_cookie("__Host-pkb-edge-session")
            .await
            .unwrap();
        s.click("#back-to-portal").await;
        s.expect_page("Patient portal").await;
        assert_eq!(s.text("#portal-user").await, sub);
        assert_eq!(s.text("#portal-path").await, "/");
        let here = s.browser.current_url().await.unwrap();
        assert!(!here.as_str().contains("assertedLoginIdentity"), "{here}");
        s.shot("portal-from-pkb").await;

        // Sign out: the next visit goes to NHS login again.
        s.click("#sign-out").await;
        s.expect_page("You have signed out").await;
        s.browser.goto(&url).await.unwrap();
        s.expect_page("Sign in with NHS login").await;

        s.browser.close().await.unwrap();
    });
}
