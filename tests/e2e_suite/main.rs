//! End to end: mail and HTTP clients through nginx with the shipped
//! configuration to the daemon binary and real backends (see
//! `common::e2e`), one module per area.

#[path = "../common/mod.rs"]
mod common;

mod app_passwords;
mod digest_pool;
mod directory;
mod http;
mod mail;
mod master;
mod outage;
mod rehash;
mod sql;
