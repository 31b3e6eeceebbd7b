//! Boot, lifecycle and control of real guests: `vmm` runs inside the KVM test host and boots
//! Debian's cloud kernel with the busybox test initramfs.

// An integration test crate is a test module of its own: its tests need no `#[cfg(test)]`.
#![allow(clippy::tests_outside_test_module)]

use std::time::Duration;

use vmm_tests::guest::{Guest, Manifest};
use vmm_tests::testhost_test;

const EXIT: Duration = Duration::from_secs(60);

/// Parses `/proc/cpuinfo` into (processor count, distinct physical ids, cores per package).
fn topology(cpuinfo: &str) -> (usize, Vec<String>, Vec<String>) {
    let field = |name: &str| -> Vec<String> {
        cpuinfo
            .lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.split(':').nth(1))
            .map(|v| v.trim().to_string())
            .collect()
    };
    let processors = field("processor").len();
    let mut packages = field("physical id");
    packages.dedup();
    let mut cores = field("cpu cores");
    cores.dedup();
    (processors, packages, cores)
}

/// `Cpus_allowed_list` of each `vcpuN` thread of process `pid`, in vCPU order.
fn vcpu_affinity(pid: u32) -> Vec<String> {
    let mut threads: Vec<(String, String)> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| {
            let dir = t.ok()?.path();
            let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
            let comm = comm.trim().strip_prefix("vcpu")?.to_string();
            let status = std::fs::read_to_string(dir.join("status")).ok()?;
            let cpus = status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?
                .trim()
                .to_string();
            Some((comm, cpus))
        })
        .collect();
    threads.sort();
    threads.into_iter().map(|(_, cpus)| cpus).collect()
}

testhost_test!(
    fn vcpus_are_visible_with_their_topology() {
        for (sockets, cores) in [(1, 1), (1, 2), (2, 1)] {
            let name = format!("cpus-{sockets}x{cores}");
            let mut manifest = Manifest::new(&name).cpus(sockets, cores);
            let pinned = (sockets, cores) == (1, 2);
            if pinned {
                manifest = manifest.dedicated_cpus();
            }
            let mut guest = Guest::boot(&manifest, &[]);
            guest.wait_ready(1);
            let cpuinfo = guest.check("cat /proc/cpuinfo");
            let (processors, packages, per_package) = topology(&cpuinfo);
            let want = usize::try_from(sockets * cores).unwrap();
            assert_eq!(processors, want, "{name}: processors\n{cpuinfo}");
            assert_eq!(
                packages.len(),
                sockets as usize,
                "{name}: packages {packages:?}"
            );
            assert_eq!(per_package, vec![cores.to_string()], "{name}: cpu cores");
            assert_eq!(guest.check("nproc").trim(), want.to_string());
            // The LAPIC's TSC-deadline mode: the guest's timer costs one MSR write a tick.
            assert!(
                cpuinfo.contains(" tsc_deadline_timer"),
                "{name}: no tsc_deadline_timer flag\n{cpuinfo}"
            );
            if pinned {
                // dedicatedCPUPlacement: vCPU i runs on the i-th CPU vmm may use.
                assert_eq!(vcpu_affinity(guest.pid()), vec!["0", "1"]);
            }
            guest.send("poweroff -f");
            assert_eq!(guest.wait_exit(EXIT), 0, "{}", guest.stderr());
        }
    },
    timeout = 420
);

