//! The engine's side of smoltcp: a [`phy::Device`] over two frame queues, one from the guest
//! and one, bounded, to it; and the Ethernet and IP framing of what the engine builds for
//! the guest itself.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, Ipv6Addr};

use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IpAddress, IpProtocol,
    Ipv4Packet, Ipv4Repr, Ipv6Packet, Ipv6Repr, TcpPacket,
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
    /// Buffers of frames the guest has taken, for the next frames: each frame to the guest
    /// reuses one instead of allocating. At most [`POOL_FRAMES`].
    pool: Vec<Vec<u8>>,
}

/// Buffers kept for reuse: a burst's worth (a 64 KiB TCP window in 1500-byte frames is 44).
const POOL_FRAMES: usize = 64;

impl ToGuest {
    pub(super) fn new(limit: usize) -> Self {
        Self {
            frames: VecDeque::new(),
            limit: limit.max(1),
            dropped: 0,
            scratch: Vec::new(),
            pool: Vec::new(),
        }
    }

    /// A zeroed buffer of `len` bytes for a frame, from the pool when it has one.
    fn buffer(&mut self, len: usize) -> Vec<u8> {
        let mut frame = self.pool.pop().unwrap_or_default();
        frame.clear();
        frame.resize(len, 0);
        frame
    }

    /// Takes back the buffer of a frame the guest has been given.
    pub(super) fn recycle(&mut self, frame: Vec<u8>) {
        if self.pool.len() < POOL_FRAMES.min(self.limit) {
            self.pool.push(frame);
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
        let mut frame = q.buffer(len);
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
        // The guest's checksums may be partial (offloaded): not verified. Computed for it,
        // but for TCP's: [`finish_tcp_checksum`] completes those as the frame leaves, or
        // leaves the guest to complete them when it takes partial checksums.
        let mut csum = ChecksumCapabilities::ignored();
        csum.ipv4 = Checksum::Tx;
        csum.tcp = Checksum::None;
        // smoltcp's own neighbour solicitations, should its cache of the guest expire.
        csum.icmpv6 = Checksum::Tx;
        caps.checksum = csum;
        caps
    }
}

/// Where the rest of a partial TCP checksum goes: a virtio-net header's `csum_start` (from the
/// start of the frame) and `csum_offset` (from there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartialChecksum {
    /// Where the bytes to sum start: the TCP header.
    pub start: u16,
    /// Where the sum goes, from `start`.
    pub offset: u16,
}

/// Offset of the checksum in a TCP header.
const TCP_CHECKSUM_AT: u16 = 16;

/// Finishes the checksum of a TCP frame for the guest, which smoltcp leaves out. With
/// `partial`, only the pseudo-header's sum goes in (what a sender's NIC offload starts
/// from) and the answer says where the rest goes; otherwise the whole checksum is computed.
/// Frames of other protocols, and frames that do not parse, are left as they are.
pub(super) fn finish_tcp_checksum(frame: &mut [u8], partial: bool) -> Option<PartialChecksum> {
    let eth = EthernetFrame::new_checked(&frame[..]).ok()?;
    let (src, dst, ip_header, segment) = match eth.ethertype() {
        EthernetProtocol::Ipv4 => {
            let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
            if ip.next_header() != IpProtocol::Tcp || ip.more_frags() || ip.frag_offset() != 0 {
                return None;
            }
            let header = usize::from(ip.header_len());
            let (src, dst) = (ip.src_addr().into(), ip.dst_addr().into());
            (src, dst, header, ip.payload().len())
        }
        EthernetProtocol::Ipv6 => {
            // smoltcp puts no extension headers in front of TCP.
            let ip = Ipv6Packet::new_checked(eth.payload()).ok()?;
            if ip.next_header() != IpProtocol::Tcp {
                return None;
            }
            let (src, dst) = (ip.src_addr().into(), ip.dst_addr().into());
            (src, dst, IPV6_HDR, ip.payload().len())
        }
        _ => return None,
    };
    let start = ETH_HDR + ip_header;
    let mut tcp = TcpPacket::new_checked(frame.get_mut(start..start + segment)?).ok()?;
    if !partial {
        tcp.fill_checksum(&src, &dst);
        return None;
    }
    let len = u32::try_from(segment).ok()?;
    tcp.set_checksum(pseudo_header_sum(&src, &dst, len));
    Some(PartialChecksum {
        start: u16::try_from(start).ok()?,
        offset: TCP_CHECKSUM_AT,
    })
}

