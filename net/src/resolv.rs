//! The pod's resolver settings, from `/etc/resolv.conf`: what DHCP tells the guest.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Where the resolver settings are.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";

/// DNS servers (each once, in order, by family) and the search list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolver {
    /// The IPv4 servers.
    pub dns: Vec<Ipv4Addr>,
    /// The IPv6 servers (link-local and IPv4-mapped ones left out: the guest could not
    /// reach them).
    pub dns6: Vec<Ipv6Addr>,
    /// The search domains.
    pub search: Vec<String>,
}

/// Whether the guest could reach IPv6 server `a` through a pod: not a link-local one (a
/// scoped `fe80::1%eth0` does not even parse), nor an IPv4-mapped one.
fn reachable6(a: Ipv6Addr) -> bool {
    a.segments()[0] & 0xffc0 != 0xfe80 && a.to_ipv4_mapped().is_none()
}

impl Resolver {
    /// The settings in `resolv.conf` text.
    pub fn parse(text: &str) -> Self {
        let mut out = Self::default();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => match words.next().and_then(|w| w.parse().ok()) {
                    Some(IpAddr::V4(a)) if !out.dns.contains(&a) => out.dns.push(a),
                    Some(IpAddr::V6(a)) if reachable6(a) && !out.dns6.contains(&a) => {
                        out.dns6.push(a);
                    }
                    _ => {}
                },
                // The last search or domain line wins, as in the resolver.
                Some("search" | "domain") => out.search = words.map(str::to_string).collect(),
                _ => {}
            }
        }
        out
    }

    /// This namespace's settings; none when [`RESOLV_CONF`] cannot be read.
    pub fn of_this_host() -> Self {
        Self::parse(&std::fs::read_to_string(RESOLV_CONF).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_once_by_family_and_the_last_search_line() {
        let r = Resolver::parse(
            "# comment\nnameserver 10.96.0.10\nnameserver fd00::10\nnameserver 10.96.0.10\n\
             nameserver fe80::1%eth0\nnameserver fe80::1\nnameserver ::ffff:10.0.0.1\n\
             nameserver fd00::10\n\
             domain example.com\n\
             search default.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n",
        );
        assert_eq!(r.dns, vec![Ipv4Addr::new(10, 96, 0, 10)]);
        assert_eq!(r.dns6, vec!["fd00::10".parse::<Ipv6Addr>().unwrap()]);
        assert_eq!(
            r.search,
            vec![
                "default.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local"
            ]
        );
    }
}
