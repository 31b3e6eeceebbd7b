//! IPv6 through the engine: router and neighbour discovery and DHCPv6 read back with
//! smoltcp's parsers, TCP against a second smoltcp stack, UDP and echo with hand-made
//! frames; peers on this machine's `::1` (which only tests let the guest reach).

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::socket::tcp;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, Icmpv6Packet, Icmpv6Repr, IpAddress, IpCidr,
    IpProtocol, Ipv6Packet, Ipv6Repr, NdiscNeighborFlags, NdiscPrefixInfoFlags, NdiscRepr,
    NdiscRouterFlags, RawHardwareAddress, UdpPacket, UdpRepr,
};

use super::engine::{GATEWAY_MAC, Nat, NatConfig};
use super::ipv6::{Ipv6Config, link_local};
use super::limits::Limits;
use super::tests::{GUEST_MAC, GuestStack, config, drain, eth, free_port, in_private_netns};
use crate::dhcp6;

const GUEST6: Ipv6Addr = Ipv6Addr::new(0xfd10, 0, 2, 0, 0, 0, 0, 2);
const GATEWAY6: Ipv6Addr = Ipv6Addr::new(0xfd10, 0, 2, 0, 0, 0, 0, 1);
const GUEST_LL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0x5054, 0xff, 0xfe12, 0x3456);
const DNS6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x10);
const LOOPBACK6: Ipv6Addr = Ipv6Addr::LOCALHOST;

fn config6(limits: Limits) -> NatConfig {
    NatConfig {
        ipv6: Some(Ipv6Config {
            network: Ipv6Addr::new(0xfd10, 0, 2, 0, 0, 0, 0, 0),
            prefix: 120,
            dns: vec![DNS6],
        }),
        ..config(limits)
    }
}

fn nat6() -> Nat {
    let mut nat = Nat::new(config6(Limits::default()), Arc::default()).expect("engine");
    nat.allow_loopback();
    nat
}

/// The guest's IPv6 packet from `src` to `dst` with `hop_limit`, framed to `dst_mac`.
fn ipv6(
    (src, dst): (Ipv6Addr, Ipv6Addr),
    protocol: IpProtocol,
    hop_limit: u8,
    payload: &[u8],
    dst_mac: [u8; 6],
) -> Vec<u8> {
    let repr = Ipv6Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: protocol,
        payload_len: payload.len(),
        hop_limit,
    };
    let mut p = vec![0u8; 40 + payload.len()];
    repr.emit(&mut Ipv6Packet::new_unchecked(&mut p[..]));
    p[40..].copy_from_slice(payload);
    eth(dst_mac, EthernetProtocol::Ipv6, &p)
}

fn icmpv6_frame(src: Ipv6Addr, dst: Ipv6Addr, hop_limit: u8, repr: &Icmpv6Repr<'_>) -> Vec<u8> {
    let mut p = vec![0u8; repr.buffer_len()];
    repr.emit(
        &src,
        &dst,
        &mut Icmpv6Packet::new_unchecked(&mut p[..]),
        &ChecksumCapabilities::default(),
    );
    let mac = if dst.is_multicast() {
        let o = dst.octets();
        [0x33, 0x33, o[12], o[13], o[14], o[15]]
    } else {
        GATEWAY_MAC.octets()
    };
    ipv6((src, dst), IpProtocol::Icmpv6, hop_limit, &p, mac)
}

fn udp6(dst: Ipv6Addr, src_port: u16, dst_port: u16, hop_limit: u8, data: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 8 + data.len()];
    UdpRepr { src_port, dst_port }.emit(
        &mut UdpPacket::new_unchecked(&mut p[..]),
        &IpAddress::Ipv6(GUEST6),
        &IpAddress::Ipv6(dst),
        data.len(),
        |b| b.copy_from_slice(data),
        &ChecksumCapabilities::default(),
    );
    ipv6(
        (GUEST6, dst),
        IpProtocol::Udp,
        hop_limit,
        &p,
        GATEWAY_MAC.octets(),
    )
}

