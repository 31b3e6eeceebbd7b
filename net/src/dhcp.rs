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

use crate::mac::MacAddr;

const ETH_HDR: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const IPPROTO_UDP: u8 = 17;
const SERVER_PORT: u16 = 67;
const CLIENT_PORT: u16 = 68;
const BOOTP_FIXED: usize = 236;
const MAGIC: [u8; 4] = [99, 130, 83, 99];
const BOOTREQUEST: u8 = 1;
const BOOTREPLY: u8 = 2;
const FLAG_BROADCAST: u16 = 0x8000;
/// The largest reply: one standard Ethernet payload.
const MAX_REPLY_IP: usize = 1500;

const OPT_PAD: u8 = 0;
const OPT_SUBNET_MASK: u8 = 1;
const OPT_ROUTER: u8 = 3;
const OPT_DNS: u8 = 6;
const OPT_HOSTNAME: u8 = 12;
const OPT_DOMAIN: u8 = 15;
const OPT_MTU: u8 = 26;
const OPT_REQUESTED_IP: u8 = 50;
const OPT_LEASE: u8 = 51;
const OPT_MSG_TYPE: u8 = 53;
const OPT_SERVER_ID: u8 = 54;
const OPT_SEARCH: u8 = 119;
const OPT_CLASSLESS_ROUTES: u8 = 121;
const OPT_END: u8 = 255;

const DISCOVER: u8 = 1;
const OFFER: u8 = 2;
const REQUEST: u8 = 3;
const ACK: u8 = 5;
const NAK: u8 = 6;

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
    msg_type: u8,
    xid: [u8; 4],
    flags: u16,
    ciaddr: Ipv4Addr,
    chaddr: MacAddr,
    requested: Option<Ipv4Addr>,
    server_id: Option<Ipv4Addr>,
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn ip4(b: &[u8], at: usize) -> Option<Ipv4Addr> {
    let s = b.get(at..at + 4)?;
    Some(Ipv4Addr::new(s[0], s[1], s[2], s[3]))
}

