//! The engine against a guest made of a second smoltcp stack, and hand-made frames; peers are
//! sockets on this machine's loopback (which only tests let the guest reach).

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, HardwareAddress, Icmpv4Message, Icmpv4Packet, Icmpv4Repr, IpAddress, IpCidr,
    IpProtocol, Ipv4Packet, Ipv4Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber, UdpPacket,
    UdpRepr,
};

use super::egress::Egress;
use super::engine::{GATEWAY_MAC, Nat, NatConfig};
use super::limits::Limits;
use crate::mac::MacAddr;

pub(super) const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
pub(super) const GUEST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
pub(super) const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 1);
const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;

pub(super) fn config(limits: Limits) -> NatConfig {
    NatConfig {
        network: Ipv4Addr::new(10, 0, 2, 0),
        prefix: 30,
        guest_mac: MacAddr::new(GUEST_MAC),
        mtu: 1500,
        dns: vec![Ipv4Addr::new(127, 0, 0, 53), Ipv4Addr::new(10, 96, 0, 10)],
        search: vec!["svc.cluster.local".into()],
        hostname: "vm".into(),
        limits,
        egress: Egress::default(),
        ipv6: None,
    }
}

fn nat(limits: Limits) -> Nat {
    let mut nat = Nat::new(config(limits), Arc::default()).expect("engine");
    nat.allow_loopback();
    nat
}

pub(super) fn drain(nat: &mut Nat) -> Vec<Vec<u8>> {
    nat.process();
    std::iter::from_fn(|| nat.to_guest()).collect()
}

// --- a guest on smoltcp ---------------------------------------------------------------------

#[derive(Default)]
struct Wire {
    rx: VecDeque<Vec<u8>>,
    tx: VecDeque<Vec<u8>>,
}

struct Rx(Vec<u8>);
struct Tx<'a>(&'a mut VecDeque<Vec<u8>>);

impl phy::RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut v = vec![0; len];
        let r = f(&mut v);
        self.0.push_back(v);
        r
    }
}

impl phy::Device for Wire {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;
    fn receive(&mut self, _: smoltcp::time::Instant) -> Option<(Rx, Tx<'_>)> {
        let f = self.rx.pop_front()?;
        Some((Rx(f), Tx(&mut self.tx)))
    }
    fn transmit(&mut self, _: smoltcp::time::Instant) -> Option<Tx<'_>> {
        Some(Tx(&mut self.tx))
    }
    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = 1514;
        caps
    }
}

pub(super) struct GuestStack {
    pub(super) iface: Interface,
    wire: Wire,
    pub(super) sockets: SocketSet<'static>,
    start: Instant,
}

impl GuestStack {
    pub(super) fn new() -> Self {
        let mut wire = Wire::default();
        let cfg = Config::new(HardwareAddress::Ethernet(EthernetAddress(GUEST_MAC)));
        let mut iface = Interface::new(cfg, &mut wire, smoltcp::time::Instant::ZERO);
        iface.update_ip_addrs(|a| {
            a.push(IpCidr::new(IpAddress::Ipv4(GUEST), 30)).unwrap();
        });
        iface.routes_mut().add_default_ipv4_route(GATEWAY).unwrap();
        Self {
            iface,
            wire,
            sockets: SocketSet::new(vec![]),
            start: Instant::now(),
        }
    }

    fn now(&self) -> smoltcp::time::Instant {
        smoltcp::time::Instant::from_millis(
            i64::try_from(self.start.elapsed().as_millis()).unwrap(),
        )
    }

    fn connect(&mut self, port: u16, local_port: u16) -> SocketHandle {
        self.connect_to(IpAddress::Ipv4(LOOPBACK), port, local_port)
    }

    pub(super) fn connect_to(
        &mut self,
        addr: IpAddress,
        port: u16,
        local: impl Into<smoltcp::wire::IpListenEndpoint>,
    ) -> SocketHandle {
        let mut s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; 1 << 20]),
            tcp::SocketBuffer::new(vec![0; 1 << 20]),
        );
        s.connect(self.iface.context(), (addr, port), local)
            .unwrap();
        self.sockets.add(s)
    }

    pub(super) fn sock(&mut self, h: SocketHandle) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(h)
    }

    /// One round trip of frames between the guest and the engine.
    pub(super) fn exchange(&mut self, nat: &mut Nat) {
        let now = self.now();
        self.iface.poll(now, &mut self.wire, &mut self.sockets);
        while let Some(f) = self.wire.tx.pop_front() {
            nat.from_guest(&f);
        }
        for f in drain(nat) {
            self.wire.rx.push_back(f);
        }
        let now = self.now();
        self.iface.poll(now, &mut self.wire, &mut self.sockets);
    }

    /// Exchanges until `done` or the deadline.
    pub(super) fn run_until(
        &mut self,
        nat: &mut Nat,
        what: &str,
        mut done: impl FnMut(&mut Self) -> bool,
    ) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            self.exchange(nat);
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

// --- hand-made frames -----------------------------------------------------------------------

pub(super) fn eth(dst: [u8; 6], ethertype: EthernetProtocol, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; 14 + payload.len()];
    EthernetRepr {
        src_addr: EthernetAddress(GUEST_MAC),
        dst_addr: EthernetAddress(dst),
        ethertype,
    }
    .emit(&mut EthernetFrame::new_unchecked(&mut f[..]));
    f[14..].copy_from_slice(payload);
    f
}

