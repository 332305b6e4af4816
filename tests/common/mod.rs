//! Support code shared by the test binaries: process handling ([`proc`]),
//! the nginx + Dovecot mail stack ([`e2e`]), an independent FastCGI client
//! ([`fcgi`]) and the real servers the backend tests drive ([`sql`],
//! [`sasl`], [`ldap`]).
// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

pub mod e2e;
pub mod fcgi;
pub mod ldap;
pub mod proc;
pub mod sasl;
pub mod sql;
