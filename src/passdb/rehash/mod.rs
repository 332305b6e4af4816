//! Transparent rehash (`upgrade_scheme`, off by default): after a successful
//! plaintext login (mail PLAIN/LOGIN, HTTP Basic) whose stored hash uses
//! another scheme, or the target scheme below the target cost, a new hash of
//! that plaintext is written back to the passdb.
//!
//! - **Target** ([`Target`]): `ARGON2ID`, `BLF-CRYPT` or `SHA512-CRYPT`,
//!   optionally with its cost after a colon: `ARGON2ID:m=131072,t=3,p=1`,
//!   `BLF-CRYPT:cost=12`, `SHA512-CRYPT:rounds=500000`. Without one the
//!   defaults of [`crate::scheme::hash()`] apply (Dovecot's: Argon2id
//!   m=65536,t=3,p=1; SHA512-CRYPT 5000 rounds; bcrypt cost 10).
//! - **Decision** ([`judge`]): upgrade another scheme, or the same scheme when
//!   any cost parameter is below the target's. Left alone: `{PLAIN}`,
//!   `{CLEAR}` and `{CRAM-MD5}`, whose stored form CRAM-MD5, APOP and HTTP
//!   Digest need (unless `rehash_plain`), and passdbs without a writer
//!   (htdigest, LDAP, saslauthd, Dovecot auth; passwd-file unless
//!   `rehash_passwd_file`).
//! - **Work** ([`Rehasher`], in `worker`): the request only queues a job (a
//!   bounded channel; full: skipped and logged) and remembers the user for an
//!   hour, so the answer never waits and a user is queued at most once per
//!   window. One thread of its own hashes and writes, so expensive hashes
//!   never take the bounded verifier's slots. It reads the stored value again,
//!   checks it is still the one the login verified, hashes, and writes with a
//!   compare-and-set on the old value: a concurrent `user passwd` wins. A
//!   failure is logged and never touches the login. Afterwards it drops the
//!   user's record from the credential lookup cache ([`crate::lookup_cache`]),
//!   so the next login reads what is stored now.
//! - **Writers**: `sqlite` (the built-in schema), `sql` (PostgreSQL and
//!   MySQL, the built-in schema's `UPDATE`), `passwd_file` (atomic rename,
//!   keeping everything but the one password field).

mod passwd_file;
#[cfg(any(feature = "postgres", feature = "mysql"))]
mod sql;
#[cfg(feature = "sqlite")]
mod sqlite;
mod worker;

use std::fmt;
use std::str::FromStr;

use crate::scheme::{Cost, Scheme, StoredPassword};

pub use passwd_file::{rewrite_line, PasswdFileStore};
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub use sql::{SqlStore, BUILTIN_UPDATE_QUERY};
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteStore;
pub use worker::{Rehasher, Store, StoreError};

/// The scheme and cost stored hashes are upgraded to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    /// `{ARGON2ID}`, `{BLF-CRYPT}` or `{SHA512-CRYPT}`.
    pub scheme: Scheme,
    /// The work factor new hashes get.
    pub cost: Cost,
}

/// An `upgrade_scheme` value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// Not one of the three schemes.
    #[error("upgrade_scheme `{0}`: expected ARGON2ID, BLF-CRYPT or SHA512-CRYPT")]
    Scheme(String),
    /// A cost parameter that is unknown or out of range.
    #[error("upgrade_scheme {scheme}: bad `{param}` (expected {expected})")]
    Param {
        /// The target scheme.
        scheme: Scheme,
        /// The parameter as written.
        param: String,
        /// What fits.
        expected: &'static str,
    },
}

