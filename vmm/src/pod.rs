//! Running as the one process of Virtink's VM pod.
//!
//! Virtink's controller builds the pod; what it hands over, and what `vmm` makes of it:
//!
//! | from the controller | `vmm` |
//! |---|---|
//! | `VM_DATA`: base64 of the VirtualMachine's JSON | the manifest ([`ManifestSource::VmData`]) |
//! | the kernel image's init container: `/mnt/virtink-kernel/vmlinux` | the kernel, when `kernel.image` is not a local path ([`kernel_files`]) |
//! | the volumes' init containers: `/mnt/<volume>/{disk.raw,rootfs.raw,cloud-init.iso}`, PVCs at `/mnt/<volume>` | the disks ([`crate::disk::plan`]) |
//! | `BLOCK_VOLUMES`: the PVC volumes that are block devices | checked against what `/mnt/<volume>` is ([`check_block_volumes`]) |
//! | `NETWORK_STATUS`: Multus' network status | the SR-IOV VFs ([`crate::sriov`]) |
//! | an emptyDir at `/var/run/virtink`, where virt-daemon looks for `ch.sock` and `vm-config.json` | Cloud Hypervisor's API ([`crate::api::ch`]) and the configuration it checks `vm.create` against ([`vm_config`]) |

use std::path::{Path, PathBuf};

use crate::api::ch;
use crate::boot::{self, BootError, KernelFiles};
use crate::config::{self, Manifest, ManifestError, VmConfig};
use crate::disk::{Backing, HostDisk};
use crate::network::{HostNetwork, NicBackend};

/// Where the kernel image's init container leaves the kernel.
pub const POD_KERNEL: &str = "/mnt/virtink-kernel/vmlinux";
/// Where virt-daemon looks for Cloud Hypervisor's API socket in the pod.
pub const CH_SOCKET: &str = "/var/run/virtink/ch.sock";
/// The name of the configuration file beside the socket.
pub const VM_CONFIG_FILE: &str = "vm-config.json";
/// The environment variable the controller puts the VM in.
pub const VM_DATA: &str = "VM_DATA";
/// The environment variable that names the block-mode PVC volumes.
pub const BLOCK_VOLUMES: &str = "BLOCK_VOLUMES";

/// Where the VirtualMachine comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestSource {
    /// A YAML or JSON manifest file.
    File(PathBuf),
    /// Base64 JSON, as Virtink's controller sets `VM_DATA`; `origin` says whether it came
    /// from `VM_DATA` or `--vm-data`.
    VmData {
        /// The value.
        data: String,
        /// `VM_DATA` or `--vm-data`.
        origin: &'static str,
    },
}

impl ManifestSource {
    /// Reads, decodes, defaults and validates the VirtualMachine.
    pub fn load(&self) -> Result<Manifest, ManifestError> {
        match self {
            Self::File(path) => config::load(path),
            Self::VmData { data, origin } => {
                let here = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
                config::documents::from_vm_data(data, origin, here)
            }
        }
    }

    /// Whether the VM came from Virtink's controller (so `vmm` runs in its pod).
    pub fn in_pod(&self) -> bool {
        matches!(self, Self::VmData { .. })
    }
}

impl std::fmt::Display for ManifestSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(path) => write!(f, "{}", path.display()),
            Self::VmData { origin, .. } => f.write_str(origin),
        }
    }
}

/// `kernel.image` resolved. In Virtink's pod (`in_pod`) it is an image reference, and the
/// kernel is where its init container left it, [`POD_KERNEL`], whenever that exists.
/// Elsewhere it is a local kernel file or directory, with [`POD_KERNEL`] the fallback when
/// it names nothing.
pub fn kernel_files(image: &Path, in_pod: bool) -> Result<KernelFiles, BootError> {
    kernel_files_in(image, Path::new(POD_KERNEL), in_pod)
}

fn kernel_files_in(
    image: &Path,
    pod_kernel: &Path,
    in_pod: bool,
) -> Result<KernelFiles, BootError> {
    if in_pod && pod_kernel.is_file() {
        return Ok(KernelFiles {
            kernel: pod_kernel.to_path_buf(),
            initrd: None,
        });
    }
    match boot::resolve(image) {
        Err(BootError::NotFound(_)) if pod_kernel.is_file() => {
            log::info!(
                "kernel.image {} is not a local path: booting {}, which the pod's init \
                 container left",
                image.display(),
                pod_kernel.display()
            );
            Ok(KernelFiles {
                kernel: pod_kernel.to_path_buf(),
                initrd: None,
            })
        }
        other => other,
    }
}

