//! The host side of the guest's network interfaces, set up once before the first boot and
//! kept across reboots: first a plan of every interface, read from the manifest and the
//! namespace with nothing changed ([`plan`]), then that plan carried out ([`set_up`]).
//!
//! A `bridge` interface takes over its pod link when the link exists (see
//! [`net::bridge`]: Virtink's pre-runner behaviour, with DHCP answered in process when the
//! link had an IPv4 address). Outside a pod, a multus network whose
//! NetworkAttachmentDefinition is in the manifest with CNI `type: bridge` gets its TAP on
//! that bridge, created if missing. A `masquerade` interface gets the in-process NAT, an
//! `sriov` one its VF. [`HostNetwork`] owns the TAPs and the taken-over links; dropping it
//! puts the namespace back as it was.

pub mod plan;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use devices::virtio::net::NetCounters;
use net::bridge::{self, BindError, Binding};
use net::dhcp::DhcpServer;
use net::local_dhcp::LocalDhcp;
use net::nat::{Egress, Limits, Listeners, NatBackend, NatConfig};
use net::netlink::Netlink;
use net::packet::DhcpSocket;
use net::{FrameBackend, MacAddr, Tap};

use crate::api::{InterfaceInfo, NicInfo, VfInfo};
use crate::config::{Binding as BindingKind, NetworkSource, VmConfig};
use crate::sriov;
pub use plan::{HostPlan, InterfacePlan, PodSettings};

/// The masquerade guest's MTU: the virtual link is not the pod's, and large frames cut the
/// per-packet cost on both sides (slirp4netns and pasta use the same).
pub const MASQUERADE_MTU: u16 = 65520;

/// What a `--dry-run` line says before why setting something up would fail.
pub const WOULD_FAIL: &str = "would fail: ";

/// Why the host side cannot be set up (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// Taking over a link in the host's own namespace would cut the host off.
    #[error(
        "spec.instance.interfaces[{index}] ({name}): refusing to take over {link} in the \
         host's initial network namespace; run vmm inside the VM's own network namespace \
         (a pod, or `ip netns exec NAME vmm run ...`)"
    )]
    InitialNamespace {
        /// Interface index.
        index: usize,
        /// Interface name.
        name: String,
        /// The link.
        link: String,
    },
    /// No link and no bridge NAD to fall back on.
    #[error("spec.instance.interfaces[{index}] ({name}): host link {link} not found{hint}")]
    NoLink {
        /// Interface index.
        index: usize,
        /// Interface name.
        name: String,
        /// The link.
        link: String,
        /// What would make it work.
        hint: String,
    },
    /// A binding this build does not have.
    #[error(
        "spec.instance.interfaces[{index}] ({name}): {what} is not supported by this build yet"
    )]
    Unsupported {
        /// Interface index.
        index: usize,
        /// Interface name.
        name: String,
        /// What.
        what: String,
    },
    /// An sriov interface's VF cannot be found or passed through here.
    #[error(transparent)]
    Sriov(#[from] crate::sriov::SriovError),
    /// The vhost-net annotation, and vhost-net or the DHCP socket it needs cannot be had.
    #[error(
        "spec.instance.interfaces[{index}] ({name}): metadata.annotations[{annotation}] asks \
         for vhost-net, but {what}"
    )]
    VhostNet {
        /// Interface index.
        index: usize,
        /// Interface name.
        name: String,
        /// The annotation.
        annotation: &'static str,
        /// What failed.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Netlink, TAP.
    #[error("spec.instance.interfaces[{index}] ({name})")]
    Bind {
        /// Interface index.
        index: usize,
        /// Interface name.
        name: String,
        /// Why.
        #[source]
        source: BindError,
    },
}

/// One NIC's host side.
#[derive(Debug)]
pub struct HostNic {
    /// Its index in `spec.instance.interfaces`.
    pub index: usize,
    /// The interface name in the manifest.
    pub name: String,
    /// The guest's MAC.
    pub mac: MacAddr,
    /// The guest's MTU.
    pub mtu: u16,
    /// Where its frames go.
    pub backend: NicBackend,
    /// Counters, across boots.
    pub counters: Arc<NetCounters>,
    /// Features the guest driver accepted.
    pub acked: Arc<AtomicU64>,
    /// The host link, bridge and TAP, for logs and `info`.
    pub host: String,
    /// Its queues served by vhost-net (a TAP backend only).
    pub vhost_net: bool,
}

