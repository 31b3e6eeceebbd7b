//! The masquerade engine as a virtual NIC's frame backend.

use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;

use vm_memory::VolatileSlice;

use super::device::PartialChecksum;
use super::engine::{Nat, NatConfig};
use super::inbound::Listeners;
use crate::backend::{FrameBackend, Offloads, VNET_HDR_LEN, gather, scatter};

/// The largest frame taken from the guest: a 64 KiB TSO segment with its headers.
const MAX_FRAME: usize = VNET_HDR_LEN + 14 + 65535;

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the frame's checksum is partial; the header says where.
const NEEDS_CSUM: u8 = 1;

/// Frames between the guest and a [`Nat`] engine. Frames to the guest are never segmented;
/// their TCP checksums are partial (`NEEDS_CSUM` in the virtio header) when the driver
/// accepted that (`GUEST_CSUM`), complete otherwise. Frames from the guest may be
/// partial-checksum or TSO segments, which the engine takes as they are.
#[derive(Debug)]
pub struct NatBackend {
    nat: Nat,
    frame: Vec<u8>,
    /// Whether the driver takes partial checksums.
    partial_csum: bool,
}

impl NatBackend {
    /// A fresh engine for `cfg`, with inbound traffic from `listeners`.
    pub fn new(cfg: NatConfig, listeners: Arc<Listeners>) -> io::Result<Self> {
        Ok(Self {
            nat: Nat::new(cfg, listeners)?,
            frame: Vec::with_capacity(MAX_FRAME),
            partial_csum: false,
        })
    }

    /// The engine.
    pub fn nat(&self) -> &Nat {
        &self.nat
    }
}

impl FrameBackend for NatBackend {
    fn poll_fd(&self) -> RawFd {
        self.nat.poll_fd()
    }

    fn recv(&mut self, bufs: &[VolatileSlice<'_>]) -> io::Result<usize> {
        let (frame, partial) = match self.next_frame() {
            Some(f) => f,
            None => {
                self.nat.process();
                self.next_frame().ok_or(io::ErrorKind::WouldBlock)?
            }
        };
        let mut header = [0u8; VNET_HDR_LEN];
        if let Some(p) = partial {
            header[0] = NEEDS_CSUM;
            header[6..8].copy_from_slice(&p.start.to_le_bytes());
            header[8..10].copy_from_slice(&p.offset.to_le_bytes());
        }
        // The header, then the frame, across the guest's buffers.
        let n = scatter(bufs, &[&header, &frame]);
        self.nat.recycle(frame);
        Ok(n)
    }

    fn send(&mut self, bufs: &[VolatileSlice<'_>]) -> io::Result<usize> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        self.frame.resize(total.min(MAX_FRAME), 0);
        let n = gather(bufs, &mut self.frame);
        if n > VNET_HDR_LEN {
            self.nat.from_guest(&self.frame[VNET_HDR_LEN..n]);
        }
        Ok(total)
    }

    fn tx_done(&mut self) {
        self.nat.process();
    }

    fn set_offloads(&mut self, offloads: Offloads) -> io::Result<()> {
        // Frames to the guest are never segmented: only the checksums depend on the driver.
        self.partial_csum = offloads.csum;
        Ok(())
    }
}

impl NatBackend {
    fn next_frame(&mut self) -> Option<(Vec<u8>, Option<PartialChecksum>)> {
        if self.partial_csum {
            self.nat.to_guest_partial()
        } else {
            self.nat.to_guest().map(|f| (f, None))
        }
    }
}
