//! The host side of the guest's network interfaces, set up once before the first boot and
//! kept across reboots.
//!
//! A `bridge` interface takes over its pod link when the link exists (see
//! [`net::bridge`]: Virtink's pre-runner behaviour, with DHCP answered in process when the
//! link had an IPv4 address). Outside a pod, a multus network whose
//! NetworkAttachmentDefinition is in the manifest with CNI `type: bridge` gets its TAP on
//! that bridge, created if missing. [`HostNetwork`] owns the TAPs and the taken-over links;
//! dropping it puts the namespace back as it was.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use devices::virtio::net::NetCounters;
use net::bridge::{self, BindError, Binding};
use net::dhcp::{DhcpServer, Lease};
use net::local_dhcp::LocalDhcp;
use net::nat::{Egress, Forward, Limits, Listeners, NatBackend, NatConfig, Protocol};
use net::netlink::{Ipv4Net, Link, Netlink};
use net::{FrameBackend, MacAddr, Tap};

use crate::config::{Binding as BindingKind, InterfaceConfig, Manifest, NetworkSource, VmConfig};
use crate::sriov;

/// `net.ns` inode of the initial network namespace on kernels that fix it.
const PROC_NET_INIT_INO: u64 = 0xEFFF_FFF9;
/// `pid` namespace inode of the initial PID namespace.
const PROC_PID_INIT_INO: u64 = 0xEFFF_FFFC;
/// The masquerade guest's MTU: the virtual link is not the pod's, and large frames cut the
/// per-packet cost on both sides (slirp4netns and pasta use the same).
pub const MASQUERADE_MTU: u16 = 65520;
/// A MAC for DHCP replies (never on the wire: replies go straight to the guest).
const DHCP_SERVER_MAC: MacAddr = MacAddr::new([0x02, 0x00, 0x00, 0x00, 0x00, 0x01]);

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
}

/// Where a NIC's frames go.
#[derive(Debug)]
pub enum NicBackend {
    /// A TAP (each boot's device gets a duplicate of its descriptor), with the in-process
    /// DHCP server when the link's address is delegated.
    Tap {
        /// The TAP.
        tap: Tap,
        /// The DHCP server.
        dhcp: Option<DhcpServer>,
    },
    /// The masquerade engine (a fresh one each boot) and the forwarded ports' sockets
    /// (bound once).
    Nat(NatConfig, Arc<Listeners>),
}