/// A NIC's traffic as the guest sees it: `tx` what it sent, `rx` what it received.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Frames sent.
    pub tx_frames: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Frames sent and dropped.
    pub tx_dropped: u64,
    /// Frames received.
    pub rx_frames: u64,
    /// Bytes received.
    pub rx_bytes: u64,
}

/// What a vhost-net NIC's device takes for one boot: the TAP, and the DHCP server with its
/// packet socket on the TAP when the link's address is delegated.
pub type VhostParts = (Tap, Option<(DhcpSocket, DhcpServer)>);

/// Where a NIC's frames go.
#[derive(Debug)]
pub enum NicBackend {
    /// A TAP (each boot's device gets a duplicate of its descriptors), with the in-process
    /// DHCP server when the link's address is delegated.
    Tap {
        /// The TAP's queues, one per queue pair of the NIC.
        taps: Vec<Tap>,
        /// The DHCP server.
        dhcp: Option<DhcpServer>,
        /// With vhost-net and DHCP: the packet socket the server answers on (opened once,
        /// while `vmm` may still open one).
        dhcp_socket: Option<DhcpSocket>,
    },
    /// The masquerade engine (a fresh one each boot) and the forwarded ports' sockets
    /// (bound once).
    Nat(NatConfig, Arc<Listeners>),
}

impl HostNic {
    /// The guest's IPv4 address where `vmm` hands it out: DHCP delegation, masquerade.
    pub fn guest_ip(&self) -> Option<std::net::Ipv4Addr> {
        match &self.backend {
            NicBackend::Tap { dhcp, .. } => dhcp.as_ref().map(|d| d.lease().address),
            NicBackend::Nat(cfg, _) => Some(cfg.guest()),
        }
    }

    /// What the guest sent and received, across boots: the device's counters, or for a
    /// vhost-net NIC, whose frames `vmm` never sees, the TAP's own statistics (its receive
    /// side is what the guest sent). Zero where they cannot be read.
    pub fn traffic(&self) -> Traffic {
        use std::sync::atomic::Ordering::Relaxed;
        let tap = match &self.backend {
            NicBackend::Tap { taps, .. } if self.vhost_net => taps.first(),
            _ => None,
        };
        let Some(tap) = tap else {
            let c = &self.counters;
            return Traffic {
                tx_frames: c.tx_frames.load(Relaxed),
                tx_bytes: c.tx_bytes.load(Relaxed),
                tx_dropped: c.tx_dropped.load(Relaxed),
                rx_frames: c.rx_frames.load(Relaxed),
                rx_bytes: c.rx_bytes.load(Relaxed),
            };
        };
        let stat = |name: &str| {
            std::fs::read_to_string(format!("/sys/class/net/{}/statistics/{name}", tap.name()))
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        Traffic {
            tx_frames: stat("rx_packets"),
            tx_bytes: stat("rx_bytes"),
            tx_dropped: stat("rx_dropped"),
            rx_frames: stat("tx_packets"),
            rx_bytes: stat("tx_bytes"),
        }
    }

    /// For a vhost-net NIC, what one boot's device takes; `None` for any other NIC.
    pub fn vhost_parts(&self) -> std::io::Result<Option<VhostParts>> {
        let NicBackend::Tap {
            taps,
            dhcp,
            dhcp_socket,
        } = &self.backend
        else {
            return Ok(None);
        };
        let Some(tap) = taps.first().filter(|_| self.vhost_net) else {
            return Ok(None);
        };
        let dhcp = match (dhcp, dhcp_socket) {
            (Some(server), Some(socket)) => Some((socket.try_clone()?, server.clone())),
            _ => None,
        };
        Ok(Some((tap.try_clone()?, dhcp)))
    }

    /// The frame backends for one boot's device, one per queue pair.
    pub fn frame_backends(&self) -> std::io::Result<Vec<Box<dyn FrameBackend>>> {
        match &self.backend {
            NicBackend::Tap { taps, dhcp, .. } => taps
                .iter()
                .map(|tap| -> std::io::Result<Box<dyn FrameBackend>> {
                    let tap = tap.try_clone().map_err(|e| {
                        std::io::Error::other(format!("cannot duplicate TAP {}: {e}", tap.name()))
                    })?;
                    Ok(match dhcp {
                        Some(server) => Box::new(LocalDhcp::new(tap, server.clone())?),
                        None => Box::new(tap),
                    })
                })
                .collect(),
            NicBackend::Nat(cfg, listeners) => Ok(vec![Box::new(NatBackend::new(
                cfg.clone(),
                listeners.clone(),
            )?)]),
        }
    }
}

/// Every NIC's host side; dropping it restores the namespace.
#[derive(Debug, Default)]
pub struct HostNetwork {
    /// NICs in `interfaces` order (sriov interfaces are in `vfs`).
    pub nics: Vec<HostNic>,
    /// The sriov interfaces' VFs, which passed the host checks.
    pub vfs: Vec<sriov::Vf>,
    bindings: Vec<Binding>,
    created_bridges: Vec<String>,
}

impl HostNetwork {
    /// Whether the end of the run changes host links back (a taken-over pod link, a bridge
    /// `vmm` made): then the main thread keeps `CAP_NET_ADMIN` for it.
    pub fn restores_links(&self) -> bool {
        !self.bindings.is_empty() || !self.created_bridges.is_empty()
    }

