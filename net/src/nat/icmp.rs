//! ICMP echo. The gateway answers its own. Echo to anywhere else leaves in one of two ways,
//! chosen once when the forwarded ports are bound ([`Echo::open`]):
//!
//! - **Unprivileged ICMP sockets**, where `net.ipv4.ping_group_range` includes vmm's group:
//!   a socket per (identifier, destination), a datagram flow like UDP's (see
//!   the `udp` module). The kernel rewrites the identifier on the way out; replies get the
//!   guest's back.
//! - **One raw ICMP socket**, where they are forbidden (a pod's default range is `1 0`) but
//!   vmm has `CAP_NET_RAW` (a container's default) while it sets up. Each flow gets an
//!   identifier of its own on the wire, unique among the flows to its destination, and the
//!   replies, read from the raw socket, are matched by identifier and source and get the
//!   guest's identifier back.
//!
//! Sequence numbers and payloads pass unchanged either way. With neither, echo beyond the
//! gateway is dropped and the log says so once. ICMPv6 echo takes the same two ways (the
//! same sysctl governs both families' unprivileged sockets; the raw ICMPv6 socket is a
//! second one).
//!
//! The ICMP errors about the guest's datagrams and echo requests are built here too, for
//! both families, quoting what the guest sent.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Instant;

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    Icmpv4DstUnreachable, Icmpv4Message, Icmpv4Packet, Icmpv4Repr, Icmpv4TimeExceeded,
    Icmpv6DstUnreachable, Icmpv6Packet, Icmpv6Repr, Icmpv6TimeExceeded, IpProtocol, Ipv4Packet,
    Ipv4Repr, Ipv6Packet, Ipv6Repr,
};

use super::device::{IP_HDR, IPV6_HDR};
use super::engine::Nat;
use super::flow::{FlowId, FlowKey, FlowTable};
use super::sock::{self, IcmpError};
use super::udp::{Dgram, ip_header_len};

const ICMP_HDR: usize = 8;
/// Packets read from the raw socket per round of the engine; the rest wait for the next.
const RAW_READS_PER_ROUND: usize = 256;

/// How echo requests beyond the gateway leave.
#[derive(Debug, Default)]
pub enum Echo {
    /// An unprivileged ICMP socket per flow.
    #[default]
    Unprivileged,
    /// One raw ICMP socket for every flow (a family), opened while vmm had `CAP_NET_RAW`.
    Raw(RawSockets),
    /// Neither is possible here: echo requests are dropped.
    Forbidden,
}

/// The raw sockets echo leaves on.
#[derive(Debug)]
pub struct RawSockets {
    /// ICMP.
    pub v4: UdpSocket,
    /// ICMPv6, when the guest has IPv6 (and the namespace has it).
    pub v6: Option<UdpSocket>,
}

impl Echo {
    /// The way this namespace and vmm's privileges allow, best first, for IPv6 too if
    /// `ipv6`. Call it before capabilities are dropped.
    pub fn open(ipv6: bool) -> Self {
        match sock::ping_sockets_allowed() {
            Ok(true) => return Self::Unprivileged,
            Ok(false) => {}
            Err(e) => log::debug!("masquerade: cannot probe ICMP echo sockets: {e}"),
        }
        match sock::raw_icmp() {
            Ok(v4) => {
                log::info!(
                    "masquerade: unprivileged ICMP echo sockets are forbidden here (sysctl \
                     net.ipv4.ping_group_range); the guest's pings go out on a raw socket"
                );
                let v6 = ipv6.then(sock::raw_icmp6).and_then(|r| {
                    r.inspect_err(|e| log::warn!("masquerade: no raw ICMPv6 socket: {e}"))
                        .ok()
                });
                Self::Raw(RawSockets { v4, v6 })
            }
            Err(e) => {
                log::debug!("masquerade: no raw ICMP socket: {e}");
                Self::Forbidden
            }
        }
    }
}

/// A flow on the raw socket: the identifier its requests carry on the wire.
#[derive(Debug)]
pub(super) struct RawFlow {
    wire_ident: u16,
}

