//! TCP: the guest's connections out, peers' connections in, and the splice between a host
//! socket and a smoltcp socket that each of them becomes.
//!
//! # Theory of operation
//!
//! A flow is keyed by the guest's port and the far end as the guest sees it. It has a host
//! socket (the pod's side) and, once spliced, a smoltcp socket (the guest's side). Its
//! states, the events each takes, and where each event leads:
//!
//! **Connecting** (outbound only: the guest sent a SYN, the host `connect` is under way; the
//! SYN is held and counts against the TCP memory budget).
//! - The guest retransmits the SYN: dropped, the first one is held. → Connecting
//! - The host socket becomes writable and `SO_ERROR` is clear: a smoltcp socket with
//!   buffers from the budget listens on the destination (any-IP mode) and takes the held
//!   SYN, so the guest's handshake completes against a peer that accepted. → Spliced
//! - `SO_ERROR` is set (refused, unreachable): the SYN is fed with no listener, and smoltcp
//!   answers it with RST. → closed
//! - The budget has no room for even small buffers: the same RST, counted as refused.
//!   → closed
//! - `connect-timeout` passes: the same RST. → closed
//!
//! **Spliced** (both sides open; smoltcp runs the guest's side of the protocol).
//! - The guest's data: written to the host socket as far as it takes it; the rest stays in
//!   smoltcp's receive buffer, whose window holds the guest back. → Spliced
//! - The host socket's data: read into smoltcp's send buffer as far as it has room; the rest
//!   stays in the kernel's buffer, whose window holds the peer back. → Spliced
//! - The guest's FIN, once its data is written: `shutdown(SHUT_WR)` on the host socket.
//!   → Spliced (half closed)
//! - The host's EOF: smoltcp closes its socket, a FIN to the guest. → Spliced (half closed)
//! - Both FINs done and smoltcp's socket closed or in TIME-WAIT. → closed cleanly
//! - The guest's RST (smoltcp's socket closed without both FINs): the host socket is
//!   closed with `SO_LINGER` 0, an RST to the peer. → closed
//! - A host socket error: smoltcp aborts, an RST to the guest, and the host socket is
//!   reset. → closed
//! - No byte moved for `tcp-idle` (`inbound-tcp-idle` for a peer's connection): both sides
//!   reset. → closed
//!
//! **Inbound** connections start Spliced: a peer's connection to a forwarded port is
//! accepted, and a smoltcp socket connects from the peer's address (the gateway's, where
//! the guest could not answer the peer's) to the guest's port. The guest's SYN-ACK
//! completes it; its RST closes it, and the peer is reset. Peers hold at most half the flow
//! table and half the memory budget, so that they cannot starve the guest's own
//! connections.
//!
//! Every state change of a flow happens in [`Nat::process`]: host socket events mark flows
//! touched, frames from the guest mark every flow, and each marked flow is pumped.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Instant;

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;
use smoltcp::wire::{IpAddress, IpListenEndpoint, TcpPacket};
use vmm_sys_util::epoll::EventSet;

use super::engine::{Nat, Wake};
use super::flow::{FlowId, FlowKey, FlowTable};
use super::limits::SMALL_TCP_BUFFER;
use super::sock;

pub(super) enum TcpState {
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

pub(super) struct TcpFlow {
    /// A peer opened it to a forwarded port (else the guest opened it).
    inbound: bool,
    /// Bytes of the TCP memory budget it holds: its socket's buffers (both directions), or
    /// while connecting the SYN it holds.
    buffer: usize,
    host: TcpStream,
    state: TcpState,
}

/// The TCP flows and the memory budget they share.
pub(super) struct TcpFlows {
    table: FlowTable<FlowKey, TcpFlow>,
    /// Bytes of the budget that flows hold.
    memory: usize,
    /// Of those, inbound flows': at most half the budget.
    inbound_memory: usize,
    /// Inbound flows: at most half the flow table.
    inbound: usize,
    /// Flows with host socket events since the last pump.
    touched: Vec<FlowId>,
}

impl TcpFlows {
    pub(super) fn new(limit: usize) -> Self {
        Self {
            table: FlowTable::new(limit),
            memory: 0,
            inbound_memory: 0,
            inbound: 0,
            touched: Vec::new(),
        }
    }