/// Checks `BLOCK_VOLUMES` (comma-separated volume names, as Virtink's controller sets it)
/// against the disks: each named volume that a disk uses must be a block device.
pub fn check_block_volumes(list: &str, disks: &[crate::disk::DiskPlan]) -> Result<(), String> {
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let Some(disk) = disks.iter().find(|d| d.name == name) else {
            continue;
        };
        match &disk.backing {
            Backing::Image { info, .. } if info.block_device => {}
            Backing::Image { path, .. } => {
                return Err(format!(
                    "{BLOCK_VOLUMES} names volume {name:?}, but {} (spec.instance.disks[{}]) is \
                     not a block device",
                    path.display(),
                    disk.index
                ));
            }
            _ => {
                return Err(format!(
                    "{BLOCK_VOLUMES} names volume {name:?}, but spec.instance.disks[{}] is not \
                     a persistent volume",
                    disk.index
                ));
            }
        }
    }
    Ok(())
}

/// The Cloud Hypervisor configuration of the VM `vmm` runs, as Virtink's pre-runner would
/// write it: what `vm.create` must send back.
pub fn vm_config(
    cfg: &VmConfig,
    kernel: Option<&KernelFiles>,
    network: &HostNetwork,
    disks: &[HostDisk],
) -> ch::VmConfig {
    let topology = &cfg.topology;
    let payload = match (kernel, &cfg.kernel) {
        (Some(files), Some(k)) => ch::Payload {
            kernel: Some(files.kernel.display().to_string()),
            cmdline: Some(k.cmdline.clone()),
            initramfs: files.initrd.as_ref().map(|p| p.display().to_string()),
            firmware: None,
        },
        // The first disk's own kernel, found at each boot: nothing to name here.
        _ => ch::Payload::default(),
    };
    let disks = disks
        .iter()
        .map(|d| ch::Disk {
            id: Some(d.plan.name.clone()),
            path: Some(crate::disk::report(d).path),
            readonly: d.plan.read_only,
            other: Default::default(),
        })
        .collect();
    let net = network
        .nics
        .iter()
        .map(|nic| ch::Net {
            id: Some(nic.name.clone()),
            mac: Some(nic.mac.to_string()),
            mtu: Some(nic.mtu),
            tap: match &nic.backend {
                NicBackend::Tap { taps, .. } => taps.first().map(|t| t.name().to_string()),
                NicBackend::Nat(..) => None,
            },
            other: match &nic.backend {
                // Cloud Hypervisor counts queues, not pairs.
                NicBackend::Tap { taps, .. } => [(
                    "num_queues".to_string(),
                    serde_json::Value::from(2 * taps.len()),
                )]
                .into(),
                NicBackend::Nat(..) => Default::default(),
            },
        })
        .collect();
    let devices = network
        .vfs
        .iter()
        .map(|vf| ch::Device {
            id: Some(vf.name.clone()),
            path: format!("/sys/bus/pci/devices/{}", vf.address),
            other: Default::default(),
        })
        .collect();
    let mode = |m: &str| ch::Console {
        mode: m.into(),
        other: Default::default(),
    };
    ch::VmConfig {
        cpus: Some(ch::Cpus {
            boot_vcpus: topology.vcpus(),
            max_vcpus: topology.vcpus(),
            topology: Some(ch::Topology {
                threads_per_core: 1,
                cores_per_die: topology.cores_per_socket,
                dies_per_package: 1,
                packages: topology.sockets,
            }),
            other: Default::default(),
        }),
        memory: Some(ch::Memory {
            size: cfg.memory_bytes,
            hugepages: cfg.hugepage_bytes.is_some(),
            other: Default::default(),
        }),
        payload,
        disks,
        net,
        devices,
        console: Some(mode("Off")),
        serial: Some(mode("Tty")),
        other: Default::default(),
    }
}

