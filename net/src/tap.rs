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
/// The TUN/TAP ioctls' type, `'T'`.
const TUNTAP: u32 = 0x54;
vmm_sys_util::ioctl_iow_nr!(TUNSETIFF, TUNTAP, 202, libc::c_int);
vmm_sys_util::ioctl_iow_nr!(TUNSETOFFLOAD, TUNTAP, 208, libc::c_uint);
vmm_sys_util::ioctl_iow_nr!(TUNSETVNETHDRSZ, TUNTAP, 216, libc::c_int);
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

/// An open TAP device.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Opens (or creates) the TAP `name` with virtio-net headers, non-blocking.
    pub fn open(name: &str) -> Result<Self, TapError> {
        if name.is_empty() || name.len() >= IFNAMSIZ || name.contains(['/', '\0']) {
            return Err(TapError::Name(name.to_string()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::Open)?;
        let mut req = IfReqFlags {
            name: [0; IFNAMSIZ],
            flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
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
        })
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
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
            vmm_sys_util::ioctl_ior_nr!(TUNGETIFF, TUNTAP, 210, libc::c_uint);
            let mut req = IfReqFlags {
                name: [0; IFNAMSIZ],
                flags: 0,
                _pad: [0; 22],
            };
            // SAFETY: TUNGETIFF fills a `struct ifreq`, which `req` is laid out as.
            let rc = unsafe { ioctl_with_mut_ref(&tap.file, TUNGETIFF(), &mut req) };
            assert_eq!(rc, 0, "TUNGETIFF: {}", io::Error::last_os_error());
            let want = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
            assert_eq!(req.flags & want, want, "flags {:#x}", req.flags);
        })
        .join()
        .unwrap();
    }
}
