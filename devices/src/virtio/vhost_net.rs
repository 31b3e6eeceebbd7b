//! virtio-net whose queues the host kernel serves: vhost-net over a TAP.
//!
//! `vmm` keeps the transport (PCI, features, the queues' addresses, MSI-X) and hands the
//! kernel what it needs to move frames between the guest's rings and the TAP without
//! waking `vmm`: the guest's memory table, each ring's addresses, the queue-notify
//! ioeventfd as the kick and the queue's MSI-X irqfd as the call. A masked vector's irqfd is
//! unregistered from KVM by the transport, so what the kernel signals meanwhile is
//! delivered when the guest unmasks it. The TAP's offloads follow the features the driver
//! accepted, as in the userspace device ([`super::net`]).
//!
//! The guest's frames no longer pass through `vmm`, so a delegated address's DHCP is
//! answered from a packet socket on the TAP ([`net::packet::DhcpSocket`]) by a thread of
//! its own. Unlike the userspace device's, the guest's DHCP requests also go on to the
//! bridge, as with Virtink's dnsmasq on the bridge.
//!
//! One queue pair, no control queue. The device counts no frames (`vmm` never sees them);
//! `info` reports the TAP's statistics instead.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use net::dhcp::DhcpServer;
use net::packet::{DhcpSocket, MAX_FRAME};
use net::poll::{Poller, Token};
use net::{FrameBackend, MacAddr, Tap};
use vhost::net::VhostNet as _;
use vhost::vhost_kern::net::Net as KernelNet;
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::QueueT;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::net::{
    NetCounters, QUEUE_SIZE, TYPE_NET, features, offered_features, offloads, read_config,
};
use super::{
    Activation, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
    VirtioDevice,
};
use crate::seccomp::Role;
use crate::worker::WorkerThread;

/// The ring features the kernel must have for the device to offer them.
const RING_FEATURES: u64 = VIRTIO_F_VERSION_1
    | VIRTIO_RING_F_EVENT_IDX
    | VIRTIO_RING_F_INDIRECT_DESC
    | features::MRG_RXBUF;

fn vhost_err(what: &str) -> impl FnOnce(vhost::Error) -> io::Error + '_ {
    move |e| io::Error::other(format!("vhost-net: {what}: {e}"))
}

/// A virtio-net device served by vhost-net.
pub struct VhostNet {
    mac: MacAddr,
    mtu: u16,
    tap: Tap,
    kernel: KernelNet<Arc<GuestMemoryMmap>>,
    offered: u64,
    sizes: [u16; 2],
    acked: Arc<AtomicU64>,
    counters: Arc<NetCounters>,
    /// The DHCP thread's stop event, while it runs.
    dhcp: Option<(WorkerThread<()>, EventFd)>,
    running: bool,
}

impl std::fmt::Debug for VhostNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhostNet")
            .field("mac", &self.mac)
            .field("tap", &self.tap.name())
            .field("running", &self.running)
            .finish_non_exhaustive()
    }
}

impl VhostNet {
    /// A NIC with `mac` and `mtu` over `tap`, its queues served by a vhost-net instance
    /// opened here (`/dev/vhost-net`) for guest memory `mem`; `dhcp` answers a delegated
    /// address's DHCP. `acked` (the features the driver accepted) and `counters` (only its
    /// `queue_pairs`: 1 while the driver runs the NIC) are reported by whoever holds them.
    /// Run on the thread that builds the VM: the kernel's worker belongs to this process.
    pub fn new(
        mac: MacAddr,
        mtu: u16,
        tap: Tap,
        mem: &GuestMemoryMmap,
        dhcp: Option<(DhcpSocket, DhcpServer)>,
        acked: Arc<AtomicU64>,
        counters: Arc<NetCounters>,
    ) -> io::Result<Self> {
        let kernel = KernelNet::new(Arc::new(mem.clone())).map_err(vhost_err("/dev/vhost-net"))?;
        kernel.set_owner().map_err(vhost_err("VHOST_SET_OWNER"))?;
        let supported = kernel
            .get_features()
            .map_err(vhost_err("VHOST_GET_FEATURES"))?;
        if supported & VIRTIO_F_VERSION_1 == 0 {
            return Err(io::Error::other(
                "vhost-net: this kernel's vhost-net has no VIRTIO_F_VERSION_1",
            ));
        }
        let regions: Vec<VhostUserMemoryRegionInfo> = mem
            .iter()
            .map(|r| VhostUserMemoryRegionInfo {
                guest_phys_addr: r.start_addr().0,
                memory_size: r.len(),
                userspace_addr: r.as_ptr() as u64,
                mmap_offset: 0,
                mmap_handle: -1,
            })
            .collect();
        kernel
            .set_mem_table(&regions)
            .map_err(vhost_err("VHOST_SET_MEM_TABLE"))?;
        let offered = (offered_features(1) | features::MRG_RXBUF) & !(RING_FEATURES & !supported);
        let dhcp = dhcp.map(start_dhcp).transpose()?;
        Ok(Self {
            mac,
            mtu,
            tap,
            kernel,
            offered,
            sizes: [QUEUE_SIZE; 2],
            acked,
            counters,
            dhcp,
            running: false,
        })
    }

    /// Takes the TAP away from the kernel and stops both rings.
    fn stop(&mut self) {
        if !self.running {
            return;
        }
        for queue in 0..2 {
            // The ring stops with its backend; its state is the driver's to set up again.
            if let Err(e) = self.kernel.set_backend(queue, None) {
                log::warn!(
                    "vhost-net {}: queue {queue}: cannot detach the TAP: {e}",
                    self.mac
                );
            }
        }
        self.running = false;
        self.counters.queue_pairs.store(0, Ordering::Relaxed);
        self.acked.store(0, Ordering::Relaxed);
    }

