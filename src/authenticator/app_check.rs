//! A plaintext check against a user's main password and app passwords
//! (see [`crate::passdb::app_password`]).
//!
//! App passwords are tried first: a match is conclusive (they are random and
//! long), and its scope, expiry and networks are checked on every login,
//! after the hash check, so a verification the cache remembers never skips
//! them (the cache only knows "this password matches this hash"). Then the
//! main password, which `require_app_password` (global or the user's own)
//! refuses for the protocols it names. A use is recorded by the passdb off
//! the request path.

use crate::passdb::app_password::{self, Login, Service, Services};
use crate::passdb::{AnyPassdb, AppPasswords, Passdb, PassdbError, Principal, Rejection, Verdict};
use crate::scheme::StoredPassword;
use crate::secret::Secret;

use super::chain::{CheckNotes, Checked};
use super::Authenticator;

impl Authenticator {
    /// Refuses the main password for these protocols (`require_app_password`);
    /// users may add their own in the passdb.
    pub fn with_require_app_password(mut self, services: Services) -> Self {
        self.require_app = services;
        self
    }

    /// The protocols for which the main password is refused to everyone.
    pub fn required_app_password(&self) -> Services {
        self.require_app
    }

    /// Whether `apps`' owner may not use their main password for `service`.
    pub(crate) fn main_password_refused(&self, apps: &AppPasswords, service: Service) -> bool {
        self.require_app.union(apps.required).contains(service)
    }

    /// Checks `passwords` of `user`, found in `db`, for `login`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn check_found(
        &self,
        db: &AnyPassdb,
        user: &str,
        principal: Principal,
        main: &StoredPassword,
        apps: &AppPasswords,
        passwords: &[Secret],
        login: &Login<'_>,
    ) -> Result<Checked, PassdbError> {
        for app in &apps.list {
            let (ok, cache) = self.check_stored(db, user, &app.stored, passwords).await?;
            if !ok {
                continue;
            }
            let verdict = match app.allows(login, app_password::now()) {
                Ok(()) => {
                    db.app_password_used(user, &app.name, login.ip);
                    Verdict::Accepted(principal)
                }
                Err(refusal) => Verdict::Rejected(refusal.into()),
            };
            return Ok(Checked {
                verdict,
                notes: CheckNotes {
                    cache,
                    rehash: None,
                    app_password: Some(app.name.clone()),
                },
            });
        }
        let (ok, cache) = self.check_stored(db, user, main, passwords).await?;
        // A main password that opened the account is worth upgrading: the
        // caller offers the rehash (not for a stale record, whose passdb is
        // down).
        let verdict = if !ok {
            Verdict::Rejected(Rejection::PasswordMismatch)
        } else if self.main_password_refused(apps, login.service) {
            Verdict::Rejected(Rejection::AppPasswordRequired)
        } else {
            Verdict::Accepted(principal)
        };
        Ok(Checked {
            verdict,
            notes: CheckNotes {
                cache,
                rehash: None,
                app_password: None,
            },
        })
    }
}
