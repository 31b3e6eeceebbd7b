//! SR-IOV interfaces: which VF each one gets, and whether this host can pass it through.
//!
//! **Discovery**, per `sriov` interface on multus network `i` (pod link `net<i>`), the first
//! source that names a VF wins:
//!
//! 1. the `k8s.v1.cni.cncf.io/network-status` annotation, from `$NETWORK_STATUS` or the
//!    downward-API file `/etc/podinfo/annotations`: the entry whose `interface` is
//!    `net<i>`, its `device-info.pci.pci-address`;
//! 2. `$PCIDEVICE_<RESOURCE>`, set by the SR-IOV device plugin, for the resource in the
//!    NAD's `k8s.v1.cni.cncf.io/resourceName` annotation (upper-cased, `.` and `/` → `_`):
//!    a comma-separated list, of which each interface takes the first address no other
//!    interface has;
//! 3. the NAD's `deviceID`, when the NAD is in the manifest file.
//!
//! **Host checks** (exit 2, each naming what is missing): `/dev/vfio/vfio`; the device in
//! sysfs; bound to `vfio-pci` (else the bind steps); an IOMMU group whose other members are
//! bound to `vfio-pci` or to nothing; `RLIMIT_MEMLOCK` of at least guest RAM + 1 GiB, raised
//! when the hard limit allows.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::config::{Binding, Manifest, NetworkSource, VmConfig};

/// The downward-API annotations file.
pub const PODINFO_ANNOTATIONS: &str = "/etc/podinfo/annotations";
const NETWORK_STATUS_KEY: &str = "k8s.v1.cni.cncf.io/network-status";
const RESOURCE_NAME_KEY: &str = "k8s.v1.cni.cncf.io/resourceName";
/// What VFIO needs locked beyond guest RAM.
const MEMLOCK_SLACK: u64 = 1 << 30;

/// A PCI address, `DDDD:BB:DD.F`, lower-case.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PciAddress(String);

impl PciAddress {
    /// Parses `DDDD:BB:DD.F` or `BB:DD.F` (domain 0).
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim().to_ascii_lowercase();
        let full = if s.matches(':').count() == 1 {
            format!("0000:{s}")
        } else {
            s
        };
        let (rest, function) = full.split_once('.')?;
        let parts: Vec<&str> = rest.split(':').collect();
        let hex = |p: &str, len: usize| p.len() == len && p.chars().all(|c| c.is_ascii_hexdigit());
        let ok = parts.len() == 3
            && hex(parts[0], 4)
            && hex(parts[1], 2)
            && hex(parts[2], 2)
            && u8::from_str_radix(parts[2], 16).is_ok_and(|d| d < 32)
            && function.len() == 1
            && function.chars().all(|c| ('0'..='7').contains(&c));
        ok.then_some(Self(full))
    }
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One sriov interface's VF and where its address came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vf {
    /// Index in `spec.instance.interfaces`.
    pub index: usize,
    /// The interface's name.
    pub name: String,
    /// The VF.
    pub address: PciAddress,
    /// Where the address came from, in words.
    pub source: String,
}

/// Why an sriov interface cannot be passed through (exit 2).
#[derive(Debug, Clone, thiserror::Error)]
#[error("spec.instance.interfaces[{index}] ({name}): {why}")]
pub struct SriovError {
    /// Interface index.
    pub index: usize,
    /// Interface name.
    pub name: String,
    /// What is wrong or missing.
    pub why: String,
}

/// Where discovery looks: the process environment, or a test's.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// `$NETWORK_STATUS`.
    pub network_status: Option<String>,
    /// The downward-API annotations file's text and path.
    pub annotations: Option<(PathBuf, String)>,
    /// Every `PCIDEVICE_*` variable.
    pub pcidevice: BTreeMap<String, String>,
}

impl Sources {
    /// This process's environment and `/etc/podinfo/annotations`.
    pub fn from_process() -> Self {
        Self {
            network_status: std::env::var("NETWORK_STATUS").ok(),
            annotations: std::fs::read_to_string(PODINFO_ANNOTATIONS)
                .ok()
                .map(|t| (PathBuf::from(PODINFO_ANNOTATIONS), t)),
            pcidevice: std::env::vars()
                .filter(|(k, _)| k.starts_with("PCIDEVICE_"))
                .collect(),
        }
    }

