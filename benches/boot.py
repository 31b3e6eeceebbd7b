#!/usr/bin/env python3
"""Boot benchmark: vmm beside QEMU -enable-kvm (microvm and q35) on the same guest.

Runs inside the KVM test host (benches/boot starts it there). For every VMM, several boots
of the test guest (Debian's cloud kernel, busybox initramfs, 2 vCPUs, 256 MiB), measured:

  first instruction  process start → the VMM's first KVM_RUN entry into the guest, from the
                     test host's ftrace (event kvm:kvm_entry, clock "mono"), so every VMM is
                     measured the same way whatever it prints
  /init marker       process start → the guest's /init printing VMMTEST-READY on the serial
                     console (after loading its modules)
  RSS − guest RAM    the VMM's resident memory at that point, without the guest RAM mapping
                     (every mapping at least as large as guest RAM), from /proc/PID/smaps

The table shows medians, and each QEMU figure as a ratio to vmm's. Absolute times inside the
test host are those of an emulated machine (TCG); the ratios are what to compare.
"""

import argparse
import os
import select
import statistics
import subprocess
import sys
import time
from pathlib import Path

TRACING = Path("/sys/kernel/tracing")
MEMORY_MIB = 256
CMDLINE = "console=ttyS0 loglevel=4"
READY = b"VMMTEST-READY"


def write(path, text):
    (TRACING / path).write_text(text)


def arm_trace():
    """Record the first kvm_entry after now, then stop tracing."""
    write("tracing_on", "0")
    write("trace_clock", "mono")
    write("events/kvm/kvm_entry/enable", "0")
    try:
        write("events/kvm/kvm_entry/trigger", "!traceoff:1")
    except OSError:
        pass
    write("trace", "")
    write("events/kvm/kvm_entry/trigger", "traceoff:1")
    write("events/kvm/kvm_entry/enable", "1")
    write("tracing_on", "1")


def first_entry():
    """Timestamp (CLOCK_MONOTONIC seconds) of the first traced kvm_entry, or None."""
    write("events/kvm/kvm_entry/enable", "0")
    for line in (TRACING / "trace").read_text().splitlines():
        if line.startswith("#") or "kvm_entry" not in line:
            continue
        # "  qemu-system-x86-1234  [001] d.... 1234.567890: kvm_entry: vcpu 0, rip 0x..."
        before = line.split(": kvm_entry")[0]
        return float(before.split()[-1])
    return None


def rss_without_guest_ram(pid):
    """KiB resident, minus mappings at least as large as guest RAM."""
    total, current_size = 0, 0
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            fields = line.split()
            if "-" in fields[0] and len(fields) >= 5 and ":" not in fields[0]:
                lo, hi = (int(x, 16) for x in fields[0].split("-"))
                current_size = hi - lo
            elif fields[0] == "Rss:" and current_size < MEMORY_MIB << 20:
                total += int(fields[1])
    return total


def boot_once(argv, stdin_command):
    """Boots once; returns (first instruction s, marker s, RSS KiB)."""
    arm_trace()
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    seen = b""
    marker = None
    deadline = start + 300
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
        raise RuntimeError(f"{argv[0]} did not reach the marker:\n{seen.decode(errors='replace')[-2000:]}")
    rss = rss_without_guest_ram(proc.pid)
    entry = first_entry()
    proc.stdin.write(stdin_command)
    proc.stdin.flush()
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    first = entry - start if entry is not None else float("nan")
    return first, marker, rss


def manifest(path, image):
    path.write_text(f"""apiVersion: virt.virtink.smartx.com/v1alpha1
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


def qemu(machine, image):
    common = [
        "qemu-system-x86_64", "-enable-kvm", "-cpu", "host", "-smp", "2",
        "-m", f"{MEMORY_MIB}M", "-nodefaults", "-no-user-config", "-display", "none",
        "-monitor", "none", "-serial", "stdio",
        "-kernel", str(image / "vmlinuz"), "-initrd", str(image / "initrd"),
        "-append", CMDLINE, "-no-reboot",
    ]
    if machine == "microvm":
        return common + ["-machine", "microvm"]
    return common + ["-machine", "q35"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--vmm", required=True, help="the vmm binary to measure")
    parser.add_argument("--image", required=True, help="the test guest image directory")
    args = parser.parse_args()
    image = Path(args.image)
    work = Path("/tmp/vmm-bench")
    work.mkdir(exist_ok=True)
    manifest(work / "vm.yaml", image)
    poweroff = b"1 poweroff -f\n"
    contenders = [
        ("vmm", [args.vmm, "run", str(work / "vm.yaml")]),
        ("qemu microvm", qemu("microvm", image)),
        ("qemu q35", qemu("q35", image)),
    ]
    results = {name: [] for name, _ in contenders}
    # Interleave the contenders so drift in the test host affects all alike.
    for run in range(args.runs):
        for name, argv in contenders:
            results[name].append(boot_once(argv, poweroff))
            print(f"run {run + 1}/{args.runs} {name}: first instruction "
                  f"{results[name][-1][0] * 1000:.1f} ms, marker {results[name][-1][1]:.2f} s, "
                  f"RSS {results[name][-1][2] / 1024:.1f} MiB", file=sys.stderr, flush=True)
    med = {name: [statistics.median(r[i] for r in rows) for i in range(3)]
           for name, rows in results.items()}
    base = med["vmm"]
    names = [name for name, _ in contenders]
    width = 22
    print(f"\nBoot benchmark inside the KVM test host: medians of {args.runs} runs, "
          f"guest 2 vCPUs / {MEMORY_MIB} MiB, Debian cloud kernel + busybox initramfs")
    print("".ljust(26) + "".join(n.rjust(width) for n in names))
    rows = [
        ("start → first instruction", 0, lambda v: f"{v * 1000:.1f} ms"),
        ("start → /init marker", 1, lambda v: f"{v:.2f} s"),
        ("RSS excluding guest RAM", 2, lambda v: f"{v / 1024:.1f} MiB"),
    ]
    for label, i, fmt in rows:
        cells = []
        for n in names:
            value = med[n][i]
            cell = fmt(value)
            if n != "vmm" and base[i] > 0:
                cell += f" ({value / base[i]:.1f}×)"
            cells.append(cell.rjust(width))
        print(label.ljust(26) + "".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
