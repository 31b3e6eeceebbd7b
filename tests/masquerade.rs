//! Networking: the masquerade binding (in-process NAT), inside the KVM test host.
//!
//! Each test makes a "pod" namespace (where vmm runs) joined by a veth pair to a "peer"
//! namespace, as the bridge tests do; the pod keeps its own address, and the guest reaches
//! the peer only through vmm's sockets. Traffic goes only between them.

use std::time::Duration;

use vmm_tests::guest::{Guest, Manifest};
use vmm_tests::netns::{dns_server, sh};
use vmm_tests::testhost_test;

const EXIT: Duration = Duration::from_secs(60);

/// Pod 10.10.0.2/24 (default via the peer), peer 10.10.0.1/24; unprivileged ICMP allowed in
/// the pod as container runtimes allow it.
fn pod_and_peer() {
    sh("ip netns add pod; ip netns add peer
        ip link add veth-pod type veth peer name veth-peer
        ip link set veth-pod netns pod; ip link set veth-peer netns peer
        ip -n pod link set veth-pod name eth0
        ip -n pod link set lo up; ip -n peer link set lo up
        ip -n pod addr add 10.10.0.2/24 dev eth0
        ip -n peer addr add 10.10.0.1/24 dev veth-peer
        ip -n pod link set eth0 up; ip -n peer link set veth-peer up
        ip -n pod route add default via 10.10.0.1
        ip netns exec pod sysctl -qw net.ipv4.ping_group_range='0 2147483647'");
}

fn masquerade_manifest(name: &str, masquerade: &str) -> Manifest {
    Manifest::new(name).network(
        &format!("    - name: pod\n      masquerade: {masquerade}\n"),
        "  - name: pod\n    pod: {}\n",
    )
}

/// A web server in the peer on 10.10.0.1:8000 serving `name` with `size` random bytes; the
/// md5 of the file.
fn peer_web_server(size: usize) -> String {
    sh(&format!(
        "mkdir -p /tmp/peer-www && head -c {size} /dev/urandom > /tmp/peer-www/blob
        cd /tmp/peer-www
        ip netns exec peer python3 -m http.server 8000 --bind 10.10.0.1 >/dev/null 2>&1 &
        for i in $(seq 100); do
          ip netns exec peer ss -ltn | grep -q 10.10.0.1:8000 && exit 0; sleep 0.2
        done; echo the peer web server did not start; exit 1"
    ));
    sh("md5sum < /tmp/peer-www/blob")
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

testhost_test!(
    fn the_guest_reaches_the_peer_through_the_nat() {
        pod_and_peer();
        // The pod's resolver is on loopback, as with systemd-resolved or a node-local cache.
        sh("printf 'nameserver 127.0.0.53\\nsearch pod.example\\n' > /etc/resolv.conf");
        dns_server("pod", "127.0.0.53", "10.10.0.1");
        let md5 = peer_web_server(300_000);
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
        // A service on the pod's loopback is reachable from no address the guest can use:
        // not the gateway's, not the pod's own.
        sh(
            "ip netns exec pod python3 -m http.server 8081 --bind 127.0.0.1 >/dev/null 2>&1 &
            for i in $(seq 100); do
              ip netns exec pod ss -ltn | grep -q 127.0.0.1:8081 && exit 0; sleep 0.1
            done; exit 1",
        );
        for host in ["10.0.2.1", "10.10.0.2"] {
            let (rc, out) = guest.exec(&format!("nc -w 5 {host} 8081 </dev/null"));
            assert_ne!(rc, 0, "{host}:8081 reached: {out}");
            assert!(out.contains("refused"), "{host}: {out}");
        }
        guest.send("poweroff -f");
        assert_eq!(guest.wait_exit(EXIT), 0, "{}", guest.stderr());
        sh("ip netns del pod; ip netns del peer");
    },
    timeout = 300
);
