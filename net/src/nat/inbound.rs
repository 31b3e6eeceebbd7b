//! The pod's listening sockets that carry inbound connections and datagrams to the guest.
//!
//! Without privileges nothing can catch a connection to a port nobody listens on, so
//! forwarding "every port" means listening on every port: one TCP listener and one UDP
//! socket per port on 0.0.0.0 (on [::] for both families when the guest has IPv6), bound
//! once before the first boot and kept across reboots.
//! Ports another process of the pod already holds are skipped (bind fails), and so is the
//! kernel's ephemeral range (`net.ipv4.ip_local_port_range`): the engine's own outbound
//! sockets take their local ports from it, and a listener there would take them away. Each
//! socket costs about 4 KiB of kernel memory (measured: 20 000 sockets, 80 MiB of slab), so
//! the default of all ports outside the ephemeral range (37 302 per protocol with the
//! default range) costs about 300 MiB; `masquerade.ports` lists the ports to forward
//! instead and costs nothing beyond them.

use std::net::{TcpListener, UdpSocket};

use super::icmp::Echo;
use super::sock;

/// A forwarded port's protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

/// Which ports to forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Forward {
    /// Every TCP and UDP port outside the ephemeral range that is free.
    All,
    /// These ports only.
    Ports(Vec<(u16, Protocol)>),
}

/// The bound sockets.
#[derive(Debug, Default)]
pub struct Listeners {
    /// TCP listeners and their ports.
    pub tcp: Vec<(u16, TcpListener)>,
    /// UDP sockets and their ports.
    pub udp: Vec<(u16, UdpSocket)>,
    /// Ports skipped because a socket of the pod already holds them.
    pub in_use: Vec<(u16, Protocol)>,
    /// Ports not bound for want of file descriptors.
    pub over_limit: usize,
    /// Ports below `net.ipv4.ip_unprivileged_port_start` not bound for want of
    /// `CAP_NET_BIND_SERVICE`.
    pub denied: usize,
    /// How the guest's echo requests leave (probed with the ports, before capabilities are
    /// dropped).
    pub echo: Echo,
}

/// Descriptors kept free for flows, the VM and everything else.
const FD_RESERVE: u64 = 8192;

/// The ephemeral port range of this network namespace.
pub fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|w| w.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999))
}

/// Raises the soft descriptor limit toward `want` (the hard limit too, where permitted);
/// returns the soft limit now in force.
fn raise_nofile(want: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit for getrlimit to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    if lim.rlim_cur >= want {
        return lim.rlim_cur;
    }
    let wanted = libc::rlimit {
        rlim_cur: want,
        rlim_max: lim.rlim_max.max(want),
    };
    // SAFETY: a valid rlimit; raising the hard limit needs CAP_SYS_RESOURCE and may fail.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) } == 0 {
        return want;
    }
    let capped = libc::rlimit {
        rlim_cur: lim.rlim_max.min(want),
        rlim_max: lim.rlim_max,
    };
    // SAFETY: as above, within the hard limit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &capped) } == 0 {
        return capped.rlim_cur;
    }
    lim.rlim_cur
}

/// Binds `port` for both families if `dual`; where something of the pod holds the port for
/// IPv6 only (an IPv6-only socket on [::]), for IPv4 alone, as without IPv6.
fn bind_either<S>(
    port: u16,
    dual: bool,
    bind: impl Fn(u16, bool) -> std::io::Result<S>,
) -> std::io::Result<S> {
    match bind(port, dual) {
        Err(e) if dual && e.raw_os_error() == Some(libc::EADDRINUSE) => bind(port, false),
        other => other,
    }
}

impl Listeners {
    /// Binds what `forward` asks for, for IPv4 peers, and for IPv6 ones too if `ipv6` (one
    /// dual-stack socket a port). A port in use is skipped and listed; running out of
    /// descriptors stops binding and is counted.
    pub fn bind(forward: &Forward, ipv6: bool) -> Self {
        let wanted: Vec<(u16, Protocol)> = match forward {
            Forward::Ports(ports) => ports.clone(),
            Forward::All => {
                let (lo, hi) = ephemeral_range();
                (1..=u16::MAX)
                    .filter(|p| !(lo..=hi).contains(p))
                    .flat_map(|p| [(p, Protocol::Tcp), (p, Protocol::Udp)])
                    .collect()
            }
        };
        let limit = raise_nofile(wanted.len() as u64 + FD_RESERVE);
        let budget = usize::try_from(limit.saturating_sub(FD_RESERVE)).unwrap_or(usize::MAX);
        let mut out = Self {
            echo: Echo::open(ipv6),
            ..Self::default()
        };
        for (i, &(port, protocol)) in wanted.iter().enumerate() {
            if i >= budget {
                out.over_limit = wanted.len() - i;
                break;
            }
            let bound = match protocol {
                Protocol::Tcp => {
                    bind_either(port, ipv6, sock::tcp_listener).map(|l| out.tcp.push((port, l)))
                }
                Protocol::Udp => {
                    bind_either(port, ipv6, sock::udp_bound).map(|s| out.udp.push((port, s)))
                }
            };
            match bound {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) => {
                    out.in_use.push((port, protocol));
                }
                Err(e) if e.raw_os_error() == Some(libc::EACCES) => out.denied += 1,
                Err(e) if e.raw_os_error() == Some(libc::EMFILE) => {
                    out.over_limit = wanted.len() - i;
                    break;
                }
                Err(e) => log::warn!("masquerade: cannot bind {protocol:?} port {port}: {e}"),
            }
        }
        out
    }

    /// One line for the log.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} TCP and {} UDP ports forwarded",
            self.tcp.len(),
            self.udp.len()
        );
        if !self.in_use.is_empty() {
            let list: Vec<String> = self
                .in_use
                .iter()
                .take(10)
                .map(|(p, proto)| format!("{p}/{proto:?}"))
                .collect();
            s += &format!(
                "; {} already in use in the pod: {}{}",
                self.in_use.len(),
                list.join(", "),
                if self.in_use.len() > 10 { ", ..." } else { "" }
            );
        }
        if self.denied > 0 {
            s += &format!(
                "; {} privileged ports not forwarded (no CAP_NET_BIND_SERVICE)",
                self.denied
            );
        }
        if self.over_limit > 0 {
            s += &format!(
                "; {} not forwarded: too few file descriptors (raise RLIMIT_NOFILE, or list \
                 the ports in masquerade.ports)",
                self.over_limit
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn listed_ports_are_bound_and_ports_in_use_skipped() {
        let taken = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        let taken_port = taken.local_addr().unwrap().port();
        let free = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let l = Listeners::bind(
            &Forward::Ports(vec![
                (taken_port, Protocol::Tcp),
                (free, Protocol::Tcp),
                (free, Protocol::Udp),
            ]),
            false,
        );
        assert_eq!(l.in_use, vec![(taken_port, Protocol::Tcp)]);
        assert_eq!(l.tcp.len(), 1);
        assert_eq!(l.udp.len(), 1);
        assert!(l.summary().contains("1 already in use"), "{}", l.summary());
    }

    #[test]
    fn the_ephemeral_range_is_read() {
        let (lo, hi) = ephemeral_range();
        assert!(lo > 0 && lo <= hi);
    }
}
