//! virtio-blk against virtio-queue's mock queue and a disk in memory: well-formed requests,
//! every split of a request over descriptors, and hostile ones.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use virtio_queue::desc::RawDescriptor;
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

use super::*;

const NEXT: u16 = crate::virtio::byte(virtio_bindings::virtio_ring::VRING_DESC_F_NEXT) as u16;
const WRITE: u16 = crate::virtio::byte(virtio_bindings::virtio_ring::VRING_DESC_F_WRITE) as u16;
const HDR: u64 = 0x10_0000;
const DATA: u64 = 0x20_0000;
const STATUS: u64 = 0x30_0000;

/// A disk in memory.
struct MemDisk {
    bytes: Mutex<Vec<u8>>,
    read_only: bool,
    caps: BlockCapabilities,
    flushes: AtomicU64,
    /// (offset, len, unmap, zeroes) of each range operation.
    ranges: Mutex<Vec<(u64, u64, bool, bool)>>,
}

impl MemDisk {
    fn new(sectors: usize) -> Self {
        let bytes = (0..sectors * 512)
            .map(|i| (i / 512).to_le_bytes()[0])
            .collect();
        Self {
            bytes: Mutex::new(bytes),
            read_only: false,
            caps: BlockCapabilities::default(),
            flushes: AtomicU64::new(0),
            ranges: Mutex::default(),
        }
    }
}

impl BlockBackend for MemDisk {
    fn size(&self) -> u64 {
        self.bytes.lock().unwrap().len() as u64
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    fn capabilities(&self) -> BlockCapabilities {
        self.caps
    }
    fn read_at(&self, offset: u64, bufs: &[VolatileSlice<'_>]) -> io::Result<()> {
        let bytes = self.bytes.lock().unwrap();
        let mut at = usize::try_from(offset).unwrap();
        for b in bufs {
            b.copy_from(&bytes[at..at + b.len()]);
            at += b.len();
        }
        Ok(())
    }
    fn write_at(&self, offset: u64, bufs: &[VolatileSlice<'_>]) -> io::Result<()> {
        let mut bytes = self.bytes.lock().unwrap();
        let mut at = usize::try_from(offset).unwrap();
        for b in bufs {
            b.copy_to(&mut bytes[at..at + b.len()]);
            at += b.len();
        }
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        self.flushes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.ranges
            .lock()
            .unwrap()
            .push((offset, len, false, false));
        Ok(())
    }
    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        let (o, l) = (
            usize::try_from(offset).unwrap(),
            usize::try_from(len).unwrap(),
        );
        self.bytes.lock().unwrap()[o..o + l].fill(0);
        self.ranges.lock().unwrap().push((offset, len, unmap, true));
        Ok(())
    }
}

use crate::testing::Irqs;

struct Setup {
    mem: GuestMemoryMmap,
    disk: Arc<MemDisk>,
    irqs: Arc<Irqs>,
    counters: Arc<BlockCounters>,
}

fn setup(disk: MemDisk) -> Setup {
    Setup {
        mem: GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap(),
        disk: Arc::new(disk),
        irqs: Arc::default(),
        counters: Arc::default(),
    }
}

fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
}

impl Setup {
    fn worker(&self, q: &MockSplitQueue<'_, GuestMemoryMmap>, ranges: RangeOps) -> Worker {
        Worker {
            mem: self.mem.clone(),
            queue: q.create_queue().unwrap(),
            index: 0,
            backend: self.disk.clone(),
            ranges,
            id: *b"data-disk\0\0\0\0\0\0\0\0\0\0\0",
            interrupt: self.irqs.clone(),
            counters: self.counters.clone(),
            needs_reset: NeedsReset::default(),
            warned: Arc::default(),
        }
    }

    fn header(&self, kind: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&kind.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&h, GuestAddress(HDR)).unwrap();
        self.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    }

    fn status(&self) -> u8 {
        self.mem.read_obj(GuestAddress(STATUS)).unwrap()
    }

