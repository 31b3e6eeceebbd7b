//! The NAT engine: frames in from the guest, frames out to it, host sockets in between.
//! See the [module documentation](super) for how it works.

use hashlink::LinkedHashMap;

use super::egress::Egress;
use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddrV4, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, HardwareAddress, Icmpv4Message, Icmpv4Packet, IpAddress, IpCidr,
    IpListenEndpoint, IpProtocol, Ipv4Packet, Ipv4Repr, TcpPacket, UdpPacket, UdpRepr,
};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};
use vmm_sys_util::timerfd::TimerFd;

use super::inbound::Listeners;
use crate::dhcp::{DhcpServer, Lease};
use crate::mac::MacAddr;

/// The gateway's MAC (locally administered).
pub const GATEWAY_MAC: MacAddr = MacAddr::new([0x02, 0x56, 0x4d, 0x4d, 0x00, 0x01]);

const ETH_HDR: usize = 14;
const IP_HDR: usize = 20;
const UDP_HDR: usize = 8;
const ICMP_HDR: usize = 8;
/// Epoll events handled per wait.
const EVENTS: usize = 64;
/// How often idle flows are looked for.
const SWEEP: Duration = Duration::from_secs(1);

/// The buffer per direction of a TCP flow beyond the budget for [`Limits::tcp_buffer`].
pub const SMALL_TCP_BUFFER: usize = 64 << 10;

/// Bounds on what the guest can make the engine hold. See the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// TCP flows at once (connecting or spliced).
    pub tcp_flows: usize,
    /// UDP flows at once.
    pub udp_flows: usize,
    /// ICMP echo flows at once.
    pub icmp_flows: usize,
    /// Buffer per direction of a TCP flow while the budget allows, bytes.
    pub tcp_buffer: usize,
    /// The budget: all TCP flows' buffers together, bytes. A flow that would exceed it
    /// with `tcp_buffer` gets [`SMALL_TCP_BUFFER`]; one that would exceed it even so is
    /// refused (RST).
    pub tcp_memory: usize,
    /// Frames waiting for the guest.
    pub to_guest_frames: usize,
    /// A UDP or ICMP flow without traffic for this long is closed.
    pub udp_idle: Duration,
    /// A TCP flow in which no byte moved for this long is reset.
    pub tcp_idle: Duration,
    /// The same for a connection a peer opened to a forwarded port: shorter, since peers
    /// are many and their idle connections would hold the inbound share.
    pub inbound_tcp_idle: Duration,
    /// A host connection not established within this is given up (RST to the guest).
    pub connect_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            tcp_flows: 1024,
            udp_flows: 1024,
            icmp_flows: 64,
            tcp_buffer: 1 << 20,
            tcp_memory: 128 << 20,
            to_guest_frames: 256,
            udp_idle: Duration::from_secs(60),
            tcp_idle: Duration::from_secs(24 * 3600),
            inbound_tcp_idle: Duration::from_secs(3600),
            connect_timeout: Duration::from_secs(30),
        }
    }
}

impl Limits {
    /// The names [`Limits::set`] takes, with what each means.
    pub const KEYS: &'static [(&'static str, &'static str)] = &[
        ("tcp-flows", "TCP flows at once (default 1024)"),
        (
            "udp-flows",
            "UDP flows at once, inbound and outbound (default 1024)",
        ),
        ("icmp-flows", "ICMP echo flows at once (default 64)"),
        (
            "tcp-buffer",
            "buffer per direction per TCP flow while the budget allows, e.g. 256K (default 1M)",
        ),
        (
            "tcp-memory",
            "all TCP flows' buffers together, e.g. 64M (default 128M)",
        ),
        (
            "to-guest-frames",
            "frames queued for the guest (default 256)",
        ),
        (
            "udp-idle",
            "UDP and ICMP idle timeout, e.g. 60s (default 60s)",
        ),
        ("tcp-idle", "TCP idle timeout, e.g. 24h (default 24h)"),
        (
            "inbound-tcp-idle",
            "idle timeout of peers' connections to forwarded ports (default 1h)",
        ),
        (
            "connect-timeout",
            "outbound TCP connect timeout (default 30s)",
        ),
    ];

    /// Sets limit `key` (one of [`Limits::KEYS`]) from its text: a count, a size with an
    /// optional K/M suffix, or a duration with a unit (ms, s, m, h).
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        let count = || -> Result<usize, String> {
            let n: usize = value
                .parse()
                .map_err(|_| format!("{key}: {value:?} is not a number"))?;
            if n == 0 {
                return Err(format!("{key}: must be at least 1"));
            }
            Ok(n)
        };
        let size = || -> Result<usize, String> {
            let (digits, shift) = match value.strip_suffix(['K', 'k']) {
                Some(d) => (d, 10),
                None => match value.strip_suffix(['M', 'm']) {
                    Some(d) => (d, 20),
                    None => (value, 0),
                },
            };
            let n: usize = digits
                .parse()
                .map_err(|_| format!("{key}: {value:?} is not a size such as 256K"))?;
            let n = n
                .checked_shl(shift)
                .filter(|n| (1024..=4 << 30).contains(n))
                .ok_or_else(|| format!("{key}: {value:?} is not between 1K and 4096M"))?;
            Ok(n)
        };
        let duration = || -> Result<Duration, String> {
            let split = value
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(value.len());
            let (n, unit) = value.split_at(split);
            let n: u64 = n
                .parse()
                .map_err(|_| format!("{key}: {value:?} is not a duration such as 30s"))?;
            let d = match unit {
                "ms" => Duration::from_millis(n),
                "s" => Duration::from_secs(n),
                "m" => Duration::from_secs(n.saturating_mul(60)),
                "h" => Duration::from_secs(n.saturating_mul(3600)),
                _ => return Err(format!("{key}: {value:?} needs a unit: ms, s, m or h")),
            };
            if d.is_zero() {
                return Err(format!("{key}: must be longer than 0"));
            }
            Ok(d)
        };
        match key {
            "tcp-flows" => self.tcp_flows = count()?,
            "udp-flows" => self.udp_flows = count()?,
            "icmp-flows" => self.icmp_flows = count()?,
            "tcp-buffer" => self.tcp_buffer = size()?.max(SMALL_TCP_BUFFER),
            "tcp-memory" => self.tcp_memory = size()?,
            "to-guest-frames" => self.to_guest_frames = count()?,
            "udp-idle" => self.udp_idle = duration()?,
            "tcp-idle" => self.tcp_idle = duration()?,
            "inbound-tcp-idle" => self.inbound_tcp_idle = duration()?,
            "connect-timeout" => self.connect_timeout = duration()?,
            _ => {
                let keys: Vec<&str> = Self::KEYS.iter().map(|(k, _)| *k).collect();
                return Err(format!(
                    "unknown limit {key:?} (one of {})",
                    keys.join(", ")
                ));
            }
        }
        Ok(())
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
}

