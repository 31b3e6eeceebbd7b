//! Driving `vmm` and the test guest's agent over the serial console.
//!
//! The guest's `/init` (images/guest/init) prints `VMMTEST-READY <boot_id>` when it listens,
//! then runs each `<id> <command>` line it reads and answers with the output and
//! `VMMTEST-DONE <id> <rc>`. [`Guest`] starts `vmm run` with piped stdin/stdout, collects the
//! console in the background, and offers `wait_for`, `exec` and signals on top.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::{TempDir, guest_image, vmm_bin};

/// Numbers the strace files of one test run (see `VMM_TEST_STRACE`).
static STRACED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// How long a test guest may take to boot to its agent, nested under TCG.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
/// How long one agent command may take.
pub const EXEC_TIMEOUT: Duration = Duration::from_secs(60);

/// A VirtualMachine manifest for the test guest, built up field by field.
#[derive(Debug, Clone)]
pub struct Manifest {
    name: String,
    sockets: u32,
    cores: u32,
    dedicated_cpus: bool,
    memory: String,
    hugepages: Option<String>,
    cmdline: String,
    run_policy: Option<String>,
    kernel_image: Option<PathBuf>,
    /// No `kernel`: the first disk boots.
    no_kernel: bool,
    interfaces: String,
    networks: String,
    disks: String,
    volumes: String,
    documents: String,
    annotations: String,
}

impl Manifest {
    /// One vCPU, 256 MiB, the test guest kernel and initrd.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            sockets: 1,
            cores: 1,
            dedicated_cpus: false,
            memory: "256Mi".to_string(),
            hugepages: None,
            cmdline: "console=ttyS0 loglevel=4".to_string(),
            run_policy: None,
            kernel_image: None,
            no_kernel: false,
            interfaces: String::new(),
            networks: String::new(),
            disks: String::new(),
            volumes: String::new(),
            documents: String::new(),
            annotations: String::new(),
        }
    }

    /// Adds annotation `key: value` to the VM's metadata.
    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        if self.annotations.is_empty() {
            self.annotations.push_str("  annotations:\n");
        }
        self.annotations
            .push_str(&format!("    {key}: \"{value}\"\n"));
        self
    }

    /// `sockets` × `cores` vCPUs.
    pub fn cpus(mut self, sockets: u32, cores: u32) -> Self {
        self.sockets = sockets;
        self.cores = cores;
        self
    }

    /// `cpu.dedicatedCPUPlacement: true`.
    pub fn dedicated_cpus(mut self) -> Self {
        self.dedicated_cpus = true;
        self
    }

    /// `memory.size`.
    pub fn memory(mut self, size: &str) -> Self {
        self.memory = size.to_string();
        self
    }

    /// `memory.hugepages.pageSize`.
    pub fn hugepages(mut self, page_size: &str) -> Self {
        self.hugepages = Some(page_size.to_string());
        self
    }

    /// Appends to the kernel command line.
    pub fn cmdline(mut self, extra: &str) -> Self {
        self.cmdline.push(' ');
        self.cmdline.push_str(extra);
        self
    }

    /// `kernel.image`, instead of the test guest's image directory.
    pub fn kernel_image(mut self, path: &Path) -> Self {
        self.kernel_image = Some(path.to_path_buf());
        self
    }

    /// No `kernel`: the first disk's own boot configuration is booted.
    pub fn without_kernel(mut self) -> Self {
        self.no_kernel = true;
        self
    }

    /// `spec.runPolicy`.
    pub fn run_policy(mut self, policy: &str) -> Self {
        self.run_policy = Some(policy.to_string());
        self
    }

    /// The manifest text.
    pub fn yaml(&self) -> String {
        let mut memory = format!("      size: {}\n", self.memory);
        if let Some(page) = &self.hugepages {
            memory.push_str(&format!("      hugepages:\n        pageSize: {page}\n"));
        }
        let dedicated = if self.dedicated_cpus {
            "      dedicatedCPUPlacement: true\n"
        } else {
            ""
        };
        let policy = self
            .run_policy
            .as_ref()
            .map(|p| format!("  runPolicy: {p}\n"))
            .unwrap_or_default();
        format!(
            "apiVersion: virt.virtink.smartx.com/v1alpha1\n\
             kind: VirtualMachine\n\
             metadata:\n  name: {name}\n{annotations}\
             spec:\n{policy}  instance:\n    cpu:\n      sockets: {sockets}\n      coresPerSocket: {cores}\n{dedicated}\
             \x20   memory:\n{memory}\
             {kernel}{disks}{interfaces}{volumes}{networks}{documents}",
            name = self.name,
            annotations = self.annotations,
            sockets = self.sockets,
            cores = self.cores,
            kernel = if self.no_kernel {
                String::new()
            } else {
                format!(
                    "    kernel:\n      image: {}\n      cmdline: \"{}\"\n",
                    self.kernel_image
                        .clone()
                        .unwrap_or_else(guest_image)
                        .display(),
                    self.cmdline
                )
            },
            disks = if self.disks.is_empty() {
                String::new()
            } else {
                format!("    disks:\n{}", self.disks)
            },
            volumes = if self.volumes.is_empty() {
                String::new()
            } else {
                format!("  volumes:\n{}", self.volumes)
            },
            interfaces = if self.interfaces.is_empty() {
                String::new()
            } else {
                format!("    interfaces:\n{}", self.interfaces)
            },
            networks = if self.networks.is_empty() {
                String::new()
            } else {
                format!("  networks:\n{}", self.networks)
            },
            documents = self.documents,
        )
    }

    /// Adds network interfaces and networks: `interfaces` is YAML list items indented for
    /// `spec.instance.interfaces`, `networks` for `spec.networks`.
    pub fn network(mut self, interfaces: &str, networks: &str) -> Self {
        self.interfaces = interfaces.to_string();
        self.networks = networks.to_string();
        self
    }

    /// Adds a disk named `name` with the volume source `source` (YAML at the indentation of
    /// a volume's fields, e.g. `containerDisk:\n        image: x`), read-only if asked.
    pub fn disk(mut self, name: &str, read_only: bool, source: &str) -> Self {
        self.disks.push_str(&format!("      - name: {name}\n"));
        if read_only {
            self.disks.push_str("        readOnly: true\n");
        }
        self.volumes
            .push_str(&format!("    - name: {name}\n      {source}\n"));
        self
    }

    /// Appends a YAML document (a NetworkAttachmentDefinition, say) after the VM's.
    pub fn document(mut self, yaml: &str) -> Self {
        self.documents.push_str("---\n");
        self.documents.push_str(yaml);
        self
    }

    /// Appends a NetworkAttachmentDefinition `name` of CNI type `sriov` whose `deviceID`
    /// is `device_id`.
    pub fn sriov_nad(self, name: &str, device_id: &str) -> Self {
        self.document(&format!(
            "apiVersion: k8s.cni.cncf.io/v1\nkind: NetworkAttachmentDefinition\n\
             metadata:\n  name: {name}\n\
             spec:\n  config: '{{\"cniVersion\": \"0.3.1\", \"type\": \"sriov\", \"deviceID\": \"{device_id}\"}}'\n"
        ))
    }

    /// Writes the manifest into `dir`; returns its path.
    pub fn write(&self, dir: &Path) -> PathBuf {
        let path = dir.join(format!("{}.yaml", self.name));
        std::fs::write(&path, self.yaml()).expect("write manifest");
        path
    }
}

