#!/usr/bin/env python3
"""Boot benchmark: vmm beside QEMU -enable-kvm (microvm and q35) on the same guest.

    benches/boot.py [--runs N] [--table kernel|cloud] [--vmm-before PATH]
                                                        drive the benchmark, print the table
    benches/boot.py --measure NAME ...                  one boot of one contender (inside
                                                        the test host)

Every boot happens inside the KVM test host, one test host per boot: QEMU under nested
virtualization in TCG sometimes takes the test host down with it (a kernel panic in the
test host's KVM, or an early reset), and a fresh test host per boot keeps one such failure
from costing the other measurements. A failed boot is retried (up to 3 attempts) and counted. In each
test host the contender boots once unmeasured, so that its binary, libraries, kernel and
initrd are in the test host's page cache, and then once measured.

The guest is the test guest (Debian's cloud kernel, busybox initramfs), 2 vCPUs, 256 MiB,
started by each contender from the same files. The contenders are vmm and two QEMUs, each
as microvm in its fastest configuration and as q35:

  qemu 7.2            Debian bookworm's qemu-system-x86 (installed by benches/boot);
                      microvm with -cpu host -M microvm,x-option-roms=off,isa-serial=on,rtc=on
  qemu 10             bookworm-backports' QEMU 10.0, the test host's own (images/out/qemu);
                      microvm with -M microvm,isa-serial=on,rtc=on. With x-option-roms=off
                      this QEMU's qboot never reaches the kernel in the test host (it loops
                      on ports 0x70 and 0x92), so its linuxboot option ROM stays; without
                      rtc=on the guest takes about 3.5× as long.
  vmm before          --vmm-before PATH: another vmm binary (an older build), side by side

For each boot:

  first instruction  process start → the VMM's first entry into the guest, from the test
                     host's ftrace (event kvm:kvm_entry, clock "mono"), measured the same way
                     for every VMM
  /init marker       process start → the guest's /init printing VMMTEST-READY on the serial
                     console (after loading its modules)
  RSS − guest RAM    the VMM's resident memory at that point, without the guest RAM mapping
                     (every mapping at least as large as guest RAM), from /proc/PID/smaps
  peak RSS           VmHWM at that point: everything, the guest RAM the guest touched included
  exits              every VM exit of the boot (all vCPUs, process start → marker), counted
                     in the test host's kernel by ftrace histograms on kvm:kvm_exit (by exit
                     reason), kvm:kvm_userspace_exit (exits that reach the VMM process) and
                     kvm:kvm_pio (by port)

The table shows medians and the ratio to vmm. Absolute times inside the test host are those
of an emulated machine; the ratios are what to compare.

`--table cloud` boots the Debian cloud image images/cloud/build makes (debian.qcow2, its GRUB
layout), 1 vCPU, 1 GiB, with a NoCloud seed holding the same meta-data and user data for
every contender, to cloud-init's final message ("Cloud-init v. … finished at") on the
console:

  vmm                 no kernel in the manifest: vmm reads the image's grub.cfg and boots
                      its default entry directly; the image a containerDisk (a qcow2
                      overlay), the seed built by vmm
  qemu seabios+grub   QEMU -enable-kvm (q35) with SeaBIOS booting the image's own GRUB,
                      the image with snapshot=on, the seed an ISO made with genisoimage
                      -volid cidata -joliet -rock, as Virtink makes it
  qemu direct kernel  the same, with -kernel and -initrd (the image's kernel and initrd,
                      taken out of it) and the command line of GRUB's default entry

Each boot runs in a fresh test host, without a warm-up boot (the image files are read
once first instead).
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
CONTENDERS = ["vmm", "qemu 7.2 microvm", "qemu 7.2 q35", "qemu 10 microvm", "qemu 10 q35"]
BEFORE = "vmm before"
# Each QEMU's microvm in its fastest configuration that boots (see the docstring).
MICROVM = {
    "qemu 7.2": "microvm,x-option-roms=off,isa-serial=on,rtc=on",
    "qemu 10": "microvm,isa-serial=on,rtc=on",
}
DEBIAN_QEMU = Path("/usr")
# SVM exit codes (the test host's CPU is an emulated AMD EPYC) grouped into the table's rows.
EXIT_ROWS = [
    ("I/O port", {0x7b}),
    ("MSR", {0x7c}),
    ("CPUID", {0x72}),
    ("HLT", {0x78}),
    ("nested page fault", {0x400}),
    ("host interrupt", {0x60, 0x64}),
]
HISTS = {"kvm_exit": "exit_reason", "kvm_userspace_exit": "reason", "kvm_pio": "port"}
CLOUD_CONTENDERS = ["vmm", "qemu seabios+grub", "qemu direct kernel"]
CLOUD_MEMORY_MIB = 1024
CLOUD_FINISHED = b"finished at"
CLOUD_USER_DATA = "#cloud-config\nbootcmd:\n  - 'echo vmm-bench > /dev/null'\n"
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


def arm_hists():
    """(Re)starts the exit histograms from zero."""
    for event, key in HISTS.items():
        trigger = f"events/kvm/{event}/trigger"
        try:
            tracefs(trigger, f"!hist:keys={key}:size=4096")
        except OSError:
            pass
        tracefs(trigger, f"hist:keys={key}:size=4096")


def read_hists():
    """{event: {key value: hits}} since arm_hists()."""
    out = {}
    for event, key in HISTS.items():
        counts = {}
        for line in (TRACING / f"events/kvm/{event}/hist").read_text().splitlines():
            # "{ exit_reason:        123 } hitcount:      39015"
            if line.startswith("{") and "hitcount:" in line:
                value = int(line.split(":")[1].split("}")[0])
                counts[value] = int(line.rsplit(":", 1)[1])
        out[event] = counts
    return out


def first_entry():
    """CLOCK_MONOTONIC time of the first traced kvm_entry, or None."""
    tracefs("events/kvm/kvm_entry/enable", "0")
    for line in (TRACING / "trace").read_text().splitlines():
        if line.startswith("#") or ": kvm_entry" not in line:
            continue
        # "  qemu-system-x86-1234  [001] d.... 1234.567890: kvm_entry: vcpu 0, rip 0x..."
        return float(line.split(": kvm_entry")[0].split()[-1])
    return None


def rss_without_guest_ram(pid, memory_mib=MEMORY_MIB):
    """KiB resident, not counting mappings at least as large as guest RAM."""
    total, size = 0, 0
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            fields = line.split()
            if "-" in fields[0] and not fields[0].endswith(":"):
                lo, hi = (int(x, 16) for x in fields[0].split("-"))
                size = hi - lo
            elif fields[0] == "Rss:" and size < memory_mib << 20:
                total += int(fields[1])
    return total


def command(name, args):
    image = Path(args.image)
    if name in ("vmm", BEFORE):
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
        return [args.vmm_before if name == BEFORE else args.vmm, "run", str(manifest)]
    version = "qemu 7.2" if name.startswith("qemu 7.2") else "qemu 10"
    if version == "qemu 7.2":
        binary, share = DEBIAN_QEMU / "bin/qemu-system-x86_64", DEBIAN_QEMU / "share"
    else:
        binary, share = Path(args.qemu) / "bin/qemu-system-x86_64", Path(args.qemu) / "share"
    machine = MICROVM[version] if name.endswith("microvm") else "q35"
    return [
        str(binary), "-L", str(share / "qemu"), "-L", str(share / "seabios"),
        "-machine", machine, "-enable-kvm", "-cpu", "host", "-smp", "2",
        "-m", f"{MEMORY_MIB}M", "-nodefaults", "-no-user-config", "-display", "none",
        "-monitor", "none", "-serial", "stdio", "-no-reboot",
        "-kernel", str(image / "vmlinuz"), "-initrd", str(image / "initrd"),
        "-append", CMDLINE,
    ]


def cloud_command(name, args):
    """The argv of a cloud-image contender (inside the test host)."""
    cloud = Path(args.cloud)
    work = Path("/run/bench-cloud")
    work.mkdir(parents=True, exist_ok=True)
    if name == "vmm":
        indented = "\n".join("          " + line for line in CLOUD_USER_DATA.splitlines())
        manifest = work / "vm.yaml"
        manifest.write_text(f"""apiVersion: virt.virtink.smartx.com/v1alpha1
