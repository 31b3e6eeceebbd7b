//! Resolving disks from manifests: where each volume source is found, what `--volume` and
//! `readOnly` change, and what is refused; then opening them.

use std::path::{Path, PathBuf};

use super::*;
use crate::config;

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("vmm-disk-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }

    fn file(&self, rel: &str, bytes: &[u8]) -> PathBuf {
        let p = self.0.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, bytes).unwrap();
        p
    }

    /// A manifest whose disks are `volumes` (name, volume source YAML), read-only where
    /// the name ends in `-ro`.
    fn manifest(&self, volumes: &[(&str, &str)], extra: &str) -> config::Manifest {
        let disks: String = volumes
            .iter()
            .map(|(n, _)| {
                let ro = if n.ends_with("-ro") {
                    "\n        readOnly: true"
                } else {
                    ""
                };
                format!("      - name: {n}{ro}\n")
            })
            .collect();
        let vols: String = volumes
            .iter()
            .map(|(n, src)| format!("    - name: {n}\n      {src}\n"))
            .collect();
        let yaml = format!(
            "apiVersion: virt.virtink.smartx.com/v1alpha1\nkind: VirtualMachine\n\
             metadata:\n  name: vm1\nspec:\n  instance:\n    kernel:\n      image: k\n      cmdline: x\n\
             \x20   disks:\n{disks}  volumes:\n{vols}{extra}"
        );
        let path = self.file("vm.yaml", yaml.as_bytes());
        config::load(&path).unwrap()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn ok(results: Vec<Result<DiskPlan, DiskError>>) -> Vec<DiskPlan> {
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|e| panic!("{e}: {:?}", std::error::Error::source(&e))))
        .collect()
}

fn image_path(plan: &DiskPlan) -> &Path {
    match &plan.backing {
        Backing::Image { path, .. } => path,
        other => panic!("not an image: {other:?}"),
    }
}

#[test]
fn container_disks_are_found_as_file_directory_or_in_the_pod_and_are_ephemeral() {
    let d = Dir::new("cd");
    d.file("images/a.raw", &[0; 4096]);
    d.file("images/dir/disk.img", &[0; 1024]);
    d.file("images/one/whatever.qcow2-or-raw", &[0; 512]);
    d.file("mnt/pod/disk.raw", &[0; 2048]);
    let m = d.manifest(
        &[
            ("file", "containerDisk:\n        image: images/a.raw"),
            ("dir", "containerDisk:\n        image: images/dir"),
            ("one", "containerDisk:\n        image: images/one"),
            (
                "pod",
                "containerDisk:\n        image: smartxworks/virtink-container-disk-ubuntu",
            ),
            ("file-ro", "containerDisk:\n        image: images/a.raw"),
        ],
        "",
    );
    let plans = ok(plan(&m, &[], &d.0.join("mnt")));
    let paths: Vec<&Path> = plans.iter().map(image_path).collect();
    assert_eq!(
        paths,
        [
            d.0.join("images/a.raw"),
            d.0.join("images/dir/disk.img"),
            d.0.join("images/one/whatever.qcow2-or-raw"),
            d.0.join("mnt/pod/disk.raw"),
            d.0.join("images/a.raw"),
        ]
    );
    assert_eq!(plans[0].size(), 4096);
    assert!(plans[..4].iter().all(DiskPlan::ephemeral));
    assert!(plans[4].read_only && !plans[4].ephemeral());
    assert!(plans[0].to_string().contains("ephemeral"), "{}", plans[0]);
    assert!(
        plans[4].to_string().ends_with("; read-only"),
        "{}",
        plans[4]
    );
}

#[test]
fn a_container_disk_nowhere_says_where_it_looked() {
    let d = Dir::new("cd-missing");
    d.file("images/two/a", b"x");
    d.file("images/two/b", b"x");
    let m = d.manifest(
        &[
            ("gone", "containerDisk:\n        image: nope/x.qcow2"),
            ("two", "containerDisk:\n        image: images/two"),
        ],
        "",
    );
    let results = plan(&m, &[], &d.0.join("mnt"));
    let e = results[0].as_ref().unwrap_err().to_string();
    assert!(
        e.starts_with("spec.instance.disks[0] (gone): containerDisk image \"nope/x.qcow2\""),
        "{e}"
    );
    assert!(
        e.contains("mnt/gone/disk.raw") && e.contains("--volume gone=PATH"),
        "{e}"
    );
    let e = results[1].as_ref().unwrap_err().to_string();
    assert!(e.contains("holds several files and no disk.img"), "{e}");
}