impl HostNic {
    /// A frame backend for one boot's device.
    pub fn frame_backend(&self) -> std::io::Result<Box<dyn FrameBackend>> {
        Ok(match &self.backend {
            NicBackend::Tap { tap, dhcp } => {
                let tap = tap.try_clone().map_err(|e| {
                    std::io::Error::other(format!("cannot duplicate TAP {}: {e}", tap.name()))
                })?;
                match dhcp {
                    Some(server) => Box::new(LocalDhcp::new(tap, server.clone())?),
                    None => Box::new(tap),
                }
            }
            NicBackend::Nat(cfg, listeners) => {
                Box::new(NatBackend::new(cfg.clone(), listeners.clone())?)
            }
        })
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

    /// Each interface of `cfg` as the API's `info` reports it: name, binding, network, MAC,
    /// the guest's IPv4 address where `vmm` hands it out (DHCP delegation, masquerade), and
    /// for a virtio-net NIC its host side, MTU, negotiated features and counters, for a VF
    /// its PCI address and where that came from.
    pub fn report(&self, cfg: &VmConfig) -> Vec<serde_json::Value> {
        use std::sync::atomic::Ordering::Relaxed;
        cfg.interfaces
            .iter()
            .enumerate()
            .map(|(index, iface)| {
                let mut v = serde_json::json!({
                    "name": iface.name,
                    "binding": match iface.binding {
                        BindingKind::Bridge => "bridge",
                        BindingKind::Masquerade { .. } => "masquerade",
                        BindingKind::Sriov => "sriov",
                    },
                    "network": match &iface.network {
                        NetworkSource::Pod => "pod".to_string(),
                        NetworkSource::Multus { network_name } => format!("multus:{network_name}"),
                    },
                    "mac": iface.mac.to_string(),
                    "guest_ip": null,
                });
                if let Some(nic) = self.nics.iter().find(|n| n.index == index) {
                    let c = &nic.counters;
                    let guest_ip = match &nic.backend {
                        NicBackend::Tap { dhcp, .. } => dhcp.as_ref().map(|d| d.lease().address),
                        NicBackend::Nat(cfg, _) => Some(cfg.guest()),
                    };
                    v["mac"] = nic.mac.to_string().into();
                    v["guest_ip"] = guest_ip.map(|a| a.to_string()).into();
                    v["mtu"] = nic.mtu.into();
                    v["host"] = nic.host.clone().into();
                    v["features"] =
                        devices::virtio::net::feature_names(nic.acked.load(Relaxed)).into();
                    for (key, counter) in [
                        ("tx_frames", &c.tx_frames),
                        ("tx_bytes", &c.tx_bytes),
                        ("tx_dropped", &c.tx_dropped),
                        ("rx_frames", &c.rx_frames),
                        ("rx_bytes", &c.rx_bytes),
                    ] {
                        v[key] = counter.load(Relaxed).into();
                    }
                } else if let Some(vf) = self.vfs.iter().find(|v| v.index == index) {
                    v["vf"] = vf.address.to_string().into();
                    v["vf_source"] = vf.source.clone().into();
                }
                v
            })
            .collect()
    }
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

fn ns_inode(path: &str) -> Option<u64> {
    std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(path).ok()?).into()
}

/// Whether this process is in the host's initial network namespace.
pub fn in_initial_netns() -> bool {
    let Some(own) = ns_inode("/proc/self/ns/net") else {
        return false;
    };
    if own == PROC_NET_INIT_INO {
        return true;
    }
    // On kernels that number namespaces dynamically: compare with init's, when init is the
    // host's (this process is in the initial PID namespace).
    ns_inode("/proc/self/ns/pid") == Some(PROC_PID_INIT_INO)
        && ns_inode("/proc/1/ns/net") == Some(own)
}

/// DNS servers and search domains from `resolv.conf` text (IPv4 servers only).
pub fn parse_resolv_conf(text: &str) -> (Vec<Ipv4Addr>, Vec<String>) {
    let mut dns = Vec::new();
    let mut search = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => {
                if let Some(a) = words.next().and_then(|w| w.parse().ok())
                    && !dns.contains(&a)
                {
                    dns.push(a);
                }
            }
            // The last search or domain line wins, as in the resolver.
            Some("search" | "domain") => search = words.map(str::to_string).collect(),
            _ => {}
        }
    }
    (dns, search)
}

/// A NetworkAttachmentDefinition of a CNI type other than `bridge`.
#[derive(Debug, thiserror::Error)]
#[error(
    "NetworkAttachmentDefinition {nad:?} has CNI type {kind:?}; outside a pod only type \
     \"bridge\" is supported"
)]
struct NotBridge {
    nad: String,
    kind: String,
}

/// The CNI bridge name of a NAD whose config is `type: bridge` (default `cni0`).
fn nad_bridge(manifest: &Manifest, network_name: &str) -> Option<Result<String, NotBridge>> {
    let nad = manifest.network_attachment(network_name)?;
    let config: serde_json::Value = serde_json::from_str(&nad.spec.config).ok()?;
    let kind = config.get("type").and_then(|t| t.as_str()).unwrap_or("");
    if kind != "bridge" {
        return Some(Err(NotBridge {
            nad: nad.metadata.name.clone(),
            kind: kind.to_string(),
        }));
    }
    let bridge = config
        .get("bridge")
        .and_then(|b| b.as_str())
        .unwrap_or("cni0")
        .to_string();
    Some(Ok(bridge))
}

fn mtu16(mtu: u32) -> u16 {
    u16::try_from(mtu).unwrap_or(u16::MAX)
}

/// What every interface's set-up shares: the pod's resolver settings, the NAT's limits
/// and egress policy.
struct PodSettings {
    dns: Vec<Ipv4Addr>,
    search: Vec<String>,
    limits: Limits,
    egress: Egress,
}

/// Sets up every interface's host side.
pub fn set_up(
    cfg: &VmConfig,
    manifest: &Manifest,
    limits: Limits,
    egress: &Egress,
) -> Result<HostNetwork, NetworkError> {
    let mut host = HostNetwork::default();
    if cfg.interfaces.is_empty() {
        return Ok(host);
    }
    // SR-IOV first: its checks touch nothing, so a missing piece is reported before any
    // link is taken over.
    host.vfs = check_sriov(cfg, manifest)?;
    let (dns, search) =
        parse_resolv_conf(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default());
    let pod = PodSettings {
        dns,
        search,
        limits,
        egress: egress.clone(),
    };
    for (index, iface) in cfg.interfaces.iter().enumerate() {
        if iface.binding == BindingKind::Sriov {
            continue;
        }
        let nic = set_up_one(&mut host, index, iface, cfg, manifest, &pod)?;
        log::info!("interface {} ({}): {}", nic.name, nic.mac, nic.host);
        host.nics.push(nic);
    }
    Ok(host)
}

