//! The rehash writer of the SQL server passdbs (PostgreSQL, MySQL/MariaDB),
//! through the passdb's own pool. The stored value is read back with the
//! passdb's `password_query`; the write is the `update_query` template, whose
//! `%u`, `%n`, `%d`, `%{hash}` (the new hash) and `%{old_hash}` (the value
//! read) are all bound parameters. It must compare `%{old_hash}`, so a
//! concurrent change wins. With the built-in schema and no `update_query`,
//! [`BUILTIN_UPDATE_QUERY`] is used; a custom `password_query` without an
//! `update_query` is left alone (its tables are not ours to guess).

use super::RehashError;
use crate::passdb::sql::{Dialect, Template, Var, DEFAULT_PASSWORD_QUERY};
pub use store::SqlStore;

/// The `update_query` of the built-in schema.
pub const BUILTIN_UPDATE_QUERY: &str = "UPDATE users SET password = %{hash} \
     WHERE username = %u AND password = %{old_hash}";

/// The `update_query` for `dialect`: `update_query` as configured, else the
/// built-in one when the lookup is the built-in schema's; `Ok(None)`: none.
pub(super) fn update_template(
    update_query: Option<&str>,
    lookup: &Template,
    dialect: Dialect,
) -> Result<Option<Template>, RehashError> {
    let builtin = Template::compile(DEFAULT_PASSWORD_QUERY, dialect).ok();
    let text = match update_query {
        Some(t) => t,
        None if builtin.as_ref() == Some(lookup) => BUILTIN_UPDATE_QUERY,
        None => return Ok(None),
    };
    let t = Template::compile_update(text, dialect)?;
    for (var, name) in [(Var::NewHash, "%{hash}"), (Var::OldHash, "%{old_hash}")] {
        if !t.params.contains(&var) {
            return Err(RehashError::MissingVariable(name));
        }
    }
    Ok(Some(t))
}

/// The writer itself, with the drivers.
mod store {
    use std::time::Duration;

    use super::update_template;
    use crate::passdb::rehash::{RehashError, Store, StoreError};
    #[cfg(feature = "postgres")]
    use crate::passdb::sql::error_chain;
    use crate::passdb::sql::{Dialect, Template};
    use crate::passdb::AnyPassdb;

    /// Longest one read or write of the worker may take.
    const TIMEOUT: Duration = Duration::from_secs(10);

    enum Pool {
        #[cfg(feature = "postgres")]
        Postgres(deadpool_postgres::Pool),
        #[cfg(feature = "mysql")]
        Mysql(mysql_async::Pool),
    }

    /// Writes new hashes through a SQL passdb's pool. The worker thread is not a
    /// runtime thread: it blocks on the runtime the passdb was opened in.
    pub struct SqlStore {
        pool: Pool,
        lookup: Template,
        update: Template,
        runtime: tokio::runtime::Handle,
    }

