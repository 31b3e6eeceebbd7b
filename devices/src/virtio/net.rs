//! virtio-net: receive and transmit queue pairs over [`FrameBackend`]s, one backend and one
//! worker thread per pair, and a control queue when there is more than one pair.
//!
//! Frames move between guest buffers and the backend without a copy in `vmm`: a transmit
//! chain's readable buffers are gathered straight into the backend (for a TAP, one
//! `writev`), a receive chain's writable buffers are scattered into by the backend (one
//! `readv`). The 12-byte virtio-net header travels with each frame in both directions, so
//! checksum and segmentation offloads pass through: the guest may hand over partial
//! checksums and 64 KiB TCP segments (CSUM, HOST_TSO4/6, HOST_ECN), and accepts them when it
//! acked GUEST_CSUM and GUEST_TSO4/6, which the backend is told.
//!
//! Multiqueue: a NIC made with several backends (the queues of a multi-queue TAP) offers
//! `MQ` and `CTRL_VQ` with `max_virtqueue_pairs` set to their number. Each pair has its own
//! worker, so each of the guest's vCPUs sends and receives through its own queues and its
//! own host thread. A driver starts with the first pair; `VQ_PAIRS_SET` on the control
//! queue enables more (or fewer), and each pair's worker attaches or detaches its TAP queue
//! so that the kernel only steers frames to queues the guest serves. A driver that does not
//! negotiate `MQ` gets the first pair only.
//!
//! Everything in a descriptor chain is hostile: a chain with buffers of the wrong direction,
//! outside guest RAM, longer than a frame can be or spread over more than 1024 buffers is
//! returned unused (transmit: dropped, counted); a control command that is malformed,
//! unknown or out of range is answered `VIRTIO_NET_ERR`. A broken ring (an available index
//! more than the queue size ahead, a used ring that cannot be written) stops the device: one
//! log line, DEVICE_NEEDS_RESET in its status and a configuration interrupt; the worker then
//! only waits for the reset or the end of the boot. Never the VMM.
//!
//! Each worker runs on its own thread, woken by its queues' ioeventfds, by its backend's
//! descriptor and by a kill eventfd. While the guest has posted no receive buffers the
//! backend is not polled (it would poll readable forever); the receive queue's notification
//! resumes it.

use crate::seccomp::Role;
use crate::worker::WorkerThread;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use net::poll::{Poller, Token};
use net::{FrameBackend, MacAddr, Offloads, VNET_HDR_LEN};
use virtio_bindings::virtio_net as vn;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryMmap, VolatileSlice};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::{Activation, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use super::{
    IdleRounds, NeedsReset, VirtioDevice, VirtioInterrupt, byte, next_chain, wait_for_kill,
};

/// Device type of virtio-net.
pub const TYPE_NET: u16 = byte(virtio_bindings::virtio_ids::VIRTIO_ID_NET) as u16;
/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Most queue pairs a NIC has: one per vCPU up to this many.
pub const MAX_QUEUE_PAIRS: usize = 8;
/// A pair's queues, relative to its first: receive, then transmit.
const RX: usize = 0;
const TX: usize = 1;
/// The largest frame a driver may send: a 64 KiB GSO segment, Ethernet and VLAN headers.
const MAX_TX_FRAME: usize = VNET_HDR_LEN + 65_550;
/// Most buffers one frame may use.
const MAX_BUFFERS: usize = 1024;
/// Offset of `num_buffers` in the header.
const NUM_BUFFERS_OFFSET: u64 = 10;
/// The most of a control command read: class, command and a `VQ_PAIRS_SET`'s argument
/// fit; longer commands are ones this device refuses anyway.
const MAX_CTRL_COMMAND: usize = 64;
/// The least time between two changes of the pairs in use. Each change attaches or detaches
/// TAP queues, which takes the host's network configuration lock and waits for an RCU grace
/// period; a driver that changes its pairs faster waits (Linux changes them at probe and on
/// `ethtool -L`). None for the fuzzer, whose inputs would only wait.
#[cfg(not(fuzzing))]
const MIN_SWITCH_INTERVAL: Duration = Duration::from_millis(100);
#[cfg(fuzzing)]
const MIN_SWITCH_INTERVAL: Duration = Duration::ZERO;

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
    /// A control queue.
    pub const CTRL_VQ: u64 = bit(n::VIRTIO_NET_F_CTRL_VQ);
    /// Several queue pairs.
    pub const MQ: u64 = bit(n::VIRTIO_NET_F_MQ);
    /// Driver merges receive buffers (offered with vhost-net, which does it).
    pub const MRG_RXBUF: u64 = bit(n::VIRTIO_NET_F_MRG_RXBUF);
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
    /// Queue pairs the driver uses now; 0 while the device does not run.
    pub queue_pairs: AtomicU64,
}

