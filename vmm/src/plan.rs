//! `vmm run --dry-run`: what a run would set up, in words, touching nothing.

use std::fmt::Write;

use devices::acpi::{ACPI_PM_BASE, SCI_IRQ};
use devices::boot_marker::BOOT_MARKER_ADDR;
use devices::legacy::serial::{COM1_BASE, COM1_IRQ};

use crate::arch::cpuid::Topology;
use crate::boot::{KernelFiles, KernelFormat};
use crate::config::{Binding, Manifest, NetworkSource, VmConfig};
use crate::disk::{DiskError, DiskPlan};
use crate::imageboot::BootChoice;
use crate::network::{InterfacePlan, NetworkError};
use crate::runner::{RunError, RunOptions};

/// The plan as text.
pub fn render(
    manifest: &Manifest,
    cfg: &VmConfig,
    kernel: Option<&(KernelFiles, KernelFormat)>,
    image_boot: Option<&Result<BootChoice, RunError>>,
    opts: &RunOptions,
    hosts: &[Result<InterfacePlan, NetworkError>],
    disks: &[Result<DiskPlan, DiskError>],
) -> String {
    let mut out = String::new();
    let spec = manifest.vm.spec.as_ref();
    let policy = spec.map_or("Once", |s| s.run_policy.as_str());
    let _ = writeln!(out, "VirtualMachine {} (runPolicy {policy})", cfg.name);
    let topo = Topology::new(cfg.topology);
    let ids: Vec<String> = topo.apic_ids().iter().map(ToString::to_string).collect();
    let _ = writeln!(
        out,
        "  vCPUs       {} ({} socket(s) × {} core(s)), APIC IDs {}{}",
        cfg.topology.vcpus(),
        cfg.topology.sockets,
        cfg.topology.cores_per_socket,
        ids.join(", "),
        if cfg.dedicated_cpus {
            ", each pinned to one host CPU"
        } else {
            ""
        }
    );
    let backing = cfg.hugepage_bytes.map_or_else(
        || "anonymous memory".to_string(),
        |p| format!("{} hugepages", human(p)),
    );
    let _ = writeln!(out, "  memory      {} ({backing})", human(cfg.memory_bytes));
    render_boot(&mut out, cfg, kernel, image_boot);
    let serial_to = opts.serial_log.as_ref().map_or_else(
        || "stdout".to_string(),
        |p| format!("stdout and {}", p.display()),
    );
    let _ = writeln!(out, "  devices");
    let _ = writeln!(
        out,
        "    serial    16550A COM1 at port {COM1_BASE:#x}, IRQ {COM1_IRQ} (ttyS0) ↔ stdin, {serial_to}"
    );
    let _ = writeln!(out, "    i8042     ports 0x60/0x64 (CPU reset)");
    let _ = writeln!(out, "    rtc       CMOS at ports 0x70/0x71");
    let _ = writeln!(
        out,
        "    acpi      PM1 and reset at port {ACPI_PM_BASE:#x}, SCI IRQ {SCI_IRQ} (power button, S5 off, reboot)"
    );
    let _ = writeln!(
        out,
        "    marker    boot-time marker at MMIO {BOOT_MARKER_ADDR:#x}"
    );
    render_interfaces(&mut out, manifest, cfg, hosts);
    render_disks(&mut out, disks);
    if let Some(api) = &opts.api_socket {
        let _ = writeln!(out, "  api         {}", api.display());
    }
    if let Some(ch) = &opts.ch_socket {
        let _ = writeln!(
            out,
            "  ch-api      {} (Cloud Hypervisor's API; boots on vm.create and vm.boot)",
            ch.display()
        );
    }
    for field in &manifest.ignored_fields {
        let _ = writeln!(out, "  ignored     {field} (Kubernetes only)");
    }
    out
}

fn render_boot(
    out: &mut String,
    cfg: &VmConfig,
    kernel: Option<&(KernelFiles, KernelFormat)>,
    image_boot: Option<&Result<BootChoice, RunError>>,
) {
    match (kernel, &cfg.kernel, image_boot) {
        (Some((files, format)), Some(k), _) => {
            let kind = match format {
                KernelFormat::BzImage => "bzImage",
                KernelFormat::Elf => "ELF vmlinux",
            };
            let _ = writeln!(out, "  kernel      {} ({kind})", files.kernel.display());
            if let Some(initrd) = &files.initrd {
                let _ = writeln!(out, "  initrd      {}", initrd.display());
            }
            let _ = writeln!(out, "  cmdline     {:?}", k.cmdline);
        }
        (_, None, Some(Ok(choice))) => {
            for (key, value) in choice.plan_lines() {
                let _ = writeln!(out, "  {key:<11} {value}");
            }
        }
        (_, None, Some(Err(e))) => {
            let _ = writeln!(
                out,
                "  boot        first disk, firmware-free: {}{}",
                crate::network::WOULD_FAIL,
                crate::runner::error_chain(e)
            );
        }
        _ => {
            let _ = writeln!(
                out,
                "  boot        first disk, firmware-free: {}no disk",
                crate::network::WOULD_FAIL
            );
        }
    }
}

/// `hosts`: what each interface's host side will be ([`crate::network::plan`]).
fn render_interfaces(
    out: &mut String,
    manifest: &Manifest,
    cfg: &VmConfig,
    hosts: &[Result<InterfacePlan, NetworkError>],
) {
    if cfg.interfaces.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "  interfaces  (in guest order: virtio-net on PCI, sriov VFs passed through)"
    );
    for (iface, host) in cfg.interfaces.iter().zip(hosts) {
        let network = match &iface.network {
            NetworkSource::Pod => "pod network".to_string(),
            NetworkSource::Multus { network_name } => {
                match manifest.network_attachment(network_name) {
                    Some(_) => format!("multus network {network_name} (from the manifest)"),
                    None => format!("multus network {network_name}"),
                }
            }
        };
        let binding = match &iface.binding {
            Binding::Bridge => "bridge",
            Binding::Masquerade { .. } => "masquerade",
            Binding::Sriov => "sriov, VFIO passthrough",
        };
        let host = match host {
            Ok(p) => p.host.to_string(),
            Err(e) => format!("{}{}", crate::network::WOULD_FAIL, net::error::Chain(e)),
        };
        let _ = writeln!(
            out,
            "    {:<9} {} on {network}; {binding}: {host}",
            iface.name, iface.mac
        );
    }
}

/// One line per disk, in guest order: what backs it, or why setting it up would fail.
fn render_disks(out: &mut String, disks: &[Result<DiskPlan, DiskError>]) {
    if disks.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "  disks       (virtio-blk on PCI in this order: vda, vdb, ...; serial = disk name)"
    );
    for disk in disks {
        match disk {
            Ok(d) => {
                let _ = writeln!(out, "    {:<9} {d}", d.name);
            }
            Err(e) => {
                let cause = std::error::Error::source(e)
                    .map(|s| format!(": {s}"))
                    .unwrap_or_default();
                let _ = writeln!(
                    out,
                    "    {:<9} {}{}{cause}",
                    e.name,
                    crate::network::WOULD_FAIL,
                    e.what
                );
            }
        }
    }
}

/// `bytes` as KiB/MiB/GiB.
pub(crate) fn human(bytes: u64) -> String {
    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;
    if bytes >= GIB && bytes.is_multiple_of(GIB) {
        format!("{} GiB", bytes / GIB)
    } else if bytes >= MIB && bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else {
        format!("{} KiB", bytes >> 10)
    }
}
