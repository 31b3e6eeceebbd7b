//! Just enough rtnetlink for the bridge binding: links (find, create, change, delete,
//! bridge-port learning), IPv4 addresses and IPv4 routes of the main table, and the global
//! IPv6 addresses and IPv6 routes that a link loses when it goes down, over one synchronous
//! netlink socket in the current network namespace.
//!
//! Messages are built and parsed by `netlink-packet-route`; this module only sends a
//! request, collects the replies up to the ACK or the end of a dump, and turns a netlink
//! error into an `io::Error`.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage, AddressScope};
use netlink_packet_route::link::{
    InfoBridgePort, InfoKind, InfoPortData, InfoPortKind, LinkAttribute, LinkFlags, LinkInfo,
    LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use crate::mac::MacAddr;

/// A network interface as netlink reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Name.
    pub name: String,
    /// Hardware address (`None` for links without one).
    pub mac: Option<MacAddr>,
    /// MTU.
    pub mtu: u32,
    /// Administratively up.
    pub up: bool,
    /// Index of the bridge or bond it is enslaved to.
    pub master: Option<u32>,
    /// Its alias (`ip link set ... alias`), if set.
    pub alias: Option<String>,
}

/// An IPv4 address on a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Net {
    /// The address.
    pub addr: Ipv4Addr,
    /// Prefix length.
    pub prefix: u8,
}

/// A global IPv6 address on a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Net {
    /// The address.
    pub addr: Ipv6Addr,
    /// Prefix length.
    pub prefix: u8,
}

/// An IPv6 unicast route of the main table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route6 {
    /// Destination network.
    pub dst: Ipv6Addr,
    /// Destination prefix length (0: default route).
    pub prefix: u8,
    /// Next hop, `None` for an on-link route.
    pub gateway: Option<Ipv6Addr>,
    /// Output interface.
    pub oif: Option<u32>,
    /// Who installed it (`RTPROT_*`; 2 = kernel, 9 = router advertisement).
    pub protocol: u8,
    /// Priority (metric).
    pub metric: Option<u32>,
}

/// An IPv4 route of the main table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route4 {
    /// Destination network.
    pub dst: Ipv4Addr,
    /// Destination prefix length (0: default route).
    pub prefix: u8,
    /// Next hop, `None` for an on-link route.
    pub gateway: Option<Ipv4Addr>,
    /// Output interface.
    pub oif: Option<u32>,
    /// Preferred source address.
    pub prefsrc: Option<Ipv4Addr>,
    /// Scope (`RT_SCOPE_*`).
    pub scope: u8,
    /// Who installed it (`RTPROT_*`; 2 = kernel).
    pub protocol: u8,
    /// Priority (metric).
    pub metric: Option<u32>,
}

/// What to change on a link; `None` leaves a property alone.
#[derive(Debug, Clone, Default)]
pub struct LinkChange {
    /// New name (the link must be down).
    pub name: Option<String>,
    /// New hardware address.
    pub mac: Option<MacAddr>,
    /// New MTU.
    pub mtu: Option<u32>,
    /// Up or down.
    pub up: Option<bool>,
    /// Enslave to this bridge index; `Some(0)` releases it.
    pub master: Option<u32>,
    /// New alias; an empty one clears it.
    pub alias: Option<String>,
    /// Turn the link's own ARP off (`ip link set … arp off`) or on.
    pub noarp: Option<bool>,
}

/// A kind of link [`Netlink::add_link`] can create.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkKind {
    /// A dummy interface.
    Dummy,
    /// A Linux bridge.
    Bridge,
}

