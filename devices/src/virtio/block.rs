//! virtio-blk: a disk over a [`BlockBackend`], one worker thread per queue.
//!
//! A request is a descriptor chain: a 16-byte header the driver wrote (type, reserved,
//! sector), the data (read by the device for a write, written by it for a read), and one
//! status byte the device writes last. The virtio specification lets a driver split those
//! across descriptors any way it likes, so the chain is taken as two byte streams, the
//! readable and the writable buffers, and cut where the layout says, never by descriptor:
//!
//! ```text
//!   readable:  [ header (16) | data to write (OUT), segments (DISCARD, WRITE_ZEROES) ]
//!   writable:  [ data read (IN), the ID (GET_ID)                      | status (1) ]
//! ```
//!
//! Data moves between guest buffers and the backend without a copy in `vmm` (for a raw
//! file, one `preadv`/`pwritev`).
//!
//! Every request is hostile input. A sector range past the end of the disk, a length that
//! is not whole sectors, a write to a read-only disk, a DISCARD or WRITE_ZEROES with too many
//! segments or flags it may not use all get `IOERR` or `UNSUPP` in the status byte; a chain
//! with no byte to write the status into, buffers outside guest RAM, of the wrong direction
//! after the first writable one, or more than [`MAX_SEGMENTS`] of them is returned unused and
//! counted. Nothing a request says is allocated: the buffers are the guest's own memory. A
//! broken ring (see [`super::next_chain`]) stops the queue with DEVICE_NEEDS_RESET, as in
//! virtio-net.
//!
//! The disk is write-back: FLUSH is offered, and a guest's flush reaches the backend's
//! [`BlockBackend::flush`] (for a file, `fdatasync`) before it is completed.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use net::poll::Poller;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_MQ,
    VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_BLK_ID_BYTES,
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, VolatileSlice};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::{
    Activation, IdleRounds, NeedsReset, VirtioDevice, VirtioInterrupt, next_chain, wait_for_kill,
};
use super::{VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use crate::seccomp::Role;
use crate::worker::WorkerThread;

/// Device type of virtio-blk.
pub const TYPE_BLOCK: u16 = super::byte(virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK) as u16;
/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// The sector: the unit of every offset and length in a request.
pub const SECTOR: u64 = 512;
/// Most buffers one request may use (the kernel's `IOV_MAX`).
pub const MAX_SEGMENTS: usize = 1024;
/// Data segments the driver is told it may use per request (`seg_max`).
const SEG_MAX: u32 = 254; // QUEUE_SIZE - 2: the header and the status take two
/// Ranges one DISCARD or WRITE_ZEROES request may carry.
const MAX_RANGES: u32 = 32;
/// Sectors one range of a DISCARD or WRITE_ZEROES may cover (1 GiB).
const MAX_RANGE_SECTORS: u32 = 1 << 21;
const HEADER_LEN: usize = 16;
const RANGE_LEN: usize = 16;
const CONFIG_LEN: usize = 60;

/// What a backend can do besides reading, writing and flushing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlockCapabilities {
    /// Ranges can be discarded (reads after return zeroes or older data, as the guest
    /// cannot tell which).
    pub discard: bool,
    /// Ranges can be zeroed without sending zeroes.
    pub write_zeroes: bool,
}

