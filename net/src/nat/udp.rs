//! UDP, and what it shares with ICMP echo: a datagram flow is a connected host socket per
//! (guest port or echo identifier, destination), made on first use, least recently used
//! evicted when the table is full, closed after `udp-idle` of silence. Peers' datagrams to
//! forwarded ports go to the guest, and the guest's answers leave from the port written to.

use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::Instant;

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{IpAddress, IpProtocol, UdpPacket, UdpRepr};
use vmm_sys_util::epoll::EventSet;

use super::device::{IP_HDR, IPV6_HDR};
use super::engine::{Nat, Wake};
use super::flow::{FlowId, FlowKey, FlowTable};
use super::icmp::Quote;
use super::sock::{self, IcmpError};

const UDP_HDR: usize = 8;

/// Which kind of datagram flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Dgram {
    Udp,
    Icmp,
}

/// A UDP or ICMP echo flow's host socket.
pub(super) struct DgramFlow {
    sock: UdpSocket,
    /// Edge-triggered: set by an event, cleared when a read would block.
    readable: bool,
    /// ICMP errors are queued on the socket (UDP flows ask for them: `IP_RECVERR`).
    errors: bool,
    /// The TTL the socket sends with, when not the kernel's default.
    ttl: Option<u8>,
    /// An IPv6 socket.
    v6: bool,
}

impl DgramFlow {
    /// Sends `data` to the flow's destination with what is left of the guest's `ttl`.
    pub(super) fn send_with_ttl(&mut self, data: &[u8], ttl: u8) -> io::Result<usize> {
        sock::follow_ttl(&self.sock, &mut self.ttl, ttl, self.v6);
        self.send_again(data)
    }

    /// Sends `data`; when the send instead reports an ICMP error that came in earlier
    /// (`IP_RECVERR` makes the kernel hand it to the next call), sends once more, and
    /// leaves the error to be relayed from the queue.
    pub(super) fn send_again(&mut self, data: &[u8]) -> io::Result<usize> {
        match self.sock.send(data) {
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(
                        libc::ECONNREFUSED
                            | libc::EHOSTUNREACH
                            | libc::ENETUNREACH
                            | libc::EMSGSIZE
                            | libc::EPROTO
                    )
                ) =>
            {
                self.errors = true;
                self.sock.send(data)
            }
            other => other,
        }
    }
}

/// A peer that sent a datagram to a forwarded UDP port; the guest's replies go back
/// through that port's socket.
pub(super) struct InboundUdp {
    listener: usize,
    /// As the socket received it (an IPv4 peer of a dual-stack socket IPv4-mapped).
    peer: SocketAddr,
}

/// The IP header's size in `addr`'s family.
pub(super) fn ip_header_len(addr: IpAddr) -> usize {
    match addr {
        IpAddr::V4(_) => IP_HDR,
        IpAddr::V6(_) => IPV6_HDR,
    }
}

impl Nat {
    fn dgrams(&mut self, kind: Dgram) -> &mut FlowTable<FlowKey, DgramFlow> {
        match kind {
            Dgram::Udp => &mut self.udp,
            Dgram::Icmp => &mut self.icmp,
        }
    }

    /// A datagram the guest sent to `dst` with `ttl`.
    pub(super) fn udp_from_guest(&mut self, dst: IpAddr, ttl: u8, datagram: &[u8]) {
        let Ok(udp) = UdpPacket::new_checked(datagram) else {
            return self.drop_frame();
        };
        if ttl <= 1 && !self.is_gateway(dst) {
            return self.ttl_ends_at_gateway(dst, IpProtocol::Udp, datagram, ttl);
        }
        let key = (udp.src_port(), SocketAddr::new(dst, udp.dst_port()));
        if let Some(id) = self.inbound_udp.id(&key) {
            // A reply to a peer that wrote to a forwarded port: from that port.
            let Some(inbound) = self.inbound_udp.touch(id, Instant::now()) else {
                return;
            };
            let (_, sock) = &self.listeners.udp[inbound.listener];
            if let Err(e) = sock.send_to(udp.payload(), inbound.peer) {
                log::debug!("masquerade: UDP reply to {}: {e}", inbound.peer);
            }
            return;
        }
        let target = if self.is_gateway(dst) {
            match self.dns_redirect(dst) {
                Some(resolver) if key.1.port() == 53 => resolver,
                _ => return self.drop_frame(),
            }
        } else if self.cfg.egress.allows(key.1, &self.resolvers) {
            key.1
        } else {
            self.stats.egress_denied += 1;
            return self.drop_frame();
        };
        let Some(flow) = self.dgram_flow(Dgram::Udp, key, target) else {
            return self.drop_frame();
        };
        sock::follow_ttl(&flow.sock, &mut flow.ttl, ttl, flow.v6);
        if let Err(e) = flow.send_again(udp.payload()) {
            log::debug!("masquerade: UDP to {target}: {e}");
        }
    }

