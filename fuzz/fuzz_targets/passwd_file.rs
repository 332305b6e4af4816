//! Fuzzes the Dovecot passwd-file parser.
//! The invariants are in `tests/support/fuzz_oracles/passwd_file.rs`, shared with
//! `tests/fuzz_regressions.rs`, which replays this target's corpus on stable.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/support/fuzz_oracles/passwd_file.rs"]
mod oracle;

fuzz_target!(|data: &[u8]| oracle::check_passwd_file(data));
