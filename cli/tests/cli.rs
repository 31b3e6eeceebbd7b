//! The `vmm` command on this machine: validation, dry runs, exit codes, and the refusal of a
//! KVM that cannot run a guest. Nothing here boots a guest (tests/boot.rs does, in the test
//! host).

// An integration test crate: its tests are its top level.
#![allow(clippy::tests_outside_test_module)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const VMM: &str = env!("CARGO_BIN_EXE_vmm");

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("vmm-cli-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// A file that looks like a bzImage to vmm's format check.
    fn fake_bzimage(&self, name: &str) -> PathBuf {
        let mut image = vec![0u8; 0x400];
        image[0x202..0x206].copy_from_slice(b"HdrS");
        let path = self.0.join(name);
        std::fs::write(&path, image).unwrap();
        path
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn vmm(args: &[&str]) -> Output {
    Command::new(VMM).args(args).output().expect("run vmm")
}

/// What the masquerade plan says of IPv6 on this machine: the guest gets it where this
/// namespace has a global IPv6 address.
fn ipv6_plan() -> &'static str {
    if net::nat::ipv6::pod_has_ipv6() {
        "IPv6 fd10:0:2::/120, gateway fd10:0:2::1, guest fd10:0:2::2, "
    } else {
        "no IPv6 (the pod has none), "
    }
}

/// The default egress policy as the plan prints it.
const EGRESS: &str = "169.254.0.0/16, fe80::/10, fd00:ec2::254/128, fd20:ce::254/128";

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn manifest(kernel: &Path, extra_spec: &str) -> String {
    format!(
        "apiVersion: virt.virtink.smartx.com/v1alpha1\nkind: VirtualMachine\nmetadata:\n  name: demo\n\
         spec:\n{extra_spec}  instance:\n    memory:\n      size: 128Mi\n    kernel:\n      \
         image: {}\n      cmdline: console=ttyS0\n",
        kernel.display()
    )
}

#[test]
fn validate_prints_the_defaulted_manifest() {
    let dir = Dir::new("validate-ok");
    let file = dir.write(
        "vm.yaml",
        "apiVersion: virt.virtink.smartx.com/v1alpha1\nkind: VirtualMachine\nmetadata:\n  name: demo\n\
         spec:\n  instance:\n    kernel:\n      image: vmlinuz\n      cmdline: console=ttyS0\n\
         \x20   interfaces:\n      - name: pod\n  networks:\n    - name: pod\n      pod: {}\n",
    );
    let out = vmm(&["validate", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let yaml = text(&out.stdout);
    for want in [
        "runPolicy: Once",
        "sockets: 1",
        "coresPerSocket: 1",
        "size: 1Gi",
        "mac: 52:54:00:",
        "bridge: {}",
    ] {
        assert!(yaml.contains(want), "{want:?} missing from\n{yaml}");
    }
    // The printed manifest is itself valid and prints the same.
    let again = dir.write("again.yaml", &yaml);
    let out2 = vmm(&["validate", again.to_str().unwrap()]);
    assert_eq!(text(&out2.stdout), yaml);
}

#[test]
fn validate_reports_every_error_and_exits_1() {
    let dir = Dir::new("validate-bad");
    let file = dir.write(
        "vm.yaml",
        "apiVersion: virt.virtink.smartx.com/v1alpha1\nkind: VirtualMachine\nmetadata:\n  name: demo\n\
         spec:\n  runPolicy: Sometimes\n  instance:\n    interfaces:\n      - name: pod\n        mac: 01:1c:ba:0a:45:8\n\
         \x20 networks:\n    - name: other\n      pod: {}\n",
    );
    let out = vmm(&["validate", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    for want in [
        "VirtualMachine \"demo\" is invalid",
        "spec.runPolicy: Unsupported value: \"Sometimes\"",
        "spec.instance.interfaces[0].mac: Invalid value: \"01:1c:ba:0a:45:8\": address 01:1c:ba:0a:45:8: invalid MAC address",
        "spec.instance.interfaces[0].name: Invalid value: \"pod\": must match the name of a network in spec.networks",
        "spec.networks[0].name: Invalid value: \"other\"",
    ] {
        assert!(err.contains(want), "{want:?} missing from\n{err}");
    }
    assert!(out.stdout.is_empty());
}

#[test]
fn unknown_fields_are_strict_decoding_errors() {
    let dir = Dir::new("unknown");
    let file = dir.write(
        "vm.yaml",
        "apiVersion: virt.virtink.smartx.com/v1alpha1\nkind: VirtualMachine\nmetadata:\n  name: demo\n\
         spec:\n  instance:\n    interfacs: []\n",
    );
    let out = vmm(&["run", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr)
            .contains("strict decoding error: unknown field \"spec.instance.interfacs\""),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn run_with_an_invalid_manifest_exits_1_with_all_errors() {
    let dir = Dir::new("run-bad");
    let kernel = dir.fake_bzimage("vmlinuz");
    let file = dir.write(
        "vm.yaml",
        &manifest(&kernel, "  runPolicy: Never\n").replace("size: 128Mi", "size: 1000"),
    );
    let out = vmm(&["run", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("spec.runPolicy: Unsupported value: \"Never\""),
        "{err}"
    );
    assert!(
        err.contains("spec.instance.memory.size: Invalid value: 1000"),
        "{err}"
    );
}

#[test]
fn missing_kernel_exits_2_naming_the_path() {
    let dir = Dir::new("no-kernel");
    let missing = dir.0.join("no/such/vmlinuz");
    let file = dir.write("vm.yaml", &manifest(&missing, ""));
    for args in [&["run"][..], &["run", "--dry-run"][..]] {
        let mut all = args.to_vec();
        all.push(file.to_str().unwrap());
        let out = vmm(&all);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = text(&out.stderr);
        assert!(
            err.contains(&format!(
                "kernel.image: {}: no such file or directory",
                missing.display()
            )),
            "{err}"
        );
    }
}

#[test]
fn a_file_that_is_not_a_kernel_exits_2() {
    let dir = Dir::new("not-kernel");
    let bogus = dir.write("vmlinuz", "hello");
    let out = vmm(&[
        "run",
        dir.write("vm.yaml", &manifest(&bogus, ""))
            .to_str()
            .unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("not a bzImage or ELF vmlinux kernel"));
}

#[test]
fn relative_kernel_paths_are_resolved_against_the_manifest() {
    let dir = Dir::new("relative");
    std::fs::create_dir_all(dir.0.join("kernel")).unwrap();
    dir.fake_bzimage("kernel/vmlinuz");
    dir.write("kernel/initrd.img", "initrd");
    let file = dir.write("vm.yaml", &manifest(Path::new("kernel"), ""));
    let out = Command::new(VMM)
        .args(["run", "--dry-run", file.to_str().unwrap()])
        .current_dir("/")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let plan = text(&out.stdout);
    assert!(
        plan.contains(&format!(
            "kernel      {}/kernel/vmlinuz (bzImage)",
            dir.0.display()
        )),
        "{plan}"
    );
    assert!(plan.contains("initrd.img"), "{plan}");
}

#[test]
fn dry_run_prints_the_plan() {
    let dir = Dir::new("dry-run");
    let kernel = dir.fake_bzimage("vmlinuz");
    let spec = manifest(&kernel, "").replace(
        "    memory:",
        "    cpu:\n      sockets: 2\n      coresPerSocket: 3\n    memory:",
    ) + "    interfaces:\n      - name: pod\n        masquerade: {}\n      - name: data\n        bridge: {}\n\
           \x20 networks:\n    - name: pod\n      pod: {}\n    - name: data\n      multus:\n        networkName: br1\n";
    let file = dir.write("vm.yaml", &spec);
    let out = vmm(&[
        "run",
        "--dry-run",
        "--serial-log",
        "/tmp/x.log",
        file.to_str().unwrap(),
    ]);
    // net1 does not exist here: the run would fail, so the dry run exits as it would.
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("vmm run would fail"));
    let plan = text(&out.stdout);
    let nat = format!(
        "masquerade: in-process NAT on 10.0.2.0/30, gateway 10.0.2.1, guest 10.0.2.2, {}MTU \
         65520, inbound: every free TCP and UDP port outside the ephemeral range; egress \
         denies {EGRESS} (the pod's resolvers stay reachable on port 53)",
        ipv6_plan()
    );
    for want in [
        "vCPUs       6 (2 socket(s) × 3 core(s)), APIC IDs 0, 1, 2, 4, 5, 6",
        "memory      128 MiB",
        "(bzImage)",
        "cmdline     \"console=ttyS0\"",
        "16550A COM1",
        "stdout and /tmp/x.log",
        &nat,
        // No net1 here and no NAD in the file: the plan says why the run would fail.
        "bridge: would fail: spec.instance.interfaces[1] (data): host link net1 not found",
    ] {
        assert!(plan.contains(want), "{want:?} missing from\n{plan}");
    }
    assert!(
        !Path::new("/tmp/x.log").exists(),
        "a dry run touches nothing"
    );
}

#[test]
fn run_policy_halted_does_not_start() {
    let dir = Dir::new("halted");
    let kernel = dir.fake_bzimage("vmlinuz");
    let file = dir.write("vm.yaml", &manifest(&kernel, "  runPolicy: Halted\n"));
    let out = vmm(&["run", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stderr).contains("runPolicy Halted: not starting it"));
}

#[test]
fn volume_flags_must_name_a_volume() {
    let dir = Dir::new("volume");
    let kernel = dir.fake_bzimage("vmlinuz");
    let file = dir.write("vm.yaml", &manifest(&kernel, ""));
    let out = vmm(&["run", "--volume", "data=/tmp/d.img", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("the manifest has no volume named \"data\""));
    let out = vmm(&["run", "--volume", "nonsense", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "clap's usage error");
}

/// On this machine's own KVM: kvm_pvm is refused at once with exit 2 and a reason; a host
/// with hardware KVM must not be refused for being PVM.
#[test]
fn kvm_that_cannot_run_a_guest_is_refused_at_once() {
    let dir = Dir::new("pvm");
    let kernel = dir.fake_bzimage("vmlinuz");
    let file = dir.write("vm.yaml", &manifest(&kernel, ""));
    let started = Instant::now();
    let out = vmm(&["run", file.to_str().unwrap()]);
    let took = started.elapsed();
    let err = text(&out.stderr);
    let pvm = Path::new("/sys/module/kvm_pvm").exists();
    let hardware =
        Path::new("/sys/module/kvm_intel").exists() || Path::new("/sys/module/kvm_amd").exists();
    if pvm && !hardware {
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains("this host's KVM is kvm_pvm"), "{err}");
        assert!(
            err.contains("tests/testhost run"),
            "the message says what to do: {err}"
        );
        assert!(took < Duration::from_secs(1), "refused after {took:?}");
    } else {
        assert!(!err.contains("kvm_pvm"), "{err}");
    }
}

#[test]
fn help_documents_exit_codes_and_examples() {
    let out = vmm(&["--help"]);
    let help = text(&out.stdout);
    assert!(help.contains("Exit codes:") && help.contains("4  stopped by SIGTERM/SIGINT"));
    for cmd in ["run", "validate"] {
        let help = text(&vmm(&[cmd, "--help"]).stdout);
        assert!(
            help.contains("Example"),
            "{cmd} --help has no example:\n{help}"
        );
    }
}

#[test]
fn the_egress_policy_takes_ranges_to_deny_and_to_allow() {
    let dir = Dir::new("egress");
    let kernel = dir.fake_bzimage("vmlinuz");
    let spec = manifest(&kernel, "")
        + "    interfaces:\n      - name: pod\n        masquerade: {}\n  networks:\n    - name: pod\n      pod: {}\n";
    let file = dir.write("vm.yaml", &spec);
    let out = vmm(&[
        "run",
        "--dry-run",
        "--nat-deny",
        "10.1.2.3/8",
        "--nat-allow",
        "169.254.169.254",
        file.to_str().unwrap(),
    ]);
    let plan = text(&out.stdout);
    assert!(
        plan.contains(&format!(
            "egress denies {EGRESS}, 10.0.0.0/8 except 169.254.169.254/32 \
             (the pod's resolvers stay reachable on port 53)"
        )),
        "{plan}{}",
        text(&out.stderr)
    );
    for bad in ["10.0.0.0/33", "fe80::/129", "example.com"] {
        let out = vmm(&[
            "run",
            "--dry-run",
            "--nat-deny",
            bad,
            file.to_str().unwrap(),
        ]);
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let err = text(&out.stderr);
        assert!(
            err.contains("--nat-deny") && err.contains(bad),
            "{bad}: {err}"
        );
    }
}

#[test]
fn a_bad_nat_limit_is_a_usage_error() {
    let dir = Dir::new("natlimit");
    let kernel = dir.fake_bzimage("vmlinuz");
    let file = dir.write("vm.yaml", &manifest(&kernel, ""));
    for (arg, want) in [
        ("tcp-flows=0", "tcp-flows: must be at least 1"),
        ("tcp-flow=10", "unknown limit \"tcp-flow\""),
        ("udp-idle=5d", "is not a duration such as"),
        ("nonsense", "is not KEY=VALUE"),
    ] {
        let out = vmm(&[
            "run",
            "--nat-limit",
            arg,
            "--dry-run",
            file.to_str().unwrap(),
        ]);
        assert_eq!(out.status.code(), Some(2), "{arg}");
        assert!(
            text(&out.stderr).contains(want),
            "{arg}: {}",
            text(&out.stderr)
        );
    }
    let out = vmm(&[
        "run",
        "--nat-limit",
        "tcp-flows=64",
        "--dry-run",
        file.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

/// A manifest with one sriov interface on multus network 0 (`net0`), its NAD in the file.
fn sriov_manifest(kernel: &Path) -> String {
    manifest(kernel, "")
        + "    interfaces:\n      - name: vf\n        sriov: {}\n  networks:\n    - name: vf\n      multus:\n        networkName: sriov-net\n\
           ---\napiVersion: k8s.cni.cncf.io/v1\nkind: NetworkAttachmentDefinition\nmetadata:\n  name: sriov-net\n  annotations:\n    k8s.v1.cni.cncf.io/resourceName: intel.com/mlx_vf\n\
           spec:\n  config: '{\"cniVersion\": \"0.3.1\", \"type\": \"sriov\", \"deviceID\": \"0000:00:09.0\"}'\n"
}

#[test]
fn the_dry_run_says_which_source_gave_each_vf() {
    let dir = Dir::new("sriov");
    let kernel = dir.fake_bzimage("vmlinuz");
    let file = dir.write("vm.yaml", &sriov_manifest(&kernel));
    let plan = |env: &[(&str, &str)]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_vmm"));
        cmd.args(["run", "--dry-run", file.to_str().unwrap()])
            .env_remove("NETWORK_STATUS")
            .env_remove("PCIDEVICE_INTEL_COM_MLX_VF");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        // No such VF on this machine: the plan says why, and the exit code is run's.
        assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    let status = r#"[{"name": "cbr0", "interface": "eth0", "default": true},
        {"name": "default/sriov-net", "interface": "net0",
         "device-info": {"type": "pci", "version": "1.0.0", "pci": {"pci-address": "0000:3b:02.1"}}}]"#;
    let p = plan(&[
        ("NETWORK_STATUS", status),
        ("PCIDEVICE_INTEL_COM_MLX_VF", "0000:3b:02.2"),
    ]);
    assert!(
        p.contains("VF 0000:3b:02.1 from network-status entry net0 ($NETWORK_STATUS)"),
        "{p}"
    );
    let p = plan(&[("PCIDEVICE_INTEL_COM_MLX_VF", "0000:3b:02.2,0000:3b:02.3")]);
    assert!(
        p.contains("VF 0000:3b:02.2 from $PCIDEVICE_INTEL_COM_MLX_VF"),
        "{p}"
    );
    let p = plan(&[]);
    assert!(
        p.contains("VF 0000:00:09.0 from deviceID of NetworkAttachmentDefinition \"sriov-net\""),
        "{p}"
    );
    // This host cannot pass it through, and the plan says why.
    assert!(p.contains("would fail:"), "{p}");
}

/// A manifest with `disks` and `volumes` (YAML list items at their indentation).
fn disk_manifest(kernel: &Path, disks: &str, volumes: &str) -> String {
    manifest(kernel, "") + "    disks:\n" + disks + "  volumes:\n" + volumes
}

#[test]
fn the_dry_run_lists_each_disk_with_its_source_format_size_and_fate() {
    let dir = Dir::new("disks");
    let kernel = dir.fake_bzimage("vmlinuz");
    let raw = dir.write("data.img", &"\0".repeat(1 << 20));
    dir.write("root.img", &"\0".repeat(2 << 20));
    let yaml = disk_manifest(
        &kernel,
        "      - name: root\n      - name: data\n      - name: seed\n        readOnly: true\n",
        "    - name: root\n      containerDisk:\n        image: root.img\n\
         \x20   - name: data\n      persistentVolumeClaim:\n        claimName: data\n\
         \x20   - name: seed\n      cloudInit:\n        userData: \"#cloud-config\"\n",
    );
    let file = dir.write("vm.yaml", &yaml);
    let volume = format!("data={}", raw.display());
    let out = vmm(&[
        "run",
        "--dry-run",
        "--volume",
        &volume,
        file.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let plan = text(&out.stdout);
    for want in [
        "disks       (virtio-blk on PCI in this order: vda, vdb, ...; serial = disk name)",
        &format!(
            "root      containerDisk {}/root.img: raw, 2 MiB; ephemeral: writes go to a copy-on-write overlay, removed at exit",
            dir.0.display()
        ),
        &format!(
            "data      persistentVolumeClaim {} (--volume): raw, 1 MiB; persistent: writes go to the file",
            raw.display()
        ),
        "seed      cloudInit: NoCloud seed, ISO 9660 \"cidata\" (meta-data, user-data), 54 KiB, built in memory; read-only",
    ] {
        assert!(plan.contains(want), "{want:?} missing from\n{plan}");
    }
}

#[test]
fn a_missing_volume_file_and_a_corrupt_qcow2_exit_2_naming_them() {
    let dir = Dir::new("bad-disks");
    let kernel = dir.fake_bzimage("vmlinuz");
    let mut corrupt = b"QFI\xfb\0\0\0\x03".to_vec();
    corrupt.resize(512, 0xff);
    let bad = dir.0.join("bad.qcow2");
    std::fs::write(&bad, corrupt).unwrap();
    let yaml = disk_manifest(
        &kernel,
        "      - name: bad\n      - name: gone\n",
        "    - name: bad\n      containerDisk:\n        image: bad.qcow2\n\
         \x20   - name: gone\n      persistentVolumeClaim:\n        claimName: gone\n",
    );
    let file = dir.write("vm.yaml", &yaml);
    let out = vmm(&["run", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!(
            "spec.instance.disks[0] (bad): containerDisk image {}",
            bad.display()
        )),
        "{err}"
    );
    let out = vmm(&["run", "--dry-run", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let plan = text(&out.stdout);
    assert!(
        plan.contains("bad       would fail: containerDisk image"),
        "{plan}"
    );
    assert!(
        plan.contains("gone      would fail: persistentVolumeClaim: /mnt/gone does not exist"),
        "{plan}"
    );
    let missing = dir.0.join("nothing.img");
    let out = vmm(&[
        "run",
        "--volume",
        &format!("gone={}", missing.display()),
        "--volume",
        &format!("bad={}", missing.display()),
        file.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!(
            "spec.instance.disks[0] (bad): --volume {}",
            missing.display()
        )) && err.contains("No such file or directory"),
        "{err}"
    );
}

#[test]
fn an_image_without_a_readable_boot_configuration_exits_2_saying_what_to_do() {
    let dir = Dir::new("no-boot-config");
    // A disk holding an XFS file system and nothing vmm reads.
    let mut xfs = b"XFSB".to_vec();
    xfs.resize(1 << 20, 0);
    std::fs::write(dir.0.join("xfs.img"), xfs).unwrap();
    let yaml = "apiVersion: virt.virtink.smartx.com/v1alpha1\nkind: VirtualMachine\nmetadata:\n  name: demo\n\
                spec:\n  instance:\n    memory:\n      size: 128Mi\n    disks:\n      - name: root\n\
                \x20 volumes:\n    - name: root\n      containerDisk:\n        image: xfs.img\n";
    let file = dir.write("vm.yaml", yaml);
    let out = vmm(&["run", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("spec.instance.disks[0]: booting the image without a kernel")
            && err.contains("the whole disk is XFS, which vmm does not read")
            && err.contains("give spec.instance.kernel"),
        "{err}"
    );
    let out = vmm(&["run", "--dry-run", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let plan = text(&out.stdout);
    assert!(
        plan.contains("boot        first disk, firmware-free: would fail:"),
        "{plan}"
    );
}

#[test]
fn run_policy_manual_needs_an_api_to_be_powered_on() {
    let dir = Dir::new("manual");
    let kernel = dir.fake_bzimage("vmlinuz");
    let file = dir.write("vm.yaml", &manifest(&kernel, "  runPolicy: Manual\n"));
    let out = vmm(&["run", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("Manual waits for a PowerOn through the API"),
        "{}",
        text(&out.stderr)
    );
}

/// Base64, as `base64 -w0` writes it.
fn base64(plain: &str) -> String {
    let out = Command::new("sh")
        .args(["-c", "printf '%s' \"$1\" | base64 -w0", "sh", plain])
        .output()
        .unwrap();
    text(&out.stdout)
}

#[test]
fn the_vm_comes_from_vm_data_as_in_virtinks_pod() {
    let dir = Dir::new("vmdata");
    let kernel = dir.fake_bzimage("vmlinuz");
    let json = format!(
        r#"{{"metadata":{{"name":"from-env","uid":"u-1"}},"spec":{{"instance":{{"memory":{{"size":"128Mi"}},"kernel":{{"image":"{}","cmdline":"console=ttyS0"}}}}}},"status":{{"phase":"Scheduling"}}}}"#,
        kernel.display()
    );
    let data = base64(&json);
    // From the environment: the plan serves Cloud Hypervisor's API on Virtink's socket.
    let out = Command::new(VMM)
        .args(["run", "--dry-run"])
        .env("VM_DATA", &data)
        .output()
        .unwrap();
    let plan = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(plan.contains("VirtualMachine from-env"), "{plan}");
    assert!(
        plan.contains("ch-api      /var/run/virtink/ch.sock"),
        "{plan}"
    );
    // From the flag, with the API turned off; a file wins over VM_DATA.
    let out = vmm(&[
        "run",
        "--dry-run",
        "--vm-data",
        &data,
        "--ch-api-socket",
        "none",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(!text(&out.stdout).contains("ch-api"));
    let file = dir.write("vm.yaml", &manifest(&kernel, ""));
    let out = Command::new(VMM)
        .args(["validate", file.to_str().unwrap()])
        .env("VM_DATA", &data)
        .output()
        .unwrap();
    assert!(
        text(&out.stdout).contains("name: demo"),
        "{}",
        text(&out.stdout)
    );
    // validate reads VM_DATA too.
    let out = Command::new(VMM)
        .arg("validate")
        .env("VM_DATA", &data)
        .output()
        .unwrap();
    assert!(text(&out.stdout).contains("name: from-env"));
    // Bad data: exit 1 naming where it came from.
    let out = vmm(&["validate", "--vm-data", "%%%"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("--vm-data is not a VirtualMachine"));
    // Nothing at all: a usage error.
    let out = Command::new(VMM)
        .arg("run")
        .env_remove("VM_DATA")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("give a manifest FILE, --vm-data, or VM_DATA"));
}

#[test]
fn virt_init_volume_and_sysctl_are_vmm_by_another_name() {
    let dir = Dir::new("personality");
    let link = dir.0.join("virt-init-volume");
    std::os::unix::fs::symlink(VMM, &link).unwrap();
    let out_iso = dir.0.join("cloud-init.iso");
    let out = Command::new(&link)
        .args([
            "cloud-init",
            &base64("instance-id: x\nlocal-hostname: y"),
            &base64("#cloud-config\n"),
            "",
            out_iso.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(std::fs::read(&out_iso).unwrap().len() % 2048, 0);
    let out = Command::new(&link).arg("bogus").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).starts_with("virt-init-volume: "));
    let sysctl = dir.0.join("sysctl");
    std::os::unix::fs::symlink(VMM, &sysctl).unwrap();
    let out = Command::new(&sysctl)
        .args(["-w", "../x=1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("not a sysctl name"));
}
