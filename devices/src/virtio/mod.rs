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
pub mod vhost_net;

use std::io;
use std::num::Wrapping;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

pub use pci::{BAR_SIZE, VirtioPci, VirtioPciError};

use virtio_bindings::{virtio_config, virtio_ring};

/// The mask of feature bit `n` as virtio-bindings numbers it.
pub(crate) const fn bit(n: u32) -> u64 {
    1 << n
}

/// A virtio-bindings value known to fit eight bits (a status bit, a device ID).
#[allow(clippy::cast_possible_truncation, reason = "checked at compile time")]
pub(crate) const fn byte(value: u32) -> u8 {
    assert!(value <= u8::MAX as u32);
    value as u8
}

/// Reads `data` at `offset` of a device configuration space `space`; bytes beyond it read
/// as zero.
pub(crate) fn read_config_space(space: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(src) = space.get(start..) {
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }
}

/// Feature bit: virtio 1.x (modern) device.
pub const VIRTIO_F_VERSION_1: u64 = bit(virtio_config::VIRTIO_F_VERSION_1);
/// Feature bit: indirect descriptor tables.
pub const VIRTIO_RING_F_INDIRECT_DESC: u64 = bit(virtio_ring::VIRTIO_RING_F_INDIRECT_DESC);
/// Feature bit: used/avail event index suppression.
pub const VIRTIO_RING_F_EVENT_IDX: u64 = bit(virtio_ring::VIRTIO_RING_F_EVENT_IDX);

/// How a device tells the driver about used buffers or a configuration change.
pub trait VirtioInterrupt: Send + Sync {
    /// Queue `queue` has new used buffers.
    fn notify_queue(&self, queue: usize);
    /// The device configuration changed.
    fn notify_config(&self);
    /// An eventfd that raises queue `queue`'s interrupt when written, for a device whose
    /// queues the host kernel serves (vhost-net); `None` where the driver gave the queue no
    /// interrupt, or the transport has no such eventfds.
    fn queue_eventfd(&self, queue: usize) -> io::Result<Option<EventFd>> {
        let _ = queue;
        Ok(None)
    }
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

/// Guards a device's loop over [`next_chain`] and `enable_notification` against a driver
/// whose rings overlap what the device writes: re-arming notifications then rewrites the
/// available index, `enable_notification` reports work that [`next_chain`] never finds,
/// and the loop would spin for ever. A driver that really adds work is found by the next
/// round; two rounds in a row that report work and take no chain are a broken ring.
#[derive(Debug, Default)]
pub(crate) struct IdleRounds(u8);

impl IdleRounds {
    /// A chain was taken.
    pub(crate) fn took_chain(&mut self) {
        self.0 = 0;
    }

    /// `enable_notification` reported more work; an error when that happened twice since
    /// the last chain was taken.
    pub(crate) fn more_reported(&mut self) -> Result<(), virtio_queue::Error> {
        self.0 = self.0.saturating_add(1);
        if self.0 > 2 {
            return Err(virtio_queue::Error::InvalidAvailRingIndex);
        }
        Ok(())
    }
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
    /// The queues, as the driver set them up, with the eventfds its notifications signal;
    /// `None` for a queue the driver did not enable.
    pub queues: Vec<Option<(Queue, EventFd)>>,
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

/// Helpers for the fuzz targets (cargo-fuzz sets `cfg(fuzzing)`), also built for the unit
/// tests that replay what the fuzzers found.
#[cfg(any(test, fuzzing))]
#[doc(hidden)]
pub mod fuzzing {
    use virtio_queue::{Queue, QueueT};
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    use super::VirtioInterrupt;

    /// Guest RAM of a fuzzed device: small, so that one execution is quick.
    pub const MEM: usize = 0x1_0000;

    /// Guest RAM filled with `image` (the rest zero).
    pub fn memory(image: &[u8]) -> GuestMemoryMmap {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)])
            .unwrap_or_else(|e| panic!("guest memory: {e}"));
        let n = image.len().min(MEM);
        let _ = mem.write_slice(&image[..n], GuestAddress(0));
        mem
    }

    /// A ready queue of `size` entries (at most 16) whose rings sit where `at` says (each
    /// address taken from two bytes, so that they land anywhere in `MEM`, aligned or not),
    /// with or without EVENT_IDX, as the transport hands it over; `None` where the
    /// transport would refuse it (not in guest memory).
    pub fn queue(mem: &GuestMemoryMmap, at: [u8; 7]) -> Option<Queue> {
        let size = 1u16 << (at[0] % 5);
        let addr = |hi: u8, lo: u8| u32::from(u16::from_le_bytes([lo, hi]));
        let mut q = Queue::new(16).ok()?;
        q.set_size(size);
        q.set_desc_table_address(Some(addr(at[1], at[2])), Some(0));
        q.set_avail_ring_address(Some(addr(at[3], at[4])), Some(0));
        q.set_used_ring_address(Some(addr(at[5], at[6])), Some(0));
        q.set_event_idx(at[0] & 0x80 != 0);
        q.set_ready(true);
        q.is_valid(mem).then_some(q)
    }

    /// Interrupts go nowhere.
    #[derive(Debug)]
    pub struct NoInterrupts;

    impl VirtioInterrupt for NoInterrupts {
        fn notify_queue(&self, _queue: usize) {}
        fn notify_config(&self) {}
    }
}

#[cfg(test)]
mod fuzz_regressions {
    use std::sync::mpsc::channel;
    use std::time::Duration;

    /// Runs `target` on `input` on its own thread; fails if it has not returned within a
    /// generous bound (the bug these inputs found was a loop that never ends).
    fn ends(target: fn(&[u8]), input: &'static [u8]) {
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            target(input);
            let _ = tx.send(());
        });
        rx.recv_timeout(Duration::from_secs(20))
            .expect("the worker spins on rings its own writes rewrite");
    }

    /// Found by the virtio-net fuzz target: the driver's available ring overlaps the used
    /// ring, so re-arming notifications rewrote the available index and the TX loop saw
    /// work it never found.
    #[test]
    fn net_rings_rewritten_by_the_device_stop_the_queue() {
        ends(
            super::net::fuzzing::run,
            include_bytes!("regressions/net-rings-rewritten-by-the-device.bin"),
        );
    }

    /// The same, found by the virtio-blk fuzz target.
    #[test]
    fn blk_rings_rewritten_by_the_device_stop_the_queue() {
        ends(
            super::block::fuzzing::run,
            include_bytes!("regressions/blk-rings-rewritten-by-the-device.bin"),
        );
    }
}
