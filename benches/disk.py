#!/usr/bin/env python3
"""Disk benchmark: vmm's virtio-blk beside QEMU -enable-kvm's virtio-blk-pci on the same raw
and qcow2 files, on the same guest, inside the KVM test host.

    benches/disk.py [--rounds N] [--mib N] [--seconds N] [--jobs N]
                                           drive the benchmark, print the table
    benches/disk.py --measure ...          the rounds (inside the test host)

Both contenders run in one KVM test host, alternating, for N rounds (3 by default), and the
table shows each row's median: test hosts differ from one start to the next by more than the
contenders differ, so only measurements side by side in one test host compare (a failed test
host is retried, up to 3 attempts, and counted). In it, on a tmpfs (memory, so the host side
of the disk is the same page cache for both): a raw file of 1 GiB of random bytes and a qcow2
made from it with `qemu-img convert` (fully allocated, 64 KiB clusters). The guest (the test guest
with `blkbench`, benches/blkbench, appended to its initramfs; 1 vCPU, 512 MiB) gets the raw
file as its first disk and the qcow2 as its second:

  vmm    the two files as persistentVolumeClaim disks (served in place; no overlay)
  qemu   q35, `-drive file=…,format=raw|qcow2,if=none` + `virtio-blk-pci` each, QEMU's
         defaults otherwise (cache=writeback, aio=threads)

In the guest, with O_DIRECT (no guest page cache): sequential 1 MiB reads of the first N MiB,
sequential 1 MiB writes of N MiB then fdatasync, and 4 KiB reads at random offsets over the
whole disk from J threads for S seconds. The table shows the medians and, in brackets,
the median of each round's ratio to vmm (rounds differ from one another more than the
contenders do within one). Absolute numbers inside the test host are those of an emulated machine; the ratios,
side by side in one run, are what to compare.
"""

import argparse
import gzip
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from net import Agent  # noqa: E402  (the test guest's agent on a console)
from table import print_table  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CONTENDERS = ["vmm", "qemu"]
ATTEMPTS = 3  # test host runs
MEMORY_MIB = 512
CMDLINE = "console=ttyS0 loglevel=4"
DISK_MIB = 1024
WORK = Path("/run/bench-disk")  # a tmpfs inside the test host


def sh(script):
    subprocess.run(["sh", "-ec", script], check=True)


def cpio_newc(files):
    """A newc archive of `files` ({name: (mode, bytes)}), for appending to an initramfs."""
    out = bytearray()
    entries = list(files.items()) + [("TRAILER!!!", (0, b""))]
    for ino, (name, (mode, data)) in enumerate(entries, 1):
        name_b = name.encode() + b"\0"
        fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name_b), 0]
        out += b"070701" + b"".join(b"%08x" % f for f in fields) + name_b
        out += b"\0" * ((-(110 + len(name_b))) % 4)
        out += data + b"\0" * ((-len(data)) % 4)
    return bytes(out)


def guest_image(blkbench):
    """The test guest's kernel with blkbench added to its initramfs, in target/bench-disk."""
    src = ROOT / "images/out/guest"
    out = ROOT / "target/bench-disk"
    out.mkdir(parents=True, exist_ok=True)
    (out / "vmlinuz").write_bytes((src / "vmlinuz").read_bytes())
    extra = gzip.compress(cpio_newc({"bin/blkbench": (0o100755, Path(blkbench).read_bytes())}))
    # Linux unpacks concatenated archives one after the other.
    (out / "initrd").write_bytes((src / "initrd").read_bytes() + extra)
    return out


# --- inside the test host -------------------------------------------------------------------


def disks():
    sh(f"""
        mkdir -p {WORK} && mount -t tmpfs -o size={3 * DISK_MIB}M tmpfs {WORK}
        head -c {DISK_MIB}M /dev/urandom > {WORK}/disk.raw
        qemu-img convert -O qcow2 {WORK}/disk.raw {WORK}/disk.qcow2
    """)
    return WORK / "disk.raw", WORK / "disk.qcow2"


