//! VFIO passthrough, the host side: one container per boot holding every VF's group, the
//! KVM VFIO device (so KVM knows the groups, for coherent DMA), all guest RAM mapped for DMA
//! at IOVA = guest physical address, and each VF opened as a [`VfioDevice`] that
//! [`devices::vfio::VfioPci`] drives through [`HostSide`].
//!
//! Dropping [`Passthrough`] unmaps guest RAM from the IOMMU and closes the devices, which
//! resets them (vfio-pci resets a function when its last user closes it): on every exit
//! path, reboots included, the VF is left as it was found.

use std::io;
use std::path::Path;
use std::sync::Arc;

use std::os::fd::AsRawFd;
use std::sync::Mutex;

use devices::vfio::{GuestMapper, RegionInfo, VfioRegions};
use kvm_bindings::{
    kvm_create_device, kvm_device_type_KVM_DEV_TYPE_VFIO, kvm_userspace_memory_region,
};
use kvm_ioctls::VmFd;
use vfio_bindings::bindings::vfio::{
    VFIO_PCI_MSI_IRQ_INDEX, VFIO_PCI_MSIX_IRQ_INDEX, VFIO_REGION_INFO_FLAG_MMAP,
};
use vfio_ioctls::{VfioContainer, VfioDevice, VfioDeviceFd};
use vm_memory::GuestMemoryMmap;

use crate::interrupts::MsiGroup;
use crate::sriov::Vf;

/// Why passthrough could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("VF {address}: {why}")]
pub struct PassthroughError {
    /// The VF (or "VFIO" for the container).
    pub address: String,
    /// What failed.
    pub why: String,
}

/// The VFs of one boot.
pub struct Passthrough {
    container: Arc<VfioContainer>,
    mem: GuestMemoryMmap,
    /// The opened devices, in the order of `vfs` given to [`Passthrough::open`].
    pub devices: Vec<Arc<VfioDevice>>,
}

impl std::fmt::Debug for Passthrough {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Passthrough")
            .field("devices", &self.devices.len())
            .finish_non_exhaustive()
    }
}

impl Passthrough {
    /// Opens every VF in `vfs` in one container and maps all of `mem` for their DMA.
    pub fn open(vm: &VmFd, mem: &GuestMemoryMmap, vfs: &[Vf]) -> Result<Self, PassthroughError> {
        let err = |address: &str, why: String| PassthroughError {
            address: address.to_string(),
            why,
        };
        let mut create = kvm_create_device {
            type_: kvm_device_type_KVM_DEV_TYPE_VFIO,
            fd: 0,
            flags: 0,
        };
        let kvm_vfio = vm
            .create_device(&mut create)
            .map_err(|e| err("VFIO", format!("cannot create the KVM VFIO device: {e}")))?;
        let container = VfioContainer::new(Some(Arc::new(VfioDeviceFd::new_from_kvm(kvm_vfio))))
            .map_err(|e| err("VFIO", format!("cannot open the container: {e}")))?;
        let container = Arc::new(container);
        let mut devices = Vec::with_capacity(vfs.len());
        for vf in vfs {
            let path = Path::new("/sys/bus/pci/devices").join(vf.address.to_string());
            let device = VfioDevice::new(&path, container.clone(), false)
                .map_err(|e| err(&vf.address.to_string(), format!("cannot open it: {e}")))?;
            devices.push(Arc::new(device));
        }
        // SAFETY: guest RAM stays mapped for as long as `Passthrough` holds its clone of
        // `mem` (unmapped from the IOMMU in Drop first), and vmm touches guest RAM only
        // through vm-memory's volatile accessors, never through Rust references that the
        // device's DMA could alias.
        unsafe { container.vfio_map_guest_memory(mem) }
            .map_err(|e| err("VFIO", format!("cannot map guest RAM for DMA: {e}")))?;
        Ok(Self {
            container,
            mem: mem.clone(),
            devices,
        })
    }
}

impl Drop for Passthrough {
    fn drop(&mut self) {
        for d in &self.devices {
            let _ = d.disable_msix();
            let _ = d.disable_msi();
            // Stops DMA now, before guest RAM leaves the IOMMU (closing resets it again).
            d.reset();
        }
        if let Err(e) = self.container.vfio_unmap_guest_memory(&self.mem) {
            log::warn!("VFIO: cannot unmap guest RAM: {e}");
        }
    }
}

/// The most vectors VFIO offers for `device`, by MSI-X or MSI.
pub fn msi_vectors(device: &VfioDevice) -> usize {
    [VFIO_PCI_MSIX_IRQ_INDEX, VFIO_PCI_MSI_IRQ_INDEX]
        .into_iter()
        .filter_map(|index| device.get_irq_info(index))
        .map(|irq| irq.count as usize)
        .max()
        .unwrap_or(0)
}

