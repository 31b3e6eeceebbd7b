//! The PCI root: bus 0 with a host bridge in slot 0, configuration access through the
//! legacy 0xCF8/0xCFC ports and through ECAM (the MCFG table points the guest at it).
//!
//! Only bus 0 and function 0 of each slot exist; every other address reads as all ones
//! ("no device"), as on real hardware.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock, Weak};

use super::config::{ConfigSpace, PciIds};
use super::{BarMove, PciDevice};
use crate::bus::{Bus, BusDevice, BusError};

/// Slots on bus 0.
pub const SLOTS: usize = 32;
/// Size of the ECAM window for bus 0 (32 slots × 8 functions × 4 KiB).
pub const ECAM_SIZE: u64 = 1 << 20;

/// Why a function cannot be added.
#[derive(Debug, thiserror::Error)]
pub enum PciRootError {
    /// All slots are taken.
    #[error("no free PCI slot on bus 0")]
    NoSlot,
    /// A BAR overlaps something on the MMIO bus.
    #[error("PCI BAR placement")]
    Bus(#[from] BusError),
}

type SharedPci = Arc<Mutex<dyn PciDevice>>;

fn lock(dev: &SharedPci) -> std::sync::MutexGuard<'_, dyn PciDevice + 'static> {
    dev.lock().unwrap_or_else(|e| e.into_inner())
}

/// The host bridge: a header and nothing else.
struct HostBridge(ConfigSpace);

impl PciDevice for HostBridge {
    fn read_config(&mut self, reg: usize) -> u32 {
        self.0.read_dword(reg)
    }
    fn write_config(&mut self, reg: usize, offset: usize, data: &[u8]) -> Option<BarMove> {
        self.0.write(reg, offset, data)
    }
    fn bars(&self) -> Vec<(usize, u64, u64)> {
        Vec::new()
    }
    fn read_bar(&mut self, _: usize, _: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn write_bar(&mut self, _: usize, _: u64, _: &[u8]) {}
}

/// One BAR of a function on the MMIO bus.
struct BarWindow {
    device: SharedPci,
    bar: usize,
}

impl BusDevice for BarWindow {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        lock(&self.device).read_bar(self.bar, offset, data);
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        lock(&self.device).write_bar(self.bar, offset, data);
    }
}

/// Bus 0.
pub struct PciRoot {
    slots: RwLock<Vec<Option<SharedPci>>>,
    /// Each (slot, BAR): the address its device was last told of ([`PciDevice::bar_moved`])
    /// and whether the BAR is mapped there on the MMIO bus. The configuration space says
    /// where the guest put a BAR, which is not always where it is mapped (a move onto
    /// another device's range is refused), so only this says what a move may unmap, and
    /// where the device's own mappings (ioeventfds, memory slots) are to be moved from.
    mapped: Mutex<HashMap<(usize, usize), (u64, bool)>>,
    /// Weak: the MMIO bus holds the ECAM window, which holds the root.
    mmio: Weak<Bus>,
}

impl std::fmt::Debug for PciRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let used = self
            .slots
            .read()
            .map(|s| s.iter().filter(|d| d.is_some()).count())
            .unwrap_or(0);
        f.debug_struct("PciRoot").field("functions", &used).finish()
    }
}

impl PciRoot {
    /// Bus 0 with the host bridge in slot 0; BARs go on `mmio`.
    pub fn new(mmio: Arc<Bus>) -> Self {
        let bridge = HostBridge(ConfigSpace::new(PciIds {
            // Red Hat's PCIe host bridge ID, which Linux knows and needs nothing for.
            vendor: 0x1b36,
            device: 0x0008,
            revision: 0,
            class: 0x06_00_00,
            subsystem_vendor: 0x1af4,
            subsystem: 0x1100,
        }));
        let mut slots: Vec<Option<SharedPci>> = vec![None; SLOTS];
        slots[0] = Some(Arc::new(Mutex::new(bridge)));
        Self {
            slots: RwLock::new(slots),
            mapped: Mutex::new(HashMap::new()),
            mmio: Arc::downgrade(&mmio),
        }
    }

