//! IPv6 on the guest's link: the gateway's neighbour discovery and router advertisements,
//! DHCPv6, and the sorting of the guest's IPv6 packets. TCP, UDP and echo then take the
//! same paths as IPv4's, with the pod's IPv6 sockets.
//!
//! **Addresses.** From `masquerade.ipv6Cidr` (default fd10:0:2::/120, as KubeVirt): the
//! gateway is base+1, the guest base+2. The gateway also has a link-local address made from
//! its MAC ([`GATEWAY_MAC`]), from which it advertises itself as the router.
//!
//! **What the guest is told, and how.** Router advertisements (to a router solicitation at
//! once, and to all nodes every [`RA_INTERVAL`]) make the gateway the default router, the
//! prefix on-link (not autonomous: the guest takes no address of its own making), and carry
//! the MTU and the DNS servers (RDNSS, RFC 8106). Their managed flag sends the guest to
//! DHCPv6 for its address, and the server in [`crate::dhcp6`] gives it base+2, the DNS
//! servers and the search list. Neighbour solicitations for the gateway's two addresses are
//! answered; any other (the guest's duplicate address detection among them) is not, and
//! smoltcp is told the guest's MAC ahead of time as for IPv4.
//!
//! **What the guest may send.** TCP, UDP and echo requests from its address base+2 to a
//! routable address: not loopback, link-local, multicast, unspecified, nor an IPv4-mapped
//! or -compatible address (through the pod's IPv6 sockets those would reach IPv4, its
//! loopback included). Echo to the gateway is answered by it. Everything else, extension
//! headers and fragments included, is dropped.

use std::net::{IpAddr, Ipv6Addr, SocketAddrV6};
use std::time::{Duration, Instant};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    Icmpv6Message, Icmpv6Packet, IpAddress, IpProtocol, Ipv6Packet, UdpPacket, UdpRepr,
};

use super::device::ipv6_frame;
use super::engine::{GATEWAY_MAC, Nat, NatConfig};
use crate::dhcp6::{self, Dhcp6Server, Lease6};
use crate::mac::MacAddr;

/// How often the gateway advertises itself unasked; its advertisements are valid
/// [`ROUTER_LIFETIME`], several intervals.
pub const RA_INTERVAL: Duration = Duration::from_secs(120);
const ROUTER_LIFETIME: u16 = 1800;
/// Neighbour discovery's messages are sent, and taken, with hop limit 255 only (RFC 4861).
const ND_HOP_LIMIT: u8 = 255;
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
const UDP_HDR: usize = 8;

/// The guest's IPv6 side of the masquerade binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv6Config {
    /// The subnet's base address (`masquerade.ipv6Cidr`).
    pub network: Ipv6Addr,
    /// Its prefix length (64 to 126).
    pub prefix: u8,
    /// The pod's IPv6 DNS servers.
    pub dns: Vec<Ipv6Addr>,
}

impl Ipv6Config {
    /// The gateway's address: base + 1.
    pub fn gateway(&self) -> Ipv6Addr {
        Ipv6Addr::from(u128::from(self.network).wrapping_add(1))
    }

    /// The guest's address: base + 2.
    pub fn guest(&self) -> Ipv6Addr {
        Ipv6Addr::from(u128::from(self.network).wrapping_add(2))
    }
}

/// The link-local address made from `mac` (modified EUI-64, RFC 4291 appendix A).
pub fn link_local(mac: MacAddr) -> Ipv6Addr {
    let m = mac.octets();
    let mut a = [0u8; 16];
    a[0] = 0xfe;
    a[1] = 0x80;
    a[8..11].copy_from_slice(&[m[0] ^ 2, m[1], m[2]]);
    a[11..13].copy_from_slice(&[0xff, 0xfe]);
    a[13..16].copy_from_slice(&m[3..6]);
    Ipv6Addr::from(a)
}

/// Whether this network namespace has a global IPv6 address (on a link other than `lo`):
/// the sign that the pod has IPv6 to give the guest.
pub fn pod_has_ipv6() -> bool {
    std::fs::read_to_string("/proc/net/if_inet6").is_ok_and(|t| has_global_address(&t))
}

/// Whether `/proc/net/if_inet6` text lists a global address on a link other than `lo`.
fn has_global_address(if_inet6: &str) -> bool {
    if_inet6.lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // address, ifindex, prefix length, scope, flags, name; scope 00 is global.
        fields.len() == 6 && fields[3] == "00" && fields[5] != "lo"
    })
}

fn is_link_local(a: Ipv6Addr) -> bool {
    a.segments()[0] & 0xffc0 == 0xfe80
}