// --- the smoltcp device: two frame queues -----------------------------------------------

struct Queues {
    /// Frames from the guest for smoltcp.
    rx: VecDeque<Vec<u8>>,
    /// Frames for the guest.
    tx: ToGuest,
    mtu: usize,
}

/// The frames waiting for the guest: never more than `limit` (`to-guest-frames`), whichever
/// path made them (smoltcp's answers and sends, DHCP, the gateway's echo replies, UDP and
/// ICMP from the host). A guest that posts no receive buffers cannot grow it: what would go
/// over the limit is dropped and counted, as a full link would drop it.
struct ToGuest {
    frames: VecDeque<Vec<u8>>,
    limit: usize,
    dropped: u64,
    /// Where smoltcp writes a frame that is then dropped (its token must be consumed).
    scratch: Vec<u8>,
}

impl ToGuest {
    fn new(limit: usize) -> Self {
        Self {
            frames: VecDeque::new(),
            limit: limit.max(1),
            dropped: 0,
            scratch: Vec::new(),
        }
    }

    fn is_full(&self) -> bool {
        self.frames.len() >= self.limit
    }

    fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Queues `frame`, or drops it when the queue is full.
    fn push(&mut self, frame: Vec<u8>) {
        if self.is_full() {
            self.dropped += 1;
        } else {
            self.frames.push_back(frame);
        }
    }

    fn pop(&mut self) -> Option<Vec<u8>> {
        self.frames.pop_front()
    }
}

struct RxToken(Vec<u8>);
struct TxToken<'a>(&'a mut ToGuest);

impl phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let q = self.0;
        if q.is_full() {
            // An answer to a frame taken in (an ACK, an RST, ARP) when the guest reads
            // nothing: smoltcp writes it, the guest never gets it.
            q.scratch.clear();
            q.scratch.resize(len, 0);
            q.dropped += 1;
            return f(&mut q.scratch);
        }
        let mut frame = vec![0u8; len];
        let r = f(&mut frame);
        q.frames.push_back(frame);
        r
    }
}

impl phy::Device for Queues {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(
        &mut self,
        _: smoltcp::time::Instant,
    ) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let frame = self.rx.pop_front()?;
        Some((RxToken(frame), TxToken(&mut self.tx)))
    }

    fn transmit(&mut self, _: smoltcp::time::Instant) -> Option<Self::TxToken<'_>> {
        (!self.tx.is_full()).then_some(TxToken(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = self.mtu + ETH_HDR;
        // The guest's checksums may be partial (offloaded): not verified. Computed for it.
        let mut csum = ChecksumCapabilities::ignored();
        csum.ipv4 = Checksum::Tx;
        csum.tcp = Checksum::Tx;
        caps.checksum = csum;
        caps
    }
}

/// A device holding one borrowed frame from the guest, for smoltcp to take in place;
/// what smoltcp answers goes to the guest's queue.
struct OneFrame<'f, 'q> {
    frame: Option<&'f [u8]>,
    tx: &'q mut ToGuest,
    caps: DeviceCapabilities,
}

struct BorrowedRx<'f>(&'f [u8]);

impl phy::RxToken for BorrowedRx<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0)
    }
}

impl phy::Device for OneFrame<'_, '_> {
    type RxToken<'a>
        = BorrowedRx<'a>
    where
        Self: 'a;
    type TxToken<'a>
        = TxToken<'a>
    where
        Self: 'a;

    fn receive(
        &mut self,
        _: smoltcp::time::Instant,
    ) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let frame = self.frame.take()?;
        Some((BorrowedRx(frame), TxToken(self.tx)))
    }

    fn transmit(&mut self, _: smoltcp::time::Instant) -> Option<Self::TxToken<'_>> {
        (!self.tx.is_full()).then_some(TxToken(self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        self.caps.clone()
    }
}

// --- flows -------------------------------------------------------------------------------

/// Epoll token kinds (top byte).
const KIND_TCP: u64 = 1 << 56;
const KIND_UDP: u64 = 2 << 56;
const KIND_ICMP: u64 = 3 << 56;
const TOKEN_TIMER: u64 = 4 << 56;
const TOKEN_READY: u64 = 5 << 56;
const KIND_LISTEN_TCP: u64 = 6 << 56;
const KIND_LISTEN_UDP: u64 = 7 << 56;
const KIND_MASK: u64 = 0xff << 56;

enum TcpState {
    /// The host connect is under way; the guest's SYN waits.
    Connecting { syn: Vec<u8>, deadline: Instant },
    /// The guest's side is a smoltcp socket.
    Spliced {
        handle: SocketHandle,
        readable: bool,
        writable: bool,
        host_eof: bool,
        host_shut: bool,
    },
}

/// A flow table in order of use, least recent first. Its keys are chosen by the guest and
/// by peers, so it hashes with std's keyed SipHash rather than a fast unkeyed-strength hash.
type Lru<K, V> = LinkedHashMap<K, V, std::hash::RandomState>;

struct TcpFlow {
    key: (u16, SocketAddrV4),
    /// A peer opened it to a forwarded port (else the guest opened it).
    inbound: bool,
    /// Bytes of the TCP memory budget it holds: its socket's buffers (both directions), or
    /// while connecting the SYN it holds.
    buffer: usize,
    host: TcpStream,
    state: TcpState,
    last: Instant,
}

/// A peer that sent a datagram to a forwarded UDP port; the guest's replies go back
/// through that port's socket.
struct InboundUdp {
    listener: usize,
    peer: SocketAddrV4,
    last: Instant,
}

struct DgramFlow {
    key: (u16, SocketAddrV4),
    sock: UdpSocket,
    readable: bool,
    last: Instant,
}

