//! The `vmm` command: a thin layer of argument parsing and logging over the `vmm` crate.

mod logger;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use vmm::config;
use vmm::runner::{self, RunOptions};

const EXIT_CODES: &str = "\
Exit codes:
  0  the guest powered off (or `vmm validate`: the manifest is valid)
  1  the manifest is invalid
  2  the host cannot run it: no /dev/kvm, missing permission, a missing file,
     interface or device, or a feature this build does not have
  3  the guest failed (triple fault, KVM internal error), or a vmm thread made
     a system call its seccomp filter forbids (a bug in vmm)
  4  stopped by SIGTERM/SIGINT after the shutdown grace period
";

/// Boots a Linux guest on KVM from a Virtink VirtualMachine manifest.
#[derive(Debug, Parser)]
#[command(name = "vmm", version, after_help = EXIT_CODES)]
struct Cli {
    /// Log level for messages on stderr: error, warn, info, debug or trace.
    #[arg(short = 'v', long = "log-level", global = true, default_value = "warn", value_parser = parse_level)]
    log_level: log::LevelFilter,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate the manifest, set up the host side, boot the guest and attach its serial
    /// console to stdin/stdout; exit when the guest ends.
    #[command(after_help = concat!(
        "Examples:\n",
        "  vmm run examples/busybox.yaml\n",
        "  vmm run --dry-run examples/busybox.yaml\n",
        "  vmm run --api-socket /run/vm.sock --serial-log vm.log vm.yaml\n",
        "  curl --unix-socket /run/vm.sock -X PUT http://localhost/v1/vm/power/Shutdown\n",
        "  VM_DATA=$(base64 -w0 vm.json) vmm run   # as in Virtink's VM pod\n",
    ))]
    Run(RunArgs),

    /// Print the manifest with every default filled in and exit 0, or print every error
    /// and exit 1.
    #[command(after_help = "Example:\n  vmm validate examples/busybox.yaml\n")]
    Validate {
        #[command(flatten)]
        source: SourceArgs,
    },
}

/// Where the VirtualMachine comes from.
#[derive(Debug, clap::Args)]
struct SourceArgs {
    /// The VirtualMachine as Virtink's controller hands it to its VM pod: base64 of the
    /// object's JSON. Without FILE or this, `vmm` reads the VM_DATA environment variable.
    #[arg(long, value_name = "BASE64", conflicts_with = "file")]
    vm_data: Option<String>,

    /// The manifest: a YAML (or JSON) file with one VirtualMachine document, and optionally
    /// NetworkAttachmentDefinition and Secret documents.
    file: Option<PathBuf>,
}

impl SourceArgs {
    fn source(self) -> Result<vmm::ManifestSource, String> {
        use vmm::ManifestSource;
        if let Some(file) = self.file {
            return Ok(ManifestSource::File(file));
        }
        if let Some(data) = self.vm_data {
            return Ok(ManifestSource::VmData {
                data,
                origin: "--vm-data",
            });
        }
        match std::env::var(vmm::pod::VM_DATA) {
            Ok(data) if !data.is_empty() => Ok(ManifestSource::VmData {
                data,
                origin: vmm::pod::VM_DATA,
            }),
            _ => Err(
                "no VirtualMachine: give a manifest FILE, --vm-data, or VM_DATA in the \
                      environment"
                    .into(),
            ),
        }
    }
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Print the plan (vCPUs, memory, boot source, devices and their host backends) and
    /// exit, touching nothing, with the code `vmm run` would exit with before booting (2 if
    /// a disk or interface would fail; /dev/kvm is not checked).
    #[arg(long)]
    dry_run: bool,

    /// Serve the control API on this Unix socket: power actions and `info`.
    #[arg(long, value_name = "PATH")]
    api_socket: Option<PathBuf>,

    /// Serve the part of Cloud Hypervisor's API that Virtink's virt-daemon uses on this Unix
    /// socket, write vm-config.json beside it, and boot when vm.create and vm.boot say so, as
    /// Cloud Hypervisor does in Virtink's VM pod. The default is /var/run/virtink/ch.sock
    /// when the VM comes from VM_DATA or --vm-data, else none; `none` turns it off.
    #[arg(long, value_name = "PATH|none")]
    ch_api_socket: Option<PathBuf>,

