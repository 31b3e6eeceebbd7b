//! The manifest, from YAML to a resolved [`VmConfig`].
//!
//! [`documents::load`] reads every document of a manifest file, decodes the VirtualMachine and
//! its companions strictly ([`schema`]), fills in Virtink's defaults ([`defaults`]) and checks
//! every rule at once ([`validate`]). [`VmConfig::from_manifest`] then turns the valid,
//! defaulted manifest into the plain values the rest of `vmm` works with.

pub mod defaults;
pub mod documents;
pub mod field;
pub mod quantity;
pub mod schema;
pub mod validate;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

pub use documents::{Manifest, ManifestError, load};
use net::MacAddr;

/// What to do when the guest stops (`spec.runPolicy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunPolicy {
    /// Boot again after every stop.
    Always,
    /// Boot again after a failure (exit code 3), not after a power-off.
    RerunOnFailure,
    /// Run once, then exit.
    Once,
    /// As `Once`: there is no controller to start the VM again.
    Manual,
    /// Refuse to start.
    Halted,
}

impl RunPolicy {
    fn parse(s: &str) -> Self {
        match s {
            "Always" => Self::Always,
            "RerunOnFailure" => Self::RerunOnFailure,
            "Manual" => Self::Manual,
            "Halted" => Self::Halted,
            _ => Self::Once,
        }
    }
}

/// The guest's CPU topology.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuTopology {
    /// Sockets (packages).
    pub sockets: u32,
    /// Cores in each socket; each core has one thread.
    pub cores_per_socket: u32,
}

impl CpuTopology {
    /// The number of vCPUs.
    pub fn vcpus(&self) -> u32 {
        self.sockets.saturating_mul(self.cores_per_socket)
    }
}

/// `kernel.image` and `kernel.cmdline`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelConfig {
    /// A kernel file or a directory holding one, resolved against the manifest's directory.
    pub image: PathBuf,
    /// The kernel command line.
    pub cmdline: String,
}

/// How an interface is connected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Binding {
    /// Layer 2 through a Linux bridge and a TAP.
    Bridge,
    /// In-process NAT on the given IPv4 subnet.
    Masquerade {
        /// The subnet's base address.
        network: Ipv4Addr,
        /// Its prefix length.
        prefix: u8,
        /// Inbound ports to forward; `None` forwards all.
        ports: Option<Vec<(u16, Protocol)>>,
        /// The IPv6 subnet's base address and prefix length (used when the pod has IPv6).
        ipv6: (Ipv6Addr, u8),
    },
    /// VFIO passthrough of an SR-IOV VF.
    Sriov,
}

/// A forwarded port's protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

/// Where an interface's network comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetworkSource {
    /// The pod's own network (`eth0`).
    Pod,
    /// A Multus network; `network_name` names a NetworkAttachmentDefinition.
    Multus {
        /// `[namespace/]name` of the NetworkAttachmentDefinition.
        network_name: String,
    },
}

/// One guest network interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterfaceConfig {
    /// The interface (and network) name.
    pub name: String,
    /// The guest MAC.
    pub mac: MacAddr,
    /// How it is connected.
    pub binding: Binding,
    /// Its network.
    pub network: NetworkSource,
    /// The network's index in `spec.networks`, which names the pod link (`net<i>`).
    pub network_index: usize,
}

impl InterfaceConfig {
    /// The pod link this interface takes over: `eth0` for the pod network, `net<i>` for the
    /// multus network at index `i`, as Virtink names them.
    pub fn pod_link(&self) -> String {
        match self.network {
            NetworkSource::Pod => "eth0".to_string(),
            NetworkSource::Multus { .. } => format!("net{}", self.network_index),
        }
    }
}

/// One disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskConfig {
    /// The disk (and volume) name.
    pub name: String,
    /// Read-only to the guest.
    pub read_only: bool,
}

/// The annotation that gives a VM's TAP-backed NICs several queue pairs: `"vcpus"` (one per
/// vCPU, up to [`devices::virtio::net::MAX_QUEUE_PAIRS`]) or a number from 1 to that. Without
/// it a NIC has one pair, as Cloud Hypervisor's and QEMU's do.
pub const QUEUE_PAIRS_ANNOTATION: &str = "vmm.virtink.smartx.com/network-queue-pairs";

/// The annotation that has the host kernel serve a VM's TAP-backed NICs' queues (vhost-net,
/// as QEMU's `vhost=on`): `"true"`, or `"false"`, the default. Such a NIC has one queue pair,
/// and `/dev/vhost-net` must be open to the pod.
pub const VHOST_NET_ANNOTATION: &str = "vmm.virtink.smartx.com/vhost-net";

/// How many queue pairs a TAP-backed NIC gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueuePairs {
    /// This many.
    Count(usize),
    /// One per vCPU.
    PerVcpu,
}

impl QueuePairs {
    /// The annotation's value, or `None` for one that is neither `vcpus` nor a number from 1
    /// to the most a NIC has.
    pub fn parse(value: &str) -> Option<Self> {
        if value == "vcpus" {
            return Some(Self::PerVcpu);
        }
        value
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=devices::virtio::net::MAX_QUEUE_PAIRS).contains(n))
            .map(Self::Count)
    }
}

