//! The model against a mock VFIO device: a virtio-net-like function with a 64-bit BAR 4
//! (16 KiB), a 32-bit BAR 1 (4 KiB) holding the MSI-X table and PBA, an I/O BAR 0, and
//! capabilities MSI (0x40) → MSI-X (0x50) → vendor (0x60).

use std::sync::Mutex;

use super::*;
use crate::pci::msix::MsiMessage;

#[derive(Default)]
struct Log {
    config_writes: Vec<(u64, Vec<u8>)>,
    bar_writes: Vec<(u32, u64, Vec<u8>)>,
    msix: Vec<Option<usize>>,
    msi: Vec<Option<usize>>,
}

struct Mock {
    config: [u8; CONFIG_SIZE],
    regions: [RegionInfo; 8],
    log: Arc<Mutex<Log>>,
}

impl VfioRegions for Mock {
    fn region(&self, index: u32) -> RegionInfo {
        self.regions
            .get(index as usize)
            .copied()
            .unwrap_or_default()
    }
    fn read(&self, index: u32, offset: u64, data: &mut [u8]) {
        if index == CONFIG_REGION {
            let o = usize::try_from(offset).unwrap();
            data.copy_from_slice(&self.config[o..o + data.len()]);
        } else {
            // BAR contents: the low byte of the offset, so reads can be told apart.
            for (b, at) in data.iter_mut().zip(offset..) {
                *b = at.to_le_bytes()[0];
            }
        }
    }
    fn write(&self, index: u32, offset: u64, data: &[u8]) {
        let mut log = self.log.lock().unwrap();
        if index == CONFIG_REGION {
            log.config_writes.push((offset, data.to_vec()));
        } else {
            log.bar_writes.push((index, offset, data.to_vec()));
        }
    }
    fn enable_msix(&self, vectors: usize) -> io::Result<()> {
        self.log.lock().unwrap().msix.push(Some(vectors));
        Ok(())
    }
    fn disable_msix(&self) -> io::Result<()> {
        self.log.lock().unwrap().msix.push(None);
        Ok(())
    }
    fn enable_msi(&self, vectors: usize) -> io::Result<()> {
        self.log.lock().unwrap().msi.push(Some(vectors));
        Ok(())
    }
    fn disable_msi(&self) -> io::Result<()> {
        self.log.lock().unwrap().msi.push(None);
        Ok(())
    }
    fn mmap(&self, index: u32, offset: u64, _len: u64) -> io::Result<usize> {
        // A recognisable fake host address.
        Ok(0x7f00_0000_0000 + usize::try_from(u64::from(index) << 32 | offset).unwrap())
    }
}

#[derive(Default)]
struct Mapper {
    maps: Mutex<Vec<(u32, u64, usize, u64)>>,
    next: Mutex<u32>,
}

impl GuestMapper for Mapper {
    fn map(&self, guest: u64, host: usize, len: u64) -> io::Result<u32> {
        let mut next = self.next.lock().unwrap();
        *next += 1;
        self.maps.lock().unwrap().push((*next, guest, host, len));
        Ok(*next)
    }
    fn unmap(&self, id: u32) -> io::Result<()> {
        self.maps.lock().unwrap().retain(|m| m.0 != id);
        Ok(())
    }
}

use crate::testing::Msi as Routes;

fn put(config: &mut [u8; CONFIG_SIZE], off: usize, bytes: &[u8]) {
    config[off..off + bytes.len()].copy_from_slice(bytes);
}

