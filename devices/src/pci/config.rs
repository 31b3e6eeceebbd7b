//! A PCI function's type-0 configuration space: the header, BARs and a capability list.
//!
//! The space is 256 bytes of registers with a byte-granular write mask: the guest can only
//! change what a real function would let it change. BARs are kept apart from the bytes, as a
//! size and an address, so that sizing (writing all ones, reading back the size mask) works
//! without disturbing where the BAR is mapped; a write that moves a BAR is reported to the
//! caller as a [`BarMove`]. Reads beyond 256 bytes (PCIe extended space through ECAM) return
//! zero, which says "no extended capabilities".

/// Conventional configuration space size.
pub const CONFIG_SIZE: usize = 256;
/// Offset of BAR 0.
const BAR0: usize = 0x10;
/// Number of BARs in a type-0 header.
pub const NUM_BARS: usize = 6;
const COMMAND: usize = 0x04;
const STATUS: usize = 0x06;
const CAP_PTR: usize = 0x34;
const STATUS_CAP_LIST: u16 = 1 << 4;
/// Command register bits the guest may set: I/O space, memory space, bus master,
/// parity error response, SERR#, INTx disable.
const COMMAND_WRITABLE: u16 = 0x0001 | 0x0002 | 0x0004 | 0x0040 | 0x0100 | 0x0400;
/// Capabilities start here (after the standard header).
const FIRST_CAP: usize = 0x40;

/// What a BAR decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    /// 32-bit memory space.
    Mem32,
    /// 64-bit memory space (takes two BAR registers).
    Mem64,
}

/// A BAR whose address the guest changed: the bus mapping must follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarMove {
    /// Which BAR.
    pub bar: usize,
    /// Where it was mapped.
    pub from: u64,
    /// Where it is now.
    pub to: u64,
    /// Its size.
    pub size: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Bar {
    /// Zero: not implemented.
    size: u64,
    kind: Option<BarKind>,
    prefetchable: bool,
    /// The address in the registers (may be a sizing pattern for a moment).
    addr: u64,
    /// Where the bus has it.
    mapped: u64,
}

/// Identity of a function, for the header.
#[derive(Debug, Clone, Copy)]
pub struct PciIds {
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// Revision.
    pub revision: u8,
    /// Class code, subclass, programming interface (24 bits).
    pub class: u32,
    /// Subsystem vendor ID.
    pub subsystem_vendor: u16,
    /// Subsystem ID.
    pub subsystem: u16,
}

/// Why a capability or BAR cannot be added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// No room left in the 256-byte space.
    #[error("PCI capability of {0} bytes does not fit in configuration space")]
    NoRoom(usize),
    /// A BAR size that is not a power of two of at least 16 bytes, or a used slot.
    #[error("PCI BAR {0} cannot be added")]
    BadBar(usize),
}

/// The configuration space of one function.
#[derive(Debug, Clone)]
pub struct ConfigSpace {
    bytes: [u8; CONFIG_SIZE],
    wmask: [u8; CONFIG_SIZE],
    bars: [Bar; NUM_BARS],
    last_cap: Option<usize>,
    next_cap: usize,
}

impl ConfigSpace {
    /// A header for a function with `ids`, no BARs and no capabilities.
    pub fn new(ids: PciIds) -> Self {
        let mut cs = Self {
            bytes: [0; CONFIG_SIZE],
            wmask: [0; CONFIG_SIZE],
            bars: [Bar::default(); NUM_BARS],
            last_cap: None,
            next_cap: FIRST_CAP,
        };
        cs.set_u16(0x00, ids.vendor);
        cs.set_u16(0x02, ids.device);
        cs.bytes[0x08] = ids.revision;
        cs.bytes[0x09..0x0c].copy_from_slice(&ids.class.to_le_bytes()[..3]);
        cs.set_u16(0x2c, ids.subsystem_vendor);
        cs.set_u16(0x2e, ids.subsystem);
        cs.wmask[COMMAND..COMMAND + 2].copy_from_slice(&COMMAND_WRITABLE.to_le_bytes());
        // Cache line size and latency timer are plain read/write registers.
        cs.wmask[0x0c] = 0xff;
        cs.wmask[0x0d] = 0xff;
        // Interrupt line: scratch for the OS. Interrupt pin stays 0: no INTx, MSI-X only.
        cs.wmask[0x3c] = 0xff;
        cs
    }