fn ipv4(dst: Ipv4Addr, protocol: IpProtocol, payload: &[u8]) -> Vec<u8> {
    let repr = Ipv4Repr {
        src_addr: GUEST,
        dst_addr: dst,
        next_header: protocol,
        payload_len: payload.len(),
        hop_limit: 64,
    };
    let mut p = vec![0u8; 20 + payload.len()];
    repr.emit(
        &mut Ipv4Packet::new_unchecked(&mut p[..]),
        &Default::default(),
    );
    p[20..].copy_from_slice(payload);
    eth(GATEWAY_MAC.octets(), EthernetProtocol::Ipv4, &p)
}

fn arp(operation: ArpOperation, sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let repr = ArpRepr::EthernetIpv4 {
        operation,
        source_hardware_addr: EthernetAddress(GUEST_MAC),
        source_protocol_addr: sender,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: target,
    };
    let mut p = vec![0u8; repr.buffer_len()];
    repr.emit(&mut ArpPacket::new_unchecked(&mut p[..]));
    eth([0xff; 6], EthernetProtocol::Arp, &p)
}

fn udp(dst: Ipv4Addr, src_port: u16, dst_port: u16, data: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 8 + data.len()];
    UdpRepr { src_port, dst_port }.emit(
        &mut UdpPacket::new_unchecked(&mut p[..]),
        &IpAddress::Ipv4(GUEST),
        &IpAddress::Ipv4(dst),
        data.len(),
        |b| b.copy_from_slice(data),
        &Default::default(),
    );
    ipv4(dst, IpProtocol::Udp, &p)
}

/// `frame` (Ethernet, IPv4) with its TTL set to `ttl`.
fn with_ttl(mut frame: Vec<u8>, ttl: u8) -> Vec<u8> {
    let mut ip = Ipv4Packet::new_unchecked(&mut frame[14..]);
    ip.set_hop_limit(ttl);
    ip.fill_checksum();
    frame
}

/// The guest's echo request to `dst`.
fn echo_request(dst: Ipv4Addr, ident: u16, seq_no: u16, data: &[u8]) -> Vec<u8> {
    let repr = Icmpv4Repr::EchoRequest {
        ident,
        seq_no,
        data,
    };
    let mut p = vec![0u8; repr.buffer_len()];
    repr.emit(
        &mut Icmpv4Packet::new_unchecked(&mut p[..]),
        &Default::default(),
    );
    ipv4(dst, IpProtocol::Icmp, &p)
}

fn syn(dst: Ipv4Addr, src_port: u16, dst_port: u16) -> Vec<u8> {
    let repr = TcpRepr {
        src_port,
        dst_port,
        control: TcpControl::Syn,
        seq_number: TcpSeqNumber(1000),
        ack_number: None,
        window_len: 64240,
        window_scale: None,
        max_seg_size: Some(1460),
        sack_permitted: false,
        sack_ranges: [None, None, None],
        timestamp: None,
        payload: &[],
    };
    let mut p = vec![0u8; repr.buffer_len()];
    repr.emit(
        &mut TcpPacket::new_unchecked(&mut p[..]),
        &IpAddress::Ipv4(GUEST),
        &IpAddress::Ipv4(dst),
        &Default::default(),
    );
    ipv4(dst, IpProtocol::Tcp, &p)
}

/// The IPv4 packets among `frames`, parsed: (src, protocol, payload).
fn packets(frames: &[Vec<u8>]) -> Vec<(Ipv4Addr, IpProtocol, Vec<u8>)> {
    frames
        .iter()
        .filter_map(|f| {
            let e = EthernetFrame::new_checked(&f[..]).ok()?;
            assert_eq!(e.dst_addr(), EthernetAddress(GUEST_MAC));
            let ip = Ipv4Packet::new_checked(e.payload()).ok()?;
            assert!(ip.verify_checksum());
            assert_eq!(ip.dst_addr(), GUEST);
            Some((ip.src_addr(), ip.next_header(), ip.payload().to_vec()))
        })
        .collect()
}

