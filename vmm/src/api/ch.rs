//! The part of Cloud Hypervisor's HTTP API that Virtink's virt-daemon drives a VM pod with.
//!
//! In Virtink's pod, Cloud Hypervisor starts with no VM and waits; the pre-runner writes
//! `vm-config.json` beside the API socket; virt-daemon reads that file, sends it back with
//! `vm.create`, then `vm.boot`, and from then on polls `vm.info` and turns the VM's
//! `powerAction`s into calls. `vmm` plays both parts: it writes the file from the
//! VirtualMachine it was given, checks that what `vm.create` sends is that same VM, and boots
//! its own plan of it. The state machine ([`ChVm`]) is Cloud Hypervisor's, as Virtink sees it:
//!
//! ```text
//!   not created ──vm.create──▶ Created ──vm.boot──▶ Running ◀──vm.resume── Paused
//!        ▲                        ▲  ◀──vm.shutdown───┘  └───vm.pause──▶───┘
//!        └────────vm.delete───────┴───────────────────────────────────────────┘
//! ```
//!
//! A guest that powers off ends the process with 0, as Cloud Hypervisor does: the pod
//! succeeds, and Virtink's controller applies the runPolicy by making a new pod. Errors are
//! Cloud Hypervisor v42's (the version Virtink ships): a plain-text reason, 500 for a call the
//! VM's state refuses; virt-daemon matches the text `VM is not created`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::ApiAnswer;

/// Where the calls live: `PUT /api/v1/vm.boot`.
pub const PATH_PREFIX: &str = "/api/v1/";

/// The answer to a call on a VM that was never created (virt-daemon looks for this text).
pub const NOT_CREATED: &str = "VM is not created";
const ALREADY_CREATED: &str = "VM is already created";
const CONFIG_MISSING: &str = "VM config is missing";
const NOT_RUNNING: &str = "VM is not running";

/// A call `vmm` serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// `GET vmm.ping`.
    Ping,
    /// `GET vm.info`.
    Info,
    /// `PUT vm.create` with the configuration (JSON text).
    Create(String),
    /// `PUT vm.boot`.
    Boot,
    /// `PUT vm.shutdown`: stop the guest at once; the VM stays created.
    Shutdown,
    /// `PUT vm.power-button`.
    PowerButton,
    /// `PUT vm.reboot`: a hard reset.
    Reboot,
    /// `PUT vm.pause`.
    Pause,
    /// `PUT vm.resume`.
    Resume,
    /// `PUT vm.delete`: stop the guest if it runs and forget the configuration.
    Delete,
    /// `PUT vmm.shutdown`: delete the VM and exit.
    VmmShutdown,
}

/// The calls that take no body, by name.
const BODYLESS_PUTS: [(&str, Call); 8] = [
    ("vm.boot", Call::Boot),
    ("vm.shutdown", Call::Shutdown),
    ("vm.power-button", Call::PowerButton),
    ("vm.reboot", Call::Reboot),
    ("vm.pause", Call::Pause),
    ("vm.resume", Call::Resume),
    ("vm.delete", Call::Delete),
    ("vmm.shutdown", Call::VmmShutdown),
];

/// Cloud Hypervisor calls `vmm` does not serve, and why.
const UNSUPPORTED: &[(&str, &str)] = &[
    ("vm.add-device", "hotplugging devices"),
    ("vm.add-disk", "hotplugging disks"),
    ("vm.add-fs", "hotplugging file systems"),
    ("vm.add-net", "hotplugging network devices"),
    ("vm.add-pmem", "hotplugging persistent memory"),
    ("vm.add-user-device", "hotplugging devices"),
    ("vm.add-vdpa", "hotplugging vDPA devices"),
    ("vm.add-vsock", "hotplugging vsock devices"),
    ("vm.remove-device", "unplugging devices"),
    ("vm.resize", "resizing the VM"),
    ("vm.resize-zone", "resizing memory zones"),
    ("vm.snapshot", "snapshots"),
    ("vm.restore", "restoring snapshots"),
    ("vm.coredump", "guest core dumps"),
    ("vm.send-migration", "live migration"),
    ("vm.receive-migration", "live migration"),
    (
        "vm.counters",
        "device counters (see vmm's own GET /v1/vm/info)",
    ),
    ("vm.nmi", "injecting an NMI"),
];

