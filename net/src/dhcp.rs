//! A DHCPv4 server for exactly one client: the guest NIC whose address vmm delegates.
//!
//! [`DhcpServer::handle`] takes an Ethernet frame the guest sent and, when it is a DHCP
//! DISCOVER or REQUEST from the guest's MAC, returns the Ethernet frame that answers it
//! (OFFER, ACK or NAK). Nothing else is answered: other MACs, other message types, and
//! anything malformed get `None`. The lease is infinite, so a client never needs the server
//! again after its ACK; it can still renew or re-request at any time and gets the same
//! answer.
//!
//! The options are those Virtink's dnsmasq would give: address and prefix (1), router (3),
//! classless static routes (121, the default route last, on-link routes with gateway
//! 0.0.0.0; a client that takes 121 ignores 3 as RFC 3442 says), DNS servers (6), domain
//! name (15) and search list (119), interface MTU (26), host name (12) and an infinite lease
//! (51). An option longer than 255 bytes is split as RFC 3396 says. Frames the guest sends
//! are hostile: every length is checked before it is used.

use std::net::Ipv4Addr;

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    DhcpMessageType, DhcpOption, DhcpPacket, DhcpRepr, EthernetAddress, EthernetFrame,
    EthernetProtocol, EthernetRepr, IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr, UdpPacket,
    UdpRepr,
};

use crate::mac::MacAddr;

const ETH_HDR: usize = 14;
const IP_HDR: usize = 20;
const UDP_HDR: usize = 8;
const SERVER_PORT: u16 = 67;
const CLIENT_PORT: u16 = 68;
/// The largest reply: one standard Ethernet payload.
const MAX_REPLY_IP: usize = 1500;

// The options smoltcp's `DhcpRepr` has no field for, sent as its additional options.
const OPT_DNS: u8 = 6;
const OPT_HOSTNAME: u8 = 12;
const OPT_DOMAIN: u8 = 15;
const OPT_MTU: u8 = 26;
const OPT_SEARCH: u8 = 119;
const OPT_CLASSLESS_ROUTES: u8 = 121;

/// A route for option 121.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StaticRoute {
    /// Destination network.
    pub dst: Ipv4Addr,
    /// Its prefix length.
    pub prefix: u8,
    /// Next hop; 0.0.0.0 for an on-link route.
    pub gateway: Ipv4Addr,
}

/// What the guest is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The only client answered.
    pub client: MacAddr,
    /// Its address.
    pub address: Ipv4Addr,
    /// Prefix length.
    pub prefix: u8,
    /// Default gateway.
    pub router: Option<Ipv4Addr>,
    /// Classless static routes, default route last.
    pub routes: Vec<StaticRoute>,
    /// DNS servers.
    pub dns: Vec<Ipv4Addr>,
    /// DNS search domains.
    pub search: Vec<String>,
    /// Interface MTU.
    pub mtu: Option<u16>,
    /// Host name.
    pub hostname: String,
    /// Server identifier (and source address of replies).
    pub server: Ipv4Addr,
    /// Source MAC of replies.
    pub server_mac: MacAddr,
}

/// The server.
#[derive(Debug, Clone)]
pub struct DhcpServer {
    lease: Lease,
}

/// A parsed client message.
#[derive(Debug)]
struct Request {
    msg_type: DhcpMessageType,
    xid: u32,
    broadcast: bool,
    ciaddr: Ipv4Addr,
    chaddr: MacAddr,
    requested: Option<Ipv4Addr>,
    server_id: Option<Ipv4Addr>,
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// Parses a DHCP client message out of an Ethernet frame, with smoltcp's wire types: each
/// layer's lengths are checked before its payload is read.
fn parse(frame: &[u8]) -> Option<Request> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    if eth.ethertype() != EthernetProtocol::Ipv4 {
        return None;
    }
    let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
    // Fragments are not reassembled: a DHCP request fits in one frame.
    if ip.version() != 4
        || ip.next_header() != IpProtocol::Udp
        || ip.more_frags()
        || ip.frag_offset() != 0
    {
        return None;
    }
    let udp = UdpPacket::new_checked(ip.payload()).ok()?;
    if udp.dst_port() != SERVER_PORT {
        return None;
    }
    let packet = DhcpPacket::new_checked(udp.payload()).ok()?;
    let repr = DhcpRepr::parse(&packet).ok()?;
    Some(Request {
        msg_type: repr.message_type,
        xid: repr.transaction_id,
        broadcast: repr.broadcast,
        ciaddr: repr.client_ip,
        chaddr: MacAddr::new(repr.client_hardware_address.0),
        requested: repr.requested_ip,
        server_id: repr.server_identifier,
    })
}

