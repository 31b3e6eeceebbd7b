//! What the guest may reach through the NAT: everything the pod can, less what the egress
//! policy denies.
//!
//! The default denies link-local 169.254.0.0/16, where clouds serve instance metadata (and
//! with it, often, the node's credentials) at 169.254.169.254: a pod may be trusted with
//! those, a VM's guest is a tenant and is not by default. The same range holds NodeLocal
//! DNSCache (169.254.20.10), so the pod's own resolvers stay reachable on port 53 whatever
//! is denied. For IPv6 it denies link-local fe80::/10 and the two metadata addresses that
//! are not link-local (EC2's fd00:ec2::254, Google's fd20:ce::254). `--nat-deny CIDR` adds
//! a range, `--nat-allow CIDR` reopens one (allow wins
//! over deny; `--nat-allow 169.254.0.0/16` restores the pod's behaviour).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

/// An IPv4 or IPv6 range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The base address (host bits cleared).
    pub network: IpAddr,
    /// The prefix length, 0 to 32 (IPv4) or 128 (IPv6).
    pub prefix: u8,
}

impl Cidr {
    /// The range `network/prefix`, host bits cleared; `None` when the prefix is longer than
    /// the address.
    pub fn new(network: IpAddr, prefix: u8) -> Option<Self> {
        let network = match network {
            IpAddr::V4(a) if prefix <= 32 => {
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & Self::mask4(prefix)))
            }
            IpAddr::V6(a) if prefix <= 128 => {
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & Self::mask6(prefix)))
            }
            _ => return None,
        };
        Some(Self { network, prefix })
    }

    fn mask4(prefix: u8) -> u32 {
        u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
    }

    fn mask6(prefix: u8) -> u128 {
        u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
    }

    /// Whether `addr` is in the range (never, for an address of the other family).
    pub fn contains(&self, addr: IpAddr) -> bool {
        match (self.network, addr) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                u32::from(a) & Self::mask4(self.prefix) == u32::from(n)
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                u128::from(a) & Self::mask6(self.prefix) == u128::from(n)
            }
            _ => false,
        }
    }
}

/// Text that is not an IP range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// Not an address.
    #[error("{0:?} is not an IP address or range such as 10.0.0.0/8 or fd00::/8")]
    Address(String),
    /// The prefix length is longer than the address.
    #[error("{0:?}: the prefix length must be 0 to 32 for IPv4, 0 to 128 for IPv6")]
    Prefix(String),
}

impl FromStr for Cidr {
    type Err = CidrError;

    /// `A.B.C.D/N` or `X:Y::Z/N`, or a bare address (a /32 or /128).
    fn from_str(s: &str) -> Result<Self, CidrError> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| CidrError::Address(s.to_string()))?;
        let prefix = match prefix {
            Some(p) => p.parse().ok(),
            None if addr.is_ipv4() => Some(32),
            None => Some(128),
        };
        prefix
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

/// IPv4 link-local: cloud metadata, and NodeLocal DNSCache.
pub const LINK_LOCAL: Cidr = Cidr {
    network: IpAddr::V4(Ipv4Addr::new(169, 254, 0, 0)),
    prefix: 16,
};

/// IPv6 link-local: the pod's own link, which the guest has no business on.
pub const LINK_LOCAL_V6: Cidr = Cidr {
    network: IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0)),
    prefix: 10,
};

/// The IPv6 instance metadata services of the clouds that have one (EC2's and Google's),
/// which are not link-local.
pub const METADATA_V6: [Cidr; 2] = [
    Cidr {
        network: IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
        prefix: 128,
    },
    Cidr {
        network: IpAddr::V6(Ipv6Addr::new(0xfd20, 0xce, 0, 0, 0, 0, 0, 0x254)),
        prefix: 128,
    },
];

impl Default for Egress {
    fn default() -> Self {
        Self {
            deny: [LINK_LOCAL, LINK_LOCAL_V6]
                .into_iter()
                .chain(METADATA_V6)
                .collect(),
            allow: Vec::new(),
        }
    }
}