fn echo6(dst: Ipv6Addr, ident: u16, seq_no: u16, hop_limit: u8, data: &[u8]) -> Vec<u8> {
    let repr = Icmpv6Repr::EchoRequest {
        ident,
        seq_no,
        data,
    };
    icmpv6_frame(GUEST6, dst, hop_limit, &repr)
}

/// A packet for the guest, read back.
#[derive(Debug)]
struct Packet6 {
    dst_mac: EthernetAddress,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    hop_limit: u8,
    protocol: IpProtocol,
    payload: Vec<u8>,
}

fn packets6(frames: &[Vec<u8>]) -> Vec<Packet6> {
    frames
        .iter()
        .filter_map(|f| {
            let e = EthernetFrame::new_checked(&f[..]).ok()?;
            assert_eq!(e.src_addr(), EthernetAddress(GATEWAY_MAC.octets()));
            let ip = Ipv6Packet::new_checked(e.payload()).ok()?;
            Some(Packet6 {
                dst_mac: e.dst_addr(),
                src: ip.src_addr(),
                dst: ip.dst_addr(),
                hop_limit: ip.hop_limit(),
                protocol: ip.next_header(),
                payload: ip.payload().to_vec(),
            })
        })
        .collect()
}

/// The ICMPv6 messages among `frames`, their checksums verified: (packet, message).
fn icmp6(frames: &[Vec<u8>]) -> Vec<Packet6> {
    packets6(frames)
        .into_iter()
        .filter(|p| p.protocol == IpProtocol::Icmpv6)
        .inspect(|p| {
            let icmp = Icmpv6Packet::new_checked(&p.payload[..]).unwrap();
            assert!(icmp.verify_checksum(&p.src, &p.dst), "checksum of {p:?}");
        })
        .collect()
}

/// Waits up to 5 s for what `find` picks among the guest's frames.
fn wait_for<T>(nat: &mut Nat, what: &str, mut find: impl FnMut(Vec<Packet6>) -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(t) = find(packets6(&drain(nat))) {
            return t;
        }
        assert!(Instant::now() < deadline, "no {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_router_solicitation_gets_an_advertisement_of_the_gateway_prefix_mtu_and_dns() {
    let mut nat = nat6();
    drain(&mut nat); // the first unsolicited advertisement
    let rs = Icmpv6Repr::Ndisc(NdiscRepr::RouterSolicit {
        lladdr: Some(RawHardwareAddress::from_bytes(&GUEST_MAC)),
    });
    let all_routers = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);
    nat.from_guest(&icmpv6_frame(GUEST_LL, all_routers, 255, &rs));
    let out = icmp6(&drain(&mut nat));
    assert_eq!(out.len(), 1, "{out:?}");
    let ra = &out[0];
    assert_eq!(
        ra.src,
        link_local(GATEWAY_MAC),
        "from the link-local address"
    );
    assert_eq!((ra.dst, ra.hop_limit), (GUEST_LL, 255));
    assert_eq!(ra.dst_mac, EthernetAddress(GUEST_MAC));
    let icmp = Icmpv6Packet::new_checked(&ra.payload[..]).unwrap();
    let Icmpv6Repr::Ndisc(NdiscRepr::RouterAdvert {
        hop_limit,
        flags,
        router_lifetime,
        lladdr,
        mtu,
        prefix_info,
        ..
    }) = Icmpv6Repr::parse(&ra.src, &ra.dst, &icmp, &ChecksumCapabilities::default()).unwrap()
    else {
        panic!("not an advertisement: {ra:?}");
    };
    assert_eq!(hop_limit, 64);
    assert_eq!(
        flags,
        NdiscRouterFlags::MANAGED | NdiscRouterFlags::OTHER,
        "addresses and DNS from DHCPv6"
    );
    assert_eq!(router_lifetime, smoltcp::time::Duration::from_secs(1800));
    assert_eq!(
        lladdr,
        Some(RawHardwareAddress::from_bytes(&GATEWAY_MAC.octets()))
    );
    assert_eq!(mtu, Some(1500));
    let prefix = prefix_info.expect("prefix information");
    assert_eq!(
        (prefix.prefix, prefix.prefix_len),
        (Ipv6Addr::new(0xfd10, 0, 2, 0, 0, 0, 0, 0), 120)
    );
    assert_eq!(
        prefix.flags,
        NdiscPrefixInfoFlags::ON_LINK,
        "on-link, no SLAAC"
    );
    // RDNSS (type 25) follows the options smoltcp reads: the DNS server at its end.
    let tail = &ra.payload[ra.payload.len() - 24..];
    assert_eq!((tail[0], tail[1]), (25, 3));
    assert_eq!(&tail[8..], &DNS6.octets());

    // An unspecified source gets the advertisement at all nodes; a wrong hop limit none.
    nat.from_guest(&icmpv6_frame(Ipv6Addr::UNSPECIFIED, all_routers, 255, &rs));
    let out = icmp6(&drain(&mut nat));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].dst, Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1));
    assert_eq!(out[0].dst_mac, EthernetAddress([0x33, 0x33, 0, 0, 0, 1]));
    nat.from_guest(&icmpv6_frame(GUEST_LL, all_routers, 64, &rs));
    assert!(
        drain(&mut nat).is_empty(),
        "hop limit below 255: not on the link"
    );
}