/// Option `kind` with `value`, split into pieces of at most 255 bytes (RFC 3396).
fn split_option(kind: u8, value: &[u8]) -> Vec<DhcpOption<'_>> {
    if value.is_empty() {
        return vec![DhcpOption { kind, data: &[] }];
    }
    value
        .chunks(255)
        .map(|data| DhcpOption { kind, data })
        .collect()
}

/// RFC 1035 name encoding for option 119 (without compression).
pub(crate) fn encode_names(names: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    for name in names {
        let labels: Vec<&str> = name.trim_end_matches('.').split('.').collect();
        if labels.iter().any(|l| l.is_empty() || l.len() > 63) {
            continue;
        }
        for label in labels {
            out.push(u8::try_from(label.len()).unwrap_or(63));
            out.extend_from_slice(label.as_bytes());
        }
        out.push(0);
    }
    out
}

/// RFC 3442 encoding for option 121.
fn encode_routes(routes: &[StaticRoute]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in routes {
        let prefix = r.prefix.min(32);
        out.push(prefix);
        out.extend_from_slice(&r.dst.octets()[..usize::from(prefix.div_ceil(8))]);
        out.extend_from_slice(&r.gateway.octets());
    }
    out
}

fn prefix_mask(prefix: u8) -> Ipv4Addr {
    let bits = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix.min(32)))
    };
    Ipv4Addr::from(bits)
}

impl DhcpServer {
    /// A server that hands `lease` to its client.
    pub fn new(lease: Lease) -> Self {
        Self { lease }
    }

    /// The lease.
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// Whether `frame` (Ethernet) looks like a DHCP client message, from the first bytes
    /// only: the test a NIC's transmit path can afford on every frame.
    pub fn might_be_dhcp(head: &[u8]) -> bool {
        let ihl = head.get(ETH_HDR).map_or(0, |b| usize::from(b & 0xf) * 4);
        be16(head, 12) == Some(0x0800)
            && head.get(ETH_HDR + 9) == Some(&17)
            && be16(head, ETH_HDR + ihl + 2) == Some(SERVER_PORT)
    }

    /// The answer to `frame`, an Ethernet frame from the guest, if it is one to answer.
    pub fn handle(&self, frame: &[u8]) -> Option<Vec<u8>> {
        let req = parse(frame)?;
        let l = &self.lease;
        if req.chaddr != l.client {
            return None;
        }
        let reply_type = match req.msg_type {
            DhcpMessageType::Discover => DhcpMessageType::Offer,
            DhcpMessageType::Request => {
                let wanted = req.requested.unwrap_or(req.ciaddr);
                let for_us = req.server_id.is_none_or(|s| s == l.server);
                if !for_us {
                    // The client chose another server.
                    return None;
                }
                if wanted == l.address {
                    log::info!("DHCP: {} acknowledged for {}", l.address, l.client);
                    DhcpMessageType::Ack
                } else {
                    log::info!(
                        "DHCP: {wanted} refused for {} (its lease is {})",
                        l.client,
                        l.address
                    );
                    DhcpMessageType::Nak
                }
            }
            _ => return None,
        };
        Some(self.reply(&req, reply_type))
    }

