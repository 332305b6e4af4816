//! Transparent rehash in-process, through HTTP Basic with the verification
//! cache on: the audit line names the scheme queued, the stored hash
//! changes behind the login, and the next login verifies the new hash (the
//! cache keys on the stored hash, so the old entry cannot answer for it).

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use nginx_auth_fcgi::audit::AuditRecord;
use nginx_auth_fcgi::authenticator::{Authenticator, Policy};
use nginx_auth_fcgi::cache::{Cache, CachePolicy, CacheUse};
use nginx_auth_fcgi::http_auth::{HttpAuth, HttpAuthRequest, HttpOutcome};
use nginx_auth_fcgi::mech::Mechanism;
use nginx_auth_fcgi::passdb::rehash::{RehashPolicy, Rehasher};
use nginx_auth_fcgi::passdb::sqlite::Admin;
use nginx_auth_fcgi::passdb::AnyPassdb;
use nginx_auth_fcgi::scheme::{self, Scheme};
use nginx_auth_fcgi::upstream::Upstreams;

use crate::common::policy::base_policy;

fn stored(db: &std::path::Path, user: &str) -> String {
    use nginx_auth_fcgi::passdb::rehash::{SqliteStore, Store as _};
    SqliteStore::new(db).current(user).unwrap().unwrap()
}

async fn basic(auth: &Authenticator, http: &HttpAuth, user: &str, pw: &str) -> (bool, AuditRecord) {
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"));
    let header = format!("Basic {b64}");
    let params = crate::params_with(
        &[
            ("REQUEST_METHOD", "GET"),
            ("REQUEST_URI", "/private/"),
            ("REMOTE_ADDR", "198.51.100.2"),
            ("AUTH_REALM", "R"),
            ("AUTH_SCHEMES", "basic"),
        ],
        &[("HTTP_AUTHORIZATION", &header)],
    );
    let req = HttpAuthRequest::from_params(&params).unwrap();
    let d = auth.authenticate_http(&req, http).await;
    (
        matches!(d.outcome, HttpOutcome::Allow { .. }),
        d.audit.expect("an audit record"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_logins_queue_a_rehash_and_the_cache_never_serves_the_old_hash() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("users.db");
    let admin = Admin::open(&db).unwrap();
    admin
        .add("old", &scheme::hash(Scheme::Md5Crypt, b"old-pw").unwrap())
        .unwrap();
    admin.add("plain", "{PLAIN}plain-pw").unwrap();
    let uris = vec![format!("sqlite:{}", db.display())];
    let passdbs = vec![AnyPassdb::open(&uris[0], None).unwrap()];
    let policy =
        RehashPolicy::from_config(Some("SHA512-CRYPT:rounds=2000"), false, false, None, 1024)
            .unwrap()
            .unwrap();
    let rehasher = Rehasher::start(policy, None, &uris, &passdbs).unwrap();
    let auth = Authenticator::new(
        Policy {
            cache: Some(Arc::new(Cache::new(CachePolicy::default()))),
            ..base_policy([Mechanism::Plain], Upstreams::default())
        },
        passdbs,
    )
    .unwrap()
    .with_rehash(Some(rehasher));
    let http = HttpAuth::new();

    // A wrong password queues nothing.
    let (ok, a) = basic(&auth, &http, "old", "wrong").await;
    assert!(!ok && a.rehash.is_none(), "{a}");
    let (ok, a) = basic(&auth, &http, "old", "old-pw").await;
    assert!(ok, "{a}");
    assert_eq!(a.rehash, Some(Scheme::Sha512Crypt));
    assert!(a.to_string().contains(" rehash=SHA512-CRYPT"), "{a}");
    assert_eq!(a.cache, Some(CacheUse::Miss));
    let until = Instant::now() + Duration::from_secs(30);
    while !stored(&db, "old").starts_with("{SHA512-CRYPT}$6$rounds=2000$") {
        assert!(Instant::now() < until, "never rehashed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The next login checks the new hash (a miss: the old entry keyed on
    // the old hash), then the cache serves it; nothing more is queued.
    let (ok, a) = basic(&auth, &http, "old", "old-pw").await;
    assert!(ok, "{a}");
    assert_eq!((a.cache, a.rehash), (Some(CacheUse::Miss), None), "{a}");
    let (ok, a) = basic(&auth, &http, "old", "old-pw").await;
    assert_eq!((ok, a.cache), (true, Some(CacheUse::Hit)), "{a}");
    // {PLAIN} is left alone (CRAM-MD5, APOP and Digest need it).
    let (ok, a) = basic(&auth, &http, "plain", "plain-pw").await;
    assert!(ok && a.rehash.is_none(), "{a}");
    assert_eq!(stored(&db, "plain"), "{PLAIN}plain-pw");
}
