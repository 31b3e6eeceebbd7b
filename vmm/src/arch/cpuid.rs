//! CPUID for each vCPU: what KVM supports, with the topology `vmm` chooses.
//!
//! APIC IDs encode the topology as the guest decodes it: the low `core_bits` bits are the core
//! within the socket, the bits above them the socket (one thread per core, so no SMT bits).
//! With 3 cores per socket `core_bits` is 2 and socket 1's cores are APIC IDs 4, 5 and 6.
//!
//! The same topology is written into every leaf Linux may read it from, so Intel and AMD
//! guests agree: leaf 1 (APIC ID, logical count), leaf 4 (cores per package, cache sharing),
//! leaves 0xB/0x1F (extended topology, Intel), 0x8000_0008 (core count and APIC ID bits,
//! AMD). AMD's TOPOEXT (leaf 0x8000_001E) is hidden, so the guest falls back to 0x8000_0008.

use kvm_bindings::kvm_cpuid_entry2;

use crate::config::CpuTopology;

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
const LEAF_V2_EXT_TOPOLOGY: u32 = 0x1f;
const LEAF_EXT_FEATURES: u32 = 0x8000_0001;
const LEAF_AMD_SIZE: u32 = 0x8000_0008;

const ECX_HYPERVISOR: u32 = 1 << 31;
const ECX_TSC_DEADLINE: u32 = 1 << 24;
const EDX_HTT: u32 = 1 << 28;
const AMD_ECX_CMP_LEGACY: u32 = 1 << 1;
const AMD_ECX_TOPOEXT: u32 = 1 << 22;
/// `KVM_CPUID_FLAG_SIGNIFCANT_INDEX`: the entry depends on the subleaf in ECX.
const FLAG_SIGNIFICANT_INDEX: u32 = 1;

const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

/// The topology as APIC-ID bit fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Topology {
    /// Sockets.
    pub sockets: u32,
    /// Cores per socket.
    pub cores: u32,
    /// Bits of the APIC ID that number the core within its socket.
    pub core_bits: u32,
}

impl Topology {
    /// The APIC-ID layout of `t`.
    pub fn new(t: CpuTopology) -> Self {
        let cores = t.cores_per_socket.max(1);
        Self {
            sockets: t.sockets.max(1),
            cores,
            core_bits: cores.next_power_of_two().trailing_zeros(),
        }
    }

    /// The APIC ID of vCPU `index` (vCPUs are numbered socket by socket).
    pub fn apic_id(&self, index: u32) -> u32 {
        let socket = index / self.cores;
        let core = index % self.cores;
        (socket << self.core_bits) | core
    }

    /// APIC IDs of all vCPUs, in vCPU order; the first is the boot CPU.
    pub fn apic_ids(&self) -> Vec<u32> {
        (0..self.sockets * self.cores)
            .map(|i| self.apic_id(i))
            .collect()
    }
}