impl NetCounters {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// The features a device with an MTU and `pairs` queue pairs offers.
pub(super) fn offered_features(pairs: usize) -> u64 {
    use features::*;
    let multiqueue = if pairs > 1 { CTRL_VQ | MQ } else { 0 };
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
        | multiqueue
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
        (CTRL_VQ, "CTRL_VQ"),
        (MQ, "MQ"),
        (MRG_RXBUF, "MRG_RXBUF"),
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
pub(super) fn offloads(acked: u64) -> Offloads {
    use features::*;
    Offloads {
        csum: acked & GUEST_CSUM != 0,
        tso4: acked & GUEST_TSO4 != 0,
        tso6: acked & GUEST_TSO6 != 0,
        tso_ecn: acked & GUEST_ECN != 0,
    }
}

/// One queue pair's backend and the thread that serves it.
struct Pair {
    /// The backend while no worker holds it.
    backend: Option<Box<dyn FrameBackend>>,
    thread: WorkerThread<Box<dyn FrameBackend>>,
}

/// A virtio-net device.
pub struct Net {
    mac: MacAddr,
    mtu: u16,
    pairs: Vec<Pair>,
    /// Every queue's size: two per pair, and the control queue's with several pairs.
    sizes: Vec<u16>,
    counters: Arc<NetCounters>,
    /// Tells each running worker to stop.
    kills: Vec<EventFd>,
    acked: Arc<AtomicU64>,
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("mac", &self.mac)
            .field("mtu", &self.mtu)
            .field("pairs", &self.pairs.len())
            .field("running", &self.kills.len())
            .finish_non_exhaustive()
    }
}

impl Net {
    /// A NIC with `mac` and `mtu` whose frames go through `backends`, one per queue pair
    /// (1 to [`MAX_QUEUE_PAIRS`]); `counters` and `acked` (the features the driver
    /// accepted) are shared with whoever reports on the NIC. Its worker threads start here
    /// and confine themselves before the guest can reach them.
    pub fn new(
        mac: MacAddr,
        mtu: u16,
        backends: Vec<Box<dyn FrameBackend>>,
        counters: Arc<NetCounters>,
        acked: Arc<AtomicU64>,
    ) -> io::Result<Self> {
        let n = backends.len();
        if !(1..=MAX_QUEUE_PAIRS).contains(&n) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("virtio-net: {n} queue pairs, 1 to {MAX_QUEUE_PAIRS} possible"),
            ));
        }
        let pairs = backends
            .into_iter()
            .enumerate()
            .map(|(i, backend)| {
                let name = if i == 0 {
                    "virtio-net".to_string()
                } else {
                    format!("virtio-net-{i}")
                };
                Ok(Pair {
                    backend: Some(backend),
                    thread: WorkerThread::spawn(&name, Role::NetWorker)?,
                })
            })
            .collect::<io::Result<Vec<_>>>()?;
        let queues = 2 * n + usize::from(n > 1);
        Ok(Self {
            mac,
            mtu,
            pairs,
            sizes: vec![QUEUE_SIZE; queues],
            counters,
            kills: Vec::new(),
            acked,
        })
    }

    fn stop_workers(&mut self) {
        for kill in self.kills.drain(..) {
            let _ = kill.write(1);
        }
        for pair in &mut self.pairs {
            if !pair.thread.busy() {
                continue;
            }
            match pair.thread.wait() {
                Some(backend) => pair.backend = Some(backend),
                None => log::error!("virtio-net worker panicked; the NIC is gone"),
            }
        }
        self.counters.queue_pairs.store(0, Ordering::Relaxed);
    }

    /// Hands `backends` (taken from the first pairs) back to their pairs.
    fn put_back(&mut self, backends: Vec<Box<dyn FrameBackend>>) {
        for (pair, backend) in self.pairs.iter_mut().zip(backends) {
            pair.backend = Some(backend);
        }
    }
}

/// Reads `data` at `offset` of the configuration space of a NIC with `mac`, `mtu` and
/// `pairs` queue pairs; bytes beyond it read as zero.
pub(super) fn read_config(mac: MacAddr, mtu: u16, pairs: usize, offset: u64, data: &mut [u8]) {
    let mut c = [0u8; 12];
    c[..6].copy_from_slice(&mac.octets());
    c[6..8].copy_from_slice(&1u16.to_le_bytes()); // VIRTIO_NET_S_LINK_UP
    let pairs = u16::try_from(pairs).unwrap_or(1);
    c[8..10].copy_from_slice(&pairs.to_le_bytes()); // max_virtqueue_pairs
    c[10..12].copy_from_slice(&mtu.to_le_bytes());
    super::read_config_space(&c, offset, data);
}

/// How many of `pairs` queue pairs, counted from the first, have both queues ready in
/// `queues`.
fn ready_pairs(queues: &[Option<(Queue, EventFd)>], pairs: usize) -> usize {
    let ready = |i: usize| queues.get(i).is_some_and(Option::is_some);
    (0..pairs)
        .take_while(|&p| ready(2 * p + RX) && ready(2 * p + TX))
        .count()
}

/// The queue pairs a driver enabled, shared by the workers: pair 0's worker serves the
/// control queue and sets it, every other worker follows it.
struct PairSwitch {
    active: AtomicUsize,
    /// One per pair: wakes that pair's worker when `active` changes.
    wakes: Vec<EventFd>,
    counters: Arc<NetCounters>,
}

impl PairSwitch {
    fn new(pairs: usize, counters: Arc<NetCounters>) -> io::Result<Self> {
        counters.queue_pairs.store(1, Ordering::Relaxed);
        Ok(Self {
            active: AtomicUsize::new(1),
            wakes: (0..pairs)
                .map(|_| EventFd::new(EFD_NONBLOCK))
                .collect::<io::Result<_>>()?,
            counters,
        })
    }

    fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    fn set(&self, pairs: usize) {
        self.active.store(pairs, Ordering::Release);
        self.counters
            .queue_pairs
            .store(pairs as u64, Ordering::Relaxed);
        for wake in self.wakes.iter().skip(1) {
            let _ = wake.write(1);
        }
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u16 {
        TYPE_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.sizes
    }

    fn features(&self) -> u64 {
        offered_features(self.pairs.len())
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config(self.mac, self.mtu, self.pairs.len(), offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // The MAC is read-only once VERSION_1 is negotiated; nothing else is writable.
    }

    fn activate(&mut self, a: Activation) -> io::Result<()> {
        use features::{CTRL_VQ, MQ};
        let n = self.pairs.len();
        let ctrl_vq = n > 1 && a.features & CTRL_VQ != 0;
        let multiqueue = ctrl_vq && a.features & MQ != 0;
        // Without MQ the control queue follows the first pair. With it, a driver need only
        // set up the pairs it will use (virtio 1.2, 5.1.6.5.5: it configures a pair before
        // enabling it with VQ_PAIRS_SET): the pairs served are the leading ready ones, and
        // the control queue refuses more than those.
        let (pairs_used, ctrl_index) = if multiqueue {
            (ready_pairs(&a.queues, n), 2 * n)
        } else {
            (1, 2)
        };
        if multiqueue && (1..n).contains(&pairs_used) {
            log::info!(
                "virtio-net {}: the driver set up {pairs_used} of {n} queue pairs",
                self.mac
            );
        }
        let pairs_used = pairs_used.max(1);
        let mut queues = a.queues;
        let mut take = |i: usize, what: &str| {
            queues.get_mut(i).and_then(Option::take).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("virtio-net: {what} (queue {i}) is not ready"),
                )
            })
        };
        let ctrl = ctrl_vq
            .then(|| take(ctrl_index, "the control queue"))
            .transpose()?;
        let mut pair_queues = Vec::with_capacity(pairs_used);
        for p in 0..pairs_used {
            let rx = take(2 * p + RX, "a receive queue")?;
            let tx = take(2 * p + TX, "a transmit queue")?;
            pair_queues.push((rx, tx));
        }
        let mut backends = Vec::with_capacity(pairs_used);
        for pair in &mut self.pairs[..pairs_used] {
            match pair.backend.take() {
                Some(b) => backends.push(b),
                None => {
                    self.put_back(backends);
                    return Err(io::Error::other("virtio-net backend lost"));
                }
            }
        }
        if let Err(e) = backends
            .iter_mut()
            .try_for_each(|b| b.set_offloads(offloads(a.features)))
        {
            self.put_back(backends);
            return Err(e);
        }
        // What can fail, before any backend moves: an error here puts them all back.
        let prepared = (|| -> io::Result<_> {
            let switch = Arc::new(PairSwitch::new(pairs_used, self.counters.clone())?);
            let kills = (0..pairs_used)
                .map(|_| EventFd::new(EFD_NONBLOCK))
                .collect::<io::Result<Vec<_>>>()?;
            let worker_kills = kills
                .iter()
                .map(EventFd::try_clone)
                .collect::<io::Result<Vec<_>>>()?;
            Ok((switch, kills, worker_kills))
        })();
        let (switch, kills, worker_kills) = match prepared {
            Ok(p) => p,
            Err(e) => {
                self.put_back(backends);
                return Err(e);
            }
        };
        self.acked.store(a.features, Ordering::Relaxed);
        self.kills = kills;
        let mut ctrl = ctrl.map(|(queue, evt)| {
            let control = Control {
                queue,
                index: ctrl_index,
                multiqueue,
                last_switch: None,
            };
            (control, evt)
        });
        let mut pairs = pair_queues
            .into_iter()
            .zip(backends)
            .zip(worker_kills)
            .enumerate();
        while let Some((pair, ((((rx, rx_evt), (tx, tx_evt)), backend), kill))) = pairs.next() {
            let (ctrl, ctrl_evt) = ctrl
                .take()
                .map_or((None, None), |(c, evt)| (Some(c), Some(evt)));
            let worker = Worker {
                mem: a.mem.clone(),
                rx,
                tx,
                backend,
                interrupt: a.interrupt.clone(),
                counters: self.counters.clone(),
                backend_polled: false,
                backend_gone: false,
                needs_reset: a.needs_reset.clone(),
                pair,
                enabled: pair == 0,
                ctrl,
                switch: switch.clone(),
            };
            let wakers = Wakers {
                rx: rx_evt,
                tx: tx_evt,
                ctrl: ctrl_evt,
                kill,
            };
            if let Err(e) = self.pairs[pair].thread.start(move || worker.run(wakers)) {
                // Only a thread that is gone refuses a job (its backend went with the job);
                // the pairs not started yet keep theirs, the started ones give theirs back.
                for (rest, ((_, backend), _)) in pairs {
                    self.pairs[rest].backend = Some(backend);
                }
                self.stop_workers();
                return Err(e);
            }
        }
        log::debug!(
            "virtio-net {}: running {pairs_used} of {n} queue pair(s) with {}",
            self.mac,
            feature_names(a.features).join(" ")
        );
        Ok(())
    }

    fn reset(&mut self) {
        self.stop_workers();
        self.acked.store(0, Ordering::Relaxed);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.stop_workers();
    }
}

/// What a worker waits on.
#[derive(Debug, Clone, Copy)]
enum Wake {
    /// The driver posted receive buffers.
    Rx,
    /// The driver queued frames to send.
    Tx,
    /// The backend has frames for the guest.
    Backend,
    /// The driver queued control commands.
    Ctrl,
    /// The driver changed how many pairs it uses.
    Switch,
}

impl Token for Wake {
    fn encode(self) -> u64 {
        self as u64
    }
    fn decode(data: u64) -> Option<Self> {
        [Wake::Rx, Wake::Tx, Wake::Backend, Wake::Ctrl, Wake::Switch]
            .into_iter()
            .find(|w| *w as u64 == data)
    }
}

/// The control queue and its index among the device's queues.
struct Control {
    queue: Queue,
    index: usize,
    /// Whether the driver negotiated `MQ` (else `VQ_PAIRS_SET` is refused).
    multiqueue: bool,
    /// When the pairs in use last changed.
    last_switch: Option<Instant>,
}