/// Whether the guest may send to `dst` through the pod's IPv6 sockets (the egress policy
/// aside).
pub(super) fn is_routable(dst: Ipv6Addr) -> bool {
    let s = dst.segments();
    let v4_mapped = s[..5] == [0; 5] && s[5] == 0xffff;
    let v4_compatible = s[..6] == [0; 6];
    // Through a NAT64, the IPv4 address it stands for must be routable itself.
    let nat64_unroutable =
        super::egress::nat64_target(dst).is_some_and(|a| !super::engine::is_routable(a));
    !(nat64_unroutable
        || dst.is_loopback()
        || dst.is_unspecified()
        || dst.is_multicast()
        || is_link_local(dst)
        || v4_mapped
        || v4_compatible)
}

/// The engine's IPv6 state.
pub(super) struct V6 {
    pub(super) network: Ipv6Addr,
    pub(super) prefix: u8,
    pub(super) gateway: Ipv6Addr,
    pub(super) link_local: Ipv6Addr,
    pub(super) guest: Ipv6Addr,
    /// Where the gateway's port 53 goes, when the pod's IPv6 resolver is on loopback.
    pub(super) dns_redirect: Option<SocketAddrV6>,
    dns: Vec<Ipv6Addr>,
    dhcp: Dhcp6Server,
    next_ra: Instant,
}

impl V6 {
    pub(super) fn new(c: &Ipv6Config, cfg: &NatConfig, now: Instant) -> Self {
        let gateway = c.gateway();
        let loopback = c.dns.iter().copied().find(Ipv6Addr::is_loopback);
        let mut dns: Vec<Ipv6Addr> = c.dns.iter().copied().filter(|a| !a.is_loopback()).collect();
        if loopback.is_some() {
            dns.insert(0, gateway);
        }
        let dhcp = Dhcp6Server::new(Lease6 {
            address: c.guest(),
            dns: dns.clone(),
            search: cfg.search.clone(),
            server_mac: GATEWAY_MAC,
        });
        Self {
            network: c.network,
            prefix: c.prefix,
            gateway,
            link_local: link_local(GATEWAY_MAC),
            guest: c.guest(),
            dns_redirect: loopback.map(|a| SocketAddrV6::new(a, 53, 0, 0)),
            dns,
            dhcp,
            next_ra: now,
        }
    }

    pub(super) fn is_gateway(&self, a: Ipv6Addr) -> bool {
        a == self.gateway || a == self.link_local
    }

    fn in_subnet(&self, a: Ipv6Addr) -> bool {
        let mask = u128::MAX
            .checked_shl(128 - u32::from(self.prefix))
            .unwrap_or(0);
        u128::from(a) & mask == u128::from(self.network) & mask
    }

    /// A peer's address as the guest sees it: its own, unless the guest could not answer it
    /// (loopback, link-local, the NAT subnet, an IPv4-mapped address), then the gateway's.
    pub(super) fn visible_source(&self, peer: Ipv6Addr) -> Ipv6Addr {
        if is_routable(peer) && !self.in_subnet(peer) {
            peer
        } else {
            self.gateway
        }
    }
}

/// An ICMPv6 message with its checksum filled in for `src` → `dst`.
fn icmpv6(src: Ipv6Addr, dst: Ipv6Addr, mut message: Vec<u8>) -> Vec<u8> {
    Icmpv6Packet::new_unchecked(&mut message[..]).fill_checksum(&src, &dst);
    message
}

/// The Ethernet address of IPv6 multicast group `a` (RFC 2464).
fn multicast_mac(a: Ipv6Addr) -> MacAddr {
    let o = a.octets();
    MacAddr::new([0x33, 0x33, o[12], o[13], o[14], o[15]])
}

impl Nat {
    /// An IPv6 packet from the guest (`payload` of Ethernet `frame`).
    pub(super) fn ipv6_from_guest(&mut self, frame: &[u8], payload: &[u8]) {
        let Some(v6) = &self.v6 else {
            return self.drop_frame();
        };
        let guest = v6.guest;
        let Ok(ip) = Ipv6Packet::new_checked(payload) else {
            return self.drop_frame();
        };
        if ip.version() != 6 {
            return self.drop_frame();
        }
        let (src, dst, hop) = (ip.src_addr(), ip.dst_addr(), ip.hop_limit());
        let routable = is_routable(dst) || (self.loopback_ok && dst.is_loopback());
        match ip.next_header() {
            IpProtocol::Icmpv6 => self.icmpv6_from_guest(src, dst, hop, ip.payload()),
            IpProtocol::Udp if dst == dhcp6::ALL_SERVERS => {
                self.dhcp6_from_guest(src, ip.payload())
            }
            _ if src != guest || !routable => self.drop_frame(),
            IpProtocol::Tcp => self.tcp_from_guest(frame, IpAddr::V6(dst), ip.payload()),
            IpProtocol::Udp => self.udp_from_guest(IpAddr::V6(dst), hop, ip.payload()),
            _ => self.drop_frame(),
        }
    }