    fn reply(&self, req: &Request, reply_type: DhcpMessageType) -> Vec<u8> {
        let l = &self.lease;
        let nak = reply_type == DhcpMessageType::Nak;
        // The options smoltcp has no field for: routes, MTU, host name; then what can be
        // left out if the reply would not fit, DNS and the search list.
        let routes = encode_routes(&l.routes);
        let mtu = l.mtu.map(u16::to_be_bytes);
        let dns: Vec<u8> = l.dns.iter().flat_map(|a| a.octets()).collect();
        let search = encode_names(&l.search);
        let mut options = Vec::new();
        let mut extra = Vec::new();
        if !nak {
            if !routes.is_empty() {
                options.extend(split_option(OPT_CLASSLESS_ROUTES, &routes));
            }
            if let Some(mtu) = &mtu {
                options.extend(split_option(OPT_MTU, mtu));
            }
            if !l.hostname.is_empty() {
                options.extend(split_option(OPT_HOSTNAME, l.hostname.as_bytes()));
            }
            if !dns.is_empty() {
                extra.extend(split_option(OPT_DNS, &dns));
            }
            if let Some(first) = l.search.first() {
                extra.extend(split_option(OPT_DOMAIN, first.as_bytes()));
                extra.extend(split_option(OPT_SEARCH, &search));
            }
        }
        let mut repr = DhcpRepr {
            message_type: reply_type,
            transaction_id: req.xid,
            secs: 0,
            client_hardware_address: EthernetAddress(req.chaddr.octets()),
            client_ip: Ipv4Addr::UNSPECIFIED,
            your_ip: if nak {
                Ipv4Addr::UNSPECIFIED
            } else {
                l.address
            },
            server_ip: Ipv4Addr::UNSPECIFIED,
            router: l.router.filter(|_| !nak),
            subnet_mask: (!nak).then(|| prefix_mask(l.prefix)),
            relay_agent_ip: Ipv4Addr::UNSPECIFIED,
            broadcast: req.broadcast,
            requested_ip: None,
            client_identifier: None,
            server_identifier: Some(l.server),
            parameter_request_list: None,
            dns_servers: None,
            max_size: None,
            lease_duration: (!nak).then_some(u32::MAX),
            renew_duration: None,
            rebind_duration: None,
            additional_options: &[],
        };
        let with_extra: Vec<DhcpOption<'_>> = options.iter().chain(&extra).copied().collect();
        repr.additional_options = &with_extra;
        if IP_HDR + UDP_HDR + repr.buffer_len() > MAX_REPLY_IP {
            log::warn!("DHCP: DNS options do not fit in one reply; left out");
            repr.additional_options = &options;
        }
        let broadcast = req.broadcast || nak;
        let (dst_ip, dst_mac) = if broadcast {
            (Ipv4Addr::BROADCAST, MacAddr::new([0xff; 6]))
        } else {
            (l.address, req.chaddr)
        };
        frame(&repr, (l.server_mac, l.server), (dst_mac, dst_ip))
    }
}

/// `repr` in a UDP datagram from port 67 to 68, in an IPv4 packet, in an Ethernet frame.
fn frame(
    repr: &DhcpRepr<'_>,
    (src_mac, src): (MacAddr, Ipv4Addr),
    (dst_mac, dst): (MacAddr, Ipv4Addr),
) -> Vec<u8> {
    let dhcp_len = repr.buffer_len();
    let ip = Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: IpProtocol::Udp,
        payload_len: UDP_HDR + dhcp_len,
        hop_limit: 64,
    };
    let mut frame = vec![0u8; ETH_HDR + IP_HDR + UDP_HDR + dhcp_len];
    EthernetRepr {
        src_addr: EthernetAddress(src_mac.octets()),
        dst_addr: EthernetAddress(dst_mac.octets()),
        ethertype: EthernetProtocol::Ipv4,
    }
    .emit(&mut EthernetFrame::new_unchecked(&mut frame[..]));
    let caps = ChecksumCapabilities::default();
    ip.emit(&mut Ipv4Packet::new_unchecked(&mut frame[ETH_HDR..]), &caps);
    UdpRepr {
        src_port: SERVER_PORT,
        dst_port: CLIENT_PORT,
    }
    .emit(
        &mut UdpPacket::new_unchecked(&mut frame[ETH_HDR + IP_HDR..]),
        &IpAddress::Ipv4(src),
        &IpAddress::Ipv4(dst),
        dhcp_len,
        |payload| {
            // The buffer is exactly `buffer_len()` long, which is all emit needs.
            let _ = repr.emit(&mut DhcpPacket::new_unchecked(payload));
        },
        &caps,
    );
    frame
}

/// Client messages, reply parsing and a lease with every option, for tests here and in the
/// masquerade engine, and for the DHCP fuzz target.
#[cfg(any(test, fuzzing))]
#[doc(hidden)]
pub mod testing {
    use super::*;