/// The eventfds that wake a worker.
struct Wakers {
    rx: EventFd,
    tx: EventFd,
    ctrl: Option<EventFd>,
    kill: EventFd,
}

/// One queue pair while the device runs.
struct Worker {
    mem: GuestMemoryMmap,
    rx: Queue,
    tx: Queue,
    backend: Box<dyn FrameBackend>,
    interrupt: Arc<dyn VirtioInterrupt>,
    counters: Arc<NetCounters>,
    /// Whether the backend's descriptor is in the epoll set.
    backend_polled: bool,
    /// The backend failed for good (its TAP was deleted): it is polled no more, or its
    /// descriptor, readable as an error for ever, would spin this thread.
    backend_gone: bool,
    /// Told when the driver broke a queue.
    needs_reset: NeedsReset,
    /// Which pair: its queues are `2 * pair` and `2 * pair + 1`.
    pair: usize,
    /// Whether the driver has this pair enabled (the first always is).
    enabled: bool,
    /// The control queue, which the first pair's worker serves.
    ctrl: Option<Control>,
    switch: Arc<PairSwitch>,
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

/// Carries out the control command in `chain` (the command readable, then a writable status
/// byte) and writes its status; the number of bytes written (1, or 0 for a chain with
/// nowhere to write it). Only `VQ_PAIRS_SET` is known, and only with `MQ`.
fn control_command(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    switch: &PairSwitch,
    control: (bool, &mut Option<Instant>),
) -> u32 {
    let (multiqueue, last_switch) = control;
    let mut command = [0u8; MAX_CTRL_COMMAND];
    let mut len = 0usize;
    let mut malformed = false;
    let mut status_at = None;
    for desc in chain {
        if desc.is_write_only() {
            if desc.len() > 0 {
                status_at.get_or_insert(desc.addr());
            }
            continue;
        }
        if status_at.is_some() {
            // A readable buffer after the writable one.
            malformed = true;
            break;
        }
        let Ok(n) = usize::try_from(desc.len()) else {
            malformed = true;
            break;
        };
        let take = n.min(MAX_CTRL_COMMAND - len);
        if mem
            .read_slice(&mut command[len..len + take], desc.addr())
            .is_err()
        {
            malformed = true;
            break;
        }
        len += take;
        if n > take {
            // Longer than any command this device takes.
            malformed = true;
        }
    }
    let ok = !malformed && multiqueue && pairs_set(&command[..len], switch, last_switch);
    let Some(at) = status_at else {
        return 0;
    };
    let status = byte(if ok {
        vn::VIRTIO_NET_OK
    } else {
        vn::VIRTIO_NET_ERR
    });
    match mem.write_obj(status, at) {
        Ok(()) => 1,
        Err(_) => 0,
    }
}

/// Carries out `command` if it is a valid `VQ_PAIRS_SET`; whether it was. A change less
/// than [`MIN_SWITCH_INTERVAL`] after the last one waits out the rest of it first.
fn pairs_set(command: &[u8], switch: &PairSwitch, last_switch: &mut Option<Instant>) -> bool {
    let [class, cmd, lo, hi] = command else {
        return false;
    };
    if *class != byte(vn::VIRTIO_NET_CTRL_MQ) || *cmd != byte(vn::VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET) {
        return false;
    }
    let pairs = usize::from(u16::from_le_bytes([*lo, *hi]));
    if !(1..=switch.wakes.len()).contains(&pairs) {
        return false;
    }
    if pairs != switch.active() {
        let since = last_switch.map(|t| t.elapsed());
        if let Some(wait) = since.and_then(|s| MIN_SWITCH_INTERVAL.checked_sub(s)) {
            std::thread::sleep(wait);
        }
        switch.set(pairs);
        *last_switch = Some(Instant::now());
    }
    true
}

/// Takes every chain the driver makes available on `queue`, hands each to `handle` (which
/// returns how many bytes it wrote into the chain) and returns it used, until re-arming
/// notifications finds no more; whether any chain was used. The interrupt is the caller's.
fn drain(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    mut handle: impl FnMut(DescriptorChain<&GuestMemoryMmap>) -> u32,
) -> Result<bool, virtio_queue::Error> {
    let mut used = false;
    let mut idle = IdleRounds::default();
    loop {
        queue.disable_notification(mem)?;
        while let Some(chain) = next_chain(queue, mem)? {
            idle.took_chain();
            let head = chain.head_index();
            let written = handle(chain);
            queue.add_used(mem, head, written)?;
            used = true;
        }
        if !queue.enable_notification(mem)? {
            return Ok(used);
        }
        idle.more_reported()?;
    }
}

impl Worker {
    fn run(mut self, wakers: Wakers) -> Box<dyn FrameBackend> {
        if let Err(e) = self.serve(&wakers) {
            log::error!(
                "virtio-net stopped until the driver resets it: {}",
                net::error::Chain(&e)
            );
            self.needs_reset.set();
            self.interrupt.notify_config();
            // Hold on to the backend until the reset that takes it back.
            wait_for_kill(&wakers.kill);
        }
        if self.pair > 0 {
            // At rest, only the first queue is attached, as a driver starts.
            if let Err(e) = self.backend.set_queue_enabled(false) {
                log::warn!("virtio-net queue pair {}: cannot detach: {e}", self.pair);
            }
        }
        self.backend
    }

    /// This pair's queue index for `which` (RX or TX).
    fn queue_index(&self, which: usize) -> usize {
        2 * self.pair + which
    }