#[derive(Default)]
struct Output {
    text: String,
    closed: bool,
}

/// Text collected from a pipe by a background thread, with waiting.
#[derive(Clone, Default)]
struct Collected(Arc<(Mutex<Output>, Condvar)>);

impl Collected {
    fn spawn(mut pipe: impl Read + Send + 'static) -> Self {
        let collected = Self::default();
        let c = collected.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                let n = pipe.read(&mut buf).unwrap_or(0);
                let (lock, cond) = &*c.0;
                let mut out = lock.lock().unwrap();
                if n == 0 {
                    out.closed = true;
                    cond.notify_all();
                    return;
                }
                out.text
                    .push_str(&String::from_utf8_lossy(&buf[..n]).replace('\r', ""));
                cond.notify_all();
            }
        });
        collected
    }

    fn text(&self) -> String {
        self.0.0.lock().unwrap().text.clone()
    }

    fn len(&self) -> usize {
        self.0.0.lock().unwrap().text.len()
    }

    /// Waits until `f(text)` gives a value; `None` on timeout or when the pipe closes first.
    fn wait<T>(&self, timeout: Duration, mut f: impl FnMut(&str) -> Option<T>) -> Option<T> {
        let deadline = Instant::now() + timeout;
        let (lock, cond) = &*self.0;
        let mut out = lock.lock().unwrap();
        loop {
            if let Some(v) = f(&out.text) {
                return Some(v);
            }
            let now = Instant::now();
            if out.closed || now >= deadline {
                return None;
            }
            out = cond.wait_timeout(out, deadline - now).unwrap().0;
        }
    }
}