/// Finds every sriov interface's VF and checks the host can pass it through.
fn check_sriov(cfg: &VmConfig, manifest: &Manifest) -> Result<Vec<sriov::Vf>, NetworkError> {
    let vfs = sriov::discover(cfg, manifest, &sriov::Sources::from_process())?;
    let paths = sriov::HostPaths::default();
    for vf in &vfs {
        log::info!(
            "interface {}: VF {} from {}",
            vf.name,
            vf.address,
            vf.source
        );
        sriov::check_host(vf, &paths)?;
        sriov::ensure_memlock(cfg.memory_bytes).map_err(|e| sriov::SriovError {
            index: vf.index,
            name: vf.name.clone(),
            why: net::error::Chain(&e).to_string(),
        })?;
    }
    Ok(vfs)
}

/// Where one bridge-bound interface's frames go, decided from the manifest and what the
/// namespace holds, before anything changes.
#[derive(Debug)]
enum HostSide {
    /// Pod link `link` exists: take it over.
    TakeOver {
        /// The link as it is now.
        link: Link,
        /// Its IPv4 addresses.
        addresses: Vec<Ipv4Net>,
    },
    /// The masquerade binding: no host link at all.
    Nat,
    /// No such link, but the manifest has a `type: bridge` NAD: a TAP on its bridge.
    NadBridge {
        /// The bridge's name.
        bridge: String,
        /// The bridge, when it already exists.
        existing: Option<Link>,
    },
}

fn netlink_err(index: usize, name: &str, what: &str, source: std::io::Error) -> NetworkError {
    NetworkError::Bind {
        index,
        name: name.to_string(),
        source: BindError::Netlink {
            what: what.to_string(),
            source,
        },
    }
}

/// Decides where interface `index` goes; reads the namespace, changes nothing.
fn host_side(
    nl: &mut Netlink,
    index: usize,
    iface: &InterfaceConfig,
    manifest: &Manifest,
) -> Result<HostSide, NetworkError> {
    let name = iface.name.clone();
    let what = match iface.binding {
        BindingKind::Bridge => None,
        BindingKind::Masquerade { .. } => return Ok(HostSide::Nat),
        BindingKind::Sriov => Some("the sriov binding"),
    };
    if let Some(what) = what {
        return Err(NetworkError::Unsupported {
            index,
            name,
            what: what.into(),
        });
    }
    let link = iface.pod_link();
    let found = nl
        .link(&link)
        .map_err(|e| netlink_err(index, &name, "cannot list links", e))?;
    if let Some(l) = found {
        if in_initial_netns() {
            return Err(NetworkError::InitialNamespace { index, name, link });
        }
        let addresses = nl.addresses(l.index).map_err(|e| {
            netlink_err(
                index,
                &name,
                &format!("cannot list the addresses of {link}"),
                e,
            )
        })?;
        return Ok(HostSide::TakeOver { link: l, addresses });
    }
    let hint = " (vmm takes over eth0 for the pod network and net<i> for multus network i)";
    let no_link = |hint: String| NetworkError::NoLink {
        index,
        name: name.clone(),
        link: link.clone(),
        hint,
    };
    let bridge = match &iface.network {
        NetworkSource::Multus { network_name } => match nad_bridge(manifest, network_name) {
            Some(Ok(b)) => b,
            Some(Err(why)) => return Err(no_link(format!("; {why}"))),
            None => {
                return Err(no_link(format!(
                    "{hint}, and the manifest has no bridge NetworkAttachmentDefinition \
                     {network_name:?} to attach to instead"
                )));
            }
        },
        NetworkSource::Pod => return Err(no_link(hint.to_string())),
    };
    let existing = nl
        .link(&bridge)
        .map_err(|e| netlink_err(index, &name, "cannot list links", e))?;
    Ok(HostSide::NadBridge { bridge, existing })
}

fn addresses_text(addresses: &[Ipv4Net]) -> String {
    let list: Vec<String> = addresses
        .iter()
        .map(|a| format!("{}/{}", a.addr, a.prefix))
        .collect();
    if list.is_empty() {
        "no IPv4 address".to_string()
    } else {
        list.join(", ")
    }
}

