//! Virtio: the device model ([`VirtioDevice`]), the modern virtio-pci transport and the
//! devices (virtio-net).
//!
//! The transport owns what the driver programs through PCI (features, queue addresses,
//! MSI-X vectors, status) and hands a device its queues when the driver sets DRIVER_OK; a
//! reset takes them back. A device runs its queues on its own worker thread, woken by the
//! queues' ioeventfds and by its backend, and signals the driver through [`VirtioInterrupt`].

pub mod net;
mod pci;

use std::io;
use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

pub use pci::{BAR_SIZE, VirtioPci, VirtioPciError};

/// Feature bit: virtio 1.x (modern) device.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// Feature bit: indirect descriptor tables.
pub const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;
/// Feature bit: used/avail event index suppression.
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;

/// How a device tells the driver about used buffers or a configuration change.
pub trait VirtioInterrupt: Send + Sync {
    /// Queue `queue` has new used buffers.
    fn notify_queue(&self, queue: usize);
    /// The device configuration changed.
    fn notify_config(&self);
}

/// Registers queue-notify addresses with the hypervisor, so that a driver's notify write
/// signals an eventfd without a VM exit.
pub trait IoEventRegistry: Send + Sync {
    /// Writes to `addr` (any width) signal `evt`.
    fn register(&self, evt: &EventFd, addr: u64) -> io::Result<()>;
    /// Undoes [`IoEventRegistry::register`].
    fn unregister(&self, evt: &EventFd, addr: u64) -> io::Result<()>;
}

/// What a device gets when the driver is ready.
pub struct Activation {
    /// Guest RAM.
    pub mem: GuestMemoryMmap,
    /// Interrupts to the driver.
    pub interrupt: Arc<dyn VirtioInterrupt>,
    /// The queues, as the driver set them up, with the eventfds its notifications signal.
    pub queues: Vec<(Queue, EventFd)>,
    /// The features the driver accepted.
    pub features: u64,
}

impl std::fmt::Debug for Activation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Activation")
            .field("queues", &self.queues.len())
            .field("features", &format_args!("{:#x}", self.features))
            .finish_non_exhaustive()
    }
}

/// A virtio device behind a transport.
pub trait VirtioDevice: Send {
    /// The virtio device ID (1: network).
    fn device_type(&self) -> u16;
    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// The features the device offers.
    fn features(&self) -> u64;
    /// Reads the device-specific configuration.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device-specific configuration.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// The driver set DRIVER_OK: start serving the queues.
    fn activate(&mut self, activation: Activation) -> io::Result<()>;
    /// The driver reset the device: stop serving the queues.
    fn reset(&mut self);
}
