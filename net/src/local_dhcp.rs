//! A frame backend that answers the guest's DHCP in process and passes everything else on.
//!
//! It wraps another backend (the TAP of a bridge binding). On the way out, the first bytes
//! of each frame are checked for UDP to port 67 ([`DhcpServer::might_be_dhcp`]); only such
//! frames are copied and parsed, and a request from the guest is answered here instead of
//! reaching the network. Replies wait in a short queue that [`FrameBackend::recv`] drains
//! before reading the inner backend. The poll descriptor is an epoll set of the inner
//! backend's descriptor and an eventfd raised while replies wait.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};

use vm_memory::VolatileSlice;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::backend::{FrameBackend, Offloads, VNET_HDR_LEN, gather, scatter};
use crate::dhcp::DhcpServer;

/// Bytes peeked at to classify a frame: header, Ethernet, IPv4 with options, UDP ports.
const PEEK: usize = VNET_HDR_LEN + 14 + 60 + 4;
/// Largest client message copied for parsing.
const MAX_REQUEST: usize = VNET_HDR_LEN + 1514;
/// Replies waiting for the guest; more are dropped (the client retries).
const MAX_QUEUED: usize = 4;

/// The wrapper.
pub struct LocalDhcp<B> {
    inner: B,
    server: DhcpServer,
    replies: VecDeque<Vec<u8>>,
    ready: EventFd,
    epoll: Epoll,
}

impl<B> std::fmt::Debug for LocalDhcp<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalDhcp")
            .field("lease", self.server.lease())
            .field("queued", &self.replies.len())
            .finish_non_exhaustive()
    }
}

impl<B: FrameBackend> LocalDhcp<B> {
    /// `inner` with `server` answering in front of it.
    pub fn new(inner: B, server: DhcpServer) -> io::Result<Self> {
        let ready = EventFd::new(EFD_NONBLOCK)?;
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            inner.poll_fd(),
            EpollEvent::new(EventSet::IN, 0),
        )?;
        epoll.ctl(
            ControlOperation::Add,
            ready.as_raw_fd(),
            EpollEvent::new(EventSet::IN, 1),
        )?;
        Ok(Self {
            inner,
            server,
            replies: VecDeque::new(),
            ready,
            epoll,
        })
    }

    /// Answers the frame in `bufs` if it is the guest's DHCP; returns whether it was.
    fn intercept(&mut self, bufs: &[VolatileSlice<'_>]) -> bool {
        let mut head = [0u8; PEEK];
        let n = gather(bufs, &mut head);
        if n <= VNET_HDR_LEN || !DhcpServer::might_be_dhcp(&head[VNET_HDR_LEN..n]) {
            return false;
        }
        let mut frame = vec![0u8; MAX_REQUEST];
        let n = gather(bufs, &mut frame);
        let Some(reply) = self.server.handle(&frame[VNET_HDR_LEN..n]) else {
            return false;
        };
        if self.replies.len() < MAX_QUEUED {
            let mut with_header = vec![0u8; VNET_HDR_LEN];
            with_header.extend(reply);
            self.replies.push_back(with_header);
            let _ = self.ready.write(1);
        }
        true
    }
}

impl<B: FrameBackend> FrameBackend for LocalDhcp<B> {
    fn poll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    fn recv(&mut self, bufs: &[VolatileSlice<'_>]) -> io::Result<usize> {
        if let Some(reply) = self.replies.pop_front() {
            if self.replies.is_empty() {
                let _ = self.ready.read();
            }
            return Ok(scatter(bufs, &[&reply]));
        }
        self.inner.recv(bufs)
    }

    fn send(&mut self, bufs: &[VolatileSlice<'_>]) -> io::Result<usize> {
        if self.intercept(bufs) {
            return Ok(bufs.iter().map(|b| b.len()).sum());
        }
        self.inner.send(bufs)
    }

    fn tx_done(&mut self) {
        self.inner.tx_done();
    }

    fn set_offloads(&mut self, offloads: Offloads) -> io::Result<()> {
        self.inner.set_offloads(offloads)
    }

    fn set_queue_enabled(&mut self, on: bool) -> io::Result<()> {
        self.inner.set_queue_enabled(on)
    }
}