/// The ones' complement sum used by IPv4 and UDP checksums.
fn checksum(chunks: &[&[u8]]) -> u16 {
    let mut sum = 0u32;
    let mut odd: Option<u8> = None;
    for chunk in chunks {
        for &b in *chunk {
            match odd.take() {
                Some(hi) => sum += u32::from(u16::from_be_bytes([hi, b])),
                None => odd = Some(b),
            }
        }
    }
    if let Some(hi) = odd {
        sum += u32::from(u16::from_be_bytes([hi, 0]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).unwrap_or(0xffff)
}

/// Parses a DHCP client message out of an Ethernet frame.
fn parse(frame: &[u8]) -> Option<Request> {
    if be16(frame, 12)? != ETHERTYPE_IPV4 {
        return None;
    }
    let ip = frame.get(ETH_HDR..)?;
    let version_ihl = *ip.first()?;
    let ihl = usize::from(version_ihl & 0xf) * 4;
    if version_ihl >> 4 != 4 || ihl < 20 || *ip.get(9)? != IPPROTO_UDP {
        return None;
    }
    // Fragments are not reassembled: a DHCP request fits in one frame.
    if be16(ip, 6)? & 0x3fff != 0 {
        return None;
    }
    let total = usize::from(be16(ip, 2)?);
    let ip = ip.get(..total)?;
    let udp = ip.get(ihl..)?;
    if be16(udp, 2)? != SERVER_PORT {
        return None;
    }
    let udp_len = usize::from(be16(udp, 4)?);
    let bootp = udp.get(8..udp_len)?;
    if *bootp.first()? != BOOTREQUEST || *bootp.get(1)? != 1 || *bootp.get(2)? != 6 {
        return None;
    }
    if bootp.get(BOOTP_FIXED..BOOTP_FIXED + 4)? != MAGIC {
        return None;
    }
    let mut req = Request {
        msg_type: 0,
        xid: bootp.get(4..8)?.try_into().ok()?,
        flags: be16(bootp, 10)?,
        ciaddr: ip4(bootp, 12)?,
        chaddr: MacAddr::new(bootp.get(28..34)?.try_into().ok()?),
        requested: None,
        server_id: None,
    };
    let mut opts = bootp.get(BOOTP_FIXED + 4..)?;
    while let Some((&code, rest)) = opts.split_first() {
        match code {
            OPT_PAD => opts = rest,
            OPT_END => break,
            _ => {
                let (&len, rest) = rest.split_first()?;
                let value = rest.get(..usize::from(len))?;
                match code {
                    OPT_MSG_TYPE => req.msg_type = *value.first()?,
                    OPT_REQUESTED_IP => req.requested = ip4(value, 0),
                    OPT_SERVER_ID => req.server_id = ip4(value, 0),
                    _ => {}
                }
                opts = &rest[usize::from(len)..];
            }
        }
    }
    Some(req)
}

/// Appends option `code`, split into pieces of at most 255 bytes (RFC 3396).
fn put_option(out: &mut Vec<u8>, code: u8, value: &[u8]) {
    if value.is_empty() {
        out.extend([code, 0]);
    }
    for piece in value.chunks(255) {
        out.push(code);
        out.push(u8::try_from(piece.len()).unwrap_or(255));
        out.extend_from_slice(piece);
    }
}

/// RFC 1035 name encoding for option 119 (without compression).
fn encode_names(names: &[String]) -> Vec<u8> {
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
        be16(head, 12) == Some(ETHERTYPE_IPV4)
            && head.get(ETH_HDR + 9) == Some(&IPPROTO_UDP)
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
            DISCOVER => OFFER,
            REQUEST => {
                let wanted = req.requested.unwrap_or(req.ciaddr);
                let for_us = req.server_id.is_none_or(|s| s == l.server);
                if !for_us {
                    // The client chose another server.
                    return None;
                }
                if wanted == l.address {
                    log::info!("DHCP: {} acknowledged for {}", l.address, l.client);
                    ACK
                } else {
                    log::info!(
                        "DHCP: {wanted} refused for {} (its lease is {})",
                        l.client,
                        l.address
                    );
                    NAK
                }
            }
            _ => return None,
        };
        Some(self.reply(&req, reply_type))
    }

    fn options(&self, reply_type: u8) -> Vec<u8> {
        let l = &self.lease;
        let mut o = Vec::new();
        put_option(&mut o, OPT_MSG_TYPE, &[reply_type]);
        put_option(&mut o, OPT_SERVER_ID, &l.server.octets());
        if reply_type == NAK {
            o.push(OPT_END);
            return o;
        }
        put_option(&mut o, OPT_LEASE, &u32::MAX.to_be_bytes());
        put_option(&mut o, OPT_SUBNET_MASK, &prefix_mask(l.prefix).octets());
        if let Some(router) = l.router {
            put_option(&mut o, OPT_ROUTER, &router.octets());
        }
        if !l.routes.is_empty() {
            put_option(&mut o, OPT_CLASSLESS_ROUTES, &encode_routes(&l.routes));
        }
        if let Some(mtu) = l.mtu {
            put_option(&mut o, OPT_MTU, &mtu.to_be_bytes());
        }
        if !l.hostname.is_empty() {
            put_option(&mut o, OPT_HOSTNAME, l.hostname.as_bytes());
        }
        // What can be left out if the reply would not fit: search list, then DNS.
        let mut extra = Vec::new();
        if !l.dns.is_empty() {
            let dns: Vec<u8> = l.dns.iter().flat_map(|a| a.octets()).collect();
            put_option(&mut extra, OPT_DNS, &dns);
        }
        if let Some(first) = l.search.first() {
            put_option(&mut extra, OPT_DOMAIN, first.as_bytes());
            put_option(&mut extra, OPT_SEARCH, &encode_names(&l.search));
        }
        let room = MAX_REPLY_IP - 20 - 8 - BOOTP_FIXED - 4 - 1;
        if o.len() + extra.len() <= room {
            o.extend(extra);
        } else {
            log::warn!("DHCP: DNS options do not fit in one reply; left out");
        }
        o.push(OPT_END);
        o
    }

    fn reply(&self, req: &Request, reply_type: u8) -> Vec<u8> {
        let l = &self.lease;
        let mut bootp = vec![0u8; BOOTP_FIXED];
        bootp[0] = BOOTREPLY;
        bootp[1] = 1;
        bootp[2] = 6;
        bootp[4..8].copy_from_slice(&req.xid);
        bootp[10..12].copy_from_slice(&req.flags.to_be_bytes());
        if reply_type != NAK {
            bootp[16..20].copy_from_slice(&l.address.octets());
        }
        bootp[28..34].copy_from_slice(&req.chaddr.octets());
        bootp.extend_from_slice(&MAGIC);
        bootp.extend(self.options(reply_type));

        let broadcast = req.flags & FLAG_BROADCAST != 0 || reply_type == NAK;
        let (dst_ip, dst_mac) = if broadcast {
            (Ipv4Addr::BROADCAST, MacAddr::new([0xff; 6]))
        } else {
            (l.address, req.chaddr)
        };
        let udp_len = u16::try_from(8 + bootp.len()).unwrap_or(u16::MAX);
        let mut udp = Vec::with_capacity(usize::from(udp_len));
        udp.extend(SERVER_PORT.to_be_bytes());
        udp.extend(CLIENT_PORT.to_be_bytes());
        udp.extend(udp_len.to_be_bytes());
        udp.extend([0, 0]);
        udp.extend(&bootp);
        let src = l.server.octets();
        let dst = dst_ip.octets();
        let pseudo = [
            &src[..],
            &dst[..],
            &[0, IPPROTO_UDP],
            &udp_len.to_be_bytes()[..],
        ];
        let mut sum = checksum(&[pseudo[0], pseudo[1], pseudo[2], pseudo[3], &udp]);
        if sum == 0 {
            sum = 0xffff;
        }
        udp[6..8].copy_from_slice(&sum.to_be_bytes());

        let total = u16::try_from(20 + udp.len()).unwrap_or(u16::MAX);
        let mut ip = vec![0x45, 0];
        ip.extend(total.to_be_bytes());
        ip.extend([0, 0, 0x40, 0, 64, IPPROTO_UDP, 0, 0]);
        ip.extend(src);
        ip.extend(dst);
        let csum = checksum(&[&ip]);
        ip[10..12].copy_from_slice(&csum.to_be_bytes());

        let mut frame = Vec::with_capacity(ETH_HDR + ip.len() + udp.len());
        frame.extend(dst_mac.octets());
        frame.extend(l.server_mac.octets());
        frame.extend(ETHERTYPE_IPV4.to_be_bytes());
        frame.extend(ip);
        frame.extend(udp);
        frame
    }
}

/// Client messages, reply parsing and a lease with every option, for tests here and in the
/// masquerade engine, and for the DHCP fuzz target.
#[cfg(any(test, fuzzing))]
#[doc(hidden)]
pub mod testing {
    use super::*;

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
    use super::testing::{client_msg, options};
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
        assert_eq!(bootp[0], BOOTREPLY);
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
        let mut bad_opt = good.clone();
        let end = bad_opt.len() - 1;
        bad_opt[end] = 200; // an option whose length runs off the end
        assert!(server.handle(&bad_opt).is_none());
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
        let mut big = vec![];
        put_option(&mut big, OPT_DNS, &[1u8; 300]);
        assert_eq!(big.len(), 2 + 255 + 2 + 45);
        assert_eq!(prefix_mask(24), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(prefix_mask(0), Ipv4Addr::UNSPECIFIED);
    }
}