    /// Runs one request made of `descs` and returns (status, used length).
    fn run(&self, descs: &[RawDescriptor], ranges: RangeOps) -> (u8, u32) {
        let q = MockSplitQueue::create(&self.mem, GuestAddress(0), 16);
        q.add_desc_chains(descs, 0).unwrap();
        let mut w = self.worker(&q, ranges);
        w.process().unwrap();
        let n = q.used().idx().load();
        assert_eq!(n, 1, "one request, one used entry");
        let used = q.used().ring().ref_at(0).unwrap().load();
        (self.status(), used.len())
    }
}

const NO_RANGES: RangeOps = RangeOps {
    discard: false,
    write_zeroes: false,
};
// VIRTIO_BLK_S_OK, VIRTIO_BLK_S_IOERR and VIRTIO_BLK_S_UNSUPP as the status byte.
const OK: u8 = 0;
const IOERR: u8 = 1;
const UNSUPP: u8 = 2;

#[test]
fn reads_sectors_into_split_buffers() {
    let s = setup(MemDisk::new(8));
    s.header(VIRTIO_BLK_T_IN, 2);
    let (status, len) = s.run(
        &[
            desc(HDR, 16, NEXT, 1),
            desc(DATA, 512, WRITE | NEXT, 2),
            desc(DATA + 0x1000, 512, WRITE | NEXT, 3),
            desc(STATUS, 1, WRITE, 0),
        ],
        NO_RANGES,
    );
    assert_eq!((status, len), (OK, 1025));
    let mut got = [0u8; 512];
    s.mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    assert_eq!(got, [2u8; 512]);
    s.mem
        .read_slice(&mut got, GuestAddress(DATA + 0x1000))
        .unwrap();
    assert_eq!(got, [3u8; 512]);
    assert_eq!(s.counters.read_bytes.load(Ordering::Relaxed), 1024);
    assert_eq!(*s.irqs.0.lock().unwrap(), vec![0]);
}

#[test]
fn writes_sectors_from_a_header_and_data_in_one_buffer() {
    let s = setup(MemDisk::new(8));
    // Header and data in one readable buffer, data and status in one writable one: the
    // device must not assume a descriptor per part.
    s.header(VIRTIO_BLK_T_OUT, 5);
    s.mem
        .write_slice(&[0xab; 1024], GuestAddress(HDR + 16))
        .unwrap();
    let (status, len) = s.run(
        &[desc(HDR, 16 + 1024, NEXT, 1), desc(STATUS, 1, WRITE, 0)],
        NO_RANGES,
    );
    assert_eq!((status, len), (OK, 1));
    let bytes = s.disk.bytes.lock().unwrap();
    assert!(bytes[5 * 512..7 * 512].iter().all(|b| *b == 0xab));
    assert_eq!(bytes[7 * 512], 7, "nothing past the request changed");
    assert_eq!(bytes[5 * 512 - 1], 4);
}

#[test]
fn a_header_split_over_descriptors_and_a_status_after_data_in_one_buffer() {
    let s = setup(MemDisk::new(8));
    s.header(VIRTIO_BLK_T_IN, 1);
    // The data and the status share the last writable buffer: 512 data bytes, then status.
    let (_, len) = s.run(
        &[
            desc(HDR, 8, NEXT, 1),
            desc(HDR + 8, 8, NEXT, 2),
            desc(DATA, 513, WRITE, 0),
        ],
        NO_RANGES,
    );
    assert_eq!(len, 513);
    let status: u8 = s.mem.read_obj(GuestAddress(DATA + 512)).unwrap();
    assert_eq!(status, OK);
    let first: u8 = s.mem.read_obj(GuestAddress(DATA)).unwrap();
    assert_eq!(first, 1);
}

