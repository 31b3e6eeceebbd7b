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
//! gateway is dropped and the log says so once.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::Instant;

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    Icmpv4DstUnreachable, Icmpv4Message, Icmpv4Packet, Icmpv4Repr, Icmpv4TimeExceeded, IpProtocol,
    Ipv4Packet, Ipv4Repr,
};

use super::device::IP_HDR;
use super::engine::Nat;
use super::flow::{FlowId, FlowKey, FlowTable};
use super::sock::{self, IcmpError};
use super::udp::Dgram;

const ICMP_HDR: usize = 8;
/// Packets read from the raw socket per round of the engine; the rest wait for the next.
const RAW_READS_PER_ROUND: usize = 256;

/// How echo requests beyond the gateway leave.
#[derive(Debug, Default)]
pub enum Echo {
    /// An unprivileged ICMP socket per flow.
    #[default]
    Unprivileged,
    /// One raw ICMP socket for every flow, opened while vmm had `CAP_NET_RAW`.
    Raw(UdpSocket),
    /// Neither is possible here: echo requests are dropped.
    Forbidden,
}

impl Echo {
    /// The way this namespace and vmm's privileges allow, best first. Call it before
    /// capabilities are dropped.
    pub fn open() -> Self {
        match sock::ping_sockets_allowed() {
            Ok(true) => return Self::Unprivileged,
            Ok(false) => {}
            Err(e) => log::debug!("masquerade: cannot probe ICMP echo sockets: {e}"),
        }
        match sock::raw_icmp() {
            Ok(raw) => {
                log::info!(
                    "masquerade: unprivileged ICMP echo sockets are forbidden here (sysctl \
                     net.ipv4.ping_group_range); the guest's pings go out on a raw socket"
                );
                Self::Raw(raw)
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
    by_wire: HashMap<(u16, Ipv4Addr), FlowId>,
    next_ident: u16,
    /// Edge-triggered: set by an event, cleared when a read would block.
    pub(super) readable: bool,
    /// The TTL the raw socket sends with, when not the kernel's default.
    ttl: Option<u8>,
}

impl RawFlows {
    pub(super) fn new(limit: usize) -> Self {
        Self {
            table: FlowTable::new(limit),
            by_wire: HashMap::new(),
            // Not guessable from outside, and not where the last boot's flows were.
            next_ident: u16::try_from(crate::random::u64() & 0xffff).unwrap_or(0),
            readable: false,
            // The socket outlives boots: what the last one left it at is not known.
            ttl: Some(0),
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
        // Unique among the flows to this destination. A limit of 65536 flows or more could
        // take every identifier for one destination: then the request is dropped.
        let dst = *key.1.ip();
        let ident = (0..=u16::MAX)
            .map(|i| self.next_ident.wrapping_add(i))
            .find(|i| !self.by_wire.contains_key(&(*i, dst)))?;
        self.next_ident = ident.wrapping_add(1);
        let (id, evicted) = table.insert(key, RawFlow { wire_ident: ident }, now);
        if let Some((old_key, old)) = evicted {
            self.by_wire.remove(&(old.wire_ident, *old_key.1.ip()));
        }
        self.by_wire.insert((ident, dst), id);
        Some(ident)
    }

    /// The guest's key of the flow a reply from `src` with `wire_ident` belongs to.
    fn reply_key(&mut self, wire_ident: u16, src: Ipv4Addr, now: Instant) -> Option<FlowKey> {
        let id = *self.by_wire.get(&(wire_ident, src))?;
        self.table.touch(id, now);
        self.table.key(id)
    }

    /// Closes the flows silent for `idle`.
    pub(super) fn expire(&mut self, now: Instant, idle: std::time::Duration) {
        for (key, flow) in self.table.expire(now, idle) {
            self.by_wire.remove(&(flow.wire_ident, *key.1.ip()));
        }
    }
}

impl Nat {
    /// A message the guest sent to `dst` with `ttl`.
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
            self.push_ip(self.gateway, IpProtocol::Icmp, &reply);
            return;
        }
        if ttl <= 1 {
            return self.ttl_ends_at_gateway(dst, IpProtocol::Icmp, message, ttl);
        }
        let key = (icmp.echo_ident(), SocketAddrV4::new(dst, 0));
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

    /// Sends the guest's echo request on the raw socket under its flow's wire identifier.
    fn raw_echo(&mut self, key: FlowKey, ttl: u8, message: &[u8]) {
        let Some(ident) = self.raw.wire_ident(key, Instant::now()) else {
            return self.drop_frame();
        };
        let mut out = message.to_vec();
        let mut packet = Icmpv4Packet::new_unchecked(&mut out[..]);
        packet.set_echo_ident(ident);
        packet.fill_checksum();
        let Echo::Raw(raw) = &self.listeners.echo else {
            return;
        };
        // One socket for every flow: its TTL follows each request's.
        sock::follow_ttl(raw, &mut self.raw.ttl, ttl);
        if let Err(e) = raw.send_to(&out, key.1) {
            log::debug!("masquerade: ICMP echo to {}: {e}", key.1.ip());
        }
    }

    /// Reads what the raw socket has, while the guest's queue has room: echo replies of the
    /// guest's flows go to it, everything else is dropped.
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
            let n = match raw.recv_from(&mut self.buf) {
                Ok((n, _)) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    if e.kind() != io::ErrorKind::WouldBlock {
                        log::debug!("masquerade: raw ICMP socket: {e}");
                    }
                    self.raw.readable = false;
                    return;
                }
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
                        icmp_type: icmp.msg_type().into(),
                        code: icmp.msg_code(),
                        offender: Some(src),
                        len: 0,
                        mtu: u32::from(u16::from_be_bytes([header[6], header[7]])),
                    };
                    let quoted = icmp.data().to_vec();
                    self.raw_echo_error(&err, &quoted);
                    continue;
                }
                _ => continue,
            }
            let Some(key) = self.raw.reply_key(icmp.echo_ident(), src, Instant::now()) else {
                continue;
            };
            let message = ip.payload().to_vec();
            self.echo_reply_to_guest(key, message);
        }
    }

    /// An IPv4 header as the guest would have sent it to `dst`, for an ICMP error's quote.
    pub(super) fn guest_header(
        &self,
        dst: Ipv4Addr,
        protocol: IpProtocol,
        len: usize,
        ttl: u8,
    ) -> Ipv4Repr {
        Ipv4Repr {
            src_addr: self.guest,
            dst_addr: dst,
            next_header: protocol,
            payload_len: len,
            hop_limit: ttl,
        }
    }

    /// Relays `err`, which the network sent about what the guest sent to `dst`, to the
    /// guest: quoting `header` and the first bytes of its payload, `quote`, from the router
    /// that said it (or the gateway, for an address the guest could not answer).
    pub(super) fn relay_icmp_error(
        &mut self,
        err: &IcmpError,
        dst: Ipv4Addr,
        header: Ipv4Repr,
        quote: &[u8],
    ) {
        let from = self.visible_source(err.offender.unwrap_or(dst));
        let repr = match err.icmp_type {
            3 => Icmpv4Repr::DstUnreachable {
                reason: Icmpv4DstUnreachable::from(err.code),
                header,
                data: quote,
            },
            11 => Icmpv4Repr::TimeExceeded {
                reason: Icmpv4TimeExceeded::from(err.code),
                header,
                data: quote,
            },
            _ => return,
        };
        self.stats.icmp_errors += 1;
        // Fragmentation needed carries the next hop's MTU where smoltcp writes zeros.
        let mtu = (err.icmp_type, err.code) == (3, 4);
        let mtu = mtu.then(|| u16::try_from(err.mtu).unwrap_or(u16::MAX));
        self.icmp_error_to_guest(from, repr, mtu);
    }

    /// The guest sent `payload` to `dst` with a TTL (`ttl`) that ends at this hop: the
    /// gateway says so, as a router would (traceroute, `ping -t`). `payload` holds at least
    /// the 8 bytes the error quotes.
    pub(super) fn ttl_ends_at_gateway(
        &mut self,
        dst: Ipv4Addr,
        protocol: IpProtocol,
        payload: &[u8],
        ttl: u8,
    ) {
        let repr = Icmpv4Repr::TimeExceeded {
            reason: Icmpv4TimeExceeded::TtlExpired,
            header: self.guest_header(dst, protocol, payload.len(), ttl),
            data: &payload[..ICMP_HDR.min(payload.len())],
        };
        self.icmp_error_to_guest(self.gateway, repr, None);
    }

    /// Queues ICMP error `repr` from `from` for the guest, with the next-hop `mtu` of a
    /// fragmentation needed.
    pub(super) fn icmp_error_to_guest(
        &mut self,
        from: Ipv4Addr,
        repr: Icmpv4Repr<'_>,
        mtu: Option<u16>,
    ) {
        let mut message = vec![0u8; repr.buffer_len()];
        repr.emit(
            &mut Icmpv4Packet::new_unchecked(&mut message[..]),
            &ChecksumCapabilities::default(),
        );
        if let Some(mtu) = mtu {
            // RFC 1191: the next-hop MTU is the low half of the header's second word.
            message[6..8].copy_from_slice(&mtu.to_be_bytes());
            Icmpv4Packet::new_unchecked(&mut message[..]).fill_checksum();
        }
        self.push_ip(from, IpProtocol::Icmp, &message);
    }

    /// The guest's echo request `seq_no` on flow `key` as it sent it, for an error's quote:
    /// its header and the first 8 bytes of its ICMP message.
    fn echo_quote(&self, (ident, dst): FlowKey, seq_no: u16, len: usize) -> (Ipv4Repr, [u8; 8]) {
        // The request's first 8 bytes: its header (the checksum covers those alone; the
        // guest matches on identifier and sequence).
        let mut quote = [0u8; ICMP_HDR];
        Icmpv4Repr::EchoRequest {
            ident,
            seq_no,
            data: &[],
        }
        .emit(
            &mut Icmpv4Packet::new_unchecked(&mut quote[..]),
            &ChecksumCapabilities::default(),
        );
        (
            self.guest_header(*dst.ip(), IpProtocol::Icmp, len.max(ICMP_HDR), 64),
            quote,
        )
    }

    /// An ICMP error the raw socket received, `quoted` being the packet it is about: when
    /// that is one of the guest's echo requests, the guest gets the error.
    fn raw_echo_error(&mut self, err: &IcmpError, quoted: &[u8]) {
        // A quote is a header and the first 8 bytes after it: shorter than its header's
        // total length says, so the lengths are checked by hand.
        if quoted.len() < IP_HDR {
            return;
        }
        let inner = Ipv4Packet::new_unchecked(quoted);
        let echo = quoted.get(usize::from(inner.header_len())..).unwrap_or(&[]);
        if inner.version() != 4
            || usize::from(inner.header_len()) < IP_HDR
            || inner.next_header() != IpProtocol::Icmp
            || echo.len() < ICMP_HDR
            || echo[0] != 8
        {
            return;
        }
        let wire_ident = u16::from_be_bytes([echo[4], echo[5]]);
        let seq_no = u16::from_be_bytes([echo[6], echo[7]]);
        let Some(key) = self
            .raw
            .reply_key(wire_ident, inner.dst_addr(), Instant::now())
        else {
            return;
        };
        let len = usize::from(inner.total_len()).saturating_sub(usize::from(inner.header_len()));
        let (header, quote) = self.echo_quote(key, seq_no, len);
        self.relay_icmp_error(err, *key.1.ip(), header, &quote);
    }

    /// The ICMP errors queued on the unprivileged echo socket of flow `id`, to the guest.
    pub(super) fn read_echo_errors(&mut self, id: FlowId) {
        while !self.dev.tx.is_full() {
            let Some(err) = self.dgram_error(Dgram::Icmp, id) else {
                return;
            };
            // The kernel returns the echo request it sent: identifier (its own) and sequence.
            if err.len < ICMP_HDR || self.buf[0] != 8 {
                continue;
            }
            let seq_no = u16::from_be_bytes([self.buf[6], self.buf[7]]);
            let Some(key) = self.icmp.key(id) else {
                return;
            };
            let (header, quote) = self.echo_quote(key, seq_no, err.len);
            self.relay_icmp_error(&err, *key.1.ip(), header, &quote);
        }
    }

    /// An echo reply `message` on flow `key` to the guest, with its identifier back.
    pub(super) fn echo_reply_to_guest(&mut self, (ident, from): FlowKey, mut message: Vec<u8>) {
        if message.len() < ICMP_HDR
            || message.len() + IP_HDR > usize::from(self.cfg.mtu)
            || message[0] != 0
        {
            self.stats.dropped += 1;
            return;
        }
        let mut packet = Icmpv4Packet::new_unchecked(&mut message[..]);
        packet.set_echo_ident(ident);
        packet.fill_checksum();
        self.push_ip(*from.ip(), IpProtocol::Icmp, &message);
    }
}
