//! virtio-net: one receive and one transmit queue over a [`FrameBackend`].
//!
//! Frames move between guest buffers and the backend without a copy in `vmm`: a transmit
//! chain's readable buffers are gathered straight into the backend (for a TAP, one
//! `writev`), a receive chain's writable buffers are scattered into by the backend (one
//! `readv`). The 12-byte virtio-net header travels with each frame in both directions, so
//! checksum and segmentation offloads pass through: the guest may hand over partial
//! checksums and 64 KiB TCP segments (CSUM, HOST_TSO4/6, HOST_ECN), and accepts them when it
//! acked GUEST_CSUM and GUEST_TSO4/6, which the backend is told.
//!
//! Everything in a descriptor chain is hostile: a chain with buffers of the wrong direction,
//! outside guest RAM, longer than a frame can be or spread over more than 1024 buffers is
//! returned unused (transmit: dropped, counted). A broken ring (an available index more than
//! the queue size ahead, a used ring that cannot be written) stops the device: one log line,
//! DEVICE_NEEDS_RESET in its status and a configuration interrupt; the worker then only waits
//! for the reset or the end of the boot. Never the VMM.
//!
//! The device runs on its own thread, woken by the queues' ioeventfds, by the backend's
//! descriptor and by a kill eventfd. While the guest has posted no receive buffers the
//! backend is not polled (it would poll readable forever); the receive queue's notification
//! resumes it.

