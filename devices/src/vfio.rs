//! A PCI function passed through with VFIO, as the guest sees it.
//!
//! The host side (the VFIO device file, its regions, its interrupts) is behind
//! [`VfioRegions`], which the VMM implements with vfio-ioctls and tests with a mock. This
//! module decides what the guest sees:
//!
//! - **Configuration space** is the device's own, read and written through VFIO, except
//!   what the VMM must own: the BARs (sized from the VFIO regions, placed by the VMM,
//!   moved by the guest; the device keeps its host addresses), the expansion ROM (hidden),
//!   the MSI-X capability's message control (MSI-X is enabled through VFIO's interrupt
//!   interface, not by the config write), and the MSI capability (hidden from the
//!   capability list when the function has MSI-X; emulated when it has only MSI, its
//!   messages becoming KVM routes and its enable bit enabling MSI through VFIO).
//! - **BARs**: accesses to the MSI-X table and PBA are emulated (the guest's messages become
//!   KVM routes through [`MsiRoutes`]); every other access goes to the device region. The
//!   VMM may map the rest of each BAR into the guest directly ([`VfioPci::mappable`] gives
//!   the areas, with the table and PBA pages left out), so that only table and PBA trap.
//!
//! Guest-written values are bounded: configuration offsets beyond 256 bytes read as ones
//! and ignore writes, BAR accesses beyond a region's size are dropped, and a malformed
//! capability list (a loop, a pointer into the header) stops the walk.

use std::io;
use std::sync::Arc;

use crate::pci::msix::{MSIX_CAP_ID, MSIX_MAX_VECTORS, MsiRoutes, MsixTable, MsixVectors};
use crate::pci::{BarKind, BarMove, CONFIG_SIZE, ConfigSpace, NUM_BARS, PciDevice, PciIds};

/// VFIO's region index of the configuration space.
pub const CONFIG_REGION: u32 = 7;
const MSI_CAP_ID: u8 = 0x05;
const CAP_PTR: usize = 0x34;
const ROM_BAR: usize = 0x30;
const PAGE: u64 = 4096;

/// A region of the device, as VFIO reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RegionInfo {
    /// Size in bytes (0: the region does not exist).
    pub size: u64,
    /// The region may be mmapped (its whole extent, for this model).
    pub mmap: bool,
}

/// The host side of a passed-through function.
pub trait VfioRegions: Send {
    /// Region `index` (BARs 0–5, ROM 6, configuration space 7).
    fn region(&self, index: u32) -> RegionInfo;
    /// Reads `data.len()` bytes of region `index` at `offset`.
    fn read(&self, index: u32, offset: u64, data: &mut [u8]);
    /// Writes `data` to region `index` at `offset`.
    fn write(&self, index: u32, offset: u64, data: &[u8]);
    /// Enables MSI-X with `vectors` vectors, each signalling the VMM's notifier for it.
    fn enable_msix(&self, vectors: usize) -> io::Result<()>;
    /// Disables MSI-X.
    fn disable_msix(&self) -> io::Result<()>;
    /// Enables MSI with `vectors` vectors (a power of two up to 32).
    fn enable_msi(&self, vectors: usize) -> io::Result<()>;
    /// Disables MSI.
    fn disable_msi(&self) -> io::Result<()>;
    /// Maps `len` bytes of region `index` at `offset` into this process; the host address.
    /// The mapping lives as long as this object.
    fn mmap(&self, index: u32, offset: u64, len: u64) -> io::Result<usize>;
}

/// Maps host memory into the guest's physical address space (KVM memory slots).
pub trait GuestMapper: Send + Sync {
    /// Maps `len` bytes at host address `host` to guest address `guest`; an id for
    /// [`GuestMapper::unmap`].
    fn map(&self, guest: u64, host: usize, len: u64) -> io::Result<u32>;
    /// Removes mapping `id`.
    fn unmap(&self, id: u32) -> io::Result<()>;
}

/// A BAR area mapped into the guest.
#[derive(Debug, Clone, Copy)]
struct Mapped {
    bar: usize,
    offset: u64,
    len: u64,
    host: usize,
    id: Option<u32>,
}

