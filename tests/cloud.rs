//! Cloud images without a kernel: Debian bookworm images made by images/cloud/build (GRUB on
//! GPT as Debian's genericcloud images are, and boot loader specification entries on their
//! own /boot), booted by `vmm` from their own boot configuration inside the KVM test host,
//! with cloud-init reading the seed `vmm` builds. Full systemd and cloud-init under nested
//! emulation take minutes, so these tests are few and each checks several things.

// An integration test crate is a test module of its own: its tests need no `#[cfg(test)]`.
#![allow(clippy::tests_outside_test_module)]

use std::path::Path;
use std::time::Duration;

use vmm_tests::guest::{Guest, Manifest};
use vmm_tests::netns::sh;
use vmm_tests::{TempDir, cloud_image, testhost_test};

/// Boot to cloud-init's final message, nested under TCG.
const CLOUD_BOOT: Duration = Duration::from_secs(600);
const SHUTDOWN: Duration = Duration::from_secs(240);

/// User data: a user with a password, a marker on the serial console at every boot
/// (`bootcmd`), and once (`runcmd`) a report: the token, whether the user has a password
/// hash, the guest's addresses; then `extra_runcmd` (YAML list items).
fn user_data(token: &str, extra_runcmd: &str) -> String {
    format!(
        "cloudInit:\n        userData: |\n          #cloud-config\n\
         \x20         users:\n            - name: tester\n              lock_passwd: false\n\
         \x20             plain_text_passwd: vmm-test-pw\n              shell: /bin/bash\n\
         \x20         write_files:\n            - path: /usr/local/bin/vmmtest-report\n\
         \x20             permissions: '0755'\n              content: |\n\
         \x20               #!/bin/sh\n\
         \x20               echo \"VMMTEST-RUNCMD {token}\"\n\
         \x20               echo \"VMMTEST-SHADOW $(getent shadow tester | cut -d: -f2 | cut -c1-3)\"\n\
         \x20               addr() {{ ip -4 -o addr show scope global | tr -s ' ' | cut -d' ' -f4; }}\n\
         \x20               waited=0\n\
         \x20               while [ -z \"$(addr)\" ] && [ $waited -lt 120 ]; do sleep 1; waited=$((waited + 1)); done\n\
         \x20               echo \"VMMTEST-ADDR-WAITED $waited\"\n\
         \x20               echo \"VMMTEST-ADDR $(addr)\"\n\
         \x20               if [ -z \"$(addr)\" ]; then ip -o link; ip -o addr; ps ax | grep -v grep | grep dhc; journalctl -b --no-pager -u networking | tail -n 30; fi\n\
         \x20               echo VMMTEST-REPORTED\n\
         \x20         bootcmd:\n            - 'echo \"VMMTEST-BOOT $(cat /proc/sys/kernel/random/boot_id)\" > /dev/ttyS0'\n\
         \x20         runcmd:\n            - '/usr/local/bin/vmmtest-report > /dev/ttyS0'\n\
         {extra_runcmd}"
    )
}

fn cloud_manifest(name: &str, image: &Path, token: &str, extra_runcmd: &str) -> Manifest {
    Manifest::new(name)
        .without_kernel()
        .memory("1Gi")
        .disk(
            "root",
            false,
            &format!("containerDisk:\n        image: {}", image.display()),
        )
        .disk("cloud-init", false, &user_data(token, extra_runcmd))
}

