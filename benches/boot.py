#!/usr/bin/env python3
"""Boot benchmark: vmm beside QEMU -enable-kvm (microvm and q35) on the same guest.

    benches/boot.py [--runs N]          drive the benchmark and print the table
    benches/boot.py --measure NAME ...  one boot of one contender (inside the test host)

Every boot happens inside the KVM test host, one test host per boot: QEMU under nested
virtualization in TCG sometimes takes the test host down with it (a kernel panic in the
test host's KVM, or an early reset), and a fresh test host per boot keeps one such failure
from costing the other measurements. A failed boot is retried (up to 3 attempts) and counted. In each
test host the contender boots once unmeasured, so that its binary, libraries, kernel and
initrd are in the test host's page cache, and then once measured.

The guest is the test guest (Debian's cloud kernel, busybox initramfs), 2 vCPUs, 256 MiB,
started by each contender from the same files. For each boot:

  first instruction  process start → the VMM's first entry into the guest, from the test
                     host's ftrace (event kvm:kvm_entry, clock "mono"), measured the same way
                     for every VMM
  /init marker       process start → the guest's /init printing VMMTEST-READY on the serial
                     console (after loading its modules)
  RSS − guest RAM    the VMM's resident memory at that point, without the guest RAM mapping
                     (every mapping at least as large as guest RAM), from /proc/PID/smaps

The table shows medians and, for QEMU, the ratio to vmm. Absolute times inside the test host
are those of an emulated machine; the ratios are what to compare.
"""

import argparse
import json
import os
import select
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRACING = Path("/sys/kernel/tracing")
MEMORY_MIB = 256
CMDLINE = "console=ttyS0 loglevel=4"
READY = b"VMMTEST-READY"
CONTENDERS = ["vmm", "qemu microvm", "qemu q35"]
ATTEMPTS = 3


# --- inside the test host: one boot ---------------------------------------------------------


def tracefs(path, text):
    (TRACING / path).write_text(text)


def arm_trace():
    """Record the first kvm_entry from now on, then stop tracing."""
    tracefs("tracing_on", "0")
    tracefs("trace_clock", "mono")
    tracefs("events/kvm/kvm_entry/enable", "0")
    try:
        tracefs("events/kvm/kvm_entry/trigger", "!traceoff:1")
    except OSError:
        pass
    tracefs("trace", "")
    tracefs("events/kvm/kvm_entry/trigger", "traceoff:1")
    tracefs("events/kvm/kvm_entry/enable", "1")
    tracefs("tracing_on", "1")


def first_entry():
    """CLOCK_MONOTONIC time of the first traced kvm_entry, or None."""
    tracefs("events/kvm/kvm_entry/enable", "0")
    for line in (TRACING / "trace").read_text().splitlines():
        if line.startswith("#") or ": kvm_entry" not in line:
            continue
        # "  qemu-system-x86-1234  [001] d.... 1234.567890: kvm_entry: vcpu 0, rip 0x..."
        return float(line.split(": kvm_entry")[0].split()[-1])
    return None


def rss_without_guest_ram(pid):
    """KiB resident, not counting mappings at least as large as guest RAM."""
    total, size = 0, 0
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            fields = line.split()
            if "-" in fields[0] and not fields[0].endswith(":"):
                lo, hi = (int(x, 16) for x in fields[0].split("-"))
                size = hi - lo
            elif fields[0] == "Rss:" and size < MEMORY_MIB << 20:
                total += int(fields[1])
    return total


def command(name, args):
    image = Path(args.image)
    if name == "vmm":
        manifest = Path("/run/bench-vm.yaml")
        manifest.write_text(f"""apiVersion: virt.virtink.smartx.com/v1alpha1
kind: VirtualMachine
metadata:
  name: bench
spec:
  instance:
    cpu:
      sockets: 1
      coresPerSocket: 2
    memory:
      size: {MEMORY_MIB}Mi
    kernel:
      image: {image}
      cmdline: "{CMDLINE}"
""")
        return [args.vmm, "run", str(manifest)]
    qemu = Path(args.qemu)
    machine = "microvm" if name == "qemu microvm" else "q35"
    return [
        str(qemu / "bin/qemu-system-x86_64"),
        "-L", str(qemu / "share/qemu"), "-L", str(qemu / "share/seabios"),
        "-machine", machine, "-enable-kvm", "-cpu", "host", "-smp", "2",
        "-m", f"{MEMORY_MIB}M", "-nodefaults", "-no-user-config", "-display", "none",
        "-monitor", "none", "-serial", "stdio", "-no-reboot",
        "-kernel", str(image / "vmlinuz"), "-initrd", str(image / "initrd"),
        "-append", CMDLINE,
    ]


