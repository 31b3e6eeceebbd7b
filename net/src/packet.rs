//! A packet socket on one host link that sees only DHCP client messages: how `vmm` answers a
//! guest's DHCP when the guest's frames do not pass through `vmm` (a vhost-net NIC, whose
//! queues the kernel serves).
//!
//! The socket is an `AF_PACKET` raw socket bound to the link (the NIC's TAP), with a
//! classic BPF filter that passes IPv4 UDP to port 67, unfragmented, and nothing else: the
//! guest's bulk traffic is never copied to it. It takes only frames that arrive on the link
//! (from the guest), not those the bridge sends towards the guest. A frame sent on it leaves
//! through the TAP, that is, towards the guest. It needs `CAP_NET_RAW`, which a pod has by
//! default.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// `value` (a constant of the C API), checked at compile time to fit 16 bits.
#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "checked at compile time"
)]
const fn u16_of(value: i32) -> u16 {
    assert!(value >= 0 && value <= u16::MAX as i32);
    value as u16
}

/// The size of `T` as a `socklen_t`, checked at compile time to fit.
#[allow(clippy::cast_possible_truncation, reason = "checked at compile time")]
const fn socklen<T>() -> libc::socklen_t {
    assert!(size_of::<T>() <= u32::MAX as usize);
    size_of::<T>() as libc::socklen_t
}

/// `ETH_P_ALL`, in network byte order as `bind(2)` takes it.
const ETH_P_ALL_BE: u16 = u16_of(libc::ETH_P_ALL).to_be();

/// `PACKET_IGNORE_OUTGOING` (linux/if_packet.h, Linux 4.20).
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;

/// Largest frame read: an Ethernet frame of the largest MTU `vmm` sets, and more than any
/// DHCP message needs; a longer one is truncated (and then fails to parse).
pub const MAX_FRAME: usize = 9216 + 18;

// Classic BPF opcodes (linux/filter.h).
const LD_H_ABS: u16 = 0x28;
const LD_B_ABS: u16 = 0x30;
const LD_H_IND: u16 = 0x48;
const LDX_B_MSH: u16 = 0xb1;
const JEQ_K: u16 = 0x15;
const JSET_K: u16 = 0x45;
const RET_K: u16 = 0x06;