pub(super) fn free_port() -> u16 {
    TcpListener::bind((LOOPBACK, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// --- tests ----------------------------------------------------------------------------------

#[test]
fn arp_is_answered_for_the_gateway_only() {
    let mut nat = nat(Limits::default());
    nat.from_guest(&arp(ArpOperation::Request, GUEST, GATEWAY));
    let out = drain(&mut nat);
    assert_eq!(out.len(), 1);
    let e = EthernetFrame::new_checked(&out[0][..]).unwrap();
    let ArpRepr::EthernetIpv4 {
        operation,
        source_hardware_addr,
        source_protocol_addr,
        ..
    } = ArpRepr::parse(&ArpPacket::new_checked(e.payload()).unwrap()).unwrap()
    else {
        panic!()
    };
    assert_eq!(operation, ArpOperation::Reply);
    assert_eq!(source_hardware_addr, EthernetAddress(GATEWAY_MAC.octets()));
    assert_eq!(source_protocol_addr, GATEWAY);

    // The guest's own address (an announcement), another host: no answer.
    for target in [GUEST, Ipv4Addr::new(10, 0, 2, 3), Ipv4Addr::new(8, 8, 8, 8)] {
        nat.from_guest(&arp(ArpOperation::Request, GUEST, target));
        assert!(drain(&mut nat).is_empty(), "answered ARP for {target}");
    }
}

#[test]
fn the_gateway_answers_echo() {
    let mut nat = nat(Limits::default());
    nat.from_guest(&echo_request(GATEWAY, 0x1234, 7, b"ping-data"));
    let out = packets(&drain(&mut nat));
    assert_eq!(out.len(), 1);
    let (src, proto, payload) = &out[0];
    assert_eq!((*src, *proto), (GATEWAY, IpProtocol::Icmp));
    let icmp = Icmpv4Packet::new_checked(&payload[..]).unwrap();
    assert!(icmp.verify_checksum());
    assert_eq!(
        Icmpv4Repr::parse(&icmp, &Default::default()).unwrap(),
        Icmpv4Repr::EchoReply {
            ident: 0x1234,
            seq_no: 7,
            data: b"ping-data"
        }
    );
}

/// Runs `test` on a thread in a network namespace of its own, with loopback up and
/// `ping_group_range` set to `range` (a new namespace's default is `1 0`, forbidden), so
/// that the machine's own settings are never touched. Needs root, as the suite does.
pub(super) fn in_private_netns(range: &str, test: impl FnOnce() + Send + 'static) {
    let range = range.to_string();
    std::thread::spawn(move || {
        // SAFETY: unshare(2) with a flag; it changes only this thread's network namespace.
        assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare");
        let mut nl = crate::netlink::Netlink::open().unwrap();
        let lo = nl.link("lo").unwrap().expect("lo");
        let up = crate::netlink::LinkChange {
            up: Some(true),
            ..Default::default()
        };
        nl.set_link(lo.index, &up).unwrap();
        // /proc/sys/net is the opener's namespace's.
        std::fs::write("/proc/sys/net/ipv4/ping_group_range", &range).unwrap();
        test();
    })
    .join()
    .unwrap();
}

/// The guest pings 127.0.0.1 (which tests may reach) and gets its reply back with its own
/// identifier, sequence number and data.
fn echo_through_the_host(echo: super::Echo) {
    let listeners = Arc::new(super::Listeners {
        echo,
        ..Default::default()
    });
    let mut nat = Nat::new(config(Limits::default()), listeners).unwrap();
    nat.allow_loopback();
    for seq_no in [1, 2] {
        nat.from_guest(&echo_request(LOOPBACK, 0x4242, seq_no, b"through the host"));
        let deadline = Instant::now() + Duration::from_secs(5);
        let reply = loop {
            let out = packets(&drain(&mut nat));
            if let Some(p) = out
                .into_iter()
                .find(|(_, proto, _)| *proto == IpProtocol::Icmp)
            {
                break p;
            }
            assert!(Instant::now() < deadline, "no echo reply");
            std::thread::sleep(Duration::from_millis(10));
        };
        let (src, _, payload) = reply;
        assert_eq!(src, LOOPBACK);
        let icmp = Icmpv4Packet::new_checked(&payload[..]).unwrap();
        assert!(icmp.verify_checksum());
        assert_eq!(
            Icmpv4Repr::parse(&icmp, &Default::default()).unwrap(),
            Icmpv4Repr::EchoReply {
                ident: 0x4242,
                seq_no,
                data: b"through the host"
            }
        );
    }
    assert_eq!(nat.stats().icmp_flows, 1, "one flow for both requests");
}

#[test]
fn echo_leaves_on_unprivileged_sockets_where_the_namespace_allows_them() {
    in_private_netns("0 2147483647", || {
        let echo = super::Echo::open(false);
        assert!(matches!(echo, super::Echo::Unprivileged), "{echo:?}");
        echo_through_the_host(echo);
    });
}

#[test]
fn echo_leaves_on_a_raw_socket_in_a_pod_that_forbids_unprivileged_ones() {
    // A pod's default range, and CAP_NET_RAW as containers have it.
    in_private_netns("1 0", || {
        let echo = super::Echo::open(false);
        assert!(matches!(echo, super::Echo::Raw(_)), "{echo:?}");
        echo_through_the_host(echo);
    });
}

#[test]
fn an_icmp_error_about_a_raw_echo_reaches_the_guest_quoting_its_request() {
    in_private_netns("1 0", || {
        // Nobody answers echo here, and a "router" says the TTL ran out instead.
        std::fs::write("/proc/sys/net/ipv4/icmp_echo_ignore_all", "1").unwrap();
        let echo = super::Echo::open(false);
        assert!(matches!(echo, super::Echo::Raw(_)), "{echo:?}");
        let listeners = Arc::new(super::Listeners {
            echo,
            ..Default::default()
        });
        let mut nat = Nat::new(config(Limits::default()), listeners).unwrap();
        nat.allow_loopback();
        // The "router": a raw socket that sees the request leave, and answers it.
        let router = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::RAW,
            Some(socket2::Protocol::ICMPV4),
        )
        .unwrap();
        router
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let target = Ipv4Addr::new(127, 0, 0, 2);
        nat.from_guest(&echo_request(target, 0x4242, 9, b"lost"));
        assert!(drain(&mut nat).is_empty());
        // The request as it left: its wire identifier is the engine's, not the guest's.
        let sent = loop {
            let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 1500];
            let n = router.recv(&mut buf).expect("the request on the wire");
            // SAFETY: recv initialised the first n bytes.
            let packet: Vec<u8> = buf[..n]
                .iter()
                .map(|b| unsafe { b.assume_init() })
                .collect();
            let ip = Ipv4Packet::new_checked(&packet[..]).unwrap();
            if ip.dst_addr() == target && ip.payload()[0] == 8 {
                break ip.payload()[..8].to_vec();
            }
        };
        assert_eq!(
            &sent[6..8],
            9u16.to_be_bytes(),
            "the sequence passes unchanged"
        );
        // Time exceeded from 127.0.0.9, quoting that request.
        let quoted_request = Ipv4Repr {
            src_addr: LOOPBACK,
            dst_addr: target,
            next_header: IpProtocol::Icmp,
            payload_len: 8 + 4,
            hop_limit: 1,
        };
        let error = Icmpv4Repr::TimeExceeded {
            reason: smoltcp::wire::Icmpv4TimeExceeded::TtlExpired,
            header: quoted_request,
            data: &sent,
        };
        let mut e = vec![0u8; error.buffer_len()];
        error.emit(
            &mut Icmpv4Packet::new_unchecked(&mut e[..]),
            &Default::default(),
        );
        router
            .bind(&std::net::SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 9), 0).into())
            .unwrap();
        router
            .send_to(&e, &std::net::SocketAddrV4::new(LOOPBACK, 0).into())
            .unwrap();
        let (src, message) = first_icmp_error(&mut nat);
        assert_eq!(
            src, GATEWAY,
            "127.0.0.9 is not an address the guest can answer"
        );
        assert_eq!(message[0], 11, "time exceeded");
        let quote = Ipv4Packet::new_unchecked(&message[8..]);
        assert_eq!((quote.src_addr(), quote.dst_addr()), (GUEST, target));
        let echo = &message[8 + 20..];
        assert_eq!(echo[0], 8, "an echo request");
        assert_eq!(
            &echo[4..8],
            [0x42, 0x42, 0, 9],
            "the guest's identifier and sequence"
        );
    });
}