/// Where a disk's sectors live: a raw file or block device, a qcow2 image, memory.
///
/// Offsets and lengths are in bytes; the device has checked them against
/// [`BlockBackend::size`] and made them whole sectors.
pub trait BlockBackend: Send + Sync {
    /// Size in bytes (a multiple of [`SECTOR`]).
    fn size(&self) -> u64;
    /// Whether the guest may only read.
    fn read_only(&self) -> bool;
    /// What it can do beyond read, write and flush.
    fn capabilities(&self) -> BlockCapabilities {
        BlockCapabilities::default()
    }
    /// Fills `bufs` from `offset` on.
    fn read_at(&self, offset: u64, bufs: &[VolatileSlice<'_>]) -> io::Result<()>;
    /// Writes `bufs` at `offset`.
    fn write_at(&self, offset: u64, bufs: &[VolatileSlice<'_>]) -> io::Result<()>;
    /// Makes every completed write durable.
    fn flush(&self) -> io::Result<()>;
    /// Discards `len` bytes at `offset`.
    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        let _ = (offset, len);
        Err(io::ErrorKind::Unsupported.into())
    }
    /// Zeroes `len` bytes at `offset`; `unmap`: the space may be deallocated.
    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        let _ = (offset, len, unmap);
        Err(io::ErrorKind::Unsupported.into())
    }
}

/// Request and byte counters of one disk, from the guest's point of view; they outlive boots.
#[derive(Debug, Default)]
pub struct BlockCounters {
    /// Read requests completed.
    pub reads: AtomicU64,
    /// Bytes read.
    pub read_bytes: AtomicU64,
    /// Write requests completed.
    pub writes: AtomicU64,
    /// Bytes written.
    pub write_bytes: AtomicU64,
    /// Flushes completed.
    pub flushes: AtomicU64,
    /// Requests answered with IOERR or UNSUPP, or returned unused.
    pub errors: AtomicU64,
}

impl BlockCounters {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// A virtio-blk device.
pub struct Block {
    id: String,
    backend: Arc<dyn BlockBackend>,
    queue_sizes: Vec<u16>,
    counters: Arc<BlockCounters>,
    /// One thread per queue, started with the device; each serves its queue while the
    /// device runs.
    threads: Vec<WorkerThread<()>>,
    /// Tells the running jobs to stop.
    kills: Vec<EventFd>,
    /// Set once a guest-triggered warning about this disk was logged.
    warned: Arc<AtomicBool>,
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("id", &self.id)
            .field("size", &self.backend.size())
            .field("queues", &self.queue_sizes.len())
            .field("running", &!self.kills.is_empty())
            .finish_non_exhaustive()
    }
}

impl Block {
    /// A disk named `id` (what GET_ID answers, at most 20 bytes of it) over `backend`, with
    /// `queues` request queues (at least one); `counters` are shared with whoever reports on
    /// the disk. The queues' worker threads start here and confine themselves before the
    /// guest can reach them.
    pub fn new(
        id: &str,
        backend: Arc<dyn BlockBackend>,
        queues: usize,
        counters: Arc<BlockCounters>,
    ) -> io::Result<Self> {
        let queues = queues.clamp(1, 64);
        let threads = (0..queues)
            .map(|index| WorkerThread::spawn(&format!("virtio-blk-{index}"), Role::BlockWorker))
            .collect::<io::Result<_>>()?;
        Ok(Self {
            id: id.to_string(),
            backend,
            queue_sizes: vec![QUEUE_SIZE; queues],
            counters,
            threads,
            kills: Vec::new(),
            warned: Arc::default(),
        })
    }

    fn capabilities(&self) -> BlockCapabilities {
        if self.backend.read_only() {
            BlockCapabilities::default()
        } else {
            self.backend.capabilities()
        }
    }

    fn config_bytes(&self) -> [u8; CONFIG_LEN] {
        let mut c = [0u8; CONFIG_LEN];
        let put = |c: &mut [u8; CONFIG_LEN], at: usize, bytes: &[u8]| {
            c[at..at + bytes.len()].copy_from_slice(bytes);
        };
        put(&mut c, 0, &(self.backend.size() / SECTOR).to_le_bytes()); // capacity
        put(&mut c, 12, &SEG_MAX.to_le_bytes()); // seg_max
        put(
            &mut c,
            20,
            &u32::try_from(SECTOR).unwrap_or(512).to_le_bytes(),
        ); // blk_size
        let queues = u16::try_from(self.queue_sizes.len()).unwrap_or(1);
        put(&mut c, 34, &queues.to_le_bytes()); // num_queues
        let caps = self.capabilities();
        if caps.discard {
            put(&mut c, 36, &MAX_RANGE_SECTORS.to_le_bytes()); // max_discard_sectors
            put(&mut c, 40, &MAX_RANGES.to_le_bytes()); // max_discard_seg
            put(&mut c, 44, &1u32.to_le_bytes()); // discard_sector_alignment
        }
        if caps.write_zeroes {
            put(&mut c, 48, &MAX_RANGE_SECTORS.to_le_bytes()); // max_write_zeroes_sectors
            put(&mut c, 52, &MAX_RANGES.to_le_bytes()); // max_write_zeroes_seg
            c[56] = 1; // write_zeroes_may_unmap
        }
        c
    }

    fn stop_workers(&mut self) {
        for kill in self.kills.drain(..) {
            let _ = kill.write(1);
        }
        for thread in &mut self.threads {
            if thread.busy() && thread.wait().is_none() {
                log::error!("virtio-blk worker panicked");
            }
        }
    }
}

/// The features `block` offers.
fn offered_features(block: &Block) -> u64 {
    let bit = |b: u32| 1u64 << b;
    let caps = block.capabilities();
    let mut features = VIRTIO_F_VERSION_1
        | VIRTIO_RING_F_EVENT_IDX
        | VIRTIO_RING_F_INDIRECT_DESC
        | bit(VIRTIO_BLK_F_SEG_MAX)
        | bit(VIRTIO_BLK_F_BLK_SIZE)
        | bit(VIRTIO_BLK_F_FLUSH);
    if block.backend.read_only() {
        features |= bit(VIRTIO_BLK_F_RO);
    }
    if caps.discard {
        features |= bit(VIRTIO_BLK_F_DISCARD);
    }
    if caps.write_zeroes {
        features |= bit(VIRTIO_BLK_F_WRITE_ZEROES);
    }
    if block.queue_sizes.len() > 1 {
        features |= bit(VIRTIO_BLK_F_MQ);
    }
    features
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u16 {
        TYPE_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        offered_features(self)
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_space(&self.config_bytes(), offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // Nothing is writable: the cache mode is not offered (CONFIG_WCE).
    }

    fn activate(&mut self, a: Activation) -> io::Result<()> {
        let features = a.features;
        let mut id = [0u8; VIRTIO_BLK_ID_BYTES as usize];
        let n = self.id.len().min(id.len());
        id[..n].copy_from_slice(&self.id.as_bytes()[..n]);
        let queues = a
            .queues
            .into_iter()
            .enumerate()
            .map(|(index, queue)| {
                queue.ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("queue {index} is not ready"),
                    )
                })
            })
            .collect::<io::Result<Vec<_>>>()?;
        for (index, (queue, evt)) in queues.into_iter().enumerate() {
            let kill = EventFd::new(EFD_NONBLOCK)?;
            let worker = Worker {
                mem: a.mem.clone(),
                queue,
                index,
                backend: self.backend.clone(),
                ranges: RangeOps {
                    discard: features & (1 << VIRTIO_BLK_F_DISCARD) != 0,
                    write_zeroes: features & (1 << VIRTIO_BLK_F_WRITE_ZEROES) != 0,
                },
                id,
                interrupt: a.interrupt.clone(),
                counters: self.counters.clone(),
                needs_reset: a.needs_reset.clone(),
                warned: self.warned.clone(),
            };
            let kill_worker = kill.try_clone()?;
            let thread = self
                .threads
                .get_mut(index)
                .ok_or_else(|| io::Error::other(format!("no worker for queue {index}")))?;
            thread.start(move || worker.run(&evt, &kill_worker))?;
            self.kills.push(kill);
        }
        log::debug!(
            "virtio-blk {}: running, {} queue(s), features {features:#x}",
            self.id,
            self.kills.len()
        );
        Ok(())
    }