#[test]
fn neighbour_solicitations_are_answered_for_the_gateways_addresses_only() {
    let mut nat = nat6();
    drain(&mut nat);
    let solicit = |target: Ipv6Addr, src: Ipv6Addr| {
        let o = target.octets();
        let group = Ipv6Addr::new(
            0xff02,
            0,
            0,
            0,
            0,
            1,
            0xff00 | u16::from(o[13]),
            u16::from_be_bytes([o[14], o[15]]),
        );
        let repr = Icmpv6Repr::Ndisc(NdiscRepr::NeighborSolicit {
            target_addr: target,
            lladdr: Some(RawHardwareAddress::from_bytes(&GUEST_MAC)),
        });
        icmpv6_frame(src, group, 255, &repr)
    };
    for target in [GATEWAY6, link_local(GATEWAY_MAC)] {
        nat.from_guest(&solicit(target, GUEST_LL));
        let out = icmp6(&drain(&mut nat));
        assert_eq!(out.len(), 1, "{target}");
        let icmp = Icmpv6Packet::new_checked(&out[0].payload[..]).unwrap();
        let repr = Icmpv6Repr::parse(&out[0].src, &out[0].dst, &icmp, &Default::default()).unwrap();
        assert_eq!(
            repr,
            Icmpv6Repr::Ndisc(NdiscRepr::NeighborAdvert {
                flags: NdiscNeighborFlags::ROUTER
                    | NdiscNeighborFlags::SOLICITED
                    | NdiscNeighborFlags::OVERRIDE,
                target_addr: target,
                lladdr: Some(RawHardwareAddress::from_bytes(&GATEWAY_MAC.octets())),
            })
        );
        assert_eq!((out[0].src, out[0].dst), (target, GUEST_LL));
    }
    // The guest's duplicate address detection, and another address: no answer.
    nat.from_guest(&solicit(GUEST6, Ipv6Addr::UNSPECIFIED));
    nat.from_guest(&solicit(GATEWAY6, Ipv6Addr::UNSPECIFIED));
    nat.from_guest(&solicit(
        Ipv6Addr::new(0xfd10, 0, 2, 0, 0, 0, 0, 3),
        GUEST_LL,
    ));
    assert!(drain(&mut nat).is_empty());
}