    /// Puts `device` in the first free slot and maps its BARs; returns the slot.
    pub fn add(&self, device: SharedPci) -> Result<usize, PciRootError> {
        let mut slots = self.slots.write().unwrap_or_else(|e| e.into_inner());
        let slot = slots
            .iter()
            .position(Option::is_none)
            .ok_or(PciRootError::NoSlot)?;
        let bars = lock(&device).bars();
        let mmio = self.mmio.upgrade().ok_or(PciRootError::NoSlot)?;
        let mut mapped = Vec::new();
        for (bar, addr, size) in bars {
            let window = Arc::new(Mutex::new(BarWindow {
                device: device.clone(),
                bar,
            }));
            if let Err(e) = mmio.insert(window, addr, size) {
                for addr in mapped {
                    mmio.remove(addr);
                }
                return Err(e.into());
            }
            mapped.push(addr);
        }
        let mut where_mapped = self.mapped.lock().unwrap_or_else(|e| e.into_inner());
        for (bar, addr, _) in lock(&device).bars() {
            where_mapped.insert((slot, bar), (addr, true));
        }
        slots[slot] = Some(device);
        Ok(slot)
    }

    fn device(&self, bus: u8, slot: u8, function: u8) -> Option<SharedPci> {
        if bus != 0 || function != 0 {
            return None;
        }
        let slots = self.slots.read().unwrap_or_else(|e| e.into_inner());
        slots.get(usize::from(slot)).cloned().flatten()
    }

    /// Reads configuration dword `reg` of bus/slot/function.
    pub fn read_config(&self, bus: u8, slot: u8, function: u8, reg: usize) -> u32 {
        match self.device(bus, slot, function) {
            Some(dev) => lock(&dev).read_config(reg),
            None => u32::MAX,
        }
    }

    /// Writes configuration space; moves a BAR's bus mapping when the guest relocates it.
    pub fn write_config(
        &self,
        bus: u8,
        slot: u8,
        function: u8,
        reg: usize,
        offset: usize,
        data: &[u8],
    ) {
        let Some(dev) = self.device(bus, slot, function) else {
            return;
        };
        // Held across the configuration write and the bus update, so that two vCPUs moving
        // the same BAR cannot leave the configuration space and the bus disagreeing. The
        // order (this lock, then the device's) is the one `add` takes too.
        let mut mapped = self.mapped.lock().unwrap_or_else(|e| e.into_inner());
        let moved = lock(&dev).write_config(reg, offset, data);
        let (Some(moved), Some(mmio)) = (moved, self.mmio.upgrade()) else {
            return;
        };
        let key = (usize::from(slot), moved.bar);
        // Unmap what this BAR has on the bus, which may not be `moved.from`: if the last
        // move was refused, the BAR has nothing mapped, and `from` may be another device's.
        let told = match mapped.get(&key).copied() {
            Some((at, on_bus)) => {
                if on_bus {
                    mmio.remove(at);
                }
                at
            }
            None => moved.from,
        };
        // The device moves its own mappings from where it last put them.
        let moved = BarMove {
            from: told,
            ..moved
        };
        let window = Arc::new(Mutex::new(BarWindow {
            device: dev.clone(),
            bar: moved.bar,
        }));
        if let Err(e) = mmio.insert(window, moved.to, moved.size) {
            log::warn!(
                "PCI {bus:02x}:{slot:02x}.{function}: BAR {} moved to {:#x}: {e}; it is unmapped",
                moved.bar,
                moved.to
            );
            mapped.insert(key, (told, false));
            return;
        }
        mapped.insert(key, (moved.to, true));
        drop(mapped);
        log::debug!(
            "PCI {bus:02x}:{slot:02x}.{function}: BAR {} moved {:#x} -> {:#x}",
            moved.bar,
            moved.from,
            moved.to
        );
        if let Err(e) = lock(&dev).bar_moved(moved) {
            log::warn!(
                "PCI {bus:02x}:{slot:02x}.{function}: BAR {} move: {e}",
                moved.bar
            );
        }
    }
}

/// Configuration access through I/O ports 0xCF8 (address) and 0xCFC..0xCFF (data).
#[derive(Debug)]
pub struct PciConfigIo {
    root: Arc<PciRoot>,
    address: u32,
}

/// Base of the legacy configuration ports.
pub const PCI_CONFIG_IO_BASE: u64 = 0xcf8;
/// Their length.
pub const PCI_CONFIG_IO_LEN: u64 = 8;

impl PciConfigIo {
    /// Access to `root`.
    pub fn new(root: Arc<PciRoot>) -> Self {
        Self { root, address: 0 }
    }

