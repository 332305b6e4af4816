//! Brute-force throttling inside the process, on paused tokio time: CGI
//! params as nginx sends them → `Authenticator` (with a real passwd-file) →
//! the reply and the audit record. No sleeps: `tokio::time::advance` moves
//! the throttle's clock.

use std::sync::Arc;

use crate::{authenticator, capture_logs, guess, log_lines, login, login_attempt};
use std::time::Duration;

use nginx_auth_fcgi::audit::{Outcome, ThrottleAction};
use nginx_auth_fcgi::auth_http::MailAuthResponse;
use nginx_auth_fcgi::authenticator::{Authenticator, Decision};
use nginx_auth_fcgi::passdb::AnyPassdb;
use nginx_auth_fcgi::throttle::{Clock, Throttle, ThrottlePolicy};

struct Fixture {
    _dir: tempfile::TempDir,
    auth: Authenticator,
}

fn policy() -> ThrottlePolicy {
    ThrottlePolicy {
        trusted: vec!["192.0.2.0/24".parse().unwrap()],
        ..crate::policy()
    }
}

fn fixture(throttle: Arc<Throttle>) -> Fixture {
    capture_logs();
    let dir = tempfile::tempdir().unwrap();
    let passwd = dir.path().join("users");
    let mut users = String::from("alice:{PLAIN}alice-pw::::::\nbob:{PLAIN}bob-pw::::::\n");
    for i in 0..30 {
        users.push_str(&format!("user{i}:{{PLAIN}}pw{i}::::::\n"));
    }
    std::fs::write(&passwd, users).unwrap();
    let db = AnyPassdb::open(&format!("passwd-file:{}", passwd.display()), None).unwrap();
    let auth = authenticator(vec![db], Some(throttle));
    Fixture { _dir: dir, auth }
}

fn throttle(p: ThrottlePolicy) -> Arc<Throttle> {
    Arc::new(Throttle::in_memory(p, Clock::system()))
}

fn wait_of(d: &Decision) -> Option<u32> {
    match &d.response {
        MailAuthResponse::Fail(f) => f.wait,
        MailAuthResponse::Ok { .. } => panic!("expected a failure: {}", d.audit),
    }
}

#[track_caller]
fn assert_ok(d: &Decision) {
    assert_eq!(d.audit.outcome, Outcome::Ok, "{}", d.audit);
}

#[track_caller]
fn assert_blocked(d: &Decision, scope: &str) {
    assert_eq!(d.audit.outcome, Outcome::Fail, "{}", d.audit);
    assert_eq!(d.audit.reason, format!("blocked-{scope}"), "{}", d.audit);
    assert_eq!(
        d.audit.throttle,
        Some(ThrottleAction::Blocked),
        "{}",
        d.audit
    );
    assert_eq!(d.audit.passdb, "-", "the passdb must not be asked");
    let MailAuthResponse::Fail(f) = &d.response else {
        unreachable!()
    };
    assert_eq!(
        f.message(),
        "Invalid login or password",
        "same text as a wrong password"
    );
    assert_eq!(f.wait, None, "blocked: no Auth-Wait, nginx closes at once");
}

#[tokio::test(start_paused = true)]
async fn guessing_from_one_network_is_blocked_while_the_user_logs_in_elsewhere() {
    let f = fixture(throttle(policy()));
    let attacker = "203.0.113.10";
    // Each guess on a fresh connection: the per-connection schedule alone
    // would answer 1 s every time; the throttle makes the wait grow.
    let mut waits = Vec::new();
    for i in 0..5 {
        let d = f.try_login("alice", &format!("guess{i}"), attacker).await;
        assert_eq!(d.audit.outcome, Outcome::Fail, "{}", d.audit);
        assert_eq!(d.audit.reason, "password-mismatch");
        waits.push(wait_of(&d));
    }
    assert_eq!(waits, [Some(1), Some(2), Some(4), Some(8), Some(16)]);
    assert_eq!(log_lines(&format!("blocked ip {attacker} user alice")), 1);

    // Now even the right password from there is refused without a lookup.
    for _ in 0..3 {
        let d = f.try_login("alice", "alice-pw", attacker).await;
        assert_blocked(&d, "ip-user");
    }
    // Logged once, not per request.
    assert_eq!(log_lines(&format!("blocked ip {attacker} user alice")), 1);

    // The real user, from home: fine.
    assert_ok(&f.try_login("alice", "alice-pw", "198.51.100.20").await);
    // Another user behind the attacker's address: fine (only the pair is blocked).
    assert_ok(&f.try_login("bob", "bob-pw", attacker).await);
    // A typo by the real user is answered slowly (the per-user count is
    // high) but never blocked.
    let d = f.try_login("alice", "typo", "198.51.100.20").await;
    assert_eq!(d.audit.reason, "password-mismatch", "{}", d.audit);
    assert_eq!(wait_of(&d), Some(30));
    assert_ok(&f.try_login("alice", "alice-pw", "198.51.100.20").await);
}