    fn serve(&mut self, wakers: &Wakers) -> Result<(), WorkerError> {
        let poller = Poller::new()?;
        poller.add_readable(wakers.rx.as_raw_fd(), Wake::Rx)?;
        poller.add_readable(wakers.tx.as_raw_fd(), Wake::Tx)?;
        if let Some(ctrl) = &wakers.ctrl {
            poller.add_readable(ctrl.as_raw_fd(), Wake::Ctrl)?;
        }
        let switch = self.switch.clone();
        let wake = switch.wakes.get(self.pair).filter(|_| self.pair > 0);
        if let Some(wake) = wake {
            poller.add_readable(wake.as_raw_fd(), Wake::Switch)?;
        }
        poller.add_kill(&wakers.kill)?;
        self.enabled = self.pair < switch.active();
        self.backend.set_queue_enabled(self.enabled)?;
        if self.enabled {
            self.set_backend_polled(&poller, true)?;
        }
        // Buffers may have been posted before the device started.
        self.process_tx()?;
        self.process_rx(&poller)?;
        self.process_ctrl()?;
        poller.run(|poller, wake_up, _| match wake_up {
            Wake::Tx => {
                let _ = wakers.tx.read();
                self.process_tx()
            }
            Wake::Rx => {
                let _ = wakers.rx.read();
                self.buffers_posted(poller)
            }
            Wake::Backend => self.process_rx(poller),
            Wake::Ctrl => {
                if let Some(ctrl) = &wakers.ctrl {
                    let _ = ctrl.read();
                }
                self.process_ctrl()
            }
            Wake::Switch => {
                if let Some(wake) = wake {
                    let _ = wake.read();
                }
                self.follow_switch(poller)
            }
        })
    }

    /// The driver posted receive buffers: poll the backend again (unless it is gone) and
    /// fill them.
    fn buffers_posted(&mut self, poller: &Poller<Wake>) -> Result<(), WorkerError> {
        if self.enabled && !self.backend_polled && !self.backend_gone {
            self.set_backend_polled(poller, true)?;
        }
        self.process_rx(poller)
    }

    /// Turns this pair on or off as the driver asked. A pair that is off has its backend
    /// out of the epoll set: a detached TAP queue polls as an error.
    fn follow_switch(&mut self, poller: &Poller<Wake>) -> Result<(), WorkerError> {
        let on = self.pair < self.switch.active();
        if on == self.enabled {
            return Ok(());
        }
        if on {
            self.backend.set_queue_enabled(true)?;
            self.enabled = true;
            if !self.backend_gone {
                self.set_backend_polled(poller, true)?;
            }
            self.process_tx()?;
            self.process_rx(poller)
        } else {
            if self.backend_polled {
                self.set_backend_polled(poller, false)?;
            }
            self.backend.set_queue_enabled(false)?;
            self.enabled = false;
            Ok(())
        }
    }

    fn set_backend_polled(&mut self, poller: &Poller<Wake>, on: bool) -> io::Result<()> {
        if on {
            poller.add_readable(self.backend.poll_fd(), Wake::Backend)?;
        } else {
            poller.delete(self.backend.poll_fd())?;
        }
        self.backend_polled = on;
        Ok(())
    }

    /// Answers every control command the driver queued.
    fn process_ctrl(&mut self) -> Result<(), WorkerError> {
        let Some(ctrl) = self.ctrl.as_mut() else {
            return Ok(());
        };
        let mem = &self.mem;
        let switch = &self.switch;
        let (multiqueue, last_switch) = (ctrl.multiqueue, &mut ctrl.last_switch);
        let used = drain(&mut ctrl.queue, mem, |chain| {
            control_command(mem, chain, switch, (multiqueue, &mut *last_switch))
        })?;
        if used && ctrl.queue.needs_notification(mem)? {
            self.interrupt.notify_queue(ctrl.index);
        }
        Ok(())
    }

    /// Moves frames from the backend into posted receive buffers until either runs out.
    fn process_rx(&mut self, poller: &Poller<Wake>) -> Result<(), WorkerError> {
        if !self.enabled || self.backend_gone {
            return Ok(());
        }
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
                    if backend_is_gone(&e) {
                        log::warn!(
                            "virtio-net queue pair {}: the backend is gone ({e}); \
                             nothing more is received",
                            self.pair
                        );
                        self.backend_gone = true;
                    } else if e.kind() != io::ErrorKind::WouldBlock {
                        log::warn!("virtio-net receive: {e}");
                    }
                    break;
                }
            }
        }
        if used && self.rx.needs_notification(mem)? {
            self.interrupt.notify_queue(self.queue_index(RX));
        }
        if (out_of_buffers || self.backend_gone) && self.backend_polled {
            self.set_backend_polled(poller, false)?;
        }
        Ok(())
    }

    /// Sends every frame the guest queued.
    fn process_tx(&mut self) -> Result<(), WorkerError> {
        let mem = &self.mem;
        let (backend, counters, enabled) = (&mut self.backend, &self.counters, self.enabled);
        let used = drain(&mut self.tx, mem, |chain| {
            // A pair the driver disabled sends nothing (its TAP queue is detached).
            match chain_buffers(mem, chain, false, MAX_TX_FRAME)
                .filter(|(_, total)| *total > VNET_HDR_LEN && enabled)
            {
                Some((bufs, total)) => match backend.send(&bufs) {
                    Ok(_) => {
                        NetCounters::add(&counters.tx_frames, 1);
                        NetCounters::add(&counters.tx_bytes, (total - VNET_HDR_LEN) as u64);
                    }
                    Err(e) => {
                        log::debug!("virtio-net send: {e}");
                        NetCounters::add(&counters.tx_dropped, 1);
                    }
                },
                None => NetCounters::add(&counters.tx_dropped, 1),
            }
            0
        })?;
        self.backend.tx_done();
        if used && self.tx.needs_notification(mem)? {
            self.interrupt.notify_queue(self.queue_index(TX));
        }
        Ok(())
    }
}

