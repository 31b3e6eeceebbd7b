//! `vmm run`: the lifecycle around boots of the guest.
//!
//! ```text
//!   load manifest ──▶ resolve kernel ──▶ open /dev/kvm ──▶ console, API, signals
//!                                                              │
//!            ┌─────────────────────────────────────────────────┘
//!            ▼
//!   ┌──▶ standby: runPolicy Manual waits for PowerOn; in Virtink's pod, for vm.create
//!   │       │     and vm.boot (Cloud Hypervisor's API, [`crate::api::ch`])
//!   │       ▼
//!   │  ┌─▶ build Vm ──▶ start vCPUs ──▶ event loop ──▶ Stop ──┐
//!   │  │                                                      │
//!   │  └──── Reset, or runPolicy says boot again ◀────────────┤
//!   └─────── vm.shutdown, vm.delete (in the pod) ◀────────────┤
//!                                                             ▼
//!                                          exit 0 / 3 / 4 (see [`ExitCode`])
//! ```
//!
//! The event loop runs on the main thread and waits (epoll) on stdin, the signalfd, the API
//! and the boot's eventfds. SIGTERM and SIGINT press the ACPI power button; if the guest has
//! not powered off when `--shutdown-timeout` runs out, it is stopped and `vmm` exits 4.

use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use devices::boot_marker::Markers;
use kvm_ioctls::Kvm;
use net::poll::{Poller, Token};

use crate::api::ch::{self, ChVm, Effect};
use crate::api::{ApiAnswer, ApiCommand, ApiError, ApiServer, PowerAction};
use crate::boot::{self, BootError, KernelFiles};
use crate::config::{self, ManifestError, RunPolicy, VmConfig};
use crate::console::{self, ConsoleError, ConsoleOutput};
use crate::host::{self, HostError};
use crate::pod::{self, ManifestSource};
use crate::signals::{self, SignalFd};
use crate::vcpu::VcpuEvent;
use crate::vm::{BootContext, Vm, VmError};

/// `vmm run`'s exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitCode {
    /// The guest powered off.
    PoweredOff = 0,
    /// The manifest is invalid.
    InvalidManifest = 1,
    /// The host cannot run it: no KVM, no permission, a missing file or host object.
    HostCannotRun = 2,
    /// The guest failed: triple fault, KVM internal error.
    GuestFailed = 3,
    /// Stopped by a signal after the shutdown grace period.
    StoppedBySignal = 4,
}

/// What `vmm run` was asked to do.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Where the VirtualMachine comes from.
    pub manifest: ManifestSource,
    /// `--api-socket`.
    pub api_socket: Option<PathBuf>,
    /// `--ch-api-socket`: serve Cloud Hypervisor's API there, write `vm-config.json` beside
    /// it and boot when told to, as in Virtink's pod.
    pub ch_socket: Option<PathBuf>,
    /// `--serial-log`.
    pub serial_log: Option<PathBuf>,
    /// `--volume NAME=PATH` bindings.
    pub volumes: Vec<(String, PathBuf)>,
    /// `--shutdown-timeout`.
    pub shutdown_timeout: Duration,
    /// `--nat-limit`s over the defaults.
    pub nat_limits: net::nat::Limits,
    /// The masquerade egress policy: the default with `--nat-deny` and `--nat-allow`.
    pub nat_egress: net::nat::Egress,
    /// `--seccomp`: what the per-thread system call filters do.
    pub seccomp: devices::seccomp::Mode,
    /// When the process started.
    pub process_start: Instant,
}

