//! The boot vCPU's state for Linux's 64-bit boot protocol, and what every vCPU starts with.
//!
//! The protocol (Documentation/arch/x86/boot.rst, "64-bit Boot Protocol") asks for long mode
//! with paging, an identity map covering the kernel, zero page and command line, a GDT with
//! flat 4 GiB code and data descriptors at selectors 0x10 (`__BOOT_CS`) and 0x18
//! (`__BOOT_DS`), interrupts off, and `%rsi` pointing at the zero page. The page tables map
//! the low 4 GiB with 2 MiB pages.

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{
    BOOT_STACK_ADDR, GDT_ADDR, IDT_ADDR, PD_ADDR, PDPT_ADDR, PML4_ADDR, ZERO_PAGE_ADDR,
};

const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

const PAGE_PRESENT_RW: u64 = 0x3;
const PAGE_PS: u64 = 0x80;

/// GDT selectors the boot protocol names.
const BOOT_CS: u16 = 0x10;
const BOOT_DS: u16 = 0x18;
const BOOT_TSS: u16 = 0x20;

/// Why guest boot state cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// The page tables or GDT do not fit guest memory.
    #[error("cannot write boot structures to guest memory")]
    Memory(#[from] vm_memory::GuestMemoryError),
}

/// A GDT descriptor from its flags (access byte and flags nibble), base and limit.
fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let base = u64::from(base);
    let limit = u64::from(limit);
    let flags = u64::from(flags);
    ((base & 0xff00_0000) << (56 - 24))
        | ((flags & 0x0000_f0ff) << 40)
        | ((limit & 0x000f_0000) << (48 - 16))
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0x0000_ffff)
}

/// The `kvm_segment` a descriptor loads.
fn segment(entry: u64, selector: u16) -> kvm_segment {
    let bits = |shift: u32, mask: u64| -> u8 { u8::try_from((entry >> shift) & mask).unwrap_or(0) };
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let limit = (entry & 0xffff) | ((entry >> 32) & 0x000f_0000);
    let granular = bits(55, 1) == 1;
    kvm_segment {
        base,
        // With 4 KiB granularity the limit counts pages.
        limit: u32::try_from(if granular {
            (limit << 12) | 0xfff
        } else {
            limit
        })
        .unwrap_or(u32::MAX),
        selector,
        type_: bits(40, 0xf),
        present: bits(47, 1),
        dpl: bits(45, 0x3),
        db: bits(54, 1),
        s: bits(44, 1),
        l: bits(53, 1),
        g: bits(55, 1),
        avl: bits(52, 1),
        unusable: u8::from(bits(47, 1) == 0),
        padding: 0,
    }
}

/// The GDT: null, unused, `__BOOT_CS`, `__BOOT_DS`, TSS.
fn gdt() -> [u64; 5] {
    [
        0,
        0,
        gdt_entry(0xa09b, 0, 0xfffff), // 64-bit code, execute/read, accessed
        gdt_entry(0xc093, 0, 0xfffff), // data, read/write, accessed
        gdt_entry(0x808b, 0, 0xfffff), // busy 64-bit TSS
    ]
}

/// Writes the GDT, an empty IDT and identity page tables for the low 4 GiB.
pub fn write_boot_tables(mem: &GuestMemoryMmap) -> Result<(), RegsError> {
    for (i, entry) in gdt().iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(GDT_ADDR + 8 * i as u64))?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_ADDR))?;
    mem.write_obj(PDPT_ADDR | PAGE_PRESENT_RW, GuestAddress(PML4_ADDR))?;
    for gib in 0..4u64 {
        let pd = PD_ADDR + gib * 0x1000;
        mem.write_obj(pd | PAGE_PRESENT_RW, GuestAddress(PDPT_ADDR + gib * 8))?;
        for i in 0..512u64 {
            let phys = (gib << 30) | (i << 21);
            mem.write_obj(phys | PAGE_PRESENT_RW | PAGE_PS, GuestAddress(pd + i * 8))?;
        }
    }
    Ok(())
}

/// Special registers for long mode, on top of what KVM reports (`sregs`).
pub fn long_mode_sregs(mut sregs: kvm_sregs) -> kvm_sregs {
    let table = gdt();
    let code = segment(table[2], BOOT_CS);
    let data = segment(table[3], BOOT_DS);
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = u16::try_from(table.len() * 8 - 1).unwrap_or(u16::MAX);
    sregs.idt.base = IDT_ADDR;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(table[4], BOOT_TSS);
    sregs.cr0 |= CR0_PE | CR0_ET | CR0_PG;
    sregs.cr3 = PML4_ADDR;
    sregs.cr4 |= CR4_PAE;
    sregs.efer |= EFER_LME | EFER_LMA;
    sregs
}