/// The guest's DHCPv6 message from its link-local address, and the engine's answer.
fn dhcp6_exchange(nat: &mut Nat, message: &[u8]) -> Option<dhcp6::testing::Reply> {
    dhcp6_frame_only(nat, message);
    let out = packets6(&drain(nat));
    let reply = out.iter().find(|p| p.protocol == IpProtocol::Udp)?;
    assert_eq!((reply.src, reply.dst), (link_local(GATEWAY_MAC), GUEST_LL));
    let udp = UdpPacket::new_checked(&reply.payload[..]).unwrap();
    assert!(udp.verify_checksum(&IpAddress::Ipv6(reply.src), &IpAddress::Ipv6(reply.dst)));
    assert_eq!(
        (udp.src_port(), udp.dst_port()),
        (dhcp6::SERVER_PORT, dhcp6::CLIENT_PORT)
    );
    Some(dhcp6::testing::Reply::parse(udp.payload()))
}

#[test]
fn dhcpv6_gives_the_guest_its_address_and_the_pods_dns() {
    use dhcp6::testing::message;
    let mut nat = nat6();
    drain(&mut nat);
    let adv = dhcp6_exchange(&mut nat, &message(dhcp6::SOLICIT, None, &[], false)).unwrap();
    assert_eq!(adv.msg_type, dhcp6::ADVERTISE);
    let server = adv.option(2).unwrap().to_vec();
    let reply = dhcp6_exchange(
        &mut nat,
        &message(dhcp6::REQUEST, Some(&server), &[GUEST6], false),
    )
    .unwrap();
    assert_eq!(reply.msg_type, dhcp6::REPLY);
    assert_eq!(reply.address().unwrap().1, GUEST6);
    assert_eq!(reply.option(23), Some(&DNS6.octets()[..]));
    // Another server's request is not answered.
    let other = [0, 3, 0, 1, 9, 9, 9, 9, 9, 9];
    assert!(dhcp6_exchange(&mut nat, &message(dhcp6::REQUEST, Some(&other), &[], false)).is_none());
}

#[test]
fn the_gateway_answers_echo_on_both_its_addresses() {
    let mut nat = nat6();
    drain(&mut nat);
    for (src, dst) in [(GUEST6, GATEWAY6), (GUEST_LL, link_local(GATEWAY_MAC))] {
        let repr = Icmpv6Repr::EchoRequest {
            ident: 9,
            seq_no: 3,
            data: b"six",
        };
        nat.from_guest(&icmpv6_frame(src, dst, 64, &repr));
        let out = icmp6(&drain(&mut nat));
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].src, out[0].dst), (dst, src));
        let icmp = Icmpv6Packet::new_checked(&out[0].payload[..]).unwrap();
        assert_eq!(
            Icmpv6Repr::parse(&out[0].src, &out[0].dst, &icmp, &Default::default()).unwrap(),
            Icmpv6Repr::EchoReply {
                ident: 9,
                seq_no: 3,
                data: b"six"
            }
        );
    }
}

/// A guest stack with both families: its IPv6 address and the gateway as default router.
fn dual_stack_guest() -> GuestStack {
    let mut guest = GuestStack::new();
    guest.iface.update_ip_addrs(|a| {
        a.push(IpCidr::new(IpAddress::Ipv6(GUEST6), 120)).unwrap();
    });
    guest
        .iface
        .routes_mut()
        .add_default_ipv6_route(GATEWAY6)
        .unwrap();
    guest
}

