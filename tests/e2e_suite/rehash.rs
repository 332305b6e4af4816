//! Transparent rehash end to end (issue 16): IMAP LOGIN through nginx to
//! the daemon with `--upgrade-scheme SHA512-CRYPT:rounds=20000`, Dovecot
//! behind it checking the forwarded password. For SQLite and for a
//! passwd-file that Dovecot shares: an `{MD5-CRYPT}` user and a
//! `{SHA512-CRYPT}` user at 5000 rounds log in, their stored hash becomes
//! the target, they log in again (Dovecot reading the rewritten passwd-file),
//! and a password change racing the worker's write is never overwritten.
//!
//! The race is made deterministic with the debug builds' gate
//! (`NGINX_AUTH_FCGI_TEST_REHASH_GATE`): the worker announces `USER.held`
//! before its write and waits for `USER.go`; the password is changed in
//! between. Every wait is on state (a file, a log line, a stored hash).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::e2e::*;
use crate::common::proc::wait_until;

const TARGET: &str = "SHA512-CRYPT:rounds=20000";
const UPGRADED: &str = "{SHA512-CRYPT}$6$rounds=20000$";

/// (name, doveadm scheme, password) of the users these tests add.
const MD5: (&str, &str, &str) = ("rh-md5", "MD5-CRYPT", "md5-pw-31");
const SHA: (&str, &str, &str) = ("rh-sha", "SHA512-CRYPT", "sha-pw-77");
const RACER: (&str, &str, &str) = ("rh-racer", "MD5-CRYPT", "racer-pw-1");
const RACER_NEW: &str = "racer-new-pw-2";

/// Where the daemon stores passwords, read and changed by the test.
trait Stored {
    fn get(&self, user: &str) -> String;
    fn set(&self, user: &str, hash: &str);
}

struct Sqlite(PathBuf);

impl Stored for Sqlite {
    fn get(&self, user: &str) -> String {
        use nginx_auth_fcgi::passdb::rehash::{SqliteStore, Store as _};
        SqliteStore::new(&self.0).current(user).unwrap().unwrap()
    }
    fn set(&self, user: &str, hash: &str) {
        // What `user passwd` does.
        nginx_auth_fcgi::passdb::sqlite::Admin::open(&self.0)
            .unwrap()
            .passwd(user, hash)
            .unwrap();
    }
}

struct File(PathBuf);

impl Stored for File {
    fn get(&self, user: &str) -> String {
        let text = fs::read_to_string(&self.0).unwrap();
        let prefix = format!("{user}:");
        let line = text.lines().find(|l| l.starts_with(&prefix)).unwrap();
        line.split(':').nth(1).unwrap().to_owned()
    }
    fn set(&self, user: &str, hash: &str) {
        // An admin's edit: the whole file written anew and renamed over.
        let old = self.get(user);
        let text = fs::read_to_string(&self.0)
            .unwrap()
            .replace(&format!("{user}:{old}:"), &format!("{user}:{hash}:"));
        let tmp = self.0.with_extension("edit");
        fs::write(&tmp, text).unwrap();
        fs::rename(&tmp, &self.0).unwrap();
    }
}

fn login(stack: &Stack, user: &str, password: &str) -> bool {
    stack.client("imap", "login", user, &[password], &[]).ok
}

fn wait_log(stack: &Stack, what: &str) {
    wait_until(
        &format!("daemon log `{what}`"),
        Duration::from_secs(30),
        || stack.daemon_log().contains(what),
    );
}

/// The scenario against a started `stack` whose daemon stores into `db`;
/// `dovecot` holds Dovecot's copy of the passwords (`None`: the same file).
fn upgrade_and_race(stack: &Stack, db: &dyn Stored, dovecot: Option<&File>, gate: &Path) {
    for (user, _, _) in [MD5, SHA] {
        fs::write(gate.join(format!("{user}.go")), "").unwrap();
    }
    for (user, scheme, password) in [MD5, SHA] {
        assert!(db.get(user).starts_with(&format!("{{{scheme}}}")));
        assert!(login(stack, user, password), "{user}");
        let audit = stack.audit_lines(user).join("\n");
        assert!(audit.contains("rehash=SHA512-CRYPT"), "{audit}");
    }
    for (user, _, password) in [MD5, SHA] {
        wait_until(&format!("{user} upgraded"), Duration::from_secs(30), || {
            db.get(user).starts_with(UPGRADED)
        });
        if let Some(d) = dovecot {
            d.set(user, &db.get(user));
        }
        assert!(login(stack, user, password), "{user} after the rehash");
        assert!(!login(stack, user, "wrong"), "{user}");
    }
    // Racing: the worker holds before its write; the password changes.
    let (user, _, password) = RACER;
    let before = db.get(user);
    assert!(login(stack, user, password));
    wait_until("the worker to hold", Duration::from_secs(30), || {
        gate.join(format!("{user}.held")).exists()
    });
    let changed = doveadm_pw("BLF-CRYPT", RACER_NEW);
    db.set(user, &changed);
    if let Some(d) = dovecot {
        d.set(user, &changed);
    }
    fs::write(gate.join(format!("{user}.go")), "").unwrap();
    wait_log(stack, &format!("rehash: {user}: changed meanwhile"));
    assert_ne!(before, changed);
    assert_eq!(db.get(user), changed, "the concurrent change wins");
    wait_until("the new password", Duration::from_secs(30), || {
        login(stack, user, RACER_NEW)
    });
    assert!(!login(stack, user, password));
}