#[test]
fn an_echo_whose_ttl_ends_at_the_gateway_gets_time_exceeded_from_it() {
    let mut nat = nat(Limits::default());
    nat.from_guest(&with_ttl(echo_request(LOOPBACK, 0x77, 3, b"ttl"), 1));
    let errors = icmp_errors(&drain(&mut nat));
    assert_eq!(errors.len(), 1, "{errors:02x?}");
    let (src, message) = &errors[0];
    assert_eq!(
        (*src, message[0]),
        (GATEWAY, 11),
        "time exceeded from the gateway"
    );
    let echo = &message[8 + 20..];
    assert_eq!(&echo[..1], [8], "quoting the echo request");
    assert_eq!(&echo[4..8], [0, 0x77, 0, 3], "its identifier and sequence");
    assert_eq!(nat.stats().icmp_flows, 0, "nothing went out");
}

#[test]
fn without_either_echo_is_dropped() {
    let mut nat = Nat::new(
        config(Limits::default()),
        Arc::new(super::Listeners {
            echo: super::Echo::Forbidden,
            ..Default::default()
        }),
    )
    .unwrap();
    nat.allow_loopback();
    nat.from_guest(&echo_request(LOOPBACK, 1, 1, b"x"));
    assert!(drain(&mut nat).is_empty());
    assert_eq!(nat.stats().icmp_flows, 0);
    assert_eq!(nat.stats().dropped, 1);
}

