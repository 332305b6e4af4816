//! PLAIN and LOGIN. nginx decodes both client-side exchanges and reports them
//! as `Auth-Method: plain` with the user and password. We replay them as a
//! SASL PLAIN message (RFC 4616) through rsasl's server so the RFC's rules are
//! applied in one place: the message shape (no NUL inside user or password,
//! neither empty) and SASLprep (RFC 4013) of the user and of UTF-8 passwords.
//!
//! SASLprep may change a password (e.g. map a no-break space to a space).
//! Stores written by tools that do not apply it (Dovecot's `doveadm pw` does
//! not) then hold a hash of the unprepared bytes, so [`PlainCredentials`] keeps
//! both forms when they differ and the passdb check tries the prepared one first.

use std::sync::Arc;

use rsasl::callback::{Context, SessionCallback, SessionData};
use rsasl::prelude::{Mechname, SASLConfig, SASLServer, Validation};
use rsasl::property::{AuthId, AuthzId, Password};
use rsasl::validate::{Validate, ValidationError};

use crate::secret::Secret;

/// User and password after PLAIN validation.
#[derive(Debug)]
pub struct PlainCredentials {
    /// The authentication identity after SASLprep.
    pub user: String,
    /// Passwords to try, prepared form first; two only when SASLprep changed it.
    pub passwords: Vec<Secret>,
}

/// Why rsasl refused the exchange. The client gets the generic "invalid login"
/// answer; the reason goes to the audit log only.
#[derive(Debug, thiserror::Error)]
pub enum PlainError {
    /// rsasl could not start a PLAIN session.
    #[error("PLAIN exchange refused: {0}")]
    Start(#[source] rsasl::prelude::SASLError),
    /// rsasl refused the message (shape or SASLprep).
    #[error("PLAIN exchange refused: {0}")]
    Step(#[source] rsasl::prelude::SessionError),
    /// The exchange ended without validated credentials.
    #[error("PLAIN exchange refused: no credentials validated")]
    NotValidated,
}

/// Reusable PLAIN verifier (holds the rsasl configuration).
#[derive(Clone)]
pub struct Plain {
    config: Arc<SASLConfig>,
}

impl std::fmt::Debug for Plain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Plain")
    }
}

struct Captured;
impl Validation for Captured {
    type Value = (String, Secret);
}

/// Captures what the PLAIN mechanism validated; the password check itself is
/// asynchronous (a passdb) and happens after the exchange.
struct Capture;
impl SessionCallback for Capture {
    fn validate(
        &self,
        _session: &SessionData,
        context: &Context,
        validate: &mut Validate<'_>,
    ) -> Result<(), ValidationError> {
        let authid = context
            .get_ref::<AuthId>()
            .ok_or(ValidationError::MissingRequiredProperty)?;
        let password = context
            .get_ref::<Password>()
            .ok_or(ValidationError::MissingRequiredProperty)?;
        // We always send an empty authzid (nginx discards the client's).
        debug_assert!(context.get_ref::<AuthzId>().is_none_or(str::is_empty));
        validate.with::<Captured, _>(|| Ok((authid.to_owned(), Secret::new(password.to_vec()))))?;
        Ok(())
    }
}

impl Plain {
    /// Builds the rsasl server configuration (once, at start-up).
    pub fn new() -> Self {
        let config = SASLConfig::builder()
            .with_defaults()
            .with_callback(Capture)
            .expect("rsasl PLAIN configuration is static");
        Plain { config }
    }

    /// Runs the PLAIN exchange for `user`/`password` as nginx passed them.
    pub fn prepare(&self, user: &[u8], password: &Secret) -> Result<PlainCredentials, PlainError> {
        let mut message = Vec::with_capacity(user.len() + password.expose().len() + 2);
        message.push(0);
        message.extend_from_slice(user);
        message.push(0);
        message.extend_from_slice(password.expose());
        let message = Secret::new(message);

        let server = SASLServer::<Captured>::new(self.config.clone());
        let mechname = Mechname::parse(b"PLAIN").expect("valid mechanism name");
        let mut session = server
            .start_suggested(mechname)
            .map_err(PlainError::Start)?;
        let mut out = Vec::new();
        session
            .step(Some(message.expose()), &mut out)
            .map_err(PlainError::Step)?;
        let (user, prepared) = session.validation().ok_or(PlainError::NotValidated)?;
        let mut passwords = vec![prepared];
        if !passwords[0].ct_eq(password.expose()) {
            passwords.push(password.clone());
        }
        Ok(PlainCredentials { user, passwords })
    }
}

impl Default for Plain {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_prepares() {
        let p = Plain::new();
        let c = p.prepare(b"alice", &Secret::from("p%s +\u{e9}")).unwrap();
        assert_eq!(c.user, "alice");
        assert_eq!(c.passwords.len(), 1);
        assert_eq!(c.passwords[0].expose(), "p%s +\u{e9}".as_bytes());
    }

    #[test]
    fn saslprep_keeps_unprepared_form_too() {
        // U+00A0 NO-BREAK SPACE maps to U+0020 under SASLprep.
        let c = Plain::new()
            .prepare(b"bob", &Secret::from("a\u{a0}b"))
            .unwrap();
        assert_eq!(c.passwords[0].expose(), b"a b");
        assert_eq!(c.passwords[1].expose(), "a\u{a0}b".as_bytes());
    }

    #[test]
    fn non_utf8_password_is_used_as_bytes() {
        let c = Plain::new()
            .prepare(b"carol", &Secret::new(vec![0xff, 0xfe, b'x']))
            .unwrap();
        assert_eq!(c.passwords[0].expose(), &[0xff, 0xfe, b'x']);
    }

    #[test]
    fn refusals() {
        let p = Plain::new();
        let cases: &[(&[u8], &[u8])] = &[
            (b"", b"pw"),         // empty user
            (b"alice", b""),      // empty password
            (b"al\0ice", b"pw"),  // NUL in user
            (b"alice", b"p\0w"),  // NUL in password
            (b"\xff\xfe", b"pw"), // user not UTF-8
            (b"a\x07b", b"pw"),   // prohibited control char in user (SASLprep)
        ];
        for (user, pw) in cases {
            assert!(
                p.prepare(user, &Secret::new(pw.to_vec())).is_err(),
                "{user:?}/{pw:?} should be refused"
            );
        }
    }
}