    /// The fixed BOOTP header before the magic cookie.
    pub const BOOTP_FIXED: usize = 236;
    /// The DHCP magic cookie.
    pub const MAGIC: [u8; 4] = [99, 130, 83, 99];
    /// BOOTP opcode of a client message.
    pub const BOOTREQUEST: u8 = 1;
    /// Option codes as the tests read them.
    pub const OPT_SUBNET_MASK: u8 = 1;
    /// Router.
    pub const OPT_ROUTER: u8 = 3;
    /// Requested address.
    pub const OPT_REQUESTED_IP: u8 = 50;
    /// Lease time.
    pub const OPT_LEASE: u8 = 51;
    /// Message type.
    pub const OPT_MSG_TYPE: u8 = 53;
    /// Server identifier.
    pub const OPT_SERVER_ID: u8 = 54;
    /// End of options.
    pub const OPT_END: u8 = 255;
    /// Message types.
    pub const DISCOVER: u8 = 1;
    /// An offer.
    pub const OFFER: u8 = 2;
    /// A request.
    pub const REQUEST: u8 = 3;
    /// An acknowledgement.
    pub const ACK: u8 = 5;
    /// A refusal.
    pub const NAK: u8 = 6;

    /// The ones' complement sum used by IPv4 and UDP checksums: 0 over data that carries a
    /// valid checksum.
    pub fn checksum(chunks: &[&[u8]]) -> u16 {
        let bytes: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        let mut sum: u32 = bytes
            .chunks(2)
            .map(|p| u32::from(u16::from_be_bytes([p[0], p.get(1).copied().unwrap_or(0)])))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !u16::try_from(sum).unwrap_or(0xffff)
    }

    /// The client of [`lease`].
    pub const CLIENT: MacAddr = MacAddr::new([0x52, 0x54, 0, 1, 2, 3]);

    /// The lease of the unit tests: every option present.
    pub fn lease() -> Lease {
        Lease {
            client: CLIENT,
            address: Ipv4Addr::new(10, 244, 1, 7),
            prefix: 32,
            router: Some(Ipv4Addr::new(169, 254, 1, 1)),
            routes: vec![
                StaticRoute {
                    dst: Ipv4Addr::new(169, 254, 1, 1),
                    prefix: 32,
                    gateway: Ipv4Addr::UNSPECIFIED,
                },
                StaticRoute {
                    dst: Ipv4Addr::UNSPECIFIED,
                    prefix: 0,
                    gateway: Ipv4Addr::new(169, 254, 1, 1),
                },
            ],
            dns: vec![Ipv4Addr::new(10, 96, 0, 10)],
            search: vec!["default.svc.cluster.local".into(), "cluster.local".into()],
            mtu: Some(1450),
            hostname: "vm1".into(),
            server: Ipv4Addr::new(169, 254, 1, 1),
            server_mac: MacAddr::new([0x02, 0, 0, 0, 0, 1]),
        }
    }

    /// A client message as udhcpc sends it.
    pub fn client_msg(mac: MacAddr, msg_type: u8, requested: Option<Ipv4Addr>) -> Vec<u8> {
        let mut bootp = vec![0u8; BOOTP_FIXED];
        bootp[0] = BOOTREQUEST;
        bootp[1] = 1;
        bootp[2] = 6;
        bootp[4..8].copy_from_slice(&[1, 2, 3, 4]);
        bootp[28..34].copy_from_slice(&mac.octets());
        bootp.extend(MAGIC);
        bootp.extend([OPT_MSG_TYPE, 1, msg_type]);
        if let Some(r) = requested {
            bootp.push(OPT_REQUESTED_IP);
            bootp.push(4);
            bootp.extend(r.octets());
        }
        bootp.push(OPT_END);
        let udp_len = u16::try_from(8 + bootp.len()).unwrap();
        let mut frame = vec![0xff; 6];
        frame.extend(mac.octets());
        frame.extend([0x08, 0x00, 0x45, 0]);
        frame.extend((20 + udp_len).to_be_bytes());
        frame.extend([0, 0, 0, 0, 64, 17, 0, 0, 0, 0, 0, 0, 255, 255, 255, 255]);
        frame.extend(CLIENT_PORT.to_be_bytes());
        frame.extend(SERVER_PORT.to_be_bytes());
        frame.extend(udp_len.to_be_bytes());
        frame.extend([0, 0]);
        frame.extend(bootp);
        frame
    }

