//! Fuzzes a FastCGI connection: the record layer, the name-value pairs and conn::serve against a model.
//! The invariants are in `nginx_auth_fcgi::fuzz_api::check_fastcgi_records`, shared with
//! `tests/fuzz_regressions.rs`, which replays this target's corpus on stable.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| nginx_auth_fcgi::fuzz_api::check_fastcgi_records(data));
