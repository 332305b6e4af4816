//! The passdbs against real servers: PostgreSQL and MariaDB (`sql`, and the
//! ignored `bench_sql` figures), OpenLDAP slapd (`ldap`), Cyrus saslauthd
//! (`saslauthd`) and the Dovecot auth service (`dovecot_auth`).

#[path = "../common/mod.rs"]
mod common;

mod bench_sql;
mod dovecot_auth;
mod ldap;
mod lookup_cache;
mod saslauthd;
mod sql;
