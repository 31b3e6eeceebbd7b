//! The engine: the [`Nat`] type, what comes in from the guest and goes out to it, and the
//! event dispatch that drives the protocol modules. See the [module documentation](super)
//! for how it works.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::phy;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, HardwareAddress, IpAddress, IpCidr,
    IpProtocol, Ipv4Packet,
};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};
use vmm_sys_util::timerfd::TimerFd;

use super::device::{
    OneFrame, PartialChecksum, Queues, ToGuest, finish_tcp_checksum, ipv4_frame, ipv6_frame,
};
use super::egress::Egress;
use super::flow::{FlowId, FlowKey, FlowTable};
use super::icmp::{Echo, RawFlows};
use super::inbound::Listeners;
use super::ipv6::{Ipv6Config, V6};
use super::limits::Limits;
use super::tcp::TcpFlows;
use super::udp::{Dgram, DgramFlow, InboundUdp};
use crate::dhcp::{DhcpServer, Lease};
use crate::mac::MacAddr;
use crate::poll::{Poller, Token};

/// The gateway's MAC (locally administered).
pub const GATEWAY_MAC: MacAddr = MacAddr::new([0x02, 0x56, 0x4d, 0x4d, 0x00, 0x01]);

/// How often idle flows are looked for.
const SWEEP: Duration = Duration::from_secs(1);

/// What woke the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Wake {
    /// A smoltcp or sweep deadline.
    Timer,
    /// Frames wait (for the guest, or for smoltcp).
    Ready,
    /// A TCP flow's host socket.
    Tcp(FlowId),
    /// A UDP flow's host socket.
    Udp(FlowId),
    /// An ICMP echo flow's host socket.
    Icmp(FlowId),
    /// A forwarded TCP port's listener, by index.
    ListenTcp(usize),
    /// A forwarded UDP port's socket, by index.
    ListenUdp(usize),
    /// The raw ICMP socket.
    RawIcmp,
    /// The raw ICMPv6 socket.
    RawIcmp6,
}

impl Token for Wake {
    /// The top byte says what, the rest is a flow's id or a listener's index.
    fn encode(self) -> u64 {
        let (kind, n) = match self {
            Wake::Timer => (0, 0),
            Wake::Ready => (1, 0),
            Wake::Tcp(id) => (2, id),
            Wake::Udp(id) => (3, id),
            Wake::Icmp(id) => (4, id),
            Wake::ListenTcp(i) => (5, i as u64),
            Wake::ListenUdp(i) => (6, i as u64),
            Wake::RawIcmp => (7, 0),
            Wake::RawIcmp6 => (8, 0),
        };
        kind << 56 | n
    }

    fn decode(data: u64) -> Option<Self> {
        let n = data & ((1 << 56) - 1);
        let index = || usize::try_from(n).ok();
        Some(match data >> 56 {
            0 => Wake::Timer,
            1 => Wake::Ready,
            2 => Wake::Tcp(n),
            3 => Wake::Udp(n),
            4 => Wake::Icmp(n),
            5 => Wake::ListenTcp(index()?),
            6 => Wake::ListenUdp(index()?),
            7 => Wake::RawIcmp,
            8 => Wake::RawIcmp6,
            _ => return None,
        })
    }
}

/// What the engine is set up with.
#[derive(Debug, Clone)]
pub struct NatConfig {
    /// The subnet's base address (`masquerade.cidr`).
    pub network: Ipv4Addr,
    /// Its prefix length (at most 30).
    pub prefix: u8,
    /// The guest's MAC.
    pub guest_mac: MacAddr,
    /// The guest's MTU (told by DHCP; the largest frame built for it).
    pub mtu: u16,
    /// The pod's DNS servers (from resolv.conf).
    pub dns: Vec<Ipv4Addr>,
    /// The pod's DNS search list.
    pub search: Vec<String>,
    /// The guest's host name.
    pub hostname: String,
    /// Bounds.
    pub limits: Limits,
    /// What the guest may not reach.
    pub egress: Egress,
    /// The guest's IPv6 side, when the pod has IPv6 to give it.
    pub ipv6: Option<Ipv6Config>,
}