def vmm_argv(args, raw, qcow2):
    manifest = WORK / "vm.yaml"
    manifest.write_text(f"""apiVersion: virt.virtink.smartx.com/v1alpha1
kind: VirtualMachine
metadata:
  name: bench
spec:
  instance:
    memory:
      size: {MEMORY_MIB}Mi
    kernel:
      image: {args.image}
      cmdline: "{CMDLINE}"
    disks:
      - name: raw
      - name: qcow2
  volumes:
    - name: raw
      persistentVolumeClaim:
        claimName: raw
    - name: qcow2
      persistentVolumeClaim:
        claimName: qcow2
""")
    return [args.vmm, "run", "--volume", f"raw={raw}", "--volume", f"qcow2={qcow2}",
            str(manifest)]


def qemu_argv(args, raw, qcow2):
    qemu = Path(args.qemu)
    image = Path(args.image)
    return [
        str(qemu / "bin/qemu-system-x86_64"),
        "-L", str(qemu / "share/qemu"), "-L", str(qemu / "share/seabios"),
        "-machine", "q35", "-enable-kvm", "-cpu", "host", "-smp", "1",
        "-m", f"{MEMORY_MIB}M", "-nodefaults", "-no-user-config", "-display", "none",
        "-monitor", "none", "-serial", "stdio", "-no-reboot",
        "-drive", f"file={raw},format=raw,if=none,id=d0",
        "-device", "virtio-blk-pci,drive=d0,romfile=",
        "-drive", f"file={qcow2},format=qcow2,if=none,id=d1",
        "-device", "virtio-blk-pci,drive=d1,romfile=",
        "-kernel", str(image / "vmlinuz"), "-initrd", str(image / "initrd"),
        "-append", CMDLINE,
    ]


def measure_one(name, args, raw, qcow2):
    argv = vmm_argv(args, raw, qcow2) if name == "vmm" else qemu_argv(args, raw, qcow2)
    agent = Agent(argv)
    result = {}
    try:
        agent.wait_for(rb"VMMTEST-READY", 240)
        for dev, fmt in (("vda", "raw"), ("vdb", "qcow2")):
            def bench(cmd):
                out = agent.run(f"blkbench {cmd}", 120 + 4 * args.seconds)
                line = [l for l in out.splitlines() if l.startswith("{")][-1]
                return json.loads(line)
            # Warm-up: the host's page cache and the format's metadata caches.
            bench(f"seq-read /dev/{dev} 64")
            result[f"{fmt}_read"] = bench(f"seq-read /dev/{dev} {args.mib}")["mb_per_s"]
            result[f"{fmt}_write"] = bench(f"seq-write /dev/{dev} {args.mib}")["mb_per_s"]
            result[f"{fmt}_rand"] = bench(
                f"rand-read /dev/{dev} {args.seconds} {args.jobs}")["iops"]
    finally:
        agent.stop()
    return result


def measure(args):
    raw, qcow2 = disks()
    rounds, failed = [], 0
    failed_by = {name: 0 for name in CONTENDERS}
    for i in range(args.rounds):
        r, error = {}, None
        for name in CONTENDERS:
            try:
                r[name] = measure_one(name, args, raw, qcow2)
            except RuntimeError as e:
                error = f"{name}: {str(e)[-600:]}"
                break
        if error:
            # A guest that stopped answering. The round is dropped and counted, and the
            # table says which contender it was.
            failed += 1
            failed_by[error.split(":")[0]] += 1
            print(f"round {i + 1} failed: {error}", file=sys.stderr, flush=True)
            continue
        print(f"round {i + 1}: {json.dumps(r)}", file=sys.stderr, flush=True)
        rounds.append(r)
    print(json.dumps({"rounds": rounds, "failed": failed, "failed_by": failed_by}))
    return 0


# --- outside: the driver --------------------------------------------------------------------