/// A running `vmm run` with the test guest.
pub struct Guest {
    child: Child,
    stdin: Option<ChildStdin>,
    console: Collected,
    stderr: Collected,
    next_id: u64,
    /// Guest RAM in bytes, from the manifest's `memory.size` when there is one.
    ram_bytes: Option<u64>,
    _dir: Option<TempDir>,
}

impl std::fmt::Debug for Guest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guest")
            .field("pid", &self.child.id())
            .finish_non_exhaustive()
    }
}

impl Guest {
    /// Starts `vmm run` on `manifest` with `extra` arguments before the file.
    pub fn start(manifest: &Path, extra: &[&str]) -> Self {
        Self::start_in(&[], Some(manifest), extra, &[])
    }

    /// Like [`Guest::start`], with `env` added to vmm's environment.
    pub fn start_with_env(manifest: &Path, extra: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_in(&[], Some(manifest), extra, env)
    }

    /// Starts `vmm run` with no manifest file, as Virtink's VM pod does (the VM in `env`'s
    /// `VM_DATA`), through the command `wrapper`, which must exec it.
    pub fn start_pod(wrapper: &[&str], extra: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_in(wrapper, None, extra, env)
    }

    /// Like [`Guest::boot`], with vmm in network namespace `netns`.
    pub fn boot_in_netns(netns: &str, manifest: &Manifest, extra: &[&str]) -> Self {
        Self::boot_wrapped(&["ip", "netns", "exec", netns], manifest, extra)
    }

    /// Like [`Guest::boot`], with vmm started by the command `wrapper` (`ip netns exec`,
    /// `setpriv`, ...), which must exec it.
    pub fn boot_wrapped(wrapper: &[&str], manifest: &Manifest, extra: &[&str]) -> Self {
        let dir = TempDir::new("guest");
        let path = manifest.write(dir.path());
        let mut guest = Self::start_in(wrapper, Some(&path), extra, &[]);
        guest._dir = Some(dir);
        guest
    }

