//! One boot of the guest: a KVM VM with its RAM, devices and vCPU threads.
//!
//! A reboot throws the whole [`Vm`] away and builds a new one from the same configuration,
//! so every boot starts from power-on state without each device needing a reset path.
//! What outlives a boot (the console, host-side network devices) is owned by the runner.

use std::io::Write;
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use devices::acpi::{ACPI_PM_BASE, ACPI_PM_LEN, AcpiPm, IrqLine, SCI_IRQ};
use devices::boot_marker::{BOOT_MARKER_ADDR, BOOT_MARKER_LEN, BootMarker, Markers};
use devices::legacy::cmos::{CMOS_BASE, CMOS_LEN};
use devices::legacy::i8042::{I8042_BASE, I8042_LEN};
use devices::legacy::serial::{COM1_BASE, COM1_IRQ, SERIAL_PORT_LEN};
use devices::legacy::{Cmos, I8042, Serial};
use devices::{Bus, BusError, SharedDevice};
use kvm_bindings::{KVM_PIT_SPEAKER_DUMMY, kvm_pit_config};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::arch::cpuid::Topology;
use crate::arch::layout::{KVM_IDENTITY_MAP_ADDR, KVM_TSS_ADDR};
use crate::arch::{acpi, regs};
use crate::boot::{self, BootError, KernelFiles};
use crate::config::VmConfig;
use crate::interrupts::{GsiRouting, KvmIoEvents};
use crate::memory::{self, MemoryError};
use crate::network::HostNic;
use crate::sriov::Vf;
use crate::vcpu::{self, VcpuContext, VcpuControl, VcpuError, VcpuEvent, VcpuThread};
use vfio_ioctls::VfioDevice;

/// Why a VM cannot be built. All are host-side problems: exit code 2.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// A KVM ioctl failed.
    #[error("KVM: {what}")]
    Kvm {
        /// What was being done.
        what: &'static str,
        /// The error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// An eventfd could not be made.
    #[error("cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
    /// Guest RAM.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// Loading the kernel.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// ACPI tables.
    #[error(transparent)]
    Acpi(#[from] acpi::AcpiError),
    /// Page tables and GDT.
    #[error(transparent)]
    Regs(#[from] regs::RegsError),
    /// vCPU setup.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// Device placement.
    #[error("device layout")]
    Bus(#[from] BusError),
    /// A PCI device.
    #[error("PCI device {name}: {what}")]
    Pci {
        /// Which.
        name: String,
        /// What could not be done.
        what: &'static str,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// No room left in the PCI MMIO window for a device's BAR.
    #[error("PCI device {0}: out of PCI MMIO space")]
    PciSpace(String),
}

/// The SCI, driven through `KVM_IRQ_LINE`.
struct KvmIrqLine {
    vm: Arc<VmFd>,
    gsi: u32,
}

impl IrqLine for KvmIrqLine {
    fn set_level(&self, high: bool) {
        if let Err(e) = self.vm.set_irq_line(self.gsi, high) {
            log::error!("cannot set IRQ {} to {high}: {e}", self.gsi);
        }
    }
}

/// Eventfds through which a boot tells the runner it is over or wants attention.
#[derive(Debug)]
pub struct VmEvents {
    /// The guest asked for a reset (ACPI reset register, i8042).
    pub reset: EventFd,
    /// The guest powered off (ACPI S5).
    pub power_off: EventFd,
    /// A vCPU reported a [`VcpuEvent`].
    pub vcpu: EventFd,
    /// The serial receive FIFO has room again.
    pub serial_input_ready: EventFd,
}

impl VmEvents {
    fn new() -> Result<Self, VmError> {
        let efd = || EventFd::new(EFD_NONBLOCK).map_err(VmError::EventFd);
        Ok(Self {
            reset: efd()?,
            power_off: efd()?,
            vcpu: efd()?,
            serial_input_ready: efd()?,
        })
    }
}

/// A built (and, after [`Vm::start`], running) guest.
pub struct Vm {
    vm_fd: Arc<VmFd>,
    /// Dropped before guest RAM: unmaps it from the IOMMU and resets the VFs.
    _passthrough: Option<crate::vfio::Passthrough>,
    _memory: GuestMemoryMmap,
    pending_vcpus: Vec<(u32, kvm_ioctls::VcpuFd)>,
    threads: Vec<VcpuThread>,
    control: Arc<VcpuControl>,
    io_bus: Arc<Bus>,
    mmio_bus: Arc<Bus>,
    serial: Arc<Mutex<Serial>>,
    acpi: Arc<Mutex<AcpiPm>>,
    events: VmEvents,
    vcpu_events: Receiver<VcpuEvent>,
    vcpu_events_tx: std::sync::mpsc::Sender<VcpuEvent>,
    pin_cpus: Vec<usize>,
    started: Option<Instant>,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("vcpus", &(self.pending_vcpus.len() + self.threads.len()))
            .finish_non_exhaustive()
    }
}

/// What a boot needs from the runner.
pub struct BootContext<'a> {
    /// The open `/dev/kvm`.
    pub kvm: &'a Kvm,
    /// The resolved configuration.
    pub config: &'a VmConfig,
    /// Kernel and initrd.
    pub kernel: &'a KernelFiles,
    /// The kernel command line.
    pub cmdline: &'a str,
    /// Where the guest console's output goes.
    pub console: Box<dyn Write + Send>,
    /// When `vmm` started, for the boot marker.
    pub process_start: Instant,
    /// Where boot markers are recorded.
    pub markers: Markers,
    /// The network interfaces' host sides, in guest order.
    pub nics: &'a [HostNic],
    /// The VFs to pass through.
    pub vfs: &'a [crate::sriov::Vf],
    /// The disks, in guest order.
    pub disks: &'a [crate::disk::HostDisk],
}

impl std::fmt::Debug for BootContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootContext")
            .field("config", &self.config)
            .field("kernel", &self.kernel)
            .finish_non_exhaustive()
    }
}

