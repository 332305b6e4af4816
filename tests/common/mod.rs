//! Support code shared by the test binaries: process handling ([`proc`]),
//! the daemon as a process of its own ([`daemon`]),
//! the nginx + Dovecot mail stack ([`e2e`]), an independent FastCGI client
//! ([`fcgi`]) and the real servers the backend tests drive ([`sql`],
//! [`sasl`], [`ldap`], [`redis`]).
// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

pub mod daemon;
pub mod e2e;
pub mod fcgi;
pub mod ldap;
pub mod policy;
pub mod proc;
pub mod redis;
pub mod sasl;
pub mod sql;
