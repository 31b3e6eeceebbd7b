//! ICMP echo: the gateway answers its own; echo to anywhere else goes out on an unprivileged
//! ICMP socket per (identifier, destination), a datagram flow like UDP's (see
//! [`super::udp`]). The kernel rewrites the identifier on the way out; replies get the
//! guest's back.

use std::net::{Ipv4Addr, SocketAddrV4};

use smoltcp::wire::{Icmpv4Message, Icmpv4Packet, IpProtocol};

use super::device::IP_HDR;
use super::engine::Nat;
use super::flow::FlowKey;
use super::udp::Dgram;

const ICMP_HDR: usize = 8;

impl Nat {
    pub(super) fn icmp_from_guest(&mut self, dst: Ipv4Addr, message: &[u8]) {
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
            Icmpv4Packet::new_unchecked(&mut reply[..]).fill_checksum();
            self.push_ip(self.gateway, IpProtocol::Icmp, &reply);
            return;
        }
        let key = (icmp.echo_ident(), SocketAddrV4::new(dst, 0));
        if !self.cfg.egress.allows(key.1, &[]) {
            self.stats.egress_denied += 1;
            return self.drop_frame();
        }
        let Some(flow) = self.dgram_flow(Dgram::Icmp, key, key.1) else {
            return self.drop_frame();
        };
        // The kernel sets the identifier and checksum.
        if let Err(e) = flow.send(message) {
            log::debug!("masquerade: ICMP echo to {dst}: {e}");
        }
    }

    /// The first `n` bytes of the buffer, an echo reply on flow `key`, to the guest.
    pub(super) fn echo_reply_to_guest(&mut self, (ident, from): FlowKey, n: usize) {
        if n < ICMP_HDR || n + IP_HDR > usize::from(self.cfg.mtu) || self.buf[0] != 0 {
            self.stats.dropped += 1;
            return;
        }
        // The guest's identifier back in place.
        let mut message = self.buf[..n].to_vec();
        let mut packet = Icmpv4Packet::new_unchecked(&mut message[..]);
        packet.set_echo_ident(ident);
        packet.fill_checksum();
        self.push_ip(*from.ip(), IpProtocol::Icmp, &message);
    }
}