const fn insn(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// Instructions in [`DHCP_SERVER_FILTER`].
const FILTER_LEN: u16 = 11;

/// Ethernet, IPv4, UDP, not fragmented, destination port 67: the whole frame; else none.
/// Offsets are from the Ethernet header; jumps count the instructions skipped.
const DHCP_SERVER_FILTER: [libc::sock_filter; FILTER_LEN as usize] = [
    insn(LD_H_ABS, 0, 0, 12), // EtherType
    insn(JEQ_K, 0, 8, 0x0800),
    insn(LD_B_ABS, 0, 0, 23), // IP protocol
    insn(JEQ_K, 0, 6, 17),
    insn(LD_H_ABS, 0, 0, 20),   // flags and fragment offset
    insn(JSET_K, 4, 0, 0x3fff), // more fragments, or an offset
    insn(LDX_B_MSH, 0, 0, 14),  // X = the IP header's length
    insn(LD_H_IND, 0, 0, 16),   // UDP destination port
    insn(JEQ_K, 0, 1, 67),
    insn(RET_K, 0, 0, 0x0004_0000),
    insn(RET_K, 0, 0, 0),
];

/// The socket.
#[derive(Debug)]
pub struct DhcpSocket {
    fd: OwnedFd,
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl DhcpSocket {
    /// Opens it on the link with index `ifindex`, non-blocking.
    pub fn open(ifindex: u32) -> io::Result<Self> {
        // Protocol 0 at first: the socket receives nothing until it is bound below, after
        // the filter is in place, so no frame slips in unfiltered.
        // SAFETY: plain socket creation; the result is checked before use.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        };
        check(raw)?;
        // SAFETY: `raw` is a descriptor just created and owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let program = libc::sock_fprog {
            len: FILTER_LEN,
            filter: DHCP_SERVER_FILTER.as_ptr().cast_mut(),
        };
        // SAFETY: SO_ATTACH_FILTER copies the program `program` points to, which lives for
        // the call; the length passed is that of `sock_fprog`.
        check(unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ATTACH_FILTER,
                (&raw const program).cast(),
                socklen::<libc::sock_fprog>(),
            )
        })?;
        // Only what arrives on the link (what the guest sent), not what leaves through it
        // towards the guest: a host on the pod's network must not reach the server through
        // the bridge, and the frames to the guest are not even cloned for the socket.
        let on: libc::c_int = 1;
        // SAFETY: PACKET_IGNORE_OUTGOING reads an int, `on`, of the length passed.
        check(unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                PACKET_IGNORE_OUTGOING,
                (&raw const on).cast(),
                socklen::<libc::c_int>(),
            )
        })?;
        // SAFETY: an all-zero sockaddr_ll is valid; the fields that matter are set below.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = u16_of(libc::AF_PACKET);
        addr.sll_protocol = ETH_P_ALL_BE;
        addr.sll_ifindex = i32::try_from(ifindex)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface index"))?;
        // SAFETY: `addr` is a sockaddr_ll of the length passed.
        check(unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast(),
                socklen::<libc::sockaddr_ll>(),
            )
        })?;
        Ok(Self { fd })
    }

    /// Opens it on the link named `name` (see [`DhcpSocket::open`]).
    pub fn open_on(name: &str) -> io::Result<Self> {
        let cname = std::ffi::CString::new(name)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "link name"))?;
        // SAFETY: `cname` is a NUL-terminated string that outlives the call.
        let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        if ifindex == 0 {
            return Err(io::Error::last_os_error());
        }
        Self::open(ifindex)
    }

    /// Another handle on the same socket.
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(Self {
            fd: self.fd.try_clone()?,
        })
    }

    /// Reads one frame into `buf`; its length, or `WouldBlock`.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }

    /// Sends `frame` (an Ethernet frame) out of the link.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: the kernel reads `frame.len()` bytes from `frame`.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl AsRawFd for DhcpSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the filter over `frame` as the kernel would (the subset of classic BPF it uses):
    /// how many bytes it keeps.
    fn run(frame: &[u8]) -> u32 {
        let byte = |at: usize| frame.get(at).copied().map(u32::from);
        let half = |at: usize| {
            Some(u32::from(u16::from_be_bytes([
                *frame.get(at)?,
                *frame.get(at + 1)?,
            ])))
        };
        let (mut a, mut x, mut pc) = (0u32, 0u32, 0usize);
        loop {
            let i = DHCP_SERVER_FILTER[pc];
            let k = i.k as usize;
            pc += 1;
            let loaded = match i.code {
                LD_H_ABS => half(k),
                LD_B_ABS => byte(k),
                LD_H_IND => half(x as usize + k),
                LDX_B_MSH => {
                    match byte(k) {
                        Some(b) => x = (b & 0xf) * 4,
                        None => return 0,
                    }
                    continue;
                }
                JEQ_K | JSET_K => {
                    let taken = if i.code == JEQ_K {
                        a == i.k
                    } else {
                        a & i.k != 0
                    };
                    pc += usize::from(if taken { i.jt } else { i.jf });
                    continue;
                }
                RET_K => return i.k,
                other => panic!("opcode {other:#x} not modelled"),
            };
            // A load past the end of the packet ends the program with 0, as in the kernel.
            match loaded {
                Some(v) => a = v,
                None => return 0,
            }
        }
    }

    fn frame(ethertype: u16, ihl: u8, proto: u8, frag: u16, dport: u16) -> Vec<u8> {
        let mut f = vec![0u8; 14 + usize::from(ihl) * 4 + 8];
        f[12..14].copy_from_slice(&ethertype.to_be_bytes());
        f[14] = 0x40 | ihl;
        f[20..22].copy_from_slice(&frag.to_be_bytes());
        f[23] = proto;
        let udp = 14 + usize::from(ihl) * 4;
        f[udp..udp + 2].copy_from_slice(&68u16.to_be_bytes());
        f[udp + 2..udp + 4].copy_from_slice(&dport.to_be_bytes());
        f
    }

    #[test]
    fn the_filter_passes_dhcp_to_the_server_and_nothing_else() {
        assert_ne!(run(&frame(0x0800, 5, 17, 0, 67)), 0, "DHCP to the server");
        assert_ne!(
            run(&frame(0x0800, 6, 17, 0x4000, 67)),
            0,
            "IP options, DF set"
        );
        for (what, f) in [
            ("to the client", frame(0x0800, 5, 17, 0, 68)),
            ("TCP", frame(0x0800, 5, 6, 0, 67)),
            ("a later fragment", frame(0x0800, 5, 17, 0x0010, 67)),
            ("a first fragment", frame(0x0800, 5, 17, 0x2000, 67)),
            ("IPv6", frame(0x86dd, 5, 17, 0, 67)),
            ("ARP", frame(0x0806, 5, 17, 0, 67)),
        ] {
            assert_eq!(run(&f), 0, "{what}");
        }
        let mut short = frame(0x0800, 15, 17, 0, 67);
        short.truncate(14 + 60);
        assert_eq!(run(&short), 0, "the UDP header beyond the frame");
    }

    #[test]
    fn the_filter_s_jumps_stay_inside_it() {
        for (pc, i) in DHCP_SERVER_FILTER.iter().enumerate() {
            if !matches!(i.code, JEQ_K | JSET_K) {
                continue;
            }
            let last = pc + 1 + usize::from(i.jt.max(i.jf));
            assert!(last < DHCP_SERVER_FILTER.len(), "instruction {pc}");
        }
        assert_eq!(DHCP_SERVER_FILTER.last().map(|i| i.code), Some(RET_K));
    }
}
