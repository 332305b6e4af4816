//! SQL server passdbs (issue 3) against real PostgreSQL and MariaDB servers,
//! each test with its own server on loopback (see `tests/common/sql.rs`).
//!
//! Every scenario runs for both servers: the built-in schema, a custom
//! `password_query` template, injection-shaped user names, a slow query, and
//! a server killed and restarted under a live passdb.

use std::time::{Duration, Instant};

use crate::common::proc::wait_until_async;
use crate::common::sql::{Kind, Server};
use nginx_auth_fcgi::passdb::{
    AnyPassdb, Lookup, Passdb, PassdbError, PassdbOptions, Rejection, Verdict,
};
use nginx_auth_fcgi::scheme::{self, Scheme};
use nginx_auth_fcgi::secret::Secret;

pub(crate) const BUILT_IN_DB: &str = "auth";

/// Runs admin statements as the superuser, in order.
async fn admin(server: &Server, statements: &[String]) {
    server.execute(None, statements).await;
}

/// One number from the server (`SELECT count(*) …`).
async fn count(server: &Server, db: &str, sql: &str) -> i64 {
    match server.kind {
        Kind::Postgres => {
            let uri = server.uri(db, "");
            let (client, conn) = tokio_postgres::connect(&uri, tokio_postgres::NoTls)
                .await
                .expect("connect");
            let task = tokio::spawn(conn);
            let n: i64 = client.query_one(sql, &[]).await.expect(sql).get(0);
            drop(client);
            let _ = task.await;
            n
        }
        Kind::Mariadb => {
            use mysql_async::prelude::Queryable;
            let uri = server.uri(db, "").replacen("mariadb://", "mysql://", 1);
            let mut conn = mysql_async::Conn::from_url(uri).await.expect("connect");
            let n: Option<i64> = conn.query_first(sql).await.expect(sql);
            conn.disconnect().await.expect("disconnect");
            n.expect("one row")
        }
    }
}

fn schema(kind: Kind) -> &'static str {
    match kind {
        Kind::Postgres => nginx_auth_fcgi::passdb::sql::POSTGRES_SCHEMA,
        Kind::Mariadb => nginx_auth_fcgi::passdb::sql::MYSQL_SCHEMA,
    }
}

/// A database `auth` with the built-in schema and some users.
pub(crate) async fn built_in(kind: Kind) -> Server {
    let server = Server::start(kind);
    admin(&server, &[format!("CREATE DATABASE {BUILT_IN_DB}")]).await;
    let mut statements: Vec<String> = schema(kind)
        .split(';')
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            if kind == Kind::Mariadb {
                s.replace(
                    "CREATE TABLE IF NOT EXISTS users",
                    "CREATE TABLE IF NOT EXISTS auth.users",
                )
            } else {
                s.to_owned()
            }
        })
        .collect();
    let sha = scheme::hash(Scheme::Sha512Crypt, b"sha-pw").unwrap();
    let blf = scheme::hash(Scheme::BlfCrypt, b"blf-pw").unwrap();
    let table = if kind == Kind::Mariadb {
        "auth.users"
    } else {
        "users"
    };
    let yes = "TRUE";
    let no = "FALSE";
    let odd = "o''brien\\\\x\"y"; // o'brien\x"y once unescaped
    let odd = if kind == Kind::Postgres {
        odd.replace("\\\\", "\\")
    } else {
        odd.to_owned()
    };
    for (user, pw, enabled, extra) in [
        (
            "alice@example.org",
            "{PLAIN}alice-pw".to_owned(),
            yes,
            "NULL, NULL, NULL",
        ),
        ("sha@example.org", sha, yes, "NULL, NULL, NULL"),
        ("blf@example.org", blf, yes, "NULL, NULL, NULL"),
        (
            "dis@example.org",
            "{PLAIN}dis-pw".to_owned(),
            no,
            "NULL, NULL, NULL",
        ),
        (
            "route@example.org",
            "{PLAIN}route-pw".to_owned(),
            yes,
            "'127.0.0.9', 1143, 'route-backend'",
        ),
        (
            odd.as_str(),
            "{PLAIN}odd-pw".to_owned(),
            yes,
            "NULL, NULL, NULL",
        ),
    ] {
        let domain = user.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
        statements.push(format!(
            "INSERT INTO {table} (username, domain, password, enabled, upstream_host, upstream_port, backend_user) \
             VALUES ('{user}', '{domain}', '{pw}', {enabled}, {extra})"
        ));
    }
    // On PostgreSQL the schema goes into database `auth`, not the admin database.
    server.execute(Some(BUILT_IN_DB), &statements).await;
    server
}