/// Whether a receive error means the backend will never work again: a TAP deleted under
/// us reads `EBADFD` (`EIO` while it is being unregistered).
fn backend_is_gone(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EBADFD | libc::EBADF | libc::EIO | libc::ENODEV | libc::ENXIO)
    )
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
                backend_gone: false,
                needs_reset: NeedsReset::default(),
                pair: 0,
                enabled: true,
                ctrl: None,
                switch: Arc::new(PairSwitch::new(1, Arc::default()).unwrap()),
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

    /// A backend whose TAP was deleted: always readable, and every read fails.
    struct Gone {
        evt: EventFd,
        reads: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl FrameBackend for Gone {
        fn poll_fd(&self) -> RawFd {
            self.evt.as_raw_fd()
        }
        fn recv(&mut self, _: &[VolatileSlice<'_>]) -> io::Result<usize> {
            self.reads.fetch_add(1, Ordering::Relaxed);
            Err(io::Error::from_raw_os_error(libc::EBADFD))
        }
        fn send(&mut self, _: &[VolatileSlice<'_>]) -> io::Result<usize> {
            Err(io::Error::from_raw_os_error(libc::EBADFD))
        }
        fn set_offloads(&mut self, _: Offloads) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_backend_that_is_gone_is_polled_no_more() {
        let s = setup();
        let rx = MockSplitQueue::create(&s.mem, GuestAddress(0), 16);
        let tx = MockSplitQueue::create(&s.mem, GuestAddress(0x1_0000), 16);
        rx.add_desc_chains(&[desc(0x10_0000, 2048, WRITE, 0)], 0)
            .unwrap();
        let mut w = s.worker(&rx, &tx);
        let reads = Arc::default();
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        evt.write(1).unwrap();
        w.backend = Box::new(Gone {
            evt,
            reads: Arc::clone(&reads),
        });
        let epoll = epoll_for(&w);
        assert_eq!(epoll.wait(Some(Duration::ZERO)).unwrap().len(), 1);
        w.process_rx(&epoll).unwrap();
        assert!(w.backend_gone && !w.backend_polled);
        assert!(used(&rx).is_empty(), "the buffer stays posted");
        // Nothing is ready any more, and more buffers do not bring the backend back.
        assert!(epoll.wait(Some(Duration::ZERO)).unwrap().is_empty());
        w.buffers_posted(&epoll).unwrap();
        assert!(epoll.wait(Some(Duration::ZERO)).unwrap().is_empty());
        assert_eq!(reads.load(Ordering::Relaxed), 1);
        // Sending still returns every chain (dropped).
        tx.add_desc_chains(&[desc(0x20_0000, 100, 0, 0)], 0)
            .unwrap();
        w.process_tx().unwrap();
        assert_eq!(used(&tx).len(), 1);
        assert_eq!(w.counters.tx_dropped.load(Ordering::Relaxed), 1);
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
                w.run(Wakers {
                    rx: evts.next().unwrap(),
                    tx: evts.next().unwrap(),
                    ctrl: None,
                    kill: evts.next().unwrap(),
                });
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
            vec![fake()],
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
        let names = feature_names(net.features());
        assert!(names.contains(&"HOST_TSO4"));
        assert!(!names.contains(&"MQ") && !names.contains(&"CTRL_VQ"));
        assert_eq!(net.queue_max_sizes().len(), 2);
    }

    fn fake() -> Box<dyn FrameBackend> {
        Box::new(Fake {
            evt: EventFd::new(EFD_NONBLOCK).unwrap(),
            incoming: Arc::default(),
            sent: Arc::default(),
        })
    }

    #[test]
    fn several_backends_make_a_multiqueue_nic_and_the_number_is_bounded() {
        let mac: MacAddr = "52:54:00:12:34:56".parse().unwrap();
        let net = Net::new(
            mac,
            1500,
            (0..3).map(|_| fake()).collect(),
            Arc::default(),
            Arc::default(),
        )
        .unwrap();
        let names = feature_names(net.features());
        assert!(
            names.contains(&"MQ") && names.contains(&"CTRL_VQ"),
            "{names:?}"
        );
        assert_eq!(
            net.queue_max_sizes().len(),
            7,
            "3 pairs and the control queue"
        );
        let mut pairs = [0u8; 2];
        net.read_config(8, &mut pairs);
        assert_eq!(u16::from_le_bytes(pairs), 3);
        for n in [0, MAX_QUEUE_PAIRS + 1] {
            let backends = (0..n).map(|_| fake()).collect();
            Net::new(mac, 1500, backends, Arc::default(), Arc::default()).unwrap_err();
        }
    }

    const CTRL_MQ: u8 = byte(vn::VIRTIO_NET_CTRL_MQ);
    const PAIRS_SET: u8 = byte(vn::VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET);

    /// A control queue at 0x2_0000 holding `commands` (each at its own buffer, status after
    /// it), served by a first-pair worker of a NIC with `pairs` pairs; the status bytes.
    fn control(pairs: usize, commands: &[(&[u8], u16)]) -> (Vec<u8>, Arc<PairSwitch>) {
        control_with(pairs, true, commands)
    }

    fn control_with(
        pairs: usize,
        multiqueue: bool,
        commands: &[(&[u8], u16)],
    ) -> (Vec<u8>, Arc<PairSwitch>) {
        let s = setup();
        let rx = MockSplitQueue::create(&s.mem, GuestAddress(0), 16);
        let tx = MockSplitQueue::create(&s.mem, GuestAddress(0x1_0000), 16);
        let ctrl = MockSplitQueue::create(&s.mem, GuestAddress(0x2_0000), 16);
        let mut descs = vec![];
        for (i, (command, flags)) in commands.iter().enumerate() {
            let at = 0x10_0000 + 0x1000 * i as u64;
            s.mem.write_slice(command, GuestAddress(at)).unwrap();
            s.mem.write_obj(0xeeu8, GuestAddress(at + 0x800)).unwrap();
            let next = u16::try_from(descs.len() + 1).unwrap();
            let len = u32::try_from(command.len()).unwrap();
            descs.push(desc(at, len, NEXT, next));
            descs.push(desc(at + 0x800, 1, *flags, 0));
        }
        ctrl.add_desc_chains(&descs, 0).unwrap();
        let mut w = s.worker(&rx, &tx);
        let switch = Arc::new(PairSwitch::new(pairs, Arc::default()).unwrap());
        w.switch = switch.clone();
        w.ctrl = Some(Control {
            queue: ctrl.create_queue().unwrap(),
            index: 2 * pairs,
            multiqueue,
            last_switch: None,
        });
        w.process_ctrl().unwrap();
        assert_eq!(
            *s.irqs.0.lock().unwrap(),
            vec![2 * pairs],
            "the control queue's vector"
        );
        let status = (0..commands.len())
            .map(|i| {
                s.mem
                    .read_obj::<u8>(GuestAddress(0x10_0800 + 0x1000 * i as u64))
                    .unwrap()
            })
            .collect();
        (status, switch)
    }

    #[test]
    fn vq_pairs_set_switches_pairs_and_bad_commands_are_refused() {
        let (ok, err) = (byte(vn::VIRTIO_NET_OK), byte(vn::VIRTIO_NET_ERR));
        let (status, switch) = control(4, &[(&[CTRL_MQ, PAIRS_SET, 3, 0], WRITE)]);
        assert_eq!(status, vec![ok]);
        assert_eq!(switch.active(), 3);
        assert_eq!(switch.counters.queue_pairs.load(Ordering::Relaxed), 3);
        for wake in &switch.wakes[1..] {
            assert_eq!(
                wake.read().unwrap(),
                1,
                "every other pair's worker is woken"
            );
        }

        let bad: &[(&[u8], u16)] = &[
            (&[CTRL_MQ, PAIRS_SET, 0, 0], WRITE),    // no pairs
            (&[CTRL_MQ, PAIRS_SET, 5, 0], WRITE),    // more than the NIC has
            (&[CTRL_MQ, PAIRS_SET, 2], WRITE),       // short
            (&[CTRL_MQ, PAIRS_SET, 2, 0, 0], WRITE), // long
            (&[0, 0, 1], WRITE),                     // RX mode: not offered
            (&[CTRL_MQ, 1, 2, 0], WRITE),            // RSS: not offered
            (&[CTRL_MQ, PAIRS_SET, 2, 0], 0),        // no writable status
        ];
        let (status, switch) = control(4, bad);
        assert_eq!(&status[..6], &[err; 6]);
        assert_eq!(status[6], 0xee, "nowhere to write: untouched");
        assert_eq!(switch.active(), 1, "nothing changed");

        // A control queue without MQ (CTRL_VQ alone) takes no VQ_PAIRS_SET.
        let (status, switch) = control_with(4, false, &[(&[CTRL_MQ, PAIRS_SET, 2, 0], WRITE)]);
        assert_eq!(status, vec![err]);
        assert_eq!(switch.active(), 1);
    }

    /// A driver that negotiates MQ need only set up the pairs it will use: the device
    /// serves those, keeps the others' backends, and refuses to switch to more.
    #[test]
    fn a_multiqueue_driver_may_set_up_only_the_pairs_it_uses() {
        use features::{CTRL_VQ, MQ};
        let (ok, err) = (byte(vn::VIRTIO_NET_OK), byte(vn::VIRTIO_NET_ERR));
        let s = setup();
        let mut net = Net::new(
            "52:54:00:12:34:56".parse().unwrap(),
            1500,
            (0..3).map(|_| fake()).collect(),
            Arc::default(),
            Arc::default(),
        )
        .unwrap();
        let rings: Vec<_> = (0..5u64)
            .map(|i| MockSplitQueue::create(&s.mem, GuestAddress(0x1_0000 * i), 16))
            .collect();
        // The control queue, the last: three pairs (more than were set up), then two.
        let commands: [&[u8]; 2] = [&[CTRL_MQ, PAIRS_SET, 3, 0], &[CTRL_MQ, PAIRS_SET, 2, 0]];
        let mut descs = vec![];
        for (i, command) in commands.iter().enumerate() {
            let at = 0x10_0000 + 0x1000 * i as u64;
            s.mem.write_slice(command, GuestAddress(at)).unwrap();
            s.mem.write_obj(0xeeu8, GuestAddress(at + 0x800)).unwrap();
            let next = u16::try_from(descs.len() + 1).unwrap();
            descs.push(desc(at, 4, NEXT, next));
            descs.push(desc(at + 0x800, 1, WRITE, 0));
        }
        rings[4].add_desc_chains(&descs, 0).unwrap();
        let ready = |ring: &MockSplitQueue<'_, GuestMemoryMmap>| {
            Some((
                ring.create_queue().unwrap(),
                EventFd::new(EFD_NONBLOCK).unwrap(),
            ))
        };
        // Pairs 0 and 1 ready, pair 2 not, the control queue ready.
        let mut queues: Vec<_> = rings[..4].iter().map(ready).collect();
        queues.extend([None, None, ready(&rings[4])]);
        net.activate(Activation {
            mem: s.mem.clone(),
            interrupt: s.irqs.clone(),
            queues,
            features: CTRL_VQ | MQ | VIRTIO_F_VERSION_1,
            needs_reset: NeedsReset::default(),
        })
        .unwrap();
        let status = |i: u64| -> u8 {
            s.mem
                .read_obj(GuestAddress(0x10_0800 + 0x1000 * i))
                .unwrap()
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while status(1) == 0xee && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!([status(0), status(1)], [err, ok]);
        assert_eq!(net.counters.queue_pairs.load(Ordering::Relaxed), 2);
        assert!(net.pairs[1].thread.busy(), "the second pair is served");
        assert!(
            net.pairs[2].backend.is_some() && !net.pairs[2].thread.busy(),
            "the pair the driver did not set up keeps its backend"
        );
        net.reset();
        assert!(net.pairs.iter().all(|p| p.backend.is_some()));
    }

    /// Each change of the pairs in use waits until the last is `MIN_SWITCH_INTERVAL` old: a
    /// driver that flips them cannot keep the host's TAP queue changes (and the lock they
    /// take) going at its own pace. Setting what is already in use changes nothing.
    #[test]
    fn pair_changes_are_spaced_out() {
        let flips: &[(&[u8], u16)] = &[
            (&[CTRL_MQ, PAIRS_SET, 2, 0], WRITE),
            (&[CTRL_MQ, PAIRS_SET, 2, 0], WRITE),
            (&[CTRL_MQ, PAIRS_SET, 1, 0], WRITE),
            (&[CTRL_MQ, PAIRS_SET, 2, 0], WRITE),
        ];
        let start = Instant::now();
        let (status, switch) = control(2, flips);
        let took = start.elapsed();
        assert_eq!(status, vec![byte(vn::VIRTIO_NET_OK); 4]);
        assert_eq!(switch.active(), 2);
        assert!(
            took >= 2 * MIN_SWITCH_INTERVAL,
            "three changes in {took:?}: the second and third waited"
        );
    }

    /// A worker of a pair the driver has not enabled leaves its receive queue alone, and
    /// takes frames once the switch turns it on.
    #[test]
    fn a_second_pair_receives_only_once_enabled() {
        let s = setup();
        let rx = MockSplitQueue::create(&s.mem, GuestAddress(0), 16);
        let tx = MockSplitQueue::create(&s.mem, GuestAddress(0x1_0000), 16);
        let mut frame = vec![0u8; 12];
        frame.extend([0x42u8; 50]);
        s.incoming.lock().unwrap().push_back(frame);
        rx.add_desc_chains(&[desc(0x20_0000, 2048, WRITE, 0)], 0)
            .unwrap();
        let mut w = s.worker(&rx, &tx);
        let switch = Arc::new(PairSwitch::new(2, Arc::default()).unwrap());
        w.switch = switch.clone();
        w.pair = 1;
        w.enabled = false;
        w.backend_polled = false;
        let poller = Poller::new().unwrap();
        w.process_rx(&poller).unwrap();
        assert!(used(&rx).is_empty(), "disabled: nothing received");
        switch.set(2);
        w.follow_switch(&poller).unwrap();
        assert!(w.enabled);
        assert_eq!(used(&rx), vec![(0, 62)]);
        assert!(!w.backend_polled, "its only buffer used: not polled");
        assert_eq!(
            *s.irqs.0.lock().unwrap(),
            vec![2],
            "pair 1's receive queue is 2"
        );
        switch.set(1);
        w.follow_switch(&poller).unwrap();
        assert!(!w.enabled && !w.backend_polled);
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
            backend_gone: false,
            needs_reset: NeedsReset::default(),
            pair: 0,
            enabled: true,
            ctrl: None,
            switch: match PairSwitch::new(1, Arc::default()) {
                Ok(s) => Arc::new(s),
                Err(_) => return,
            },
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

    /// `data`: the control queue's placement (7 bytes, see [`queue`]), the NIC's number of
    /// pairs, then guest RAM. The switch never leaves 1 to that number.
    pub fn run_control(data: &[u8]) {
        let Some((head, rest)) = data.split_first_chunk::<8>() else {
            return;
        };
        let pairs = usize::from(head[7] % 8) + 1;
        let mem = memory(rest);
        let at: [u8; 7] = head[..7].try_into().unwrap_or_default();
        let (Some(rx), Some(tx), Some(ctrl)) =
            (queue(&mem, [0; 7]), queue(&mem, [0; 7]), queue(&mem, at))
        else {
            return;
        };
        let (Ok(evt), Ok(switch)) = (
            EventFd::new(EFD_NONBLOCK),
            PairSwitch::new(pairs, Arc::default()),
        ) else {
            return;
        };
        let switch = Arc::new(switch);
        let mut worker = Worker {
            mem,
            rx,
            tx,
            backend: Box::new(Backend {
                evt,
                frames: VecDeque::new(),
            }),
            interrupt: std::sync::Arc::new(NoInterrupts),
            counters: Arc::default(),
            backend_polled: false,
            backend_gone: false,
            needs_reset: NeedsReset::default(),
            pair: 0,
            enabled: true,
            ctrl: Some(Control {
                queue: ctrl,
                index: 2 * pairs,
                multiqueue: head[7] & 0x80 == 0,
                last_switch: None,
            }),
            switch: switch.clone(),
        };
        for _ in 0..2 {
            if worker.process_ctrl().is_err() {
                break;
            }
        }
        let active = switch.active();
        assert!(
            (1..=pairs).contains(&active),
            "{active} of {pairs} pairs active"
        );
    }
}