/// A route netlink socket.
#[derive(Debug)]
pub struct Netlink {
    socket: Socket,
    seq: u32,
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

impl Netlink {
    /// Opens a socket in the current network namespace.
    pub fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Self { socket, seq: 0 })
    }

    /// Sends `msg` and collects the replies (for a dump) until the end or the ACK.
    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let mut packet = NetlinkMessage::from(msg);
        packet.header.flags = NLM_F_REQUEST | flags;
        packet.header.sequence_number = self.seq;
        packet.finalize();
        let mut buf = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket.send(&buf, 0)?;
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut out = Vec::new();
        let mut rbuf = vec![0u8; 1 << 16];
        loop {
            let n = self.socket.recv(&mut &mut rbuf[..], 0)?;
            let mut off = 0;
            while off < n {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rbuf[off..n])
                    .map_err(|e| invalid(&format!("netlink reply: {e}")))?;
                let len = usize::try_from(reply.header.length).unwrap_or(0);
                if len == 0 {
                    return Err(invalid("netlink reply of length 0"));
                }
                off += len.next_multiple_of(4);
                if reply.header.sequence_number != self.seq {
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(out),
                            Some(_) => Err(e.to_io()),
                        };
                    }
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::InnerMessage(m) => {
                        out.push(m);
                        if !dump && flags & NLM_F_ACK == 0 {
                            return Ok(out);
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// Every link.
    pub fn links(&mut self) -> io::Result<Vec<Link>> {
        let replies = self.request(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(parse_link(&l)),
                _ => None,
            })
            .collect())
    }

    /// The link called `name`, if there is one.
    pub fn link(&mut self, name: &str) -> io::Result<Option<Link>> {
        Ok(self.links()?.into_iter().find(|l| l.name == name))
    }

    /// Creates a link of `kind` called `name`.
    pub fn add_link(&mut self, name: &str, kind: LinkKind, mtu: Option<u32>) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        if let Some(mtu) = mtu {
            msg.attributes.push(LinkAttribute::Mtu(mtu));
        }
        let kind = match kind {
            LinkKind::Dummy => InfoKind::Dummy,
            LinkKind::Bridge => InfoKind::Bridge,
        };
        msg.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(kind)]));
        self.request(
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )?;
        Ok(())
    }

    /// Deletes link `index`.
    pub fn del_link(&mut self, index: u32) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.request(RouteNetlinkMessage::DelLink(msg), NLM_F_ACK)?;
        Ok(())
    }

    /// Changes link `index`.
    pub fn set_link(&mut self, index: u32, change: &LinkChange) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        if let Some(alias) = &change.alias {
            msg.attributes.push(LinkAttribute::IfAlias(alias.clone()));
        }
        if let Some(name) = &change.name {
            msg.attributes.push(LinkAttribute::IfName(name.clone()));
        }
        if let Some(mac) = change.mac {
            msg.attributes
                .push(LinkAttribute::Address(mac.octets().to_vec()));
        }
        if let Some(mtu) = change.mtu {
            msg.attributes.push(LinkAttribute::Mtu(mtu));
        }
        if let Some(master) = change.master {
            msg.attributes.push(LinkAttribute::Controller(master));
        }
        if let Some(up) = change.up {
            msg.header.change_mask |= LinkFlags::Up;
            if up {
                msg.header.flags |= LinkFlags::Up;
            }
        }
        if let Some(noarp) = change.noarp {
            msg.header.change_mask |= LinkFlags::Noarp;
            if noarp {
                msg.header.flags |= LinkFlags::Noarp;
            }
        }
        self.request(RouteNetlinkMessage::SetLink(msg), NLM_F_ACK)?;
        Ok(())
    }

    /// Turns MAC learning on or off on bridge port `index`.
    pub fn set_port_learning(&mut self, index: u32, learning: bool) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::PortKind(InfoPortKind::Bridge),
            LinkInfo::PortData(InfoPortData::BridgePort(vec![InfoBridgePort::Learning(
                learning,
            )])),
        ]));
        self.request(RouteNetlinkMessage::NewLink(msg), NLM_F_ACK)?;
        Ok(())
    }

    /// The IPv4 addresses of link `index`.
    pub fn addresses(&mut self, index: u32) -> io::Result<Vec<Ipv4Net>> {
        let mut req = AddressMessage::default();
        req.header.family = AddressFamily::Inet;
        let replies = self.request(RouteNetlinkMessage::GetAddress(req), NLM_F_DUMP)?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) if a.header.index == index => {
                    let addr = a.attributes.iter().find_map(|attr| match attr {
                        AddressAttribute::Local(IpAddr::V4(v4)) => Some(*v4),
                        _ => None,
                    });
                    let addr = addr.or_else(|| {
                        a.attributes.iter().find_map(|attr| match attr {
                            AddressAttribute::Address(IpAddr::V4(v4)) => Some(*v4),
                            _ => None,
                        })
                    })?;
                    Some(Ipv4Net {
                        addr,
                        prefix: a.header.prefix_len,
                    })
                }
                _ => None,
            })
            .collect())
    }

    fn address_message(index: u32, net: Ipv4Net) -> AddressMessage {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.prefix_len = net.prefix;
        msg.header.index = index;
        msg.attributes
            .push(AddressAttribute::Local(IpAddr::V4(net.addr)));
        msg.attributes
            .push(AddressAttribute::Address(IpAddr::V4(net.addr)));
        msg
    }

    /// Adds an IPv4 address to link `index`.
    pub fn add_address(&mut self, index: u32, net: Ipv4Net) -> io::Result<()> {
        self.request(
            RouteNetlinkMessage::NewAddress(Self::address_message(index, net)),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )?;
        Ok(())
    }

    /// Removes an IPv4 address from link `index`.
    pub fn del_address(&mut self, index: u32, net: Ipv4Net) -> io::Result<()> {
        self.request(
            RouteNetlinkMessage::DelAddress(Self::address_message(index, net)),
            NLM_F_ACK,
        )?;
        Ok(())
    }

    /// The global IPv6 addresses of link `index` (not its link-local ones).
    pub fn addresses6(&mut self, index: u32) -> io::Result<Vec<Ipv6Net>> {
        let mut req = AddressMessage::default();
        req.header.family = AddressFamily::Inet6;
        let replies = self.request(RouteNetlinkMessage::GetAddress(req), NLM_F_DUMP)?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a)
                    if a.header.index == index && a.header.scope == AddressScope::Universe =>
                {
                    let addr = a.attributes.iter().find_map(|attr| match attr {
                        AddressAttribute::Address(IpAddr::V6(v6)) => Some(*v6),
                        _ => None,
                    })?;
                    Some(Ipv6Net {
                        addr,
                        prefix: a.header.prefix_len,
                    })
                }
                _ => None,
            })
            .collect())
    }

    /// Adds IPv6 address `net` to link `index`, without duplicate address detection (it was
    /// the pod's already).
    pub fn add_address6(&mut self, index: u32, net: Ipv6Net) -> io::Result<()> {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet6;
        msg.header.prefix_len = net.prefix;
        msg.header.index = index;
        msg.attributes
            .push(AddressAttribute::Address(IpAddr::V6(net.addr)));
        msg.attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
        self.request(
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )?;
        Ok(())
    }

    /// The IPv6 unicast routes of the main table (multicast and local ones are of other
    /// types or tables).
    pub fn routes6(&mut self) -> io::Result<Vec<Route6>> {
        let mut req = RouteMessage::default();
        req.header.address_family = AddressFamily::Inet6;
        let replies = self.request(RouteNetlinkMessage::GetRoute(req), NLM_F_DUMP)?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => parse_route6(&r),
                _ => None,
            })
            .collect())
    }

    /// Adds an IPv6 route to the main table.
    pub fn add_route6(&mut self, route: &Route6) -> io::Result<()> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet6;
        msg.header.destination_prefix_length = route.prefix;
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        msg.header.protocol = RouteProtocol::from(route.protocol);
        msg.header.scope = RouteScope::Universe;
        msg.header.kind = RouteType::Unicast;
        if route.prefix > 0 {
            msg.attributes
                .push(RouteAttribute::Destination(RouteAddress::Inet6(route.dst)));
        }
        if let Some(gw) = route.gateway {
            msg.attributes
                .push(RouteAttribute::Gateway(RouteAddress::Inet6(gw)));
        }
        if let Some(oif) = route.oif {
            msg.attributes.push(RouteAttribute::Oif(oif));
        }
        if let Some(metric) = route.metric {
            msg.attributes.push(RouteAttribute::Priority(metric));
        }
        self.request(
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )?;
        Ok(())
    }

    /// The IPv4 unicast routes of the main table.
    pub fn routes(&mut self) -> io::Result<Vec<Route4>> {
        let mut req = RouteMessage::default();
        req.header.address_family = AddressFamily::Inet;
        let replies = self.request(RouteNetlinkMessage::GetRoute(req), NLM_F_DUMP)?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => parse_route(&r),
                _ => None,
            })
            .collect())
    }

    fn route_message(route: &Route4) -> RouteMessage {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        msg.header.destination_prefix_length = route.prefix;
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        msg.header.protocol = RouteProtocol::from(route.protocol);
        msg.header.scope = RouteScope::from(route.scope);
        msg.header.kind = RouteType::Unicast;
        if route.prefix > 0 {
            msg.attributes
                .push(RouteAttribute::Destination(RouteAddress::Inet(route.dst)));
        }
        if let Some(gw) = route.gateway {
            msg.attributes
                .push(RouteAttribute::Gateway(RouteAddress::Inet(gw)));
        }
        if let Some(oif) = route.oif {
            msg.attributes.push(RouteAttribute::Oif(oif));
        }
        if let Some(src) = route.prefsrc {
            msg.attributes
                .push(RouteAttribute::PrefSource(RouteAddress::Inet(src)));
        }
        if let Some(metric) = route.metric {
            msg.attributes.push(RouteAttribute::Priority(metric));
        }
        msg
    }

    /// Adds an IPv4 route to the main table.
    pub fn add_route(&mut self, route: &Route4) -> io::Result<()> {
        self.request(
            RouteNetlinkMessage::NewRoute(Self::route_message(route)),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )?;
        Ok(())
    }
}