/// The one's-complement sum, folded, of TCP's pseudo-header (addresses, protocol, length).
fn pseudo_header_sum(src: &IpAddress, dst: &IpAddress, len: u32) -> u16 {
    let mut sum: u32 = u32::from(u8::from(IpProtocol::Tcp)) + (len >> 16) + (len & 0xffff);
    let mut add = |bytes: &[u8]| {
        for pair in bytes.chunks_exact(2) {
            sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
        }
    };
    for a in [src, dst] {
        match a {
            IpAddress::Ipv4(a) => add(&a.octets()),
            IpAddress::Ipv6(a) => add(&a.octets()),
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    u16::try_from(sum).unwrap_or(0)
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

#[cfg(test)]
mod tests {
    use smoltcp::phy::TxToken as _;

    use super::*;

    #[test]
    fn frame_buffers_are_reused_zeroed_and_the_pool_is_bounded() {
        let mut q = ToGuest::new(8);
        TxToken(&mut q).consume(1514, |f| f.fill(0xaa));
        let first = q.pop().unwrap();
        let at = first.as_ptr();
        q.recycle(first);
        // The next frame gets the same allocation, cleared.
        TxToken(&mut q).consume(60, |f| assert!(f.iter().all(|b| *b == 0)));
        let second = q.pop().unwrap();
        assert_eq!((second.as_ptr(), second.len()), (at, 60));
        // Never more buffers kept than the queue's limit.
        for _ in 0..20 {
            q.recycle(vec![0; 64]);
        }
        assert_eq!(q.pool.len(), 8);
    }

    /// A TCP segment in a frame, its checksum left at zero as smoltcp leaves it.
    fn tcp_frame(v6: bool) -> Vec<u8> {
        let payload = b"0123456789abcdefg"; // odd length: the last byte is summed padded
        let mut segment = vec![0u8; 20 + payload.len()];
        segment[12] = 5 << 4; // data offset: 5 words
        segment[20..].copy_from_slice(payload);
        segment[..4].copy_from_slice(&[0x1f, 0x90, 0xc0, 0x01]);
        let mac = MacAddr::new([2, 0, 0, 0, 0, 1]);
        if v6 {
            ipv6_frame(
                (mac, "fd10::1".parse().unwrap()),
                (mac, "fd10::2".parse().unwrap()),
                IpProtocol::Tcp,
                &segment,
                64,
            )
        } else {
            ipv4_frame(
                (mac, Ipv4Addr::new(10, 0, 2, 2)),
                (mac, Ipv4Addr::new(192, 168, 1, 7)),
                IpProtocol::Tcp,
                &segment,
            )
        }
    }

    /// Sums `bytes` as the guest's NIC offload would from `csum_start`, into the field.
    fn complete(frame: &mut [u8], p: PartialChecksum) {
        let start = usize::from(p.start);
        let mut sum: u32 = 0;
        for pair in frame[start..].chunks(2) {
            sum += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        let at = start + usize::from(p.offset);
        let sum = u16::try_from(sum).unwrap();
        frame[at..at + 2].copy_from_slice(&(!sum).to_be_bytes());
    }

    fn tcp_checksum_ok(frame: &[u8], v6: bool) -> bool {
        let eth = EthernetFrame::new_checked(frame).unwrap();
        if v6 {
            let ip = Ipv6Packet::new_checked(eth.payload()).unwrap();
            let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
            tcp.verify_checksum(&ip.src_addr().into(), &ip.dst_addr().into())
        } else {
            let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
            let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
            tcp.verify_checksum(&ip.src_addr().into(), &ip.dst_addr().into())
        }
    }

    #[test]
    fn tcp_checksums_are_completed_or_left_partial_for_the_guest() {
        for v6 in [false, true] {
            let mut full = tcp_frame(v6);
            assert!(!tcp_checksum_ok(&full, v6));
            assert_eq!(finish_tcp_checksum(&mut full, false), None);
            assert!(tcp_checksum_ok(&full, v6), "v6 {v6}: complete");

            // Partial: the guest's completion from the header's offsets gives the same sum.
            let mut partial = tcp_frame(v6);
            let p = finish_tcp_checksum(&mut partial, true).expect("a TCP frame");
            let ip_header = if v6 { IPV6_HDR } else { IP_HDR };
            assert_eq!(
                p,
                PartialChecksum {
                    start: u16::try_from(ETH_HDR + ip_header).unwrap(),
                    offset: 16
                }
            );
            assert!(!tcp_checksum_ok(&partial, v6));
            complete(&mut partial, p);
            assert_eq!(partial, full, "v6 {v6}: partial then completed");
        }
        // Other protocols and truncated frames are left alone.
        let mut udp = tcp_frame(false);
        udp[ETH_HDR + 9] = 17;
        let before = udp.clone();
        assert_eq!(finish_tcp_checksum(&mut udp, true), None);
        assert_eq!(udp, before);
        let mut short = tcp_frame(false);
        short.truncate(ETH_HDR + IP_HDR + 10);
        assert_eq!(finish_tcp_checksum(&mut short, true), None);
    }
}
