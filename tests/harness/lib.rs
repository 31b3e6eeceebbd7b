//! The harness for vmm's integration tests.
//!
//! A test that boots a guest runs twice: on this machine, [`in_testhost`] starts the KVM test
//! host (`tests/testhost`) and runs the same test binary inside it, filtered to that one
//! test; inside the test host (`VMM_TEST_IN_TESTHOST` is set) the body runs for real, with
//! `vmm` booting guests on the test host's `/dev/kvm`. Assertions fail inside the test host;
//! the outer test fails with the inner output. Nothing is skipped: a test that cannot run
//! (no images, no QEMU) fails and says why.

pub mod guest;
pub mod netns;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Set inside the test host by [`in_testhost`].
pub const IN_TESTHOST: &str = "VMM_TEST_IN_TESTHOST";

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The cargo target profile directory this test binary was built into (`target/debug`).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/debug/deps/<test>-<hash>
    exe.parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps")
        .to_path_buf()
}

/// The `vmm` binary built beside this test.
pub fn vmm_bin() -> PathBuf {
    let bin = target_dir().join("vmm");
    assert!(
        bin.exists(),
        "{} does not exist: build it first (cargo build -p vmm-cli), as tests/run does",
        bin.display()
    );
    bin
}

/// virt-daemon-client (tests/virt-daemon): Virtink's virt-daemon's calls, made by a Go
/// client in the shape of Virtink's generated one; built into the cargo target directory by
/// tests/virt-daemon/build (tests/run runs it).
pub fn virt_daemon_client() -> PathBuf {
    let bin = target_dir()
        .parent()
        .expect("target/<profile> has a parent")
        .join("virt-daemon-client");
    assert!(
        bin.exists(),
        "{} does not exist: run tests/virt-daemon/build (tests/run does)",
        bin.display()
    );
    bin
}

