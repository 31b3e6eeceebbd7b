//! PCI: configuration space, a host bridge with legacy (0xCF8/0xCFC) and ECAM access, BARs
//! on the MMIO bus, and MSI-X.
//!
//! A function implements [`PciDevice`]; the [`PciRoot`] owns bus 0, routes configuration
//! accesses to the function in a slot and keeps each BAR mapped on the MMIO bus where the
//! guest put it. Nothing here is virtio-specific: virtio-pci and VFIO functions both sit on
//! this interface.

mod config;
pub mod msix;
mod root;

use std::io;

pub use config::{BarKind, BarMove, CONFIG_SIZE, ConfigError, ConfigSpace, NUM_BARS, PciIds};
pub use root::{
    ECAM_SIZE, PCI_CONFIG_IO_BASE, PCI_CONFIG_IO_LEN, PciConfigIo, PciEcam, PciRoot, PciRootError,
    SLOTS,
};

/// A PCI function as the root sees it. Offsets in BAR accesses are relative to the BAR.
pub trait PciDevice: Send {
    /// Reads configuration dword `reg` (0..1024).
    fn read_config(&mut self, reg: usize) -> u32;
    /// Writes `data` at byte `offset` (0..4) of configuration dword `reg`; returns the BAR
    /// the write moved, if any.
    fn write_config(&mut self, reg: usize, offset: usize, data: &[u8]) -> Option<BarMove>;
    /// The implemented BARs: (index, guest address, size).
    fn bars(&self) -> Vec<(usize, u64, u64)>;
    /// The guest reads a BAR.
    fn read_bar(&mut self, bar: usize, offset: u64, data: &mut [u8]);
    /// The guest writes a BAR.
    fn write_bar(&mut self, bar: usize, offset: u64, data: &[u8]);
    /// A BAR moved: re-point what the device registered at the old address (ioeventfds,
    /// memory slots). The root has already moved the bus mapping.
    fn bar_moved(&mut self, moved: BarMove) -> io::Result<()> {
        let _ = moved;
        Ok(())
    }
}
