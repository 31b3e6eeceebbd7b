//! vCPUs: creating them with their CPUID, MSRs and boot state, and the thread that runs each.
//!
//! A vCPU thread loops on `KVM_RUN` and dispatches port-I/O and MMIO exits to the buses. The
//! VMM stops or pauses it by setting a flag in [`VcpuControl`] and sending it the kick signal:
//! the signal handler sets the thread's `kvm_run.immediate_exit`, so `KVM_RUN` returns at once
//! whether the signal lands inside the ioctl or just before it, and the thread then sees the
//! flag. Exits that end the guest (triple fault, internal error, a failed entry) are reported
//! to the VMM through [`VcpuEvent`]s.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex, Once};
use std::thread::JoinHandle;

use devices::Bus;
use devices::seccomp::Role;
use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES, Msrs};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{Killable, SIGRTMIN, register_signal_handler};

use crate::arch::{cpuid, regs};
use crate::boot::BootEntry;

/// Why a vCPU cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// A KVM ioctl failed.
    #[error("vCPU {index}: {what}")]
    Kvm {
        /// The vCPU.
        index: u32,
        /// What was being done.
        what: &'static str,
        /// The error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM did not take all the MSRs.
    #[error("vCPU {index}: KVM accepted {set} of {want} boot MSRs")]
    Msrs {
        /// The vCPU.
        index: u32,
        /// How many were set.
        set: usize,
        /// How many were given.
        want: usize,
    },
    /// The boot state could not be built.
    #[error("vCPU {index}: {message}")]
    Setup {
        /// The vCPU.
        index: u32,
        /// What went wrong.
        message: String,
    },
    /// The thread could not be started.
    #[error("cannot start the thread of vCPU {index}")]
    Spawn {
        /// The vCPU.
        index: u32,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// What a vCPU thread reports to the VMM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VcpuEvent {
    /// The guest failed; the string says how.
    Failed(String),
    /// KVM reported a system-event shutdown.
    PowerOff,
    /// KVM reported a system-event reset.
    Reset,
}

/// Run/pause/stop state shared by the VMM and all vCPU threads.
#[derive(Debug, Default)]
pub struct VcpuControl {
    stop: AtomicBool,
    state: Mutex<PauseState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct PauseState {
    paused: bool,
    parked: usize,
}

impl VcpuControl {
    /// Asks every vCPU to stop; they exit after their current exit is handled.
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        // Notify under the lock, so a thread between its check and its wait cannot miss it.
        let _state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.changed.notify_all();
    }

    fn should_stop(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Pauses or resumes the vCPUs (kick them afterwards so they notice).
    pub fn set_paused(&self, paused: bool) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.paused = paused;
        self.changed.notify_all();
    }

    /// Waits until `count` vCPUs are parked; false on timeout.
    pub fn wait_parked(&self, count: usize, timeout: std::time::Duration) -> bool {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (state, _) = self
            .changed
            .wait_timeout_while(state, timeout, |s| s.parked < count && !self.should_stop())
            .unwrap_or_else(|e| e.into_inner());
        state.parked >= count
    }

    /// Blocks while paused; returns when resumed or stopping.
    fn park_if_paused(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if !state.paused {
            return;
        }
        state.parked += 1;
        self.changed.notify_all();
        while state.paused && !self.should_stop() {
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        state.parked -= 1;
    }
}

thread_local! {
    /// This thread's `kvm_run.immediate_exit`, for the kick signal handler.
    static IMMEDIATE_EXIT: Cell<*mut u8> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    IMMEDIATE_EXIT.with(|p| {
        let ptr = p.get();
        if !ptr.is_null() {
            // SAFETY: the pointer is set by this thread to its own vCPU's kvm_run mapping,
            // which stays mapped until the thread clears the pointer before dropping the vCPU.
            unsafe { ptr.write_volatile(1) };
        }
    });
}

/// The signal that kicks a vCPU out of `KVM_RUN`.
pub fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

/// Installs the kick signal's handler (once per process).
pub fn install_kick_handler() -> std::io::Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = register_signal_handler(kick_signal(), kick_handler)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()));
    });
    result
}

