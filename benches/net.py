#!/usr/bin/env python3
"""Network benchmark: vmm's TAP (bridge binding) beside QEMU -enable-kvm with a TAP, vhost
off and on, on the same guest, and a plain veth pair as the limit.

    benches/net.py [--seconds N] [--runs N] [--table T] [--only A,B] [--vmm-before PATH]
                                        drive the benchmark and print the table
    benches/net.py --measure NAME ...   one contender (inside the test host)

Each contender runs in a fresh KVM test host (QEMU under nested virtualization in TCG
sometimes takes the test host down; a failed contender is retried, up to 3 attempts, and
counted). In it, the same network: a "pod" namespace whose eth0 (10.10.0.2/24, MTU 1500) is
one end of a veth pair, a "peer" namespace (10.10.0.1/24) at the other end running
`iperf3 -s`. Then:

  vmm          the guest on vmm with the bridge binding in the pod namespace: eth0 becomes
               eth0-nic on bridge br-eth0 with TAP tap-eth0; the guest takes 10.10.0.2 by
               DHCP from vmm
  vmm vhost-net
               the same with the vmm.virtink.smartx.com/vhost-net annotation: the kernel
               serves the NIC's queues
  qemu vhost=off, qemu vhost=on
               the guest on QEMU (q35, virtio-net-pci, -netdev tap) with the same topology
               made by hand in the pod namespace: bridge br0 holding eth0 (given another
               MAC, as the binding does) and TAP qtap; the guest sets 10.10.0.2/24 itself
  veth         no VM: iperf3 and ping from the pod namespace itself
  vmm before   --vmm-before PATH: another vmm binary (an older build) as vmm is run

`--table multiqueue` runs a 2-vCPU guest with 4 parallel streams (`iperf3 -P 4`): vmm with
a queue pair per vCPU (the `vmm.virtink.smartx.com/network-queue-pairs: vcpus` annotation)
and with one (`vmm 1 pair`, its default); QEMU with `queues=2` on a multi-queue TAP and
`mq=on` (vhost off and on), and with one queue (vhost on).

The guest is the test guest with iperf3 (images/out/guest/iperf: Debian's cloud kernel,
busybox initramfs, Debian's iperf3), 1 vCPU, 512 MiB. Measured in the guest (or the pod
namespace): `iperf3 -c 10.10.0.1 -t N` (guest → peer) and with `-R` (peer → guest), the
receiver's rate; `ping -c 20 -i 0.2`, the mean RTT. The masquerade table measures IPv6
too, in the same test host right after IPv4: pod fd00:10::2/64 and peer fd00:10::1/64 as
well (dual-stack), the guest taking fd10:0:2::2 from vmm's NAT by DHCPv6 (Debian's dhcpcd in
the iperf guest), an address of its own by SLAAC from QEMU's libslirp, and the pod's
fd00:10::2 at layer 2 on the bridge; libslirp relays no ICMPv6 echo, so its IPv6 ping row
fails. `--runs N` runs every contender N times, round by round; the table then shows each
value's median and the median of the per-run ratios to the first contender (one run: the
values and their ratio). Absolute numbers inside the test host are those of an emulated machine;
the ratios, side by side in one run, are what to compare.
"""

import argparse
import json
import os
import re
import select
import statistics
import subprocess
import sys
import time
from pathlib import Path

from table import print_table

ROOT = Path(__file__).resolve().parent.parent
TABLES = {
    "bridge": ["vmm", "vmm vhost-net", "qemu vhost=off", "qemu vhost=on", "veth"],
    "multiqueue": ["vmm", "vmm 1 pair", "qemu vhost=off", "qemu vhost=on",
                   "qemu vhost=on 1 queue"],
    "masquerade": ["vmm masquerade", "vmm", "qemu user"],
}
BEFORE = "vmm before"
CONTENDERS = sorted({c for t in TABLES.values() for c in t} | {BEFORE})
ATTEMPTS = 3
MEMORY_MIB = 512
CMDLINE = "console=ttyS0 loglevel=4"
GUEST_MAC = "0a:58:0a:0a:00:02"
PEER = "10.10.0.1"
PEER6 = "fd00:10::1"


def sh(script):
    subprocess.run(["sh", "-ec", script], check=True)


# --- inside the test host -------------------------------------------------------------------