/// KiB of the guest RAM mapping of `pid` (every mapping of at least `size` bytes) that
/// transparent huge pages back.
fn guest_ram_huge_kib(pid: u32, size: u64) -> u64 {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let mut large = false;
    let mut kib = 0;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or_default();
        if let Some((lo, hi)) = first.split_once('-')
            && let (Ok(lo), Ok(hi)) = (u64::from_str_radix(lo, 16), u64::from_str_radix(hi, 16))
        {
            large = hi - lo >= size;
        } else if first == "AnonHugePages:" && large {
            kib += fields
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    kib
}

/// The size and the resident KiB of `pid`'s code mappings of its own executable (`r-xp`).
fn own_code_kib(pid: u32) -> (u64, u64) {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    let exe = exe.to_str().unwrap();
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let (mut code, mut size, mut rss) = (false, 0, 0);
    for line in smaps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.first().is_some_and(|f| f.contains('-')) && fields.len() >= 5 {
            code = fields[1] == "r-xp" && fields.get(5) == Some(&exe);
            continue;
        }
        let kib = || {
            fields
                .get(1)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        match fields.first() {
            Some(&"Size:") if code => size += kib(),
            Some(&"Rss:") if code => rss += kib(),
            _ => {}
        }
    }
    (size, rss)
}

testhost_test!(
    fn memtotal_matches_memory_size() {
        let size: u64 = 384 << 20;
        let mut guest = Guest::boot(&Manifest::new("mem").memory("384Mi"), &[]);
        guest.wait_ready(1);
        // The firmware memory map the guest was given: all of memory.size is RAM but the
        // legacy hole between the EBDA (0x9fc00) and 1 MiB.
        let map = guest.check(
            "for d in /sys/firmware/memmap/*; do echo $(cat $d/type) $(cat $d/start) $(cat $d/end); done",
        );
        let ram: u64 = map
            .lines()
            .filter(|l| l.starts_with("System RAM"))
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let parse = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap();
                parse(f[3]) - parse(f[2]) + 1
            })
            .sum();
        assert_eq!(ram, size - (0x10_0000 - 0x9_fc00), "memmap:\n{map}");
        let meminfo = guest.check("grep MemTotal /proc/meminfo");
        let kib: u64 = meminfo.split_whitespace().nth(1).unwrap().parse().unwrap();
        // MemTotal is RAM minus what the kernel reserves for itself at boot.
        assert!(
            kib * 1024 <= size && kib * 1024 > size - (48 << 20),
            "MemTotal {kib} kB for a {size}-byte guest"
        );
        // Guest RAM is mapped 2 MiB-aligned with MADV_HUGEPAGE (the test host's THP mode is
        // `madvise`), so what the guest touched is backed by huge pages: an unaligned mapping
        // gets none, and every 4 KiB the guest touches costs a nested page fault.
        let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap();
        assert!(
            !thp.contains("[never]"),
            "THP is off in the test host: {thp}"
        );
        let huge = guest_ram_huge_kib(guest.pid(), size);
        assert!(huge >= 2048, "no huge pages back guest RAM ({huge} KiB)");
        // Set-up ran code from all over vmm's text and had nearly all of it mapped; once
        // the VM runs, only what it uses is (without the drop: 86 % of a debug build's code
        // resident here, 95 % of a release build's; with it, 52 % and 39 %).
        let (code, resident) = own_code_kib(guest.pid());
        assert!(code > 1024, "no code mapping of vmm found ({code} KiB)");
        assert!(
            resident * 4 < code * 3,
            "{resident} of vmm's {code} KiB of code resident while the guest runs"
        );
        guest.send("poweroff -f");
        assert_eq!(guest.wait_exit(EXIT), 0);
    }
);

testhost_test!(
    fn elf_vmlinux_boots_from_a_directory() {
        let image = vmm_tests::guest_image().join("elf");
        let mut guest = Guest::boot(&Manifest::new("elf").kernel_image(&image), &[]);
        guest.wait_ready(1);
        // Same kernel and agent as the bzImage guest: the ELF loader put it at its link
        // address and entered it in 64-bit mode.
        assert!(guest.check("uname -r").contains("cloud-amd64"));
        guest.send("poweroff -f");
        assert_eq!(guest.wait_exit(EXIT), 0, "{}", guest.stderr());
    }
);

testhost_test!(
    fn guest_reboot_boots_again_in_the_same_process() {
        // The default reboot path (ACPI reset register), then the i8042 one (`reboot=k`).
        let mut guest = Guest::boot(&Manifest::new("reboot"), &[]);
        let first = guest.wait_ready(1);
        guest.send("reboot -f");
        let second = guest.wait_ready(2);
        assert_ne!(first, second, "a new boot has a new boot id");
        // The second boot's vCPU gave up its capabilities too; the main thread kept none.
        assert!(guest.assert_confined(0) >= 2);
        guest.send("poweroff -f");
        assert_eq!(guest.wait_exit(EXIT), 0, "{}", guest.stderr());
        assert!(guest.stderr().contains("the guest asked for a reset"));

        let mut guest = Guest::boot(&Manifest::new("reboot-kbd").cmdline("reboot=k"), &[]);
        guest.wait_ready(1);
        guest.send("reboot -f");
        guest.wait_ready(2);
        guest.send("poweroff -f");
        assert_eq!(guest.wait_exit(EXIT), 0, "{}", guest.stderr());
    }
);

testhost_test!(
    fn the_console_keeps_every_byte_while_daemons_die_beside_the_agent() {
        // A daemon killed in the guest is an orphan's death: a SIGCHLD for its parent. When
        // that was the agent, its next console write could fail with EINTR and lose bytes
        // (a lost newline hid `VMMTEST-DONE`). Two vCPUs let the daemon die during the write.
        let mut guest = Guest::boot(&Manifest::new("daemons").cpus(1, 2), &[]);
        guest.wait_ready(1);
        for _ in 0..100 {
            guest.check("for p in 8080 8081 8082 8083; do httpd -p $p -h /tmp; done");
            // `exec` finds the answer only after the newline the agent prints before it.
            guest.check("killall httpd");
        }
        guest.send("poweroff -f");
        assert_eq!(guest.wait_exit(EXIT), 0, "{}", guest.stderr());
    }
);

