//! The VFIO function model between a mock host device and a hostile guest. The host
//! device's configuration space (capability chain, BARs, MSI and MSI-X) comes from the
//! input, as do the regions' sizes; then the guest's configuration and BAR accesses and
//! BAR moves. The mock fails the target if the model reads or writes a region out of its
//! bounds, maps a BAR area outside its region, or enables more MSI-X vectors than the
//! table holds.
#![no_main]

use std::io;
use std::sync::{Arc, Mutex};

use devices::pci::{CONFIG_SIZE, PciDevice};
use devices::testing::Msi;
use devices::vfio::{CONFIG_REGION, GuestMapper, RegionInfo, VfioPci, VfioRegions};
use libfuzzer_sys::fuzz_target;

struct Mock {
    config: [u8; CONFIG_SIZE],
    regions: [RegionInfo; 8],
}

impl Mock {
    fn check(&self, index: u32, offset: u64, len: usize) {
        let size = if index == CONFIG_REGION {
            CONFIG_SIZE as u64
        } else {
            self.regions.get(index as usize).map_or(0, |r| r.size)
        };
        assert!(
            offset
                .checked_add(len as u64)
                .is_some_and(|end| end <= size),
            "region {index}: {len} bytes at {offset:#x}, size {size:#x}"
        );
    }
}

impl VfioRegions for Mock {
    fn region(&self, index: u32) -> RegionInfo {
        self.regions
            .get(index as usize)
            .copied()
            .unwrap_or_default()
    }
    fn read(&self, index: u32, offset: u64, data: &mut [u8]) {
        self.check(index, offset, data.len());
        if index == CONFIG_REGION {
            let o = offset as usize;
            data.copy_from_slice(&self.config[o..o + data.len()]);
        } else {
            data.fill(offset as u8);
        }
    }
    fn write(&self, index: u32, offset: u64, data: &[u8]) {
        self.check(index, offset, data.len());
    }
    fn enable_msix(&self, vectors: usize) -> io::Result<()> {
        assert!(vectors <= 2048, "{vectors} MSI-X vectors");
        Ok(())
    }
    fn disable_msix(&self) -> io::Result<()> {
        Ok(())
    }
    fn enable_msi(&self, vectors: usize) -> io::Result<()> {
        assert!(
            vectors.is_power_of_two() && vectors <= 32,
            "{vectors} MSI vectors"
        );
        Ok(())
    }
    fn disable_msi(&self) -> io::Result<()> {
        Ok(())
    }
    fn mmap(&self, index: u32, offset: u64, len: u64) -> io::Result<usize> {
        let region = self.region(index);
        assert!(region.mmap, "region {index} is not mappable");
        assert!(
            offset
                .checked_add(len)
                .is_some_and(|end| end <= region.size),
            "mmap of region {index}: {len:#x} at {offset:#x}, size {:#x}",
            region.size
        );
        Ok(0x7f00_0000_0000 + ((index as usize) << 32) + offset as usize)
    }
}

#[derive(Default)]
struct Mapper(Mutex<u32>);
impl GuestMapper for Mapper {
    fn map(&self, guest: u64, _host: usize, len: u64) -> io::Result<u32> {
        assert!(
            len > 0 && guest.checked_add(len).is_some(),
            "{len:#x} at {guest:#x}"
        );
        let mut next = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *next += 1;
        Ok(*next)
    }
    fn unmap(&self, _: u32) -> io::Result<()> {
        Ok(())
    }
}

// Input: 256 bytes of configuration space, 8 region sizes (a byte each: 0, or a power of
// two from 16 bytes up, with bit 7 for mappable), then guest operations of 8 bytes.
fuzz_target!(|data: &[u8]| {
    let Some((config, rest)) = data.split_first_chunk::<256>() else {
        return;
    };
    let Some((sizes, ops)) = rest.split_first_chunk::<8>() else {
        return;
    };
    let mut full = [0u8; CONFIG_SIZE];
    full[..256].copy_from_slice(config);
    let mut regions = [RegionInfo::default(); 8];
    for (r, s) in regions.iter_mut().zip(sizes) {
        let shift = u32::from(s & 0x1f);
        *r = RegionInfo {
            size: if shift < 4 { 0 } else { 1u64 << shift },
            mmap: s & 0x80 != 0,
        };
    }
    regions[CONFIG_REGION as usize] = RegionInfo {
        size: CONFIG_SIZE as u64,
        mmap: false,
    };
    let mock = Mock {
        config: full,
        regions,
    };
    let mut next = 0xc000_0000u64;
    let mut place = |size: u64, _is64: bool| {
        let addr = next.checked_next_multiple_of(size)?;
        next = addr.checked_add(size)?;
        Some(addr)
    };
    let Ok(mut pci) = VfioPci::new(Box::new(mock), Arc::new(Msi::default()), &mut place) else {
        return;
    };
    pci.map_bars(Arc::new(Mapper::default()));
    for op in ops.chunks_exact(8) {
        let reg = usize::from(u16::from_le_bytes([op[1], op[2]])) % 1024;
        let len = [1usize, 2, 4, 4][usize::from(op[0] >> 4 & 3)];
        let offset = usize::from(op[3]) % (5 - len);
        let bytes = &op[4..4 + len];
        match op[0] % 4 {
            0 => {
                pci.read_config(reg);
            }
            1 => {
                if let Some(moved) = pci.write_config(reg, offset, bytes) {
                    let _ = pci.bar_moved(moved);
                }
            }
            kind => {
                // As the root delivers them: inside a BAR the function has.
                let bars = pci.bars();
                let Some(&(bar, _, size)) = bars.get(usize::from(op[3]) % bars.len().max(1)) else {
                    continue;
                };
                if size < len as u64 {
                    continue;
                }
                let at = u64::from(u16::from_le_bytes([op[1], op[2]])) % (size - len as u64 + 1);
                if kind == 2 {
                    let mut buf = [0u8; 4];
                    pci.read_bar(bar, at, &mut buf[..len]);
                } else {
                    pci.write_bar(bar, at, bytes);
                }
            }
        }
    }
});