    fn reset(&mut self) {
        self.stop_workers();
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        self.stop_workers();
    }
}

/// Which range operations the driver accepted.
#[derive(Debug, Clone, Copy)]
struct RangeOps {
    discard: bool,
    write_zeroes: bool,
}

/// One queue while the device runs.
struct Worker {
    mem: GuestMemoryMmap,
    queue: Queue,
    index: usize,
    backend: Arc<dyn BlockBackend>,
    ranges: RangeOps,
    id: [u8; VIRTIO_BLK_ID_BYTES as usize],
    interrupt: Arc<dyn VirtioInterrupt>,
    counters: Arc<BlockCounters>,
    needs_reset: NeedsReset,
    warned: Arc<AtomicBool>,
}

/// Guest buffers of one direction, as one byte stream.
#[derive(Default)]
struct Buffers<'m> {
    slices: Vec<VolatileSlice<'m>>,
    len: usize,
}

impl<'m> Buffers<'m> {
    fn push(&mut self, slice: VolatileSlice<'m>) -> Option<()> {
        if self.slices.len() >= MAX_SEGMENTS {
            return None;
        }
        self.len = self.len.checked_add(slice.len())?;
        self.slices.push(slice);
        Some(())
    }

    /// Splits off the first `n` bytes; `None` if there are fewer.
    fn take_front(&mut self, n: usize) -> Option<Buffers<'m>> {
        if n > self.len {
            return None;
        }
        let mut front = Buffers::default();
        let mut left = n;
        let mut rest = Vec::with_capacity(self.slices.len());
        for s in self.slices.drain(..) {
            if left == 0 {
                rest.push(s);
            } else if s.len() <= left {
                left -= s.len();
                front.len += s.len();
                front.slices.push(s);
            } else {
                front.slices.push(s.subslice(0, left).ok()?);
                rest.push(s.offset(left).ok()?);
                front.len += left;
                left = 0;
            }
        }
        self.slices = rest;
        self.len -= n;
        Some(front)
    }

    /// Splits off the last `n` bytes; `None` if there are fewer.
    fn take_back(&mut self, n: usize) -> Option<Buffers<'m>> {
        let keep = self.len.checked_sub(n)?;
        let front = self.take_front(keep)?;
        Some(std::mem::replace(self, front))
    }

    /// Copies out up to `out.len()` bytes from the start.
    fn read_into(&self, out: &mut [u8]) -> usize {
        let mut at = 0;
        for s in &self.slices {
            if at == out.len() {
                break;
            }
            let n = s.len().min(out.len() - at);
            if let Ok(sub) = s.subslice(0, n) {
                sub.copy_to(&mut out[at..at + n]);
            }
            at += n;
        }
        at
    }

    /// Copies `data` in from the start, as much as fits.
    fn write_from(&self, data: &[u8]) -> usize {
        let mut at = 0;
        for s in &self.slices {
            if at == data.len() {
                break;
            }
            let n = s.len().min(data.len() - at);
            if let Ok(sub) = s.subslice(0, n) {
                sub.copy_from(&data[at..at + n]);
            }
            at += n;
        }
        at
    }
}

