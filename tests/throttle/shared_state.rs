//! Throttle state shared through a real `redis-server` (Debian package
//! `redis-server`), which each test starts on loopback on a free port in a
//! temp dir and stops on drop. Two responder instances (two
//! `Authenticator`s, each with its own `Throttle`, Redis connection and
//! passdb) enforce one limit. Time moves by a shared manual clock, never by
//! sleeping: real Redis I/O rules out pausing tokio's clock.

use std::sync::Arc;

use crate::common::redis::Redis;
use crate::{authenticator, capture_logs, guess, log_lines, login, policy, LOG};
use std::time::{Duration, Instant};

use nginx_auth_fcgi::audit::Outcome;
use nginx_auth_fcgi::auth_http::MailAuthResponse;
use nginx_auth_fcgi::authenticator::{Authenticator, Decision};
use nginx_auth_fcgi::passdb::AnyPassdb;
use nginx_auth_fcgi::throttle::{Clock, Throttle, ThrottlePolicy};

/// One responder instance: its own passdb, throttle and Redis connection.
struct Instance {
    _dir: tempfile::TempDir,
    auth: Authenticator,
}

impl Instance {
    /// This instance's decision on an IMAP login (see [`login`]).
    async fn try_login(&self, user: &str, pass: &str, ip: &str) -> Decision {
        self.auth.authenticate(&login(user, pass, ip)).await
    }
}

fn instance(redis: &Redis, clock: &Clock) -> Instance {
    instance_with(redis, clock, policy())
}

fn instance_with(redis: &Redis, clock: &Clock, throttle: ThrottlePolicy) -> Instance {
    capture_logs();
    let (dir, passwd) = crate::common::temp_file(
        "users",
        "alice:{PLAIN}alice-pw::::::\nbob:{PLAIN}bob-pw::::::\n",
    );
    let db = AnyPassdb::open(&format!("passwd-file:{}", passwd.display()), None).unwrap();
    let target = nginx_auth_fcgi::shared_state::Target::new(redis.url());
    let throttle = Throttle::with_redis(throttle, clock.clone(), &target).unwrap();
    Instance {
        _dir: dir,
        auth: authenticator(vec![db], Some(Arc::new(throttle))),
    }
}

#[track_caller]
fn assert_ok(d: &Decision) {
    assert_eq!(d.audit.outcome, Outcome::Ok, "{}", d.audit);
}

#[track_caller]
fn assert_mismatch(d: &Decision) {
    assert_eq!(d.audit.reason, "password-mismatch", "{}", d.audit);
}

#[track_caller]
fn assert_blocked(d: &Decision) {
    assert_eq!(d.audit.outcome, Outcome::Fail, "{}", d.audit);
    assert!(d.audit.reason.starts_with("blocked-"), "{}", d.audit);
    assert_eq!(d.audit.passdb, "-", "{}", d.audit);
    let MailAuthResponse::Fail(f) = &d.response else {
        unreachable!()
    };
    assert_eq!(f.wait, None);
}

fn start_clock() -> Clock {
    Clock::manual(1_800_000_000_000)
}

