//! Tests of VF discovery (network-status, device-plugin variables, NAD deviceID) and of the
//! host checks, against fake sysfs and /dev trees.

use std::os::unix::fs::symlink;

use super::*;
use crate::config;

/// A manifest with sriov interfaces on multus networks `nets` (network i+1 → net<i+1>,
/// after the pod network), and `nads` as extra documents.
fn load(nets: &[&str], nads: &str) -> (Manifest, VmConfig) {
    let mut interfaces = String::from("      - name: pod\n        masquerade: {}\n");
    let mut networks = String::from("    - name: pod\n      pod: {}\n");
    for (i, net) in nets.iter().enumerate() {
        interfaces += &format!("      - name: vf{i}\n        sriov: {{}}\n");
        networks += &format!("    - name: vf{i}\n      multus:\n        networkName: {net}\n");
    }
    let text = format!(
        "apiVersion: virt.virtink.smartx.com/v1alpha1\nkind: VirtualMachine\n\
         metadata:\n  name: vm\nspec:\n  instance:\n    memory:\n      size: 1Gi\n\
         \x20   kernel:\n      image: /vmlinuz\n      cmdline: console=ttyS0\n\
         \x20   interfaces:\n{interfaces}  networks:\n{networks}{nads}"
    );
    let manifest = config::documents::parse(&text, Path::new("vm.yaml"), PathBuf::from("/"))
        .expect("valid manifest");
    let cfg = VmConfig::from_manifest(&manifest);
    (manifest, cfg)
}

fn nad(name: &str, resource: Option<&str>, device_id: Option<&str>) -> String {
    let annotations = resource.map_or(String::new(), |r| {
        format!("  annotations:\n    k8s.v1.cni.cncf.io/resourceName: {r}\n")
    });
    let device = device_id.map_or(String::new(), |d| format!(", \"deviceID\": \"{d}\""));
    format!(
        "---\napiVersion: k8s.cni.cncf.io/v1\nkind: NetworkAttachmentDefinition\n\
         metadata:\n  name: {name}\n{annotations}\
         spec:\n  config: '{{\"cniVersion\": \"0.3.1\", \"type\": \"sriov\"{device}}}'\n"
    )
}

/// Multus' network-status for a pod with the cluster network, a macvlan without device
/// info, and two SR-IOV VFs.
const STATUS: &str = r#"[{
    "name": "cbr0",
    "interface": "eth0",
    "ips": ["10.244.1.5"],
    "mac": "0a:58:0a:f4:01:05",
    "default": true,
    "dns": {}
},{
    "name": "default/macvlan-conf",
    "interface": "net1",
    "ips": ["192.168.1.200"],
    "mac": "86:1d:96:ff:55:0d",
    "dns": {}
},{
    "name": "default/sriov-a",
    "interface": "net2",
    "mac": "a2:4b:11:22:33:44",
    "dns": {},
    "device-info": {
        "type": "pci",
        "version": "1.0.0",
        "pci": {"pci-address": "0000:3b:02.1", "pf-pci-address": "0000:3b:00.0"}
    }
},{
    "name": "default/sriov-b",
    "interface": "net3",
    "dns": {},
    "device-info": {"type": "pci", "version": "1.1.0", "pci": {"pci-address": "0000:af:06.3"}}
}]"#;

#[test]
fn pci_addresses() {
    assert_eq!(
        PciAddress::parse("0000:3B:02.1").unwrap().to_string(),
        "0000:3b:02.1"
    );
    assert_eq!(
        PciAddress::parse("3b:02.1").unwrap().to_string(),
        "0000:3b:02.1"
    );
    for bad in [
        "",
        "3b:02",
        "0000:3b:02.8",
        "0000:3b:20.1",
        "zz:00.0",
        "0000:3b:02.1.1",
    ] {
        assert!(PciAddress::parse(bad).is_none(), "{bad}");
    }
}

#[test]
fn network_status_entries_with_and_without_device_info() {
    assert_eq!(
        status_address(STATUS, "net2").unwrap().unwrap().to_string(),
        "0000:3b:02.1"
    );
    assert_eq!(
        status_address(STATUS, "net3").unwrap().unwrap().to_string(),
        "0000:af:06.3"
    );
    assert_eq!(
        status_address(STATUS, "net1").unwrap(),
        None,
        "no device-info"
    );
    assert_eq!(status_address(STATUS, "net9").unwrap(), None, "no entry");
    status_address("{}", "net1").unwrap_err();
    status_address("nonsense", "net1").unwrap_err();
}