/// A request's buffers, split by direction: every readable buffer comes before every
/// writable one. `None` if the chain breaks a rule.
fn request_buffers<'m>(
    mem: &'m GuestMemoryMmap,
    chain: DescriptorChain<&'m GuestMemoryMmap>,
) -> Option<(Buffers<'m>, Buffers<'m>)> {
    let mut readable = Buffers::default();
    let mut writable = Buffers::default();
    let mut segments = 0usize;
    for desc in chain {
        let len = usize::try_from(desc.len()).ok()?;
        if !desc.is_write_only() && !writable.slices.is_empty() {
            return None;
        }
        for slice in GuestMemoryBackend::get_slices(mem, desc.addr(), len) {
            segments += 1;
            if segments > MAX_SEGMENTS {
                return None;
            }
            let slice = slice.ok()?;
            if desc.is_write_only() {
                writable.push(slice)?;
            } else {
                readable.push(slice)?;
            }
        }
    }
    Some((readable, writable))
}

/// The byte range `sector`.. of `len` bytes, if it is whole sectors inside a disk of `size`.
fn byte_range(sector: u64, len: u64, size: u64) -> Option<u64> {
    if !len.is_multiple_of(SECTOR) {
        return None;
    }
    let offset = sector.checked_mul(SECTOR)?;
    (offset.checked_add(len)? <= size).then_some(offset)
}

/// How a request ended: its status byte, and the data bytes written to the guest.
struct Outcome {
    status: u32,
    written: usize,
}

impl Outcome {
    fn status(status: u32) -> Self {
        Self { status, written: 0 }
    }
}

/// The worker's one wake-up: the driver queued requests.
#[derive(Debug, Clone, Copy)]
struct Queued;

impl net::poll::Token for Queued {
    fn encode(self) -> u64 {
        0
    }
    fn decode(data: u64) -> Option<Self> {
        (data == 0).then_some(Queued)
    }
}