    fn icmpv6_from_guest(&mut self, src: Ipv6Addr, dst: Ipv6Addr, hop: u8, message: &[u8]) {
        let Some(v6) = &self.v6 else {
            return;
        };
        let (guest, gateway_dst) = (v6.guest, v6.is_gateway(dst));
        let Ok(icmp) = Icmpv6Packet::new_checked(message) else {
            return self.drop_frame();
        };
        // The guest's own addresses: its global one, or its link-local one on the link.
        let from_guest = src == guest || is_link_local(src);
        match icmp.msg_type() {
            Icmpv6Message::RouterSolicit if hop == ND_HOP_LIMIT => {
                let to = if src.is_unspecified() { ALL_NODES } else { src };
                self.advertise_to(to);
            }
            Icmpv6Message::NeighborSolicit if hop == ND_HOP_LIMIT && message.len() >= 24 => {
                let target =
                    Ipv6Addr::from(<[u8; 16]>::try_from(&message[8..24]).unwrap_or([0; 16]));
                // Duplicate address detection (from ::) is never answered: the gateway
                // claims no address of the guest's.
                if v6.is_gateway(target) && !src.is_unspecified() && from_guest {
                    self.neighbour_advert(target, src);
                } else {
                    self.drop_frame();
                }
            }
            Icmpv6Message::EchoRequest if icmp.msg_code() == 0 && from_guest => {
                if gateway_dst {
                    let mut reply = message.to_vec();
                    reply[0] = Icmpv6Message::EchoReply.into();
                    let reply = icmpv6(dst, src, reply);
                    self.push_ipv6(dst, src, IpProtocol::Icmpv6, &reply, 64);
                } else if src == guest
                    && (is_routable(dst) || (self.loopback_ok && dst.is_loopback()))
                {
                    self.echo_from_guest(IpAddr::V6(dst), hop, message);
                } else {
                    self.drop_frame();
                }
            }
            _ => self.drop_frame(),
        }
    }

    /// Queues an IPv6 packet for the guest at `dst` (its global, link-local or a multicast
    /// address), counted dropped when `to-guest-frames` wait already.
    pub(super) fn push_ipv6(
        &mut self,
        src: Ipv6Addr,
        dst: Ipv6Addr,
        protocol: IpProtocol,
        payload: &[u8],
        hop_limit: u8,
    ) {
        if self.dev.tx.is_full() {
            self.dev.tx.dropped += 1;
            return;
        }
        let mac = if dst.is_multicast() {
            multicast_mac(dst)
        } else {
            self.cfg.guest_mac
        };
        let frame = ipv6_frame((GATEWAY_MAC, src), (mac, dst), protocol, payload, hop_limit);
        self.dev.tx.push(frame);
    }

    /// Answers a neighbour solicitation for the gateway's `target` from `to`.
    fn neighbour_advert(&mut self, target: Ipv6Addr, to: Ipv6Addr) {
        let mut m = vec![Icmpv6Message::NeighborAdvert.into(), 0, 0, 0];
        // Router, solicited, override.
        m.extend_from_slice(&[0xe0, 0, 0, 0]);
        m.extend_from_slice(&target.octets());
        m.extend_from_slice(&[2, 1]); // target link-layer address, 8 bytes
        m.extend_from_slice(&GATEWAY_MAC.octets());
        let m = icmpv6(target, to, m);
        self.push_ipv6(target, to, IpProtocol::Icmpv6, &m, ND_HOP_LIMIT);
    }

    /// The gateway's router advertisement to `to`.
    fn advertise_to(&mut self, to: Ipv6Addr) {
        let Some(v6) = &self.v6 else {
            return;
        };
        let from = v6.link_local;
        let mut m = vec![Icmpv6Message::RouterAdvert.into(), 0, 0, 0];
        // Hop limit 64; managed (M) and other configuration (O): addresses and DNS by
        // DHCPv6; then the router lifetime, reachable time and retransmission timer (0:
        // the guest's own defaults).
        m.extend_from_slice(&[64, 0xc0]);
        m.extend_from_slice(&ROUTER_LIFETIME.to_be_bytes());
        m.extend_from_slice(&[0; 8]);
        // Source link-layer address.
        m.extend_from_slice(&[1, 1]);
        m.extend_from_slice(&GATEWAY_MAC.octets());
        // MTU.
        m.extend_from_slice(&[5, 1, 0, 0]);
        m.extend_from_slice(&u32::from(self.cfg.mtu).to_be_bytes());
        // Prefix information: on-link (L), not autonomous, lifetimes infinite.
        m.extend_from_slice(&[3, 4, v6.prefix, 0x80]);
        m.extend_from_slice(&u32::MAX.to_be_bytes());
        m.extend_from_slice(&u32::MAX.to_be_bytes());
        m.extend_from_slice(&[0; 4]);
        m.extend_from_slice(&v6.network.octets());
        // Recursive DNS servers (RFC 8106), for guests that read them from here.
        let dns: Vec<Ipv6Addr> = v6.dns.iter().copied().take(8).collect();
        if !dns.is_empty() {
            let units = u8::try_from(1 + 2 * dns.len()).unwrap_or(17);
            m.extend_from_slice(&[25, units, 0, 0]);
            m.extend_from_slice(&u32::from(ROUTER_LIFETIME).to_be_bytes());
            for a in &dns {
                m.extend_from_slice(&a.octets());
            }
        }
        let m = icmpv6(from, to, m);
        self.push_ipv6(from, to, IpProtocol::Icmpv6, &m, ND_HOP_LIMIT);
    }