/// The engine.
pub struct Nat {
    cfg: NatConfig,
    gateway: Ipv4Addr,
    guest: Ipv4Addr,
    /// Where the gateway's port 53 goes, when the pod's resolver is on loopback.
    dns_redirect: Option<SocketAddrV4>,
    dhcp: DhcpServer,
    iface: Interface,
    dev: Queues,
    sockets: SocketSet<'static>,
    epoll: Epoll,
    timer: TimerFd,
    ready: EventFd,
    next_id: u64,
    tcp: HashMap<u64, TcpFlow>,
    tcp_keys: HashMap<(u16, SocketAddrV4), u64>,
    udp: Lru<u64, DgramFlow>,
    udp_keys: HashMap<(u16, SocketAddrV4), u64>,
    icmp: Lru<u64, DgramFlow>,
    icmp_keys: HashMap<(u16, SocketAddrV4), u64>,
    icmp_forbidden: bool,
    listeners: Arc<Listeners>,
    /// Listeners with connections or datagrams waiting (edge-triggered: kept until drained).
    tcp_listen_ready: Vec<usize>,
    udp_listen_ready: Vec<usize>,
    inbound_udp: Lru<(u16, SocketAddrV4), InboundUdp>,
    start: Instant,
    next_sweep: Instant,
    stats: NatStats,
    /// Bytes of the TCP memory budget that flows hold.
    tcp_memory: usize,
    /// Of those, inbound flows': at most half the budget, so that peers cannot starve the
    /// guest's own connections.
    inbound_tcp_memory: usize,
    /// Inbound TCP flows: at most half the flow table, for the same reason.
    inbound_tcp: usize,
    /// smoltcp took frames or reported a socket change since flows were last pumped: every
    /// flow may have something to move. Otherwise only those with host socket events do.
    smol_dirty: bool,
    /// TCP flows with host socket events since the last pump.
    touched: Vec<u64>,
    buf: Vec<u8>,
    /// Tests reach their own listeners on loopback; the guest never does.
    loopback_ok: bool,
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

fn is_routable(dst: Ipv4Addr) -> bool {
    !(dst.is_loopback()
        || dst.is_unspecified()
        || dst.octets()[0] == 0
        || dst.is_multicast()
        || dst.is_broadcast())
}

pub(crate) fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::sa_family_t::try_from(libc::AF_INET).unwrap_or_default(),
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// The size of `T` as a socket option or address length.
pub(crate) fn socklen<T>() -> libc::socklen_t {
    libc::socklen_t::try_from(std::mem::size_of::<T>()).unwrap_or(libc::socklen_t::MAX)
}

/// A new non-blocking IPv4 socket of `kind` and `protocol`.
pub(crate) fn socket(kind: libc::c_int, protocol: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the result is checked before use.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            kind | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            protocol,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A non-blocking socket of `kind` and `protocol`, `connect`ed (or connecting) to `dst`.
fn connect(kind: libc::c_int, protocol: libc::c_int, dst: SocketAddrV4) -> io::Result<OwnedFd> {
    let fd = socket(kind, protocol)?;
    let addr = sockaddr(dst);
    // SAFETY: `addr` is a valid sockaddr_in of the length given, alive for the call.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            std::ptr::from_ref(&addr).cast(),
            socklen::<libc::sockaddr_in>(),
        )
    };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
    }
    Ok(fd)
}

/// The pending error of a socket (`SO_ERROR`), which clears it.
fn socket_error(fd: RawFd) -> io::Result<()> {
    let mut err: libc::c_int = 0;
    let mut len = socklen::<libc::c_int>();
    // SAFETY: `err` and `len` are valid for writes of the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            std::ptr::from_mut(&mut err).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    if err != 0 {
        return Err(io::Error::from_raw_os_error(err));
    }
    Ok(())
}