    /// Also write the guest's serial console output to this file.
    #[arg(long, value_name = "FILE")]
    serial_log: Option<PathBuf>,

    /// Bind a volume of the manifest to a local file or block device (a directory for a
    /// containerRootfs), in place of where its source would be found; the source keeps its
    /// semantics (a containerDisk stays ephemeral, a persistentVolumeClaim persistent).
    #[arg(long = "volume", value_name = "NAME=PATH", value_parser = parse_volume)]
    volumes: Vec<(String, PathBuf)>,

    /// After SIGTERM/SIGINT, how long the guest has to power off after the ACPI power
    /// button before it is stopped (e.g. 30s, 500ms, 2m, 1h; a bare number is seconds).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    shutdown_timeout: Duration,

    /// A limit of the masquerade NAT, repeatable: tcp-flows, udp-flows, icmp-flows (counts),
    /// tcp-buffer (bytes per direction per flow, e.g. 256K), tcp-memory, to-guest-frames,
    /// udp-idle, tcp-idle, inbound-tcp-idle, connect-timeout (durations, e.g. 60s). See the
    /// README for the defaults.
    #[arg(long = "nat-limit", value_name = "KEY=VALUE", value_parser = parse_nat_limit)]
    nat_limits: Vec<(String, String)>,

    /// A range the masquerade guest may not reach (e.g. 10.0.0.0/8, fd00::/8 or one
    /// address), repeatable, added to the default: link-local 169.254.0.0/16 and fe80::/10,
    /// and the clouds' IPv6 metadata addresses. The pod's own resolvers stay reachable on
    /// port 53.
    #[arg(long = "nat-deny", value_name = "CIDR")]
    nat_deny: Vec<vmm::Cidr>,

    /// A range the masquerade guest may reach even though a denied range holds it,
    /// repeatable (e.g. 169.254.169.254 to give the guest the cloud's metadata service).
    #[arg(long = "nat-allow", value_name = "CIDR")]
    nat_allow: Vec<vmm::Cidr>,

    /// The per-thread seccomp filters: true (a forbidden system call ends vmm with exit 3,
    /// naming the thread and the call), log (the kernel logs it and the call goes through),
    /// false (no filters).
    #[arg(long, value_name = "true|false|log", default_value = "true", value_parser = parse_seccomp)]
    seccomp: vmm::SeccompMode,

    #[command(flatten)]
    source: SourceArgs,
}

fn parse_seccomp(s: &str) -> Result<vmm::SeccompMode, String> {
    match s {
        "true" => Ok(vmm::SeccompMode::Enforce),
        "false" => Ok(vmm::SeccompMode::Off),
        "log" => Ok(vmm::SeccompMode::Log),
        _ => Err(format!("{s:?} is not one of true, false, log")),
    }
}

fn parse_level(s: &str) -> Result<log::LevelFilter, String> {
    s.parse()
        .map_err(|_| format!("{s:?} is not one of off, error, warn, info, debug, trace"))
}

fn parse_volume(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((name, path)) if !name.is_empty() && !path.is_empty() => {
            Ok((name.to_string(), PathBuf::from(path)))
        }
        _ => Err(format!("{s:?} is not NAME=PATH")),
    }
}

fn parse_nat_limit(s: &str) -> Result<(String, String), String> {
    let (key, value) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))?;
    // Checked here so that a mistake is a usage error before anything runs.
    vmm::NatLimits::default()
        .set(key, value)
        .map_err(|e| e.to_string())?;
    Ok((key.to_string(), value.to_string()))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    vmm::units::parse_duration(s).map_err(|e| e.to_string())
}