    /// Each interface of `cfg` as the API's `info` reports it.
    pub fn report(&self, cfg: &VmConfig) -> Vec<InterfaceInfo> {
        use std::sync::atomic::Ordering::Relaxed;
        cfg.interfaces
            .iter()
            .enumerate()
            .map(|(index, iface)| {
                let nic = self.nics.iter().find(|n| n.index == index);
                let vf = self.vfs.iter().find(|v| v.index == index);
                InterfaceInfo {
                    name: iface.name.clone(),
                    binding: match iface.binding {
                        BindingKind::Bridge => "bridge",
                        BindingKind::Masquerade { .. } => "masquerade",
                        BindingKind::Sriov => "sriov",
                    },
                    network: match &iface.network {
                        NetworkSource::Pod => "pod".to_string(),
                        NetworkSource::Multus { network_name } => format!("multus:{network_name}"),
                    },
                    mac: nic.map_or(iface.mac, |n| n.mac).to_string(),
                    guest_ip: nic.and_then(HostNic::guest_ip).map(|a| a.to_string()),
                    nic: nic.map(|n| {
                        let c = &n.counters;
                        let t = n.traffic();
                        NicInfo {
                            mtu: n.mtu,
                            host: n.host.clone(),
                            features: devices::virtio::net::feature_names(n.acked.load(Relaxed)),
                            tx_frames: t.tx_frames,
                            tx_bytes: t.tx_bytes,
                            tx_dropped: t.tx_dropped,
                            rx_frames: t.rx_frames,
                            rx_bytes: t.rx_bytes,
                            queue_pairs: c.queue_pairs.load(Relaxed),
                        }
                    }),
                    vf: vf.map(|v| VfInfo {
                        vf: v.address.to_string(),
                        vf_source: v.source.clone(),
                    }),
                }
            })
            .collect()
    }

