//! Per-thread seccomp filters: each thread of `vmm` may make only the system calls its job
//! needs, and the filter is in place before the thread reads any guest or peer input.
//!
//! A thread's filter is the intersection of its own and every filter of the thread that
//! started it (filters are inherited and stack). The main thread starts the vCPUs and the
//! device workers at every boot, so its list holds what they need too; each of them then
//! narrows its own. The threads and what they do:
//!
//! | role | thread | its work |
//! |---|---|---|
//! | [`Role::Main`] | `vmm` | boots, resets, stops the VM; signals, console, API commands |
//! | [`Role::Vcpu`] | `vcpuN` | `KVM_RUN` and the device models' register accesses |
//! | [`Role::NetWorker`] | `virtio-net` | the NIC's queues, the TAP or the masquerade NAT |
//! | [`Role::DhcpResponder`] | `vhost-net-dhcp` | a vhost-net NIC's DHCP, on its packet socket |
//! | [`Role::BlockWorker`] | `virtio-blk-N` | a disk's queue, I/O on its file |
//! | [`Role::Api`] | `api`, `api-client` | the API socket |
//! | [`Role::SerialLog`] | `serial-log` | writes `--serial-log` and rotates it |
//!
//! A call outside the list is a bug in `vmm`, and with filters enforced it ends `vmm` at
//! once: a `SIGSYS` handler writes which thread made which call and exits with status 3.
//! `--seccomp=log` lets such calls through and has the kernel log them (audit type 1326 in
//! the kernel log), `--seccomp=false` installs no filter.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::io;
use std::sync::OnceLock;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// What happens to a system call outside a thread's list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `vmm` ends, naming the thread and the call (the default).
    Enforce,
    /// The call goes through and the kernel logs it.
    Log,
    /// No filters.
    Off,
}

/// Which thread a filter is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The thread that runs the VM's life cycle and starts the vCPUs and device workers.
    Main,
    /// A vCPU: `KVM_RUN`, MMIO and port I/O into the device models.
    Vcpu,
    /// A virtio-net worker with its frame backend (TAP or the masquerade NAT).
    NetWorker,
    /// A virtio-blk worker.
    BlockWorker,
    /// A vhost-net NIC's DHCP server: reads requests from and answers on a packet socket
    /// it was given.
    DhcpResponder,
    /// The API's listener and its client threads.
    Api,
    /// The `--serial-log` writer: the only thread besides main that may open and rename a
    /// file (to rotate the log), so that the vCPUs, which produce the output, need not.
    SerialLog,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Self::Main => "main",
            Self::Vcpu => "vCPU",
            Self::NetWorker => "virtio-net worker",
            Self::BlockWorker => "virtio-blk worker",
            Self::DhcpResponder => "DHCP responder",
            Self::Api => "API",
            Self::SerialLog => "serial log",
        }
    }
}

static MODE: OnceLock<Mode> = OnceLock::new();

thread_local! {
    /// The role of this thread's last filter, for the `SIGSYS` handler's message.
    static ROLE: Cell<Option<Role>> = const { Cell::new(None) };
}

/// Sets the mode for every filter installed from now on, and with [`Mode::Enforce`] the
/// `SIGSYS` handler that reports a forbidden call. Called once, before any filter; a second
/// call changes nothing.
pub fn set_mode(mode: Mode) -> io::Result<()> {
    if MODE.set(mode).is_err() {
        return Ok(());
    }
    if mode == Mode::Enforce {
        install_sigsys_handler()?;
    }
    Ok(())
}

/// The mode [`set_mode`] set; [`Mode::Off`] before that, so that unit tests and library
/// users get no filter unless they ask for one.
pub fn mode() -> Mode {
    MODE.get().copied().unwrap_or(Mode::Off)
}

/// Installs `role`'s filter on the calling thread (nothing with [`Mode::Off`]).
pub fn confine(role: Role) -> io::Result<()> {
    let action = match mode() {
        Mode::Off => return Ok(()),
        Mode::Enforce => SeccompAction::Trap,
        Mode::Log => SeccompAction::Log,
    };
    install(role, action)
}