    fn set_u16(&mut self, off: usize, v: u16) {
        self.bytes[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }

    /// A little-endian u16 at `off`.
    pub fn u16_at(&self, off: usize) -> u16 {
        u16::from_le_bytes([self.bytes[off], self.bytes[off + 1]])
    }

    /// Declares BAR `index` of `size` bytes (a power of two, at least 16) at `addr`.
    pub fn add_bar(
        &mut self,
        index: usize,
        kind: BarKind,
        size: u64,
        prefetchable: bool,
        addr: u64,
    ) -> Result<(), ConfigError> {
        let regs = if kind == BarKind::Mem64 { 2 } else { 1 };
        let fits = index + regs <= NUM_BARS
            && (index..index + regs).all(|i| self.bars[i].kind.is_none())
            && size >= 16
            && size.is_power_of_two()
            && addr.is_multiple_of(size)
            && (kind == BarKind::Mem64 || addr.checked_add(size).is_some_and(|e| e <= 1 << 32));
        if !fits {
            return Err(ConfigError::BadBar(index));
        }
        self.bars[index] = Bar {
            size,
            kind: Some(kind),
            prefetchable,
            addr,
            mapped: addr,
        };
        if kind == BarKind::Mem64 {
            // The upper half is described by the lower one.
            self.bars[index + 1].kind = Some(BarKind::Mem64);
        }
        Ok(())
    }

    /// Where BAR `index` is mapped now, and its size (`None`: not implemented).
    pub fn bar(&self, index: usize) -> Option<(u64, u64)> {
        let bar = self.bars.get(index)?;
        (bar.size > 0).then_some((bar.mapped, bar.size))
    }

    /// Appends a capability: `body` is everything after the ID and next-pointer bytes;
    /// `writable` is a write mask of the same length. Returns the capability's offset.
    pub fn add_capability(
        &mut self,
        id: u8,
        body: &[u8],
        writable: &[u8],
    ) -> Result<usize, ConfigError> {
        let len = (body.len() + 2).next_multiple_of(4);
        let off = self.next_cap;
        if off + len > CONFIG_SIZE {
            return Err(ConfigError::NoRoom(len));
        }
        self.bytes[off] = id;
        self.bytes[off + 2..off + 2 + body.len()].copy_from_slice(body);
        let n = writable.len().min(body.len());
        self.wmask[off + 2..off + 2 + n].copy_from_slice(&writable[..n]);
        let off_u8 = u8::try_from(off).map_err(|_| ConfigError::NoRoom(len))?;
        match self.last_cap {
            Some(prev) => self.bytes[prev + 1] = off_u8,
            None => {
                self.bytes[CAP_PTR] = off_u8;
                let status = self.u16_at(STATUS) | STATUS_CAP_LIST;
                self.set_u16(STATUS, status);
            }
        }
        self.last_cap = Some(off);
        self.next_cap = off + len;
        Ok(off)
    }

    /// Reads the dword register `reg` (offset `reg * 4`).
    pub fn read_dword(&self, reg: usize) -> u32 {
        let off = reg * 4;
        if (BAR0..BAR0 + 4 * NUM_BARS).contains(&off) {
            return self.bar_register((off - BAR0) / 4);
        }
        match self.bytes.get(off..off + 4) {
            Some(b) => u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            None => 0,
        }
    }

    fn bar_register(&self, i: usize) -> u32 {
        let bar = &self.bars[i];
        match bar.kind {
            None => 0,
            // The upper half of a 64-bit BAR.
            Some(BarKind::Mem64) if bar.size == 0 => {
                let low = &self.bars[i - 1];
                let v = low.addr & !(low.size - 1);
                u32::try_from(v >> 32).unwrap_or(u32::MAX)
            }
            Some(kind) => {
                let mut flags = 0u32;
                if kind == BarKind::Mem64 {
                    flags |= 0b100;
                }
                if bar.prefetchable {
                    flags |= 0b1000;
                }
                let addr = bar.addr & !(bar.size - 1);
                (u32::try_from(addr & 0xffff_ffff).unwrap_or(0) & !0xf) | flags
            }
        }
    }

    /// Writes `data` (1, 2 or 4 bytes) at byte `offset` of dword register `reg`. Returns the
    /// BAR that moved, if the write moved one.
    pub fn write(&mut self, reg: usize, offset: usize, data: &[u8]) -> Option<BarMove> {
        let base = reg * 4;
        if offset + data.len() > 4 {
            return None;
        }
        if (BAR0..BAR0 + 4 * NUM_BARS).contains(&base) {
            return self.write_bar((base - BAR0) / 4, offset, data);
        }
        for (i, b) in data.iter().enumerate() {
            let at = base + offset + i;
            if at >= CONFIG_SIZE {
                break;
            }
            let m = self.wmask[at];
            self.bytes[at] = (self.bytes[at] & !m) | (b & m);
        }
        None
    }

    fn write_bar(&mut self, i: usize, offset: usize, data: &[u8]) -> Option<BarMove> {
        let kind = self.bars[i].kind?;
        let mut reg = self.bar_register(i).to_le_bytes();
        reg[offset..offset + data.len()].copy_from_slice(data);
        let value = u32::from_le_bytes(reg);
        let probing = value == u32::MAX;
        let low = if kind == BarKind::Mem64 && self.bars[i].size == 0 {
            i - 1
        } else {
            i
        };
        let bar = &mut self.bars[low];
        if low == i {
            bar.addr = (bar.addr & !0xffff_ffff) | u64::from(value & !0xf);
        } else {
            bar.addr = (bar.addr & 0xffff_ffff) | (u64::from(value) << 32);
        }
        bar.addr &= !(bar.size - 1);
        if kind == BarKind::Mem32 {
            bar.addr &= 0xffff_ffff;
        }
        if probing || bar.addr == bar.mapped {
            return None;
        }
        let from = bar.mapped;
        bar.mapped = bar.addr;
        Some(BarMove {
            bar: low,
            from,
            to: bar.addr,
            size: bar.size,
        })
    }

    /// The raw bytes (for capability handlers reading back what the guest wrote).
    pub fn bytes(&self) -> &[u8; CONFIG_SIZE] {
        &self.bytes
    }

    /// Overwrites read-only bytes (device-controlled fields inside capabilities).
    pub fn set_bytes(&mut self, off: usize, data: &[u8]) {
        if let Some(dst) = self.bytes.get_mut(off..off + data.len()) {
            dst.copy_from_slice(data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testing::ids;

    #[test]
    fn header_fields_and_read_only_bytes() {
        let mut cs = ConfigSpace::new(ids());
        assert_eq!(cs.read_dword(0), 0x1041_1af4);
        assert_eq!(cs.read_dword(2), 0x0200_0001);
        cs.write(0, 0, &[0, 0, 0, 0]);
        assert_eq!(cs.read_dword(0), 0x1041_1af4, "IDs are read-only");
        cs.write(1, 0, &[0xff, 0xff]);
        assert_eq!(cs.read_dword(1) & 0xffff, u32::from(COMMAND_WRITABLE));
        assert_eq!(cs.read_dword(15) >> 8 & 0xff, 0, "no INTx pin");
        assert_eq!(cs.read_dword(1000), 0, "extended space reads zero");
        assert_eq!(cs.write(1000, 0, &[1]), None);
        assert_eq!(
            cs.write(1, 3, &[1, 2]),
            None,
            "a write across dwords is ignored"
        );
    }

    #[test]
    fn bar_sizing_and_moves() {
        let mut cs = ConfigSpace::new(ids());
        cs.add_bar(0, BarKind::Mem32, 0x4000, false, 0xc000_0000)
            .unwrap();
        assert_eq!(cs.read_dword(4), 0xc000_0000);
        assert_eq!(cs.write(4, 0, &u32::MAX.to_le_bytes()), None, "sizing");
        assert_eq!(cs.read_dword(4), 0xffff_c000);
        assert_eq!(cs.write(4, 0, &0xc000_0000u32.to_le_bytes()), None);
        assert_eq!(cs.bar(0), Some((0xc000_0000, 0x4000)));
        let moved = cs.write(4, 0, &0xd000_0000u32.to_le_bytes());
        assert_eq!(
            moved,
            Some(BarMove {
                bar: 0,
                from: 0xc000_0000,
                to: 0xd000_0000,
                size: 0x4000
            })
        );
        assert_eq!(cs.bar(0), Some((0xd000_0000, 0x4000)));
        assert_eq!(cs.read_dword(5), 0, "no BAR 1");
        assert_eq!(cs.write(5, 0, &u32::MAX.to_le_bytes()), None);
    }

    #[test]
    fn sixty_four_bit_bar() {
        let mut cs = ConfigSpace::new(ids());
        cs.add_bar(2, BarKind::Mem64, 1 << 20, true, 0x1_0000_0000)
            .unwrap();
        assert_eq!(cs.read_dword(6), 0b1100);
        assert_eq!(cs.read_dword(7), 1);
        cs.write(6, 0, &u32::MAX.to_le_bytes());
        cs.write(7, 0, &u32::MAX.to_le_bytes());
        assert_eq!(cs.read_dword(6), 0xfff0_000c);
        assert_eq!(cs.read_dword(7), u32::MAX);
        cs.write(6, 0, &0x0000_000cu32.to_le_bytes());
        let moved = cs.write(7, 0, &2u32.to_le_bytes());
        assert_eq!(moved.map(|m| m.to), Some(0x2_0000_0000));
        assert!(cs.add_bar(5, BarKind::Mem64, 16, false, 0).is_err());
        assert!(cs.add_bar(0, BarKind::Mem32, 24, false, 0).is_err());
        assert!(cs.add_bar(2, BarKind::Mem32, 16, false, 0).is_err());
    }

    #[test]
    fn capability_chain() {
        let mut cs = ConfigSpace::new(ids());
        let a = cs.add_capability(0x09, &[1, 2, 3], &[0xff, 0, 0]).unwrap();
        let b = cs.add_capability(0x11, &[0; 10], &[]).unwrap();
        assert_eq!(a, 0x40);
        assert_eq!(b, 0x48);
        assert_eq!(cs.bytes()[CAP_PTR], 0x40);
        assert_eq!(cs.bytes()[0x41], 0x48);
        assert_eq!(cs.bytes()[0x49], 0);
        assert_ne!(cs.u16_at(STATUS) & STATUS_CAP_LIST, 0);
        cs.write(0x40 / 4, 2, &[9, 9]);
        assert_eq!(&cs.bytes()[0x42..0x44], &[9, 2]);
        cs.add_capability(0x09, &[0; 200], &[]).unwrap_err();
    }
}
