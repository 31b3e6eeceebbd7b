#!/usr/bin/env python3
"""NAT engine benchmark, on this machine directly (no VM): vmm's masquerade engine beside
pasta and slirp4netns on the same harness, and kernel NAT as the limit.

    benches/nat.py [--seconds N]

The harness, the same for every contender: a "client" namespace (where a guest would be)
reaches a "peer" namespace running `iperf3 -s` through a "pod" namespace joined to the
peer by a veth pair (pod 10.20.0.2/24 and fd00:20::2/64, peer 10.20.0.1/24 and
fd00:20::1/64: dual-stack). The translator runs in the pod namespace and its traffic leaves
from the pod's address, IPv4 and IPv6:

  vmm nat       the masquerade engine alone (net/examples/nat_tap.rs): a TAP created in the
                pod and moved into the client, MTU 65520, offloads on, 10.0.2.2/30 via
                10.0.2.1 and fd10:0:2::2/120 via fd10:0:2::1 (as DHCPv6 and the router
                advertisement give them)
  pasta         Debian's passt package: `pasta --config-net --no-map-gw --netns` on the
                client (its defaults: MTU 65520, the pod's address and routes copied)
  slirp4netns   `slirp4netns --configure --mtu=65520 --enable-ipv6` on the client
  kernel NAT    a veth pair client ↔ pod, forwarding, nftables masquerade rules (NAT44 and
                NAT66)
  veth          no NAT: iperf3 from the pod itself, the ceiling

For each, over IPv4 and then IPv6: one TCP stream for N seconds each way (`iperf3 -c` and
`-R`, the receiver's rate) and the mean of 20 pings. One run; ratios to vmm's engine side by
side, and each contender's IPv6 rate over its IPv4 rate.
"""

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from table import print_table

ROOT = Path(__file__).resolve().parent.parent
PEER = "10.20.0.1"
PEER6 = "fd00:20::1"
CONTENDERS = os.environ.get("NAT_CONTENDERS", "vmm nat,pasta,slirp4netns,kernel NAT,veth").split(",")
CLIENT_MAC = "0a:58:0a:00:02:02"


def sh(script, check=True):
    return subprocess.run(["sh", "-ec", script], check=check, capture_output=True,
                          text=True)


def clean():
    for ns in ("nat-client", "nat-pod", "nat-peer"):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def base():
    clean()
    sh(f"""
        ip netns add nat-pod; ip netns add nat-peer; ip netns add nat-client
        ip link add nat-eth0 type veth peer name nat-peer0
        ip link set nat-eth0 netns nat-pod; ip link set nat-peer0 netns nat-peer
        ip -n nat-pod link set nat-eth0 name eth0
        for ns in nat-pod nat-peer nat-client; do ip -n $ns link set lo up; done
        ip -n nat-pod addr add 10.20.0.2/24 dev eth0
        ip -n nat-peer addr add {PEER}/24 dev nat-peer0
        ip -n nat-pod addr add fd00:20::2/64 dev eth0 nodad
        ip -n nat-peer addr add {PEER6}/64 dev nat-peer0 nodad
        ip -n nat-pod link set eth0 up; ip -n nat-peer link set nat-peer0 up
        ip -n nat-pod route add default via {PEER}
        ip -n nat-pod -6 route add default via {PEER6}
        ip netns exec nat-pod sysctl -qw net.ipv4.ping_group_range='0 2147483647'
        ip netns exec nat-peer iperf3 -s -D
        for i in $(seq 100); do
            ip netns exec nat-peer ss -ltn | grep -q '\*:5201' && exit 0; sleep 0.1
        done
        echo iperf3 server did not start >&2; exit 1
    """)