#[test]
fn loopback_and_other_unroutable_destinations_are_dropped() {
    let mut nat = Nat::new(config(Limits::default()), Arc::default()).unwrap();
    let listener = TcpListener::bind((LOOPBACK, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    for dst in [
        LOOPBACK,
        Ipv4Addr::new(127, 1, 2, 3),
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::new(224, 0, 0, 1),
        Ipv4Addr::BROADCAST,
    ] {
        nat.from_guest(&syn(dst, 40000, port));
        nat.from_guest(&udp(dst, 40000, port, b"x"));
    }
    std::thread::sleep(Duration::from_millis(50));
    assert!(drain(&mut nat).is_empty());
    assert_eq!(listener.accept().unwrap_err().kind(), ErrorKind::WouldBlock);
    let stats = nat.stats();
    assert_eq!((stats.tcp_flows, stats.udp_flows), (0, 0));
    assert_eq!(stats.dropped, 10);
}

#[test]
fn tcp_to_the_gateway_is_refused_and_udp_to_it_dropped() {
    let mut nat = nat(Limits::default());
    nat.from_guest(&syn(GATEWAY, 40001, 22));
    let out = packets(&drain(&mut nat));
    assert_eq!(out.len(), 1, "one RST");
    let tcp = TcpPacket::new_checked(&out[0].2[..]).unwrap();
    assert!(tcp.rst());
    // UDP to the gateway other than DNS: dropped.
    nat.from_guest(&udp(GATEWAY, 40002, 123, b"ntp"));
    assert!(drain(&mut nat).is_empty());
    assert_eq!(nat.stats().udp_flows, 0);
}

#[test]
fn a_tcp_flow_is_spliced_both_ways_with_half_close() {
    let mut nat = nat(Limits::default());
    let listener = TcpListener::bind((LOOPBACK, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let peer = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap(); // until the guest's FIN
        let reply: Vec<u8> = got.iter().rev().copied().collect();
        s.write_all(&reply).unwrap();
        got.len()
    });
    let mut guest = GuestStack::new();
    let h = guest.connect(port, 49152);
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut sent = 0;
    guest.run_until(&mut nat, "the guest's data to go out", |g| {
        let s = g.sock(h);
        if s.can_send() && sent < data.len() {
            sent += s.send_slice(&data[sent..]).unwrap();
        }
        if sent == data.len() && s.state() == tcp::State::Established {
            s.close(); // FIN: the peer's read_to_end returns
        }
        sent == data.len() && !s.may_send()
    });
    let mut back = Vec::new();
    guest.run_until(&mut nat, "the peer's reply and FIN", |g| {
        let s = g.sock(h);
        while s.can_recv() {
            s.recv(|b| {
                back.extend_from_slice(b);
                (b.len(), ())
            })
            .unwrap();
        }
        !s.may_recv() && back.len() == data.len()
    });
    assert_eq!(peer.join().unwrap(), data.len());
    let want: Vec<u8> = data.iter().rev().copied().collect();
    assert!(back == want, "the reply differs");
    let deadline = Instant::now() + Duration::from_secs(20);
    while nat_flows(&mut nat) != 0 {
        assert!(Instant::now() < deadline, "the flow is still there");
        guest.exchange(&mut nat);
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn nat_flows(nat: &mut Nat) -> usize {
    nat.process();
    nat.stats().tcp_flows
}

#[test]
fn a_refused_connection_is_a_reset() {
    let mut nat = nat(Limits::default());
    let port = free_port();
    let mut guest = GuestStack::new();
    let h = guest.connect(port, 49153);
    guest.run_until(&mut nat, "the RST", |g| {
        g.sock(h).state() == tcp::State::Closed
    });
    assert_eq!(nat_flows(&mut nat), 0);
}

#[test]
fn a_host_reset_reaches_the_guest() {
    let mut nat = nat(Limits::default());
    let listener = TcpListener::bind((LOOPBACK, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut guest = GuestStack::new();
    let h = guest.connect(port, 49154);
    guest.run_until(&mut nat, "established", |g| {
        g.sock(h).state() == tcp::State::Established
    });
    let (s, _) = listener.accept().unwrap();
    super::sock::reset_on_close(&s);
    drop(s); // RST
    guest.run_until(&mut nat, "the RST", |g| {
        g.sock(h).state() == tcp::State::Closed
    });
    assert_eq!(nat_flows(&mut nat), 0);
}

#[test]
fn udp_goes_out_and_replies_come_back_from_the_destination() {
    let mut nat = nat(Limits::default());
    let peer = UdpSocket::bind((LOOPBACK, 0)).unwrap();
    let port = peer.local_addr().unwrap().port();
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    nat.from_guest(&udp(LOOPBACK, 5353, port, b"question"));
    nat.process();
    let mut buf = [0u8; 64];
    let (n, from) = peer.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"question");
    peer.send_to(b"answer", from).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let reply = loop {
        let out = packets(&drain(&mut nat));
        if let Some(p) = out.into_iter().next() {
            break p;
        }
        assert!(Instant::now() < deadline, "no reply");
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!((reply.0, reply.1), (LOOPBACK, IpProtocol::Udp));
    let u = UdpPacket::new_checked(&reply.2[..]).unwrap();
    assert!(u.verify_checksum(&IpAddress::Ipv4(LOOPBACK), &IpAddress::Ipv4(GUEST)));
    assert_eq!((u.src_port(), u.dst_port()), (port, 5353));
    assert_eq!(u.payload(), b"answer");
    assert_eq!(nat.stats().udp_flows, 1);
}

/// The ICMP errors among `frames`, parsed, with where each came from.
fn icmp_errors(frames: &[Vec<u8>]) -> Vec<(Ipv4Addr, Vec<u8>)> {
    packets(frames)
        .into_iter()
        .filter(|(_, proto, p)| *proto == IpProtocol::Icmp && matches!(p[0], 3 | 11))
        .map(|(src, _, p)| (src, p))
        .collect()
}

/// The first ICMP error for the guest, waited for up to 5 s.
fn first_icmp_error(nat: &mut Nat) -> (Ipv4Addr, Vec<u8>) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(e) = icmp_errors(&drain(nat)).into_iter().next() {
            return e;
        }
        assert!(Instant::now() < deadline, "no ICMP error");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_udp_datagram_to_a_closed_port_comes_back_as_port_unreachable_at_once() {
    let mut nat = nat(Limits::default());
    let closed = free_udp_port();
    nat.from_guest(&udp(LOOPBACK, 5555, closed, b"anyone there?"));
    let (src, message) = first_icmp_error(&mut nat);
    // Loopback is not an address the guest can answer: the gateway speaks for it.
    assert_eq!(src, GATEWAY);
    let icmp = Icmpv4Packet::new_checked(&message[..]).unwrap();
    assert!(icmp.verify_checksum());
    assert_eq!(
        (icmp.msg_type(), icmp.msg_code()),
        (Icmpv4Message::DstUnreachable, 3)
    );
    // The quote is the guest's own datagram (its header says the whole length, only the
    // first 8 bytes of it follow), so its kernel finds the socket it came from.
    let quote = Ipv4Packet::new_unchecked(&message[8..]);
    assert_eq!((quote.src_addr(), quote.dst_addr()), (GUEST, LOOPBACK));
    assert_eq!(quote.next_header(), IpProtocol::Udp);
    assert_eq!(
        usize::from(quote.total_len()),
        20 + 8 + b"anyone there?".len()
    );
    let udp_quote = &message[8 + 20..];
    assert_eq!(udp_quote.len(), 8);
    assert_eq!(
        &udp_quote[..4],
        [&5555u16.to_be_bytes()[..], &closed.to_be_bytes()].concat()
    );
    assert_eq!(nat.stats().icmp_errors, 1);
}

#[test]
fn a_datagram_whose_ttl_ends_at_the_gateway_gets_time_exceeded_from_it() {
    let mut nat = nat(Limits::default());
    nat.from_guest(&with_ttl(udp(LOOPBACK, 5556, 33434, b"probe"), 1));
    let errors = icmp_errors(&drain(&mut nat));
    assert_eq!(errors.len(), 1, "{errors:02x?}");
    let (src, message) = &errors[0];
    assert_eq!(*src, GATEWAY);
    let icmp = Icmpv4Packet::new_checked(&message[..]).unwrap();
    assert!(icmp.verify_checksum());
    assert_eq!(icmp.msg_type(), Icmpv4Message::TimeExceeded);
    let quote = Ipv4Packet::new_unchecked(&message[8..]);
    assert_eq!((quote.src_addr(), quote.hop_limit()), (GUEST, 1));
    assert_eq!(&message[8 + 20..8 + 22], 5556u16.to_be_bytes());
    assert_eq!(nat.stats().udp_flows, 0, "nothing went out");
}

#[test]
fn udp_flows_are_bounded_by_evicting_the_oldest() {
    let limits = Limits {
        udp_flows: 8,
        ..Limits::default()
    };
    let mut nat = nat(limits);
    let peer = UdpSocket::bind((LOOPBACK, 0)).unwrap();
    let port = peer.local_addr().unwrap().port();
    for src in 0..100 {
        nat.from_guest(&udp(LOOPBACK, 10000 + src, port, b"x"));
    }
    assert_eq!(nat.stats().udp_flows, 8);
}

#[test]
fn the_udp_flow_evicted_is_the_least_recently_used() {
    let limits = Limits {
        udp_flows: 8,
        ..Limits::default()
    };
    let mut nat = nat(limits);
    let peer = UdpSocket::bind((LOOPBACK, 0)).unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let port = peer.local_addr().unwrap().port();
    // The host port each guest port's datagram came from: one socket per flow.
    let send = |nat: &mut Nat, src: u16| {
        nat.from_guest(&udp(LOOPBACK, src, port, b"x"));
        let mut buf = [0u8; 8];
        peer.recv_from(&mut buf).unwrap().1.port()
    };
    let first: Vec<u16> = (0..8).map(|i| send(&mut nat, 30000 + i)).collect();
    // Flow 0, the oldest opened, is used again; then a ninth flow evicts one.
    assert_eq!(send(&mut nat, 30000), first[0]);
    send(&mut nat, 30100);
    assert_eq!(nat.stats().udp_flows, 8);
    assert_eq!(
        send(&mut nat, 30000),
        first[0],
        "the recently used flow was evicted"
    );
    assert_ne!(send(&mut nat, 30001), first[1], "flow 1 was the one to go");
}

#[test]
fn a_syn_flood_is_bounded_and_other_flows_keep_working() {
    let limits = Limits {
        tcp_flows: 16,
        ..Limits::default()
    };
    let mut nat = nat(limits);
    // A peer that accepts and never speaks: each SYN becomes a flow.
    let listener = TcpListener::bind((LOOPBACK, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut frames = Vec::new();
    for src in 0..500 {
        nat.from_guest(&syn(LOOPBACK, 20000 + src, port));
        frames.extend(drain(&mut nat));
    }
    std::thread::sleep(Duration::from_millis(50));
    frames.extend(drain(&mut nat));
    let stats = nat.stats();
    assert!(stats.tcp_flows <= 16, "{stats:?}");
    assert!(stats.tcp_memory <= (16 * 2) << 20, "{stats:?}");
    assert!(stats.tcp_refused_full >= 484, "{stats:?}");
    let resets = packets(&frames)
        .iter()
        .filter(|(_, _, p)| TcpPacket::new_checked(&p[..]).is_ok_and(|t| t.rst()))
        .count();
    assert!(resets >= 484, "{resets} RSTs");
}

#[test]
fn syns_held_while_connecting_count_against_the_tcp_memory_budget() {
    let len = syn(LOOPBACK, 1, 2).len();
    let limits = Limits {
        tcp_memory: 4 * len + len / 2,
        ..Limits::default()
    };
    let mut nat = nat(limits);
    let listener = TcpListener::bind((LOOPBACK, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    // No events are processed between the SYNs: every flow is still connecting.
    for src in 0..10 {
        nat.from_guest(&syn(LOOPBACK, 21000 + src, port));
    }
    let stats = nat.stats();
    assert_eq!(stats.tcp_flows, 4, "{stats:?}");
    assert_eq!(stats.tcp_memory, 4 * len, "{stats:?}");
    assert_eq!(stats.tcp_refused_full, 6, "{stats:?}");
}

#[test]
fn the_egress_policy_refuses_before_any_host_socket_is_opened() {
    let mut cfg = config(Limits::default());
    cfg.egress = Egress {
        deny: vec!["127.0.0.0/8".parse().unwrap()],
        allow: vec![],
    };
    let mut nat = Nat::new(cfg, Arc::default()).unwrap();
    nat.allow_loopback();
    let listener = TcpListener::bind((LOOPBACK, 0)).unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let peer = UdpSocket::bind((LOOPBACK, 0)).unwrap();
    peer.set_nonblocking(true).unwrap();
    let udp_port = peer.local_addr().unwrap().port();
    nat.from_guest(&syn(LOOPBACK, 23000, port));
    nat.from_guest(&udp(LOOPBACK, 23001, udp_port, b"x"));
    let out = packets(&drain(&mut nat));
    assert!(
        out.iter()
            .any(|(_, _, p)| TcpPacket::new_checked(&p[..]).is_ok_and(|t| t.rst())),
        "the SYN is answered RST"
    );
    std::thread::sleep(Duration::from_millis(50));
    assert!(listener.accept().is_err(), "nothing connected");
    assert!(peer.recv(&mut [0u8; 8]).is_err(), "nothing sent");
    let stats = nat.stats();
    assert_eq!(
        (stats.egress_denied, stats.tcp_flows, stats.udp_flows),
        (2, 0, 0)
    );

    // Reopened by an allow entry, the same connection goes through.
    let mut cfg = config(Limits::default());
    cfg.egress = Egress {
        deny: vec!["127.0.0.0/8".parse().unwrap()],
        allow: vec![std::net::Ipv4Addr::LOCALHOST.to_string().parse().unwrap()],
    };
    let mut nat = Nat::new(cfg, Arc::default()).unwrap();
    nat.allow_loopback();
    nat.from_guest(&syn(LOOPBACK, 23002, port));
    assert_eq!(nat.stats().tcp_flows, 1);
    assert_eq!(nat.stats().egress_denied, 0);
}

#[test]
fn malformed_frames_are_dropped_without_panic() {
    let mut nat = nat(Limits::default());
    let good = [
        syn(LOOPBACK, 1, 2),
        udp(LOOPBACK, 1, 2, b"abc"),
        arp(ArpOperation::Request, GUEST, GATEWAY),
    ];
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for frame in &good {
        for len in 0..frame.len() {
            nat.from_guest(&frame[..len]);
        }
        for _ in 0..2000 {
            let mut f = frame.clone();
            let i = usize::try_from(next()).unwrap() % f.len();
            f[i] = next().to_le_bytes()[0];
            nat.from_guest(&f);
        }
    }
    nat.process();
    while nat.to_guest().is_some() {}
}

#[test]
fn dhcp_gives_the_guest_its_address_and_the_gateway_as_router_and_dns() {
    use crate::dhcp::testing::{client_msg, options};
    let mut nat = nat(Limits::default());
    nat.from_guest(&client_msg(MacAddr::new(GUEST_MAC), 1, None));
    let out = drain(&mut nat);
    assert_eq!(out.len(), 1, "one offer");
    let opts = options(&out[0]);
    let yiaddr = &out[0][14 + 20 + 8 + 16..14 + 20 + 8 + 20];
    assert_eq!(yiaddr, GUEST.octets());
    assert_eq!(opts[&1], [255, 255, 255, 252], "netmask of a /30");
    assert_eq!(opts[&3], GATEWAY.octets(), "router");
    // The pod's first resolver is on loopback: the guest asks the gateway, then the other.
    assert_eq!(opts[&6], [10, 0, 2, 1, 10, 96, 0, 10]);
    assert_eq!(opts[&26], 1500u16.to_be_bytes());
    assert_eq!(opts[&12], b"vm");
    // Another MAC gets nothing.
    nat.from_guest(&client_msg(MacAddr::new([2, 0, 0, 0, 0, 9]), 1, None));
    assert!(drain(&mut nat).is_empty());
}

pub(super) fn free_udp_port() -> u16 {
    UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn inbound_tcp_reaches_a_guest_listener_and_a_closed_guest_port_resets() {
    use super::inbound::{Forward, Listeners, Protocol};
    let open = free_port();
    let closed = free_port();
    let listeners = Arc::new(Listeners::bind(
        &Forward::Ports(vec![(open, Protocol::Tcp), (closed, Protocol::Tcp)]),
        false,
    ));
    assert_eq!(listeners.tcp.len(), 2);
    let mut nat = Nat::new(config(Limits::default()), listeners).unwrap();
    let mut guest = GuestStack::new();
    let mut server = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; 65536]),
        tcp::SocketBuffer::new(vec![0; 65536]),
    );
    server.listen(open).unwrap();
    let h = guest.sockets.add(server);
    let peer = std::thread::spawn(move || {
        let mut s = std::net::TcpStream::connect((LOOPBACK, open)).unwrap();
        s.write_all(b"hello guest").unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut back = String::new();
        s.read_to_string(&mut back).unwrap();
        back
    });
    let mut got = Vec::new();
    guest.run_until(&mut nat, "the peer's bytes", |g| {
        let s = g.sock(h);
        while s.can_recv() {
            s.recv(|b| {
                got.extend_from_slice(b);
                (b.len(), ())
            })
            .unwrap();
        }
        s.state() == tcp::State::CloseWait
    });
    assert_eq!(got, b"hello guest");
    // A loopback peer appears from the gateway's address.
    let remote = guest.sock(h).remote_endpoint().unwrap();
    assert_eq!(remote.addr, IpAddress::Ipv4(GATEWAY));
    guest.sock(h).send_slice(b"hello peer").unwrap();
    guest.sock(h).close();
    guest.run_until(&mut nat, "the reply to leave", |g| {
        matches!(g.sock(h).state(), tcp::State::TimeWait | tcp::State::Closed)
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while !peer.is_finished() {
        assert!(Instant::now() < deadline, "the peer never got its EOF");
        guest.exchange(&mut nat);
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(peer.join().unwrap(), "hello peer");

    // Nothing listens on `closed` in the guest: its RST resets the peer's connection.
    let peer = std::thread::spawn(move || {
        let mut s = std::net::TcpStream::connect((LOOPBACK, closed)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 1];
        s.read(&mut buf).map_err(|e| e.kind())
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while !peer.is_finished() {
        assert!(Instant::now() < deadline, "no reset");
        guest.exchange(&mut nat);
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(peer.join().unwrap(), Err(ErrorKind::ConnectionReset));
}

#[test]
fn peers_get_half_the_tcp_flow_table_and_the_guest_keeps_the_rest() {
    use super::inbound::{Forward, Listeners, Protocol};
    let open = free_port();
    let listeners = Arc::new(Listeners::bind(
        &Forward::Ports(vec![(open, Protocol::Tcp)]),
        false,
    ));
    let limits = Limits {
        tcp_flows: 8,
        ..Limits::default()
    };
    let mut nat = Nat::new(config(limits), listeners).unwrap();
    nat.allow_loopback();
    // Ten peers connect (the kernel completes their handshakes on the listener).
    let peers: Vec<_> = (0..10)
        .map(|_| std::net::TcpStream::connect((LOOPBACK, open)).unwrap())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while nat.stats().inbound_tcp_flows + usize::try_from(nat.stats().tcp_refused_full).unwrap()
        < 10
    {
        assert!(Instant::now() < deadline, "{:?}", nat.stats());
        drain(&mut nat);
        std::thread::sleep(Duration::from_millis(1));
    }
    let stats = nat.stats();
    assert_eq!(stats.inbound_tcp_flows, 4, "{stats:?}");
    assert_eq!(stats.tcp_refused_full, 6, "{stats:?}");
    // The guest's own connections still get the other half.
    let target = TcpListener::bind((LOOPBACK, 0)).unwrap();
    let port = target.local_addr().unwrap().port();
    for src in 0..4 {
        nat.from_guest(&syn(LOOPBACK, 22000 + src, port));
    }
    let stats = nat.stats();
    assert_eq!(
        (stats.tcp_flows, stats.tcp_refused_full),
        (8, 6),
        "{stats:?}"
    );
    drop(peers);
}

#[test]
fn inbound_udp_reaches_the_guest_and_its_reply_leaves_from_the_port() {
    use super::inbound::{Forward, Listeners, Protocol};
    let port = free_udp_port();
    let listeners = Arc::new(Listeners::bind(
        &Forward::Ports(vec![(port, Protocol::Udp)]),
        false,
    ));
    let mut nat = Nat::new(config(Limits::default()), listeners).unwrap();
    let peer = UdpSocket::bind((LOOPBACK, 0)).unwrap();
    let peer_port = peer.local_addr().unwrap().port();
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    peer.send_to(b"query", (LOOPBACK, port)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let datagram = loop {
        if let Some(p) = packets(&drain(&mut nat)).into_iter().next() {
            break p;
        }
        assert!(Instant::now() < deadline, "nothing reached the guest");
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!((datagram.0, datagram.1), (GATEWAY, IpProtocol::Udp));
    let u = UdpPacket::new_checked(&datagram.2[..]).unwrap();
    assert_eq!((u.src_port(), u.dst_port()), (peer_port, port));
    assert_eq!(u.payload(), b"query");
    // The guest answers the address and port it saw.
    nat.from_guest(&udp(GATEWAY, port, peer_port, b"answer"));
    let mut buf = [0u8; 16];
    let (n, from) = peer.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"answer");
    assert_eq!(from.port(), port, "the reply comes from the forwarded port");
}

#[test]
fn the_tcp_buffer_budget_bounds_memory_and_shrinks_buffers_before_refusing() {
    let small = 2 * super::limits::SMALL_TCP_BUFFER;
    // Room for two flows with 1 MiB each way, then eight with small buffers.
    let limits = Limits {
        tcp_buffer: 1 << 20,
        tcp_memory: 2 * (2 << 20) + 8 * small,
        ..Limits::default()
    };
    let mut nat = nat(limits);
    let listener = TcpListener::bind((LOOPBACK, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let mut held = Vec::new();
    for src in 0..40 {
        nat.from_guest(&syn(LOOPBACK, 30000 + src, port));
        for _ in 0..20 {
            nat.process();
            while let Ok((s, _)) = listener.accept() {
                held.push(s);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let stats = nat.stats();
    assert_eq!(stats.tcp_memory, limits.tcp_memory, "{stats:?}");
    assert_eq!(stats.tcp_flows, 10, "{stats:?}");
    assert_eq!(stats.tcp_refused_full, 30, "{stats:?}");
}

#[test]
fn idle_udp_flows_expire() {
    let limits = Limits {
        udp_idle: Duration::from_millis(300),
        ..Limits::default()
    };
    let mut nat = nat(limits);
    let peer = UdpSocket::bind((LOOPBACK, 0)).unwrap();
    let port = peer.local_addr().unwrap().port();
    nat.from_guest(&udp(LOOPBACK, 6000, port, b"x"));
    assert_eq!(nat.stats().udp_flows, 1);
    // The sweep runs once a second.
    let deadline = Instant::now() + Duration::from_secs(5);
    while nat.stats().udp_flows != 0 {
        assert!(Instant::now() < deadline, "the idle flow is still there");
        std::thread::sleep(Duration::from_millis(100));
        nat.process();
    }
}

/// A guest that posts no receive buffers (takes nothing from the engine) and floods what the
/// engine answers by itself: 64 KB echoes to the gateway, DHCP requests, SYNs to closed
/// ports (smoltcp's RSTs), ARP for the gateway. Every path to the guest is bounded by
/// `to-guest-frames`; the surplus is counted as dropped.
#[test]
fn frames_for_a_guest_that_reads_nothing_are_bounded_on_every_path() {
    use crate::dhcp::testing::client_msg;
    let limits = Limits {
        to_guest_frames: 8,
        ..Limits::default()
    };
    let mut cfg = config(limits);
    cfg.mtu = 65520;
    let mut nat = Nat::new(cfg, Arc::default()).unwrap();
    let big = vec![0x5au8; 65000];
    let ping = echo_request(GATEWAY, 1, 1, &big);
    let echo_len = ping.len() - 14 - 20;
    let dhcp = client_msg(MacAddr::new(GUEST_MAC), 1, None);
    let who_has = arp(ArpOperation::Request, GUEST, GATEWAY);
    for i in 0..200u16 {
        nat.from_guest(&ping);
        nat.from_guest(&dhcp);
        nat.from_guest(&syn(GATEWAY, 30000 + i, 22));
        nat.from_guest(&who_has);
        nat.process();
    }
    let stats = nat.stats();
    let queued = std::iter::from_fn(|| nat.to_guest()).count();
    assert!(queued <= 8, "{queued} frames queued for the guest");
    assert!(stats.to_guest_dropped >= 4 * 200 - 8, "{stats:?}");
    // Once the guest reads again, answers flow again.
    nat.from_guest(&ping);
    nat.process();
    let out = packets(&std::iter::from_fn(|| nat.to_guest()).collect::<Vec<_>>());
    assert_eq!(out.len(), 1);
    assert_eq!(
        (out[0].0, out[0].1, out[0].2.len()),
        (GATEWAY, IpProtocol::Icmp, echo_len)
    );
}