kind: VirtualMachine
metadata:
  name: bench
spec:
  instance:
    memory:
      size: {CLOUD_MEMORY_MIB}Mi
    disks:
      - name: root
      - name: cloud-init
  volumes:
    - name: root
      containerDisk:
        image: {cloud / "debian.qcow2"}
    - name: cloud-init
      cloudInit:
        userData: |
{indented}
""")
        return [args.vmm, "run", str(manifest)]
    (work / "seed").mkdir(exist_ok=True)
    (work / "seed/meta-data").write_text("instance-id: bench\nlocal-hostname: bench\n")
    (work / "seed/user-data").write_text(CLOUD_USER_DATA)
    seed = work / "seed.iso"
    subprocess.run(["genisoimage", "-quiet", "-output", str(seed), "-volid", "cidata",
                    "-joliet", "-rock", str(work / "seed")], check=True)
    qemu = Path(args.qemu)
    argv = [
        str(qemu / "bin/qemu-system-x86_64"),
        "-L", str(qemu / "share/qemu"), "-L", str(qemu / "share/seabios"),
        "-machine", "q35", "-enable-kvm", "-cpu", "host", "-smp", "1",
        "-m", f"{CLOUD_MEMORY_MIB}M", "-nodefaults", "-no-user-config", "-display", "none",
        "-monitor", "none", "-serial", "stdio", "-no-reboot",
        "-drive", f"file={cloud / 'debian.qcow2'},format=qcow2,if=none,id=d0,snapshot=on",
        # With -kernel, QEMU's kernel loader takes boot index 0 itself.
        "-device", "virtio-blk-pci,drive=d0"
        + (",bootindex=0" if name != "qemu direct kernel" else ""),
        "-drive", f"file={seed},format=raw,if=none,id=d1,readonly=on",
        "-device", "virtio-blk-pci,drive=d1",
    ]
    if name == "qemu direct kernel":
        argv += ["-kernel", str(cloud / "vmlinuz"), "-initrd", str(cloud / "initrd.img"),
                 "-append", grub_cmdline(args)]
    return argv


def grub_cmdline(args):
    """The command line of the image's default GRUB entry, as vmm's plan shows it."""
    manifest = Path("/run/bench-cloud/vm.yaml")
    if not manifest.exists():
        cloud_command("vmm", args)
    plan = subprocess.run([args.vmm, "run", "--dry-run", str(manifest)], capture_output=True,
                          text=True).stdout
    for line in plan.splitlines():
        if line.strip().startswith("cmdline"):
            return json.loads(line.split("cmdline", 1)[1].strip())
    raise RuntimeError(f"no cmdline in the plan:\n{plan}")


def measure(name, args):
    """Boots once to warm the test host's page cache, then once measured."""
    if args.table == "cloud":
        for f in Path(args.cloud).iterdir():
            with open(f, "rb") as src:
                while src.read(1 << 20):
                    pass
        result = boot(cloud_command(name, args), trace=True, marker=CLOUD_FINISHED,
                      timeout=1200, memory_mib=CLOUD_MEMORY_MIB)
        if result is None:
            return 1
        print(json.dumps(result))
        return 0
    argv = command(name, args)
    if boot(argv, trace=False) is None:
        return 1
    result = boot(argv, trace=True)
    if result is None:
        return 1
    print(json.dumps(result))
    return 0