fn device_config() -> [u8; CONFIG_SIZE] {
    let mut c = [0u8; CONFIG_SIZE];
    put(&mut c, 0, &[0xf4, 0x1a, 0x41, 0x10]); // 1af4:1041
    put(&mut c, 0x06, &[0x10, 0x00]); // status: capability list
    put(&mut c, 0x08, &[0x01, 0x00, 0x00, 0x02]); // revision 1, class 02 (network)
    put(&mut c, 0x10, &0xc001u32.to_le_bytes()); // BAR 0: I/O
    put(&mut c, 0x14, &0xfebf_c000u32.to_le_bytes()); // BAR 1: 32-bit memory
    put(&mut c, 0x20, &0x0000_000cu32.to_le_bytes()); // BAR 4: 64-bit prefetchable
    put(&mut c, 0x24, &0x0000_00c0u32.to_le_bytes());
    put(&mut c, 0x30, &0xfeb0_0000u32.to_le_bytes()); // a ROM
    put(&mut c, CAP_PTR, &[0x40]);
    // MSI at 0x40 → 0x50.
    put(&mut c, 0x40, &[MSI_CAP_ID, 0x50, 0x80, 0x00]);
    // MSI-X at 0x50 → 0x60: 3 vectors, table in BAR 1 at 0, PBA in BAR 1 at 0x800.
    put(&mut c, 0x50, &[MSIX_CAP_ID, 0x60, 0x02, 0x00]);
    put(&mut c, 0x54, &1u32.to_le_bytes());
    put(&mut c, 0x58, &(0x800u32 | 1).to_le_bytes());
    // A vendor capability at 0x60, the end.
    put(&mut c, 0x60, &[0x09, 0x00, 0x10, 0xaa]);
    c
}

struct Setup {
    pci: VfioPci,
    log: Arc<Mutex<Log>>,
    routes: Arc<Routes>,
}

fn setup() -> Setup {
    setup_with(device_config())
}

fn setup_with(config: [u8; CONFIG_SIZE]) -> Setup {
    let log = Arc::new(Mutex::new(Log::default()));
    let mut regions = [RegionInfo::default(); 8];
    regions[0] = RegionInfo {
        size: 64,
        mmap: false,
    };
    regions[1] = RegionInfo {
        size: 4096,
        mmap: true,
    };
    regions[4] = RegionInfo {
        size: 16384,
        mmap: true,
    };
    regions[7] = RegionInfo {
        size: 256,
        mmap: false,
    };
    let mock = Mock {
        config,
        regions,
        log: log.clone(),
    };
    let routes = Arc::new(Routes::default());
    let mut next = 0xc000_0000u64;
    let mut place = |size: u64, _is64: bool| {
        let addr = next.next_multiple_of(size);
        next = addr + size;
        Some(addr)
    };
    let pci = VfioPci::new(Box::new(mock), routes.clone(), &mut place).unwrap();
    Setup { pci, log, routes }
}

#[test]
fn bars_are_sized_from_the_regions_and_placed_by_the_vmm() {
    let mut s = setup();
    // BAR 0 (I/O) is not exposed; BAR 1 32-bit at the first slot; BAR 4 64-bit after it.
    assert_eq!(
        s.pci.bars(),
        vec![(1, 0xc000_0000, 4096), (4, 0xc000_4000, 16384)]
    );
    assert_eq!(s.pci.read_config(4), 0, "BAR 0 hidden");
    assert_eq!(s.pci.read_config(5), 0xc000_0000);
    assert_eq!(
        s.pci.read_config(8),
        0xc000_4000 | 0b1100,
        "64-bit, prefetchable"
    );
    assert_eq!(s.pci.read_config(9), 0);
    // Sizing: all ones reads back the size mask.
    assert!(s.pci.write_config(5, 0, &u32::MAX.to_le_bytes()).is_none());
    assert_eq!(s.pci.read_config(5), !(4096u32 - 1));
    // Moving BAR 4 above 4 GiB.
    assert!(
        s.pci
            .write_config(8, 0, &0x0000_0000u32.to_le_bytes())
            .is_some()
    );
    let moved = s
        .pci
        .write_config(9, 0, &0x0000_0001u32.to_le_bytes())
        .unwrap();
    assert_eq!((moved.bar, moved.to, moved.size), (4, 0x1_0000_0000, 16384));
    // The device never sees BAR writes; the ROM is hidden.
    assert!(s.log.lock().unwrap().config_writes.is_empty());
    assert_eq!(s.pci.read_config(ROM_BAR / 4), 0);
    s.pci.write_config(ROM_BAR / 4, 0, &u32::MAX.to_le_bytes());
    assert!(s.log.lock().unwrap().config_writes.is_empty());
}

