//! MSI-X: the vector table and pending-bit array a function exposes in a BAR, the
//! capability's control bits, and interrupt delivery that honours masking.
//!
//! Delivery is split in two. The VMM implements [`MsiRoutes`]: one KVM GSI per vector with a
//! route that follows the address and data the guest programs, and an irqfd to fire it.
//! [`MsixVectors`] is the device side, shared between the vCPU thread that emulates the
//! table and the device's worker thread that raises interrupts: a vector fires only while
//! MSI-X is enabled, the function is unmasked and the vector is unmasked; otherwise its
//! pending bit is set and it fires when unmasked, as the PCI specification requires.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use vmm_sys_util::eventfd::EventFd;

/// MSI-X capability ID.
pub const MSIX_CAP_ID: u8 = 0x11;
/// Bytes per table entry.
pub const MSIX_ENTRY_SIZE: u64 = 16;
/// Most vectors a function may have (the capability's 11-bit table size).
pub const MSIX_MAX_VECTORS: usize = 2048;
const CTRL_ENABLE: u16 = 1 << 15;
const CTRL_FUNCTION_MASK: u16 = 1 << 14;
const ENTRY_MASKED: u32 = 1;

/// An MSI message as the guest programs it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MsiMessage {
    /// Message address.
    pub address: u64,
    /// Message data.
    pub data: u32,
}

/// The VMM's side of MSI delivery: per vector, a route from the vector's GSI to the message
/// the guest programmed, and an interrupt trigger.
pub trait MsiRoutes: Send + Sync {
    /// Points vector `vector` at `msg`.
    fn set_route(&self, vector: usize, msg: MsiMessage) -> io::Result<()>;
    /// Fires vector `vector`.
    fn trigger(&self, vector: usize) -> io::Result<()>;
    /// Vector `vector` became masked (by its entry, the function mask, or MSI-X being off)
    /// or unmasked. Devices that signal through [`MsixVectors::signal`] are masked in
    /// software already; a passed-through device signals its eventfds directly, so the VMM
    /// must stop (and resume) delivery itself.
    fn set_masked(&self, vector: usize, masked: bool) -> io::Result<()> {
        let _ = (vector, masked);
        Ok(())
    }
    /// The eventfd that fires vector `vector` when written, while [`MsiRoutes::set_masked`]
    /// has it unmasked: for a signaller outside `vmm` (the host kernel's vhost-net). `None`
    /// where there is none.
    fn eventfd(&self, vector: usize) -> Option<&EventFd> {
        let _ = vector;
        None
    }
}

/// The device side: masks, pending bits, delivery.
pub struct MsixVectors {
    routes: Arc<dyn MsiRoutes>,
    enabled: AtomicBool,
    function_masked: AtomicBool,
    masked: Vec<AtomicBool>,
    pending: Vec<AtomicBool>,
}

impl std::fmt::Debug for MsixVectors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MsixVectors")
            .field("vectors", &self.masked.len())
            .field("enabled", &self.enabled)
            .finish_non_exhaustive()
    }
}

impl MsixVectors {
    /// `count` vectors, all masked, MSI-X disabled (the reset state).
    pub fn new(count: usize, routes: Arc<dyn MsiRoutes>) -> Self {
        Self {
            routes,
            enabled: AtomicBool::new(false),
            function_masked: AtomicBool::new(false),
            masked: (0..count).map(|_| AtomicBool::new(true)).collect(),
            pending: (0..count).map(|_| AtomicBool::new(false)).collect(),
        }
    }

    /// Number of vectors.
    pub fn count(&self) -> usize {
        self.masked.len()
    }

    /// A handle on the eventfd that fires `vector` (see [`MsiRoutes::eventfd`]); `None` for
    /// an out-of-range vector (virtio's NO_VECTOR) or routes without eventfds. What it
    /// signals while the vector is masked is delivered on unmasking, as with a VF's.
    pub fn eventfd(&self, vector: usize) -> io::Result<Option<EventFd>> {
        if vector >= self.count() {
            return Ok(None);
        }
        self.routes
            .eventfd(vector)
            .map(EventFd::try_clone)
            .transpose()
    }