#[test]
fn ranges_past_the_end_or_not_whole_sectors_are_io_errors() {
    let s = setup(MemDisk::new(8));
    for (kind, sector, len) in [
        (VIRTIO_BLK_T_IN, 7, 1024),           // one sector past the end
        (VIRTIO_BLK_T_IN, 8, 512),            // starts at the end
        (VIRTIO_BLK_T_IN, u64::MAX / 2, 512), // sector × 512 overflows
        (VIRTIO_BLK_T_IN, 0, 100),            // not whole sectors
        (VIRTIO_BLK_T_OUT, 7, 1024),
        (VIRTIO_BLK_T_OUT, u64::MAX, 512),
    ] {
        s.header(kind, sector);
        let flag = if kind == VIRTIO_BLK_T_IN { WRITE } else { 0 };
        let (status, _) = s.run(
            &[
                desc(HDR, 16, NEXT, 1),
                desc(DATA, len, flag | NEXT, 2),
                desc(STATUS, 1, WRITE, 0),
            ],
            NO_RANGES,
        );
        assert_eq!(status, IOERR, "type {kind} sector {sector} len {len}");
    }
    let bytes = s.disk.bytes.lock().unwrap();
    assert_eq!(bytes[7 * 512], 7, "no write reached the disk");
}

#[test]
fn a_read_only_disk_refuses_writes_and_says_so() {
    let mut disk = MemDisk::new(8);
    disk.read_only = true;
    disk.caps = BlockCapabilities {
        discard: true,
        write_zeroes: true,
    };
    let s = setup(disk);
    let block = Block::new("ro", s.disk.clone(), 1, Arc::default()).unwrap();
    let features = block.features();
    assert_ne!(features & (1 << VIRTIO_BLK_F_RO), 0);
    assert_eq!(
        features & (1 << VIRTIO_BLK_F_DISCARD | 1 << VIRTIO_BLK_F_WRITE_ZEROES),
        0,
        "no discard on a read-only disk"
    );
    s.header(VIRTIO_BLK_T_OUT, 0);
    let (status, _) = s.run(
        &[
            desc(HDR, 16, NEXT, 1),
            desc(DATA, 512, NEXT, 2),
            desc(STATUS, 1, WRITE, 0),
        ],
        NO_RANGES,
    );
    assert_eq!(status, IOERR);
    assert_eq!(s.disk.bytes.lock().unwrap()[0], 0);
}

#[test]
fn flush_reaches_the_backend() {
    let s = setup(MemDisk::new(8));
    s.header(VIRTIO_BLK_T_FLUSH, 0);
    let (status, len) = s.run(
        &[desc(HDR, 16, NEXT, 1), desc(STATUS, 1, WRITE, 0)],
        NO_RANGES,
    );
    assert_eq!((status, len), (OK, 1));
    assert_eq!(s.disk.flushes.load(Ordering::Relaxed), 1);
}

#[test]
fn get_id_answers_the_disk_name_bounded_by_the_buffer() {
    let s = setup(MemDisk::new(8));
    s.header(VIRTIO_BLK_T_GET_ID, 0);
    let (status, len) = s.run(
        &[
            desc(HDR, 16, NEXT, 1),
            desc(DATA, 20, WRITE | NEXT, 2),
            desc(STATUS, 1, WRITE, 0),
        ],
        NO_RANGES,
    );
    assert_eq!((status, len), (OK, 21));
    let mut id = [0u8; 20];
    s.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id[..9], b"data-disk");
    assert_eq!(id[9..], [0; 11]);
    // A 4-byte buffer gets 4 bytes, not 20.
    s.mem.write_slice(&[0xee; 8], GuestAddress(DATA)).unwrap();
    let (status, len) = s.run(
        &[
            desc(HDR, 16, NEXT, 1),
            desc(DATA, 4, WRITE | NEXT, 2),
            desc(STATUS, 1, WRITE, 0),
        ],
        NO_RANGES,
    );
    assert_eq!((status, len), (OK, 5));
    let mut got = [0u8; 8];
    s.mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    assert_eq!(&got, b"data\xee\xee\xee\xee");
}

#[test]
fn unknown_requests_are_unsupported_and_short_headers_io_errors() {
    let s = setup(MemDisk::new(8));
    for kind in [
        2,
        7,
        VIRTIO_BLK_T_DISCARD,
        VIRTIO_BLK_T_WRITE_ZEROES,
        u32::MAX,
    ] {
        s.header(kind, 0);
        let (status, _) = s.run(
            &[desc(HDR, 16, NEXT, 1), desc(STATUS, 1, WRITE, 0)],
            NO_RANGES,
        );
        assert_eq!(status, UNSUPP, "type {kind}");
    }
    s.header(VIRTIO_BLK_T_IN, 0);
    let (status, _) = s.run(
        &[desc(HDR, 8, NEXT, 1), desc(STATUS, 1, WRITE, 0)],
        NO_RANGES,
    );
    assert_eq!(status, IOERR);
}