/// Why `vmm run` ended without running the guest to completion.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The manifest is invalid (exit 1).
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// A `--volume` is wrong (exit 1).
    #[error("--volume {0}")]
    Volume(String),
    /// runPolicy Manual with no API to power the VM on (exit 1).
    #[error(
        "spec.runPolicy: Manual waits for a PowerOn through the API: give --api-socket \
         (or --ch-api-socket)"
    )]
    ManualWithoutApi,
    /// `vm-config.json` cannot be written (exit 2).
    #[error("cannot write {}", .path.display())]
    VmConfigFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The manifest asks for something this build cannot do yet (exit 2).
    #[error("{0}")]
    Unsupported(String),
    /// The kernel (exit 2).
    #[error(transparent)]
    Boot(#[from] BootError),
    /// The host (exit 2).
    #[error(transparent)]
    Host(#[from] HostError),
    /// The console (exit 2).
    #[error(transparent)]
    Console(#[from] ConsoleError),
    /// The API socket (exit 2).
    #[error(transparent)]
    Api(#[from] ApiError),
    /// Building the VM (exit 2).
    #[error(transparent)]
    Vm(#[from] VmError),
    /// The host side of the network (exit 2).
    #[error(transparent)]
    Network(#[from] crate::network::NetworkError),
    /// A disk (exit 2).
    #[error(transparent)]
    Disk(#[from] crate::disk::DiskError),
    /// Booting the first disk without a kernel (exit 2).
    #[error("spec.instance.disks[0]: booting the image without a kernel")]
    ImageBoot(#[source] crate::imageboot::ImageBootError),
    /// `--dry-run` found what the run would fail on (exit 2); the plan says what.
    #[error("the plan above says what a run would fail on")]
    WouldFail(String),
    /// Signal or epoll setup (exit 2).
    #[error("{what}")]
    Os {
        /// What was being done.
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl RunError {
    /// The exit code for this error.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            RunError::Manifest(_) | RunError::Volume(_) | RunError::ManualWithoutApi => {
                ExitCode::InvalidManifest
            }
            _ => ExitCode::HostCannotRun,
        }
    }
}

/// An error and its causes, as one line: `what: cause: cause`.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    net::error::Chain(e).to_string()
}

fn os_err(what: &'static str) -> impl FnOnce(std::io::Error) -> RunError {
    move |source| RunError::Os { what, source }
}

/// Everything `vmm run` prepared before the first boot.
struct Prepared {
    manifest: config::Manifest,
    config: VmConfig,
    /// The kernel files, or `None` to boot the first disk's own kernel (read anew at each
    /// boot, so that a kernel the guest installed boots after its reboot).
    kernel: Option<KernelFiles>,
    disks: Vec<crate::disk::DiskPlan>,
}

/// Loads and checks everything that does not need KVM: the manifest, `--volume`s, the
/// features this build supports, and the kernel files.
fn prepare(opts: &RunOptions) -> Result<Prepared, RunError> {
    let manifest = opts.manifest.load()?;
    report_ignored(&manifest, opts.manifest.in_pod());
    let config = VmConfig::from_manifest(&manifest);
    check_volumes(&manifest, &opts.volumes)?;
    let disks = crate::disk::plan(&manifest, &opts.volumes, Path::new(crate::disk::POD_MNT))
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    if let Ok(list) = std::env::var(pod::BLOCK_VOLUMES) {
        pod::check_block_volumes(&list, &disks).map_err(RunError::Unsupported)?;
    }
    let kernel = match &config.kernel {
        Some(k) => {
            let files = pod::kernel_files(&k.image, opts.manifest.in_pod())?;
            boot::check(&files)?;
            Some(files)
        }
        None => {
            // Found now for an early error; read again at each boot.
            let choice = boot_choice(&disks)?;
            log::info!(
                "booting the image: {} ({}), kernel {:?}",
                choice.entry,
                choice.config,
                choice.kernel
            );
            None
        }
    };
    Ok(Prepared {
        manifest,
        config,
        kernel,
        disks,
    })
}

/// Warns of what the manifest holds that `vmm` ignores (in Virtink's pod, the
/// Kubernetes-only fields are Kubernetes' business and go unmentioned).
fn report_ignored(manifest: &config::Manifest, in_pod: bool) {
    for field in &manifest.ignored_fields {
        if in_pod {
            log::debug!("{field} is Kubernetes' business");
        } else {
            log::warn!("{field} is ignored outside Kubernetes");
        }
    }
    for document in &manifest.ignored_documents {
        log::warn!(
            "{document} is ignored: vmm uses only VirtualMachine, NetworkAttachmentDefinition \
             and Secret documents"
        );
    }
}

/// What the first disk's image boots, read without changing it (for `prepare` and
/// `--dry-run`).
fn boot_choice(disks: &[crate::disk::DiskPlan]) -> Result<crate::imageboot::BootChoice, RunError> {
    let first = disks.first().ok_or_else(|| {
        RunError::Unsupported("spec.instance: no kernel and no disk to boot from".into())
    })?;
    let backend = crate::disk::open_read_only(first)?;
    crate::imageboot::find(backend).map_err(RunError::ImageBoot)
}

/// Each `--volume NAME=PATH` must name a volume of the manifest.
fn check_volumes(
    manifest: &config::Manifest,
    volumes: &[(String, PathBuf)],
) -> Result<(), RunError> {
    let names: Vec<&str> = manifest
        .vm
        .spec
        .as_ref()
        .map(|s| s.volumes.iter().map(|v| v.name.as_str()).collect())
        .unwrap_or_default();
    for (name, _) in volumes {
        if !names.contains(&name.as_str()) {
            return Err(RunError::Volume(format!(
                "{name}=...: the manifest has no volume named {name:?}"
            )));
        }
    }
    Ok(())
}

/// `vmm run --dry-run`: the plan, touching nothing. Exits as `vmm run` would before booting:
/// an error for what stops the run before any plan (exit 1 or 2), else the plan, which says
/// per disk and interface what would fail, and [`RunError::WouldFail`] (exit 2) if anything
/// would. (`/dev/kvm` is not opened.)
pub fn dry_run(opts: &RunOptions) -> Result<String, RunError> {
    let manifest = opts.manifest.load()?;
    check_volumes(&manifest, &opts.volumes)?;
    let cfg = VmConfig::from_manifest(&manifest);
    let kernel = match &cfg.kernel {
        Some(k) => {
            let files = pod::kernel_files(&k.image, opts.manifest.in_pod())?;
            let format = boot::check(&files)?;
            Some((files, format))
        }
        None => None,
    };
    let hosts = crate::network::plan(&cfg, &manifest, opts.nat_limits, &opts.nat_egress);
    let disks = crate::disk::plan(&manifest, &opts.volumes, Path::new(crate::disk::POD_MNT));
    if let Ok(list) = std::env::var(pod::BLOCK_VOLUMES) {
        let planned: Vec<_> = disks
            .iter()
            .filter_map(|d| d.as_ref().ok())
            .cloned()
            .collect();
        pod::check_block_volumes(&list, &planned).map_err(RunError::Unsupported)?;
    }
    let image_boot = match (&cfg.kernel, disks.first()) {
        (Some(_), _) => None,
        (None, Some(Ok(first))) => Some(
            crate::disk::open_read_only(first)
                .map_err(RunError::Disk)
                .and_then(|b| crate::imageboot::find(b).map_err(RunError::ImageBoot)),
        ),
        (None, Some(Err(_))) => Some(Err(RunError::Unsupported(
            "the first disk cannot be opened (see disks)".into(),
        ))),
        (None, None) => None,
    };
    let plan = crate::plan::render(
        &manifest,
        &cfg,
        kernel.as_ref(),
        image_boot.as_ref(),
        opts,
        &hosts,
        &disks,
    );
    let fails = disks.iter().any(Result::is_err)
        || hosts.iter().any(Result::is_err)
        || (kernel.is_none() && !matches!(image_boot, Some(Ok(_))));
    if fails {
        return Err(RunError::WouldFail(plan));
    }
    Ok(plan)
}

/// `vmm run`: boots the guest and runs it to the end. Returns the exit code.
pub fn run(opts: &RunOptions) -> Result<ExitCode, RunError> {
    // Inherited by every thread started from here on: no setuid or file capability can
    // give any of them privilege back.
    if let Err(e) = devices::confine::set_no_new_privs() {
        log::warn!("cannot set no_new_privs: {e}");
    }
    devices::seccomp::set_mode(opts.seccomp).map_err(os_err("cannot handle SIGSYS"))?;
    let prepared = prepare(opts)?;
    // In Virtink's pod the controller applies the runPolicy (it made this pod to run the VM).
    let policy = prepared.config.run_policy;
    if policy == RunPolicy::Halted && opts.ch_socket.is_none() {
        log::warn!(
            "VirtualMachine {:?} has runPolicy Halted: not starting it",
            prepared.manifest.vm.metadata.name
        );
        return Ok(ExitCode::PoweredOff);
    }
    if policy == RunPolicy::Manual && opts.api_socket.is_none() && opts.ch_socket.is_none() {
        return Err(RunError::ManualWithoutApi);
    }
    let kvm = host::open_kvm(prepared.config.topology.vcpus())?;
    // Before the network: a disk that cannot be opened leaves nothing to undo.
    let disks = crate::disk::open(prepared.disks.clone(), &crate::disk::temp_dir())?;
    // Restored when dropped, on every return from here on.
    let network = crate::network::set_up(
        &prepared.config,
        &prepared.manifest,
        opts.nat_limits,
        &opts.nat_egress,
    )?;
    let signals = SignalFd::new().map_err(os_err("cannot take over SIGTERM and SIGINT"))?;
    let console = ConsoleOutput::new(opts.serial_log.as_deref())?;
    let api = opts
        .api_socket
        .as_deref()
        .map(ApiServer::start)
        .transpose()?;
    let ch_api = opts
        .ch_socket
        .as_deref()
        .map(ApiServer::start)
        .transpose()?;
    let (ch, _vm_config_file) = match &opts.ch_socket {
        Some(socket) => {
            let want = pod::vm_config(&prepared.config, prepared.kernel.as_ref(), &network, &disks);
            let dir = socket.parent().unwrap_or(Path::new("."));
            let path =
                pod::write_vm_config(dir, &want).map_err(|source| RunError::VmConfigFile {
                    path: dir.join(pod::VM_CONFIG_FILE),
                    source,
                })?;
            log::info!(
                "waiting for vm.create and vm.boot on {} (the config is in {})",
                socket.display(),
                path.display()
            );
            (Some(ChVm::new(want)), Some(RemoveOnDrop(path)))
        }
        None => (None, None),
    };
    let raw = console::enter_raw_mode();
    // Set-up is done. The threads that handle the guest's and peers' input dropped every
    // capability as they started; this one keeps only what the end of the run needs.
    let keep: &[u32] = if network.restores_links() {
        &[devices::confine::CAP_NET_ADMIN]
    } else {
        &[]
    };
    if let Err(e) = devices::confine::keep_only_capabilities(keep) {
        log::warn!("cannot drop capabilities: {e}");
    }
    devices::seccomp::confine(devices::seccomp::Role::Main).map_err(os_err(
        "cannot install the main thread's seccomp filter (--seccomp=false runs without)",
    ))?;
    let mut runner = Runner {
        opts,
        prepared: &prepared,
        kvm: &kvm,
        console,
        signals,
        api,
        ch_api,
        ch,
        pending_boot: None,
        markers: Markers::default(),
        stdin: console::StdinInput::default(),
        network: &network,
        disks: &disks,
    };
    let result = runner.lifecycle();
    if raw {
        console::restore_terminal();
    }
    result
}

/// A file removed when the run ends.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// How one boot ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Stop {
    /// The guest powered itself off.
    PoweredOff,
    /// Reset: boot again at once.
    Reset,
    /// The guest failed.
    Failed(String),
    /// Stopped from outside (API PowerOff, `vm.shutdown`).
    Stopped,
    /// Stopped by `vm.delete`: the VM is no longer created.
    Deleted,
    /// Stopped by `vmm.shutdown`: exit.
    Quit,
    /// A signal's grace period ran out.
    SignalTimeout,
}

/// What follows a boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// Boot again now.
    Boot,
    /// Boot again after [`RERUN_BACKOFF`].
    BootAfterFailure,
    /// Wait to be told to boot (Cloud Hypervisor's API).
    Standby,
    /// Exit with this code.
    Exit(ExitCode),
}

/// What follows a boot that ended with `stop` while `shutdown` was under way, under `policy`.
///
/// A reset always boots again (a guest-initiated reboot stays in the process). A power-off
/// boots again for `Always`, or to finish an API `Reboot`. A failure boots again for
/// `Always` and `RerunOnFailure`. A stop someone asked for (signal, API `Shutdown`,
/// `PowerOff`) is final.
///
/// Driven through Cloud Hypervisor's API (`ch`), `vmm` does what Cloud Hypervisor does in
/// Virtink's pod: `vm.shutdown` and `vm.delete` leave it waiting for the next `vm.boot`; a
/// power-off or failure ends the process, and Virtink's controller applies the runPolicy.
///
/// Once a signal has asked `vmm` to end, nothing boots again and nothing waits: a reset,
/// `vm.shutdown` or `vm.delete` that stops the guest in the meantime ends the process too.
fn after(stop: &Stop, shutdown: Option<Shutdown>, policy: RunPolicy, ch: bool) -> Next {
    let user_stop = matches!(shutdown, Some(Shutdown::Signal | Shutdown::Api));
    let policy = if ch { RunPolicy::Once } else { policy };
    let signalled = shutdown == Some(Shutdown::Signal);
    match stop {
        Stop::Reset | Stop::Stopped | Stop::Deleted | Stop::Quit if signalled => {
            Next::Exit(ExitCode::PoweredOff)
        }
        Stop::Reset => Next::Boot,
        Stop::Stopped | Stop::Deleted if ch => Next::Standby,
        Stop::Quit | Stop::Deleted => Next::Exit(ExitCode::PoweredOff),
        Stop::PoweredOff if shutdown == Some(Shutdown::Reboot) => Next::Boot,
        Stop::PoweredOff if policy == RunPolicy::Always && !user_stop => Next::Boot,
        Stop::PoweredOff | Stop::Stopped => Next::Exit(ExitCode::PoweredOff),
        Stop::SignalTimeout => Next::Exit(ExitCode::StoppedBySignal),
        Stop::Failed(_) => {
            let rerun = matches!(policy, RunPolicy::Always | RunPolicy::RerunOnFailure);
            if rerun && !user_stop {
                Next::BootAfterFailure
            } else {
                Next::Exit(ExitCode::GuestFailed)
            }
        }
    }
}

/// How standby ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leave {
    /// Boot the guest.
    Boot,
    /// Exit with this code.
    Exit(ExitCode),
}

/// Why a shutdown is under way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shutdown {
    /// SIGTERM/SIGINT: exit 4 when the grace period runs out.
    Signal,
    /// API Shutdown: wait for the guest as long as it takes.
    Api,
    /// API Reboot: boot again after power-off, reset when the grace period runs out.
    Reboot,
}

struct Runner<'a> {
    opts: &'a RunOptions,
    prepared: &'a Prepared,
    kvm: &'a Kvm,
    console: ConsoleOutput,
    signals: SignalFd,
    api: Option<ApiServer>,
    /// Cloud Hypervisor's API and the VM as it sees it.
    ch_api: Option<ApiServer>,
    ch: Option<ChVm>,
    /// Where the answer to the call that boots the VM goes once it has booted (or failed to).
    pending_boot: Option<std::sync::mpsc::Sender<ApiAnswer>>,
    markers: Markers,
    stdin: console::StdinInput,
    network: &'a crate::network::HostNetwork,
    disks: &'a [crate::disk::HostDisk],
}

