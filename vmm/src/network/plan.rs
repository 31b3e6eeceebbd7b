//! What each interface's host side will be, decided from the manifest and what the network
//! namespace holds, before anything changes: the plan `--dry-run` prints, [`super::set_up`]
//! carries out, and the API's `info` reports (one text for all three: [`HostPlan`]'s
//! `Display`).

use std::fmt;

use net::bridge;
use net::nat::{Egress, Forward, Ipv6Config, Limits, NatConfig, Protocol};
use net::netlink::{Ipv4Net, Link, Netlink};
use net::resolv::Resolver;

use super::{MASQUERADE_MTU, NetworkError};
use crate::config::{Binding, InterfaceConfig, Manifest, NetworkSource, VmConfig};
use crate::sriov;

/// What every interface's set-up shares: the pod's resolver, the NAT's limits and egress
/// policy.
#[derive(Debug, Clone)]
pub struct PodSettings {
    /// The pod's DNS servers and search list.
    pub resolver: Resolver,
    /// `--nat-limit`s.
    pub limits: Limits,
    /// `--nat-deny` and `--nat-allow`.
    pub egress: Egress,
    /// The pod has a global IPv6 address: masquerade gives the guest IPv6 too.
    pub ipv6: bool,
}

impl PodSettings {
    /// This namespace's settings, with `limits` and `egress`.
    pub fn of_this_host(limits: Limits, egress: &Egress) -> Self {
        Self {
            resolver: Resolver::of_this_host(),
            limits,
            egress: egress.clone(),
            ipv6: net::nat::ipv6::pod_has_ipv6(),
        }
    }
}

/// One interface's host side, to be.
#[derive(Debug)]
pub enum HostPlan {
    /// Pod link `link` exists: it is renamed `<link>-nic` and enslaved to a new bridge
    /// `br-<link>` with TAP `tap-<link>`, a dummy `<link>` keeps its addresses, and DHCP
    /// delegates its first IPv4 address to the guest, which gets its MAC.
    TakeOver {
        /// The link as it is now.
        link: Link,
        /// Its IPv4 addresses.
        addresses: Vec<Ipv4Net>,
        /// A vmm that did not exit cleanly left it taken over: it is put back first.
        left_taken_over: bool,
    },
    /// No pod link, but the manifest has a `type: bridge` NetworkAttachmentDefinition: TAP
    /// `tap-<link>` on its bridge, which is created when missing (and removed at exit).
    NadBridge {
        /// The missing pod link's name.
        link: String,
        /// The bridge's name.
        bridge: String,
        /// The bridge, when it exists.
        existing: Option<Link>,
    },
    /// The masquerade binding: the in-process NAT, no host link.
    Masquerade {
        /// The engine's configuration.
        nat: NatConfig,
        /// The forwarded ports.
        forward: Forward,
    },
    /// The sriov binding: the VF passed through with VFIO (the host checks passed).
    Passthrough(sriov::Vf),
}

/// One interface's plan.
#[derive(Debug)]
pub struct InterfacePlan {
    /// Its index in `spec.instance.interfaces`.
    pub index: usize,
    /// Its name.
    pub name: String,
    /// Its host side.
    pub host: HostPlan,
}

impl fmt::Display for HostPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPlan::TakeOver {
                link,
                addresses,
                left_taken_over,
            } => {
                let name = &link.name;
                if *left_taken_over {
                    write!(
                        f,
                        "{name} was left taken over by a vmm that did not exit cleanly \
                         ({name}-nic, dummy {name}, br-{name}): it is put back first, then "
                    )?;
                }
                let mac = link.mac.map_or("none".to_string(), |m| m.to_string());
                let list: Vec<String> = addresses
                    .iter()
                    .map(|a| format!("{}/{}", a.addr, a.prefix))
                    .collect();
                let list = if list.is_empty() {
                    "no IPv4 address".to_string()
                } else {
                    list.join(", ")
                };
                write!(
                    f,
                    "takes over {name} (MAC {mac}, MTU {}, {list}): renamed {name}-nic on new \
                     bridge br-{name}, a dummy {name} keeps the address, TAP tap-{name}; ",
                    link.mtu
                )?;
                match addresses.first() {
                    Some(a) => write!(f, "DHCP delegates {}/{} to the guest", a.addr, a.prefix)?,
                    None => write!(f, "layer 2 only, no DHCP from vmm")?,
                }
                write!(f, "; guest MAC {mac}")
            }
            HostPlan::NadBridge {
                link,
                bridge,
                existing,
            } => match existing {
                Some(b) => write!(
                    f,
                    "no link {link}: TAP tap-{link} on bridge {bridge} (exists, MTU {})",
                    b.mtu
                ),
                None => write!(
                    f,
                    "no link {link}: TAP tap-{link} on bridge {bridge} (created, removed at exit)"
                ),
            },
            HostPlan::Masquerade { nat, forward } => {
                write!(
                    f,
                    "in-process NAT on {}/{}, gateway {}, guest {}, ",
                    nat.network,
                    nat.prefix,
                    nat.gateway(),
                    nat.guest(),
                )?;
                match &nat.ipv6 {
                    Some(v6) => write!(
                        f,
                        "IPv6 {}/{}, gateway {}, guest {}, ",
                        v6.network,
                        v6.prefix,
                        v6.gateway(),
                        v6.guest()
                    )?,
                    None => write!(f, "no IPv6 (the pod has none), ")?,
                }
                write!(f, "MTU {}, ", nat.mtu)?;
                match forward {
                    Forward::All => write!(
                        f,
                        "inbound: every free TCP and UDP port outside the ephemeral range"
                    )?,
                    Forward::Ports(ports) => {
                        let list: Vec<String> = ports
                            .iter()
                            .map(|(port, proto)| format!("{port}/{proto:?}"))
                            .collect();
                        write!(f, "inbound ports {}", list.join(", "))?;
                    }
                }
                write!(f, "; egress {}", nat.egress)
            }
            HostPlan::Passthrough(vf) => write!(
                f,
                "VF {} from {}; the host is ready for it",
                vf.address, vf.source
            ),
        }
    }
}