    /// The options of a reply frame, code → concatenated value.
    pub fn options(reply: &[u8]) -> std::collections::BTreeMap<u8, Vec<u8>> {
        let bootp = &reply[ETH_HDR + 20 + 8..];
        let mut opts = &bootp[BOOTP_FIXED + 4..];
        let mut out = std::collections::BTreeMap::<u8, Vec<u8>>::new();
        while let Some((&code, rest)) = opts.split_first() {
            if code == OPT_END {
                break;
            }
            let len = usize::from(rest[0]);
            out.entry(code).or_default().extend(&rest[1..1 + len]);
            opts = &rest[1 + len..];
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    use super::testing::{CLIENT, lease};

    #[test]
    fn offers_and_acks_the_delegated_address_with_every_option() {
        let server = DhcpServer::new(lease());
        let discover = client_msg(CLIENT, DISCOVER, None);
        assert!(DhcpServer::might_be_dhcp(&discover[..42]));
        let offer = server.handle(&discover).expect("an offer");
        assert_eq!(&offer[..6], &CLIENT.octets());
        assert_eq!(
            &offer[ETH_HDR + 16..ETH_HDR + 20],
            &[10, 244, 1, 7],
            "IP dst"
        );
        assert_eq!(checksum(&[&offer[ETH_HDR..ETH_HDR + 20]]), 0, "IP checksum");
        let udp_len = usize::from(be16(&offer, ETH_HDR + 24).unwrap());
        let pseudo_len = u16::try_from(udp_len).unwrap().to_be_bytes();
        let udp = &offer[ETH_HDR + 20..ETH_HDR + 20 + udp_len];
        let sum = checksum(&[
            &offer[ETH_HDR + 12..ETH_HDR + 20],
            &[0, 17],
            &pseudo_len,
            udp,
        ]);
        assert_eq!(sum, 0, "UDP checksum");
        let bootp = &offer[ETH_HDR + 28..];
        assert_eq!(bootp[0], 2, "BOOTREPLY");
        assert_eq!(&bootp[16..20], &[10, 244, 1, 7], "yiaddr");
        let o = options(&offer);
        assert_eq!(o[&OPT_MSG_TYPE], vec![OFFER]);
        assert_eq!(o[&OPT_SUBNET_MASK], vec![255, 255, 255, 255]);
        assert_eq!(o[&OPT_ROUTER], vec![169, 254, 1, 1]);
        assert_eq!(
            o[&OPT_CLASSLESS_ROUTES],
            vec![32, 169, 254, 1, 1, 0, 0, 0, 0, 0, 169, 254, 1, 1]
        );
        assert_eq!(o[&OPT_DNS], vec![10, 96, 0, 10]);
        assert_eq!(o[&OPT_DOMAIN], b"default.svc.cluster.local".to_vec());
        assert_eq!(&o[&OPT_SEARCH][..8], b"\x07default");
        assert_eq!(o[&OPT_MTU], vec![0x05, 0xaa]);
        assert_eq!(o[&OPT_HOSTNAME], b"vm1".to_vec());
        assert_eq!(o[&OPT_LEASE], vec![0xff; 4]);
        assert_eq!(o[&OPT_SERVER_ID], vec![169, 254, 1, 1]);

        let request = client_msg(CLIENT, REQUEST, Some(Ipv4Addr::new(10, 244, 1, 7)));
        let ack = server.handle(&request).expect("an ack");
        assert_eq!(options(&ack)[&OPT_MSG_TYPE], vec![ACK]);
        let wrong = client_msg(CLIENT, REQUEST, Some(Ipv4Addr::new(10, 0, 0, 9)));
        let nak = server.handle(&wrong).expect("a nak");
        assert_eq!(options(&nak)[&OPT_MSG_TYPE], vec![NAK]);
        assert_eq!(&nak[..6], &[0xff; 6], "a NAK is broadcast");
    }

    #[test]
    fn answers_only_its_client_and_only_requests() {
        let server = DhcpServer::new(lease());
        let other = MacAddr::new([0x52, 0x54, 0, 9, 9, 9]);
        assert!(server.handle(&client_msg(other, DISCOVER, None)).is_none());
        assert!(
            server.handle(&client_msg(CLIENT, 7, None)).is_none(),
            "RELEASE"
        );
        assert!(
            server.handle(&client_msg(CLIENT, 8, None)).is_none(),
            "INFORM"
        );
    }

    #[test]
    fn malformed_frames_are_ignored() {
        let server = DhcpServer::new(lease());
        let good = client_msg(CLIENT, DISCOVER, None);
        for cut in 0..good.len() {
            // Every truncation either parses to something sane or nothing; never a panic.
            let _ = server.handle(&good[..cut]);
        }
        let mut bad_len = good.clone();
        bad_len[ETH_HDR + 2..ETH_HDR + 4].copy_from_slice(&u16::MAX.to_be_bytes());
        assert!(server.handle(&bad_len).is_none());
        // An option whose length runs off the end ends the list there, as smoltcp reads
        // options: what came before it (the message type) is answered.
        let mut bad_opt = good.clone();
        let end = bad_opt.len() - 1;
        bad_opt[end] = 200;
        let offer = server.handle(&bad_opt).expect("answered");
        assert_eq!(options(&offer)[&OPT_MSG_TYPE], vec![OFFER]);
        // Without a message type nothing is answered.
        let mut no_type = good.clone();
        let at = ETH_HDR + 20 + 8 + BOOTP_FIXED + 4;
        no_type[at] = 200;
        assert!(server.handle(&no_type).is_none());
        let mut seed = 0x1234_5678u32;
        for _ in 0..2000 {
            let mut f = good.clone();
            for _ in 0..4 {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                let at = usize::try_from(seed >> 8).unwrap() % f.len();
                f[at] = u8::try_from(seed >> 24).unwrap();
            }
            let _ = server.handle(&f);
        }
    }

    /// Whether the options of `reply` are well formed and end with END, with nothing after.
    fn options_end_with_end(reply: &[u8]) -> bool {
        let mut opts = &reply[ETH_HDR + 20 + 8 + BOOTP_FIXED + 4..];
        while let Some((&code, rest)) = opts.split_first() {
            if code == OPT_END {
                return rest.is_empty();
            }
            let Some(len) = rest.first() else {
                return false;
            };
            let Some(after) = rest.get(1 + usize::from(*len)..) else {
                return false;
            };
            opts = after;
        }
        false
    }

    #[test]
    fn offers_acks_and_naks_end_their_options_with_end() {
        // Found by fuzz/ (dhcp): a NAK's options stopped after the server id, without END.
        let server = DhcpServer::new(lease());
        let offer = server.handle(&client_msg(CLIENT, DISCOVER, None)).unwrap();
        let requested = Some(Ipv4Addr::new(10, 244, 1, 7));
        let ack = server
            .handle(&client_msg(CLIENT, REQUEST, requested))
            .unwrap();
        let wrong = Some(Ipv4Addr::new(10, 0, 0, 9));
        let nak = server.handle(&client_msg(CLIENT, REQUEST, wrong)).unwrap();
        assert!(options_end_with_end(&offer), "OFFER");
        assert!(options_end_with_end(&ack), "ACK");
        assert!(options_end_with_end(&nak), "NAK");
    }

    #[test]
    fn long_options_are_split_and_the_reply_stays_in_one_frame() {
        let mut l = lease();
        l.search = (0..40)
            .map(|i| format!("domain{i}.example.internal"))
            .collect();
        l.dns = (0..80).map(|i| Ipv4Addr::new(10, 0, 0, i)).collect();
        let server = DhcpServer::new(l);
        let offer = server.handle(&client_msg(CLIENT, DISCOVER, None)).unwrap();
        assert!(offer.len() <= ETH_HDR + MAX_REPLY_IP);
        let big = split_option(OPT_DNS, &[1u8; 300]);
        let lens: Vec<usize> = big.iter().map(|o| o.data.len()).collect();
        assert_eq!(lens, vec![255, 45]);
        assert!(big.iter().all(|o| o.kind == OPT_DNS));
        assert_eq!(prefix_mask(24), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(prefix_mask(0), Ipv4Addr::UNSPECIFIED);
    }
}