/// Everything `vmm` needs to build and run the VM, resolved from a valid manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmConfig {
    /// `metadata.name`: the guest's host name.
    pub name: String,
    /// vCPU topology.
    pub topology: CpuTopology,
    /// Pin each vCPU thread to one CPU of the process's affinity mask.
    pub dedicated_cpus: bool,
    /// Guest RAM in bytes.
    pub memory_bytes: u64,
    /// Back guest RAM with hugepages of this size.
    pub hugepage_bytes: Option<u64>,
    /// Direct kernel boot, or `None` to boot the first disk.
    pub kernel: Option<KernelConfig>,
    /// The run policy.
    pub run_policy: RunPolicy,
    /// Disks in `instance.disks` order.
    pub disks: Vec<DiskConfig>,
    /// Interfaces in `instance.interfaces` order.
    pub interfaces: Vec<InterfaceConfig>,
    /// Queue pairs of each TAP-backed NIC ([`QUEUE_PAIRS_ANNOTATION`]).
    pub queue_pairs: QueuePairs,
    /// TAP-backed NICs' queues served by vhost-net ([`VHOST_NET_ANNOTATION`]).
    pub vhost_net: bool,
}

impl VmConfig {
    /// How many queue pairs a TAP-backed NIC of this VM gets.
    pub fn nic_queue_pairs(&self) -> usize {
        let most = devices::virtio::net::MAX_QUEUE_PAIRS;
        match self.queue_pairs {
            QueuePairs::Count(n) => n.clamp(1, most),
            QueuePairs::PerVcpu => usize::try_from(self.topology.vcpus())
                .unwrap_or(1)
                .clamp(1, most),
        }
    }
}

impl VmConfig {
    /// Resolves a loaded (so defaulted and valid) manifest.
    pub fn from_manifest(manifest: &Manifest) -> Self {
        let vm = &manifest.vm;
        let spec = vm.spec.clone().unwrap_or_default();
        let instance = spec.instance.clone().unwrap_or_default();
        let size = instance.memory.size.as_ref().map_or(0, |q| q.value());
        let hugepage_bytes = instance.memory.hugepages.as_ref().and_then(|h| {
            quantity::Quantity::parse(&h.page_size)
                .ok()
                .and_then(|q| u64::try_from(q.value()).ok())
        });
        let kernel = instance.kernel.as_ref().map(|k| KernelConfig {
            image: manifest.base_dir.join(&k.image),
            cmdline: k.cmdline.clone(),
        });
        let disks = instance
            .disks
            .iter()
            .map(|d| DiskConfig {
                name: d.name.clone(),
                read_only: d.read_only.unwrap_or(false),
            })
            .collect();
        let interfaces = instance
            .interfaces
            .iter()
            .filter_map(|iface| interface_config(iface, &spec.networks))
            .collect();
        Self {
            name: vm.metadata.name.clone(),
            topology: CpuTopology {
                sockets: instance.cpu.sockets,
                cores_per_socket: instance.cpu.cores_per_socket,
            },
            dedicated_cpus: instance.cpu.dedicated_cpu_placement,
            memory_bytes: u64::try_from(size).unwrap_or(0),
            hugepage_bytes,
            kernel,
            run_policy: RunPolicy::parse(&spec.run_policy),
            disks,
            interfaces,
            queue_pairs: vm
                .metadata
                .annotations
                .get(QUEUE_PAIRS_ANNOTATION)
                .and_then(|v| QueuePairs::parse(v))
                .unwrap_or(QueuePairs::Count(1)),
            vhost_net: vm
                .metadata
                .annotations
                .get(VHOST_NET_ANNOTATION)
                .is_some_and(|v| v == "true"),
        }
    }
}

/// The resolved interface, or `None` for one validation would have refused.
fn interface_config(
    iface: &schema::Interface,
    networks: &[schema::Network],
) -> Option<InterfaceConfig> {
    let (network_index, network) = networks
        .iter()
        .enumerate()
        .find(|(_, n)| n.name == iface.name)?;
    let network = match &network.multus {
        Some(m) => NetworkSource::Multus {
            network_name: m.network_name.clone(),
        },
        None => NetworkSource::Pod,
    };
    let binding = if let Some(m) = &iface.masquerade {
        let (IpAddr::V4(addr), prefix) = validate::parse_cidr(&m.cidr)? else {
            return None;
        };
        let prefix = u8::try_from(prefix).ok()?;
        let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
        let ports = m.ports.as_ref().map(|ports| {
            ports
                .iter()
                .filter_map(|p| {
                    let proto = if p.protocol == "UDP" {
                        Protocol::Udp
                    } else {
                        Protocol::Tcp
                    };
                    Some((u16::try_from(p.port).ok()?, proto))
                })
                .collect()
        });
        let ipv6_cidr = match m.ipv6_cidr.as_str() {
            "" => defaults::DEFAULT_MASQUERADE_IPV6_CIDR,
            c => c,
        };
        let (IpAddr::V6(addr6), prefix6) = validate::parse_cidr(ipv6_cidr)? else {
            return None;
        };
        let prefix6 = u8::try_from(prefix6).ok()?;
        let mask6 = u128::MAX.checked_shl(128 - u32::from(prefix6)).unwrap_or(0);
        Binding::Masquerade {
            network: Ipv4Addr::from(u32::from(addr) & mask),
            prefix,
            ports,
            ipv6: (Ipv6Addr::from(u128::from(addr6) & mask6), prefix6),
        }
    } else if iface.sriov.is_some() {
        Binding::Sriov
    } else {
        Binding::Bridge
    };
    Some(InterfaceConfig {
        name: iface.name.clone(),
        mac: iface.mac.parse().ok()?,
        binding,
        network,
        network_index,
    })
}

/// Prints `manifest` back as YAML documents: the defaulted VirtualMachine first, then the
/// NetworkAttachmentDefinitions and Secrets as read.
pub fn to_yaml(manifest: &Manifest) -> Result<String, serde_saphyr::ser::Error> {
    let mut out = serde_saphyr::to_string(&manifest.vm)?;
    for nad in &manifest.network_attachments {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(nad)?);
    }
    for secret in &manifest.secrets {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(secret)?);
    }
    Ok(out)
}