#[test]
fn msi_is_hidden_from_the_capability_list() {
    let mut s = setup();
    let ptr = s.pci.read_config(CAP_PTR / 4) & 0xff;
    assert_eq!(ptr, 0x50, "the list starts at MSI-X");
    let msix = s.pci.read_config(0x50 / 4);
    assert_eq!(msix & 0xff, u32::from(MSIX_CAP_ID));
    assert_eq!((msix >> 8) & 0xff, 0x60);
    assert_eq!(
        s.pci.read_config(0x60 / 4) & 0xffff,
        0x0009,
        "vendor cap, end of list"
    );
    assert_eq!(s.pci.read_config(0x40 / 4), 0, "MSI reads as nothing");
    s.pci.write_config(0x40 / 4, 2, &[0x01, 0x00]);
    assert!(
        s.log.lock().unwrap().config_writes.is_empty(),
        "MSI writes never reach it"
    );
}

#[test]
fn other_config_writes_go_to_the_device() {
    let mut s = setup();
    // Command: memory space and bus master.
    s.pci.write_config(1, 0, &[0x06, 0x00]);
    s.pci.write_config(0x60 / 4, 3, &[0x55]);
    let log = s.log.lock().unwrap();
    assert_eq!(
        log.config_writes,
        vec![(4, vec![0x06, 0x00]), (0x63, vec![0x55])]
    );
}

#[test]
fn msix_enable_goes_through_vfio_and_entries_become_routes() {
    let mut s = setup();
    // Table size 3 (field 2) reads through, enable clear.
    assert_eq!(s.pci.read_config(0x50 / 4) >> 16, 2);
    // Program vector 1 while MSI-X is off.
    let entry = 0x10u64;
    s.pci.write_bar(1, entry, &0xfee0_0000u32.to_le_bytes());
    s.pci.write_bar(1, entry + 4, &0u32.to_le_bytes());
    s.pci.write_bar(1, entry + 8, &0x41u32.to_le_bytes());
    s.pci.write_bar(1, entry + 12, &0u32.to_le_bytes()); // unmask
    // Enable MSI-X: VFIO is asked for 3 vectors, and vector 1's route is set, unmasked.
    s.pci.write_config(0x50 / 4, 2, &0x8002u16.to_le_bytes());
    assert_eq!(s.log.lock().unwrap().msix, vec![Some(3)]);
    assert_eq!(s.pci.read_config(0x50 / 4) >> 16, 0x8002);
    let routes = s.routes.routes.lock().unwrap().clone();
    assert!(
        routes.contains(&(
            1,
            MsiMessage {
                address: 0xfee0_0000,
                data: 0x41
            }
        )),
        "{routes:?}"
    );
    assert!(s.routes.masks.lock().unwrap().contains(&(1, false)));
    assert!(
        !s.routes.masks.lock().unwrap().contains(&(0, false)),
        "vector 0 stays masked"
    );
    // Masking the entry masks delivery; the table reads back what was written.
    s.pci.write_bar(1, entry + 12, &1u32.to_le_bytes());
    assert_eq!(s.routes.masks.lock().unwrap().last(), Some(&(1, true)));
    let mut b = [0u8; 4];
    s.pci.read_bar(1, entry + 8, &mut b);
    assert_eq!(u32::from_le_bytes(b), 0x41);
    // Table writes never reach the device; disabling goes through VFIO.
    assert!(s.log.lock().unwrap().bar_writes.is_empty());
    s.pci.write_config(0x50 / 4, 2, &0x0002u16.to_le_bytes());
    assert_eq!(s.log.lock().unwrap().msix, vec![Some(3), None]);
}

