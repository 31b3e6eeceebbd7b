//! The modern (virtio 1.x) PCI transport.
//!
//! One 32 KiB memory BAR holds every structure the capabilities point at:
//!
//! ```text
//!  BAR 0 offset  structure
//!  0x0000        common configuration (features, status, queue set-up)
//!  0x1000        ISR status (unused: interrupts are MSI-X only, there is no INTx pin)
//!  0x2000        device-specific configuration
//!  0x3000        queue notifications, 4 bytes per queue (an ioeventfd each)
//!  0x4000        MSI-X table, one vector per queue and one for configuration changes
//!  0x6000        MSI-X pending-bit array
//! ```
//!
//! Everything the driver writes is checked before it is used: unknown offsets and widths
//! are ignored, queue sizes must be powers of two no larger than the device's maximum,
//! vectors out of range read back as NO_VECTOR, queues are validated against guest memory
//! before the device gets them, and nothing can be reconfigured while the device runs.

use std::io;
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use virtio_bindings::virtio_config;

use super::{
    Activation, IoEventRegistry, NeedsReset, VIRTIO_F_VERSION_1, VirtioDevice, VirtioInterrupt,
};
use crate::pci::msix::{MSIX_CAP_ID, MsiRoutes, MsixTable, MsixVectors};
use crate::pci::{BarKind, BarMove, ConfigError, ConfigSpace, PciDevice, PciIds};

/// Size of BAR 0.
pub const BAR_SIZE: u64 = 0x8000;
const COMMON: u64 = 0x0000;
const COMMON_LEN: u64 = 0x38;
const ISR: u64 = 0x1000;
const DEVICE: u64 = 0x2000;
const DEVICE_LEN: u64 = 0x1000;
const NOTIFY: u64 = 0x3000;
const NOTIFY_MULTIPLIER: u32 = 4;
const MSIX_TABLE: u64 = 0x4000;
const MSIX_PBA: u64 = 0x6000;
// virtio-bindings has no virtio_pci module: the capability layout and types below are the
// virtio 1.2 specification's (4.1.4).
const VENDOR_CAP: u8 = 0x09;
const CAP_COMMON: u8 = 1;
const CAP_NOTIFY: u8 = 2;
const CAP_ISR: u8 = 3;
const CAP_DEVICE: u8 = 4;
/// "No vector" in msix_config and queue_msix_vector.
const NO_VECTOR: u16 = 0xffff;
const STATUS_FEATURES_OK: u8 = super::byte(virtio_config::VIRTIO_CONFIG_S_FEATURES_OK);
const STATUS_DRIVER_OK: u8 = super::byte(virtio_config::VIRTIO_CONFIG_S_DRIVER_OK);
const STATUS_NEEDS_RESET: u8 = super::byte(virtio_config::VIRTIO_CONFIG_S_NEEDS_RESET);

/// Why the transport cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum VirtioPciError {
    /// Configuration space layout.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// An eventfd or ioeventfd.
    #[error("virtio-pci")]
    Io(#[from] io::Error),
}

/// Interrupts of an active device: the vectors the driver chose, through MSI-X.
struct PciInterrupt {
    vectors: Arc<MsixVectors>,
    queue_vectors: Vec<u16>,
    config_vector: u16,
}

impl VirtioInterrupt for PciInterrupt {
    fn notify_queue(&self, queue: usize) {
        if let Some(v) = self.queue_vectors.get(queue) {
            self.vectors.signal(usize::from(*v));
        }
    }
    fn notify_config(&self) {
        self.vectors.signal(usize::from(self.config_vector));
    }
    fn queue_eventfd(&self, queue: usize) -> io::Result<Option<EventFd>> {
        match self.queue_vectors.get(queue) {
            Some(&v) => self.vectors.eventfd(usize::from(v)),
            None => Ok(None),
        }
    }
}

