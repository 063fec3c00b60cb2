//! The edge: the only code that sees Pingora. A short dispatcher (`proxy`), one handler per
//! reserved route (`routes`), NHS login as a layer around the proxy (`nhs`), the header rules
//! (`headers`), the error → status + page/JSON mapping (`reply`), the ops listener (`ops`) and
//! the service assembly (`service`), the limits on client connections (`connections`), and the
//! listener's TLS: handshake, certificate reload, HSTS, the redirect listener (`tls`).

pub mod connections;
pub mod headers;
pub mod nhs;
pub mod ops;
pub mod proxy;
pub mod reply;
pub mod routes;
pub mod service;
pub mod tls;
pub mod upstream;
