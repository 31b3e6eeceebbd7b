//! What a guest that posts no receive buffers can make the masquerade engine hold: it sends
//! `COUNT` 64 KB echo requests to the gateway (`ping -s 65000`) and takes nothing back. Prints
//! the process's resident memory before and after and the engine's counters.
//!
//!     nat_flood [COUNT]

use std::net::Ipv4Addr;
use std::sync::Arc;

use net::MacAddr;
use net::nat::{Limits, Listeners, Nat, NatConfig};
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, Icmpv4Packet, Icmpv4Repr,
    IpProtocol, Ipv4Packet, Ipv4Repr,
};

const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0, 0, 0, 1];

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// An Ethernet frame from the guest (10.0.2.2) to the gateway carrying a 65000-byte echo.
fn ping() -> Vec<u8> {
    let data = vec![0x5a; 65000];
    let icmp = Icmpv4Repr::EchoRequest {
        ident: 1,
        seq_no: 1,
        data: &data,
    };
    let ip = Ipv4Repr {
        src_addr: Ipv4Addr::new(10, 0, 2, 2),
        dst_addr: Ipv4Addr::new(10, 0, 2, 1),
        next_header: IpProtocol::Icmp,
        payload_len: icmp.buffer_len(),
        hop_limit: 64,
    };
    let mut frame = vec![0u8; 14 + 20 + icmp.buffer_len()];
    EthernetRepr {
        src_addr: EthernetAddress(GUEST_MAC),
        dst_addr: EthernetAddress(net::nat::GATEWAY_MAC.octets()),
        ethertype: EthernetProtocol::Ipv4,
    }
    .emit(&mut EthernetFrame::new_unchecked(&mut frame[..]));
    ip.emit(
        &mut Ipv4Packet::new_unchecked(&mut frame[14..]),
        &Default::default(),
    );
    icmp.emit(
        &mut Icmpv4Packet::new_unchecked(&mut frame[34..]),
        &Default::default(),
    );
    frame
}

fn main() -> std::io::Result<()> {
    let count: usize = std::env::args()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(10_000);
    let cfg = NatConfig {
        network: Ipv4Addr::new(10, 0, 2, 0),
        prefix: 30,
        guest_mac: MacAddr::new(GUEST_MAC),
        mtu: 65520,
        dns: vec![],
        search: vec![],
        hostname: "flood".into(),
        limits: Limits::default(),
        egress: net::nat::Egress::default(),
        ipv6: None,
    };
    let mut nat = Nat::new(cfg, Arc::new(Listeners::default()))?;
    let frame = ping();
    let before = rss_kib();
    for _ in 0..count {
        nat.from_guest(&frame);
        nat.process();
    }
    let after = rss_kib();
    println!(
        "{count} pings of 65000 bytes, nothing read: RSS {before} KiB -> {after} KiB (+{} MiB); {:?}",
        after.saturating_sub(before) / 1024,
        nat.stats()
    );
    Ok(())
}