#[test]
fn other_bar_accesses_reach_the_device_within_its_regions() {
    let mut s = setup();
    s.pci.write_bar(4, 0x3000, &[1, 2, 3, 4]);
    s.pci.write_bar(1, 0x900, &[9]); // past the PBA: the device's
    s.pci.write_bar(1, 0x800, &[0xff; 8]); // the PBA: read-only, dropped
    s.pci.write_bar(4, 16380, &[0; 8]); // crosses the end: dropped
    let mut b = [0u8; 2];
    s.pci.read_bar(4, 0x20, &mut b);
    assert_eq!(b, [0x20, 0x21]);
    let mut b = [0u8; 4];
    s.pci.read_bar(4, 16384, &mut b);
    assert_eq!(b, [0xff; 4], "outside the region reads as ones");
    let log = s.log.lock().unwrap();
    assert_eq!(
        log.bar_writes,
        vec![(4, 0x3000, vec![1, 2, 3, 4]), (1, 0x900, vec![9])]
    );
}

#[test]
fn mappable_areas_leave_out_the_msix_pages() {
    let s = setup();
    // BAR 1 is one page holding the table and PBA: nothing to map.
    assert_eq!(s.pci.mappable(1), vec![]);
    // BAR 4 has no MSI-X structures: all of it.
    assert_eq!(s.pci.mappable(4), vec![(0, 16384)]);
    // BAR 0 (I/O, not exposed) and out of range.
    assert_eq!(s.pci.mappable(0), vec![]);
    assert_eq!(s.pci.mappable(9), vec![]);
}

/// Found by the vfio fuzz target: an MSI-X table and PBA the device places past the end of
/// their BAR made the area arithmetic subtract past zero.
#[test]
fn msix_structures_past_their_bar_leave_the_bar_mappable() {
    let mut c = device_config();
    put(&mut c, 0x54, &(0x8000u32 | 4).to_le_bytes());
    put(&mut c, 0x58, &(0x1_0000u32 | 4).to_le_bytes());
    let s = setup_with(c);
    assert_eq!(s.pci.mappable(4), vec![(0, 16384)]);
}

#[test]
fn hostile_config_offsets_and_a_looping_capability_list_are_harmless() {
    let mut s = setup();
    assert_eq!(s.pci.read_config(64), u32::MAX);
    assert!(s.pci.write_config(64, 0, &[1]).is_none());
    assert!(
        s.pci.write_config(1, 3, &[1, 2]).is_none(),
        "crosses the dword"
    );
    // A list that loops back on itself.
    let mut c = device_config();
    c[0x61] = 0x50;
    let caps = capabilities(&c);
    assert_eq!(caps.len(), 3);
    // A pointer into the header ends the walk.
    c[CAP_PTR] = 0x10;
    assert!(capabilities(&c).is_empty());
}

#[test]
fn bar_areas_are_mapped_follow_the_bar_and_go_with_the_device() {
    let mut s = setup();
    let mapper = Arc::new(Mapper::default());
    // BAR 1 holds the MSI-X page: it traps; BAR 4 is mapped whole.
    assert_eq!(s.pci.map_bars(mapper.clone()), 16384);
    let host4 = 0x7f00_0000_0000 + (4usize << 32);
    assert_eq!(
        *mapper.maps.lock().unwrap(),
        vec![(1, 0xc000_4000, host4, 16384)]
    );
    // The guest moves BAR 4 (the root then tells the device): the mapping follows.
    let moved = s
        .pci
        .write_config(8, 0, &0xd000_0000u32.to_le_bytes())
        .expect("a move");
    assert_eq!((moved.from, moved.to), (0xc000_4000, 0xd000_0000));
    s.pci.bar_moved(moved).unwrap();
    assert_eq!(
        *mapper.maps.lock().unwrap(),
        vec![(2, 0xd000_0000, host4, 16384)]
    );
    drop(s.pci);
    assert!(
        mapper.maps.lock().unwrap().is_empty(),
        "unmapped with the device"
    );
}

