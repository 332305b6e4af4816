//! nginx-auth-fcgi: a FastCGI responder that answers nginx mail `auth_http` and
//! http `auth_request` subrequests.
//!
//! # Layout
//! One request flows through four hops, each in its own module:
//!
//! 1. **Transport** — [`listen`] turns a `--listen` spec (unix socket, fd 0 from
//!    spawn-fcgi, systemd socket activation, TCP) into listeners; [`server`] accepts
//!    connections; [`fastcgi`] turns records into a complete [`fastcgi::Request`].
//! 2. **Parse** — [`auth_http`] turns CGI params into a typed
//!    [`auth_http::MailAuthRequest`], [`http_auth::request`] into a typed
//!    [`http_auth::HttpAuthRequest`]. All string → value conversion happens
//!    there.
//! 3. **Decide** — [`authenticator`] is the one policy layer for both kinds:
//!    one walk over the passdb chain ([`passdb`], [`scheme`]) through the
//!    credential [`lookup_cache`], the verification [`cache`] and the bounded
//!    [`verifier`] for expensive hashes, brute-force limits ([`throttle`]) on typed outcomes, the
//!    decision timeout, the effective client address ([`client_ip`]) and one
//!    audit record ([`audit`], which also feeds [`metrics`]). Mail adds the
//!    mechanism ([`mech`]) and the upstream choice ([`upstream`]: pools,
//!    hashing, health checks; a Dovecot [`master_user`] login when no
//!    plaintext is at hand); HTTP adds Digest nonces ([`http_auth::digest`]).
//! 4. **Render** — [`auth_http::response`] writes the mail reply headers and
//!    the text and SMTP code of each [`auth_http::FailureKind`];
//!    [`http_auth::HttpAuth::render`] writes the `auth_request` replies. The
//!    [`service`] writes its own plain replies (metrics, throttle admin,
//!    requests refused before any decision).
//!
//! Around them: [`config`] (the TOML file and its flags, validated section by
//! section), [`app`] (the composition root: a `Config` in, a ready
//! [`service::Service`] out — the binary, the tests and the examples build the
//! service there), [`shared_state`] (the one Redis connection the throttle and
//! the upstream health checks share), [`net`] (CIDR networks) and [`reload`]
//! (SIGHUP swaps a freshly built service in). The binary's `src/cli/` holds
//! only the subcommands.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod app;
pub mod audit;
pub mod auth_http;
pub mod authenticator;
pub(crate) mod backoff;
pub mod cache;
pub mod client_ip;
pub mod config;
pub mod fastcgi;
pub(crate) mod file_watch;
pub mod http_auth;
pub mod listen;
pub mod lookup_cache;
pub mod master_user;
pub mod mech;
pub mod metrics;
pub mod net;
pub mod passdb;
pub mod reload;
pub mod scheme;
pub mod secret;
pub mod server;
pub mod service;
pub mod shared_state;
pub(crate) mod sync;
pub mod throttle;
pub mod upstream;
pub mod verifier;
