//! Networking: the bridge binding with DHCP delegation, inside the KVM test host.
//!
//! Each test makes its own network namespaces there: a "pod" namespace (where vmm runs and
//! whose `eth0` it takes over) joined by a veth pair to a "peer" namespace. Traffic goes
//! only between them.

use std::process::Command;
use std::time::Duration;

use vmm_tests::guest::{Guest, Manifest};
use vmm_tests::testhost_test;

const EXIT: Duration = Duration::from_secs(60);

fn sh(script: &str) -> String {
    let out = Command::new("sh")
        .args(["-ec", script])
        .output()
        .expect("run sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{script}\n{text}");
    text
}

/// A pod namespace with `eth0` (MAC 0a:58:0a:0a:00:02, `pod_setup` for addresses and
/// routes) wired to a peer namespace whose end has `peer_setup`.
fn pod_and_peer(pod_setup: &str, peer_setup: &str) {
    sh(&format!(
        "ip netns add pod; ip netns add peer
         ip link add veth-pod type veth peer name veth-peer
         ip link set veth-pod netns pod; ip link set veth-peer netns peer
         ip -n pod link set veth-pod name eth0
         ip -n pod link set eth0 address 0a:58:0a:0a:00:02 mtu 1400
         ip -n peer link set veth-peer mtu 1400
         ip -n pod link set lo up; ip -n peer link set lo up
         ip -n pod link set eth0 up; ip -n peer link set veth-peer up
         {pod_setup}
         {peer_setup}"
    ));
}

