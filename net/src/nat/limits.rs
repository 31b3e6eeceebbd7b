//! The masquerade engine's bounds ([`Limits`]), their defaults, and how `--nat-limit
//! KEY=VALUE` sets them.

use std::time::Duration;

use crate::units;

/// The buffer per direction of a TCP flow beyond the budget for [`Limits::tcp_buffer`].
pub const SMALL_TCP_BUFFER: usize = 64 << 10;

/// Bounds on what the guest can make the engine hold. See the [module documentation](super).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// TCP flows at once (connecting or spliced).
    pub tcp_flows: usize,
    /// UDP flows at once.
    pub udp_flows: usize,
    /// ICMP echo flows at once.
    pub icmp_flows: usize,
    /// Buffer per direction of a TCP flow while the budget allows, bytes.
    pub tcp_buffer: usize,
    /// The budget: all TCP flows' buffers together, bytes. A flow that would exceed it
    /// with `tcp_buffer` gets [`SMALL_TCP_BUFFER`]; one that would exceed it even so is
    /// refused (RST).
    pub tcp_memory: usize,
    /// Frames waiting for the guest.
    pub to_guest_frames: usize,
    /// A UDP or ICMP flow without traffic for this long is closed.
    pub udp_idle: Duration,
    /// A TCP flow in which no byte moved for this long is reset.
    pub tcp_idle: Duration,
    /// The same for a connection a peer opened to a forwarded port: shorter, since peers
    /// are many and their idle connections would hold the inbound share.
    pub inbound_tcp_idle: Duration,
    /// A host connection not established within this is given up (RST to the guest).
    pub connect_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            tcp_flows: 1024,
            udp_flows: 1024,
            icmp_flows: 64,
            tcp_buffer: 1 << 20,
            tcp_memory: 128 << 20,
            to_guest_frames: 256,
            udp_idle: Duration::from_secs(60),
            tcp_idle: Duration::from_secs(24 * 3600),
            inbound_tcp_idle: Duration::from_secs(3600),
            connect_timeout: Duration::from_secs(30),
        }
    }
}

impl Limits {
    /// The names [`Limits::set`] takes, with what each means.
    pub const KEYS: &'static [(&'static str, &'static str)] = &[
        ("tcp-flows", "TCP flows at once (default 1024)"),
        (
            "udp-flows",
            "UDP flows at once, inbound and outbound (default 1024)",
        ),
        ("icmp-flows", "ICMP echo flows at once (default 64)"),
        (
            "tcp-buffer",
            "buffer per direction per TCP flow while the budget allows, e.g. 256K (default 1M)",
        ),
        (
            "tcp-memory",
            "all TCP flows' buffers together, e.g. 64M (default 128M)",
        ),
        (
            "to-guest-frames",
            "frames queued for the guest (default 256)",
        ),
        (
            "udp-idle",
            "UDP and ICMP idle timeout, e.g. 60s (default 60s)",
        ),
        ("tcp-idle", "TCP idle timeout, e.g. 24h (default 24h)"),
        (
            "inbound-tcp-idle",
            "idle timeout of peers' connections to forwarded ports (default 1h)",
        ),
        (
            "connect-timeout",
            "outbound TCP connect timeout (default 30s)",
        ),
    ];

    /// Sets limit `key` (one of [`Limits::KEYS`]) from its text: a count, a size (a number
    /// of bytes, `256K`, `64M`) or a duration (`500ms`, `60s`, `2m`, `24h`, or a bare number
    /// of seconds), as [`crate::units`] reads them.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), LimitError> {
        let invalid = |reason: String| LimitError::Invalid {
            key: key.to_string(),
            reason,
        };
        let count = || -> Result<usize, LimitError> {
            match value.trim().parse::<usize>() {
                Ok(0) => Err(invalid("must be at least 1".into())),
                Ok(n) => Ok(n),
                Err(_) => Err(invalid(format!("{value:?} is not a number"))),
            }
        };
        let size = || -> Result<usize, LimitError> {
            let n = units::parse_size(value).map_err(|e| invalid(e.to_string()))?;
            usize::try_from(n)
                .ok()
                .filter(|n| (1 << 10..=4 << 30).contains(n))
                .ok_or_else(|| invalid(format!("{value:?} is not between 1K and 4G")))
        };
        let duration = || -> Result<Duration, LimitError> {
            let d = units::parse_duration(value).map_err(|e| invalid(e.to_string()))?;
            if d.is_zero() {
                return Err(invalid("must be longer than 0".into()));
            }
            Ok(d)
        };
        match key {
            "tcp-flows" => self.tcp_flows = count()?,
            "udp-flows" => self.udp_flows = count()?,
            "icmp-flows" => self.icmp_flows = count()?,
            "tcp-buffer" => self.tcp_buffer = size()?.max(SMALL_TCP_BUFFER),
            "tcp-memory" => self.tcp_memory = size()?,
            "to-guest-frames" => self.to_guest_frames = count()?,
            "udp-idle" => self.udp_idle = duration()?,
            "tcp-idle" => self.tcp_idle = duration()?,
            "inbound-tcp-idle" => self.inbound_tcp_idle = duration()?,
            "connect-timeout" => self.connect_timeout = duration()?,
            _ => return Err(LimitError::Unknown(key.to_string())),
        }
        Ok(())
    }
}

/// A limit that [`Limits::set`] cannot set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// No limit has this name.
    #[error("unknown limit {0:?} (one of {keys})", keys = Limits::key_list())]
    Unknown(String),
    /// The value does not fit the limit.
    #[error("{key}: {reason}")]
    Invalid {
        /// The limit.
        key: String,
        /// What is wrong with the value.
        reason: String,
    },
}

impl Limits {
    fn key_list() -> String {
        let keys: Vec<&str> = Self::KEYS.iter().map(|(k, _)| *k).collect();
        keys.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_of_value_is_read_and_checked() {
        let mut l = Limits::default();
        l.set("tcp-flows", "10").unwrap();
        l.set("tcp-buffer", "256K").unwrap();
        l.set("tcp-memory", "64M").unwrap();
        l.set("udp-idle", "90").unwrap();
        l.set("tcp-idle", "2h").unwrap();
        l.set("connect-timeout", "500ms").unwrap();
        assert_eq!(l.tcp_flows, 10);
        assert_eq!(l.tcp_buffer, 256 << 10);
        assert_eq!(l.tcp_memory, 64 << 20);
        assert_eq!(l.udp_idle, Duration::from_secs(90));
        assert_eq!(l.tcp_idle, Duration::from_secs(7200));
        assert_eq!(l.connect_timeout, Duration::from_millis(500));
        // A buffer below the small one is raised to it.
        l.set("tcp-buffer", "1K").unwrap();
        assert_eq!(l.tcp_buffer, SMALL_TCP_BUFFER);

        let err = |k: &str, v: &str| Limits::default().set(k, v).unwrap_err().to_string();
        assert_eq!(err("tcp-flows", "0"), "tcp-flows: must be at least 1");
        assert_eq!(err("tcp-flows", "x"), "tcp-flows: \"x\" is not a number");
        assert_eq!(
            err("tcp-memory", "5G"),
            "tcp-memory: \"5G\" is not between 1K and 4G"
        );
        assert!(err("tcp-memory", "1T").contains("is not a size"));
        assert_eq!(err("udp-idle", "0s"), "udp-idle: must be longer than 0");
        assert!(err("udp-idle", "1d").contains("is not a duration"));
        assert!(err("tcp-buffer", "12").contains("not between 1K and 4G"));
        assert!(err("nope", "1").starts_with("unknown limit \"nope\" (one of tcp-flows, "));
    }
}
