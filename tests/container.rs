//! The container image (images/container/build, which tests/run runs first) as a cluster
//! would use it, inside the KVM test host (whose root is a throwaway overlay, so podman's
//! storage vanishes with it): `podman load` takes the archive, and the image runs what
//! Virtink's VM pod runs in the pre-runner image: vmm itself, reading the VM from `VM_DATA`,
//! and the init containers' `virt-init-volume` and `sysctl`.

// An integration test crate is a test module of its own: its tests need no `#[cfg(test)]`.
#![allow(clippy::tests_outside_test_module)]

use std::path::PathBuf;

use vmm_tests::netns::sh;
use vmm_tests::{TempDir, guest_image, repo_root, testhost_test};

fn archive() -> PathBuf {
    let path = std::env::var_os("VMM_IMAGES_OUT")
        .map_or_else(|| repo_root().join("images/out"), PathBuf::from)
        .join("container/vmm.tar");
    assert!(
        path.exists(),
        "the container image {} is missing: run images/container/build (tests/run does)",
        path.display()
    );
    path
}

testhost_test!(
    fn the_container_image_loads_into_podman_and_runs_as_virtinks_pre_runner_image() {
        let version = env!("CARGO_PKG_VERSION");
        let image = format!("docker.io/library/vmm:{version}");
        // Storage of its own in the test host's tmpfs (vfs: overlay cannot stack on the
        // test host's overlay root).
        let podman =
            "podman --root /tmp/podman/root --runroot /tmp/podman/run --storage-driver vfs";
        // crun wants cgroup2 at /sys/fs/cgroup, which the test host's init does not mount.
        sh("mountpoint -q /sys/fs/cgroup || mount -t cgroup2 cgroup2 /sys/fs/cgroup");
        let loaded = sh(&format!("{podman} load -q -i {} 2>&1", archive().display()));
        assert!(loaded.contains(&image), "{loaded}");
        // Nothing but vmm: a few megabytes, one layer.
        let size: u64 = sh(&format!(
            "{podman} image inspect -f '{{{{.Size}}}}' {image} 2>/dev/null"
        ))
        .trim()
        .parse()
        .unwrap();
        assert!(size < 16 << 20, "{size} bytes");
        // No network, no cgroups in the test host, never a pull.
        let run = format!("{podman} run --rm --pull=never --network none --cgroups=disabled");

        let printed = sh(&format!("{run} {image} --version"));
        assert!(
            printed.trim_end().ends_with(&format!("\nvmm {version}"))
                || printed.trim() == format!("vmm {version}"),
            "{printed}"
        );
        // There is no shell to run.
        let shell = sh(&format!(
            "{run} --entrypoint /bin/sh {image} -c true 2>&1 && echo RAN || echo REFUSED"
        ));
        assert!(shell.trim_end().ends_with("REFUSED"), "{shell}");

        // The VM pod's container: no command of its own, the VM in VM_DATA, the kernel where
        // its init container leaves it. (A dry run: the test host's podman has no /dev/kvm
        // device plugin; the pod tests in tests/virtink.rs boot it.)
        let dir = TempDir::new("container");
        let kernel_dir = dir.path().join("virtink-kernel");
        std::fs::create_dir_all(&kernel_dir).unwrap();
        std::fs::copy(guest_image().join("vmlinuz"), kernel_dir.join("vmlinux")).unwrap();
        let vm = r#"{"metadata":{"name":"in-a-container"},"spec":{"instance":{"memory":{"size":"128Mi"},"kernel":{"image":"smartxworks/virtink-kernel-5.15.12","cmdline":"console=ttyS0"}}},"status":{"phase":"Scheduling"}}"#;
        let plan = sh(&format!(
            "{run} -e VM_DATA=$(printf '%s' '{vm}' | base64 -w0) -v {}:/mnt/virtink-kernel \
             {image} run --dry-run 2>&1",
            kernel_dir.display()
        ));
        assert!(plan.contains("in-a-container"), "{plan}");
        assert!(plan.contains("/mnt/virtink-kernel/vmlinux"), "{plan}");

        // The cloud-init volume's init container: `virt-init-volume cloud-init META USER
        // NETWORK OUT`, found on PATH as the controller names it.
        let out = dir.path().join("cloud-init");
        std::fs::create_dir_all(&out).unwrap();
        let meta = sh("printf 'instance-id: 1\\nlocal-hostname: c' | base64 -w0");
        let user = sh("printf '#cloud-config\\nhostname: from-the-seed\\n' | base64 -w0");
        sh(&format!(
            "{run} -v {}:/mnt/cloud-init --entrypoint virt-init-volume {image} \
             cloud-init {} {} '' /mnt/cloud-init/cloud-init.iso",
            out.display(),
            meta.trim(),
            user.trim()
        ));
        let iso = std::fs::read(out.join("cloud-init.iso")).unwrap();
        assert_eq!(&iso[16 * 2048 + 40..16 * 2048 + 46], b"cidata");
        assert!(String::from_utf8_lossy(&iso).contains("from-the-seed"));

        // A masquerade interface's init container: `sysctl -w net.ipv4.ip_forward=1`, in the
        // container's own network namespace.
        let forward = sh(&format!(
            "{run} --privileged --entrypoint sysctl {image} -w net.ipv4.ip_forward=1 && echo SET"
        ));
        assert!(forward.contains("SET"), "{forward}");
        sh(&format!("{podman} rmi -f {image} >/dev/null"));
    },
    timeout = 420
);

/// `deploy/` names the image images/container/build makes, in the container and variable
/// Virtink's controller reads (no cluster here to apply it to).
#[test]
fn deploy_points_virtinks_controller_at_this_image() {
    let root = repo_root().join("deploy");
    let kustomization = std::fs::read_to_string(root.join("kustomization.yaml")).unwrap();
    assert!(
        kustomization.contains("path: prerunner-image.yaml"),
        "{kustomization}"
    );
    assert!(
        kustomization.contains("smartxworks/virtink/releases/download/"),
        "{kustomization}"
    );
    let patch = std::fs::read_to_string(root.join("prerunner-image.yaml")).unwrap();
    for want in [
        "name: virt-controller\n  namespace: virtink-system",
        "- name: virt-controller\n",
        "- name: PRERUNNER_IMAGE\n",
        &format!(
            "value: docker.io/library/vmm:{}\n",
            env!("CARGO_PKG_VERSION")
        ),
    ] {
        assert!(patch.contains(want), "{want:?} missing:\n{patch}");
    }
}