impl NatConfig {
    /// The gateway's address: base + 1.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network).wrapping_add(1))
    }

    /// The guest's address: base + 2.
    pub fn guest(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network).wrapping_add(2))
    }
}

/// Counters, for logs and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NatStats {
    /// TCP flows now.
    pub tcp_flows: usize,
    /// Of those, connections peers opened to forwarded ports.
    pub inbound_tcp_flows: usize,
    /// Bytes of TCP buffer they hold.
    pub tcp_memory: usize,
    /// UDP flows now.
    pub udp_flows: usize,
    /// ICMP flows now.
    pub icmp_flows: usize,
    /// Guest frames dropped (malformed, not for us, over a limit).
    pub dropped: u64,
    /// TCP connections refused because the flow table was full.
    pub tcp_refused_full: u64,
    /// Frames for the guest dropped because `to-guest-frames` were already waiting.
    pub to_guest_dropped: u64,
    /// Connections and datagrams the egress policy refused.
    pub egress_denied: u64,
    /// ICMP errors about the guest's datagrams relayed to it.
    pub icmp_errors: u64,
}

/// The engine.
pub struct Nat {
    pub(super) cfg: NatConfig,
    pub(super) gateway: Ipv4Addr,
    pub(super) guest: Ipv4Addr,
    /// The IPv6 side, when there is one.
    pub(super) v6: Option<V6>,
    /// The pod's resolvers, both families: always reachable on port 53.
    pub(super) resolvers: Vec<IpAddr>,
    /// Where the gateway's port 53 goes, when the pod's resolver is on loopback.
    pub(super) dns_redirect: Option<SocketAddrV4>,
    dhcp: DhcpServer,
    pub(super) iface: Interface,
    pub(super) dev: Queues,
    pub(super) sockets: SocketSet<'static>,
    pub(super) poller: Poller<Wake>,
    timer: TimerFd,
    ready: EventFd,
    pub(super) tcp: TcpFlows,
    pub(super) udp: FlowTable<FlowKey, DgramFlow>,
    pub(super) icmp: FlowTable<FlowKey, DgramFlow>,
    /// ICMP echo flows on the raw socket, when that is how echo leaves.
    pub(super) raw: RawFlows,
    /// The raw ICMPv6 socket has packets (edge-triggered: kept until drained).
    pub(super) raw6_readable: bool,
    /// Unprivileged ICMP sockets were refused (and that was logged).
    pub(super) icmp_forbidden: bool,
    pub(super) listeners: Arc<Listeners>,
    /// Listeners with connections or datagrams waiting (edge-triggered: kept until drained).
    pub(super) tcp_listen_ready: Vec<usize>,
    pub(super) udp_listen_ready: Vec<usize>,
    pub(super) inbound_udp: FlowTable<FlowKey, InboundUdp>,
    start: Instant,
    next_sweep: Instant,
    pub(super) stats: NatStats,
    /// smoltcp took frames or reported a socket change since flows were last pumped: every
    /// flow may have something to move. Otherwise only those with host socket events do.
    smol_dirty: bool,
    /// Where datagrams from host sockets are read.
    pub(super) buf: Vec<u8>,
    /// Tests reach their own listeners on loopback; the guest never does.
    pub(super) loopback_ok: bool,
}

impl std::fmt::Debug for Nat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nat")
            .field("gateway", &self.gateway)
            .field("guest", &self.guest)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

pub(super) fn is_routable(dst: Ipv4Addr) -> bool {
    !(dst.is_loopback()
        || dst.is_unspecified()
        || dst.octets()[0] == 0
        || dst.is_multicast()
        || dst.is_broadcast())
}

