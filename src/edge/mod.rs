//! The edge: the only code that sees Pingora. A short dispatcher, the reserved routes, the
//! header rules, the error → status + page/JSON mapping, the ops listener and the service
//! assembly.

pub mod ops;
pub mod proxy;
pub mod reply;
pub mod service;