/// Creates vCPU `index` with KVM id `apic_id` and sets its CPUID, MSRs, FPU and LAPIC; the
/// boot vCPU (`boot` is `Some`) also gets long-mode registers at the kernel's entry point.
pub fn create(
    kvm: &Kvm,
    vm: &VmFd,
    topo: &cpuid::Topology,
    index: u32,
    apic_id: u32,
    boot: Option<BootEntry>,
) -> Result<VcpuFd, VcpuError> {
    let kvm_err = |what| {
        move |source| VcpuError::Kvm {
            index,
            what,
            source,
        }
    };
    let vcpu = vm
        .create_vcpu(u64::from(apic_id))
        .map_err(kvm_err("create"))?;
    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_err("get supported CPUID"))?;
    let mut entries = supported.as_slice().to_vec();
    let tsc_deadline = kvm.check_extension(kvm_ioctls::Cap::TscDeadlineTimer);
    cpuid::patch(&mut entries, topo, apic_id, tsc_deadline);
    let cpuid = CpuId::from_entries(&entries).map_err(|e| VcpuError::Setup {
        index,
        message: format!("CPUID table: {e:?}"),
    })?;
    vcpu.set_cpuid2(&cpuid).map_err(kvm_err("set CPUID"))?;
    let msr_entries = regs::boot_msrs();
    let msrs = Msrs::from_entries(&msr_entries).map_err(|e| VcpuError::Setup {
        index,
        message: format!("MSR table: {e:?}"),
    })?;
    let set = vcpu.set_msrs(&msrs).map_err(kvm_err("set MSRs"))?;
    if set != msr_entries.len() {
        return Err(VcpuError::Msrs {
            index,
            set,
            want: msr_entries.len(),
        });
    }
    vcpu.set_fpu(&regs::boot_fpu())
        .map_err(kvm_err("set FPU"))?;
    let mut lapic = vcpu.get_lapic().map_err(kvm_err("get LAPIC"))?;
    {
        // SAFETY: `regs` is a plain `[c_char; 1024]` register page; viewing it as bytes is
        // sound (same size and alignment 1).
        let bytes = unsafe {
            std::slice::from_raw_parts_mut(lapic.regs.as_mut_ptr().cast::<u8>(), lapic.regs.len())
        };
        regs::set_lint(bytes);
    }
    vcpu.set_lapic(&lapic).map_err(kvm_err("set LAPIC"))?;
    if let Some(boot) = boot {
        let sregs = vcpu.get_sregs().map_err(kvm_err("get sregs"))?;
        vcpu.set_sregs(&regs::long_mode_sregs(sregs))
            .map_err(kvm_err("set sregs"))?;
        vcpu.set_regs(&regs::boot_regs(boot.entry))
            .map_err(kvm_err("set regs"))?;
    }
    Ok(vcpu)
}

/// What a vCPU thread needs.
pub struct VcpuContext {
    /// The vCPU's index (0 is the boot CPU).
    pub index: u32,
    /// Port-I/O bus.
    pub io_bus: Arc<Bus>,
    /// MMIO bus.
    pub mmio_bus: Arc<Bus>,
    /// Shared run state.
    pub control: Arc<VcpuControl>,
    /// Where to report guest-ending events.
    pub events: Sender<VcpuEvent>,
    /// Written after every event sent.
    pub events_evt: EventFd,
    /// Pin the thread to this host CPU.
    pub pin_cpu: Option<usize>,
}

impl std::fmt::Debug for VcpuContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VcpuContext")
            .field("index", &self.index)
            .field("pin_cpu", &self.pin_cpu)
            .finish_non_exhaustive()
    }
}

/// A running vCPU thread.
#[derive(Debug)]
pub struct VcpuThread {
    handle: JoinHandle<()>,
}

impl VcpuThread {
    /// Kicks the thread out of `KVM_RUN` so it looks at its control flags.
    pub fn kick(&self) {
        if let Err(e) = self.handle.kill(kick_signal()) {
            log::debug!("kick vCPU thread: {e}");
        }
    }