    /// The flow for `key`, marked used, opened to `target` if there is none.
    pub(super) fn dgram_flow(
        &mut self,
        kind: Dgram,
        key: FlowKey,
        target: SocketAddr,
    ) -> Option<&mut DgramFlow> {
        let id = match self.dgrams(kind).id(&key) {
            Some(id) => id,
            None => self.open_dgram(kind, key, target)?,
        };
        self.dgrams(kind).touch(id, Instant::now())
    }

    /// Opens a UDP or ICMP flow, evicting the least recently used one when full.
    fn open_dgram(&mut self, kind: Dgram, key: FlowKey, target: SocketAddr) -> Option<FlowId> {
        let sock = match kind {
            Dgram::Udp => sock::connect_udp(target),
            Dgram::Icmp => sock::connect_icmp(target),
        };
        let sock = match sock {
            Ok(s) => s,
            Err(e) => {
                if kind == Dgram::Icmp
                    && matches!(e.raw_os_error(), Some(libc::EACCES | libc::EPERM))
                {
                    // Forbidden since the probe (the sysctl changed).
                    self.echo_forbidden();
                } else {
                    log::debug!("masquerade: socket for {target}: {e}");
                }
                return None;
            }
        };
        if let Err(e) = sock::set_recv_errors(&sock, target.is_ipv6()) {
            log::debug!("masquerade: no ICMP errors for {target}: {e}");
        }
        let fd = sock.as_raw_fd();
        let flow = DgramFlow {
            sock,
            readable: false,
            errors: false,
            ttl: None,
            v6: target.is_ipv6(),
        };
        let (id, evicted) = self.dgrams(kind).insert(key, flow, Instant::now());
        if let Some((_, old)) = evicted {
            self.unwatch(&old.sock);
        }
        let wake = match kind {
            Dgram::Udp => Wake::Udp(id),
            Dgram::Icmp => Wake::Icmp(id),
        };
        let events = EventSet::IN | EventSet::EDGE_TRIGGERED;
        if self.poller.add(fd, wake, events).is_err() {
            self.dgrams(kind).remove(id);
            return None;
        }
        Some(id)
    }

    fn unwatch(&self, sock: &UdpSocket) {
        let _ = self.poller.delete(sock.as_raw_fd());
    }

    /// Marks flow `id` readable, or with errors queued, after `events`; whether it is still
    /// open.
    pub(super) fn dgram_event(&mut self, kind: Dgram, id: FlowId, events: EventSet) -> bool {
        self.dgrams(kind)
            .get_mut(id)
            .map(|f| {
                f.readable |= events.contains(EventSet::IN);
                f.errors |= events.contains(EventSet::ERROR);
            })
            .is_some()
    }

    /// The flows left readable (the guest's queue was full when they were last read).
    pub(super) fn readable_dgrams(&self) -> Vec<(Dgram, FlowId)> {
        let readable = |kind, table: &FlowTable<FlowKey, DgramFlow>| {
            table
                .iter()
                .filter(|(_, _, f)| f.readable || f.errors)
                .map(move |(id, _, _)| (kind, id))
                .collect::<Vec<_>>()
        };
        let mut all = readable(Dgram::Udp, &self.udp);
        all.extend(readable(Dgram::Icmp, &self.icmp));
        all
    }