#[test]
fn chains_without_a_status_byte_or_outside_ram_are_returned_unused() {
    let s = setup(MemDisk::new(8));
    s.header(VIRTIO_BLK_T_IN, 0);
    for descs in [
        // No writable byte for the status.
        &[
            desc(HDR, 16, NEXT, 1),
            desc(DATA, 512, NEXT, 2),
            desc(DATA, 1, 0, 0),
        ][..],
        // Data outside guest RAM.
        &[
            desc(HDR, 16, NEXT, 1),
            desc(0x1_0000_0000, 512, WRITE | NEXT, 2),
            desc(STATUS, 1, WRITE, 0),
        ][..],
        // A buffer that wraps the address space.
        &[
            desc(HDR, 16, NEXT, 1),
            desc(u64::MAX - 8, 512, WRITE | NEXT, 2),
            desc(STATUS, 1, WRITE, 0),
        ][..],
        // A readable buffer after a writable one.
        &[
            desc(HDR, 16, NEXT, 1),
            desc(DATA, 512, WRITE | NEXT, 2),
            desc(STATUS, 1, 0, 0),
        ][..],
    ] {
        let (status, len) = s.run(descs, NO_RANGES);
        assert_eq!((status, len), (0xff, 0), "{descs:?}");
    }
    assert_eq!(s.counters.errors.load(Ordering::Relaxed), 4);
}

#[test]
fn a_descriptor_loop_ends() {
    let s = setup(MemDisk::new(8));
    s.header(VIRTIO_BLK_T_IN, 0);
    let q = MockSplitQueue::create(&s.mem, GuestAddress(0), 16);
    q.add_desc_chains(
        &[desc(HDR, 16, NEXT, 1), desc(DATA, 512, WRITE | NEXT, 0)],
        0,
    )
    .unwrap();
    let mut w = s.worker(&q, NO_RANGES);
    w.process().unwrap();
    assert_eq!(q.used().idx().load(), 1);
}

fn range(sector: u64, sectors: u32, flags: u32) -> [u8; 16] {
    let mut r = [0u8; 16];
    r[..8].copy_from_slice(&sector.to_le_bytes());
    r[8..12].copy_from_slice(&sectors.to_le_bytes());
    r[12..].copy_from_slice(&flags.to_le_bytes());
    r
}

#[test]
fn discard_and_write_zeroes_check_every_range_first() {
    let mut disk = MemDisk::new(64);
    disk.caps = BlockCapabilities {
        discard: true,
        write_zeroes: true,
    };
    let s = setup(disk);
    let both = RangeOps {
        discard: true,
        write_zeroes: true,
    };
    let request = |kind: u32, ranges: &[[u8; 16]]| {
        s.header(kind, 0);
        let bytes: Vec<u8> = ranges.iter().flatten().copied().collect();
        s.mem.write_slice(&bytes, GuestAddress(DATA)).unwrap();
        let len = u32::try_from(bytes.len()).unwrap();
        s.run(
            &[
                desc(HDR, 16, NEXT, 1),
                desc(DATA, len, NEXT, 2),
                desc(STATUS, 1, WRITE, 0),
            ],
            both,
        )
        .0
    };
    assert_eq!(
        request(
            VIRTIO_BLK_T_WRITE_ZEROES,
            &[range(2, 2, 1), range(10, 1, 0)]
        ),
        OK
    );
    assert!(
        s.disk.bytes.lock().unwrap()[2 * 512..4 * 512]
            .iter()
            .all(|b| *b == 0)
    );
    assert_eq!(request(VIRTIO_BLK_T_DISCARD, &[range(0, 64, 0)]), OK);
    assert_eq!(
        *s.disk.ranges.lock().unwrap(),
        vec![
            (1024, 1024, true, true),
            (5120, 512, false, true),
            (0, 64 * 512, false, false)
        ]
    );
    // Discard may not ask to unmap; reserved flags; past the end; too many ranges; a
    // partial range: nothing is done.
    assert_eq!(request(VIRTIO_BLK_T_DISCARD, &[range(0, 1, 1)]), UNSUPP);
    assert_eq!(
        request(VIRTIO_BLK_T_WRITE_ZEROES, &[range(0, 1, 2)]),
        UNSUPP
    );
    assert_eq!(
        request(
            VIRTIO_BLK_T_WRITE_ZEROES,
            &[range(0, 1, 0), range(63, 2, 0)]
        ),
        IOERR
    );
    assert_eq!(request(VIRTIO_BLK_T_DISCARD, &[range(0, 1, 0); 33]), IOERR);
    assert_eq!(request(VIRTIO_BLK_T_DISCARD, &[]), IOERR);
    assert_eq!(
        s.disk.ranges.lock().unwrap().len(),
        3,
        "no partial request ran"
    );
}