fn netlink_err(index: usize, name: &str, what: &str, source: std::io::Error) -> NetworkError {
    NetworkError::Bind {
        index,
        name: name.to_string(),
        source: bridge::BindError::Netlink {
            what: what.to_string(),
            source,
        },
    }
}

/// Every interface's plan, in `interfaces` order, or why it cannot be set up. Reads the
/// manifest and the namespace; changes nothing.
pub fn plan(
    cfg: &VmConfig,
    manifest: &Manifest,
    pod: &PodSettings,
) -> Vec<Result<InterfacePlan, NetworkError>> {
    // Opened when the first interface needs them.
    let mut nl: Option<std::io::Result<Netlink>> = None;
    let mut vfs = None;
    cfg.interfaces
        .iter()
        .enumerate()
        .map(|(index, iface)| {
            let host = match &iface.binding {
                Binding::Masquerade {
                    network,
                    prefix,
                    ports,
                    ipv6,
                } => Ok(HostPlan::Masquerade {
                    nat: nat_config(iface, cfg, pod, (*network, *prefix), *ipv6),
                    forward: forward(ports.as_deref()),
                }),
                Binding::Sriov => {
                    let vfs = vfs.get_or_insert_with(|| {
                        sriov::discover(cfg, manifest, &sriov::Sources::from_process())
                    });
                    passthrough(index, iface, vfs)
                }
                Binding::Bridge => match nl.get_or_insert_with(Netlink::open) {
                    Ok(nl) => bridged(nl, index, iface, manifest).and_then(|host| {
                        if cfg.vhost_net {
                            super::vhost_net_available(index, &iface.name)?;
                        }
                        Ok(host)
                    }),
                    Err(e) => Err(netlink_err(
                        index,
                        &iface.name,
                        "cannot open a netlink socket",
                        std::io::Error::new(e.kind(), e.to_string()),
                    )),
                },
            };
            host.map(|host| InterfacePlan {
                index,
                name: iface.name.clone(),
                host,
            })
        })
        .collect()
}

/// The forwarded ports: `masquerade.ports`, or all.
fn forward(ports: Option<&[(u16, crate::config::Protocol)]>) -> Forward {
    ports.map_or(Forward::All, |list| {
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
    })
}

fn nat_config(
    iface: &InterfaceConfig,
    cfg: &VmConfig,
    pod: &PodSettings,
    (network, prefix): (std::net::Ipv4Addr, u8),
    (network6, prefix6): (std::net::Ipv6Addr, u8),
) -> NatConfig {
    NatConfig {
        network,
        prefix,
        guest_mac: iface.mac,
        mtu: MASQUERADE_MTU,
        dns: pod.resolver.dns.clone(),
        search: pod.resolver.search.clone(),
        hostname: cfg.name.clone(),
        limits: pod.limits,
        egress: pod.egress.clone(),
        ipv6: pod.ipv6.then(|| Ipv6Config {
            network: network6,
            prefix: prefix6,
            dns: pod.resolver.dns6.clone(),
        }),
    }
}

fn passthrough(
    index: usize,
    iface: &InterfaceConfig,
    vfs: &Result<Vec<sriov::Vf>, sriov::SriovError>,
) -> Result<HostPlan, NetworkError> {
    let vfs = vfs.as_ref().map_err(|e| e.clone())?;
    let vf = vfs
        .iter()
        .find(|v| v.index == index)
        .ok_or_else(|| sriov::SriovError {
            index,
            name: iface.name.clone(),
            why: "no VF was found for it".into(),
        })?;
    sriov::check_host(vf, &sriov::HostPaths::default())?;
    Ok(HostPlan::Passthrough(vf.clone()))
}

/// The bridge binding: the pod link taken over, or a TAP on the NAD's bridge.
fn bridged(
    nl: &mut Netlink,
    index: usize,
    iface: &InterfaceConfig,
    manifest: &Manifest,
) -> Result<HostPlan, NetworkError> {
    let name = &iface.name;
    let link = iface.pod_link();
    let found = nl
        .link(&link)
        .map_err(|e| netlink_err(index, name, "cannot list links", e))?;
    if let Some(l) = found {
        if bridge::in_initial_netns() {
            return Err(NetworkError::InitialNamespace {
                index,
                name: name.clone(),
                link,
            });
        }
        let addresses = nl.addresses(l.index).map_err(|e| {
            netlink_err(
                index,
                name,
                &format!("cannot list the addresses of {link}"),
                e,
            )
        })?;
        return Ok(HostPlan::TakeOver {
            left_taken_over: bridge::left_taken_over(nl, &link),
            link: l,
            addresses,
        });
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
        .map_err(|e| netlink_err(index, name, "cannot list links", e))?;
    Ok(HostPlan::NadBridge {
        link,
        bridge,
        existing,
    })
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