/// An HTTP request with curl over the Unix socket `socket` to `http://localhost{path}`, with
/// curl's arguments `extra` (headers, a body); the status and the body.
pub fn http_unix(socket: &Path, method: &str, path: &str, extra: &[&str]) -> (u16, String) {
    let out = std::process::Command::new("curl")
        .args(["-s", "-S", "--unix-socket"])
        .arg(socket)
        .args(["-X", method])
        .args(extra)
        .args(["-w", "\n%{http_code}", &format!("http://localhost{path}")])
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// The API's `info` answer, from vmm's socket `socket`.
pub fn vm_info(socket: &Path) -> serde_json::Value {
    let (status, body) = http_unix(socket, "GET", "/v1/vm/info", &[]);
    assert_eq!(status, 200, "info: {body}");
    serde_json::from_str(&body).expect("info is JSON")
}

/// The test guest image directory (`kernel.image` for the manifests).
pub fn guest_image() -> PathBuf {
    let dir = std::env::var_os("VMM_IMAGES_OUT")
        .map_or_else(|| repo_root().join("images/out"), PathBuf::from)
        .join("guest");
    assert!(
        dir.join("vmlinuz").exists() && dir.join("initrd").exists(),
        "the test guest image is missing in {}: run images/build",
        dir.display()
    );
    dir
}

/// The test guest with iperf3 (`images/out/guest/iperf`), for tests that need a UDP server
/// in the guest.
pub fn iperf_guest_image() -> PathBuf {
    let dir = guest_image().join("iperf");
    assert!(
        dir.join("initrd").exists(),
        "the iperf guest image is missing in {}: run images/build",
        dir.display()
    );
    dir
}

/// A cloud image made by images/cloud/build (`debian.qcow2`, `debian-bls.raw`, ...).
pub fn cloud_image(name: &str) -> PathBuf {
    let path = std::env::var_os("VMM_IMAGES_OUT")
        .map_or_else(|| repo_root().join("images/out"), PathBuf::from)
        .join("cloud")
        .join(name);
    assert!(
        path.exists(),
        "the cloud image {} is missing: run images/build",
        path.display()
    );
    path
}

/// A directory for this test's files, fresh and removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// A new empty directory named after `name`.
    pub fn new(name: &str) -> Self {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "vmm-test-{name}-{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Signs in a failed run's output that the nested-virtualisation stack under the test host
/// failed, not vmm: QEMU's TCG emulation of SVM occasionally corrupts L1 or L2 state under
/// load (measured: about 1 test in 10 with QEMU 10.0; see the README, "Test host").
const ENVIRONMENT_FAILURES: &[&str] = &[
    "testhost: the test host did not finish",
    "testhost: the test host stopped without running the command",
    "Kernel panic",
    "soft lockup",
    "stack guard page",
    guest::EMULATION_LIVELOCK,
];

/// A triple fault vmm reports is the emulation's only with its signature: the vCPU was put
/// back at the reset vector (real mode, `cs` 0xf000, `rip` 0xfff0) behind the guest's back,
/// or the test host's own kernel log shows its KVM or its CPU emulation going wrong. A
/// triple fault at a guest address is a real failure and fails the test at once; a test that
/// expects one passes and is never retried.
const TRIPLE_FAULT: &str = "triple fault (KVM_EXIT_SHUTDOWN)";
const RESET_VECTOR: &str = "at rip 0xfff0 (cs 0xf000";
/// Signs in the test host's kernel log (what tests/testhost prints after [`KERNEL_LOG`]).
const TESTHOST_KERNEL_SIGNATURES: &[&str] = &[
    "BUG: ",
    "general protection fault",
    "WARNING: CPU",
    "invalid opcode",
];
const KERNEL_LOG: &str = "the test host's kernel log ends:";

/// The environment failure `run` shows, if any.
fn environment_failure(run: &TesthostRun) -> Option<&'static str> {
    let seen = |sign: &str| run.stdout.contains(sign) || run.stderr.contains(sign);
    if let Some(sign) = ENVIRONMENT_FAILURES.iter().find(|s| seen(s)) {
        return Some(sign);
    }
    let kernel_log = run
        .stderr
        .find(KERNEL_LOG)
        .map_or("", |at| &run.stderr[at..]);
    let emulation = seen(RESET_VECTOR)
        || TESTHOST_KERNEL_SIGNATURES
            .iter()
            .any(|s| kernel_log.contains(s));
    if seen(TRIPLE_FAULT) && emulation {
        return Some(TRIPLE_FAULT);
    }
    None
}

/// The file (named by tests/run) where each environment failure is recorded.
const RETRY_LOG: &str = "VMM_TEST_RETRY_LOG";

/// How many times a test runs when each failure carries an [`ENVIRONMENT_FAILURES`] sign.
const ATTEMPTS: usize = 3;

/// Runs `body` inside the KVM test host. `name` is the test function's name (the test must
/// be a top-level function of its test crate) and `timeout` bounds each test host run.
///
/// A failure whose output shows that the test host's emulation broke down is reported
/// loudly and the test runs again, at most [`ATTEMPTS`] times in all; any other failure
/// fails the test at once, and so does the last attempt.
pub fn in_testhost(name: &str, timeout: Duration, body: impl FnOnce()) {
    in_testhost_with(name, timeout, &[], body);
}

/// The test host environment for VFIO tests: an emulated IOMMU (intel-iommu, the test
/// host's kernel booted with `intel_iommu=on`) and devices to pass through: a virtio-net
/// function alone in its IOMMU group at 0000:00:10.0 (its network is QEMU's user network,
/// restricted: nothing leaves QEMU), and two behind a conventional PCI bridge (bus 1,
/// slots 1 and 2), which therefore share one IOMMU group.
pub fn passthrough_testhost() -> Vec<(String, String)> {
    let share = repo_root().join("images/out/qemu/usr/share");
    let args = format!(
        "-L {share}/qemu -L {share}/seabios \
         -device intel-iommu,intremap=on,caching-mode=on \
         -netdev user,id=pt0,restrict=on \
         -device virtio-net-pci,netdev=pt0,addr=0x10,iommu_platform=on,disable-legacy=on,romfile= \
         -device pci-bridge,id=br1,chassis_nr=1,addr=0x11 \
         -netdev user,id=pt1,restrict=on -netdev user,id=pt2,restrict=on \
         -device virtio-net-pci,netdev=pt1,bus=br1,addr=1,iommu_platform=on,disable-legacy=on,romfile= \
         -device virtio-net-pci,netdev=pt2,bus=br1,addr=2,iommu_platform=on,disable-legacy=on,romfile=",
        share = share.display()
    );
    vec![
        ("VMM_TESTHOST_QEMU_ARGS".into(), args),
        (
            "VMM_TESTHOST_CMDLINE".into(),
            "intel_iommu=on iommu=pt".into(),
        ),
    ]
}

/// Like [`in_testhost`], with `env` for `tests/testhost` (another QEMU command line, say).
pub fn in_testhost_with(
    name: &str,
    timeout: Duration,
    env: &[(String, String)],
    body: impl FnOnce(),
) {
    if std::env::var_os(IN_TESTHOST).is_some() {
        arm_shutdown_trace();
        if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
            if let Some(sites) = shutdown_sites() {
                eprintln!("{sites}");
            }
            std::panic::resume_unwind(panic);
        }
        return;
    }
    for attempt in 1..=ATTEMPTS {
        let run = run_in_testhost(name, timeout, env);
        eprintln!(
            "{name}: test host run {attempt} took {:.1} s",
            run.elapsed.as_secs_f64()
        );
        if run.passed {
            return;
        }
        let sign = environment_failure(&run);
        if let (Some(sign), Some(log)) = (sign, std::env::var_os(RETRY_LOG)) {
            // One record per environment failure, for tests/run to count and show at the end.
            use std::io::Write as _;
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(log)
            {
                let _ = f.write_all(retry_record(name, attempt, sign, &run).as_bytes());
            }
        }
        match sign {
            Some(sign) if attempt < ATTEMPTS => eprintln!(
                "{name}: ENVIRONMENT FAILURE in attempt {attempt} (\"{sign}\"), running it again; \
                 the failed run's output follows\n--- stdout ---\n{}\n--- stderr ---\n{}",
                run.stdout, run.stderr
            ),
            _ => panic!(
                "{name} failed inside the test host (status {:?}, attempt {attempt})\n\
                 --- stdout ---\n{}\n--- stderr ---\n{}",
                run.status, run.stdout, run.stderr
            ),
        }
    }
}

