//! The verification cache inside the process, on paused tokio time: a real
//! passwd-file with SHA512-CRYPT and bcrypt users, and the audit record's
//! `cache=` field telling hits from misses.

use std::sync::Arc;
use std::time::Duration;

use crate::common::policy::{base_policy, imap_login};
use nginx_auth_fcgi::audit::Outcome;
use nginx_auth_fcgi::authenticator::{Authenticator, Decision, Policy};
use nginx_auth_fcgi::cache::{Cache, CachePolicy, CacheUse};
use nginx_auth_fcgi::mech::Mechanism;
use nginx_auth_fcgi::passdb::AnyPassdb;
use nginx_auth_fcgi::scheme::{self, Scheme};
use nginx_auth_fcgi::upstream::Upstreams;

struct Fixture {
    dir: tempfile::TempDir,
    auth: Authenticator,
}

impl Fixture {
    /// A login of `user` with `pw` must end in `outcome`, with `cache` the
    /// cache's part in it.
    async fn expect(&self, user: &str, pw: &str, outcome: Outcome, cache: Option<&str>) {
        assert_outcome(&self.login(user, pw).await, outcome, cache);
    }

    /// Replaces the passwd-file the way an admin tool does (new inode).
    fn write_users(&self, text: &str) {
        let tmp = self.dir.path().join("users.new");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.dir.path().join("users")).unwrap();
    }

    /// Logs in until the answer is no longer `before` (the passdb's watcher
    /// reloads a changed file within about a second; until then the old file
    /// answers), and returns the first other answer. Real time: the watcher
    /// is a thread, paused tokio time does not move it.
    async fn login_once_changed(
        &self,
        user: &str,
        pass: &str,
        before: (Outcome, Option<&str>),
    ) -> Decision {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let d = self.login(user, pass).await;
            if (d.audit.outcome, d.audit.cache.map(CacheUse::as_str)) != before {
                return d;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the changed passwd-file was never loaded"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    async fn login(&self, user: &str, pass: &str) -> Decision {
        imap_login(&self.auth, user, pass).await
    }
}

fn users(crypt_pw: &str, extra: &str) -> String {
    let crypt = scheme::hash(Scheme::Sha512Crypt, crypt_pw.as_bytes()).unwrap();
    let bcrypt = scheme::hash(Scheme::BlfCrypt, b"bcrypt-pw").unwrap();
    format!("plain:{{PLAIN}}plain-pw::::::\ncrypt:{crypt}::::::{extra}\nbcrypt:{bcrypt}::::::\n")
}

fn fixture(cache: CachePolicy) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let passwd = dir.path().join("users");
    std::fs::write(&passwd, users("crypt-pw", "")).unwrap();
    let db = AnyPassdb::open(&format!("passwd-file:{}", passwd.display()), None).unwrap();
    let mut upstreams = Upstreams::default();
    upstreams.add("imap=127.0.0.1:1143").unwrap();
    let policy = Policy {
        cache: Some(Arc::new(Cache::new(cache))),
        ..base_policy([Mechanism::Plain], upstreams)
    };
    Fixture {
        dir,
        auth: Authenticator::new(policy, vec![db]).unwrap(),
    }
}

#[track_caller]
fn assert_outcome(d: &Decision, outcome: Outcome, cache: Option<&str>) {
    assert_eq!(
        (d.audit.outcome, d.audit.cache.map(CacheUse::as_str)),
        (outcome, cache),
        "{}",
        d.audit
    );
}

#[tokio::test(start_paused = true)]
async fn expensive_schemes_are_verified_once_per_ttl() {
    let f = fixture(CachePolicy::default());
    for user in ["crypt", "bcrypt"] {
        let pw = format!("{user}-pw");
        f.expect(user, &pw, Outcome::Ok, Some("miss")).await;
        f.expect(user, &pw, Outcome::Ok, Some("hit")).await;
        f.expect(user, &pw, Outcome::Ok, Some("hit")).await;
        // A wrong password is never answered from a positive entry.
        f.expect(user, "wrong", Outcome::Fail, Some("miss")).await;
    }
    // Cheap schemes do not use the cache at all.
    f.expect("plain", "plain-pw", Outcome::Ok, None).await;
    tokio::time::advance(Duration::from_secs(301)).await;
    f.expect("crypt", "crypt-pw", Outcome::Ok, Some("miss"))
        .await;
    f.expect("crypt", "crypt-pw", Outcome::Ok, Some("hit"))
        .await;
}

#[tokio::test(start_paused = true)]
async fn a_changed_password_or_disabled_account_takes_effect_at_once() {
    let f = fixture(CachePolicy::default());
    f.login("crypt", "crypt-pw").await;
    f.expect("crypt", "crypt-pw", Outcome::Ok, Some("hit"))
        .await;
    f.write_users(&users("new-pw", ""));
    // Until the new file is loaded the old hash answers, from the cache.
    let d = f
        .login_once_changed("crypt", "crypt-pw", (Outcome::Ok, Some("hit")))
        .await;
    assert_outcome(&d, Outcome::Fail, Some("miss"));
    assert_eq!(d.audit.reason, "password-mismatch");
    f.expect("crypt", "new-pw", Outcome::Ok, Some("miss")).await;
    f.expect("crypt", "new-pw", Outcome::Ok, Some("hit")).await;
    // Disabled (nologin): refused before the cache is consulted.
    f.write_users(&users("new-pw", "nologin"));
    let d = f
        .login_once_changed("crypt", "new-pw", (Outcome::Ok, Some("hit")))
        .await;
    assert_outcome(&d, Outcome::Fail, None);
    assert_eq!(d.audit.reason, "disabled");
}

#[tokio::test(start_paused = true)]
async fn negative_entries_only_when_configured() {
    let f = fixture(CachePolicy::default());
    f.expect("bcrypt", "stale", Outcome::Fail, Some("miss"))
        .await;
    f.expect("bcrypt", "stale", Outcome::Fail, Some("miss"))
        .await;
    let f = fixture(CachePolicy {
        negative_ttl: Duration::from_secs(60),
        ..CachePolicy::default()
    });
    f.expect("bcrypt", "stale", Outcome::Fail, Some("miss"))
        .await;
    let d = f.login("bcrypt", "stale").await;
    assert_outcome(&d, Outcome::Fail, Some("negative-hit"));
    assert_eq!(d.audit.reason, "password-mismatch");
    f.expect("bcrypt", "bcrypt-pw", Outcome::Ok, Some("miss"))
        .await;
}