#[test]
fn without_msix_msi_is_emulated_into_routes_and_vfio() {
    // The same function with no MSI-X: MSI at 0x40 (64-bit, per-vector masking, 4
    // vectors capable) → the vendor capability.
    let mut c = device_config();
    put(&mut c, 0x40, &[MSI_CAP_ID, 0x60, 0x84, 0x01]);
    let mut s = setup_with(c);
    assert_eq!(
        s.pci.read_config(CAP_PTR / 4) & 0xff,
        0x40,
        "MSI stays in the list"
    );
    let head = s.pci.read_config(0x40 / 4);
    assert_eq!(head & 0xffff, 0x6005, "ID and next: the vendor capability");
    assert_eq!(head >> 16, 0x0184, "64-bit, masking, 4 capable, disabled");
    // Address, data, one vector masked, then enable with 2 messages (MME = 1).
    s.pci
        .write_config(0x44 / 4, 0, &0xfee0_1000u32.to_le_bytes());
    s.pci.write_config(0x48 / 4, 0, &0u32.to_le_bytes());
    s.pci.write_config(0x4c / 4, 0, &0x4440u16.to_le_bytes());
    s.pci.write_config(0x50 / 4, 0, &0b10u32.to_le_bytes()); // mask vector 1
    s.pci.write_config(0x40 / 4, 2, &0x0011u16.to_le_bytes());
    assert_eq!(s.log.lock().unwrap().msi, vec![Some(2)]);
    let routes = s.routes.routes.lock().unwrap().clone();
    assert!(routes.contains(&(
        0,
        MsiMessage {
            address: 0xfee0_1000,
            data: 0x4440
        }
    )));
    assert!(routes.contains(&(
        1,
        MsiMessage {
            address: 0xfee0_1000,
            data: 0x4441
        }
    )));
    let masks = s.routes.masks.lock().unwrap().clone();
    assert!(
        masks.contains(&(0, false)) && masks.contains(&(1, true)),
        "{masks:?}"
    );
    assert_eq!(
        s.pci.read_config(0x40 / 4) >> 16,
        0x0195,
        "enabled, 2 messages"
    );
    // Asking for more messages than capable is clamped; none of it reaches the device.
    s.pci.write_config(0x40 / 4, 2, &0x0071u16.to_le_bytes());
    assert_eq!(
        s.pci.read_config(0x40 / 4) >> 16 & 0x70,
        0x20,
        "4 messages at most"
    );
    assert!(s.log.lock().unwrap().config_writes.is_empty());
    // Disable.
    s.pci.write_config(0x40 / 4, 2, &0x0000u16.to_le_bytes());
    assert_eq!(s.log.lock().unwrap().msi.last(), Some(&None));
}

/// Found by the vfio fuzz target: a function whose MSI capability claims a reserved
/// multiple-message count (6 or 7) let the guest enable 64 or 128 vectors; MSI has 32.
#[test]
fn msi_never_asks_for_more_than_32_vectors() {
    let mut c = device_config();
    // 64-bit, masking, 7 (reserved) capable.
    put(&mut c, 0x40, &[MSI_CAP_ID, 0x60, 0x8e, 0x01]);
    let mut s = setup_with(c);
    s.pci.write_config(0x40 / 4, 2, &0x0071u16.to_le_bytes());
    assert_eq!(s.log.lock().unwrap().msi, vec![Some(32)]);
    assert_eq!(
        s.pci.read_config(0x40 / 4) >> 16 & 0x70,
        0x50,
        "32 messages at most"
    );
}
