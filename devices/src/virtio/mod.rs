//! Virtio: the device model ([`VirtioDevice`]), the modern virtio-pci transport and the
//! devices (virtio-net, virtio-blk).
//!
//! The transport owns what the driver programs through PCI (features, queue addresses,
//! MSI-X vectors, status) and hands a device its queues when the driver sets DRIVER_OK; a
//! reset takes them back. A device runs its queues on its own worker thread, woken by the
//! queues' ioeventfds and by its backend, and signals the driver through [`VirtioInterrupt`].

pub mod block;
pub mod net;
mod pci;

use std::io;
use std::num::Wrapping;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
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

/// Set by a device whose driver broke a queue's rules: the transport then shows
/// DEVICE_NEEDS_RESET in the device status until the driver resets the device.
#[derive(Debug, Clone, Default)]
pub struct NeedsReset(Arc<AtomicBool>);

impl NeedsReset {
    /// The device stopped serving its queues and waits for a reset.
    pub fn set(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// Whether [`NeedsReset::set`] was called since the last [`NeedsReset::clear`].
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    /// The driver reset the device.
    pub fn clear(&self) {
        self.0.store(false, Ordering::Release);
    }
}

/// The next descriptor chain the driver made available on `queue`, or `None` when there is
/// none.
///
/// An error means the driver broke the ring: its available index is more than the queue
/// size ahead of the device (virtio-queue's `pop_descriptor_chain` would log that and return
/// nothing while `enable_notification` keeps reporting work, so a loop over the two spins
/// for ever), or it announced a chain that then could not be taken (its index moved back).
/// A device stops serving the queue on an error.
pub fn next_chain<'m>(
    queue: &mut Queue,
    mem: &'m GuestMemoryMmap,
) -> Result<Option<DescriptorChain<&'m GuestMemoryMmap>>, virtio_queue::Error> {
    // The driver only ever moves its index forward, so what is seen here is still there
    // when the iterator looks again (and more may have come).
    let avail = queue.avail_idx(mem, Ordering::Acquire)?;
    if avail == Wrapping(queue.next_avail()) {
        return Ok(None);
    }
    queue
        .iter(mem)?
        .next()
        .map(Some)
        .ok_or(virtio_queue::Error::InvalidAvailRingIndex)
}

/// Blocks until `kill` is readable (or polling it fails): what a worker that stopped serving
/// its queues does until the reset or the end of the boot that stops it.
pub(crate) fn wait_for_kill(kill: &EventFd) {
    use std::os::fd::AsRawFd;
    use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
    let Ok(epoll) = Epoll::new() else { return };
    let ev = EpollEvent::new(EventSet::IN, 0);
    if epoll
        .ctl(ControlOperation::Add, kill.as_raw_fd(), ev)
        .is_err()
    {
        return;
    }
    let mut events = [EpollEvent::default()];
    while let Err(e) = epoll.wait(-1, &mut events) {
        if e.kind() != io::ErrorKind::Interrupted {
            return;
        }
    }
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
    /// Set when the driver breaks a queue (see [`next_chain`]).
    pub needs_reset: NeedsReset,
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