    /// Carries out one interface's plan.
    fn apply(
        &mut self,
        p: InterfacePlan,
        cfg: &VmConfig,
        pod: &PodSettings,
    ) -> Result<(), NetworkError> {
        let host = p.host.to_string();
        // The masquerade engine is one state machine: its NIC has one pair whatever this says.
        let queue_pairs = cfg.nic_queue_pairs();
        let bind_err = |source| NetworkError::Bind {
            index: p.index,
            name: p.name.clone(),
            source,
        };
        let nic = |mac, mtu, backend| {
            let vhost_net = cfg.vhost_net && matches!(backend, NicBackend::Tap { .. });
            HostNic {
                index: p.index,
                name: p.name.clone(),
                mac,
                mtu,
                vhost_net,
                host: if vhost_net {
                    format!("{host}, queues served by vhost-net")
                } else {
                    host.clone()
                },
                backend,
                counters: Arc::new(NetCounters::default()),
                acked: Arc::new(AtomicU64::new(0)),
            }
        };
        let vhost = |taps: &[Tap], dhcp: &Option<DhcpServer>| {
            dhcp_socket(cfg, taps, dhcp.is_some()).map_err(|(what, source)| {
                NetworkError::VhostNet {
                    index: p.index,
                    name: p.name.clone(),
                    annotation: crate::config::VHOST_NET_ANNOTATION,
                    what,
                    source,
                }
            })
        };
        let nic = match p.host {
            HostPlan::Passthrough(vf) => {
                sriov::ensure_memlock(cfg.memory_bytes).map_err(|e| sriov::SriovError {
                    index: vf.index,
                    name: vf.name.clone(),
                    why: net::error::Chain(&e).to_string(),
                })?;
                log::info!(
                    "interface {}: VF {} from {}",
                    vf.name,
                    vf.address,
                    vf.source
                );
                self.vfs.push(vf);
                return Ok(());
            }
            HostPlan::Masquerade { nat, forward } => {
                let listeners = Listeners::bind(&forward, nat.ipv6.is_some());
                log::info!("interface {}: {}", p.name, listeners.summary());
                nic(
                    nat.guest_mac,
                    nat.mtu,
                    NicBackend::Nat(nat, Arc::new(listeners)),
                )
            }
            HostPlan::TakeOver {
                link,
                left_taken_over,
                ..
            } => {
                let mut nl = netlink(p.index, &p.name)?;
                if left_taken_over {
                    bridge::recover(&mut nl, &link.name).map_err(bind_err)?;
                }
                let tap = format!("tap-{}", link.name);
                let (binding, taps) =
                    Binding::take_over(&mut nl, &link.name, &tap, queue_pairs).map_err(bind_err)?;
                let lease = binding.pod.lease(&pod.resolver, &cfg.name);
                let (mac, mtu) = (binding.pod.mac, mtu16(binding.pod.mtu));
                self.bindings.push(binding);
                let dhcp = lease.map(DhcpServer::new);
                let dhcp_socket = vhost(&taps, &dhcp)?;
                nic(
                    mac,
                    mtu,
                    NicBackend::Tap {
                        taps,
                        dhcp,
                        dhcp_socket,
                    },
                )
            }
            HostPlan::NadBridge { link, bridge, .. } => {
                let mut nl = netlink(p.index, &p.name)?;
                let (br, mtu, created) =
                    bridge::ensure_bridge(&mut nl, &bridge).map_err(bind_err)?;
                if created {
                    self.created_bridges.push(bridge);
                }
                let taps =
                    bridge::attach_tap(&mut nl, &format!("tap-{link}"), br, mtu, queue_pairs)
                        .map_err(bind_err)?;
                let mac = cfg
                    .interfaces
                    .get(p.index)
                    .map_or(MacAddr::new([0; 6]), |i| i.mac);
                let dhcp_socket = vhost(&taps, &None)?;
                nic(
                    mac,
                    mtu16(mtu),
                    NicBackend::Tap {
                        taps,
                        dhcp: None,
                        dhcp_socket,
                    },
                )
            }
        };
        log::info!("interface {} ({}): {}", nic.name, nic.mac, nic.host);
        self.nics.push(nic);
        Ok(())
    }
}

/// Whether `/dev/vhost-net` opens, for interface `index` (`name`) when the VM asks for
/// vhost-net: checked by the plan, so before anything of the pod's is touched and in a dry
/// run too.
fn vhost_net_available(index: usize, name: &str) -> Result<(), NetworkError> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(VHOST_NET_DEVICE)
        .map(drop)
        .map_err(|source| NetworkError::VhostNet {
            index,
            name: name.to_string(),
            annotation: crate::config::VHOST_NET_ANNOTATION,
            what: format!("{VHOST_NET_DEVICE} cannot be opened"),
            source,
        })
}

/// Where `cfg` asks for vhost-net and the link's address is delegated (`dhcp`): the packet
/// socket on the TAP that the DHCP server answers on. What failed and why otherwise.
fn dhcp_socket(
    cfg: &VmConfig,
    taps: &[Tap],
    dhcp: bool,
) -> Result<Option<DhcpSocket>, (String, std::io::Error)> {
    if !cfg.vhost_net {
        return Ok(None);
    }
    let Some(tap) = taps.first().filter(|_| dhcp) else {
        return Ok(None);
    };
    DhcpSocket::open_on(tap.name())
        .map(Some)
        .map_err(|e| (format!("no packet socket on {} for DHCP", tap.name()), e))
}

/// The device vhost-net is opened through.
const VHOST_NET_DEVICE: &str = "/dev/vhost-net";

fn netlink(index: usize, name: &str) -> Result<Netlink, NetworkError> {
    Netlink::open().map_err(|source| NetworkError::Bind {
        index,
        name: name.to_string(),
        source: BindError::Netlink {
            what: "cannot open a netlink socket".into(),
            source,
        },
    })
}

