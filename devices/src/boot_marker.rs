//! The boot-time marker: a guest write here is stamped with the time since `vmm` started.
//!
//! It lives at a fixed MMIO address outside guest RAM, so a guest's userspace can reach it
//! with busybox `devmem` even where the kernel has no `/dev/port` (the Debian cloud kernel
//! has none): `devmem 0xfebff000 8 1` from `/init` marks "userspace is up". Each marker is
//! logged and kept (a bounded number of them) for the API's `info`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::bus::BusDevice;

/// Guest-physical address of the marker register.
pub const BOOT_MARKER_ADDR: u64 = 0xfebf_f000;
/// Size of the marker's MMIO window.
pub const BOOT_MARKER_LEN: u64 = 0x1000;
/// How many markers are kept; later ones are logged but not stored.
pub const MAX_MARKERS: usize = 64;

/// One marker: the value the guest wrote and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marker {
    /// The byte (or word) written.
    pub value: u64,
    /// Time since `vmm` started.
    pub since_start: Duration,
}

/// Markers shared with the VMM.
pub type Markers = Arc<Mutex<Vec<Marker>>>;

/// The marker device.
#[derive(Debug)]
pub struct BootMarker {
    start: Instant,
    markers: Markers,
}

impl BootMarker {
    /// A marker device measuring from `start`, recording into `markers`.
    pub fn new(start: Instant, markers: Markers) -> Self {
        Self { start, markers }
    }
}

impl BusDevice for BootMarker {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset != 0 || data.is_empty() || data.len() > 8 {
            return;
        }
        let mut bytes = [0u8; 8];
        bytes[..data.len()].copy_from_slice(data);
        let marker = Marker {
            value: u64::from_le_bytes(bytes),
            since_start: self.start.elapsed(),
        };
        log::info!(
            "boot marker {} at {:.1} ms since start",
            marker.value,
            marker.since_start.as_secs_f64() * 1000.0
        );
        let mut markers = self.markers.lock().unwrap_or_else(|e| e.into_inner());
        if markers.len() < MAX_MARKERS {
            markers.push(marker);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_bounded_markers() {
        let markers = Markers::default();
        let mut dev = BootMarker::new(Instant::now(), markers.clone());
        dev.write(0, &[7]);
        dev.write(4, &[8]);
        dev.write(0, &[]);
        assert_eq!(markers.lock().unwrap().len(), 1);
        assert_eq!(markers.lock().unwrap()[0].value, 7);
        for _ in 0..2 * MAX_MARKERS {
            dev.write(0, &[1, 2]);
        }
        assert_eq!(markers.lock().unwrap().len(), MAX_MARKERS);
        assert_eq!(markers.lock().unwrap()[1].value, 0x0201);
    }
}