#[test]
fn config_space_says_capacity_segments_and_queues() {
    let block = Block::new("d", Arc::new(MemDisk::new(2048)), 4, Arc::default()).unwrap();
    let mut capacity = [0u8; 8];
    block.read_config(0, &mut capacity);
    assert_eq!(u64::from_le_bytes(capacity), 2048);
    let mut seg_max = [0u8; 4];
    block.read_config(12, &mut seg_max);
    assert_eq!(u32::from_le_bytes(seg_max), 254);
    let mut queues = [0u8; 2];
    block.read_config(34, &mut queues);
    assert_eq!(u16::from_le_bytes(queues), 4);
    assert_eq!(block.queue_max_sizes().len(), 4);
    assert_ne!(block.features() & (1 << VIRTIO_BLK_F_MQ), 0);
    assert_ne!(block.features() & (1 << VIRTIO_BLK_F_FLUSH), 0);
    let mut far = [0xffu8; 4];
    block.read_config(u64::MAX, &mut far);
    assert_eq!(far, [0; 4]);
}

/// The same rule as virtio-net: a broken available ring stops the queue, sets
/// DEVICE_NEEDS_RESET, and the worker still ends when told to.
#[test]
fn a_broken_available_index_stops_the_queue_and_the_worker_still_ends() {
    let s = setup(MemDisk::new(8));
    let q = MockSplitQueue::create(&s.mem, GuestAddress(0), 16);
    q.avail().idx().store(40);
    let w = s.worker(&q, NO_RANGES);
    let needs_reset = w.needs_reset.clone();
    let evt = EventFd::new(EFD_NONBLOCK).unwrap();
    let kill = EventFd::new(EFD_NONBLOCK).unwrap();
    let (evt2, kill2) = (evt.try_clone().unwrap(), kill.try_clone().unwrap());
    evt.write(1).unwrap();
    let (done, ended) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        w.run(&evt2, &kill2);
        let _ = done.send(());
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while !needs_reset.is_set() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(needs_reset.is_set());
    assert_eq!(
        *s.irqs.0.lock().unwrap(),
        vec![usize::MAX],
        "a config interrupt"
    );
    kill.write(1).unwrap();
    ended
        .recv_timeout(Duration::from_secs(5))
        .expect("the worker ends when killed");
}

#[test]
fn buffers_split_anywhere_and_refuse_too_many_segments() {
    let mem: GuestMemoryMmap =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let slice = |addr: u64, len: usize| {
        GuestMemoryBackend::get_slice(&mem, GuestAddress(addr), len).unwrap()
    };
    let mut b = Buffers::default();
    b.push(slice(0, 10)).unwrap();
    b.push(slice(100, 10)).unwrap();
    b.push(slice(200, 10)).unwrap();
    let front = b.take_front(15).unwrap();
    assert_eq!((front.len, front.slices.len()), (15, 2));
    let back = b.take_back(1).unwrap();
    assert_eq!((back.len, b.len), (1, 14));
    assert!(b.take_front(15).is_none());
    assert!(b.take_back(15).is_none());
    let mut many = Buffers::default();
    for _ in 0..MAX_SEGMENTS {
        many.push(slice(0, 1)).unwrap();
    }
    assert!(many.push(slice(0, 1)).is_none());
}