/// The per-boot state of the event loop.
struct BootState {
    shutdown: Option<Shutdown>,
    deadline: Option<Instant>,
    paused: bool,
}

/// What wakes the main loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wake {
    /// Console input.
    Stdin,
    /// The UART has room for input again.
    SerialReady,
    /// SIGTERM or SIGINT.
    Signal,
    /// A request on `--api-socket`.
    Api,
    /// A request on `--ch-api-socket`.
    ChApi,
    /// The guest asked for a reset.
    Reset,
    /// The guest powered off through ACPI.
    PowerOff,
    /// A vCPU stopped.
    Vcpu,
}

const WAKES: [Wake; 8] = [
    Wake::Stdin,
    Wake::SerialReady,
    Wake::Signal,
    Wake::Api,
    Wake::ChApi,
    Wake::Reset,
    Wake::PowerOff,
    Wake::Vcpu,
];

impl Token for Wake {
    fn encode(self) -> u64 {
        self as u64
    }
    fn decode(data: u64) -> Option<Self> {
        WAKES.into_iter().find(|w| *w as u64 == data)
    }
}

/// Delay before booting again after a failure, so a guest that fails at once does not spin.
const RERUN_BACKOFF: Duration = Duration::from_secs(1);

impl Runner<'_> {
    fn lifecycle(&mut self) -> Result<ExitCode, RunError> {
        let policy = self.prepared.config.run_policy;
        let mut boots = 0u64;
        let mut standby = self.ch.is_some() || policy == RunPolicy::Manual;
        loop {
            if standby {
                if let Leave::Exit(code) = self.standby()? {
                    return Ok(code);
                }
                standby = false;
            }
            boots += 1;
            log::info!("booting the guest (boot {boots})");
            let booted = self.boot_once(boots);
            if let Some(answer) = self.pending_boot.take() {
                // It did not boot (boot_once answers as soon as the vCPUs run).
                let why = match &booted {
                    Ok((stop, _)) => format!("the VM did not boot: {stop:?}"),
                    Err(e) => error_chain(e),
                };
                let _ = answer.send(ApiAnswer::text(500, &why));
            }
            let (stop, shutdown) = booted?;
            match &stop {
                Stop::PoweredOff => log::info!("the guest powered off"),
                Stop::Failed(why) => log::error!("the guest failed: {why}"),
                Stop::SignalTimeout => log::warn!(
                    "the guest did not power off within {:?}; stopped it",
                    self.opts.shutdown_timeout
                ),
                Stop::Reset | Stop::Stopped | Stop::Deleted | Stop::Quit => {}
            }
            match after(&stop, shutdown, policy, self.ch.is_some()) {
                Next::Boot => {}
                Next::BootAfterFailure => std::thread::sleep(RERUN_BACKOFF),
                Next::Standby => standby = true,
                Next::Exit(code) => return Ok(code),
            }
        }
    }

    /// The API server that woke the loop.
    fn server(&self, wake: Wake) -> Option<&ApiServer> {
        match wake {
            Wake::Api => self.api.as_ref(),
            Wake::ChApi => self.ch_api.as_ref(),
            _ => None,
        }
    }

    /// Waits, with no guest running, until an API call boots it or `vmm` is to exit (a
    /// signal, `vmm.shutdown`).
    fn standby(&mut self) -> Result<Leave, RunError> {
        let poller = Poller::new().map_err(os_err("epoll"))?;
        let add = |fd: RawFd, wake: Wake| poller.add_readable(fd, wake).map_err(os_err("epoll"));
        add(self.signals.as_raw_fd(), Wake::Signal)?;
        for wake in [Wake::Api, Wake::ChApi] {
            if let Some(server) = self.server(wake) {
                add(server.wakeup.as_raw_fd(), wake)?;
            }
        }
        loop {
            let fired = poller.wait(None).map_err(os_err("epoll_wait"))?;
            for (wake, _) in fired.iter() {
                if wake == Wake::Signal {
                    let signo = self.signals.read();
                    log::info!("received {} with no guest running", signals::name(signo));
                    return Ok(Leave::Exit(ExitCode::PoweredOff));
                }
                if let Some(server) = self.server(wake) {
                    let _ = server.wakeup.read();
                }
                while let Some(req) = self.server(wake).and_then(|s| s.requests.try_recv().ok()) {
                    let (answer, leave) = self.standby_command(&req.command);
                    match leave {
                        // Answered once the vCPUs run, or with why they do not.
                        Some(Leave::Boot) => self.pending_boot = Some(req.answer),
                        _ => {
                            let _ = req.answer.send(answer);
                        }
                    }
                    if let Some(leave) = leave {
                        // Calls behind this one are answered by the loop that follows.
                        if let Some(server) = self.server(wake) {
                            let _ = server.wakeup.write(1);
                        }
                        return Ok(leave);
                    }
                }
            }
        }
    }

    /// Answers a call with no guest running, and says whether standby ends.
    fn standby_command(&mut self, command: &ApiCommand) -> (ApiAnswer, Option<Leave>) {
        match command {
            ApiCommand::Info => (ApiAnswer::json(self.info(None)), None),
            // In the pod, PowerOn is vm.boot: the VM must have been created.
            ApiCommand::Power(PowerAction::PowerOn) if self.ch.is_some() => {
                self.standby_command(&ApiCommand::Ch(ch::Call::Boot))
            }
            ApiCommand::Power(PowerAction::PowerOn) => {
                log::info!("API: PowerOn");
                (ApiAnswer::done(), Some(Leave::Boot))
            }
            ApiCommand::Power(_) => (ApiAnswer::conflict("the VM is not running"), None),
            ApiCommand::Ch(call) => {
                let Some(ch) = &mut self.ch else {
                    return (no_ch_api(), None);
                };
                let (answer, effect) = ch.answer(call, ch::Running::No);
                if !matches!(call, ch::Call::Info | ch::Call::Ping) {
                    log::info!("API: {call:?}: {}", answer.status);
                }
                match effect {
                    Effect::Boot => (answer, Some(Leave::Boot)),
                    Effect::Exit => (answer, Some(Leave::Exit(ExitCode::PoweredOff))),
                    _ => (answer, None),
                }
            }
        }
    }

    /// Builds and runs one boot; returns how it ended and what shutdown was under way.
    fn boot_once(&mut self, boot: u64) -> Result<(Stop, Option<Shutdown>), RunError> {
        let cfg = &self.prepared.config;
        let (kernel, cmdline, _extracted) = match &self.prepared.kernel {
            Some(files) => (
                files.clone(),
                cfg.kernel
                    .as_ref()
                    .map(|k| k.cmdline.clone())
                    .unwrap_or_default(),
                None,
            ),
            None => match self.image_kernel() {
                Ok((choice, extracted)) => (extracted.files(), choice.cmdline, Some(extracted)),
                // The guest changed its disk since the first boot: its failure.
                Err(e) if boot > 1 => {
                    return Ok((Stop::Failed(error_chain(&e)), None));
                }
                Err(e) => return Err(e),
            },
        };
        let mut vm = Vm::build(BootContext {
            kvm: self.kvm,
            config: &self.prepared.config,
            kernel: &kernel,
            cmdline: &cmdline,
            console: self.console.writer(),
            process_start: self.opts.process_start,
            markers: self.markers.clone(),
            nics: &self.network.nics,
            vfs: &self.network.vfs,
            disks: self.disks,
        })?;
        let poller = Poller::new().map_err(os_err("epoll"))?;
        let add = |fd: RawFd, wake: Wake| poller.add_readable(fd, wake).map_err(os_err("epoll"));
        add(self.signals.as_raw_fd(), Wake::Signal)?;
        add(
            vm.events().serial_input_ready.as_raw_fd(),
            Wake::SerialReady,
        )?;
        add(vm.events().reset.as_raw_fd(), Wake::Reset)?;
        add(vm.events().power_off.as_raw_fd(), Wake::PowerOff)?;
        add(vm.events().vcpu.as_raw_fd(), Wake::Vcpu)?;
        for wake in [Wake::Api, Wake::ChApi] {
            if let Some(server) = self.server(wake) {
                add(server.wakeup.as_raw_fd(), wake)?;
            }
        }
        let mut state = BootState {
            shutdown: None,
            deadline: None,
            paused: false,
        };
        self.stdin.start(&poller, Wake::Stdin);
        vm.start()?;
        crate::memory::drop_code_pages();
        if let Some(answer) = self.pending_boot.take() {
            let _ = answer.send(ApiAnswer::done());
        }
        let stop = self.event_loop(&poller, &vm, &mut state);
        vm.stop();
        Ok((stop, state.shutdown))
    }

    /// The first disk's kernel and initrd, found and written out for this boot.
    fn image_kernel(
        &self,
    ) -> Result<(crate::imageboot::BootChoice, crate::imageboot::Extracted), RunError> {
        let disk = self.disks.first().ok_or_else(|| {
            RunError::Unsupported("spec.instance: no kernel and no disk to boot from".into())
        })?;
        let choice = crate::imageboot::find(disk.backend.clone()).map_err(RunError::ImageBoot)?;
        let extracted =
            crate::imageboot::extract(disk.backend.clone(), &choice, &crate::disk::temp_dir())
                .map_err(RunError::ImageBoot)?;
        log::info!(
            "boot entry {:?} from {}: cmdline {:?}",
            choice.entry,
            choice.config,
            choice.cmdline
        );
        Ok((choice, extracted))
    }

    fn event_loop(&mut self, poller: &Poller<Wake>, vm: &Vm, state: &mut BootState) -> Stop {
        loop {
            let timeout = state
                .deadline
                .map(|d| d.saturating_duration_since(Instant::now()));
            let fired = match poller.wait(timeout) {
                Ok(fired) => fired,
                Err(e) => return Stop::Failed(format!("epoll_wait: {e}")),
            };
            if fired.is_empty() && state.deadline.is_some_and(|d| Instant::now() >= d) {
                return match state.shutdown {
                    Some(Shutdown::Reboot) => {
                        log::warn!("the guest did not power off for the reboot; resetting it");
                        Stop::Reset
                    }
                    _ => Stop::SignalTimeout,
                };
            }
            for (wake, _) in fired.iter() {
                if let Some(stop) = self.handle(wake, poller, vm, state) {
                    return stop;
                }
            }
        }
    }

    fn handle(
        &mut self,
        wake: Wake,
        poller: &Poller<Wake>,
        vm: &Vm,
        state: &mut BootState,
    ) -> Option<Stop> {
        let drain = |evt: &vmm_sys_util::eventfd::EventFd| {
            let _ = evt.read();
        };
        match wake {
            Wake::Stdin => self.stdin.forward(poller, Wake::Stdin, vm.serial()),
            Wake::SerialReady => {
                drain(&vm.events().serial_input_ready);
                self.stdin.watch(poller, Wake::Stdin, true);
            }
            Wake::Signal => {
                let signo = self.signals.read();
                log::info!(
                    "received {}; pressing the power button",
                    signals::name(signo)
                );
                self.begin_shutdown(vm, state, Shutdown::Signal);
            }
            Wake::Api | Wake::ChApi => {
                drain(&self.server(wake)?.wakeup);
                while let Some(req) = self.server(wake).and_then(|s| s.requests.try_recv().ok()) {
                    let (answer, stop) = self.api_command(req.command, vm, state);
                    let _ = req.answer.send(answer);
                    if stop.is_some() {
                        // Calls behind this one are answered once the guest has stopped.
                        let _ = self.server(wake)?.wakeup.write(1);
                        return stop;
                    }
                }
            }
            Wake::Reset => {
                drain(&vm.events().reset);
                log::info!("the guest asked for a reset");
                return Some(Stop::Reset);
            }
            Wake::PowerOff => {
                drain(&vm.events().power_off);
                return Some(Stop::PoweredOff);
            }
            Wake::Vcpu => {
                drain(&vm.events().vcpu);
                if let Some(event) = vm.next_vcpu_event() {
                    return Some(match event {
                        VcpuEvent::Failed(why) => Stop::Failed(why),
                        VcpuEvent::PowerOff => Stop::PoweredOff,
                        VcpuEvent::Reset => Stop::Reset,
                    });
                }
            }
        }
        None
    }

    fn begin_shutdown(&self, vm: &Vm, state: &mut BootState, why: Shutdown) {
        if state.paused {
            vm.resume();
            state.paused = false;
        }
        let listening = vm.press_power_button();
        if !listening {
            log::warn!("the guest has not enabled the ACPI power button (no ACPI button driver?)");
        }
        // A signal during an API shutdown still gets its grace period.
        if state.shutdown != Some(Shutdown::Signal) {
            state.shutdown = Some(why);
        }
        if why != Shutdown::Api && state.deadline.is_none() {
            state.deadline = Some(Instant::now() + self.opts.shutdown_timeout);
        }
    }

    fn api_command(
        &mut self,
        command: ApiCommand,
        vm: &Vm,
        state: &mut BootState,
    ) -> (ApiAnswer, Option<Stop>) {
        let action = match command {
            ApiCommand::Info => return (ApiAnswer::json(self.info(Some((vm, state)))), None),
            ApiCommand::Power(action) => action,
            ApiCommand::Ch(call) => return self.ch_call(&call, vm, state),
        };
        log::info!("API: {action:?}");
        match action {
            PowerAction::PowerOff => (ApiAnswer::done(), Some(Stop::Stopped)),
            PowerAction::Reset => (ApiAnswer::done(), Some(Stop::Reset)),
            PowerAction::Shutdown => {
                self.begin_shutdown(vm, state, Shutdown::Api);
                (ApiAnswer::done(), None)
            }
            PowerAction::Reboot => {
                self.begin_shutdown(vm, state, Shutdown::Reboot);
                (ApiAnswer::done(), None)
            }
            PowerAction::Pause if state.paused => {
                (ApiAnswer::conflict("the VM is already paused"), None)
            }
            PowerAction::Pause => {
                pause(vm, state);
                (ApiAnswer::done(), None)
            }
            PowerAction::Resume if !state.paused => {
                (ApiAnswer::conflict("the VM is not paused"), None)
            }
            PowerAction::Resume => {
                vm.resume();
                state.paused = false;
                (ApiAnswer::done(), None)
            }
            PowerAction::PowerOn => (ApiAnswer::conflict("the VM is already running"), None),
        }
    }

    /// A Cloud Hypervisor call while the guest runs.
    fn ch_call(
        &mut self,
        call: &ch::Call,
        vm: &Vm,
        state: &mut BootState,
    ) -> (ApiAnswer, Option<Stop>) {
        let Some(ch) = &mut self.ch else {
            return (no_ch_api(), None);
        };
        let running = if state.paused {
            ch::Running::Paused
        } else {
            ch::Running::Yes
        };
        let (answer, effect) = ch.answer(call, running);
        if !matches!(call, ch::Call::Info | ch::Call::Ping) {
            log::info!("API: {call:?}: {}", answer.status);
        }
        let stop = match effect {
            Effect::None | Effect::Boot => None,
            Effect::Stop => Some(Stop::Stopped),
            Effect::Delete => Some(Stop::Deleted),
            Effect::Exit => Some(Stop::Quit),
            Effect::Reset => Some(Stop::Reset),
            Effect::PowerButton => {
                self.begin_shutdown(vm, state, Shutdown::Api);
                None
            }
            Effect::Pause => {
                pause(vm, state);
                None
            }
            Effect::Resume => {
                vm.resume();
                state.paused = false;
                None
            }
        };
        (answer, stop)
    }

    /// `vmm`'s own `info`: of the running guest, or with `None`, of a VM not running.
    fn info(&self, running: Option<(&Vm, &BootState)>) -> String {
        let cfg = &self.prepared.config;
        let run_state = match running.map(|(_, s)| (s.paused, s.shutdown)) {
            None if self.ch.as_ref().is_some_and(|c| !c.created()) => "NotCreated",
            None => "Stopped",
            Some((true, _)) => "Paused",
            Some((false, Some(Shutdown::Reboot))) => "Rebooting",
            Some((false, Some(_))) => "ShuttingDown",
            Some((false, None)) => "Running",
        };
        let boot_markers = self
            .markers
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
            .iter()
            .map(|m| crate::api::MarkerInfo {
                value: m.value,
                ms_since_start: m.since_start.as_secs_f64() * 1000.0,
            })
            .collect();
        let info = crate::api::VmInfo {
            name: cfg.name.clone(),
            state: run_state,
            uptime_ms: running.map_or(0, |(vm, _)| {
                u64::try_from(vm.uptime().as_millis()).unwrap_or(u64::MAX)
            }),
            vcpus: cfg.topology.vcpus(),
            sockets: cfg.topology.sockets,
            cores_per_socket: cfg.topology.cores_per_socket,
            memory_bytes: cfg.memory_bytes,
            interfaces: self.network.report(cfg),
            disks: self.disks.iter().map(crate::disk::report).collect(),
            boot_markers,
        };
        serde_json::to_string(&info).unwrap_or_default()
    }
}