#[tokio::test(start_paused = true)]
async fn the_connection_schedule_still_closes_after_max_attempts() {
    let f = fixture(throttle(policy()));
    let d = f
        .auth
        .authenticate(&login_attempt("alice", "x", "203.0.113.11", 10))
        .await;
    assert_eq!(wait_of(&d), None, "attempt 10: nginx must close");
}

#[tokio::test(start_paused = true)]
async fn spraying_many_users_blocks_the_network() {
    let f = fixture(throttle(policy()));
    let sprayer = "203.0.113.20";
    for i in 0..20 {
        let d = f
            .try_login(&format!("user{i}"), "Summer2026!", sprayer)
            .await;
        assert_eq!(d.audit.reason, "password-mismatch", "{}", d.audit);
    }
    assert_eq!(log_lines(&format!("blocked ip {sprayer} for 900 s")), 1);
    assert_blocked(&f.try_login("user25", "pw25", sprayer).await, "ip");
    assert_ok(&f.try_login("user25", "pw25", "203.0.113.21").await);
}

#[tokio::test(start_paused = true)]
async fn ipv6_clients_are_counted_per_64() {
    let f = fixture(throttle(policy()));
    for i in 0..5 {
        // A different address of the same /64 each time.
        let ip = format!("2001:db8:7:7::{:x}", i + 1);
        f.try_login("alice", &guess(), &ip).await;
    }
    assert_blocked(
        &f.try_login("alice", "alice-pw", "2001:db8:7:7:ffff::1")
            .await,
        "ip-user",
    );
    assert_ok(&f.try_login("alice", "alice-pw", "2001:db8:7:8::1").await);
}

#[tokio::test(start_paused = true)]
async fn a_block_expires_and_the_unblock_is_logged_once() {
    let f = fixture(throttle(policy()));
    let ip = "203.0.113.30";
    for _ in 0..5 {
        f.try_login("alice", &guess(), ip).await;
    }
    assert_blocked(&f.try_login("alice", "alice-pw", ip).await, "ip-user");
    tokio::time::advance(Duration::from_secs(899)).await;
    assert_blocked(&f.try_login("alice", "alice-pw", ip).await, "ip-user");
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_ok(&f.try_login("alice", "alice-pw", ip).await);
    assert_ok(&f.try_login("alice", "alice-pw", ip).await);
    assert_eq!(log_lines(&format!("unblocked ip {ip} user alice")), 1);
}

#[tokio::test(start_paused = true)]
async fn old_failures_slide_out_of_the_window() {
    let f = fixture(throttle(policy()));
    let ip = "203.0.113.40";
    for _ in 0..4 {
        f.try_login("alice", &guess(), ip).await;
    }
    // Two windows later the four are forgotten: four more do not block.
    tokio::time::advance(Duration::from_secs(1200)).await;
    for _ in 0..4 {
        let d = f.try_login("alice", &guess(), ip).await;
        assert_eq!(d.audit.reason, "password-mismatch", "{}", d.audit);
    }
    assert_ok(&f.try_login("alice", "alice-pw", ip).await);
}

#[tokio::test(start_paused = true)]
async fn a_success_forgets_that_users_failures_from_that_network() {
    let f = fixture(throttle(policy()));
    let ip = "203.0.113.50";
    for _ in 0..4 {
        f.try_login("alice", "typo", ip).await;
    }
    assert_ok(&f.try_login("alice", "alice-pw", ip).await);
    for _ in 0..4 {
        let d = f.try_login("alice", "typo", ip).await;
        assert_eq!(d.audit.reason, "password-mismatch", "{}", d.audit);
    }
    assert_ok(&f.try_login("alice", "alice-pw", ip).await);
}

#[tokio::test(start_paused = true)]
async fn trusted_networks_are_exempt() {
    let f = fixture(throttle(policy()));
    for _ in 0..30 {
        let d = f.try_login("alice", &guess(), "192.0.2.7").await;
        assert_eq!(d.audit.reason, "password-mismatch", "{}", d.audit);
        // Only the per-connection schedule applies.
        assert_eq!(wait_of(&d), Some(1));
    }
    assert_ok(&f.try_login("alice", "alice-pw", "192.0.2.7").await);
}