impl Vm {
    /// Builds the VM: RAM, interrupt controllers, devices, ACPI, kernel, vCPUs. Nothing runs
    /// until [`Vm::start`].
    pub fn build(ctx: BootContext<'_>) -> Result<Self, VmError> {
        let kvm_err = |what| move |source| VmError::Kvm { what, source };
        let cfg = ctx.config;
        let vm_fd = Arc::new(ctx.kvm.create_vm().map_err(kvm_err("create VM"))?);
        vm_fd
            .set_identity_map_address(KVM_IDENTITY_MAP_ADDR)
            .map_err(kvm_err("set identity map address"))?;
        vm_fd
            .set_tss_address(usize::try_from(KVM_TSS_ADDR).unwrap_or(usize::MAX))
            .map_err(kvm_err("set TSS address"))?;
        vm_fd
            .create_irq_chip()
            .map_err(kvm_err("create interrupt controllers"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        vm_fd.create_pit2(pit).map_err(kvm_err("create PIT"))?;
        log::debug!("KVM VM created");

        let mem = memory::create(cfg.memory_bytes, cfg.hugepage_bytes)?;
        memory::register(&vm_fd, &mem)?;
        log::debug!("guest RAM mapped ({} MiB)", cfg.memory_bytes >> 20);

        let events = VmEvents::new()?;
        let io_bus = Arc::new(Bus::new());
        let mmio_bus = Arc::new(Bus::new());
        let serial_irq = EventFd::new(EFD_NONBLOCK).map_err(VmError::EventFd)?;
        vm_fd
            .register_irqfd(&serial_irq, COM1_IRQ)
            .map_err(kvm_err("register the serial irqfd"))?;
        let serial = Arc::new(Mutex::new(Serial::new(
            serial_irq,
            clone_evt(&events.serial_input_ready)?,
            ctx.console,
        )));
        io_bus.insert(serial.clone(), COM1_BASE, SERIAL_PORT_LEN)?;
        let i8042: SharedDevice = Arc::new(Mutex::new(I8042::new(clone_evt(&events.reset)?)));
        io_bus.insert(i8042, I8042_BASE, I8042_LEN)?;
        let cmos: SharedDevice = Arc::new(Mutex::new(Cmos::new()));
        io_bus.insert(cmos, CMOS_BASE, CMOS_LEN)?;
        let sci = Arc::new(KvmIrqLine {
            vm: vm_fd.clone(),
            gsi: SCI_IRQ,
        });
        let acpi_pm = Arc::new(Mutex::new(AcpiPm::new(
            sci,
            clone_evt(&events.power_off)?,
            clone_evt(&events.reset)?,
        )));
        io_bus.insert(acpi_pm.clone(), ACPI_PM_BASE, ACPI_PM_LEN)?;
        let marker: SharedDevice =
            Arc::new(Mutex::new(BootMarker::new(ctx.process_start, ctx.markers)));
        mmio_bus.insert(marker, BOOT_MARKER_ADDR, BOOT_MARKER_LEN)?;

        let passthrough = if ctx.vfs.is_empty() {
            None
        } else {
            Some(
                crate::vfio::Passthrough::open(&vm_fd, &mem, ctx.vfs)
                    .map_err(pci_fail("sriov", "cannot open VFIO"))?,
            )
        };
        add_pci_devices(
            &vm_fd,
            &mem,
            (&io_bus, &mmio_bus),
            PciFunctions {
                nics: ctx.nics,
                vfs: (ctx.vfs.iter())
                    .zip(passthrough.iter().flat_map(|p| &p.devices))
                    .collect(),
                disks: ctx.disks,
            },
        )?;

        let topo = Topology::new(cfg.topology);
        let apic_ids = topo.apic_ids();
        regs::write_boot_tables(&mem)?;
        let rsdp = acpi::write_tables(&mem, &apic_ids)?;
        let entry = boot::load(&mem, cfg.memory_bytes, ctx.kernel, ctx.cmdline, rsdp)?;
        log::debug!("kernel loaded, entry {:#x}", entry.entry);

        let mut pending_vcpus = Vec::with_capacity(apic_ids.len());
        for (index, apic_id) in apic_ids.iter().enumerate() {
            let index = u32::try_from(index).unwrap_or(u32::MAX);
            let boot = (index == 0).then_some(entry);
            let fd = vcpu::create(ctx.kvm, &vm_fd, &topo, index, *apic_id, boot)?;
            pending_vcpus.push((index, fd));
        }
        log::debug!("{} vCPUs created", apic_ids.len());
        let pin_cpus = if cfg.dedicated_cpus {
            vcpu::allowed_cpus()
        } else {
            Vec::new()
        };
        let (tx, rx) = channel();
        Ok(Self {
            vm_fd,
            _passthrough: passthrough,
            _memory: mem,
            pending_vcpus,
            threads: Vec::new(),
            control: Arc::new(VcpuControl::default()),
            io_bus,
            mmio_bus,
            serial,
            acpi: acpi_pm,
            events,
            vcpu_events: rx,
            vcpu_events_tx: tx,
            pin_cpus,
            started: None,
        })
    }

    /// Starts the vCPU threads.
    pub fn start(&mut self) -> Result<(), VmError> {
        vcpu::install_kick_handler().map_err(VmError::EventFd)?;
        for (index, fd) in std::mem::take(&mut self.pending_vcpus) {
            let ctx = VcpuContext {
                index,
                io_bus: self.io_bus.clone(),
                mmio_bus: self.mmio_bus.clone(),
                control: self.control.clone(),
                events: self.vcpu_events_tx.clone(),
                events_evt: clone_evt(&self.events.vcpu)?,
                pin_cpu: self
                    .pin_cpus
                    .get(usize::try_from(index).unwrap_or(usize::MAX))
                    .copied(),
            };
            self.threads.push(vcpu::spawn(fd, ctx)?);
        }
        self.started = Some(Instant::now());
        Ok(())
    }

    /// The boot's eventfds.
    pub fn events(&self) -> &VmEvents {
        &self.events
    }

    /// The next event a vCPU reported, if any.
    pub fn next_vcpu_event(&self) -> Option<VcpuEvent> {
        self.vcpu_events.try_recv().ok()
    }

    /// The console UART, for input.
    pub fn serial(&self) -> &Arc<Mutex<Serial>> {
        &self.serial
    }

    /// Presses the ACPI power button; returns whether the guest is listening for it.
    pub fn press_power_button(&self) -> bool {
        let mut pm = self.acpi.lock().unwrap_or_else(|e| e.into_inner());
        pm.press_power_button();
        pm.power_button_enabled()
    }

    /// How long the guest has been running.
    pub fn uptime(&self) -> Duration {
        self.started.map_or(Duration::ZERO, |s| s.elapsed())
    }

    /// Pauses every vCPU; returns once all are parked (or after a second).
    pub fn pause(&self) -> bool {
        self.control.set_paused(true);
        for t in &self.threads {
            t.kick();
        }
        self.control
            .wait_parked(self.threads.len(), Duration::from_secs(1))
    }

    /// Resumes the vCPUs.
    pub fn resume(&self) {
        self.control.set_paused(false);
    }

    /// Stops and joins every vCPU thread; the VM is gone afterwards.
    pub fn stop(mut self) {
        self.control.request_stop();
        let threads = std::mem::take(&mut self.threads);
        for t in &threads {
            t.kick();
        }
        for t in threads {
            t.join();
        }
        drop(self.vm_fd);
    }
}

/// A passed-through VF on the PCI root, its BARs placed from `next_bar` up.
/// A PCI function for an interface.
enum Function<'a> {
    /// virtio-net.
    Nic(&'a HostNic),
    /// A VF passed through.
    Vf(&'a Vf, &'a Arc<VfioDevice>),
}

impl Function<'_> {
    fn index(&self) -> usize {
        match self {
            Function::Nic(n) => n.index,
            Function::Vf(vf, _) => vf.index,
        }
    }
}

/// What goes on the PCI root: each interface's function and each disk.
struct PciFunctions<'a> {
    nics: &'a [HostNic],
    vfs: Vec<(&'a Vf, &'a Arc<VfioDevice>)>,
    disks: &'a [crate::disk::HostDisk],
}

