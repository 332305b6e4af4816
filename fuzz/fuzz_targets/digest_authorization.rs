//! Fuzzes the HTTP Digest Authorization header parser.
//! The invariants are in `tests/support/fuzz_oracles/digest_authorization.rs`, shared with
//! `tests/fuzz_regressions.rs`, which replays this target's corpus on stable.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/support/fuzz_oracles/digest_authorization.rs"]
mod oracle;

fuzz_target!(|data: &[u8]| oracle::check_digest_authorization(data));
