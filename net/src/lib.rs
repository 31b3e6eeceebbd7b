//! Host-side networking for `vmm`.
//!
//! This crate owns everything on the host side of a guest's network interface and knows
//! nothing of virtio: MAC addresses, the [`FrameBackend`] a virtual NIC moves frames
//! through, TAP devices, netlink plumbing and the bridge binding, and the DHCP and DHCPv6 servers.

pub mod backend;
pub mod bridge;
pub mod dhcp;
pub mod dhcp6;
pub mod error;
pub mod local_dhcp;
pub mod mac;
pub mod nat;
pub mod netlink;
pub mod packet;
pub mod poll;
pub mod random;
pub mod resolv;
pub mod tap;
pub mod units;

pub use backend::{FrameBackend, Offloads, VNET_HDR_LEN};
pub use mac::{MacAddr, ParseMacError};
pub use tap::{Tap, TapError};
