//! Throughput and latency of the SQL passdbs against real local servers
//! (issue 3 asks for figures). Not part of the test run; measure with
//!
//! ```text
//! cargo test --release --test backends bench_sql -- --ignored --nocapture
//! ```
//!
//! Each run: one passdb (pool of 8), N concurrent callers, a bounded number of
//! `verify_plain` calls of a `{PLAIN}` user (so the figure is the database
//! round trip, not hashing), then the same for an unknown user.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::sql::{Kind, Server};
use nginx_auth_fcgi::passdb::{AnyPassdb, Passdb, Rejection, Verdict};
use nginx_auth_fcgi::secret::Secret;

const CALLS: usize = 20_000;
const CONCURRENCY: [usize; 3] = [1, 8, 32];

async fn setup(server: &Server) {
    let schema_and_user = |kind: Kind| -> Vec<String> {
        let schema = match kind {
            Kind::Postgres => nginx_auth_fcgi::passdb::sql::POSTGRES_SCHEMA,
            Kind::Mariadb => nginx_auth_fcgi::passdb::sql::MYSQL_SCHEMA,
        };
        let mut v: Vec<String> = schema
            .split(';')
            .filter(|s| !s.trim().is_empty())
            .map(str::to_owned)
            .collect();
        v.push("INSERT INTO users (username, password) VALUES ('bench@example.org', '{PLAIN}bench-pw')".into());
        v
    };
    match server.kind {
        Kind::Postgres => {
            let (client, conn) =
                tokio_postgres::connect(&server.admin_uri(), tokio_postgres::NoTls)
                    .await
                    .unwrap();
            let task = tokio::spawn(conn);
            for s in schema_and_user(Kind::Postgres) {
                client.batch_execute(&s).await.unwrap();
            }
            drop(client);
            let _ = task.await;
        }
        Kind::Mariadb => {
            use mysql_async::prelude::Queryable;
            let mut conn = mysql_async::Conn::from_url(server.admin_uri())
                .await
                .unwrap();
            conn.query_drop("CREATE DATABASE bench").await.unwrap();
            conn.query_drop("USE bench").await.unwrap();
            for s in schema_and_user(Kind::Mariadb) {
                conn.query_drop(s).await.unwrap();
            }
            conn.disconnect().await.unwrap();
        }
    }
}

async fn run(db: Arc<AnyPassdb>, user: &'static str, concurrency: usize) -> (f64, Vec<Duration>) {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            let password = [Secret::from("bench-pw")];
            let mut lat = Vec::with_capacity(CALLS / concurrency);
            for _ in 0..CALLS / concurrency {
                let t = Instant::now();
                let v = db.verify_plain(user, &password).await.expect("verify");
                lat.push(t.elapsed());
                assert!(matches!(
                    v,
                    Verdict::Accepted(_) | Verdict::Rejected(Rejection::UnknownUser)
                ));
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let rate = all.len() as f64 / started.elapsed().as_secs_f64();
    all.sort_unstable();
    (rate, all)
}

async fn bench(kind: Kind) {
    let server = Server::start(kind);
    setup(&server).await;
    let db = match kind {
        Kind::Postgres => "postgres",
        Kind::Mariadb => "bench",
    };
    let db = Arc::new(AnyPassdb::open(&server.uri(db, "pool_size=8"), None).unwrap());
    // Warm the pool and the statement caches.
    run(db.clone(), "bench@example.org", 8).await;
    for (user, label) in [
        ("bench@example.org", "known"),
        ("nobody@example.org", "unknown"),
    ] {
        for c in CONCURRENCY {
            let (rate, lat) = run(db.clone(), user, c).await;
            let p = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)];
            println!(
                "{kind:?} {label:7} concurrency {c:2}: {rate:8.0} verifications/s, \
                 p50 {:?}, p99 {:?}, max {:?}",
                p(0.50),
                p(0.99),
                lat[lat.len() - 1]
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --release --ignored --nocapture"]
async fn postgres_throughput() {
    bench(Kind::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --release --ignored --nocapture"]
async fn mariadb_throughput() {
    bench(Kind::Mariadb).await;
}