#[tokio::test]
async fn two_instances_enforce_one_limit() {
    let redis = Redis::start();
    let clock = start_clock();
    let (a, b) = (instance(&redis, &clock), instance(&redis, &clock));
    let attacker = "203.0.113.100";
    // The guessing loop, spread over both instances (as nginx would with two
    // auth_http servers): each alone has seen fewer than 5 failures.
    let mut waits = Vec::new();
    for i in 0..5 {
        let inst = if i % 2 == 0 { &a } else { &b };
        let d = inst
            .try_login("alice", &format!("guess{i}"), attacker)
            .await;
        assert_mismatch(&d);
        let MailAuthResponse::Fail(f) = &d.response else {
            unreachable!()
        };
        waits.push(f.wait);
    }
    // The delay grows across instances too.
    assert_eq!(waits, [Some(1), Some(2), Some(4), Some(8), Some(16)]);
    for inst in [&a, &b] {
        assert_blocked(&inst.try_login("alice", "alice-pw", attacker).await);
    }
    assert_eq!(
        log_lines(&format!("blocked ip {attacker} user alice")),
        1,
        "one instance logs the block"
    );
    // Another network's correct login passes on both.
    for inst in [&a, &b] {
        assert_ok(&inst.try_login("alice", "alice-pw", "198.51.100.100").await);
    }

    // The block ends for both at once; one of them logs it.
    clock.advance(Duration::from_secs(901));
    assert_ok(&b.try_login("alice", "alice-pw", attacker).await);
    assert_ok(&a.try_login("alice", "alice-pw", attacker).await);
    assert_eq!(log_lines(&format!("unblocked ip {attacker} user alice")), 1);
}

