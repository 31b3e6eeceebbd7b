//! Emulated devices for `vmm`.
//!
//! Devices implement [`bus::BusDevice`] and sit on a port-I/O or MMIO [`bus::Bus`]; vCPU
//! threads call them on exits. Interrupts leave a device through an eventfd (edge, registered
//! as a KVM irqfd by the VMM) or an [`acpi::IrqLine`] (level). Nothing here knows about KVM.

pub mod acpi;
pub mod boot_marker;
pub mod bus;
pub mod confine;
pub mod legacy;
pub mod pci;
pub mod seccomp;
#[cfg(any(test, fuzzing))]
pub mod testing;
pub mod vfio;
pub mod virtio;
pub mod worker;

pub use bus::{Bus, BusDevice, BusError, SharedDevice};