#[test]
fn the_downward_api_file_is_unquoted() {
    let quoted = format!("{STATUS:?}"); // Rust's Debug quoting escapes as Go's does here
    let file = format!(
        "kubernetes.io/config.seen=\"2026-11-30T00:00:00Z\"\n{NETWORK_STATUS_KEY}={quoted}\n\
         other=\"a \\\"b\\\" \\u00e9\"\n"
    );
    assert_eq!(annotation(&file, NETWORK_STATUS_KEY).unwrap(), STATUS);
    assert_eq!(annotation(&file, "other").unwrap(), "a \"b\" é");
    assert_eq!(annotation(&file, "missing"), None);
}

#[test]
fn each_source_in_order() {
    let nads = nad("sriov-a", Some("intel.com/mlx_sriov"), Some("0000:00:09.0"));
    // Interfaces vf0 and vf1 on networks 1 and 2 (net1, net2), both sriov-a.
    let (manifest, cfg) = load(&["sriov-a", "sriov-a"], &nads);

    // 1. network-status (it knows net2 only).
    let sources = Sources {
        network_status: Some(STATUS.to_string()),
        pcidevice: [(
            "PCIDEVICE_INTEL_COM_MLX_SRIOV".to_string(),
            "0000:3b:02.1,0000:3b:02.2".to_string(),
        )]
        .into(),
        ..Sources::default()
    };
    let vfs = discover(&cfg, &manifest, &sources).unwrap();
    // net1: no device-info in the status, so the device plugin's list; its first entry is
    // net2's VF, so the second.
    assert_eq!(vfs[0].address.to_string(), "0000:3b:02.2");
    assert_eq!(vfs[0].source, "$PCIDEVICE_INTEL_COM_MLX_SRIOV");
    assert_eq!(vfs[1].address.to_string(), "0000:3b:02.1");
    assert!(
        vfs[1].source.contains("network-status entry net2"),
        "{}",
        vfs[1].source
    );

    // 2. The device plugin alone: consumed in interface order.
    let sources = Sources {
        pcidevice: [(
            "PCIDEVICE_INTEL_COM_MLX_SRIOV".to_string(),
            "0000:3b:02.1,0000:3b:02.2".to_string(),
        )]
        .into(),
        ..Sources::default()
    };
    let vfs = discover(&cfg, &manifest, &sources).unwrap();
    assert_eq!(vfs[0].address.to_string(), "0000:3b:02.1");
    assert_eq!(vfs[1].address.to_string(), "0000:3b:02.2");

    // 3. The NAD's deviceID: one VF, so the second interface collides.
    let err = discover(&cfg, &manifest, &Sources::default()).unwrap_err();
    assert!(
        err.to_string()
            .contains("VF 0000:00:09.0 is also interface vf0"),
        "{err}"
    );
    let (manifest, cfg) = load(&["sriov-a"], &nads);
    let vfs = discover(&cfg, &manifest, &Sources::default()).unwrap();
    assert_eq!(vfs[0].address.to_string(), "0000:00:09.0");
    assert!(vfs[0].source.contains("deviceID"));
}

#[test]
fn the_downward_api_file_is_a_source_and_nothing_found_says_what_was_tried() {
    let (manifest, cfg) = load(&["macvlan-x", "macvlan-y", "sriov-b"], "");
    let sources = Sources {
        annotations: Some((
            PathBuf::from(PODINFO_ANNOTATIONS),
            format!("{NETWORK_STATUS_KEY}={STATUS:?}\n"),
        )),
        ..Sources::default()
    };
    // Interfaces on networks 1..3: net1 has no device-info, so discovery fails there.
    let err = discover(&cfg, &manifest, &sources).unwrap_err().to_string();
    assert!(err.contains("spec.instance.interfaces[1] (vf0)"), "{err}");
    assert!(
        err.contains("no PCI address for net1 in network-status (/etc/podinfo/annotations)"),
        "{err}"
    );
    assert!(err.contains("resourceName annotation"), "{err}");
    assert!(err.contains("no deviceID"), "{err}");
}

