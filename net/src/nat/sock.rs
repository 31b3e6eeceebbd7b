//! The socket calls std does not make, through socket2: connecting without blocking, ICMP
//! echo sockets, resetting on close, and forwarded ports' listeners. Every socket is
//! non-blocking and close-on-exec from its creation.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, SockRef, Socket, Type};

/// A socket of `ty` connected, or connecting, to `dst`.
fn connect(ty: Type, protocol: Option<Protocol>, dst: SocketAddrV4) -> io::Result<Socket> {
    let socket = Socket::new(Domain::IPV4, ty.nonblocking(), protocol)?;
    match socket.connect(&SockAddr::from(dst)) {
        Ok(()) => Ok(socket),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(socket),
        Err(e) => Err(e),
    }
}

/// A TCP connection to `dst` under way: writable once it is established, and
/// [`TcpStream::take_error`] then says whether it failed.
pub(super) fn connect_tcp(dst: SocketAddrV4) -> io::Result<TcpStream> {
    connect(Type::STREAM, None, dst).map(TcpStream::from)
}

/// A UDP socket connected to `dst`.
pub(super) fn connect_udp(dst: SocketAddrV4) -> io::Result<UdpSocket> {
    connect(Type::DGRAM, None, dst).map(UdpSocket::from)
}

/// An unprivileged ICMP echo socket (`SOCK_DGRAM`, `IPPROTO_ICMP`) connected to `dst`: the
/// kernel picks the identifier and matches replies to it. Fails with `EACCES` where
/// `net.ipv4.ping_group_range` leaves vmm's group out.
pub(super) fn connect_icmp(dst: SocketAddrV4) -> io::Result<UdpSocket> {
    connect(Type::DGRAM, Some(Protocol::ICMPV4), dst).map(UdpSocket::from)
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

/// An ICMP error the kernel queued on a socket (`IP_RECVERR`): what the network said about a
/// datagram the socket sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct IcmpError {
    /// ICMP type: 3 (destination unreachable) or 11 (time exceeded).
    pub(super) icmp_type: u8,
    /// ICMP code.
    pub(super) code: u8,
    /// Who sent it: the destination itself, or a router on the way.
    pub(super) offender: Option<Ipv4Addr>,
    /// Bytes of the datagram's payload the kernel returned with it (in the buffer).
    pub(super) len: usize,
    /// For fragmentation needed, the next hop's MTU.
    pub(super) mtu: u32,
}

/// Has the kernel queue ICMP errors about what `socket` sends, to be read with
/// [`recv_error`] when epoll reports an error.
pub(super) fn set_recv_errors(socket: &impl AsFd) -> io::Result<()> {
    let on: libc::c_int = 1;
    let len = libc::socklen_t::try_from(std::mem::size_of_val(&on)).unwrap_or(4);
    // SAFETY: an int option of the size given, on a socket the caller owns.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_fd().as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_RECVERR,
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
    // Room for the extended error and the offender's address, aligned for cmsghdr.
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
    let offender_len = std::mem::size_of::<libc::sockaddr_in>();
    // SAFETY: `msg` was filled in by recvmsg; the first header is within its control data.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&raw const msg) };
    while !cmsg.is_null() {
        // SAFETY: non-null headers from CMSG_FIRSTHDR/CMSG_NXTHDR lie within `control`.
        let header = unsafe { cmsg.read_unaligned() };
        // SAFETY: CMSG_DATA only computes the address after the header.
        let data = unsafe { libc::CMSG_DATA(cmsg) };
        // SAFETY: CMSG_LEN is arithmetic on a length.
        let min = unsafe { libc::CMSG_LEN(u32::try_from(need).unwrap_or(u32::MAX)) };
        if header.cmsg_level == libc::IPPROTO_IP
            && header.cmsg_type == libc::IP_RECVERR
            && header.cmsg_len >= min as usize
        {
            // SAFETY: the kernel wrote a sock_extended_err at `data` (its length checked
            // above); it may be unaligned.
            let ee = unsafe { data.cast::<libc::sock_extended_err>().read_unaligned() };
            if ee.ee_origin != libc::SO_EE_ORIGIN_ICMP {
                // A local error (the kernel's own): not the network's word; read on.
                return recv_error(socket, buf);
            }
            // SO_EE_OFFENDER: the sockaddr right after the extended error.
            let has_offender = header.cmsg_len >= min as usize + offender_len;
            let offender = has_offender.then(|| {
                // SAFETY: `need` bytes on is still within the message (length checked
                // above): only an address computation.
                let at = unsafe { data.add(need) };
                // SAFETY: a sockaddr_in lies there; it may be unaligned.
                let sin = unsafe { at.cast::<libc::sockaddr_in>().read_unaligned() };
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))
            });
            return Ok(Some(IcmpError {
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

/// Has `socket` send with what is left of the guest's `ttl` after the gateway's hop, so
/// that traceroute sees the routers beyond; usual TTLs (64 and more) leave the kernel's
/// default alone. `current` is what the socket was last set to (`Some(0)` when that is not
/// known, which makes the next call set it); a failure leaves it so.
pub(super) fn follow_ttl(socket: &impl AsFd, current: &mut Option<u8>, ttl: u8) {
    let wanted = (ttl < 64).then(|| ttl.saturating_sub(1));
    if *current != wanted {
        let set = SockRef::from(socket).set_ttl_v4(u32::from(wanted.unwrap_or(64)));
        *current = if set.is_ok() { wanted } else { Some(0) };
    }
}

/// Makes closing `socket` send an RST rather than a FIN (`SO_LINGER` 0). Failure only loses
/// the RST: the peer then sees a FIN.
pub(super) fn reset_on_close(socket: &impl AsFd) {
    let _ = SockRef::from(socket).set_linger(Some(Duration::ZERO));
}

/// A TCP listener on 0.0.0.0:`port`, with `SO_REUSEADDR` so that connections of an earlier
/// run in TIME_WAIT do not block it (two listeners still cannot share a port).
pub(super) fn tcp_listener(port: u16) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM.nonblocking(), None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&SockAddr::from(SocketAddrV4::new(
        Ipv4Addr::UNSPECIFIED,
        port,
    )))?;
    socket.listen(128)?;
    Ok(socket.into())
}

/// A UDP socket bound to 0.0.0.0:`port`.
pub(super) fn udp_bound(port: u16) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM.nonblocking(), None)?;
    socket.bind(&SockAddr::from(SocketAddrV4::new(
        Ipv4Addr::UNSPECIFIED,
        port,
    )))?;
    Ok(socket.into())
}