/// The flows on the raw socket, and how replies find them.
pub(super) struct RawFlows {
    table: FlowTable<FlowKey, RawFlow>,
    /// (identifier on the wire, destination) → flow.
    by_wire: HashMap<(u16, IpAddr), FlowId>,
    /// Edge-triggered: set by an event, cleared when a read would block.
    pub(super) readable: bool,
    /// The TTL (hop limit) the raw sockets send with, when not the kernel's default.
    ttl: Option<u8>,
    ttl6: Option<u8>,
}

impl RawFlows {
    pub(super) fn new(limit: usize) -> Self {
        Self {
            table: FlowTable::new(limit),
            by_wire: HashMap::new(),
            readable: false,
            // The socket outlives boots: what the last one left it at is not known.
            ttl: Some(0),
            ttl6: Some(0),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.table.len()
    }

    /// The wire identifier of the flow for `key`, made (evicting the least recently used
    /// flow when full) if there is none.
    fn wire_ident(&mut self, key: FlowKey, now: Instant) -> Option<u16> {
        let table = &mut self.table;
        if let Some(id) = table.id(&key) {
            return table.touch(id, now).map(|f| f.wire_ident);
        }
        // Random, so that a destination that sees one flow's identifier cannot tell
        // another's (and forge its replies or errors), and unique among the flows to this
        // destination. A limit of 65536 flows or more could take every identifier for one
        // destination: then the request is dropped.
        let dst = key.1.ip();
        let start = u16::try_from(crate::random::u64() & 0xffff).unwrap_or(0);
        let ident = (0..=u16::MAX)
            .map(|i| start.wrapping_add(i))
            .find(|i| !self.by_wire.contains_key(&(*i, dst)))?;
        let (id, evicted) = table.insert(key, RawFlow { wire_ident: ident }, now);
        if let Some((old_key, old)) = evicted {
            self.by_wire.remove(&(old.wire_ident, old_key.1.ip()));
        }
        self.by_wire.insert((ident, dst), id);
        Some(ident)
    }

    /// The guest's key of the flow a reply from `src` with `wire_ident` belongs to.
    fn reply_key(&mut self, wire_ident: u16, src: IpAddr, now: Instant) -> Option<FlowKey> {
        let id = *self.by_wire.get(&(wire_ident, src))?;
        self.table.touch(id, now);
        self.table.key(id)
    }

    /// Closes the flows silent for `idle`.
    pub(super) fn expire(&mut self, now: Instant, idle: std::time::Duration) {
        for (key, flow) in self.table.expire(now, idle) {
            self.by_wire.remove(&(flow.wire_ident, key.1.ip()));
        }
    }
}

/// ICMPv6 echo request and reply types.
const ECHO_REQUEST_V6: u8 = 128;
const ECHO_REPLY_V6: u8 = 129;

/// What the guest sent, as an ICMP error about it quotes it: its IP header, rebuilt, and
/// the first bytes of its payload.
pub(super) struct Quote<'a> {
    /// Where it went.
    pub(super) dst: IpAddr,
    /// What it carried.
    pub(super) protocol: IpProtocol,
    /// Its payload's whole length.
    pub(super) len: usize,
    /// The TTL (hop limit) it was sent with.
    pub(super) ttl: u8,
    /// The start of its payload.
    pub(super) data: &'a [u8],
}

