//! pkb-edge: an edge proxy that launches a hospital system's users into Patients Know Best.
//! See `DESIGN.md` in the project's shared folder for the contract; README.md for how to run it.

pub mod admin;
pub mod audit;
pub mod clock;
pub mod config;
pub mod decorate;
pub mod demo;
pub mod identity;
pub mod launch;
pub mod limits;
pub mod nhs_login;
pub mod ops;
pub mod pages;
pub mod pairing;
pub mod patient;
pub mod pkb;
pub mod proxy;
pub mod relative_path;
pub mod reply;
pub mod secret;
pub mod service;
pub mod sim;
pub mod store;
pub mod tokens;
