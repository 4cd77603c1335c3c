//! The integration suite: one binary driving the real server over HTTP on
//! 127.0.0.1:0 with a temp data dir.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod attack;
mod auth;
mod backup;
mod bad_input;
mod bad_input_matrix;
mod bench_smoke;
mod check;
mod client;
mod common;
mod config;
mod contract;
mod faults;
mod fuzz_smoke;
mod groups;
mod leaks;
mod openapi;
mod outage;
mod postgres;
mod process;
mod properties;
mod read_cache;
mod rewrap;
mod tls;