impl Nat {
    /// An engine for `cfg`, forwarding what arrives on `listeners` to the guest.
    pub fn new(cfg: NatConfig, listeners: Arc<Listeners>) -> io::Result<Self> {
        let gateway = cfg.gateway();
        let guest = cfg.guest();
        let loopback_dns = cfg.dns.iter().copied().find(Ipv4Addr::is_loopback);
        let dns_redirect = loopback_dns.map(|a| SocketAddrV4::new(a, 53));
        let mut guest_dns: Vec<Ipv4Addr> = cfg
            .dns
            .iter()
            .copied()
            .filter(|a| !a.is_loopback())
            .collect();
        if loopback_dns.is_some() {
            guest_dns.insert(0, gateway);
        }
        let dhcp = DhcpServer::new(Lease {
            client: cfg.guest_mac,
            address: guest,
            prefix: cfg.prefix,
            router: Some(gateway),
            routes: vec![],
            dns: guest_dns,
            search: cfg.search.clone(),
            mtu: Some(cfg.mtu),
            hostname: cfg.hostname.clone(),
            server: gateway,
            server_mac: GATEWAY_MAC,
        });
        let mut dev = Queues {
            rx: VecDeque::new(),
            tx: ToGuest::new(cfg.limits.to_guest_frames),
            mtu: usize::from(cfg.mtu),
        };
        let start = Instant::now();
        let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(
            GATEWAY_MAC.octets(),
        )));
        config.random_seed = crate::random::u64();
        let mut iface = Interface::new(config, &mut dev, smoltcp::time::Instant::ZERO);
        let v6 = cfg.ipv6.as_ref().map(|c| V6::new(c, &cfg, start));
        let mut addrs = vec![IpCidr::new(IpAddress::Ipv4(gateway), cfg.prefix)];
        if let Some(v6) = &v6 {
            addrs.push(IpCidr::new(IpAddress::Ipv6(v6.gateway), v6.prefix));
            addrs.push(IpCidr::new(IpAddress::Ipv6(v6.link_local), 64));
        }
        let mut room = true;
        iface.update_ip_addrs(|list| {
            for a in addrs {
                room &= list.push(a).is_ok();
            }
        });
        if !room {
            return Err(io::Error::other("smoltcp address table full"));
        }
        iface.set_any_ip(true);
        let full = |_| io::Error::other("smoltcp route table full");
        iface
            .routes_mut()
            .add_default_ipv4_route(gateway)
            .map_err(full)?;
        if let Some(v6) = &v6 {
            iface
                .routes_mut()
                .add_default_ipv6_route(v6.gateway)
                .map_err(full)?;
        }
        let mut resolvers: Vec<IpAddr> = cfg.dns.iter().copied().map(IpAddr::V4).collect();
        if let Some(c) = &cfg.ipv6 {
            resolvers.extend(c.dns.iter().copied().map(IpAddr::V6));
        }
        let poller = Poller::new()?;
        let timer = TimerFd::new()?;
        let ready = EventFd::new(EFD_NONBLOCK)?;
        poller.add_readable(timer.as_raw_fd(), Wake::Timer)?;
        poller.add_readable(ready.as_raw_fd(), Wake::Ready)?;
        let listen = EventSet::IN | EventSet::EDGE_TRIGGERED;
        for (i, (_, l)) in listeners.tcp.iter().enumerate() {
            poller.add(l.as_raw_fd(), Wake::ListenTcp(i), listen)?;
        }
        for (i, (_, l)) in listeners.udp.iter().enumerate() {
            poller.add(l.as_raw_fd(), Wake::ListenUdp(i), listen)?;
        }
        if let Echo::Raw(raw) = &listeners.echo {
            poller.add(raw.v4.as_raw_fd(), Wake::RawIcmp, listen)?;
            if let Some(v6) = raw.v6.as_ref().filter(|_| cfg.ipv6.is_some()) {
                poller.add(v6.as_raw_fd(), Wake::RawIcmp6, listen)?;
            }
        }
        let limits = cfg.limits;
        let mut nat = Self {
            // Connections and datagrams that arrived before this boot's engine existed.
            tcp_listen_ready: (0..listeners.tcp.len()).collect(),
            udp_listen_ready: (0..listeners.udp.len()).collect(),
            listeners,
            inbound_udp: FlowTable::new(limits.udp_flows),
            gateway,
            guest,
            v6,
            resolvers,
            dns_redirect,
            dhcp,
            iface,
            dev,
            sockets: SocketSet::new(vec![]),
            poller,
            timer,
            ready,
            tcp: TcpFlows::new(limits.tcp_flows),
            udp: FlowTable::new(limits.udp_flows),
            icmp: FlowTable::new(limits.icmp_flows),
            raw: RawFlows::new(limits.icmp_flows),
            raw6_readable: false,
            icmp_forbidden: false,
            start,
            next_sweep: start + SWEEP,
            stats: NatStats::default(),
            smol_dirty: false,
            buf: vec![0u8; 65536],
            loopback_ok: false,
            cfg,
        };
        nat.teach_guest_mac();
        nat.teach_guest_mac6();
        nat.arm_timer(SWEEP);
        Ok(nat)
    }

    /// A descriptor that polls readable when [`Nat::process`] has work.
    pub fn poll_fd(&self) -> RawFd {
        self.poller.as_raw_fd()
    }

    /// The current counts.
    pub fn stats(&self) -> NatStats {
        let (tcp_flows, inbound_tcp_flows, tcp_memory) = self.tcp.counts();
        NatStats {
            tcp_flows,
            inbound_tcp_flows,
            tcp_memory,
            udp_flows: self.udp.len() + self.inbound_udp.len(),
            icmp_flows: self.icmp.len() + self.raw.len(),
            to_guest_dropped: self.dev.tx.dropped,
            ..self.stats
        }
    }

    /// Whether frames wait for the guest or for smoltcp.
    pub fn has_frames(&self) -> bool {
        !self.dev.tx.is_empty() || !self.dev.rx.is_empty()
    }

    /// The next frame for the guest, if one is waiting, with every checksum complete.
    pub fn to_guest(&mut self) -> Option<Vec<u8>> {
        let mut frame = self.next_for_guest()?;
        finish_tcp_checksum(&mut frame, false);
        Some(frame)
    }

    /// The next frame for the guest, for a guest that takes partial checksums
    /// (virtio-net's `GUEST_CSUM`): a TCP frame comes with only its pseudo-header's sum in
    /// the checksum field, and where the guest completes it. Summing every byte of every
    /// frame then happens once, in the guest, and only if it ever needs the sum.
    pub fn to_guest_partial(&mut self) -> Option<(Vec<u8>, Option<PartialChecksum>)> {
        let mut frame = self.next_for_guest()?;
        let partial = finish_tcp_checksum(&mut frame, true);
        Some((frame, partial))
    }

    fn next_for_guest(&mut self) -> Option<Vec<u8>> {
        let frame = self.dev.tx.pop();
        if !self.has_frames() {
            let _ = self.ready.read();
        }
        frame
    }

    /// Gives back the buffer of a frame [`Nat::to_guest`] returned, once its bytes are with
    /// the guest, so that the next frame reuses it.
    pub fn recycle(&mut self, frame: Vec<u8>) {
        self.dev.tx.recycle(frame);
    }

    /// Lets the guest reach loopback, for unit tests that run their peers there.
    #[cfg(test)]
    pub(crate) fn allow_loopback(&mut self) {
        self.loopback_ok = true;
    }

    fn now(&self) -> smoltcp::time::Instant {
        smoltcp::time::Instant::from_micros(
            i64::try_from(self.start.elapsed().as_micros()).unwrap_or(i64::MAX),
        )
    }

    pub(super) fn drop_frame(&mut self) {
        self.stats.dropped += 1;
    }

    fn signal(&self) {
        if self.has_frames() {
            let _ = self.ready.write(1);
        }
    }

    fn arm_timer(&mut self, after: Duration) {
        let after = after.max(Duration::from_micros(100));
        if let Err(e) = self.timer.reset(after, None) {
            log::warn!("masquerade: cannot arm the timer: {e}");
        }
    }

    // --- from the guest ------------------------------------------------------------------

    /// Takes one Ethernet frame the guest sent. Work it causes is done by the next
    /// [`Nat::process`].
    pub fn from_guest(&mut self, frame: &[u8]) {
        let Ok(eth) = EthernetFrame::new_checked(frame) else {
            return self.drop_frame();
        };
        match eth.ethertype() {
            EthernetProtocol::Arp => self.arp_from_guest(frame, eth.payload()),
            EthernetProtocol::Ipv4 => self.ipv4_from_guest(frame, eth.payload()),
            EthernetProtocol::Ipv6 => self.ipv6_from_guest(frame, eth.payload()),
            _ => self.drop_frame(),
        }
        self.signal();
    }

    fn ipv4_from_guest(&mut self, frame: &[u8], payload: &[u8]) {
        if DhcpServer::might_be_dhcp(frame) {
            if let Some(reply) = self.dhcp.handle(frame) {
                self.dev.tx.push(reply);
            }
            return;
        }
        let Ok(ip) = Ipv4Packet::new_checked(payload) else {
            return self.drop_frame();
        };
        let dst = ip.dst_addr();
        if ip.src_addr() != self.guest
            || ip.more_frags()
            || ip.frag_offset() != 0
            || !(is_routable(dst) || (self.loopback_ok && dst.is_loopback()))
        {
            return self.drop_frame();
        }
        match ip.next_header() {
            IpProtocol::Tcp => self.tcp_from_guest(frame, IpAddr::V4(dst), ip.payload()),
            IpProtocol::Udp => self.udp_from_guest(IpAddr::V4(dst), ip.hop_limit(), ip.payload()),
            IpProtocol::Icmp => self.icmp_from_guest(dst, ip.hop_limit(), ip.payload()),
            _ => self.drop_frame(),
        }
    }

    /// Has smoltcp take `frame` now, without copying it; its answers queue for the guest.
    pub(super) fn ingest(&mut self, frame: &[u8]) {
        let now = self.now();
        let mut one = OneFrame {
            frame: Some(frame),
            caps: phy::Device::capabilities(&self.dev),
            tx: &mut self.dev.tx,
        };
        self.iface
            .poll_ingress_single(now, &mut one, &mut self.sockets);
        self.smol_dirty = true;
    }

    /// Has smoltcp take a frame the engine made or held (a SYN, an ARP reply) now.
    pub(super) fn feed(&mut self, frame: Vec<u8>) {
        self.dev.rx.push_back(frame);
        self.poll_iface();
    }

    pub(super) fn poll_iface(&mut self) {
        let now = self.now();
        let result = self.iface.poll(now, &mut self.dev, &mut self.sockets);
        self.smol_dirty |= result == smoltcp::iface::PollResult::SocketStateChanged;
    }

    // --- to the guest --------------------------------------------------------------------

    /// Queues an IP packet from `src` to the guest's address of its family with `payload`
    /// (already complete), or counts it dropped when `to-guest-frames` wait already (or,
    /// for IPv6, when the guest has none).
    pub(super) fn push_ip(&mut self, src: IpAddr, protocol: IpProtocol, payload: &[u8]) {
        if self.dev.tx.is_full() {
            self.dev.tx.dropped += 1;
            return;
        }
        let frame = match src {
            IpAddr::V4(src) => ipv4_frame(
                (GATEWAY_MAC, src),
                (self.cfg.guest_mac, self.guest),
                protocol,
                payload,
            ),
            IpAddr::V6(src) => {
                let Some(v6) = &self.v6 else {
                    return self.drop_frame();
                };
                ipv6_frame(
                    (GATEWAY_MAC, src),
                    (self.cfg.guest_mac, v6.guest),
                    protocol,
                    payload,
                    64,
                )
            }
        };
        self.dev.tx.push(frame);
    }

    /// The guest's address of `peer`'s family.
    pub(super) fn guest_of(&self, peer: IpAddr) -> Option<IpAddr> {
        match peer {
            IpAddr::V4(_) => Some(IpAddr::V4(self.guest)),
            IpAddr::V6(_) => self.v6.as_ref().map(|v6| IpAddr::V6(v6.guest)),
        }
    }

    /// Whether `addr` is one of the gateway's own addresses.
    pub(super) fn is_gateway(&self, addr: IpAddr) -> bool {
        match addr {
            IpAddr::V4(a) => a == self.gateway,
            IpAddr::V6(a) => self.v6.as_ref().is_some_and(|v6| v6.is_gateway(a)),
        }
    }

    /// Where the gateway's DNS port goes for a guest that sent to `dst` port 53: the pod's
    /// loopback resolver of that family, if it has one.
    pub(super) fn dns_redirect(&self, dst: IpAddr) -> Option<SocketAddr> {
        match dst {
            IpAddr::V4(_) => self.dns_redirect.map(SocketAddr::V4),
            IpAddr::V6(_) => self.v6.as_ref()?.dns_redirect.map(SocketAddr::V6),
        }
    }

    /// The address a peer appears from in the guest: its own, unless the guest could not
    /// answer it (loopback, link-local, the NAT subnet), then the gateway's.
    pub(super) fn visible_source(&self, peer: IpAddr) -> IpAddr {
        match peer {
            IpAddr::V4(peer) => {
                let subnet = |a: Ipv4Addr| {
                    let mask = u32::MAX
                        .checked_shl(32 - u32::from(self.cfg.prefix))
                        .unwrap_or(0);
                    u32::from(a) & mask == u32::from(self.cfg.network) & mask
                };
                IpAddr::V4(if is_routable(peer) && !subnet(peer) {
                    peer
                } else {
                    self.gateway
                })
            }
            IpAddr::V6(peer) => match &self.v6 {
                Some(v6) => IpAddr::V6(v6.visible_source(peer)),
                None => IpAddr::V6(peer),
            },
        }
    }

    // --- the loop ------------------------------------------------------------------------

    /// Handles host socket events and timers, runs smoltcp, moves data between the two.
    pub fn process(&mut self) {
        let mut dgrams = self.dispatch_events();
        self.accept_inbound();
        self.poll_iface();
        let now = Instant::now();
        // Pumping walks the flows: all of them only when smoltcp may have changed any, or
        // once a sweep (timers that change nothing visible, such as TIME-WAIT ending).
        let all = std::mem::take(&mut self.smol_dirty) || now >= self.next_sweep;
        for id in self.tcp_to_pump(all) {
            self.pump(id);
        }
        self.poll_iface();
        // Datagram flows left readable when the guest's queue was full, and new ones.
        dgrams.extend(self.readable_dgrams());
        dgrams.sort_unstable_by_key(|&(kind, id)| (kind == Dgram::Icmp, id));
        dgrams.dedup();
        for (kind, id) in dgrams {
            self.read_dgram(kind, id);
        }
        self.read_inbound_udp();
        self.read_raw_echo();
        self.read_raw_echo6();
        if now >= self.next_sweep {
            self.teach_guest_mac();
            self.teach_guest_mac6();
            self.advertise_router(now);
            self.sweep_tcp(now);
            self.sweep_dgrams(now);
            self.raw.expire(now, self.cfg.limits.udp_idle);
            self.next_sweep = now + SWEEP;
        }
        let smol = self
            .iface
            .poll_delay(self.now(), &self.sockets)
            .map(|d| Duration::from_micros(d.total_micros()));
        let until_sweep = self.next_sweep.saturating_duration_since(now);
        self.arm_timer(smol.map_or(until_sweep, |d| d.min(until_sweep)));
        self.signal();
        if !self.has_frames() {
            let _ = self.ready.read();
        }
        if (self.raw.readable || self.raw6_readable) && !self.dev.tx.is_full() {
            // The raw socket's round ended with packets left: another round soon.
            let _ = self.ready.write(1);
        }
    }

    /// Takes every pending host socket and timer event: TCP flows and listeners are marked,
    /// datagram flows that became readable returned.
    fn dispatch_events(&mut self) -> Vec<(Dgram, FlowId)> {
        let mut dgrams = Vec::new();
        loop {
            let fired = match self.poller.wait(Some(Duration::ZERO)) {
                Ok(fired) => fired,
                Err(e) => {
                    log::warn!("masquerade: epoll: {e}");
                    return dgrams;
                }
            };
            for (wake, events) in fired.iter() {
                match wake {
                    Wake::Timer => {
                        let _ = self.timer.wait();
                    }
                    Wake::Ready => {}
                    Wake::Tcp(id) => self.tcp_event(id, events),
                    Wake::ListenTcp(i) => self.tcp_listen_ready.push(i),
                    Wake::ListenUdp(i) => self.udp_listen_ready.push(i),
                    Wake::Udp(id) if self.dgram_event(Dgram::Udp, id, events) => {
                        dgrams.push((Dgram::Udp, id));
                    }
                    Wake::Icmp(id) if self.dgram_event(Dgram::Icmp, id, events) => {
                        dgrams.push((Dgram::Icmp, id));
                    }
                    Wake::RawIcmp => self.raw.readable = true,
                    Wake::RawIcmp6 => self.raw6_readable = true,
                    Wake::Udp(_) | Wake::Icmp(_) => {}
                }
            }
            if !fired.is_full() {
                return dgrams;
            }
        }
    }
}
