//! The masquerade NAT fed a sequence of guest frames. Every destination is denied by the
//! egress policy, so no host socket is opened: what is fuzzed is the engine's own handling
//! of what a hostile guest sends (Ethernet, ARP, IPv4, IPv6, ICMP, ICMPv6 with neighbour
//! and router discovery, UDP, TCP, DHCP, DHCPv6, DNS to the gateway), and the invariant is that the queue toward the guest stays within
//! `to-guest-frames` however the guest behaves.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use net::MacAddr;
use net::nat::{Cidr, Egress, Ipv6Config, Limits, Nat, NatConfig};

const TO_GUEST: usize = 8;

fuzz_target!(|data: &[u8]| {
    let mut limits = Limits::default();
    limits.to_guest_frames = TO_GUEST;
    let cfg = NatConfig {
        network: Ipv4Addr::new(10, 0, 2, 0),
        prefix: 30,
        guest_mac: MacAddr::new([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]),
        mtu: 1500,
        dns: Vec::new(),
        search: vec!["svc.cluster.local".into()],
        hostname: "vm".into(),
        limits,
        egress: Egress {
            deny: vec![
                Cidr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0).expect("0.0.0.0/0"),
                Cidr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0).expect("::/0"),
            ],
            allow: Vec::new(),
        },
        ipv6: Some(Ipv6Config {
            network: Ipv6Addr::new(0xfd10, 0, 2, 0, 0, 0, 0, 0),
            prefix: 120,
            dns: vec![Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x10), Ipv6Addr::LOCALHOST],
        }),
    };
    let Ok(mut nat) = Nat::new(cfg, Arc::default()) else {
        return;
    };
    // Each step: a control byte (bit 0: the guest takes one frame, with partial TCP
    // checksums if bit 2 is set too; bit 1: the engine runs its timers and sockets), a
    // length (two bytes, little-endian) and that many bytes of frame.
    let mut rest = data;
    while let [control, lo, hi, tail @ ..] = rest {
        let n = usize::from(u16::from_le_bytes([*lo, *hi])).min(tail.len());
        nat.from_guest(&tail[..n]);
        if control & 5 == 5 {
            if let Some((frame, Some(p))) = nat.to_guest_partial() {
                let end = usize::from(p.start) + usize::from(p.offset) + 2;
                assert!(end <= frame.len(), "partial checksum field past the frame");
            }
        } else if control & 1 != 0 {
            let _ = nat.to_guest();
        }
        if control & 2 != 0 {
            nat.process();
        }
        rest = &tail[n..];
    }
    let mut queued = 0;
    while nat.to_guest().is_some() {
        queued += 1;
        assert!(
            queued <= TO_GUEST,
            "more than {TO_GUEST} frames queued for the guest"
        );
    }
});
