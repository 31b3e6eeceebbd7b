//! The socket calls std does not make, through socket2: connecting without blocking, ICMP
//! echo sockets, ICMP error queues, resetting on close, and forwarded ports' listeners, for
//! IPv4 and IPv6. Every socket is non-blocking and close-on-exec from its creation.

use std::io;
use std::net::{
    IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, TcpListener, TcpStream,
    UdpSocket,
};
use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, SockRef, Socket, Type};

/// A socket of `ty` connected, or connecting, to `dst`.
fn connect(ty: Type, protocol: Option<Protocol>, dst: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(dst), ty.nonblocking(), protocol)?;
    match socket.connect(&SockAddr::from(dst)) {
        Ok(()) => Ok(socket),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(socket),
        Err(e) => Err(e),
    }
}

/// A TCP connection to `dst` under way: writable once it is established, and
/// [`TcpStream::take_error`] then says whether it failed.
pub(super) fn connect_tcp(dst: SocketAddr) -> io::Result<TcpStream> {
    connect(Type::STREAM, None, dst).map(TcpStream::from)
}

/// A UDP socket connected to `dst`.
pub(super) fn connect_udp(dst: SocketAddr) -> io::Result<UdpSocket> {
    connect(Type::DGRAM, None, dst).map(UdpSocket::from)
}

/// An unprivileged ICMP echo socket (`SOCK_DGRAM`, `IPPROTO_ICMP` or `IPPROTO_ICMPV6`)
/// connected to `dst`: the kernel picks the identifier, fills in the checksum and matches
/// replies to it. Fails with `EACCES` where `net.ipv4.ping_group_range` (which governs
/// both families) leaves vmm's group out.
pub(super) fn connect_icmp(dst: SocketAddr) -> io::Result<UdpSocket> {
    let protocol = match dst {
        SocketAddr::V4(_) => Protocol::ICMPV4,
        SocketAddr::V6(_) => Protocol::ICMPV6,
    };
    connect(Type::DGRAM, Some(protocol), dst).map(UdpSocket::from)
}

/// Whether this namespace lets vmm's group open unprivileged ICMP echo sockets
/// (`net.ipv4.ping_group_range`); an error other than a refusal is returned.
pub(super) fn ping_sockets_allowed() -> io::Result<bool> {
    match Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::ICMPV4)) {
        Ok(_) => Ok(true),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EACCES | libc::EPERM)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// A raw ICMP socket (needs `CAP_NET_RAW`): it sends ICMP messages the kernel puts an IPv4
/// header on, and receives every ICMP packet to this namespace with its IPv4 header.
/// std's `UdpSocket` serves for its `send_to` and `recv_from`.
pub(super) fn raw_icmp() -> io::Result<UdpSocket> {
    let socket = Socket::new(
        Domain::IPV4,
        Type::RAW.nonblocking(),
        Some(Protocol::ICMPV4),
    )?;
    // Only echo replies and the errors about what it sent (destination unreachable, time
    // exceeded) are delivered to it: a peer's ICMP flood of any other type costs nothing.
    const ICMP_FILTER: libc::c_int = 1;
    let pass: u32 = (1 << 0) | (1 << 3) | (1 << 11);
    let blocked = !pass;
    let len = libc::socklen_t::try_from(std::mem::size_of_val(&blocked)).unwrap_or(4);
    // SAFETY: ICMP_FILTER takes a u32 mask of the size given; the socket is ours.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_RAW,
            ICMP_FILTER,
            (&raw const blocked).cast(),
            len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(socket.into())
}

/// A raw ICMPv6 socket (needs `CAP_NET_RAW`): it sends ICMPv6 messages (the kernel adds the
/// IPv6 header and the checksum) and receives ICMPv6 messages without their IPv6 header,
/// the source in the address returned.
pub(super) fn raw_icmp6() -> io::Result<UdpSocket> {
    let socket = Socket::new(
        Domain::IPV6,
        Type::RAW.nonblocking(),
        Some(Protocol::ICMPV6),
    )?;
    // ICMP6_FILTER: a bit set blocks its type. Only echo replies (129) and the errors about
    // what it sent (1 destination unreachable, 2 packet too big, 3 time exceeded) pass.
    const ICMP6_FILTER: libc::c_int = 1;
    let mut blocked = [u32::MAX; 8];
    for t in [1u8, 2, 3, 129] {
        blocked[usize::from(t >> 5)] &= !(1 << (t & 31));
    }
    let len = libc::socklen_t::try_from(std::mem::size_of_val(&blocked)).unwrap_or(32);
    // SAFETY: ICMP6_FILTER takes a struct icmp6_filter (eight u32) of the size given; the
    // socket is ours.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_ICMPV6,
            ICMP6_FILTER,
            blocked.as_ptr().cast(),
            len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(socket.into())
}

