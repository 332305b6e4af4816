//! Which upstream mail server a logged-in client goes to: the passdb's per-user
//! `host`/`port` when set, else the configured server for the protocol.
//!
//! nginx accepts only a literal IP in `Auth-Server` (reference §3.2), so names
//! are resolved once, at start-up — never on the request path.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

use crate::auth_http::MailProtocol;
use crate::passdb::Principal;

/// Default upstream per protocol.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Upstreams {
    by_protocol: HashMap<MailProtocol, SocketAddr>,
}

/// A bad `--upstream` value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("upstream `{value}`: {reason}")]
pub struct UpstreamError {
    value: String,
    reason: String,
}

impl Upstreams {
    /// Parses `PROTOCOL=HOST:PORT` (`imap=127.0.0.1:143`, `pop3=[2001:db8::1]:110`,
    /// `smtp=mx.internal:25`); a later value for the same protocol replaces an earlier one.
    pub fn add(&mut self, spec: &str) -> Result<(), UpstreamError> {
        let err = |reason: &str| UpstreamError {
            value: spec.to_owned(),
            reason: reason.to_owned(),
        };
        let (proto, addr) = spec
            .split_once('=')
            .ok_or_else(|| err("expected PROTOCOL=HOST:PORT"))?;
        let proto: MailProtocol = proto.trim().parse().map_err(|e: String| err(&e))?;
        let addr = parse_addr(addr.trim()).map_err(|e| err(&e))?;
        self.by_protocol.insert(proto, addr);
        Ok(())
    }

    /// The configured default for `protocol`.
    pub fn get(&self, protocol: MailProtocol) -> Option<SocketAddr> {
        self.by_protocol.get(&protocol).copied()
    }

    /// The upstream for `principal` speaking `protocol`. A per-user host without
    /// a port takes the protocol's default port; a per-user port alone keeps the
    /// default host. `None` when nothing is configured.
    pub fn pick(&self, protocol: MailProtocol, principal: &Principal) -> Option<(IpAddr, u16)> {
        let default = self.get(protocol);
        let host = principal.upstream_host.or(default.map(|a| a.ip()))?;
        let port = principal
            .upstream_port
            .or(default.map(|a| a.port()))
            .or(default_port(protocol))?;
        Some((host, port))
    }
}

/// IANA port of the protocol (used when a per-user host comes without a port
/// and no default upstream is configured).
fn default_port(p: MailProtocol) -> Option<u16> {
    Some(match p {
        MailProtocol::Imap => 143,
        MailProtocol::Pop3 => 110,
        MailProtocol::Smtp => 25,
    })
}

/// `HOST:PORT` → socket address; names are resolved now (start-up).
pub fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return check_port(a);
    }
    let (host, port) = s.rsplit_once(':').ok_or("expected HOST:PORT")?;
    if host.contains(':') && !host.starts_with('[') {
        return Err("write an IPv6 address in brackets: [2001:db8::1]:143".into());
    }
    let port: u16 = port.parse().map_err(|_| format!("bad port `{port}`"))?;
    let addr = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve `{host}`: {e}"))?
        .next()
        .ok_or_else(|| format!("`{host}` has no address"))?;
    check_port(addr)
}

fn check_port(a: SocketAddr) -> Result<SocketAddr, String> {
    if a.port() == 0 {
        Err("port must be 1..65535".into())
    } else {
        Ok(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_picks() {
        let mut u = Upstreams::default();
        u.add("imap=127.0.0.1:143").unwrap();
        u.add("pop3=[2001:db8::1]:110").unwrap();
        u.add("smtp=localhost:25").unwrap();
        assert!(u.add("imap=127.0.0.1").is_err());
        assert!(u.add("imap=127.0.0.1:0").is_err());
        assert!(u.add("gopher=127.0.0.1:70").is_err());
        assert!(u.add("imap=2001:db8::1:143").is_err());
        assert!(u.add("imap=no.such.host.invalid:143").is_err());

        let nobody = Principal::default();
        assert_eq!(
            u.pick(MailProtocol::Imap, &nobody),
            Some(("127.0.0.1".parse().unwrap(), 143))
        );
        assert_eq!(
            u.pick(MailProtocol::Pop3, &nobody),
            Some(("2001:db8::1".parse().unwrap(), 110))
        );
        let routed = Principal {
            upstream_host: Some("192.0.2.5".parse().unwrap()),
            ..Principal::default()
        };
        assert_eq!(
            u.pick(MailProtocol::Imap, &routed),
            Some(("192.0.2.5".parse().unwrap(), 143))
        );
        let port_only = Principal {
            upstream_port: Some(1143),
            ..Principal::default()
        };
        assert_eq!(
            u.pick(MailProtocol::Imap, &port_only),
            Some(("127.0.0.1".parse().unwrap(), 1143))
        );
        assert_eq!(Upstreams::default().pick(MailProtocol::Imap, &nobody), None);
        assert_eq!(
            Upstreams::default().pick(MailProtocol::Smtp, &routed),
            Some(("192.0.2.5".parse().unwrap(), 25))
        );
    }
}