#[test]
fn device_plugin_variable_names() {
    assert_eq!(
        pcidevice_var("intel.com/mellanox_SRIOV_25G"),
        "PCIDEVICE_INTEL_COM_MELLANOX_SRIOV_25G"
    );
}

/// A fake /sys and /dev: VF `vf` with `driver`, in IOMMU group 7 with `others`.
fn fake_host(
    dir: &Path,
    vf: &str,
    driver: Option<&str>,
    others: &[(&str, Option<&str>)],
    vfio: bool,
) -> HostPaths {
    let sys = dir.join("sys");
    let dev = dir.join("dev");
    let group = sys.join("kernel/iommu_groups/7/devices");
    std::fs::create_dir_all(&group).unwrap();
    std::fs::create_dir_all(sys.join("bus/pci/drivers")).unwrap();
    if vfio {
        std::fs::create_dir_all(dev.join("vfio")).unwrap();
        std::fs::write(dev.join("vfio/vfio"), "").unwrap();
        std::fs::write(dev.join("vfio/7"), "").unwrap();
    }
    for (addr, drv) in std::iter::once((vf, driver)).chain(others.iter().copied()) {
        let d = sys.join("bus/pci/devices").join(addr);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("vendor"), "0x15b3\n").unwrap();
        std::fs::write(d.join("device"), "0x1018\n").unwrap();
        if let Some(drv) = drv {
            std::fs::create_dir_all(sys.join("bus/pci/drivers").join(drv)).unwrap();
            symlink(sys.join("bus/pci/drivers").join(drv), d.join("driver")).unwrap();
        }
        symlink(sys.join("kernel/iommu_groups/7"), d.join("iommu_group")).unwrap();
        symlink(&d, group.join(addr)).unwrap();
    }
    HostPaths { sys, dev }
}

fn vf(addr: &str) -> Vf {
    Vf {
        index: 1,
        name: "vf0".into(),
        address: PciAddress::parse(addr).unwrap(),
        source: "$PCIDEVICE_X".into(),
    }
}

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vmm-sriov-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn host_checks_name_each_missing_piece() {
    let a = "0000:3b:02.1";
    let check = |name: &str, driver, others: &[(&str, Option<&str>)], vfio| {
        let dir = tempdir(name);
        let paths = fake_host(&dir, a, driver, others, vfio);
        let r = check_host(&vf(a), &paths).map_err(|e| e.to_string());
        let _ = std::fs::remove_dir_all(&dir);
        r
    };
    let e = check("novfio", Some("vfio-pci"), &[], false).unwrap_err();
    assert!(
        e.contains("no ") && e.contains("vfio/vfio") && e.contains("intel_iommu=on"),
        "{e}"
    );
    let e = check("mlx", Some("mlx5_core"), &[], true).unwrap_err();
    assert!(e.contains("bound to driver mlx5_core, not vfio-pci"), "{e}");
    assert!(
        e.contains("echo 0000:3b:02.1 > /sys/bus/pci/drivers/mlx5_core/unbind"),
        "{e}"
    );
    assert!(
        e.contains("echo 15b3 1018 > /sys/bus/pci/drivers/vfio-pci/new_id"),
        "{e}"
    );
    let e = check("nodriver", None, &[], true).unwrap_err();
    assert!(e.contains("bound to no driver"), "{e}");
    let e = check(
        "group",
        Some("vfio-pci"),
        &[("0000:3b:02.2", Some("mlx5_core")), ("0000:3b:02.3", None)],
        true,
    )
    .unwrap_err();
    assert!(e.contains("IOMMU group 7 is not viable"), "{e}");
    assert!(e.contains("0000:3b:02.2 (driver mlx5_core)"), "{e}");
    assert!(
        !e.contains("0000:3b:02.3"),
        "a device without a driver is fine: {e}"
    );
    check(
        "ok",
        Some("vfio-pci"),
        &[
            ("0000:3b:02.2", Some("vfio-pci")),
            ("0000:3a:00.0", Some("pcieport")),
        ],
        true,
    )
    .unwrap();
    let dir = tempdir("absent");
    let paths = fake_host(&dir, a, Some("vfio-pci"), &[], true);
    let e = check_host(&vf("0000:3b:02.7"), &paths)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no such PCI device"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