/// The init containers' commands of Virtink's VM pod, which run in the pre-runner image
/// (`vmm`'s container image links these names to `vmm`): by the name `vmm` was started as.
fn init_container_command() -> Option<u8> {
    let mut args = std::env::args_os();
    let argv0 = args.next()?;
    let name = std::path::Path::new(&argv0)
        .file_name()?
        .to_str()?
        .to_string();
    let run: fn(&[String]) -> Result<(), String> = match name.as_str() {
        "virt-init-volume" => vmm::pod::init_volume,
        "sysctl" => vmm::pod::sysctl,
        _ => return None,
    };
    let rest: Result<Vec<String>, _> = args.map(std::ffi::OsString::into_string).collect();
    let Ok(rest) = rest else {
        eprintln!("{name}: an argument is not UTF-8 text");
        return Some(1);
    };
    Some(match run(&rest) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{name}: {e}");
            1
        }
    })
}

fn main() -> ExitCode {
    let start = Instant::now();
    if let Some(code) = init_container_command() {
        return ExitCode::from(code);
    }
    let cli = Cli::parse();
    logger::init(cli.log_level, start);
    std::panic::set_hook(Box::new(|info| {
        vmm::console::restore_terminal();
        eprintln!("vmm: internal error: {info}");
    }));
    let code = match cli.command {
        Command::Validate { source } => validate(source),
        Command::Run(args) => run(args, start),
    };
    ExitCode::from(code)
}

/// A usage error, as clap reports its own (exit 2).
fn usage(message: &str) -> u8 {
    eprintln!("error: {message}\n\nFor more information, try '--help'.");
    2
}

fn validate(source: SourceArgs) -> u8 {
    let source = match source.source() {
        Ok(s) => s,
        Err(e) => return usage(&e),
    };
    match source.load() {
        Ok(manifest) => {
            for field in &manifest.ignored_fields {
                eprintln!("warning: {field} is ignored outside Kubernetes");
            }
            for document in &manifest.ignored_documents {
                eprintln!("warning: {document} is ignored");
            }
            match config::to_yaml(&manifest) {
                Ok(yaml) => {
                    print!("{yaml}");
                    0
                }
                Err(e) => {
                    eprintln!("error: cannot print the manifest: {e}");
                    1
                }
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

fn run(args: RunArgs, start: Instant) -> u8 {
    let manifest = match args.source.source() {
        Ok(s) => s,
        Err(e) => return usage(&e),
    };
    let ch_socket = match args.ch_api_socket {
        Some(path) if path.as_os_str() == "none" => None,
        Some(path) => Some(path),
        None if manifest.in_pod() => Some(PathBuf::from(vmm::pod::CH_SOCKET)),
        None => None,
    };
    let opts = RunOptions {
        manifest,
        api_socket: args.api_socket,
        ch_socket,
        serial_log: args.serial_log,
        volumes: args.volumes,
        shutdown_timeout: args.shutdown_timeout,
        nat_limits: {
            let mut limits = vmm::NatLimits::default();
            for (key, value) in &args.nat_limits {
                // Already checked by the parser.
                let _ = limits.set(key, value);
            }
            limits
        },
        nat_egress: {
            let mut egress = vmm::NatEgress::default();
            egress.deny.extend(args.nat_deny);
            egress.allow = args.nat_allow;
            egress
        },
        seccomp: args.seccomp,
        process_start: start,
    };
    if args.dry_run {
        return match runner::dry_run(&opts) {
            Ok(plan) => {
                print!("{plan}");
                0
            }
            Err(runner::RunError::WouldFail(plan)) => {
                print!("{plan}");
                eprintln!("error: vmm run would fail: the plan says where (\"would fail\")");
                runner::ExitCode::HostCannotRun as u8
            }
            Err(e) => report(&e),
        };
    }
    match runner::run(&opts) {
        Ok(code) => code as u8,
        Err(e) => report(&e),
    }
}

fn report(e: &runner::RunError) -> u8 {
    eprintln!("error: {}", runner::error_chain(e));
    e.exit_code() as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        parse_duration("2d").unwrap_err();
        parse_duration("s").unwrap_err();
    }

    #[test]
    fn volumes() {
        assert_eq!(
            parse_volume("data=/mnt/d.img"),
            Ok(("data".into(), PathBuf::from("/mnt/d.img")))
        );
        parse_volume("data").unwrap_err();
        parse_volume("=x").unwrap_err();
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