fn extras(passdb: String, args: &[&str], gate: &Path, dovecot_users: Option<&Path>) -> Extras {
    let mut e = Extras::passdb(passdb, args);
    e.daemon_env = vec![(
        "NGINX_AUTH_FCGI_TEST_REHASH_GATE".into(),
        gate.display().to_string(),
    )];
    if let Some(users) = dovecot_users {
        e.dovecot_conf = format!(
            "passdb {{\n  driver = passwd-file\n  args = username_format=%u {}\n}}\n",
            users.display()
        );
    }
    e
}

fn users_text() -> String {
    [MD5, SHA, RACER]
        .iter()
        .map(|(u, s, p)| format!("{u}:{}::::::\n", doveadm_pw(s, p)))
        .collect()
}

#[test]
fn sqlite_hashes_are_upgraded_after_login_and_a_racing_passwd_wins() {
    let dir = tempfile::tempdir().unwrap();
    let gate = dir.path().join("gate");
    fs::create_dir(&gate).unwrap();
    let db = dir.path().join("users.db");
    let text = users_text();
    // Dovecot checks the forwarded passwords against its own copy.
    let dovecot_users = dir.path().join("dovecot-users");
    fs::write(&dovecot_users, &text).unwrap();
    let admin = nginx_auth_fcgi::passdb::sqlite::Admin::open(&db).unwrap();
    for line in text.lines() {
        let mut f = line.split(':');
        admin.add(f.next().unwrap(), f.next().unwrap()).unwrap();
    }
    let stack = Stack::start_with_extras(
        Launch::Direct,
        extras(
            format!("sqlite:{}", db.display()),
            &["--upgrade-scheme", TARGET],
            &gate,
            Some(&dovecot_users),
        ),
    );
    let dovecot = File(dovecot_users);
    upgrade_and_race(&stack, &Sqlite(db), Some(&dovecot), &gate);
}

#[test]
fn a_shared_passwd_file_is_rewritten_and_dovecot_accepts_the_new_hashes() {
    let dir = tempfile::tempdir().unwrap();
    let gate = dir.path().join("gate");
    fs::create_dir(&gate).unwrap();
    // The stack's own passwd-file, which Dovecot reads too.
    let mut e = extras(
        String::new(),
        &["--upgrade-scheme", TARGET, "--rehash-passwd-file"],
        &gate,
        None,
    );
    e.passdb = None;
    let stack = Stack::start_with_extras(Launch::Direct, e);
    for line in users_text().lines() {
        stack.add_passwd_line(line);
    }
    let path = stack.passwd_path();
    let before = fs::read_to_string(&path).unwrap();
    upgrade_and_race(&stack, &File(path.clone()), None, &gate);
    // Every other line is as it was, in the same order; the mode is kept.
    let after = fs::read_to_string(&path).unwrap();
    let unchanged = |t: &str| -> Vec<String> {
        t.lines()
            .filter(|l| !l.starts_with("rh-"))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(unchanged(&after), unchanged(&before));
    let order = |t: &str| -> Vec<String> {
        t.lines()
            .map(|l| l.split(':').next().unwrap().to_owned())
            .collect()
    };
    assert_eq!(order(&after), order(&before));
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o644
    );
    // Dovecot itself accepts the rewritten hashes (it checked every login
    // above against this file); the daemon reloaded it without complaint.
    assert!(!stack.daemon_log().contains("rehash: rh-md5: failed"));
}

/// A SQL server's table, read and changed through its admin connection.
struct Sql<'a> {
    server: &'a crate::common::sql::Server,
    /// (select by user, update: hash then user), in the server's dialect.
    select: &'static str,
    update: &'static str,
}