impl Worker {
    fn run(mut self, evt: &EventFd, kill: &EventFd) {
        if let Err(e) = self.serve(evt, kill) {
            log::error!(
                "virtio-blk queue {} stopped until the driver resets it: {}",
                self.index,
                net::error::Chain(&e)
            );
            self.needs_reset.set();
            self.interrupt.notify_config();
            wait_for_kill(kill);
        }
    }

    fn serve(&mut self, evt: &EventFd, kill: &EventFd) -> Result<(), WorkerError> {
        use std::os::fd::AsRawFd;
        let poller = Poller::<Queued>::new()?;
        poller.add_readable(evt.as_raw_fd(), Queued)?;
        poller.add_kill(kill)?;
        // Requests may have been queued before the device started.
        self.process()?;
        poller.run(|_, Queued, _| {
            let _ = evt.read();
            self.process()
        })
    }

    /// Serves every request the driver queued. Each completion is signalled as soon as the
    /// driver asked for it (event index): the guest can queue more while the rest of a
    /// batch is served.
    fn process(&mut self) -> Result<(), WorkerError> {
        let mem = &self.mem;
        let mut idle = IdleRounds::default();
        loop {
            self.queue.disable_notification(mem)?;
            while let Some(chain) = next_chain(&mut self.queue, mem)? {
                idle.took_chain();
                let head = chain.head_index();
                let len = match request_buffers(mem, chain) {
                    Some((readable, writable)) => self.execute(readable, writable),
                    None => {
                        if !self.warned.swap(true, Ordering::Relaxed) {
                            log::warn!(
                                "virtio-blk {}: a request's buffers are outside guest RAM, \
                                 out of order or too many; returned unused (logged once)",
                                String::from_utf8_lossy(&self.id)
                            );
                        }
                        BlockCounters::add(&self.counters.errors, 1);
                        0
                    }
                };
                self.queue.add_used(mem, head, len)?;
                if self.queue.needs_notification(mem)? {
                    self.interrupt.notify_queue(self.index);
                }
            }
            if !self.queue.enable_notification(mem)? {
                break;
            }
            idle.more_reported()?;
        }
        Ok(())
    }

    /// Carries out one request; returns how many bytes it wrote into the guest's buffers.
    fn execute(&self, mut readable: Buffers<'_>, mut writable: Buffers<'_>) -> u32 {
        let Some(status) = writable.take_back(1) else {
            // Nowhere to say how it went: the driver will never see it complete.
            BlockCounters::add(&self.counters.errors, 1);
            return 0;
        };
        let mut header = [0u8; HEADER_LEN];
        let outcome = match readable.take_front(HEADER_LEN) {
            Some(h) => {
                h.read_into(&mut header);
                let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
                let mut sector = [0u8; 8];
                sector.copy_from_slice(&header[8..16]);
                self.request(kind, u64::from_le_bytes(sector), &readable, &writable)
            }
            None => Outcome::status(VIRTIO_BLK_S_IOERR),
        };
        if outcome.status != VIRTIO_BLK_S_OK {
            BlockCounters::add(&self.counters.errors, 1);
        }
        status.write_from(&[u8::try_from(outcome.status).unwrap_or(1)]);
        u32::try_from(outcome.written + 1).unwrap_or(u32::MAX)
    }