#[test]
fn a_tcp_flow_over_ipv6_is_spliced_both_ways() {
    let mut nat = nat6();
    let listener = TcpListener::bind((LOOPBACK6, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let peer = std::thread::spawn(move || {
        let (mut s, from) = listener.accept().unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        s.write_all(&got.iter().rev().copied().collect::<Vec<_>>())
            .unwrap();
        (got.len(), from.ip())
    });
    let mut guest = dual_stack_guest();
    // The guest finds the gateway by neighbour discovery: nothing is taught to it. (Its
    // source is its address: smoltcp would pick ::1 for ::1.)
    let h = guest.connect_to(
        IpAddress::Ipv6(LOOPBACK6),
        port,
        (IpAddress::Ipv6(GUEST6), 49200),
    );
    let data: Vec<u8> = (0..100_000u32).map(|i| (i * 13 % 251) as u8).collect();
    let mut sent = 0;
    guest.run_until(&mut nat, "the guest's data to go out", |g| {
        let s = g.sock(h);
        if s.can_send() && sent < data.len() {
            sent += s.send_slice(&data[sent..]).unwrap();
        }
        if sent == data.len() && s.state() == tcp::State::Established {
            s.close();
        }
        sent == data.len() && !s.may_send()
    });
    let mut back = Vec::new();
    guest.run_until(&mut nat, "the reply and FIN", |g| {
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
    let (n, from) = peer.join().unwrap();
    assert_eq!(n, data.len());
    assert_eq!(from, IpAddr::V6(LOOPBACK6), "left on an IPv6 socket");
    assert!(back.iter().rev().eq(data.iter()), "the reply differs");
}

#[test]
fn udp_over_ipv6_goes_out_comes_back_and_a_closed_port_is_port_unreachable() {
    let mut nat = nat6();
    drain(&mut nat);
    let peer = UdpSocket::bind((LOOPBACK6, 0)).unwrap();
    let port = peer.local_addr().unwrap().port();
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    nat.from_guest(&udp6(LOOPBACK6, 5353, port, 64, b"question"));
    nat.process();
    let mut buf = [0u8; 64];
    let (n, from) = peer.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"question");
    peer.send_to(b"answer", from).unwrap();
    let reply = wait_for(&mut nat, "UDP reply", |out| {
        out.into_iter().find(|p| p.protocol == IpProtocol::Udp)
    });
    assert_eq!((reply.src, reply.dst), (LOOPBACK6, GUEST6));
    let u = UdpPacket::new_checked(&reply.payload[..]).unwrap();
    assert!(u.verify_checksum(&IpAddress::Ipv6(LOOPBACK6), &IpAddress::Ipv6(GUEST6)));
    assert_eq!(
        (u.src_port(), u.dst_port(), u.payload()),
        (port, 5353, &b"answer"[..])
    );

    // A closed port: ICMPv6 port unreachable, quoting the guest's datagram.
    let closed = {
        let s = UdpSocket::bind((LOOPBACK6, 0)).unwrap();
        s.local_addr().unwrap().port()
    };
    nat.from_guest(&udp6(LOOPBACK6, 5354, closed, 64, b"anyone?"));
    let err = wait_for(&mut nat, "port unreachable", |out| {
        out.into_iter()
            .find(|p| p.protocol == IpProtocol::Icmpv6 && p.payload[0] == 1)
    });
    let icmp = Icmpv6Packet::new_checked(&err.payload[..]).unwrap();
    assert!(icmp.verify_checksum(&err.src, &err.dst));
    let Icmpv6Repr::DstUnreachable {
        reason,
        header,
        data,
    } = Icmpv6Repr::parse(&err.src, &err.dst, &icmp, &Default::default()).unwrap()
    else {
        panic!("{err:?}");
    };
    assert_eq!(reason, smoltcp::wire::Icmpv6DstUnreachable::PortUnreachable);
    assert_eq!((header.src_addr, header.dst_addr), (GUEST6, LOOPBACK6));
    assert_eq!(
        &data[..4],
        &[5354u16.to_be_bytes(), closed.to_be_bytes()].concat()[..]
    );
    // ::1 is not an address the guest could answer: the error comes from the gateway.
    assert_eq!(err.src, GATEWAY6);
}

#[test]
fn a_hop_limit_that_ends_at_the_gateway_gets_time_exceeded_from_it() {
    let mut nat = nat6();
    drain(&mut nat);
    nat.from_guest(&udp6(
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1),
        40000,
        33434,
        1,
        b"probe",
    ));
    let out = icmp6(&drain(&mut nat));
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].src, GATEWAY6);
    assert_eq!(out[0].payload[0], 3, "time exceeded");
    assert_eq!(nat.stats().udp_flows, 0, "nothing left the gateway");
}

