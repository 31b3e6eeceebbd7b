//! ACPI tables: RSDP → XSDT → FADT (→ DSDT, FACS) and MADT.
//!
//! The platform is a PC with fixed-feature ACPI hardware (not hardware-reduced): PM1a event
//! and control blocks, a fixed power button and the reset register live in the
//! [`devices::acpi`] window; the SCI is IRQ 9, level-triggered, active high. The MADT lists
//! one local APIC per vCPU with the topology-shaped APIC IDs, the IOAPIC and the overrides.
//! The DSDT carries `_S5` so the guest can power off.

use acpi_tables::Aml;
use acpi_tables::aml::{
    AddressSpace as AmlSpace, AddressSpaceCacheable, Device, EISAName, IO, Name, Package, Path,
    ResourceTemplate,
};
use acpi_tables::facs::FACS;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::mcfg::MCFG;
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use devices::acpi::{PM1A_CNT_BLK, PM1A_EVT_BLK, RESET_REG, RESET_VALUE, S5_SLP_TYP, SCI_IRQ};
use devices::legacy::cmos::CMOS_CENTURY;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{
    ACPI_TABLES_ADDR, ACPI_TABLES_END, IOAPIC_ADDR, LAPIC_ADDR, PCI_ECAM_ADDR, PCI_MMIO_END,
    PCI_MMIO_START,
};

const OEM_ID: [u8; 6] = *b"VMMRS ";
const OEM_TABLE_ID: [u8; 8] = *b"VMMRSVM ";
const OEM_REVISION: u32 = 1;

/// IAPC_BOOT_ARCH: no VGA. No 8042 bit, so Linux does not probe a keyboard; the CMOS clock
/// is present (its "not present" bit stays clear).
const BOOT_ARCH_VGA_NOT_PRESENT: u16 = 1 << 2;

/// MADT flag: the machine also has dual 8259 PICs.
const MADT_PCAT_COMPAT: u32 = 1;
/// Interrupt source override flags: active high, level triggered.
const ISO_LEVEL_HIGH: u16 = 0x000d;

/// Why the tables cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// They do not fit below 1 MiB.
    #[error("ACPI tables need {0} bytes, more than the reserved area holds")]
    TooLarge(u64),
    /// Guest memory refused the write.
    #[error("cannot write ACPI tables")]
    Memory(#[from] vm_memory::GuestMemoryError),
}

fn bytes_of(table: &dyn Aml) -> Vec<u8> {
    let mut out = Vec::new();
    table.to_aml_bytes(&mut out);
    out
}

/// The PCI host bridge: bus 0, the configuration ports, all other I/O ports and the 32-bit
/// BAR window. Interrupts are MSI-X only, so there is no `_PRT`.
fn pci_root() -> Vec<u8> {
    let hid = EISAName::new("PNP0A08");
    let cid = EISAName::new("PNP0A03");
    let bus = AmlSpace::new_bus_number(0u16, 0u16);
    let cfg_ports = IO::new(0xcf8, 0xcf8, 1, 8);
    let io_low = AmlSpace::new_io(0u16, 0x0cf7u16, None);
    let io_high = AmlSpace::new_io(0x0d00u16, 0xffffu16, None);
    let mmio_end = u32::try_from(PCI_MMIO_END - 1).unwrap_or(u32::MAX);
    let mmio_start = u32::try_from(PCI_MMIO_START).unwrap_or(0);
    let mmio = AmlSpace::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        mmio_start,
        mmio_end,
        None,
    );
    let crs = ResourceTemplate::new(vec![&bus, &cfg_ports, &io_low, &io_high, &mmio]);
    let (hid_n, cid_n, crs_n) = (
        Name::new(Path::new("_HID"), &hid),
        Name::new(Path::new("_CID"), &cid),
        Name::new(Path::new("_CRS"), &crs),
    );
    let zero = 0u8;
    let (adr, seg, uid, bbn) = (
        Name::new(Path::new("_ADR"), &zero),
        Name::new(Path::new("_SEG"), &zero),
        Name::new(Path::new("_UID"), &zero),
        Name::new(Path::new("_BBN"), &zero),
    );
    let dev = Device::new(
        Path::new("_SB_.PCI0"),
        vec![&hid_n, &cid_n, &adr, &seg, &uid, &bbn, &crs_n],
    );
    bytes_of(&dev)
}