fn open(server: &Server, options: &str, query: Option<&str>) -> AnyPassdb {
    open_uri(&server.uri(BUILT_IN_DB, options), query)
}

/// A passdb at `uri`, with `query` as its password query if given.
fn open_uri(uri: &str, query: Option<&str>) -> AnyPassdb {
    AnyPassdb::open_with(
        uri,
        &PassdbOptions {
            app_password_query: None,
            default_scheme: None,
            password_query: query.map(str::to_owned),
        },
    )
    .unwrap_or_else(|e| panic!("open {uri}: {e}"))
}

fn pw(s: &str) -> Vec<Secret> {
    vec![Secret::from(s)]
}

async fn verify(db: &AnyPassdb, user: &str, password: &str) -> Result<Verdict, PassdbError> {
    db.verify_plain(user, &pw(password)).await
}

// ------------------------------------------------------------ scenarios

async fn built_in_schema(kind: Kind) {
    let server = built_in(kind).await;
    let db = open(&server, "", None);

    for (user, password) in [
        ("alice@example.org", "alice-pw"),
        ("sha@example.org", "sha-pw"),
        ("blf@example.org", "blf-pw"),
    ] {
        match verify(&db, user, password).await {
            Ok(Verdict::Accepted(p)) => {
                assert_eq!(p.user, user);
                assert_eq!(p.upstream_host, None);
                assert_eq!(p.upstream_port, None);
                assert_eq!(p.backend_user, None);
            }
            other => panic!("{kind:?} {user}: {other:?}"),
        }
        assert!(
            matches!(
                verify(&db, user, "wrong").await,
                Ok(Verdict::Rejected(Rejection::PasswordMismatch))
            ),
            "{kind:?} {user} with a wrong password"
        );
    }
    // PLAIN may offer two candidate passwords; the second one counts too.
    assert!(matches!(
        db.verify_plain(
            "alice@example.org",
            &[Secret::from("nope"), Secret::from("alice-pw")]
        )
        .await,
        Ok(Verdict::Accepted(_))
    ));
    for unknown in [
        "nobody@example.org",
        "ALICE@example.org",
        "alice@example.org ",
        "",
    ] {
        assert!(
            matches!(
                verify(&db, unknown, "alice-pw").await,
                Ok(Verdict::Rejected(Rejection::UnknownUser))
            ),
            "{kind:?} {unknown:?}"
        );
    }
    assert!(matches!(
        verify(&db, "dis@example.org", "dis-pw").await,
        Ok(Verdict::Rejected(Rejection::Disabled))
    ));
    assert!(matches!(
        db.lookup_credentials("dis@example.org").await,
        Ok(Lookup::Rejected(Rejection::Disabled))
    ));
    match verify(&db, "route@example.org", "route-pw").await {
        Ok(Verdict::Accepted(p)) => {
            assert_eq!(p.upstream_host, Some("127.0.0.9".parse().unwrap()));
            assert_eq!(p.upstream_port, Some(1143));
            assert_eq!(p.backend_user.as_deref(), Some("route-backend"));
        }
        other => panic!("{kind:?} route: {other:?}"),
    }
    // Challenge mechanisms get the stored credential.
    match db.lookup_credentials("alice@example.org").await {
        Ok(Lookup::Found {
            principal, secret, ..
        }) => {
            assert_eq!(principal.user, "alice@example.org");
            assert_eq!(secret.plaintext(), Some(&b"alice-pw"[..]));
        }
        other => panic!("{kind:?}: {other:?}"),
    }
    assert!(matches!(
        db.lookup_credentials("nobody@example.org").await,
        Ok(Lookup::Rejected(Rejection::UnknownUser))
    ));
    // A name with quotes and a backslash is just a name.
    assert!(matches!(
        verify(&db, "o'brien\\x\"y", "odd-pw").await,
        Ok(Verdict::Accepted(_))
    ));

    // Requests in parallel share the pool (more requests than connections).
    let db = open(&server, "pool_size=2", None);
    let checks = (0..20).map(|i| {
        let db = &db;
        async move {
            let (user, password) = if i % 2 == 0 {
                ("alice@example.org", "alice-pw")
            } else {
                ("sha@example.org", "sha-pw")
            };
            verify(db, user, password).await
        }
    });
    for r in futures_join_all(checks).await {
        assert!(matches!(r, Ok(Verdict::Accepted(_))), "{kind:?}: {r:?}");
    }
}