/// Makes closing `fd` send an RST rather than a FIN.
pub(crate) fn set_linger_zero(fd: RawFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: `linger` is a valid struct of the size given; failure only loses the RST.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            std::ptr::from_ref(&linger).cast(),
            socklen::<libc::linger>(),
        );
    }
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
        config.random_seed = random_seed();
        let mut iface = Interface::new(config, &mut dev, smoltcp::time::Instant::ZERO);
        iface.update_ip_addrs(|addrs| {
            let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(gateway), cfg.prefix));
        });
        iface.set_any_ip(true);
        iface
            .routes_mut()
            .add_default_ipv4_route(gateway)
            .map_err(|_| io::Error::other("smoltcp route table full"))?;
        let epoll = Epoll::new()?;
        let timer = TimerFd::new()?;
        let ready = EventFd::new(EFD_NONBLOCK)?;
        epoll.ctl(
            ControlOperation::Add,
            timer.as_raw_fd(),
            EpollEvent::new(EventSet::IN, TOKEN_TIMER),
        )?;
        epoll.ctl(
            ControlOperation::Add,
            ready.as_raw_fd(),
            EpollEvent::new(EventSet::IN, TOKEN_READY),
        )?;
        let listen = EventSet::IN | EventSet::EDGE_TRIGGERED;
        for (i, (_, l)) in listeners.tcp.iter().enumerate() {
            epoll.ctl(
                ControlOperation::Add,
                l.as_raw_fd(),
                EpollEvent::new(listen, KIND_LISTEN_TCP | i as u64),
            )?;
        }
        for (i, (_, l)) in listeners.udp.iter().enumerate() {
            epoll.ctl(
                ControlOperation::Add,
                l.as_raw_fd(),
                EpollEvent::new(listen, KIND_LISTEN_UDP | i as u64),
            )?;
        }
        let mut nat = Self {
            // Connections and datagrams that arrived before this boot's engine existed.
            tcp_listen_ready: (0..listeners.tcp.len()).collect(),
            udp_listen_ready: (0..listeners.udp.len()).collect(),
            listeners,
            inbound_udp: Lru::default(),
            gateway,
            guest,
            dns_redirect,
            dhcp,
            iface,
            dev,
            sockets: SocketSet::new(vec![]),
            epoll,
            timer,
            ready,
            next_id: 0,
            tcp: HashMap::new(),
            tcp_keys: HashMap::new(),
            udp: Lru::default(),
            udp_keys: HashMap::new(),
            icmp: Lru::default(),
            icmp_keys: HashMap::new(),
            icmp_forbidden: false,
            start,
            next_sweep: start + SWEEP,
            stats: NatStats::default(),
            tcp_memory: 0,
            inbound_tcp_memory: 0,
            inbound_tcp: 0,
            smol_dirty: false,
            touched: Vec::new(),
            buf: vec![0u8; 65536],
            loopback_ok: false,
            cfg,
        };
        nat.teach_guest_mac();
        nat.arm_timer(SWEEP);
        Ok(nat)
    }

    /// A descriptor that polls readable when [`Nat::process`] has work.
    pub fn poll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// The current counts.
    pub fn stats(&self) -> NatStats {
        NatStats {
            tcp_flows: self.tcp.len(),
            inbound_tcp_flows: self.inbound_tcp,
            tcp_memory: self.tcp_memory,
            udp_flows: self.udp.len() + self.inbound_udp.len(),
            icmp_flows: self.icmp.len(),
            to_guest_dropped: self.dev.tx.dropped,
            ..self.stats
        }
    }

    /// Whether frames wait for the guest or for smoltcp.
    pub fn has_frames(&self) -> bool {
        !self.dev.tx.is_empty() || !self.dev.rx.is_empty()
    }

    /// The next frame for the guest, if one is waiting.
    pub fn to_guest(&mut self) -> Option<Vec<u8>> {
        let frame = self.dev.tx.pop();
        if self.dev.tx.is_empty() && self.dev.rx.is_empty() {
            let _ = self.ready.read();
        }
        frame
    }

    fn now(&self) -> smoltcp::time::Instant {
        smoltcp::time::Instant::from_micros(
            i64::try_from(self.start.elapsed().as_micros()).unwrap_or(i64::MAX),
        )
    }

    fn drop_frame(&mut self) {
        self.stats.dropped += 1;
    }

    fn token(&mut self, kind: u64) -> u64 {
        self.next_id = (self.next_id + 1) & !KIND_MASK;
        kind | self.next_id
    }

    fn signal(&self) {
        if !self.dev.tx.is_empty() || !self.dev.rx.is_empty() {
            let _ = self.ready.write(1);
        }
    }

    fn arm_timer(&mut self, after: Duration) {
        let after = after.max(Duration::from_micros(100));
        if let Err(e) = self.timer.reset(after, None) {
            log::warn!("masquerade: cannot arm the timer: {e}");
        }
    }

    /// Tells smoltcp the guest's MAC with an ARP reply "from" the guest, so that it never
    /// has to ask (the guest's address and MAC are known). Repeated every sweep, before
    /// smoltcp's neighbour cache would expire the entry.
    fn teach_guest_mac(&mut self) {
        let repr = ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Reply,
            source_hardware_addr: EthernetAddress(self.cfg.guest_mac.octets()),
            source_protocol_addr: self.guest,
            target_hardware_addr: EthernetAddress(GATEWAY_MAC.octets()),
            target_protocol_addr: self.gateway,
        };
        let mut frame = vec![0u8; ETH_HDR + repr.buffer_len()];
        EthernetRepr {
            src_addr: EthernetAddress(self.cfg.guest_mac.octets()),
            dst_addr: EthernetAddress(GATEWAY_MAC.octets()),
            ethertype: EthernetProtocol::Arp,
        }
        .emit(&mut EthernetFrame::new_unchecked(&mut frame[..]));
        repr.emit(&mut ArpPacket::new_unchecked(&mut frame[ETH_HDR..]));
        self.dev.rx.push_back(frame);
        self.poll_iface();
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
            _ => self.drop_frame(),
        }
        self.signal();
    }

    fn arp_from_guest(&mut self, frame: &[u8], payload: &[u8]) {
        let Ok(repr) = ArpPacket::new_checked(payload).and_then(|p| ArpRepr::parse(&p)) else {
            return self.drop_frame();
        };
        let ArpRepr::EthernetIpv4 {
            operation,
            target_protocol_addr,
            ..
        } = repr
        else {
            return self.drop_frame();
        };
        // Only ARP about the gateway reaches smoltcp (see the module documentation).
        match operation {
            ArpOperation::Request if target_protocol_addr == self.gateway => {}
            ArpOperation::Reply if target_protocol_addr == self.gateway => {}
            _ => return self.drop_frame(),
        }
        self.ingest(frame);
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
            IpProtocol::Tcp => self.tcp_from_guest(frame, dst, ip.payload()),
            IpProtocol::Udp => self.udp_from_guest(dst, ip.payload()),
            IpProtocol::Icmp => self.icmp_from_guest(frame, dst, ip.payload()),
            _ => self.drop_frame(),
        }
    }

    fn tcp_from_guest(&mut self, frame: &[u8], dst: Ipv4Addr, segment: &[u8]) {
        let Ok(tcp) = TcpPacket::new_checked(segment) else {
            return self.drop_frame();
        };
        let key = (tcp.src_port(), SocketAddrV4::new(dst, tcp.dst_port()));
        if !tcp.syn() || tcp.ack() || self.tcp_keys.contains_key(&key) {
            // Part of a flow (a retransmitted SYN while connecting is dropped: the
            // first one is held) or stray: smoltcp finds its socket or answers RST.
            if let Some(id) = self.tcp_keys.get(&key)
                && matches!(self.tcp[id].state, TcpState::Connecting { .. })
            {
                return;
            }
            self.ingest(frame);
            return;
        }
        let target = if dst == self.gateway {
            match self.dns_redirect {
                Some(resolver) if key.1.port() == 53 => Some(resolver),
                _ => None,
            }
        } else if self.cfg.egress.allows(key.1, &self.cfg.dns) {
            Some(key.1)
        } else {
            // Refused as a closed port would be: smoltcp answers RST.
            self.stats.egress_denied += 1;
            None
        };
        // The SYN is held until the host connect finishes, and counts against the TCP
        // memory budget meanwhile, as the flow's buffers will.
        let full = self.tcp.len() >= self.cfg.limits.tcp_flows
            || self.tcp_memory + frame.len() > self.cfg.limits.tcp_memory;
        if full && target.is_some() {
            self.stats.tcp_refused_full += 1;
        }
        let Some(target) = target.filter(|_| !full) else {
            // No listener: smoltcp answers the SYN with RST.
            self.ingest(frame);
            return;
        };
        let host = match connect(libc::SOCK_STREAM, 0, target) {
            Ok(fd) => TcpStream::from(fd),
            Err(e) => {
                log::debug!("masquerade: connect {target}: {e}");
                self.ingest(frame);
                return;
            }
        };
        let Some(id) = self.watch_tcp(&host) else {
            self.ingest(frame);
            return;
        };
        let now = Instant::now();
        self.tcp_keys.insert(key, id);
        self.tcp_memory += frame.len();
        self.tcp.insert(
            id,
            TcpFlow {
                key,
                inbound: false,
                buffer: frame.len(),
                host,
                state: TcpState::Connecting {
                    syn: frame.to_vec(),
                    deadline: now + self.cfg.limits.connect_timeout,
                },
                last: now,
            },
        );
    }

    fn udp_from_guest(&mut self, dst: Ipv4Addr, datagram: &[u8]) {
        let Ok(udp) = UdpPacket::new_checked(datagram) else {
            return self.drop_frame();
        };
        let key = (udp.src_port(), SocketAddrV4::new(dst, udp.dst_port()));
        if let Some(inbound) = self.inbound_udp.to_back(&key) {
            // A reply to a peer that wrote to a forwarded port: from that port.
            inbound.last = Instant::now();
            let (_, sock) = &self.listeners.udp[inbound.listener];
            if let Err(e) = sock.send_to(udp.payload(), inbound.peer) {
                log::debug!("masquerade: UDP reply to {}: {e}", inbound.peer);
            }
            return;
        }
        let target = if dst == self.gateway {
            match self.dns_redirect {
                Some(resolver) if key.1.port() == 53 => resolver,
                _ => return self.drop_frame(),
            }
        } else if self.cfg.egress.allows(key.1, &self.cfg.dns) {
            key.1
        } else {
            self.stats.egress_denied += 1;
            return self.drop_frame();
        };
        let payload = udp.payload();
        let id = match self.udp_keys.get(&key) {
            Some(id) => *id,
            None => match self.open_dgram(KIND_UDP, key, target) {
                Some(id) => id,
                None => return self.drop_frame(),
            },
        };
        let Some(flow) = self.udp.to_back(&id) else {
            return;
        };
        flow.last = Instant::now();
        if let Err(e) = flow.sock.send(payload) {
            log::debug!("masquerade: UDP to {target}: {e}");
        }
    }

    fn icmp_from_guest(&mut self, frame: &[u8], dst: Ipv4Addr, message: &[u8]) {
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
            let mut packet = Icmpv4Packet::new_unchecked(&mut reply[..]);
            packet.fill_checksum();
            let _ = frame;
            self.push_ip(self.gateway, IpProtocol::Icmp, &reply);
            return;
        }
        let key = (icmp.echo_ident(), SocketAddrV4::new(dst, 0));
        if !self.cfg.egress.allows(key.1, &[]) {
            self.stats.egress_denied += 1;
            return self.drop_frame();
        }
        let id = match self.icmp_keys.get(&key) {
            Some(id) => *id,
            None => match self.open_dgram(KIND_ICMP, key, key.1) {
                Some(id) => id,
                None => return self.drop_frame(),
            },
        };
        let Some(flow) = self.icmp.to_back(&id) else {
            return;
        };
        flow.last = Instant::now();
        // The kernel sets the identifier and checksum.
        if let Err(e) = flow.sock.send(message) {
            log::debug!("masquerade: ICMP echo to {dst}: {e}");
        }
    }

    /// Opens a UDP or ICMP flow, evicting the least recently used one when full.
    fn open_dgram(
        &mut self,
        kind: u64,
        key: (u16, SocketAddrV4),
        target: SocketAddrV4,
    ) -> Option<u64> {
        let (limit, protocol) = if kind == KIND_UDP {
            (self.cfg.limits.udp_flows, 0)
        } else {
            (self.cfg.limits.icmp_flows, libc::IPPROTO_ICMP)
        };
        let table = if kind == KIND_UDP {
            &self.udp
        } else {
            &self.icmp
        };
        // The table is kept in order of use, least recent first: eviction is O(1).
        if table.len() >= limit {
            let oldest = table.front().map(|(id, _)| *id)?;
            self.close_dgram(oldest);
        }
        let sock = match connect(libc::SOCK_DGRAM, protocol, target) {
            Ok(fd) => UdpSocket::from(fd),
            Err(e) => {
                if kind == KIND_ICMP && matches!(e.raw_os_error(), Some(libc::EACCES | libc::EPERM))
                {
                    if !self.icmp_forbidden {
                        log::warn!(
                            "masquerade: this host forbids unprivileged ICMP echo sockets \
                             (sysctl net.ipv4.ping_group_range); the guest's pings are dropped"
                        );
                        self.icmp_forbidden = true;
                    }
                } else {
                    log::debug!("masquerade: socket for {target}: {e}");
                }
                return None;
            }
        };
        let id = self.token(kind);
        let events = EventSet::IN | EventSet::EDGE_TRIGGERED;
        self.epoll
            .ctl(
                ControlOperation::Add,
                sock.as_raw_fd(),
                EpollEvent::new(events, id),
            )
            .ok()?;
        let flow = DgramFlow {
            key,
            sock,
            readable: false,
            last: Instant::now(),
        };
        if kind == KIND_UDP {
            self.udp_keys.insert(key, id);
            self.udp.insert(id, flow);
        } else {
            self.icmp_keys.insert(key, id);
            self.icmp.insert(id, flow);
        }
        Some(id)
    }

    fn close_dgram(&mut self, id: u64) {
        let flow = if id & KIND_MASK == KIND_UDP {
            self.udp.remove(&id).inspect(|f| {
                self.udp_keys.remove(&f.key);
            })
        } else {
            self.icmp.remove(&id).inspect(|f| {
                self.icmp_keys.remove(&f.key);
            })
        };
        if let Some(f) = flow {
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                f.sock.as_raw_fd(),
                EpollEvent::default(),
            );
        }
    }

    // --- to the guest --------------------------------------------------------------------

    /// Queues an IPv4 packet from `src` to the guest with `payload` (already complete).
    fn push_ip(&mut self, src: Ipv4Addr, protocol: IpProtocol, payload: &[u8]) {
        if self.dev.tx.is_full() {
            self.dev.tx.dropped += 1;
            return;
        }
        let ip = Ipv4Repr {
            src_addr: src,
            dst_addr: self.guest,
            next_header: protocol,
            payload_len: payload.len(),
            hop_limit: 64,
        };
        let mut frame = vec![0u8; ETH_HDR + IP_HDR + payload.len()];
        let eth = EthernetRepr {
            src_addr: EthernetAddress(GATEWAY_MAC.octets()),
            dst_addr: EthernetAddress(self.cfg.guest_mac.octets()),
            ethertype: EthernetProtocol::Ipv4,
        };
        eth.emit(&mut EthernetFrame::new_unchecked(&mut frame[..]));
        ip.emit(
            &mut Ipv4Packet::new_unchecked(&mut frame[ETH_HDR..]),
            &ChecksumCapabilities::default(),
        );
        frame[ETH_HDR + IP_HDR..].copy_from_slice(payload);
        self.dev.tx.push(frame);
    }

    /// Queues a UDP datagram from `src` to the guest's port `dst_port` carrying the first
    /// `len` bytes of the receive buffer.
    fn push_udp(&mut self, src: SocketAddrV4, dst_port: u16, len: usize) {
        let mut segment = vec![0u8; UDP_HDR + len];
        UdpRepr {
            src_port: src.port(),
            dst_port,
        }
        .emit(
            &mut UdpPacket::new_unchecked(&mut segment[..]),
            &IpAddress::Ipv4(*src.ip()),
            &IpAddress::Ipv4(self.guest),
            len,
            |p| p.copy_from_slice(&self.buf[..len]),
            &ChecksumCapabilities::default(),
        );
        self.push_ip(*src.ip(), IpProtocol::Udp, &segment);
    }

    /// Reads what a UDP or ICMP flow's socket has, while the guest's queue has room.
    fn read_dgram(&mut self, id: u64) {
        let udp = id & KIND_MASK == KIND_UDP;
        let max_payload = usize::from(self.cfg.mtu).saturating_sub(IP_HDR);
        loop {
            if self.dev.tx.is_full() {
                return; // stays readable; read when the guest has taken frames
            }
            let table = if udp { &mut self.udp } else { &mut self.icmp };
            let Some(flow) = table.get_mut(&id) else {
                return;
            };
            if !flow.readable {
                return;
            }
            let n = match flow.sock.recv(&mut self.buf) {
                Ok(n) => n,
                Err(e) => {
                    if e.kind() == io::ErrorKind::WouldBlock {
                        flow.readable = false;
                    } else {
                        log::debug!("masquerade: datagram flow: {e}");
                        flow.readable = false;
                    }
                    return;
                }
            };
            flow.last = Instant::now();
            let key = flow.key;
            table.to_back(&id);
            let src = *key.1.ip();
            if udp {
                if n + UDP_HDR > max_payload {
                    self.stats.dropped += 1;
                    continue;
                }
                self.push_udp(key.1, key.0, n);
            } else {
                if n < ICMP_HDR || n > max_payload || self.buf[0] != 0 {
                    self.stats.dropped += 1;
                    continue;
                }
                // The guest's identifier back in place.
                let mut message = self.buf[..n].to_vec();
                let mut packet = Icmpv4Packet::new_unchecked(&mut message[..]);
                packet.set_echo_ident(key.0);
                packet.fill_checksum();
                self.push_ip(src, IpProtocol::Icmp, &message);
            }
        }
    }

    // --- the loop ------------------------------------------------------------------------

    /// Handles host socket events and timers, runs smoltcp, moves data between the two.
    pub fn process(&mut self) {
        let mut events = [EpollEvent::default(); EVENTS];
        let mut dgrams = Vec::new();
        loop {
            let n = match self.epoll.wait(0, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!("masquerade: epoll: {e}");
                    0
                }
            };
            for ev in &events[..n] {
                let id = ev.data();
                match id & KIND_MASK {
                    TOKEN_TIMER => {
                        let _ = self.timer.wait();
                    }
                    TOKEN_READY => {}
                    KIND_TCP => self.tcp_event(id, ev.event_set()),
                    KIND_LISTEN_TCP => {
                        self.tcp_listen_ready
                            .push(usize::try_from(id & !KIND_MASK).unwrap_or(0));
                    }
                    KIND_LISTEN_UDP => {
                        self.udp_listen_ready
                            .push(usize::try_from(id & !KIND_MASK).unwrap_or(0));
                    }
                    KIND_UDP => {
                        if let Some(f) = self.udp.get_mut(&id) {
                            f.readable = true;
                            dgrams.push(id);
                        }
                    }
                    KIND_ICMP => {
                        if let Some(f) = self.icmp.get_mut(&id) {
                            f.readable = true;
                            dgrams.push(id);
                        }
                    }
                    _ => {}
                }
            }
            if n < EVENTS {
                break;
            }
        }
        self.accept_inbound();
        self.poll_iface();
        let now = Instant::now();
        // Pumping walks the flows: all of them only when smoltcp may have changed any, or
        // once a sweep (timers that change nothing visible, such as TIME-WAIT ending).
        let ids: Vec<u64> = if std::mem::take(&mut self.smol_dirty) || now >= self.next_sweep {
            self.touched.clear();
            self.tcp.keys().copied().collect()
        } else {
            let mut ids = std::mem::take(&mut self.touched);
            ids.sort_unstable();
            ids.dedup();
            ids
        };
        for id in ids {
            self.pump(id);
        }
        self.poll_iface();
        // Datagram flows left readable when the guest's queue was full, and new ones.
        dgrams.extend(
            self.udp
                .iter()
                .filter(|(_, f)| f.readable)
                .map(|(id, _)| *id),
        );
        dgrams.extend(
            self.icmp
                .iter()
                .filter(|(_, f)| f.readable)
                .map(|(id, _)| *id),
        );
        dgrams.sort_unstable();
        dgrams.dedup();
        for id in dgrams {
            self.read_dgram(id);
        }
        self.read_inbound_udp();
        if now >= self.next_sweep {
            self.teach_guest_mac();
            self.sweep(now);
            self.next_sweep = now + SWEEP;
        }
        let smol = self
            .iface
            .poll_delay(self.now(), &self.sockets)
            .map(|d| Duration::from_micros(d.total_micros()));
        let until_sweep = self.next_sweep.saturating_duration_since(now);
        self.arm_timer(smol.map_or(until_sweep, |d| d.min(until_sweep)));
        self.signal();
        if self.dev.tx.is_empty() && self.dev.rx.is_empty() {
            let _ = self.ready.read();
        }
    }

    /// Lets the guest reach loopback, for unit tests that run their peers there.
    #[cfg(test)]
    pub(crate) fn allow_loopback(&mut self) {
        self.loopback_ok = true;
    }

    /// Has smoltcp take `frame` now, without copying it; its answers queue for the guest.
    fn ingest(&mut self, frame: &[u8]) {
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

    fn poll_iface(&mut self) {
        let now = self.now();
        let result = self.iface.poll(now, &mut self.dev, &mut self.sockets);
        self.smol_dirty |= result == smoltcp::iface::PollResult::SocketStateChanged;
    }

    /// The address a peer appears from in the guest: its own, unless the guest could not
    /// answer it (loopback, the NAT subnet itself), then the gateway's.
    fn visible_source(&self, peer: Ipv4Addr) -> Ipv4Addr {
        let subnet = |a: Ipv4Addr| {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(self.cfg.prefix))
                .unwrap_or(0);
            u32::from(a) & mask == u32::from(self.cfg.network) & mask
        };
        if is_routable(peer) && !subnet(peer) {
            peer
        } else {
            self.gateway
        }
    }

    /// Registers a flow's host socket (edge-triggered, both ways); its token.
    fn watch_tcp(&mut self, host: &TcpStream) -> Option<u64> {
        let id = self.token(KIND_TCP);
        let events =
            EventSet::IN | EventSet::OUT | EventSet::READ_HANG_UP | EventSet::EDGE_TRIGGERED;
        self.epoll
            .ctl(
                ControlOperation::Add,
                host.as_raw_fd(),
                EpollEvent::new(events, id),
            )
            .ok()?;
        Some(id)
    }

    /// A smoltcp socket with buffers as large as the budget allows (for an `inbound` flow,
    /// the inbound share of it), and its bytes; `None` when not even small ones fit.
    fn tcp_socket(&mut self, inbound: bool) -> Option<(tcp::Socket<'static>, usize)> {
        let limits = &self.cfg.limits;
        let mut free = limits.tcp_memory.saturating_sub(self.tcp_memory);
        if inbound {
            free = free.min((limits.tcp_memory / 2).saturating_sub(self.inbound_tcp_memory));
        }
        let size = [limits.tcp_buffer, SMALL_TCP_BUFFER]
            .into_iter()
            .find(|size| 2 * size <= free)?;
        self.hold_tcp_memory(2 * size, inbound);
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0u8; size]),
            tcp::SocketBuffer::new(vec![0u8; size]),
        );
        socket.set_nagle_enabled(false);
        Some((socket, 2 * size))
    }

    fn hold_tcp_memory(&mut self, bytes: usize, inbound: bool) {
        self.tcp_memory += bytes;
        if inbound {
            self.inbound_tcp_memory += bytes;
        }
    }

    fn release_tcp_memory(&mut self, bytes: usize, inbound: bool) {
        self.tcp_memory -= bytes;
        if inbound {
            self.inbound_tcp_memory -= bytes;
        }
    }

    /// Accepts waiting inbound connections and starts the guest's side of each.
    fn accept_inbound(&mut self) {
        self.tcp_listen_ready.sort_unstable();
        self.tcp_listen_ready.dedup();
        let ready = std::mem::take(&mut self.tcp_listen_ready);
        for i in ready {
            let listeners = self.listeners.clone();
            let Some((port, listener)) = listeners.tcp.get(i) else {
                continue;
            };
            loop {
                let (stream, peer) = match listener.accept() {
                    Ok((s, std::net::SocketAddr::V4(p))) => (s, p),
                    Ok(_) => continue,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => break, // WouldBlock, or an error of that one connection
                };
                self.start_inbound(stream, peer, *port);
            }
        }
    }

    fn start_inbound(&mut self, stream: TcpStream, peer: SocketAddrV4, port: u16) {
        let src = SocketAddrV4::new(self.visible_source(*peer.ip()), peer.port());
        let key = (port, src);
        let limit = self.cfg.limits.tcp_flows;
        let full = self.tcp.len() >= limit || self.inbound_tcp >= (limit / 2).max(1);
        if full || self.tcp_keys.contains_key(&key) {
            self.stats.tcp_refused_full += u64::from(full);
            set_linger_zero(stream.as_raw_fd());
            return;
        }
        if stream.set_nonblocking(true).is_err() {
            return;
        }
        let Some((mut socket, buffer)) = self.tcp_socket(true) else {
            self.stats.tcp_refused_full += 1;
            set_linger_zero(stream.as_raw_fd());
            return;
        };
        let remote = (IpAddress::Ipv4(self.guest), port);
        let local = IpListenEndpoint {
            addr: Some(IpAddress::Ipv4(*src.ip())),
            port: src.port(),
        };
        if let Err(e) = socket.connect(self.iface.context(), remote, local) {
            log::debug!("masquerade: inbound from {peer} to port {port}: {e}");
            self.release_tcp_memory(buffer, true);
            set_linger_zero(stream.as_raw_fd());
            return;
        }
        let Some(id) = self.watch_tcp(&stream) else {
            self.release_tcp_memory(buffer, true);
            return;
        };
        let handle = self.sockets.add(socket);
        self.tcp_keys.insert(key, id);
        self.inbound_tcp += 1;
        self.tcp.insert(
            id,
            TcpFlow {
                key,
                inbound: true,
                buffer,
                host: stream,
                state: TcpState::Spliced {
                    handle,
                    readable: true,
                    writable: true,
                    host_eof: false,
                    host_shut: false,
                },
                last: Instant::now(),
            },
        );
    }

    /// Datagrams to forwarded UDP ports, to the guest while its queue has room.
    fn read_inbound_udp(&mut self) {
        self.udp_listen_ready.sort_unstable();
        self.udp_listen_ready.dedup();
        let ready = std::mem::take(&mut self.udp_listen_ready);
        let listeners = self.listeners.clone();
        let max_payload = usize::from(self.cfg.mtu).saturating_sub(IP_HDR + UDP_HDR);
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
                    Ok((n, std::net::SocketAddr::V4(p))) => (n, p),
                    Ok(_) => continue,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                };
                if n > max_payload {
                    self.stats.dropped += 1;
                    continue;
                }
                let src = SocketAddrV4::new(self.visible_source(*peer.ip()), peer.port());
                let key = (*port, src);
                // In order of use, least recent first (insert moves a key to the back).
                if !self.inbound_udp.contains_key(&key)
                    && self.inbound_udp.len() >= self.cfg.limits.udp_flows
                {
                    self.inbound_udp.pop_front();
                }
                self.inbound_udp.insert(
                    key,
                    InboundUdp {
                        listener: i,
                        peer,
                        last: Instant::now(),
                    },
                );
                self.push_udp(src, *port, n);
            }
        }
    }

    fn tcp_event(&mut self, id: u64, events: EventSet) {
        let Some(flow) = self.tcp.get_mut(&id) else {
            return;
        };
        self.touched.push(id);
        match &mut flow.state {
            TcpState::Connecting { .. } => {
                if events.intersects(EventSet::OUT | EventSet::ERROR | EventSet::HANG_UP) {
                    self.finish_connect(id);
                }
            }
            TcpState::Spliced {
                readable, writable, ..
            } => {
                if events.intersects(
                    EventSet::IN | EventSet::READ_HANG_UP | EventSet::ERROR | EventSet::HANG_UP,
                ) {
                    *readable = true;
                }
                if events.intersects(EventSet::OUT | EventSet::ERROR | EventSet::HANG_UP) {
                    *writable = true;
                }
            }
        }
    }

    fn finish_connect(&mut self, id: u64) {
        let Some(flow) = self.tcp.get_mut(&id) else {
            return;
        };
        let TcpState::Connecting { syn, .. } = &mut flow.state else {
            return;
        };
        let syn = std::mem::take(syn);
        // The held SYN's share of the budget goes back before the buffers are taken.
        self.tcp_memory -= std::mem::take(&mut flow.buffer);
        if let Err(e) = socket_error(flow.host.as_raw_fd()) {
            log::debug!("masquerade: connect {}: {e}", flow.key.1);
            // No listener: smoltcp answers the guest's SYN with RST.
            self.remove_tcp(id, false);
            self.dev.rx.push_back(syn);
            self.poll_iface();
            return;
        }
        let Some((mut socket, buffer)) = self.tcp_socket(false) else {
            // Out of buffer budget: refused, as with a full flow table.
            self.stats.tcp_refused_full += 1;
            self.remove_tcp(id, true);
            self.dev.rx.push_back(syn);
            self.poll_iface();
            return;
        };
        let Some(flow) = self.tcp.get_mut(&id) else {
            return;
        };
        flow.buffer = buffer;
        let dst = flow.key.1;
        if socket
            .listen(IpListenEndpoint {
                addr: Some(IpAddress::Ipv4(*dst.ip())),
                port: dst.port(),
            })
            .is_err()
        {
            self.remove_tcp(id, true);
            return;
        }
        let handle = self.sockets.add(socket);
        flow.state = TcpState::Spliced {
            handle,
            readable: true,
            writable: true,
            host_eof: false,
            host_shut: false,
        };
        // Feed the SYN now, while this is the only listener it can match.
        self.dev.rx.push_back(syn);
        self.poll_iface();
        if self.sockets.get::<tcp::Socket>(handle).state() == tcp::State::Listen {
            self.remove_tcp(id, true);
        }
    }

    /// Moves what can move between a spliced flow's two sides; closes it when done.
    fn pump(&mut self, id: u64) {
        let Some(flow) = self.tcp.get_mut(&id) else {
            return;
        };
        let TcpState::Spliced {
            handle,
            readable,
            writable,
            host_eof,
            host_shut,
        } = &mut flow.state
        else {
            return;
        };
        let sock = self.sockets.get_mut::<tcp::Socket>(*handle);
        let mut moved = false;
        let mut failed = false;
        // Guest → host.
        while *writable && sock.can_recv() {
            let host = &mut flow.host;
            match sock.recv(|buf| match host.write(buf) {
                Ok(n) => (n, Ok(n)),
                Err(e) => (0, Err(e)),
            }) {
                Ok(Ok(0)) | Err(_) => break,
                Ok(Ok(_)) => moved = true,
                Ok(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => *writable = false,
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(_)) => {
                    failed = true;
                    break;
                }
            }
        }
        let guest_fin = matches!(
            sock.state(),
            tcp::State::CloseWait
                | tcp::State::LastAck
                | tcp::State::Closing
                | tcp::State::TimeWait
        );
        if guest_fin && !*host_shut && sock.recv_queue() == 0 {
            let _ = flow.host.shutdown(Shutdown::Write);
            *host_shut = true;
        }
        // Host → guest.
        while *readable && !*host_eof && sock.can_send() {
            let host = &mut flow.host;
            match sock.send(|buf| match host.read(buf) {
                Ok(n) => (n, Ok(n)),
                Err(e) => (0, Err(e)),
            }) {
                Ok(Ok(0)) => {
                    *host_eof = true;
                    sock.close();
                }
                Ok(Ok(_)) => moved = true,
                Ok(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => *readable = false,
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(_)) | Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        if moved {
            flow.last = Instant::now();
        }
        if failed {
            // The host side broke: RST to the guest.
            sock.abort();
            self.remove_tcp(id, true);
            return;
        }
        match sock.state() {
            tcp::State::Closed | tcp::State::TimeWait => {
                // Closed cleanly when both sides finished; otherwise the guest reset it.
                let clean = *host_eof && *host_shut;
                self.remove_tcp(id, !clean);
            }
            _ => {}
        }
    }

    fn remove_tcp(&mut self, id: u64, reset_host: bool) {
        let Some(flow) = self.tcp.remove(&id) else {
            return;
        };
        self.tcp_keys.remove(&flow.key);
        self.release_tcp_memory(flow.buffer, flow.inbound);
        self.inbound_tcp -= usize::from(flow.inbound);
        let _ = self.epoll.ctl(
            ControlOperation::Delete,
            flow.host.as_raw_fd(),
            EpollEvent::default(),
        );
        if reset_host {
            set_linger_zero(flow.host.as_raw_fd());
        }
        if let TcpState::Spliced { handle, .. } = flow.state {
            // An aborted socket still owes the guest its RST: send it before removing.
            if self.sockets.get::<tcp::Socket>(handle).state() != tcp::State::Closed {
                self.sockets.get_mut::<tcp::Socket>(handle).abort();
            }
            self.poll_iface();
            self.sockets.remove(handle);
        }
    }

    /// Closes flows that have been idle too long and connections that took too long.
    fn sweep(&mut self, now: Instant) {
        let limits = self.cfg.limits;
        let stale: Vec<(u64, bool)> = self
            .tcp
            .iter()
            .filter_map(|(id, f)| match &f.state {
                TcpState::Connecting { deadline, .. } if now >= *deadline => Some((*id, true)),
                TcpState::Spliced { .. }
                    if now.duration_since(f.last)
                        >= if f.inbound {
                            limits.inbound_tcp_idle
                        } else {
                            limits.tcp_idle
                        } =>
                {
                    Some((*id, false))
                }
                _ => None,
            })
            .collect();
        for (id, connecting) in stale {
            if connecting {
                // Unreachable: RST to the guest, as for a refused connection.
                if let Some(TcpState::Connecting { syn, .. }) =
                    self.tcp.get_mut(&id).map(|f| &mut f.state)
                {
                    let syn = std::mem::take(syn);
                    self.remove_tcp(id, true);
                    self.dev.rx.push_back(syn);
                    self.poll_iface();
                }
            } else {
                self.remove_tcp(id, true);
            }
        }
        // Least recently used first: the idle ones are a prefix.
        let idle = |flows: &Lru<u64, DgramFlow>| -> Vec<u64> {
            flows
                .iter()
                .take_while(|(_, f)| now.duration_since(f.last) >= limits.udp_idle)
                .map(|(id, _)| *id)
                .collect()
        };
        for id in idle(&self.udp).into_iter().chain(idle(&self.icmp)) {
            self.close_dgram(id);
        }
        while self
            .inbound_udp
            .front()
            .is_some_and(|(_, f)| now.duration_since(f.last) >= limits.udp_idle)
        {
            self.inbound_udp.pop_front();
        }
    }
}

fn random_seed() -> u64 {
    let mut seed = [0u8; 8];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut seed))
        .is_err()
    {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        return d.as_secs() ^ u64::from(d.subsec_nanos()).rotate_left(32);
    }
    u64::from_le_bytes(seed)
}