    /// The network-status JSON and where it came from.
    fn network_status(&self) -> Option<(String, String)> {
        if let Some(s) = &self.network_status {
            return Some((s.clone(), "$NETWORK_STATUS".to_string()));
        }
        let (path, text) = self.annotations.as_ref()?;
        let value = annotation(text, NETWORK_STATUS_KEY)?;
        Some((value, path.display().to_string()))
    }
}

/// The value of `key` in a downward-API annotations file (`key="go-quoted value"` lines).
pub fn annotation(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once('=')?;
        (k.trim() == key).then(|| unquote(v.trim()))?
    })
}

/// A Go-quoted string's value (`strconv.Quote`: \" \\ \n \t \r \/ \xNN \uNNNN).
fn unquote(s: &str) -> Option<String> {
    let inner = s.strip_prefix('"')?.strip_suffix('"')?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next()? {
            'n' => out.push('\n'),
            't' => out.push('\t'),
            'r' => out.push('\r'),
            c @ ('"' | '\\' | '/' | '\'') => out.push(c),
            'x' => {
                let h: String = chars.by_ref().take(2).collect();
                out.push(char::from(u8::from_str_radix(&h, 16).ok()?));
            }
            'u' => {
                let h: String = chars.by_ref().take(4).collect();
                out.push(char::from_u32(u32::from_str_radix(&h, 16).ok()?)?);
            }
            _ => return None,
        }
    }
    Some(out)
}

/// A network-status document that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// Not JSON.
    #[error("not JSON")]
    Json(#[source] serde_json::Error),
    /// Not a list.
    #[error("not a JSON list of networks")]
    NotList,
    /// An entry's address is not a PCI address.
    #[error("entry {link} has a bad pci-address {address:?}")]
    Address {
        /// The interface.
        link: String,
        /// What it gives.
        address: String,
    },
}

/// The PCI address that a network-status JSON gives interface `link`, if any.
pub fn status_address(json: &str, link: &str) -> Result<Option<PciAddress>, StatusError> {
    let entries: serde_json::Value = serde_json::from_str(json).map_err(StatusError::Json)?;
    let entries = entries.as_array().ok_or(StatusError::NotList)?;
    let Some(entry) = entries
        .iter()
        .find(|e| e.get("interface").and_then(|i| i.as_str()) == Some(link))
    else {
        return Ok(None);
    };
    let Some(address) = entry
        .pointer("/device-info/pci/pci-address")
        .and_then(|a| a.as_str())
    else {
        return Ok(None);
    };
    PciAddress::parse(address)
        .map(Some)
        .ok_or_else(|| StatusError::Address {
            link: link.to_string(),
            address: address.to_string(),
        })
}

/// The device-plugin variable for a resource name.
pub fn pcidevice_var(resource: &str) -> String {
    format!(
        "PCIDEVICE_{}",
        resource.to_ascii_uppercase().replace(['.', '/'], "_")
    )
}