def network(ipv6):
    """Pod and peer namespaces joined by a veth pair (dual-stack if `ipv6`); iperf3 server
    in the peer."""
    if ipv6:
        sh("""
            ip netns add pod; ip netns add peer
            ip link add veth-pod type veth peer name veth-peer
            ip link set veth-pod netns pod; ip link set veth-peer netns peer
            ip -n pod link set veth-pod name eth0
            ip -n pod addr add fd00:10::2/64 dev eth0 nodad
            ip -n peer addr add fd00:10::1/64 dev veth-peer nodad
        """)
    else:
        sh("""
            ip netns add pod; ip netns add peer
            ip link add veth-pod type veth peer name veth-peer
            ip link set veth-pod netns pod; ip link set veth-peer netns peer
            ip -n pod link set veth-pod name eth0
        """)
    sh(f"""
        ip -n pod link set eth0 address {GUEST_MAC}
        ip -n pod link set lo up; ip -n peer link set lo up
        ip -n pod addr add 10.10.0.2/24 dev eth0
        ip -n peer addr add {PEER}/24 dev veth-peer
        ip -n pod link set eth0 up; ip -n peer link set veth-peer up
        ip netns exec pod sysctl -qw net.ipv4.ping_group_range='0 2147483647'
        ip netns exec peer iperf3 -s -D
        for i in $(seq 100); do
            ip netns exec peer ss -ltn | grep -q '\\*:5201' && exit 0; sleep 0.1
        done
        echo iperf3 server did not start >&2; exit 1
    """)


