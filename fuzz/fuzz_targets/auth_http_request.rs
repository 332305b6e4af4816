//! Fuzzes the nginx mail auth_http params parser (MailAuthRequest::from_params).
//! The invariants are in `tests/support/fuzz_oracles/auth_http_request.rs`, shared with
//! `tests/fuzz_regressions.rs`, which replays this target's corpus on stable.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/support/fuzz_oracles/auth_http_request.rs"]
mod oracle;

fuzz_target!(|data: &[u8]| oracle::check_auth_http_request(data));