    /// Whether MSI-X is enabled.
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::SeqCst)
    }

    fn deliverable(&self, vector: usize) -> bool {
        self.enabled()
            && !self.function_masked.load(Ordering::SeqCst)
            && self
                .masked
                .get(vector)
                .is_some_and(|m| !m.load(Ordering::SeqCst))
    }

    /// Raises `vector` (out-of-range vectors, such as virtio's NO_VECTOR, are dropped).
    pub fn signal(&self, vector: usize) {
        self.signal_with(vector, || {});
    }

    /// [`MsixVectors::signal`], running `between` after the mask was found set and before
    /// the pending bit is: where another thread's unmask can land (the tests put one there).
    fn signal_with(&self, vector: usize, between: impl FnOnce()) {
        if vector >= self.count() {
            return;
        }
        if self.deliverable(vector) {
            if let Err(e) = self.routes.trigger(vector) {
                log::warn!("MSI-X vector {vector}: {e}");
            }
            return;
        }
        between();
        self.pending[vector].store(true, Ordering::SeqCst);
        // The vector may have been unmasked between the check above and the store, by a
        // vCPU that then found nothing pending: look again, or the interrupt is lost and a
        // driver waiting for it waits for ever. Sequentially consistent on both sides (the
        // unmask stores the mask, then takes the pending bit), so at least one of the two
        // threads sees the other's store, and the swap lets exactly one of them fire.
        if self.deliverable(vector)
            && self.pending[vector].swap(false, Ordering::SeqCst)
            && let Err(e) = self.routes.trigger(vector)
        {
            log::warn!("MSI-X vector {vector}: {e}");
        }
    }

    fn is_pending(&self, vector: usize) -> bool {
        self.pending
            .get(vector)
            .is_some_and(|p| p.load(Ordering::SeqCst))
    }

    /// Fires what became deliverable and was pending.
    fn flush_pending(&self) {
        for v in 0..self.count() {
            if self.deliverable(v)
                && self.pending[v].swap(false, Ordering::SeqCst)
                && let Err(e) = self.routes.trigger(v)
            {
                log::warn!("MSI-X vector {v}: {e}");
            }
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Entry {
    address_lo: u32,
    address_hi: u32,
    data: u32,
    control: u32,
}

/// The MSI-X table and PBA of one function, as the guest reads and writes them in a BAR.
#[derive(Debug)]
pub struct MsixTable {
    entries: Vec<Entry>,
    vectors: Arc<MsixVectors>,
    /// Whether each vector was last reported masked to [`MsiRoutes::set_masked`].
    reported_masked: Vec<bool>,
}

impl MsixTable {
    /// A table over `vectors` (its length is the table's).
    pub fn new(vectors: Arc<MsixVectors>) -> Self {
        let entries = vec![
            Entry {
                control: ENTRY_MASKED,
                ..Entry::default()
            };
            vectors.count()
        ];
        let reported_masked = vec![true; entries.len()];
        Self {
            entries,
            vectors,
            reported_masked,
        }
    }

    /// Tells the routes about vector `i`'s effective mask when it changed.
    fn sync_mask(&mut self, i: usize) {
        let v = &self.vectors;
        let masked = !v.enabled()
            || v.function_masked.load(Ordering::SeqCst)
            || self.entries[i].control & ENTRY_MASKED != 0;
        if self.reported_masked[i] != masked {
            self.reported_masked[i] = masked;
            if let Err(e) = v.routes.set_masked(i, masked) {
                log::warn!("MSI-X vector {i}: cannot change its mask: {e}");
            }
        }
    }

    /// The shared delivery side.
    pub fn vectors(&self) -> &Arc<MsixVectors> {
        &self.vectors
    }

    /// Bytes the table occupies.
    pub fn table_len(&self) -> u64 {
        self.entries.len() as u64 * MSIX_ENTRY_SIZE
    }

    /// Bytes the pending-bit array occupies (whole qwords).
    pub fn pba_len(&self) -> u64 {
        self.entries.len().div_ceil(64) as u64 * 8
    }

    /// The capability body (after ID and next pointer) for a table at `table_offset` and a
    /// PBA at `pba_offset`, both in BAR `bir`, and its write mask (control's enable and
    /// function-mask bits only).
    pub fn capability(&self, bir: u8, table_offset: u32, pba_offset: u32) -> ([u8; 10], [u8; 10]) {
        let size = u16::try_from(self.entries.len().saturating_sub(1)).unwrap_or(0x7ff);
        let mut body = [0u8; 10];
        body[0..2].copy_from_slice(&size.to_le_bytes());
        body[2..6].copy_from_slice(&(table_offset | u32::from(bir)).to_le_bytes());
        body[6..10].copy_from_slice(&(pba_offset | u32::from(bir)).to_le_bytes());
        let mut mask = [0u8; 10];
        mask[1] = 0xc0;
        (body, mask)
    }

    /// The guest wrote the capability's message control word.
    pub fn write_control(&mut self, control: u16) {
        let enable = control & CTRL_ENABLE != 0;
        // Routes first, then MSI-X on: a device signalling in between must not find it
        // enabled with a stale or missing route.
        if enable && !self.vectors.enabled() {
            for i in 0..self.entries.len() {
                self.update_route(i);
            }
        }
        let v = &self.vectors;
        v.enabled.store(enable, Ordering::SeqCst);
        v.function_masked
            .store(control & CTRL_FUNCTION_MASK != 0, Ordering::SeqCst);
        for i in 0..self.entries.len() {
            self.sync_mask(i);
        }
        self.vectors.flush_pending();
    }

    fn update_route(&self, i: usize) {
        let e = self.entries[i];
        if e.control & ENTRY_MASKED != 0 {
            return;
        }
        let msg = MsiMessage {
            address: u64::from(e.address_hi) << 32 | u64::from(e.address_lo),
            data: e.data,
        };
        if let Err(err) = self.vectors.routes.set_route(i, msg) {
            log::warn!("MSI-X vector {i}: cannot route: {err}");
        }
    }

    /// Reads the table at `offset`. Accesses must be aligned dwords or qwords; anything else
    /// reads as zero.
    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Some((i, field)) = self.locate(offset, data.len()) else {
            return;
        };
        let e = &self.entries[i];
        let fields = [e.address_lo, e.address_hi, e.data, e.control];
        match data.len() {
            4 => data.copy_from_slice(&fields[field].to_le_bytes()),
            8 => {
                data[..4].copy_from_slice(&fields[field].to_le_bytes());
                data[4..].copy_from_slice(&fields[field + 1].to_le_bytes());
            }
            _ => {}
        }
    }

    /// Writes the table at `offset` (aligned dwords or qwords; others are ignored).
    pub fn write_table(&mut self, offset: u64, data: &[u8]) {
        let Some((i, field)) = self.locate(offset, data.len()) else {
            return;
        };
        let mut words = vec![];
        for chunk in data.chunks_exact(4) {
            words.push(u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]));
        }
        let before = self.entries[i];
        for (k, w) in words.into_iter().enumerate() {
            let e = &mut self.entries[i];
            match field + k {
                0 => e.address_lo = w,
                1 => e.address_hi = w,
                2 => e.data = w,
                _ => e.control = w & ENTRY_MASKED,
            }
        }
        let after = self.entries[i];
        let unmasked = after.control & ENTRY_MASKED == 0;
        let message_changed = (before.address_lo, before.address_hi, before.data)
            != (after.address_lo, after.address_hi, after.data);
        if unmasked && (message_changed || before.control & ENTRY_MASKED != 0) {
            self.update_route(i);
        }
        self.vectors.masked[i].store(!unmasked, Ordering::SeqCst);
        self.sync_mask(i);
        if unmasked {
            self.vectors.flush_pending();
        }
    }

    /// Reads the pending-bit array at `offset`.
    pub fn read_pba(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if !matches!(data.len(), 4 | 8) || !offset.is_multiple_of(4) {
            return;
        }
        for (byte_idx, byte) in data.iter_mut().enumerate() {
            for bit in 0..8u64 {
                let Some(v) = (offset + byte_idx as u64)
                    .checked_mul(8)
                    .and_then(|b| b.checked_add(bit))
                    .and_then(|b| usize::try_from(b).ok())
                else {
                    continue;
                };
                if self.vectors.is_pending(v) {
                    *byte |= 1 << bit;
                }
            }
        }
    }

    /// Entry index and dword field for an access, if it is well formed and in range.
    fn locate(&self, offset: u64, len: usize) -> Option<(usize, usize)> {
        if !matches!(len, 4 | 8) || !offset.is_multiple_of(len as u64) {
            return None;
        }
        let i = usize::try_from(offset / MSIX_ENTRY_SIZE).ok()?;
        let field = usize::try_from(offset % MSIX_ENTRY_SIZE / 4).ok()?;
        (i < self.entries.len()).then_some((i, field))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testing::Msi as Recorder;

    fn table(n: usize) -> (Arc<Recorder>, MsixTable) {
        let rec = Arc::new(Recorder::default());
        let vectors = Arc::new(MsixVectors::new(n, rec.clone()));
        (rec, MsixTable::new(vectors))
    }

    fn program(t: &mut MsixTable, i: u64, addr: u32, data: u32) {
        t.write_table(i * 16, &addr.to_le_bytes());
        t.write_table(i * 16 + 4, &0u32.to_le_bytes());
        t.write_table(i * 16 + 8, &data.to_le_bytes());
    }

    /// The guest unmasks the vector just after the device found it masked and before it
    /// set the pending bit: the interrupt must still fire (before the fix it stayed pending
    /// on an unmasked vector, lost, and the driver waiting for it waited for ever).
    #[test]
    fn a_signal_racing_an_unmask_is_not_lost() {
        let (rec, mut t) = table(1);
        t.write_control(CTRL_ENABLE);
        program(&mut t, 0, 0xfee0_0000, 0x41);
        let vectors = t.vectors().clone();
        vectors.signal_with(0, || t.write_table(12, &0u32.to_le_bytes()));
        assert_eq!(
            *rec.fired.lock().unwrap(),
            vec![0],
            "the interrupt was lost"
        );
        assert!(!vectors.is_pending(0));
    }

    #[test]
    fn masked_vectors_pend_and_fire_on_unmask() {
        let (rec, mut t) = table(3);
        t.write_control(CTRL_ENABLE);
        program(&mut t, 1, 0xfee0_0000, 0x41);
        t.vectors().signal(1);
        assert!(rec.fired.lock().unwrap().is_empty(), "vector 1 is masked");
        let mut pba = [0u8; 8];
        t.read_pba(0, &mut pba);
        assert_eq!(pba[0], 0b10);
        t.write_table(16 + 12, &0u32.to_le_bytes());
        assert_eq!(*rec.fired.lock().unwrap(), vec![1]);
        assert_eq!(
            *rec.routes.lock().unwrap(),
            vec![(
                1,
                MsiMessage {
                    address: 0xfee0_0000,
                    data: 0x41
                }
            )]
        );
        t.read_pba(0, &mut pba);
        assert_eq!(pba[0], 0);
        t.vectors().signal(1);
        assert_eq!(*rec.fired.lock().unwrap(), vec![1, 1]);
    }

    #[test]
    fn function_mask_and_disable_hold_interrupts() {
        let (rec, mut t) = table(2);
        program(&mut t, 0, 0xfee0_0000, 0x30);
        t.write_table(12, &0u32.to_le_bytes());
        t.vectors().signal(0);
        assert!(rec.fired.lock().unwrap().is_empty(), "MSI-X disabled");
        t.write_control(CTRL_ENABLE | CTRL_FUNCTION_MASK);
        assert!(rec.fired.lock().unwrap().is_empty(), "function masked");
        t.write_control(CTRL_ENABLE);
        assert_eq!(*rec.fired.lock().unwrap(), vec![0]);
    }

    #[test]
    fn malformed_accesses_are_harmless() {
        let (rec, mut t) = table(2);
        let mut b = [0u8; 4];
        t.read_table(2, &mut b);
        t.read_table(1 << 40, &mut b);
        t.read_table(u64::MAX - 3, &mut b);
        t.write_table(u64::MAX - 3, &[1, 2, 3, 4]);
        t.write_table(32, &[1, 2, 3, 4]);
        t.write_table(1, &[1]);
        let mut q = [0u8; 8];
        t.read_pba(u64::MAX - 7, &mut q);
        t.vectors().signal(0xffff);
        t.vectors().signal(5);
        assert!(rec.fired.lock().unwrap().is_empty());
        let mut q = [0u8; 8];
        t.write_table(0, &0xfee0_1000_0000_0000u64.to_le_bytes());
        t.read_table(0, &mut q);
        assert_eq!(u64::from_le_bytes(q), 0xfee0_1000_0000_0000);
        let (body, mask) = t.capability(0, 0x4000, 0x5000);
        assert_eq!(&body[..2], &[1, 0]);
        assert_eq!(mask[1], 0xc0);
    }
}