class Agent:
    """The test guest's agent on a VMM's serial console (see images/guest/init)."""

    def __init__(self, argv):
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self.seen = b""
        self.next_id = 1

    def wait_for(self, pattern, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.seen)
            if m:
                return m
            ready, _, _ = select.select([self.proc.stdout], [], [], 1.0)
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                self.seen += chunk.replace(b"\r", b"")
        tail = self.seen.decode(errors="replace")[-2000:]
        if self.proc.poll() is None and time.monotonic() < deadline:
            self.proc.wait(timeout=10)
        err = self.proc.stderr.read().decode(errors="replace")[-2000:] if self.proc.poll() else ""
        raise RuntimeError(f"no {pattern!r} on the console (exit {self.proc.poll()}):\n{tail}"
                           f"\n{err}")

    def run(self, cmd, timeout=120):
        n = self.next_id
        self.next_id += 1
        start = len(self.seen)
        self.proc.stdin.write(f"{n} {cmd}\n".encode())
        self.proc.stdin.flush()
        m = self.wait_for(rb"VMMTEST-DONE %d (\d+)\n" % n, timeout)
        out = self.seen[start:m.start()].decode(errors="replace")
        # The agent acknowledges the line before the command's output.
        out = out.removeprefix(f"VMMTEST-GOT {n}\n")
        self.seen = self.seen[m.end():]
        if m.group(1) != b"0":
            raise RuntimeError(f"{cmd!r} failed ({m.group(1).decode()}):\n{out}")
        return out

    def stop(self):
        try:
            self.proc.stdin.write(f"{self.next_id} poweroff -f\n".encode())
            self.proc.stdin.flush()
            self.proc.wait(timeout=60)
        except (BrokenPipeError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()


def vmm_argv(args, binding="bridge", binary=None, pairs=1, vhost=False):
    """vmm in the pod namespace; `pairs` > 1 asks for a queue pair per vCPU, `vhost` for
    vhost-net."""
    manifest = Path("/run/bench-net.yaml")
    wanted = ([("network-queue-pairs", "vcpus")] if pairs > 1 else []) + \
        ([("vhost-net", "true")] if vhost else [])
    annotations = "".join(f"    vmm.virtink.smartx.com/{k}: \"{v}\"\n" for k, v in wanted)
    annotations = "  annotations:\n" + annotations if annotations else ""
    manifest.write_text(f"""apiVersion: virt.virtink.smartx.com/v1alpha1
kind: VirtualMachine
metadata:
  name: bench
{annotations}spec:
  instance:
    cpu:
      sockets: 1
      coresPerSocket: {args.vcpus}
    memory:
      size: {MEMORY_MIB}Mi
    kernel:
      image: {args.image}
      cmdline: "{CMDLINE}"
    interfaces:
      - name: pod
        {binding}: {{}}
  networks:
    - name: pod
      pod: {{}}
""")
    return ["ip", "netns", "exec", "pod", binary or args.vmm, "run", str(manifest)]


def qemu_argv(args, vhost, queues=1):
    # The bridge binding's topology, by hand: the guest owns 10.10.0.2 and eth0's MAC, the
    # link on the bridge gets another.
    multi_queue = "multi_queue" if queues > 1 else ""
    sh(f"""
        ip -n pod addr flush dev eth0
        ip -n pod link set eth0 down
        ip -n pod link set eth0 address 0a:58:0a:0a:00:99 up
        ip -n pod link add br0 type bridge
        ip -n pod tuntap add dev qtap mode tap {multi_queue}
        ip -n pod link set eth0 master br0
        ip -n pod link set qtap master br0
        ip -n pod link set br0 up; ip -n pod link set qtap up
    """)
    netdev_queues = f",queues={queues}" if queues > 1 else ""
    return qemu_command(args, f"tap,id=n0,ifname=qtap,script=no,downscript=no,vhost={vhost}"
                              f"{netdev_queues}", queues)


def qemu_user_argv(args):
    """QEMU's user networking (libslirp): no TAP, the guest takes 10.0.2.15 by DHCP."""
    return qemu_command(args, "user,id=n0")


def qemu_command(args, netdev, queues=1):
    """QEMU -enable-kvm in the pod namespace: q35, the guest, one virtio-net on `netdev`
    (with a queue pair per vCPU when there are several, as vmm gives)."""
    qemu = Path(args.qemu)
    # Vectors: one per queue, the control queue and the configuration.
    multiqueue = f",mq=on,vectors={2 * queues + 2}" if queues > 1 else ""
    image = Path(args.image)
    return [
        "ip", "netns", "exec", "pod",
        str(qemu / "bin/qemu-system-x86_64"),
        "-L", str(qemu / "share/qemu"), "-L", str(qemu / "share/seabios"),
        "-machine", "q35", "-enable-kvm", "-cpu", "host", "-smp", str(args.vcpus),
        "-m", f"{MEMORY_MIB}M", "-nodefaults", "-no-user-config", "-display", "none",
        "-monitor", "none", "-serial", "stdio", "-no-reboot",
        "-netdev", netdev,
        "-device", f"virtio-net-pci,netdev=n0,mac={GUEST_MAC},romfile={multiqueue}",
        "-kernel", str(image / "vmlinuz"), "-initrd", str(image / "initrd"),
        "-append", CMDLINE,
    ]


def iperf_rate(out):
    """The receiver's rate in Mbit/s from iperf3's text output (all streams together)."""
    m = (re.search(r"\[SUM\].* ([\d.]+) Mbits/sec.*receiver", out)
         or re.search(r"([\d.]+) Mbits/sec.*receiver", out))
    if not m:
        raise RuntimeError(f"no iperf3 receiver line in:\n{out}")
    return float(m.group(1))


def ping_rtt(out):
    """The mean RTT in ms from ping's summary (busybox or iputils)."""
    m = re.search(r"= [\d.]+/([\d.]+)/", out)
    if not m:
        raise RuntimeError(f"no ping summary in:\n{out}")
    return float(m.group(1))


def measurements(run, seconds, peer=PEER, suffix="", streams=1):
    """Runs the three measurements with `run(cmd)` (in the guest or the pod namespace) to
    `peer`, their keys ending in `suffix`; a ping that fails leaves its key out."""
    client = f"iperf3 -c {peer} -t {seconds} -f m -P {streams}"
    # A short warm-up: ARP or neighbour discovery, TCP slow start, page cache.
    run(f"iperf3 -c {peer} -t 1 -f m")
    result = {
        "tx" + suffix: iperf_rate(run(client)),
        "rx" + suffix: iperf_rate(run(client + " -R")),
    }
    try:
        result["rtt" + suffix] = ping_rtt(run(f"ping -c 20 -i 0.2 -W 2 {peer}"))
    except RuntimeError as e:
        print(f"ping {peer}: {e}", file=sys.stderr)
    return result


# How each contender's guest gets its IPv6 address and route: vmm's NAT by DHCPv6 (and its
# router advertisement), the bridge at layer 2 with the pod's address as for IPv4, QEMU's
# libslirp by SLAAC.
IPV6_SETUP = {
    "vmm masquerade": "mkdir -p /run/dhcpcd /var/lib/dhcpcd && "
                      "dhcpcd -6 -b -c /bin/true -f /dev/null eth0 >/dev/null 2>&1",
    "vmm": "ip -6 addr add fd00:10::2/64 dev eth0",
    "qemu user": "true",  # SLAAC from libslirp's router advertisement
}
# An address other than link-local (libslirp's SLAAC prefix is site-local fec0::/64), out
# of duplicate address detection, and for those that relay ping, the peer answering.
IPV6_WAIT = ("for i in $(seq 150); do ip -6 addr show dev eth0 | grep inet6 | "
             "grep -qv 'scope link' && ! ip -6 addr show dev eth0 | grep -q tentative && "
             "ping -6 -c 1 -W 1 fd00:10::1 >/dev/null 2>&1 && exit 0; sleep 0.2; done; "
             "ip -6 addr; ip -6 route; exit 1")


def measure(name, args):
    network(args.ipv6)
    if name == "veth":
        def run(cmd):
            return subprocess.run(["ip", "netns", "exec", "pod", "sh", "-c", cmd], check=True,
                                  capture_output=True, text=True).stdout
        result = measurements(run, args.seconds, streams=args.streams)
    else:
        if name == "vmm":
            argv = vmm_argv(args, pairs=args.vcpus)
        elif name == "vmm 1 pair":
            argv = vmm_argv(args)
        elif name == "vmm vhost-net":
            argv = vmm_argv(args, vhost=True)
        elif name == BEFORE:
            argv = vmm_argv(args, binary=args.vmm_before)
        elif name == "vmm masquerade":
            argv = vmm_argv(args, "masquerade")
        elif name == "qemu user":
            argv = qemu_user_argv(args)
        else:
            vhost = "on" if "vhost=on" in name else "off"
            argv = qemu_argv(args, vhost, 1 if name.endswith("1 queue") else args.vcpus)
        agent = Agent(argv)
        try:
            agent.wait_for(rb"VMMTEST-READY", 240)
            if name in ("vmm", "vmm 1 pair", "vmm vhost-net", BEFORE, "vmm masquerade",
                        "qemu user"):
                agent.run("udhcpc -i eth0 -s /etc/udhcpc.script -q -n -t 5 -T 2")
            else:
                agent.run("ip addr add 10.10.0.2/24 dev eth0 && ip link set eth0 up")
            run = lambda cmd: agent.run(cmd, 60 + 3 * args.seconds)  # noqa: E731
            result = measurements(run, args.seconds, streams=args.streams)
            if args.ipv6:
                agent.run(IPV6_SETUP[name])
                # libslirp answers no ping: its route is waited for by address alone.
                wait = IPV6_WAIT if name != "qemu user" else IPV6_WAIT.replace(
                    "ping -6 -c 1 -W 1 fd00:10::1 >/dev/null 2>&1 && ", "")
                agent.run(wait, 60)
                result.update(measurements(run, args.seconds, PEER6, "6"))
        finally:
            agent.stop()
    print(json.dumps(result))
    return 0


# --- outside: the driver --------------------------------------------------------------------


def in_testhost(name, args):
    cmd = [str(ROOT / "tests/testhost"), "run", "--timeout", "600", "--",
           "/usr/bin/python3", str(Path(__file__).resolve()), "--measure", name,
           "--seconds", str(args.seconds), "--vmm", args.vmm, "--image", args.image,
           "--qemu", args.qemu, "--vcpus", str(args.vcpus), "--streams", str(args.streams)]
    cmd += ["--ipv6"] if args.table == "masquerade" else []
    cmd += ["--vmm-before", args.vmm_before] if args.vmm_before else []
    out = subprocess.run(cmd, capture_output=True, text=True)
    for line in reversed(out.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    tail = "\n".join(out.stdout.strip().splitlines()[-8:])
    print(f"  {name}: failed (exit {out.returncode}):\n{tail}", file=sys.stderr)
    return None


def drive(args):
    contenders = TABLES[args.table] + ([BEFORE] if args.vmm_before else [])
    if args.only:
        wanted = args.only.split(",")
        unknown = [n for n in wanted if n not in contenders]
        if unknown or contenders[0] not in wanted:
            sys.exit(f"--only: {', '.join(unknown) or 'the first contender is missing'}; "
                     f"this table has {', '.join(contenders)} (the first is the base)")
        contenders = [n for n in contenders if n in wanted]
    # Rounds interleave the contenders, so that a slow spell of the machine falls on all.
    rounds, failures = [], {name: 0 for name in contenders}
    for number in range(1, args.runs + 1):
        this = {}
        for name in contenders:
            for _ in range(ATTEMPTS):
                r = in_testhost(name, args)
                if r is not None:
                    this[name] = r
                    print(f"run {number}/{args.runs} {name}: guest→peer {r['tx']:.0f} Mbit/s, "
                          f"peer→guest {r['rx']:.0f} Mbit/s, RTT {r.get('rtt', float('nan')):.3f}"
                          f" ms", file=sys.stderr, flush=True)
                    break
                failures[name] += 1
        rounds.append(this)
    results, ratios = medians(rounds, contenders)
    mbit = lambda v: f"{v:.0f} Mbit/s"  # noqa: E731
    ms = lambda v: f"{v:.3f} ms"  # noqa: E731
    rows = [("TCP guest → peer", "tx", mbit),
            ("TCP peer → guest", "rx", mbit),
            ("ping RTT (mean of 20)", "rtt", ms)]
    extra = [("failed attempts", [failures[n] for n in contenders])]
    if args.table == "masquerade":
        rows += [("IPv6 TCP guest → peer", "tx6", mbit),
                 ("IPv6 TCP peer → guest", "rx6", mbit),
                 ("IPv6 ping RTT", "rtt6", ms)]

        def v6_over_v4(name, key):
            r = results.get(name, {})
            return f"{r[key + '6'] / r[key]:.2f}" if r.get(key) and r.get(key + "6") else "-"

        extra = [("IPv6/IPv4, guest→peer", [v6_over_v4(n, "tx") for n in contenders]),
                 ("IPv6/IPv4, peer→guest", [v6_over_v4(n, "rx") for n in contenders])] + extra
    width = 24
    streams = "one TCP stream" if args.streams == 1 else f"{args.streams} TCP streams (-P)"
    vcpus = "1 vCPU" if args.vcpus == 1 else f"{args.vcpus} vCPUs"
    runs = ("one run" if args.runs == 1 else
            f"medians of {args.runs} runs (ratios: the median of each run's ratio)")
    print(f"\nNetwork, inside the KVM test host (TCG, nested KVM): {runs}, iperf3 -t "
          f"{args.seconds}, {streams}; guest {vcpus}, {MEMORY_MIB} MiB, pod link MTU 1500")
    print_table(contenders, results, rows, width, extra, ratios)
    complete = all(name in r for r in rounds for name in contenders)
    return 0 if complete else 1


def medians(rounds, contenders):
    """Each contender's median per measurement over `rounds` (one dict of results per
    run), and the median of its per-run ratios to the first contender's result of the
    same run; a run where either failed adds no ratio."""
    base = contenders[0]
    results, ratios = {}, {}
    for name in contenders:
        keys = {k for r in rounds for k in r.get(name, {})}
        results[name] = {k: statistics.median(r[name][k] for r in rounds
                                              if k in r.get(name, {})) for k in keys}
        ratios[name] = {}
        for k in keys:
            each = [r[name][k] / r[base][k] for r in rounds
                    if k in r.get(name, {}) and r.get(base, {}).get(k)]
            ratios[name][k] = statistics.median(each) if each else float("nan")
    return results, ratios


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--runs", type=int, default=1,
                        help="runs of every contender, interleaved; the table shows medians")
    parser.add_argument("--only", help="comma-separated contenders of the table to run "
                                       "(the first, the base, among them)")
    parser.add_argument("--table", choices=sorted(TABLES), default="bridge",
                        help="bridge: vmm's TAP beside QEMU's TAP and veth; masquerade: "
                             "vmm's NAT beside its TAP and QEMU's user networking")
    parser.add_argument("--measure", choices=CONTENDERS, help=argparse.SUPPRESS)
    parser.add_argument("--ipv6", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--vcpus", type=int, help="guest vCPUs (multiqueue table: 2, else 1)")
    parser.add_argument("--streams", type=int,
                        help="parallel TCP streams (multiqueue table: 4, else 1)")
    parser.add_argument("--vmm", default=str(ROOT / "target/release/vmm"))
    parser.add_argument("--vmm-before", help="another vmm binary (an older build) to add as "
                                             "a contender with the bridge binding")
    parser.add_argument("--image", default=str(ROOT / "images/out/guest/iperf"))
    parser.add_argument("--qemu", default=str(ROOT / "images/out/qemu/usr"))
    args = parser.parse_args()
    multiqueue = args.table == "multiqueue"
    args.vcpus = args.vcpus or (2 if multiqueue else 1)
    args.streams = args.streams or (4 if multiqueue else 1)
    if args.measure:
        return measure(args.measure, args)
    return drive(args)


if __name__ == "__main__":
    sys.exit(main())