    /// Waits for the thread to end.
    pub fn join(self) {
        if self.handle.join().is_err() {
            log::error!("a vCPU thread panicked");
        }
    }
}

/// Starts the thread running `vcpu`.
pub fn spawn(vcpu: VcpuFd, ctx: VcpuContext) -> Result<VcpuThread, VcpuError> {
    let index = ctx.index;
    let handle = std::thread::Builder::new()
        .name(format!("vcpu{index}"))
        .stack_size(devices::worker::THREAD_STACK)
        .spawn(move || run(vcpu, &ctx))
        .map_err(|source| VcpuError::Spawn { index, source })?;
    Ok(VcpuThread { handle })
}

/// An exit, copied out of the `kvm_run` borrow so the vCPU can be used again.
enum Exit {
    Handled,
    Interrupted,
    Event(VcpuEvent),
    Unexpected(String),
    InternalError,
    Shutdown,
    FailEntry(u64),
}

fn run(mut vcpu: VcpuFd, ctx: &VcpuContext) {
    // Pinning first: with capabilities gone it may be refused where a cpuset allows it.
    if let Some(cpu) = ctx.pin_cpu {
        pin_to_cpu(cpu);
    }
    if devices::confine::confine_thread("vCPU", Role::Vcpu).is_err() {
        // Never into the guest unconfined: the VM fails (the error is logged).
        report(
            ctx,
            VcpuEvent::Failed(format!(
                "vCPU {}: cannot install its seccomp filter",
                ctx.index
            )),
        );
        return;
    }
    let run = vcpu.get_kvm_run();
    let immediate_exit: *mut u8 = &raw mut run.immediate_exit;
    IMMEDIATE_EXIT.with(|p| p.set(immediate_exit));
    let mut first = true;
    loop {
        if ctx.control.should_stop() {
            break;
        }
        ctx.control.park_if_paused();
        if ctx.control.should_stop() {
            break;
        }
        if first && ctx.index == 0 {
            log::debug!("vCPU 0 enters the guest");
            first = false;
        }
        let exit = match vcpu.run() {
            Ok(exit) => dispatch(exit, ctx),
            Err(e) if matches!(e.errno(), libc::EINTR | libc::EAGAIN) => Exit::Interrupted,
            Err(e) => Exit::Unexpected(format!("KVM_RUN failed: {e}")),
        };
        let event = match exit {
            Exit::Handled => continue,
            Exit::Interrupted => {
                vcpu.set_kvm_immediate_exit(0);
                continue;
            }
            Exit::Event(event) => event,
            Exit::Shutdown => VcpuEvent::Failed(format!(
                "vCPU {} triple fault (KVM_EXIT_SHUTDOWN){}",
                ctx.index,
                describe_regs(&vcpu)
            )),
            Exit::FailEntry(reason) => VcpuEvent::Failed(format!(
                "vCPU {}: KVM could not enter the guest (hardware reason {reason:#x}){}",
                ctx.index,
                describe_regs(&vcpu)
            )),
            Exit::InternalError => VcpuEvent::Failed(format!(
                "vCPU {}: KVM internal error{}{}",
                ctx.index,
                describe_internal_error(&mut vcpu),
                describe_regs(&vcpu)
            )),
            Exit::Unexpected(what) => VcpuEvent::Failed(format!(
                "vCPU {}: {what}{}",
                ctx.index,
                describe_regs(&vcpu)
            )),
        };
        report(ctx, event);
        break;
    }
    IMMEDIATE_EXIT.with(|p| p.set(std::ptr::null_mut()));
}

