//! The connection pool of an [`Ldap`] passdb: at most `pool_size`
//! connections in use (a semaphore) and as many kept idle, each bound as the
//! service DN before it serves a search. A connection the server closed is
//! dropped at checkout; one that dies under an operation is replaced and the
//! operation tried once more ([`Ldap::perform`]).

use ldap3::{LdapConnAsync, LdapConnSettings, LdapError};
use tokio::sync::OwnedSemaphorePermit;

use super::{Ldap, Outcome};
use crate::passdb::PassdbError;
use crate::secret::Secret;
use crate::sync::lock;

/// A pooled connection and who it is bound as.
pub(super) struct Conn {
    pub(super) ldap: ldap3::Ldap,
    /// False after a user bind (bind mode): rebind before the next search.
    pub(super) as_service: bool,
}

impl Ldap {
    async fn connect(&self) -> Result<Conn, LdapError> {
        let mut settings = LdapConnSettings::new()
            .set_conn_timeout(self.opts.connect_timeout)
            .set_starttls(self.opts.starttls);
        if let Some(config) = &self.tls {
            settings = settings.set_config(config.clone());
        }
        let (conn, ldap) = LdapConnAsync::with_settings(settings, &self.opts.url).await?;
        // The driver ends when the server closes the connection or every
        // handle is dropped.
        tokio::spawn(async move {
            if let Err(e) = conn.drive().await {
                log::debug!("ldap connection ended: {e}");
            }
        });
        let mut conn = Conn {
            ldap,
            as_service: false,
        };
        self.bind_service(&mut conn).await?;
        Ok(conn)
    }

    /// Binds `conn` as the service DN (anonymously without one).
    pub(super) async fn bind_service(&self, conn: &mut Conn) -> Result<(), LdapError> {
        let dn = self.opts.bind_dn.as_deref().unwrap_or("");
        let pw = std::str::from_utf8(self.opts.bind_pw.expose()).unwrap_or("");
        conn.ldap
            .with_timeout(self.opts.timeout)
            .simple_bind(dn, pw)
            .await?
            .success()?;
        conn.as_service = true;
        Ok(())
    }

    /// A connection (reused when one is idle and open) and its pool slot.
    async fn checkout(&self) -> Result<(Conn, bool, OwnedSemaphorePermit), PassdbError> {
        let limit = self.opts.connect_timeout;
        let permit = tokio::time::timeout(limit, self.slots.clone().acquire_owned())
            .await
            .map_err(|_| PassdbError::Timeout)?
            .map_err(|_| PassdbError::Unavailable("ldap pool closed".into()))?;
        loop {
            // The list stays valid whatever a panicking holder left undone.
            let idle = lock(&self.idle).pop();
            match idle {
                Some(mut c) => {
                    if !c.ldap.is_closed() {
                        return Ok((c, true, permit));
                    }
                }
                None => break,
            }
        }
        // set_conn_timeout covers the TCP connect; this covers TLS and the bind too.
        let conn = tokio::time::timeout(limit + self.opts.timeout, self.connect())
            .await
            .map_err(|_| PassdbError::Timeout)?
            .map_err(ldap_error)?;
        Ok((conn, false, permit))
    }

    fn checkin(&self, conn: Conn) {
        let mut idle = lock(&self.idle);
        if idle.len() < self.opts.pool_size {
            idle.push(conn);
        }
    }

    /// Runs one lookup (and, in bind mode with `passwords`, the user bind),
    /// retrying once on a fresh connection when a reused one turns out dead.
    pub(super) async fn perform(
        &self,
        user: &str,
        passwords: Option<&[Secret]>,
    ) -> Result<Outcome, PassdbError> {
        let mut retried = false;
        loop {
            let (mut conn, reused, permit) = self.checkout().await?;
            let attempt = tokio::time::timeout(
                self.opts.timeout * 3,
                self.attempt(&mut conn, user, passwords),
            )
            .await
            .unwrap_or_else(|e| Err(LdapError::from(e)));
            match attempt {
                Ok(outcome) => {
                    self.checkin(conn);
                    drop(permit);
                    return Ok(outcome);
                }
                Err(e) => {
                    drop(conn);
                    drop(permit);
                    if reused && !retried && is_transport(&e) {
                        retried = true;
                        continue;
                    }
                    return Err(ldap_error(e));
                }
            }
        }
    }
}

/// True for errors of the connection itself (closed, reset), as opposed to
/// an answer from the server or a timeout.
fn is_transport(e: &LdapError) -> bool {
    !matches!(
        e,
        LdapError::LdapResult { .. } | LdapError::Timeout { .. } | LdapError::AdapterInit(_)
    )
}

fn ldap_error(e: LdapError) -> PassdbError {
    match e {
        LdapError::Timeout { .. } => PassdbError::Timeout,
        other => PassdbError::Unavailable(format!("ldap: {other}")),
    }
}