/// Writes `config` to `vm-config.json` in `dir` whole: a reader never sees half of it.
pub fn write_vm_config(dir: &Path, config: &ch::VmConfig) -> std::io::Result<PathBuf> {
    let mut text = serde_json::to_string(config).map_err(std::io::Error::other)?;
    text.push('\n');
    // What virt-daemon sends back must fit in one request, with room for its headers.
    if text.len() > crate::api::MAX_REQUEST - 4096 {
        return Err(std::io::Error::other(format!(
            "the VM config is {} bytes, more than the API takes in one request",
            text.len()
        )));
    }
    let path = dir.join(VM_CONFIG_FILE);
    write_whole(&path, text.as_bytes())?;
    Ok(path)
}

/// Writes `data` to `path` through a new file beside it, renamed over `path` when complete;
/// the new file is created exclusively (so a planted link is never followed) and removed on
/// failure.
fn write_whole(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let name = path
        .file_name()
        .map_or_else(Default::default, |n| n.to_string_lossy());
    let partial = path.with_file_name(format!(".{name}.partial"));
    let _ = std::fs::remove_file(&partial);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&partial)
        .and_then(|mut file| file.write_all(data))
        .and_then(|()| std::fs::rename(&partial, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    written
}

/// What Virtink's controller runs in the pre-runner image besides the VM: its init
/// containers' commands. The container image of `vmm` links these names to `vmm`, which
/// acts on them by the name it was started as (see the `vmm` binary).
///
/// `virt-init-volume cloud-init META USER NETWORK OUT`: the cloud-init volume's init
/// container. Each of META, USER and NETWORK is base64, or a path (it starts with `/`) to
/// read, as Virtink's script takes them; OUT is where the seed image goes (`cidata`, with
/// `meta-data`, `user-data` and, when given, `network-config`).
pub fn init_volume(args: &[String]) -> Result<(), String> {
    let [kind, meta, user, network, out] = args else {
        return Err(format!(
            "want `cloud-init META USER NETWORK OUT`, got {} arguments",
            args.len()
        ));
    };
    if kind != "cloud-init" {
        return Err(format!("unknown volume kind {kind:?} (want cloud-init)"));
    }
    let content = |what: &str, arg: &str| -> Result<Vec<u8>, String> {
        if arg.starts_with('/') {
            let meta = std::fs::metadata(arg).map_err(|e| format!("{what} {arg}: {e}"))?;
            if meta.len() > config::documents::MAX_MANIFEST_BYTES {
                return Err(format!(
                    "{what} {arg} is larger than {} bytes",
                    config::documents::MAX_MANIFEST_BYTES
                ));
            }
            std::fs::read(arg).map_err(|e| format!("{what} {arg}: {e}"))
        } else {
            crate::disk::seed::decode(arg).ok_or_else(|| format!("{what} is not base64"))
        }
    };
    let mut files = vec![
        ("meta-data", content("meta-data", meta)?),
        ("user-data", content("user-data", user)?),
    ];
    let network = content("network-config", network)?;
    if !network.is_empty() {
        files.push(("network-config", network));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let image = crate::disk::seed::image(&files, now).map_err(|e| e.to_string())?;
    write_whole(Path::new(out), &image).map_err(|e| format!("{out}: {e}"))
}

/// `sysctl [-q] -w NAME=VALUE...`: the masquerade interface's `enable-ip-forward` init
/// container (`sysctl -w net.ipv4.ip_forward=1`). `vmm`'s NAT needs no forwarding; the init
/// container must still succeed.
pub fn sysctl(args: &[String]) -> Result<(), String> {
    let mut write = false;
    let mut any = false;
    for arg in args {
        match arg.as_str() {
            "-w" => write = true,
            "-q" => {}
            setting if write => {
                let (name, value) = setting
                    .split_once('=')
                    .ok_or_else(|| format!("{setting:?} is not NAME=VALUE"))?;
                let path = sysctl_path(name)?;
                std::fs::write(&path, value.as_bytes())
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                any = true;
            }
            other => {
                return Err(format!(
                    "only `sysctl -w NAME=VALUE` is supported, not {other:?}"
                ));
            }
        }
    }
    if any {
        Ok(())
    } else {
        Err("want -w NAME=VALUE".into())
    }
}

/// `/proc/sys/net/ipv4/ip_forward` for `net.ipv4.ip_forward`; a name that would leave
/// `/proc/sys` is refused.
fn sysctl_path(name: &str) -> Result<PathBuf, String> {
    let parts: Vec<&str> = name.split(['.', '/']).collect();
    let fine = |p: &&str| {
        !p.is_empty()
            && *p != ".."
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-".contains(c))
    };
    if parts.iter().all(fine) {
        Ok(Path::new("/proc/sys").join(parts.join("/")))
    } else {
        Err(format!("{name:?} is not a sysctl name"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_volume_makes_the_seed_virtinks_init_container_makes() {
        let dir = std::env::temp_dir().join(format!("vmm-pod-seed-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let secret = dir.join("value");
        std::fs::write(&secret, "#cloud-config\npassword: pw\n").unwrap();
        let out = dir.join("cloud-init.iso");
        let b64 = |s: &str| {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.encode(s)
        };
        let args: Vec<String> = [
            "cloud-init",
            &b64("instance-id: 6c1a\nlocal-hostname: vm"),
            secret.to_str().unwrap(),
            "",
            out.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        init_volume(&args).unwrap();
        let iso = std::fs::read(&out).unwrap();
        // The volume label at the primary volume descriptor (sector 16, offset 40).
        assert_eq!(&iso[16 * 2048 + 40..16 * 2048 + 46], b"cidata");
        let text = String::from_utf8_lossy(&iso);
        assert!(text.contains("password: pw"));
        assert!(text.contains("local-hostname: vm"));
        assert!(!text.contains("NETWORK-CONFIG") && !text.contains("network-config"));
        let mut bad = args.clone();
        bad[1] = "***".into();
        assert!(
            init_volume(&bad)
                .unwrap_err()
                .contains("meta-data is not base64")
        );
        assert!(init_volume(&args[..3]).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn sysctl_writes_only_under_proc_sys() {
        assert_eq!(
            sysctl_path("net.ipv4.ip_forward").unwrap(),
            Path::new("/proc/sys/net/ipv4/ip_forward")
        );
        assert_eq!(
            sysctl_path("net/ipv4/conf/eth0/forwarding").unwrap(),
            Path::new("/proc/sys/net/ipv4/conf/eth0/forwarding")
        );
        for bad in ["", "net..x", "../../etc/passwd", "net.ipv4.a b", "net./x"] {
            assert!(sysctl_path(bad).is_err(), "{bad}");
        }
        assert!(sysctl(&["-a".into()]).is_err());
        assert!(sysctl(&["-w".into(), "novalue".into()]).is_err());
    }

    #[test]
    fn a_kernel_image_reference_boots_the_pods_kernel() {
        let dir = std::env::temp_dir().join(format!("vmm-pod-kernel-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pod_kernel = dir.join("vmlinux");
        let local = dir.join("bzImage");
        std::fs::write(&local, b"k").unwrap();
        let image = Path::new("smartxworks/virtink-kernel-5.15.12");
        // No pod kernel: the reference is a missing file, as before.
        assert!(matches!(
            kernel_files_in(image, &pod_kernel, true),
            Err(BootError::NotFound(_))
        ));
        std::fs::write(&pod_kernel, b"k").unwrap();
        assert_eq!(
            kernel_files_in(image, &pod_kernel, false).unwrap().kernel,
            pod_kernel
        );
        // Outside the pod a local path wins over the pod's kernel; in the pod the pod's
        // kernel wins, even when the reference happens to name a local file.
        assert_eq!(
            kernel_files_in(&local, &pod_kernel, false).unwrap().kernel,
            local
        );
        assert_eq!(
            kernel_files_in(&local, &pod_kernel, true).unwrap().kernel,
            pod_kernel
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn vm_config_is_written_whole() {
        let dir = std::env::temp_dir().join(format!("vmm-pod-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = ch::VmConfig {
            memory: Some(ch::Memory {
                size: 1 << 30,
                ..Default::default()
            }),
            ..Default::default()
        };
        // A link planted where the partial file goes is not followed.
        let victim = dir.join("victim");
        std::fs::write(&victim, "keep").unwrap();
        std::os::unix::fs::symlink(&victim, dir.join(".vm-config.json.partial")).unwrap();
        let path = write_vm_config(&dir, &config).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
        std::fs::remove_file(&victim).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.ends_with('\n'));
        let back: ch::VmConfig = serde_json::from_str(&text).unwrap();
        assert_eq!(back, config);
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "no partial file left"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