/// Maps `METHOD /api/v1/<name>` to a call, or to Cloud Hypervisor's answer when it is wrong.
pub fn route(method: &str, name: &str, body: Option<&[u8]>) -> Result<Call, ApiAnswer> {
    let bad_request = || ApiAnswer::text(400, "Bad Request");
    match name {
        "vmm.ping" | "vm.info" if method != "GET" => Err(bad_request()),
        "vmm.ping" => Ok(Call::Ping),
        "vm.info" => Ok(Call::Info),
        "vm.create" if method != "PUT" => Err(bad_request()),
        "vm.create" => match body.map(std::str::from_utf8) {
            Some(Ok(text)) => Ok(Call::Create(text.to_string())),
            Some(Err(_)) => Err(ApiAnswer::text(400, "the VM config is not UTF-8 text")),
            None => Err(ApiAnswer::text(
                400,
                "vm.create needs the VM config as its body",
            )),
        },
        _ => {
            if let Some((_, call)) = BODYLESS_PUTS.iter().find(|(n, _)| *n == name) {
                return if method != "PUT" || body.is_some() {
                    Err(bad_request())
                } else {
                    Ok(call.clone())
                };
            }
            if let Some((_, what)) = UNSUPPORTED.iter().find(|(n, _)| *n == name) {
                return Err(ApiAnswer::text(
                    501,
                    &format!("{name}: vmm does not support {what}"),
                ));
            }
            Err(ApiAnswer::text(
                404,
                &format!("{name}: not a Cloud Hypervisor API call vmm serves"),
            ))
        }
    }
}

/// A Cloud Hypervisor VM configuration: the fields `vmm` writes and checks, and the rest of
/// what a client sends, kept as it came.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VmConfig {
    /// vCPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<Cpus>,
    /// Guest RAM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Memory>,
    /// What boots (`null` reads as empty: Go's client sends a nil pointer so).
    #[serde(default, deserialize_with = "null_as_default")]
    pub payload: Payload,
    /// Disks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<Disk>,
    /// virtio-net devices.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub net: Vec<Net>,
    /// Passed-through PCI devices.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<Device>,
    /// The virtio console.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console: Option<Console>,
    /// The serial port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<Console>,
    /// Everything else, unchecked.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// `cpus`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Cpus {
    /// vCPUs at boot.
    #[serde(default)]
    pub boot_vcpus: u32,
    /// vCPUs at most.
    #[serde(default)]
    pub max_vcpus: u32,
    /// How they are arranged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology: Option<Topology>,
    /// Everything else, unchecked.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// `cpus.topology`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Topology {
    /// Threads in a core.
    #[serde(default)]
    pub threads_per_core: u32,
    /// Cores in a die.
    #[serde(default)]
    pub cores_per_die: u32,
    /// Dies in a package.
    #[serde(default)]
    pub dies_per_package: u32,
    /// Packages (sockets).
    #[serde(default)]
    pub packages: u32,
}

/// `memory`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Memory {
    /// Bytes.
    #[serde(default)]
    pub size: u64,
    /// Backed by huge pages.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hugepages: bool,
    /// Everything else, unchecked.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// `payload`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Payload {
    /// The kernel file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    /// Its command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    /// Firmware.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<String>,
    /// An initramfs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initramfs: Option<String>,
}

/// A `disks` entry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Disk {
    /// The disk's name (virt-daemon unplugs a disk whose id is not a volume's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The file or block device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The guest may only read.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub readonly: bool,
    /// Everything else, unchecked.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// A `net` entry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Net {
    /// The interface's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The guest's MAC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// The guest's MTU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
    /// The TAP, where there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tap: Option<String>,
    /// Everything else, unchecked.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// A `devices` entry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Device {
    /// The interface's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `/sys/bus/pci/devices/<address>`.
    #[serde(default)]
    pub path: String,
    /// Everything else, unchecked.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// `console` and `serial`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Console {
    /// `Off`, `Pty`, `Tty`, `File`, `Socket` or `Null`.
    #[serde(default)]
    pub mode: String,
    /// Everything else, unchecked.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// Where the VM stands, as the calls see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Running {
    /// Not booted.
    No,
    /// Booted, vCPUs running.
    Yes,
    /// Booted, vCPUs paused.
    Paused,
}

