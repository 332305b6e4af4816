//! Fuzzes the Dovecot passwd-file parser.
//! The invariants are in `nginx_auth_fcgi::fuzz_api::check_passwd_file`, shared with
//! `tests/fuzz_regressions.rs`, which replays this target's corpus on stable.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| nginx_auth_fcgi::fuzz_api::check_passwd_file(data));