def measure(name, args):
    """Boots once to warm the test host's page cache, then once measured."""
    argv = command(name, args)
    if boot(argv, trace=False) is None:
        return 1
    result = boot(argv, trace=True)
    if result is None:
        return 1
    print(json.dumps(result))
    return 0


def boot(argv, trace):
    """One boot; returns the measurements, or None (after printing why)."""
    if trace:
        arm_trace()
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    seen, marker = b"", None
    deadline = start + 240
    while marker is None and time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 1.0)
        if not ready:
            continue
        chunk = os.read(proc.stdout.fileno(), 65536)
        if not chunk:
            break
        seen += chunk
        if READY in seen:
            marker = time.monotonic() - start
    if marker is None:
        proc.kill()
        tail = seen.decode(errors="replace")[-1500:]
        print(json.dumps({"error": f"no marker (exit {proc.wait()})", "console": tail}))
        return None
    rss = rss_without_guest_ram(proc.pid)
    entry = first_entry() if trace else None
    try:
        proc.stdin.write(b"1 poweroff -f\n")
        proc.stdin.flush()
        proc.wait(timeout=60)
    except (BrokenPipeError, subprocess.TimeoutExpired):
        proc.kill()
        proc.wait()
    return {
        "first": entry - start if entry is not None else None,
        "marker": marker,
        "rss_kib": rss,
    }


# --- outside: the driver --------------------------------------------------------------------


def boot_in_testhost(name, args):
    """One measured boot in a fresh test host; None if it failed."""
    cmd = [str(ROOT / "tests/testhost"), "run", "--timeout", "400", "--",
           "/usr/bin/python3", str(Path(__file__).resolve()), "--measure", name,
           "--vmm", args.vmm, "--image", args.image, "--qemu", args.qemu]
    out = subprocess.run(cmd, capture_output=True, text=True)
    for line in reversed(out.stdout.splitlines()):
        if line.startswith("{"):
            result = json.loads(line)
            if "error" not in result:
                return result
            print(f"  {name}: {result['error']}", file=sys.stderr)
            return None
    last = (out.stderr.strip().splitlines() or ["?"])[-1]
    print(f"  {name}: the test host failed ({last})", file=sys.stderr)
    return None


def drive(args):
    results = {name: [] for name in CONTENDERS}
    failures = {name: 0 for name in CONTENDERS}
    # Interleave the contenders so drift on this machine affects all alike.
    for run in range(args.runs):
        for name in CONTENDERS:
            for _ in range(ATTEMPTS):
                r = boot_in_testhost(name, args)
                if r is not None:
                    results[name].append(r)
                    break
                failures[name] += 1
            else:
                print(f"  {name}: gave up on run {run + 1}", file=sys.stderr)
            if results[name]:
                r = results[name][-1]
                print(f"run {run + 1}/{args.runs} {name}: first instruction "
                      f"{(r['first'] or 0) * 1000:.1f} ms, marker {r['marker']:.2f} s, "
                      f"RSS {r['rss_kib'] / 1024:.1f} MiB", file=sys.stderr, flush=True)

    def median(name, key):
        values = [r[key] for r in results[name] if r[key] is not None]
        return statistics.median(values) if values else float("nan")

    keys = [("start → first instruction", "first", lambda v: f"{v * 1000:.1f} ms"),
            ("start → /init marker", "marker", lambda v: f"{v:.2f} s"),
            ("RSS excluding guest RAM", "rss_kib", lambda v: f"{v / 1024:.1f} MiB")]
    width = 24
    print(f"\nBoot, inside the KVM test host (TCG, nested KVM): medians of {args.runs} runs; "
          f"guest 2 vCPUs, {MEMORY_MIB} MiB, Debian cloud kernel + busybox initramfs")
    print("".ljust(27) + "".join(n.rjust(width) for n in CONTENDERS))
    for label, key, fmt in keys:
        base = median("vmm", key)
        cells = []
        for name in CONTENDERS:
            value = median(name, key)
            cell = fmt(value)
            if name != "vmm" and base > 0:
                cell += f" ({value / base:.1f}×)"
            cells.append(cell.rjust(width))
        print(label.ljust(27) + "".join(cells))
    print("failed attempts".ljust(27) + "".join(str(failures[n]).rjust(width) for n in CONTENDERS))
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--measure", choices=CONTENDERS, help=argparse.SUPPRESS)
    parser.add_argument("--vmm", default=str(ROOT / "target/release/vmm"))
    parser.add_argument("--image", default=str(ROOT / "images/out/guest"))
    parser.add_argument("--qemu", default=str(ROOT / "images/out/qemu/usr"))
    args = parser.parse_args()
    if args.measure:
        return measure(args.measure, args)
    return drive(args)


if __name__ == "__main__":
    sys.exit(main())