/// What the event loop does after answering a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Nothing.
    None,
    /// Boot the VM.
    Boot,
    /// Stop the guest; the VM stays created.
    Stop,
    /// Stop the guest if it runs; the VM is no longer created.
    Delete,
    /// Stop the guest if it runs and exit 0.
    Exit,
    /// Press the ACPI power button.
    PowerButton,
    /// Hard reset.
    Reset,
    /// Stop the vCPUs.
    Pause,
    /// Run them again.
    Resume,
}

/// The VM as Cloud Hypervisor's API sees it: the configuration `vmm` stands for, and the one
/// `vm.create` gave (as it came, for `vm.info`).
#[derive(Debug, Clone)]
pub struct ChVm {
    want: VmConfig,
    created: Option<Value>,
    memory: u64,
}

impl ChVm {
    /// A VM not created yet, that `vm.create` must describe as `want`.
    pub fn new(want: VmConfig) -> Self {
        let memory = want.memory.as_ref().map_or(0, |m| m.size);
        Self {
            want,
            created: None,
            memory,
        }
    }

    /// What `vmm` writes to `vm-config.json`.
    pub fn config(&self) -> &VmConfig {
        &self.want
    }

    /// Whether `vm.create` was called (and `vm.delete` not since).
    pub fn created(&self) -> bool {
        self.created.is_some()
    }

    /// Answers `call` with the VM in state `running`, and says what must happen.
    pub fn answer(&mut self, call: &Call, running: Running) -> (ApiAnswer, Effect) {
        let fail = |why: &str| (ApiAnswer::text(500, why), Effect::None);
        let done = |effect| (ApiAnswer::done(), effect);
        let booted = running != Running::No;
        match call {
            Call::Ping => (ApiAnswer::json(ping()), Effect::None),
            Call::Info => match &self.created {
                None => fail(NOT_CREATED),
                Some(config) => {
                    let state = match running {
                        Running::No => "Created",
                        Running::Yes => "Running",
                        Running::Paused => "Paused",
                    };
                    (
                        ApiAnswer::json(info(config, state, self.memory)),
                        Effect::None,
                    )
                }
            },
            Call::Create(_) if self.created.is_some() => fail(ALREADY_CREATED),
            Call::Create(text) => match self.check(text) {
                Ok(config) => {
                    self.created = Some(config);
                    done(Effect::None)
                }
                Err(why) => (ApiAnswer::text(400, &why), Effect::None),
            },
            Call::Boot if self.created.is_none() => fail(CONFIG_MISSING),
            Call::Boot => match running {
                Running::No => done(Effect::Boot),
                Running::Paused => done(Effect::Resume),
                Running::Yes => fail("invalid VM state transition: Running to Running"),
            },
            Call::Shutdown | Call::PowerButton | Call::Pause | Call::Resume if !booted => {
                fail(NOT_RUNNING)
            }
            Call::Reboot if !booted => fail(NOT_CREATED),
            Call::Shutdown => done(Effect::Stop),
            Call::PowerButton => done(Effect::PowerButton),
            Call::Reboot => done(Effect::Reset),
            Call::Pause if running == Running::Paused => {
                fail("Cannot pause VM: Invalid transition: InvalidStateTransition(Paused, Paused)")
            }
            Call::Pause => done(Effect::Pause),
            Call::Resume if running == Running::Yes => fail(
                "Cannot resume VM: Invalid transition: InvalidStateTransition(Running, Running)",
            ),
            Call::Resume => done(Effect::Resume),
            Call::Delete => {
                self.created = None;
                done(if booted { Effect::Delete } else { Effect::None })
            }
            Call::VmmShutdown => {
                self.created = None;
                // Cloud Hypervisor answers 200 with no body here.
                (ApiAnswer::text(200, ""), Effect::Exit)
            }
        }
    }

