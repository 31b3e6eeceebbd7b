//! Can this host run a guest? `/dev/kvm`, its permissions, its flavour and capabilities.
//!
//! Some hosts have a `/dev/kvm` that cannot run an unmodified guest: `kvm_pvm` (the PVM
//! module, used for nested containers without hardware virtualization) runs a normal guest's
//! kernel mode through KVM's instruction emulator, and a guest's first system call from user
//! mode faults, with no exit the VMM could act on. `vmm` recognises such a host by its
//! modules and stops at once with exit code 2, instead of spinning for minutes.

use std::path::{Path, PathBuf};

use std::os::fd::{FromRawFd, IntoRawFd};

use kvm_ioctls::{Cap, Kvm};

/// The KVM device.
pub const KVM_DEVICE: &str = "/dev/kvm";
/// Where loaded modules show up.
pub const SYS_MODULE: &str = "/sys/module";

/// Why this host cannot run the guest. Every variant means exit code 2.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// No `/dev/kvm`.
    #[error(
        "{KVM_DEVICE} does not exist: this host has no KVM. Load kvm_intel or kvm_amd, or run \
         vmm in a VM with nested virtualization enabled"
    )]
    NoKvm,
    /// `/dev/kvm` exists but cannot be opened.
    #[error(
        "cannot open {KVM_DEVICE} (run vmm as a user in the kvm group, or as root, or give \
         the pod the /dev/kvm device)"
    )]
    KvmAccess(#[source] std::io::Error),
    /// The KVM is `kvm_pvm`.
    #[error(
        "this host's KVM is kvm_pvm (no kvm_intel or kvm_amd is loaded): it cannot run an \
         unmodified guest's user space, whose first system call would fault. Run vmm on a host \
         with hardware virtualization, or inside the KVM test host: \
         tests/testhost run -- vmm run FILE"
    )]
    PvmKvm,
    /// KVM lacks something `vmm` relies on.
    #[error("KVM on this host lacks {0}, which vmm needs")]
    MissingCap(&'static str),
    /// The guest wants more vCPUs than KVM allows.
    #[error("the guest has {want} vCPUs but KVM on this host allows at most {max}")]
    TooManyVcpus {
        /// vCPUs asked for.
        want: u32,
        /// KVM's limit.
        max: usize,
    },
}

/// What kind of KVM the loaded modules say this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvmFlavour {
    /// `kvm_intel` or `kvm_amd`: hardware virtualization.
    Hardware,
    /// Only `kvm_pvm`.
    Pvm,
    /// Neither (KVM built in, or modules not visible): assume it works.
    Unknown,
}

/// Reads the flavour from the module directory `sys_module` (normally `/sys/module`).
pub fn kvm_flavour(sys_module: &Path) -> KvmFlavour {
    let loaded = |m: &str| sys_module.join(m).exists();
    if loaded("kvm_intel") || loaded("kvm_amd") {
        KvmFlavour::Hardware
    } else if loaded("kvm_pvm") {
        KvmFlavour::Pvm
    } else {
        KvmFlavour::Unknown
    }
}

/// Opens `/dev/kvm` and checks that it can run the guest; `vcpus` is how many it needs.
pub fn open_kvm(vcpus: u32) -> Result<Kvm, HostError> {
    open_kvm_at(Path::new(KVM_DEVICE), Path::new(SYS_MODULE), vcpus)
}

fn open_kvm_at(device: &Path, sys_module: &Path, vcpus: u32) -> Result<Kvm, HostError> {
    if !device.exists() {
        return Err(HostError::NoKvm);
    }
    if kvm_flavour(sys_module) == KvmFlavour::Pvm {
        return Err(HostError::PvmKvm);
    }
    let path = PathBuf::from(device);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(HostError::KvmAccess)?;
    // SAFETY: `file` is an open /dev/kvm descriptor whose ownership moves into `Kvm`.
    let kvm = unsafe { Kvm::from_raw_fd(file.into_raw_fd()) };
    for (cap, name) in [
        (
            Cap::Irqchip,
            "an in-kernel interrupt controller (KVM_CAP_IRQCHIP)",
        ),
        (Cap::Irqfd, "irqfd (KVM_CAP_IRQFD)"),
        (Cap::Ioeventfd, "ioeventfd (KVM_CAP_IOEVENTFD)"),
        (Cap::Pit2, "an in-kernel PIT (KVM_CAP_PIT2)"),
        (Cap::ExtCpuid, "KVM_GET_SUPPORTED_CPUID (KVM_CAP_EXT_CPUID)"),
        (Cap::UserMemory, "user memory regions (KVM_CAP_USER_MEMORY)"),
        (Cap::SetTssAddr, "KVM_SET_TSS_ADDR"),
        (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
    ] {
        if !kvm.check_extension(cap) {
            return Err(HostError::MissingCap(name));
        }
    }
    let max = kvm.get_max_vcpus();
    if usize::try_from(vcpus).unwrap_or(usize::MAX) > max {
        return Err(HostError::TooManyVcpus { want: vcpus, max });
    }
    Ok(kvm)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_modules(modules: &[&str]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "vmm-host-{}-{}",
            std::process::id(),
            modules.join("-")
        ));
        let _ = std::fs::remove_dir_all(&dir);
        for m in modules {
            std::fs::create_dir_all(dir.join(m)).unwrap();
        }
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn flavour_from_modules() {
        assert_eq!(
            kvm_flavour(&fake_modules(&["kvm", "kvm_pvm"])),
            KvmFlavour::Pvm
        );
        assert_eq!(
            kvm_flavour(&fake_modules(&["kvm", "kvm_amd"])),
            KvmFlavour::Hardware
        );
        assert_eq!(
            kvm_flavour(&fake_modules(&["kvm_pvm", "kvm_intel"])),
            KvmFlavour::Hardware
        );
        assert_eq!(kvm_flavour(&fake_modules(&["kvm"])), KvmFlavour::Unknown);
    }

    #[test]
    fn pvm_host_is_refused_before_opening() {
        let dev = fake_modules(&["dev"]).join("dev");
        let err = open_kvm_at(&dev, &fake_modules(&["kvm_pvm"]), 1).unwrap_err();
        assert!(matches!(err, HostError::PvmKvm));
        assert!(
            err.to_string()
                .contains("cannot run an unmodified guest's user space")
        );
    }

    #[test]
    fn missing_device_is_named() {
        let err =
            open_kvm_at(Path::new("/nonexistent/kvm"), Path::new("/nonexistent"), 1).unwrap_err();
        assert!(matches!(err, HostError::NoKvm));
        assert!(err.to_string().starts_with("/dev/kvm does not exist"));
    }
}