    fn request(
        &self,
        kind: u32,
        sector: u64,
        readable: &Buffers<'_>,
        writable: &Buffers<'_>,
    ) -> Outcome {
        let size = self.backend.size();
        let io_status = |r: io::Result<()>, what: &str| match r {
            Ok(()) => VIRTIO_BLK_S_OK,
            Err(e) => {
                log::debug!(
                    "virtio-blk {}: {what} at sector {sector}: {e}",
                    String::from_utf8_lossy(&self.id)
                );
                VIRTIO_BLK_S_IOERR
            }
        };
        match kind {
            VIRTIO_BLK_T_IN => {
                let Some(offset) = byte_range(sector, writable.len as u64, size) else {
                    return Outcome::status(VIRTIO_BLK_S_IOERR);
                };
                let status = io_status(self.backend.read_at(offset, &writable.slices), "read");
                if status == VIRTIO_BLK_S_OK {
                    BlockCounters::add(&self.counters.reads, 1);
                    BlockCounters::add(&self.counters.read_bytes, writable.len as u64);
                }
                Outcome {
                    status,
                    written: writable.len,
                }
            }
            VIRTIO_BLK_T_OUT => {
                if self.backend.read_only() {
                    return Outcome::status(VIRTIO_BLK_S_IOERR);
                }
                let Some(offset) = byte_range(sector, readable.len as u64, size) else {
                    return Outcome::status(VIRTIO_BLK_S_IOERR);
                };
                let status = io_status(self.backend.write_at(offset, &readable.slices), "write");
                if status == VIRTIO_BLK_S_OK {
                    BlockCounters::add(&self.counters.writes, 1);
                    BlockCounters::add(&self.counters.write_bytes, readable.len as u64);
                }
                Outcome::status(status)
            }
            VIRTIO_BLK_T_FLUSH => {
                let status = io_status(self.backend.flush(), "flush");
                if status == VIRTIO_BLK_S_OK {
                    BlockCounters::add(&self.counters.flushes, 1);
                }
                Outcome::status(status)
            }
            VIRTIO_BLK_T_GET_ID => Outcome {
                status: VIRTIO_BLK_S_OK,
                written: writable.write_from(&self.id),
            },
            VIRTIO_BLK_T_DISCARD if self.ranges.discard => self.ranges(false, readable),
            VIRTIO_BLK_T_WRITE_ZEROES if self.ranges.write_zeroes => self.ranges(true, readable),
            _ => Outcome::status(VIRTIO_BLK_S_UNSUPP),
        }
    }

    /// DISCARD (`zeroes` false) or WRITE_ZEROES: every range is checked before any is done.
    fn ranges(&self, zeroes: bool, readable: &Buffers<'_>) -> Outcome {
        let count = readable.len / RANGE_LEN;
        if count == 0 || !readable.len.is_multiple_of(RANGE_LEN) || count > MAX_RANGES as usize {
            return Outcome::status(VIRTIO_BLK_S_IOERR);
        }
        let mut raw = [0u8; RANGE_LEN * MAX_RANGES as usize];
        readable.read_into(&mut raw[..readable.len]);
        let mut ranges = Vec::with_capacity(count);
        for r in raw[..readable.len].chunks_exact(RANGE_LEN) {
            let le32 = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            let mut sector = [0u8; 8];
            sector.copy_from_slice(&r[..8]);
            let sectors = le32(&r[8..12]);
            let flags = le32(&r[12..16]);
            let allowed = if zeroes {
                VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
            } else {
                0
            };
            if flags & !allowed != 0 {
                return Outcome::status(VIRTIO_BLK_S_UNSUPP);
            }
            if sectors > MAX_RANGE_SECTORS {
                return Outcome::status(VIRTIO_BLK_S_IOERR);
            }
            let len = u64::from(sectors) * SECTOR;
            let Some(offset) = byte_range(u64::from_le_bytes(sector), len, self.backend.size())
            else {
                return Outcome::status(VIRTIO_BLK_S_IOERR);
            };
            ranges.push((offset, len, flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0));
        }
        for (offset, len, unmap) in ranges {
            let r = if zeroes {
                self.backend.write_zeroes(offset, len, unmap)
            } else {
                self.backend.discard(offset, len)
            };
            if let Err(e) = r {
                log::debug!(
                    "virtio-blk {}: {} at {offset}+{len}: {e}",
                    String::from_utf8_lossy(&self.id),
                    if zeroes { "write zeroes" } else { "discard" }
                );
                return Outcome::status(VIRTIO_BLK_S_IOERR);
            }
        }
        Outcome::status(VIRTIO_BLK_S_OK)
    }
}

