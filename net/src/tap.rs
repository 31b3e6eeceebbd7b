//! TAP devices: `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, a 12-byte virtio-net header, offloads
//! set from what the guest negotiated, non-blocking I/O.
//!
//! [`Tap::open`] attaches to the TAP named if it exists (one that `vmm` did not create is
//! used as it is and left alone afterwards) or creates it. A TAP created here is not
//! persistent: the kernel removes it when the last descriptor closes, so no exit path of
//! `vmm` can leave it behind.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use vm_memory::VolatileSlice;
use vmm_sys_util::ioctl::{ioctl_with_mut_ref, ioctl_with_ref, ioctl_with_val};

use crate::backend::{FrameBackend, Offloads, VNET_HDR_LEN};

const IFF_TAP: i16 = 0x0002;
const IFF_NO_PI: i16 = 0x1000;
const IFF_VNET_HDR: i16 = 0x4000;
const IFF_MULTI_QUEUE: i16 = 0x0100;
const IFF_ATTACH_QUEUE: i16 = 0x0200;
const IFF_DETACH_QUEUE: i16 = 0x0400;
/// The kernel's limit on a TAP's queues (`MAX_TAP_QUEUES`).
pub const MAX_QUEUES: usize = 256;
/// The TUN/TAP ioctls' type, `'T'`.
const TUNTAP: u32 = 0x54;
vmm_sys_util::ioctl_iow_nr!(TUNSETIFF, TUNTAP, 202, libc::c_int);
vmm_sys_util::ioctl_iow_nr!(TUNSETOFFLOAD, TUNTAP, 208, libc::c_uint);
vmm_sys_util::ioctl_iow_nr!(TUNSETVNETHDRSZ, TUNTAP, 216, libc::c_int);
vmm_sys_util::ioctl_iow_nr!(TUNSETQUEUE, TUNTAP, 217, libc::c_int);

/// `TUNSETQUEUE`'s request number, for the seccomp filter of the threads that make it.
pub fn tunsetqueue_request() -> u64 {
    TUNSETQUEUE()
}
const TUN_F_CSUM: libc::c_uint = 0x01;
const TUN_F_TSO4: libc::c_uint = 0x02;
const TUN_F_TSO6: libc::c_uint = 0x04;
const TUN_F_TSO_ECN: libc::c_uint = 0x08;
/// Interface names are at most 15 bytes.
pub const IFNAMSIZ: usize = 16;
/// Most buffers one frame may be gathered from or scattered to.
const MAX_IOVECS: usize = 1024;

/// `struct ifreq` with the flags member of its union.
#[repr(C)]
struct IfReqFlags {
    name: [u8; IFNAMSIZ],
    flags: i16,
    _pad: [u8; 22],
}