    /// Reads what a flow's socket has, while the guest's queue has room.
    pub(super) fn read_dgram(&mut self, kind: Dgram, id: FlowId) {
        self.read_errors(kind, id);
        let mut failed = false;
        while !self.dev.tx.is_full() {
            let table = match kind {
                Dgram::Udp => &mut self.udp,
                Dgram::Icmp => &mut self.icmp,
            };
            let Some(flow) = table.get_mut(id).filter(|f| f.readable) else {
                return;
            };
            let n = match flow.sock.recv(&mut self.buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    flow.readable = false;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // With IP_RECVERR, an ICMP error is also reported here once (its
                    // details wait in the error queue); datagrams behind it are still read.
                    log::debug!("masquerade: datagram flow: {e}");
                    flow.errors = true;
                    if std::mem::replace(&mut failed, true) {
                        // Twice in a row: not a reported ICMP error; wait for the next event.
                        flow.readable = false;
                    }
                    self.read_errors(kind, id);
                    continue;
                }
            };
            failed = false;
            table.touch(id, Instant::now());
            let Some(key) = table.key(id) else {
                return;
            };
            match kind {
                Dgram::Udp => self.udp_to_guest(key, n),
                Dgram::Icmp => {
                    let message = self.buf[..n].to_vec();
                    self.echo_reply_to_guest(key, message);
                }
            }
        }
        // What is left stays readable: read when the guest has taken frames.
    }

    fn read_errors(&mut self, kind: Dgram, id: FlowId) {
        match kind {
            Dgram::Udp => self.read_udp_errors(id),
            Dgram::Icmp => self.read_echo_errors(id),
        }
    }

    /// The next ICMP error queued on flow `id`'s socket (its quote in the buffer), if its
    /// error flag is up; the flag goes down when there is none left.
    pub(super) fn dgram_error(&mut self, kind: Dgram, id: FlowId) -> Option<IcmpError> {
        let table = match kind {
            Dgram::Udp => &mut self.udp,
            Dgram::Icmp => &mut self.icmp,
        };
        let flow = table.get_mut(id).filter(|f| f.errors)?;
        match sock::recv_error(&flow.sock, &mut self.buf) {
            Ok(Some(err)) => Some(err),
            Ok(None) => {
                flow.errors = false;
                None
            }
            Err(e) => {
                log::debug!("masquerade: error queue: {e}");
                flow.errors = false;
                None
            }
        }
    }

    /// Relays the ICMP errors queued on UDP flow `id` to the guest, while its queue has room:
    /// port, host and net unreachable, TTL exceeded, fragmentation needed.
    fn read_udp_errors(&mut self, id: FlowId) {
        while !self.dev.tx.is_full() {
            let Some(err) = self.dgram_error(Dgram::Udp, id) else {
                return;
            };
            let sent_ttl = self.udp.get(id).and_then(|f| f.ttl);
            let Some((port, dst)) = self.udp.key(id) else {
                return;
            };
            // What the guest sent, as it sent it: its header, and its UDP header (the
            // kernel returns the payload only).
            let payload_len = err.len;
            let mut udp_hdr = [0u8; UDP_HDR];
            let udp_len = u16::try_from(UDP_HDR + payload_len).unwrap_or(u16::MAX);
            udp_hdr[..2].copy_from_slice(&port.to_be_bytes());
            udp_hdr[2..4].copy_from_slice(&dst.port().to_be_bytes());
            udp_hdr[4..6].copy_from_slice(&udp_len.to_be_bytes());
            let quote = Quote {
                dst: dst.ip(),
                protocol: IpProtocol::Udp,
                len: UDP_HDR + payload_len,
                ttl: sent_ttl.map_or(64, |t| t.saturating_add(1)),
                data: &udp_hdr,
            };
            self.relay_icmp_error(&err, &quote);
        }
    }

    /// The first `n` bytes of the buffer, received on flow `key`, to the guest.
    fn udp_to_guest(&mut self, (port, from): FlowKey, n: usize) {
        if n + UDP_HDR + ip_header_len(from.ip()) > usize::from(self.cfg.mtu) {
            self.stats.dropped += 1;
            return;
        }
        self.push_udp(from, port, n);
    }

    /// Queues a UDP datagram from `src` to the guest's port `dst_port` carrying the first
    /// `len` bytes of the receive buffer.
    fn push_udp(&mut self, src: SocketAddr, dst_port: u16, len: usize) {
        let Some(guest) = self.guest_of(src.ip()) else {
            return self.drop_frame();
        };
        let mut segment = vec![0u8; UDP_HDR + len];
        UdpRepr {
            src_port: src.port(),
            dst_port,
        }
        .emit(
            &mut UdpPacket::new_unchecked(&mut segment[..]),
            &IpAddress::from(src.ip()),
            &IpAddress::from(guest),
            len,
            |p| p.copy_from_slice(&self.buf[..len]),
            &ChecksumCapabilities::default(),
        );
        self.push_ip(src.ip(), IpProtocol::Udp, &segment);
    }

    /// Datagrams to forwarded UDP ports, to the guest while its queue has room.
    pub(super) fn read_inbound_udp(&mut self) {
        self.udp_listen_ready.sort_unstable();
        self.udp_listen_ready.dedup();
        let ready = std::mem::take(&mut self.udp_listen_ready);
        let listeners = self.listeners.clone();
        for i in ready {
            let Some((port, sock)) = listeners.udp.get(i) else {
                continue;
            };
            loop {
                if self.dev.tx.is_full() {
                    self.udp_listen_ready.push(i); // drained later
                    break;
                }
                let (n, peer) = match sock.recv_from(&mut self.buf) {
                    Ok(got) => got,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                };
                let ip = peer.ip().to_canonical();
                let max_payload =
                    usize::from(self.cfg.mtu).saturating_sub(ip_header_len(ip) + UDP_HDR);
                if n > max_payload || self.guest_of(ip).is_none() {
                    self.stats.dropped += 1;
                    continue;
                }
                let src = SocketAddr::new(self.visible_source(ip), peer.port());
                let key = (*port, src);
                let now = Instant::now();
                let flow = InboundUdp { listener: i, peer };
                match self.inbound_udp.id(&key) {
                    Some(id) => {
                        if let Some(f) = self.inbound_udp.touch(id, now) {
                            *f = flow;
                        }
                    }
                    None => {
                        self.inbound_udp.insert(key, flow, now);
                    }
                }
                self.push_udp(src, *port, n);
            }
        }
    }

    /// Closes datagram flows silent for `udp-idle`.
    pub(super) fn sweep_dgrams(&mut self, now: Instant) {
        let idle = self.cfg.limits.udp_idle;
        let gone: Vec<DgramFlow> = (self.udp.expire(now, idle).into_iter())
            .chain(self.icmp.expire(now, idle))
            .map(|(_, flow)| flow)
            .collect();
        for flow in gone {
            self.unwatch(&flow.sock);
        }
        self.inbound_udp.expire(now, idle);
    }
}