testhost_test!(
    fn sigterm_presses_the_power_button() {
        let mut guest = Guest::boot(&Manifest::new("sigterm"), &[]);
        guest.wait_ready(1);
        guest.signal(libc::SIGTERM);
        guest.wait_for_after(0, "VMMTEST-POWER-BUTTON", Duration::from_secs(60));
        assert_eq!(guest.wait_exit(EXIT), 0, "{}", guest.stderr());
        assert!(
            guest.stderr().contains("received SIGTERM"),
            "{}",
            guest.stderr()
        );
    }
);

testhost_test!(
    fn sigterm_stops_a_guest_that_ignores_the_button_after_the_grace_period() {
        let mut guest = Guest::boot(
            &Manifest::new("sigterm-grace"),
            &["--shutdown-timeout", "3s"],
        );
        guest.wait_ready(1);
        guest.check("kill $(cat /run/power-button.pid)");
        guest.signal(libc::SIGINT);
        assert_eq!(guest.wait_exit(EXIT), 4, "{}", guest.stderr());
        assert!(
            guest.stderr().contains("did not power off within 3s"),
            "{}",
            guest.stderr()
        );
        assert!(!guest.console().contains("VMMTEST-POWER-BUTTON"));
    }
);

testhost_test!(
    fn triple_fault_is_a_guest_failure_and_rerun_on_failure_boots_again() {
        // `reboot=t` makes Linux reboot by triple-faulting: a guest failure to vmm.
        let mut guest = Guest::boot(&Manifest::new("triple").cmdline("reboot=t"), &[]);
        guest.wait_ready(1);
        guest.send("reboot -f");
        assert_eq!(guest.wait_exit(EXIT), 3, "{}", guest.stderr());
        assert!(
            guest.stderr().contains("triple fault"),
            "{}",
            guest.stderr()
        );

        let manifest = Manifest::new("rerun")
            .cmdline("reboot=t")
            .run_policy("RerunOnFailure");
        let mut guest = Guest::boot(&manifest, &[]);
        guest.wait_ready(1);
        guest.send("reboot -f");
        guest.wait_ready(2);
        guest.send("poweroff -f");
        assert_eq!(guest.wait_exit(EXIT), 0, "{}", guest.stderr());
    }
);

testhost_test!(
    fn run_policy_always_boots_again_after_power_off_until_signalled() {
        let mut guest = Guest::boot(&Manifest::new("always").run_policy("Always"), &[]);
        guest.wait_ready(1);
        guest.send("poweroff -f");
        guest.wait_ready(2);
        guest.signal(libc::SIGTERM);
        assert_eq!(guest.wait_exit(EXIT), 0, "{}", guest.stderr());
        assert_eq!(guest.console().matches("VMMTEST-READY").count(), 2);
    }
);

testhost_test!(
    fn hugepages_back_guest_ram() {
        let dir = vmm_tests::TempDir::new("huge");
        std::fs::write("/proc/sys/vm/nr_hugepages", "160").expect("reserve hugepages");
        // Pages in use or promised: hugetlb pages are reserved when vmm maps guest RAM and
        // taken from the free pool as the guest touches them.
        let committed = || -> u64 {
            let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
            let get = |key: &str| -> u64 {
                meminfo
                    .lines()
                    .find(|l| l.starts_with(key))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .unwrap()
                    .parse()
                    .unwrap()
            };
            get("HugePages_Total:") - get("HugePages_Free:") + get("HugePages_Rsvd:")
        };
        assert_eq!(committed(), 0);
        let manifest = Manifest::new("huge").memory("256Mi").hugepages("2Mi");
        let mut guest = Guest::start(&manifest.write(dir.path()), &[]);
        guest.wait_ready(1);
        assert_eq!(committed(), 128, "256 MiB of 2 MiB pages");
        guest.send("poweroff -f");
        assert_eq!(guest.wait_exit(EXIT), 0);
        assert_eq!(committed(), 0, "hugepages returned");

        // Not enough hugepages: a clear error, exit 2.
        std::fs::write("/proc/sys/vm/nr_hugepages", "0").unwrap();
        let mut guest = Guest::start(&manifest.write(dir.path()), &[]);
        assert_eq!(guest.wait_exit(EXIT), 2);
        assert!(
            guest.stderr().contains("nr_hugepages"),
            "{}",
            guest.stderr()
        );
    }
);

