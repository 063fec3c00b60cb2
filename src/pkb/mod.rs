//! Talking to PKB: the HTTP client for its token and JSON APIs, and the builders for the URLs a
//! browser is sent to.

pub mod client;
pub mod urls;

pub use client::{PkbClient, PkbError, TokenResponse};