    fn start_in(
        wrapper: &[&str],
        manifest: Option<&Path>,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        // A debugging aid: VMM_TEST_STRACE=1 with VMM_TESTHOST_KEEP=1 leaves an strace of
        // each vmm, one file per thread, in the kept job directory of the test host.
        let trace = std::env::var_os("VMM_TEST_STRACE")
            .and(std::env::var_os("TESTHOST_JOB"))
            .map(|job| {
                let n = STRACED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                format!("{}/strace.{n}", job.to_string_lossy())
            });
        let traced: Vec<&str> = match &trace {
            Some(out) => ["strace", "-f", "-ff", "-qq", "-o", out.as_str()]
                .into_iter()
                .chain(wrapper.iter().copied())
                .collect(),
            None => wrapper.to_vec(),
        };
        let wrapper = traced.as_slice();
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(vmm_bin());
                c
            }
            None => Command::new(vmm_bin()),
        };
        // Every test runs with the seccomp filters enforced (vmm's default) unless
        // VMM_TEST_SECCOMP says otherwise (`log` to find calls missing from a filter).
        cmd.args(["-v", "info", "run"]);
        if let Some(mode) = std::env::var_os("VMM_TEST_SECCOMP") {
            cmd.arg("--seccomp").arg(mode);
        }
        let mut child = cmd
            .args(extra)
            .args(manifest)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start vmm");
        let console = Collected::spawn(child.stdout.take().expect("stdout"));
        let stderr = Collected::spawn(child.stderr.take().expect("stderr"));
        Self {
            stdin: child.stdin.take(),
            child,
            console,
            stderr,
            next_id: 1,
            ram_bytes: manifest
                .and_then(|p| std::fs::read_to_string(p).ok())
                .and_then(|text| memory_size(&text)),
            _dir: None,
        }
    }

    /// Writes `manifest` to a fresh directory and starts `vmm run` on it.
    pub fn boot(manifest: &Manifest, extra: &[&str]) -> Self {
        let dir = TempDir::new("guest");
        let path = manifest.write(dir.path());
        let mut guest = Self::start(&path, extra);
        guest._dir = Some(dir);
        guest
    }

    /// The console output so far (carriage returns removed).
    pub fn console(&self) -> String {
        self.console.text()
    }

    /// vmm's stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.text()
    }

    fn context(&self) -> String {
        format!(
            "\n--- console ---\n{}\n--- vmm stderr ---\n{}\n--- vmm threads ---\n{}\n\
             --- over one second ---\n{}",
            self.console(),
            self.stderr(),
            self.threads(),
            self.activity()
        )
    }

    /// What vmm's threads and KVM did over one second: each thread's clock ticks in vmm,
    /// in the kernel and in the guest, KVM's exit counters (debugfs, mounted here if it is
    /// not; the test host runs one VM) and its exits by reason and guest RIP (tracefs). Tells a guest spinning in itself from an
    /// interrupt storm or a loop in vmm.
    pub fn activity(&self) -> String {
        const KVM: &[&str] = &[
            "exits",
            "io_exits",
            "mmio_exits",
            "halt_exits",
            "irq_exits",
            "irq_injections",
            "irq_window_exits",
            "signal_exits",
        ];
        let pid = self.child.id();
        if !Path::new("/sys/kernel/debug/kvm").exists() {
            let _ = Command::new("mount")
                .args(["-t", "debugfs", "debugfs", "/sys/kernel/debug"])
                .stderr(Stdio::null())
                .status();
        }
        let sample = || {
            let mut ticks = std::collections::BTreeMap::new();
            for task in std::fs::read_dir(format!("/proc/{pid}/task"))
                .into_iter()
                .flatten()
            {
                let Ok(task) = task else { continue };
                let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
                let name = format!("{} {}", comm.trim(), task.file_name().to_string_lossy());
                ticks.insert(name, task_ticks(&task.path()));
            }
            let kvm: Vec<u64> = KVM
                .iter()
                .map(|c| {
                    std::fs::read_to_string(format!("/sys/kernel/debug/kvm/{c}"))
                        .ok()
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0)
                })
                .collect();
            (ticks, kvm)
        };
        // The exits by reason and guest RIP (an ftrace histogram on kvm:kvm_exit): where a
        // spinning guest spins.
        let tracing = Path::new("/sys/kernel/tracing");
        if !tracing.join("events").exists() {
            let _ = Command::new("mount")
                .args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"])
                .stderr(Stdio::null())
                .status();
        }
        let trigger = tracing.join("events/kvm/kvm_exit/trigger");
        let hist =
            "hist:keys=exit_reason,guest_rip.hex,info2.hex:sort=hitcount.descending:size=4096";
        let traced = std::fs::write(&trigger, hist).is_ok();
        let (t0, k0) = sample();
        std::thread::sleep(Duration::from_secs(1));
        let (t1, k1) = sample();
        let exits = if traced {
            let text = std::fs::read_to_string(tracing.join("events/kvm/kvm_exit/hist"))
                .unwrap_or_default();
            let _ = std::fs::write(&trigger, format!("!{hist}"));
            let top: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with('{'))
                .take(12)
                .collect();
            format!(
                "\nkvm_exit by reason, guest RIP and info2 (top 12):\n{}",
                top.join("\n")
            )
        } else {
            String::new()
        };
        let mut out: Vec<String> = t1
            .iter()
            .map(|(name, [u, s, g])| {
                let [u0, s0, g0] = t0.get(name).copied().unwrap_or([*u, *s, *g]);
                format!(
                    "{name:<24} user +{} system +{} guest +{} ticks",
                    u.saturating_sub(u0),
                    s.saturating_sub(s0),
                    g.saturating_sub(g0)
                )
            })
            .collect();
        let kvm: Vec<String> = KVM
            .iter()
            .zip(k0.iter().zip(&k1))
            .map(|(c, (a, b))| format!("{c} +{}", b.saturating_sub(*a)))
            .collect();
        out.push(format!("kvm: {}{exits}", kvm.join(", ")));
        out.push(kvm_events(tracing, self.ram_bytes));
        out.join("\n")
    }

    /// Clock ticks (user and system, at 100 a second) that vmm's threads named `name` spent
    /// over `over`.
    pub fn thread_ticks(&self, name: &str, over: Duration) -> u64 {
        let pid = self.child.id();
        let sample = || -> u64 {
            std::fs::read_dir(format!("/proc/{pid}/task"))
                .into_iter()
                .flatten()
                .flatten()
                .filter(|t| {
                    std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == name)
                })
                .map(|t| {
                    let [user, system, _] = task_ticks(&t.path());
                    user + system
                })
                .sum()
        };
        let before = sample();
        std::thread::sleep(over);
        sample().saturating_sub(before)
    }

    /// Asserts vmm's confinement: every thread has `no_new_privs` and runs under seccomp
    /// filters (its own stacked on its parent's); every thread but the main one has no
    /// capability at all; the main one has none beyond `main_may_keep` (a mask of capability
    /// bits). Returns how many threads it looked at.
    pub fn assert_confined(&self, main_may_keep: u64) -> usize {
        let pid = self.child.id();
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("vmm's threads");
        let task_is_main =
            |task: &std::fs::DirEntry| task.file_name().to_string_lossy() == pid.to_string();
        let seccomp_on = std::env::var("VMM_TEST_SECCOMP").map_or(true, |m| m != "false");
        let mut seen = 0;
        for task in tasks.flatten() {
            let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
            if status.is_empty() {
                continue; // the thread ended meanwhile
            }
            let field = |name: &str| -> u64 {
                let line = status
                    .lines()
                    .find(|l| l.starts_with(name))
                    .unwrap_or_else(|| panic!("no {name} in\n{status}"));
                let value = line.split_whitespace().nth(1).unwrap_or("");
                let decimal = matches!(name, "NoNewPrivs:" | "Seccomp:" | "Seccomp_filters:");
                u64::from_str_radix(value, if decimal { 10 } else { 16 })
                    .unwrap_or_else(|_| panic!("{line}"))
            };
            let name = status.lines().next().unwrap_or("").to_string();
            assert_eq!(field("NoNewPrivs:"), 1, "{name}: no_new_privs is not set");
            if seccomp_on {
                // 2: filter mode. Main has its filter and the clone3 one; a thread it
                // started has those and its own; the API's threads started before main's,
                // and the serial log's before any (it has its own only).
                assert_eq!(field("Seccomp:"), 2, "{name}: no seccomp filter");
                let own = if name.contains("serial-log") {
                    1
                } else if name.contains("api") || task_is_main(&task) {
                    2
                } else {
                    3
                };
                assert!(
                    field("Seccomp_filters:") >= own,
                    "{name}: {} seccomp filters, expected {own}",
                    field("Seccomp_filters:")
                );
            }
            let (eff, prm) = (field("CapEff:"), field("CapPrm:"));
            if task_is_main(&task) {
                assert_eq!(
                    (eff | prm) & !main_may_keep,
                    0,
                    "{name} (main) kept capabilities {eff:#x}/{prm:#x}, may keep {main_may_keep:#x}"
                );
            } else {
                assert_eq!((eff, prm), (0, 0), "{name} kept capabilities");
            }
            seen += 1;
        }
        seen
    }

    /// Each of vmm's threads: name, state and where in the kernel it waits, so that a guest
    /// that stops can be told from a vmm that stopped.
    fn threads(&self) -> String {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.child.id())) else {
            return "(vmm has exited)".into();
        };
        let mut out = Vec::new();
        for task in tasks.flatten() {
            let dir = task.path();
            let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
            let comm = read("comm");
            let state = read("status")
                .lines()
                .find_map(|l| l.strip_prefix("State:").map(str::trim).map(str::to_string))
                .unwrap_or_default();
            out.push(format!(
                "{:<16} {:<14} {}",
                comm.trim(),
                state,
                read("wchan")
            ));
        }
        out.sort();
        out.join("\n")
    }

    /// Waits until the console shows `pattern` after byte `from`; returns the text up to and
    /// including it. Panics (with the console) on timeout.
    pub fn wait_for_after(&self, from: usize, pattern: &str, timeout: Duration) -> String {
        let found = self.console.wait(timeout, |text| {
            let tail = text.get(from..)?;
            tail.find(pattern)
                .map(|at| text[..from + at + pattern.len()].to_string())
        });
        found.unwrap_or_else(|| {
            panic!(
                "{pattern:?} did not appear on the console within {timeout:?}{}",
                self.context()
            )
        })
    }

    /// Waits for the `n`-th (1-based) `VMMTEST-READY`; returns that boot's id.
    pub fn wait_ready(&self, n: usize) -> String {
        let marker = "VMMTEST-READY ";
        let id = self.console.wait(BOOT_TIMEOUT, |text| {
            let (at, _) = text.match_indices(marker).nth(n - 1)?;
            let rest = &text[at + marker.len()..];
            let end = rest.find('\n')?;
            Some(rest[..end].trim().to_string())
        });
        id.unwrap_or_else(|| {
            panic!(
                "boot {n} of the guest did not reach its agent within {BOOT_TIMEOUT:?}{}",
                self.context()
            )
        })
    }

    /// Sends a raw line to the guest's console.
    pub fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        if let Err(e) = stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| stdin.flush())
        {
            // vmm has gone: say what it said.
            self.console.wait(Duration::from_secs(2), |_| None::<()>);
            panic!("write to vmm's stdin: {e}{}", self.context());
        }
    }

    /// Runs `cmd` in the guest; returns its exit code and output.
    pub fn exec(&mut self, cmd: &str) -> (i32, String) {
        let id = self.next_id;
        self.next_id += 1;
        let from = self.console.len();
        self.send_line(&format!("{id} {cmd}"));
        let marker = format!("\nVMMTEST-DONE {id} ");
        let ack = acknowledgement(id);
        let result = self.console.wait(EXEC_TIMEOUT, |text| {
            let tail = text.get(from..)?;
            let at = tail.find(&marker)?;
            let rest = &tail[at + marker.len()..];
            let end = rest.find('\n')?;
            let rc = rest[..end].trim().parse::<i32>().ok()?;
            let out = &tail[..at];
            // The agent's acknowledgement comes first; it is not the command's output.
            let out = out.strip_prefix(&ack).unwrap_or(out);
            Some((rc, out.to_string()))
        });
        result.unwrap_or_else(|| {
            let context = self.context();
            panic!(
                "command {cmd:?} did not finish within {EXEC_TIMEOUT:?}\n\
                 --- where the line stopped ---\n{}{context}",
                self.diagnose_stuck(id, from)
            )
        })
    }

    /// Says where a command that got no answer stopped: in vmm's stdin pipe (vmm stopped
    /// moving input into the UART), in the UART or the guest's tty (no `VMMTEST-GOT`), or in
    /// the guest after it arrived; and whether the agent still answers another command.
    fn diagnose_stuck(&mut self, id: u64, from: usize) -> String {
        let mut out = String::new();
        match self.stdin_unread() {
            Ok(n) => out += &format!("vmm's stdin pipe holds {n} unread bytes\n"),
            Err(e) => out += &format!("vmm's stdin pipe: {e}\n"),
        }
        let got = acknowledgement(id);
        let arrived = self
            .console
            .text()
            .get(from..)
            .is_some_and(|t| t.contains(&got));
        out += if arrived {
            "the agent acknowledged the line: the command ran and did not finish, or its \
             answer is stuck on the way out\n"
        } else {
            "the agent did not acknowledge the line\n"
        };
        let probe = self.next_id;
        self.next_id += 1;
        let from = self.console.len();
        self.send_line(&format!("{probe} echo VMMTEST-PROBE"));
        let marker = format!("VMMTEST-DONE {probe} ");
        let answered = self
            .console
            .wait(Duration::from_secs(20), |text| {
                text.get(from..)?.contains(&marker).then_some(())
            })
            .is_some();
        out += if answered {
            "a probe command sent after it was answered within 20 s\n"
        } else {
            "a probe command sent after it got no answer within 20 s\n"
        };
        out
    }

    /// How many bytes written to vmm's stdin it has not read yet (its end of the pipe,
    /// opened again through /proc).
    fn stdin_unread(&self) -> std::io::Result<usize> {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::OpenOptionsExt;
        let pipe = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(format!("/proc/{}/fd/0", self.child.id()))?;
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD writes one c_int to `n`, which lives through the call.
        let ret = unsafe { libc::ioctl(pipe.as_raw_fd(), libc::FIONREAD, &mut n) };
        if ret < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(usize::try_from(n).unwrap_or(0))
    }

    /// Runs `cmd` in the guest, asserts it succeeds, returns its output.
    pub fn check(&mut self, cmd: &str) -> String {
        let (rc, out) = self.exec(cmd);
        assert_eq!(rc, 0, "{cmd:?} failed with {rc}: {out}{}", self.context());
        out
    }

    /// Sends the guest a command without waiting for an answer (for `poweroff -f`).
    pub fn send(&mut self, cmd: &str) {
        let id = self.next_id;
        self.next_id += 1;
        self.send_line(&format!("{id} {cmd}"));
    }

    /// Sends `signal` to vmm.
    pub fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid");
        // SAFETY: kill(2) on our own child's pid.
        let ret = unsafe { libc::kill(pid, signal) };
        assert_eq!(ret, 0, "kill: {}", std::io::Error::last_os_error());
    }

    /// vmm's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for vmm to exit; returns its exit code. Panics on timeout (after killing it).
    pub fn wait_exit(&mut self, timeout: Duration) -> i32 {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // Let the readers drain what is left.
                self.console.wait(Duration::from_secs(5), |_| None::<()>);
                return code(status);
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("vmm did not exit within {timeout:?}{}", self.context());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The line the agent prints when command `id` has arrived whole.
fn acknowledgement(id: u64) -> String {
    format!("VMMTEST-GOT {id}\n")
}

impl Drop for Guest {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// KVM's trace events over 50 ms, counted, with the first few of each; and, when guest RAM
/// is known, whether they show [`EMULATION_LIVELOCK`].
fn kvm_events(tracing: &Path, ram_bytes: Option<u64>) -> String {
    let enable = tracing.join("events/kvm/enable");
    let _ = std::fs::write(tracing.join("trace"), "");
    if std::fs::write(&enable, "1").is_err() {
        return String::new();
    }
    std::thread::sleep(Duration::from_millis(50));
    let _ = std::fs::write(&enable, "0");
    let text = std::fs::read_to_string(tracing.join("trace")).unwrap_or_default();
    let _ = std::fs::write(tracing.join("trace"), "");
    // The first few of each event: one busy event must not hide the others.
    let mut seen = std::collections::BTreeMap::<&str, usize>::new();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            let event = l.split(": ").nth(1).unwrap_or("");
            let n = seen.entry(event).or_default();
            *n += 1;
            *n <= 4
        })
        .take(60)
        .collect();
    let counts: Vec<String> = seen.iter().map(|(e, n)| format!("{e} {n}")).collect();
    let livelock = ram_bytes
        .and_then(|ram| emulation_livelock(&text, ram))
        .map(|l| format!("\n{l}"))
        .unwrap_or_default();
    format!(
        "kvm trace events over 50 ms: {}\n{}{livelock}",
        counts.join(", "),
        lines.join("\n")
    )
}

