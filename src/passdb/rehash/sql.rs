//! The rehash writer of the SQL server passdbs (PostgreSQL, MySQL/MariaDB)
//! with the built-in schema: the passdb's own pool, a compare-and-set
//! `UPDATE users SET password = <new> WHERE username = <user> AND password =
//! <old>`, all three bound parameters. A passdb with a custom
//! `password_query` is left alone (its tables are not ours to guess).

use std::time::Duration;

use super::{Store, StoreError};
use crate::passdb::sql::error_chain;
use crate::passdb::AnyPassdb;

/// Longest one read or write of the worker may take.
const TIMEOUT: Duration = Duration::from_secs(10);

enum Pool {
    Postgres(deadpool_postgres::Pool),
    Mysql(mysql_async::Pool),
}

/// Writes new hashes through a SQL passdb's pool. The worker thread is not a
/// runtime thread: it blocks on the runtime the passdb was opened in.
pub struct SqlStore {
    pool: Pool,
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for SqlStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.pool {
            Pool::Postgres(_) => "SqlStore(postgres)",
            Pool::Mysql(_) => "SqlStore(mysql)",
        })
    }
}

impl SqlStore {
    /// The writer of `db`: `None` for a custom `password_query` or another
    /// kind of passdb. Needs the runtime the passdb runs in (entered).
    pub fn for_passdb(db: &AnyPassdb) -> Result<Option<SqlStore>, String> {
        let pool = match db {
            AnyPassdb::Postgres(p) => p.rehash_pool().map(Pool::Postgres),
            AnyPassdb::Mysql(p) => p.rehash_pool().map(Pool::Mysql),
            _ => None,
        };
        let Some(pool) = pool else {
            return Ok(None);
        };
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| "no tokio runtime for the SQL writer".to_owned())?;
        Ok(Some(SqlStore { pool, runtime }))
    }

    fn block<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, String>>,
    ) -> Result<T, StoreError> {
        self.runtime.block_on(async {
            tokio::time::timeout(TIMEOUT, f)
                .await
                .map_err(|_| StoreError::Sql("timed out".into()))?
                .map_err(StoreError::Sql)
        })
    }
}

fn pg(e: impl std::error::Error) -> String {
    format!("postgres: {}", error_chain(&e))
}

fn my(e: impl std::error::Error) -> String {
    format!("mysql: {}", error_chain(&e))
}

const SELECT_PG: &str = "SELECT password FROM users WHERE username = $1";
const UPDATE_PG: &str = "UPDATE users SET password = $3, updated_at = now() \
                         WHERE username = $1 AND password = $2";
const SELECT_MY: &str = "SELECT password FROM users WHERE username = ?";
const UPDATE_MY: &str = "UPDATE users SET password = ?, updated_at = CURRENT_TIMESTAMP \
                         WHERE username = ? AND password = ?";

impl Store for SqlStore {
    fn current(&self, user: &str) -> Result<Option<String>, StoreError> {
        match &self.pool {
            Pool::Postgres(pool) => self.block(async {
                let client = pool.get().await.map_err(pg)?;
                let row = client.query_opt(SELECT_PG, &[&user]).await.map_err(pg)?;
                Ok(row.map(|r| r.get::<_, String>(0)))
            }),
            Pool::Mysql(pool) => self.block(async {
                use mysql_async::prelude::Queryable as _;
                let mut conn = pool.get_conn().await.map_err(my)?;
                conn.exec_first(SELECT_MY, (user,)).await.map_err(my)
            }),
        }
    }

    fn replace(&self, user: &str, old: &str, new: &str) -> Result<bool, StoreError> {
        match &self.pool {
            Pool::Postgres(pool) => self.block(async {
                let client = pool.get().await.map_err(pg)?;
                let n = client
                    .execute(UPDATE_PG, &[&user, &old, &new])
                    .await
                    .map_err(pg)?;
                Ok(n == 1)
            }),
            Pool::Mysql(pool) => self.block(async {
                use mysql_async::prelude::Queryable as _;
                let mut conn = pool.get_conn().await.map_err(my)?;
                conn.exec_drop(UPDATE_MY, (new, user, old))
                    .await
                    .map_err(my)?;
                Ok(conn.affected_rows() == 1)
            }),
        }
    }
}