/// An ICMP error the kernel queued on a socket (`IP_RECVERR`): what the network said about a
/// datagram the socket sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct IcmpError {
    /// Whether it is an ICMPv6 error.
    pub(super) v6: bool,
    /// ICMP type: 3 (destination unreachable) or 11 (time exceeded); for ICMPv6, 1
    /// (destination unreachable), 2 (packet too big) or 3 (time exceeded).
    pub(super) icmp_type: u8,
    /// ICMP code.
    pub(super) code: u8,
    /// Who sent it: the destination itself, or a router on the way.
    pub(super) offender: Option<IpAddr>,
    /// Bytes of the datagram's payload the kernel returned with it (in the buffer).
    pub(super) len: usize,
    /// For fragmentation needed or packet too big, the next hop's MTU.
    pub(super) mtu: u32,
}

/// Has the kernel queue ICMP errors about what `socket` (an IPv6 one if `v6`) sends, to be
/// read with [`recv_error`] when epoll reports an error.
pub(super) fn set_recv_errors(socket: &impl AsFd, v6: bool) -> io::Result<()> {
    let on: libc::c_int = 1;
    let len = libc::socklen_t::try_from(std::mem::size_of_val(&on)).unwrap_or(4);
    let (level, name) = if v6 {
        (libc::IPPROTO_IPV6, libc::IPV6_RECVERR)
    } else {
        (libc::IPPROTO_IP, libc::IP_RECVERR)
    };
    // SAFETY: an int option of the size given, on a socket the caller owns.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_fd().as_raw_fd(),
            level,
            name,
            (&raw const on).cast(),
            len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The next ICMP error queued on `socket`, if any; the datagram it is about (its payload,
/// as far as the kernel kept it) goes to `buf`.
pub(super) fn recv_error(socket: &impl AsFd, buf: &mut [u8]) -> io::Result<Option<IcmpError>> {
    // Room for the extended error and the offender's address (IPv6), aligned for cmsghdr.
    let mut control = [0u64; 16];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; all-zero is an empty header that is filled in below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    let fd = socket.as_fd().as_raw_fd();
    // SAFETY: `msg` points at `iov` (at `buf`) and at `control`, both alive and of the
    // lengths given for the duration of the call.
    let n = unsafe { libc::recvmsg(fd, &raw mut msg, libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.kind() {
            io::ErrorKind::WouldBlock => Ok(None),
            _ => Err(e),
        };
    }
    let len = usize::try_from(n).unwrap_or(0);
    let need = std::mem::size_of::<libc::sock_extended_err>();

    // SAFETY: `msg` was filled in by recvmsg; the first header is within its control data.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&raw const msg) };
    while !cmsg.is_null() {
        // SAFETY: non-null headers from CMSG_FIRSTHDR/CMSG_NXTHDR lie within `control`.
        let header = unsafe { cmsg.read_unaligned() };
        // SAFETY: CMSG_DATA only computes the address after the header.
        let data = unsafe { libc::CMSG_DATA(cmsg) };
        // SAFETY: CMSG_LEN is arithmetic on a length.
        let min = unsafe { libc::CMSG_LEN(u32::try_from(need).unwrap_or(u32::MAX)) };
        let kind = (header.cmsg_level, header.cmsg_type);
        let v6 = kind == (libc::IPPROTO_IPV6, libc::IPV6_RECVERR);
        if (v6 || kind == (libc::IPPROTO_IP, libc::IP_RECVERR)) && header.cmsg_len >= min as usize {
            // SAFETY: the kernel wrote a sock_extended_err at `data` (its length checked
            // above); it may be unaligned.
            let ee = unsafe { data.cast::<libc::sock_extended_err>().read_unaligned() };
            if ee.ee_origin != libc::SO_EE_ORIGIN_ICMP && ee.ee_origin != libc::SO_EE_ORIGIN_ICMP6 {
                // A local error (the kernel's own): not the network's word; read on.
                return recv_error(socket, buf);
            }
            // SO_EE_OFFENDER: the sockaddr right after the extended error.
            let offender_len = if v6 {
                std::mem::size_of::<libc::sockaddr_in6>()
            } else {
                std::mem::size_of::<libc::sockaddr_in>()
            };
            let has_offender = header.cmsg_len >= min as usize + offender_len;
            let offender = has_offender.then(|| {
                // SAFETY: `need` bytes on is still within the message (length checked
                // above): only an address computation.
                let at = unsafe { data.add(need) };
                if v6 {
                    // SAFETY: a sockaddr_in6 lies there (length checked above); it may be
                    // unaligned.
                    let sin6 = unsafe { at.cast::<libc::sockaddr_in6>().read_unaligned() };
                    IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr))
                } else {
                    // SAFETY: a sockaddr_in lies there; it may be unaligned.
                    let sin = unsafe { at.cast::<libc::sockaddr_in>().read_unaligned() };
                    IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)))
                }
            });
            return Ok(Some(IcmpError {
                v6,
                icmp_type: ee.ee_type,
                code: ee.ee_code,
                offender: offender.filter(|a| !a.is_unspecified()),
                len: len.min(buf.len()),
                mtu: ee.ee_info,
            }));
        }
        // SAFETY: steps to the next header within `msg`'s control data, or null.
        cmsg = unsafe { libc::CMSG_NXTHDR(&raw const msg, cmsg) };
    }
    Ok(None)
}