fn pod_state() -> String {
    sh("ip -n pod -o link show | sed 's/^[0-9]*: //; s/ qdisc.*link\\/ether / /; s/ brd.*//' | sort
        ip -n pod -4 -o addr show | awk '{print $2, $4}' | sort
        ip -n pod route show | sort")
}

fn bridge_manifest(name: &str) -> Manifest {
    Manifest::new(name).network(
        "    - name: pod\n      bridge: {}\n",
        "  - name: pod\n    pod: {}\n",
    )
}

testhost_test!(
    fn bridge_binding_delegates_the_pod_address_by_dhcp() {
        pod_and_peer(
            "ip -n pod addr add 10.10.0.2/24 dev eth0
             ip -n pod route add default via 10.10.0.1
             ip -n pod route add 192.168.50.0/24 via 10.10.0.1",
            "ip -n peer addr add 10.10.0.1/24 dev veth-peer
             ip -n peer addr add 192.168.50.1/24 dev lo",
        );
        let before = pod_state();
        let mut guest = Guest::boot_in_netns("pod", &bridge_manifest("bridged"), &[]);
        guest.wait_ready(1);
        let lease = guest.check("udhcpc -i eth0 -s /etc/udhcpc.script -q -n -t 5 -T 2");
        assert!(lease.contains("ip=10.10.0.2 mask=24"), "{lease}");
        assert!(lease.contains("mtu=1400"), "{lease}");
        assert!(lease.contains("hostname=bridged"), "{lease}");
        let link = guest.check("cat /sys/class/net/eth0/address /sys/class/net/eth0/mtu");
        assert_eq!(
            link.split_whitespace().collect::<Vec<_>>(),
            ["0a:58:0a:0a:00:02", "1400"]
        );
        let routes = guest.check("ip route");
        assert!(routes.contains("default via 10.10.0.1"), "{routes}");
        assert!(routes.contains("192.168.50.0/24 via 10.10.0.1"), "{routes}");
        assert_eq!(guest.check("hostname").trim(), "bridged");

        // While vmm runs, the pod keeps its IP on a dummy eth0; the NIC is on the bridge.
        let during = sh("ip -n pod -o link show; ip -n pod -4 -o addr show");
        assert!(during.contains("eth0-nic"), "{during}");
        assert!(during.contains("br-eth0"), "{during}");
        assert!(during.contains("tap-eth0"), "{during}");
        assert!(during.contains("10.10.0.2/24"), "{during}");

        guest.check("ping -c 3 -W 5 10.10.0.1");
        guest.check("ping -c 2 -W 5 192.168.50.1");
        // TCP both ways: the guest fetches from the peer, the peer from the guest.
        sh(
            "mkdir -p /tmp/peer-www && head -c 200000 /dev/urandom > /tmp/peer-www/blob
            cd /tmp/peer-www
            ip netns exec peer python3 -m http.server 8000 --bind 10.10.0.1 >/dev/null 2>&1 &
            echo $! > /tmp/peer-www.pid
            for i in $(seq 100); do
              ip netns exec peer ss -ltn | grep -q 10.10.0.1:8000 && exit 0; sleep 0.2
            done; echo the peer web server did not start; exit 1",
        );
        let want = sh("md5sum < /tmp/peer-www/blob");
        let got = guest.check("wget -q -O - http://10.10.0.1:8000/blob | md5sum");
        assert_eq!(
            got.split_whitespace().next(),
            want.split_whitespace().next()
        );
        guest.check(
            "mkdir -p /www && echo hello-from-guest > /www/index.html && httpd -p 8080 -h /www",
        );
        let fetched = sh("ip netns exec peer python3 -c \"import urllib.request; \
            print(urllib.request.urlopen('http://10.10.0.2:8080/index.html', timeout=20).read().decode())\"");
        assert!(fetched.contains("hello-from-guest"), "{fetched}");

        guest.send("poweroff -f");
        assert_eq!(guest.wait_exit(EXIT), 0, "{}", guest.stderr());
        let after = pod_state();
        assert_eq!(
            after, before,
            "the pod's links, addresses and routes are restored"
        );
        sh(
            "kill $(cat /tmp/peer-www.pid); rm -rf /tmp/peer-www /tmp/peer-www.pid
            ip netns del pod; ip netns del peer",
        );
    },
    timeout = 300
);

testhost_test!(
    fn calico_style_slash_32_with_a_link_local_gateway() {
        pod_and_peer(
            "ip -n pod addr add 10.20.30.40/32 dev eth0
             ip -n pod route add 169.254.1.1 dev eth0 scope link
             ip -n pod route add default via 169.254.1.1 dev eth0",
            "ip -n peer addr add 10.20.30.1/24 dev veth-peer
             ip -n peer route add 10.20.30.40/32 dev veth-peer
             ip -n peer link add uplink type dummy; ip -n peer link set uplink up
             ip -n peer route add default dev uplink
             ip netns exec peer sysctl -qw net.ipv4.ip_forward=1
             ip netns exec peer sysctl -qw net.ipv4.conf.veth-peer.proxy_arp=1",
        );
        let before = pod_state();
        let mut guest = Guest::boot_in_netns("pod", &bridge_manifest("calico"), &[]);
        guest.wait_ready(1);
        let lease = guest.check("udhcpc -i eth0 -s /etc/udhcpc.script -q -n -t 5 -T 2");
        assert!(lease.contains("ip=10.20.30.40 mask=32"), "{lease}");
        assert!(
            lease.contains("staticroutes=169.254.1.1/32 0.0.0.0 0.0.0.0/0 169.254.1.1"),
            "{lease}"
        );
        let routes = guest.check("ip route");
        assert!(routes.contains("default via 169.254.1.1"), "{routes}");
        guest.check("ping -c 3 -W 5 10.20.30.1");
        guest.send("poweroff -f");
        assert_eq!(guest.wait_exit(EXIT), 0, "{}", guest.stderr());
        assert_eq!(pod_state(), before);
        sh("ip netns del pod; ip netns del peer");
    },
    timeout = 300
);

testhost_test!(
    fn taking_over_a_link_in_the_initial_namespace_is_refused() {
        sh("ip link add eth0 type dummy");
        let mut guest = Guest::boot(&bridge_manifest("initial-ns"), &[]);
        let code = guest.wait_exit(EXIT);
        let stderr = guest.stderr();
        sh("ip link del eth0");
        assert_eq!(code, 2, "{stderr}");
        assert!(stderr.contains("initial network namespace"), "{stderr}");
    },
    timeout = 120
);
