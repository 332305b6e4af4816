//! The decision in-process: mail auth_http, HTTP Basic/Digest, the policy
//! layer, SMTP relay policy, the verification cache, master users and
//! EXTERNAL. (The metrics are process-wide: `tests/metrics.rs` counts them
//! in a binary of its own.)

#[path = "../common/mod.rs"]
mod common;

mod http_auth;
mod http_policy;
mod mail_auth;
mod master_external;
mod smtp_policy;
mod verification_cache;