/// The ICMP of `addr`'s family.
fn icmp_protocol(addr: IpAddr) -> IpProtocol {
    match addr {
        IpAddr::V4(_) => IpProtocol::Icmp,
        IpAddr::V6(_) => IpProtocol::Icmpv6,
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

impl Nat {
    /// An ICMP message the guest sent to `dst` with `ttl`.
    pub(super) fn icmp_from_guest(&mut self, dst: Ipv4Addr, ttl: u8, message: &[u8]) {
        let Ok(icmp) = Icmpv4Packet::new_checked(message) else {
            return self.drop_frame();
        };
        if icmp.msg_type() != Icmpv4Message::EchoRequest || icmp.msg_code() != 0 {
            return self.drop_frame();
        }
        if dst == self.gateway {
            // The gateway answers its own echo, while the guest takes what it is sent.
            if self.dev.tx.is_full() {
                self.dev.tx.dropped += 1;
                return;
            }
            let mut reply = message.to_vec();
            reply[0] = 0; // echo reply
            Icmpv4Packet::new_unchecked(&mut reply[..]).fill_checksum();
            self.push_ip(IpAddr::V4(self.gateway), IpProtocol::Icmp, &reply);
            return;
        }
        self.echo_from_guest(IpAddr::V4(dst), ttl, message);
    }

    /// An echo request of either family, `message` (at least its 8-byte header), that the
    /// guest sent to `dst` beyond the gateway with `ttl`.
    pub(super) fn echo_from_guest(&mut self, dst: IpAddr, ttl: u8, message: &[u8]) {
        if message.len() < ICMP_HDR {
            return self.drop_frame();
        }
        if ttl <= 1 {
            return self.ttl_ends_at_gateway(dst, icmp_protocol(dst), message, ttl);
        }
        let key = (be16(message, 4), SocketAddr::new(dst, 0));
        if !self.cfg.egress.allows(key.1, &[]) {
            self.stats.egress_denied += 1;
            return self.drop_frame();
        }
        match &self.listeners.echo {
            Echo::Unprivileged => {
                let Some(flow) = self.dgram_flow(Dgram::Icmp, key, key.1) else {
                    return self.drop_frame();
                };
                // The kernel sets the identifier and checksum.
                if let Err(e) = flow.send_with_ttl(message, ttl) {
                    log::debug!("masquerade: ICMP echo to {dst}: {e}");
                }
            }
            Echo::Raw(_) => self.raw_echo(key, ttl, message),
            Echo::Forbidden => {
                self.echo_forbidden();
                self.drop_frame();
            }
        }
    }

    /// Says once that the guest's pings are dropped, and why.
    pub(super) fn echo_forbidden(&mut self) {
        if !self.icmp_forbidden {
            log::warn!(
                "masquerade: this host forbids unprivileged ICMP echo sockets (sysctl \
                 net.ipv4.ping_group_range) and vmm had no CAP_NET_RAW for a raw one; the \
                 guest's pings are dropped"
            );
            self.icmp_forbidden = true;
        }
    }

    /// Sends the guest's echo request on the raw socket of its family under its flow's wire
    /// identifier.
    fn raw_echo(&mut self, key: FlowKey, ttl: u8, message: &[u8]) {
        let listeners = self.listeners.clone();
        let Echo::Raw(raw) = &listeners.echo else {
            return;
        };
        if key.1.is_ipv6() && raw.v6.is_none() {
            // No socket for it: no flow either (one would evict a working one).
            return self.drop_frame();
        }
        let Some(ident) = self.raw.wire_ident(key, Instant::now()) else {
            return self.drop_frame();
        };
        let mut out = message.to_vec();
        out[4..6].copy_from_slice(&ident.to_be_bytes());
        // One socket a family for every flow: its TTL follows each request's.
        let sock = match key.1 {
            SocketAddr::V4(_) => {
                Icmpv4Packet::new_unchecked(&mut out[..]).fill_checksum();
                sock::follow_ttl(&raw.v4, &mut self.raw.ttl, ttl, false);
                &raw.v4
            }
            SocketAddr::V6(_) => {
                // The kernel computes an ICMPv6 raw socket's checksums.
                let Some(v6) = &raw.v6 else {
                    return self.drop_frame();
                };
                sock::follow_ttl(v6, &mut self.raw.ttl6, ttl, true);
                v6
            }
        };
        if let Err(e) = sock.send_to(&out, key.1) {
            log::debug!("masquerade: ICMP echo to {}: {e}", key.1.ip());
        }
    }

    /// Reads what the raw ICMP socket has, while the guest's queue has room: echo replies
    /// of the guest's flows go to it, and errors about its requests; the rest is dropped.
    pub(super) fn read_raw_echo(&mut self) {
        let listeners = self.listeners.clone();
        let Echo::Raw(raw) = &listeners.echo else {
            return;
        };
        // Bounded per round: packets that are dropped do not fill the guest's queue.
        for _ in 0..RAW_READS_PER_ROUND {
            if !self.raw.readable || self.dev.tx.is_full() {
                return;
            }
            let Some((n, _)) = self.raw_read(&raw.v4) else {
                self.raw.readable = false;
                return;
            };
            let Ok(ip) = Ipv4Packet::new_checked(&self.buf[..n]) else {
                continue;
            };
            let src = ip.src_addr();
            let Ok(icmp) = Icmpv4Packet::new_checked(ip.payload()) else {
                continue;
            };
            match icmp.msg_type() {
                Icmpv4Message::EchoReply => {}
                Icmpv4Message::DstUnreachable | Icmpv4Message::TimeExceeded => {
                    let header = ip.payload();
                    let err = IcmpError {
                        v6: false,
                        icmp_type: icmp.msg_type().into(),
                        code: icmp.msg_code(),
                        offender: Some(IpAddr::V4(src)),
                        len: 0,
                        mtu: u32::from(be16(header, 6)),
                    };
                    let quoted = icmp.data().to_vec();
                    self.raw_echo_error(&err, &quoted);
                    continue;
                }
                _ => continue,
            }
            let src = IpAddr::V4(src);
            let Some(key) = self.raw.reply_key(icmp.echo_ident(), src, Instant::now()) else {
                continue;
            };
            let message = ip.payload().to_vec();
            self.echo_reply_to_guest(key, message);
        }
    }

    /// As [`Nat::read_raw_echo`], for the raw ICMPv6 socket (which returns messages
    /// without their IPv6 header).
    pub(super) fn read_raw_echo6(&mut self) {
        let listeners = self.listeners.clone();
        let Echo::Raw(RawSockets { v6: Some(raw), .. }) = &listeners.echo else {
            return;
        };
        for _ in 0..RAW_READS_PER_ROUND {
            if !self.raw6_readable || self.dev.tx.is_full() {
                return;
            }
            let Some((n, from)) = self.raw_read(raw) else {
                self.raw6_readable = false;
                return;
            };
            let message = &self.buf[..n];
            if n < ICMP_HDR {
                continue;
            }
            match message[0] {
                ECHO_REPLY_V6 => {
                    let ident = be16(message, 4);
                    let Some(key) = self.raw.reply_key(ident, from.ip(), Instant::now()) else {
                        continue;
                    };
                    let message = message.to_vec();
                    self.echo_reply_to_guest(key, message);
                }
                1..=3 => {
                    let err = IcmpError {
                        v6: true,
                        icmp_type: message[0],
                        code: message[1],
                        offender: Some(from.ip()),
                        len: 0,
                        mtu: u32::from_be_bytes([message[4], message[5], message[6], message[7]]),
                    };
                    let quoted = message[ICMP_HDR..].to_vec();
                    self.raw_echo_error(&err, &quoted);
                }
                _ => {}
            }
        }
    }

    /// One packet from raw socket `raw` into the buffer: its length and source; `None` when
    /// there is nothing more to read now.
    fn raw_read(&mut self, raw: &UdpSocket) -> Option<(usize, SocketAddr)> {
        loop {
            match raw.recv_from(&mut self.buf) {
                Ok(got) => return Some(got),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    if e.kind() != io::ErrorKind::WouldBlock {
                        log::debug!("masquerade: raw ICMP socket: {e}");
                    }
                    return None;
                }
            }
        }
    }

    /// Relays `err`, which the network sent about what the guest sent (`quote`), to the
    /// guest, from the router that said it (or the gateway, for an address the guest could
    /// not answer).
    pub(super) fn relay_icmp_error(&mut self, err: &IcmpError, quote: &Quote<'_>) {
        let from = self.visible_source(err.offender.unwrap_or(quote.dst));
        if self.icmp_error_to_guest(from, (err.icmp_type, err.code), err.mtu, quote) {
            self.stats.icmp_errors += 1;
        }
    }

    /// The guest sent `payload` to `dst` with a TTL (`ttl`) that ends at this hop: the
    /// gateway says so, as a router would (traceroute, `ping -t`). `payload` holds at least
    /// the 8 bytes the error quotes.
    pub(super) fn ttl_ends_at_gateway(
        &mut self,
        dst: IpAddr,
        protocol: IpProtocol,
        payload: &[u8],
        ttl: u8,
    ) {
        let (from, icmp_type, data) = match dst {
            IpAddr::V4(_) => (
                IpAddr::V4(self.gateway),
                11,
                &payload[..ICMP_HDR.min(payload.len())],
            ),
            IpAddr::V6(_) => match &self.v6 {
                // ICMPv6 quotes as much as fits the minimum MTU (smoltcp cuts it there).
                Some(v6) => (IpAddr::V6(v6.gateway), 3, payload),
                None => return,
            },
        };
        let quote = Quote {
            dst,
            protocol,
            len: payload.len(),
            ttl,
            data,
        };
        self.icmp_error_to_guest(from, (icmp_type, 0), 0, &quote);
    }

    /// Queues ICMP error (`icmp_type`, `code`) from `from` for the guest, quoting `quote`,
    /// with the next-hop `mtu` of a fragmentation needed or packet too big; whether it was
    /// one this builds.
    fn icmp_error_to_guest(
        &mut self,
        from: IpAddr,
        (icmp_type, code): (u8, u8),
        mtu: u32,
        quote: &Quote<'_>,
    ) -> bool {
        let message = match (from, quote.dst, &self.v6) {
            (IpAddr::V4(_), IpAddr::V4(dst), _) => {
                let header = Ipv4Repr {
                    src_addr: self.guest,
                    dst_addr: dst,
                    next_header: quote.protocol,
                    payload_len: quote.len,
                    hop_limit: quote.ttl,
                };
                let repr = match icmp_type {
                    3 => Icmpv4Repr::DstUnreachable {
                        reason: Icmpv4DstUnreachable::from(code),
                        header,
                        data: quote.data,
                    },
                    11 => Icmpv4Repr::TimeExceeded {
                        reason: Icmpv4TimeExceeded::from(code),
                        header,
                        data: quote.data,
                    },
                    _ => return false,
                };
                let mut message = vec![0u8; repr.buffer_len()];
                repr.emit(
                    &mut Icmpv4Packet::new_unchecked(&mut message[..]),
                    &ChecksumCapabilities::default(),
                );
                if (icmp_type, code) == (3, 4) {
                    // RFC 1191: fragmentation needed carries the next hop's MTU in the low
                    // half of the header's second word, where smoltcp writes zeros.
                    let mtu = u16::try_from(mtu).unwrap_or(u16::MAX);
                    message[6..8].copy_from_slice(&mtu.to_be_bytes());
                    Icmpv4Packet::new_unchecked(&mut message[..]).fill_checksum();
                }
                message
            }
            (IpAddr::V6(src), IpAddr::V6(dst), Some(v6)) => {
                let header = Ipv6Repr {
                    src_addr: v6.guest,
                    dst_addr: dst,
                    next_header: quote.protocol,
                    payload_len: quote.len,
                    hop_limit: quote.ttl,
                };
                let data = quote.data;
                let repr = match icmp_type {
                    1 => Icmpv6Repr::DstUnreachable {
                        reason: Icmpv6DstUnreachable::from(code),
                        header,
                        data,
                    },
                    2 => Icmpv6Repr::PktTooBig { mtu, header, data },
                    3 => Icmpv6Repr::TimeExceeded {
                        reason: Icmpv6TimeExceeded::from(code),
                        header,
                        data,
                    },
                    _ => return false,
                };
                let mut message = vec![0u8; repr.buffer_len()];
                repr.emit(
                    &src,
                    &v6.guest,
                    &mut Icmpv6Packet::new_unchecked(&mut message[..]),
                    &ChecksumCapabilities::default(),
                );
                message
            }
            _ => return false,
        };
        self.push_ip(from, icmp_protocol(from), &message);
        true
    }

    /// The first 8 bytes of the guest's echo request `seq_no` on flow `key`, as it sent
    /// them, for an error's quote (the guest matches on identifier and sequence).
    fn echo_quote((ident, dst): FlowKey, seq_no: u16) -> [u8; ICMP_HDR] {
        let mut quote = [0u8; ICMP_HDR];
        quote[0] = match dst {
            SocketAddr::V4(_) => 8,
            SocketAddr::V6(_) => ECHO_REQUEST_V6,
        };
        quote[4..6].copy_from_slice(&ident.to_be_bytes());
        quote[6..8].copy_from_slice(&seq_no.to_be_bytes());
        if dst.is_ipv4() {
            // Over these 8 bytes alone, which is all the guest gets back.
            Icmpv4Packet::new_unchecked(&mut quote[..]).fill_checksum();
        }
        quote
    }

    /// Relays `err` about echo request `seq_no` (with `len` bytes of ICMP message) on flow
    /// `key`.
    fn relay_echo_error(&mut self, err: &IcmpError, key: FlowKey, seq_no: u16, len: usize) {
        let data = Self::echo_quote(key, seq_no);
        let quote = Quote {
            dst: key.1.ip(),
            protocol: icmp_protocol(key.1.ip()),
            len: len.max(ICMP_HDR),
            ttl: 64,
            data: &data,
        };
        self.relay_icmp_error(err, &quote);
    }

    /// An ICMP error a raw socket received, `quoted` being the packet it is about: when
    /// that is one of the guest's echo requests, the guest gets the error.
    fn raw_echo_error(&mut self, err: &IcmpError, quoted: &[u8]) {
        // A quote is a header and the first bytes after it: shorter than its header's
        // length says, so the lengths are checked by hand.
        let (dst, echo, len) = if err.v6 {
            if quoted.len() < IPV6_HDR {
                return;
            }
            let inner = Ipv6Packet::new_unchecked(quoted);
            if inner.version() != 6 || inner.next_header() != IpProtocol::Icmpv6 {
                return;
            }
            let echo = &quoted[IPV6_HDR..];
            (
                IpAddr::V6(inner.dst_addr()),
                echo,
                usize::from(inner.payload_len()),
            )
        } else {
            if quoted.len() < IP_HDR {
                return;
            }
            let inner = Ipv4Packet::new_unchecked(quoted);
            let header_len = usize::from(inner.header_len());
            if inner.version() != 4
                || header_len < IP_HDR
                || inner.next_header() != IpProtocol::Icmp
            {
                return;
            }
            let echo = quoted.get(header_len..).unwrap_or(&[]);
            let len = usize::from(inner.total_len()).saturating_sub(header_len);
            (IpAddr::V4(inner.dst_addr()), echo, len)
        };
        let request = if err.v6 { ECHO_REQUEST_V6 } else { 8 };
        if echo.len() < ICMP_HDR || echo[0] != request {
            return;
        }
        let Some(key) = self.raw.reply_key(be16(echo, 4), dst, Instant::now()) else {
            return;
        };
        self.relay_echo_error(err, key, be16(echo, 6), len);
    }

    /// The ICMP errors queued on the unprivileged echo socket of flow `id`, to the guest.
    pub(super) fn read_echo_errors(&mut self, id: FlowId) {
        while !self.dev.tx.is_full() {
            let Some(err) = self.dgram_error(Dgram::Icmp, id) else {
                return;
            };
            let Some(key) = self.icmp.key(id) else {
                return;
            };
            // The kernel returns the echo request it sent: identifier (its own) and sequence.
            let request = if key.1.is_ipv6() { ECHO_REQUEST_V6 } else { 8 };
            if err.len < ICMP_HDR || self.buf[0] != request {
                continue;
            }
            let seq_no = be16(&self.buf, 6);
            self.relay_echo_error(&err, key, seq_no, err.len);
        }
    }

    /// An echo reply `message` on flow `key` to the guest, with its identifier back.
    pub(super) fn echo_reply_to_guest(&mut self, (ident, from): FlowKey, mut message: Vec<u8>) {
        let reply = match from {
            SocketAddr::V4(_) => 0,
            SocketAddr::V6(_) => ECHO_REPLY_V6,
        };
        if message.len() < ICMP_HDR
            || message.len() + ip_header_len(from.ip()) > usize::from(self.cfg.mtu)
            || message[0] != reply
        {
            self.stats.dropped += 1;
            return;
        }
        message[4..6].copy_from_slice(&ident.to_be_bytes());
        match (from, &self.v6) {
            (SocketAddr::V4(_), _) => Icmpv4Packet::new_unchecked(&mut message[..]).fill_checksum(),
            (SocketAddr::V6(src), Some(v6)) => {
                Icmpv6Packet::new_unchecked(&mut message[..]).fill_checksum(src.ip(), &v6.guest);
            }
            (SocketAddr::V6(_), None) => return self.drop_frame(),
        }
        self.push_ip(from.ip(), icmp_protocol(from.ip()), &message);
    }
}