use crate::seccomp::Role;
use crate::worker::WorkerThread;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use net::poll::{Poller, Token};
use net::{FrameBackend, MacAddr, Offloads, VNET_HDR_LEN};
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, VolatileSlice};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::{Activation, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use super::{IdleRounds, NeedsReset, VirtioDevice, VirtioInterrupt, next_chain, wait_for_kill};

/// Device type of virtio-net.
pub const TYPE_NET: u16 = super::byte(virtio_bindings::virtio_ids::VIRTIO_ID_NET) as u16;
/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
const RX: usize = 0;
const TX: usize = 1;
/// The largest frame a driver may send: a 64 KiB GSO segment, Ethernet and VLAN headers.
const MAX_TX_FRAME: usize = VNET_HDR_LEN + 65_550;
/// Most buffers one frame may use.
const MAX_BUFFERS: usize = 1024;
/// Offset of `num_buffers` in the header.
const NUM_BUFFERS_OFFSET: u64 = 10;

/// virtio-net feature bits.
pub mod features {
    use super::super::bit;
    use virtio_bindings::virtio_net as n;

    /// Device handles partial checksums.
    pub const CSUM: u64 = bit(n::VIRTIO_NET_F_CSUM);
    /// Driver handles partial checksums.
    pub const GUEST_CSUM: u64 = bit(n::VIRTIO_NET_F_GUEST_CSUM);
    /// Device reports its MTU.
    pub const MTU: u64 = bit(n::VIRTIO_NET_F_MTU);
    /// Device has a MAC address.
    pub const MAC: u64 = bit(n::VIRTIO_NET_F_MAC);
    /// Driver takes TCPv4 segments.
    pub const GUEST_TSO4: u64 = bit(n::VIRTIO_NET_F_GUEST_TSO4);
    /// Driver takes TCPv6 segments.
    pub const GUEST_TSO6: u64 = bit(n::VIRTIO_NET_F_GUEST_TSO6);
    /// Driver takes TSO with ECN.
    pub const GUEST_ECN: u64 = bit(n::VIRTIO_NET_F_GUEST_ECN);
    /// Device takes TCPv4 segments.
    pub const HOST_TSO4: u64 = bit(n::VIRTIO_NET_F_HOST_TSO4);
    /// Device takes TCPv6 segments.
    pub const HOST_TSO6: u64 = bit(n::VIRTIO_NET_F_HOST_TSO6);
    /// Device takes TSO with ECN.
    pub const HOST_ECN: u64 = bit(n::VIRTIO_NET_F_HOST_ECN);
    /// Link status in the configuration.
    pub const STATUS: u64 = bit(n::VIRTIO_NET_F_STATUS);
}

/// Frame and byte counters of one NIC, from the guest's point of view; they outlive boots.
#[derive(Debug, Default)]
pub struct NetCounters {
    /// Frames the guest sent.
    pub tx_frames: AtomicU64,
    /// Bytes the guest sent (Ethernet frames, without the virtio-net header).
    pub tx_bytes: AtomicU64,
    /// Frames the guest sent that were dropped: malformed chains, backend errors.
    pub tx_dropped: AtomicU64,
    /// Frames the guest received.
    pub rx_frames: AtomicU64,
    /// Bytes the guest received.
    pub rx_bytes: AtomicU64,
}

impl NetCounters {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// The features a device with an MTU offers.
fn offered_features() -> u64 {
    use features::*;
    VIRTIO_F_VERSION_1
        | VIRTIO_RING_F_EVENT_IDX
        | VIRTIO_RING_F_INDIRECT_DESC
        | CSUM
        | GUEST_CSUM
        | MTU
        | MAC
        | GUEST_TSO4
        | GUEST_TSO6
        | GUEST_ECN
        | HOST_TSO4
        | HOST_TSO6
        | HOST_ECN
        | STATUS
}

/// The names of the virtio-net features set in `bits`, for logs and notes.
pub fn feature_names(bits: u64) -> Vec<&'static str> {
    use features::*;
    [
        (CSUM, "CSUM"),
        (GUEST_CSUM, "GUEST_CSUM"),
        (MTU, "MTU"),
        (MAC, "MAC"),
        (GUEST_TSO4, "GUEST_TSO4"),
        (GUEST_TSO6, "GUEST_TSO6"),
        (GUEST_ECN, "GUEST_ECN"),
        (HOST_TSO4, "HOST_TSO4"),
        (HOST_TSO6, "HOST_TSO6"),
        (HOST_ECN, "HOST_ECN"),
        (STATUS, "STATUS"),
        (VIRTIO_RING_F_INDIRECT_DESC, "RING_INDIRECT_DESC"),
        (VIRTIO_RING_F_EVENT_IDX, "RING_EVENT_IDX"),
        (VIRTIO_F_VERSION_1, "VERSION_1"),
    ]
    .into_iter()
    .filter(|(bit, _)| bits & bit != 0)
    .map(|(_, name)| name)
    .collect()
}

/// The offloads a driver that acked `acked` accepts on receive.
fn offloads(acked: u64) -> Offloads {
    use features::*;
    Offloads {
        csum: acked & GUEST_CSUM != 0,
        tso4: acked & GUEST_TSO4 != 0,
        tso6: acked & GUEST_TSO6 != 0,
        tso_ecn: acked & GUEST_ECN != 0,
    }
}

/// A virtio-net device.
pub struct Net {
    mac: MacAddr,
    mtu: u16,
    backend: Option<Box<dyn FrameBackend>>,
    counters: Arc<NetCounters>,
    /// The thread that serves the queues while the device runs, started with the device.
    thread: WorkerThread<Box<dyn FrameBackend>>,
    /// Tells the running job to stop.
    kill: Option<EventFd>,
    acked: Arc<AtomicU64>,
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("mac", &self.mac)
            .field("mtu", &self.mtu)
            .field("running", &self.kill.is_some())
            .finish_non_exhaustive()
    }
}

impl Net {
    /// A NIC with `mac` and `mtu` whose frames go through `backend`; `counters` and `acked`
    /// (the features the driver accepted) are shared with whoever reports on the NIC. Its
    /// worker thread starts here and confines itself before the guest can reach it.
    pub fn new(
        mac: MacAddr,
        mtu: u16,
        backend: Box<dyn FrameBackend>,
        counters: Arc<NetCounters>,
        acked: Arc<AtomicU64>,
    ) -> io::Result<Self> {
        Ok(Self {
            mac,
            mtu,
            backend: Some(backend),
            counters,
            thread: WorkerThread::spawn("virtio-net", Role::NetWorker)?,
            kill: None,
            acked,
        })
    }

