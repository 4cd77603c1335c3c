//! secretd: a self-hosted secret server implementing TrueFoundry's Generic
//! Secret Store contract. See ARCHITECTURE.md for the map.
//!
//! Dependencies point one way: `http` -> `service` -> `store` / `crypto`;
//! `path` and `error` are shared vocabulary.

pub mod access_log;
pub mod audit;
pub mod auth;
pub mod authz;
pub mod backup;
pub mod bootstrap;
pub mod check;
pub mod cli;
pub mod client;
pub mod config;
pub mod crypto;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod metrics;
pub mod path;
pub mod rewrap;
pub mod service;
pub mod store;
pub mod tls;
pub mod wipe;
