//! Fuzzes the nginx mail auth_http params parser (MailAuthRequest::from_params).
//! The invariants are in `nginx_auth_fcgi::fuzz_api::check_auth_http_request`, shared with
//! `tests/fuzz_regressions.rs`, which replays this target's corpus on stable.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| nginx_auth_fcgi::fuzz_api::check_auth_http_request(data));
