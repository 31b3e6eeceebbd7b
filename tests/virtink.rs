//! Running as Virtink's VM pod, inside the KVM test host: `vmm run` with no manifest file and
//! the VirtualMachine in `VM_DATA` (the whole object as Virtink's controller marshals it),
//! the volumes where the pod's init containers leave them under `/mnt`, in a pod network
//! namespace; then driven call by call through Cloud Hypervisor's API on
//! `/var/run/virtink/ch.sock`, as Virtink's virt-daemon drives it, with the request shapes
//! of its Go client (`Host: localhost`, body-less PUTs with `Content-Length: 0`, the
//! configuration read back from `vm-config.json`).
//!
//! The test host's root is a throwaway overlay, so `/mnt` and `/var/run/virtink` are made
//! as a pod has them and vanish with the test host.

// An integration test crate is a test module of its own: its tests need no `#[cfg(test)]`.
#![allow(clippy::tests_outside_test_module)]

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use vmm_tests::guest::Guest;
use vmm_tests::netns::sh;
use vmm_tests::{guest_image, http_unix, testhost_test, virt_daemon_client};

const EXIT: Duration = Duration::from_secs(60);
const SOCKET: &str = "/var/run/virtink/ch.sock";
const CONFIG: &str = "/var/run/virtink/vm-config.json";

