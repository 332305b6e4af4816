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
use crate::net::Cidr;

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

    /// The effective client address of an HTTP `auth_request`: the peer
    /// (`REMOTE_ADDR`), unless it is a trusted proxy; then the rightmost
    /// `X-Forwarded-For` entry that is not a trusted proxy itself (the first
    /// address nobody we trust vouches for), else `X-Real-IP`. An entry that
    /// is not an address ends the walk at the last trusted hop, so a client
    /// cannot pick its own address with a malformed header.
    pub fn http_client_ip(
        &self,
        peer: Option<IpAddr>,
        forwarded_for: &[Option<IpAddr>],
        real_ip: Option<IpAddr>,
    ) -> Option<IpAddr> {
        let mut hop = peer?;
        if !self.trusts(hop) {
            return Some(hop);
        }
        if forwarded_for.is_empty() {
            return Some(real_ip.unwrap_or(hop));
        }
        for entry in forwarded_for.iter().rev() {
            match entry {
                Some(ip) if self.trusts(*ip) => hop = *ip,
                Some(ip) => return Some(*ip),
                None => return Some(hop),
            }
        }
        Some(hop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_forwarded_addresses_only_from_trusted_proxies() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let t = TrustedProxies::new(vec!["10.0.0.0/8".parse().unwrap()]);
        let xff = [Some(ip("203.0.113.7")), Some(ip("10.1.1.1"))];
        // From an untrusted peer nothing forwarded is believed.
        assert_eq!(
            t.http_client_ip(Some(ip("198.51.100.1")), &xff, Some(ip("203.0.113.8"))),
            Some(ip("198.51.100.1"))
        );
        // From a trusted one: the rightmost untrusted entry.
        assert_eq!(
            t.http_client_ip(Some(ip("10.0.0.2")), &xff, None),
            Some(ip("203.0.113.7"))
        );
        // X-Real-IP when there is no X-Forwarded-For.
        assert_eq!(
            t.http_client_ip(Some(ip("10.0.0.2")), &[], Some(ip("203.0.113.8"))),
            Some(ip("203.0.113.8"))
        );
        // A spoofed leftmost entry behind a malformed one is not reached.
        let junk = [Some(ip("192.0.2.66")), None, Some(ip("10.1.1.1"))];
        assert_eq!(
            t.http_client_ip(Some(ip("10.0.0.2")), &junk, None),
            Some(ip("10.1.1.1"))
        );
        // Nobody trusted: the peer, whatever the headers say.
        assert_eq!(
            TrustedProxies::default().http_client_ip(Some(ip("10.0.0.2")), &xff, None),
            Some(ip("10.0.0.2"))
        );
    }
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