    /// (bus, slot, function, dword) of the latched address, if enabled.
    fn target(&self) -> Option<(u8, u8, u8, usize)> {
        let a = self.address;
        if a & 0x8000_0000 == 0 {
            return None;
        }
        let field = |shift: u32, mask: u32| u8::try_from((a >> shift) & mask).unwrap_or(0);
        let reg = usize::try_from((a >> 2) & 0x3f).unwrap_or(0);
        Some((field(16, 0xff), field(11, 0x1f), field(8, 0x7), reg))
    }
}

impl BusDevice for PciConfigIo {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match offset {
            0..4 => self.address >> (offset * 8),
            4..8 => match self.target() {
                Some((b, s, f, reg)) => self.root.read_config(b, s, f, reg) >> ((offset - 4) * 8),
                None => u32::MAX,
            },
            _ => u32::MAX,
        };
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = u8::try_from((u64::from(value) >> (i * 8)) & 0xff).unwrap_or(0xff);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match offset {
            0 if data.len() == 4 => {
                self.address = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
            }
            4..8 => {
                let within = usize::try_from(offset - 4).unwrap_or(4);
                if within + data.len() > 4 {
                    return;
                }
                if let Some((b, s, f, reg)) = self.target() {
                    self.root.write_config(b, s, f, reg, within, data);
                }
            }
            _ => {}
        }
    }
}

/// Configuration access through the ECAM window (bus 0 only).
#[derive(Debug)]
pub struct PciEcam {
    root: Arc<PciRoot>,
}

impl PciEcam {
    /// Access to `root`.
    pub fn new(root: Arc<PciRoot>) -> Self {
        Self { root }
    }

    /// (slot, function, dword, byte in dword) of an offset in the window.
    fn decode(offset: u64) -> (u8, u8, usize, usize) {
        let slot = u8::try_from((offset >> 15) & 0x1f).unwrap_or(0);
        let function = u8::try_from((offset >> 12) & 0x7).unwrap_or(0);
        let reg = usize::try_from((offset & 0xfff) >> 2).unwrap_or(0);
        let byte = usize::try_from(offset & 3).unwrap_or(0);
        (slot, function, reg, byte)
    }
}