    /// Advertises the gateway to all nodes when [`RA_INTERVAL`] has passed since the last
    /// time.
    pub(super) fn advertise_router(&mut self, now: Instant) {
        let Some(v6) = &mut self.v6 else {
            return;
        };
        if now < v6.next_ra {
            return;
        }
        v6.next_ra = now + RA_INTERVAL;
        self.advertise_to(ALL_NODES);
    }

    /// A UDP datagram to the DHCPv6 servers' group.
    fn dhcp6_from_guest(&mut self, src: Ipv6Addr, datagram: &[u8]) {
        let Some(v6) = &self.v6 else {
            return;
        };
        let Ok(udp) = UdpPacket::new_checked(datagram) else {
            return self.drop_frame();
        };
        if udp.dst_port() != dhcp6::SERVER_PORT || !(is_link_local(src) || src == v6.guest) {
            return self.drop_frame();
        }
        let Some(reply) = v6.dhcp.handle(udp.payload()) else {
            return self.drop_frame();
        };
        let from = v6.link_local;
        let mut segment = vec![0u8; UDP_HDR + reply.len()];
        UdpRepr {
            src_port: dhcp6::SERVER_PORT,
            dst_port: udp.src_port(),
        }
        .emit(
            &mut UdpPacket::new_unchecked(&mut segment[..]),
            &IpAddress::Ipv6(from),
            &IpAddress::Ipv6(src),
            reply.len(),
            |p| p.copy_from_slice(&reply),
            &ChecksumCapabilities::default(),
        );
        self.push_ipv6(from, src, IpProtocol::Udp, &segment, 64);
    }

    /// Tells smoltcp the guest's MAC for its IPv6 address with a neighbour advertisement
    /// "from" the guest, as [`Nat::teach_guest_mac`] does for IPv4.
    pub(super) fn teach_guest_mac6(&mut self) {
        let Some(v6) = &self.v6 else {
            return;
        };
        let (guest, gateway) = (v6.guest, v6.gateway);
        let mut m = vec![Icmpv6Message::NeighborAdvert.into(), 0, 0, 0];
        m.extend_from_slice(&[0x60, 0, 0, 0]); // solicited, override
        m.extend_from_slice(&guest.octets());
        m.extend_from_slice(&[2, 1]);
        m.extend_from_slice(&self.cfg.guest_mac.octets());
        let m = icmpv6(guest, gateway, m);
        let frame = ipv6_frame(
            (self.cfg.guest_mac, guest),
            (GATEWAY_MAC, gateway),
            IpProtocol::Icmpv6,
            &m,
            ND_HOP_LIMIT,
        );
        self.feed(frame);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gateways_link_local_address_comes_from_its_mac() {
        assert_eq!(
            link_local(GATEWAY_MAC),
            "fe80::56:4dff:fe4d:1".parse::<Ipv6Addr>().unwrap()
        );
    }

    #[test]
    fn a_pod_has_ipv6_with_a_global_address_off_loopback() {
        let lo = "00000000000000000000000000000001 01 80 10 80       lo\n";
        let link = "fe80000000000000a8d1b2fffe3c4d5e 02 40 20 80     eth0\n";
        let global = "fd000000000000000000000000000005 02 40 00 80     eth0\n";
        assert!(!has_global_address(""));
        assert!(!has_global_address(&format!("{lo}{link}")));
        assert!(has_global_address(&format!("{lo}{link}{global}")));
    }

    #[test]
    fn only_global_and_unique_local_unicast_is_routable() {
        for (a, ok) in [
            ("2001:db8::1", true),
            ("fd00::10", true),
            ("64:ff9b::a00:1", true),
            ("64:ff9b::7f00:1", false),
            ("64:ff9b::e000:1", false),
            ("::1", false),
            ("::", false),
            ("fe80::1", false),
            ("ff02::1", false),
            ("ff0e::1", false),
            ("::ffff:127.0.0.1", false),
            ("::ffff:10.0.0.1", false),
            ("::127.0.0.1", false),
        ] {
            assert_eq!(is_routable(a.parse().unwrap()), ok, "{a}");
        }
    }
}