/// The PCI root on both buses and a function per NIC, VF and disk, BARs packed from the
/// bottom of the 32-bit window in slot order.
fn add_pci_devices(
    vm_fd: &Arc<VmFd>,
    mem: &GuestMemoryMmap,
    (io_bus, mmio_bus): (&Arc<Bus>, &Arc<Bus>),
    functions: PciFunctions<'_>,
) -> Result<(), VmError> {
    use devices::pci::{
        ECAM_SIZE, PCI_CONFIG_IO_BASE, PCI_CONFIG_IO_LEN, PciConfigIo, PciEcam, PciRoot,
    };
    use devices::virtio::block::Block;
    use devices::virtio::net::Net;
    use devices::virtio::vhost_net::VhostNet;

    use crate::arch::layout::{PCI_ECAM_ADDR, PCI_MMIO_START};

    let root = Arc::new(PciRoot::new(mmio_bus.clone()));
    io_bus.insert(
        Arc::new(Mutex::new(PciConfigIo::new(root.clone()))),
        PCI_CONFIG_IO_BASE,
        PCI_CONFIG_IO_LEN,
    )?;
    mmio_bus.insert(
        Arc::new(Mutex::new(PciEcam::new(root.clone()))),
        PCI_ECAM_ADDR,
        ECAM_SIZE,
    )?;
    let PciFunctions { nics, vfs, disks } = functions;
    if nics.is_empty() && vfs.is_empty() && disks.is_empty() {
        return Ok(());
    }
    let mut pci = PciBuilder {
        mem,
        root,
        routing: GsiRouting::new(vm_fd.clone()),
        ioevents: Arc::new(KvmIoEvents(vm_fd.clone())),
        mapper: crate::vfio::KvmMapper::new(vm_fd.clone()),
        next_bar: PCI_MMIO_START,
    };
    // Functions in `interfaces` order: the guest enumerates them by slot.
    let mut interfaces: Vec<Function<'_>> = nics
        .iter()
        .map(Function::Nic)
        .chain(vfs.iter().map(|&(vf, d)| Function::Vf(vf, d)))
        .collect();
    interfaces.sort_by_key(Function::index);
    for function in interfaces {
        let nic = match function {
            Function::Nic(nic) => nic,
            Function::Vf(vf, device) => {
                pci.add_vf(vf, device)?;
                continue;
            }
        };
        let vhost = nic.vhost_parts().map_err(pci_fail(
            &nic.name,
            "cannot duplicate its TAP or DHCP socket",
        ))?;
        let device: Box<dyn devices::virtio::VirtioDevice> = match vhost {
            Some((tap, dhcp)) => Box::new(
                VhostNet::new(
                    nic.mac,
                    nic.mtu,
                    tap,
                    pci.mem,
                    dhcp,
                    nic.acked.clone(),
                    nic.counters.clone(),
                )
                .map_err(pci_fail(&nic.name, "cannot set up vhost-net"))?,
            ),
            None => {
                let backends = nic
                    .frame_backends()
                    .map_err(pci_fail(&nic.name, "cannot open its frame backend"))?;
                Box::new(
                    Net::new(
                        nic.mac,
                        nic.mtu,
                        backends,
                        nic.counters.clone(),
                        nic.acked.clone(),
                    )
                    .map_err(pci_fail(&nic.name, "cannot start its worker thread"))?,
                )
            }
        };
        let at = pci.add_virtio(&nic.name, device)?;
        log::debug!("virtio-net {} at {at}", nic.name);
    }
    // Disks after the interfaces, in `disks` order: the guest names them vda, vdb, ...
    for disk in disks {
        let name = &disk.plan.name;
        let label = format!("disk {name}");
        let device = Block::new(name, disk.backend.clone(), 1, disk.counters.clone())
            .map_err(pci_fail(&label, "cannot start its worker thread"))?;
        let at = pci.add_virtio(&label, Box::new(device))?;
        log::debug!("virtio-blk {name} at {at}");
    }
    Ok(())
}