/// The MCFG: ECAM for bus 0.
fn mcfg() -> Vec<u8> {
    let mut t = MCFG::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    t.add_ecam(PCI_ECAM_ADDR, 0, 0, 0);
    bytes_of(&t)
}

/// The DSDT: the `_S5` sleep object and the PCI host bridge.
fn dsdt() -> Vec<u8> {
    let mut table = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    let slp_typ = S5_SLP_TYP;
    let s5 = Name::new(
        Path::new("_S5_"),
        &Package::new(vec![&slp_typ, &slp_typ, &0u8, &0u8]),
    );
    table.append_slice(&bytes_of(&s5));
    table.append_slice(&pci_root());
    table.as_slice().to_vec()
}

fn fadt(dsdt_addr: u64, facs_addr: u64) -> Vec<u8> {
    let io = |width: u8, size: AccessSize, addr: u16| {
        GAS::new(AddressSpace::SystemIo, width, 0, size, u64::from(addr))
    };
    let mut f = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .firmware_ctrl_64(facs_addr)
        .flag(Flags::Wbinvd)
        .flag(Flags::SlpButton)
        .flag(Flags::FixRtc)
        .flag(Flags::ResetRegSup);
    f.sci_int = u16::try_from(SCI_IRQ).unwrap_or(9).into();
    f.pm1a_evt_blk = u32::from(PM1A_EVT_BLK).into();
    f.pm1a_cnt_blk = u32::from(PM1A_CNT_BLK).into();
    f.pm1_evt_len = 4;
    f.pm1_cnt_len = 2;
    f.x_pm1a_evt_blk = io(32, AccessSize::WordAccess, PM1A_EVT_BLK);
    f.x_pm1a_cnt_blk = io(16, AccessSize::WordAccess, PM1A_CNT_BLK);
    f.reset_reg = io(8, AccessSize::ByteAccess, RESET_REG);
    f.reset_value = RESET_VALUE;
    f.century = CMOS_CENTURY;
    f.iapc_boot_arch = BOOT_ARCH_VGA_NOT_PRESENT.into();
    bytes_of(&f.finalize())
}