/// A thread's clock ticks from `/proc/PID/task/TID/stat`: user, system and guest (fields
/// 14, 15 and 43 of the line; the fields after `(comm)` start at field 3, the state).
fn task_ticks(task: &Path) -> [u64; 3] {
    let stat = std::fs::read_to_string(task.join("stat")).unwrap_or_default();
    let rest: Vec<u64> = stat
        .rsplit_once(')')
        .map(|(_, r)| {
            r.split_whitespace()
                .map(|f| f.parse().unwrap_or(0))
                .collect()
        })
        .unwrap_or_default();
    let field = |n: usize| rest.get(n - 3).copied().unwrap_or(0);
    [field(14), field(15), field(43)]
}

/// `memory.size` of a manifest (`256Mi`, `1Gi`), in bytes.
fn memory_size(manifest: &str) -> Option<u64> {
    let mut lines = manifest.lines().skip_while(|l| l.trim() != "memory:");
    lines.next()?;
    let size = lines.find_map(|l| l.trim().strip_prefix("size:"))?.trim();
    let size = size.trim_matches('"');
    let (digits, unit) = size.split_at(size.find(|c: char| !c.is_ascii_digit())?);
    let shift = match unit {
        "Ki" => 10,
        "Mi" => 20,
        "Gi" => 30,
        _ => return None,
    };
    digits.parse::<u64>().ok()?.checked_shl(shift)
}

