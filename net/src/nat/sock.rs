//! The socket calls std does not make, through socket2: connecting without blocking, ICMP
//! echo sockets, resetting on close, and forwarded ports' listeners. Every socket is
//! non-blocking and close-on-exec from its creation.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
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
    Ok(socket.into())
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