testhost_test!(
    fn api_power_actions_and_info() {
        let dir = vmm_tests::TempDir::new("api");
        let socket = dir.path().join("api.sock");
        let log = dir.path().join("serial.log");
        let socket_arg = socket.to_str().unwrap();
        let manifest = Manifest::new("api").cpus(1, 2).memory("320Mi");
        let mut guest = Guest::start(
            &manifest.write(dir.path()),
            &[
                "--api-socket",
                socket_arg,
                "--serial-log",
                log.to_str().unwrap(),
            ],
        );
        let boot1 = guest.wait_ready(1);
        let api = |method: &str, path: &str| vmm_tests::http_unix(&socket, method, path, &[]);
        let (code, info) = api("GET", "/v1/vm/info");
        assert_eq!(code, 200, "{info}");
        let info: serde_json::Value = serde_json::from_str(&info).unwrap();
        assert_eq!(info["state"], "Running");
        assert_eq!(info["vcpus"], 2);
        assert_eq!(info["memory_bytes"], 320u64 << 20);
        assert_eq!(info["boot_markers"][0]["value"], 1, "{info}");

        assert_eq!(api("PUT", "/v1/vm/power/Pause").0, 204);
        assert!(api("GET", "/v1/vm/info").1.contains("\"Paused\""));
        assert_eq!(api("PUT", "/v1/vm/power/Pause").0, 409);
        // Paused: the agent cannot answer.
        let before = guest.console().len();
        guest.send("echo still-running");
        std::thread::sleep(Duration::from_secs(3));
        assert!(!guest.console()[before..].contains("still-running"));
        assert_eq!(api("PUT", "/v1/vm/power/Resume").0, 204);
        guest.wait_for_after(before, "still-running", Duration::from_secs(30));

        assert_eq!(api("PUT", "/v1/vm/power/Reset").0, 204);
        let boot2 = guest.wait_ready(2);
        assert_ne!(boot1, boot2);

        assert_eq!(api("PUT", "/v1/vm/power/Reboot").0, 204);
        guest.wait_for_after(0, "VMMTEST-POWER-BUTTON", Duration::from_secs(60));
        guest.wait_ready(3);

        assert_eq!(api("PUT", "/v1/vm/power/Explode").0, 400);
        assert_eq!(api("PUT", "/v1/vm/power/Shutdown").0, 204);
        assert_eq!(guest.wait_exit(EXIT), 0, "{}", guest.stderr());
        assert!(!socket.exists(), "the API socket is removed on exit");
        let serial = std::fs::read_to_string(&log).unwrap();
        assert_eq!(serial.matches("VMMTEST-READY").count(), 3, "{serial}");

        // PowerOff stops at once.
        let mut guest = Guest::start(&manifest.write(dir.path()), &["--api-socket", socket_arg]);
        guest.wait_ready(1);
        assert_eq!(api("PUT", "/v1/vm/power/PowerOff").0, 204);
        assert_eq!(guest.wait_exit(EXIT), 0, "{}", guest.stderr());
    }
);

testhost_test!(
    fn run_policy_manual_waits_for_power_on() {
        let dir = vmm_tests::TempDir::new("manual");
        let socket = dir.path().join("api.sock");
        let socket_arg = socket.to_str().unwrap().to_string();
        let manifest = Manifest::new("manual").run_policy("Manual");
        let mut guest = Guest::start(&manifest.write(dir.path()), &["--api-socket", &socket_arg]);
        let api = |method: &str, path: &str| vmm_tests::http_unix(&socket, method, path, &[]);
        let start = std::time::Instant::now();
        while !socket.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "{}",
                guest.stderr()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // Not booted: the VM waits, and says so.
        let (code, info) = api("GET", "/v1/vm/info");
        assert_eq!(code, 200, "{info}");
        let info: serde_json::Value = serde_json::from_str(&info).unwrap();
        assert_eq!(info["state"], "Stopped");
        assert_eq!(api("PUT", "/v1/vm/power/Pause").0, 409);
        std::thread::sleep(Duration::from_secs(2));
        assert!(
            !guest.console().contains("VMMTEST-READY"),
            "{}",
            guest.console()
        );
        // PowerOn boots it; a second PowerOn is refused.
        assert_eq!(api("PUT", "/v1/vm/power/PowerOn").0, 204);
        guest.wait_ready(1);
        assert_eq!(api("PUT", "/v1/vm/power/PowerOn").0, 409);
        assert_eq!(api("PUT", "/v1/vm/power/Shutdown").0, 204);
        assert_eq!(guest.wait_exit(EXIT), 0, "{}", guest.stderr());
    }
);