/// Where the MSI-X capability puts its structures.
#[derive(Debug)]
struct Msix {
    /// Capability offset in configuration space.
    cap: usize,
    /// The table's BAR and offset in it.
    table_bar: usize,
    table_offset: u64,
    /// The PBA's BAR and offset in it.
    pba_bar: usize,
    pba_offset: u64,
    /// Message control as the guest last wrote it (enable and function mask bits).
    control: u16,
    /// Table size field (vectors − 1), from the device.
    size_field: u16,
    table: MsixTable,
    /// Whether VFIO has MSI-X enabled.
    enabled: bool,
}

/// The MSI capability, emulated, for a function without a usable MSI-X: the guest's
/// address and data become KVM routes, enabling it enables MSI through VFIO.
struct Msi {
    /// Capability offset, and the end of its registers.
    cap: usize,
    end: usize,
    /// The registers as the guest sees them, from `cap`.
    regs: [u8; 24],
    is64: bool,
    /// Per-vector masking.
    pvm: bool,
    /// Vectors enabled in VFIO (0: off).
    enabled: usize,
    routes: Arc<dyn MsiRoutes>,
}

impl Msi {
    fn control(&self) -> u16 {
        u16::from_le_bytes([self.regs[2], self.regs[3]])
    }

    fn data_offset(&self) -> usize {
        if self.is64 { 12 } else { 8 }
    }

    /// The guest wrote `data` at `at` bytes into the capability.
    fn write(&mut self, at: usize, data: &[u8], dev: &dyn VfioRegions) {
        let capable = (self.control() >> 1) & 7;
        let data_off = self.data_offset();
        for (i, b) in data.iter().enumerate() {
            let k = at + i;
            let mask: u8 = match k {
                2 => 0x71, // enable, multiple message enable
                4 => 0xfc,
                5..=7 => 0xff,
                8..=11 if self.is64 => 0xff,
                k if k == data_off || k == data_off + 1 => 0xff,
                k if self.pvm && (data_off + 4..data_off + 8).contains(&k) => 0xff,
                _ => 0,
            };
            if let Some(r) = self.regs.get_mut(k) {
                *r = (*r & !mask) | (b & mask);
            }
        }
        // Multiple message enable cannot exceed what the function is capable of, nor 32
        // vectors (5: 6 and 7 are reserved, in either field).
        let mme = ((self.control() >> 4) & 7).min(capable).min(5);
        self.regs[2] = (self.regs[2] & !0x70) | u8::try_from(mme << 4).unwrap_or(0);
        self.apply(dev);
    }

    fn apply(&mut self, dev: &dyn VfioRegions) {
        let control = self.control();
        let enable = control & 1 != 0;
        let count = 1usize << ((control >> 4) & 7);
        let dword = |o: usize| {
            u32::from_le_bytes([
                self.regs[o],
                self.regs[o + 1],
                self.regs[o + 2],
                self.regs[o + 3],
            ])
        };
        if !enable {
            if self.enabled > 0 {
                if let Err(e) = dev.disable_msi() {
                    log::warn!("VFIO: cannot disable MSI: {e}");
                }
                for v in 0..self.enabled {
                    let _ = self.routes.set_masked(v, true);
                }
                self.enabled = 0;
            }
            return;
        }
        let address = u64::from(dword(4))
            | if self.is64 {
                u64::from(dword(8)) << 32
            } else {
                0
            };
        let data_off = self.data_offset();
        let data = u32::from(u16::from_le_bytes([
            self.regs[data_off],
            self.regs[data_off + 1],
        ]));
        let masks = if self.pvm { dword(data_off + 4) } else { 0 };
        for v in 0..count {
            // With several messages the function sets the low bits of the data itself.
            let msg = crate::pci::msix::MsiMessage {
                address,
                data: (data & !(u32::try_from(count - 1).unwrap_or(0)))
                    | u32::try_from(v).unwrap_or(0),
            };
            if let Err(e) = self.routes.set_route(v, msg) {
                log::warn!("VFIO: MSI vector {v}: {e}");
            }
        }
        if self.enabled != count {
            if self.enabled > 0 {
                let _ = dev.disable_msi();
            }
            match dev.enable_msi(count) {
                Ok(()) => self.enabled = count,
                Err(e) => {
                    log::warn!("VFIO: cannot enable MSI: {e}");
                    self.enabled = 0;
                    return;
                }
            }
        }
        for v in 0..count {
            let _ = self.routes.set_masked(v, masks & (1 << v) != 0);
        }
    }
}

