//! The masquerade engine as a virtual NIC's frame backend.

use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;

use vm_memory::VolatileSlice;

use super::engine::{Nat, NatConfig};
use super::inbound::Listeners;
use crate::backend::{FrameBackend, Offloads, VNET_HDR_LEN, gather, scatter};

/// The largest frame taken from the guest: a 64 KiB TSO segment with its headers.
const MAX_FRAME: usize = VNET_HDR_LEN + 14 + 65535;

/// Frames between the guest and a [`Nat`] engine. Frames to the guest carry a zero virtio
/// header (complete checksums, no segmentation); frames from it may be partial-checksum
/// or TSO segments, which the engine takes as they are.
#[derive(Debug)]
pub struct NatBackend {
    nat: Nat,
    frame: Vec<u8>,
}

impl NatBackend {
    /// A fresh engine for `cfg`, with inbound traffic from `listeners`.
    pub fn new(cfg: NatConfig, listeners: Arc<Listeners>) -> io::Result<Self> {
        Ok(Self {
            nat: Nat::new(cfg, listeners)?,
            frame: Vec::with_capacity(MAX_FRAME),
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
        let frame = match self.nat.to_guest() {
            Some(f) => f,
            None => {
                self.nat.process();
                self.nat.to_guest().ok_or(io::ErrorKind::WouldBlock)?
            }
        };
        // A zero header, then the frame, across the guest's buffers.
        Ok(scatter(bufs, &[&[0u8; VNET_HDR_LEN], &frame]))
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

    fn set_offloads(&mut self, _: Offloads) -> io::Result<()> {
        // Frames to the guest are complete; nothing to configure.
        Ok(())
    }
}