#[tokio::test(start_paused = true)]
async fn temporary_failures_are_not_counted() {
    capture_logs();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("users.db");
    let admin = nginx_auth_fcgi::passdb::sqlite::Admin::open(&path).unwrap();
    admin.add("alice", "{PLAIN}alice-pw").unwrap();
    drop(admin);
    let db = AnyPassdb::open(&format!("sqlite:{}", path.display()), None).unwrap();
    let auth = authenticator(vec![db], Some(throttle(policy())));
    let ip = "203.0.113.60";
    assert_ok(&auth.authenticate(&login("alice", "alice-pw", ip)).await);
    // The database breaks: every answer is a temporary failure.
    std::fs::write(&path, vec![0x55u8; 8192]).unwrap();
    for _ in 0..10 {
        let d = auth.authenticate(&login("alice", &guess(), ip)).await;
        assert_eq!(d.audit.outcome, Outcome::TempFail, "{}", d.audit);
    }
    assert_eq!(log_lines(&format!("blocked ip {ip}")), 0);
    drop(dir);
}

#[tokio::test(start_paused = true)]
async fn two_authenticators_sharing_one_in_memory_throttle_enforce_one_limit() {
    let shared = throttle(policy());
    let a = fixture(shared.clone());
    let b = fixture(shared);
    let ip = "203.0.113.70";
    for i in 0..5 {
        let f = if i % 2 == 0 { &a } else { &b };
        f.try_login("alice", &guess(), ip).await;
    }
    assert_blocked(&a.try_login("alice", "alice-pw", ip).await, "ip-user");
    assert_blocked(&b.try_login("alice", "alice-pw", ip).await, "ip-user");
    assert_ok(&b.try_login("alice", "alice-pw", "198.51.100.70").await);
}

// ---------------------------------------------------------------- the model
// Issue 14's table, with the DEFAULT settings and 300 {PLAIN} users.

/// 300 users `u0`…`u299` with password `pw-N`, the default throttle.
fn crowd() -> Fixture {
    capture_logs();
    let dir = tempfile::tempdir().unwrap();
    let passwd = dir.path().join("users");
    let users: String = (0..300)
        .map(|i| format!("u{i}:{{PLAIN}}pw-{i}::::::\n"))
        .collect();
    std::fs::write(&passwd, users).unwrap();
    let db = AnyPassdb::open(&format!("passwd-file:{}", passwd.display()), None).unwrap();
    let auth = authenticator(vec![db], Some(throttle(ThrottlePolicy::default())));
    Fixture { _dir: dir, auth }
}

impl Fixture {
    async fn try_login(&self, user: &str, pass: &str, ip: &str) -> Decision {
        self.auth.authenticate(&login(user, pass, ip)).await
    }
}

#[tokio::test(start_paused = true)]
async fn table_webmail_on_the_same_host_is_never_locked_out() {
    let f = crowd();
    for i in 0..300 {
        f.try_login(&format!("u{}", i % 100), &guess(), "127.0.0.1")
            .await;
    }
    assert_ok(&f.try_login("u7", "pw-7", "127.0.0.1").await);
    assert_ok(&f.try_login("u7", "pw-7", "::1").await);
}

#[tokio::test(start_paused = true)]
async fn table_a_busy_nat_gets_room_from_its_successful_logins() {
    let f = crowd();
    let nat = "198.51.100.20";
    for i in 0..200 {
        assert_ok(&f.try_login(&format!("u{i}"), &format!("pw-{i}"), nat).await);
    }
    for i in 0..60 {
        let d = f.try_login(&format!("u{}", i % 30), &guess(), nat).await;
        assert_eq!(d.audit.reason, "password-mismatch", "{}", d.audit);
    }
    assert_ok(&f.try_login("u250", "pw-250", nat).await);
    assert_eq!(log_lines(&format!("blocked ip {nat} ")), 0);
}

#[tokio::test(start_paused = true)]
async fn table_a_stale_password_on_a_phone_counts_once() {
    let f = crowd();
    let phone = "198.51.100.21";
    for _ in 0..30 {
        let d = f.try_login("u3", "the-old-password", phone).await;
        assert_eq!(d.audit.reason, "password-mismatch", "{}", d.audit);
    }
    assert_ok(&f.try_login("u3", "pw-3", phone).await);
}