/// `join_all` without the futures crate: run on a JoinSet would need
/// 'static; these are few, so poll them together with tokio::join on chunks.
async fn futures_join_all<F: std::future::Future>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output> {
    let mut pinned: Vec<_> = futures.map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = (0..pinned.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, slot) in pinned.iter_mut().zip(out.iter_mut()) {
            if slot.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *slot = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(|v| v.expect("ready")).collect()
}

async fn custom_query(kind: Kind) {
    let server = Server::start(kind);
    let (table, t, f) = match kind {
        Kind::Postgres => ("mailbox", "TRUE", "FALSE"),
        Kind::Mariadb => ("auth.mailbox", "1", "0"),
    };
    let mut statements = vec![format!("CREATE DATABASE {BUILT_IN_DB}")];
    if kind == Kind::Mariadb {
        statements.push(format!(
            "CREATE TABLE {table} (local_part VARCHAR(64), domain_name VARCHAR(128), \
             pw_hash VARCHAR(255), active TINYINT, imap_host VARCHAR(64), imap_port VARCHAR(8))"
        ));
    }
    admin(&server, &statements).await;
    let mut rows = vec![
        format!("INSERT INTO {table} VALUES ('x', 'a.example', '{{PLAIN}}xa', {t}, NULL, NULL)"),
        format!("INSERT INTO {table} VALUES ('x', 'b.example', '{{PLAIN}}xb', {t}, '127.0.0.7', '2143')"),
        format!("INSERT INTO {table} VALUES ('off', 'a.example', '{{PLAIN}}off', {f}, NULL, NULL)"),
        format!("INSERT INTO {table} VALUES ('bare', '', '{{PLAIN}}bare', {t}, NULL, NULL)"),
    ];
    if kind == Kind::Postgres {
        rows.insert(
            0,
            format!(
                "CREATE TABLE {table} (local_part TEXT, domain_name TEXT, pw_hash TEXT, \
                 active BOOLEAN, imap_host INET, imap_port TEXT)"
            ),
        );
    }
    server.execute(Some(BUILT_IN_DB), &rows).await;

    // Dovecot style: quoted placeholders, aliases to our column names.
    let query =
        "SELECT pw_hash AS password, active AS enabled, imap_host AS host, imap_port AS port \
                 FROM mailbox WHERE local_part = '%n' AND domain_name = '%d'";
    let db = open(&server, "", Some(query));
    assert!(matches!(
        verify(&db, "x@a.example", "xa").await,
        Ok(Verdict::Accepted(_))
    ));
    assert!(matches!(
        verify(&db, "x@a.example", "xb").await,
        Ok(Verdict::Rejected(Rejection::PasswordMismatch))
    ));
    match verify(&db, "x@b.example", "xb").await {
        Ok(Verdict::Accepted(p)) => {
            assert_eq!(p.user, "x@b.example");
            assert_eq!(p.upstream_host, Some("127.0.0.7".parse().unwrap()));
            assert_eq!(p.upstream_port, Some(2143));
        }
        other => panic!("{kind:?}: {other:?}"),
    }
    assert!(matches!(
        verify(&db, "off@a.example", "off").await,
        Ok(Verdict::Rejected(Rejection::Disabled))
    ));
    assert!(matches!(
        verify(&db, "x@c.example", "xa").await,
        Ok(Verdict::Rejected(Rejection::UnknownUser))
    ));
    // No `@`: %n is the whole name, %d is empty.
    assert!(matches!(
        verify(&db, "bare", "bare").await,
        Ok(Verdict::Accepted(_))
    ));

    // A query without a `password` column is a configuration error: a
    // temporary failure, never a rejection. So is one that matches several
    // rows (reported as the user's record being unusable, so no cached
    // record answers for it), and a query the server refuses.
    for (query, user) in [
        (
            "SELECT pw_hash FROM mailbox WHERE local_part = %n",
            "x@a.example",
        ),
        (
            "SELECT pw_hash AS password FROM mailbox WHERE local_part = %n",
            "x@zzz",
        ),
        (
            "SELECT password FROM no_such_table WHERE u = %u",
            "x@a.example",
        ),
    ] {
        let db = open(&server, "", Some(query));
        let got = verify(&db, user, "xa").await;
        assert!(
            match &got {
                Err(PassdbError::BadStoredPassword(why)) => why.contains("rows for one user"),
                Err(PassdbError::Unavailable(_)) => true,
                _ => false,
            },
            "{kind:?}: {query}: {got:?}"
        );
    }
    // Templates the binder cannot turn into parameters are refused at start-up.
    assert!(AnyPassdb::open_with(
        &server.uri(BUILT_IN_DB, ""),
        &PassdbOptions {
            app_password_query: None,
            default_scheme: None,
            password_query: Some("SELECT pw_hash AS password FROM mailbox WHERE u = '%n@x'".into()),
        },
    )
    .is_err());
}

const EVIL: &[&str] = &[
    "' OR '1'='1",
    "' OR 1=1 --",
    "x'; DROP TABLE users; --",
    "alice@example.org' --",
    "alice@example.org'; --",
    "\" OR \"\"=\"",
    "%u",
    "%",
    "_",
    "$1",
    "?",
    "\\",
    "\\' OR 1=1 #",
    "alice@example.org\\",
    "alice@example.org\0",
    "' UNION SELECT '{PLAIN}x', 1, NULL, NULL, NULL --",
];

async fn injection_shaped_names(kind: Kind) {
    let server = built_in(kind).await;
    let table = if kind == Kind::Postgres {
        "users"
    } else {
        "auth.users"
    };
    let before = count(
        &server,
        BUILT_IN_DB,
        &format!("SELECT count(*) FROM {table}"),
    )
    .await;
    for query in [
        None,
        Some("SELECT password FROM users WHERE username = '%u' AND domain = '%d'"),
    ] {
        let db = open(&server, "", query);
        for evil in EVIL {
            for password in ["x", "alice-pw", ""] {
                let r = verify(&db, evil, password).await;
                assert!(
                    matches!(r, Ok(Verdict::Rejected(Rejection::UnknownUser))),
                    "{kind:?} {evil:?}/{password:?} with {query:?}: {r:?}"
                );
            }
            let r = db.lookup_credentials(evil).await;
            assert!(
                matches!(r, Ok(Lookup::Rejected(Rejection::UnknownUser))),
                "{kind:?} {evil:?}: {r:?}"
            );
        }
    }
    // The table is intact and still answers.
    let after = count(
        &server,
        BUILT_IN_DB,
        &format!("SELECT count(*) FROM {table}"),
    )
    .await;
    assert_eq!(before, after);
    let db = open(&server, "", None);
    assert!(matches!(
        verify(&db, "alice@example.org", "alice-pw").await,
        Ok(Verdict::Accepted(_))
    ));
}

async fn slow_query_times_out(kind: Kind) {
    let server = built_in(kind).await;
    let query = match kind {
        Kind::Postgres => "SELECT '{PLAIN}x' AS password FROM pg_sleep(10) WHERE %u <> ''",
        Kind::Mariadb => {
            "SELECT '{PLAIN}x' AS password, SLEEP(10) AS note FROM DUAL WHERE %u <> ''"
        }
    };
    let db = open(&server, "query_timeout=1", Some(query));
    let started = Instant::now();
    let r = verify(&db, "alice@example.org", "x").await;
    let took = started.elapsed();
    assert!(matches!(r, Err(PassdbError::Timeout)), "{kind:?}: {r:?}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{kind:?}: timed out after {took:?}"
    );
    // The statement was cancelled server-side, not left sleeping.
    let activity = match kind {
        Kind::Postgres => {
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(10)%' \
             AND state = 'active' AND pid <> pg_backend_pid()"
        }
        Kind::Mariadb => {
            "SELECT count(*) FROM information_schema.processlist \
             WHERE info LIKE '%SLEEP(10)%' AND id <> CONNECTION_ID()"
        }
    };
    wait_until_async(
        &format!("{kind:?}: the slow query to end"),
        Duration::from_secs(3),
        || async { count(&server, BUILT_IN_DB, activity).await == 0 },
    )
    .await;
    println!("{kind:?}: query timeout answered after {took:?}");
}

async fn server_killed_and_restarted(kind: Kind) {
    let mut server = built_in(kind).await;
    let db = open(&server, "connect_timeout=1&query_timeout=2", None);
    assert!(matches!(
        verify(&db, "alice@example.org", "alice-pw").await,
        Ok(Verdict::Accepted(_))
    ));
    server.kill();
    for attempt in 0..3 {
        let started = Instant::now();
        let r = verify(&db, "alice@example.org", "alice-pw").await;
        let took = started.elapsed();
        assert!(
            matches!(r, Err(PassdbError::Unavailable(_) | PassdbError::Timeout)),
            "{kind:?} attempt {attempt} while down: {r:?}"
        );
        assert!(took < Duration::from_secs(3), "{kind:?}: took {took:?}");
        let r = db.lookup_credentials("alice@example.org").await;
        assert!(r.is_err(), "{kind:?}: {r:?}");
        println!("{kind:?} down, attempt {attempt}: {r:?} after {took:?}");
    }
    server.restart();
    let started = Instant::now();
    let r = verify(&db, "alice@example.org", "alice-pw").await;
    assert!(
        matches!(r, Ok(Verdict::Accepted(_))),
        "{kind:?}: first request after the restart: {r:?}"
    );
    println!("{kind:?} back: first request took {:?}", started.elapsed());

    // Killed while a query is in flight: an error at once, not a hang
    // until the query timeout.
    let slow = match kind {
        Kind::Postgres => "SELECT '{PLAIN}x' AS password FROM pg_sleep(5) WHERE %u <> ''",
        Kind::Mariadb => "SELECT '{PLAIN}x' AS password, SLEEP(5) AS s FROM DUAL WHERE %u <> ''",
    };
    let running = match kind {
        Kind::Postgres => {
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(5)%' \
             AND state = 'active' AND pid <> pg_backend_pid()"
        }
        Kind::Mariadb => {
            "SELECT count(*) FROM information_schema.processlist \
             WHERE info LIKE '%SLEEP(5)%' AND id <> CONNECTION_ID()"
        }
    };
    let slow_db = open(&server, "connect_timeout=1&query_timeout=4", Some(slow));
    let started = Instant::now();
    let (r, ()) = tokio::join!(verify(&slow_db, "alice@example.org", "x"), async {
        wait_until_async("the slow query to run", Duration::from_secs(3), || async {
            count(&server, BUILT_IN_DB, running).await > 0
        })
        .await;
        server.kill();
    });
    let took = started.elapsed();
    assert!(
        matches!(r, Err(PassdbError::Unavailable(_))),
        "{kind:?}: killed mid-query: {r:?}"
    );
    assert!(took < Duration::from_secs(2), "{kind:?}: took {took:?}");
    println!("{kind:?} killed mid-query: {r:?} after {took:?}");
    server.restart();
    let started = Instant::now();
    let r = verify(&db, "alice@example.org", "alice-pw").await;
    assert!(
        matches!(r, Ok(Verdict::Accepted(_))),
        "{kind:?}: first request after the restart: {r:?}"
    );
    println!("{kind:?} back: first request took {:?}", started.elapsed());
    assert!(matches!(
        verify(&db, "alice@example.org", "wrong").await,
        Ok(Verdict::Rejected(Rejection::PasswordMismatch))
    ));
}

/// A server that accepts TCP but never speaks: the connect timeout applies.
async fn unresponsive_server(kind: Kind) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let uri = match kind {
        Kind::Postgres => format!("postgres://u@127.0.0.1:{port}/db?connect_timeout=0.5"),
        Kind::Mariadb => format!("mysql://u@127.0.0.1:{port}/db?connect_timeout=0.5"),
    };
    let db = AnyPassdb::open(&uri, None).unwrap();
    for _ in 0..2 {
        let started = Instant::now();
        let r = verify(&db, "alice", "x").await;
        let took = started.elapsed();
        assert!(matches!(r, Err(PassdbError::Timeout)), "{kind:?}: {r:?}");
        assert!(
            took >= Duration::from_millis(450) && took < Duration::from_millis(1500),
            "{kind:?}: {took:?}"
        );
    }
    drop(listener);
}