/// A virtio device on PCI.
pub struct VirtioPci {
    config: ConfigSpace,
    msix_cap: usize,
    msix: MsixTable,
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    ioevents: Arc<dyn IoEventRegistry>,
    queues: Vec<Queue>,
    queue_evts: Vec<EventFd>,
    queue_vectors: Vec<u16>,
    config_vector: u16,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    queue_select: u16,
    status: u8,
    /// Set by the device when the driver broke a queue.
    needs_reset: NeedsReset,
    active: bool,
}

impl std::fmt::Debug for VirtioPci {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioPci")
            .field("type", &self.device.device_type())
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

fn vendor_cap(cfg_type: u8, offset: u64, length: u64, extra: Option<u32>) -> Vec<u8> {
    let len: u8 = if extra.is_some() { 20 } else { 16 };
    let mut body = vec![len, cfg_type, 0, 0, 0, 0];
    body.extend_from_slice(&u32::try_from(offset).unwrap_or(0).to_le_bytes());
    body.extend_from_slice(&u32::try_from(length).unwrap_or(0).to_le_bytes());
    if let Some(extra) = extra {
        body.extend_from_slice(&extra.to_le_bytes());
    }
    body
}

impl VirtioPci {
    /// `device` behind a transport whose BAR 0 is at `bar_addr`, with MSI-X through
    /// `routes` and queue notifications registered through `ioevents`.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        bar_addr: u64,
        routes: Arc<dyn MsiRoutes>,
        ioevents: Arc<dyn IoEventRegistry>,
    ) -> Result<Self, VirtioPciError> {
        let sizes = device.queue_max_sizes().to_vec();
        let class = match device.device_type() {
            1 => 0x02_00_00,
            2 => 0x01_80_00,
            _ => 0xff_00_00,
        };
        let mut config = ConfigSpace::new(PciIds {
            vendor: 0x1af4,
            device: 0x1040 + device.device_type(),
            revision: 1,
            class,
            subsystem_vendor: 0x1af4,
            subsystem: 0x1100,
        });
        config.add_bar(0, BarKind::Mem32, BAR_SIZE, false, bar_addr)?;
        config.add_capability(
            VENDOR_CAP,
            &vendor_cap(CAP_COMMON, COMMON, COMMON_LEN, None),
            &[],
        )?;
        let notify_len = (sizes.len() as u64 * u64::from(NOTIFY_MULTIPLIER)).max(4);
        config.add_capability(
            VENDOR_CAP,
            &vendor_cap(CAP_NOTIFY, NOTIFY, notify_len, Some(NOTIFY_MULTIPLIER)),
            &[],
        )?;
        config.add_capability(VENDOR_CAP, &vendor_cap(CAP_ISR, ISR, 1, None), &[])?;
        config.add_capability(
            VENDOR_CAP,
            &vendor_cap(CAP_DEVICE, DEVICE, DEVICE_LEN, None),
            &[],
        )?;
        let vectors = Arc::new(MsixVectors::new(sizes.len() + 1, routes));
        let msix = MsixTable::new(vectors);
        let table = u32::try_from(MSIX_TABLE).unwrap_or(0);
        let pba = u32::try_from(MSIX_PBA).unwrap_or(0);
        let (body, mask) = msix.capability(0, table, pba);
        let msix_cap = config.add_capability(MSIX_CAP_ID, &body, &mask)?;

        let queues = sizes
            .iter()
            .map(|s| Queue::new(*s).map_err(|e| io::Error::other(e.to_string())))
            .collect::<io::Result<Vec<_>>>()?;
        let queue_evts = sizes
            .iter()
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<io::Result<Vec<_>>>()?;
        let transport = Self {
            config,
            msix_cap,
            msix,
            device,
            mem,
            ioevents,
            queue_vectors: vec![NO_VECTOR; sizes.len()],
            queues,
            queue_evts,
            config_vector: NO_VECTOR,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            queue_select: 0,
            status: 0,
            needs_reset: NeedsReset::default(),
            active: false,
        };
        transport.register_ioevents(bar_addr)?;
        Ok(transport)
    }

