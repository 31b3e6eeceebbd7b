//! Validation of a defaulted VirtualMachine.
//!
//! Three sets of rules, all reported together:
//! 1. Virtink's validating webhook (`ValidateVMSpec` and what it calls), rule for rule and with
//!    its messages;
//! 2. what Virtink's CRD schema enforces before the webhook runs (required `spec` and
//!    `instance`, the `runPolicy` and `pageSize` enums);
//! 3. the holes Virtink leaves open, which `vmm` closes because it has no controller to catch
//!    them later: interfaces and networks must pair up by name, every disk needs a volume,
//!    `masquerade` only on the pod network, `sriov` only on a multus network, one pod network
//!    at most, unicast 48-bit MACs, IPv4 masquerade subnets of at least 4 addresses, a
//!    `metadata.name` that can be a host name, and the features `vmm` does not have yet.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use net::{MacAddr, ParseMacError};

use super::defaults::MEMORY_OVERHEAD;
use super::field::{FieldError, FieldPath};
use super::quantity::Quantity;
use super::schema::{
    CloudInit, Cpu, Instance, Interface, Masquerade, Memory, Network, ResourceRequirements,
    VirtualMachine, VirtualMachineSpec, Volume,
};

/// `runPolicy` values (the CRD's enum).
pub const RUN_POLICIES: &[&str] = &["Always", "RerunOnFailure", "Once", "Manual", "Halted"];
/// `hugepages.pageSize` values (the CRD's enum).
pub const HUGEPAGE_SIZES: &[&str] = &["2Mi", "1Gi"];
/// The most vCPUs `vmm` gives a guest: xAPIC IDs stop at 254.
pub const MAX_VCPUS: i64 = 254;
/// Guest RAM must be a whole number of these.
const PAGE_SIZE: i64 = 4096;
/// Forwarded-port protocols.
const PORT_PROTOCOLS: &[&str] = &["TCP", "UDP"];
const NOT_SUPPORTED_YET: &str = "not supported by vmm yet";

type Errors = Vec<FieldError>;

/// Every error in `vm`, which must already be defaulted. Empty when it is valid.
pub fn validate(vm: &VirtualMachine) -> Errors {
    let mut errs = Vec::new();
    validate_name(&vm.metadata.name, &mut errs);
    if let Some(value) = vm.metadata.annotations.get(super::QUEUE_PAIRS_ANNOTATION)
        && super::QueuePairs::parse(value).is_none()
    {
        let path = FieldPath::new("metadata")
            .child("annotations")
            .key(super::QUEUE_PAIRS_ANNOTATION);
        let detail = format!(
            "must be \"vcpus\" or a number from 1 to {}",
            devices::virtio::net::MAX_QUEUE_PAIRS
        );
        errs.push(FieldError::invalid(path, value.as_str(), &detail));
    }
    validate_vhost_net(vm, &mut errs);
    let spec_path = FieldPath::new("spec");
    match &vm.spec {
        None => errs.push(FieldError::required(spec_path, "")),
        Some(spec) => validate_spec(spec, &spec_path, &mut errs),
    }
    errs
}

/// The vhost-net annotation is `true` or `false`, and a vhost-net NIC has one queue pair.
fn validate_vhost_net(vm: &VirtualMachine, errs: &mut Errors) {
    let annotations = &vm.metadata.annotations;
    let Some(value) = annotations.get(super::VHOST_NET_ANNOTATION) else {
        return;
    };
    let path = FieldPath::new("metadata")
        .child("annotations")
        .key(super::VHOST_NET_ANNOTATION);
    if value != "true" && value != "false" {
        errs.push(FieldError::invalid(
            path,
            value.as_str(),
            "must be \"true\" or \"false\"",
        ));
        return;
    }
    let pairs = annotations
        .get(super::QUEUE_PAIRS_ANNOTATION)
        .and_then(|v| super::QueuePairs::parse(v));
    if value == "true" && pairs.is_some_and(|p| p != super::QueuePairs::Count(1)) {
        let detail = format!(
            "a vhost-net NIC has one queue pair: {} must be \"1\" or absent",
            super::QUEUE_PAIRS_ANNOTATION
        );
        errs.push(FieldError::invalid(path, value.as_str(), &detail));
    }
}