fn dispatch(exit: VcpuExit<'_>, ctx: &VcpuContext) -> Exit {
    match exit {
        VcpuExit::IoIn(port, data) => {
            if !ctx.io_bus.read(u64::from(port), data) {
                log::trace!("unhandled port read {port:#x}");
            }
            Exit::Handled
        }
        VcpuExit::IoOut(port, data) => {
            if !ctx.io_bus.write(u64::from(port), data) {
                log::trace!("unhandled port write {port:#x}");
            }
            Exit::Handled
        }
        VcpuExit::MmioRead(addr, data) => {
            if !ctx.mmio_bus.read(addr, data) {
                log::trace!("unhandled MMIO read {addr:#x}");
            }
            Exit::Handled
        }
        VcpuExit::MmioWrite(addr, data) => {
            if !ctx.mmio_bus.write(addr, data) {
                log::trace!("unhandled MMIO write {addr:#x}");
            }
            Exit::Handled
        }
        // With the in-kernel LAPIC, KVM handles HLT; an exit here is harmless.
        VcpuExit::Hlt | VcpuExit::IrqWindowOpen | VcpuExit::Intr => Exit::Handled,
        VcpuExit::Shutdown => Exit::Shutdown,
        VcpuExit::FailEntry(reason, _) => Exit::FailEntry(reason),
        VcpuExit::InternalError => Exit::InternalError,
        VcpuExit::SystemEvent(kind, _) => match kind {
            kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => Exit::Event(VcpuEvent::PowerOff),
            kvm_bindings::KVM_SYSTEM_EVENT_RESET => Exit::Event(VcpuEvent::Reset),
            other => Exit::Unexpected(format!("system event {other}")),
        },
        other => Exit::Unexpected(format!("unexpected exit {other:?}")),
    }
}

fn report(ctx: &VcpuContext, event: VcpuEvent) {
    if ctx.events.send(event).is_ok()
        && let Err(e) = ctx.events_evt.write(1)
    {
        log::error!("vCPU {}: cannot wake the VMM: {e}", ctx.index);
    }
}

/// `KVM_EXIT_INTERNAL_ERROR` details: the suberror and, for an emulation failure, the bytes
/// of the instruction KVM could not emulate.
fn describe_internal_error(vcpu: &mut VcpuFd) -> String {
    let run = vcpu.get_kvm_run();
    // SAFETY: after KVM_EXIT_INTERNAL_ERROR the `internal` member of the exit union is the
    // one KVM filled in.
    let internal = unsafe { run.__bindgen_anon_1.internal };
    let ndata = usize::try_from(internal.ndata)
        .unwrap_or(0)
        .min(internal.data.len());
    let data: Vec<String> = internal.data[..ndata]
        .iter()
        .map(|d| format!("{d:#x}"))
        .collect();
    let what = match internal.suberror {
        1 => "emulation failure",
        2 => "simultaneous exceptions",
        3 => "delivery event",
        _ => "unknown",
    };
    format!(
        " ({what}, suberror {}, data [{}])",
        internal.suberror,
        data.join(", ")
    )
}

fn describe_regs(vcpu: &VcpuFd) -> String {
    match (vcpu.get_regs(), vcpu.get_sregs()) {
        (Ok(r), Ok(s)) => format!(
            " at rip {:#x} (cs {:#x}, cr0 {:#x}, cr3 {:#x}, rsp {:#x})",
            r.rip, s.cs.selector, s.cr0, s.cr3, r.rsp
        ),
        _ => String::new(),
    }
}

/// Pins the calling thread to host CPU `cpu`.
fn pin_to_cpu(cpu: usize) {
    // SAFETY: cpu_set_t is plain data; zeroed is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET writes within `set` for cpu < CPU_SETSIZE, which the caller's index
    // comes from (a CPU in the process's affinity mask).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: pid 0 is the calling thread; `set` is a valid cpu_set_t of the size passed.
    let ret = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &raw const set) };
    if ret != 0 {
        log::warn!(
            "cannot pin vCPU thread to CPU {cpu}: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// The host CPUs this process may run on, in order.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; zeroed is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: pid 0 is this process; `set` is a valid cpu_set_t of the size passed.
    let ret = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &raw mut set) };
    if ret != 0 {
        return Vec::new();
    }
    let max = usize::try_from(libc::CPU_SETSIZE).unwrap_or(0);
    // SAFETY: CPU_ISSET reads within `set` for cpu < CPU_SETSIZE.
    (0..max)
        .filter(|cpu| unsafe { libc::CPU_ISSET(*cpu, &set) })
        .collect()
}