/// Has `socket` (an IPv6 one if `v6`) send with what is left of the guest's `ttl` (hop
/// limit) after the gateway's hop, so that traceroute sees the routers beyond; usual TTLs
/// (64 and more) leave the kernel's default alone. `current` is what the socket was last
/// set to (`Some(0)` when that is not known, which makes the next call set it); a failure
/// leaves it so.
pub(super) fn follow_ttl(socket: &impl AsFd, current: &mut Option<u8>, ttl: u8, v6: bool) {
    let wanted = (ttl < 64).then(|| ttl.saturating_sub(1));
    if *current != wanted {
        let value = u32::from(wanted.unwrap_or(64));
        let sock = SockRef::from(socket);
        let set = if v6 {
            sock.set_unicast_hops_v6(value)
        } else {
            sock.set_ttl_v4(value)
        };
        *current = if set.is_ok() { wanted } else { Some(0) };
    }
}

/// Makes closing `socket` send an RST rather than a FIN (`SO_LINGER` 0). Failure only loses
/// the RST: the peer then sees a FIN.
pub(super) fn reset_on_close(socket: &impl AsFd) {
    let _ = SockRef::from(socket).set_linger(Some(Duration::ZERO));
}

/// A socket of `ty` bound to `port` on 0.0.0.0, or on [::] for both families if `dual`.
/// A TCP one has `SO_REUSEADDR`, so that connections of an earlier run in TIME_WAIT do not
/// block it (two listeners still cannot share a port).
fn bound(ty: Type, port: u16, dual: bool) -> io::Result<Socket> {
    let (domain, addr) = if dual {
        let any = SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, port, 0, 0);
        (Domain::IPV6, SockAddr::from(any))
    } else {
        let any = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port);
        (Domain::IPV4, SockAddr::from(any))
    };
    let socket = Socket::new(domain, ty.nonblocking(), None)?;
    if dual {
        // IPv4 peers too, as IPv4-mapped addresses, whatever net.ipv6.bindv6only says.
        socket.set_only_v6(false)?;
    }
    if ty == Type::STREAM {
        socket.set_reuse_address(true)?;
    }
    socket.bind(&addr)?;
    Ok(socket)
}

/// A TCP listener on `port`, of both families if `dual`.
pub(super) fn tcp_listener(port: u16, dual: bool) -> io::Result<TcpListener> {
    let socket = bound(Type::STREAM, port, dual)?;
    socket.listen(128)?;
    Ok(socket.into())
}

/// A UDP socket bound to `port`, of both families if `dual`.
pub(super) fn udp_bound(port: u16, dual: bool) -> io::Result<UdpSocket> {
    bound(Type::DGRAM, port, dual).map(UdpSocket::from)
}
