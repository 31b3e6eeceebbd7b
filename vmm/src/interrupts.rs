//! MSI delivery and queue notifications through KVM: GSI routing, irqfds, ioeventfds.
//!
//! KVM_SET_GSI_ROUTING replaces the whole routing table, including the default routes of
//! the legacy interrupt controllers, so [`GsiRouting`] keeps the table: the 24 IOAPIC pins
//! and 16 PIC pins as KVM sets them up by default, plus one MSI route per allocated vector.
//! Each vector's GSI has an irqfd; a device fires the vector by writing it, without a VM
//! exit or a lock.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex};

use devices::pci::msix::{MsiMessage, MsiRoutes};
use devices::virtio::IoEventRegistry;
use kvm_bindings::{
    KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KvmIrqRouting, kvm_irq_routing_entry,
};
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

/// GSIs below this are the IOAPIC's pins.
const IOAPIC_PINS: u32 = 24;
/// KVM's limit on routing entries.
const MAX_ROUTES: usize = 4096;

fn io_err(e: kvm_ioctls::Error) -> io::Error {
    io::Error::from_raw_os_error(e.errno())
}

/// The VM's GSI routing table.
pub struct GsiRouting {
    vm: Arc<VmFd>,
    state: Mutex<RoutingState>,
}

struct RoutingState {
    next_gsi: u32,
    msi: BTreeMap<u32, MsiMessage>,
}

impl std::fmt::Debug for GsiRouting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GsiRouting").finish_non_exhaustive()
    }
}

fn irqchip_entry(gsi: u32, chip: u32, pin: u32) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        ..Default::default()
    };
    e.u.irqchip.irqchip = chip;
    e.u.irqchip.pin = pin;
    e
}

fn msi_entry(gsi: u32, msg: MsiMessage) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_MSI,
        ..Default::default()
    };
    e.u.msi.address_lo = u32::try_from(msg.address & 0xffff_ffff).unwrap_or(0);
    e.u.msi.address_hi = u32::try_from(msg.address >> 32).unwrap_or(0);
    e.u.msi.data = msg.data;
    e
}

impl GsiRouting {
    /// The table of `vm` (whose interrupt controllers exist).
    pub fn new(vm: Arc<VmFd>) -> Arc<Self> {
        Arc::new(Self {
            vm,
            state: Mutex::new(RoutingState {
                next_gsi: IOAPIC_PINS,
                msi: BTreeMap::new(),
            }),
        })
    }

    fn commit(&self, state: &RoutingState) -> io::Result<()> {
        let mut entries = Vec::with_capacity(40 + state.msi.len());
        for pin in 0..IOAPIC_PINS {
            entries.push(irqchip_entry(pin, KVM_IRQCHIP_IOAPIC, pin));
            if pin < 8 {
                entries.push(irqchip_entry(pin, KVM_IRQCHIP_PIC_MASTER, pin));
            } else if pin < 16 {
                entries.push(irqchip_entry(pin, KVM_IRQCHIP_PIC_SLAVE, pin - 8));
            }
        }
        for (gsi, msg) in &state.msi {
            entries.push(msi_entry(*gsi, *msg));
        }
        let mut table = KvmIrqRouting::new(0).map_err(|e| io::Error::other(format!("{e:?}")))?;
        for e in entries {
            table
                .push(e)
                .map_err(|e| io::Error::other(format!("GSI routing table: {e:?}")))?;
        }
        self.vm.set_gsi_routing(&table).map_err(io_err)
    }

    /// A group of `count` MSI vectors, each with its own GSI and irqfd.
    pub fn msi_group(self: &Arc<Self>, count: usize) -> io::Result<MsiGroup> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut gsis = Vec::with_capacity(count);
        let mut irqfds = Vec::with_capacity(count);
        for _ in 0..count {
            if usize::try_from(state.next_gsi).unwrap_or(usize::MAX) >= MAX_ROUTES {
                return Err(io::Error::other("out of GSIs"));
            }
            let gsi = state.next_gsi;
            state.next_gsi += 1;
            // Registered with KVM when the guest unmasks the vector (`set_masked`).
            let fd = EventFd::new(EFD_NONBLOCK)?;
            gsis.push(gsi);
            irqfds.push(fd);
        }
        Ok(MsiGroup {
            routing: self.clone(),
            registered: Mutex::new(vec![false; gsis.len()]),
            gsis,
            irqfds,
        })
    }
}

/// The MSI vectors of one function.
pub struct MsiGroup {
    routing: Arc<GsiRouting>,
    gsis: Vec<u32>,
    irqfds: Vec<EventFd>,
    /// Whether each vector's irqfd is registered (the vector is unmasked).
    registered: Mutex<Vec<bool>>,
}

impl MsiGroup {
    /// The vectors' eventfds, for a device that signals them itself (VFIO).
    pub fn eventfds(&self) -> &[EventFd] {
        &self.irqfds
    }
}

impl std::fmt::Debug for MsiGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MsiGroup")
            .field("gsis", &self.gsis)
            .finish()
    }
}

impl MsiRoutes for MsiGroup {
    fn set_route(&self, vector: usize, msg: MsiMessage) -> io::Result<()> {
        let gsi = *self
            .gsis
            .get(vector)
            .ok_or_else(|| io::Error::other("no such vector"))?;
        let mut state = self.routing.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.msi.get(&gsi) == Some(&msg) {
            return Ok(());
        }
        state.msi.insert(gsi, msg);
        self.routing.commit(&state)
    }

    fn trigger(&self, vector: usize) -> io::Result<()> {
        self.irqfds
            .get(vector)
            .ok_or_else(|| io::Error::other("no such vector"))?
            .write(1)
    }

    /// A masked vector's irqfd is unregistered, so a device signalling it directly (VFIO)
    /// injects nothing; registering it again delivers what it signalled meanwhile, as KVM
    /// injects at once for an eventfd already signalled.
    fn set_masked(&self, vector: usize, masked: bool) -> io::Result<()> {
        let (Some(fd), Some(&gsi)) = (self.irqfds.get(vector), self.gsis.get(vector)) else {
            return Err(io::Error::other("no such vector"));
        };
        let mut registered = self.registered.lock().unwrap_or_else(|e| e.into_inner());
        let Some(state) = registered.get_mut(vector) else {
            return Err(io::Error::other("no such vector"));
        };
        if *state != masked {
            return Ok(());
        }
        let vm = &self.routing.vm;
        if masked {
            vm.unregister_irqfd(fd, gsi).map_err(io_err)?;
        } else {
            vm.register_irqfd(fd, gsi).map_err(io_err)?;
        }
        *state = !masked;
        Ok(())
    }

    fn eventfd(&self, vector: usize) -> Option<&EventFd> {
        self.irqfds.get(vector)
    }
}

/// Queue notifications as KVM ioeventfds on MMIO addresses.
#[derive(Debug)]
pub struct KvmIoEvents(pub Arc<VmFd>);

impl IoEventRegistry for KvmIoEvents {
    fn register(&self, evt: &EventFd, addr: u64) -> io::Result<()> {
        self.0
            .register_ioevent(evt, &IoEventAddress::Mmio(addr), NoDatamatch)
            .map_err(io_err)
    }

    fn unregister(&self, evt: &EventFd, addr: u64) -> io::Result<()> {
        self.0
            .unregister_ioevent(evt, &IoEventAddress::Mmio(addr), NoDatamatch)
            .map_err(io_err)
    }
}
