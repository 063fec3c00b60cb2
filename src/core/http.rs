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

/// The largest document `get_document` reads (discovery, key sets, a PEM key).
const MAX_DOCUMENT_BYTES: usize = 1 << 20;

/// `GET url` with `Accept: accept`, the body of a 2xx answer; anything else is an error that
/// starts with `what` (the document's name in log lines and errors).
pub async fn get_document(
    client: &reqwest::Client,
    url: &str,
    accept: &str,
    what: &str,
) -> Result<bytes::Bytes, String> {
    let r = client
        .get(url)
        .header(reqwest::header::ACCEPT, accept)
        .send()
        .await
        .map_err(|e| format!("{what}: {e}"))?;
    if !r.status().is_success() {
        return Err(format!("{what}: HTTP {}", r.status().as_u16()));
    }
    if r.content_length()
        .is_some_and(|n| n > MAX_DOCUMENT_BYTES as u64)
    {
        return Err(format!("{what}: larger than {MAX_DOCUMENT_BYTES} bytes"));
    }
    let body = r.bytes().await.map_err(|e| format!("{what}: {e}"))?;
    if body.len() > MAX_DOCUMENT_BYTES {
        return Err(format!("{what}: larger than {MAX_DOCUMENT_BYTES} bytes"));
    }
    Ok(body)
}
