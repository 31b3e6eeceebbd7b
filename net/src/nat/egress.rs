//! What the guest may reach through the NAT: everything the pod can, less what the egress
//! policy denies.
//!
//! The default denies link-local 169.254.0.0/16, where clouds serve instance metadata (and
//! with it, often, the node's credentials) at 169.254.169.254: a pod may be trusted with
//! those, a VM's guest is a tenant and is not by default. The same range holds NodeLocal
//! DNSCache (169.254.20.10), so the pod's own resolvers stay reachable on port 53 whatever
//! is denied. `--nat-deny CIDR` adds a range, `--nat-allow CIDR` reopens one (allow wins
//! over deny; `--nat-allow 169.254.0.0/16` restores the pod's behaviour).

use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::str::FromStr;

/// An IPv4 range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The base address (host bits cleared).
    pub network: Ipv4Addr,
    /// The prefix length, 0 to 32.
    pub prefix: u8,
}

impl Cidr {
    /// The range `network/prefix`, host bits cleared.
    pub fn new(network: Ipv4Addr, prefix: u8) -> Option<Self> {
        (prefix <= 32).then(|| Self {
            network: Ipv4Addr::from(u32::from(network) & Self::mask(prefix)),
            prefix,
        })
    }

    fn mask(prefix: u8) -> u32 {
        u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
    }

    /// Whether `addr` is in the range.
    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & Self::mask(self.prefix) == u32::from(self.network)
    }
}

/// Text that is not an IPv4 range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// Not an address.
    #[error("{0:?} is not an IPv4 address or range such as 10.0.0.0/8")]
    Address(String),
    /// The prefix length is not 0 to 32.
    #[error("{0:?}: the prefix length must be 0 to 32")]
    Prefix(String),
}

impl FromStr for Cidr {
    type Err = CidrError;

    /// `A.B.C.D/N`, or a bare address (a /32).
    fn from_str(s: &str) -> Result<Self, CidrError> {
        let (addr, prefix) = s.split_once('/').unwrap_or((s, "32"));
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| CidrError::Address(s.to_string()))?;
        prefix
            .parse()
            .ok()
            .and_then(|p| Self::new(addr, p))
            .ok_or_else(|| CidrError::Prefix(s.to_string()))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// The egress policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Egress {
    /// Ranges the guest may not reach.
    pub deny: Vec<Cidr>,
    /// Ranges reopened within them.
    pub allow: Vec<Cidr>,
}

/// Link-local: cloud metadata, and NodeLocal DNSCache.
pub const LINK_LOCAL: Cidr = Cidr {
    network: Ipv4Addr::new(169, 254, 0, 0),
    prefix: 16,
};

impl Default for Egress {
    fn default() -> Self {
        Self {
            deny: vec![LINK_LOCAL],
            allow: Vec::new(),
        }
    }
}

impl Egress {
    /// Whether the guest may reach `dst`; `resolvers` (the pod's) are always reachable on
    /// port 53.
    pub fn allows(&self, dst: SocketAddrV4, resolvers: &[Ipv4Addr]) -> bool {
        let ip = *dst.ip();
        if dst.port() == 53 && resolvers.contains(&ip) {
            return true;
        }
        !self.deny.iter().any(|c| c.contains(ip)) || self.allow.iter().any(|c| c.contains(ip))
    }
}

impl fmt::Display for Egress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |v: &[Cidr]| v.iter().map(Cidr::to_string).collect::<Vec<_>>().join(", ");
        if self.deny.is_empty() {
            return write!(f, "denies nothing");
        }
        write!(f, "denies {}", list(&self.deny))?;
        if !self.allow.is_empty() {
            write!(f, " except {}", list(&self.allow))?;
        }
        write!(f, " (the pod's resolvers stay reachable on port 53)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(a: [u8; 4], port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::from(a), port)
    }

    #[test]
    fn parses_ranges_and_bare_addresses() {
        assert_eq!(
            "10.1.2.3/8".parse::<Cidr>().unwrap(),
            Cidr::new(Ipv4Addr::new(10, 0, 0, 0), 8).unwrap()
        );
        assert_eq!("1.2.3.4".parse::<Cidr>().unwrap().prefix, 32);
        assert!(
            "0.0.0.0/0"
                .parse::<Cidr>()
                .unwrap()
                .contains(Ipv4Addr::BROADCAST)
        );
        for bad in ["", "10.0.0.0/33", "10.0.0/8", "x/8", "10.0.0.0/", "::1/128"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn metadata_is_denied_and_the_pods_resolver_is_not() {
        let egress = Egress::default();
        let resolvers = [
            Ipv4Addr::new(169, 254, 20, 10),
            Ipv4Addr::new(10, 96, 0, 10),
        ];
        assert!(!egress.allows(at([169, 254, 169, 254], 80), &resolvers));
        assert!(egress.allows(at([169, 254, 20, 10], 53), &resolvers));
        assert!(
            !egress.allows(at([169, 254, 20, 10], 80), &resolvers),
            "only DNS"
        );
        assert!(egress.allows(at([10, 96, 0, 10], 53), &resolvers));
        assert!(egress.allows(at([93, 184, 216, 34], 443), &resolvers));
    }

    #[test]
    fn allow_reopens_what_deny_closes() {
        let egress = Egress {
            deny: vec![LINK_LOCAL, "10.0.0.0/8".parse().unwrap()],
            allow: vec!["169.254.169.254".parse().unwrap()],
        };
        assert!(egress.allows(at([169, 254, 169, 254], 80), &[]));
        assert!(!egress.allows(at([169, 254, 1, 1], 80), &[]));
        assert!(!egress.allows(at([10, 9, 8, 7], 22), &[]));
        assert!(egress.allows(at([192, 168, 1, 1], 22), &[]));
        assert_eq!(
            egress.to_string(),
            "denies 169.254.0.0/16, 10.0.0.0/8 except 169.254.169.254/32 \
             (the pod's resolvers stay reachable on port 53)"
        );
    }
}