/// What a `--dry-run` line says before why setting an interface up would fail.
pub const WOULD_FAIL: &str = "would fail: ";

/// For `--dry-run`: one line per interface saying which host link, bridge and TAP it will
/// use, from what the namespace holds now (or why setting it up would fail).
pub fn describe(cfg: &VmConfig, manifest: &Manifest) -> Vec<String> {
    let mut nl = match Netlink::open() {
        Ok(nl) => nl,
        Err(e) => return vec![format!("cannot inspect the network namespace: {e}")],
    };
    let vfs = sriov::discover(cfg, manifest, &sriov::Sources::from_process());
    cfg.interfaces
        .iter()
        .enumerate()
        .map(|(index, iface)| {
            if iface.binding == BindingKind::Sriov {
                return describe_vf(index, &vfs);
            }
            let link = iface.pod_link();
            if iface.binding == BindingKind::Bridge && bridge::left_taken_over(&mut nl, &link) {
                return format!(
                    "{link} was left taken over by a vmm that did not exit cleanly \
                     ({link}-nic, dummy {link}, br-{link}): it is put back first, then taken over"
                );
            }
            let tap = format!("tap-{link}");
            match host_side(&mut nl, index, iface, manifest) {
                Ok(HostSide::TakeOver { link: l, addresses }) => {
                    let mac = l.mac.map_or("none".to_string(), |m| m.to_string());
                    let dhcp = addresses
                        .first()
                        .map_or("layer 2 only, no DHCP from vmm".to_string(), |a| {
                            format!("DHCP delegates {}/{} to the guest", a.addr, a.prefix)
                        });
                    format!(
                        "takes over {link} (MAC {mac}, MTU {}, {}): renamed {link}-nic on new \
                         bridge br-{link}, a dummy {link} keeps the address, TAP {tap}; {dhcp}; \
                         guest MAC {mac}",
                        l.mtu,
                        addresses_text(&addresses)
                    )
                }
                Ok(HostSide::Nat) => "in-process NAT, no host link".to_string(),
                Ok(HostSide::NadBridge { bridge, existing }) => match existing {
                    Some(b) => format!(
                        "no link {link}: TAP {tap} on bridge {bridge} (exists, MTU {})",
                        b.mtu
                    ),
                    None => format!(
                        "no link {link}: TAP {tap} on bridge {bridge} (created, removed at exit)"
                    ),
                },
                Err(e) => format!("{WOULD_FAIL}{}", net::error::Chain(&e)),
            }
        })
        .collect()
}

fn describe_vf(index: usize, vfs: &Result<Vec<sriov::Vf>, sriov::SriovError>) -> String {
    let vfs = match vfs {
        Ok(vfs) => vfs,
        Err(e) => return format!("{WOULD_FAIL}{e}"),
    };
    let Some(vf) = vfs.iter().find(|v| v.index == index) else {
        return "?".to_string();
    };
    let host = match sriov::check_host(vf, &sriov::HostPaths::default()) {
        Ok(()) => "the host is ready for it".to_string(),
        Err(e) => format!("{WOULD_FAIL}{}", e.why),
    };
    format!("VF {} from {}; {host}", vf.address, vf.source)
}