/// What adding a function to the PCI root takes, and where the next BAR goes.
struct PciBuilder<'a> {
    mem: &'a GuestMemoryMmap,
    root: Arc<devices::pci::PciRoot>,
    routing: Arc<GsiRouting>,
    ioevents: Arc<KvmIoEvents>,
    mapper: Arc<crate::vfio::KvmMapper>,
    next_bar: u64,
}

impl PciBuilder<'_> {
    /// Puts `device` (`name` in errors) behind a virtio-pci transport on the root, its BAR
    /// at the next free address; returns where it is, for logs.
    fn add_virtio(
        &mut self,
        name: &str,
        device: Box<dyn devices::virtio::VirtioDevice>,
    ) -> Result<String, VmError> {
        use crate::arch::layout::PCI_MMIO_END;
        // One vector per queue and one for configuration changes.
        let vectors = self
            .routing
            .msi_group(device.queue_max_sizes().len() + 1)
            .map_err(pci_fail(name, "cannot allocate MSI vectors"))?;
        let bar = self.next_bar;
        self.next_bar += devices::virtio::BAR_SIZE;
        if self.next_bar > PCI_MMIO_END {
            return Err(VmError::PciSpace(name.to_string()));
        }
        let function = devices::virtio::VirtioPci::new(
            device,
            self.mem.clone(),
            bar,
            Arc::new(vectors),
            self.ioevents.clone(),
        )
        .map_err(pci_fail(name, "cannot make its virtio-pci transport"))?;
        let slot = self
            .root
            .add(Arc::new(Mutex::new(function)))
            .map_err(pci_fail(name, "cannot place it on the PCI root"))?;
        Ok(format!("00:{slot:02x}.0, BAR {bar:#x}"))
    }

    /// Puts VF `vf`'s function on the root, its BARs at the next free addresses.
    fn add_vf(&mut self, vf: &Vf, device: &Arc<VfioDevice>) -> Result<(), VmError> {
        use crate::arch::layout::PCI_MMIO_END;

        let count = crate::vfio::msi_vectors(device).max(1);
        let msi = Arc::new(
            self.routing
                .msi_group(count)
                .map_err(pci_fail(&vf.name, "cannot allocate MSI vectors"))?,
        );
        let host = crate::vfio::HostSide {
            device: Arc::clone(device),
            msi: msi.clone(),
            mmaps: Mutex::new(Vec::new()),
        };
        let next_bar = &mut self.next_bar;
        let mut place = |size: u64, _is64: bool| {
            let at = next_bar.next_multiple_of(size);
            let end = at.checked_add(size)?;
            (end <= PCI_MMIO_END).then(|| {
                *next_bar = end;
                at
            })
        };
        let mut function = devices::vfio::VfioPci::new(Box::new(host), msi, &mut place)
            .map_err(pci_fail(&vf.name, "cannot model the function"))?;
        let mapped = function.map_bars(self.mapper.clone());
        log::info!(
            "VF {}: {} KiB of BARs mapped into the guest, the rest (MSI-X table, PBA) traps",
            vf.address,
            mapped >> 10
        );
        let slot = self
            .root
            .add(Arc::new(Mutex::new(function)))
            .map_err(pci_fail(&vf.name, "cannot place it on the PCI root"))?;
        log::info!("VF {} ({}) at guest 00:{slot:02x}.0", vf.address, vf.name);
        Ok(())
    }
}

/// Makes an error of PCI device `name` failing at `what`, for `map_err`.
fn pci_fail<E>(name: &str, what: &'static str) -> impl FnOnce(E) -> VmError
where
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let name = name.to_string();
    move |e| VmError::Pci {
        name,
        what,
        source: e.into(),
    }
}

fn clone_evt(evt: &EventFd) -> Result<EventFd, VmError> {
    evt.try_clone().map_err(VmError::EventFd)
}