#[tokio::test]
async fn redis_down_falls_back_to_local_state_and_never_fails_open() {
    let mut redis = Redis::start();
    let clock = start_clock();
    let a = instance(&redis, &clock);
    let attacker = "203.0.113.110";
    for _ in 0..5 {
        assert_mismatch(&a.try_login("alice", &guess(), attacker).await);
    }
    assert_blocked(&a.try_login("alice", "alice-pw", attacker).await);
    let port = redis.port;
    redis.stop();

    // What this instance knew still holds…
    for _ in 0..3 {
        assert_blocked(&a.try_login("alice", "alice-pw", attacker).await);
    }
    // …wrong passwords stay wrong, right ones work, new guessing is still
    // counted and blocked locally.
    let other = "203.0.113.111";
    for _ in 0..5 {
        assert_mismatch(&a.try_login("bob", &guess(), other).await);
        clock.advance(Duration::from_secs(1));
    }
    assert_blocked(&a.try_login("bob", "bob-pw", other).await);
    assert_ok(&a.try_login("bob", "bob-pw", "198.51.100.110").await);
    assert_eq!(
        log_lines("shared state unreachable"),
        1,
        "logged once per transition: {:?}",
        LOG.lock().unwrap()
    );

    // Redis comes back: used again, and that is logged once.
    redis.spawn(port);
    let deadline = Instant::now() + Duration::from_secs(10);
    while log_lines("shared state reachable again") == 0 {
        assert!(Instant::now() < deadline, "Redis not used again");
        clock.advance(Duration::from_secs(6));
        a.try_login("bob", "bob-pw", "198.51.100.111").await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(log_lines("shared state reachable again"), 1);
    // A second instance, which only knows Redis, sees nothing of the local
    // blocks: the fallback is per instance, as documented.
    let b = instance(&redis, &clock);
    assert_ok(&b.try_login("bob", "bob-pw", "198.51.100.112").await);
}

#[tokio::test]
async fn a_repeated_wrong_password_counts_once_across_instances() {
    let redis = Redis::start();
    let clock = start_clock();
    let known = || ThrottlePolicy {
        known_for: Duration::from_secs(30 * 86_400),
        ..policy()
    };
    let (a, b) = (
        instance_with(&redis, &clock, known()),
        instance_with(&redis, &clock, known()),
    );
    let phone = "203.0.113.120";
    // A phone with an old password, reconnecting through both instances
    // (block_ip_user is 5 here): one failure in the shared count.
    for _ in 0..10 {
        for inst in [&a, &b] {
            assert_mismatch(&inst.try_login("alice", "old-password", phone).await);
        }
    }
    assert_ok(&b.try_login("alice", "alice-pw", phone).await);
    // Both instances tag with the key stored in Redis (one key, 32 bytes).
    let key = std::process::Command::new(crate::common::proc::require("redis-cli", "redis-tools"))
        .args([
            "-p",
            &redis.port.to_string(),
            "GET",
            "nginx-auth-fcgi:dedup-key",
        ])
        .output()
        .expect("redis-cli (package redis-tools)");
    assert_eq!(String::from_utf8_lossy(&key.stdout).trim().len(), 64);
    // Different wrong passwords are a guesser, counted on either instance.
    for i in 0..5 {
        let inst = if i % 2 == 0 { &a } else { &b };
        assert_mismatch(&inst.try_login("alice", &guess(), phone).await);
    }
    assert_blocked(&a.try_login("alice", "alice-pw", phone).await);
    // The known network and the toleration marks live in Redis too: an
    // instance that never saw alice's login knows the network.
    let c = instance_with(&redis, &clock, known());
    let t = c.auth.policy().throttle.as_deref().unwrap();
    let shown = t
        .inspect(Some("203.0.113.120".parse().unwrap()), Some(b"alice"))
        .await;
    assert!(shown.contains("network known for the user: yes"), "{shown}");
    assert!(shown.contains("1 users logged in from it"), "{shown}");
    assert!(
        shown.contains("block of ip 203.0.113.120 user alice:"),
        "{shown}"
    );
    // Unblocking on one instance lifts it for all.
    assert_eq!(
        t.unblock(None, Some(b"alice")).await,
        vec!["ip 203.0.113.120 user alice".to_owned()]
    );
    assert_ok(&a.try_login("alice", "alice-pw", phone).await);
}

/// A master demoted behind the sentinels' back (they were down, and came
/// back knowing the new master) answers the next write `READONLY`: the
/// sentinels are asked at once and the write goes to the new master, with
/// no fallback.
#[tokio::test]
async fn a_write_refused_as_readonly_goes_to_the_new_master_at_once() {
    use crate::common::redis::SentinelSet;
    use nginx_auth_fcgi::shared_state::{Fallback, SharedState, Target};
    capture_logs();
    const FALLBACK: Fallback = Fallback {
        lost: "readonly test: lost",
        instead: "local",
        back: "readonly test: back",
        back_level: log::Level::Info,
        retry_after: Duration::from_secs(5),
    };
    let mut set = SentinelSet::start(1);
    let state = SharedState::open(&Target::new(set.url()), FALLBACK).unwrap();
    let write = |v: &str| {
        let mut cmd = redis::cmd("SET");
        cmd.arg("nginx-auth-fcgi:readonly-test").arg(v);
        cmd
    };
    let () = state.query(&write("1")).await.unwrap();
    let (old, new) = (set.servers[0].port, set.servers[1].port);
    assert_eq!(set.master().port, old);
    // The roles swap while the only sentinel is down.
    set.sentinels[0].stop();
    assert_eq!(set.servers[1].cli(&["REPLICAOF", "NO", "ONE"]).trim(), "OK");
    let replicaof = ["REPLICAOF", "127.0.0.1", &new.to_string()].map(str::to_owned);
    let replicaof: Vec<&str> = replicaof.iter().map(String::as_str).collect();
    assert_eq!(set.servers[0].cli(&replicaof).trim(), "OK");
    set.sentinels[0].restart_watching(new);
    assert_eq!(set.master().port, new);

    let () = state.query(&write("2")).await.unwrap();
    assert_eq!(
        set.servers[1]
            .cli(&["GET", "nginx-auth-fcgi:readonly-test"])
            .trim(),
        "2"
    );
    let lines = |what: &str| -> Vec<String> {
        let log = LOG.lock().unwrap();
        log.iter().filter(|l| l.contains(what)).cloned().collect()
    };
    let failed = lines(&format!("at 127.0.0.1:{old} failed ("));
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(failed[0].contains("read only replica"), "{}", failed[0]);
    println!("{}", failed[0]);
    let moved = lines(&format!("moved from 127.0.0.1:{old} to 127.0.0.1:{new}"));
    assert_eq!(moved.len(), 1, "{moved:?}");
    assert_eq!(log_lines("readonly test: lost"), 0, "no fallback");
}