/// General registers: enter at `entry` with `%rsi` at the zero page.
pub fn boot_regs(entry: u64) -> kvm_regs {
    kvm_regs {
        rflags: 0x2,
        rip: entry,
        rsp: BOOT_STACK_ADDR,
        rbp: BOOT_STACK_ADDR,
        rsi: ZERO_PAGE_ADDR,
        ..Default::default()
    }
}

/// The x87/SSE state after reset.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MISC_ENABLE_FAST_STRING: u64 = 1;
const MTRR_ENABLE: u64 = 1 << 11;
const MTRR_TYPE_WRBACK: u64 = 6;

/// MSRs every vCPU starts with: syscall MSRs cleared, fast strings on, and all memory
/// write-back through the MTRR default type (there is no firmware to program MTRRs). The TSC
/// is left alone: KVM starts every vCPU's TSC in sync, and writing it per vCPU, one after the
/// other, would desynchronise them.
pub fn boot_msrs() -> Vec<kvm_msr_entry> {
    let msr = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    vec![
        msr(MSR_IA32_SYSENTER_CS, 0),
        msr(MSR_IA32_SYSENTER_ESP, 0),
        msr(MSR_IA32_SYSENTER_EIP, 0),
        msr(MSR_STAR, 0),
        msr(MSR_CSTAR, 0),
        msr(MSR_KERNEL_GS_BASE, 0),
        msr(MSR_SYSCALL_MASK, 0),
        msr(MSR_LSTAR, 0),
        msr(MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        msr(MSR_MTRR_DEF_TYPE, MTRR_ENABLE | MTRR_TYPE_WRBACK),
    ]
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// Sets LINT0 to ExtINT (the PIC) and LINT1 to NMI in a local APIC register page, as a PC's
/// firmware would.
pub fn set_lint(regs: &mut [u8]) {
    for (offset, mode) in [(APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)] {
        let Some(bytes) = regs.get_mut(offset..offset + 4) else {
            continue;
        };
        let mut value = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        value = (value & !0x700) | (mode << 8);
        bytes.copy_from_slice(&value.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_decode_to_flat_long_mode_segments() {
        let table = gdt();
        let cs = segment(table[2], BOOT_CS);
        assert_eq!(
            (cs.base, cs.limit, cs.l, cs.db, cs.g),
            (0, 0xffff_ffff, 1, 0, 1)
        );
        assert_eq!((cs.type_, cs.present, cs.s, cs.dpl), (0xb, 1, 1, 0));
        let ds = segment(table[3], BOOT_DS);
        assert_eq!((ds.type_, ds.db, ds.l, ds.limit), (0x3, 1, 0, 0xffff_ffff));
        let tr = segment(table[4], BOOT_TSS);
        assert_eq!((tr.type_, tr.s, tr.present), (0xb, 0, 1));
        assert_eq!(segment(0, 0).unusable, 1);
    }

    #[test]
    fn page_tables_identity_map_4g() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write_boot_tables(&mem).unwrap();
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_ADDR)).unwrap();
        assert_eq!(pml4 & !0xfff, PDPT_ADDR);
        // Walk 0xc0a0_1234: PDPT[3] → PD[5] → 2 MiB page 0xc0a0_0000.
        let addr: u64 = 0xc0a0_1234;
        let pdpte: u64 = mem
            .read_obj(GuestAddress(PDPT_ADDR + ((addr >> 30) & 0x1ff) * 8))
            .unwrap();
        let pde: u64 = mem
            .read_obj(GuestAddress((pdpte & !0xfff) + ((addr >> 21) & 0x1ff) * 8))
            .unwrap();
        assert_ne!(pde & PAGE_PS, 0);
        assert_eq!((pde & !0x1f_ffff) | (addr & 0x1f_ffff), addr);
    }

    #[test]
    fn long_mode_bits_are_set() {
        let s = long_mode_sregs(kvm_sregs::default());
        assert_eq!(s.cr0 & (CR0_PE | CR0_PG), CR0_PE | CR0_PG);
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!(s.cs.selector, 0x10);
        assert_eq!(s.ds.selector, 0x18);
        assert_eq!(s.gdt.limit, 39);
    }

    #[test]
    fn lint_modes() {
        let mut regs = vec![0u8; 1024];
        regs[APIC_LVT0 + 1] = 0x07; // delivery-mode bits set to something else
        set_lint(&mut regs);
        let lvt0 = u32::from_le_bytes(regs[APIC_LVT0..APIC_LVT0 + 4].try_into().unwrap());
        let lvt1 = u32::from_le_bytes(regs[APIC_LVT1..APIC_LVT1 + 4].try_into().unwrap());
        assert_eq!((lvt0 >> 8) & 7, APIC_MODE_EXTINT);
        assert_eq!((lvt1 >> 8) & 7, APIC_MODE_NMI);
    }
}