fn set_up_one(
    host: &mut HostNetwork,
    index: usize,
    iface: &InterfaceConfig,
    cfg: &VmConfig,
    manifest: &Manifest,
    pod_settings: &PodSettings,
) -> Result<HostNic, NetworkError> {
    let PodSettings {
        dns,
        search,
        limits,
        egress,
    } = pod_settings;
    let name = iface.name.clone();
    let bind_err = |source| NetworkError::Bind {
        index,
        name: name.clone(),
        source,
    };
    let counters = Arc::new(NetCounters::default());
    let acked = Arc::new(AtomicU64::new(0));
    if let BindingKind::Masquerade {
        network,
        prefix,
        ref ports,
    } = iface.binding
    {
        let forward = ports.as_ref().map_or(Forward::All, |list| {
            Forward::Ports(
                list.iter()
                    .map(|(port, proto)| {
                        let proto = match proto {
                            crate::config::Protocol::Tcp => Protocol::Tcp,
                            crate::config::Protocol::Udp => Protocol::Udp,
                        };
                        (*port, proto)
                    })
                    .collect(),
            )
        });
        let listeners = Listeners::bind(&forward);
        let cfg = NatConfig {
            network,
            prefix,
            guest_mac: iface.mac,
            mtu: MASQUERADE_MTU,
            dns: dns.to_vec(),
            search: search.to_vec(),
            hostname: cfg.name.clone(),
            limits: *limits,
            egress: egress.clone(),
        };
        let host = format!(
            "in-process NAT: gateway {}, guest {}/{prefix}, MTU {MASQUERADE_MTU}; {}; egress {}",
            cfg.gateway(),
            cfg.guest(),
            listeners.summary(),
            cfg.egress
        );
        return Ok(HostNic {
            index,
            name,
            mac: iface.mac,
            mtu: MASQUERADE_MTU,
            backend: NicBackend::Nat(cfg, Arc::new(listeners)),
            counters,
            acked,
            host,
        });
    }
    let mut nl = Netlink::open()
        .map_err(|e| netlink_err(index, &name, "cannot open a netlink socket", e))?;
    let link = iface.pod_link();
    let tap_name = format!("tap-{link}");
    if !in_initial_netns() {
        bridge::recover(&mut nl, &link).map_err(bind_err)?;
    }
    match host_side(&mut nl, index, iface, manifest)? {
        HostSide::Nat => unreachable!("handled above"),
        HostSide::TakeOver { .. } => {
            let (binding, tap) = Binding::take_over(&mut nl, &link, &tap_name).map_err(bind_err)?;
            let pod = binding.pod.clone();
            host.bindings.push(binding);
            let dhcp = pod.addresses.first().map(|a| {
                let router = pod.router();
                DhcpServer::new(Lease {
                    client: pod.mac,
                    address: a.addr,
                    prefix: a.prefix,
                    router,
                    routes: pod.static_routes(),
                    dns: dns.to_vec(),
                    search: search.to_vec(),
                    mtu: Some(mtu16(pod.mtu)),
                    hostname: cfg.name.clone(),
                    server: router.unwrap_or(Ipv4Addr::new(169, 254, 0, 1)),
                    server_mac: DHCP_SERVER_MAC,
                })
            });
            let delegated = pod
                .addresses
                .first()
                .map_or("no IPv4 address: layer 2 only".to_string(), |a| {
                    format!("DHCP delegates {}/{}", a.addr, a.prefix)
                });
            Ok(HostNic {
                index,
                name,
                mac: pod.mac,
                mtu: mtu16(pod.mtu),
                backend: NicBackend::Tap { tap, dhcp },
                counters,
                acked,
                host: format!(
                    "{link} (now {link}-nic) on bridge br-{link}, TAP {tap_name}, MTU {}; {delegated}",
                    pod.mtu
                ),
            })
        }
        HostSide::NadBridge { bridge, .. } => {
            let (br, mtu, created) = bridge::ensure_bridge(&mut nl, &bridge).map_err(bind_err)?;
            if created {
                host.created_bridges.push(bridge.clone());
            }
            let tap = bridge::attach_tap(&mut nl, &tap_name, br, mtu).map_err(bind_err)?;
            Ok(HostNic {
                index,
                name,
                mac: iface.mac,
                mtu: mtu16(mtu),
                backend: NicBackend::Tap { tap, dhcp: None },
                counters,
                acked,
                host: format!(
                    "TAP {tap_name} on bridge {bridge}{}, MTU {mtu}",
                    if created { " (created)" } else { "" }
                ),
            })
        }
    }
}

#[cfg(test)]
mod tests {
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
        }];
        network.vfs = vec![sriov::Vf {
            index: 0,
            name: "vf".into(),
            address: sriov::PciAddress::parse("0000:3b:02.1").unwrap(),
            source: "$PCIDEVICE_X".into(),
        }];
        let report = network.report(&cfg);
        assert_eq!(report.len(), 2);
        assert_eq!(report[0]["name"], "vf");
        assert_eq!(report[0]["vf"], "0000:3b:02.1");
        assert!(report[0].get("rx_frames").is_none(), "{}", report[0]);
        assert_eq!(report[1]["name"], "pod");
        assert_eq!(report[1]["guest_ip"], "10.0.2.2");
        assert_eq!(report[1]["rx_frames"], 7);
        assert_eq!(report[1]["mtu"], 65520);
    }

    #[test]
    fn resolv_conf() {
        let (dns, search) = parse_resolv_conf(
            "# comment\nnameserver 10.96.0.10\nnameserver fd00::10\nnameserver 10.96.0.10\n\
             search default.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n",
        );
        assert_eq!(dns, vec![Ipv4Addr::new(10, 96, 0, 10)]);
        assert_eq!(search.len(), 3);
        assert_eq!(search[0], "default.svc.cluster.local");
    }
}
