//! Fuzzes a FastCGI connection: the record layer, the name-value pairs and conn::serve against a model.
//! The invariants are in `tests/support/fuzz_oracles/fastcgi_records.rs`, shared with
//! `tests/fuzz_regressions.rs`, which replays this target's corpus on stable.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/support/fuzz_oracles/fastcgi_records.rs"]
mod oracle;

fuzz_target!(|data: &[u8]| oracle::check_fastcgi_records(data));