/// Installs `role`'s filter with `mismatch` for the calls outside its list.
fn install(role: Role, mismatch: SeccompAction) -> io::Result<()> {
    let program = program(role, mismatch)?;
    ROLE.with(|r| r.set(Some(role)));
    let apply =
        |p: &BpfProgram| seccompiler::apply_filter(p).map_err(|e| io::Error::other(e.to_string()));
    // Stacked filters: the kernel takes the strongest verdict, and ERRNO beats ALLOW, so a
    // call the role's list allows can still fail softly here.
    if allowed(role).iter().any(|(nr, _)| *nr == libc::SYS_clone3) {
        apply(&failing(libc::SYS_clone3, libc::ENOSYS)?)?;
    }
    if !matches!(role, Role::Main | Role::SerialLog) {
        // Library code may look for a file now and then (glibc's message catalogs when an
        // error is formatted): it is told no, and goes on without.
        apply(&failing(libc::SYS_openat, libc::EACCES)?)?;
    }
    apply(&program)
}

/// A filter that fails `nr` with `errno` and allows everything else.
fn failing(nr: i64, errno: i32) -> io::Result<BpfProgram> {
    let rules = BTreeMap::from([(nr, Vec::new())]);
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(errno.unsigned_abs()),
        TargetArch::x86_64,
    )
    .map_err(|e| io::Error::other(e.to_string()))?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| io::Error::other(e.to_string()))
}

/// `role`'s filter as a BPF program, with `mismatch` for calls outside its list.
pub fn program(role: Role, mismatch: SeccompAction) -> io::Result<BpfProgram> {
    let rules: BTreeMap<i64, Vec<SeccompRule>> = allowed(role)
        .into_iter()
        .map(|(nr, conditions)| {
            let rules = conditions
                .into_iter()
                .map(|c| SeccompRule::new(c).map_err(|e| io::Error::other(e.to_string())))
                .collect::<io::Result<Vec<_>>>()?;
            Ok((nr, rules))
        })
        .collect::<io::Result<_>>()?;
    let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, TargetArch::x86_64)
        .map_err(|e| io::Error::other(e.to_string()))?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| io::Error::other(e.to_string()))
}

/// A system call allowed whatever its arguments, or only with one of the argument
/// conditions listed (each a conjunction).
type Allowed = (i64, Vec<Vec<SeccompCondition>>);

fn any(nr: i64) -> Allowed {
    (nr, Vec::new())
}

/// Argument `index` equals `value` (compared as 32 bits: flags and request numbers).
fn arg_eq(index: u8, value: u64) -> SeccompCondition {
    // Indexes 0..=5 are always valid, so `new` cannot fail for them.
    SeccompCondition::new(index, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)
        .unwrap_or_else(|_| unreachable!("argument index {index} is valid"))
}

/// `nr` allowed when argument `index` is one of `values`.
fn one_of(nr: i64, index: u8, values: &[u64]) -> Allowed {
    (nr, values.iter().map(|&v| vec![arg_eq(index, v)]).collect())
}