/// Why a function cannot be modelled.
#[derive(Debug, thiserror::Error)]
pub enum VfioPciError {
    /// A BAR does not fit where the VMM placed it, or the VMM had no room.
    #[error("BAR {0}: no room in the guest's PCI window, or a size VFIO cannot describe")]
    Bar(usize),
}

/// The passed-through function.
pub struct VfioPci {
    dev: Box<dyn VfioRegions>,
    /// The BARs as the guest sees them (only the BAR registers of this are used).
    bars: ConfigSpace,
    /// Per BAR: its VFIO region size, when it is exposed.
    region_size: [u64; NUM_BARS],
    msix: Option<Msix>,
    /// MSI, when the function has no usable MSI-X.
    msi: Option<Msi>,
    /// Bytes of configuration space reads that differ from the device's: capability list
    /// pointers re-linked around the hidden MSI capability.
    patches: Vec<(usize, u8)>,
    /// The hidden MSI capability's extent.
    hidden: Option<(usize, usize)>,
    /// Where BAR areas are mapped into the guest, when they are.
    mapper: Option<Arc<dyn GuestMapper>>,
    mapped: Vec<Mapped>,
}

impl Drop for VfioPci {
    fn drop(&mut self) {
        if let Some(mapper) = &self.mapper {
            for id in self.mapped.iter().filter_map(|m| m.id) {
                let _ = mapper.unmap(id);
            }
        }
    }
}

impl std::fmt::Debug for VfioPci {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VfioPci")
            .field("region_size", &self.region_size)
            .field("msix", &self.msix.as_ref().map(|m| m.size_field + 1))
            .finish_non_exhaustive()
    }
}