    fn register_ioevents(&self, bar: u64) -> io::Result<()> {
        for (i, evt) in self.queue_evts.iter().enumerate() {
            let addr = bar + NOTIFY + i as u64 * u64::from(NOTIFY_MULTIPLIER);
            self.ioevents.register(evt, addr)?;
        }
        Ok(())
    }

    fn unregister_ioevents(&self, bar: u64) {
        for (i, evt) in self.queue_evts.iter().enumerate() {
            let addr = bar + NOTIFY + i as u64 * u64::from(NOTIFY_MULTIPLIER);
            if let Err(e) = self.ioevents.unregister(evt, addr) {
                log::warn!("virtio-pci: cannot unregister queue {i} notification: {e}");
            }
        }
    }

    fn selected(&self) -> Option<usize> {
        let i = usize::from(self.queue_select);
        (i < self.queues.len()).then_some(i)
    }

    fn common_read(&self, offset: u64, data: &mut [u8]) {
        let q = self.selected().map(|i| (&self.queues[i], i));
        let features = self.device.features();
        let half = |v: u64, select: u32| match select {
            0 => v & 0xffff_ffff,
            1 => v >> 32,
            _ => 0,
        };
        let value: u64 = match (offset, data.len()) {
            (0x00, 4) => u64::from(self.device_feature_select),
            (0x04, 4) => half(features, self.device_feature_select),
            (0x08, 4) => u64::from(self.driver_feature_select),
            (0x0c, 4) => half(self.driver_features, self.driver_feature_select),
            (0x10, 2) => u64::from(self.config_vector),
            (0x12, 2) => self.queues.len() as u64,
            (0x14, 1) => u64::from(self.status | self.needs_reset_bit()),
            (0x15, 1) => 0,
            (0x16, 2) => u64::from(self.queue_select),
            (0x18, 2) => q.map_or(0, |(q, _)| u64::from(q.size())),
            (0x1a, 2) => q.map_or(u64::from(NO_VECTOR), |(_, i)| {
                u64::from(self.queue_vectors[i])
            }),
            (0x1c, 2) => q.map_or(0, |(q, _)| u64::from(q.ready())),
            (0x1e, 2) => q.map_or(0, |(_, i)| i as u64),
            (0x20, 4) => q.map_or(0, |(q, _)| q.desc_table() & 0xffff_ffff),
            (0x24, 4) => q.map_or(0, |(q, _)| q.desc_table() >> 32),
            (0x28, 4) => q.map_or(0, |(q, _)| q.avail_ring() & 0xffff_ffff),
            (0x2c, 4) => q.map_or(0, |(q, _)| q.avail_ring() >> 32),
            (0x30, 4) => q.map_or(0, |(q, _)| q.used_ring() & 0xffff_ffff),
            (0x34, 4) => q.map_or(0, |(q, _)| q.used_ring() >> 32),
            _ => 0,
        };
        let bytes = value.to_le_bytes();
        data.copy_from_slice(&bytes[..data.len()]);
    }

    fn common_write(&mut self, offset: u64, data: &[u8]) {
        let mut raw = [0u8; 8];
        raw[..data.len()].copy_from_slice(data);
        let value = u64::from_le_bytes(raw);
        let v32 = u32::try_from(value & 0xffff_ffff).unwrap_or(0);
        let v16 = u16::try_from(value & 0xffff).unwrap_or(0);
        match (offset, data.len()) {
            (0x00, 4) => self.device_feature_select = v32,
            (0x08, 4) => self.driver_feature_select = v32,
            (0x0c, 4) if !self.features_locked() => match self.driver_feature_select {
                0 => self.driver_features = (self.driver_features & !0xffff_ffff) | value,
                1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (value << 32),
                _ => {}
            },
            (0x10, 2) => self.config_vector = self.vector(v16),
            (0x14, 1) => self.write_status(u8::try_from(value & 0xff).unwrap_or(0)),
            (0x16, 2) => self.queue_select = v16,
            _ if self.active => {}
            (0x18, 2) => {
                if let Some(i) = self.selected() {
                    let q = &mut self.queues[i];
                    if v16.is_power_of_two() && v16 <= q.max_size() {
                        q.set_size(v16);
                    }
                }
            }
            (0x1a, 2) => {
                if let Some(i) = self.selected() {
                    self.queue_vectors[i] = self.vector(v16);
                }
            }
            (0x1c, 2) => {
                if let Some(i) = self.selected() {
                    self.queues[i].set_ready(v16 == 1);
                }
            }
            (0x20..=0x34, 4) => {
                if let Some(i) = self.selected() {
                    let q = &mut self.queues[i];
                    match offset {
                        0x20 => q.set_desc_table_address(Some(v32), None),
                        0x24 => q.set_desc_table_address(None, Some(v32)),
                        0x28 => q.set_avail_ring_address(Some(v32), None),
                        0x2c => q.set_avail_ring_address(None, Some(v32)),
                        0x30 => q.set_used_ring_address(Some(v32), None),
                        _ => q.set_used_ring_address(None, Some(v32)),
                    }
                }
            }
            _ => {}
        }
    }