    /// Flows now, of which inbound, and the budget bytes they hold.
    pub(super) fn counts(&self) -> (usize, usize, usize) {
        (self.table.len(), self.inbound, self.memory)
    }

    fn hold(&mut self, bytes: usize, inbound: bool) {
        self.memory += bytes;
        if inbound {
            self.inbound_memory += bytes;
        }
    }

    fn release(&mut self, bytes: usize, inbound: bool) {
        self.memory -= bytes;
        if inbound {
            self.inbound_memory -= bytes;
        }
    }
}

impl Nat {
    pub(super) fn tcp_from_guest(&mut self, frame: &[u8], dst: IpAddr, segment: &[u8]) {
        let Ok(tcp) = TcpPacket::new_checked(segment) else {
            return self.drop_frame();
        };
        let key = (tcp.src_port(), SocketAddr::new(dst, tcp.dst_port()));
        let known = self.tcp.table.id(&key);
        if !tcp.syn() || tcp.ack() || known.is_some() {
            // Part of a flow (a retransmitted SYN while connecting is dropped: the
            // first one is held) or stray: smoltcp finds its socket or answers RST.
            let connecting = known
                .and_then(|id| self.tcp.table.get(id))
                .is_some_and(|f| matches!(f.state, TcpState::Connecting { .. }));
            if !connecting {
                self.ingest(frame);
            }
            return;
        }
        let target = if self.is_gateway(dst) {
            self.dns_redirect(dst).filter(|_| key.1.port() == 53)
        } else if self.cfg.egress.allows(key.1, &self.resolvers) {
            Some(key.1)
        } else {
            // Refused as a closed port would be: smoltcp answers RST.
            self.stats.egress_denied += 1;
            None
        };
        // The SYN is held until the host connect finishes, and counts against the TCP
        // memory budget meanwhile, as the flow's buffers will.
        let full =
            self.tcp.table.is_full() || self.tcp.memory + frame.len() > self.cfg.limits.tcp_memory;
        if full && target.is_some() {
            self.stats.tcp_refused_full += 1;
        }
        let Some(target) = target.filter(|_| !full) else {
            // No listener: smoltcp answers the SYN with RST.
            self.ingest(frame);
            return;
        };
        let host = match sock::connect_tcp(target) {
            Ok(s) => s,
            Err(e) => {
                log::debug!("masquerade: connect {target}: {e}");
                self.ingest(frame);
                return;
            }
        };
        let now = Instant::now();
        let flow = TcpFlow {
            inbound: false,
            buffer: frame.len(),
            host,
            state: TcpState::Connecting {
                syn: frame.to_vec(),
                deadline: now + self.cfg.limits.connect_timeout,
            },
        };
        if self.add_tcp(key, flow, now).is_none() {
            self.ingest(frame);
        }
    }

    /// Adds a flow and watches its host socket (edge-triggered, both ways); its id, or
    /// `None` when the socket cannot be watched (the flow is then dropped).
    fn add_tcp(&mut self, key: FlowKey, flow: TcpFlow, now: Instant) -> Option<FlowId> {
        let fd = flow.host.as_raw_fd();
        let (inbound, buffer) = (flow.inbound, flow.buffer);
        let (id, _) = self.tcp.table.insert(key, flow, now);
        let events =
            EventSet::IN | EventSet::OUT | EventSet::READ_HANG_UP | EventSet::EDGE_TRIGGERED;
        if self.poller.add(fd, Wake::Tcp(id), events).is_err() {
            self.tcp.table.remove(id);
            return None;
        }
        self.tcp.hold(buffer, inbound);
        self.tcp.inbound += usize::from(inbound);
        Some(id)
    }

