//! nginx mail `auth_http`, as it reaches us through an nginx http location with
//! `fastcgi_pass`: the request headers arrive as CGI params (`HTTP_AUTH_USER`, …).
//!
//! This module is a translator with no policy: [`request`] turns params into a
//! typed [`MailAuthRequest`] and [`response`] renders a [`MailAuthResponse`]
//! into the CGI header block nginx's mail module parses, giving each
//! [`FailureKind`] the policy layer chose its text and SMTP code.
//!
//! Protocol: <https://nginx.org/en/docs/mail/ngx_mail_auth_http_module.html>
//! and `shared/reference/nginx-auth-protocols.md` §2–§3.

pub mod request;
pub mod response;

pub use request::{
    AuthMethod, ClientHost, MailAuthRequest, MailProtocol, ProtocolError, ProxyProtocol,
    SmtpEnvelope, SslInfo, UnknownProtocol,
};
pub use response::{Failure, FailureKind, MailAuthResponse};
