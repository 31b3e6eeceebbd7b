//! Defaulting, as Virtink's mutating webhook and CRD defaults do it, with one difference: a
//! missing `mac` is derived from the VM and interface names instead of drawn at random, so it
//! is the same on every run.

use net::MacAddr;

use super::quantity::Quantity;
use super::schema::{Empty, Hugepages, Interface, VirtualMachine, VirtualMachineSpec};

/// The default `runPolicy`.
pub const DEFAULT_RUN_POLICY: &str = "Once";
/// The default `masquerade.cidr`.
pub const DEFAULT_MASQUERADE_CIDR: &str = "10.0.2.0/30";
/// The guest's IPv6 subnet when `masquerade.ipv6Cidr` is not given (KubeVirt's). It is not
/// written into the manifest: a Virtink manifest prints back as it was.
pub const DEFAULT_MASQUERADE_IPV6_CIDR: &str = "fd10:0:2::/120";
/// The default `hugepages.pageSize` (the CRD's default).
pub const DEFAULT_HUGEPAGE_SIZE: &str = "1Gi";
/// The default memory size when neither `memory.size` nor a memory request is given.
pub const DEFAULT_MEMORY: &str = "1Gi";
/// What Virtink adds to guest RAM for the pod's memory request with dedicated CPUs.
pub const MEMORY_OVERHEAD: &str = "256Mi";

/// Fills in every default of `vm` in place.
pub fn apply(vm: &mut VirtualMachine) {
    if vm.metadata.name.is_empty() && !vm.metadata.generate_name.is_empty() {
        vm.metadata.name = generated_name(&vm.metadata.generate_name);
    }
    let name = vm.metadata.name.clone();
    let Some(spec) = vm.spec.as_mut() else {
        return;
    };
    if spec.run_policy.is_empty() {
        spec.run_policy = DEFAULT_RUN_POLICY.to_string();
    }
    default_instance(spec);
    default_resources(spec);
    if let Some(instance) = spec.instance.as_mut() {
        for iface in &mut instance.interfaces {
            default_interface(&name, iface);
        }
    }
}

/// The name for `metadata.generateName` alone, as the API server makes one: the prefix (cut
/// to 58 bytes) and five characters from its alphabet, here derived from the prefix rather
/// than drawn at random, so that the name, and the MACs derived from it, are the same on
/// every run.
pub fn generated_name(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    const MAX_PREFIX: usize = 58;
    let mut cut = prefix.len().min(MAX_PREFIX);
    while !prefix.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in prefix.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let mut name = prefix[..cut].to_string();
    for _ in 0..5 {
        let len = ALPHABET.len() as u64;
        name.push(char::from(
            ALPHABET[usize::try_from(hash % len).unwrap_or(0)],
        ));
        hash /= len;
    }
    name
}

fn default_instance(spec: &mut VirtualMachineSpec) {
    let memory_request = spec.resources.requests.get("memory").cloned();
    // A missing instance stays missing: validation reports it as required.
    let Some(instance) = spec.instance.as_mut() else {
        return;
    };
    if instance.cpu.sockets == 0 {
        instance.cpu.sockets = 1;
    }
    if instance.cpu.cores_per_socket == 0 {
        instance.cpu.cores_per_socket = 1;
    }
    let size_is_zero = instance.memory.size.as_ref().is_none_or(Quantity::is_zero);
    if size_is_zero {
        let size = match memory_request {
            Some(q) if !q.is_zero() => q,
            _ => parse(DEFAULT_MEMORY),
        };
        instance.memory.size = Some(size);
    }
    if let Some(Hugepages { page_size }) = instance.memory.hugepages.as_mut()
        && page_size.is_empty()
    {
        *page_size = DEFAULT_HUGEPAGE_SIZE.to_string();
    }
}

/// Virtink sizes the pod's resources for dedicated CPUs and hugepages; the validation rules
/// then check them, so the defaults must be there for a manifest that gives none.
fn default_resources(spec: &mut VirtualMachineSpec) {
    let Some(instance) = spec.instance.as_ref() else {
        return;
    };
    let size = instance
        .memory
        .size
        .clone()
        .unwrap_or_else(|| parse(DEFAULT_MEMORY));
    let resources = &mut spec.resources;
    if instance.cpu.dedicated_cpu_placement {
        let vcpus = i64::from(instance.cpu.sockets) * i64::from(instance.cpu.cores_per_socket);
        let cpu = parse(&vcpus.to_string());
        let mut memory = parse(MEMORY_OVERHEAD);
        if instance.memory.hugepages.is_none() {
            memory = memory.add(&size);
        }
        for list in [&mut resources.requests, &mut resources.limits] {
            default_if_zero(list, "cpu", &cpu);
            default_if_zero(list, "memory", &memory);
        }
    }
    if let Some(hugepages) = instance.memory.hugepages.as_ref() {
        let key = format!("hugepages-{}", hugepages.page_size);
        let limit = resources
            .limits
            .entry(key.clone())
            .or_insert_with(|| size.clone())
            .clone();
        resources.requests.entry(key).or_insert(limit);
        let all_zero = ["cpu", "memory"].iter().all(|k| {
            resources.limits.get(*k).is_none_or(Quantity::is_zero)
                && resources.requests.get(*k).is_none_or(Quantity::is_zero)
        });
        if all_zero {
            resources
                .requests
                .insert("memory".to_string(), parse(MEMORY_OVERHEAD));
        }
    }
}

fn default_if_zero(
    list: &mut std::collections::BTreeMap<String, Quantity>,
    key: &str,
    value: &Quantity,
) {
    if list.get(key).is_none_or(Quantity::is_zero) {
        list.insert(key.to_string(), value.clone());
    }
}

fn default_interface(vm_name: &str, iface: &mut Interface) {
    if iface.mac.is_empty() {
        iface.mac = MacAddr::derived(vm_name, &iface.name).to_string();
    }
    let has_binding = iface.bridge.is_some()
        || iface.masquerade.is_some()
        || iface.sriov.is_some()
        || iface.vdpa.is_some()
        || iface.vhost_user.is_some();
    if !has_binding {
        iface.bridge = Some(Empty {});
    }
    if let Some(masquerade) = iface.masquerade.as_mut() {
        if masquerade.cidr.is_empty() {
            masquerade.cidr = DEFAULT_MASQUERADE_CIDR.to_string();
        }
        if let Some(ports) = masquerade.ports.as_mut() {
            for port in ports {
                if port.protocol.is_empty() {
                    port.protocol = "TCP".to_string();
                }
            }
        }
    }
}

fn parse(text: &str) -> Quantity {
    // The constants and integers passed here are valid quantities; fall back to zero rather
    // than panic should one ever not be.
    Quantity::parse(text).unwrap_or_else(|_| Quantity::from_value(0))
}
