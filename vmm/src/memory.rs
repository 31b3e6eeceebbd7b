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
        let mapping = if hugepage_size.is_some() {
            MmapRegion::build(None, len, libc::PROT_READ | libc::PROT_WRITE, flags)
        } else {
            map_thp_aligned(len, flags)
        }
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

/// Transparent huge page size on x86-64.
const THP_SIZE: usize = 2 << 20;

/// Maps `len` bytes of anonymous RAM, at a 2 MiB-aligned host address where it can.
///
/// KVM backs a guest page with a 2 MiB host page only where the host virtual address and the
/// guest-physical address agree modulo 2 MiB. Guest RAM ranges start 2 MiB-aligned, but
/// `mmap` only aligns to 4 KiB (before Linux 6.7), so an unaligned mapping gets no huge pages
/// in the guest at all: every 4 KiB the guest touches is one nested page fault, 28,700 of
/// them in one boot of the test guest against 860 aligned.
///
/// The mapping stays owned by `MmapRegion` (unmapped when the last guest-memory handle
/// goes), so it is made by `MmapRegion::build`, which takes no address. A reservation
/// 2 MiB larger than `len` finds a place, then exactly its aligned `len`-byte window is freed:
/// the kernel puts the next mapping of that size at the top of the highest gap that holds
/// it, which is that window unless a higher gap holds it too. If something else got there
/// first, it tries again, and after four tries the mapping is merely unaligned.
fn map_thp_aligned(
    len: usize,
    flags: libc::c_int,
) -> Result<MmapRegion, vm_memory::mmap::MmapRegionError> {
    // Another thread's mmap between freeing the window and mapping into it can take the
    // window (seen with tests mapping in parallel); another try finds another window.
    const TRIES: usize = 4;
    let mut region = map_into_window(len, flags)?;
    for _ in 1..TRIES {
        if (region.as_ptr() as usize).is_multiple_of(THP_SIZE) {
            return Ok(region);
        }
        region = map_into_window(len, flags)?;
    }
    if !(region.as_ptr() as usize).is_multiple_of(THP_SIZE) {
        log::debug!(
            "guest RAM at {:p} is not 2 MiB-aligned: no huge pages",
            region.as_ptr()
        );
    }
    Ok(region)
}

/// One try of [`map_thp_aligned`]: reserve, free the aligned window, map.
fn map_into_window(
    len: usize,
    flags: libc::c_int,
) -> Result<MmapRegion, vm_memory::mmap::MmapRegionError> {
    let prot = libc::PROT_READ | libc::PROT_WRITE;
    let Some(reserved) = len.checked_add(THP_SIZE) else {
        return MmapRegion::build(None, len, prot, flags);
    };
    let none = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
    // SAFETY: a new PROT_NONE mapping at an address of the kernel's choosing; it replaces
    // nothing and nothing else refers to it.
    let base = unsafe { libc::mmap(std::ptr::null_mut(), reserved, libc::PROT_NONE, none, -1, 0) };
    if base == libc::MAP_FAILED {
        return MmapRegion::build(None, len, prot, flags);
    }
    let base = base as usize;
    let window = base.next_multiple_of(THP_SIZE);
    let unmap = |start: usize, size: usize| {
        if size > 0 {
            // SAFETY: [start, start + size) lies inside the reservation made above, which
            // only this function knows of; unmapping it frees address space, nothing more.
            unsafe { libc::munmap(start as *mut libc::c_void, size) };
        }
    };
    unmap(window, len);
    let region = MmapRegion::build(None, len, prot, flags);
    // The guards on either side of the window go, whether the mapping landed in it or not.
    unmap(base, window - base);
    unmap(window + len, base + reserved - (window + len));
    region
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

/// Drops every page of code (each private read-and-execute file mapping: `vmm`'s own text,
/// libc's, the loader's) from this process's page tables, once a VM runs. Setting up a VM
/// runs code from all over the binary (the manifest's parser, netlink, image formats), and
/// the kernel maps 64 KiB around each page faulted in, so by the first boot nearly all of the
/// text is resident, most of it never to run again. The pages stay in the page cache, now
/// reclaimable; the code the running VM uses faults back in at once (minor faults, no I/O).
/// A mapping with a page of its own (`Anonymous` in smaps: a library the loader patched, a
/// debugger's breakpoint, a uprobe) is left alone, since dropping would bring back the file's
/// bytes. Best effort: an error leaves the pages mapped.
pub fn drop_code_pages() {
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return;
    };
    for (start, end) in clean_code_mappings(&smaps) {
        // SAFETY: [start, end) is a whole private, read-only, executable file mapping of this
        // process, as the kernel lists it, with no page of its own (Anonymous: 0 kB): every
        // page is the file's, so MADV_DONTNEED only unmaps them and the next access maps the
        // same bytes from the file again. No Rust object lives in a code mapping.
        let rc = unsafe {
            libc::madvise(
                start as *mut libc::c_void,
                end.saturating_sub(start),
                libc::MADV_DONTNEED,
            )
        };
        if rc != 0 {
            log::debug!(
                "madvise(DONTNEED) on {start:#x}-{end:#x}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// The private `r-xp` file mappings in `smaps` text without anonymous (written) pages.
fn clean_code_mappings(smaps: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    // The mapping being read: its range, if it is code from a file.
    let mut current: Option<(usize, usize)> = None;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else {
            continue;
        };
        if let Some((a, b)) = first.split_once('-')
            && let (Ok(start), Ok(end)) =
                (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
        {
            // start-end perms offset dev inode path
            let perms = fields.next();
            let path = fields.nth(3);
            current = (perms == Some("r-xp") && path.is_some_and(|p| p.starts_with('/')))
                .then_some((start, end));
        } else if first == "Anonymous:"
            && let Some(range) = current.take()
            && fields.next() == Some("0")
        {
            out.push(range);
        }
    }
    out
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

    #[test]
    fn only_clean_code_mappings_of_files_are_dropped() {
        let smaps = "\
55d0a0000000-55d0a0100000 r--p 00000000 fd:01 123 /usr/bin/vmm
Anonymous:             0 kB
55d0a0100000-55d0a0500000 r-xp 00100000 fd:01 123 /usr/bin/vmm
Rss:                2048 kB
Anonymous:             0 kB
7f0000000000-7f0000100000 r-xp 00000000 fd:01 456 /usr/lib/libpatched.so
Anonymous:             8 kB
7f0000200000-7f0000300000 rw-p 00000000 00:00 0
Anonymous:           512 kB
7ffd00000000-7ffd00002000 r-xp 00000000 00:00 0                          [vdso]
Anonymous:             0 kB
7f0000400000-7f0000500000 r-xp 00000000 fd:01 789 /usr/lib/libc.so.6
Anonymous:             0 kB
";
        assert_eq!(
            clean_code_mappings(smaps),
            vec![
                (0x55d0_a010_0000, 0x55d0_a050_0000),
                (0x7f00_0040_0000, 0x7f00_0050_0000)
            ]
        );
    }
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
    fn guest_ram_is_2mib_aligned_for_huge_pages() {
        // 257 MiB is no multiple of 2 MiB, so kernels that align large anonymous mappings
        // themselves (Linux 6.7 on) leave this one to `map_thp_aligned`.
        for size in [257 << 20, 256 << 20, 2 << 20, 3 << 20] {
            let mem = create(size, None).unwrap();
            let host = mem
                .iter()
                .next()
                .unwrap()
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .unwrap();
            assert_eq!(host as usize % THP_SIZE, 0, "guest RAM at {host:p}");
        }
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