    fn needs_reset_bit(&self) -> u8 {
        if self.needs_reset.is_set() {
            STATUS_NEEDS_RESET
        } else {
            0
        }
    }

    fn features_locked(&self) -> bool {
        self.status & STATUS_FEATURES_OK != 0
    }

    fn vector(&self, v: u16) -> u16 {
        if usize::from(v) < self.msix.vectors().count() {
            v
        } else {
            NO_VECTOR
        }
    }

    fn write_status(&mut self, status: u8) {
        if status == 0 {
            self.reset();
            return;
        }
        let mut status = status;
        let newly = status & !self.status;
        if newly & STATUS_FEATURES_OK != 0 {
            let offered = self.device.features();
            let ok = self.driver_features & !offered == 0
                && self.driver_features & VIRTIO_F_VERSION_1 != 0;
            if !ok {
                log::warn!(
                    "virtio: driver features {:#x} not a modern subset of {offered:#x}",
                    self.driver_features
                );
                status &= !STATUS_FEATURES_OK;
            }
        }
        self.status = status;
        if newly & STATUS_DRIVER_OK != 0
            && self.features_locked()
            && !self.active
            && let Err(e) = self.activate()
        {
            log::warn!("virtio: cannot start the device: {e}");
            self.status |= STATUS_NEEDS_RESET;
        }
    }

    fn activate(&mut self) -> io::Result<()> {
        let event_idx = self.driver_features & super::VIRTIO_RING_F_EVENT_IDX != 0;
        let mut queues = Vec::with_capacity(self.queues.len());
        for (i, q) in self.queues.iter_mut().enumerate() {
            // A driver enables the queues it uses (virtio-net without MQ: the first pair);
            // the device says whether it can run without the others.
            if !q.ready() {
                queues.push(None);
                continue;
            }
            if !q.is_valid(&self.mem) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("queue {i} is not in guest memory"),
                ));
            }
            q.set_event_idx(event_idx);
            let mut copy = Queue::new(q.max_size()).map_err(|e| io::Error::other(e.to_string()))?;
            copy.set_size(q.size());
            copy.set_desc_table_address(
                Some(u32::try_from(q.desc_table() & 0xffff_ffff).unwrap_or(0)),
                Some(u32::try_from(q.desc_table() >> 32).unwrap_or(0)),
            );
            copy.set_avail_ring_address(
                Some(u32::try_from(q.avail_ring() & 0xffff_ffff).unwrap_or(0)),
                Some(u32::try_from(q.avail_ring() >> 32).unwrap_or(0)),
            );
            copy.set_used_ring_address(
                Some(u32::try_from(q.used_ring() & 0xffff_ffff).unwrap_or(0)),
                Some(u32::try_from(q.used_ring() >> 32).unwrap_or(0)),
            );
            copy.set_event_idx(event_idx);
            copy.set_ready(true);
            queues.push(Some((copy, self.queue_evts[i].try_clone()?)));
        }
        let interrupt = Arc::new(PciInterrupt {
            vectors: self.msix.vectors().clone(),
            queue_vectors: self.queue_vectors.clone(),
            config_vector: self.config_vector,
        });
        self.device.activate(Activation {
            mem: self.mem.clone(),
            interrupt,
            queues,
            features: self.driver_features,
            needs_reset: self.needs_reset.clone(),
        })?;
        self.active = true;
        Ok(())
    }

    fn reset(&mut self) {
        if self.active {
            self.device.reset();
            self.active = false;
        }
        for q in &mut self.queues {
            q.reset();
        }
        for evt in &self.queue_evts {
            let _ = evt.read();
        }
        self.queue_vectors.fill(NO_VECTOR);
        self.config_vector = NO_VECTOR;
        self.driver_features = 0;
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.queue_select = 0;
        self.status = 0;
        self.needs_reset.clear();
    }
}

