//! The outbound HTTP client's common settings (PKB, NHS login): one timeout for connecting and
//! for the whole call, redirects never followed (a redirect from an API is an error, and
//! following one could send a credential elsewhere), and pkb-edge's user agent.

use std::time::Duration;

pub fn client_builder(timeout: Duration) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("pkb-edge/", env!("CARGO_PKG_VERSION")))
}