fn parse_link(l: &LinkMessage) -> Link {
    let mut link = Link {
        index: l.header.index,
        name: String::new(),
        mac: None,
        mtu: 0,
        up: l.header.flags.contains(LinkFlags::Up),
        master: None,
        alias: None,
    };
    for attr in &l.attributes {
        match attr {
            LinkAttribute::IfName(n) => link.name.clone_from(n),
            LinkAttribute::Address(a) => {
                link.mac = <[u8; 6]>::try_from(a.as_slice()).ok().map(MacAddr::new);
            }
            LinkAttribute::Mtu(m) => link.mtu = *m,
            LinkAttribute::Controller(m) => link.master = Some(*m),
            LinkAttribute::IfAlias(a) if !a.is_empty() => link.alias = Some(a.clone()),
            _ => {}
        }
    }
    link
}

fn parse_route(r: &RouteMessage) -> Option<Route4> {
    if r.header.table != RouteHeader::RT_TABLE_MAIN || r.header.kind != RouteType::Unicast {
        return None;
    }
    let mut route = Route4 {
        dst: Ipv4Addr::UNSPECIFIED,
        prefix: r.header.destination_prefix_length,
        gateway: None,
        oif: None,
        prefsrc: None,
        scope: u8::from(r.header.scope),
        protocol: u8::from(r.header.protocol),
        metric: None,
    };
    for attr in &r.attributes {
        match attr {
            RouteAttribute::Destination(RouteAddress::Inet(a)) => route.dst = *a,
            RouteAttribute::Gateway(RouteAddress::Inet(a)) => route.gateway = Some(*a),
            RouteAttribute::PrefSource(RouteAddress::Inet(a)) => route.prefsrc = Some(*a),
            RouteAttribute::Oif(i) => route.oif = Some(*i),
            RouteAttribute::Priority(p) => route.metric = Some(*p),
            RouteAttribute::Table(t) if *t != u32::from(RouteHeader::RT_TABLE_MAIN) => {
                return None;
            }
            _ => {}
        }
    }
    Some(route)
}

fn parse_route6(r: &RouteMessage) -> Option<Route6> {
    if r.header.table != RouteHeader::RT_TABLE_MAIN || r.header.kind != RouteType::Unicast {
        return None;
    }
    let mut route = Route6 {
        dst: Ipv6Addr::UNSPECIFIED,
        prefix: r.header.destination_prefix_length,
        gateway: None,
        oif: None,
        protocol: u8::from(r.header.protocol),
        metric: None,
    };
    for attr in &r.attributes {
        match attr {
            RouteAttribute::Destination(RouteAddress::Inet6(a)) => route.dst = *a,
            RouteAttribute::Gateway(RouteAddress::Inet6(a)) => route.gateway = Some(*a),
            RouteAttribute::Oif(i) => route.oif = Some(*i),
            RouteAttribute::Priority(p) => route.metric = Some(*p),
            RouteAttribute::Table(t) if *t != u32::from(RouteHeader::RT_TABLE_MAIN) => {
                return None;
            }
            _ => {}
        }
    }
    Some(route)
}