impl FromStr for Target {
    type Err = TargetError;
    fn from_str(s: &str) -> Result<Target, TargetError> {
        let (name, params) = s.trim().split_once(':').unwrap_or((s.trim(), ""));
        let scheme = match name.parse::<Scheme>() {
            Ok(s @ (Scheme::Argon2id | Scheme::BlfCrypt | Scheme::Sha512Crypt)) => s,
            _ => return Err(TargetError::Scheme(name.to_owned())),
        };
        let mut cost = Cost::default_for(scheme);
        for param in params.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let bad = |expected| TargetError::Param {
                scheme,
                param: param.to_owned(),
                expected,
            };
            let (key, value) = param.split_once('=').unwrap_or((param, ""));
            let n = |lo: u32, hi: u32, expected| {
                value
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (lo..=hi).contains(n))
                    .ok_or_else(|| bad(expected))
            };
            match (&mut cost, key) {
                (Cost::Rounds(r), "rounds") => *r = n(1000, 999_999_999, "rounds=1000..999999999")?,
                (Cost::Bcrypt(c), "cost") => *c = n(4, 31, "cost=4..31")?,
                (Cost::Argon2 { m_kib, .. }, "m") => *m_kib = n(8, u32::MAX, "m=KiB, at least 8")?,
                (Cost::Argon2 { t, .. }, "t") => *t = n(1, 1000, "t=1..1000")?,
                (Cost::Argon2 { p, .. }, "p") => *p = n(1, 255, "p=1..255")?,
                _ => {
                    return Err(bad(match scheme {
                        Scheme::Argon2id => "m=, t=, p=",
                        Scheme::BlfCrypt => "cost=",
                        _ => "rounds=",
                    }))
                }
            }
        }
        if let Cost::Argon2 { m_kib, p, .. } = cost {
            if m_kib < 8 * p {
                return Err(TargetError::Param {
                    scheme,
                    param: format!("m={m_kib}"),
                    expected: "m at least 8 KiB per lane (8 * p)",
                });
            }
        }
        Ok(Target { scheme, cost })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.scheme, self.cost)
    }
}

/// A rehash setting that cannot be used, or a worker that cannot start.
#[derive(Debug, thiserror::Error)]
pub enum RehashError {
    /// `upgrade_scheme` itself.
    #[error(transparent)]
    Target(#[from] TargetError),
    /// An Argon2 target the `argon2_max_memory` limit would refuse to verify.
    #[error(
        "upgrade_scheme {target}: m={m_kib} KiB is above argon2_max_memory ({max_kib} KiB); \
         the new hashes would be refused"
    )]
    AboveMemoryLimit {
        /// The target.
        target: Target,
        /// Its memory cost, KiB.
        m_kib: u32,
        /// `argon2_max_memory`, KiB.
        max_kib: u32,
    },
    /// A companion setting without `upgrade_scheme`.
    #[error("rehash_passwd_file, rehash_plain and update_query need upgrade_scheme")]
    NeedsUpgradeScheme,
    /// An `update_query` that cannot be bound.
    #[cfg(any(feature = "postgres", feature = "mysql"))]
    #[error("update_query: {0}")]
    Template(#[from] crate::passdb::sql::TemplateError),
    /// An `update_query` without one of the hash variables.
    #[error(
        "update_query must use {0} (… SET password = %{{hash}} WHERE … AND password = \
         %{{old_hash}}: the compare-and-set that lets a concurrent change win)"
    )]
    MissingVariable(&'static str),
    /// An `update_query` in a build without SQL server passdbs.
    #[error("update_query: this build has no PostgreSQL or MySQL passdbs")]
    NoSqlPassdbs,
    /// A SQL writer opened outside a tokio runtime.
    #[error("rehash: passdb {0}: no tokio runtime for the SQL writer")]
    NoRuntime(String),
    /// The worker thread.
    #[error("rehash: cannot start its thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// Checks an `update_query` now (both dialects bind the same placeholders),
/// so a bad template is a configuration error, not a failure later.
#[cfg(any(feature = "postgres", feature = "mysql"))]
fn check_update_query(q: &str) -> Result<(), RehashError> {
    use crate::passdb::sql::{Dialect, Template, DEFAULT_PASSWORD_QUERY};
    let lookup = Template::compile(DEFAULT_PASSWORD_QUERY, Dialect::Postgres)?;
    sql::update_template(Some(q), &lookup, Dialect::Postgres).map(drop)
}

#[cfg(not(any(feature = "postgres", feature = "mysql")))]
fn check_update_query(_: &str) -> Result<(), RehashError> {
    Err(RehashError::NoSqlPassdbs)
}

/// What to do with one stored hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judgement {
    /// Rehash it to the target.
    Upgrade,
    /// It is the target scheme at (or above) the target cost.
    Current,
    /// Left as it is, for this reason (for logs and check-config).
    LeftAlone(&'static str),
}

/// Why `{PLAIN}`, `{CLEAR}` and `{CRAM-MD5}` stay as they are by default.
pub const PLAIN_NEEDED: &str =
    "CRAM-MD5, APOP and HTTP Digest need this stored form (rehash_plain = true upgrades it)";

/// Whether `stored` needs an upgrade to `target`; `rehash_plain` also
/// upgrades the forms challenge mechanisms need.
pub fn judge(stored: &StoredPassword, target: &Target, rehash_plain: bool) -> Judgement {
    let scheme = stored.scheme();
    if matches!(scheme, Scheme::Plain | Scheme::Clear | Scheme::CramMd5) && !rehash_plain {
        return Judgement::LeftAlone(PLAIN_NEEDED);
    }
    if scheme != target.scheme || stored.cost().below(&target.cost) {
        Judgement::Upgrade
    } else {
        Judgement::Current
    }
}

/// The rehash settings of a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RehashPolicy {
    /// What hashes are upgraded to.
    pub target: Target,
    /// Also rewrite passwd-files (`rehash_passwd_file`).
    pub passwd_file: bool,
    /// Also upgrade `{PLAIN}`, `{CLEAR}` and `{CRAM-MD5}` (`rehash_plain`).
    pub plain: bool,
    /// SQL server passdbs: the write as a template (`None`: the built-in
    /// schema's, `BUILTIN_UPDATE_QUERY`).
    pub update_query: Option<String>,
}

