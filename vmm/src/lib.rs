//! `vmm`: from a Virtink `VirtualMachine` manifest to a running KVM guest.
//!
//! [`config`] reads and validates the manifest; [`runner`] drives a run: it resolves the
//! kernel ([`boot`]), checks the host ([`host`]), and boots [`vm::Vm`]s, each with guest RAM
//! ([`memory`]), vCPU threads ([`vcpu`]) and the devices of the `devices` crate, laid out as
//! [`arch`] describes. [`api`] is the control socket, [`console`] the guest console on
//! stdin/stdout, [`plan`] the `--dry-run` report.

pub mod api;
pub mod arch;
pub mod boot;
pub mod config;
pub mod console;
pub mod disk;
pub mod host;
pub mod imageboot;
pub mod interrupts;
pub mod memory;
pub mod network;
pub mod plan;
pub mod pod;
pub mod runner;
pub mod signals;
pub mod sriov;
pub mod vcpu;
pub mod vfio;
pub mod vm;

pub use pod::ManifestSource;
pub use runner::{ExitCode, RunError, RunOptions};

pub use devices::seccomp::Mode as SeccompMode;
/// The masquerade NAT's limits (`--nat-limit`), for the command line.
pub use net::nat::Limits as NatLimits;
pub use net::nat::{Cidr, Egress as NatEgress};
/// How every flag reads durations and sizes.
pub use net::units;