    /// A smoltcp socket with buffers as large as the budget allows (for an `inbound` flow,
    /// the inbound share of it), and its bytes; `None` when not even small ones fit.
    fn tcp_socket(&mut self, inbound: bool) -> Option<(tcp::Socket<'static>, usize)> {
        let limits = &self.cfg.limits;
        let mut free = limits.tcp_memory.saturating_sub(self.tcp.memory);
        if inbound {
            free = free.min((limits.tcp_memory / 2).saturating_sub(self.tcp.inbound_memory));
        }
        let size = [limits.tcp_buffer, SMALL_TCP_BUFFER]
            .into_iter()
            .find(|size| 2 * size <= free)?;
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0u8; size]),
            tcp::SocketBuffer::new(vec![0u8; size]),
        );
        socket.set_nagle_enabled(false);
        Some((socket, 2 * size))
    }

    /// Accepts waiting inbound connections and starts the guest's side of each.
    pub(super) fn accept_inbound(&mut self) {
        self.tcp_listen_ready.sort_unstable();
        self.tcp_listen_ready.dedup();
        let ready = std::mem::take(&mut self.tcp_listen_ready);
        let listeners = self.listeners.clone();
        for i in ready {
            let Some((port, listener)) = listeners.tcp.get(i) else {
                continue;
            };
            loop {
                let (stream, peer) = match listener.accept() {
                    // A dual-stack listener's IPv4 peers come as IPv4-mapped addresses.
                    Ok((s, p)) => (s, SocketAddr::new(p.ip().to_canonical(), p.port())),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => break, // WouldBlock, or an error of that one connection
                };
                self.start_inbound(stream, peer, *port);
            }
        }
    }

    fn start_inbound(&mut self, stream: TcpStream, peer: SocketAddr, port: u16) {
        let src = SocketAddr::new(self.visible_source(peer.ip()), peer.port());
        let Some(guest) = self.guest_of(peer.ip()) else {
            // An IPv6 peer, and the guest has no IPv6.
            sock::reset_on_close(&stream);
            return;
        };
        let key = (port, src);
        let half = (self.cfg.limits.tcp_flows / 2).max(1);
        let full = self.tcp.table.is_full() || self.tcp.inbound >= half;
        if full || self.tcp.table.contains_key(&key) {
            self.stats.tcp_refused_full += u64::from(full);
            sock::reset_on_close(&stream);
            return;
        }
        if stream.set_nonblocking(true).is_err() {
            return;
        }
        let Some((mut socket, buffer)) = self.tcp_socket(true) else {
            self.stats.tcp_refused_full += 1;
            sock::reset_on_close(&stream);
            return;
        };
        let remote = (IpAddress::from(guest), port);
        let local = IpListenEndpoint {
            addr: Some(IpAddress::from(src.ip())),
            port: src.port(),
        };
        if let Err(e) = socket.connect(self.iface.context(), remote, local) {
            log::debug!("masquerade: inbound from {peer} to port {port}: {e}");
            sock::reset_on_close(&stream);
            return;
        }
        let handle = self.sockets.add(socket);
        let flow = TcpFlow {
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
        };
        if self.add_tcp(key, flow, Instant::now()).is_none() {
            self.sockets.remove(handle);
        }
    }

    /// Host socket `events` of flow `id`.
    pub(super) fn tcp_event(&mut self, id: FlowId, events: EventSet) {
        let Some(flow) = self.tcp.table.get_mut(id) else {
            return;
        };
        self.tcp.touched.push(id);
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

    /// Connecting → Spliced, or closed with an RST to the guest.
    fn finish_connect(&mut self, id: FlowId) {
        let (Some((_, dst)), Some(flow)) = (self.tcp.table.key(id), self.tcp.table.get_mut(id))
        else {
            return;
        };
        let TcpState::Connecting { syn, .. } = &mut flow.state else {
            return;
        };
        let syn = std::mem::take(syn);
        // The held SYN's share of the budget goes back before the buffers are taken.
        let held = std::mem::take(&mut flow.buffer);
        let connected = match flow.host.take_error() {
            Ok(None) => Ok(()),
            Ok(Some(e)) | Err(e) => Err(e),
        };
        self.tcp.release(held, false);
        if let Err(e) = connected {
            log::debug!("masquerade: connect {dst}: {e}");
            // No listener: smoltcp answers the guest's SYN with RST.
            self.remove_tcp(id, false);
            self.feed(syn);
            return;
        }
        let Some((mut socket, buffer)) = self.tcp_socket(false) else {
            // Out of buffer budget: refused, as with a full flow table.
            self.stats.tcp_refused_full += 1;
            self.remove_tcp(id, true);
            self.feed(syn);
            return;
        };
        if socket
            .listen(IpListenEndpoint {
                addr: Some(IpAddress::from(dst.ip())),
                port: dst.port(),
            })
            .is_err()
        {
            self.remove_tcp(id, true);
            return;
        }
        let handle = self.sockets.add(socket);
        self.tcp.hold(buffer, false);
        if let Some(flow) = self.tcp.table.get_mut(id) {
            flow.buffer = buffer;
            flow.state = TcpState::Spliced {
                handle,
                readable: true,
                writable: true,
                host_eof: false,
                host_shut: false,
            };
        }
        // Feed the SYN now, while this is the only listener it can match.
        self.feed(syn);
        if self.sockets.get::<tcp::Socket>(handle).state() == tcp::State::Listen {
            self.remove_tcp(id, true);
        }
    }

    /// The flows to pump this round: all of them when smoltcp may have changed any (`all`),
    /// else those with host socket events.
    pub(super) fn tcp_to_pump(&mut self, all: bool) -> Vec<FlowId> {
        if all {
            self.tcp.touched.clear();
            self.tcp.table.ids()
        } else {
            let mut ids = std::mem::take(&mut self.tcp.touched);
            ids.sort_unstable();
            ids.dedup();
            ids
        }
    }

    /// Moves what can move between a spliced flow's two sides; closes it when done.
    pub(super) fn pump(&mut self, id: FlowId) {
        let Some(flow) = self.tcp.table.get_mut(id) else {
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
        let clean = *host_eof && *host_shut;
        let state = sock.state();
        if failed {
            // The host side broke: RST to the guest.
            sock.abort();
            self.remove_tcp(id, true);
            return;
        }
        if moved {
            self.tcp.table.touch(id, Instant::now());
        }
        if matches!(state, tcp::State::Closed | tcp::State::TimeWait) {
            // Closed cleanly when both sides finished; otherwise the guest reset it.
            self.remove_tcp(id, !clean);
        }
    }

    pub(super) fn remove_tcp(&mut self, id: FlowId, reset_host: bool) {
        let Some((_, flow)) = self.tcp.table.remove(id) else {
            return;
        };
        self.tcp.release(flow.buffer, flow.inbound);
        self.tcp.inbound -= usize::from(flow.inbound);
        let _ = self.poller.delete(flow.host.as_raw_fd());
        if reset_host {
            sock::reset_on_close(&flow.host);
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

    /// Closes flows idle too long and connections that took too long.
    pub(super) fn sweep_tcp(&mut self, now: Instant) {
        let limits = self.cfg.limits;
        let stale: Vec<(FlowId, bool)> = self
            .tcp
            .table
            .iter()
            .filter_map(|(id, last, f)| match &f.state {
                TcpState::Connecting { deadline, .. } => (now >= *deadline).then_some((id, true)),
                TcpState::Spliced { .. } => {
                    let idle = if f.inbound {
                        limits.inbound_tcp_idle
                    } else {
                        limits.tcp_idle
                    };
                    (now.saturating_duration_since(last) >= idle).then_some((id, false))
                }
            })
            .collect();
        for (id, connecting) in stale {
            if !connecting {
                self.remove_tcp(id, true);
                continue;
            }
            // Unreachable: RST to the guest, as for a refused connection.
            let syn = match self.tcp.table.get_mut(id).map(|f| &mut f.state) {
                Some(TcpState::Connecting { syn, .. }) => std::mem::take(syn),
                _ => continue,
            };
            self.remove_tcp(id, true);
            self.feed(syn);
        }
    }
}