    /// The configuration in `text` if it describes the VM `vmm` stands for; else every
    /// difference, one per line.
    fn check(&self, text: &str) -> Result<Value, String> {
        let value: Value =
            serde_json::from_str(text).map_err(|e| format!("the VM config is not JSON: {e}"))?;
        let got: VmConfig = serde_json::from_value(value.clone())
            .map_err(|e| format!("the VM config cannot be read: {e}"))?;
        let problems = differences(&got, &self.want);
        if problems.is_empty() {
            Ok(value)
        } else {
            Err(format!(
                "vm.create: the config is not the VirtualMachine vmm runs (vmm boots only the \
                 VM it was started with, as it wrote it to vm-config.json):\n{}",
                problems.join("\n")
            ))
        }
    }
}

/// `vmm.ping`'s answer.
fn ping() -> String {
    serde_json::json!({
        "build_version": env!("CARGO_PKG_VERSION"),
        "version": concat!("vmm ", env!("CARGO_PKG_VERSION")),
        "pid": std::process::id(),
        "features": [],
    })
    .to_string()
}

/// `vm.info`'s answer.
fn info(config: &Value, state: &str, memory: u64) -> String {
    serde_json::json!({
        "config": config,
        "state": state,
        "memory_actual_size": memory,
    })
    .to_string()
}

