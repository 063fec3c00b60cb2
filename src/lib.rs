//! pkb-edge: an edge proxy that launches a hospital system's users into Patients Know Best.
//! See `docs/ARCHITECTURE.md` for the layers and what each may import, `DESIGN.md` in the
//! project's shared folder for the contract, and README.md for how to run it.

pub mod cli;
pub mod config;
pub mod core;
pub mod decorate;
pub mod demo;
pub mod edge;
pub mod identity;
pub mod launch;
pub mod nhs_login;
pub mod observe;
pub mod pages;
pub mod pairing;
pub mod pkb;
pub mod sim;
pub mod store;
pub mod tls;
pub mod tokens;