fn dword(bytes: &[u8], off: usize) -> u32 {
    bytes
        .get(off..off + 4)
        .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// The capabilities in `config`: (offset, id), in list order, the walk bounded.
fn capabilities(config: &[u8; CONFIG_SIZE]) -> Vec<(usize, u8)> {
    let mut caps = Vec::new();
    // Status bit 4: the function has a capability list.
    if config[0x06] & 0x10 == 0 {
        return caps;
    }
    let mut off = usize::from(config[CAP_PTR] & !3);
    while off >= 0x40 && off + 2 <= CONFIG_SIZE && caps.len() < 48 {
        if caps.iter().any(|(o, _)| *o == off) {
            break; // a loop
        }
        caps.push((off, config[off]));
        off = usize::from(config[off + 1] & !3);
    }
    caps
}

impl VfioPci {
    /// Models `dev`, with MSI-X delivered through `routes` and each BAR placed where
    /// `place(size, 64-bit)` says (a size-aligned guest address, or `None` for no room).
    pub fn new(
        dev: Box<dyn VfioRegions>,
        routes: Arc<dyn MsiRoutes>,
        place: &mut dyn FnMut(u64, bool) -> Option<u64>,
    ) -> Result<Self, VfioPciError> {
        let mut config = [0u8; CONFIG_SIZE];
        dev.read(CONFIG_REGION, 0, &mut config);
        let ids = PciIds {
            vendor: u16::from_le_bytes([config[0], config[1]]),
            device: u16::from_le_bytes([config[2], config[3]]),
            class: u32::from_le_bytes([config[9], config[10], config[11], 0]),
            revision: config[8],
            subsystem_vendor: u16::from_le_bytes([config[0x2c], config[0x2d]]),
            subsystem: u16::from_le_bytes([config[0x2e], config[0x2f]]),
        };
        let mut bars = ConfigSpace::new(ids);
        let mut region_size = [0u64; NUM_BARS];
        let mut i = 0;
        while i < NUM_BARS {
            let reg = dword(&config, 0x10 + 4 * i);
            let info = dev.region(u32::try_from(i).unwrap_or(0));
            let is64 = reg & 0b111 == 0b100;
            let step = if is64 { 2 } else { 1 };
            if info.size == 0 || reg & 1 == 1 {
                // Absent, or an I/O BAR: not exposed.
                if reg & 1 == 1 && info.size > 0 {
                    log::warn!("VFIO: BAR {i} is an I/O BAR; the guest does not get it");
                }
                i += step;
                continue;
            }
            // The guest sees at least 16 bytes, and whole pages are what can be mapped.
            let size = info.size.max(16).next_power_of_two();
            let kind = if is64 { BarKind::Mem64 } else { BarKind::Mem32 };
            let addr = place(size, is64).ok_or(VfioPciError::Bar(i))?;
            bars.add_bar(i, kind, size, reg & 0b1000 != 0, addr)
                .map_err(|_| VfioPciError::Bar(i))?;
            region_size[i] = info.size;
            i += step;
        }
        let caps = capabilities(&config);
        let msix = caps
            .iter()
            .find(|(_, id)| *id == MSIX_CAP_ID)
            .and_then(|&(cap, _)| {
                let control = u16::from_le_bytes([config[cap + 2], config[cap + 3]]);
                let size_field = control & 0x7ff;
                let count = usize::from(size_field) + 1;
                let table = dword(&config, cap + 4);
                let pba = dword(&config, cap + 8);
                let (table_bar, pba_bar) = ((table & 7) as usize, (pba & 7) as usize);
                if count > MSIX_MAX_VECTORS
                    || table_bar >= NUM_BARS
                    || pba_bar >= NUM_BARS
                    || region_size[table_bar] == 0
                    || region_size[pba_bar] == 0
                {
                    log::warn!("VFIO: an MSI-X capability this model cannot use; hidden");
                    return None;
                }
                let vectors = Arc::new(MsixVectors::new(count, routes.clone()));
                Some(Msix {
                    cap,
                    table_bar,
                    table_offset: u64::from(table & !7),
                    pba_bar,
                    pba_offset: u64::from(pba & !7),
                    control: 0,
                    size_field,
                    table: MsixTable::new(vectors),
                    enabled: false,
                })
            });
        // MSI's extent: its length follows its control word (10 bytes, 4 more for 64-bit
        // addresses, 10 more for per-vector masking), never past the next capability.
        let msi_extent = caps
            .iter()
            .find(|(_, id)| *id == MSI_CAP_ID)
            .map(|&(msi, _)| {
                let control = u16::from_le_bytes([config[msi + 2], config[msi + 3]]);
                let len = 10
                    + if control & 0x80 != 0 { 4 } else { 0 }
                    + if control & 0x100 != 0 { 10 } else { 0 };
                let next = caps
                    .iter()
                    .map(|(o, _)| *o)
                    .filter(|o| *o > msi)
                    .min()
                    .unwrap_or(CONFIG_SIZE);
                (msi, (msi + len).next_multiple_of(4).min(next), control)
            });
        // Without MSI-X, MSI is the function's interrupt: emulated. With MSI-X, hidden.
        let msi = match (&msix, msi_extent) {
            (None, Some((cap, end, control))) if end - cap >= 12 => {
                let mut regs = [0u8; 24];
                regs[..end - cap].copy_from_slice(&config[cap..end]);
                // Disabled, one message, whatever the device had.
                regs[2] &= !0x71;
                Some(Msi {
                    cap,
                    end,
                    regs,
                    is64: control & 0x80 != 0,
                    pvm: control & 0x100 != 0,
                    enabled: 0,
                    routes: routes.clone(),
                })
            }
            _ => None,
        };
        // Re-link the list around MSI (when MSI-X is used) and around an MSI-X capability
        // the model cannot use.
        let hide: Vec<usize> = caps
            .iter()
            .filter(|(_, id)| {
                (*id == MSI_CAP_ID && msi.is_none()) || (*id == MSIX_CAP_ID && msix.is_none())
            })
            .map(|(off, _)| *off)
            .collect();
        let mut patches = Vec::new();
        let mut hidden = None;
        let kept: Vec<usize> = caps
            .iter()
            .map(|(o, _)| *o)
            .filter(|o| !hide.contains(o))
            .collect();
        if !hide.is_empty() {
            let first = kept.first().copied().unwrap_or(0);
            patches.push((CAP_PTR, u8::try_from(first).unwrap_or(0)));
            for pair in kept.windows(2) {
                patches.push((pair[0] + 1, u8::try_from(pair[1]).unwrap_or(0)));
            }
            if let Some(&last) = kept.last() {
                patches.push((last + 1, 0));
            }
            if msi.is_none() {
                // A hidden MSI's writes must never reach the device either.
                hidden = msi_extent.map(|(start, end, _)| (start, end));
            }
        }
        Ok(Self {
            dev,
            bars,
            region_size,
            msix,
            msi,
            patches,
            hidden,
            mapper: None,
            mapped: Vec::new(),
        })
    }

    /// Maps every BAR area outside the MSI-X pages straight into the guest through
    /// `mapper`, so that only the table and PBA trap. An area VFIO will not mmap stays
    /// trapped. Returns how many bytes are mapped.
    pub fn map_bars(&mut self, mapper: Arc<dyn GuestMapper>) -> u64 {
        let mut total = 0;
        for (bar, addr, _) in self.bars() {
            for (offset, len) in self.mappable(bar) {
                let host = match self.dev.mmap(u32::try_from(bar).unwrap_or(0), offset, len) {
                    Ok(h) => h,
                    Err(e) => {
                        log::warn!("VFIO: BAR {bar} at {offset:#x}: cannot mmap ({e}); it traps");
                        continue;
                    }
                };
                let id = match mapper.map(addr + offset, host, len) {
                    Ok(id) => Some(id),
                    Err(e) => {
                        log::warn!("VFIO: BAR {bar} at {offset:#x}: cannot map ({e}); it traps");
                        None
                    }
                };
                total += if id.is_some() { len } else { 0 };
                self.mapped.push(Mapped {
                    bar,
                    offset,
                    len,
                    host,
                    id,
                });
            }
        }
        self.mapper = Some(mapper);
        total
    }

    /// Per BAR, the areas (offset, length) that may be mapped into the guest directly:
    /// the whole region where VFIO allows mmap, less the pages holding the MSI-X table and
    /// PBA, in whole pages.
    pub fn mappable(&self, bar: usize) -> Vec<(u64, u64)> {
        let Some(&size) = self.region_size.get(bar) else {
            return vec![];
        };
        let info = self.dev.region(u32::try_from(bar).unwrap_or(0));
        if size < PAGE || !info.mmap {
            return vec![];
        }
        let end = size - size % PAGE;
        let mut holes: Vec<(u64, u64)> = Vec::new();
        if let Some(m) = &self.msix {
            let table_len = m.table.table_len();
            let pba_len = m.table.pba_len();
            for (b, off, len) in [
                (m.table_bar, m.table_offset, table_len),
                (m.pba_bar, m.pba_offset, pba_len),
            ] {
                if b == bar {
                    let start = off - off % PAGE;
                    let stop = off.saturating_add(len).next_multiple_of(PAGE);
                    holes.push((start, stop));
                }
            }
        }
        holes.sort_unstable();
        let mut areas = Vec::new();
        let mut at = 0;
        for (start, stop) in holes {
            // A table the device places past its region's end leaves nothing to skip.
            if start > at && at < end {
                areas.push((at, start.min(end) - at));
            }
            at = at.max(stop);
        }
        if at < end {
            areas.push((at, end - at));
        }
        areas.retain(|&(_, len)| len > 0);
        areas
    }

    fn in_hidden(&self, off: usize) -> bool {
        self.hidden.is_some_and(|(s, e)| (s..e).contains(&off))
    }

    /// The MSI-X structure (table or PBA) an access to `bar` at `offset` falls in.
    fn msix_part(&self, bar: usize, offset: u64) -> Option<(bool, u64)> {
        let m = self.msix.as_ref()?;
        if bar == m.table_bar
            && offset >= m.table_offset
            && offset < m.table_offset + m.table.table_len()
        {
            return Some((true, offset - m.table_offset));
        }
        if bar == m.pba_bar && offset >= m.pba_offset && offset < m.pba_offset + m.table.pba_len() {
            return Some((false, offset - m.pba_offset));
        }
        None
    }

    fn write_msix_control(&mut self, control: u16) {
        let Some(m) = self.msix.as_mut() else {
            return;
        };
        m.control = control & 0xc000;
        let enable = control & 0x8000 != 0;
        if enable != m.enabled {
            let count = usize::from(m.size_field) + 1;
            let result = if enable {
                self.dev.enable_msix(count)
            } else {
                self.dev.disable_msix()
            };
            match result {
                Ok(()) => m.enabled = enable,
                Err(e) => log::warn!(
                    "VFIO: cannot {} MSI-X: {e}",
                    if enable { "enable" } else { "disable" }
                ),
            }
        }
        m.table.write_control(m.control);
    }

    /// Whether the BAR access stays inside what VFIO gave.
    fn in_region(&self, bar: usize, offset: u64, len: usize) -> bool {
        self.region_size
            .get(bar)
            .is_some_and(|&size| offset.checked_add(len as u64).is_some_and(|e| e <= size))
    }
}

impl PciDevice for VfioPci {
    fn read_config(&mut self, reg: usize) -> u32 {
        let off = reg * 4;
        if off + 4 > CONFIG_SIZE {
            return u32::MAX;
        }
        if (0x10..0x28).contains(&off) {
            return self.bars.read_dword(reg);
        }
        if off == ROM_BAR {
            return 0;
        }
        let mut b = [0u8; 4];
        self.dev.read(CONFIG_REGION, off as u64, &mut b);
        for (at, v) in &self.patches {
            if (off..off + 4).contains(at) {
                b[at - off] = *v;
            }
        }
        if let Some(m) = &self.msix
            && off == m.cap
        {
            let control = m.control | m.size_field;
            b[2..4].copy_from_slice(&control.to_le_bytes());
        }
        if self.in_hidden(off) {
            return 0;
        }
        if let Some(msi) = &self.msi
            && (msi.cap..msi.end).contains(&off)
        {
            let at = off - msi.cap;
            // ID and next pointer as the (patched) list has them; the rest emulated.
            let mut v = msi
                .regs
                .get(at..at + 4)
                .map_or([0; 4], |r| [r[0], r[1], r[2], r[3]]);
            if at == 0 {
                v[0] = b[0];
                v[1] = b[1];
            }
            return u32::from_le_bytes(v);
        }
        u32::from_le_bytes(b)
    }

    fn write_config(&mut self, reg: usize, offset: usize, data: &[u8]) -> Option<BarMove> {
        let off = reg * 4;
        if off + 4 > CONFIG_SIZE || offset + data.len() > 4 {
            return None;
        }
        if (0x10..0x28).contains(&off) {
            return self.bars.write(reg, offset, data);
        }
        if off == ROM_BAR || self.in_hidden(off) {
            return None;
        }
        if let Some(msi) = self.msi.as_mut()
            && (msi.cap..msi.end).contains(&off)
        {
            msi.write(off - msi.cap + offset, data, self.dev.as_ref());
            return None;
        }
        if let Some(cap) = self.msix.as_ref().map(|m| m.cap)
            && off == cap
        {
            // Only message control (bytes 2–3) is writable; it is emulated.
            let mut control = (self.msix.as_ref().map_or(0, |m| m.control)).to_le_bytes();
            for (i, byte) in data.iter().enumerate() {
                if let Some(at) = (offset + i).checked_sub(2)
                    && at < 2
                {
                    control[at] = *byte;
                }
            }
            if offset + data.len() > 2 {
                self.write_msix_control(u16::from_le_bytes(control));
            }
            return None;
        }
        if let Some(m) = &self.msix
            && (m.cap + 4..m.cap + 12).contains(&off)
        {
            return None; // table and PBA locations are read-only
        }
        self.dev.write(CONFIG_REGION, (off + offset) as u64, data);
        None
    }

    fn bars(&self) -> Vec<(usize, u64, u64)> {
        (0..NUM_BARS)
            .filter_map(|i| self.bars.bar(i).map(|(addr, size)| (i, addr, size)))
            .collect()
    }

    fn read_bar(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        if let Some((table, at)) = self.msix_part(bar, offset) {
            let Some(m) = &self.msix else { return };
            if table {
                m.table.read_table(at, data);
            } else {
                m.table.read_pba(at, data);
            }
            return;
        }
        if self.in_region(bar, offset, data.len()) {
            self.dev.read(u32::try_from(bar).unwrap_or(0), offset, data);
        }
    }

    fn bar_moved(&mut self, moved: BarMove) -> io::Result<()> {
        let Some(mapper) = self.mapper.clone() else {
            return Ok(());
        };
        for m in self.mapped.iter_mut().filter(|m| m.bar == moved.bar) {
            if let Some(id) = m.id.take() {
                mapper.unmap(id)?;
            }
            m.id = Some(mapper.map(moved.to + m.offset, m.host, m.len)?);
        }
        Ok(())
    }

    fn write_bar(&mut self, bar: usize, offset: u64, data: &[u8]) {
        if let Some((table, at)) = self.msix_part(bar, offset) {
            if table && let Some(m) = self.msix.as_mut() {
                m.table.write_table(at, data);
            }
            return; // the PBA is read-only
        }
        if self.in_region(bar, offset, data.len()) {
            self.dev
                .write(u32::try_from(bar).unwrap_or(0), offset, data);
        }
    }
}

#[cfg(test)]
mod tests;