/// Where `got` differs from `want` in what `vmm` decides from the manifest: one line each,
/// naming the field.
pub fn differences(got: &VmConfig, want: &VmConfig) -> Vec<String> {
    let mut out = Vec::new();
    let mut field = |name: String, got: String, want: String| {
        if got != want {
            out.push(format!("  {name}: the config has {got}, the VM {want}"));
        }
    };
    let cpus = |c: &VmConfig| c.cpus.clone().unwrap_or_default();
    let (gc, wc) = (cpus(got), cpus(want));
    field(
        "cpus.boot_vcpus".into(),
        gc.boot_vcpus.to_string(),
        wc.boot_vcpus.to_string(),
    );
    field(
        "cpus.max_vcpus".into(),
        gc.max_vcpus.to_string(),
        wc.max_vcpus.to_string(),
    );
    let (gt, wt) = (
        gc.topology.unwrap_or_default(),
        wc.topology.unwrap_or_default(),
    );
    field(
        "cpus.topology.packages".into(),
        gt.packages.to_string(),
        wt.packages.to_string(),
    );
    field(
        "cpus.topology.cores_per_die".into(),
        gt.cores_per_die.to_string(),
        wt.cores_per_die.to_string(),
    );
    let memory = |c: &VmConfig| c.memory.as_ref().map_or(0, |m| m.size);
    field(
        "memory.size".into(),
        memory(got).to_string(),
        memory(want).to_string(),
    );
    let hugepages = |c: &VmConfig| c.memory.as_ref().is_some_and(|m| m.hugepages);
    field(
        "memory.hugepages".into(),
        hugepages(got).to_string(),
        hugepages(want).to_string(),
    );
    let show = |s: &Option<String>| format!("{s:?}");
    field(
        "payload.kernel".into(),
        show(&got.payload.kernel),
        show(&want.payload.kernel),
    );
    field(
        "payload.cmdline".into(),
        show(&got.payload.cmdline),
        show(&want.payload.cmdline),
    );
    let count = |items: usize| match items {
        1 => "1 entry".to_string(),
        n => format!("{n} entries"),
    };
    field(
        "disks".into(),
        count(got.disks.len()),
        count(want.disks.len()),
    );
    for (i, (g, w)) in got.disks.iter().zip(&want.disks).enumerate() {
        field(format!("disks[{i}].id"), show(&g.id), show(&w.id));
        field(format!("disks[{i}].path"), show(&g.path), show(&w.path));
        field(
            format!("disks[{i}].readonly"),
            g.readonly.to_string(),
            w.readonly.to_string(),
        );
    }
    field("net".into(), count(got.net.len()), count(want.net.len()));
    for (i, (g, w)) in got.net.iter().zip(&want.net).enumerate() {
        field(format!("net[{i}].id"), show(&g.id), show(&w.id));
        let mac = |m: &Option<String>| show(&m.as_ref().map(|m| m.to_ascii_lowercase()));
        field(format!("net[{i}].mac"), mac(&g.mac), mac(&w.mac));
    }
    field(
        "devices".into(),
        count(got.devices.len()),
        count(want.devices.len()),
    );
    for (i, (g, w)) in got.devices.iter().zip(&want.devices).enumerate() {
        field(format!("devices[{i}].id"), show(&g.id), show(&w.id));
        field(format!("devices[{i}].path"), g.path.clone(), w.path.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn want() -> VmConfig {
        serde_json::from_str(
            r#"{"console":{"mode":"Pty"},"cpus":{"boot_vcpus":2,"max_vcpus":2,
            "topology":{"cores_per_die":2,"dies_per_package":1,"packages":1,"threads_per_core":1}},
            "disks":[{"direct":true,"id":"root","path":"/mnt/root/disk.raw"}],
            "memory":{"size":536870912},"net":[{"id":"pod","mac":"52:54:00:12:34:56","mtu":1500}],
            "payload":{"kernel":"/mnt/virtink-kernel/vmlinux","cmdline":"console=ttyS0"},
            "serial":{"mode":"Tty"}}"#,
        )
        .unwrap()
    }

    #[test]
    fn routes_the_calls_virt_daemon_makes() {
        assert_eq!(route("GET", "vm.info", None), Ok(Call::Info));
        assert_eq!(route("GET", "vmm.ping", None), Ok(Call::Ping));
        assert_eq!(route("PUT", "vm.boot", None), Ok(Call::Boot));
        assert_eq!(route("PUT", "vm.power-button", None), Ok(Call::PowerButton));
        assert_eq!(
            route("PUT", "vm.create", Some(b"{}")),
            Ok(Call::Create("{}".into()))
        );
        // Cloud Hypervisor's refusals.
        assert_eq!(route("PUT", "vm.info", None).unwrap_err().status, 400);
        assert_eq!(
            route("PUT", "vm.boot", Some(b"{}")).unwrap_err().status,
            400
        );
        assert_eq!(route("GET", "vm.boot", None).unwrap_err().status, 400);
        assert_eq!(route("PUT", "vm.create", None).unwrap_err().status, 400);
        assert_eq!(route("PUT", "vm.frobnicate", None).unwrap_err().status, 404);
        let hotplug = route("PUT", "vm.add-disk", Some(b"{}")).unwrap_err();
        assert_eq!(hotplug.status, 501);
        assert!(hotplug.body.contains("hotplugging disks"), "{hotplug:?}");
        let migrate = route("PUT", "vm.receive-migration", Some(b"{}")).unwrap_err();
        assert!(migrate.body.contains("live migration"), "{migrate:?}");
    }

    #[test]
    fn follows_virt_daemons_sequence() {
        let config = serde_json::to_string(&want()).unwrap();
        let mut vm = ChVm::new(want());
        let (a, e) = vm.answer(&Call::Info, Running::No);
        assert_eq!((a.status, e), (500, Effect::None));
        assert!(a.body.contains(NOT_CREATED), "{a:?}");
        assert_eq!(vm.answer(&Call::Boot, Running::No).0.body, CONFIG_MISSING);
        let (a, _) = vm.answer(&Call::Create(config.clone()), Running::No);
        assert_eq!(a.status, 204, "{a:?}");
        assert_eq!(
            vm.answer(&Call::Create(config), Running::No).0.body,
            ALREADY_CREATED
        );
        let (a, _) = vm.answer(&Call::Info, Running::No);
        let info: Value = serde_json::from_str(&a.body).unwrap();
        assert_eq!(info["state"], "Created");
        assert_eq!(info["config"]["disks"][0]["id"], "root");
        assert_eq!(info["memory_actual_size"], 536870912);
        assert_eq!(vm.answer(&Call::Boot, Running::No).1, Effect::Boot);
        let (a, _) = vm.answer(&Call::Info, Running::Yes);
        assert!(a.body.contains(r#""state":"Running""#), "{a:?}");
        assert_eq!(vm.answer(&Call::Boot, Running::Yes).0.status, 500);
        assert_eq!(vm.answer(&Call::Pause, Running::Yes).1, Effect::Pause);
        assert_eq!(vm.answer(&Call::Pause, Running::Paused).0.status, 500);
        assert_eq!(vm.answer(&Call::Boot, Running::Paused).1, Effect::Resume);
        assert_eq!(vm.answer(&Call::Resume, Running::Yes).0.status, 500);
        assert_eq!(vm.answer(&Call::Reboot, Running::Yes).1, Effect::Reset);
        assert_eq!(
            vm.answer(&Call::PowerButton, Running::Yes).1,
            Effect::PowerButton
        );
        assert_eq!(vm.answer(&Call::Shutdown, Running::Yes).1, Effect::Stop);
        assert_eq!(vm.answer(&Call::Shutdown, Running::No).0.body, NOT_RUNNING);
        assert_eq!(vm.answer(&Call::Reboot, Running::No).0.body, NOT_CREATED);
        assert_eq!(vm.answer(&Call::Delete, Running::Yes).1, Effect::Delete);
        assert!(!vm.created());
        assert_eq!(vm.answer(&Call::Info, Running::No).0.body, NOT_CREATED);
        let (a, e) = vm.answer(&Call::VmmShutdown, Running::No);
        assert_eq!((a.status, a.body.as_str(), e), (200, "", Effect::Exit));
        let (a, _) = vm.answer(&Call::Ping, Running::No);
        let ping: Value = serde_json::from_str(&a.body).unwrap();
        assert_eq!(ping["pid"], std::process::id());
    }

    #[test]
    fn create_refuses_another_vm_and_names_each_difference() {
        let mut vm = ChVm::new(want());
        let mut other = want();
        other.cpus.as_mut().unwrap().boot_vcpus = 4;
        other.disks[0].path = Some("/elsewhere.img".into());
        other.net[0].mac = Some("52:54:00:12:34:57".into());
        let (a, _) = vm.answer(
            &Call::Create(serde_json::to_string(&other).unwrap()),
            Running::No,
        );
        assert_eq!(a.status, 400);
        assert!(
            a.body
                .contains("cpus.boot_vcpus: the config has 4, the VM 2"),
            "{}",
            a.body
        );
        assert!(a.body.contains("disks[0].path"), "{}", a.body);
        assert!(a.body.contains("net[0].mac"), "{}", a.body);
        let mut fewer = want();
        fewer.disks.clear();
        let (a, _) = vm.answer(
            &Call::Create(serde_json::to_string(&fewer).unwrap()),
            Running::No,
        );
        assert!(
            a.body
                .contains("disks: the config has 0 entries, the VM 1 entry"),
            "{}",
            a.body
        );
        assert!(!vm.created());
        for bad in ["not json", r#"{"cpus":"x"}"#] {
            let (a, _) = vm.answer(&Call::Create(bad.into()), Running::No);
            assert_eq!(a.status, 400, "{bad}");
        }
        // A MAC in capitals is the same MAC; fields vmm does not check may differ.
        let mut same = want();
        same.net[0].mac = Some("52:54:00:12:34:56".to_uppercase());
        same.other
            .insert("rng".into(), serde_json::json!({"src": "/dev/urandom"}));
        let (a, _) = vm.answer(
            &Call::Create(serde_json::to_string(&same).unwrap()),
            Running::No,
        );
        assert_eq!(a.status, 204, "{a:?}");
    }

    #[test]
    fn a_null_payload_is_an_empty_one() {
        let config: VmConfig = serde_json::from_str(r#"{"payload":null}"#).unwrap();
        assert_eq!(config.payload, Payload::default());
    }

    #[test]
    fn unknown_fields_survive_a_round_trip() {
        let text = r#"{"payload":{"kernel":"k"},"rng":{"src":"/dev/urandom"},
            "disks":[{"id":"a","path":"p","direct":true,"num_queues":2}]}"#;
        let config: VmConfig = serde_json::from_str(text).unwrap();
        let again: Value = serde_json::to_value(&config).unwrap();
        assert_eq!(again["rng"]["src"], "/dev/urandom");
        assert_eq!(again["disks"][0]["num_queues"], 2);
        assert_eq!(again["disks"][0]["direct"], true);
    }
}