impl BusDevice for PciEcam {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let (slot, function, reg, byte) = Self::decode(offset);
        if byte + data.len() > 4 {
            data.fill(0xff);
            return;
        }
        let value = self.root.read_config(0, slot, function, reg).to_le_bytes();
        data.copy_from_slice(&value[byte..byte + data.len()]);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (slot, function, reg, byte) = Self::decode(offset);
        if byte + data.len() <= 4 {
            self.root.write_config(0, slot, function, reg, byte, data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::BarKind;
    use super::*;

    struct Dummy {
        cs: ConfigSpace,
        writes: Vec<(usize, u64, Vec<u8>)>,
        moves: Vec<BarMove>,
    }

    impl PciDevice for Dummy {
        fn read_config(&mut self, reg: usize) -> u32 {
            self.cs.read_dword(reg)
        }
        fn write_config(&mut self, reg: usize, offset: usize, data: &[u8]) -> Option<BarMove> {
            self.cs.write(reg, offset, data)
        }
        fn bars(&self) -> Vec<(usize, u64, u64)> {
            self.cs.bar(0).map(|(a, s)| (0, a, s)).into_iter().collect()
        }
        fn read_bar(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
            data.fill(u8::try_from(bar as u64 + offset).unwrap_or(0));
        }
        fn write_bar(&mut self, bar: usize, offset: u64, data: &[u8]) {
            self.writes.push((bar, offset, data.to_vec()));
        }
        fn bar_moved(&mut self, moved: BarMove) -> std::io::Result<()> {
            self.moves.push(moved);
            Ok(())
        }
    }

    fn setup() -> (Arc<Bus>, Arc<PciRoot>, Arc<Mutex<Dummy>>) {
        let mmio = Arc::new(Bus::new());
        let root = Arc::new(PciRoot::new(mmio.clone()));
        let mut cs = ConfigSpace::new(crate::testing::ids());
        cs.add_bar(0, BarKind::Mem32, 0x1000, false, 0xc000_0000)
            .unwrap();
        let dev = Arc::new(Mutex::new(Dummy {
            cs,
            writes: vec![],
            moves: vec![],
        }));
        assert_eq!(root.add(dev.clone()).unwrap(), 1);
        (mmio, root, dev)
    }

    #[test]
    fn dropping_the_buses_drops_the_functions() {
        let (mmio, root, dev) = setup();
        mmio.insert(
            Arc::new(Mutex::new(PciEcam::new(root.clone()))),
            0xe000_0000,
            ECAM_SIZE,
        )
        .unwrap();
        let weak = Arc::downgrade(&dev);
        drop((mmio, root, dev));
        assert!(
            weak.upgrade().is_none(),
            "no reference cycle keeps a device (and its worker thread) alive after a boot"
        );
    }

    #[test]
    fn legacy_ports_reach_functions() {
        let (_, root, _) = setup();
        let mut io = PciConfigIo::new(root);
        let mut d = [0u8; 4];
        io.write(0, &0x8000_0000u32.to_le_bytes());
        io.read(4, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x0008_1b36, "host bridge");
        io.write(0, &0x8000_0800u32.to_le_bytes());
        io.read(4, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x1041_1af4);
        let mut w = [0u8; 2];
        io.read(6, &mut w);
        assert_eq!(u16::from_le_bytes(w), 0x1041);
        io.write(0, &0x8000_1000u32.to_le_bytes());
        io.read(4, &mut d);
        assert_eq!(d, [0xff; 4], "empty slot");
        io.write(0, &0x8001_0800u32.to_le_bytes());
        io.read(4, &mut d);
        assert_eq!(d, [0xff; 4], "bus 1 does not exist");
        io.write(0, &0x0000_0800u32.to_le_bytes());
        io.read(4, &mut d);
        assert_eq!(d, [0xff; 4], "enable bit clear");
        io.read(0, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x0000_0800);
        io.write(7, &[1, 2]);
    }

    #[test]
    fn ecam_moves_bars_on_the_bus() {
        let (mmio, root, dev) = setup();
        let mut ecam = PciEcam::new(root);
        let mut d = [0u8; 4];
        ecam.read(1 << 15, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x1041_1af4);
        let mut b = [0u8; 1];
        assert!(mmio.read(0xc000_0010, &mut b));
        assert_eq!(b, [0x10]);
        ecam.write((1 << 15) | 0x10, &0xd000_0000u32.to_le_bytes());
        assert!(!mmio.read(0xc000_0010, &mut b));
        assert!(mmio.write(0xd000_0004, &[7]));
        let dev = dev.lock().unwrap();
        assert_eq!(dev.writes, vec![(0, 4, vec![7])]);
        assert_eq!(dev.moves.len(), 1);
        ecam.read(0xfffff, &mut d[..1]);
        ecam.read(0xffffe, &mut d);
        assert_eq!(d, [0xff; 4], "access across a dword");
    }

    /// Something else on the MMIO bus that records it was reached.
    struct Other(Arc<Mutex<usize>>);

    impl BusDevice for Other {
        fn read(&mut self, _: u64, data: &mut [u8]) {
            *self.0.lock().unwrap() += 1;
            data.fill(0x5a);
        }
        fn write(&mut self, _: u64, _: &[u8]) {}
    }

    #[test]
    fn a_refused_move_leaves_the_other_device_mapped() {
        let (mmio, root, dev) = setup();
        let reads = Arc::new(Mutex::new(0));
        mmio.insert(
            Arc::new(Mutex::new(Other(reads.clone()))),
            0xd000_0000,
            0x1000,
        )
        .unwrap();
        let mut ecam = PciEcam::new(root);
        // Onto the other device: refused, so the BAR is mapped nowhere.
        ecam.write((1 << 15) | 0x10, &0xd000_0000u32.to_le_bytes());
        let mut b = [0u8; 1];
        assert!(
            !mmio.read(0xc000_0010, &mut b),
            "unmapped from the old place"
        );
        assert!(mmio.read(0xd000_0010, &mut b));
        assert_eq!(b, [0x5a], "the other device still answers there");
        // Moved again: the other device, at the BAR's nominal address, must stay.
        ecam.write((1 << 15) | 0x10, &0xe100_0000u32.to_le_bytes());
        assert!(
            mmio.read(0xd000_0010, &mut b),
            "the other device was unmapped"
        );
        assert_eq!(b, [0x5a]);
        assert!(mmio.read(0xe100_0010, &mut b));
        assert_eq!(b, [0x10], "the BAR at its new place");
        assert_eq!(*reads.lock().unwrap(), 2);
        // The device was told of one move, from where it last was, not from the refused
        // address (where it has no mappings to take down).
        let moves = &dev.lock().unwrap().moves;
        assert_eq!(moves.len(), 1);
        assert_eq!((moves[0].from, moves[0].to), (0xc000_0000, 0xe100_0000));
    }
}
