//! The daemon binary as a process: the admin commands (`cli`), reload,
//! privilege dropping, bad input and a short soak, and upstream pools.

#[path = "../common/mod.rs"]
mod common;

mod bad_input;
mod cli;
mod privileges;
mod reload;
mod soak_short;
mod upstream_pools;
