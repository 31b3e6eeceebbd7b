//! The engine's side of smoltcp: a [`phy::Device`] over two frame queues, one from the guest
//! and one, bounded, to it; and the Ethernet and IP framing of what the engine builds for
//! the guest itself.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, Ipv6Addr};

use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IpProtocol, Ipv4Packet,
    Ipv4Repr, Ipv6Packet, Ipv6Repr,
};

use crate::mac::MacAddr;

pub(super) const ETH_HDR: usize = 14;
pub(super) const IP_HDR: usize = 20;
pub(super) const IPV6_HDR: usize = 40;

pub(super) struct Queues {
    /// Frames from the guest for smoltcp.
    pub(super) rx: VecDeque<Vec<u8>>,
    /// Frames for the guest.
    pub(super) tx: ToGuest,
    pub(super) mtu: usize,
}

/// The frames waiting for the guest: never more than `limit` (`to-guest-frames`), whichever
/// path made them (smoltcp's answers and sends, DHCP, the gateway's echo replies, UDP and
/// ICMP from the host). A guest that posts no receive buffers cannot grow it: what would go
/// over the limit is dropped and counted, as a full link would drop it.
pub(super) struct ToGuest {
    frames: VecDeque<Vec<u8>>,
    limit: usize,
    /// Frames dropped because the queue was full.
    pub(super) dropped: u64,
    /// Where smoltcp writes a frame that is then dropped (its token must be consumed).
    scratch: Vec<u8>,
}

impl ToGuest {
    pub(super) fn new(limit: usize) -> Self {
        Self {
            frames: VecDeque::new(),
            limit: limit.max(1),
            dropped: 0,
            scratch: Vec::new(),
        }
    }

    pub(super) fn is_full(&self) -> bool {
        self.frames.len() >= self.limit
    }

    pub(super) fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Queues `frame`, or drops it when the queue is full.
    pub(super) fn push(&mut self, frame: Vec<u8>) {
        if self.is_full() {
            self.dropped += 1;
        } else {
            self.frames.push_back(frame);
        }
    }

    pub(super) fn pop(&mut self) -> Option<Vec<u8>> {
        self.frames.pop_front()
    }
}

pub(super) struct RxToken(Vec<u8>);
pub(super) struct TxToken<'a>(&'a mut ToGuest);

impl phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let q = self.0;
        if q.is_full() {
            // An answer to a frame taken in (an ACK, an RST, ARP) when the guest reads
            // nothing: smoltcp writes it, the guest never gets it.
            q.scratch.clear();
            q.scratch.resize(len, 0);
            q.dropped += 1;
            return f(&mut q.scratch);
        }
        let mut frame = vec![0u8; len];
        let r = f(&mut frame);
        q.frames.push_back(frame);
        r
    }
}

impl phy::Device for Queues {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(
        &mut self,
        _: smoltcp::time::Instant,
    ) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let frame = self.rx.pop_front()?;
        Some((RxToken(frame), TxToken(&mut self.tx)))
    }

    fn transmit(&mut self, _: smoltcp::time::Instant) -> Option<Self::TxToken<'_>> {
        (!self.tx.is_full()).then_some(TxToken(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = self.mtu + ETH_HDR;
        // The guest's checksums may be partial (offloaded): not verified. Computed for it.
        let mut csum = ChecksumCapabilities::ignored();
        csum.ipv4 = Checksum::Tx;
        csum.tcp = Checksum::Tx;
        // smoltcp's own neighbour solicitations, should its cache of the guest expire.
        csum.icmpv6 = Checksum::Tx;
        caps.checksum = csum;
        caps
    }
}

/// A device holding one borrowed frame from the guest, for smoltcp to take in place;
/// what smoltcp answers goes to the guest's queue.
pub(super) struct OneFrame<'f, 'q> {
    pub(super) frame: Option<&'f [u8]>,
    pub(super) tx: &'q mut ToGuest,
    pub(super) caps: DeviceCapabilities,
}

pub(super) struct BorrowedRx<'f>(&'f [u8]);

impl phy::RxToken for BorrowedRx<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0)
    }
}

impl phy::Device for OneFrame<'_, '_> {
    type RxToken<'a>
        = BorrowedRx<'a>
    where
        Self: 'a;
    type TxToken<'a>
        = TxToken<'a>
    where
        Self: 'a;

    fn receive(
        &mut self,
        _: smoltcp::time::Instant,
    ) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let frame = self.frame.take()?;
        Some((BorrowedRx(frame), TxToken(self.tx)))
    }

    fn transmit(&mut self, _: smoltcp::time::Instant) -> Option<Self::TxToken<'_>> {
        (!self.tx.is_full()).then_some(TxToken(self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        self.caps.clone()
    }
}

/// An Ethernet frame from `src_mac` to `dst_mac` carrying an IPv4 packet from `src` to
/// `dst` with `payload`, which is already complete (its checksum included).
pub(super) fn ipv4_frame(
    (src_mac, src): (MacAddr, Ipv4Addr),
    (dst_mac, dst): (MacAddr, Ipv4Addr),
    protocol: IpProtocol,
    payload: &[u8],
) -> Vec<u8> {
    let ip = Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: protocol,
        payload_len: payload.len(),
        hop_limit: 64,
    };
    let mut frame = vec![0u8; ETH_HDR + IP_HDR + payload.len()];
    EthernetRepr {
        src_addr: EthernetAddress(src_mac.octets()),
        dst_addr: EthernetAddress(dst_mac.octets()),
        ethertype: EthernetProtocol::Ipv4,
    }
    .emit(&mut EthernetFrame::new_unchecked(&mut frame[..]));
    ip.emit(
        &mut Ipv4Packet::new_unchecked(&mut frame[ETH_HDR..]),
        &ChecksumCapabilities::default(),
    );
    frame[ETH_HDR + IP_HDR..].copy_from_slice(payload);
    frame
}

/// An Ethernet frame from `src_mac` to `dst_mac` carrying an IPv6 packet from `src` to
/// `dst` with `payload`, which is already complete (its checksum included), and
/// `hop_limit`.
pub(super) fn ipv6_frame(
    (src_mac, src): (MacAddr, Ipv6Addr),
    (dst_mac, dst): (MacAddr, Ipv6Addr),
    protocol: IpProtocol,
    payload: &[u8],
    hop_limit: u8,
) -> Vec<u8> {
    let ip = Ipv6Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: protocol,
        payload_len: payload.len(),
        hop_limit,
    };
    let mut frame = vec![0u8; ETH_HDR + IPV6_HDR + payload.len()];
    EthernetRepr {
        src_addr: EthernetAddress(src_mac.octets()),
        dst_addr: EthernetAddress(dst_mac.octets()),
        ethertype: EthernetProtocol::Ipv6,
    }
    .emit(&mut EthernetFrame::new_unchecked(&mut frame[..]));
    ip.emit(&mut Ipv6Packet::new_unchecked(&mut frame[ETH_HDR..]));
    frame[ETH_HDR + IPV6_HDR..].copy_from_slice(payload);
    frame
}