def boot(argv, trace, marker=READY, timeout=240, memory_mib=MEMORY_MIB):
    """One boot; returns the measurements, or None (after printing why)."""
    wanted = marker
    if trace:
        arm_trace()
        arm_hists()
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    seen, marker = b"", None
    deadline = start + timeout
    while marker is None and time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 1.0)
        if not ready:
            continue
        chunk = os.read(proc.stdout.fileno(), 65536)
        if not chunk:
            break
        seen += chunk
        if wanted in seen:
            marker = time.monotonic() - start
    if marker is None:
        proc.kill()
        tail = seen.decode(errors="replace")[-1500:]
        print(json.dumps({"error": f"no marker (exit {proc.wait()})", "console": tail}))
        return None
    exits = read_hists() if trace else None
    rss = rss_without_guest_ram(proc.pid, memory_mib)
    peak = peak_rss(proc.pid)
    entry = first_entry() if trace else None
    if wanted != READY:
        # No agent in a cloud image: measured, so stopped.
        proc.kill()
        proc.wait()
    try:
        proc.stdin.write(b"1 poweroff -f\n")
        proc.stdin.flush()
        proc.wait(timeout=60)
    except (BrokenPipeError, subprocess.TimeoutExpired, ValueError):
        proc.kill()
        proc.wait()
    return {
        "first": entry - start if entry is not None else None,
        "marker": marker,
        "rss_kib": rss,
        "peak_kib": peak,
        "exits": exits,
    }