/// `metadata.name` names the guest's host name and seeds its default MACs: it must be a
/// DNS-1123 subdomain, as Kubernetes requires of every object name.
fn validate_name(name: &str, errs: &mut Errors) {
    let path = FieldPath::new("metadata").child("name");
    if name.is_empty() {
        errs.push(FieldError::required(
            path,
            "name or generateName is required",
        ));
        return;
    }
    if name.len() > 253 {
        errs.push(FieldError::invalid(
            path.clone(),
            name,
            "must be no more than 253 characters",
        ));
    }
    if !is_dns1123_subdomain(name) {
        errs.push(FieldError::invalid(
            path,
            name,
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, \
             '-' or '.', and must start and end with an alphanumeric character (e.g. \
             'example.com', regex used for validation is \
             '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
        ));
    }
}

fn is_dns1123_subdomain(name: &str) -> bool {
    name.split('.').all(|label| {
        let b = label.as_bytes();
        let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
        !b.is_empty()
            && b.first().is_some_and(alnum)
            && b.last().is_some_and(alnum)
            && b.iter().all(|c| alnum(c) || *c == b'-')
    })
}

fn validate_spec(spec: &VirtualMachineSpec, path: &FieldPath, errs: &mut Errors) {
    if !RUN_POLICIES.contains(&spec.run_policy.as_str()) {
        errs.push(FieldError::not_supported(
            path.child("runPolicy"),
            &spec.run_policy,
            RUN_POLICIES,
        ));
    }
    let instance_path = path.child("instance");
    match &spec.instance {
        None => errs.push(FieldError::required(instance_path, "")),
        Some(instance) => {
            validate_resources(&spec.resources, instance, path, errs);
            validate_instance(instance, &instance_path, errs);
        }
    }
    validate_volumes(&spec.volumes, path, errs);
    validate_networks(&spec.networks, path, errs);
    if let Some(instance) = &spec.instance {
        validate_references(spec, instance, path, errs);
    }
}

/// The webhook's rules for `resources` with dedicated CPUs and with hugepages.
fn validate_resources(
    resources: &ResourceRequirements,
    instance: &Instance,
    spec_path: &FieldPath,
    errs: &mut Errors,
) {
    let zero = Quantity::from_value(0);
    let get = |list: &'_ std::collections::BTreeMap<String, Quantity>, key: &str| {
        list.get(key).cloned().unwrap_or_else(|| zero.clone())
    };
    let requests = |key: &str| get(&resources.requests, key);
    let limits = |key: &str| get(&resources.limits, key);
    let size = instance.memory.size.clone().unwrap_or_else(|| zero.clone());

    if instance.cpu.dedicated_cpu_placement {
        let cpu_request_path = spec_path.child("resources.requests").child("cpu");
        let vcpus = i64::from(instance.cpu.sockets) * i64::from(instance.cpu.cores_per_socket);
        if requests("cpu").is_zero() {
            errs.push(FieldError::required(cpu_request_path, ""));
        } else if requests("cpu").value() != vcpus {
            errs.push(FieldError::invalid(
                cpu_request_path,
                requests("cpu").as_str(),
                "must equal to number of vCPUs",
            ));
        }
        let cpu_limit_path = spec_path.child("resources.limits").child("cpu");
        if limits("cpu").is_zero() {
            errs.push(FieldError::required(cpu_limit_path, ""));
        } else if limits("cpu") != requests("cpu") {
            errs.push(FieldError::invalid(
                cpu_limit_path,
                limits("cpu").as_str(),
                "must equal to CPU request",
            ));
        }
        let memory_request_path = spec_path.child("resources.requests").child("memory");
        let mut required = Quantity::parse(MEMORY_OVERHEAD).unwrap_or_else(|_| zero.clone());
        if instance.memory.hugepages.is_none() {
            required = required.add(&size);
        }
        if requests("memory").is_zero() {
            errs.push(FieldError::required(memory_request_path, ""));
        } else if requests("memory") < required {
            errs.push(FieldError::invalid(
                memory_request_path,
                requests("memory").as_str(),
                &format!("must not be less than {required}"),
            ));
        }
        let memory_limit_path = spec_path.child("resources.limits").child("memory");
        if limits("memory").is_zero() {
            errs.push(FieldError::required(memory_limit_path, ""));
        } else if limits("memory") != requests("memory") {
            errs.push(FieldError::invalid(
                memory_limit_path,
                limits("memory").as_str(),
                "must equal to memory request",
            ));
        }
    }

    if let Some(hugepages) = &instance.memory.hugepages {
        let resources_path = spec_path.child("resources");
        let nothing = ["cpu", "memory"]
            .iter()
            .all(|k| limits(k).is_zero() && requests(k).is_zero());
        if nothing {
            errs.push(FieldError::forbidden(
                resources_path.clone(),
                "hugepages require cpu or memory",
            ));
        }
        let key = format!("hugepages-{}", hugepages.page_size);
        let request_path = resources_path.child("requests").child(&key);
        let request = resources.requests.get(&key);
        match request {
            None => errs.push(FieldError::required(request_path, "")),
            Some(q) if *q != size => errs.push(FieldError::invalid(
                request_path,
                q.as_str(),
                "must equal to instance memory size",
            )),
            Some(_) => {}
        }
        let limit_path = resources_path.child("limits").child(&key);
        match resources.limits.get(&key) {
            None => errs.push(FieldError::required(limit_path, "")),
            Some(q) if Some(q) != request => errs.push(FieldError::invalid(
                limit_path,
                q.as_str(),
                "must equal to hugepages request",
            )),
            Some(_) => {}
        }
    }
}