/// Marks a stuck guest's report when the test host's emulation, not vmm, stopped it (the
/// harness runs such a test again, see `ENVIRONMENT_FAILURES`).
pub const EMULATION_LIVELOCK: &str = "EMULATION LIVELOCK";

/// Whether KVM's trace events show a vCPU that can never go on: the same nested page fault,
/// at one guest RIP, over and over, raised while delivering an exception (the exit's
/// `intr_info` valid), in the guest's own page-table walk (`info1` bit 33), at a guest
/// physical address outside guest RAM. The guest's page tables live in its RAM; a walk
/// outside it means the nested guest's CR3 or page-table pointer was corrupted (seen: bit 32
/// set), which QEMU's TCG emulation of SVM does now and then. `ram_bytes` is laid out as vmm
/// lays it out: below 3 GiB, the rest from 4 GiB.
pub fn emulation_livelock(trace: &str, ram_bytes: u64) -> Option<String> {
    const MMIO_32_START: u64 = 0xc000_0000;
    const HIGH_RAM_START: u64 = 1 << 32;
    const GUEST_PAGE_WALK: u64 = 1 << 33;
    const EVENT_VALID: u64 = 1 << 31;
    let low = ram_bytes.min(MMIO_32_START);
    let high = HIGH_RAM_START..HIGH_RAM_START + (ram_bytes - low);
    let in_ram = |gpa: u64| gpa < low || high.contains(&gpa);
    let hex = |line: &str, field: &str| -> Option<u64> {
        let at = line.find(field)? + field.len();
        let value = line[at..].split_whitespace().next()?;
        u64::from_str_radix(value.trim_start_matches("0x"), 16).ok()
    };
    let mut faults = std::collections::BTreeMap::<(u64, u64), usize>::new();
    let mut exits = 0;
    for line in trace.lines().filter(|l| l.contains(" kvm_exit: ")) {
        exits += 1;
        if !line.contains(" reason npf ") {
            continue;
        }
        let (Some(rip), Some(info1), Some(gpa), Some(intr)) = (
            hex(line, " rip "),
            hex(line, " info1 "),
            hex(line, " info2 "),
            hex(line, " intr_info "),
        ) else {
            continue;
        };
        if info1 & GUEST_PAGE_WALK != 0 && intr & EVENT_VALID != 0 && !in_ram(gpa) {
            *faults.entry((rip, gpa)).or_default() += 1;
        }
    }
    let ((rip, gpa), n) = faults.into_iter().max_by_key(|(_, n)| *n)?;
    // Hundreds in 50 ms, and most of what KVM did: nothing else happens on that vCPU.
    (n >= 100 && n * 2 >= exits).then(|| {
        format!(
            "{EMULATION_LIVELOCK}: {n} of {exits} exits are one nested page fault at rip \
             {rip:#x}, delivering an exception, walking the guest's page tables at {gpa:#x}, \
             outside its {} MiB of RAM",
            ram_bytes >> 20
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NPF: &str = "           vcpu1-197     [000] .....    79.708497: kvm_exit: vcpu 1 \
        reason npf rip 0xffffffffc0500f7c info1 0x000000020000000e info2 0x00000001009e4fe0 \
        intr_info 0x80000b0e error_code 0x00000010";
    const TIMER: &str = "           vcpu0-196     [001] .....    79.708500: kvm_exit: vcpu 0 \
        reason msr rip 0xffffffffab673914 info1 0x0000000000000001 info2 0x0000000000000000 \
        intr_info 0x00000000 error_code 0x00000000";

    fn trace(lines: &[(&str, usize)]) -> String {
        lines
            .iter()
            .flat_map(|(l, n)| std::iter::repeat_n(*l, *n))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn a_page_walk_outside_ram_repeated_is_the_emulation_s_livelock() {
        let seen = trace(&[(NPF, 300), (TIMER, 20)]);
        let found = emulation_livelock(&seen, 256 << 20).expect("livelock");
        assert!(found.contains("0x1009e4fe0"), "{found}");
        // The same address inside RAM (a guest with RAM above 4 GiB) is not the emulation's.
        assert_eq!(emulation_livelock(&seen, 4 << 30), None);
        // A few such faults among much else, or mostly other exits, is not a livelock.
        assert_eq!(emulation_livelock(&trace(&[(NPF, 20)]), 256 << 20), None);
        assert_eq!(
            emulation_livelock(&trace(&[(NPF, 150), (TIMER, 400)]), 256 << 20),
            None
        );
        // Not delivering an event, or not in the page walk: a plain MMIO access.
        let mmio = NPF.replace("intr_info 0x80000b0e", "intr_info 0x00000000");
        assert_eq!(emulation_livelock(&trace(&[(&mmio, 300)]), 256 << 20), None);
        let final_access = NPF.replace("0x000000020000000e", "0x000000010000000e");
        assert_eq!(
            emulation_livelock(&trace(&[(&final_access, 300)]), 256 << 20),
            None
        );
    }

    #[test]
    fn memory_size_reads_the_manifest() {
        let m = "spec:\n  instance:\n    memory:\n      size: 256Mi\n    kernel:\n";
        assert_eq!(memory_size(m), Some(256 << 20));
        assert_eq!(
            memory_size("    memory:\n      size: \"2Gi\"\n"),
            Some(2 << 30)
        );
        assert_eq!(memory_size("    memory:\n      size: 1G\n"), None);
        assert_eq!(memory_size("cpu: 1\n"), None);
    }
}