#[test]
fn loopback_mapped_and_link_local_destinations_are_dropped() {
    let mut nat = Nat::new(config6(Limits::default()), Arc::default()).unwrap();
    drain(&mut nat);
    let port = {
        let s = UdpSocket::bind((LOOPBACK6, 0)).unwrap();
        s.local_addr().unwrap().port()
    };
    for dst in [
        LOOPBACK6,
        "::ffff:127.0.0.1".parse().unwrap(),
        "::127.0.0.1".parse().unwrap(),
        "fe80::1".parse().unwrap(),
        "ff02::1".parse().unwrap(),
    ] {
        let before = nat.stats().dropped;
        nat.from_guest(&udp6(dst, 5000, port, 64, b"x"));
        nat.from_guest(&echo6(dst, 1, 1, 64, b"x"));
        assert_eq!(nat.stats().dropped, before + 2, "{dst}");
    }
    // From anything but the guest's address, even to a routable one.
    let mut spoofed = udp6("2001:db8::1".parse().unwrap(), 5000, 53, 64, b"x");
    spoofed[14 + 8 + 15] = 9; // source fd10:0:2::9
    let before = nat.stats().dropped;
    nat.from_guest(&spoofed);
    assert_eq!(nat.stats().dropped, before + 1);
    assert_eq!(nat.stats().udp_flows + nat.stats().icmp_flows, 0);
}

#[test]
fn a_pod_without_ipv6_drops_the_guests_ipv6_and_advertises_nothing() {
    let mut nat = Nat::new(config(Limits::default()), Arc::default()).unwrap();
    assert!(drain(&mut nat).is_empty(), "no advertisement");
    let rs = Icmpv6Repr::Ndisc(NdiscRepr::RouterSolicit { lladdr: None });
    let all_routers = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);
    nat.from_guest(&icmpv6_frame(GUEST_LL, all_routers, 255, &rs));
    nat.from_guest(&echo6(GATEWAY6, 1, 1, 64, b"x"));
    assert!(drain(&mut nat).is_empty());
    assert_eq!(nat.stats().dropped, 2);
}

