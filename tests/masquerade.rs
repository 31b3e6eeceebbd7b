//! Networking: the masquerade binding (in-process NAT), inside the KVM test host.
//!
//! Each test makes a "pod" namespace (where vmm runs) joined by a veth pair to a "peer"
//! namespace, as the bridge tests do; the pod keeps its own address, and the guest reaches
//! the peer only through vmm's sockets. Traffic goes only between them. The pod is
//! dual-stack, as in a dual-stack cluster, so every test runs with the guest's IPv6 on;
//! the IPv6 tests also run in an IPv6-only pod.

// An integration test crate is a test module of its own: its tests need no `#[cfg(test)]`.
#![allow(clippy::tests_outside_test_module)]

use std::time::Duration;

use vmm_tests::guest::{Guest, Manifest};
use vmm_tests::netns::{dns_server, peer_web_server, peer_web_server_on, sh};
use vmm_tests::testhost_test;

const EXIT: Duration = Duration::from_secs(60);

/// Pod 10.10.0.2/24 and fd00:10::2/64 (default via the peer), peer 10.10.0.1/24 and
/// fd00:10::1/64. The pod keeps a new namespace's defaults, as a Kubernetes pod has them:
/// `ping_group_range` is `1 0` (unprivileged ICMP sockets forbidden), so the guest's pings
/// leave on raw sockets.
fn pod_and_peer() {
    pod_and_peer_with(true);
    sh("ip -n pod addr add 10.10.0.2/24 dev eth0
        ip -n peer addr add 10.10.0.1/24 dev veth-peer
        ip -n pod route add default via 10.10.0.1");
}

/// The pod and peer namespaces joined by a veth pair, with their IPv6 addresses if `ipv6`.
fn pod_and_peer_with(ipv6: bool) {
    sh("ip netns add pod; ip netns add peer
        ip link add veth-pod type veth peer name veth-peer
        ip link set veth-pod netns pod; ip link set veth-peer netns peer
        ip -n pod link set veth-pod name eth0
        ip -n pod link set lo up; ip -n peer link set lo up
        ip -n pod link set eth0 up; ip -n peer link set veth-peer up");
    if ipv6 {
        sh("ip -n pod addr add fd00:10::2/64 dev eth0 nodad
            ip -n peer addr add fd00:10::1/64 dev veth-peer nodad
            ip -n pod -6 route add default via fd00:10::1");
    }
}

fn masquerade_manifest(name: &str, masquerade: &str) -> Manifest {
    Manifest::new(name).network(
        &format!("    - name: pod\n      masquerade: {masquerade}\n"),
        "  - name: pod\n    pod: {}\n",
    )
}

testhost_test!(
    fn the_guest_reaches_the_peer_through_the_nat() {
        pod_and_peer();
        // The pod's resolver is on loopback, as with systemd-resolved or a node-local cache.
        sh("printf 'nameserver 127.0.0.53\\nsearch pod.example\\n' > /etc/resolv.conf");
        dns_server("pod", "127.0.0.53", "10.10.0.1");
        // And one in the peer, for UDP to the peer itself.
        dns_server("peer", "10.10.0.1", "10.99.0.7");
        let md5 = peer_web_server(300_000);
        // A service on the pod's loopback, started before vmm (whose forwarding listeners
        // then leave its port alone).
        sh(
            "ip netns exec pod python3 -m http.server 8081 --bind 127.0.0.1 >/dev/null 2>&1 &
            for i in $(seq 100); do
              ip netns exec pod ss -ltn | grep -q 127.0.0.1:8081 && exit 0; sleep 0.1
            done; exit 1",
        );
        let mut guest = Guest::boot_in_netns("pod", &masquerade_manifest("nat", "{}"), &[]);
        guest.wait_ready(1);
        let lease = guest.check("udhcpc -i eth0 -s /etc/udhcpc.script -q -n -t 5 -T 2");
        for want in [
            "ip=10.0.2.2 mask=30",
            "router=10.0.2.1",
            "dns=10.0.2.1",
            "pod.example",
            "mtu=65520",
            "hostname=nat",
        ] {
            assert!(lease.contains(want), "{want} missing: {lease}");
        }
        // ICMP, then DNS through the gateway to the pod's loopback resolver (UDP both ways),
        // then TCP: the name the resolver gave, a 300 kB download checked by md5.
        guest.check("ping -c 3 -W 5 10.10.0.1");
        guest.check("ping -c 1 -W 5 10.0.2.1");
        let looked_up = guest.check("nslookup peer.pod.example");
        assert!(looked_up.contains("10.10.0.1"), "{looked_up}");
        let looked_up = guest.check("nslookup anything.example 10.10.0.1");
        assert!(looked_up.contains("10.99.0.7"), "{looked_up}");
        // A query to a port nobody listens on fails at once, not after a timeout: the
        // peer's port unreachable comes back to the guest's socket.
        sh("ip -n peer addr add 10.10.0.3/24 dev veth-peer");
        let (rc, refused) = guest.exec("nslookup anything.example 10.10.0.3 2>&1");
        assert_ne!(rc, 0, "{refused}");
        assert!(refused.contains("Connection refused"), "{refused}");
        // traceroute shows every hop: the gateway, the peer as a router, and a host behind
        // it whose closed port ends the trace (TTL exceeded twice, then port unreachable).
        sh("ip netns add far
            ip link add veth-far type veth peer name veth-router
            ip link set veth-far netns far; ip link set veth-router netns peer
            ip -n far link set lo up; ip -n far link set veth-far up
            ip -n far addr add 10.20.0.2/24 dev veth-far
            ip -n far route add default via 10.20.0.1
            ip -n peer addr add 10.20.0.1/24 dev veth-router
            ip -n peer link set veth-router up
            ip netns exec peer sysctl -qw net.ipv4.ip_forward=1");
        let hops = guest.check("traceroute -n -q 1 -w 3 -m 5 10.20.0.2 2>&1");
        let hops: Vec<&str> = hops
            .lines()
            .filter(|l| !l.starts_with("traceroute"))
            .collect();
        let addresses: Vec<&str> = hops
            .iter()
            .filter_map(|l| l.split_whitespace().nth(1))
            .collect();
        assert_eq!(
            addresses,
            ["10.0.2.1", "10.10.0.1", "10.20.0.2"],
            "{hops:?}"
        );
        let got = guest.check("wget -q -O - http://peer.pod.example:8000/blob | md5sum");
        assert_eq!(got.split_whitespace().next(), Some(md5.as_str()));
        // Traffic leaves with the pod's address: the peer saw 10.10.0.2.
        let seen = sh("ip netns exec peer ss -tan");
        assert!(seen.contains("10.10.0.2:"), "{seen}");
        assert!(
            !seen.contains("10.0.2."),
            "the guest's address leaked: {seen}"
        );
        // A refused port is an immediate reset, not a timeout.
        let (rc, out) = guest.exec("nc -w 10 10.10.0.1 1 </dev/null");
        assert_ne!(rc, 0);
        assert!(out.contains("refused"), "{out}");
        // The service on the pod's loopback is reachable from no address the guest can use:
        // not the gateway's, not the pod's own.
        for host in ["10.0.2.1", "10.10.0.2"] {
            let (rc, out) = guest.exec(&format!("nc -w 5 {host} 8081 </dev/null"));
            assert_ne!(rc, 0, "{host}:8081 reached: {out}");
            assert!(out.contains("refused"), "{host}: {out}");
        }
        guest.send("poweroff -f");
        assert_eq!(guest.wait_exit(EXIT), 0, "{}", guest.stderr());
        sh("ip netns del pod; ip netns del peer; ip netns del far");
    },
    timeout = 300
);

testhost_test!(
    fn every_free_port_reaches_the_guest_and_a_ports_list_narrows_it() {
        pod_and_peer();
        // A service of the pod itself holds TCP 8082 before vmm starts: it stays the pod's.
        sh(
            "mkdir -p /tmp/pod-www && echo from-the-pod > /tmp/pod-www/index.html
            cd /tmp/pod-www
            ip netns exec pod python3 -m http.server 8082 >/dev/null 2>&1 &
            for i in $(seq 100); do
              ip netns exec pod ss -ltn | grep -q ':8082 ' && exit 0; sleep 0.1
            done; exit 1",
        );
        let manifest = masquerade_manifest("inbound", "{}")
            .kernel_image(&vmm_tests::iperf_guest_image())
            .memory("512Mi");
        let mut guest = Guest::boot_in_netns("pod", &manifest, &[]);
        guest.wait_ready(1);
        assert!(
            guest
                .stderr()
                .contains("already in use in the pod: 8082/Tcp"),
            "{}",
            guest.stderr()
        );
        guest.check("udhcpc -i eth0 -s /etc/udhcpc.script -q -n -t 5 -T 2");
        guest.check(
            "mkdir -p /www && echo hello-from-guest > /www/index.html && httpd -p 8080 -h /www",
        );
        let fetch = |port: u16| {
            sh(&format!(
                "ip netns exec peer python3 -c \"import urllib.request; \
                 print(urllib.request.urlopen('http://10.10.0.2:{port}/', timeout=20).read().decode())\""
            ))
        };
        assert!(fetch(8080).contains("hello-from-guest"));
        assert!(fetch(8082).contains("from-the-pod"));
        // The guest sees the peer's own address.
        guest.check("nc -l -p 9000 >/tmp/got & sleep 0.5");
        sh("ip netns exec peer python3 -c \"import socket, time; \
            s = socket.create_connection(('10.10.0.2', 9000), timeout=20); \
            s.sendall(b'from-peer'); time.sleep(4)\" &
            sleep 2");
        let conns = guest.check("netstat -tn");
        assert!(conns.contains("10.10.0.1:"), "{conns}");
        // UDP into the guest (and back out from the same port): iperf3's UDP test, whose
        // control connection is TCP.
        guest.check("iperf3 -s -D");
        let udp = sh("sleep 1; ip netns exec peer iperf3 -c 10.10.0.2 -u -b 2M -t 2 -f m");
        assert!(udp.contains("receiver"), "{udp}");
        let lost = udp
            .lines()
            .find(|l| l.contains("receiver"))
            .and_then(|l| l.split('(').nth(1))
            .and_then(|l| l.split('%').next())
            .and_then(|p| p.parse::<f64>().ok())
            .unwrap_or(100.0);
        assert!(lost < 50.0, "{udp}");
        guest.send("poweroff -f");
        assert_eq!(guest.wait_exit(EXIT), 0, "{}", guest.stderr());
        // The pod's own service is untouched and vmm's listeners are gone.
        assert!(fetch(8082).contains("from-the-pod"));
        let listening = sh("ip netns exec pod ss -ltn | wc -l");
        assert!(listening.trim().parse::<u32>().unwrap() < 5, "{listening}");

        // A ports list: only 8080/TCP is forwarded.
        let manifest = masquerade_manifest(
            "ports",
            "\n        ports:\n          - name: http\n            port: 8080",
        );
        let mut guest = Guest::boot_in_netns("pod", &manifest, &[]);
        guest.wait_ready(1);
        guest.check("udhcpc -i eth0 -s /etc/udhcpc.script -q -n -t 5 -T 2");
        guest.check(
            "mkdir -p /www && echo hello-again > /www/index.html && \
             httpd -p 8080 -h /www && httpd -p 8081 -h /www",
        );
        assert!(fetch(8080).contains("hello-again"));
        let refused = std::process::Command::new("ip")
            .args(["netns", "exec", "peer", "python3", "-c"])
            .arg("import urllib.request; urllib.request.urlopen('http://10.10.0.2:8081/', timeout=10)")
            .output()
            .unwrap();
        assert!(!refused.status.success());
        assert!(
            String::from_utf8_lossy(&refused.stderr).contains("refused"),
            "{}",
            String::from_utf8_lossy(&refused.stderr)
        );
        guest.send("poweroff -f");
        assert_eq!(guest.wait_exit(EXIT), 0, "{}", guest.stderr());
        sh("ip netns del pod; ip netns del peer");
    },
    timeout = 400
);

testhost_test!(
    fn without_net_admin_or_net_raw_on_a_custom_subnet() {
        pod_and_peer();
        // Unprivileged ICMP as a fresh namespace has it: forbidden.
        sh("ip netns exec pod sysctl -qw net.ipv4.ping_group_range='1 0'");
        let md5 = peer_web_server(100_000);
        let manifest = masquerade_manifest("nocaps", "\n        cidr: 192.168.100.0/24");
        let mut guest = Guest::boot_wrapped(
            &[
                "ip",
                "netns",
                "exec",
                "pod",
                "setpriv",
                "--bounding-set",
                "-net_admin,-net_raw",
                "--inh-caps",
                "-net_admin,-net_raw",
            ],
            &manifest,
            &[],
        );
        guest.wait_ready(1);
        // vmm really runs without them (CAP_NET_ADMIN is bit 12, CAP_NET_RAW bit 13).
        let status = std::fs::read_to_string(format!("/proc/{}/status", guest.pid())).unwrap();
        let eff = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
            .unwrap();
        assert_eq!(eff & (1 << 12 | 1 << 13), 0, "{status}");

        let lease = guest.check("udhcpc -i eth0 -s /etc/udhcpc.script -q -n -t 5 -T 2");
        assert!(lease.contains("ip=192.168.100.2 mask=24"), "{lease}");
        assert!(lease.contains("router=192.168.100.1"), "{lease}");
        let got = guest.check("wget -q -O - http://10.10.0.1:8000/blob | md5sum");
        assert_eq!(got.split_whitespace().next(), Some(md5.as_str()));
        // The gateway still answers echo itself; beyond it, pings are dropped and the log
        // says why.
        guest.check("ping -c 1 -W 5 192.168.100.1");
        let (rc, _) = guest.exec("ping -c 1 -W 3 10.10.0.1");
        assert_ne!(rc, 0);
        assert!(
            guest
                .stderr()
                .contains("forbids unprivileged ICMP echo sockets"),
            "{}",
            guest.stderr()
        );
        guest.send("poweroff -f");
        assert_eq!(guest.wait_exit(EXIT), 0, "{}", guest.stderr());
        sh("ip netns del pod; ip netns del peer");
    },
    timeout = 300
);

/// Resident memory of process `pid` outside mappings of at least `big` bytes (guest RAM).
fn rss_without_guest_ram(pid: u32, big: u64) -> u64 {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let (mut total, mut size) = (0, 0);
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or("");
        if let Some((lo, hi)) = first.split_once('-')
            && !first.ends_with(':')
            && let (Ok(lo), Ok(hi)) = (u64::from_str_radix(lo, 16), u64::from_str_radix(hi, 16))
        {
            size = hi - lo;
        } else if first == "Rss:" && size < big {
            total += fields.next().unwrap().parse::<u64>().unwrap() << 10;
        }
    }
    total
}

testhost_test!(
    fn a_connection_flood_leaves_memory_bounded_and_other_flows_working() {
        pod_and_peer();
        // The peer: a sink that accepts and never reads (port 7000), and a slow sender
        // (port 8001: 64 KiB in 1 KiB steps over about 6 s).
        sh("cat > /tmp/peer.py <<'PY'
import socket, threading, time
sink = socket.socket(); sink.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sink.bind(('10.10.0.1', 7000)); sink.listen(1024)
held = []
def hold():
    while True:
        held.append(sink.accept()[0])
threading.Thread(target=hold, daemon=True).start()
slow = socket.socket(); slow.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
slow.bind(('10.10.0.1', 8001)); slow.listen(8)
while True:
    c, _ = slow.accept()
    try:
        c.recv(4096)
        c.sendall(b'HTTP/1.0 200 OK\\r\\nContent-Length: 65536\\r\\n\\r\\n')
        for i in range(64):
            c.sendall(bytes([i]) * 1024); time.sleep(0.1)
    except OSError:
        pass
    c.close()
PY
            ip netns exec peer python3 /tmp/peer.py >/dev/null 2>&1 &
            echo $! > /tmp/peer.pid
            for i in $(seq 100); do
              ip netns exec peer ss -ltn | grep -q 10.10.0.1:8001 && exit 0; sleep 0.1
            done; exit 1");
        let manifest = masquerade_manifest("flood", "{}").memory("512Mi");
        let limits = [
            "--nat-limit",
            "tcp-flows=64",
            "--nat-limit",
            "tcp-memory=16M",
        ];
        let mut guest = Guest::boot_in_netns("pod", &manifest, &limits);
        guest.wait_ready(1);
        guest.check("udhcpc -i eth0 -s /etc/udhcpc.script -q -n -t 5 -T 2");
        let before = rss_without_guest_ram(guest.pid(), 512 << 20);
        // A flow that must keep working through the flood.
        guest.check("wget -q -O /tmp/slow http://10.10.0.1:8001/ >/dev/null 2>&1 &");
        // 300 connections as fast as the guest can open them, each sending zeros to a
        // peer that never reads: 64 fill their buffers, the rest are reset.
        guest.check(
            "for i in $(seq 300); do nc 10.10.0.1 7000 </dev/zero >/dev/null 2>&1 & done; sleep 8",
        );
        let during = rss_without_guest_ram(guest.pid(), 512 << 20);
        let grown = during.saturating_sub(before);
        eprintln!(
            "vmm outside guest RAM: {} KiB before the flood, {} KiB during",
            before >> 10,
            during >> 10
        );
        // The TCP buffer budget (16 MiB), plus bookkeeping.
        assert!(grown < 24 << 20, "vmm grew by {} MiB", grown >> 20);
        let held = sh("ip netns exec peer ss -tn state established '( sport = :7000 )' | wc -l");
        let held: u32 = held.trim().parse().unwrap();
        assert!(held <= 65, "{held} connections got through a limit of 64");
        guest.check(
            "i=0; while [ $i -lt 60 ] && pidof wget >/dev/null; do sleep 0.5; i=$((i+1)); done",
        );
        let slow = guest.check("wc -c < /tmp/slow");
        assert_eq!(slow.trim(), "65536", "the slow download was cut short");
        // The download's flow has ended, and once its TIME_WAIT is over it leaves the table:
        // one more flood connection takes the place it may have freed (or is reset).
        guest.check("nc 10.10.0.1 7000 </dev/zero >/dev/null 2>&1 & sleep 2");
        // While the table is full, a new connection is refused at once (RST)...
        let (rc, out) = guest.exec("nc -w 10 10.10.0.1 8001 </dev/null");
        assert_ne!(rc, 0);
        assert!(out.contains("refused"), "{out}");
        // ...and when the flood's connections end, new ones are served again. (Killing the
        // guest's nc is not enough: its kernel keeps the unsent zeros of each orphaned
        // socket against the peer's zero window, so the flows live on; the peer closing
        // its side resets them.)
        guest.check("killall nc");
        sh("kill $(cat /tmp/peer.pid) 2>/dev/null || true; sleep 3");
        let md5 = peer_web_server(10_000);
        let got = guest.check("wget -q -O - http://10.10.0.1:8000/blob | md5sum");
        assert_eq!(got.split_whitespace().next(), Some(md5.as_str()));
        guest.send("poweroff -f");
        assert_eq!(guest.wait_exit(EXIT), 0, "{}", guest.stderr());
        sh("ip netns del pod; ip netns del peer");
    },
    timeout = 400
);

/// Starts dhcpcd (Debian's, in the iperf guest) for IPv6 only and waits for the address it
/// gets by DHCPv6 and the default route the gateway's router advertisement gives; what
/// dhcpcd told its hook.
fn ipv6_by_dhcpv6(guest: &mut Guest) -> String {
    // Its hook records what DHCPv6 told it, as a distribution's hooks would read it (only
    // that: the serial console is slow).
    guest.check(
        "printf '#!/bin/sh\\nenv | grep -E \"^new_dhcp6_\" >> /tmp/dhcpcd.env\\n' > /tmp/hook && chmod +x /tmp/hook && \
         mkdir -p /run/dhcpcd /var/lib/dhcpcd && \
         dhcpcd -6 -b -c /tmp/hook -f /dev/null eth0 >/tmp/dhcpcd.log 2>&1",
    );
    // Bounded in time, not in rounds, so that what dhcpcd saw is printed well inside the
    // agent's timeout however slowly the guest runs.
    guest.check(
        "end=$(($(date +%s) + 40)); while [ $(date +%s) -lt $end ]; do \
           ip -6 addr show dev eth0 | grep -q 'inet6 fd10:0:2::2/' && \
           ip -6 route | grep -q 'default via fe80::56:4dff:fe4d:1' && \
           ! ip -6 addr show dev eth0 | grep -q tentative && exit 0; sleep 0.2; \
         done; cat /tmp/dhcpcd.log; ip -6 addr; ip -6 route; exit 1",
    );
    guest.check("cat /tmp/dhcpcd.env")
}

/// What the guest does over IPv6 in a pod with IPv6 (dual-stack or IPv6-only): its address
/// and routes, DNS servers, ping, DNS over UDP, a TCP download, a refused port, the pod's
/// `::1` out of reach, and a peer's connection in.
fn ipv6_through_the_nat(guest: &mut Guest, md5: &str) {
    let lease = ipv6_by_dhcpv6(guest);
    assert!(lease.contains("fd10:0:2::2"), "{lease}");
    assert!(
        lease.contains("fd00:10::1"),
        "the pod's DNS server: {lease}"
    );
    let routes = guest.check("ip -6 route");
    assert!(
        routes.contains("fd10:0:2::/120 dev eth0"),
        "on-link prefix: {routes}"
    );
    guest.check("ping -6 -c 3 -W 5 fd00:10::1");
    guest.check("ping -6 -c 1 -W 5 fd10:0:2::1");
    let looked_up = guest.check("nslookup peer.pod.example fd00:10::1");
    assert!(looked_up.contains("10.10.0.1"), "{looked_up}");
    // A DNS query to a port nobody listens on: port unreachable, at once.
    sh("ip -n peer addr add fd00:10::3/64 dev veth-peer nodad");
    let (rc, refused) = guest.exec("nslookup anything.example fd00:10::3 2>&1");
    assert_ne!(rc, 0, "{refused}");
    assert!(refused.contains("Connection refused"), "{refused}");
    let got = guest.check("wget -q -O - 'http://[fd00:10::1]:8000/blob' | md5sum");
    assert_eq!(got.split_whitespace().next(), Some(md5));
    let seen = sh("ip netns exec peer ss -tan");
    assert!(
        seen.contains("[fd00:10::2]:"),
        "left with the pod's address: {seen}"
    );
    assert!(
        !seen.contains("fd10:0:2"),
        "the guest's address leaked: {seen}"
    );
    let (rc, out) = guest.exec("nc -w 10 fd00:10::1 1 </dev/null");
    assert_ne!(rc, 0);
    assert!(out.contains("refused"), "{out}");
    // The pod's ::1 service is out of reach by any address the guest can use.
    for host in ["fd10:0:2::1", "fd00:10::2"] {
        let (rc, out) = guest.exec(&format!("nc -w 5 {host} 8081 </dev/null"));
        assert_ne!(rc, 0, "{host} 8081 reached: {out}");
    }
    // A peer connects to the pod's IPv6 address; the guest sees the peer's.
    guest.check("nc -l -p 9000 >/tmp/got & sleep 0.5");
    sh("ip netns exec peer python3 -c \"import socket, time; \
        s = socket.create_connection(('fd00:10::2', 9000), timeout=20, \
            source_address=('fd00:10::1', 0)); \
        s.sendall(b'from-peer-6'); time.sleep(4)\" &
        sleep 2");
    let conns = guest.check("netstat -tn");
    assert!(conns.contains("fd00:10::1"), "{conns}");
    assert_eq!(guest.check("cat /tmp/got").trim(), "from-peer-6");
}

/// Boots the iperf guest (it has dhcpcd) with masquerade in the pod, after a service on
/// the pod's `[::1]:8081` and a DNS server on the peer's IPv6 address; the web server's
/// md5.
fn boot_for_ipv6(name: &str) -> (Guest, String) {
    sh("printf 'nameserver fd00:10::1\\nsearch pod.example\\n' > /etc/resolv.conf");
    dns_server("peer", "fd00:10::1", "10.10.0.1");
    let md5 = peer_web_server_on("fd00:10::1", 200_000);
    sh(
        "ip netns exec pod python3 -m http.server 8081 --bind ::1 >/dev/null 2>&1 &
        for i in $(seq 100); do
          ip netns exec pod ss -ltn | grep -qF '[::1]:8081' && exit 0; sleep 0.1
        done; exit 1",
    );
    let manifest = masquerade_manifest(name, "{}")
        .kernel_image(&vmm_tests::iperf_guest_image())
        .memory("512Mi");
    let guest = Guest::boot_in_netns("pod", &manifest, &[]);
    guest.wait_ready(1);
    (guest, md5)
}

testhost_test!(
    fn a_dual_stack_pod_gives_the_guest_ipv6_and_ipv4_still_works() {
        pod_and_peer();
        let (mut guest, md5) = boot_for_ipv6("dual");
        ipv6_through_the_nat(&mut guest, &md5);
        // IPv4 beside it.
        guest.check("udhcpc -i eth0 -s /etc/udhcpc.script -q -n -t 5 -T 2");
        guest.check("ping -c 2 -W 5 10.10.0.1");
        guest.send("poweroff -f");
        assert_eq!(guest.wait_exit(EXIT), 0, "{}", guest.stderr());
        sh("ip netns del pod; ip netns del peer");
    },
    timeout = 300
);

testhost_test!(
    fn an_ipv6_only_pod_gives_the_guest_ipv6() {
        pod_and_peer_with(true);
        let (mut guest, md5) = boot_for_ipv6("v6only");
        ipv6_through_the_nat(&mut guest, &md5);
        guest.send("poweroff -f");
        assert_eq!(guest.wait_exit(EXIT), 0, "{}", guest.stderr());
        sh("ip netns del pod; ip netns del peer");
    },
    timeout = 300
);
