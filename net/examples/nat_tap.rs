//! The masquerade engine on its own, between a TAP and this process's sockets: the
//! benchmark harness of `benches/nat` (no VM, no virtio).
//!
//!     nat_tap TAP_NAME GUEST_MAC
//!
//! Creates TAP `TAP_NAME` (IFF_VNET_HDR, offloads on, so the other side may hand over TSO
//! segments with partial checksums as a virtio-net guest does), prints `ready`, and then
//! plays the gateway 10.0.2.1 of 10.0.2.0/30 to whatever is behind the TAP, MTU 65520. The
//! harness moves the TAP into a namespace and configures it as the guest (10.0.2.2).

use std::io::{self, Write};
use std::sync::Arc;

use net::nat::{Limits, Listeners, Nat, NatConfig};
use net::{FrameBackend, MacAddr, Offloads, Tap, VNET_HDR_LEN};
use vm_memory::VolatileSlice;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(name), Some(mac)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: nat_tap TAP_NAME GUEST_MAC");
        std::process::exit(2);
    };
    let mac: MacAddr = mac
        .parse()
        .map_err(|_| io::Error::other(format!("bad MAC {mac}")))?;
    let mut tap = Tap::open(name).map_err(io::Error::other)?;
    tap.set_offloads(Offloads {
        csum: true,
        tso4: true,
        tso6: true,
        tso_ecn: false,
    })?;
    let cfg = NatConfig {
        network: [10, 0, 2, 0].into(),
        prefix: 30,
        guest_mac: mac,
        mtu: 65520,
        dns: vec![],
        search: vec![],
        hostname: "bench".into(),
        limits: {
            let mut limits = Limits::default();
            // NAT_LIMITS="tcp-buffer=1M,..." for experiments.
            for kv in std::env::var("NAT_LIMITS").unwrap_or_default().split(',') {
                if let Some((k, v)) = kv.split_once('=') {
                    limits.set(k, v).map_err(io::Error::other)?;
                }
            }
            limits
        },
        egress: net::nat::Egress::default(),
        // fd10:0:2::/120 for the guest, as masquerade gives it, where this namespace has
        // IPv6.
        ipv6: net::nat::ipv6::pod_has_ipv6().then(|| net::nat::Ipv6Config {
            network: "fd10:0:2::".parse().expect("an IPv6 address"),
            prefix: 120,
            dns: vec![],
        }),
    };
    let mut nat = Nat::new(cfg, Arc::new(Listeners::default()))?;
    let epoll = Epoll::new()?;
    epoll.ctl(
        ControlOperation::Add,
        tap.poll_fd(),
        EpollEvent::new(EventSet::IN, 0),
    )?;
    epoll.ctl(
        ControlOperation::Add,
        nat.poll_fd(),
        EpollEvent::new(EventSet::IN, 1),
    )?;
    println!("ready");
    io::stdout().flush()?;
    let mut buf = vec![0u8; VNET_HDR_LEN + 14 + 65535];
    let mut out = vec![0u8; VNET_HDR_LEN + 14 + 65535];
    let mut events = [EpollEvent::default(); 4];
    loop {
        let timeout = if nat.has_frames() { 0 } else { -1 };
        match epoll.wait(timeout, &mut events) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        // What the other side sent, a batch at a time.
        for _ in 0..64 {
            let n = match tap.recv(&[VolatileSlice::from(&mut buf[..])]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            };
            if n > VNET_HDR_LEN {
                nat.from_guest(&buf[VNET_HDR_LEN..n]);
            }
        }
        nat.process();
        while let Some(frame) = nat.to_guest() {
            let len = VNET_HDR_LEN + frame.len();
            out[..VNET_HDR_LEN].fill(0);
            out[VNET_HDR_LEN..len].copy_from_slice(&frame);
            // A full TAP queue drops the frame, as a wire would; TCP recovers.
            let _ = tap.send(&[VolatileSlice::from(&mut out[..len])]);
            nat.recycle(frame);
        }
    }
}
