//! The credential lookup cache in process against a real PostgreSQL whose
//! log counts the passdb's queries (`log_statement = 'all'`), on a manual
//! clock: a cached record and a cached verification cost no query and no
//! hash; past the TTL the database is asked again; with the server killed a
//! user seen before is verified against the stale record (`cache=stale`,
//! counted in the metrics), a wrong password still fails, a user never seen
//! gets the temporary failure; past the stale TTL nobody logs in; restarted,
//! a password changed in the table takes effect within the TTL.

use std::sync::Arc;
use std::time::Duration;

use crate::common::policy::{base_policy, local_upstreams};
use crate::common::sql::{Kind, Server};
use crate::sql::{built_in, DigestSite, BUILT_IN_DB};
use nginx_auth_fcgi::audit::Outcome;
use nginx_auth_fcgi::authenticator::{Authenticator, Decision, Policy};
use nginx_auth_fcgi::cache::{Cache, CachePolicy, CacheUse};
use nginx_auth_fcgi::lookup_cache::{LookupCache, LookupPolicy};
use nginx_auth_fcgi::mech::Mechanism;
use nginx_auth_fcgi::metrics::METRICS;
use nginx_auth_fcgi::passdb::{AnyPassdb, PassdbOptions};
use nginx_auth_fcgi::throttle::Clock;

/// The bcrypt user of [`built_in`] (an expensive scheme: the verification
/// cache takes part) and a user this test never logs in before the outage.
const BLF: (&str, &str) = ("blf@example.org", "blf-pw");
const NEVER_SEEN: (&str, &str) = ("sha@example.org", "sha-pw");

use crate::common::policy::imap_login as login;

/// The passdb's lookups so far, from the server's statement log.
fn queries(server: &Server) -> usize {
    server
        .logs()
        .lines()
        .filter(|l| l.contains("execute") && l.contains("FROM users WHERE username"))
        .count()
}