impl Sql<'_> {
    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// Runs each `;`-separated statement of `sql` (no parameters).
    fn batch(&self, sql: &str) {
        for stmt in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            self.exec(stmt, ["", ""]);
        }
    }

    fn exec(&self, sql: &str, params: [&str; 2]) -> Option<String> {
        use crate::common::sql::Kind;
        Self::rt().block_on(async {
            match self.server.kind {
                Kind::Postgres => {
                    let (client, conn) =
                        tokio_postgres::connect(&self.server.admin_uri(), tokio_postgres::NoTls)
                            .await
                            .unwrap();
                    let task = tokio::spawn(conn);
                    let p: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
                        .iter()
                        .filter(|p| !p.is_empty())
                        .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
                        .collect();
                    let rows = client.query(sql, &p).await.unwrap();
                    drop(client);
                    let _ = task.await;
                    rows.first().map(|r| r.get::<_, String>(0))
                }
                Kind::Mariadb => {
                    use mysql_async::prelude::Queryable;
                    let mut conn = mysql_async::Conn::from_url(self.server.admin_uri())
                        .await
                        .unwrap();
                    let p: Vec<mysql_async::Value> = params
                        .iter()
                        .filter(|p| !p.is_empty())
                        .map(|p| mysql_async::Value::from(*p))
                        .collect();
                    let row: Option<String> = conn
                        .exec_first(sql, mysql_async::Params::Positional(p))
                        .await
                        .unwrap();
                    conn.disconnect().await.unwrap();
                    row
                }
            }
        })
    }
}

impl Stored for Sql<'_> {
    fn get(&self, user: &str) -> String {
        self.exec(self.select, [user, ""])
            .expect("a stored password")
    }
    fn set(&self, user: &str, hash: &str) {
        self.exec(self.update, [hash, user]);
    }
}

/// The scenario with a `kind` SQL passdb, Dovecot checking its own copy;
/// `schema` creates and fills the table from `users_text()` lines,
/// `daemon_args` adds what the table needs (`--password-query` …).
fn sql_upgrade_and_race(
    kind: crate::common::sql::Kind,
    db: &str,
    setup: &dyn Fn(&Sql, &str),
    sql: (&'static str, &'static str),
    daemon_args: &[&str],
) {
    let server = crate::common::sql::Server::start(kind);
    let table = Sql {
        server: &server,
        select: sql.0,
        update: sql.1,
    };
    let dir = tempfile::tempdir().unwrap();
    let gate = dir.path().join("gate");
    fs::create_dir(&gate).unwrap();
    let text = users_text();
    let dovecot_users = dir.path().join("dovecot-users");
    fs::write(&dovecot_users, &text).unwrap();
    setup(&table, &text);
    let mut args = vec!["--upgrade-scheme", TARGET];
    args.extend(daemon_args);
    let stack = Stack::start_with_extras(
        Launch::Direct,
        extras(
            server.uri(db, "connect_timeout=2"),
            &args,
            &gate,
            Some(&dovecot_users),
        ),
    );
    upgrade_and_race(&stack, &table, Some(&File(dovecot_users)), &gate);
}

/// `INSERT` statements of `users_text()` into `table (user_col, pw_col)`.
fn inserts(text: &str, table: &str) -> String {
    text.lines()
        .map(|l| {
            let mut f = l.split(':');
            let (u, h) = (f.next().unwrap(), f.next().unwrap());
            format!("INSERT INTO {table} VALUES ('{u}', '{h}');\n")
        })
        .collect()
}

#[test]
fn postgres_built_in_schema_hashes_are_upgraded_and_a_racing_change_wins() {
    use crate::common::sql::Kind;
    sql_upgrade_and_race(
        Kind::Postgres,
        "postgres",
        &|t, text| {
            t.batch(nginx_auth_fcgi::passdb::sql::POSTGRES_SCHEMA);
            t.batch(&inserts(text, "users (username, password)"));
        },
        (
            "SELECT password FROM users WHERE username = $1",
            "UPDATE users SET password = $1 WHERE username = $2",
        ),
        &[],
    );
}

#[test]
fn mariadb_custom_table_is_upgraded_through_update_query() {
    use crate::common::sql::Kind;
    sql_upgrade_and_race(
        Kind::Mariadb,
        "mail",
        &|t, text| {
            t.batch("CREATE DATABASE mail");
            t.batch("CREATE TABLE mail.mailbox (login VARCHAR(64) PRIMARY KEY, secret TEXT)");
            t.batch(&inserts(text, "mail.mailbox"));
        },
        (
            "SELECT secret FROM mail.mailbox WHERE login = ?",
            "UPDATE mail.mailbox SET secret = ? WHERE login = ?",
        ),
        &[
            "--password-query",
            "SELECT secret AS password FROM mailbox WHERE login = %u",
            "--update-query",
            "UPDATE mailbox SET secret = %{hash} WHERE login = %u AND secret = %{old_hash}",
        ],
    );
}