#[test]
fn inbound_ipv6_and_ipv4_peers_reach_the_guest_through_one_dual_stack_listener() {
    use super::inbound::{Forward, Listeners, Protocol};
    let port = free_port();
    let listeners = Arc::new(Listeners::bind(
        &Forward::Ports(vec![(port, Protocol::Tcp)]),
        true,
    ));
    assert_eq!(listeners.tcp.len(), 1);
    let mut nat = Nat::new(config6(Limits::default()), listeners).unwrap();
    let mut guest = dual_stack_guest();
    for (peer_addr, seen_as) in [
        (IpAddr::V6(LOOPBACK6), IpAddress::Ipv6(GATEWAY6)),
        (
            IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            IpAddress::Ipv4(super::tests::GATEWAY),
        ),
    ] {
        let mut server = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; 65536]),
            tcp::SocketBuffer::new(vec![0; 65536]),
        );
        server.listen(port).unwrap();
        let h = guest.sockets.add(server);
        let peer = std::thread::spawn(move || {
            let mut s = std::net::TcpStream::connect(SocketAddr::new(peer_addr, port)).unwrap();
            s.write_all(b"hello").unwrap();
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
        assert_eq!(got, b"hello");
        assert_eq!(guest.sock(h).remote_endpoint().unwrap().addr, seen_as);
        guest.sock(h).send_slice(b"bye").unwrap();
        guest.sock(h).close();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !peer.is_finished() {
            assert!(Instant::now() < deadline, "the peer never got its EOF");
            guest.exchange(&mut nat);
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(peer.join().unwrap(), "bye");
        guest.sockets.remove(h);
    }
}

/// The guest pings ::1 and gets its reply back with its own identifier and data.
fn echo6_through_the_host(echo: super::Echo) {
    let listeners = Arc::new(super::Listeners {
        echo,
        ..Default::default()
    });
    let mut nat = Nat::new(config6(Limits::default()), listeners).unwrap();
    nat.allow_loopback();
    drain(&mut nat);
    for seq_no in [1, 2] {
        nat.from_guest(&echo6(
            LOOPBACK6,
            0x6666,
            seq_no,
            64,
            b"six through the host",
        ));
        let reply = wait_for(&mut nat, "echo reply", |out| {
            out.into_iter()
                .find(|p| p.protocol == IpProtocol::Icmpv6 && p.payload[0] == 129)
        });
        assert_eq!((reply.src, reply.dst), (LOOPBACK6, GUEST6));
        let icmp = Icmpv6Packet::new_checked(&reply.payload[..]).unwrap();
        assert!(icmp.verify_checksum(&reply.src, &reply.dst));
        assert_eq!(
            Icmpv6Repr::parse(&reply.src, &reply.dst, &icmp, &Default::default()).unwrap(),
            Icmpv6Repr::EchoReply {
                ident: 0x6666,
                seq_no,
                data: b"six through the host"
            }
        );
    }
    assert_eq!(nat.stats().icmp_flows, 1, "one flow for both requests");
}

#[test]
fn echo6_leaves_on_unprivileged_sockets_where_the_namespace_allows_them() {
    in_private_netns("0 2147483647", || {
        let echo = super::Echo::open(true);
        assert!(matches!(echo, super::Echo::Unprivileged), "{echo:?}");
        echo6_through_the_host(echo);
    });
}

#[test]
fn echo6_leaves_on_a_raw_socket_in_a_pod_that_forbids_unprivileged_ones() {
    in_private_netns("1 0", || {
        let echo = super::Echo::open(true);
        assert!(
            matches!(&echo, super::Echo::Raw(r) if r.v6.is_some()),
            "{echo:?}"
        );
        echo6_through_the_host(echo);
    });
}

#[test]
fn ipv6_answers_for_a_guest_that_reads_nothing_are_bounded() {
    use dhcp6::testing::message;
    let limits = Limits {
        to_guest_frames: 8,
        ..Limits::default()
    };
    let mut nat = Nat::new(config6(limits), Arc::default()).unwrap();
    let rs = Icmpv6Repr::Ndisc(NdiscRepr::RouterSolicit { lladdr: None });
    let all_routers = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);
    let rs = icmpv6_frame(GUEST_LL, all_routers, 255, &rs);
    let ping = echo6(GATEWAY6, 1, 1, 64, &[0x5a; 1000]);
    let ns = icmpv6_frame(
        GUEST_LL,
        GATEWAY6,
        255,
        &Icmpv6Repr::Ndisc(NdiscRepr::NeighborSolicit {
            target_addr: GATEWAY6,
            lladdr: None,
        }),
    );
    let solicit = message(dhcp6::SOLICIT, None, &[], false);
    for _ in 0..100 {
        nat.from_guest(&rs);
        nat.from_guest(&ping);
        nat.from_guest(&ns);
        dhcp6_frame_only(&mut nat, &solicit);
        nat.process();
    }
    let stats = nat.stats();
    let queued = std::iter::from_fn(|| nat.to_guest()).count();
    assert!(queued <= 8, "{queued} frames queued for the guest");
    assert!(stats.to_guest_dropped >= 4 * 100 - 8, "{stats:?}");
}

/// Sends the guest's DHCPv6 `message` without reading the answer.
fn dhcp6_frame_only(nat: &mut Nat, message: &[u8]) {
    let mut p = vec![0u8; 8 + message.len()];
    UdpRepr {
        src_port: dhcp6::CLIENT_PORT,
        dst_port: dhcp6::SERVER_PORT,
    }
    .emit(
        &mut UdpPacket::new_unchecked(&mut p[..]),
        &IpAddress::Ipv6(GUEST_LL),
        &IpAddress::Ipv6(dhcp6::ALL_SERVERS),
        message.len(),
        |b| b.copy_from_slice(message),
        &ChecksumCapabilities::default(),
    );
    nat.from_guest(&ipv6(
        (GUEST_LL, dhcp6::ALL_SERVERS),
        IpProtocol::Udp,
        1,
        &p,
        [0x33, 0x33, 0, 1, 0, 2],
    ));
}
