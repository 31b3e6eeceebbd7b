//! PCI configuration and BAR accesses in any order: port I/O through 0xCF8/0xCFC, ECAM,
//! and MMIO anywhere, against a virtio-pci function (with a device model that does nothing
//! on activation, so that no thread starts) and another device fixed on the MMIO bus. The
//! invariant: whatever the guest moves where, the other device stays mapped and reachable,
//! and no access panics.
#![no_main]

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use devices::pci::{ECAM_SIZE, PciConfigIo, PciEcam, PciRoot};
use devices::testing::{Msi, NoIoEvents};
use devices::virtio::VirtioPci;
use devices::virtio::{Activation, VirtioDevice};
use devices::{Bus, BusDevice};
use libfuzzer_sys::fuzz_target;

const VIRTIO_BAR: u64 = 0xc000_0000;
const OTHER: u64 = 0xd000_0000;
const OTHER_LEN: u64 = 0x1000;

/// A block-like device with two queues that accepts activation and does nothing.
struct Idle {
    sizes: [u16; 2],
}
impl VirtioDevice for Idle {
    fn device_type(&self) -> u16 {
        2
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.sizes
    }
    fn features(&self) -> u64 {
        (1 << 32) | (1 << 29) | (1 << 28)
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        data.fill(offset as u8);
    }
    fn write_config(&mut self, _: u64, _: &[u8]) {}
    fn activate(&mut self, _: Activation) -> io::Result<()> {
        Ok(())
    }
    fn reset(&mut self) {}
}

/// Counts the reads that reach it.
struct Other(Arc<AtomicUsize>);
impl BusDevice for Other {
    fn read(&mut self, _: u64, data: &mut [u8]) {
        self.0.fetch_add(1, Ordering::Relaxed);
        data.fill(0x5a);
    }
    fn write(&mut self, _: u64, _: &[u8]) {}
}

fuzz_target!(|data: &[u8]| {
    let mmio = Arc::new(Bus::new());
    let root = Arc::new(PciRoot::new(mmio.clone()));
    let mem = devices::virtio::fuzzing::memory(&[]);
    let Ok(virtio) = VirtioPci::new(
        Box::new(Idle { sizes: [16, 16] }),
        mem,
        VIRTIO_BAR,
        Arc::new(Msi::default()),
        Arc::new(NoIoEvents),
    ) else {
        return;
    };
    if root.add(Arc::new(Mutex::new(virtio))).is_err() {
        return;
    }
    let reached = Arc::new(AtomicUsize::new(0));
    if mmio
        .insert(
            Arc::new(Mutex::new(Other(reached.clone()))),
            OTHER,
            OTHER_LEN,
        )
        .is_err()
    {
        return;
    }
    let mut io = PciConfigIo::new(root.clone());
    let mut ecam = PciEcam::new(root.clone());
    // Each operation: a kind, a 4-byte offset or address, up to 4 data bytes.
    for op in data.chunks_exact(9) {
        let len = [1usize, 2, 4, 4][usize::from(op[0] >> 4 & 3)];
        let arg = u32::from_le_bytes([op[1], op[2], op[3], op[4]]);
        let bytes = &op[5..5 + len];
        let mut buf = [0u8; 4];
        match op[0] % 6 {
            0 => io.write(u64::from(arg % 8), bytes),
            1 => io.read(u64::from(arg % 8), &mut buf[..len]),
            2 => ecam.write(u64::from(arg) % ECAM_SIZE, bytes),
            3 => ecam.read(u64::from(arg) % ECAM_SIZE, &mut buf[..len]),
            4 => {
                mmio.write(u64::from(arg), bytes);
            }
            _ => {
                mmio.read(u64::from(arg), &mut buf[..len]);
            }
        }
        let before = reached.load(Ordering::Relaxed);
        let mut probe = [0u8; 1];
        assert!(
            mmio.read(OTHER + u64::from(arg) % OTHER_LEN, &mut probe),
            "the other device was unmapped"
        );
        assert_eq!(probe, [0x5a], "the other device was shadowed");
        assert_eq!(reached.load(Ordering::Relaxed), before + 1);
    }
});