/// One VF as [`devices::vfio::VfioPci`] sees it.
pub struct HostSide {
    /// The device.
    pub device: Arc<VfioDevice>,
    /// Its MSI-X vectors' irqfds.
    pub msi: Arc<MsiGroup>,
    /// Region areas mmapped into this process: (address, length).
    pub mmaps: Mutex<Vec<(usize, usize)>>,
}

impl Drop for HostSide {
    fn drop(&mut self) {
        for (addr, len) in self
            .mmaps
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            // SAFETY: (addr, len) is a mapping this object made with mmap and nothing
            // refers to any more: the guest mappings over it were removed first.
            unsafe { libc::munmap(addr as *mut libc::c_void, len) };
        }
    }
}

/// Guest mappings as KVM memory slots, numbered from [`FIRST_BAR_SLOT`].
#[derive(Debug)]
pub struct KvmMapper {
    vm: Arc<VmFd>,
    /// Slots in use: slot → (guest address, host address, length).
    slots: Mutex<Vec<Option<(u64, usize, u64)>>>,
}

/// Slots below this belong to guest RAM.
pub const FIRST_BAR_SLOT: u32 = 32;

impl KvmMapper {
    /// A mapper for `vm`.
    pub fn new(vm: Arc<VmFd>) -> Arc<Self> {
        Arc::new(Self {
            vm,
            slots: Mutex::new(Vec::new()),
        })
    }

    fn set(&self, slot: u32, guest: u64, host: usize, len: u64) -> io::Result<()> {
        let region = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: guest,
            memory_size: len,
            userspace_addr: host as u64,
        };
        // SAFETY: `host` is a live mmap of `len` bytes of a VFIO region, held by the
        // device's HostSide until after this slot is removed (VfioPci unmaps its slots
        // when dropped, before its HostSide); a zero `len` removes the slot.
        unsafe { self.vm.set_user_memory_region(region) }
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))
    }
}

impl GuestMapper for KvmMapper {
    fn map(&self, guest: u64, host: usize, len: u64) -> io::Result<u32> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let index = slots
            .iter()
            .position(Option::is_none)
            .unwrap_or(slots.len());
        let slot = FIRST_BAR_SLOT + u32::try_from(index).map_err(io::Error::other)?;
        self.set(slot, guest, host, len)?;
        if index == slots.len() {
            slots.push(None);
        }
        slots[index] = Some((guest, host, len));
        Ok(slot)
    }

    fn unmap(&self, id: u32) -> io::Result<()> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let index = usize::try_from(id.saturating_sub(FIRST_BAR_SLOT)).map_err(io::Error::other)?;
        let Some(Some((guest, host, _))) = slots.get(index).copied() else {
            return Ok(());
        };
        self.set(id, guest, host, 0)?;
        slots[index] = None;
        Ok(())
    }
}

impl std::fmt::Debug for HostSide {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostSide")
            .field("msi", &self.msi)
            .finish_non_exhaustive()
    }
}

impl VfioRegions for HostSide {
    fn region(&self, index: u32) -> RegionInfo {
        RegionInfo {
            size: self.device.get_region_size(index),
            mmap: self.device.get_region_flags(index) & VFIO_REGION_INFO_FLAG_MMAP != 0,
        }
    }

    fn read(&self, index: u32, offset: u64, data: &mut [u8]) {
        self.device.region_read(index, data, offset);
    }

    fn write(&self, index: u32, offset: u64, data: &[u8]) {
        self.device.region_write(index, data, offset);
    }

    fn enable_msix(&self, vectors: usize) -> io::Result<()> {
        let fds: Vec<_> = self.msi.eventfds().iter().take(vectors).collect();
        self.device
            .enable_msix(fds)
            .map_err(|e| io::Error::other(e.to_string()))
    }

    fn disable_msix(&self) -> io::Result<()> {
        self.device
            .disable_msix()
            .map_err(|e| io::Error::other(e.to_string()))
    }

    fn enable_msi(&self, vectors: usize) -> io::Result<()> {
        let fds: Vec<_> = self.msi.eventfds().iter().take(vectors).collect();
        self.device
            .enable_msi(fds)
            .map_err(|e| io::Error::other(e.to_string()))
    }

    fn disable_msi(&self) -> io::Result<()> {
        self.device
            .disable_msi()
            .map_err(|e| io::Error::other(e.to_string()))
    }

    fn mmap(&self, index: u32, offset: u64, len: u64) -> io::Result<usize> {
        let len = usize::try_from(len).map_err(io::Error::other)?;
        let at = self
            .device
            .get_region_offset(index)
            .checked_add(offset)
            .and_then(|o| libc::off_t::try_from(o).ok())
            .ok_or_else(|| io::Error::other("region offset out of range"))?;
        // SAFETY: a new shared mapping of the device file chosen by the kernel; nothing
        // else is affected, and the result is checked.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                self.device.as_raw_fd(),
                at,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let addr = addr as usize;
        self.mmaps
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((addr, len));
        Ok(addr)
    }
}
