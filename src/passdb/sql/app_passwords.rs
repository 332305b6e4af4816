//! App passwords from a SQL server: the `app_password_query` template (same
//! `%u`/`%n`/`%d` bound parameters as `password_query`), one row per app
//! password with the columns of the built-in SQLite table: `name`,
//! `password`, `scopes` (`imap,smtp`, `http:REALM`), and optional `networks`
//! (comma-separated CIDRs) and `expires_at` (unix seconds, NULL: never). The
//! user's own `require_app_password` is an optional column of the
//! `password_query` row. Recording "last used" is the SQLite table's only.

use super::{Fields, Value};
use crate::net::Cidr;
use crate::passdb::app_password::{parse_networks, AppPassword, AppPasswords, Scope};
use crate::passdb::parse_stored;

/// The app passwords of `user` from the `app_password_query` rows. A row
/// that does not parse opens nothing (and is logged).
pub(super) fn from_rows(rows: Vec<Fields>, user: &str, apps: &mut AppPasswords) {
    for mut row in rows {
        let name = row.take(&["name"]).text().unwrap_or_default();
        let parsed = (|| -> Result<AppPassword, String> {
            let password = row.password.clone().ok_or("password is NULL")?;
            let scopes = row.take(&["scopes"]).text().unwrap_or_default();
            let networks: Vec<Cidr> = match row.take(&["networks"]).text() {
                Some(n) => parse_networks(&n).map_err(|e| e.to_string())?,
                None => Vec::new(),
            };
            let expires = match row.take(&["expires_at", "expires"]) {
                Value::Null => None,
                Value::Int(i) => Some(i),
                Value::Text(t) => Some(t.trim().parse().map_err(|_| "expires_at: unix seconds")?),
                Value::Bool(_) => return Err("expires_at: unix seconds".into()),
            };
            Ok(AppPassword {
                name: name.clone(),
                stored: parse_stored(&password, None).map_err(|e| e.to_string())?,
                scopes: Scope::parse_list(&scopes).map_err(|e| e.to_string())?,
                expires,
                networks,
            })
        })();
        match parsed {
            Ok(a) => apps.list.push(a),
            Err(e) => log::error!("sql: app password {name} of {user} is unusable: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Dialect, Template, Var};
    use super::*;

    fn row(cols: &[(&str, Value)], password: &str) -> Fields {
        Fields {
            password: Some(password.into()),
            extra: cols
                .iter()
                .map(|(n, v)| (n.to_string(), v.clone()))
                .collect(),
        }
    }

    #[test]
    fn rows_become_app_passwords_and_bad_rows_open_nothing() {
        let mut apps = AppPasswords::default();
        let rows = vec![
            row(
                &[
                    ("name", Value::Text("phone".into())),
                    ("scopes", Value::Text("imap,smtp".into())),
                    ("networks", Value::Text("192.0.2.0/24".into())),
                    ("expires_at", Value::Int(2_000_000_000)),
                ],
                "{PLAIN}p",
            ),
            row(
                &[
                    ("name", Value::Text("bad".into())),
                    ("scopes", Value::Text("ftp".into())),
                ],
                "{PLAIN}q",
            ),
            row(
                &[
                    ("name", Value::Text("wiki".into())),
                    ("scopes", Value::Text("http:Wiki".into())),
                    ("expires_at", Value::Text("12".into())),
                ],
                "{PLAIN}w",
            ),
        ];
        from_rows(rows, "alice", &mut apps);
        let names: Vec<_> = apps.list.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["phone", "wiki"]);
        assert_eq!(apps.list[0].expires, Some(2_000_000_000));
        assert_eq!(apps.list[0].networks.len(), 1);
        assert_eq!(apps.list[1].expires, Some(12));
    }

    #[test]
    fn the_template_binds_user_local_part_and_domain() {
        let t = Template::compile(
            "SELECT name, password, scopes FROM app_passwords \
             WHERE local = '%n' AND domain = %d OR username = \"%u\"",
            Dialect::Postgres,
        )
        .unwrap();
        assert!(
            t.sql
                .contains("local = $1 AND domain = $2 OR username = $3"),
            "{}",
            t.sql
        );
        assert_eq!(t.params, vec![Var::Local, Var::Domain, Var::User]);
        assert_eq!(
            t.values("bob@example.org"),
            ["bob", "example.org", "bob@example.org"]
        );
        let m =
            Template::compile("SELECT * FROM a WHERE u = %u AND d = %d", Dialect::Mysql).unwrap();
        assert_eq!(m.sql, "SELECT * FROM a WHERE u = ? AND d = ?");
    }
}