impl RehashPolicy {
    /// The policy of `upgrade_scheme` (`None`: off) and its companions;
    /// an Argon2 target must fit `argon2_max_memory` (else the new hashes
    /// would be refused at the next login).
    pub fn from_config(
        upgrade_scheme: Option<&str>,
        passwd_file: bool,
        plain: bool,
        update_query: Option<&str>,
        argon2_max_memory_kib: u32,
    ) -> Option<Result<RehashPolicy, RehashError>> {
        let Some(text) = upgrade_scheme else {
            return (passwd_file || plain || update_query.is_some())
                .then_some(Err(RehashError::NeedsUpgradeScheme));
        };
        Some(Self::checked(
            text,
            passwd_file,
            plain,
            update_query,
            argon2_max_memory_kib,
        ))
    }

    fn checked(
        text: &str,
        passwd_file: bool,
        plain: bool,
        update_query: Option<&str>,
        argon2_max_memory_kib: u32,
    ) -> Result<RehashPolicy, RehashError> {
        if let Some(q) = update_query {
            check_update_query(q)?;
        }
        let target: Target = text.parse()?;
        if let Cost::Argon2 { m_kib, .. } = target.cost {
            if m_kib > argon2_max_memory_kib {
                return Err(RehashError::AboveMemoryLimit {
                    target,
                    m_kib,
                    max_kib: argon2_max_memory_kib,
                });
            }
        }
        Ok(RehashPolicy {
            target,
            passwd_file,
            plain,
            update_query: update_query.map(str::to_owned),
        })
    }

