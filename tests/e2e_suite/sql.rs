//! End to end with SQL passdbs: mail clients → nginx (shipped config) → our
//! daemon with `--passdb postgres://…` or `mariadb://…` → Dovecot, which
//! checks the password nginx forwards against the passwd-file of the e2e
//! harness. The SQL table holds the same users with Dovecot's own hashes, so
//! a login works only if the daemon read and verified the SQL row.
//!
//! The harness's daemon gets the SQL passdb instead of its passwd-file
//! ([`Extras::passdb`]), with the same flags otherwise.

use crate::common::e2e::*;
use crate::common::sql::{Kind, Server};

/// The database the passdb reads: PostgreSQL's admin database, a database
/// of its own on MariaDB (the admin URI points at `mysql`).
pub(crate) fn database(kind: Kind) -> &'static str {
    match kind {
        Kind::Postgres => "postgres",
        Kind::Mariadb => "auth",
    }
}

/// Loads the harness's users (Dovecot-made hashes) into the built-in schema.
pub(crate) fn load_users(server: &Server) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let users: Vec<(&str, &str)> = passwd_file_text()
        .lines()
        .map(|line| {
            let mut fields = line.split(':');
            (fields.next().unwrap(), fields.next().unwrap())
        })
        .collect();
    let mut statements = match server.kind {
        Kind::Postgres => vec![nginx_auth_fcgi::passdb::sql::POSTGRES_SCHEMA.to_owned()],
        Kind::Mariadb => {
            let db = database(Kind::Mariadb);
            vec![
                format!("CREATE DATABASE {db}"),
                format!("USE {db}"),
                nginx_auth_fcgi::passdb::sql::MYSQL_SCHEMA.to_owned(),
            ]
        }
    };
    for (name, hash) in &users {
        // Dovecot's hashes are `{SCHEME}` and base64 or crypt text: nothing
        // to quote in an SQL string literal.
        assert!(
            !format!("{name}{hash}").contains(['\'', '\\']),
            "{name}: {hash}"
        );
        statements.push(format!(
            "INSERT INTO users (username, password) VALUES ('{name}', '{hash}')"
        ));
    }
    rt.block_on(server.execute(None, &statements));
}

/// Logins of several schemes, CRAM-MD5 from the stored credential
/// (lookup_credentials), POP3, and rejections that all read alike, through
/// `stack`'s nginx with the passdb `what`.
fn logins_and_rejections(stack: &Stack, what: &str) {
    for user in [ALICE, SHA512_USER, BLF_USER] {
        let r = stack.client("imap", "login", user.name, &[user.password], &[]);
        assert!(r.ok, "{what}: IMAP LOGIN {}: {r:#?}", user.name);
    }
    // CRAM-MD5 reads the stored credential (lookup_credentials).
    let r = stack.client("imap", "cram-md5", ALICE.name, &[ALICE.password], &[]);
    assert!(r.ok, "{what}: IMAP CRAM-MD5: {r:#?}");
    let r = stack.client(
        "pop3",
        "user",
        SHA512_USER.name,
        &[SHA512_USER.password],
        &[],
    );
    assert!(r.ok, "{what}: POP3 USER/PASS: {r:#?}");
    for (user, password) in [(ALICE.name, "wrong"), ("nobody", "x"), ("' OR '1'='1", "x")] {
        let r = stack.client("imap", "login", user, &[password], &[]);
        assert!(!r.ok, "{what}: {user}: {r:#?}");
        assert_eq!(
            r.attempts[0].response,
            format!("NO {INVALID_LOGIN}"),
            "{what}: {user}: {r:#?}"
        );
    }
}

/// The mail cases through nginx with a `kind` passdb: logins of several
/// schemes, CRAM-MD5 from the stored plaintext, POP3, rejections that all
/// read alike, the server killed (temporary failure: the lookup cache is off
/// here; `outage.rs` has it on) and restarted.
fn mail_logins_through_nginx(kind: Kind) {
    let mut db = Server::start(kind);
    load_users(&db);
    let passdb = db.uri(database(kind), "connect_timeout=1&query_timeout=2");
    let stack = Stack::start_with_extras(
        Launch::Direct,
        Extras::passdb(passdb, &["--lookup-cache-ttl", "0"]),
    );

    logins_and_rejections(&stack, &format!("{kind:?}"));

    // The database goes away: a temporary failure, not a rejection.
    db.kill();
    let r = stack.client("imap", "login", ALICE.name, &[ALICE.password], &[]);
    assert!(!r.ok, "{kind:?}: {r:#?}");
    assert!(
        r.attempts[0].response.starts_with("NO ")
            && !r.attempts[0].response.contains(INVALID_LOGIN),
        "{kind:?}: {r:#?}"
    );
    println!("while {kind:?} is down: {:?}", r.attempts[0].response);
    // It comes back: the same daemon uses it again.
    db.restart();
    let r = stack.client("imap", "login", ALICE.name, &[ALICE.password], &[]);
    assert!(r.ok, "{kind:?}: after the restart: {r:#?}");

    let log = stack.daemon_log();
    for user in USERS {
        assert!(
            !log.contains(user.password),
            "password in the daemon log:\n{log}"
        );
    }
}

