//! Host-side networking for `vmm`.
//!
//! This crate owns everything on the host side of a guest's network interface and knows
//! nothing of virtio: MAC addresses today; TAP devices, netlink plumbing, the DHCP server and
//! the masquerade stack as the networking issues land.

pub mod mac;

pub use mac::{MacAddr, ParseMacError};