#[tokio::test(start_paused = true)]
async fn table_a_sprayer_without_success_is_blocked_at_the_base_threshold() {
    let f = crowd();
    let sprayer = "203.0.113.30";
    for i in 0..60 {
        f.try_login(&format!("u{i}"), &guess(), sprayer).await;
    }
    assert_blocked(&f.try_login("u100", "pw-100", sprayer).await, "ip");
    assert_eq!(
        log_lines(&format!("blocked ip {sprayer} for 900 s after 50 failures")),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn table_a_guesser_blocks_only_the_pair() {
    let f = crowd();
    let guesser = "203.0.113.31";
    for _ in 0..30 {
        f.try_login("u5", &guess(), guesser).await;
    }
    assert_blocked(&f.try_login("u5", "pw-5", guesser).await, "ip-user");
    assert_ok(&f.try_login("u5", "pw-5", "198.51.100.31").await);
    // Other users from the guesser's address are not blocked.
    assert_ok(&f.try_login("u6", "pw-6", guesser).await);
}

#[tokio::test(start_paused = true)]
async fn toleration_counts_distinct_users_not_logins() {
    // One valid account logging in again and again buys almost nothing.
    let f = crowd();
    let attacker = "203.0.113.32";
    for _ in 0..200 {
        assert_ok(&f.try_login("u1", "pw-1", attacker).await);
    }
    for i in 0..60 {
        f.try_login(&format!("u{}", 100 + i), &guess(), attacker)
            .await;
    }
    // 50 + 10 x log2(2) = 60.
    assert_blocked(&f.try_login("u1", "pw-1", attacker).await, "ip");
    assert_eq!(
        log_lines(&format!("blocked ip {attacker} for 900 s after 60 failures in 600 s (threshold 60, raised by 1 users")),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn a_known_network_spares_the_owner_the_delay_of_a_distributed_attack() {
    let f = crowd();
    let home = "198.51.100.40";
    assert_ok(&f.try_login("u9", "pw-9", home).await);
    // A distributed attack on u9: one guess from each of 40 addresses.
    for i in 0..40 {
        f.try_login("u9", &guess(), &format!("203.0.113.{}", 100 + i))
            .await;
    }
    // The owner mistypes at home: the per-connection wait only (1 s), not
    // the delay the attack earned the name elsewhere.
    let d = f.try_login("u9", "typo", home).await;
    assert_eq!(wait_of(&d), Some(1), "{}", d.audit);
    assert_ok(&f.try_login("u9", "pw-9", home).await);
    // From an unknown network the attack's delay applies.
    let d = f.try_login("u9", "typo", "198.51.100.41").await;
    assert_eq!(wait_of(&d), Some(30), "{}", d.audit);
    // The network stays known for 30 days, not 31.
    tokio::time::advance(Duration::from_secs(31 * 86_400)).await;
    for i in 0..40 {
        f.try_login("u9", &guess(), &format!("203.0.113.{}", 100 + i))
            .await;
    }
    let d = f.try_login("u9", "typo-2", home).await;
    assert_eq!(wait_of(&d), Some(30), "{}", d.audit);
}

#[tokio::test(start_paused = true)]
async fn the_admin_sees_why_and_lifts_a_block() {
    let f = crowd();
    let guesser: std::net::IpAddr = "203.0.113.50".parse().unwrap();
    for _ in 0..10 {
        f.try_login("u4", &guess(), "203.0.113.50").await;
    }
    let t = f.auth.policy().throttle.as_deref().unwrap();
    let shown = t.inspect(Some(guesser), Some(b"u4")).await;
    assert!(
        shown.contains("user u4 from there: 10 of 10 failures"),
        "{shown}"
    );
    assert!(
        shown.contains("block of ip 203.0.113.50 user u4: 900 s left"),
        "{shown}"
    );
    assert!(
        shown.contains("next login: refused without asking the passdb"),
        "{shown}"
    );
    assert!(
        shown.contains("network 203.0.113.50: 10 of 50 failures; 0 users"),
        "{shown}"
    );
    let lifted = t.unblock(Some(guesser), Some(b"u4")).await;
    assert_eq!(lifted, vec!["ip 203.0.113.50 user u4".to_owned()]);
    assert_ok(&f.try_login("u4", "pw-4", "203.0.113.50").await);
    assert!(t.unblock(Some(guesser), Some(b"u4")).await.is_empty());
    // --user alone lifts that user's blocks on every network.
    for ip in ["203.0.113.51", "203.0.113.52"] {
        for _ in 0..10 {
            f.try_login("u8", &guess(), ip).await;
        }
    }
    let mut lifted = t.unblock(None, Some(b"u8")).await;
    lifted.sort();
    assert_eq!(
        lifted,
        ["ip 203.0.113.51 user u8", "ip 203.0.113.52 user u8"]
    );
    // --ip alone lifts the network's block and its pairs.
    for i in 0..50 {
        f.try_login(&format!("u{}", 200 + i % 5), &guess(), "203.0.113.53")
            .await;
    }
    let lifted = t.unblock(Some("203.0.113.53".parse().unwrap()), None).await;
    assert!(lifted.contains(&"ip 203.0.113.53".to_owned()), "{lifted:?}");
    assert!(lifted.len() > 1, "the pair blocks too: {lifted:?}");
    assert_ok(&f.try_login("u200", "pw-200", "203.0.113.53").await);
    let trusted = t.inspect(Some("127.0.0.1".parse().unwrap()), None).await;
    assert!(trusted.contains("never counted"), "{trusted}");
}