/// Starts the line of a failed run that says where KVM saw each triple fault.
const SHUTDOWN_SITES: &str = "KVM shutdown exits (vCPU, guest RIP before KVM reset it):";
const TRACING: &str = "/sys/kernel/tracing";
/// An ftrace histogram of the test host's triple-fault exits (SVM's shutdown, 127; VMX's
/// triple fault, 2, which SVM does not intercept here) by vCPU and guest RIP. On AMD, KVM
/// INITs a vCPU on a shutdown intercept, so vmm's own report of any triple fault shows the
/// reset vector; this shows where it happened.
const SHUTDOWN_HIST: &str =
    "hist:keys=vcpu_id,guest_rip.hex if exit_reason == 127 || exit_reason == 2";

/// Arms [`SHUTDOWN_HIST`] in the test host (best effort: tracefs may be missing).
fn arm_shutdown_trace() {
    if !Path::new(TRACING).join("events").exists() {
        let _ = std::process::Command::new("mount")
            .args(["-t", "tracefs", "tracefs", TRACING])
            .stderr(std::process::Stdio::null())
            .status();
    }
    let _ = std::fs::write(
        Path::new(TRACING).join("events/kvm/kvm_exit/trigger"),
        SHUTDOWN_HIST,
    );
}

/// What [`SHUTDOWN_HIST`] counted, when it counted anything.
fn shutdown_sites() -> Option<String> {
    let hist = std::fs::read_to_string(Path::new(TRACING).join("events/kvm/kvm_exit/hist")).ok()?;
    let sites: Vec<&str> = hist.lines().filter(|l| l.starts_with('{')).collect();
    (!sites.is_empty()).then(|| format!("{SHUTDOWN_SITES} {}", sites.join("; ")))
}

/// A rerun's entry in [`RETRY_LOG`]: one line naming it, then, indented, the line of the
/// output that carries `sign` and the three before it (vmm's log says, say, whether the guest
/// was rebooting), so that the suite's summary shows what happened: a test that passes on
/// its rerun shows no output of its own.
fn retry_record(name: &str, attempt: usize, sign: &str, run: &TesthostRun) -> String {
    let context = [&run.stdout, &run.stderr]
        .into_iter()
        .find_map(|out| {
            let lines: Vec<&str> = out.lines().collect();
            let at = lines.iter().position(|l| l.contains(sign))?;
            Some(lines[at.saturating_sub(3)..=at].to_vec())
        })
        .unwrap_or_default();
    let sites = [&run.stdout, &run.stderr]
        .into_iter()
        .flat_map(|out| out.lines())
        .filter(|l| l.contains(SHUTDOWN_SITES));
    let mut record = format!("{name} attempt {attempt}: {sign}\n");
    for line in context.into_iter().chain(sites) {
        let line: String = line.trim().chars().take(300).collect();
        record.push_str(&format!("    {line}\n"));
    }
    record
}

/// One run of a test inside the test host.
struct TesthostRun {
    passed: bool,
    status: Option<i32>,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

fn run_in_testhost(name: &str, timeout: Duration, env: &[(String, String)]) -> TesthostRun {
    let exe = std::env::current_exe().expect("current_exe");
    let testhost = repo_root().join("tests/testhost");
    let started = Instant::now();
    let output = Command::new(&testhost)
        .args(["run", "--timeout", &timeout.as_secs().to_string(), "--"])
        .arg(&exe)
        .args(["--exact", name, "--nocapture", "--test-threads", "1"])
        .env(IN_TESTHOST, "1")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", testhost.display()));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    TesthostRun {
        passed: output.status.success() && stdout.contains("test result: ok. 1 passed"),
        status: output.status.code(),
        stdout,
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        elapsed: started.elapsed(),
    }
}

