//! Networking: the bridge binding with DHCP delegation, inside the KVM test host.
//!
//! Each test makes its own network namespaces there: a "pod" namespace (where vmm runs and
//! whose `eth0` it takes over) joined by a veth pair to a "peer" namespace. Traffic goes
//! only between them.

// An integration test crate is a test module of its own: its tests need no `#[cfg(test)]`.
#![allow(clippy::tests_outside_test_module)]

use std::time::Duration;

use vmm_tests::guest::{Guest, Manifest};
use vmm_tests::netns::{peer_web_server, sh};
use vmm_tests::{testhost_test, vm_info};

const EXIT: Duration = Duration::from_secs(60);

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

/// A Calico-style dual-stack pod: `eth0` holds 10.20.30.40/32, the gateway is the
/// link-local 169.254.1.1, which the peer answers for by proxy ARP while routing
/// 10.20.30.0/24; and fd00:30::40/128 with Calico's IPv6 gateway, a link-local address.
fn calico_pod_and_peer() {
    pod_and_peer(
        "ip -n pod addr add 10.20.30.40/32 dev eth0
         ip -n pod route add 169.254.1.1 dev eth0 scope link
         ip -n pod route add default via 169.254.1.1 dev eth0
         ip -n pod addr add fd00:30::40/128 dev eth0 nodad
         ip -n pod -6 route add default via fe80::ecee:eeff:feee:eeee dev eth0",
        "ip -n peer addr add 10.20.30.1/24 dev veth-peer
         ip -n peer route add 10.20.30.40/32 dev veth-peer
         ip -n peer link add uplink type dummy; ip -n peer link set uplink up
         ip -n peer route add default dev uplink
         ip netns exec peer sysctl -qw net.ipv4.ip_forward=1
         ip netns exec peer sysctl -qw net.ipv4.conf.veth-peer.proxy_arp=1",
    );
}

/// The pod's `eth0` at 10.10.0.2/24 with its default route through the peer, 10.10.0.1.
fn plain_pod_and_peer() {
    pod_and_peer(
        "ip -n pod addr add 10.10.0.2/24 dev eth0
         ip -n pod route add default via 10.10.0.1",
        "ip -n peer addr add 10.10.0.1/24 dev veth-peer",
    );
}