fn validate_instance(instance: &Instance, path: &FieldPath, errs: &mut Errors) {
    validate_cpu(&instance.cpu, &path.child("cpu"), errs);
    validate_memory(&instance.memory, &path.child("memory"), errs);
    if let Some(kernel) = &instance.kernel {
        let kernel_path = path.child("kernel");
        if kernel.image.is_empty() {
            errs.push(FieldError::required(kernel_path.child("image"), ""));
        }
        if kernel.cmdline.is_empty() {
            errs.push(FieldError::required(kernel_path.child("cmdline"), ""));
        }
    } else if instance.disks.is_empty() {
        // Without a kernel the first disk boots: there must be one.
        errs.push(FieldError::required(
            path.child("kernel"),
            "a VM without disks needs a kernel",
        ));
    }
    let mut disk_names = HashSet::new();
    for (i, disk) in instance.disks.iter().enumerate() {
        let disk_path = path.child("disks").index(i);
        if !disk_names.insert(disk.name.as_str()) {
            errs.push(FieldError::duplicate(disk_path.child("name"), &disk.name));
        }
        if disk.name.is_empty() {
            errs.push(FieldError::required(disk_path.child("name"), ""));
        }
    }
    if instance.file_systems.is_some() {
        errs.push(FieldError::forbidden(
            path.child("fileSystems"),
            NOT_SUPPORTED_YET,
        ));
    }
    let mut iface_names = HashSet::new();
    let mut macs: HashMap<MacAddr, usize> = HashMap::new();
    for (i, iface) in instance.interfaces.iter().enumerate() {
        let iface_path = path.child("interfaces").index(i);
        if !iface_names.insert(iface.name.as_str()) {
            errs.push(FieldError::duplicate(iface_path.child("name"), &iface.name));
        }
        if let Some(mac) = validate_interface(iface, &iface_path, errs)
            && macs.insert(mac, i).is_some()
        {
            errs.push(FieldError::duplicate(iface_path.child("mac"), &iface.mac));
        }
    }
}