/// Declares a test whose body runs inside the KVM test host.
///
/// ```ignore
/// testhost_test!(fn boots_two_vcpus() { ... }, timeout = 300);
/// ```
#[macro_export]
macro_rules! testhost_test {
    ($(#[$meta:meta])* fn $name:ident() $body:block) => {
        $crate::testhost_test!($(#[$meta])* fn $name() $body, timeout = 240);
    };
    ($(#[$meta:meta])* fn $name:ident() $body:block, timeout = $secs:expr) => {
        $(#[$meta])*
        #[test]
        fn $name() {
            $crate::in_testhost(
                stringify!($name),
                ::std::time::Duration::from_secs($secs),
                || $body,
            );
        }
    };
    ($(#[$meta:meta])* fn $name:ident() $body:block, timeout = $secs:expr, env = $env:expr) => {
        $(#[$meta])*
        #[test]
        fn $name() {
            $crate::in_testhost_with(
                stringify!($name),
                ::std::time::Duration::from_secs($secs),
                &$env,
                || $body,
            );
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stdout: &str, stderr: &str) -> TesthostRun {
        TesthostRun {
            passed: false,
            status: Some(101),
            stdout: stdout.into(),
            stderr: stderr.into(),
            elapsed: Duration::ZERO,
        }
    }

    #[test]
    fn a_triple_fault_is_the_environment_s_only_with_its_signature() {
        let at_guest_code = "error: vCPU 0 triple fault (KVM_EXIT_SHUTDOWN) at rip \
                             0xffffffff81000123 (cs 0x10, cr0 0x80050033, cr3 0x1000, rsp 0x0)";
        assert_eq!(environment_failure(&run(at_guest_code, "")), None);
        // A guest oops on the console is not the test host's kernel log.
        let oops = format!("{at_guest_code}\ngeneral protection fault");
        assert_eq!(environment_failure(&run(&oops, "")), None);
        let at_reset = "error: vCPU 1 triple fault (KVM_EXIT_SHUTDOWN) at rip 0xfff0 (cs 0xf000, \
                        cr0 0x60000010, cr3 0x0, rsp 0x0)";
        assert_eq!(environment_failure(&run(at_reset, "")), Some(TRIPLE_FAULT));
        let l1 = "testhost: the command failed (exit 101); the test host's kernel log ends:\n\
                  [ 12.1] BUG: unable to handle page fault";
        assert_eq!(
            environment_failure(&run(at_guest_code, l1)),
            Some(TRIPLE_FAULT)
        );
    }

    #[test]
    fn a_rerun_is_recorded_with_the_lines_that_led_to_it() {
        let stderr = "[ 1.0 INFO vmm::runner] booting the guest (boot 1)\n\
                      [ 9.0 INFO vmm::runner] the guest asked for a reset\n\
                      error: vCPU 0 triple fault (KVM_EXIT_SHUTDOWN) at rip 0xfff0 (cs 0xf000)\n\
                      more";
        let record = retry_record("t", 1, TRIPLE_FAULT, &run("", stderr));
        assert_eq!(
            record,
            "t attempt 1: triple fault (KVM_EXIT_SHUTDOWN)\n    \
             [ 1.0 INFO vmm::runner] booting the guest (boot 1)\n    \
             [ 9.0 INFO vmm::runner] the guest asked for a reset\n    \
             error: vCPU 0 triple fault (KVM_EXIT_SHUTDOWN) at rip 0xfff0 (cs 0xf000)\n"
        );
        // Where KVM saw the triple fault, from the failed run's own report, follows.
        let sites =
            format!("{SHUTDOWN_SITES} {{ vcpu_id: 0, guest_rip: ffffffff81a0c2d3 }} hitcount: 1");
        let with_sites = retry_record(
            "t",
            1,
            TRIPLE_FAULT,
            &run("", &format!("{stderr}\n{sites}")),
        );
        assert!(
            with_sites.ends_with(&format!("    {sites}\n")),
            "{with_sites}"
        );
        // tests/run counts the unindented lines.
        assert_eq!(record.lines().filter(|l| !l.starts_with(' ')).count(), 1);
        assert_eq!(
            retry_record("t", 2, "Kernel panic", &run("", "")),
            "t attempt 2: Kernel panic\n"
        );
    }

    #[test]
    fn a_test_host_crash_is_the_environment_s_and_a_plain_failure_is_not() {
        assert_eq!(
            environment_failure(&run("", "Kernel panic - not syncing")),
            Some("Kernel panic")
        );
        assert_eq!(
            environment_failure(&run("assertion failed: left == right", "")),
            None
        );
    }
}
