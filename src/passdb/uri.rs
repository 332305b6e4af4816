//! Passdb URIs for logs, error messages and `check-config`: [`redact_uri`].
//!
//! Passwords go into URIs unencoded in practice (`postgres://app:pa/ss@db/auth`),
//! and then the URI is not well-formed: a URL parser (the `url` crate, the one
//! mysql_async and ldap3 use) ends the authority at the first `/`, `?` or `#`,
//! so it either refuses `pa/ss@db` or reads `ss@db/auth` as the path and finds
//! no password at all.
//!
//! Redaction must not depend on the URI being well-formed, so it reads the
//! raw text, and masks what any reading could take for a password:
//!
//! - the credentials end at the **last** `@` that is followed by a
//!   `host[:port][,host[:port]…]` list and then `/`, `?`, `#` or the end;
//!   everything between their first `:` and that `@` is masked, whatever it
//!   contains;
//! - `password=` (libpq), `pass=` (Redis, whose `redis+unix://` URLs carry
//!   their password there), `sentinel_password=` (Redis Sentinel) and `bindpw=` (LDAP, split as its parser splits)
//!   query values are masked, the query read both from the first `?` and
//!   from the first `?` after the credentials.
//!
//! Each masked stretch becomes `***`; the rest is shown as written.

use std::ops::Range;

#[cfg(feature = "ldap")]
use super::ldap;

/// `uri` with its passwords replaced by `***`: the password of a
/// `user:password@` part (PostgreSQL, MySQL, and LDAP, which refuses one),
/// a `password=` query value, a Redis `pass=` and an LDAP `bindpw=`.
/// The Redis URL of `[shared_state]` goes through here too. Other passdb URIs
/// (`sqlite:PATH`, `saslauthd:SOCKET`, …) carry no secret and come back as
/// they are.
pub fn redact_uri(uri: &str) -> String {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return uri.to_owned();
    };
    let is = |s: &str| scheme.eq_ignore_ascii_case(s);
    let ldap = is("ldap") || is("ldaps");
    let keys: &[&str] = if is("redis+sentinel") || is("rediss+sentinel") {
        &["password", "pass", "sentinel_password"]
    } else if is("redis") || is("rediss") || is("redis+unix") || is("unix") {
        &["password", "pass"]
    } else {
        &["password"]
    };
    let mut masks: Vec<Range<usize>> = Vec::new();
    let mut query_starts = vec![rest.find('?')];
    if let Some(at) = credentials_end(rest) {
        if let Some(colon) = rest[..at].find(':') {
            masks.push(colon + 1..at);
        }
        query_starts.push(rest[at..].find('?').map(|q| at + q));
    }
    for q in query_starts.into_iter().flatten() {
        let query = &rest[q + 1..];
        let values = if ldap {
            ldap_secret_values(query)
        } else {
            password_values(query, keys)
        };
        masks.extend(values.into_iter().map(|r| q + 1 + r.start..q + 1 + r.end));
    }
    masks.sort_by_key(|r| r.start);
    let mut out = format!("{scheme}://");
    let mut shown = 0;
    for m in masks {
        if m.end <= shown {
            continue;
        }
        if m.start >= shown {
            out.push_str(&rest[shown..m.start]);
            out.push_str("***");
        }
        shown = m.end;
    }
    out.push_str(&rest[shown..]);
    out
}

/// Byte ranges in `query` of LDAP `bindpw=` values, split as the LDAP
/// passdb's parser splits the query.
#[cfg(feature = "ldap")]
fn ldap_secret_values(query: &str) -> Vec<Range<usize>> {
    ldap::options::secret_values(query)
}

/// Without the `ldap` feature there is no LDAP parser to split the query as
/// it would (an LDAP URI is refused anyway): everything after the first
/// `bindpw=` is masked.
#[cfg(not(feature = "ldap"))]
fn ldap_secret_values(query: &str) -> Vec<Range<usize>> {
    query
        .find("bindpw=")
        .map(|i| i + "bindpw=".len()..query.len())
        .into_iter()
        .collect()
}

