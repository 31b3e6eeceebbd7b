//! The masquerade binding: an in-process NAT between the guest and the pod's own sockets.
//!
//! # Theory of operation
//!
//! **Goal.** Give the guest outbound connectivity that leaves with the pod's address,
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
//! - TCP. A guest SYN starts a non-blocking host `connect` and is held; the guest's
//!   handshake completes against a smoltcp socket only once the host side connected, and
//!   the two sockets are then spliced, each direction flow-controlled end to end by the two
//!   windows. The module `tcp` (net/src/nat/tcp.rs) lists each state with its events and where they lead.
//!
//! UDP and ICMP echo never reach smoltcp (it would answer UDP to any address with port
//! unreachable and ICMP echo to any address itself). A UDP datagram from guest port `p` to
//! `dst` goes out on the host socket of flow `(p, dst)`, a socket `connect`ed to `dst` and
//! created on first use; datagrams the host socket receives come back from `dst` to `p`.
//! An ICMP echo request goes out on an unprivileged ICMP socket (`SOCK_DGRAM`,
//! `IPPROTO_ICMP`) per `(identifier, dst)`, whose kernel rewrites the identifier; where the
//! pod forbids such sockets (`net.ipv4.ping_group_range`, `1 0` by default), on one raw ICMP
//! socket opened with `CAP_NET_RAW` before capabilities are dropped, under an identifier
//! per flow (see `icmp`). Replies get the guest's identifier back either way. With neither,
//! the log says so once and echo requests are dropped. The gateway answers echo itself.
//!
//! **Inbound.** [`inbound::Listeners`] holds a TCP listener and a UDP socket on 0.0.0.0
//! for every forwarded port (every free port outside the ephemeral range by default, or
//! `masquerade.ports`), bound once before the first boot. An accepted connection becomes a
//! smoltcp socket connecting from the peer's address and port to the guest's port (from
//! the gateway's address when the peer's could not be answered: loopback, the NAT subnet);
//! the guest's SYN-ACK makes it a spliced flow like any other, its RST resets the peer. A
//! datagram to a forwarded UDP port goes to the guest from the peer's address and port, and
//! the guest's datagrams back to that address and port leave through the forwarded port's
//! socket, so the peer sees its reply come from the port it wrote to.
//!
//! **MTU.** The virtual link between guest and engine is not the pod's: it has MTU 65520
//! (as slirp4netns and pasta use), so a TCP segment carries up to 64 KiB and the per-packet
//! cost on both sides is paid a fortieth as often as at 1500.
//!
//! **DNS.** The guest is told the pod's resolvers. A resolver on loopback (127.0.0.53,
//! say) is unreachable from the guest as such, so the guest is given the gateway address
//! instead and the engine sends the gateway's UDP and TCP port 53 to that resolver: the
//! one way into the pod's loopback, and only to the resolver's port.
//!
//! **Isolation.** The guest never reaches the pod's loopback: destinations in 127.0.0.0/8,
//! 0.0.0.0/8, multicast and broadcast are dropped, and the gateway address is no alias of
//! the host (unlike slirp's 10.0.2.2): TCP to it is refused, UDP to it dropped, except DNS
//! as above. Beyond that the guest reaches what the pod reaches, less what the [`Egress`]
//! policy denies (by default link-local 169.254.0.0/16, cloud metadata, but never the pod's
//! resolvers on port 53): a denied TCP connection is reset, UDP and ICMP dropped.
//!
//! **Bounds.** [`Limits`], each settable with `vmm run --nat-limit KEY=VALUE`: at most
//! `tcp_flows` TCP flows (1024; SYNs and inbound connections beyond it are reset),
//! `udp_flows` UDP flows (1024) and `icmp_flows` ICMP flows (64), the least recently used
//! evicted; `to_guest_frames` frames queued for the guest (256: beyond it smoltcp keeps data
//! in its socket buffers and datagrams wait in their host sockets, and what the engine answers
//! by itself, such as ARP, DHCP, the gateway's echo replies, ACKs and resets, is dropped and
//! counted, so a guest that posts no receive buffers cannot grow the queue). TCP buffers come from a
//! budget, `tcp_memory` (128 MiB) for all flows together: a flow gets `tcp_buffer` (1 MiB)
//! each way while the budget allows (large windows are what make a single stream fast),
//! then [`SMALL_TCP_BUFFER`] (64 KiB), and when not even that fits it is refused. What a
//! guest can make the engine hold is therefore `tcp_memory` plus about 1 KiB of state per
//! flow, whatever it does; the buffers are allocated zeroed and only become resident as
//! data passes through them. UDP and ICMP flows expire after `udp_idle` (60 s) of silence,
//! TCP connections still connecting after `connect_timeout` (30 s), TCP flows in which no
//! byte moved for `tcp_idle` (24 h).
//!
//! **Where the code is**, one file a concern as passt keeps them: `engine` (the [`Nat`] type,
//! classifying the guest's frames, the event dispatch), `tcp`, `udp` (and what ICMP echo
//! shares with it), `icmp`, `arp`, `ipv6`, `flow` (the one flow table: key to flow, a count limit,
//! least recently used first), `device` (smoltcp's side: the frame queues), `sock` (the
//! socket calls std does not make), [`limits`], [`inbound`] (forwarded ports' sockets),
//! [`egress`] (what the guest may reach) and [`backend`] (the engine as a virtual NIC's
//! frame backend).
//!
//! **ICMP errors.** UDP and echo flows' sockets ask for `IP_RECVERR` (the raw echo socket
//! sees the errors itself); what the network says about a datagram or an echo request
//! (port, host or net unreachable, fragmentation needed, TTL exceeded) reaches the guest
//! quoting its own packet, from the router that said it. The gateway counts as a hop: a
//! UDP datagram or echo request with TTL 1 gets time exceeded from it, a TTL below 64 goes
//! on less one.
//!
//! **IPv6**, when the pod has it: the same, with the guest at `masquerade.ipv6Cidr` base+2
//! (told by router advertisements and DHCPv6), neighbour discovery where IPv4 has ARP, and
//! the pod's IPv6 sockets; see `ipv6`.
//!
//! **Deliberately not done.** IP fragments and IPv6 extension headers from the guest (dropped: Linux guests do
//! path MTU discovery); UDP datagrams larger than fit one guest frame from the host
//! (dropped); ICMP errors about TCP connects (a refused or unreachable connect is an RST);
//! TCP urgent data; UDP or ICMP to ports of the pod nobody forwards
//! (the pod's kernel answers); ICMP echo to the pod from outside (the pod's kernel answers
//! it, not the guest).

mod arp;
pub mod backend;
mod device;
pub mod egress;
pub mod engine;
mod flow;
pub mod icmp;
pub mod inbound;
pub mod ipv6;
pub mod limits;
mod sock;
mod tcp;
mod udp;

pub use backend::NatBackend;
pub use device::PartialChecksum;
pub use egress::{Cidr, CidrError, Egress};
pub use engine::{GATEWAY_MAC, Nat, NatConfig, NatStats};
pub use icmp::{Echo, RawSockets};
pub use inbound::{Forward, Listeners, Protocol};
pub use ipv6::Ipv6Config;
pub use limits::{LimitError, Limits, SMALL_TCP_BUFFER};

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests6;