    /// What check-config prints: the target, and per passdb URI what is
    /// upgraded there and what is left alone, and why.
    pub fn explain(&self, uris: &[String], password_query: Option<&str>) -> Vec<String> {
        let mut lines = vec![format!(
            "rehash: after a successful plaintext login (PLAIN, LOGIN, HTTP Basic), hashes of \
             another scheme or below {} are rewritten as {{{}}} {}",
            self.target.cost, self.target.scheme, self.target.cost
        )];
        lines.push(if self.plain {
            "rehash: {PLAIN}, {CLEAR} and {CRAM-MD5} are upgraded too (rehash_plain): those \
             users lose CRAM-MD5, APOP and HTTP Digest"
                .to_owned()
        } else {
            format!("rehash: {{PLAIN}}, {{CLEAR}} and {{CRAM-MD5}} are left alone: {PLAIN_NEEDED}")
        });
        for uri in uris {
            let shown = super::redact_uri(uri);
            let custom_sql = password_query.is_some() && self.update_query.is_none();
            let what = match worker::store_kind(uri, self.passwd_file, custom_sql) {
                Ok(kind) => format!("upgraded ({kind})"),
                Err(why) => format!("left alone: {why}"),
            };
            lines.push(format!("rehash: passdb {shown}: {what}"));
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheme::{hash, hash_at};

    fn stored(h: &str) -> StoredPassword {
        StoredPassword::parse(h, Scheme::Plain).unwrap()
    }

    #[test]
    fn targets_parse_with_and_without_costs() {
        let t = |s: &str| s.parse::<Target>();
        assert_eq!(
            t("ARGON2ID").unwrap().cost,
            Cost::Argon2 {
                m_kib: 65536,
                t: 3,
                p: 1
            }
        );
        assert_eq!(t("sha512-crypt").unwrap().cost, Cost::Rounds(5000));
        assert_eq!(
            t("SHA512-CRYPT:rounds=500000").unwrap(),
            Target {
                scheme: Scheme::Sha512Crypt,
                cost: Cost::Rounds(500_000)
            }
        );
        assert_eq!(t("BLF-CRYPT:cost=12").unwrap().cost, Cost::Bcrypt(12));
        assert_eq!(
            t("ARGON2ID:m=131072, t=4").unwrap().cost,
            Cost::Argon2 {
                m_kib: 131072,
                t: 4,
                p: 1
            }
        );
        assert_eq!(
            t("ARGON2ID:m=65536,t=3,p=1").unwrap().to_string(),
            "ARGON2ID:m=65536,t=3,p=1"
        );
        for bad in [
            "MD5-CRYPT",
            "PLAIN",
            "ROT13",
            "BLF-CRYPT:cost=3",
            "BLF-CRYPT:rounds=9",
            "SHA512-CRYPT:rounds=10",
            "SHA512-CRYPT:cost=12",
            "ARGON2ID:m=8,p=2",
            "ARGON2ID:x=1",
        ] {
            assert!(t(bad).is_err(), "{bad}");
        }
        assert_eq!(
            t("BLF-CRYPT:cost=40").unwrap_err().to_string(),
            "upgrade_scheme BLF-CRYPT: bad `cost=40` (expected cost=4..31)"
        );
    }

    #[test]
    fn needs_upgrade_per_scheme() {
        let argon: Target = "ARGON2ID:m=64,t=2,p=1".parse().unwrap();
        let sha: Target = "SHA512-CRYPT:rounds=20000".parse().unwrap();
        let blf: Target = "BLF-CRYPT:cost=6".parse().unwrap();
        let h = |s, c| stored(&hash_at(s, b"pw", c).unwrap());
        let md5 = stored(&hash(Scheme::Md5Crypt, b"pw").unwrap());
        for t in [&argon, &sha, &blf] {
            assert_eq!(judge(&md5, t, false), Judgement::Upgrade, "{t}");
            for s in ["{SSHA256}", "{SHA}"] {
                let sp = stored(&hash(s.trim_matches(['{', '}']).parse().unwrap(), b"pw").unwrap());
                assert_eq!(judge(&sp, t, false), Judgement::Upgrade, "{s} {t}");
            }
        }
        // The same scheme: by cost.
        let low = h(Scheme::Sha512Crypt, Cost::Rounds(5000));
        assert_eq!(judge(&low, &sha, false), Judgement::Upgrade);
        let at = h(Scheme::Sha512Crypt, Cost::Rounds(20000));
        assert_eq!(judge(&at, &sha, false), Judgement::Current);
        let above = h(Scheme::Sha512Crypt, Cost::Rounds(30000));
        assert_eq!(judge(&above, &sha, false), Judgement::Current);
        assert_eq!(judge(&above, &argon, false), Judgement::Upgrade);
        assert_eq!(
            judge(&h(Scheme::BlfCrypt, Cost::Bcrypt(5)), &blf, false),
            Judgement::Upgrade
        );
        assert_eq!(
            judge(&h(Scheme::BlfCrypt, Cost::Bcrypt(6)), &blf, false),
            Judgement::Current
        );
        let a = |m_kib, t, p| h(Scheme::Argon2id, Cost::Argon2 { m_kib, t, p });
        assert_eq!(judge(&a(64, 1, 1), &argon, false), Judgement::Upgrade);
        assert_eq!(judge(&a(32, 2, 1), &argon, false), Judgement::Upgrade);
        assert_eq!(judge(&a(64, 2, 1), &argon, false), Judgement::Current);
        assert_eq!(judge(&a(128, 3, 1), &argon, false), Judgement::Current);
        // Argon2i is another scheme than the Argon2id target.
        let argon2i = h(
            Scheme::Argon2i,
            Cost::Argon2 {
                m_kib: 64,
                t: 2,
                p: 1,
            },
        );
        assert_eq!(judge(&argon2i, &argon, false), Judgement::Upgrade);
        // What challenge mechanisms need is left alone unless asked.
        for s in ["{PLAIN}pw", "{CLEAR}pw"] {
            assert_eq!(
                judge(&stored(s), &argon, false),
                Judgement::LeftAlone(PLAIN_NEEDED)
            );
            assert_eq!(judge(&stored(s), &argon, true), Judgement::Upgrade);
        }
        let cram = stored(&hash(Scheme::CramMd5, b"pw").unwrap());
        assert_eq!(
            judge(&cram, &argon, false),
            Judgement::LeftAlone(PLAIN_NEEDED)
        );
        assert_eq!(judge(&cram, &argon, true), Judgement::Upgrade);
    }

    #[test]
    fn policy_from_config() {
        assert!(RehashPolicy::from_config(None, false, false, None, 1024).is_none());
        assert!(RehashPolicy::from_config(None, true, false, None, 1024)
            .unwrap()
            .is_err());
        let p = RehashPolicy::from_config(Some("BLF-CRYPT:cost=11"), true, false, None, 1024)
            .unwrap()
            .unwrap();
        assert_eq!(
            (p.target.cost, p.passwd_file, p.plain),
            (Cost::Bcrypt(11), true, false)
        );
        let e = RehashPolicy::from_config(Some("ARGON2ID"), false, false, None, 1024)
            .unwrap()
            .unwrap_err()
            .to_string();
        assert!(e.contains("above argon2_max_memory"), "{e}");
        let e = RehashPolicy::from_config(
            Some("ARGON2ID:m=64"),
            false,
            false,
            Some("UPDATE t SET p = %{hash} WHERE u = %u"),
            1024,
        )
        .unwrap()
        .unwrap_err()
        .to_string();
        if cfg!(any(feature = "postgres", feature = "mysql")) {
            assert!(e.contains("%{old_hash}"), "{e}");
        } else {
            assert!(e.contains("no PostgreSQL or MySQL"), "{e}");
        }
    }

    #[test]
    fn check_config_explains_what_is_upgraded_and_what_is_left() {
        let policy = RehashPolicy {
            target: "SHA512-CRYPT:rounds=500000".parse().unwrap(),
            passwd_file: false,
            plain: false,
            update_query: None,
        };
        let uris: Vec<String> = [
            "sqlite:/var/lib/x/users.db",
            "passwd-file:/etc/dovecot/users",
            "postgres://u:secret@db/mail",
            "htdigest:/etc/x.htdigest",
            "ldap://ldap.example.org/dc=x",
        ]
        .map(String::from)
        .into();
        let text = policy.explain(&uris, None).join("\n");
        assert!(
            text.contains("rewritten as {SHA512-CRYPT} rounds=500000"),
            "{text}"
        );
        assert!(
            text.contains("{CRAM-MD5} are left alone: CRAM-MD5, APOP"),
            "{text}"
        );
        assert!(
            text.contains("sqlite:/var/lib/x/users.db: upgraded"),
            "{text}"
        );
        assert!(
            text.contains("passwd-file:/etc/dovecot/users: left alone: rehash_passwd_file"),
            "{text}"
        );
        assert!(
            text.contains("htdigest:/etc/x.htdigest: left alone"),
            "{text}"
        );
        assert!(
            text.contains("ldap://ldap.example.org/dc=x: left alone"),
            "{text}"
        );
        assert!(!text.contains("secret"), "{text}");
        let with_file = RehashPolicy {
            passwd_file: true,
            plain: true,
            ..policy
        };
        let text = with_file.explain(&uris, None).join("\n");
        assert!(
            text.contains("passwd-file:/etc/dovecot/users: upgraded"),
            "{text}"
        );
        assert!(text.contains("lose CRAM-MD5"), "{text}");
        let custom = with_file.explain(&uris, Some("SELECT …")).join("\n");
        assert!(
            custom.contains("***@db/mail: left alone: a custom password_query needs update_query"),
            "{custom}"
        );
    }
}