/// The MADT for vCPUs with `apic_ids` (the first is the boot CPU).
fn madt(apic_ids: &[u32]) -> Vec<u8> {
    let mut table = Sdt::new(*b"APIC", 44, 5, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    let mut body = Vec::new();
    body.extend_from_slice(&u32::try_from(LAPIC_ADDR).unwrap_or(0).to_le_bytes());
    body.extend_from_slice(&MADT_PCAT_COMPAT.to_le_bytes());
    table.write_bytes(36, &body);
    for (uid, apic_id) in apic_ids.iter().enumerate() {
        // Processor Local APIC: type 0, length 8, UID, APIC ID, flags (enabled).
        let uid = u8::try_from(uid).unwrap_or(u8::MAX);
        let id = u8::try_from(*apic_id).unwrap_or(u8::MAX);
        table.append_slice(&[0, 8, uid, id, 1, 0, 0, 0]);
    }
    // I/O APIC: type 1, length 12, its ID (above every local APIC ID), address, GSI base 0.
    let ioapic_id = apic_ids
        .iter()
        .max()
        .map_or(0, |m| u8::try_from(m + 1).unwrap_or(u8::MAX));
    let mut ioapic = vec![1, 12, ioapic_id, 0];
    ioapic.extend_from_slice(&u32::try_from(IOAPIC_ADDR).unwrap_or(0).to_le_bytes());
    ioapic.extend_from_slice(&0u32.to_le_bytes());
    table.append_slice(&ioapic);
    // Interrupt source override: ISA IRQ 9 (the SCI) is GSI 9, level, active high.
    let sci = u8::try_from(SCI_IRQ).unwrap_or(9);
    let mut iso = vec![2, 10, 0, sci];
    iso.extend_from_slice(&SCI_IRQ.to_le_bytes());
    iso.extend_from_slice(&ISO_LEVEL_HIGH.to_le_bytes());
    table.append_slice(&iso);
    // Local APIC NMI: all processors (UID 0xff), LINT1.
    table.append_slice(&[4, 6, 0xff, 0, 0, 1]);
    table.as_slice().to_vec()
}

/// Writes all tables into the reserved area; returns the RSDP's address.
pub fn write_tables(mem: &GuestMemoryMmap, apic_ids: &[u32]) -> Result<u64, AcpiError> {
    let mut next = ACPI_TABLES_ADDR;
    let mut place = |bytes: &[u8], align: u64| -> Result<u64, AcpiError> {
        let addr = next.next_multiple_of(align);
        let end = addr + bytes.len() as u64;
        if end > ACPI_TABLES_END {
            return Err(AcpiError::TooLarge(end - ACPI_TABLES_ADDR));
        }
        mem.write_slice(bytes, GuestAddress(addr))?;
        next = end;
        Ok(addr)
    };
    // The RSDP goes first: on a 16-byte boundary in 0xE0000..0xFFFFF, where a guest that
    // ignores boot_params.acpi_rsdp_addr scans for it.
    let rsdp_addr = place(&[0u8; 36], 16)?;
    let facs_addr = place(&bytes_of(&FACS::new()), 64)?;
    let dsdt_addr = place(&dsdt(), 8)?;
    let fadt_addr = place(&fadt(dsdt_addr, facs_addr), 8)?;
    let madt_addr = place(&madt(apic_ids), 8)?;
    let mcfg_addr = place(&mcfg(), 8)?;
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    xsdt.add_entry(mcfg_addr);
    let xsdt_addr = place(&bytes_of(&xsdt), 8)?;
    let rsdp = bytes_of(&Rsdp::new(OEM_ID, xsdt_addr));
    mem.write_slice(&rsdp, GuestAddress(rsdp_addr))?;
    Ok(rsdp_addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checksum_ok(table: &[u8]) -> bool {
        table.iter().fold(0u8, |a, b| a.wrapping_add(*b)) == 0
    }

    fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
        buf
    }

    fn table_at(mem: &GuestMemoryMmap, addr: u64) -> Vec<u8> {
        let header = read(mem, addr, 8);
        let len = u32::from_le_bytes(header[4..8].try_into().unwrap());
        read(mem, addr, len as usize)
    }

    #[test]
    fn tables_chain_and_checksum() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let rsdp_addr = write_tables(&mem, &[0, 1, 4, 5]).unwrap();
        assert_eq!(rsdp_addr % 16, 0);
        let rsdp = read(&mem, rsdp_addr, 36);
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert!(checksum_ok(&rsdp[..20]) && checksum_ok(&rsdp));
        let xsdt_addr = u64::from_le_bytes(rsdp[24..32].try_into().unwrap());
        let xsdt = table_at(&mem, xsdt_addr);
        assert_eq!(&xsdt[..4], b"XSDT");
        assert!(checksum_ok(&xsdt));
        let entries: Vec<u64> = xsdt[36..]
            .chunks(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let fadt = table_at(&mem, entries[0]);
        assert_eq!(&fadt[..4], b"FACP");
        assert!(checksum_ok(&fadt));
        // SCI_INT at offset 46, PM1a_EVT_BLK at 56, PM1a_CNT_BLK at 64.
        assert_eq!(u16::from_le_bytes([fadt[46], fadt[47]]), 9);
        assert_eq!(u32::from_le_bytes(fadt[56..60].try_into().unwrap()), 0x600);
        assert_eq!(u32::from_le_bytes(fadt[64..68].try_into().unwrap()), 0x604);
        let x_dsdt = u64::from_le_bytes(fadt[140..148].try_into().unwrap());
        let dsdt = table_at(&mem, x_dsdt);
        assert_eq!(&dsdt[..4], b"DSDT");
        assert!(checksum_ok(&dsdt));
        assert!(dsdt.windows(4).any(|w| w == b"_S5_"));
        let madt = table_at(&mem, entries[1]);
        assert_eq!(&madt[..4], b"APIC");
        assert!(checksum_ok(&madt));
        assert_eq!(parse_madt_apic_ids(&madt), vec![0, 1, 4, 5]);
    }

    fn parse_madt_apic_ids(madt: &[u8]) -> Vec<u8> {
        let mut ids = Vec::new();
        let mut at = 44;
        while at + 2 <= madt.len() {
            let (kind, len) = (madt[at], usize::from(madt[at + 1]));
            if kind == 0 {
                ids.push(madt[at + 3]);
            }
            at += len;
        }
        ids
    }

    #[test]
    fn many_vcpus_fit() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let ids: Vec<u32> = (0..254).collect();
        write_tables(&mem, &ids).unwrap();
    }
}