/// Patches `entries` (what `KVM_GET_SUPPORTED_CPUID` gave) for the vCPU with `apic_id`.
///
/// `tsc_deadline` says KVM's in-kernel LAPIC has the TSC-deadline timer mode
/// (`KVM_CAP_TSC_DEADLINE_TIMER`). KVM leaves the bit out of its supported CPUID because the
/// timer lives in the irqchip, so the VMM sets it. Without it Linux arms its timer through
/// the LAPIC's one-shot count (TMICT), which KVM emulates with more work per tick.
pub fn patch(
    entries: &mut Vec<kvm_cpuid_entry2>,
    topo: &Topology,
    apic_id: u32,
    tsc_deadline: bool,
) {
    let logical_per_package = 1u32 << topo.core_bits;
    let max_basic = entries
        .iter()
        .find(|e| e.function == 0)
        .map_or(0, |e| e.eax);
    for e in entries.iter_mut() {
        match e.function {
            LEAF_FEATURES => {
                e.ebx =
                    (e.ebx & 0x0000_ffff) | (apic_id << 24) | ((logical_per_package & 0xff) << 16);
                e.ecx |= ECX_HYPERVISOR;
                if tsc_deadline {
                    e.ecx |= ECX_TSC_DEADLINE;
                }
                if topo.cores > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            LEAF_CACHE_PARAMS => {
                let cache_level = (e.eax >> 5) & 0x7;
                // Threads sharing this cache: one core for L1/L2, the whole socket for L3.
                let sharing = if cache_level >= 3 {
                    logical_per_package - 1
                } else {
                    0
                };
                let cores_field = (logical_per_package - 1) & 0x3f;
                let cache_type = e.eax & 0x1f;
                e.eax = if cache_type == 0 {
                    0
                } else {
                    (e.eax & 0x3fff) | ((sharing & 0xfff) << 14) | (cores_field << 26)
                };
            }
            LEAF_EXT_FEATURES => {
                if topo.cores > 1 {
                    e.ecx |= AMD_ECX_CMP_LEGACY;
                } else {
                    e.ecx &= !AMD_ECX_CMP_LEGACY;
                }
                e.ecx &= !AMD_ECX_TOPOEXT;
            }
            LEAF_AMD_SIZE => {
                e.ecx = (e.ecx & !0xf0ff) | ((topo.core_bits & 0xf) << 12) | (topo.cores - 1);
            }
            _ => {}
        }
    }
    // The extended topology leaves are rebuilt whole: KVM's entries describe the host.
    let had_v2 = entries.iter().any(|e| e.function == LEAF_V2_EXT_TOPOLOGY);
    entries.retain(|e| e.function != LEAF_EXT_TOPOLOGY && e.function != LEAF_V2_EXT_TOPOLOGY);
    if max_basic >= LEAF_EXT_TOPOLOGY {
        entries.extend(topology_leaf(LEAF_EXT_TOPOLOGY, topo, apic_id));
    }
    if had_v2 && max_basic >= LEAF_V2_EXT_TOPOLOGY {
        entries.extend(topology_leaf(LEAF_V2_EXT_TOPOLOGY, topo, apic_id));
    }
}

/// Subleaves 0 (SMT), 1 (core) and 2 (terminator) of leaf 0xB or 0x1F.
fn topology_leaf(function: u32, topo: &Topology, apic_id: u32) -> [kvm_cpuid_entry2; 3] {
    let entry = |index: u32, eax: u32, ebx: u32, level_type: u32| kvm_cpuid_entry2 {
        function,
        index,
        flags: FLAG_SIGNIFICANT_INDEX,
        eax,
        ebx,
        ecx: (level_type << 8) | index,
        edx: apic_id,
        ..Default::default()
    };
    [
        entry(0, 0, 1, LEVEL_SMT),
        entry(1, topo.core_bits, topo.cores, LEVEL_CORE),
        entry(2, 0, 0, 0),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topo(sockets: u32, cores: u32) -> Topology {
        Topology::new(CpuTopology {
            sockets,
            cores_per_socket: cores,
        })
    }

    fn leaf(function: u32, index: u32, eax: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax,
            ..Default::default()
        }
    }

    #[test]
    fn apic_ids_pack_cores_under_sockets() {
        assert_eq!(topo(1, 1).apic_ids(), vec![0]);
        assert_eq!(topo(1, 2).apic_ids(), vec![0, 1]);
        assert_eq!(topo(2, 1).apic_ids(), vec![0, 1]);
        assert_eq!(topo(2, 3).apic_ids(), vec![0, 1, 2, 4, 5, 6]);
        assert_eq!(topo(2, 3).core_bits, 2);
    }

    #[test]
    fn leaf_1_and_0xb_carry_the_topology() {
        let t = topo(2, 3);
        let mut entries = vec![
            leaf(0, 0, 0xd),
            leaf(1, 0, 0),
            leaf(0xb, 0, 0x1),
            leaf(0xb, 1, 0x4),
        ];
        patch(&mut entries, &t, 5, true);
        let l1 = entries.iter().find(|e| e.function == 1).unwrap();
        assert_eq!(l1.ebx >> 24, 5);
        assert_eq!((l1.ebx >> 16) & 0xff, 4);
        assert_ne!(l1.edx & EDX_HTT, 0);
        assert_ne!(l1.ecx & ECX_HYPERVISOR, 0);
        assert_ne!(l1.ecx & ECX_TSC_DEADLINE, 0, "TSC-deadline timer offered");
        let xt: Vec<_> = entries.iter().filter(|e| e.function == 0xb).collect();
        assert_eq!(xt.len(), 3);
        assert_eq!((xt[0].eax, xt[0].ebx, xt[0].ecx >> 8), (0, 1, LEVEL_SMT));
        assert_eq!((xt[1].eax, xt[1].ebx, xt[1].ecx >> 8), (2, 3, LEVEL_CORE));
        assert_eq!(xt[2].ecx >> 8, 0);
        assert!(xt.iter().all(|e| e.edx == 5));
    }

    #[test]
    fn no_0xb_when_the_cpu_has_no_such_leaf() {
        let mut entries = vec![leaf(0, 0, 0x7), leaf(1, 0, 0)];
        patch(&mut entries, &topo(1, 2), 1, false);
        assert!(entries.iter().all(|e| e.function != 0xb));
    }

    #[test]
    fn leaf_4_counts_cores_and_l3_sharing() {
        let mut entries = vec![
            leaf(0, 0, 0x4),
            leaf(4, 0, (1 << 5) | 1),
            leaf(4, 2, (3 << 5) | 3),
            leaf(4, 3, 0),
        ];
        patch(&mut entries, &topo(1, 4), 0, false);
        let l4: Vec<_> = entries.iter().filter(|e| e.function == 4).collect();
        assert_eq!(l4[0].eax >> 26, 3);
        assert_eq!((l4[0].eax >> 14) & 0xfff, 0);
        assert_eq!((l4[1].eax >> 14) & 0xfff, 3);
        assert_eq!(l4[2].eax, 0, "terminator stays a terminator");
    }

    #[test]
    fn amd_leaves_count_cores_and_hide_topoext() {
        let mut entries = vec![
            leaf(0, 0, 0xd),
            kvm_cpuid_entry2 {
                function: LEAF_EXT_FEATURES,
                ecx: AMD_ECX_TOPOEXT,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: LEAF_AMD_SIZE,
                ecx: 0xffff_ffff,
                ..Default::default()
            },
        ];
        patch(&mut entries, &topo(2, 4), 4, false);
        let ext = entries
            .iter()
            .find(|e| e.function == LEAF_EXT_FEATURES)
            .unwrap();
        assert_eq!(ext.ecx & AMD_ECX_TOPOEXT, 0);
        assert_ne!(ext.ecx & AMD_ECX_CMP_LEGACY, 0);
        let size = entries
            .iter()
            .find(|e| e.function == LEAF_AMD_SIZE)
            .unwrap();
        assert_eq!(size.ecx & 0xff, 3);
        assert_eq!((size.ecx >> 12) & 0xf, 2);
        assert_eq!(size.ecx & 0xffff_0000, 0xffff_0000, "other bits kept");
    }
}