    fn config_bytes(&self) -> [u8; 12] {
        let mut c = [0u8; 12];
        c[..6].copy_from_slice(&self.mac.octets());
        c[6..8].copy_from_slice(&1u16.to_le_bytes()); // VIRTIO_NET_S_LINK_UP
        c[8..10].copy_from_slice(&1u16.to_le_bytes()); // max_virtqueue_pairs
        c[10..12].copy_from_slice(&self.mtu.to_le_bytes());
        c
    }

    fn stop_worker(&mut self) {
        if let Some(kill) = self.kill.take() {
            let _ = kill.write(1);
            match self.thread.wait() {
                Some(backend) => self.backend = Some(backend),
                None => log::error!("virtio-net worker panicked; the NIC is gone"),
            }
        }
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u16 {
        TYPE_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        offered_features()
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let c = self.config_bytes();
        data.fill(0);
        let Ok(start) = usize::try_from(offset) else {
            return;
        };
        if let Some(src) = c.get(start..) {
            let n = src.len().min(data.len());
            data[..n].copy_from_slice(&src[..n]);
        }
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // The MAC is read-only once VERSION_1 is negotiated; nothing else is writable.
    }

    fn activate(&mut self, a: Activation) -> io::Result<()> {
        let mut backend = self
            .backend
            .take()
            .ok_or_else(|| io::Error::other("virtio-net backend lost"))?;
        if let Err(e) = backend.set_offloads(offloads(a.features)) {
            self.backend = Some(backend);
            return Err(e);
        }
        self.acked.store(a.features, Ordering::Relaxed);
        let mut queues = a.queues.into_iter();
        let (Some((rx, rx_evt)), Some((tx, tx_evt))) = (queues.next(), queues.next()) else {
            self.backend = Some(backend);
            return Err(io::Error::other("virtio-net needs two queues"));
        };
        let kill = EventFd::new(EFD_NONBLOCK)?;
        let worker = Worker {
            mem: a.mem,
            rx,
            tx,
            backend,
            interrupt: a.interrupt,
            counters: self.counters.clone(),
            backend_polled: true,
            needs_reset: a.needs_reset,
        };
        let kill_worker = kill.try_clone()?;
        self.thread
            .start(move || worker.run(rx_evt, tx_evt, kill_worker))?;
        self.kill = Some(kill);
        log::debug!(
            "virtio-net {}: running with {}",
            self.mac,
            feature_names(a.features).join(" ")
        );
        Ok(())
    }

    fn reset(&mut self) {
        self.stop_worker();
        self.acked.store(0, Ordering::Relaxed);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.stop_worker();
    }
}

/// What the worker waits on.
#[derive(Debug, Clone, Copy)]
enum Wake {
    /// The driver posted receive buffers.
    Rx,
    /// The driver queued frames to send.
    Tx,
    /// The backend has frames for the guest.
    Backend,
}

impl Token for Wake {
    fn encode(self) -> u64 {
        self as u64
    }
    fn decode(data: u64) -> Option<Self> {
        [Wake::Rx, Wake::Tx, Wake::Backend]
            .into_iter()
            .find(|w| *w as u64 == data)
    }
}

/// The queues while the device runs.
struct Worker {
    mem: GuestMemoryMmap,
    rx: Queue,
    tx: Queue,
    backend: Box<dyn FrameBackend>,
    interrupt: Arc<dyn VirtioInterrupt>,
    counters: Arc<NetCounters>,
    /// Whether the backend's descriptor is in the epoll set.
    backend_polled: bool,
    /// Told when the driver broke a queue.
    needs_reset: NeedsReset,
}

/// Why the worker stopped serving the queues.
#[derive(Debug, thiserror::Error)]
enum WorkerError {
    #[error("the queue is invalid")]
    Queue(#[from] virtio_queue::Error),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Guest buffers of a chain: all of one direction, inside guest RAM, bounded in number and
/// total length. `None` if the chain breaks a rule.
fn chain_buffers<'m>(
    mem: &'m GuestMemoryMmap,
    chain: DescriptorChain<&'m GuestMemoryMmap>,
    writable: bool,
    max_len: usize,
) -> Option<(Vec<VolatileSlice<'m>>, usize)> {
    let mut bufs = Vec::new();
    let mut total = 0usize;
    for desc in chain {
        if desc.is_write_only() != writable {
            return None;
        }
        let len = usize::try_from(desc.len()).ok()?;
        total = total.checked_add(len).filter(|t| *t <= max_len)?;
        for slice in GuestMemoryBackend::get_slices(mem, desc.addr(), len) {
            bufs.push(slice.ok()?);
            if bufs.len() > MAX_BUFFERS {
                return None;
            }
        }
    }
    Some((bufs, total))
}

impl Worker {
    fn run(mut self, rx_evt: EventFd, tx_evt: EventFd, kill: EventFd) -> Box<dyn FrameBackend> {
        if let Err(e) = self.serve(&rx_evt, &tx_evt, &kill) {
            log::error!(
                "virtio-net stopped until the driver resets it: {}",
                net::error::Chain(&e)
            );
            self.needs_reset.set();
            self.interrupt.notify_config();
            // Hold on to the backend until the reset that takes it back.
            wait_for_kill(&kill);
        }
        self.backend
    }