// ------------------------------------------------------------ tests

#[tokio::test]
async fn postgres_unresponsive_server_is_a_timeout() {
    unresponsive_server(Kind::Postgres).await;
}

#[tokio::test]
async fn mariadb_unresponsive_server_is_a_timeout() {
    unresponsive_server(Kind::Mariadb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_built_in_schema() {
    built_in_schema(Kind::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_built_in_schema() {
    built_in_schema(Kind::Mariadb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_custom_query_template() {
    custom_query(Kind::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_custom_query_template() {
    custom_query(Kind::Mariadb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_injection_shaped_names_are_harmless() {
    injection_shaped_names(Kind::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_injection_shaped_names_are_harmless() {
    injection_shaped_names(Kind::Mariadb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_slow_query_is_a_timeout() {
    slow_query_times_out(Kind::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_slow_query_is_a_timeout() {
    slow_query_times_out(Kind::Mariadb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_killed_server_is_temporary_and_comes_back() {
    server_killed_and_restarted(Kind::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_killed_server_is_temporary_and_comes_back() {
    server_killed_and_restarted(Kind::Mariadb).await;
}

#[tokio::test]
async fn uri_errors_never_show_the_database_password() {
    for uri in [
        "postgres://u:hunter2@127.0.0.1/db?sslmode=verify-ca",
        "postgres://u:hunter2@127.0.0.1/db?sslmode=verify-full",
        "postgres://u:hunter2@127.0.0.1/db?sslmode=require&sslrootcert=/nonexistent",
        "postgresql://u:hunter2@127.0.0.1/db?pool_size=0",
        "mysql://u:hunter2@127.0.0.1/db?sslrootcert=/etc/hostname",
        "mysql://u:hunter2@127.0.0.1/db?require_ssl=true&sslrootcert=/nonexistent",
        "mariadb://u:hunter2@127.0.0.1/db?no_such_option=1",
    ] {
        let e = AnyPassdb::open(uri, None).unwrap_err().to_string();
        assert!(!e.contains("hunter2"), "{e}");
        assert!(e.contains("u:***@"), "{e}");
    }
    let db = AnyPassdb::open("postgres://u:hunter2@127.0.0.1:1/db", None).unwrap();
    assert!(!format!("{db:?}").contains("hunter2"));
    let db = AnyPassdb::open("mysql://u:hunter2@127.0.0.1:1/db", None).unwrap();
    assert!(!format!("{db:?}").contains("hunter2"));
}

/// With `query` answering only over TLS: the passdb of `server`'s database
/// `db` with `plain` options finds no row, with each of `encrypted` it accepts.
async fn assert_only_tls_answers(
    server: &Server,
    db: &str,
    query: &str,
    plain: &str,
    encrypted: &[String],
) {
    let plain = open_uri(&server.uri(db, plain), Some(query));
    assert!(matches!(
        verify(&plain, "alice", "tls-pw").await,
        Ok(Verdict::Rejected(Rejection::UnknownUser))
    ));
    for options in encrypted {
        let db = open_uri(&server.uri(db, options), Some(query));
        let r = verify(&db, "alice", "tls-pw").await;
        assert!(matches!(r, Ok(Verdict::Accepted(_))), "{options}: {r:?}");
    }
}

/// A failed TLS handshake (`what`) is a temporary failure, never a rejection.
async fn assert_handshake_unavailable(db: &AnyPassdb, what: &str) {
    let r = verify(db, "alice", "tls-pw").await;
    assert!(matches!(r, Err(PassdbError::Unavailable(_))), "{r:?}");
    println!("{what}: {r:?}");
}

/// `sslmode=require` encrypts (the server sees TLS), `verify-full` checks the
/// chain and name, and a wrong CA is a temporary failure, never a rejection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_tls() {
    let server = Server::start_tls(Kind::Postgres);
    // Answers only over TLS: the row exists iff this session is encrypted.
    let query = "SELECT '{PLAIN}tls-pw' AS password FROM pg_stat_ssl \
                 WHERE pid = pg_backend_pid() AND ssl AND %u <> ''";
    let cert = server.tls_cert().display().to_string();
    let encrypted = [
        "sslmode=require".to_owned(),
        format!("sslmode=verify-full&sslrootcert={cert}"),
    ];
    assert_only_tls_answers(&server, "postgres", query, "sslmode=disable", &encrypted).await;
    // localhost is in the certificate too.
    let db = open_uri(
        &format!(
            "postgres://postgres@localhost:{}/postgres?sslmode=verify-full&sslrootcert={cert}",
            server.port
        ),
        Some(query),
    );
    let r = verify(&db, "alice", "tls-pw").await;
    assert!(matches!(r, Ok(Verdict::Accepted(_))), "localhost: {r:?}");

    // Another CA: the handshake fails, which is a temporary failure.
    let other = tempfile::tempdir().unwrap();
    let (_, other_cert) = crate::common::sql::make_ca(other.path(), "other-ca");
    let options = format!("sslmode=verify-full&sslrootcert={}", other_cert.display());
    let db = open_uri(&server.uri("postgres", &options), Some(query));
    assert_handshake_unavailable(&db, "wrong CA").await;
}

/// MariaDB over TLS: `require_ssl=true` with our CA (`sslrootcert=`)
/// encrypts; public roots only (the default) refuse the test CA, a
/// temporary failure; `verify_ca=false` accepts any certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_tls() {
    let server = Server::start_tls(Kind::Mariadb);
    // A row only if this session is encrypted.
    let query = "SELECT '{PLAIN}tls-pw' AS password FROM information_schema.session_status \
                 WHERE variable_name = 'SSL_CIPHER' AND variable_value <> '' AND %u <> ''";
    let cert = server.tls_cert().display().to_string();
    let encrypted = [
        format!("require_ssl=true&sslrootcert={cert}"),
        "require_ssl=true&verify_ca=false".to_owned(),
    ];
    assert_only_tls_answers(&server, "mysql", query, "", &encrypted).await;
    let db = open_uri(&server.uri("mysql", "require_ssl=true"), Some(query));
    assert_handshake_unavailable(&db, "MariaDB, test CA not trusted").await;
}

/// HTTP Digest from a SQL `digest_ha1` column: no plaintext in the database.
async fn digest_ha1_column(kind: Kind) {
    let server = Server::start(kind);
    let table = match kind {
        Kind::Postgres => "web_users",
        Kind::Mariadb => "auth.web_users",
    };
    let ha1 = DigestSite::ha1("carol", "s3cret");
    admin(&server, &[format!("CREATE DATABASE {BUILT_IN_DB}")]).await;
    let create = format!("CREATE TABLE {table} (login VARCHAR(64), ha1 VARCHAR(32), active INT)");
    let rows = [
        format!("INSERT INTO {table} VALUES ('carol', '{ha1}', 1)"),
        format!("INSERT INTO {table} VALUES ('dan', '{ha1}', 0)"),
    ];
    server
        .execute(
            Some(BUILT_IN_DB),
            &[create, rows[0].clone(), rows[1].clone()],
        )
        .await;
    let query = format!(
        "SELECT NULL AS password, ha1 AS digest_ha1, active AS enabled FROM {table} WHERE login = %u"
    );
    let db = open(&server, "", Some(&query));
    assert_eq!(
        db.digest_ha1("carol", "Intranet").await.unwrap().as_deref(),
        Some(ha1.as_str())
    );
    assert_eq!(
        db.digest_ha1("dan", "Intranet").await.unwrap(),
        None,
        "disabled"
    );
    assert_eq!(db.digest_ha1("nobody", "Intranet").await.unwrap(), None);

    // The whole auth_request decision: challenge, then a Digest answer.
    let policy = nginx_auth_fcgi::authenticator::Policy {
        mechanisms: [nginx_auth_fcgi::mech::Mechanism::Plain]
            .into_iter()
            .collect(),
        local_domains: vec![],
        upstreams: Default::default(),
        wait: Default::default(),
        smtp_pass: false,
        timeout: std::time::Duration::from_secs(5),
        throttle: None,
        cache: None,
    };
    let site = DigestSite::new(nginx_auth_fcgi::service::Service::new(
        nginx_auth_fcgi::authenticator::Authenticator::new(policy, vec![db]).unwrap(),
        vec![],
    ))
    .await;
    let ok = site.respond(Some(&site.answer("carol", &ha1, 1))).await;
    assert!(ok.starts_with("Status: 200"), "{ok}");
    let wrong_ha1 = md5_hex("carol:Intranet:guess");
    let no = site
        .respond(Some(&site.answer("carol", &wrong_ha1, 2)))
        .await;
    assert!(no.starts_with("Status: 401"), "{no}");
    let dan = site.respond(Some(&site.answer("dan", &ha1, 3))).await;
    assert!(dan.starts_with("Status: 401"), "disabled: {dan}");
}

fn md5_hex(s: &str) -> String {
    nginx_auth_fcgi::http_auth::digest::Algorithm::Md5.h(s.as_bytes())
}

/// An HTTP `auth_request` location (realm `Intranet`, MD5 Digest) on an
/// in-process service, with the nonce of its first challenge.
pub(crate) struct DigestSite {
    service: nginx_auth_fcgi::service::Service,
    nonce: String,
}

impl DigestSite {
    pub(crate) async fn new(service: nginx_auth_fcgi::service::Service) -> DigestSite {
        let mut site = DigestSite {
            service,
            nonce: String::new(),
        };
        let first = site.respond(None).await;
        let i = first.find("nonce=\"").expect("a challenge") + 7;
        site.nonce = first[i..i + first[i..].find('"').unwrap()].to_owned();
        site
    }

    /// The reply to a GET of `/intranet/` with `authorization`.
    pub(crate) async fn respond(&self, authorization: Option<&str>) -> String {
        let mut p: Vec<(Vec<u8>, Vec<u8>)> = [
            ("REQUEST_METHOD", "GET"),
            ("REQUEST_URI", "/intranet/"),
            ("AUTH_REALM", "Intranet"),
            ("AUTH_DIGEST_ALGORITHMS", "MD5"),
        ]
        .iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect();
        if let Some(a) = authorization {
            p.push((b"HTTP_AUTHORIZATION".to_vec(), a.as_bytes().to_vec()));
        }
        let params = nginx_auth_fcgi::fastcgi::Params::from_pairs(p);
        String::from_utf8(self.service.respond(&params).await).unwrap()
    }

    /// `user`'s Digest answer with `ha1` and count `nc` (RFC 7616 §3.4.1,
    /// computed here).
    pub(crate) fn answer(&self, user: &str, ha1: &str, nc: u32) -> String {
        let nonce = &self.nonce;
        let resp = md5_hex(&format!(
            "{ha1}:{nonce}:{nc:08x}:cn:auth:{}",
            md5_hex("GET:/intranet/")
        ));
        format!(
            "Digest username=\"{user}\", realm=\"Intranet\", nonce=\"{nonce}\", \
             uri=\"/intranet/\", algorithm=MD5, qop=auth, nc={nc:08x}, cnonce=\"cn\", \
             response=\"{resp}\""
        )
    }

    /// HA1 of `user` with `password` in this realm.
    pub(crate) fn ha1(user: &str, password: &str) -> String {
        md5_hex(&format!("{user}:Intranet:{password}"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_digest_ha1_column() {
    digest_ha1_column(Kind::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_digest_ha1_column() {
    digest_ha1_column(Kind::Mariadb).await;
}

/// Issue 16: `app_password_query` on a real PostgreSQL server: one row per
/// app password (%n/%d bound), the user's own `require_app_password` from
/// the `password_query` row, all in the one lookup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_app_password_query() {
    let server = Server::start(Kind::Postgres);
    admin(&server, &[format!("CREATE DATABASE {BUILT_IN_DB}")]).await;
    let phone = nginx_auth_fcgi::scheme::hash(
        nginx_auth_fcgi::scheme::Scheme::Sha256Crypt,
        b"phone-secret",
    )
    .unwrap();
    let setup = [
        "CREATE TABLE mailbox (local TEXT, domain TEXT, pw TEXT, req TEXT)".to_owned(),
        "CREATE TABLE devices (local TEXT, domain TEXT, name TEXT, pw TEXT, scopes TEXT, \
         nets TEXT, expires BIGINT)"
            .to_owned(),
        "INSERT INTO mailbox VALUES ('alice', 'example.org', '{PLAIN}main', 'imap,pop3'), \
         ('bob', 'example.org', '{PLAIN}bob', NULL)"
            .to_owned(),
        format!(
            "INSERT INTO devices VALUES ('alice', 'example.org', 'phone', '{phone}', 'smtp', \
             NULL, NULL), ('alice', 'example.org', 'office', '{{PLAIN}}office', 'imap', \
             '192.0.2.0/24', 2000000000), ('alice', 'other.example', 'stranger', \
             '{{PLAIN}}x', 'imap', NULL, NULL)"
        ),
    ];
    let (client, conn) =
        tokio_postgres::connect(&server.uri(BUILT_IN_DB, ""), tokio_postgres::NoTls)
            .await
            .expect("connect");
    let task = tokio::spawn(conn);
    for s in &setup {
        client.batch_execute(s).await.expect("setup");
    }
    drop(client);
    let _ = task.await;

    let db = AnyPassdb::open_with(
        &server.uri(BUILT_IN_DB, ""),
        &PassdbOptions {
            default_scheme: None,
            password_query: Some(
                "SELECT pw AS password, req AS require_app_password FROM mailbox \
                 WHERE local = %n AND domain = %d"
                    .into(),
            ),
            app_password_query: Some(
                "SELECT name, pw AS password, scopes, nets AS networks, expires AS expires_at \
                 FROM devices WHERE local = '%n' AND domain = '%d' ORDER BY name"
                    .into(),
            ),
        },
    )
    .unwrap_or_else(|e| panic!("open: {e}"));
    let Lookup::Found { apps, .. } = db.lookup_credentials("alice@example.org").await.unwrap()
    else {
        panic!("alice not found");
    };
    let names: Vec<_> = apps.list.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["office", "phone"], "only alice@example.org's");
    assert_eq!(apps.required.to_string(), "imap,pop3");
    assert!(apps.list[1].stored.verify(b"phone-secret").unwrap());
    assert_eq!(apps.list[0].expires, Some(2_000_000_000));
    assert_eq!(apps.list[0].networks.len(), 1);
    let Lookup::Found { apps, .. } = db.lookup_credentials("bob@example.org").await.unwrap() else {
        panic!("bob not found");
    };
    assert!(apps.list.is_empty() && apps.required.is_empty());

    // A template the binder cannot use is refused at start-up.
    assert!(AnyPassdb::open_with(
        &server.uri(BUILT_IN_DB, ""),
        &PassdbOptions {
            app_password_query: Some("SELECT * FROM devices WHERE local = '%n@x'".into()),
            ..PassdbOptions::default()
        },
    )
    .is_err());
}
