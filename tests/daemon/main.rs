//! The daemon binary as a process: the admin commands (`cli`), reload,
//! privilege dropping, bad input and a short soak, upstream pools, the
//! password files' modes and app passwords (`files`), and the state in Redis
//! over TLS and behind Sentinel (`shared_redis`).

#[path = "../common/mod.rs"]
mod common;

mod bad_input;
mod cli;
mod files;
mod lookup_cache;
mod nonce_key;
mod privileges;
mod reload;
mod shared_redis;
mod soak_short;
mod upstream_pools;
