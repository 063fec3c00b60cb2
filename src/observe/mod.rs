//! What pkb-edge tells its operators: Prometheus metrics and the audit log. No Pingora types.

pub mod audit;
pub mod metrics;