#[cfg(test)]
mod tests {

    /// The vCPU's seccomp filter lists ioctl numbers by value (devices knows no KVM): they
    /// must be the kernel's.
    #[test]
    fn the_vcpu_filter_s_ioctl_numbers_are_the_kernel_s() {
        use devices::seccomp::vcpu_ioctl as n;
        use kvm_bindings::{
            KVMIO, kvm_ioeventfd, kvm_irq_level, kvm_irq_routing, kvm_irqfd, kvm_msi, kvm_regs,
            kvm_sregs, kvm_userspace_memory_region,
        };
        vmm_sys_util::ioctl_io_nr!(RUN, KVMIO, 0x80);
        vmm_sys_util::ioctl_ior_nr!(GET_REGS, KVMIO, 0x81, kvm_regs);
        vmm_sys_util::ioctl_ior_nr!(GET_SREGS, KVMIO, 0x83, kvm_sregs);
        vmm_sys_util::ioctl_iow_nr!(IRQ_LINE, KVMIO, 0x61, kvm_irq_level);
        vmm_sys_util::ioctl_iow_nr!(IRQFD, KVMIO, 0x76, kvm_irqfd);
        vmm_sys_util::ioctl_iow_nr!(GSI_ROUTING, KVMIO, 0x6a, kvm_irq_routing);
        vmm_sys_util::ioctl_iow_nr!(SIGNAL_MSI, KVMIO, 0xa5, kvm_msi);
        vmm_sys_util::ioctl_iow_nr!(IOEVENTFD, KVMIO, 0x79, kvm_ioeventfd);
        vmm_sys_util::ioctl_iow_nr!(MEMORY_REGION, KVMIO, 0x46, kvm_userspace_memory_region);
        vmm_sys_util::ioctl_iow_nr!(TUN_OFFLOAD, 0x54, 208, std::os::raw::c_uint);
        // VFIO_TYPE is ';', VFIO_BASE 100.
        vmm_sys_util::ioctl_io_nr!(SET_IRQS, 0x3b, 100 + 10);
        vmm_sys_util::ioctl_io_nr!(DEVICE_RESET, 0x3b, 100 + 11);
        let pairs = [
            (RUN(), n::KVM_RUN),
            (GET_REGS(), n::KVM_GET_REGS),
            (GET_SREGS(), n::KVM_GET_SREGS),
            (IRQ_LINE(), n::KVM_IRQ_LINE),
            (IRQFD(), n::KVM_IRQFD),
            (GSI_ROUTING(), n::KVM_SET_GSI_ROUTING),
            (SIGNAL_MSI(), n::KVM_SIGNAL_MSI),
            (IOEVENTFD(), n::KVM_IOEVENTFD),
            (MEMORY_REGION(), n::KVM_SET_USER_MEMORY_REGION),
            (TUN_OFFLOAD(), n::TUNSETOFFLOAD),
            (SET_IRQS(), n::VFIO_DEVICE_SET_IRQS),
            (DEVICE_RESET(), n::VFIO_DEVICE_RESET),
        ];
        for (i, (kernel, listed)) in pairs.into_iter().enumerate() {
            assert_eq!(kernel, listed, "entry {i}: {kernel:#x} != {listed:#x}");
        }
    }

    use super::*;
    use std::time::Duration;

    #[test]
    fn pause_parks_until_resume_and_stop_releases() {
        let control = Arc::new(VcpuControl::default());
        control.set_paused(true);
        let c = control.clone();
        let t = std::thread::spawn(move || c.park_if_paused());
        assert!(control.wait_parked(1, Duration::from_secs(5)));
        control.set_paused(false);
        t.join().unwrap();
        control.set_paused(true);
        let c = control.clone();
        let t = std::thread::spawn(move || c.park_if_paused());
        assert!(control.wait_parked(1, Duration::from_secs(5)));
        control.request_stop();
        t.join().unwrap();
    }

    #[test]
    fn allowed_cpus_is_not_empty() {
        assert!(!allowed_cpus().is_empty());
    }
}