def peak_rss(pid):
    """VmHWM of `pid` in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return None


# --- outside: the driver --------------------------------------------------------------------


def boot_in_testhost(name, args):
    """One measured boot in a fresh test host; None if it failed."""
    timeout = "1500" if args.table == "cloud" else "400"
    cmd = [str(ROOT / "tests/testhost"), "run", "--mem", "3G", "--timeout", timeout, "--",
           "/usr/bin/python3", str(Path(__file__).resolve()), "--measure", name,
           "--table", args.table, "--vmm", args.vmm, "--image", args.image,
           "--qemu", args.qemu, "--cloud", args.cloud]
    if args.vmm_before:
        cmd += ["--vmm-before", args.vmm_before]
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


def exit_summary(exits):
    """The table's exit rows from one boot's histograms."""
    if not exits:
        return {}
    reasons = {int(k): v for k, v in exits["kvm_exit"].items()}
    ports = {int(k): v for k, v in exits["kvm_pio"].items()}
    out = {"exits": sum(reasons.values()),
           "exits_user": sum(exits["kvm_userspace_exit"].values())}
    grouped = set()
    for label, codes in EXIT_ROWS:
        out[f"exits {label}"] = sum(reasons.get(c, 0) for c in codes)
        grouped |= codes
    out["exits other"] = sum(v for c, v in reasons.items() if c not in grouped)
    out["ports serial"] = sum(v for p, v in ports.items() if 0x3f8 <= p <= 0x3ff)
    out["ports pci"] = sum(v for p, v in ports.items() if 0xcf8 <= p <= 0xcff)
    out["ports other"] = sum(ports.values()) - out["ports serial"] - out["ports pci"]
    return out


def drive(args):
    if args.table == "cloud":
        contenders = CLOUD_CONTENDERS
    else:
        contenders = CONTENDERS + ([BEFORE] if args.vmm_before else [])
    results = {name: [] for name in contenders}
    failures = {name: 0 for name in contenders}
    # Interleave the contenders so drift on this machine affects all alike.
    for run in range(args.runs):
        for name in contenders:
            for _ in range(ATTEMPTS):
                r = boot_in_testhost(name, args)
                if r is not None:
                    r.update(exit_summary(r.pop("exits", None)))
                    results[name].append(r)
                    break
                failures[name] += 1
            else:
                print(f"  {name}: gave up on run {run + 1}", file=sys.stderr)
            if results[name]:
                r = results[name][-1]
                print(f"run {run + 1}/{args.runs} {name}: first instruction "
                      f"{(r['first'] or 0) * 1000:.1f} ms, marker {r['marker']:.2f} s, "
                      f"RSS {r['rss_kib'] / 1024:.1f} MiB, exits {r.get('exits')}",
                      file=sys.stderr, flush=True)

    def median(name, key):
        values = [r[key] for r in results[name] if r.get(key) is not None]
        return statistics.median(values) if values else float("nan")

    marker = "cloud-init finished" if args.table == "cloud" else "/init marker"
    count = lambda v: f"{v:.0f}"  # noqa: E731
    keys = [("start → first instruction", "first", lambda v: f"{v * 1000:.1f} ms"),
            (f"start → {marker}", "marker", lambda v: f"{v:.2f} s"),
            ("RSS excluding guest RAM", "rss_kib", lambda v: f"{v / 1024:.1f} MiB"),
            ("peak RSS (VmHWM)", "peak_kib", lambda v: f"{v / 1024:.1f} MiB"),
            ("VM exits", "exits", count)]
    keys += [(f"  {label}", f"exits {label}", count) for label, _ in EXIT_ROWS]
    keys += [("  other", "exits other", count),
             ("exits to the VMM process", "exits_user", count),
             ("port I/O: serial", "ports serial", count),
             ("port I/O: PCI config", "ports pci", count),
             ("port I/O: other", "ports other", count)]
    width = 20
    if args.table == "cloud":
        print(f"\nCloud image boot, inside the KVM test host (TCG, nested KVM): medians of "
              f"{args.runs} runs; Debian bookworm genericcloud layout (qcow2), guest 1 vCPU, "
              f"{CLOUD_MEMORY_MIB} MiB, NoCloud seed")
    else:
        print(f"\nBoot, inside the KVM test host (TCG, nested KVM): medians of {args.runs} "
              f"runs; guest 2 vCPUs, {MEMORY_MIB} MiB, Debian cloud kernel + busybox initramfs")
    print("".ljust(27) + "".join(n.rjust(width) for n in contenders))
    for label, key, fmt in keys:
        base = median("vmm", key)
        if base != base and all(median(n, key) != median(n, key) for n in contenders):
            continue  # no such measurement in this table
        cells = []
        for name in contenders:
            value = median(name, key)
            cell = fmt(value) if value == value else "-"
            if name != "vmm" and base > 0 and value == value:
                cell += f" ({value / base:.2f}×)"
            cells.append(cell.rjust(width))
        print(label.ljust(27) + "".join(cells))
    print("failed attempts".ljust(27) + "".join(str(failures[n]).rjust(width) for n in contenders))
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--table", choices=["kernel", "cloud"], default="kernel")
    parser.add_argument("--vmm-before", help="an older vmm binary to add as a contender")
    parser.add_argument("--measure", choices=CONTENDERS + [BEFORE] + CLOUD_CONTENDERS,
                        help=argparse.SUPPRESS)
    parser.add_argument("--cloud", default=str(ROOT / "images/out/cloud"))
    parser.add_argument("--vmm", default=str(ROOT / "target/release/vmm"))
    parser.add_argument("--image", default=str(ROOT / "images/out/guest"))
    parser.add_argument("--qemu", default=str(ROOT / "images/out/qemu/usr"))
    args = parser.parse_args()
    if args.measure:
        return measure(args.measure, args)
    return drive(args)


if __name__ == "__main__":
    sys.exit(main())
