//! The masquerade binding: an in-process NAT between the guest and the pod's own sockets.
//!
//! # Theory of operation
//!
//! **Goal.** Give the guest outbound IPv4 connectivity that leaves with the pod's address,
//! with no TAP, bridge, iptables, sysctl or capability: everything the guest sends ends in
//! an ordinary socket of the `vmm` process, and everything it receives is built here.
//!
//! **Addresses.** From `masquerade.cidr` (default 10.0.2.0/30): the gateway is base+1 (this
//! engine, with MAC [`GATEWAY_MAC`]), the guest base+2. The guest learns both by DHCP (the
//! same server as the bridge binding: address, prefix, router, DNS, MTU, host name).
//!
//! **What handles a frame from the guest.** Every frame is classified here first
//! ([`engine::Nat::from_guest`]); only two kinds reach smoltcp:
//!
//! - ARP requests for the gateway address, and ARP replies (smoltcp learns the guest's MAC).
//!   Other ARP is dropped: with smoltcp's any-IP mode it would otherwise answer for every
//!   address, the guest's own included.
//! - TCP. A guest SYN to `dst` starts a non-blocking host `connect(dst)` and is held. When
//!   the connection succeeds, a smoltcp socket listening on `dst` (any-IP mode) is created
//!   and the held SYN is fed to it, so the guest's handshake completes only against a peer
//!   that accepted; a refused connection feeds the SYN with no listener, and smoltcp answers
//!   it with RST; an unreachable one (or one not answered within the connect timeout) gets
//!   an RST too. Established flows are spliced: bytes the guest sent are written to the
//!   host socket as far as it takes them, bytes read from the host socket go into the
//!   smoltcp socket as far as its send window allows, so each direction is flow-controlled
//!   end to end by the two windows. The guest's FIN becomes `shutdown(SHUT_WR)`, the host's
//!   EOF a FIN; a guest RST closes the host socket with `SO_LINGER` 0 (an RST), a host
//!   error aborts the smoltcp socket (an RST to the guest).
//!
//! UDP and ICMP echo never reach smoltcp (it would answer UDP to any address with port
//! unreachable and ICMP echo to any address itself). A UDP datagram from guest port `p` to
//! `dst` goes out on the host socket of flow `(p, dst)`, a socket `connect`ed to `dst` and
//! created on first use; datagrams the host socket receives come back from `dst` to `p`.
//! An ICMP echo request goes out on an unprivileged ICMP socket (`SOCK_DGRAM`,
//! `IPPROTO_ICMP`) per `(identifier, dst)`; the kernel rewrites the identifier, replies get
//! the guest's back. Where the host forbids such sockets (`net.ipv4.ping_group_range`), the
//! log says so once and echo requests are dropped. The gateway answers echo itself.
//!
//! **DNS.** The guest is told the pod's resolvers. A resolver on loopback (127.0.0.53,
//! say) is unreachable from the guest as such, so the guest is given the gateway address
//! instead and the engine sends the gateway's UDP and TCP port 53 to that resolver: the
//! one way into the pod's loopback, and only to the resolver's port.
//!
//! **Isolation.** The guest never reaches the pod's loopback: destinations in 127.0.0.0/8,
//! 0.0.0.0/8, multicast and broadcast are dropped, and the gateway address is no alias of
//! the host (unlike slirp's 10.0.2.2): TCP to it is refused, UDP to it dropped, except DNS
//! as above.
//!
//! **Bounds.** [`Limits`]: at most `tcp_flows` TCP flows (SYNs beyond it are answered with
//! RST), `udp_flows` UDP and `icmp_flows` ICMP flows (the least recently used is evicted),
//! `tcp_buffer` bytes of buffer per direction per TCP flow, `to_guest_frames` frames queued
//! for the guest (beyond it smoltcp keeps data in its socket buffers and UDP datagrams wait
//! in their host sockets). Memory is therefore at most about
//! `tcp_flows × 2 × tcp_buffer` plus small per-flow state, whatever the guest does; the
//! buffers are allocated zeroed and only become resident as data passes through them.
//! UDP and ICMP flows expire after `udp_idle` of silence, TCP connections still connecting
//! after `connect_timeout`, TCP flows in which neither side moved a byte for `tcp_idle`.
//!
//! **Deliberately not done.** IPv6; IP fragments from the guest (dropped: Linux guests do
//! path MTU discovery); UDP datagrams larger than fit one guest frame from the host
//! (dropped); ICMP errors from the host network for UDP (the guest sees a timeout); TCP
//! urgent data; inbound forwarding is not in this module yet.

pub mod backend;
pub mod engine;
pub mod inbound;

pub use backend::NatBackend;
pub use engine::{GATEWAY_MAC, Limits, Nat, NatConfig, NatStats};
pub use inbound::{Forward, Listeners, Protocol};

#[cfg(test)]
mod tests;