/// Byte ranges in `query` of the values of `keys` (`&`-separated, as libpq
/// and the redis crate read them).
fn password_values(query: &str, keys: &[&str]) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    for pair in query.split('&') {
        if let Some((key, _)) = pair.split_once('=') {
            if keys.iter().any(|k| key.eq_ignore_ascii_case(k)) {
                out.push(start + key.len() + 1..start + pair.len());
            }
        }
        start += pair.len() + 1;
    }
    out
}

/// Where the `user[:password]` part of `rest` (a URI after its `scheme://`)
/// ends: the byte offset of its `@`, if it has one (see the module docs).
/// Without an `@` that is followed by a host, the last `@` before the first
/// `?` counts, so a mistyped host does not leave the password in view.
pub(crate) fn credentials_end(rest: &str) -> Option<usize> {
    let ats = || rest.match_indices('@').map(|(i, _)| i);
    ats().rfind(|&i| hosts_follow(&rest[i + 1..])).or_else(|| {
        let query = rest.find('?').unwrap_or(rest.len());
        ats().rfind(|&i| i < query)
    })
}

/// Whether `s` starts with `host[:port]` (comma-separated, libpq's
/// multi-host form; a host may be empty or percent-encoded, as libpq's
/// socket directories are) up to `/`, `?`, `#` or the end.
fn hosts_follow(s: &str) -> bool {
    let end = s.find(['/', '?', '#']).unwrap_or(s.len());
    s[..end].split(',').all(host_port)
}