/// Why a TAP cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// A name that does not fit.
    #[error("TAP name {0:?} is empty or longer than 15 bytes")]
    Name(String),
    /// No queue, or more than a TAP can have.
    #[error("TAP {name}: {queues} queues asked for, 1 to 256 possible")]
    Queues {
        /// The TAP.
        name: String,
        /// How many were asked for.
        queues: usize,
    },
    /// `/dev/net/tun` cannot be opened.
    #[error("cannot open /dev/net/tun")]
    Open(#[source] io::Error),
    /// An ioctl failed.
    #[error("TAP {name}: {what}")]
    Ioctl {
        /// The TAP.
        name: String,
        /// What was being done.
        what: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// An open TAP device, or one queue of a multi-queue TAP.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
    multi_queue: bool,
}

impl Tap {
    /// Opens (or creates) the TAP `name` with virtio-net headers, non-blocking.
    pub fn open(name: &str) -> Result<Self, TapError> {
        let mut queues = Self::open_queues(name, 1)?;
        Ok(queues.remove(0))
    }

    /// Opens (or creates) the TAP `name` with `queues` queues, each a descriptor; with more
    /// than one, the TAP is a multi-queue one and only the first queue is attached. A TAP
    /// that exists already, made by someone else as single-queue, gives one queue whatever
    /// was asked (and a multi-queue one asked for one queue gives a one-queue handle on it).
    pub fn open_queues(name: &str, queues: usize) -> Result<Vec<Self>, TapError> {
        if name.is_empty() || name.len() >= IFNAMSIZ || name.contains(['/', '\0']) {
            return Err(TapError::Name(name.to_string()));
        }
        if queues == 0 || queues > MAX_QUEUES {
            return Err(TapError::Queues {
                name: name.to_string(),
                queues,
            });
        }
        let multi_queue = queues > 1;
        let first = match Self::open_queue(name, multi_queue) {
            // EINVAL: the TAP exists with the other queue mode; use it as it is.
            Err(TapError::Ioctl { source, .. }) if source.raw_os_error() == Some(libc::EINVAL) => {
                let tap = Self::open_queue(name, !multi_queue)?;
                if multi_queue {
                    log::info!("TAP {name} exists as single-queue: its NIC gets one queue pair");
                }
                return Ok(vec![tap]);
            }
            r => r?,
        };
        let mut taps = vec![first];
        for _ in 1..queues {
            let tap = Self::open_queue(name, true)?;
            // A queue the driver has not enabled is not given frames.
            tap.set_attached(false).map_err(|source| TapError::Ioctl {
                name: name.to_string(),
                what: "TUNSETQUEUE",
                source,
            })?;
            taps.push(tap);
        }
        Ok(taps)
    }

    fn open_queue(name: &str, multi_queue: bool) -> Result<Self, TapError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::Open)?;
        let mut flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
        if multi_queue {
            flags |= IFF_MULTI_QUEUE;
        }
        let mut req = IfReqFlags {
            name: [0; IFNAMSIZ],
            flags,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        let err = |what| {
            let name = name.to_string();
            move |source| TapError::Ioctl { name, what, source }
        };
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which `req` is laid out as
        // (40 bytes); the descriptor is ours.
        let rc = unsafe { ioctl_with_mut_ref(&file, TUNSETIFF(), &mut req) };
        if rc < 0 {
            return Err(err("TUNSETIFF")(io::Error::last_os_error()));
        }
        let hdr_len = libc::c_int::try_from(VNET_HDR_LEN).unwrap_or(12);
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which is valid.
        let rc = unsafe { ioctl_with_ref(&file, TUNSETVNETHDRSZ(), &hdr_len) };
        if rc < 0 {
            return Err(err("TUNSETVNETHDRSZ")(io::Error::last_os_error()));
        }
        let tap = Self {
            file,
            name: name.to_string(),
            multi_queue,
        };
        tap.set_offload_flags(0).map_err(err("TUNSETOFFLOAD"))?;
        Ok(tap)
    }

    /// Another handle on the same TAP queue (a duplicated descriptor): the TAP lives while
    /// any handle does.
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(Self {
            file: self.file.try_clone()?,
            name: self.name.clone(),
            multi_queue: self.multi_queue,
        })
    }

    /// Attaches this queue of a multi-queue TAP (the kernel may then send frames to it) or
    /// detaches it. A queue already in the state asked for is left so (the kernel answers
    /// EINVAL, which is taken as success); a single-queue TAP stays attached.
    pub fn set_attached(&self, on: bool) -> io::Result<()> {
        if !self.multi_queue {
            return Ok(());
        }
        let mut req = IfReqFlags {
            name: [0; IFNAMSIZ],
            flags: if on {
                IFF_ATTACH_QUEUE
            } else {
                IFF_DETACH_QUEUE
            },
            _pad: [0; 22],
        };
        // SAFETY: TUNSETQUEUE reads a `struct ifreq`, which `req` is laid out as; the
        // descriptor is ours.
        let rc = unsafe { ioctl_with_mut_ref(&self.file, TUNSETQUEUE(), &mut req) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINVAL) {
                return Err(e);
            }
        }
        Ok(())
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The queue's descriptor, for a kernel that serves it (vhost-net's backend).
    pub fn file(&self) -> &File {
        &self.file
    }

    fn set_offload_flags(&self, flags: libc::c_uint) -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value; the descriptor is ours.
        let rc = unsafe { ioctl_with_val(&self.file, TUNSETOFFLOAD(), libc::c_ulong::from(flags)) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// The iovecs for `bufs`.
fn iovecs(bufs: &[VolatileSlice<'_>]) -> io::Result<Vec<libc::iovec>> {
    if bufs.len() > MAX_IOVECS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "frame spread over too many buffers",
        ));
    }
    Ok(bufs
        .iter()
        .map(|b| libc::iovec {
            iov_base: b.ptr_guard_mut().as_ptr().cast(),
            iov_len: b.len(),
        })
        .collect())
}