    fn start(&mut self, a: Activation) -> io::Result<()> {
        let mut queues = a.queues;
        let mut rings = Vec::with_capacity(2);
        for (i, slot) in queues.iter_mut().enumerate().take(2) {
            let (queue, kick) = slot.take().ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("vhost-net: queue {i} is not ready"),
                )
            })?;
            rings.push((queue, kick));
        }
        self.tap.set_offloads(offloads(a.features))?;
        let k = &self.kernel;
        k.set_features(a.features & RING_FEATURES)
            .map_err(vhost_err("VHOST_SET_FEATURES"))?;
        for (i, (queue, kick)) in rings.iter().enumerate() {
            let ring = VringConfigData {
                queue_max_size: QUEUE_SIZE,
                queue_size: queue.size(),
                flags: 0,
                desc_table_addr: queue.desc_table(),
                used_ring_addr: queue.used_ring(),
                avail_ring_addr: queue.avail_ring(),
                log_addr: None,
            };
            k.set_vring_num(i, queue.size())
                .map_err(vhost_err("VHOST_SET_VRING_NUM"))?;
            k.set_vring_addr(i, &ring)
                .map_err(vhost_err("VHOST_SET_VRING_ADDR"))?;
            k.set_vring_base(i, queue.next_avail())
                .map_err(vhost_err("VHOST_SET_VRING_BASE"))?;
            // A queue the driver gave no vector signals an eventfd nobody reads (not the
            // vector an earlier activation gave it).
            let call = match a.interrupt.queue_eventfd(i)? {
                Some(call) => call,
                None => EventFd::new(EFD_NONBLOCK)?,
            };
            k.set_vring_call(i, &call)
                .map_err(vhost_err("VHOST_SET_VRING_CALL"))?;
            k.set_vring_kick(i, kick)
                .map_err(vhost_err("VHOST_SET_VRING_KICK"))?;
        }
        self.running = true;
        for i in 0..2 {
            k.set_backend(i, Some(self.tap.file()))
                .map_err(vhost_err("VHOST_NET_SET_BACKEND"))?;
        }
        self.acked.store(a.features, Ordering::Relaxed);
        self.counters.queue_pairs.store(1, Ordering::Relaxed);
        log::debug!(
            "vhost-net {}: running with {}",
            self.mac,
            super::net::feature_names(a.features).join(" ")
        );
        Ok(())
    }
}

impl VirtioDevice for VhostNet {
    fn device_type(&self) -> u16 {
        TYPE_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.sizes
    }

    fn features(&self) -> u64 {
        self.offered
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config(self.mac, self.mtu, 1, offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(&mut self, a: Activation) -> io::Result<()> {
        let started = self.start(a);
        if started.is_err() {
            self.stop();
        }
        started
    }

    fn reset(&mut self) {
        self.stop();
    }
}

impl Drop for VhostNet {
    fn drop(&mut self) {
        self.stop();
        if let Some((mut thread, kill)) = self.dhcp.take() {
            let _ = kill.write(1);
            let _ = thread.wait();
        }
    }
}

/// Frames the DHCP thread reads per wake-up at most.
const DHCP_BATCH: usize = 64;

/// What the DHCP thread waits on: a request on its socket.
#[derive(Debug, Clone, Copy)]
struct Request;

impl Token for Request {
    fn encode(self) -> u64 {
        0
    }
    fn decode(data: u64) -> Option<Self> {
        (data == 0).then_some(Request)
    }
}

/// Starts the thread that answers DHCP on `socket` with `server`.
fn start_dhcp(
    (socket, server): (DhcpSocket, DhcpServer),
) -> io::Result<(WorkerThread<()>, EventFd)> {
    let mut thread = WorkerThread::spawn("vhost-net-dhcp", Role::DhcpResponder)?;
    let kill = EventFd::new(EFD_NONBLOCK)?;
    let stop = kill.try_clone()?;
    thread.start(move || {
        if let Err(e) = serve_dhcp(&socket, &server, &stop) {
            log::error!("vhost-net DHCP stopped: {e}");
        }
    })?;
    Ok((thread, kill))
}

fn serve_dhcp(socket: &DhcpSocket, server: &DhcpServer, kill: &EventFd) -> io::Result<()> {
    let poller = Poller::new()?;
    poller.add_readable(socket.as_raw_fd(), Request)?;
    poller.add_kill(kill)?;
    let mut frame = vec![0u8; MAX_FRAME];
    let mut warned = false;
    poller.run(|_, Request, _| -> io::Result<()> {
        // A bounded batch per wake-up, so that a flood cannot keep the kill event unread
        // (the socket stays readable: the next wait returns at once).
        for _ in 0..DHCP_BATCH {
            let n = match socket.recv(&mut frame) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.raw_os_error() == Some(libc::EBADF) => return Err(e),
                // A link that went down (ENETDOWN) reports it once; DHCP goes on after.
                Err(e) => {
                    if !std::mem::replace(&mut warned, true) {
                        log::warn!("vhost-net DHCP: {e}");
                    }
                    continue;
                }
            };
            if let Some(reply) = server.handle(&frame[..n])
                && let Err(e) = socket.send(&reply)
            {
                log::warn!("vhost-net DHCP: cannot answer: {e}");
            }
        }
        Ok(())
    })
}
