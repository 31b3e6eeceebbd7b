//! Test doubles shared by the device tests and the fuzz targets: interrupt and MSI sinks
//! that record what they are told, an ioeventfd registry that accepts everything, and the
//! PCI identity the PCI tests give their functions.

use std::io;
use std::sync::Mutex;

use vmm_sys_util::eventfd::EventFd;

use crate::pci::PciIds;
use crate::pci::msix::{MsiMessage, MsiRoutes};
use crate::virtio::{IoEventRegistry, VirtioInterrupt};

/// A virtio-net function's identity.
pub fn ids() -> PciIds {
    PciIds {
        vendor: 0x1af4,
        device: 0x1041,
        revision: 1,
        class: 0x02_00_00,
        subsystem_vendor: 0x1af4,
        subsystem: 0x40,
    }
}

/// MSI routes that record every route set, vector fired and mask change.
#[derive(Debug, Default)]
pub struct Msi {
    /// `set_route` calls, in order.
    pub routes: Mutex<Vec<(usize, MsiMessage)>>,
    /// Vectors fired, in order.
    pub fired: Mutex<Vec<usize>>,
    /// `set_masked` calls, in order.
    pub masks: Mutex<Vec<(usize, bool)>>,
}

impl MsiRoutes for Msi {
    fn set_route(&self, vector: usize, msg: MsiMessage) -> io::Result<()> {
        lock(&self.routes).push((vector, msg));
        Ok(())
    }
    fn trigger(&self, vector: usize) -> io::Result<()> {
        lock(&self.fired).push(vector);
        Ok(())
    }
    fn set_masked(&self, vector: usize, masked: bool) -> io::Result<()> {
        lock(&self.masks).push((vector, masked));
        Ok(())
    }
}

/// What [`Irqs`] records for a configuration interrupt.
pub const CONFIG_IRQ: usize = usize::MAX;

/// Virtio interrupts, recorded: a queue's index, or [`CONFIG_IRQ`].
#[derive(Debug, Default)]
pub struct Irqs(pub Mutex<Vec<usize>>);

impl VirtioInterrupt for Irqs {
    fn notify_queue(&self, queue: usize) {
        lock(&self.0).push(queue);
    }
    fn notify_config(&self) {
        lock(&self.0).push(CONFIG_IRQ);
    }
}

/// An ioeventfd registry that accepts every registration and signals nothing.
#[derive(Debug, Default)]
pub struct NoIoEvents;

impl IoEventRegistry for NoIoEvents {
    fn register(&self, _: &EventFd, _: u64) -> io::Result<()> {
        Ok(())
    }
    fn unregister(&self, _: &EventFd, _: u64) -> io::Result<()> {
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