/// Finds the VF of every sriov interface.
pub fn discover(
    cfg: &VmConfig,
    manifest: &Manifest,
    sources: &Sources,
) -> Result<Vec<Vf>, SriovError> {
    let status = sources.network_status();
    // Addresses network-status gives some interface: the device plugin's list, which
    // holds them too, must not hand them to another.
    let reserved: Vec<PciAddress> = match &status {
        Some((json, _)) => cfg
            .interfaces
            .iter()
            .filter(|i| i.binding == Binding::Sriov)
            .filter_map(|i| status_address(json, &i.pod_link()).ok().flatten())
            .collect(),
        None => Vec::new(),
    };
    let mut vfs: Vec<Vf> = Vec::new();
    for (index, iface) in cfg.interfaces.iter().enumerate() {
        if iface.binding != Binding::Sriov {
            continue;
        }
        let err = |why: String| SriovError {
            index,
            name: iface.name.clone(),
            why,
        };
        let link = iface.pod_link();
        let NetworkSource::Multus { network_name } = &iface.network else {
            return Err(err("sriov needs a multus network".into()));
        };
        let nad = manifest.network_attachment(network_name);
        let mut tried = Vec::new();
        // 1. network-status.
        let mut found = None;
        match &status {
            Some((json, from)) => match status_address(json, &link) {
                Ok(Some(a)) => found = Some((a, format!("network-status entry {link} ({from})"))),
                Ok(None) => tried.push(format!(
                    "no PCI address for {link} in network-status ({from})"
                )),
                Err(e) => {
                    let why = net::error::Chain(&e);
                    return Err(err(format!("network-status ({from}): {why}")));
                }
            },
            None => tried.push(format!(
                "no network-status ($NETWORK_STATUS unset, no {PODINFO_ANNOTATIONS})"
            )),
        }
        // 2. The device plugin's variable.
        if found.is_none() {
            let resource = nad.and_then(|n| n.metadata.annotations.get(RESOURCE_NAME_KEY));
            match resource {
                Some(resource) => {
                    let var = pcidevice_var(resource);
                    match sources.pcidevice.get(&var) {
                        Some(list) => {
                            let taken: Vec<&PciAddress> =
                                vfs.iter().map(|v| &v.address).chain(&reserved).collect();
                            let mut bad = None;
                            for item in list.split(',').filter(|s| !s.trim().is_empty()) {
                                match PciAddress::parse(item) {
                                    Some(a) if !taken.contains(&&a) => {
                                        found = Some((a, format!("${var}")));
                                        break;
                                    }
                                    Some(_) => {}
                                    None => bad = Some(item.to_string()),
                                }
                            }
                            if let Some(item) = bad.filter(|_| found.is_none()) {
                                return Err(err(format!("${var}: bad PCI address {item:?}")));
                            }
                            if found.is_none() {
                                tried.push(format!("every address in ${var} is taken"));
                            }
                        }
                        None => tried.push(format!("${var} unset")),
                    }
                }
                None => tried.push(format!(
                    "no {RESOURCE_NAME_KEY} annotation on a NetworkAttachmentDefinition \
                     {network_name:?} in the file"
                )),
            }
        }
        // 3. The NAD's deviceID.
        if found.is_none() {
            let device_id = nad
                .and_then(|n| serde_json::from_str::<serde_json::Value>(&n.spec.config).ok())
                .and_then(|c| c.get("deviceID").and_then(|d| d.as_str()).map(String::from));
            match device_id {
                Some(id) => match PciAddress::parse(&id) {
                    Some(a) => {
                        found = Some((
                            a,
                            format!("deviceID of NetworkAttachmentDefinition {network_name:?}"),
                        ));
                    }
                    None => {
                        return Err(err(format!(
                            "NetworkAttachmentDefinition {network_name:?}: bad deviceID {id:?}"
                        )));
                    }
                },
                None => tried.push("no deviceID in the NetworkAttachmentDefinition".into()),
            }
        }
        let Some((address, source)) = found else {
            return Err(err(format!(
                "no VF for network {network_name:?} ({link}): {}",
                tried.join("; ")
            )));
        };
        if let Some(other) = vfs.iter().find(|v| v.address == address) {
            return Err(err(format!(
                "VF {address} is also interface {}'s ({})",
                other.name, other.source
            )));
        }
        vfs.push(Vf {
            index,
            name: iface.name.clone(),
            address,
            source,
        });
    }
    Ok(vfs)
}

/// The host's sysfs and /dev, or a test's fake ones.
#[derive(Debug, Clone)]
pub struct HostPaths {
    /// `/sys`.
    pub sys: PathBuf,
    /// `/dev`.
    pub dev: PathBuf,
}

impl Default for HostPaths {
    fn default() -> Self {
        Self {
            sys: PathBuf::from("/sys"),
            dev: PathBuf::from("/dev"),
        }
    }
}

fn link_name(path: &Path) -> Option<String> {
    std::fs::read_link(path)
        .ok()?
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
}

fn read_id(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file))
        .map(|s| s.trim().trim_start_matches("0x").to_string())
        .unwrap_or_else(|_| "?".into())
}