    fn serve(
        &mut self,
        rx_evt: &EventFd,
        tx_evt: &EventFd,
        kill: &EventFd,
    ) -> Result<(), WorkerError> {
        use std::os::fd::AsRawFd;
        let poller = Poller::new()?;
        poller.add_readable(rx_evt.as_raw_fd(), Wake::Rx)?;
        poller.add_readable(tx_evt.as_raw_fd(), Wake::Tx)?;
        poller.add_readable(self.backend.poll_fd(), Wake::Backend)?;
        poller.add_kill(kill)?;
        // Buffers may have been posted before the device started.
        self.process_tx()?;
        self.process_rx(&poller)?;
        poller.run(|poller, wake, _| match wake {
            Wake::Tx => {
                let _ = tx_evt.read();
                self.process_tx()
            }
            Wake::Rx => {
                let _ = rx_evt.read();
                if !self.backend_polled {
                    self.set_backend_polled(poller, true)?;
                }
                self.process_rx(poller)
            }
            Wake::Backend => self.process_rx(poller),
        })
    }

    fn set_backend_polled(&mut self, poller: &Poller<Wake>, on: bool) -> io::Result<()> {
        let events = if on { EventSet::IN } else { EventSet::empty() };
        poller.modify(self.backend.poll_fd(), Wake::Backend, events)?;
        self.backend_polled = on;
        Ok(())
    }

    /// Moves frames from the backend into posted receive buffers until either runs out.
    fn process_rx(&mut self, poller: &Poller<Wake>) -> Result<(), WorkerError> {
        let mem = &self.mem;
        let mut used = false;
        let mut out_of_buffers = false;
        let mut idle = IdleRounds::default();
        loop {
            let Some(chain) = next_chain(&mut self.rx, mem)? else {
                // Out of buffers: ask the guest to say when it posts more, and stop
                // polling the backend until then.
                if self.rx.enable_notification(mem)? {
                    idle.more_reported()?;
                    continue;
                }
                out_of_buffers = true;
                break;
            };
            idle.took_chain();
            let head = chain.head_index();
            let Some((bufs, total)) = chain_buffers(mem, chain, true, usize::MAX)
                .filter(|(_, total)| *total >= VNET_HDR_LEN)
            else {
                // An unusable chain goes back empty; the frame waits for the next one.
                self.rx.add_used(mem, head, 0)?;
                used = true;
                continue;
            };
            match self.backend.recv(&bufs) {
                Ok(n) => {
                    let n = n.min(total);
                    // One buffer per frame without MRG_RXBUF.
                    let first = bufs[0].len() >= VNET_HDR_LEN;
                    if first {
                        let at = usize::try_from(NUM_BUFFERS_OFFSET).unwrap_or(10);
                        let _ = bufs[0]
                            .subslice(at, 2)
                            .map(|s| s.copy_from(&1u16.to_le_bytes()));
                    }
                    self.rx
                        .add_used(mem, head, u32::try_from(n).unwrap_or(u32::MAX))?;
                    used = true;
                    NetCounters::add(&self.counters.rx_frames, 1);
                    NetCounters::add(
                        &self.counters.rx_bytes,
                        n.saturating_sub(VNET_HDR_LEN) as u64,
                    );
                }
                Err(e) => {
                    self.rx.go_to_previous_position();
                    if e.kind() != io::ErrorKind::WouldBlock {
                        log::warn!("virtio-net receive: {e}");
                    }
                    break;
                }
            }
        }
        if used && self.rx.needs_notification(mem)? {
            self.interrupt.notify_queue(RX);
        }
        if out_of_buffers && self.backend_polled {
            self.set_backend_polled(poller, false)?;
        }
        Ok(())
    }