fn validate_cpu(cpu: &Cpu, path: &FieldPath, errs: &mut Errors) {
    if cpu.sockets == 0 {
        errs.push(FieldError::required(path.child("sockets"), ""));
    }
    if cpu.cores_per_socket == 0 {
        errs.push(FieldError::required(path.child("coresPerSocket"), ""));
    }
    let vcpus = i64::from(cpu.sockets) * i64::from(cpu.cores_per_socket);
    if vcpus > MAX_VCPUS {
        errs.push(FieldError::invalid(
            path.clone(),
            vcpus,
            &format!("sockets × coresPerSocket must not exceed {MAX_VCPUS} vCPUs"),
        ));
    }
}

fn validate_memory(memory: &Memory, path: &FieldPath, errs: &mut Errors) {
    let size_path = path.child("size");
    let size = memory.size.as_ref().map_or(0, Quantity::value);
    if size <= 0 {
        errs.push(FieldError::invalid(
            size_path.clone(),
            size,
            "must be greater than 0",
        ));
    } else if size % PAGE_SIZE != 0 {
        errs.push(FieldError::invalid(
            size_path.clone(),
            size,
            "must be a multiple of 4Ki",
        ));
    }
    let Some(hugepages) = &memory.hugepages else {
        return;
    };
    let page_size_path = path.child("hugepages").child("pageSize");
    if !HUGEPAGE_SIZES.contains(&hugepages.page_size.as_str()) {
        errs.push(FieldError::not_supported(
            page_size_path,
            &hugepages.page_size,
            HUGEPAGE_SIZES,
        ));
        return;
    }
    let page = Quantity::parse(&hugepages.page_size).map_or(1, |q| q.value());
    if size > 0 && size % page != 0 {
        errs.push(FieldError::invalid(
            size_path,
            size,
            &format!(
                "{size} is not positive integer multiple of {}",
                hugepages.page_size
            ),
        ));
    }
}

/// Checks one interface; returns its MAC when that is valid, for the duplicate check.
fn validate_interface(iface: &Interface, path: &FieldPath, errs: &mut Errors) -> Option<MacAddr> {
    if iface.name.is_empty() {
        errs.push(FieldError::required(path.child("name"), ""));
    }
    let mac = validate_mac(&iface.mac, &path.child("mac"), errs);

    let methods: [(&str, bool); 5] = [
        ("bridge", iface.bridge.is_some()),
        ("masquerade", iface.masquerade.is_some()),
        ("sriov", iface.sriov.is_some()),
        ("vdpa", iface.vdpa.is_some()),
        ("vhostUser", iface.vhost_user.is_some()),
    ];
    let mut count = 0;
    for (name, present) in methods {
        if !present {
            continue;
        }
        count += 1;
        if count > 1 {
            errs.push(FieldError::forbidden(
                path.child(name),
                "may not specify more than 1 binding method",
            ));
            continue;
        }
        match name {
            "masquerade" => {
                if let Some(m) = &iface.masquerade {
                    validate_masquerade(m, &path.child("masquerade"), errs);
                }
            }
            "vdpa" | "vhostUser" => {
                errs.push(FieldError::forbidden(path.child(name), NOT_SUPPORTED_YET));
            }
            _ => {}
        }
    }
    if count == 0 {
        errs.push(FieldError::required(
            path.clone(),
            "at least 1 binding method is required",
        ));
    }
    mac
}

fn validate_mac(mac: &str, path: &FieldPath, errs: &mut Errors) -> Option<MacAddr> {
    if mac.is_empty() {
        errs.push(FieldError::required(path.clone(), ""));
    }
    match mac.parse::<MacAddr>() {
        Err(e @ ParseMacError::Invalid(_)) => {
            errs.push(FieldError::invalid(path.clone(), mac, &e.to_string()));
            None
        }
        Err(ParseMacError::NotEthernet(_)) => {
            errs.push(FieldError::invalid(
                path.clone(),
                mac,
                "must be a 48-bit Ethernet MAC address",
            ));
            None
        }
        Ok(addr) if !addr.is_unicast() => {
            let why = if addr.is_zero() {
                "must not be all zeros"
            } else {
                "must be a unicast address (the least significant bit of the first octet must be 0)"
            };
            errs.push(FieldError::invalid(path.clone(), mac, why));
            None
        }
        Ok(addr) => Some(addr),
    }
}

