//! ARP: only requests for the gateway, and replies, reach smoltcp. With smoltcp's any-IP mode
//! it would otherwise answer for every address, the guest's own included. smoltcp is told
//! the guest's MAC ahead of time, so it never has to ask.

use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr,
};

use super::device::ETH_HDR;
use super::engine::{GATEWAY_MAC, Nat};

impl Nat {
    pub(super) fn arp_from_guest(&mut self, frame: &[u8], payload: &[u8]) {
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
        match operation {
            ArpOperation::Request | ArpOperation::Reply if target_protocol_addr == self.gateway => {
                self.ingest(frame);
            }
            _ => self.drop_frame(),
        }
    }

    /// Tells smoltcp the guest's MAC with an ARP reply "from" the guest, so that it never
    /// has to ask (the guest's address and MAC are known). Repeated every sweep, before
    /// smoltcp's neighbour cache would expire the entry.
    pub(super) fn teach_guest_mac(&mut self) {
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
        self.feed(frame);
    }
}