/// The ioctl request numbers a vCPU thread may use (x86_64), checked against the kernel
/// headers' definitions by a test in `vmm`, which knows KVM.
pub mod vcpu_ioctl {
    /// `_IO(KVMIO, 0x80)`.
    pub const KVM_RUN: u64 = 0xae80;
    /// `_IOR(KVMIO, 0x81, struct kvm_regs)`: registers for a failure's report.
    pub const KVM_GET_REGS: u64 = 0x8090_ae81;
    /// `_IOR(KVMIO, 0x83, struct kvm_sregs)`.
    pub const KVM_GET_SREGS: u64 = 0x8138_ae83;
    /// `_IOW(KVMIO, 0x61, struct kvm_irq_level)`: legacy interrupt lines.
    pub const KVM_IRQ_LINE: u64 = 0x4008_ae61;
    /// `_IOW(KVMIO, 0x76, struct kvm_irqfd)`: MSI-X vectors unmasked or moved.
    pub const KVM_IRQFD: u64 = 0x4020_ae76;
    /// `_IOW(KVMIO, 0x6a, struct kvm_irq_routing)`: MSI routes the driver programs.
    pub const KVM_SET_GSI_ROUTING: u64 = 0x4008_ae6a;
    /// `_IOW(KVMIO, 0xa5, struct kvm_msi)`.
    pub const KVM_SIGNAL_MSI: u64 = 0x4020_aea5;
    /// `_IOW(KVMIO, 0x79, struct kvm_ioeventfd)`: a BAR move re-registers queue notifies.
    pub const KVM_IOEVENTFD: u64 = 0x4040_ae79;
    /// `_IOW(KVMIO, 0x46, struct kvm_userspace_memory_region)`: a VFIO BAR moved.
    pub const KVM_SET_USER_MEMORY_REGION: u64 = 0x4020_ae46;
    /// `_IOW('T', 208, unsigned int)`: the driver's offloads, on activation.
    pub const TUNSETOFFLOAD: u64 = 0x4004_54d0;
    /// `_IO(VFIO_TYPE, VFIO_BASE + 10)`: a VF's MSI/MSI-X enabled or masked.
    pub const VFIO_DEVICE_SET_IRQS: u64 = 0x3b6e;
    /// `_IO(VFIO_TYPE, VFIO_BASE + 11)`: a function-level reset.
    pub const VFIO_DEVICE_RESET: u64 = 0x3b6f;
}

const VCPU_IOCTLS: &[u64] = &[
    vcpu_ioctl::KVM_RUN,
    vcpu_ioctl::KVM_GET_REGS,
    vcpu_ioctl::KVM_GET_SREGS,
    vcpu_ioctl::KVM_IRQ_LINE,
    vcpu_ioctl::KVM_IRQFD,
    vcpu_ioctl::KVM_SET_GSI_ROUTING,
    vcpu_ioctl::KVM_SIGNAL_MSI,
    vcpu_ioctl::KVM_IOEVENTFD,
    vcpu_ioctl::KVM_SET_USER_MEMORY_REGION,
    vcpu_ioctl::TUNSETOFFLOAD,
    vcpu_ioctl::VFIO_DEVICE_SET_IRQS,
    vcpu_ioctl::VFIO_DEVICE_RESET,
];

/// What a vhost-net NIC's activation and reset ask of the kernel on the vCPU that writes
/// the device status: features, each ring's size, addresses, base, kick and call, and the
/// TAP as its backend, or none (see `virtio::vhost_net`).
fn vhost_activation_ioctls() -> [u64; 7] {
    use vhost::vhost_kern::vhost_binding as v;
    [
        v::VHOST_SET_FEATURES(),
        v::VHOST_SET_VRING_NUM(),
        v::VHOST_SET_VRING_ADDR(),
        v::VHOST_SET_VRING_BASE(),
        v::VHOST_SET_VRING_KICK(),
        v::VHOST_SET_VRING_CALL(),
        v::VHOST_NET_SET_BACKEND(),
    ]
    .map(u64::from)
}

/// `_IO(0x12, 119)`, `_IO(0x12, 127)`: discard and zero a range of a block device.
const BLKDISCARD: u64 = 0x1277;
const BLKZEROOUT: u64 = 0x127f;
/// `_IOR(0x12, 114, u64)` and `_IO(0x12, 104)`: a block device's size and sector size.
const BLKGETSIZE64: u64 = 0x8008_1272;
const BLKSSZGET: u64 = 0x1268;

