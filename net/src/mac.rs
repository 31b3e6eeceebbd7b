//! Ethernet MAC addresses: parsing in the forms Kubernetes accepts, the unicast rule, and the
//! stable locally administered default that `vmm` gives an interface without a `mac`.

use std::fmt;
use std::str::FromStr;

/// A 48-bit Ethernet MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr([u8; 6]);

/// Why a string is not a MAC address. The text matches Go's `net.ParseMAC`, which Virtink's
/// webhook quotes in its message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseMacError {
    /// The string is not any MAC address form.
    #[error("address {0}: invalid MAC address")]
    Invalid(String),
    /// The string is a valid EUI-64 or IPoIB address, which an Ethernet device cannot use.
    #[error("address {0}: not a 48-bit Ethernet MAC address")]
    NotEthernet(String),
}

impl MacAddr {
    /// The address from its six octets.
    pub const fn new(octets: [u8; 6]) -> Self {
        Self(octets)
    }

    /// The six octets.
    pub const fn octets(&self) -> [u8; 6] {
        self.0
    }

    /// True for a multicast (or broadcast) address: the I/G bit of the first octet is set.
    pub const fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }

    /// True when every octet is zero, which no station may use.
    pub const fn is_zero(&self) -> bool {
        matches!(self.0, [0, 0, 0, 0, 0, 0])
    }

    /// True for an address that can name one station: neither multicast nor all zeros.
    pub const fn is_unicast(&self) -> bool {
        !self.is_multicast() && !self.is_zero()
    }

    /// True when the U/L bit is set (a locally administered address).
    pub const fn is_local(&self) -> bool {
        self.0[0] & 0x02 != 0
    }

    /// The default MAC of interface `iface` of VM `vm`: `52:54:00` (QEMU's locally
    /// administered prefix, as Virtink uses) followed by three bytes of a 64-bit FNV-1a hash of
    /// `vm`, a NUL byte and `iface`. Stable across runs and versions: changing this function
    /// changes every defaulted guest MAC.
    pub fn derived(vm: &str, iface: &str) -> Self {
        const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
        const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
        let mut hash = FNV_OFFSET;
        for b in vm.bytes().chain(std::iter::once(0)).chain(iface.bytes()) {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(FNV_PRIME);
        }
        let h = hash.to_be_bytes();
        Self([0x52, 0x54, 0x00, h[5], h[6], h[7]])
    }
}

impl FromStr for MacAddr {
    type Err = ParseMacError;

    /// Parses the forms Go's `net.ParseMAC` accepts for 48-bit addresses
    /// (`00:00:5e:00:53:01`, `00-00-5e-00-53-01`, `0000.5e00.5301`). The 64-bit and 20-octet
    /// forms Go also accepts parse, but are refused with [`ParseMacError::NotEthernet`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || ParseMacError::Invalid(s.to_string());
        let octets = parse_octets(s).ok_or_else(invalid)?;
        match <[u8; 6]>::try_from(octets.as_slice()) {
            Ok(six) => Ok(Self(six)),
            Err(_) => Err(ParseMacError::NotEthernet(s.to_string())),
        }
    }
}

/// The octets of any form Go's `net.ParseMAC` accepts (6, 8 or 20 octets), or `None`.
fn parse_octets(s: &str) -> Option<Vec<u8>> {
    if s.len() < 14 {
        return None;
    }
    let bytes = s.as_bytes();
    let (group_len, sep) = match bytes[2] {
        b':' | b'-' => (2, bytes[2]),
        _ if bytes[4] == b'.' => (4, b'.'),
        _ => return None,
    };
    // Every group but the last is followed by exactly one separator.
    if !(s.len() + 1).is_multiple_of(group_len + 1) {
        return None;
    }
    let groups: Vec<&str> = s.split(char::from(sep)).collect();
    let octet_count = groups.len() * group_len / 2;
    if ![6, 8, 20].contains(&octet_count) {
        return None;
    }
    let mut out = Vec::with_capacity(octet_count);
    for group in groups {
        if group.len() != group_len || !group.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        for pair in group.as_bytes().chunks(2) {
            let text = std::str::from_utf8(pair).ok()?;
            out.push(u8::from_str_radix(text, 16).ok()?);
        }
    }
    Some(out)
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            o[0], o[1], o[2], o[3], o[4], o[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MacAddr({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_colon_dash_and_dot_forms() {
        let want = MacAddr::new([0x00, 0x00, 0x5e, 0x00, 0x53, 0x01]);
        for s in ["00:00:5e:00:53:01", "00-00-5E-00-53-01", "0000.5e00.5301"] {
            assert_eq!(s.parse::<MacAddr>(), Ok(want), "{s}");
        }
    }

    #[test]
    fn rejects_malformed_with_go_message() {
        for s in [
            "01:1c:ba:0a:45:8",
            "01:1c:ba:0a:45:8g",
            "011cba0a4588",
            "01:1c-ba:0a:45:88",
            "01:1c:ba:0a:45:88:",
            "",
            "0000.5e00.53011",
        ] {
            let err = s.parse::<MacAddr>().unwrap_err();
            assert_eq!(err, ParseMacError::Invalid(s.to_string()), "{s}");
        }
        assert_eq!(
            "01:1c:ba:0a:45:8"
                .parse::<MacAddr>()
                .unwrap_err()
                .to_string(),
            "address 01:1c:ba:0a:45:8: invalid MAC address"
        );
    }

    #[test]
    fn eui64_parses_but_is_not_ethernet() {
        let err = "02:00:5e:10:00:00:00:01".parse::<MacAddr>().unwrap_err();
        assert!(matches!(err, ParseMacError::NotEthernet(_)));
    }

    #[test]
    fn unicast_rules() {
        assert!(MacAddr::new([0x52, 0x54, 0, 1, 2, 3]).is_unicast());
        assert!(!MacAddr::new([0x01, 0, 0x5e, 0, 0, 1]).is_unicast());
        assert!(!MacAddr::new([0xff; 6]).is_unicast());
        assert!(!MacAddr::new([0; 6]).is_unicast());
    }

    #[test]
    fn derived_is_stable_local_unicast_and_distinct() {
        let a = MacAddr::derived("vm", "pod");
        assert_eq!(a, MacAddr::derived("vm", "pod"));
        assert_ne!(a, MacAddr::derived("vm", "net1"));
        assert_ne!(a, MacAddr::derived("vm2", "pod"));
        // "vmp" + "od" must not collide with "vm" + "pod".
        assert_ne!(a, MacAddr::derived("vmp", "od"));
        assert!(a.is_unicast() && a.is_local());
        assert_eq!(&a.octets()[..3], &[0x52, 0x54, 0x00]);
        // Pinned: a change here changes every defaulted guest MAC.
        assert_eq!(
            MacAddr::derived("demo", "pod").to_string(),
            "52:54:00:5c:ed:4d"
        );
    }

    #[test]
    fn display_round_trips() {
        let m = MacAddr::new([0xde, 0xad, 0xbe, 0xef, 0x00, 0x01]);
        assert_eq!(m.to_string().parse::<MacAddr>(), Ok(m));
    }
}
