//! The guest-physical address map (x86_64).
//!
//! ```text
//! 0x0000_0000  ┌──────────────────────────────┐
//!              │ real-mode IVT, BDA           │
//! 0x0000_0500  │ GDT, IDT                     │
//! 0x0000_7000  │ zero page (boot_params)      │
//! 0x0000_8ff0  │ boot stack (grows down)      │
//! 0x0000_9000  │ page tables: PML4, PDPT, 4 PDs (identity map of the low 4 GiB)
//! 0x0002_0000  │ kernel command line          │
//! 0x0009_fc00  ├──────────────────────────────┤ reserved: EBDA, VGA hole, BIOS area
//! 0x000e_0000  │ ACPI tables (RSDP first)     │
//! 0x0010_0000  ├──────────────────────────────┤ RAM: kernel at 1 MiB, initrd at the top
//!              │ ...                          │
//! 0xc000_0000  ├──────────────────────────────┤ 32-bit MMIO hole (1 GiB)
//! 0xfebf_f000  │ boot marker                  │
//! 0xfec0_0000  │ IOAPIC                       │
//! 0xfee0_0000  │ local APICs                  │
//! 0x1_0000_0000├──────────────────────────────┤ RAM above 3 GiB continues here
//! ```

/// The GDT.
pub const GDT_ADDR: u64 = 0x500;
/// The (empty) IDT, right after the GDT's five entries.
pub const IDT_ADDR: u64 = 0x528;
/// The zero page the kernel reads its boot parameters from.
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Initial stack pointer of the boot vCPU.
pub const BOOT_STACK_ADDR: u64 = 0x8ff0;
/// The PML4 table; the PDPT and four page directories follow, a page each.
pub const PML4_ADDR: u64 = 0x9000;
/// The PDPT.
pub const PDPT_ADDR: u64 = 0xa000;
/// The first of four page directories.
pub const PD_ADDR: u64 = 0xb000;
/// The kernel command line.
pub const CMDLINE_ADDR: u64 = 0x2_0000;
/// The largest command line the kernel accepts (x86's `COMMAND_LINE_SIZE`).
pub const CMDLINE_MAX: usize = 2048;
/// Where the EBDA starts; low RAM for the guest ends here.
pub const EBDA_START: u64 = 0x9_fc00;
/// The ACPI tables.
pub const ACPI_TABLES_ADDR: u64 = 0xe_0000;
/// End of the ACPI table area.
pub const ACPI_TABLES_END: u64 = 0x10_0000;
/// Where the kernel is loaded and high RAM starts.
pub const HIGH_RAM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO hole: RAM below 4 GiB ends here.
pub const MMIO_32_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO hole.
pub const MMIO_32_END: u64 = 0x1_0000_0000;
/// The IOAPIC.
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
/// The local APICs.
pub const LAPIC_ADDR: u64 = 0xfee0_0000;
/// Where RAM beyond what fits below the hole continues.
pub const RAM_64_START: u64 = 0x1_0000_0000;
/// The KVM TSS (three pages, must not overlap RAM or devices).
pub const KVM_TSS_ADDR: u64 = 0xfffb_d000;
/// The KVM identity-map page, right below the TSS.
pub const KVM_IDENTITY_MAP_ADDR: u64 = 0xfffb_c000;

// The fixed areas must not overlap; checked when the crate compiles.
/// PCI ECAM (configuration space) window for bus 0, reserved in the E820 map.
pub const PCI_ECAM_ADDR: u64 = 0xe000_0000;
/// Where 32-bit PCI BARs are placed: the MMIO hole below the ECAM window.
pub const PCI_MMIO_START: u64 = MMIO_32_START;
/// End (exclusive) of the 32-bit PCI BAR window.
pub const PCI_MMIO_END: u64 = PCI_ECAM_ADDR;

const _: () = {
    assert!(IDT_ADDR >= GDT_ADDR + 5 * 8);
    assert!(ZERO_PAGE_ADDR + 4096 <= BOOT_STACK_ADDR + 0x10);
    assert!(PD_ADDR + 4 * 4096 <= CMDLINE_ADDR);
    assert!(CMDLINE_ADDR + CMDLINE_MAX as u64 <= EBDA_START);
    assert!(KVM_IDENTITY_MAP_ADDR + 4096 <= KVM_TSS_ADDR);
    assert!(devices::boot_marker::BOOT_MARKER_ADDR > MMIO_32_START);
    assert!(devices::boot_marker::BOOT_MARKER_ADDR + 4096 <= IOAPIC_ADDR);
};

/// One contiguous range of guest RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RamRange {
    /// Guest-physical start.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
}

/// The RAM ranges of a guest with `size` bytes of memory: below the 32-bit hole, then above
/// 4 GiB for the rest.
pub fn ram_ranges(size: u64) -> Vec<RamRange> {
    let low = size.min(MMIO_32_START);
    let mut ranges = vec![RamRange { start: 0, len: low }];
    if size > low {
        ranges.push(RamRange {
            start: RAM_64_START,
            len: size - low,
        });
    }
    ranges
}

/// An E820 entry type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum E820Type {
    /// Usable RAM.
    Ram = 1,
    /// Reserved.
    Reserved = 2,
}

/// One entry of the E820 map the kernel is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    /// Start address.
    pub addr: u64,
    /// Length.
    pub size: u64,
    /// Type.
    pub kind: E820Type,
}

/// The E820 map for a guest with `size` bytes of RAM (at least 1 MiB).
pub fn e820_map(size: u64) -> Vec<E820Entry> {
    let mut map = vec![
        E820Entry {
            addr: 0,
            size: EBDA_START,
            kind: E820Type::Ram,
        },
        E820Entry {
            addr: EBDA_START,
            size: HIGH_RAM_START - EBDA_START,
            kind: E820Type::Reserved,
        },
    ];
    for range in ram_ranges(size) {
        let start = range.start.max(HIGH_RAM_START);
        let end = range.start + range.len;
        if end > start {
            map.push(E820Entry {
                addr: start,
                size: end - start,
                kind: E820Type::Ram,
            });
        }
    }
    map.push(E820Entry {
        addr: PCI_ECAM_ADDR,
        size: devices::pci::ECAM_SIZE,
        kind: E820Type::Reserved,
    });
    map.sort_by_key(|e| e.addr);
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_is_one_range() {
        assert_eq!(
            ram_ranges(512 << 20),
            vec![RamRange {
                start: 0,
                len: 512 << 20
            }]
        );
    }

    #[test]
    fn large_guest_continues_above_4g() {
        let r = ram_ranges(5 << 30);
        assert_eq!(r[0].len, MMIO_32_START);
        assert_eq!(r[1].start, RAM_64_START);
        assert_eq!(r[0].len + r[1].len, 5 << 30);
    }

    #[test]
    fn e820_accounts_for_all_ram_but_the_legacy_hole() {
        for size in [64u64 << 20, 1 << 30, 3 << 30, 6 << 30] {
            let ram: u64 = e820_map(size)
                .iter()
                .filter(|e| e.kind == E820Type::Ram)
                .map(|e| e.size)
                .sum();
            assert_eq!(ram, size - (HIGH_RAM_START - EBDA_START), "{size:#x}");
        }
    }
}
