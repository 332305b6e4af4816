//! The client address we act on: nginx's `Client-IP`, or — when nginx
//! accepted the connection with `proxy_protocol` from a load balancer we
//! trust — the address that balancer reported (`Proxy-Protocol-Addr`).
//!
//! Throttling, the audit log and everything else keyed on "the client" take
//! their address from [`TrustedProxies::client_ip`] and nowhere else.
//! Without a trusted proxy list the PROXY header is never believed: anyone
//! who can reach a `proxy_protocol` listener could otherwise pick the address
//! they are throttled under.
//!
//! nginx itself can do the substitution in the `mail` block with
//! `set_real_ip_from` (then `Client-IP` already is the PROXY address and no
//! trust is needed here); this is for setups that keep nginx's view of the
//! peer.

use std::net::IpAddr;

use crate::auth_http::MailAuthRequest;
use crate::throttle::Cidr;

/// Networks whose PROXY protocol header is believed (`--trusted-proxy`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    nets: Vec<Cidr>,
}

impl TrustedProxies {
    /// Trust `nets`.
    pub fn new(nets: Vec<Cidr>) -> Self {
        TrustedProxies { nets }
    }

    /// True when `peer` is a trusted proxy.
    pub fn trusts(&self, peer: IpAddr) -> bool {
        self.nets.iter().any(|n| n.contains(peer))
    }

    /// The effective client address of `req`: `Proxy-Protocol-Addr` when
    /// present and `Client-IP` (the peer nginx saw) is a trusted proxy,
    /// else `Client-IP`. An untrusted PROXY address is ignored (logged at
    /// debug: it is normal when nginx's `set_real_ip_from` already did it).
    pub fn client_ip(&self, req: &MailAuthRequest) -> Option<IpAddr> {
        let proxied = req.proxy.as_ref().and_then(|p| p.addr);
        match (req.client_ip, proxied) {
            (Some(peer), Some(addr)) if self.trusts(peer) => Some(addr),
            (peer, Some(addr)) => {
                log::debug!(
                    "Proxy-Protocol-Addr {addr} ignored: peer {} is not a trusted proxy",
                    peer.map_or_else(|| "-".to_owned(), |p| p.to_string())
                );
                peer
            }
            (peer, None) => peer,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fastcgi::Params;

    fn req(client: &str, proxy: Option<&str>) -> MailAuthRequest {
        let mut pairs = vec![
            ("HTTP_AUTH_METHOD", "plain"),
            ("HTTP_AUTH_PROTOCOL", "imap"),
            ("HTTP_CLIENT_IP", client),
        ];
        if let Some(p) = proxy {
            pairs.push(("HTTP_PROXY_PROTOCOL_ADDR", p));
        }
        MailAuthRequest::from_params(&Params::from_pairs(
            pairs
                .into_iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
                .collect(),
        ))
        .unwrap()
    }

    #[test]
    fn proxy_address_only_from_trusted_peers() {
        let t = TrustedProxies::new(vec!["10.1.0.0/16".parse().unwrap(), "::1".parse().unwrap()]);
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        assert_eq!(
            t.client_ip(&req("10.1.2.3", Some("198.51.100.7"))),
            ip("198.51.100.7")
        );
        assert_eq!(
            t.client_ip(&req("::1", Some("2001:db8::9"))),
            ip("2001:db8::9")
        );
        assert_eq!(
            t.client_ip(&req("10.2.0.1", Some("198.51.100.7"))),
            ip("10.2.0.1")
        );
        assert_eq!(t.client_ip(&req("10.1.2.3", None)), ip("10.1.2.3"));
        let none = TrustedProxies::default();
        assert_eq!(
            none.client_ip(&req("10.1.2.3", Some("198.51.100.7"))),
            ip("10.1.2.3")
        );
    }
}
