//! The decision in-process: mail auth_http, HTTP Basic/Digest, the policy
//! layer, SMTP relay policy, the verification cache, master users and
//! EXTERNAL, app passwords. (The metrics are process-wide: `tests/metrics.rs` counts them
//! in a binary of its own.)

#[path = "../common/mod.rs"]
mod common;

mod app_passwords;
mod digest_shared;
mod http_auth;
mod http_policy;
mod mail_auth;
mod master_external;
mod rehash;
mod smtp_policy;
mod verification_cache;

use nginx_auth_fcgi::fastcgi::Params;

/// CGI params: `base`, each of `extra` replacing a param of its name.
fn params_with(base: &[(&str, &str)], extra: &[(&str, &str)]) -> Params {
    let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = base
        .iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect();
    for (k, v) in extra {
        pairs.retain(|(n, _)| n != k.as_bytes());
        pairs.push((k.as_bytes().to_vec(), v.as_bytes().to_vec()));
    }
    Params::from_pairs(pairs)
}