fn mtu16(mtu: u32) -> u16 {
    u16::try_from(mtu).unwrap_or(u16::MAX)
}

impl Drop for HostNetwork {
    fn drop(&mut self) {
        // TAPs first (closing them removes those vmm created), then the links, in reverse.
        self.nics.clear();
        while let Some(b) = self.bindings.pop() {
            drop(b);
        }
        if self.created_bridges.is_empty() {
            return;
        }
        if let Ok(mut nl) = Netlink::open() {
            for name in self.created_bridges.drain(..) {
                if let Ok(Some(l)) = nl.link(&name)
                    && let Err(e) = nl.del_link(l.index)
                {
                    log::error!("cannot delete bridge {name}: {e}");
                }
            }
        }
    }
}

/// Every interface's plan: what the dry run prints.
pub fn plan(
    cfg: &VmConfig,
    manifest: &crate::config::Manifest,
    limits: Limits,
    egress: &Egress,
) -> Vec<Result<InterfacePlan, NetworkError>> {
    plan::plan(cfg, manifest, &PodSettings::of_this_host(limits, egress))
}

/// Sets up every interface's host side: plans them all, so that a problem with any of them
/// is found before anything changes, then carries the plans out in order.
pub fn set_up(
    cfg: &VmConfig,
    manifest: &crate::config::Manifest,
    limits: Limits,
    egress: &Egress,
) -> Result<HostNetwork, NetworkError> {
    let mut host = HostNetwork::default();
    if cfg.interfaces.is_empty() {
        return Ok(host);
    }
    let pod = PodSettings::of_this_host(limits, egress);
    let plans = plan::plan(cfg, manifest, &pod)
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    for p in plans {
        host.apply(p, cfg, &pod)?;
    }
    Ok(host)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn the_report_pairs_each_interface_with_its_own_host_side() {
        // A VF first, then a masquerade NIC: the NIC's counters must not land on the VF.
        let text = "apiVersion: virt.virtink.smartx.com/v1alpha1\nkind: VirtualMachine\n\
            metadata:\n  name: vm\nspec:\n  instance:\n    kernel:\n      image: /vmlinuz\n\
            \x20     cmdline: console=ttyS0\n    interfaces:\n\
            \x20     - name: vf\n        sriov: {}\n      - name: pod\n        masquerade: {}\n\
            \x20 networks:\n    - name: vf\n      multus:\n        networkName: sriov-net\n\
            \x20   - name: pod\n      pod: {}\n";
        let manifest =
            crate::config::documents::parse(text, std::path::Path::new("vm.yaml"), "/".into())
                .unwrap();
        let cfg = VmConfig::from_manifest(&manifest);
        let nat = NatConfig {
            network: Ipv4Addr::new(10, 0, 2, 0),
            prefix: 30,
            guest_mac: cfg.interfaces[1].mac,
            mtu: MASQUERADE_MTU,
            dns: vec![],
            search: vec![],
            hostname: "vm".into(),
            limits: Limits::default(),
            egress: Egress::default(),
            ipv6: None,
        };
        let counters = Arc::new(NetCounters::default());
        counters
            .rx_frames
            .store(7, std::sync::atomic::Ordering::Relaxed);
        let mut network = HostNetwork::default();
        network.nics = vec![HostNic {
            index: 1,
            name: "pod".into(),
            mac: cfg.interfaces[1].mac,
            mtu: MASQUERADE_MTU,
            backend: NicBackend::Nat(nat, Arc::default()),
            counters,
            acked: Arc::new(AtomicU64::new(0)),
            host: "in-process NAT".into(),
            vhost_net: false,
        }];
        network.vfs = vec![sriov::Vf {
            index: 0,
            name: "vf".into(),
            address: sriov::PciAddress::parse("0000:3b:02.1").unwrap(),
            source: "$PCIDEVICE_X".into(),
        }];
        let report = serde_json::to_value(network.report(&cfg)).unwrap();
        assert_eq!(report.as_array().map(Vec::len), Some(2));
        assert_eq!(report[0]["name"], "vf");
        assert_eq!(report[0]["vf"], "0000:3b:02.1");
        assert!(report[0].get("rx_frames").is_none(), "{}", report[0]);
        assert_eq!(report[1]["name"], "pod");
        assert_eq!(report[1]["guest_ip"], "10.0.2.2");
        assert_eq!(report[1]["rx_frames"], 7);
        assert_eq!(report[1]["mtu"], 65520);
    }
}