    impl std::fmt::Debug for SqlStore {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct(match self.pool {
                #[cfg(feature = "postgres")]
                Pool::Postgres(_) => "SqlStore(postgres)",
                #[cfg(feature = "mysql")]
                Pool::Mysql(_) => "SqlStore(mysql)",
            })
            .field("update", &self.update.sql)
            .finish()
        }
    }

    impl SqlStore {
        /// The writer of `db`: `None` for another kind of passdb or a custom
        /// `password_query` without `update_query`. Needs the runtime the
        /// passdb runs in (entered).
        pub fn for_passdb(
            db: &AnyPassdb,
            uri: &str,
            update_query: Option<&str>,
        ) -> Result<Option<Self>, RehashError> {
            let (pool, lookup, dialect) = match db {
                #[cfg(feature = "postgres")]
                AnyPassdb::Postgres(p) => {
                    let (pool, lookup) = p.rehash_parts();
                    (Pool::Postgres(pool), lookup, Dialect::Postgres)
                }
                #[cfg(feature = "mysql")]
                AnyPassdb::Mysql(p) => {
                    let (pool, lookup) = p.rehash_parts();
                    (Pool::Mysql(pool), lookup, Dialect::Mysql)
                }
                _ => return Ok(None),
            };
            let Some(update) = update_template(update_query, &lookup, dialect)? else {
                return Ok(None);
            };
            let runtime = tokio::runtime::Handle::try_current()
                .map_err(|_| RehashError::NoRuntime(crate::passdb::redact_uri(uri)))?;
            Ok(Some(SqlStore {
                pool,
                lookup,
                update,
                runtime,
            }))
        }

        fn block<T>(
            &self,
            f: impl std::future::Future<Output = Result<T, StoreError>>,
        ) -> Result<T, StoreError> {
            self.runtime.block_on(async {
                tokio::time::timeout(TIMEOUT, f)
                    .await
                    .map_err(|_| StoreError::Sql("timed out".into()))?
            })
        }

        /// Runs `t` with `values`: the `password` column of the first row, or
        /// the rows changed.
        fn run(&self, t: &Template, values: Vec<&str>, read: bool) -> Result<Rows, StoreError> {
            match &self.pool {
                #[cfg(feature = "postgres")]
                Pool::Postgres(pool) => self.block(async {
                    use tokio_postgres::types::{ToSql, Type};
                    let client = pool.get().await.map_err(pg)?;
                    let types = vec![Type::TEXT; values.len()];
                    let params: Vec<&(dyn ToSql + Sync)> =
                        values.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
                    let stmt = client.prepare_typed(&t.sql, &types).await.map_err(pg)?;
                    if read {
                        let rows = client.query(&stmt, &params).await.map_err(pg)?;
                        let first = rows
                            .first()
                            .map(|r| r.try_get::<_, Option<String>>("password"));
                        Ok(Rows::Password(first.transpose().map_err(pg)?.flatten()))
                    } else {
                        Ok(Rows::Changed(
                            client.execute(&stmt, &params).await.map_err(pg)?,
                        ))
                    }
                }),
                #[cfg(feature = "mysql")]
                Pool::Mysql(pool) => self.block(async {
                    use mysql_async::prelude::Queryable as _;
                    let mut conn = pool.get_conn().await.map_err(my)?;
                    let params = mysql_async::Params::Positional(
                        values.into_iter().map(mysql_async::Value::from).collect(),
                    );
                    if read {
                        let row: Option<mysql_async::Row> =
                            conn.exec_first(t.sql.as_str(), params).await.map_err(my)?;
                        let password = row.and_then(|r| r.get_opt::<Option<String>, _>("password"));
                        Ok(Rows::Password(password.transpose().map_err(my)?.flatten()))
                    } else {
                        conn.exec_drop(t.sql.as_str(), params).await.map_err(my)?;
                        Ok(Rows::Changed(conn.affected_rows()))
                    }
                }),
            }
        }
    }

    enum Rows {
        Password(Option<String>),
        Changed(u64),
    }

    #[cfg(feature = "postgres")]
    fn pg(e: impl std::error::Error) -> StoreError {
        StoreError::Sql(format!("postgres: {}", error_chain(&e)))
    }

    #[cfg(feature = "mysql")]
    fn my(e: impl std::error::Error) -> StoreError {
        StoreError::Sql(format!("mysql: {e}"))
    }

    impl Store for SqlStore {
        fn current(&self, user: &str) -> Result<Option<String>, StoreError> {
            match self.run(&self.lookup, self.lookup.values(user), true)? {
                Rows::Password(p) => Ok(p),
                Rows::Changed(_) => Ok(None),
            }
        }

        fn replace(&self, user: &str, old: &str, new: &str) -> Result<bool, StoreError> {
            let values = self.update.update_values(user, new, old);
            Ok(matches!(
                self.run(&self.update, values, false)?,
                Rows::Changed(1)
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_queries_bind_every_value_and_must_compare_the_old_hash() {
        let builtin = Template::compile(DEFAULT_PASSWORD_QUERY, Dialect::Postgres).unwrap();
        let t = update_template(None, &builtin, Dialect::Postgres)
            .unwrap()
            .unwrap();
        assert_eq!(
            t.sql,
            "UPDATE users SET password = $1 WHERE username = $2 AND password = $3"
        );
        assert_eq!(t.update_values("a@x", "NEW", "OLD"), ["NEW", "a@x", "OLD"]);
        let custom = Template::compile(
            "SELECT secret AS password FROM mailbox WHERE local = %n AND dom = %d",
            Dialect::Mysql,
        )
        .unwrap();
        // A custom lookup without update_query: left alone.
        assert!(update_template(None, &custom, Dialect::Mysql)
            .unwrap()
            .is_none());
        let q = "UPDATE mailbox SET secret = '%{hash}' WHERE local = %n AND dom = %d \
                 AND secret = %{old_hash}";
        let t = update_template(Some(q), &custom, Dialect::Mysql)
            .unwrap()
            .unwrap();
        assert_eq!(
            t.sql,
            "UPDATE mailbox SET secret = ? WHERE local = ? AND dom = ? AND secret = ?"
        );
        assert_eq!(t.update_values("a@x", "N", "O"), ["N", "a", "x", "O"]);
        let e = update_template(
            Some("UPDATE mailbox SET secret = %{hash} WHERE local = %n"),
            &custom,
            Dialect::Mysql,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("%{old_hash}"), "{e}");
        // The hash variables mean nothing in a lookup.
        assert!(Template::compile("SELECT %{hash} AS password", Dialect::Mysql).is_err());
    }
}
