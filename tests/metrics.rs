//! The Prometheus endpoint counts exactly the requests sent (one test in its
//! own binary: the counters are process-wide).

use std::sync::Arc;
use std::time::Duration;

mod common;

use common::policy::base_policy;
use nginx_auth_fcgi::authenticator::{Authenticator, Policy};
use nginx_auth_fcgi::cache::{Cache, CachePolicy};
use nginx_auth_fcgi::fastcgi::Params;
use nginx_auth_fcgi::mech::Mechanism;
use nginx_auth_fcgi::passdb::AnyPassdb;
use nginx_auth_fcgi::scheme::{self, Scheme};
use nginx_auth_fcgi::service::Service;
use nginx_auth_fcgi::upstream::Upstreams;

fn params(pairs: &[(&str, &str)]) -> Params {
    Params::from_pairs(
        pairs
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect(),
    )
}

fn mail(proto: &str, user: &str, pass: &str) -> Params {
    params(&[
        ("HTTP_AUTH_METHOD", "plain"),
        ("HTTP_AUTH_USER", user),
        ("HTTP_AUTH_PASS", pass),
        ("HTTP_AUTH_PROTOCOL", proto),
        ("HTTP_AUTH_LOGIN_ATTEMPT", "1"),
        ("HTTP_CLIENT_IP", "192.0.2.9"),
        ("HTTP_X_AUTH_KEY", "k"),
    ])
}

#[track_caller]
fn assert_lines(text: &str, lines: &[&str]) {
    for line in lines {
        assert!(
            text.lines().any(|l| l == *line),
            "missing `{line}` in:\n{text}"
        );
    }
}

#[tokio::test]
async fn counters_match_the_requests_sent() {
    // carol's hash is expensive, so her checks go through the cache.
    let carol = scheme::hash(Scheme::Sha512Crypt, b"carol-pw").unwrap();
    let (_dir, users) = common::temp_file(
        "users",
        &format!("alice:{{PLAIN}}wonderland::::::\ncarol:{carol}::::::\n"),
    );
    let mut upstreams = Upstreams::default();
    upstreams.add("imap=127.0.0.1:143").unwrap();
    upstreams.add("smtp=127.0.0.1:25").unwrap();
    let policy = Policy {
        timeout: std::time::Duration::from_secs(5),
        cache: Some(Arc::new(Cache::new(CachePolicy {
            negative_ttl: Duration::from_secs(60),
            ..CachePolicy::default()
        }))),
        ..base_policy(Mechanism::ALL, upstreams)
    };
    let passdb = AnyPassdb::open(&format!("passwd-file:{}", users.display()), None).unwrap();
    let s = Service::new(
        Authenticator::new(policy, vec![passdb]).unwrap(),
        vec!["X-Auth-Key=k".parse().unwrap()],
    );
    for _ in 0..3 {
        s.respond(&mail("imap", "alice", "wonderland")).await;
    }
    for _ in 0..2 {
        s.respond(&mail("smtp", "alice", "guess")).await;
    }
    // Without the shared secret: a protocol error, not a decision.
    s.respond(&params(&[
        ("HTTP_AUTH_METHOD", "plain"),
        ("HTTP_AUTH_PROTOCOL", "imap"),
    ]))
    .await;
    // HTTP Basic: one right, one wrong; a bare challenge is not counted.
    let http = |auth: Option<&str>| {
        let mut p = vec![
            ("REQUEST_METHOD", "GET"),
            ("REQUEST_URI", "/"),
            ("AUTH_REALM", "R"),
            ("HTTP_X_AUTH_KEY", "k"),
        ];
        if let Some(a) = auth {
            p.push(("HTTP_AUTHORIZATION", a));
        }
        params(&p)
    };
    s.respond(&http(Some("Basic YWxpY2U6d29uZGVybGFuZA==")))
        .await;
    s.respond(&http(Some("Basic YWxpY2U6d3Jvbmc="))).await;
    s.respond(&http(None)).await;

    // The endpoint needs the shared secret as well.
    let denied = s.respond(&params(&[("AUTH_METRICS", "on")])).await;
    assert!(denied.starts_with(b"Status: 403"));
    let scrape = || async {
        let reply = s
            .respond(&params(&[("AUTH_METRICS", "on"), ("HTTP_X_AUTH_KEY", "k")]))
            .await;
        String::from_utf8(reply).unwrap()
    };
    let text = scrape().await;
    assert!(text.starts_with("Status: 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"));
    assert_lines(
        &text,
        &[
            "nginx_auth_fcgi_requests_total{protocol=\"imap\",result=\"ok\"} 3",
            "nginx_auth_fcgi_requests_total{protocol=\"imap\",result=\"fail\"} 0",
            "nginx_auth_fcgi_requests_total{protocol=\"smtp\",result=\"fail\"} 2",
            "nginx_auth_fcgi_requests_total{protocol=\"http\",result=\"ok\"} 1",
            "nginx_auth_fcgi_requests_total{protocol=\"http\",result=\"fail\"} 1",
            "nginx_auth_fcgi_method_total{method=\"plain\"} 5",
            "nginx_auth_fcgi_method_total{method=\"basic\"} 2",
            "nginx_auth_fcgi_decision_seconds_count 7",
            "nginx_auth_fcgi_decision_seconds_bucket{le=\"+Inf\"} 7",
            // the request without the secret and the metrics request without it
            "nginx_auth_fcgi_protocol_errors_total 2",
            "nginx_auth_fcgi_passdb_errors_total 0",
            "nginx_auth_fcgi_cache_hits_total 0",
            "nginx_auth_fcgi_cache_misses_total 0",
        ],
    );

    // The cache: unused so far (PLAIN is cheap, it never goes through it);
    // then carol's right password twice (miss, hit) and a wrong one twice
    // (miss, negative hit), counted apart.
    for pass in ["carol-pw", "carol-pw", "wrong", "wrong"] {
        s.respond(&mail("imap", "carol", pass)).await;
    }
    let text = scrape().await;
    assert_lines(
        &text,
        &[
            "nginx_auth_fcgi_cache_hits_total 1",
            "nginx_auth_fcgi_cache_negative_hits_total 1",
            "nginx_auth_fcgi_cache_misses_total 2",
            "nginx_auth_fcgi_requests_total{protocol=\"imap\",result=\"ok\"} 5",
            "nginx_auth_fcgi_requests_total{protocol=\"imap\",result=\"fail\"} 2",
        ],
    );
}
