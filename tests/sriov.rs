//! SR-IOV: VF discovery and the host checks, inside a KVM test host that has an emulated
//! IOMMU and PCI functions to pass through ([`vmm_tests::passthrough_testhost`]).

// An integration test crate is a test module of its own: its tests need no `#[cfg(test)]`.
#![allow(clippy::tests_outside_test_module)]

use std::time::Duration;

use vmm_tests::guest::{Guest, Manifest};
use vmm_tests::netns::sh;
use vmm_tests::{passthrough_testhost, testhost_test, vmm_bin};

const EXIT: Duration = Duration::from_secs(60);

/// A guest whose only interface is an sriov VF on multus network 0, the NAD in the file
/// naming `device_id`.
fn vf_manifest(device_id: &str) -> Manifest {
    Manifest::new("vf")
        .network(
            "    - name: vf\n      sriov: {}\n",
            "  - name: vf\n    multus:\n      networkName: sriov-net\n",
        )
        .sriov_nad("sriov-net", device_id)
}

/// Runs vmm on `manifest` through `wrapper`; (exit code, stderr).
fn refused(wrapper: &[&str], manifest: &Manifest) -> (i32, String) {
    let mut vmm = Guest::boot_wrapped(wrapper, manifest, &[]);
    let code = vmm.wait_exit(EXIT);
    (code, vmm.stderr())
}

/// The bind commands in vmm's message, run as they are.
fn run_bind_steps(stderr: &str) {
    let steps = stderr
        .split("bind it: ")
        .nth(1)
        .unwrap_or_else(|| panic!("no bind steps in {stderr}"))
        .lines()
        .next()
        .unwrap();
    sh(steps);
}

testhost_test!(
    fn each_missing_piece_is_named_and_the_printed_bind_steps_work() {
        let vf = "0000:00:10.0";
        let manifest = vf_manifest(vf);

        // Bound to its own driver: the message names it and says how to bind vfio-pci.
        let (code, stderr) = refused(&[], &manifest);
        assert_eq!(code, 2, "{stderr}");
        assert!(
            stderr.contains(&format!("VF {vf} from "))
                && stderr.contains("it is bound to driver virtio-pci, not vfio-pci"),
            "{stderr}"
        );
        assert!(
            stderr.contains("Virtink's guide binds by ID instead: echo 0000:00:10.0 > /sys/bus/pci/drivers/virtio-pci/unbind; echo 1af4 1041 > /sys/bus/pci/drivers/vfio-pci/new_id"),
            "{stderr}"
        );
        run_bind_steps(&stderr);
        let driver = sh(&format!("readlink /sys/bus/pci/devices/{vf}/driver"));
        assert!(driver.trim().ends_with("/vfio-pci"), "{driver}");

        // Bound: the plan says the host is ready.
        let plan = sh(&format!(
            "{} run --dry-run {}",
            vmm_bin().display(),
            manifest.write(&std::env::temp_dir()).display()
        ));
        assert!(plan.contains(&format!("VF {vf} from deviceID")), "{plan}");
        assert!(plan.contains("the host is ready for it"), "{plan}");

        // A memlock limit below guest RAM + 1 GiB that cannot be raised (no CAP_SYS_RESOURCE).
        let (code, stderr) = refused(
            &[
                "setpriv",
                "--bounding-set",
                "-sys_resource",
                "--inh-caps",
                "-sys_resource",
                "prlimit",
                "--memlock=65536:65536",
            ],
            &manifest,
        );
        assert_eq!(code, 2, "{stderr}");
        assert!(stderr.contains("RLIMIT_MEMLOCK is 65536"), "{stderr}");
        assert!(stderr.contains("guest RAM + 1 GiB"), "{stderr}");

        // Two functions behind one PCI bridge share an IOMMU group: binding one is not
        // enough while the other keeps its driver.
        let first = "0000:01:01.0";
        let (_, stderr) = refused(&[], &vf_manifest(first));
        run_bind_steps(&stderr);
        let (code, stderr) = refused(&[], &vf_manifest(first));
        assert_eq!(code, 2, "{stderr}");
        assert!(stderr.contains("is not viable"), "{stderr}");
        assert!(
            stderr.contains("0000:01:02.0 (driver virtio-pci)"),
            "{stderr}"
        );
    },
    timeout = 240,
    env = passthrough_testhost()
);

testhost_test!(
    fn a_passed_through_function_is_driven_by_the_guest() {
        let vf = "0000:00:10.0";
        let manifest = vf_manifest(vf);
        let (_, stderr) = refused(&[], &manifest);
        run_bind_steps(&stderr);
        let mut guest = Guest::boot(&manifest, &[]);
        guest.wait_ready(1);
        // The guest's virtio-pci driver takes the function: eth0 is a virtio device whose
        // parent is the passed-through PCI function.
        let dev = guest
            .check("cat /sys/class/net/eth0/device/../vendor /sys/class/net/eth0/device/../device");
        assert_eq!(
            dev.split_whitespace().collect::<Vec<_>>(),
            ["0x1af4", "0x1041"],
            "{dev}"
        );
        // Traffic through it, both ways: DHCP from QEMU's (restricted) user network behind
        // the function in the test host, and an echo from its gateway.
        let lease = guest.check("udhcpc -i eth0 -s /etc/udhcpc.script -q -n -t 5 -T 2");
        assert!(lease.contains("ip=10.0.2.15"), "{lease}");
        guest.check("ping -c 2 -W 5 10.0.2.2");
        // The function's BARs outside its MSI-X page are guest memory, not traps.
        assert!(
            guest
                .stderr()
                .contains("16 KiB of BARs mapped into the guest"),
            "{}",
            guest.stderr()
        );
        let irqs = guest.check("grep -c virtio /proc/interrupts || true");
        assert!(irqs.trim().parse::<u32>().unwrap_or(0) > 0, "{irqs}");
        guest.send("poweroff -f");
        assert_eq!(guest.wait_exit(EXIT), 0, "{}", guest.stderr());
        // vmm let go of it: the function can be opened again (another boot works).
        let mut guest = Guest::boot(&manifest, &[]);
        guest.wait_ready(1);
        guest.check("udhcpc -i eth0 -s /etc/udhcpc.script -q -n -t 5 -T 2");
        guest.send("poweroff -f");
        assert_eq!(guest.wait_exit(EXIT), 0, "{}", guest.stderr());
    },
    timeout = 400,
    env = passthrough_testhost()
);