fn host_port(hp: &str) -> bool {
    let (host_ok, port) = match hp.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((addr, port)) => (
                addr.chars()
                    .all(|c| c.is_ascii_hexdigit() || ":.%".contains(c)),
                port,
            ),
            None => return false,
        },
        None => {
            let (host, port) = hp.split_at(hp.find(':').unwrap_or(hp.len()));
            let name_char =
                |c: char| c.is_ascii_alphanumeric() || ".-_~%".contains(c) || !c.is_ascii();
            (host.chars().all(name_char), port)
        }
    };
    let port_ok = port.is_empty()
        || port
            .strip_prefix(':')
            .is_some_and(|digits| digits.chars().all(|c| c.is_ascii_digit()));
    host_ok && port_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};

    #[test]
    fn redis_urls_are_masked() {
        // An `@` in the password: the credentials end at the last `@`.
        assert_eq!(
            redact_uri("redis://user:p@ss@host:6379/0"),
            "redis://user:***@host:6379/0"
        );
        assert_eq!(
            redact_uri("rediss://:p@ss/w?rd@cache.example:6380/2"),
            "rediss://:***@cache.example:6380/2"
        );
        // A Unix socket URL carries its password as `pass=`.
        assert_eq!(
            redact_uri("redis+unix:///run/redis/redis.sock?db=1&pass=p@ss&user=u"),
            "redis+unix:///run/redis/redis.sock?db=1&pass=***&user=u"
        );
        assert_eq!(
            redact_uri("redis+sentinel://:p@ss@h1:26379,h2/m/1?sentinel_password=s3&x=1"),
            "redis+sentinel://:***@h1:26379,h2/m/1?sentinel_password=***&x=1"
        );
        assert_eq!(
            redact_uri("redis+unix:///run/redis/redis.sock?db=1"),
            "redis+unix:///run/redis/redis.sock?db=1"
        );
        // `pass=` is a password only where Redis reads it.
        assert_eq!(
            redact_uri("postgres://h/db?pass=x"),
            "postgres://h/db?pass=x"
        );
    }

    #[test]
    fn passwords_are_masked_and_the_rest_is_kept() {
        assert_eq!(
            redact_uri("postgres://u:secret@h:5432/db?x=1"),
            "postgres://u:***@h:5432/db?x=1"
        );
        assert_eq!(redact_uri("mysql://u@h/db"), "mysql://u@h/db");
        assert_eq!(redact_uri("mysql://h/db"), "mysql://h/db");
        assert_eq!(redact_uri("sqlite:/var/lib/x.db"), "sqlite:/var/lib/x.db");
        assert_eq!(
            redact_uri("postgresql://u:pw@/auth?host=%2Frun%2Fpostgresql"),
            "postgresql://u:***@/auth?host=%2Frun%2Fpostgresql"
        );
        assert_eq!(
            redact_uri("postgres://u:pw@h1:5432,h2:5433/auth"),
            "postgres://u:***@h1:5432,h2:5433/auth"
        );
        assert_eq!(
            redact_uri("postgres://u:pw@[2001:db8::1]:5432/auth"),
            "postgres://u:***@[2001:db8::1]:5432/auth"
        );
        assert_eq!(
            redact_uri("postgres://h/auth?user=u&password=pw&sslmode=disable"),
            "postgres://h/auth?user=u&password=***&sslmode=disable"
        );
        #[cfg(feature = "ldap")]
        assert_eq!(
            redact_uri("ldap://h/dc=x?binddn=cn=a&bindpw=top&secret&mode=search"),
            "ldap://h/dc=x?binddn=cn=a&bindpw=***&mode=search"
        );
        // Without the LDAP parser, the rest of the query goes.
        #[cfg(not(feature = "ldap"))]
        assert_eq!(
            redact_uri("ldap://h/dc=x?binddn=cn=a&bindpw=top&secret&mode=search"),
            "ldap://h/dc=x?binddn=cn=a&bindpw=***"
        );
        // An `@` in a filter is not a credential's end.
        assert_eq!(
            redact_uri("ldap://h:389/dc=x?filter=(mail=%n@example.org)&bindpw=pw"),
            "ldap://h:389/dc=x?filter=(mail=%n@example.org)&bindpw=***"
        );
        // A host we cannot read still ends the credentials.
        assert_eq!(
            redact_uri("mysql://u:pw@no such host/db"),
            "mysql://u:***@no such host/db"
        );
    }

    /// Passwords with every character that ends or splits a URI part, as
    /// written (unencoded) and percent-encoded: no letter of them (they are
    /// the only capitals in the URIs) is left in the output.
    #[test]
    fn no_fragment_of_an_awkward_password_is_shown() {
        let passwords = [
            "QZ/JK",
            "QZ?JK",
            "QZ@JK",
            "QZ:JK",
            "QZ#JK",
            "QZ%JK",
            "QZ%4",
            "Q/Z?J@K:W#X%Y",
            "Q@db.example.org:5432/J",
            "@Q",
            "Q@",
            "/Q?",
            ":Q:",
            "Q@h/J@K",
        ];
        for pw in passwords {
            let encoded = utf8_percent_encode(pw, NON_ALPHANUMERIC).to_string();
            for written in [pw, encoded.as_str()] {
                for (uri, want) in [
                    (
                        format!(
                            "postgres://app:{written}@db.example.org:5432/auth?sslmode=disable"
                        ),
                        "postgres://app:***@db.example.org:5432/auth?sslmode=disable",
                    ),
                    (
                        format!("mysql://app:{written}@db.example.org/auth"),
                        "mysql://app:***@db.example.org/auth",
                    ),
                    (
                        format!("ldaps://app:{written}@ldap.example.org/dc=example"),
                        "ldaps://app:***@ldap.example.org/dc=example",
                    ),
                ] {
                    assert_eq!(redact_uri(&uri), want, "{uri}");
                }
                let shown = [
                    redact_uri(&format!(
                        "ldap://ldap.example.org/dc=example?binddn=cn=app&bindpw={written}&mode=bind"
                    )),
                    redact_uri(&format!(
                        "postgres://db.example.org/auth?user=app&password={written}"
                    )),
                ];
                for shown in shown {
                    assert!(
                        !shown.contains(|c: char| c.is_ascii_uppercase()),
                        "{pw}: {shown}"
                    );
                    assert!(shown.contains("***"), "{shown}");
                }
            }
        }
    }
}