/// Checks that `vf` can be passed through here, short of opening it.
pub fn check_host(vf: &Vf, paths: &HostPaths) -> Result<(), SriovError> {
    let addr = &vf.address;
    let err = |why: String| SriovError {
        index: vf.index,
        name: vf.name.clone(),
        why: format!("VF {addr} from {}: {why}", vf.source),
    };
    if !paths.dev.join("vfio/vfio").exists() {
        return Err(err(format!(
            "this host has no {}: VFIO needs an IOMMU (boot with intel_iommu=on or \
             amd_iommu=on) and the vfio-pci module (modprobe vfio-pci), and the pod needs \
             /dev/vfio",
            paths.dev.join("vfio/vfio").display()
        )));
    }
    let dev = paths.sys.join("bus/pci/devices").join(&addr.0);
    if !dev.exists() {
        return Err(err("no such PCI device on this host".to_string()));
    }
    let driver = link_name(&dev.join("driver"));
    if driver.as_deref() != Some("vfio-pci") {
        let (vendor, device) = (read_id(&dev, "vendor"), read_id(&dev, "device"));
        let unbind = driver.as_ref().map_or(String::new(), |d| {
            format!("echo {addr} > /sys/bus/pci/drivers/{d}/unbind; ")
        });
        let modprobe = if paths.sys.join("bus/pci/drivers/vfio-pci").exists() {
            ""
        } else {
            "modprobe vfio_pci; "
        };
        // driver_override binds this one function whatever vfio-pci already knows; the
        // new_id way of Virtink's guide also takes every unbound function with those IDs
        // and fails for a second function once the ID is known.
        return Err(err(format!(
            "it is bound to {}, not vfio-pci; bind it: {modprobe}\
             echo vfio-pci > /sys/bus/pci/devices/{addr}/driver_override; {unbind}\
             echo {addr} > /sys/bus/pci/drivers_probe\n(Virtink's guide binds by ID instead: \
             {unbind}echo {vendor} {device} > /sys/bus/pci/drivers/vfio-pci/new_id)",
            driver.map_or("no driver".to_string(), |d| format!("driver {d}"))
        )));
    }
    let Some(group) = link_name(&dev.join("iommu_group")) else {
        return Err(err("it has no IOMMU group: the IOMMU is off (boot with \
                        intel_iommu=on or amd_iommu=on)"
            .to_string()));
    };
    let members = std::fs::read_dir(
        paths
            .sys
            .join("kernel/iommu_groups")
            .join(&group)
            .join("devices"),
    )
    .map(|d| {
        d.filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
    })
    .unwrap_or_default();
    let mut blockers = Vec::new();
    for member in members {
        if member == addr.0 {
            continue;
        }
        let mdev = paths.sys.join("bus/pci/devices").join(&member);
        match link_name(&mdev.join("driver")) {
            None => {}
            Some(d) if d == "vfio-pci" || d == "pcieport" => {}
            Some(d) => blockers.push(format!("{member} (driver {d})")),
        }
    }
    if !blockers.is_empty() {
        return Err(err(format!(
            "IOMMU group {group} is not viable: its other devices must be bound to \
             vfio-pci or to no driver: {}",
            blockers.join(", ")
        )));
    }
    if !paths.dev.join("vfio").join(&group).exists() {
        return Err(err(format!(
            "no {} for its IOMMU group",
            paths.dev.join("vfio").join(&group).display()
        )));
    }
    Ok(())
}

/// `RLIMIT_MEMLOCK` below what VFIO needs.
#[derive(Debug, thiserror::Error)]
pub enum MemlockError {
    /// `getrlimit` failed.
    #[error("cannot read RLIMIT_MEMLOCK")]
    Read(#[source] std::io::Error),
    /// Too low, and not raisable.
    #[error(
        "RLIMIT_MEMLOCK is {soft} (hard {hard}) and cannot be raised to guest RAM + 1 GiB = \
         {want} bytes, which VFIO locks for DMA: raise the pod's or shell's memlock limit \
         (ulimit -l), or give vmm CAP_SYS_RESOURCE"
    )]
    TooLow {
        /// The soft limit.
        soft: u64,
        /// The hard limit.
        hard: u64,
        /// What is needed.
        want: u64,
    },
}

/// Raises `RLIMIT_MEMLOCK` to `guest_ram` + 1 GiB, or says why it cannot.
pub fn ensure_memlock(guest_ram: u64) -> Result<(), MemlockError> {
    let want = guest_ram.saturating_add(MEMLOCK_SLACK);
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit for getrlimit to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } != 0 {
        return Err(MemlockError::Read(std::io::Error::last_os_error()));
    }
    if lim.rlim_cur >= want {
        return Ok(());
    }
    let raised = libc::rlimit {
        rlim_cur: want,
        rlim_max: lim.rlim_max.max(want),
    };
    // SAFETY: a valid rlimit; raising the hard limit needs CAP_SYS_RESOURCE and may fail.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &raised) } == 0 {
        return Ok(());
    }
    Err(MemlockError::TooLow {
        soft: lim.rlim_cur,
        hard: lim.rlim_max,
        want,
    })
}

#[cfg(test)]
mod tests;