/// Every thread: memory, locks, time, its own end, logging to stderr.
const COMMON: &[i64] = &[
    libc::SYS_brk,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_nanosleep,
    libc::SYS_clock_nanosleep,
    libc::SYS_clock_gettime,
    libc::SYS_gettimeofday,
    libc::SYS_getrandom,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_read,
    libc::SYS_readv,
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// Waiting on several descriptors and being woken.
const EVENTS: &[i64] = &[
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_eventfd2,
    libc::SYS_timerfd_create,
    libc::SYS_timerfd_settime,
    libc::SYS_timerfd_gettime,
    libc::SYS_fcntl,
];

/// What starting a thread takes (the new thread's own start-up included).
const SPAWN: &[i64] = &[
    libc::SYS_clone,
    // Allowed here so that the stacked filter's ENOSYS is the verdict (see `confine`).
    libc::SYS_clone3,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_prctl,
    libc::SYS_sched_getaffinity,
];

/// The masquerade NAT's host sockets: TCP, UDP and ICMP echo to the pod's network.
const SOCKETS: &[i64] = &[
    libc::SYS_socket,
    libc::SYS_connect,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_accept4,
    libc::SYS_shutdown,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
];

/// Reading and writing frames on a packet socket already open and bound.
const PACKET_IO: &[i64] = &[libc::SYS_recvfrom, libc::SYS_sendto];

/// Disk I/O on an open file or block device.
const DISK_IO: &[i64] = &[
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_preadv2,
    libc::SYS_pwritev2,
    libc::SYS_fdatasync,
    libc::SYS_fsync,
    libc::SYS_fallocate,
    // A qcow2 image (and a container disk's overlay) grows as clusters are allocated.
    libc::SYS_ftruncate,
    libc::SYS_fstatfs,
    libc::SYS_lseek,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
];

/// The vCPU's ioctls: `KVM_RUN`, and what its device models do on register writes (memory
/// slots and ioeventfds for BAR moves, MSI routes, VFIO interrupts, TAP offloads).
const VCPU_EXTRA: &[i64] = &[
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_tgkill,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
];

/// The serial log's writer: writing, and rotating (`FILE` becomes `FILE.1` and a new `FILE`
/// is created).
const LOG_FILE: &[i64] = &[
    libc::SYS_fcntl,
    libc::SYS_openat,
    libc::SYS_rename,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_lseek,
];

/// The main thread: everything it does after set-up, and everything the threads it starts
/// do (see the module's doc).
const MAIN_EXTRA: &[i64] = &[
    // The threads it starts install their own filters (which can only narrow theirs).
    libc::SYS_seccomp,
    libc::SYS_ioctl,
    libc::SYS_openat,
    libc::SYS_open,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_lseek,
    libc::SYS_readlink,
    libc::SYS_readlinkat,
    libc::SYS_getdents64,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_rename,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_ftruncate,
    libc::SYS_memfd_create,
    libc::SYS_dup,
    libc::SYS_dup3,
    libc::SYS_pipe2,
    libc::SYS_signalfd4,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigtimedwait,
    libc::SYS_kill,
    libc::SYS_tgkill,
    libc::SYS_sched_setaffinity,
    libc::SYS_getuid,
    libc::SYS_geteuid,
    libc::SYS_getcwd,
    libc::SYS_uname,
    libc::SYS_capget,
    libc::SYS_capset,
    libc::SYS_wait4,
];

/// The API threads: accept, read a request with a deadline, answer; one thread per client.
const API_EXTRA: &[i64] = &[
    libc::SYS_accept4,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_setsockopt,
    libc::SYS_getsockopt,
    libc::SYS_shutdown,
];

fn allowed(role: Role) -> Vec<Allowed> {
    let lists: &[&[i64]] = match role {
        Role::Main => &[
            COMMON, EVENTS, SPAWN, SOCKETS, DISK_IO, VCPU_EXTRA, MAIN_EXTRA,
        ],
        Role::Vcpu => &[COMMON, EVENTS, VCPU_EXTRA],
        Role::NetWorker => &[COMMON, EVENTS, SOCKETS],
        Role::BlockWorker => &[COMMON, EVENTS, DISK_IO],
        Role::DhcpResponder => &[COMMON, EVENTS, PACKET_IO],
        Role::Api => &[COMMON, EVENTS, SPAWN, API_EXTRA],
        Role::SerialLog => &[COMMON, LOG_FILE],
    };
    let mut calls: Vec<i64> = lists.iter().flat_map(|l| l.iter().copied()).collect();
    // Allowed here, failed with EACCES by a stacked filter (see `install`).
    calls.push(libc::SYS_openat);
    calls.sort_unstable();
    calls.dedup();
    let mut out: Vec<Allowed> = calls.into_iter().map(any).collect();
    if role == Role::Vcpu {
        let mut ioctls = VCPU_IOCTLS.to_vec();
        ioctls.extend(vhost_activation_ioctls());
        out.push(one_of(libc::SYS_ioctl, 1, &ioctls));
    }
    if role == Role::NetWorker {
        // std's `set_nonblocking` on the NAT's sockets, and attaching or detaching a
        // multi-queue TAP's queue as the driver enables queue pairs; nothing else.
        out.push(one_of(
            libc::SYS_ioctl,
            1,
            &[libc::FIONBIO, net::tap::tunsetqueue_request()],
        ));
    }
    if role == Role::BlockWorker {
        // DISCARD and WRITE_ZEROES on a raw block device, and the size and sector size
        // queries imago may make of a block device under a qcow2 chain; nothing else.
        out.push(one_of(
            libc::SYS_ioctl,
            1,
            &[BLKDISCARD, BLKZEROOUT, BLKGETSIZE64, BLKSSZGET],
        ));
    }
    // Threads, never processes or namespaces: `clone` only with the flags glibc's
    // `pthread_create` passes. (`clone3` hides its flags behind a pointer, so it is refused
    // with ENOSYS by a second filter and glibc falls back to `clone`; see `confine`.)
    if out.iter().any(|(nr, _)| *nr == libc::SYS_clone) {
        out.retain(|(nr, _)| *nr != libc::SYS_clone);
        let thread_flags = (libc::CLONE_VM
            | libc::CLONE_FS
            | libc::CLONE_FILES
            | libc::CLONE_SIGHAND
            | libc::CLONE_THREAD
            | libc::CLONE_SYSVSEM
            | libc::CLONE_SETTLS
            | libc::CLONE_PARENT_SETTID
            | libc::CLONE_CHILD_CLEARTID) as u64;
        out.push(one_of(libc::SYS_clone, 0, &[thread_flags]));
    }
    out
}

fn install_sigsys_handler() -> io::Result<()> {
    // SAFETY: an all-zero sigaction is valid (no flags, empty mask); the fields set below
    // make it a SA_SIGINFO handler with the right signature.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = on_sigsys as *const () as usize;
    action.sa_flags = libc::SA_SIGINFO;
    // SAFETY: `action` is initialised and `on_sigsys` is async-signal-safe (it only formats
    // into a stack buffer, writes and exits).
    let ret = unsafe { libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The exit status after a forbidden system call (as for other internal errors).
const EXIT_FORBIDDEN_CALL: i32 = 3;

/// Byte offset of `si_syscall` in `siginfo_t` on x86_64 (after signo, errno, code, padding
/// and the `_call_addr` pointer of the `_sigsys` member).
const SI_SYSCALL_OFFSET: usize = 24;

extern "C" fn on_sigsys(_signal: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t for SA_SIGINFO handlers; for SIGSYS
    // from seccomp its `_sigsys` member is the one filled, with `si_syscall` at this offset.
    let field = unsafe { info.cast::<u8>().add(SI_SYSCALL_OFFSET) };
    // SAFETY: as above: `field` points at the int `si_syscall` inside the siginfo_t.
    let nr = unsafe { field.cast::<i32>().read_unaligned() };
    let role = ROLE.with(Cell::get).map_or("unconfined", Role::name);
    let mut msg = Message::default();
    msg.push(b"vmm: seccomp: the ");
    msg.push(role.as_bytes());
    msg.push(b" thread made system call ");
    msg.push_number(i64::from(nr));
    msg.push(b", which its filter forbids: a bug in vmm (--seccomp=log runs on and logs it)\n");
    // SAFETY: write is async-signal-safe; the buffer is valid for `msg.len` bytes.
    unsafe { libc::write(2, msg.buf.as_ptr().cast(), msg.len) };
    // SAFETY: _exit is async-signal-safe and ends the process.
    unsafe { libc::_exit(EXIT_FORBIDDEN_CALL) }
}

/// A fixed buffer to format the handler's message into, without allocating.
struct Message {
    buf: [u8; 256],
    len: usize,
}

impl Default for Message {
    fn default() -> Self {
        Self {
            buf: [0; 256],
            len: 0,
        }
    }
}

impl Message {
    fn push(&mut self, bytes: &[u8]) {
        let n = bytes.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
    }

    fn push_number(&mut self, n: i64) {
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        let mut v = n.unsigned_abs();
        loop {
            at -= 1;
            digits[at] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        if n < 0 {
            self.push(b"-");
        }
        self.push(&digits[at..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_role_compiles_to_a_program() {
        for role in [
            Role::Main,
            Role::Vcpu,
            Role::NetWorker,
            Role::BlockWorker,
            Role::DhcpResponder,
            Role::Api,
            Role::SerialLog,
        ] {
            let p = program(role, SeccompAction::Trap).unwrap();
            assert!(!p.is_empty() && p.len() < 4096, "{role:?}: {}", p.len());
        }
    }

    #[test]
    fn workers_cannot_open_files_or_start_processes() {
        for role in [
            Role::NetWorker,
            Role::BlockWorker,
            Role::DhcpResponder,
            Role::Api,
            Role::Vcpu,
        ] {
            let calls: Vec<i64> = allowed(role).iter().map(|(nr, _)| *nr).collect();
            assert!(!calls.contains(&libc::SYS_execve), "{role:?}");
            assert!(!calls.contains(&libc::SYS_fork), "{role:?}");
            assert!(!calls.contains(&libc::SYS_open), "{role:?}");
        }
        // Only main and the serial log may rename (and so really open) files.
        for role in [Role::NetWorker, Role::BlockWorker, Role::Api, Role::Vcpu] {
            let calls: Vec<i64> = allowed(role).iter().map(|(nr, _)| *nr).collect();
            assert!(!calls.contains(&libc::SYS_rename), "{role:?}");
        }
        let main: Vec<i64> = allowed(Role::Main).iter().map(|(nr, _)| *nr).collect();
        assert!(!main.contains(&libc::SYS_execve));
        assert!(!main.contains(&libc::SYS_ptrace));
    }

    /// The thread that parses the guest's DHCP makes no socket, connection or ioctl.
    #[test]
    fn the_dhcp_responder_only_reads_and_answers() {
        let calls: Vec<i64> = allowed(Role::DhcpResponder)
            .iter()
            .map(|(nr, _)| *nr)
            .collect();
        assert!(calls.contains(&libc::SYS_recvfrom) && calls.contains(&libc::SYS_sendto));
        for nr in [
            libc::SYS_socket,
            libc::SYS_connect,
            libc::SYS_bind,
            libc::SYS_ioctl,
            libc::SYS_setsockopt,
        ] {
            assert!(!calls.contains(&nr), "{nr}");
        }
    }

    #[test]
    fn a_forbidden_call_is_refused_in_a_confined_thread() {
        // Log mode lets it through, so install a filter of our own that returns an error.
        let refused = std::thread::spawn(|| {
            let program = program(Role::BlockWorker, SeccompAction::Errno(1)).unwrap();
            seccompiler::apply_filter(&program).unwrap();
            // SAFETY: getppid takes nothing; here it is refused by the filter.
            let ppid = unsafe { libc::syscall(libc::SYS_getppid) };
            let errno = io::Error::last_os_error().raw_os_error();
            // An allowed call still works.
            // SAFETY: gettid takes nothing.
            let tid = unsafe { libc::syscall(libc::SYS_gettid) };
            (ppid, errno, tid)
        })
        .join()
        .unwrap();
        assert_eq!(refused.0, -1);
        assert_eq!(refused.1, Some(1));
        assert!(refused.2 > 0);
    }

    #[test]
    fn a_confined_worker_cannot_open_files() {
        let opened = std::thread::spawn(|| {
            install(Role::NetWorker, SeccompAction::Errno(libc::EPERM as u32)).unwrap();
            std::fs::File::open("/proc/self/status")
                .map_err(|e| e.raw_os_error())
                .map(|_| ())
        })
        .join()
        .unwrap();
        assert_eq!(opened, Err(Some(libc::EACCES)));
    }

    #[test]
    fn a_confined_api_thread_still_starts_threads_through_clone() {
        let spawned = std::thread::spawn(|| {
            install(Role::Api, SeccompAction::Errno(libc::EPERM as u32)).unwrap();
            // clone3 fails with ENOSYS, glibc falls back to clone with thread flags.
            let thread = std::thread::spawn(|| 7).join().unwrap();
            // A process is refused: fork is clone without CLONE_THREAD.
            // SAFETY: fork in a test thread; the filter refuses it, so no child exists.
            let forked = unsafe { libc::fork() };
            (thread, forked)
        })
        .join()
        .unwrap();
        assert_eq!(spawned, (7, -1));
    }

    /// In a forked child: stderr to `fd`, the handler, `program`, then a call it forbids.
    fn forbidden_call_in_child(program: &BpfProgram, fd: i32) -> ! {
        // SAFETY: dup2 on descriptors the child owns.
        unsafe { libc::dup2(fd, 2) };
        let code = if install_sigsys_handler().is_err() {
            10
        } else {
            ROLE.with(|r| r.set(Some(Role::BlockWorker)));
            if seccompiler::apply_filter(program).is_err() {
                11
            } else {
                // SAFETY: getppid takes nothing; the filter makes it raise SIGSYS, and the
                // handler exits.
                unsafe { libc::syscall(libc::SYS_getppid) };
                12
            }
        };
        // SAFETY: ends the child.
        unsafe { libc::_exit(code) }
    }

    #[test]
    fn a_forbidden_call_ends_the_process_with_status_3_naming_thread_and_call() {
        // Everything that allocates happens before the fork (the child of a threaded process
        // may only make async-signal-safe calls).
        let program = program(Role::BlockWorker, SeccompAction::Trap).unwrap();
        let mut fds = [0; 2];
        // SAFETY: pipe writes two descriptors into `fds`.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: the child only makes raw system calls and exits; see above.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            forbidden_call_in_child(&program, fds[1]);
        }
        // SAFETY: closing our copy of the write end, so that read sees the end.
        unsafe { libc::close(fds[1]) };
        let mut status = 0;
        // SAFETY: waits for the child forked above; `status` is a valid int.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        let mut buf = [0u8; 512];
        // SAFETY: reads into `buf`, which is valid for its length.
        let n = unsafe { libc::read(fds[0], buf.as_mut_ptr().cast(), buf.len()) };
        // SAFETY: closing the read end, ours.
        unsafe { libc::close(fds[0]) };
        let message = String::from_utf8_lossy(&buf[..usize::try_from(n).unwrap_or(0)]);
        assert!(libc::WIFEXITED(status), "{status:#x} {message}");
        assert_eq!(libc::WEXITSTATUS(status), EXIT_FORBIDDEN_CALL, "{message}");
        assert!(
            message.contains("the virtio-blk worker thread made system call 110,"),
            "{message}"
        );
    }

    #[test]
    fn block_ioctl_numbers_are_the_kernel_s() {
        vmm_sys_util::ioctl_io_nr!(DISCARD, 0x12, 119);
        vmm_sys_util::ioctl_io_nr!(ZEROOUT, 0x12, 127);
        vmm_sys_util::ioctl_ior_nr!(GETSIZE64, 0x12, 114, u64);
        vmm_sys_util::ioctl_io_nr!(SSZGET, 0x12, 104);
        assert_eq!(DISCARD(), BLKDISCARD);
        assert_eq!(ZEROOUT(), BLKZEROOUT);
        assert_eq!(GETSIZE64(), BLKGETSIZE64);
        assert_eq!(SSZGET(), BLKSSZGET);
        assert_eq!(SSZGET(), libc::BLKSSZGET);
    }

    #[test]
    fn the_message_formats_numbers() {
        let mut m = Message::default();
        m.push(b"call ");
        m.push_number(435);
        m.push_number(-7);
        assert_eq!(&m.buf[..m.len], b"call 435-7");
    }
}