/// Stops the vCPUs.
fn pause(vm: &Vm, state: &mut BootState) {
    if !vm.pause() {
        log::warn!("not every vCPU parked within a second");
    }
    state.paused = true;
}

/// The answer to a Cloud Hypervisor call when `vmm` does not serve that API.
fn no_ch_api() -> ApiAnswer {
    ApiAnswer::text(
        404,
        "vmm serves Cloud Hypervisor's API only with --ch-api-socket (in Virtink's pod)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_follows_a_boot() {
        use RunPolicy::{Always, Manual, Once, RerunOnFailure};
        let failed = Stop::Failed("triple fault".into());
        let exit = Next::Exit;
        let cases: &[(Stop, Option<Shutdown>, RunPolicy, Next)] = &[
            (Stop::Reset, None, Once, Next::Boot),
            (
                Stop::Reset,
                Some(Shutdown::Signal),
                Once,
                exit(ExitCode::PoweredOff),
            ),
            (Stop::PoweredOff, None, Once, exit(ExitCode::PoweredOff)),
            (Stop::PoweredOff, None, Manual, exit(ExitCode::PoweredOff)),
            (
                Stop::PoweredOff,
                None,
                RerunOnFailure,
                exit(ExitCode::PoweredOff),
            ),
            (Stop::PoweredOff, None, Always, Next::Boot),
            (
                Stop::PoweredOff,
                Some(Shutdown::Signal),
                Always,
                exit(ExitCode::PoweredOff),
            ),
            (
                Stop::PoweredOff,
                Some(Shutdown::Api),
                Always,
                exit(ExitCode::PoweredOff),
            ),
            (Stop::PoweredOff, Some(Shutdown::Reboot), Once, Next::Boot),
            (Stop::Stopped, None, Always, exit(ExitCode::PoweredOff)),
            (
                Stop::SignalTimeout,
                Some(Shutdown::Signal),
                Always,
                exit(ExitCode::StoppedBySignal),
            ),
            (failed.clone(), None, Once, exit(ExitCode::GuestFailed)),
            (failed.clone(), None, RerunOnFailure, Next::BootAfterFailure),
            (failed.clone(), None, Always, Next::BootAfterFailure),
            (
                failed.clone(),
                Some(Shutdown::Signal),
                Always,
                exit(ExitCode::GuestFailed),
            ),
        ];
        for (stop, shutdown, policy, want) in cases {
            assert_eq!(
                after(stop, *shutdown, *policy, false),
                *want,
                "{stop:?} {shutdown:?} {policy:?}"
            );
        }
    }

    #[test]
    fn in_virtinks_pod_the_controller_applies_the_run_policy() {
        use RunPolicy::{Always, RerunOnFailure};
        let cases: &[(Stop, Option<Shutdown>, RunPolicy, Next)] = &[
            // A power-off ends the pod (Succeeded), whatever the policy: the controller
            // makes a new pod for Always.
            (
                Stop::PoweredOff,
                None,
                Always,
                Next::Exit(ExitCode::PoweredOff),
            ),
            (
                Stop::PoweredOff,
                Some(Shutdown::Api),
                Always,
                Next::Exit(ExitCode::PoweredOff),
            ),
            // A failure ends it (Failed), and the controller reruns it.
            (
                Stop::Failed("triple fault".into()),
                None,
                RerunOnFailure,
                Next::Exit(ExitCode::GuestFailed),
            ),
            // vm.shutdown and vm.delete wait for the next vm.boot; vmm.shutdown exits.
            (Stop::Stopped, None, Always, Next::Standby),
            (Stop::Deleted, None, Always, Next::Standby),
            (Stop::Quit, None, Always, Next::Exit(ExitCode::PoweredOff)),
            // vm.reboot and a guest reset stay in the process.
            (Stop::Reset, None, Always, Next::Boot),
            // After SIGTERM (the pod deleted), a stop by the API or a reset ends vmm: the
            // signal was read, nothing would end a standby.
            (
                Stop::Stopped,
                Some(Shutdown::Signal),
                Always,
                Next::Exit(ExitCode::PoweredOff),
            ),
            (
                Stop::Deleted,
                Some(Shutdown::Signal),
                Always,
                Next::Exit(ExitCode::PoweredOff),
            ),
            (
                Stop::Reset,
                Some(Shutdown::Signal),
                Always,
                Next::Exit(ExitCode::PoweredOff),
            ),
        ];
        for (stop, shutdown, policy, want) in cases {
            assert_eq!(
                after(stop, *shutdown, *policy, true),
                *want,
                "{stop:?} {shutdown:?} {policy:?}"
            );
        }
    }

    #[test]
    fn exit_codes_are_the_documented_numbers() {
        assert_eq!(ExitCode::PoweredOff as u8, 0);
        assert_eq!(ExitCode::InvalidManifest as u8, 1);
        assert_eq!(ExitCode::HostCannotRun as u8, 2);
        assert_eq!(ExitCode::GuestFailed as u8, 3);
        assert_eq!(ExitCode::StoppedBySignal as u8, 4);
    }
}