/// Pod 10.10.0.2/24 (default via the peer), peer 10.10.0.1/24, joined by a veth pair.
fn pod_and_peer() {
    sh("ip netns add pod; ip netns add peer
        ip link add veth-pod type veth peer name veth-peer
        ip link set veth-pod netns pod; ip link set veth-peer netns peer
        ip -n pod link set veth-pod name eth0
        ip -n pod link set lo up; ip -n peer link set lo up
        ip -n pod link set eth0 up; ip -n peer link set veth-peer up
        ip -n pod addr add 10.10.0.2/24 dev eth0
        ip -n peer addr add 10.10.0.1/24 dev veth-peer
        ip -n pod route add default via 10.10.0.1");
}

/// What the pod's init containers leave: the container disk converted to raw at
/// `/mnt/root/disk.raw` (here an ext4 file system holding the test guest's kernel, initrd
/// and a boot loader entry, so that vmm boots it as a cloud image without `kernel`), and
/// the cloud-init volume at `/mnt/cloud-init/cloud-init.iso`.
fn init_containers() {
    let image = guest_image();
    sh(&format!(
        "rm -rf /mnt/root /mnt/cloud-init /tmp/bootfs /var/run/virtink
        mkdir -p /mnt/root /mnt/cloud-init /var/run/virtink /tmp/bootfs/loader/entries
        cp {image}/vmlinuz {image}/initrd /tmp/bootfs/
        printf 'title busybox\\nlinux /vmlinuz\\ninitrd /initrd\\noptions console=ttyS0 loglevel=4\\n' \
            > /tmp/bootfs/loader/entries/busybox.conf
        mkfs.ext4 -q -F -d /tmp/bootfs /mnt/root/disk.raw 64M
        head -c 1M /dev/zero > /mnt/cloud-init/cloud-init.iso",
        image = image.display()
    ));
}

/// The VirtualMachine as Virtink's controller puts it in `VM_DATA`: the whole object, with
/// Kubernetes' bookkeeping, the resources its controller added and the status it had.
fn virtual_machine(name: &str, binding: Value) -> Value {
    json!({
        "metadata": {
            "name": name,
            "namespace": "default",
            "uid": "6c1ad0b4-8f21-4a53-9d1e-2f3c4b5a6d7e",
            "resourceVersion": "4711",
            "generation": 1,
            "creationTimestamp": "2026-12-05T10:00:00Z",
            "labels": {"virtink.io/vm.name": name},
        },
        "spec": {
            "resources": {
                "limits": {"devices.virtink.io/kvm": "1", "devices.virtink.io/tun": "1"},
                "requests": {"devices.virtink.io/kvm": "1", "devices.virtink.io/tun": "1"},
            },
            "runPolicy": "Once",
            "instance": {
                "cpu": {"sockets": 1, "coresPerSocket": 1},
                "memory": {"size": "256Mi"},
                "disks": [{"name": "root"}, {"name": "cloud-init"}],
                "interfaces": [binding],
            },
            "volumes": [
                {"name": "root", "containerDisk": {
                    "image": "registry.example/busybox-container-disk",
                    "imagePullPolicy": "IfNotPresent"}},
                {"name": "cloud-init", "cloudInit": {"userData": "#cloud-config\n"}},
            ],
            "networks": [{"name": "pod", "pod": {}}],
        },
        "status": {"phase": "Scheduling", "vmPodName": format!("vm-{name}-x7k2p")},
    })
}

/// Starts vmm as the VM pod's one process: no arguments, `VM_DATA` in the environment.
fn start_pod(vm: &Value) -> Guest {
    use base64::Engine as _;
    let data = base64::engine::general_purpose::STANDARD.encode(vm.to_string());
    Guest::start_pod(&["ip", "netns", "exec", "pod"], &[], &[("VM_DATA", &data)])
}

/// A call as virt-daemon's Go client makes it; the status and body.
fn call(method: &str, name: &str, body: Option<&str>) -> (u16, String) {
    let mut extra = vec![
        "-H",
        "User-Agent: Go-http-client/1.1",
        "-H",
        "Content-Type:",
    ];
    match body {
        Some(body) => extra.extend(["--data-binary", body]),
        None if method == "PUT" => extra.extend(["-H", "Content-Length: 0"]),
        None => {}
    }
    http_unix(
        Path::new(SOCKET),
        method,
        &format!("/api/v1/{name}"),
        &extra,
    )
}

fn info() -> Value {
    let (code, body) = call("GET", "vm.info", None);
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{body}: {e}"))
}

fn wait_for(path: &str, guest: &Guest) {
    let start = Instant::now();
    while !Path::new(path).exists() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{path} did not appear: {}",
            guest.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// virt-daemon's `Scheduled` phase: `vm.info` says the VM is not created, so it reads
/// `vm-config.json`, sends it back with `vm.create`, then `vm.boot`.
fn create_and_boot(guest: &Guest) -> Value {
    wait_for(SOCKET, guest);
    let (code, body) = call("GET", "vm.info", None);
    assert!(
        code >= 400 && body.contains("VM is not created"),
        "{code} {body}"
    );
    wait_for(CONFIG, guest);
    let config = std::fs::read_to_string(CONFIG).unwrap();
    assert_eq!(call("PUT", "vm.boot", None).0, 500, "boot before create");
    assert_eq!(
        call("PUT", "vm.create", Some(&config)),
        (204, String::new())
    );
    let (code, body) = call("PUT", "vm.create", Some(&config));
    assert_eq!((code, body.as_str()), (500, "VM is already created"));
    assert_eq!(info()["state"], "Created");
    assert_eq!(call("PUT", "vm.boot", None).0, 204);
    serde_json::from_str(&config).unwrap()
}

testhost_test!(
    fn a_masquerade_vm_runs_as_virtinks_pod_driven_through_cloud_hypervisors_api() {
        pod_and_peer();
        init_containers();
        sh(
            "mkdir -p /tmp/peer-www && echo served-to-the-pod > /tmp/peer-www/hello
            cd /tmp/peer-www
            ip netns exec peer python3 -m http.server 8000 --bind 10.10.0.1 >/dev/null 2>&1 &
            for i in $(seq 100); do
              ip netns exec peer ss -ltn | grep -qF 10.10.0.1:8000 && exit 0; sleep 0.2
            done; exit 1",
        );
        let vm = virtual_machine(
            "virtink-nat",
            json!({"name": "pod", "mac": "52:54:00:aa:bb:01", "masquerade": {}}),
        );
        let mut guest = start_pod(&vm);
        let config = create_and_boot(&guest);
        // vm-config.json is the VM as the pre-runner would write it: the disks under /mnt
        // by volume name (virt-daemon unplugs any other id), the NIC with its MAC.
        assert_eq!(config["cpus"]["boot_vcpus"], 1, "{config}");
        assert_eq!(config["memory"]["size"], 256u64 << 20);
        assert_eq!(config["disks"][0]["id"], "root");
        assert_eq!(config["disks"][0]["path"], "/mnt/root/disk.raw");
        assert_eq!(config["disks"][1]["path"], "/mnt/cloud-init/cloud-init.iso");
        assert_eq!(config["net"][0]["id"], "pod");
        assert_eq!(config["net"][0]["mac"], "52:54:00:aa:bb:01");
        guest.wait_ready(1);
        let running = info();
        assert_eq!(running["state"], "Running");
        assert_eq!(running["config"]["disks"][1]["id"], "cloud-init");
        assert_eq!(running["memory_actual_size"], 256u64 << 20);

        // The guest reaches the peer through the in-process NAT.
        let lease = guest.check("udhcpc -i eth0 -s /etc/udhcpc.script -q -n -t 5 -T 2");
        assert!(lease.contains("ip=10.0.2.2"), "{lease}");
        let page = guest.check("wget -q -O - http://10.10.0.1:8000/hello");
        assert!(page.contains("served-to-the-pod"), "{page}");
        assert_eq!(
            guest
                .check("ls /sys/block | grep vd")
                .split_whitespace()
                .count(),
            2
        );

        // powerAction Pause and Resume.
        assert_eq!(call("PUT", "vm.pause", None).0, 204);
        assert_eq!(info()["state"], "Paused");
        let (code, body) = call("PUT", "vm.pause", None);
        assert!(code == 500 && body.contains("Paused"), "{code} {body}");
        assert_eq!(call("PUT", "vm.resume", None).0, 204);
        assert_eq!(info()["state"], "Running");
        guest.check("true");

        // Hotplug and migration are refused, naming what.
        let (code, body) = call("PUT", "vm.add-disk", Some(r#"{"id":"extra","path":"/x"}"#));
        assert!(
            code == 501 && body.contains("hotplugging disks"),
            "{code} {body}"
        );
        let (code, body) = call("PUT", "vm.send-migration", Some("{}"));
        assert!(
            code == 501 && body.contains("live migration"),
            "{code} {body}"
        );

        // powerAction Reset and Reboot: vm.reboot, a new boot in the same process.
        assert_eq!(call("PUT", "vm.reboot", None).0, 204);
        guest.wait_ready(2);
        assert_eq!(info()["state"], "Running");

        // powerAction PowerOff: vm.shutdown stops the guest; the VM stays created, as Cloud
        // Hypervisor's does, and boots again on vm.boot.
        assert_eq!(call("PUT", "vm.shutdown", None).0, 204);
        assert_eq!(info()["state"], "Created");
        assert_eq!(call("PUT", "vm.shutdown", None).0, 500);
        assert_eq!(call("PUT", "vm.boot", None).0, 204);
        guest.wait_ready(3);

        // powerAction Shutdown: vm.power-button; the guest powers off and vmm exits 0, as
        // Cloud Hypervisor does, so the pod succeeds.
        assert_eq!(call("PUT", "vm.power-button", None).0, 204);
        assert_eq!(guest.wait_exit(EXIT), 0, "{}", guest.stderr());
        assert!(!Path::new(SOCKET).exists(), "ch.sock removed");
        assert!(!Path::new(CONFIG).exists(), "vm-config.json removed");
    },
    timeout = 420
);

testhost_test!(
    fn a_bridge_vm_runs_as_virtinks_pod_and_vmm_shutdown_gives_the_pod_its_link_back() {
        pod_and_peer();
        init_containers();
        let before = sh("ip -n pod -o addr show dev eth0 | awk '{print $4}'; ip -n pod route");
        let vm = virtual_machine("virtink-bridge", json!({"name": "pod", "bridge": {}}));
        let mut guest = start_pod(&vm);
        let config = create_and_boot(&guest);
        // The bridge binding's TAP, as Virtink names it.
        assert_eq!(config["net"][0]["tap"], "tap-eth0", "{config}");
        guest.wait_ready(1);
        assert_eq!(info()["state"], "Running");
        let lease = guest.check("udhcpc -i eth0 -s /etc/udhcpc.script -q -n -t 5 -T 2");
        assert!(lease.contains("ip=10.10.0.2 mask=24"), "{lease}");
        guest.check("ping -c 2 -W 5 10.10.0.1");

        // vm.delete stops the guest and forgets the config; vmm.shutdown ends the process.
        assert_eq!(call("PUT", "vm.delete", None).0, 204);
        let (code, body) = call("GET", "vm.info", None);
        assert!(code == 500 && body == "VM is not created", "{code} {body}");
        assert_eq!(call("PUT", "vmm.shutdown", None), (200, String::new()));
        assert_eq!(guest.wait_exit(EXIT), 0, "{}", guest.stderr());
        let after = sh("ip -n pod -o addr show dev eth0 | awk '{print $4}'; ip -n pod route");
        assert_eq!(before, after, "the pod's link is back as it was");
    },
    timeout = 360
);

/// virt-daemon-client, run against the pod's `/var/run/virtink`: its one line of output.
fn virt_daemon(args: &[&str]) -> String {
    let out = std::process::Command::new(virt_daemon_client())
        .arg("/var/run/virtink")
        .args(args)
        .output()
        .expect("run virt-daemon-client");
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(out.status.success(), "virt-daemon-client {args:?}: {text}");
    text
}

testhost_test!(
    fn virt_daemons_go_client_creates_boots_and_powers_the_vm() {
        pod_and_peer();
        init_containers();
        let vm = virtual_machine(
            "virtink-go",
            json!({"name": "pod", "mac": "52:54:00:aa:bb:02", "masquerade": {}}),
        );
        let mut guest = start_pod(&vm);
        wait_for(SOCKET, &guest);
        wait_for(CONFIG, &guest);
        // The Scheduled phase: not created, so create from vm-config.json (decoded into Go's
        // types and encoded again) and boot.
        assert_eq!(
            virt_daemon(&["reconcile"]),
            "created and booted: 2 disks, 1 nets"
        );
        guest.wait_ready(1);
        // The next pass marks it Running; the disk ids are the volume names.
        assert_eq!(
            virt_daemon(&["reconcile"]),
            "phase Running: state Running, disks root,cloud-init"
        );
        assert_eq!(virt_daemon(&["power", "Pause"]), "Pause: vm.pause");
        assert_eq!(virt_daemon(&["state"]), "state Paused");
        assert_eq!(virt_daemon(&["power", "Resume"]), "Resume: vm.resume");
        assert_eq!(virt_daemon(&["power", "Reboot"]), "Reboot: vm.reboot");
        guest.wait_ready(2);
        assert_eq!(virt_daemon(&["power", "PowerOff"]), "PowerOff: vm.shutdown");
        // Cloud Hypervisor's answer after vm.shutdown: Created, which virt-daemon's Running
        // phase takes for Succeeded; its Scheduled phase would boot it again.
        assert_eq!(virt_daemon(&["state"]), "state Created");
        assert_eq!(virt_daemon(&["reconcile"]), "booted");
        guest.wait_ready(3);
        assert_eq!(
            virt_daemon(&["power", "Shutdown"]),
            "Shutdown: vm.power-button"
        );
        assert_eq!(guest.wait_exit(EXIT), 0, "{}", guest.stderr());
    },
    timeout = 420
);
