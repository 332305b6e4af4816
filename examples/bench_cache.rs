//! Benchmark of the verification cache: repeated logins of a PLAIN, a
//! SHA512-CRYPT and a bcrypt user through the whole in-process decision
//! (CGI params → `Service::respond` → rendered headers), with the default
//! throttle and cache, measured one after another in one run. Prints req/s
//! per user and each user's ratio to the PLAIN user (target ≥ 0.8 with the
//! cache on), then the same without the cache for reference.
//!
//! Run (release, or the numbers mean little):
//!
//! ```text
//! cargo run --release --example bench_cache -- [--secs 3] [--tasks 8] [--passdb sqlite|passwd-file]
//! ```

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nginx_auth_fcgi::authenticator::{Authenticator, Policy, WaitPolicy};
use nginx_auth_fcgi::cache::{Cache, CachePolicy};
use nginx_auth_fcgi::fastcgi::Params;
use nginx_auth_fcgi::mech::Mechanism;
use nginx_auth_fcgi::passdb::sqlite::Admin;
use nginx_auth_fcgi::passdb::AnyPassdb;
use nginx_auth_fcgi::scheme::{self, Scheme};
use nginx_auth_fcgi::service::Service;
use nginx_auth_fcgi::throttle::{Clock, Throttle, ThrottlePolicy};
use nginx_auth_fcgi::upstream::Upstreams;

const USERS: [(&str, Scheme, &str); 3] = [
    ("plain@example.org", Scheme::Plain, "plain-pw"),
    ("crypt@example.org", Scheme::Sha512Crypt, "crypt-pw"),
    ("bcrypt@example.org", Scheme::BlfCrypt, "bcrypt-pw"),
];

struct Args {
    secs: u64,
    rounds: u32,
    tasks: usize,
    passdb: String,
}

fn args() -> Args {
    let mut a = Args {
        secs: 3,
        rounds: 6,
        tasks: 8,
        passdb: "sqlite".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--secs" => a.secs = value.parse().expect("--secs N"),
            "--rounds" => a.rounds = value.parse().expect("--rounds N"),
            "--tasks" => a.tasks = value.parse().expect("--tasks N"),
            "--passdb" => a.passdb = value,
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

fn service(passdb_uri: &str, cache: bool) -> Service {
    let db = AnyPassdb::open(passdb_uri, None).expect("passdb");
    let mut upstreams = Upstreams::default();
    upstreams.add("imap=127.0.0.1:143").unwrap();
    let policy = Policy {
        mechanisms: [Mechanism::Plain].into_iter().collect(),
        local_domains: Vec::new(),
        upstreams,
        wait: WaitPolicy::default(),
        smtp_pass: false,
        timeout: Duration::from_secs(10),
        throttle: Some(Arc::new(Throttle::in_memory(
            ThrottlePolicy::default(),
            Clock::system(),
        ))),
        cache: cache.then(|| Arc::new(Cache::new(CachePolicy::default()))),
    };
    Service::new(
        Authenticator::new(policy, vec![db]).expect("policy"),
        Vec::new(),
    )
}

fn params(user: &str, pass: &str) -> Params {
    Params::from_pairs(
        [
            ("HTTP_AUTH_METHOD", "plain"),
            ("HTTP_AUTH_USER", user),
            ("HTTP_AUTH_PASS", pass),
            ("HTTP_AUTH_PROTOCOL", "imap"),
            ("HTTP_AUTH_LOGIN_ATTEMPT", "1"),
            ("HTTP_CLIENT_IP", "198.51.100.7"),
        ]
        .iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect(),
    )
}

/// Logins of `user` done by `tasks` concurrent clients in `time`, and the
/// time actually taken.
async fn measure(
    svc: &Arc<Service>,
    user: &str,
    pass: &str,
    tasks: usize,
    time: Duration,
) -> (u64, Duration) {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let (svc, stop, done) = (svc.clone(), stop.clone(), done.clone());
        let p = params(user, pass);
        handles.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let out = svc.respond(&p).await;
                debug_assert!(!out.is_empty());
                done.fetch_add(1, Ordering::Relaxed);
                // A real request arrives by socket I/O, which yields; without
                // this, passdbs that never wait would starve the timer.
                tokio::task::yield_now().await;
            }
        }));
    }
    tokio::time::sleep(time).await;
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.await.unwrap();
    }
    (done.load(Ordering::Relaxed), started.elapsed())
}

#[tokio::main]
async fn main() {
    let a = args();
    let dir = tempfile::tempdir().expect("temp dir");
    let uri = match a.passdb.as_str() {
        "sqlite" => {
            let path = dir.path().join("users.db");
            let admin = Admin::open(&path).expect("sqlite");
            for (user, scheme, pw) in USERS {
                admin
                    .add(user, &scheme::hash(scheme, pw.as_bytes()).unwrap())
                    .unwrap();
            }
            format!("sqlite:{}", path.display())
        }
        "passwd-file" => {
            let path = dir.path().join("users");
            let mut text = String::new();
            for (user, scheme, pw) in USERS {
                text.push_str(&format!(
                    "{user}:{}::::::\n",
                    scheme::hash(scheme, pw.as_bytes()).unwrap()
                ));
            }
            std::fs::write(&path, text).unwrap();
            format!("passwd-file:{}", path.display())
        }
        other => panic!("--passdb sqlite|passwd-file, not {other}"),
    };
    println!(
        "passdb {}, {} concurrent clients, {} s per user in {} interleaved rounds, {} CPUs",
        a.passdb,
        a.tasks,
        a.secs,
        a.rounds,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "{:<20} {:<13} {:>6} {:>12} {:>9}",
        "user", "scheme", "cache", "req/s", "vs PLAIN"
    );
    for cache in [true, false] {
        let svc = Arc::new(service(&uri, cache));
        // One login each first, so a cache-on run measures the steady state
        // of clients that reconnect with the same credentials.
        for (user, _, pw) in USERS {
            let first = svc.respond(&params(user, pw)).await;
            assert!(
                first.windows(15).any(|w| w == b"Auth-Status: OK"),
                "{user}: login failed: {}",
                String::from_utf8_lossy(&first)
            );
        }
        // Rounds alternate between the users, so a change in machine load
        // during the run affects them alike.
        let slice = Duration::from_secs(a.secs) / a.rounds.max(1);
        let mut totals = [(0u64, Duration::ZERO); USERS.len()];
        for _ in 0..a.rounds.max(1) {
            for (i, (user, _, pw)) in USERS.iter().enumerate() {
                let (n, t) = measure(&svc, user, pw, a.tasks, slice).await;
                totals[i].0 += n;
                totals[i].1 += t;
            }
        }
        let rates: Vec<f64> = totals
            .iter()
            .map(|(n, t)| *n as f64 / t.as_secs_f64())
            .collect();
        for ((user, scheme, _), rate) in USERS.iter().zip(&rates) {
            let base = rates[0];
            println!(
                "{:<20} {:<13} {:>6} {:>12.0} {:>9.3}",
                user,
                scheme.to_string(),
                if cache { "on" } else { "off" },
                rate,
                rate / base
            );
        }
    }
}