#[test]
fn claims_are_found_in_the_pod_or_bound_and_persist() {
    let d = Dir::new("pvc");
    d.file("mnt/data/disk.img", &[0; 8192]);
    let local = d.file("local.img", &[0; 1024]);
    let m = d.manifest(
        &[
            (
                "data",
                "persistentVolumeClaim:\n        claimName: data-pvc",
            ),
            ("dv", "dataVolume:\n        volumeName: dv1"),
            ("cd", "containerDisk:\n        image: nowhere"),
        ],
        "",
    );
    let results = plan(&m, &[], &d.0.join("mnt"));
    let data = results[0].as_ref().unwrap();
    assert_eq!(image_path(data), d.0.join("mnt/data/disk.img"));
    assert!(!data.ephemeral() && data.kind.persistent());
    assert!(
        data.to_string()
            .contains("persistent: writes go to the file"),
        "{data}"
    );
    let e = results[1].as_ref().unwrap_err().to_string();
    assert!(
        e.contains("dataVolume") && e.contains("--volume dv=PATH"),
        "{e}"
    );

    let bound = vec![
        ("dv".to_string(), local.clone()),
        ("cd".to_string(), local.clone()),
    ];
    let plans = ok(plan(&m, &bound, &d.0.join("mnt")));
    assert_eq!(image_path(&plans[1]), local);
    assert!(plans[1].bound && !plans[1].ephemeral());
    assert!(
        plans[2].ephemeral(),
        "a bound container disk stays ephemeral"
    );
}

#[test]
fn cloud_init_is_a_seed_with_the_manifest_s_documents() {
    let d = Dir::new("seed");
    let m = d.manifest(
        &[(
            "ci",
            "cloudInit:\n        userDataSecretName: ud\n        networkData: \"version: 2\"",
        )],
        "---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: ud\nstringData:\n  value: \"#cloud-config\\nruncmd: [echo hi]\\n\"\n",
    );
    let plans = ok(plan(&m, &[], &d.0.join("mnt")));
    let Backing::Seed { files, image } = &plans[0].backing else {
        panic!("{:?}", plans[0].backing);
    };
    assert_eq!(files, &["meta-data", "user-data", "network-config"]);
    let (label, entries) = iso9660::tests::read_back(image, 16);
    assert_eq!(label, "cidata");
    assert_eq!(entries[0].data, b"instance-id: vm1\nlocal-hostname: vm1\n");
    assert_eq!(entries[1].data, b"#cloud-config\nruncmd: [echo hi]\n");
    assert_eq!(entries[2].data, b"version: 2");

    let m = d.manifest(
        &[("ci", "cloudInit:\n        userDataSecretName: nope")],
        "",
    );
    let e = plan(&m, &[], &d.0.join("mnt")).remove(0).unwrap_err();
    assert!(
        e.to_string()
            .contains("Secret \"nope\" is not in the manifest file"),
        "{e}"
    );
}

#[test]
fn a_rootfs_directory_becomes_an_ext4_disk_removed_at_exit() {
    let d = Dir::new("rootfs");
    d.file("rootfs/etc/hostname", b"from-the-rootfs\n");
    let tmp = d.0.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let m = d.manifest(
        &[(
            "root",
            "containerRootfs:\n        image: rootfs\n        size: 16Mi",
        )],
        "",
    );
    let plans = ok(plan(&m, &[], &d.0.join("mnt")));
    assert_eq!(plans[0].size(), 16 << 20);
    let disks = open(plans, &tmp).unwrap();
    assert_eq!(disks[0].backend.size(), 16 << 20);
    // The ext4 superblock magic, read through the backend.
    let mem: vm_memory::GuestMemoryMmap =
        vm_memory::GuestMemoryMmap::from_ranges(&[(vm_memory::GuestAddress(0), 0x1_0000)]).unwrap();
    let slice =
        vm_memory::GuestMemoryBackend::get_slice(&mem, vm_memory::GuestAddress(0), 2048).unwrap();
    disks[0].backend.read_at(0, &[slice]).unwrap();
    let mut sb = [0u8; 2048];
    vm_memory::Bytes::read_slice(&mem, &mut sb, vm_memory::GuestAddress(0)).unwrap();
    assert_eq!(&sb[1024 + 0x38..1024 + 0x3a], &[0x53, 0xef]);
    assert_eq!(
        std::fs::read_dir(&tmp).unwrap().count(),
        0,
        "no file left in {}",
        tmp.display()
    );
}

#[test]
fn a_volume_without_a_disk_is_not_opened_and_report_names_the_format() {
    let d = Dir::new("report");
    d.file("a.raw", &[0; 1024]);
    let m = d.manifest(&[("a", "containerDisk:\n        image: a.raw")], "");
    let disks = open(ok(plan(&m, &[], &d.0.join("mnt"))), &d.0).unwrap();
    let r = serde_json::to_value(report(&disks[0])).unwrap();
    assert_eq!(r["format"], "raw");
    assert_eq!(r["source"], "containerDisk");
    assert_eq!(r["ephemeral"], true);
    assert_eq!(r["size_bytes"], 1024);
}
