//! Guest RAM: anonymous mappings (or hugetlb pages when the manifest asks for hugepages),
//! one per contiguous guest-physical range, registered with KVM as memory slots.

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{
    GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap,
    MmapRegion,
};

use crate::arch::layout::ram_ranges;

const MAP_HUGE_SHIFT: i32 = 26;

/// Why guest RAM cannot be set up. Both mean exit code 2.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The mapping failed.
    #[error("cannot allocate {size_mib} MiB of guest RAM{hint}")]
    Allocate {
        /// Size of the failed mapping in MiB.
        size_mib: u64,
        /// What to check.
        hint: String,
        /// The mmap error.
        #[source]
        source: vm_memory::mmap::MmapRegionError,
    },
    /// KVM refused a memory slot.
    #[error("KVM refused guest RAM at {addr:#x}")]
    Slot {
        /// Guest-physical start of the slot.
        addr: u64,
        /// The ioctl error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Internal: the regions did not form a valid guest memory.
    #[error("guest RAM layout: {0}")]
    Layout(String),
}

/// Maps `size` bytes of guest RAM, backed by hugepages of `hugepage_size` bytes if given.
pub fn create(size: u64, hugepage_size: Option<u64>) -> Result<GuestMemoryMmap, MemoryError> {
    let mut regions = Vec::new();
    for range in ram_ranges(size) {
        let len = usize::try_from(range.len).map_err(|e| MemoryError::Layout(e.to_string()))?;
        let mut flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
        if let Some(page) = hugepage_size {
            let shift = i32::try_from(page.trailing_zeros()).unwrap_or(0);
            // hugetlb pages are reserved at mmap time, so a shortage fails here, not later.
            flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_HUGETLB;
            flags |= shift << MAP_HUGE_SHIFT;
        }
        let mapping = MmapRegion::build(None, len, libc::PROT_READ | libc::PROT_WRITE, flags)
            .map_err(|source| MemoryError::Allocate {
                size_mib: range.len >> 20,
                hint: hugepage_size.map_or_else(String::new, |p| {
                    format!(
                        " from {} KiB hugepages (are enough reserved in \
                         /sys/kernel/mm/hugepages/hugepages-{}kB/nr_hugepages?)",
                        p >> 10,
                        p >> 10
                    )
                }),
                source,
            })?;
        // Guest RAM never goes into a core dump: with `panic = "abort"` a crash would
        // otherwise write all of the guest's memory (its secrets included) to disk.
        advise(
            &mapping,
            libc::MADV_DONTDUMP,
            "MADV_DONTDUMP",
            log::Level::Warn,
        );
        if hugepage_size.is_none() {
            // Fewer TLB misses, for free where transparent hugepages are on.
            advise(
                &mapping,
                libc::MADV_HUGEPAGE,
                "MADV_HUGEPAGE",
                log::Level::Debug,
            );
        }
        let region = GuestRegionMmap::new(mapping, GuestAddress(range.start))
            .ok_or_else(|| MemoryError::Layout("region overflows the address space".into()))?;
        regions.push(region);
    }
    GuestMemoryMmap::from_regions(regions).map_err(|e| MemoryError::Layout(e.to_string()))
}

/// Applies `advice` to the whole of `mapping`; a refusal is logged at `level`.
fn advise(mapping: &MmapRegion, advice: libc::c_int, name: &str, level: log::Level) {
    // SAFETY: the range is exactly the mapping `mapping` owns; the advice given here only
    // changes paging and dumping policy and cannot invalidate memory.
    let ret = unsafe {
        libc::madvise(
            mapping.as_ptr().cast::<libc::c_void>(),
            mapping.size(),
            advice,
        )
    };
    if ret != 0 {
        log::log!(
            level,
            "madvise({name}) on guest RAM: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Registers every region of `mem` with KVM, one slot each, from slot 0.
pub fn register(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<(), MemoryError> {
    for (slot, region) in mem.iter().enumerate() {
        let host = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|e| MemoryError::Layout(e.to_string()))?;
        let desc = kvm_userspace_memory_region {
            slot: u32::try_from(slot).map_err(|e| MemoryError::Layout(e.to_string()))?,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the host range is the mapping owned by `mem`, which the VM holds for as long
        // as the VM exists; KVM only accesses guest memory through this slot while it does.
        unsafe { vm.set_user_memory_region(desc) }.map_err(|source| MemoryError::Slot {
            addr: region.start_addr().0,
            source,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn maps_ram_below_and_above_the_hole() {
        // MAP_NORESERVE: mapping 5 GiB costs nothing until touched.
        let mem = create(5 << 30, None).unwrap();
        assert_eq!(mem.num_regions(), 2);
        mem.write_obj(0x1234_5678u32, GuestAddress(0x1_0000_0000))
            .unwrap();
        let v: u32 = mem.read_obj(GuestAddress(0x1_0000_0000)).unwrap();
        assert_eq!(v, 0x1234_5678);
        assert!(
            mem.read_obj::<u8>(GuestAddress(0xd000_0000)).is_err(),
            "hole is unmapped"
        );
    }

    /// The `VmFlags` of the mapping in /proc/self/smaps that starts at `addr`.
    fn vm_flags(addr: usize) -> String {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let start = format!("{addr:x}-");
        let mut lines = smaps.lines().skip_while(|l| !l.starts_with(&start));
        assert!(lines.next().is_some(), "no mapping at {addr:#x}");
        lines
            .find_map(|l| l.strip_prefix("VmFlags:"))
            .unwrap()
            .to_string()
    }

    #[test]
    fn guest_ram_is_left_out_of_core_dumps() {
        let mem = create(64 << 20, None).unwrap();
        for region in mem.iter() {
            let host = region
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .unwrap();
            let flags = vm_flags(host as usize);
            assert!(
                flags.split_whitespace().any(|f| f == "dd"),
                "guest RAM without VM_DONTDUMP: {flags}"
            );
        }
    }
}