fn metric(name: &str) -> u64 {
    let page = METRICS.render();
    let line = page
        .lines()
        .find(|l| l.starts_with(&format!("nginx_auth_fcgi_{name} ")))
        .unwrap_or_else(|| panic!("{name} missing:\n{page}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[track_caller]
fn expect(d: &Decision, outcome: Outcome, cache: Option<CacheUse>) {
    assert_eq!(
        (d.audit.outcome, d.audit.cache),
        (outcome, cache),
        "{}",
        d.audit
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_is_served_from_the_lookup_cache() {
    let mut server = logged_server().await;
    let (auth, clock) = cached(
        &server,
        Policy {
            cache: Some(Arc::new(Cache::new(CachePolicy::default()))),
            ..base_policy([Mechanism::Plain], local_upstreams())
        },
    );
    let (user, pw) = BLF;

    expect(
        &login(&auth, user, pw).await,
        Outcome::Ok,
        Some(CacheUse::Miss),
    );
    assert_eq!(queries(&server), 1);
    // A cached record and a cached verification: no query, no hash.
    expect(
        &login(&auth, user, pw).await,
        Outcome::Ok,
        Some(CacheUse::Hit),
    );
    expect(
        &login(&auth, user, pw).await,
        Outcome::Ok,
        Some(CacheUse::Hit),
    );
    assert_eq!(queries(&server), 1, "{}", server.logs());
    // A wrong password is checked against the cached record: no query.
    expect(
        &login(&auth, user, "wrong").await,
        Outcome::Fail,
        Some(CacheUse::Miss),
    );
    assert_eq!(queries(&server), 1);
    // Past the TTL the database is asked again.
    clock.advance(Duration::from_secs(61));
    expect(
        &login(&auth, user, pw).await,
        Outcome::Ok,
        Some(CacheUse::Hit),
    );
    assert_eq!(queries(&server), 2);

    // The server goes away; the record is past its TTL.
    server.kill();
    clock.advance(Duration::from_secs(61));
    let stale_before = metric("lookup_cache_stale_total");
    let d = login(&auth, user, pw).await;
    expect(&d, Outcome::Ok, Some(CacheUse::Stale));
    assert!(d.audit.to_string().contains(" cache=stale "), "{}", d.audit);
    let d = login(&auth, user, "wrong").await;
    expect(&d, Outcome::Fail, Some(CacheUse::Stale));
    assert_eq!(d.audit.reason, "password-mismatch", "{}", d.audit);
    assert_eq!(metric("lookup_cache_stale_total"), stale_before + 2);
    // Never seen: the temporary failure, as without a cache.
    let d = login(&auth, NEVER_SEEN.0, NEVER_SEEN.1).await;
    expect(&d, Outcome::TempFail, None);
    // Past the stale TTL (an hour after the fetch) the seen user too.
    clock.advance(Duration::from_secs(3600));
    expect(&login(&auth, user, pw).await, Outcome::TempFail, None);

    // Back: fresh lookups again.
    server.restart();
    let before = queries(&server);
    expect(
        &login(&auth, NEVER_SEEN.0, NEVER_SEEN.1).await,
        Outcome::Ok,
        Some(CacheUse::Miss),
    );
    expect(
        &login(&auth, user, pw).await,
        Outcome::Ok,
        Some(CacheUse::Hit),
    );
    assert_eq!(queries(&server), before + 2);
    // A password changed in the table takes effect within the TTL.
    server
        .execute(
            Some(BUILT_IN_DB),
            &[format!(
                "UPDATE users SET password = '{{PLAIN}}changed' WHERE username = '{user}'"
            )],
        )
        .await;
    expect(
        &login(&auth, user, pw).await,
        Outcome::Ok,
        Some(CacheUse::Hit),
    );
    clock.advance(Duration::from_secs(61));
    // ({PLAIN} is cheap: the verification cache does not take part.)
    expect(&login(&auth, user, pw).await, Outcome::Fail, None);
    expect(&login(&auth, user, "changed").await, Outcome::Ok, None);
    assert_eq!(queries(&server), before + 3);
}

/// `policy` over `server`'s passdb (short timeouts) with the lookup cache
/// on a manual clock.
fn cached(server: &Server, policy: Policy) -> (Authenticator, Clock) {
    let db = AnyPassdb::open_with(
        &server.uri(BUILT_IN_DB, "connect_timeout=1&query_timeout=2"),
        &PassdbOptions::default(),
    )
    .unwrap();
    let clock = Clock::manual(1_700_000_000_000);
    let auth = Authenticator::new(policy, vec![db])
        .unwrap()
        .with_lookup_cache(Some(Arc::new(LookupCache::new(
            LookupPolicy::default(),
            clock.clone(),
        ))));
    (auth, clock)
}

/// Starts PostgreSQL with the users of [`built_in`] and its statement log on.
async fn logged_server() -> Server {
    let server = built_in(Kind::Postgres).await;
    server
        .execute(
            None,
            &[format!(
                "ALTER DATABASE {BUILT_IN_DB} SET log_statement = 'all'"
            )],
        )
        .await;
    server
}

/// HTTP Digest (MD5) reads the same cached record: the second login of a
/// plaintext user costs no query, and with PostgreSQL killed a Digest login
/// is served stale like a Basic one (no live HA1 query stops it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digest_is_served_from_the_cached_record_and_stale() {
    use base64::Engine as _;
    let mut server = logged_server().await;
    let (auth, clock) = cached(
        &server,
        Policy {
            timeout: Duration::from_secs(5),
            ..base_policy([Mechanism::Plain], local_upstreams())
        },
    );
    let site = DigestSite::new(nginx_auth_fcgi::service::Service::new(auth, vec![])).await;
    let user = "alice@example.org";
    let ha1 = DigestSite::ha1(user, "alice-pw");
    let ok = site.respond(Some(&site.answer(user, &ha1, 1))).await;
    assert!(ok.starts_with("Status: 200"), "{ok}");
    let asked = queries(&server);
    let ok = site.respond(Some(&site.answer(user, &ha1, 2))).await;
    assert!(ok.starts_with("Status: 200"), "{ok}");
    assert_eq!(queries(&server), asked, "the cached record answered");

    server.kill();
    clock.advance(Duration::from_secs(61));
    let stale = site.respond(Some(&site.answer(user, &ha1, 3))).await;
    assert!(stale.starts_with("Status: 200"), "Digest, stale: {stale}");
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:alice-pw"))
    );
    let stale = site.respond(Some(&basic)).await;
    assert!(stale.starts_with("Status: 200"), "Basic, stale: {stale}");
}

/// With `upgrade_scheme` on and PostgreSQL down, a login answered by a
/// stale record queues no rehash (its worker could neither read nor write,
/// and used to drop the record after failing): the user keeps logging in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_login_queues_no_rehash() {
    use nginx_auth_fcgi::passdb::rehash::{RehashPolicy, Rehasher};
    let mut server = built_in(Kind::Postgres).await;
    let uris = vec![server.uri(BUILT_IN_DB, "connect_timeout=1&query_timeout=2")];
    let passdbs = vec![AnyPassdb::open_with(&uris[0], &PassdbOptions::default()).unwrap()];
    let policy =
        RehashPolicy::from_config(Some("SHA512-CRYPT:rounds=2000"), false, true, None, 1024)
            .unwrap()
            .unwrap();
    let rehasher = Rehasher::start(policy, None, &uris, &passdbs).unwrap();
    let clock = Clock::manual(1_700_000_000_000);
    let cache = Arc::new(LookupCache::new(LookupPolicy::default(), clock.clone()));
    let auth = Authenticator::new(base_policy([Mechanism::Plain], local_upstreams()), passdbs)
        .unwrap()
        .with_rehash(Some(rehasher))
        .with_lookup_cache(Some(Arc::clone(&cache)));
    let (user, pw) = ("alice@example.org", "alice-pw");
    // A wrong password caches the record without queueing a rehash.
    expect(&login(&auth, user, "wrong").await, Outcome::Fail, None);
    assert_eq!(cache.len(), 1);
    server.kill();
    clock.advance(Duration::from_secs(61));
    for round in 0..3 {
        let d = login(&auth, user, pw).await;
        expect(&d, Outcome::Ok, Some(CacheUse::Stale));
        assert_eq!(d.audit.rehash, None, "round {round}: {}", d.audit);
        assert_eq!(cache.len(), 1, "round {round}: the record stays");
    }
}