fn validate_masquerade(m: &Masquerade, path: &FieldPath, errs: &mut Errors) {
    validate_cidr(&m.cidr, 4, &path.child("cidr"), errs);
    if !m.ipv6_cidr.is_empty() {
        validate_ipv6_cidr(&m.ipv6_cidr, &path.child("ipv6Cidr"), errs);
    }
    let Some(ports) = &m.ports else {
        return;
    };
    let mut seen = HashSet::new();
    for (i, port) in ports.iter().enumerate() {
        let port_path = path.child("ports").index(i);
        if !(1..=65535).contains(&port.port) {
            errs.push(FieldError::invalid(
                port_path.child("port"),
                port.port,
                "must be between 1 and 65535, inclusive",
            ));
        }
        if !PORT_PROTOCOLS.contains(&port.protocol.as_str()) {
            errs.push(FieldError::not_supported(
                port_path.child("protocol"),
                &port.protocol,
                PORT_PROTOCOLS,
            ));
        } else if !seen.insert((port.port, port.protocol.as_str())) {
            errs.push(FieldError::duplicate(
                port_path,
                format!("{}/{}", port.port, port.protocol).as_str(),
            ));
        }
    }
}

/// Virtink's `ValidateCIDR`, including its quirk of reporting both the parse error and "must
/// specify subnet" for an unparsable CIDR; plus `vmm`'s rule that the subnet is IPv4.
fn validate_cidr(cidr: &str, capacity: u32, path: &FieldPath, errs: &mut Errors) {
    if cidr.is_empty() {
        errs.push(FieldError::required(path.clone(), ""));
        return;
    }
    match parse_cidr(cidr) {
        None => {
            errs.push(FieldError::invalid(
                path.clone(),
                cidr,
                &format!("invalid CIDR address: {cidr}"),
            ));
            errs.push(FieldError::invalid(
                path.clone(),
                cidr,
                "must specify subnet",
            ));
        }
        Some((addr, prefix)) => {
            let bits = if addr.is_ipv4() { 32 } else { 128 };
            let host_bits = bits - prefix;
            if host_bits < 32 && (1u32 << host_bits) < capacity {
                errs.push(FieldError::invalid(
                    path.clone(),
                    cidr,
                    &format!("must contain at least {capacity} IPs"),
                ));
            }
            match addr {
                IpAddr::V4(a) => {
                    let first = a.octets()[0];
                    if a.is_loopback() || a.is_multicast() || first == 0 || first >= 240 {
                        errs.push(FieldError::invalid(
                            path.clone(),
                            cidr,
                            "must be a unicast range: the gateway and the guest take addresses in it",
                        ));
                    }
                }
                IpAddr::V6(_) => errs.push(FieldError::invalid(
                    path.clone(),
                    cidr,
                    "must be an IPv4 CIDR: the masquerade network is IPv4",
                )),
            }
        }
    }
}

/// `masquerade.ipv6Cidr`: an IPv6 subnet with room for the gateway and the guest, no wider
/// than a /64.
fn validate_ipv6_cidr(cidr: &str, path: &FieldPath, errs: &mut Errors) {
    match parse_cidr(cidr) {
        Some((IpAddr::V6(a), 64..=126)) => {
            let s = a.segments();
            let special = a.is_multicast()
                || s[..6] == [0; 6] // ::/96: ::1 and IPv4-compatible
                || (s[..5] == [0; 5] && s[5] == 0xffff) // IPv4-mapped
                || s[0] & 0xffc0 == 0xfe80; // link-local
            if special {
                errs.push(FieldError::invalid(
                    path.clone(),
                    cidr,
                    "must be a global or unique local unicast range, such as fd10:0:2::/120",
                ));
            }
        }
        Some((IpAddr::V6(_), _)) => errs.push(FieldError::invalid(
            path.clone(),
            cidr,
            "the prefix length must be 64 to 126",
        )),
        Some((IpAddr::V4(_), _)) => errs.push(FieldError::invalid(
            path.clone(),
            cidr,
            "must be an IPv6 CIDR such as fd10:0:2::/120",
        )),
        None => errs.push(FieldError::invalid(
            path.clone(),
            cidr,
            &format!("invalid CIDR address: {cidr}"),
        )),
    }
}