impl PciDevice for VirtioPci {
    fn read_config(&mut self, reg: usize) -> u32 {
        self.config.read_dword(reg)
    }

    fn write_config(&mut self, reg: usize, offset: usize, data: &[u8]) -> Option<BarMove> {
        let moved = self.config.write(reg, offset, data);
        let ctrl_at = self.msix_cap + 2;
        let start = reg * 4 + offset;
        if start < ctrl_at + 2 && start + data.len() > ctrl_at {
            let ctrl = self.config.u16_at(ctrl_at);
            self.msix.write_control(ctrl);
        }
        moved
    }

    fn bars(&self) -> Vec<(usize, u64, u64)> {
        self.config
            .bar(0)
            .map(|(addr, size)| (0, addr, size))
            .into_iter()
            .collect()
    }

    fn read_bar(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if bar != 0 || !matches!(data.len(), 1 | 2 | 4 | 8) {
            return;
        }
        let end = offset.saturating_add(data.len() as u64);
        match offset {
            o if end <= COMMON + COMMON_LEN => self.common_read(o - COMMON, data),
            o if (DEVICE..DEVICE + DEVICE_LEN).contains(&o) && end <= DEVICE + DEVICE_LEN => {
                self.device.read_config(o - DEVICE, data);
            }
            o if (MSIX_TABLE..MSIX_TABLE + self.msix.table_len()).contains(&o) => {
                self.msix.read_table(o - MSIX_TABLE, data);
            }
            o if (MSIX_PBA..MSIX_PBA + self.msix.pba_len()).contains(&o) => {
                self.msix.read_pba(o - MSIX_PBA, data);
            }
            // ISR, notify and holes read as zero.
            _ => {}
        }
    }

    fn write_bar(&mut self, bar: usize, offset: u64, data: &[u8]) {
        if bar != 0 || !matches!(data.len(), 1 | 2 | 4 | 8) {
            return;
        }
        let end = offset.saturating_add(data.len() as u64);
        let notify_end = NOTIFY + self.queues.len() as u64 * u64::from(NOTIFY_MULTIPLIER);
        match offset {
            o if end <= COMMON + COMMON_LEN => self.common_write(o - COMMON, data),
            o if (DEVICE..DEVICE + DEVICE_LEN).contains(&o) && end <= DEVICE + DEVICE_LEN => {
                self.device.write_config(o - DEVICE, data);
            }
            // Reached only when the ioeventfd is not registered.
            o if (NOTIFY..notify_end).contains(&o) => {
                let q = usize::try_from((o - NOTIFY) / u64::from(NOTIFY_MULTIPLIER)).unwrap_or(0);
                if let Some(evt) = self.queue_evts.get(q) {
                    let _ = evt.write(1);
                }
            }
            o if (MSIX_TABLE..MSIX_TABLE + self.msix.table_len()).contains(&o) => {
                self.msix.write_table(o - MSIX_TABLE, data);
            }
            _ => {}
        }
    }

    fn bar_moved(&mut self, moved: BarMove) -> io::Result<()> {
        self.unregister_ioevents(moved.from);
        self.register_ioevents(moved.to)
    }
}

impl Drop for VirtioPci {
    fn drop(&mut self) {
        if self.active {
            self.device.reset();
        }
    }
}