    /// Sends every frame the guest queued.
    fn process_tx(&mut self) -> Result<(), WorkerError> {
        let mem = &self.mem;
        let mut used = false;
        let mut idle = IdleRounds::default();
        loop {
            self.tx.disable_notification(mem)?;
            while let Some(chain) = next_chain(&mut self.tx, mem)? {
                idle.took_chain();
                let head = chain.head_index();
                match chain_buffers(mem, chain, false, MAX_TX_FRAME)
                    .filter(|(_, total)| *total > VNET_HDR_LEN)
                {
                    Some((bufs, total)) => match self.backend.send(&bufs) {
                        Ok(_) => {
                            NetCounters::add(&self.counters.tx_frames, 1);
                            NetCounters::add(
                                &self.counters.tx_bytes,
                                (total - VNET_HDR_LEN) as u64,
                            );
                        }
                        Err(e) => {
                            log::debug!("virtio-net send: {e}");
                            NetCounters::add(&self.counters.tx_dropped, 1);
                        }
                    },
                    None => NetCounters::add(&self.counters.tx_dropped, 1),
                }
                self.tx.add_used(mem, head, 0)?;
                used = true;
            }
            if !self.tx.enable_notification(mem)? {
                break;
            }
            idle.more_reported()?;
        }
        self.backend.tx_done();
        if used && self.tx.needs_notification(mem)? {
            self.interrupt.notify_queue(TX);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::os::fd::{AsRawFd, RawFd};
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::desc::split::Descriptor as SplitDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    use super::*;

    const NEXT: u16 = crate::virtio::byte(virtio_bindings::virtio_ring::VRING_DESC_F_NEXT) as u16;
    const WRITE: u16 = crate::virtio::byte(virtio_bindings::virtio_ring::VRING_DESC_F_WRITE) as u16;

    /// A backend over queues in memory.
    struct Fake {
        evt: EventFd,
        incoming: Arc<Mutex<VecDeque<Vec<u8>>>>,
        sent: Arc<Mutex<Vec<Vec<u8>>>>,
    }

    impl FrameBackend for Fake {
        fn poll_fd(&self) -> RawFd {
            self.evt.as_raw_fd()
        }
        fn recv(&mut self, bufs: &[VolatileSlice<'_>]) -> io::Result<usize> {
            let frame = self
                .incoming
                .lock()
                .unwrap()
                .pop_front()
                .ok_or(io::ErrorKind::WouldBlock)?;
            let mut at = 0;
            for b in bufs {
                let n = b.len().min(frame.len() - at);
                b.subslice(0, n).unwrap().copy_from(&frame[at..at + n]);
                at += n;
            }
            Ok(at)
        }
        fn send(&mut self, bufs: &[VolatileSlice<'_>]) -> io::Result<usize> {
            let mut frame = vec![];
            for b in bufs {
                let mut v = vec![0u8; b.len()];
                b.copy_to(&mut v[..]);
                frame.extend(v);
            }
            let n = frame.len();
            self.sent.lock().unwrap().push(frame);
            Ok(n)
        }
        fn set_offloads(&mut self, _: Offloads) -> io::Result<()> {
            Ok(())
        }
    }

    use crate::testing::{CONFIG_IRQ as CONFIG, Irqs};

    struct Setup {
        mem: GuestMemoryMmap,
        incoming: Arc<Mutex<VecDeque<Vec<u8>>>>,
        sent: Arc<Mutex<Vec<Vec<u8>>>>,
        irqs: Arc<Irqs>,
    }

    fn setup() -> Setup {
        Setup {
            mem: GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap(),
            incoming: Arc::default(),
            sent: Arc::default(),
            irqs: Arc::default(),
        }
    }

    fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
    }

    impl Setup {
        fn worker(
            &self,
            rx: &MockSplitQueue<'_, GuestMemoryMmap>,
            tx: &MockSplitQueue<'_, GuestMemoryMmap>,
        ) -> Worker {
            Worker {
                mem: self.mem.clone(),
                rx: rx.create_queue().unwrap(),
                tx: tx.create_queue().unwrap(),
                backend: Box::new(Fake {
                    evt: EventFd::new(EFD_NONBLOCK).unwrap(),
                    incoming: self.incoming.clone(),
                    sent: self.sent.clone(),
                }),
                interrupt: self.irqs.clone(),
                counters: Arc::default(),
                backend_polled: true,
                needs_reset: NeedsReset::default(),
            }
        }
    }

    fn epoll_for(w: &Worker) -> Poller<Wake> {
        let poller = Poller::new().unwrap();
        poller
            .add_readable(w.backend.poll_fd(), Wake::Backend)
            .unwrap();
        poller
    }

    fn used(q: &MockSplitQueue<'_, GuestMemoryMmap>) -> Vec<(u32, u32)> {
        let n = q.used().idx().load();
        (0..usize::from(n))
            .map(|i| {
                let e = q.used().ring().ref_at(i).unwrap().load();
                (e.id(), e.len())
            })
            .collect()
    }

    #[test]
    fn transmits_a_frame_gathered_from_a_chain() {
        let s = setup();
        let rx = MockSplitQueue::create(&s.mem, GuestAddress(0), 16);
        let tx = MockSplitQueue::create(&s.mem, GuestAddress(0x1_0000), 16);
        s.mem
            .write_slice(&[0xaa; 12], GuestAddress(0x10_0000))
            .unwrap();
        s.mem
            .write_slice(&[0x55; 60], GuestAddress(0x20_0000))
            .unwrap();
        tx.add_desc_chains(
            &[desc(0x10_0000, 12, NEXT, 1), desc(0x20_0000, 60, 0, 0)],
            0,
        )
        .unwrap();
        let mut w = s.worker(&rx, &tx);
        w.process_tx().unwrap();
        let sent = s.sent.lock().unwrap();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].len(), 72);
        assert_eq!(&sent[0][..12], &[0xaa; 12]);
        assert_eq!(&sent[0][12..], &[0x55; 60]);
        assert_eq!(used(&tx), vec![(0, 0)]);
        assert_eq!(w.counters.tx_bytes.load(Ordering::Relaxed), 60);
        assert_eq!(*s.irqs.0.lock().unwrap(), vec![TX]);
    }

    #[test]
    fn malformed_transmit_chains_are_dropped_not_fatal() {
        let s = setup();
        let rx = MockSplitQueue::create(&s.mem, GuestAddress(0), 16);
        let tx = MockSplitQueue::create(&s.mem, GuestAddress(0x1_0000), 16);
        tx.add_desc_chains(
            &[
                // A device-writable buffer in a transmit chain.
                desc(0x10_0000, 64, WRITE, 0),
                // Outside guest RAM.
                desc(0x1_0000_0000, 64, 0, 0),
                // Longer than any frame.
                desc(0x10_0000, 0x20_0000, 0, 0),
                // Only a header.
                desc(0x10_0000, 12, 0, 0),
                // A buffer that wraps the address space.
                desc(u64::MAX - 8, 64, 0, 0),
                // Good.
                desc(0x10_0000, 100, 0, 0),
            ],
            0,
        )
        .unwrap();
        let mut w = s.worker(&rx, &tx);
        w.process_tx().unwrap();
        assert_eq!(s.sent.lock().unwrap().len(), 1);
        assert_eq!(used(&tx).len(), 6, "every chain is returned");
        assert_eq!(w.counters.tx_dropped.load(Ordering::Relaxed), 5);
    }

    #[test]
    fn a_descriptor_loop_ends() {
        let s = setup();
        let rx = MockSplitQueue::create(&s.mem, GuestAddress(0), 16);
        let tx = MockSplitQueue::create(&s.mem, GuestAddress(0x1_0000), 16);
        // 0 -> 1 -> 0 -> ...
        tx.add_desc_chains(
            &[desc(0x10_0000, 100, NEXT, 1), desc(0x10_0000, 100, NEXT, 0)],
            0,
        )
        .unwrap();
        let mut w = s.worker(&rx, &tx);
        w.process_tx().unwrap();
        assert!(s.sent.lock().unwrap().len() <= 1);
        assert_eq!(used(&tx).len(), 1);
    }

    #[test]
    fn receives_into_posted_buffers_and_pauses_without_them() {
        let s = setup();
        let rx = MockSplitQueue::create(&s.mem, GuestAddress(0), 16);
        let tx = MockSplitQueue::create(&s.mem, GuestAddress(0x1_0000), 16);
        let mut frame = vec![0u8; 12];
        frame.extend([0x42u8; 90]);
        s.incoming.lock().unwrap().push_back(frame.clone());
        s.incoming.lock().unwrap().push_back(frame.clone());
        rx.add_desc_chains(
            &[
                // Readable: wrong direction, returned empty, the frame stays queued.
                desc(0x10_0000, 2048, 0, 0),
                // Too short for the header.
                desc(0x10_0000, 8, WRITE, 0),
                // Good: header and data in two buffers.
                desc(0x20_0000, 12, WRITE | NEXT, 3),
                desc(0x20_1000, 2048, WRITE, 0),
            ],
            0,
        )
        .unwrap();
        let mut w = s.worker(&rx, &tx);
        let epoll = epoll_for(&w);
        w.process_rx(&epoll).unwrap();
        assert_eq!(used(&rx), vec![(0, 0), (1, 0), (2, 102)]);
        let mut got = vec![0u8; 90];
        s.mem.read_slice(&mut got, GuestAddress(0x20_1000)).unwrap();
        assert_eq!(got, vec![0x42; 90]);
        let num_buffers: u16 = s.mem.read_obj(GuestAddress(0x20_000a)).unwrap();
        assert_eq!(num_buffers, 1);
        assert!(
            !w.backend_polled,
            "no buffers left: the backend is not polled"
        );
        assert_eq!(
            s.incoming.lock().unwrap().len(),
            1,
            "the second frame waits"
        );
        assert_eq!(w.counters.rx_bytes.load(Ordering::Relaxed), 90);
    }

    /// A driver whose available index runs more than the queue size ahead used to make the
    /// worker spin at 100 % without ever reading its kill event.
    #[test]
    fn a_broken_available_index_stops_the_device_and_the_worker_still_ends() {
        for broken in [RX, TX] {
            let s = setup();
            let rx = MockSplitQueue::create(&s.mem, GuestAddress(0), 16);
            let tx = MockSplitQueue::create(&s.mem, GuestAddress(0x1_0000), 16);
            let queue = if broken == RX { &rx } else { &tx };
            queue.avail().idx().store(40);
            let w = s.worker(&rx, &tx);
            let needs_reset = w.needs_reset.clone();
            let evts: Vec<EventFd> = (0..3)
                .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
                .collect();
            let kill = evts[2].try_clone().unwrap();
            evts[broken].write(1).unwrap();
            let (done, ended) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let mut evts = evts.into_iter();
                let (rx_evt, tx_evt, kill) = (evts.next(), evts.next(), evts.next());
                w.run(rx_evt.unwrap(), tx_evt.unwrap(), kill.unwrap());
                let _ = done.send(());
            });
            let deadline = Instant::now() + Duration::from_secs(5);
            while !needs_reset.is_set() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            assert!(
                needs_reset.is_set(),
                "queue {broken}: DEVICE_NEEDS_RESET not set"
            );
            assert_eq!(*s.irqs.0.lock().unwrap(), vec![CONFIG]);
            kill.write(1).unwrap();
            ended
                .recv_timeout(Duration::from_secs(5))
                .expect("the worker ends when killed");
        }
    }