fn pod_state() -> String {
    sh("ip -n pod -o link show | sed 's/^[0-9]*: //; s/ qdisc.*link\\/ether / /; s/ brd.*//' | sort
        ip -n pod -4 -o addr show | awk '{print $2, $4}' | sort
        ip -n pod route show | sort
        ip -n pod -6 -o addr show scope global | awk '{print $2, $4}' | sort
        ip -n pod -6 route show | sort")
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
             ip -n pod route add 192.168.50.0/24 via 10.10.0.1
             ip -n pod addr add fd00:10::2/64 dev eth0 nodad
             ip -n pod -6 route add default via fd00:10::1",
            "ip -n peer addr add 10.10.0.1/24 dev veth-peer
             ip -n peer addr add 192.168.50.1/24 dev lo
             ip -n peer addr add fd00:10::1/64 dev veth-peer nodad",
        );
        // A dual-stack pod: taking eth0 down flushes its IPv6 address and routes, which
        // must come back too.
        let before = pod_state();
        assert!(before.contains("eth0 fd00:10::2/64"), "{before}");
        assert!(
            before.contains("default via fd00:10::1 dev eth0"),
            "{before}"
        );
        let mut guest = Guest::boot_in_netns("pod", &bridge_manifest("bridged"), &[]);
        guest.wait_ready(1);
        // The main thread keeps CAP_NET_ADMIN to give the pod its link back at exit; the
        // vCPU and the virtio-net worker have nothing.
        assert!(guest.assert_confined(1 << 12) >= 3);
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
        let during = sh("ip -n pod -o link show; ip -n pod -o addr show dev eth0");
        assert!(during.contains("eth0-nic"), "{during}");
        assert!(during.contains("br-eth0"), "{during}");
        assert!(during.contains("tap-eth0"), "{during}");
        assert!(during.contains("10.10.0.2/24"), "{during}");
        assert!(during.contains("fd00:10::2/64"), "{during}");

        // The peer speaks first: whoever answers its ARP for 10.10.0.2 must be the guest,
        // not the pod's own stack (the address is on the pod's dummy, and the bridge does
        // no ARP of its own).
        sh("ip -n peer neigh flush all; ip netns exec peer ping -c 2 -W 5 10.10.0.2");
        let neigh = sh("ip -n peer neigh show 10.10.0.2");
        assert!(
            neigh.contains("0a:58:0a:0a:00:02"),
            "the peer learnt {neigh}"
        );

        guest.check("ping -c 3 -W 5 10.10.0.1");
        guest.check("ping -c 2 -W 5 192.168.50.1");
        // TCP both ways: the guest fetches from the peer, the peer from the guest.
        let want = peer_web_server(200_000);
        let got = guest.check("wget -q -O - http://10.10.0.1:8000/blob | md5sum");
        assert_eq!(got.split_whitespace().next(), Some(want.as_str()));
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
        calico_pod_and_peer();
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
    fn a_tap_deleted_under_the_guest_costs_no_cpu_and_the_pod_is_still_restored() {
        plain_pod_and_peer();
        let before = pod_state();
        let mut guest = Guest::boot_in_netns("pod", &bridge_manifest("tap-gone"), &[]);
        guest.wait_ready(1);
        guest.check("udhcpc -i eth0 -s /etc/udhcpc.script -q -n -t 5 -T 2");
        guest.check("ping -c 1 -W 5 10.10.0.1");
        // A deleted TAP polls as an error for ever: the worker must stop polling it, not
        // spin on it (it did, warning each time).
        sh("ip -n pod link del tap-eth0");
        let (rc, _) = guest.exec("ping -c 3 -W 1 10.10.0.1");
        assert_ne!(rc, 0, "nothing can answer through a deleted TAP");
        let ticks = guest.thread_ticks("virtio-net", Duration::from_secs(2));
        assert!(
            ticks < 20,
            "the virtio-net worker used {ticks} of 200 ticks in 2 s"
        );
        let stderr = guest.stderr();
        assert_eq!(stderr.matches("the backend is gone").count(), 1, "{stderr}");
        guest.send("poweroff -f");
        assert_eq!(guest.wait_exit(EXIT), 0, "{}", guest.stderr());
        assert_eq!(pod_state(), before, "the pod is restored without its TAP");
        sh("ip netns del pod; ip netns del peer");
    },
    timeout = 240
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

testhost_test!(
    fn a_two_vcpu_guest_gets_a_queue_pair_per_vcpu() {
        plain_pod_and_peer();
        let dir = vmm_tests::TempDir::new("multiqueue");
        let socket_path = dir.path().join("api.sock");
        let socket = socket_path.to_str().unwrap();
        let manifest = bridge_manifest("multiqueue")
            .cpus(1, 2)
            .annotation("vmm.virtink.smartx.com/network-queue-pairs", "vcpus");
        let mut guest = Guest::boot_in_netns("pod", &manifest, &["--api-socket", socket]);
        guest.wait_ready(1);
        let tap = sh("ip -n pod -d link show tap-eth0");
        assert!(tap.contains("multi_queue"), "{tap}");
        for boot in 1..=2 {
            if boot == 2 {
                // The reset detaches the second TAP queue; the new driver enables it again.
                guest.send("reboot -f");
                guest.wait_ready(2);
            }
            // DHCP through the in-process server, on whichever queue the guest sends.
            let lease = guest.check("udhcpc -i eth0 -s /etc/udhcpc.script -q -n -t 5 -T 2");
            assert!(lease.contains("ip=10.10.0.2 mask=24"), "{lease}");
            let queues = guest.check("ls /sys/class/net/eth0/queues");
            assert_eq!(
                queues.split_whitespace().collect::<Vec<_>>(),
                ["rx-0", "rx-1", "tx-0", "tx-1"]
            );
            let info = vm_info(&socket_path);
            let nic = &info["interfaces"][0];
            assert_eq!(nic["queue_pairs"], 2, "{info}");
            let features = nic["features"].to_string();
            assert!(features.contains("\"MQ\""), "{features}");

            // 16 connections from the peer: the TAP spreads new flows over its attached
            // queues, so the second receive queue takes some (all 16 on the first: 2^-16),
            // and the guest answers from whichever vCPU, on that vCPU's transmit queue.
            guest.check(
                "mkdir -p /www && echo hello-from-guest > /www/index.html && httpd -p 8080 -h /www",
            );
            let fetched = sh("ip netns exec peer python3 -c \"import urllib.request
for i in range(16):
    body = urllib.request.urlopen('http://10.10.0.2:8080/index.html', timeout=20).read()
    assert b'hello-from-guest' in body, body
print('fetched 16')\"");
            assert!(fetched.contains("fetched 16"), "{fetched}");
            let irqs = guest.check("grep -E 'virtio[0-9]+-input\\.1' /proc/interrupts");
            let count: u64 = irqs
                .split_whitespace()
                .skip(1)
                .map_while(|w| w.parse::<u64>().ok())
                .sum();
            assert!(
                count > 0,
                "no interrupt on the second receive queue:\n{irqs}"
            );
            guest.check("killall httpd");
        }
        guest.send("poweroff -f");
        assert_eq!(guest.wait_exit(EXIT), 0, "{}", guest.stderr());
        sh("ip netns del pod; ip netns del peer");
    },
    timeout = 360
);

testhost_test!(
    fn with_vhost_net_the_kernel_serves_the_queues_and_dhcp_still_answers() {
        plain_pod_and_peer();
        let before = pod_state();
        let dir = vmm_tests::TempDir::new("vhost-net");
        let socket_path = dir.path().join("api.sock");
        let socket = socket_path.to_str().unwrap();
        let manifest =
            bridge_manifest("vhostnet").annotation("vmm.virtink.smartx.com/vhost-net", "true");
        let mut guest = Guest::boot_in_netns("pod", &manifest, &["--api-socket", socket]);
        guest.wait_ready(1);
        let pid = guest.pid();
        // The kernel's worker for vmm's vhost-net instance (a kernel thread, or on newer
        // kernels a thread of vmm itself); no userspace virtio-net worker.
        let kernel_workers = || {
            sh(&format!(
                "grep -lx 'vhost-{pid}' /proc/[0-9]*/task/*/comm 2>/dev/null | wc -l"
            ))
            .trim()
            .parse::<u32>()
            .unwrap()
        };
        let threads = sh(&format!("cat /proc/{pid}/task/*/comm"));
        assert!(
            !threads.lines().any(|t| t.starts_with("virtio-net")),
            "{threads}"
        );
        assert!(threads.lines().any(|t| t == "vhost-net-dhcp"), "{threads}");
        let want = peer_web_server(300_000);
        let mut downloads = 0;
        // The first boot, the same boot after the driver reset the device (unbound and
        // bound again), and a second boot after a reboot.
        for round in ["boot", "driver reset", "reboot"] {
            match round {
                "driver reset" => {
                    guest.check(
                        "d=$(basename $(readlink /sys/class/net/eth0/device))
                         echo $d > /sys/bus/virtio/drivers/virtio_net/unbind
                         echo $d > /sys/bus/virtio/drivers/virtio_net/bind
                         ip link set eth0 up",
                    );
                }
                "reboot" => {
                    guest.send("reboot -f");
                    guest.wait_ready(2);
                }
                _ => {}
            }
            // DHCP from vmm's packet socket on the TAP: the lease is the pod's address.
            let lease = guest.check("udhcpc -i eth0 -s /etc/udhcpc.script -q -n -t 5 -T 2");
            assert!(lease.contains("ip=10.10.0.2 mask=24"), "{round}: {lease}");
            assert_eq!(kernel_workers(), 1, "{round}: one vhost worker");
            let info = vm_info(&socket_path);
            let nic = &info["interfaces"][0];
            let host = nic["host"].as_str().unwrap_or_default();
            assert!(
                host.ends_with("queues served by vhost-net"),
                "{round}: {host}"
            );
            let features = nic["features"].to_string();
            assert!(features.contains("\"MRG_RXBUF\""), "{round}: {features}");
            guest.check("ping -c 3 -W 5 10.10.0.1");
            let got = guest.check("wget -q -O - http://10.10.0.1:8000/blob | md5sum");
            assert_eq!(
                got.split_whitespace().next(),
                Some(want.as_str()),
                "{round}"
            );
            // The counters are the TAP's (across boots): at least the downloads so far in.
            let info = vm_info(&socket_path);
            let nic = &info["interfaces"][0];
            let rx = nic["rx_bytes"].as_u64().unwrap_or_default();
            let tx = nic["tx_frames"].as_u64().unwrap_or_default();
            downloads += 300_000;
            assert!(rx >= downloads && tx > 0, "{round}: {nic}");
        }
        // A DHCP request in the guest's name from the pod's network reaches the guest
        // through the bridge, but not vmm's server (which would refuse it in the guest's
        // name): the server hears only what the guest sends.
        sh(r#"ip netns exec peer python3 -c "
import socket, struct
mac = bytes.fromhex('0a580a0a0002')
msg = struct.pack('!BBBBIHH4s4s4s4s16s192xI', 1, 1, 6, 0, 0x5eed, 0, 0x8000, bytes(4),
                  bytes(4), bytes(4), bytes(4), mac + bytes(10), 0x63825363)
msg += bytes([53, 1, 3, 50, 4, 10, 10, 0, 77, 255])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
s.bind(('10.10.0.1', 68))
for _ in range(3):
    s.sendto(msg, ('255.255.255.255', 67))
""#);
        std::thread::sleep(std::time::Duration::from_secs(2));
        guest.check("ping -c 1 -W 5 10.10.0.1");
        let stderr = guest.stderr();
        assert!(
            stderr.contains("DHCP: 10.10.0.2 acknowledged") && !stderr.contains("10.10.0.77"),
            "{stderr}"
        );
        guest.send("poweroff -f");
        assert_eq!(guest.wait_exit(EXIT), 0, "{}", guest.stderr());
        assert_eq!(kernel_workers(), 0, "the vhost worker ends with vmm");
        assert_eq!(pod_state(), before, "the pod is restored");

        // Without /dev/vhost-net (a pod not given it): exit 2 naming the annotation and the
        // device, before the pod is touched.
        sh("mv /dev/vhost-net /dev/vhost-net.away");
        let mut vmm = Guest::boot_in_netns("pod", &manifest, &[]);
        let code = vmm.wait_exit(EXIT);
        let plan = sh(&format!(
            "ip netns exec pod {} run --dry-run {} 2>&1 || echo exit $?",
            vmm_tests::vmm_bin().display(),
            manifest.write(&std::env::temp_dir()).display()
        ));
        sh("mv /dev/vhost-net.away /dev/vhost-net");
        assert!(
            plan.contains("/dev/vhost-net cannot be opened") && plan.ends_with("exit 2\n"),
            "the dry run says what the run would: {plan}"
        );
        let stderr = vmm.stderr();
        assert_eq!(code, 2, "{stderr}");
        assert!(
            stderr.contains("metadata.annotations[vmm.virtink.smartx.com/vhost-net]")
                && stderr.contains("/dev/vhost-net cannot be opened"),
            "{stderr}"
        );
        assert_eq!(pod_state(), before, "nothing left behind");
        sh(
            "kill $(cat /tmp/peer-www.pid); rm -rf /tmp/peer-www /tmp/peer-www.pid
            ip netns del pod; ip netns del peer",
        );
    },
    timeout = 360
);

/// Pod `eth0` (10.10.0.2/24) and multus `net1` (no address), each a veth to the peer.
fn pod_with_net1() {
    pod_and_peer(
        "ip -n pod addr add 10.10.0.2/24 dev eth0
         ip -n pod route add default via 10.10.0.1",
        "ip -n peer addr add 10.10.0.1/24 dev veth-peer",
    );
    sh("ip link add veth-n1 type veth peer name veth-n1p
        ip link set veth-n1 netns pod; ip link set veth-n1p netns peer
        ip -n pod link set veth-n1 name net1
        ip -n pod link set net1 address 0a:58:c0:a8:4d:05 up
        ip -n peer addr add 192.168.77.1/24 dev veth-n1p
        ip -n peer link set veth-n1p up");
}

fn two_nic_manifest(name: &str) -> Manifest {
    Manifest::new(name).network(
        "    - name: pod\n      bridge: {}\n    - name: data\n      bridge: {}\n",
        "  - name: pod\n    pod: {}\n  - name: data\n    multus:\n      networkName: data-net\n",
    )
}

testhost_test!(
    fn multus_net1_without_an_address_beside_the_pod_interface_across_a_reboot() {
        pod_with_net1();
        let before = pod_state();
        let dir = vmm_tests::TempDir::new("two-nics");
        let socket_path = dir.path().join("api.sock");
        let socket = socket_path.to_str().unwrap();
        let mut guest = Guest::boot_in_netns(
            "pod",
            &two_nic_manifest("two-nics"),
            &["--api-socket", socket],
        );
        guest.wait_ready(1);
        // Two NICs in `interfaces` order, each with its pod link's MAC.
        let macs = guest.check("cat /sys/class/net/eth0/address /sys/class/net/eth1/address");
        assert_eq!(
            macs.split_whitespace().collect::<Vec<_>>(),
            ["0a:58:0a:0a:00:02", "0a:58:c0:a8:4d:05"]
        );
        let during = sh("ip -n pod -o link show");
        for link in ["net1-nic", "br-net1", "tap-net1", "eth0-nic", "br-eth0"] {
            assert!(during.contains(link), "{link} missing:\n{during}");
        }

        let configure = |guest: &mut Guest| {
            let lease = guest.check("udhcpc -i eth0 -s /etc/udhcpc.script -q -n -t 5 -T 2");
            assert!(lease.contains("ip=10.10.0.2 mask=24"), "{lease}");
            // net1 had no address: plain layer 2, nobody answers DHCP there.
            let (rc, out) = guest.exec("udhcpc -i eth1 -s /etc/udhcpc.script -q -n -t 2 -T 1");
            assert_ne!(rc, 0, "a DHCP answer on net1:\n{out}");
            guest.check("ip addr add 192.168.77.2/24 dev eth1 && ip link set eth1 up");
            guest.check("ping -c 2 -W 5 10.10.0.1");
            guest.check("ping -c 2 -W 5 192.168.77.1");
        };
        configure(&mut guest);

        // A reboot keeps the host side; the new boot's devices work the same.
        guest.send("reboot -f");
        guest.wait_ready(2);
        configure(&mut guest);

        // The API reports each NIC's host side, negotiated features and counters (kept
        // across the reboot: both boots' pings are in them).
        let info = vm_info(&socket_path);
        let nics = info["interfaces"].as_array().expect("interfaces");
        assert_eq!(nics.len(), 2, "{info}");
        for (nic, link) in nics.iter().zip(["eth0", "net1"]) {
            assert!(
                nic["host"]
                    .as_str()
                    .unwrap()
                    .contains(&format!("TAP tap-{link}")),
                "{nic}"
            );
            let features = nic["features"].to_string();
            for f in ["VERSION_1", "MAC", "MTU", "CSUM", "GUEST_CSUM"] {
                assert!(features.contains(&format!("\"{f}\"")), "{f}: {nic}");
            }
            // Two boots × (DHCP or ARP, two pings each way): at least 4 frames each way.
            for counter in ["tx_frames", "rx_frames"] {
                assert!(nic[counter].as_u64().unwrap() >= 4, "{counter}: {nic}");
            }
            assert!(nic["tx_bytes"].as_u64().unwrap() > 4 * 60, "{nic}");
        }

        // SIGTERM: the guest powers off, vmm exits 0 and puts both links back.
        guest.signal(libc::SIGTERM);
        assert_eq!(guest.wait_exit(EXIT), 0, "{}", guest.stderr());
        assert_eq!(pod_state(), before, "both pod links are restored");
        sh("ip netns del pod; ip netns del peer");
    },
    timeout = 360
);

testhost_test!(
    fn bridge_network_attachments_outside_a_pod() {
        // A lab namespace with bridge br-lab (192.168.88.1/24); br-scratch does not exist.
        sh("ip netns add lab; ip -n lab link set lo up
            ip -n lab link add br-lab type bridge
            ip -n lab addr add 192.168.88.1/24 dev br-lab
            ip -n lab link set br-lab up");
        let nad = |name: &str, bridge: &str| {
            format!(
                "apiVersion: k8s.cni.cncf.io/v1\nkind: NetworkAttachmentDefinition\n\
                 metadata:\n  name: {name}\n\
                 spec:\n  config: '{{\"cniVersion\": \"0.3.1\", \"type\": \"bridge\", \"bridge\": \"{bridge}\"}}'\n"
            )
        };
        let manifest = Manifest::new("lab")
            .network(
                "    - name: lab\n      bridge: {}\n    - name: scratch\n      bridge: {}\n",
                "  - name: lab\n    multus:\n      networkName: lab-net\n  \
                 - name: scratch\n    multus:\n      networkName: scratch-net\n",
            )
            .document(&nad("lab-net", "br-lab"))
            .document(&nad("scratch-net", "br-scratch"));
        let plan = sh(&format!(
            "ip netns exec lab {} run --dry-run {}",
            vmm_tests::vmm_bin().display(),
            manifest.write(&std::env::temp_dir()).display()
        ));
        assert!(plan.contains("TAP tap-net0 on bridge br-lab"), "{plan}");
        assert!(plan.contains("bridge br-scratch (created"), "{plan}");

        let mut guest = Guest::boot_in_netns("lab", &manifest, &[]);
        guest.wait_ready(1);
        let during = sh("ip -n lab -o link show");
        assert!(
            during.contains("tap-net0") && during.contains("master br-lab"),
            "{during}"
        );
        assert!(
            during.contains("tap-net1") && during.contains("br-scratch"),
            "{during}"
        );
        guest.check("ip addr add 192.168.88.2/24 dev eth0 && ip link set eth0 up");
        guest.check("ping -c 3 -W 5 192.168.88.1");
        guest.send("poweroff -f");
        assert_eq!(guest.wait_exit(EXIT), 0, "{}", guest.stderr());
        let after = sh("ip -n lab -o link show; ip -n lab -4 -o addr show");
        assert!(!after.contains("tap-net"), "TAPs left behind:\n{after}");
        assert!(
            !after.contains("br-scratch"),
            "created bridge left:\n{after}"
        );
        assert!(
            after.contains("192.168.88.1/24"),
            "br-lab changed:\n{after}"
        );
        sh("ip netns del lab");
    },
    timeout = 300
);

testhost_test!(
    fn a_failure_halfway_through_setup_restores_the_pod() {
        pod_with_net1();
        // A link already called br-eth0: eth0 is renamed and its dummy made before the
        // bridge cannot be created.
        sh("ip -n pod link add br-eth0 type dummy");
        let before = pod_state();
        let mut vmm = Guest::boot_in_netns("pod", &two_nic_manifest("halfway"), &[]);
        let code = vmm.wait_exit(EXIT);
        let stderr = vmm.stderr();
        assert_eq!(code, 2, "{stderr}");
        assert!(stderr.contains("br-eth0"), "{stderr}");
        assert_eq!(pod_state(), before, "eth0 restored after a failed bridge");

        // eth0 fully taken over, then net1 fails: eth0 comes back too.
        sh("ip -n pod link del br-eth0; ip -n pod link del net1");
        let before = pod_state();
        let mut vmm = Guest::boot_in_netns("pod", &two_nic_manifest("second"), &[]);
        let code = vmm.wait_exit(EXIT);
        let stderr = vmm.stderr();
        assert_eq!(code, 2, "{stderr}");
        assert!(stderr.contains("host link net1 not found"), "{stderr}");
        assert_eq!(pod_state(), before, "eth0 restored after net1 failed");
        sh("ip netns del pod; ip netns del peer");
    },
    timeout = 120
);

/// A manifest with the pod network bridged and multus network 1 (`net1`) an sriov VF whose
/// NAD in the file names `device_id`.
fn sriov_manifest(name: &str, device_id: &str) -> Manifest {
    Manifest::new(name)
        .network(
            "    - name: pod\n      bridge: {}\n    - name: vf\n      sriov: {}\n",
            "  - name: pod\n    pod: {}\n  - name: vf\n    multus:\n      networkName: sriov-net\n",
        )
        .sriov_nad("sriov-net", device_id)
}

testhost_test!(
    fn sriov_without_a_usable_vf_exits_2_naming_the_missing_piece_and_touches_nothing() {
        pod_with_net1();
        let before = pod_state();
        let vfio = std::path::Path::new("/dev/vfio/vfio").exists();
        // A device that does not exist, and the q35 host bridge, which no driver holds.
        let cases = [
            (
                "0000:00:1e.7",
                if vfio {
                    "no such PCI device"
                } else {
                    "/dev/vfio/vfio"
                },
            ),
            (
                "0000:00:00.0",
                if vfio {
                    "is bound to no driver, not vfio-pci"
                } else {
                    "/dev/vfio/vfio"
                },
            ),
        ];
        for (device_id, want) in cases {
            let mut vmm = Guest::boot_in_netns("pod", &sriov_manifest("vf", device_id), &[]);
            let code = vmm.wait_exit(EXIT);
            let stderr = vmm.stderr();
            assert_eq!(code, 2, "{stderr}");
            assert!(
                stderr.contains("spec.instance.interfaces[1] (vf)"),
                "{stderr}"
            );
            assert!(stderr.contains(&format!("VF {device_id}")), "{stderr}");
            assert!(stderr.contains(want), "{want}: {stderr}");
            assert_eq!(pod_state(), before, "nothing touched for {device_id}");
        }
        if vfio {
            // The bind steps name the device's vendor and device IDs.
            let mut vmm = Guest::boot_in_netns("pod", &sriov_manifest("vf", "0000:00:00.0"), &[]);
            assert_eq!(vmm.wait_exit(EXIT), 2);
            assert!(
                vmm.stderr()
                    .contains("echo 8086 29c0 > /sys/bus/pci/drivers/vfio-pci/new_id"),
                "{}",
                vmm.stderr()
            );
        }
        sh("ip netns del pod; ip netns del peer");
    },
    timeout = 120
);

testhost_test!(
    fn a_vmm_killed_outright_is_recovered_from_by_the_next_one() {
        calico_pod_and_peer();
        let before = pod_state();
        let mut guest = Guest::boot_in_netns("pod", &bridge_manifest("killed"), &[]);
        guest.wait_ready(1);
        // SIGKILL: no destructor runs; the take-over stays, recorded on eth0-nic.
        guest.signal(libc::SIGKILL);
        guest.wait_exit(EXIT);
        let left = sh("ip -n pod -o link show");
        assert!(
            left.contains("eth0-nic") && left.contains("br-eth0"),
            "{left}"
        );
        assert!(
            left.contains("vmm-bridge-binding eth0 0a:58:0a:0a:00:02"),
            "{left}"
        );
        // The dummy records the IPv6 routes, which taking eth0 down flushed.
        assert!(
            left.contains("vmm-bridge-binding-ipv6 ::/0@fe80::ecee:eeff:feee:eeee"),
            "{left}"
        );
        let plan = sh(&format!(
            "ip netns exec pod {} run --dry-run {}",
            vmm_tests::vmm_bin().display(),
            bridge_manifest("killed")
                .write(&std::env::temp_dir())
                .display()
        ));
        assert!(plan.contains("did not exit cleanly"), "{plan}");
        // The next vmm puts it back, takes it over again, and the guest works as before.
        let mut guest = Guest::boot_in_netns("pod", &bridge_manifest("restarted"), &[]);
        guest.wait_ready(1);
        assert!(
            guest.stderr().contains("did not exit cleanly"),
            "{}",
            guest.stderr()
        );
        let lease = guest.check("udhcpc -i eth0 -s /etc/udhcpc.script -q -n -t 5 -T 2");
        assert!(lease.contains("ip=10.20.30.40 mask=32"), "{lease}");
        assert!(
            lease.contains("staticroutes=169.254.1.1/32 0.0.0.0 0.0.0.0/0 169.254.1.1"),
            "{lease}"
        );
        let mac = guest.check("cat /sys/class/net/eth0/address");
        assert_eq!(mac.trim(), "0a:58:0a:0a:00:02");
        guest.check("ping -c 2 -W 5 10.20.30.1");
        guest.send("poweroff -f");
        assert_eq!(guest.wait_exit(EXIT), 0, "{}", guest.stderr());
        assert_eq!(pod_state(), before, "restored exactly after the second run");
        sh("ip netns del pod; ip netns del peer");
    },
    timeout = 300
);
