//! Leaves: small pieces every layer may use, which import nothing else of pkb-edge.

pub mod clock;
pub mod cookies;
pub mod detached;
pub mod ec_keys;
pub mod fetched;
pub mod hash;
pub mod http;
pub mod limits;
pub mod patient;
pub mod public_keys;
pub mod random;
pub mod relative_path;
pub mod resolved;
pub mod rsa_keys;
pub mod same_origin;
pub mod secret;
