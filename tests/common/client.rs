//! HTTP clients as the tests use them (redirects not followed), and reading their answers.

use axum::http::HeaderMap;

use super::USER_HEADER;

/// An HTTP client that does not follow redirects.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// A client like `client()`, connecting from a chosen loopback address (to be a trusted or
/// untrusted peer).
pub fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .local_address(ip.parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap()
}

/// `POST {prefix}/unpair` as `user`, sent the way the site's own page sends it (same-origin).
pub async fn unpair_as(url: String, user: &str) -> reqwest::Response {
    client()
        .post(url)
        .header(USER_HEADER, user)
        .header("sec-fetch-site", "same-origin")
        .send()
        .await
        .unwrap()
}

/// What the echo upstream received: the request URI and its headers, in order.
pub async fn upstream_saw(r: reqwest::Response) -> (String, Vec<(String, String)>) {
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    let headers = body["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p[0].as_str().unwrap().to_string(),
                p[1].as_str().unwrap().to_string(),
            )
        })
        .collect();
    (body["uri"].as_str().unwrap().to_string(), headers)
}

/// A header's value as text.
pub fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// The ops listener's `/metrics`, as text.
pub async fn ops_metrics(ops_port: u16) -> String {
    client()
        .get(format!("http://127.0.0.1:{ops_port}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of one series (`name{labels}` exactly as Prometheus prints it) in `/metrics` text.
pub fn series_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}
