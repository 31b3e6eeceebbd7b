//! SIGTERM and SIGINT as events: blocked, and read from a signalfd by the main loop.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// The name of a signal a [`SignalFd`] returns, for logs.
pub fn name(signo: i32) -> &'static str {
    match signo {
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        _ => "a signal",
    }
}

/// SIGTERM and SIGINT, blocked and read from a signalfd.
#[derive(Debug)]
pub struct SignalFd {
    fd: OwnedFd,
}

impl SignalFd {
    /// Blocks SIGTERM and SIGINT in this thread (threads started later inherit the mask) and
    /// opens a signalfd for them.
    pub fn new() -> std::io::Result<Self> {
        // SAFETY: sigset_t is plain data, and all-zero is the empty set on Linux.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        for signal in [libc::SIGTERM, libc::SIGINT] {
            // SAFETY: `set` is a valid sigset_t and `signal` a valid signal number.
            unsafe { libc::sigaddset(&raw mut set, signal) };
        }
        // SAFETY: `set` is initialised; the old mask is not wanted.
        let ret =
            unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &raw const set, std::ptr::null_mut()) };
        if ret != 0 {
            return Err(std::io::Error::from_raw_os_error(ret));
        }
        // SAFETY: -1 asks for a new signalfd for `set`.
        let fd =
            unsafe { libc::signalfd(-1, &raw const set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd })
    }

    /// Reads one pending signal's number (0 if none).
    pub fn read(&self) -> i32 {
        // SAFETY: signalfd_siginfo is plain data.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of_val(&info);
        // SAFETY: reads at most `size` bytes into `info`.
        let n = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                (&raw mut info).cast::<libc::c_void>(),
                size,
            )
        };
        if usize::try_from(n).ok() == Some(size) {
            i32::try_from(info.ssi_signo).unwrap_or(0)
        } else {
            0
        }
    }
}

impl AsRawFd for SignalFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
