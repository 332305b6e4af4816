//! IP networks: [`Cidr`], parsed from `--trusted-proxy` and
//! `throttle.trusted_networks`, and the address arithmetic the throttle uses
//! to count an IPv6 client per network.

use std::fmt;
use std::net::{AddrParseError, IpAddr, Ipv6Addr};

/// A network in CIDR notation (`192.0.2.0/24`, `2001:db8::/32`, or a bare
/// address for a single host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

/// Why a network was refused; the text names the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// The part before `/` is not an IP address.
    #[error("`{value}`: expected an address or CIDR such as 192.0.2.0/24")]
    Address {
        /// The value as given.
        value: String,
        /// What the address parser said.
        #[source]
        source: AddrParseError,
    },
    /// The prefix length is not a number in `0..=max`.
    #[error("`{value}`: prefix length must be 0..={max}")]
    Prefix {
        /// The value as given.
        value: String,
        /// 32 for IPv4, 128 for IPv6.
        max: u8,
    },
}

impl Cidr {
    /// The network of `prefix` bits that holds `ip` (IPv6 `2001:db8:1:2::/64`
    /// for `2001:db8:1:2:aaaa::1` and 64); IPv4-mapped IPv6 counts as IPv4.
    pub fn around(ip: IpAddr, prefix: u8) -> Self {
        let net = canonical(ip);
        let prefix = prefix.min(if net.is_ipv4() { 32 } else { 128 });
        let net = match net {
            IpAddr::V4(v4) => {
                let bits = mask_bits(u32::from(v4).into(), 32, prefix);
                IpAddr::V4((bits as u32).into())
            }
            IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(mask_bits(u128::from(v6), 128, prefix))),
        };
        Cidr { net, prefix }
    }

    /// True when `ip` is inside this network (IPv4-mapped IPv6 counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, canonical(ip)) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                mask_bits(u32::from(n).into(), 32, self.prefix)
                    == mask_bits(u32::from(a).into(), 32, self.prefix)
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                mask_bits(u128::from(n), 128, self.prefix)
                    == mask_bits(u128::from(a), 128, self.prefix)
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for Cidr {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<Self, CidrError> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let net: IpAddr = addr.trim().parse().map_err(|source| CidrError::Address {
            value: s.to_owned(),
            source,
        })?;
        let net = canonical(net);
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| CidrError::Prefix {
                    value: s.to_owned(),
                    max,
                })?,
        };
        Ok(Cidr { net, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

/// `ip` with an IPv4-mapped IPv6 address (`::ffff:192.0.2.1`) turned into
/// the IPv4 address it stands for.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

fn mask_bits(v: u128, width: u32, prefix: u8) -> u128 {
    let prefix = u32::from(prefix).min(width);
    if prefix == 0 {
        0
    } else {
        v & (u128::MAX << (width - prefix)) & (u128::MAX >> (128 - width))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr() {
        let c: Cidr = "192.0.2.0/24".parse().unwrap();
        assert!(c.contains("192.0.2.77".parse().unwrap()));
        assert!(c.contains("::ffff:192.0.2.1".parse().unwrap()));
        assert!(!c.contains("192.0.3.1".parse().unwrap()));
        assert!(!c.contains("2001:db8::1".parse().unwrap()));
        let c: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(c.contains("2001:db8:ffff::1".parse().unwrap()));
        assert!(!c.contains("2001:db9::1".parse().unwrap()));
        let host: Cidr = "10.1.2.3".parse().unwrap();
        assert!(host.contains("10.1.2.3".parse().unwrap()));
        assert!(!host.contains("10.1.2.4".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("203.0.113.9".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nope/8".parse::<Cidr>().is_err());
    }

    #[test]
    fn errors_name_the_value() {
        assert_eq!(
            "10.0.0.0/33".parse::<Cidr>().unwrap_err().to_string(),
            "`10.0.0.0/33`: prefix length must be 0..=32"
        );
        let e = "nope/8".parse::<Cidr>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "`nope/8`: expected an address or CIDR such as 192.0.2.0/24"
        );
        assert!(std::error::Error::source(&e).is_some());
    }

    #[test]
    fn around_masks_to_the_prefix() {
        let n = Cidr::around("2001:db8:1:2:aaaa::1".parse().unwrap(), 64);
        assert_eq!(n.to_string(), "2001:db8:1:2::/64");
        assert!(n.contains("2001:db8:1:2:bbbb::2".parse().unwrap()));
        let n = Cidr::around("::ffff:198.51.100.7".parse().unwrap(), 24);
        assert_eq!(n.to_string(), "198.51.100.0/24");
        assert_eq!(
            Cidr::around("2001:db8::1".parse().unwrap(), 200).to_string(),
            "2001:db8::1/128"
        );
    }
}