fn result(n: isize) -> io::Result<usize> {
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

impl FrameBackend for Tap {
    fn poll_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    fn recv(&mut self, bufs: &[VolatileSlice<'_>]) -> io::Result<usize> {
        let iov = iovecs(bufs)?;
        let count = libc::c_int::try_from(iov.len()).unwrap_or(0);
        // SAFETY: each iovec describes a live VolatileSlice of guest memory, writable for
        // its length while `bufs` is borrowed; the kernel writes at most that much.
        let n = unsafe { libc::readv(self.file.as_raw_fd(), iov.as_ptr(), count) };
        result(n)
    }

    fn send(&mut self, bufs: &[VolatileSlice<'_>]) -> io::Result<usize> {
        let iov = iovecs(bufs)?;
        let count = libc::c_int::try_from(iov.len()).unwrap_or(0);
        // SAFETY: each iovec describes a live VolatileSlice of guest memory, readable for
        // its length while `bufs` is borrowed.
        let n = unsafe { libc::writev(self.file.as_raw_fd(), iov.as_ptr(), count) };
        result(n)
    }

    fn set_queue_enabled(&mut self, on: bool) -> io::Result<()> {
        self.set_attached(on)
    }

    fn set_offloads(&mut self, o: Offloads) -> io::Result<()> {
        let mut flags = 0;
        if o.csum {
            flags |= TUN_F_CSUM;
            if o.tso4 {
                flags |= TUN_F_TSO4;
            }
            if o.tso6 {
                flags |= TUN_F_TSO6;
            }
            if (o.tso4 || o.tso6) && o.tso_ecn {
                flags |= TUN_F_TSO_ECN;
            }
        }
        self.set_offload_flags(flags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_before_anything_is_opened() {
        for bad in ["", "0123456789abcdef", "a/b"] {
            assert!(matches!(Tap::open(bad), Err(TapError::Name(_))), "{bad:?}");
        }
    }

    /// The ioctls work, in a network namespace of this test's thread alone (so that the
    /// machine's own interfaces are never touched). Needs root, as the suite does.
    #[test]
    fn a_tap_opens_with_a_vnet_header_and_takes_offloads() {
        std::thread::spawn(|| {
            // SAFETY: unshare(2) with a flag; it changes only this thread's namespace.
            assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare");
            let tap = Tap::open("vmmtap0").unwrap();
            assert_eq!(tap.name(), "vmmtap0");
            let all = Offloads {
                csum: true,
                tso4: true,
                tso6: true,
                tso_ecn: true,
            };
            FrameBackend::set_offloads(&mut tap.try_clone().unwrap(), all).unwrap();
            let got = flags(&tap).unwrap();
            let want = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
            assert_eq!(got & want, want, "flags {got:#x}");
        })
        .join()
        .unwrap();
    }

    fn flags(tap: &Tap) -> io::Result<i16> {
        vmm_sys_util::ioctl_ior_nr!(TUNGETIFF, TUNTAP, 210, libc::c_uint);
        let mut req = IfReqFlags {
            name: [0; IFNAMSIZ],
            flags: 0,
            _pad: [0; 22],
        };
        // SAFETY: TUNGETIFF fills a `struct ifreq`, which `req` is laid out as.
        let rc = unsafe { ioctl_with_mut_ref(&tap.file, TUNGETIFF(), &mut req) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(req.flags)
    }

    /// A multi-queue TAP: one descriptor per queue, only the first attached until a queue
    /// is attached by hand (`TUNGETIFF` reports a detached queue's `IFF_DETACH_QUEUE`).
    #[test]
    fn a_multi_queue_tap_starts_with_one_queue_attached() {
        std::thread::spawn(|| {
            // SAFETY: unshare(2) with a flag; it changes only this thread's namespace.
            assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare");
            let queues = Tap::open_queues("vmmtapmq", 3).unwrap();
            assert_eq!(queues.len(), 3);
            assert_ne!(flags(&queues[0]).unwrap() & IFF_MULTI_QUEUE, 0);
            let detached = |t: &Tap| flags(t).unwrap() & IFF_DETACH_QUEUE != 0;
            assert!(!detached(&queues[0]));
            assert!(detached(&queues[1]));
            assert!(detached(&queues[2]));
            let mut q1 = queues[1].try_clone().unwrap();
            q1.set_queue_enabled(true).unwrap();
            q1.set_queue_enabled(true).unwrap(); // already attached: no error
            assert!(!detached(&queues[1]));
            q1.set_queue_enabled(false).unwrap();
            q1.set_queue_enabled(false).unwrap();
            assert!(detached(&queues[1]));

            // A persistent single-queue TAP made by someone else gives one queue, whatever
            // was asked.
            vmm_sys_util::ioctl_iow_nr!(TUNSETPERSIST, TUNTAP, 203, libc::c_int);
            let single = Tap::open("vmmtapsq").unwrap();
            // SAFETY: TUNSETPERSIST takes its argument by value; the descriptor is ours.
            let rc = unsafe { ioctl_with_val(&single.file, TUNSETPERSIST(), 1) };
            assert_eq!(rc, 0, "TUNSETPERSIST: {}", io::Error::last_os_error());
            drop(single);
            let again = Tap::open_queues("vmmtapsq", 4).unwrap();
            assert_eq!(again.len(), 1);
            assert_eq!(flags(&again[0]).unwrap() & IFF_MULTI_QUEUE, 0);
            assert!(matches!(
                Tap::open_queues("vmmtapx", 0),
                Err(TapError::Queues { .. })
            ));
            assert!(matches!(
                Tap::open_queues("vmmtapx", MAX_QUEUES + 1),
                Err(TapError::Queues { .. })
            ));
        })
        .join()
        .unwrap();
    }
}