impl Egress {
    /// Whether the guest may reach `dst`; `resolvers` (the pod's) are always reachable on
    /// port 53.
    ///
    /// An address of the NAT64 well-known prefix (64:ff9b::/96) must also be allowed as the
    /// IPv4 address a NAT64 on the way would reach: IPv4's rules hold through it. (Other
    /// NAT64 prefixes embed IPv4 where only their network knows; deny them by range.)
    pub fn allows(&self, dst: SocketAddr, resolvers: &[IpAddr]) -> bool {
        let ip = dst.ip();
        if dst.port() == 53 && resolvers.contains(&ip) {
            return true;
        }
        let denied = |ip: IpAddr| {
            self.deny.iter().any(|c| c.contains(ip)) && !self.allow.iter().any(|c| c.contains(ip))
        };
        let nat64 = match ip {
            IpAddr::V6(a) => nat64_target(a).map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        !denied(ip) && !nat64.is_some_and(denied)
    }
}

/// The IPv4 address that IPv6 address `a` stands for at a NAT64 with the well-known prefix
/// 64:ff9b::/96 (RFC 6052), if it has that prefix.
pub fn nat64_target(a: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = a.segments();
    (s[..6] == [0x64, 0xff9b, 0, 0, 0, 0])
        .then(|| Ipv4Addr::from((u32::from(s[6]) << 16) | u32::from(s[7])))
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

    fn at(a: [u8; 4], port: u16) -> SocketAddr {
        SocketAddr::from((a, port))
    }

    fn at6(a: &str, port: u16) -> SocketAddr {
        SocketAddr::new(a.parse().unwrap(), port)
    }

    #[test]
    fn parses_ranges_and_bare_addresses() {
        assert_eq!(
            "10.1.2.3/8".parse::<Cidr>().unwrap(),
            Cidr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 0)), 8).unwrap()
        );
        assert_eq!("1.2.3.4".parse::<Cidr>().unwrap().prefix, 32);
        assert_eq!("::1".parse::<Cidr>().unwrap().prefix, 128);
        let v4_all = "0.0.0.0/0".parse::<Cidr>().unwrap();
        assert!(v4_all.contains(IpAddr::V4(Ipv4Addr::BROADCAST)));
        assert!(
            !v4_all.contains(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
            "one family"
        );
        let ula = "fd12:3456::1/16".parse::<Cidr>().unwrap();
        assert_eq!(ula.to_string(), "fd12::/16");
        assert!(ula.contains("fd12:ffff::9".parse().unwrap()));
        assert!(!ula.contains("fd13::9".parse().unwrap()));
        for bad in [
            "",
            "10.0.0.0/33",
            "10.0.0/8",
            "x/8",
            "10.0.0.0/",
            "::1/129",
            "fd00::/x",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn metadata_is_denied_and_the_pods_resolver_is_not() {
        let egress = Egress::default();
        let resolvers = [
            IpAddr::V4(Ipv4Addr::new(169, 254, 20, 10)),
            IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10)),
            "fe80::53".parse().unwrap(),
        ];
        assert!(!egress.allows(at([169, 254, 169, 254], 80), &resolvers));
        assert!(egress.allows(at([169, 254, 20, 10], 53), &resolvers));
        assert!(
            !egress.allows(at([169, 254, 20, 10], 80), &resolvers),
            "only DNS"
        );
        assert!(egress.allows(at([10, 96, 0, 10], 53), &resolvers));
        assert!(egress.allows(at([93, 184, 216, 34], 443), &resolvers));
        assert!(!egress.allows(at6("fe80::1", 80), &resolvers));
        assert!(egress.allows(at6("fe80::53", 53), &resolvers));
        assert!(!egress.allows(at6("fd00:ec2::254", 80), &resolvers));
        assert!(!egress.allows(at6("fd20:ce::254", 80), &resolvers));
        assert!(egress.allows(at6("2001:db8::1", 443), &resolvers));
        // Through a NAT64, IPv4's rules hold.
        assert!(!egress.allows(at6("64:ff9b::a9fe:a9fe", 80), &resolvers));
        assert!(egress.allows(at6("64:ff9b::5db8:d822", 443), &resolvers));
        let tens = Egress {
            deny: vec!["10.0.0.0/8".parse().unwrap()],
            allow: vec![],
        };
        assert!(!tens.allows(at6("64:ff9b::a00:5", 22), &[]));
        assert!(
            tens.allows(at6("64:ff9b:1::a00:5", 22), &[]),
            "another prefix: by range"
        );
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
