//! `vmm`: from a Virtink `VirtualMachine` manifest to a running KVM guest.

pub mod config;