#[test]
fn mail_logins_through_nginx_with_a_postgres_passdb() {
    mail_logins_through_nginx(Kind::Postgres);
}

#[test]
fn mail_logins_through_nginx_with_a_mariadb_passdb() {
    mail_logins_through_nginx(Kind::Mariadb);
}

/// Runs the daemon binary with `args`, `stdin` as its input.
pub(crate) fn run_cli(args: &[String], stdin: &str) -> (bool, String) {
    let out = crate::common::daemon::run_cli(args, stdin);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `--password-query` and its TOML twin reach the SQL passdb; `check-config`
/// and the logs never show the database password.
#[test]
fn password_query_from_the_command_line_and_the_config_file() {
    let pg = Server::start(Kind::Postgres);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(pg.execute(
        None,
        &["CREATE TABLE mailbox (local TEXT, dom TEXT, secret TEXT);
           INSERT INTO mailbox VALUES ('x', 'a.example', '{PLAIN}pw-a'), ('x', 'b.example', '{PLAIN}pw-b');
           ALTER USER postgres PASSWORD 'db-secret-93';"
            .to_owned()],
    ));
    let query = "SELECT secret AS password FROM mailbox WHERE local = %n AND dom = %d";
    // trust authentication: the password is not needed, but it is in the URI.
    let uri = format!(
        "postgres://postgres:db-secret-93@127.0.0.1:{}/postgres",
        pg.port
    );
    let common = |user: &str| -> Vec<String> {
        vec![
            "auth".into(),
            "test".into(),
            user.into(),
            "--upstream".into(),
            "imap=127.0.0.1:143".into(),
        ]
    };

    let mut args = common("x@b.example");
    args.extend([
        "--passdb".into(),
        uri.clone(),
        "--password-query".into(),
        query.into(),
    ]);
    let (ok, out) = run_cli(&args, "pw-b\n");
    assert!(ok && out.contains("Auth-Status: OK"), "{out}");
    assert!(!out.contains("db-secret-93"), "{out}");
    let (_, out) = run_cli(&args, "pw-a\n");
    assert!(!out.contains("Auth-Status: OK"), "{out}");

    let config = pg.dir().join("cli.toml");
    std::fs::write(
        &config,
        format!("passdb = [\"{uri}\"]\npassword_query = \"{query}\"\n"),
    )
    .unwrap();
    let mut args = common("x@a.example");
    args.extend(["--config".into(), config.display().to_string()]);
    let (ok, out) = run_cli(&args, "pw-a\n");
    assert!(ok && out.contains("Auth-Status: OK"), "{out}");

    let (ok, out) = run_cli(
        &[
            "check-config".into(),
            "--config".into(),
            config.display().to_string(),
        ],
        "",
    );
    assert!(ok, "{out}");
    assert!(out.contains("postgres:***@"), "{out}");
    assert!(!out.contains("db-secret-93"), "{out}");

    // A template that cannot be bound is a configuration error.
    let (ok, out) = run_cli(
        &[
            "check-config".into(),
            "--passdb".into(),
            uri.clone(),
            "--password-query".into(),
            "SELECT secret AS password FROM mailbox WHERE local = '%n@x'".into(),
        ],
        "",
    );
    assert!(!ok, "{out}");
    assert!(
        out.contains("string literal") && !out.contains("db-secret-93"),
        "{out}"
    );
}

/// The embedded default: the same mail cases through nginx with a SQLite
/// passdb, and an admin edit made while the daemon runs is seen at once.
#[test]
fn mail_logins_through_nginx_with_the_sqlite_default() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("users.db");
    let admin = nginx_auth_fcgi::passdb::sqlite::Admin::open(&db).unwrap();
    for line in passwd_file_text().lines() {
        let mut fields = line.split(':');
        admin
            .add(fields.next().unwrap(), fields.next().unwrap())
            .unwrap();
    }
    let passdb = format!("sqlite:{}", db.display());
    let stack = Stack::start_with_extras(Launch::Direct, Extras::passdb(passdb.clone(), &[]));

    logins_and_rejections(&stack, "sqlite");
    // `user disable` while the service runs (its lookup cache holds the
    // record): the command tells the service, refused on the next login.
    let listen = format!("unix:{}", stack.socket.display());
    let user_cmd = |action: &str| {
        let args: Vec<String> = [
            "user",
            "--db",
            &passdb,
            "--listen",
            &listen,
            "--require-header",
            &format!("X-Auth-Key={AUTH_KEY}"),
            action,
            BLF_USER.name,
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        let (ok, out) = run_cli(&args, "");
        assert!(ok, "user {action}: {out}");
        assert!(
            out.contains("the running service forgot its cached record"),
            "user {action}: {out}"
        );
    };
    user_cmd("disable");
    let r = stack.client("imap", "login", BLF_USER.name, &[BLF_USER.password], &[]);
    assert_eq!(
        r.attempts[0].response,
        format!("NO {INVALID_LOGIN}"),
        "{r:#?}"
    );
    user_cmd("enable");
    let r = stack.client("imap", "login", BLF_USER.name, &[BLF_USER.password], &[]);
    assert!(r.ok, "re-enabled: {r:#?}");
    let log = stack.daemon_log();
    for user in USERS {
        assert!(!log.contains(user.password), "password in the log:\n{log}");
    }
}