/// Pod 10.10.0.2/24 (default via the peer), peer 10.10.0.1/24.
fn pod_and_peer(pod_address: bool) {
    sh("ip netns add pod; ip netns add peer
        ip link add veth-pod type veth peer name veth-peer
        ip link set veth-pod netns pod; ip link set veth-peer netns peer
        ip -n pod link set veth-pod name eth0
        ip -n pod link set lo up; ip -n peer link set lo up
        ip -n peer addr add 10.10.0.1/24 dev veth-peer
        ip -n pod link set eth0 up; ip -n peer link set veth-peer up");
    if pod_address {
        sh("ip -n pod addr add 10.10.0.2/24 dev eth0
            ip -n pod route add default via 10.10.0.1");
    }
}

/// The first line the SSH server at `address` sends, from the peer.
fn ssh_banner(address: &str) -> String {
    sh(&format!(
        "ip netns exec peer timeout 60 python3 -c \"
import socket, time
for attempt in range(30):
    try:
        s = socket.create_connection(('{address}', 22), timeout=10)
        print(s.recv(64).decode().strip()); break
    except OSError:
        time.sleep(2)
\""
    ))
}

testhost_test!(
    fn a_cloud_image_boots_its_grub_entry_and_runs_cloud_init_behind_the_nat() {
        pod_and_peer(true);
        let dir = TempDir::new("cloud");
        let socket = dir.path().join("api.sock");
        let manifest = cloud_manifest(
            "cloudvm",
            &cloud_image("debian.qcow2"),
            "grub-qcow2-7f3a",
            "",
        )
        .network(
            "    - name: pod\n      masquerade: {}\n",
            "  - name: pod\n    pod: {}\n",
        );
        let mut guest = Guest::boot_in_netns(
            "pod",
            &manifest,
            &["--api-socket", socket.to_str().unwrap()],
        );
        guest.wait_for_after(0, "VMMTEST-RUNCMD grub-qcow2-7f3a", CLOUD_BOOT);
        // GRUB's default entry and command line, as GRUB makes it.
        let stderr = guest.stderr();
        assert!(
            stderr.contains("from (gpt1) /boot/grub/grub.cfg: cmdline \"BOOT_IMAGE=/boot/vmlinuz-"),
            "{stderr}"
        );
        let done = guest.wait_for_after(0, "VMMTEST-REPORTED", Duration::from_secs(180));
        let shadow = guest.wait_for_after(0, "VMMTEST-SHADOW $", Duration::from_secs(30));
        assert!(
            shadow.contains("VMMTEST-SHADOW $"),
            "tester has a password hash"
        );
        // vmm's DHCP gave the masquerade address.
        let addr_line = guest.console();
        let at = addr_line.find("VMMTEST-ADDR ").unwrap();
        assert!(
            addr_line[at..]
                .lines()
                .next()
                .unwrap()
                .contains("10.0.2.2/30"),
            "{}\n--- vmm's log ---\n{}",
            &done[done.len().saturating_sub(4000)..],
            guest.stderr()
        );
        guest.wait_for_after(0, "finished at", Duration::from_secs(120));
        // The peer reaches the guest's SSH server through the forwarded port 22.
        let banner = ssh_banner("10.10.0.2");
        assert!(banner.starts_with("SSH-2.0-OpenSSH"), "{banner}");
        // The API's Shutdown presses the power button: systemd powers off cleanly.
        let out = sh(&format!(
            "curl -s -o /dev/null -w '%{{http_code}}' --unix-socket {} -X PUT http://localhost/v1/vm/power/Shutdown",
            socket.display()
        ));
        assert_eq!(out.trim(), "204");
        assert_eq!(guest.wait_exit(SHUTDOWN), 0, "{}", guest.stderr());
        let console = guest.console();
        assert!(console.contains("reboot: Power down"), "a clean power-off");
        sh("ip netns del pod; ip netns del peer");
    },
    timeout = 1500
);

testhost_test!(
    fn the_same_image_with_the_bridge_binding_reboots_from_inside_and_comes_back() {
        pod_and_peer(true);
        let manifest = cloud_manifest(
            "cloudbr",
            &cloud_image("debian.raw"),
            "grub-raw-2c9e",
            "            - echo VMMTEST-REBOOTING > /dev/ttyS0\n            - reboot\n",
        )
        .network(
            "    - name: pod\n      bridge: {}\n",
            "  - name: pod\n    pod: {}\n",
        );
        let mut guest = Guest::boot_in_netns("pod", &manifest, &[]);
        guest.wait_for_after(0, "VMMTEST-RUNCMD grub-raw-2c9e", CLOUD_BOOT);
        let console = guest.wait_for_after(0, "VMMTEST-REBOOTING", Duration::from_secs(120));
        // The delegated pod address, from vmm's DHCP on the bridge.
        assert!(
            console.contains("10.10.0.2/24"),
            "{}",
            &console[console.len().saturating_sub(800)..]
        );
        // The second boot: its own boot id; runcmd ran once per instance, so no second
        // reboot; the disk kept cloud-init's state across the reboot.
        let first = console.matches("VMMTEST-BOOT ").count();
        let from = console.len();
        guest.wait_for_after(from, "VMMTEST-BOOT ", CLOUD_BOOT);
        let all = guest.wait_for_after(from, "finished at", CLOUD_BOOT);
        let ids: Vec<&str> = all
            .lines()
            .filter_map(|l| l.trim().strip_prefix("VMMTEST-BOOT "))
            .collect();
        assert!(ids.len() > first && ids.len() >= 2, "{ids:?}");
        assert_ne!(ids[0], ids[ids.len() - 1], "a new boot");
        assert_eq!(all.matches("VMMTEST-RUNCMD").count(), 1);
        let banner = ssh_banner("10.10.0.2");
        assert!(banner.starts_with("SSH-2.0-OpenSSH"), "{banner}");
        guest.signal(libc::SIGTERM);
        assert_eq!(guest.wait_exit(SHUTDOWN), 0, "{}", guest.stderr());
        sh("ip netns del pod; ip netns del peer");
    },
    timeout = 1800
);

testhost_test!(
    fn boot_loader_specification_entries_on_their_own_boot_partition_boot() {
        let manifest = cloud_manifest(
            "cloudbls",
            &cloud_image("debian-bls.qcow2"),
            "bls-5d1b",
            "            - poweroff\n",
        );
        let mut guest = Guest::boot(&manifest, &[]);
        guest.wait_for_after(0, "VMMTEST-RUNCMD bls-5d1b", CLOUD_BOOT);
        assert_eq!(guest.wait_exit(SHUTDOWN), 0, "{}", guest.stderr());
        // kernel-install's entry with its options as written: no GRUB in the way.
        let stderr = guest.stderr();
        assert!(
            stderr.contains("from (gpt2) /loader/entries/debian-")
                && stderr.contains("cmdline \"root=UUID="),
            "{stderr}"
        );
    },
    timeout = 1500
);