/// `a.b.c.d/n` or `x::y/n` as Go's `net.ParseCIDR` accepts them.
pub fn parse_cidr(cidr: &str) -> Option<(IpAddr, u32)> {
    let (addr, prefix) = cidr.split_once('/')?;
    let addr: IpAddr = addr.parse().ok()?;
    if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) || prefix.len() > 3 {
        return None;
    }
    let prefix: u32 = prefix.parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    (prefix <= max).then_some((addr, prefix))
}

fn validate_volumes(volumes: &[Volume], spec_path: &FieldPath, errs: &mut Errors) {
    let mut names = HashSet::new();
    for (i, volume) in volumes.iter().enumerate() {
        let path = spec_path.child("volumes").index(i);
        if !names.insert(volume.name.as_str()) {
            errs.push(FieldError::duplicate(path.child("name"), &volume.name));
        }
        if volume.name.is_empty() {
            errs.push(FieldError::required(path.child("name"), ""));
        }
        validate_volume_source(volume, &path, errs);
    }
}

fn validate_volume_source(volume: &Volume, path: &FieldPath, errs: &mut Errors) {
    let sources: [(&str, bool); 5] = [
        ("containerDisk", volume.container_disk.is_some()),
        ("cloudInit", volume.cloud_init.is_some()),
        ("containerRootfs", volume.container_rootfs.is_some()),
        (
            "persistentVolumeClaim",
            volume.persistent_volume_claim.is_some(),
        ),
        ("dataVolume", volume.data_volume.is_some()),
    ];
    let mut count = 0;
    for (name, present) in sources {
        if !present {
            continue;
        }
        count += 1;
        let source_path = path.child(name);
        if count > 1 {
            errs.push(FieldError::forbidden(
                source_path,
                "may not specify more than 1 volume source",
            ));
            continue;
        }
        let mut require = |value: &str, field: &str| {
            if value.is_empty() {
                errs.push(FieldError::required(source_path.child(field), ""));
            }
        };
        match name {
            "containerDisk" => {
                require(
                    volume.container_disk.as_ref().map_or("", |s| &s.image),
                    "image",
                );
            }
            "containerRootfs" => {
                let source = volume.container_rootfs.as_ref();
                require(source.map_or("", |s| &s.image), "image");
                let size = source
                    .and_then(|s| s.size.as_ref())
                    .map_or(0, Quantity::value);
                if size <= 0 {
                    errs.push(FieldError::invalid(
                        source_path.child("size"),
                        size,
                        "must be greater than 0",
                    ));
                }
            }
            "persistentVolumeClaim" => {
                let claim = volume.persistent_volume_claim.as_ref();
                require(claim.map_or("", |s| &s.claim_name), "claimName");
            }
            "dataVolume" => {
                let dv = volume.data_volume.as_ref();
                require(dv.map_or("", |s| &s.volume_name), "volumeName");
            }
            "cloudInit" => {
                if let Some(ci) = &volume.cloud_init {
                    validate_cloud_init(ci, &source_path, errs);
                }
            }
            _ => {}
        }
    }
    if count == 0 {
        errs.push(FieldError::required(
            path.clone(),
            "at least 1 volume source is required",
        ));
    }
}

fn validate_cloud_init(ci: &CloudInit, path: &FieldPath, errs: &mut Errors) {
    let groups: [(&str, [(&str, &str); 3]); 2] = [
        (
            "user data",
            [
                ("userData", &ci.user_data),
                ("userDataBase64", &ci.user_data_base64),
                ("userDataSecretName", &ci.user_data_secret_name),
            ],
        ),
        (
            "network data",
            [
                ("networkData", &ci.network_data),
                ("networkDataBase64", &ci.network_data_base64),
                ("networkDataSecretName", &ci.network_data_secret_name),
            ],
        ),
    ];
    for (what, fields) in groups {
        let mut count = 0;
        for (field, value) in fields {
            if value.is_empty() {
                continue;
            }
            if field.ends_with("Base64") && crate::disk::seed::decode(value).is_none() {
                let shown = if value.len() > 40 {
                    format!("{}...", &value[..value.floor_char_boundary(40)])
                } else {
                    value.to_string()
                };
                errs.push(FieldError::invalid(
                    path.child(field),
                    shown.as_str(),
                    "not valid base64",
                ));
            }
            count += 1;
            if count > 1 {
                errs.push(FieldError::forbidden(
                    path.child(field),
                    &format!("may not specify more than 1 {what}"),
                ));
            }
        }
    }
}