def in_testhost(args):
    timeout = str(300 + 420 * args.rounds)
    cmd = [str(ROOT / "tests/testhost"), "run", "--mem", "4G", "--timeout", timeout, "--",
           "/usr/bin/python3", str(Path(__file__).resolve()), "--measure",
           "--rounds", str(args.rounds), "--mib", str(args.mib), "--seconds",
           str(args.seconds), "--jobs", str(args.jobs), "--vmm", args.vmm, "--image",
           args.image, "--qemu", args.qemu]
    out = subprocess.run(cmd, capture_output=True, text=True)
    for line in out.stdout.splitlines():
        if line.startswith("round "):
            print(line, file=sys.stderr, flush=True)
    for line in reversed(out.stdout.splitlines()):
        if line.startswith('{"rounds"'):
            result = json.loads(line)
            if result["rounds"]:
                return result
    tail = "\n".join(out.stdout.strip().splitlines()[-12:])
    print(f"  the test host failed (exit {out.returncode}):\n{tail}\n{out.stderr[-3000:]}",
          file=sys.stderr)
    # The rounds it finished before it failed still count.
    rounds = [json.loads(line.split(": ", 1)[1]) for line in out.stdout.splitlines()
              if line.startswith("round ") and ": {" in line]
    failed = sum(1 for line in out.stdout.splitlines()
                 if line.startswith("round ") and " failed: " in line)
    failed_by = {name: sum(1 for line in out.stdout.splitlines()
                           if line.startswith("round ") and f" failed: {name}:" in line)
                 for name in CONTENDERS}
    if rounds:
        return {"rounds": rounds, "failed": failed, "failed_by": failed_by, "partial": True}
    return None


def drive(args):
    args.image = str(guest_image(args.blkbench))
    failures = 0
    result = None
    for _ in range(ATTEMPTS):
        result = in_testhost(args)
        if result is not None:
            break
        failures += 1
    if result is None:
        return 1
    rounds = result["rounds"]
    results = {
        name: {key: statistics.median(r[name][key] for r in rounds) for key in rounds[0][name]}
        for name in CONTENDERS
    }
    mbs = lambda v: f"{v:.0f} MB/s"  # noqa: E731
    iops = lambda v: f"{v:.0f} IOPS"  # noqa: E731
    rows = [
        ("raw: sequential read", "raw_read", mbs),
        ("raw: sequential write", "raw_write", mbs),
        ("raw: 4 KiB random read", "raw_rand", iops),
        ("qcow2: sequential read", "qcow2_read", mbs),
        ("qcow2: sequential write", "qcow2_write", mbs),
        ("qcow2: 4 KiB random read", "qcow2_rand", iops),
    ]
    print(f"\nDisks, inside the KVM test host (TCG, nested KVM): medians of {len(rounds)} rounds "
          f"side by side in one test host; guest 1 vCPU, {MEMORY_MIB} MiB, O_DIRECT in the "
          f"guest; files on tmpfs; sequential {args.mib} MiB in 1 MiB requests, random 4 KiB "
          f"reads for {args.seconds} s from {args.jobs} threads")
    # Rounds differ from each other more than the contenders do within one, so the ratio
    # is the median of each round's own ratio, not the ratio of the medians.
    ratios = {
        name: {key: statistics.median(r[name][key] / r["vmm"][key] for r in rounds)
               for key in rounds[0][name]}
        for name in CONTENDERS
    }
    by = result.get("failed_by", {})
    print_table(CONTENDERS, results, rows, 24,
                [("failed rounds", [by.get(name, "") for name in CONTENDERS]),
                 ("failed test hosts", [failures, ""])], ratios=ratios)
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--vmm", default=str(ROOT / "target/release/vmm"))
    parser.add_argument("--image", default="")
    parser.add_argument("--blkbench", default=str(ROOT / "target/release/blkbench"))
    parser.add_argument("--qemu", default=str(ROOT / "images/out/qemu/usr"))
    args = parser.parse_args()
    if args.measure:
        return measure(args)
    return drive(args)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
