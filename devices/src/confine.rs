//! Giving up privilege: capabilities and `no_new_privs`.
//!
//! Capabilities belong to a thread, not to the process, so each thread gives up its own:
//! every thread that handles guest or peer input (vCPUs, device workers with the NAT, the
//! API's) drops all of them as it starts, before it reads any of that input, and the main
//! thread keeps only what the rest of the run needs once set-up is done (see
//! `vmm::runner`). A capability dropped from the effective, permitted, inheritable, ambient
//! and bounding sets cannot come back, not even through `execve` of a file with file
//! capabilities; `no_new_privs` makes setuid bits powerless too.

use std::io;

/// `CAP_NET_ADMIN`: links, addresses, bridges (the bridge binding's restore at exit).
pub const CAP_NET_ADMIN: u32 = 12;
/// The highest capability number this kernel may know (`CAP_CHECKPOINT_RESTORE` is 40);
/// higher numbers are refused by `PR_CAPBSET_DROP` with EINVAL, which ends the loop.
const CAP_MAX: u32 = 63;

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Sets `no_new_privs` for the calling thread and every thread it starts from now on.
pub fn set_no_new_privs() -> io::Result<()> {
    // SAFETY: prctl with PR_SET_NO_NEW_PRIVS takes plain integers and touches no memory.
    let ret = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Drops every capability of the calling thread.
pub fn drop_all_capabilities() -> io::Result<()> {
    keep_only_capabilities(&[])
}

/// Drops every capability of the calling thread but `keep` (those it has of them stay
/// effective and permitted; none stays inheritable, ambient or in the bounding set beyond
/// `keep`).
pub fn keep_only_capabilities(keep: &[u32]) -> io::Result<()> {
    let wanted = |cap: u32| keep.contains(&cap);
    // The bounding set first: dropping from it needs CAP_SETPCAP, which capset removes.
    // Without CAP_SETPCAP (an unprivileged vmm) there is nothing in it worth dropping.
    for cap in 0..=CAP_MAX {
        if wanted(cap) {
            continue;
        }
        // SAFETY: prctl with PR_CAPBSET_DROP takes plain integers and touches no memory.
        let ret = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) };
        if ret != 0 {
            // EINVAL: past the last capability this kernel knows; EPERM: no CAP_SETPCAP.
            break;
        }
    }
    // SAFETY: prctl with PR_CAP_AMBIENT takes plain integers and touches no memory.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        );
    }
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget writes two CapData (version 3) into `data`, which has room for them,
    // and reads the header, which is valid.
    let ret = unsafe { libc::syscall(libc::SYS_capget, &raw mut header, data.as_mut_ptr()) };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    for (word, d) in data.iter_mut().enumerate() {
        let mut mask = 0u32;
        for bit in 0..32 {
            if wanted(u32::try_from(word).unwrap_or(1) * 32 + bit) {
                mask |= 1 << bit;
            }
        }
        d.effective &= mask;
        d.permitted &= mask;
        d.inheritable = 0;
    }
    // SAFETY: capset reads the header and two CapData, all valid and initialised.
    let ret = unsafe { libc::syscall(libc::SYS_capset, &raw mut header, data.as_ptr()) };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// For a thread that handles guest or peer input and needs no privilege: drops every
/// capability (logging, not failing, if the kernel refuses) and installs `role`'s seccomp
/// filter (failing if that is refused: the thread must then not go on).
pub fn confine_thread(name: &str, role: crate::seccomp::Role) -> io::Result<()> {
    if let Err(e) = drop_all_capabilities() {
        log::warn!("{name}: cannot drop capabilities: {e}");
    }
    crate::seccomp::confine(role).map_err(|e| {
        log::error!("{name}: cannot install its seccomp filter: {e}");
        e
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The calling thread's capability masks from /proc: (CapEff, CapPrm, CapBnd).
    fn caps() -> (u64, u64, u64) {
        // SAFETY: gettid takes nothing and returns the calling thread's id.
        let tid = unsafe { libc::syscall(libc::SYS_gettid) };
        let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap();
        let field = |name: &str| {
            let line = status.lines().find(|l| l.starts_with(name)).unwrap();
            u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
        };
        (field("CapEff:"), field("CapPrm:"), field("CapBnd:"))
    }

    #[test]
    fn a_thread_keeps_only_what_it_asked_for_and_the_others_are_untouched() {
        let before = caps();
        let had_net_admin = before.0 & (1 << CAP_NET_ADMIN) != 0;
        let kept = std::thread::spawn(|| {
            keep_only_capabilities(&[CAP_NET_ADMIN]).unwrap();
            caps()
        })
        .join()
        .unwrap();
        let dropped = std::thread::spawn(|| {
            drop_all_capabilities().unwrap();
            caps()
        })
        .join()
        .unwrap();
        assert_eq!(kept.0 & !(1 << CAP_NET_ADMIN), 0, "{kept:x?}");
        assert_eq!(kept.0 & (1 << CAP_NET_ADMIN) != 0, had_net_admin);
        assert_eq!((dropped.0, dropped.1), (0, 0), "{dropped:x?}");
        if before.2 & (1 << 8) != 0 && before.0 & (1 << 8) != 0 {
            // With CAP_SETPCAP the bounding set went too.
            assert_eq!(kept.2, 1 << CAP_NET_ADMIN, "{kept:x?}");
            assert_eq!(dropped.2, 0, "{dropped:x?}");
        }
        assert_eq!(caps(), before, "another thread's capabilities are its own");
    }
}
