//! Disks in real guests: `vmm` inside the KVM test host serves virtio-blk disks to the test
//! guest, from raw and qcow2 files, a block device, a container rootfs directory and the
//! cloud-init seed; the guest reads and writes them with busybox, and the test checks the
//! host files afterwards.

// An integration test crate is a test module of its own: its tests need no `#[cfg(test)]`.
#![allow(clippy::tests_outside_test_module)]

use std::path::Path;
use std::time::Duration;

use vmm_tests::guest::{Guest, Manifest};
use vmm_tests::netns::sh;
use vmm_tests::{TempDir, testhost_test};

const EXIT: Duration = Duration::from_secs(60);

fn md5(path: &Path) -> String {
    sh(&format!("md5sum < {}", path.display()))
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// `len` bytes of `path` at `offset`, as hex.
fn bytes_at(path: &Path, offset: u64, len: u64) -> String {
    sh(&format!(
        "dd if={} bs=1 skip={offset} count={len} status=none | od -An -tx1 | tr -d ' \\n'",
        path.display()
    ))
}

fn volume(path: &Path) -> String {
    path.display().to_string()
}

testhost_test!(
    fn disks_appear_in_order_and_are_read_and_written() {
        let dir = TempDir::new("disks");
        let d = dir.path();
        sh(&format!(
            "cd {d}
             head -c 4194304 /dev/urandom > data.raw
             qemu-img create -q -f qcow2 data.qcow2 16M
             qemu-io -c 'write -q -P 0x5a 0 1M' data.qcow2
             head -c 8388608 /dev/urandom > base.raw
             qemu-img convert -c -O qcow2 base.raw container.qcow2
             head -c 1048576 /dev/urandom > ro.raw",
            d = d.display()
        ));
        let container_md5 = md5(&d.join("container.qcow2"));
        let ro_md5 = md5(&d.join("ro.raw"));
        let manifest = Manifest::new("disks")
            .disk(
                "data",
                false,
                "persistentVolumeClaim:\n        claimName: data-pvc",
            )
            .disk("logs", false, "dataVolume:\n        volumeName: logs-dv")
            .disk(
                "root",
                false,
                &format!(
                    "containerDisk:\n        image: {}",
                    d.join("container.qcow2").display()
                ),
            )
            .disk(
                "ro",
                true,
                &format!("containerDisk:\n        image: {}", d.join("ro.raw").display()),
            )
            .disk(
                "seed",
                false,
                "cloudInit:\n        userData: |\n          #cloud-config\n          runcmd: [echo hi]\n        networkDataBase64: dmVyc2lvbjogMgo=",
            );
        let socket = d.join("api.sock");
        let mut guest = Guest::boot(
            &manifest,
            &[
                "--volume",
                &format!("data={}", volume(&d.join("data.raw"))),
                "--volume",
                &format!("logs={}", volume(&d.join("data.qcow2"))),
                "--api-socket",
                socket.to_str().unwrap(),
            ],
        );
        guest.wait_ready(1);
        // vCPU, API and a worker per disk: none with any capability, nor the main thread.
        assert!(guest.assert_confined(0) >= 3);

        // In `disks` order, each with its name as serial number and its size.
        assert_eq!(
            guest.check("ls /sys/block | grep vd | tr '\\n' ' '").trim(),
            "vda vdb vdc vdd vde"
        );
        assert_eq!(
            guest
                .check(
                    "for d in a b c d e; do cat /sys/block/vd$d/serial; echo; done | tr '\\n' ' '"
                )
                .trim(),
            "data logs root ro seed"
        );
        assert_eq!(
            guest
                .check("for d in a b c d; do cat /sys/block/vd$d/size; done | tr '\\n' ' '")
                .trim(),
            "8192 32768 16384 2048"
        );

        // Reads match the host files; the qcow2 claim holds what qemu-io wrote.
        assert!(
            guest
                .check("md5sum /dev/vda")
                .starts_with(&md5(&d.join("data.raw")))
        );
        assert!(guest.check("md5sum /dev/vdd").starts_with(&ro_md5));
        assert_eq!(
            guest
                .check("dd if=/dev/vdb bs=1M count=1 status=none | md5sum")
                .split_whitespace()
                .next(),
            sh("head -c 1048576 /dev/zero | tr '\\0' 'Z' | md5sum")
                .split_whitespace()
                .next()
        );
        assert!(
            guest
                .check("md5sum /dev/vdc")
                .starts_with(&md5(&d.join("base.raw")))
        );

        // Many requests in flight at once (direct reads from four processes on two disks):
        // every one completes, and the data is right.
        guest.check(
            "for i in 1 2 3 4; do \
               (dd if=/dev/vda of=/dev/null bs=4k count=256 skip=$((i * 200)) iflag=direct status=none; \
                dd if=/dev/vdc of=/dev/null bs=4k count=256 skip=$((i * 300)) iflag=direct status=none) & \
             done; wait",
        );
        assert!(
            guest
                .check("md5sum /dev/vda")
                .starts_with(&md5(&d.join("data.raw")))
        );

        // Writes: to both claims (flushed), to the container disk.
        for dev in ["vda", "vdb", "vdc"] {
            guest.check(&format!(
                "head -c 65536 /dev/zero | tr '\\0' 'W' | dd of=/dev/{dev} bs=65536 seek=16 conv=fsync status=none"
            ));
            assert_eq!(
                guest
                    .check(&format!(
                        "dd if=/dev/{dev} bs=65536 skip=16 count=1 status=none | tr -d W | wc -c"
                    ))
                    .trim(),
                "0",
                "{dev} reads back what was written"
            );
        }

        // The read-only disk says so and refuses writes.
        assert_eq!(guest.check("cat /sys/block/vdd/ro").trim(), "1");
        let (rc, _) = guest.exec("echo x | dd of=/dev/vdd conv=fsync status=none");
        assert_ne!(rc, 0, "a write to the read-only disk succeeded");

        // The seed: ISO 9660 labelled cidata, files as the manifest says.
        assert_eq!(
            guest.check("dd if=/dev/vde bs=1 skip=32808 count=6 status=none"),
            "cidata"
        );
        guest.check("mkdir -p /seed && mount -t iso9660 -o ro /dev/vde /seed");
        assert_eq!(
            guest.check("ls /seed | tr '\\n' ' '").trim(),
            "meta-data network-config user-data"
        );
        assert_eq!(
            guest.check("cat /seed/meta-data"),
            "instance-id: disks\nlocal-hostname: disks\n"
        );
        assert_eq!(
            guest.check("cat /seed/user-data"),
            "#cloud-config\nruncmd: [echo hi]\n"
        );
        assert_eq!(guest.check("cat /seed/network-config"), "version: 2\n");

        // The API reports the disks and their counters.
        let info = vmm_tests::vm_info(&socket);
        let disks = info["disks"].as_array().unwrap();
        assert_eq!(disks.len(), 5, "{info}");
        assert_eq!(disks[1]["format"], "qcow2");
        assert_eq!(disks[2]["ephemeral"], true);
        assert_eq!(disks[3]["read_only"], true);
        assert!(disks[0]["write_bytes"].as_u64().unwrap() >= 65536, "{info}");
        assert!(disks[0]["flushes"].as_u64().unwrap() >= 1, "{info}");

        guest.send("poweroff -f");
        assert_eq!(guest.wait_exit(EXIT), 0, "{}", guest.stderr());

        // The claims kept the writes; the container disk's image and the read-only disk
        // are byte-identical.
        let w64k = "57".repeat(16);
        assert_eq!(bytes_at(&d.join("data.raw"), 16 * 65536, 16), w64k);
        sh(&format!(
            "cd {} && qemu-img check -q data.qcow2 && qemu-img convert -O raw data.qcow2 data.out",
            d.display()
        ));
        assert_eq!(bytes_at(&d.join("data.out"), 16 * 65536, 16), w64k);
        assert_eq!(bytes_at(&d.join("data.out"), 0, 4), "5a5a5a5a");
        assert_eq!(md5(&d.join("container.qcow2")), container_md5);
        assert_eq!(md5(&d.join("ro.raw")), ro_md5);
    },
    timeout = 300
);

testhost_test!(
    fn a_claim_keeps_what_the_guest_wrote_after_sigterm() {
        let dir = TempDir::new("disks-sigterm");
        let data = dir.path().join("data.raw");
        sh(&format!("truncate -s 8M {}", data.display()));
        let manifest = Manifest::new("sigterm").disk(
            "data",
            false,
            "persistentVolumeClaim:\n        claimName: data",
        );
        let mut guest = Guest::boot(
            &manifest,
            &["--volume", &format!("data={}", data.display())],
        );
        guest.wait_ready(1);
        // One write flushed by the guest, one written straight to the device (O_DIRECT,
        // no flush): both completed, so both must be in the file after vmm exits.
        guest.check(
            "head -c 4096 /dev/zero | tr '\\0' 'F' | dd of=/dev/vda bs=4096 seek=10 conv=fsync status=none",
        );
        guest.check(
            "head -c 4096 /dev/zero | tr '\\0' 'D' | dd of=/dev/vda bs=4096 seek=20 oflag=direct status=none",
        );
        guest.signal(libc::SIGTERM);
        guest.wait_for_after(0, "VMMTEST-POWER-BUTTON", Duration::from_secs(60));
        assert_eq!(guest.wait_exit(EXIT), 0, "{}", guest.stderr());
        assert_eq!(bytes_at(&data, 10 * 4096, 4), "46464646");
        assert_eq!(bytes_at(&data, 20 * 4096, 4), "44444444");
    }
);

testhost_test!(
    fn a_container_rootfs_is_an_ext4_disk_that_lasts_across_reboots_and_leaves_nothing() {
        let dir = TempDir::new("disks-rootfs");
        let d = dir.path();
        let tmp = d.join("tmp");
        sh(&format!(
            "mkdir -p {d}/rootfs/etc {tmp} && echo from-the-rootfs > {d}/rootfs/etc/motd",
            d = d.display(),
            tmp = tmp.display()
        ));
        let manifest = Manifest::new("rootfs").disk(
            "root",
            false,
            &format!(
                "containerRootfs:\n        image: {}\n        size: 64Mi",
                d.join("rootfs").display()
            ),
        );
        let path = manifest.write(d);
        let mut guest = Guest::start_with_env(&path, &[], &[("TMPDIR", tmp.to_str().unwrap())]);
        guest.wait_ready(1);
        assert_eq!(
            sh(&format!("ls -A {} | wc -l", tmp.display())).trim(),
            "0",
            "the disk's file has no name"
        );
        assert_eq!(guest.check("cat /sys/block/vda/size").trim(), "131072");
        guest.check("mkdir -p /r && mount -t ext4 /dev/vda /r");
        assert_eq!(guest.check("cat /r/etc/motd"), "from-the-rootfs\n");
        guest.check("echo written-in-boot-1 > /r/etc/note && umount /r && sync");
        // A reboot keeps the disk (and what the guest wrote); the process keeps the file.
        guest.send("reboot -f");
        guest.wait_ready(2);
        guest.check("mkdir -p /r && mount -t ext4 /dev/vda /r");
        assert_eq!(guest.check("cat /r/etc/note"), "written-in-boot-1\n");
        guest.check("umount /r");
        guest.send("poweroff -f");
        assert_eq!(guest.wait_exit(EXIT), 0, "{}", guest.stderr());
        assert_eq!(sh(&format!("ls -A {} | wc -l", tmp.display())).trim(), "0");
        assert!(
            !d.join("rootfs/etc/note").exists(),
            "the directory is not written"
        );
    }
);

/// The test host with one more virtio disk, `/dev/vda` there: a block device for a claim, as
/// Kubernetes gives a pod a block-mode volume. Its file is in the target directory.
fn block_device_testhost() -> Vec<(String, String)> {
    let share = vmm_tests::repo_root().join("images/out/qemu/usr/share");
    let disk = vmm_tests::target_dir().join("testhost-blockdev.raw");
    if std::env::var_os(vmm_tests::IN_TESTHOST).is_none() {
        std::fs::File::create(&disk)
            .and_then(|f| f.set_len(32 << 20))
            .expect("make the test host's disk");
    }
    vec![(
        "VMM_TESTHOST_QEMU_ARGS".into(),
        format!(
            "-L {share}/qemu -L {share}/seabios \
             -drive file={disk},if=virtio,format=raw,cache=unsafe,discard=unmap",
            share = share.display(),
            disk = disk.display()
        ),
    )]
}

testhost_test!(
    fn a_block_device_claim_is_served_with_its_size_and_discard() {
        let dev = Path::new("/dev/vda");
        assert!(dev.exists(), "the test host has no /dev/vda");
        sh(
            "head -c 1048576 /dev/urandom > /tmp/pattern && dd if=/tmp/pattern of=/dev/vda bs=1M conv=fsync status=none",
        );
        let manifest = Manifest::new("blockdev").disk(
            "data",
            false,
            "persistentVolumeClaim:\n        claimName: data",
        );
        let mut guest = Guest::boot(&manifest, &["--volume", "data=/dev/vda"]);
        guest.wait_ready(1);
        assert_eq!(guest.check("cat /sys/block/vda/size").trim(), "65536");
        assert!(
            guest
                .check("dd if=/dev/vda bs=1M count=1 status=none | md5sum")
                .starts_with(&md5(Path::new("/tmp/pattern")))
        );
        // A discard reaches the device (BLKDISCARD) and succeeds.
        assert_ne!(
            guest
                .check("cat /sys/block/vda/queue/discard_max_bytes")
                .trim(),
            "0"
        );
        guest.check("blkdiscard -o 0 -l 65536 /dev/vda");
        guest.check(
            "head -c 4096 /dev/zero | tr '\\0' 'B' | dd of=/dev/vda bs=4096 seek=100 conv=fsync status=none",
        );
        guest.send("poweroff -f");
        assert_eq!(guest.wait_exit(EXIT), 0, "{}", guest.stderr());
        assert_eq!(bytes_at(dev, 100 * 4096, 4), "42424242");
    },
    timeout = 240,
    env = block_device_testhost()
);