fn validate_networks(networks: &[Network], spec_path: &FieldPath, errs: &mut Errors) {
    let mut names = HashSet::new();
    let mut pod_networks = 0;
    for (i, network) in networks.iter().enumerate() {
        let path = spec_path.child("networks").index(i);
        if !names.insert(network.name.as_str()) {
            errs.push(FieldError::duplicate(path.child("name"), &network.name));
        }
        if network.name.is_empty() {
            errs.push(FieldError::required(path.child("name"), ""));
        }
        let mut count = 0;
        if network.pod.is_some() {
            count += 1;
            pod_networks += 1;
            if pod_networks > 1 {
                errs.push(FieldError::forbidden(
                    path.child("pod"),
                    "may not specify more than 1 pod network",
                ));
            }
        }
        if let Some(multus) = &network.multus {
            count += 1;
            if count > 1 {
                errs.push(FieldError::forbidden(
                    path.child("multus"),
                    "may not specify more than 1 network source",
                ));
            } else if multus.network_name.is_empty() {
                errs.push(FieldError::required(
                    path.child("multus").child("networkName"),
                    "",
                ));
            }
        }
        if count == 0 {
            errs.push(FieldError::required(
                path,
                "at least 1 network source is required",
            ));
        }
    }
}

/// The cross-references Virtink leaves to its controller: interface ↔ network, disk → volume,
/// and which binding goes with which kind of network.
fn validate_references(
    spec: &VirtualMachineSpec,
    instance: &Instance,
    spec_path: &FieldPath,
    errs: &mut Errors,
) {
    let networks: HashMap<&str, &Network> =
        spec.networks.iter().map(|n| (n.name.as_str(), n)).collect();
    let iface_path = spec_path.child("instance").child("interfaces");
    for (i, iface) in instance.interfaces.iter().enumerate() {
        let path = iface_path.index(i);
        let Some(network) = networks.get(iface.name.as_str()) else {
            if !iface.name.is_empty() {
                errs.push(FieldError::invalid(
                    path.child("name"),
                    &iface.name,
                    "must match the name of a network in spec.networks",
                ));
            }
            continue;
        };
        if iface.masquerade.is_some() && network.pod.is_none() {
            errs.push(FieldError::forbidden(
                path.child("masquerade"),
                "may only be used with a pod network",
            ));
        }
        if iface.sriov.is_some() && network.multus.is_none() {
            errs.push(FieldError::forbidden(
                path.child("sriov"),
                "may only be used with a multus network",
            ));
        }
    }
    let iface_names: HashSet<&str> = instance
        .interfaces
        .iter()
        .map(|i| i.name.as_str())
        .collect();
    for (i, network) in spec.networks.iter().enumerate() {
        if !network.name.is_empty() && !iface_names.contains(network.name.as_str()) {
            errs.push(FieldError::invalid(
                spec_path.child("networks").index(i).child("name"),
                &network.name,
                "must match the name of an interface in spec.instance.interfaces",
            ));
        }
    }
    let volumes: HashSet<&str> = spec.volumes.iter().map(|v| v.name.as_str()).collect();
    for (i, disk) in instance.disks.iter().enumerate() {
        if !disk.name.is_empty() && !volumes.contains(disk.name.as_str()) {
            errs.push(FieldError::invalid(
                spec_path
                    .child("instance")
                    .child("disks")
                    .index(i)
                    .child("name"),
                &disk.name,
                "must match the name of a volume in spec.volumes",
            ));
        }
    }
}
