//! Where a virtual NIC's frames go and come from.
//!
//! A frame crosses this interface as a 12-byte virtio-net header (`virtio_net_hdr_v1`:
//! flags, GSO type, header length, GSO size, checksum start and offset, number of buffers)
//! followed by the Ethernet frame. The header is the kernel's own TAP format with
//! `IFF_VNET_HDR`, so the TAP backend hands guest buffers to the kernel untouched; other
//! backends read and write it themselves.

use std::io;
use std::os::fd::RawFd;

use vm_memory::VolatileSlice;

/// Size of the per-frame header.
pub const VNET_HDR_LEN: usize = 12;

/// Offloads the guest accepts on received frames, which the backend may therefore send it
/// (partial checksums, large segments).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Offloads {
    /// Frames may carry a partial checksum (the guest accepted `GUEST_CSUM`).
    pub csum: bool,
    /// TCPv4 segmentation offload (`GUEST_TSO4`).
    pub tso4: bool,
    /// TCPv6 segmentation offload (`GUEST_TSO6`).
    pub tso6: bool,
    /// TSO with ECN (`GUEST_ECN`).
    pub tso_ecn: bool,
}

/// A source and sink of frames for one NIC.
pub trait FrameBackend: Send {
    /// A descriptor that polls readable when [`FrameBackend::recv`] may have a frame.
    fn poll_fd(&self) -> RawFd;

    /// Reads one frame (header then Ethernet frame) into `bufs`; its length, or
    /// `WouldBlock` when none is waiting. A frame longer than `bufs` is truncated.
    fn recv(&mut self, bufs: &[VolatileSlice<'_>]) -> io::Result<usize>;

    /// Sends one frame (header then Ethernet frame) gathered from `bufs`. `WouldBlock`
    /// means the backend is full; the frame is dropped, as a NIC drops on a full queue.
    fn send(&mut self, bufs: &[VolatileSlice<'_>]) -> io::Result<usize>;

    /// The device has handed over every frame the guest queued for now; a backend that
    /// batches work may do it here.
    fn tx_done(&mut self) {}

    /// The guest's driver enabled (or disabled) the queue pair this backend serves, one of a
    /// NIC's several: a multi-queue TAP attaches (or detaches) its queue. Single-queue
    /// backends ignore it.
    fn set_queue_enabled(&mut self, _on: bool) -> io::Result<()> {
        Ok(())
    }

    /// The guest (re)negotiated what it accepts.
    fn set_offloads(&mut self, offloads: Offloads) -> io::Result<()>;
}

/// Copies up to `out.len()` bytes from the start of `bufs`; returns how many.
pub fn gather(bufs: &[VolatileSlice<'_>], out: &mut [u8]) -> usize {
    let mut at = 0;
    for b in bufs {
        if at == out.len() {
            break;
        }
        let n = b.len().min(out.len() - at);
        if let Ok(s) = b.subslice(0, n) {
            s.copy_to(&mut out[at..at + n]);
        }
        at += n;
    }
    at
}

/// Copies `parts`, one after the other, into `bufs`; returns how many bytes fitted.
pub fn scatter(bufs: &[VolatileSlice<'_>], parts: &[&[u8]]) -> usize {
    let mut written = 0;
    let mut parts = parts.iter().map(|p| &p[..]);
    let mut part: &[u8] = parts.next().unwrap_or(&[]);
    for b in bufs {
        let mut off = 0;
        while off < b.len() {
            while part.is_empty() {
                match parts.next() {
                    Some(p) => part = p,
                    None => return written,
                }
            }
            let n = part.len().min(b.len() - off);
            if let Ok(dst) = b.subslice(off, n) {
                dst.copy_from(&part[..n]);
            }
            part = &part[n..];
            off += n;
            written += n;
        }
    }
    written
}