    #[test]
    fn config_space_reads_are_bounded() {
        let net = Net::new(
            "52:54:00:12:34:56".parse().unwrap(),
            1400,
            Box::new(Fake {
                evt: EventFd::new(EFD_NONBLOCK).unwrap(),
                incoming: Arc::default(),
                sent: Arc::default(),
            }),
            Arc::default(),
            Arc::default(),
        )
        .unwrap();
        let mut mac = [0u8; 6];
        net.read_config(0, &mut mac);
        assert_eq!(mac, [0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        let mut mtu = [0u8; 2];
        net.read_config(10, &mut mtu);
        assert_eq!(u16::from_le_bytes(mtu), 1400);
        let mut far = [0xffu8; 4];
        net.read_config(u64::MAX, &mut far);
        assert_eq!(far, [0; 4]);
        net.read_config(11, &mut far);
        assert_eq!(far, [5, 0, 0, 0]);
        assert!(feature_names(net.features()).contains(&"HOST_TSO4"));
    }
}

/// The virtio-net fuzz target's entry point (also replayed by unit tests).
#[cfg(any(test, fuzzing))]
#[doc(hidden)]
pub mod fuzzing {
    use std::collections::VecDeque;
    use std::os::fd::{AsRawFd, RawFd};

    use super::*;
    use crate::virtio::fuzzing::{NoInterrupts, memory, queue};

    /// Frames in from the fuzzer; frames out checked against the device's own bound.
    struct Backend {
        evt: EventFd,
        frames: VecDeque<Vec<u8>>,
    }

    impl FrameBackend for Backend {
        fn poll_fd(&self) -> RawFd {
            self.evt.as_raw_fd()
        }
        fn recv(&mut self, bufs: &[VolatileSlice<'_>]) -> io::Result<usize> {
            let total: usize = bufs.iter().map(|b| b.len()).sum();
            assert!(
                total >= VNET_HDR_LEN,
                "receive chain shorter than the header"
            );
            let frame = self.frames.pop_front().ok_or(io::ErrorKind::WouldBlock)?;
            Ok(net::backend::scatter(bufs, &[&frame]))
        }
        fn send(&mut self, bufs: &[VolatileSlice<'_>]) -> io::Result<usize> {
            let total: usize = bufs.iter().map(|b| b.len()).sum();
            assert!(
                total > VNET_HDR_LEN && total <= MAX_TX_FRAME,
                "frame of {total}"
            );
            let mut out = vec![0u8; total];
            Ok(net::backend::gather(bufs, &mut out))
        }
        fn set_offloads(&mut self, _: Offloads) -> io::Result<()> {
            Ok(())
        }
    }

    /// `data`: the receive queue's and the transmit queue's placement (7 bytes each, see
    /// [`queue`]), a frame count and an order of work, the frames (a length byte each),
    /// then guest RAM.
    pub fn run(data: &[u8]) {
        let Some((head, rest)) = data.split_first_chunk::<16>() else {
            return;
        };
        let mut rest = rest;
        let mut frames = VecDeque::new();
        for _ in 0..head[14] % 8 {
            let Some((&len, tail)) = rest.split_first() else {
                break;
            };
            let n = usize::from(len).min(tail.len());
            frames.push_back(tail[..n].to_vec());
            rest = &tail[n..];
        }
        let mem = memory(rest);
        let rx_at: [u8; 7] = head[0..7].try_into().unwrap_or_default();
        let tx_at: [u8; 7] = head[7..14].try_into().unwrap_or_default();
        let (Some(rx), Some(tx)) = (queue(&mem, rx_at), queue(&mem, tx_at)) else {
            return;
        };
        let Ok(evt) = EventFd::new(EFD_NONBLOCK) else {
            return;
        };
        let mut worker = Worker {
            mem,
            rx,
            tx,
            backend: Box::new(Backend { evt, frames }),
            interrupt: std::sync::Arc::new(NoInterrupts),
            counters: Arc::default(),
            backend_polled: true,
            needs_reset: NeedsReset::default(),
        };
        let Ok(epoll) = Poller::new() else {
            return;
        };
        let _ = epoll.add_readable(worker.backend.poll_fd(), Wake::Backend);
        // Up to four rounds of work in an order the input picks; an error stops the
        // device, as it would in the worker.
        for round in 0..4 {
            let result = if head[15] >> round & 1 == 0 {
                worker.process_tx()
            } else {
                worker.process_rx(&epoll)
            };
            if result.is_err() {
                break;
            }
        }
    }
}