/// Why a queue stopped.
#[derive(Debug, thiserror::Error)]
enum WorkerError {
    #[error("the queue is invalid")]
    Queue(#[from] virtio_queue::Error),
    #[error(transparent)]
    Io(#[from] io::Error),
}

#[cfg(test)]
mod tests;

/// The virtio-blk fuzz target's entry point (also replayed by unit tests).
#[cfg(any(test, fuzzing))]
#[doc(hidden)]
pub mod fuzzing {
    use std::sync::Mutex;

    use super::*;
    use crate::virtio::fuzzing::{NoInterrupts, memory, queue};

    /// A disk in memory that fails the target if the device ever asks for bytes past its
    /// end or a range it did not offer.
    struct Disk {
        bytes: Mutex<Vec<u8>>,
        read_only: bool,
        caps: BlockCapabilities,
    }

    impl Disk {
        fn check(&self, offset: u64, len: u64) -> usize {
            let size = self.size();
            assert!(
                offset.checked_add(len).is_some_and(|end| end <= size),
                "{len} bytes at {offset} on a disk of {size}"
            );
            usize::try_from(offset).unwrap_or(usize::MAX)
        }
    }

    impl BlockBackend for Disk {
        fn size(&self) -> u64 {
            self.bytes.lock().map_or(0, |b| b.len() as u64)
        }
        fn read_only(&self) -> bool {
            self.read_only
        }
        fn capabilities(&self) -> BlockCapabilities {
            self.caps
        }
        fn read_at(&self, offset: u64, bufs: &[VolatileSlice<'_>]) -> io::Result<()> {
            let total: usize = bufs.iter().map(|b| b.len()).sum();
            let mut at = self.check(offset, total as u64);
            let bytes = self.bytes.lock().map_err(|_| io::ErrorKind::Other)?;
            for b in bufs {
                b.copy_from(&bytes[at..at + b.len()]);
                at += b.len();
            }
            Ok(())
        }
        fn write_at(&self, offset: u64, bufs: &[VolatileSlice<'_>]) -> io::Result<()> {
            assert!(!self.read_only, "a write reached a read-only disk");
            let total: usize = bufs.iter().map(|b| b.len()).sum();
            let mut at = self.check(offset, total as u64);
            let mut bytes = self.bytes.lock().map_err(|_| io::ErrorKind::Other)?;
            for b in bufs {
                b.copy_to(&mut bytes[at..at + b.len()]);
                at += b.len();
            }
            Ok(())
        }
        fn flush(&self) -> io::Result<()> {
            Ok(())
        }
        fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
            assert!(self.caps.discard && !self.read_only, "discard not offered");
            self.check(offset, len);
            Ok(())
        }
        fn write_zeroes(&self, offset: u64, len: u64, _unmap: bool) -> io::Result<()> {
            assert!(
                self.caps.write_zeroes && !self.read_only,
                "write zeroes not offered"
            );
            let at = self.check(offset, len);
            let end = at + usize::try_from(len).unwrap_or(0);
            if let Ok(mut bytes) = self.bytes.lock() {
                bytes[at..end].fill(0);
            }
            Ok(())
        }
    }

    /// `data`: the queue's placement (7 bytes, see [`queue`]), the disk's size in sectors,
    /// whether it is read-only and which range operations it offers and the driver took,
    /// then guest RAM.
    pub fn run(data: &[u8]) {
        let Some((head, rest)) = data.split_first_chunk::<9>() else {
            return;
        };
        let mem = memory(rest);
        let at: [u8; 7] = head[0..7].try_into().unwrap_or_default();
        let Some(queue) = queue(&mem, at) else {
            return;
        };
        let flags = head[8];
        let caps = BlockCapabilities {
            discard: flags & 1 != 0,
            write_zeroes: flags & 2 != 0,
        };
        let read_only = flags & 4 != 0;
        let offered = |on: bool| on && !read_only;
        let disk = Disk {
            bytes: Mutex::new(vec![0x5a; usize::from(head[7]) * 512]),
            read_only,
            caps,
        };
        let mut worker = Worker {
            mem,
            queue,
            index: 0,
            backend: Arc::new(disk),
            ranges: RangeOps {
                discard: offered(caps.discard) && flags & 8 != 0,
                write_zeroes: offered(caps.write_zeroes) && flags & 16 != 0,
            },
            id: [b'f'; VIRTIO_BLK_ID_BYTES as usize],
            interrupt: Arc::new(NoInterrupts),
            counters: Arc::default(),
            needs_reset: NeedsReset::default(),
            warned: Arc::default(),
        };
        for _ in 0..2 {
            if worker.process().is_err() {
                break;
            }
        }
    }
}