def wait_for_link(ns, name, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sh(f"ip -n {ns} link show {name}", check=False).returncode == 0:
            return
        time.sleep(0.1)
    raise RuntimeError(f"no link {name} in {ns}")


def start(name, args):
    """Sets the contender up; returns (processes to stop, namespace to measure from)."""
    if name == "veth":
        return [], "nat-pod"
    if name == "kernel NAT":
        sh("""
            ip link add nat-c0 type veth peer name nat-p0
            ip link set nat-c0 netns nat-client; ip link set nat-p0 netns nat-pod
            ip -n nat-client addr add 10.0.3.2/30 dev nat-c0
            ip -n nat-pod addr add 10.0.3.1/30 dev nat-p0
            ip -n nat-client link set nat-c0 up; ip -n nat-pod link set nat-p0 up
            ip -n nat-client route add default via 10.0.3.1
            ip -n nat-client addr add fd10:0:3::2/120 dev nat-c0 nodad
            ip -n nat-pod addr add fd10:0:3::1/120 dev nat-p0 nodad
            ip -n nat-client -6 route add default via fd10:0:3::1
            ip netns exec nat-pod sysctl -qw net.ipv4.ip_forward=1
            ip netns exec nat-pod sysctl -qw net.ipv6.conf.all.forwarding=1
            for family in ip ip6; do
                ip netns exec nat-pod nft add table $family nat
                ip netns exec nat-pod nft "add chain $family nat post { type nat hook postrouting priority 100; }"
                ip netns exec nat-pod nft add rule $family nat post oifname eth0 masquerade
            done
        """)
        return [], "nat-client"
    if name == "vmm nat":
        proc = subprocess.Popen(["ip", "netns", "exec", "nat-pod", args.nat_tap, "nat0",
                                 CLIENT_MAC], stdout=subprocess.PIPE, text=True)
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("nat_tap did not start")
        sh(f"""
            ip -n nat-pod link set nat0 netns nat-client
            ip -n nat-client link set nat0 address {CLIENT_MAC} mtu 65520 up
            ip -n nat-client addr add 10.0.2.2/30 dev nat0
            ip -n nat-client route add default via 10.0.2.1
            ip -n nat-client addr add fd10:0:2::2/120 dev nat0 nodad
            ip -n nat-client -6 route add default via fd10:0:2::1
        """)
        return [proc], "nat-client"
    if name == "pasta":
        # As root pasta would drop to nobody and then fail to enter the namespace; the
        # gateway (the peer here) must stay the peer, not the pod's loopback.
        proc = subprocess.Popen(["ip", "netns", "exec", "nat-pod", "pasta", "-f", "-q",
                                 "--runas", "0:0", "--config-net", "--no-map-gw",
                                 "-t", "none", "-u", "none", "-T", "none", "-U", "none",
                                 "--netns", "/run/netns/nat-client"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_link("nat-client", "eth0")
        time.sleep(1)
        return [proc], "nat-client"
    if name == "slirp4netns":
        holder = subprocess.Popen(["ip", "netns", "exec", "nat-client", "sleep", "3600"])
        time.sleep(0.3)
        proc = subprocess.Popen(["ip", "netns", "exec", "nat-pod", "slirp4netns",
                                 "--configure", "--mtu=65520", "--disable-host-loopback",
                                 "--enable-ipv6",
                                 str(holder.pid), "tap0"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_link("nat-client", "tap0")
        time.sleep(1)
        return [proc, holder], "nat-client"
    raise ValueError(name)


def measure(ns, seconds, peer, suffix=""):
    def run(cmd):
        out = subprocess.run(["ip", "netns", "exec", ns, "sh", "-c", cmd],
                             capture_output=True, text=True, timeout=60 + 3 * seconds)
        if out.returncode != 0:
            raise RuntimeError(f"{cmd}: {out.stdout}{out.stderr}")
        return out.stdout

    def rate(out):
        m = re.search(r"([\d.]+) Mbits/sec.*receiver", out)
        if not m:
            raise RuntimeError(f"no receiver line:\n{out}")
        return float(m.group(1))

    run(f"iperf3 -c {peer} -t 1 -f m")
    tx = rate(run(f"iperf3 -c {peer} -t {seconds} -f m"))
    rx = rate(run(f"iperf3 -c {peer} -t {seconds} -f m -R"))
    # Not every contender relays ping (slirp4netns does not relay ICMPv6 echo): a row left
    # "failed", the others kept.
    ping = subprocess.run(["ip", "netns", "exec", ns, "ping", "-c", "20", "-i", "0.2", "-W", "2",
                           peer], capture_output=True, text=True, timeout=60).stdout
    m = re.search(r"= [\d.]+/([\d.]+)/", ping)
    return {"tx" + suffix: tx, "rx" + suffix: rx, "rtt" + suffix: float(m.group(1)) if m else None}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--nat-tap", default=str(ROOT / "target/release/examples/nat_tap"))
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("benches/nat.py: needs root (network namespaces)")
    results = {}
    for name in CONTENDERS:
        base()
        procs = []
        try:
            procs, ns = start(name, args)
            results[name] = measure(ns, args.seconds, PEER)
            r = results[name]
            print(f"{name}: client→peer {r['tx']:.0f} Mbit/s, peer→client {r['rx']:.0f} "
                  f"Mbit/s, RTT {r['rtt']} ms", file=sys.stderr, flush=True)
            r.update(measure(ns, args.seconds, PEER6, "6"))
            print(f"{name} IPv6: client→peer {r['tx6']:.0f} Mbit/s, peer→client "
                  f"{r['rx6']:.0f} Mbit/s, RTT {r['rtt6']} ms", file=sys.stderr, flush=True)
        except Exception as e:  # one contender failing must not lose the others
            print(f"{name}: failed: {e}", file=sys.stderr, flush=True)
        finally:
            for p in procs:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    p.kill()
            clean()
    gbit = lambda v: f"{v / 1000:.2f} Gbit/s"  # noqa: E731
    ms = lambda v: f"{v:.3f} ms"  # noqa: E731
    rows = [("TCP client → peer", "tx", gbit),
            ("TCP peer → client", "rx", gbit),
            ("ping RTT (mean of 20)", "rtt", ms),
            ("IPv6 TCP client → peer", "tx6", gbit),
            ("IPv6 TCP peer → client", "rx6", gbit),
            ("IPv6 ping RTT", "rtt6", ms)]

    def v6_over_v4(name, key):
        r = results.get(name, {})
        return f"{r[key + '6'] / r[key]:.2f}" if r.get(key) and r.get(key + "6") else "-"

    extra = [("IPv6/IPv4, client→peer", [v6_over_v4(n, "tx") for n in CONTENDERS]),
             ("IPv6/IPv4, peer→client", [v6_over_v4(n, "rx") for n in CONTENDERS])]
    width = 22
    print(f"\nNAT engines on this machine (no VM): one run, iperf3 -t {args.seconds}, one TCP "
          "stream, client namespace → NAT in the pod namespace → veth → peer")
    print_table(CONTENDERS, results, rows, width, extra_rows=extra)
    print(json.dumps(results), file=sys.stderr)
    complete = all(r.get(k) for r in results.values() for k in ("tx", "rx", "tx6", "rx6"))
    return 0 if len(results) == len(CONTENDERS) and complete else 1


if __name__ == "__main__":
    sys.exit(main())
