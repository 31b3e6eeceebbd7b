//! A `containerRootfs` made into a disk: the directory becomes an ext4 file system of the
//! volume's `size`, as Virtink's init container does (`truncate -s SIZE`, then
//! `mkfs.ext4 -d DIR`), in a temporary file that is removed as soon as it is open.
//!
//! This needs `mkfs.ext4` from e2fsprogs (1.43 or later, for `-d`) on `PATH`. Inside a
//! Virtink pod the init container has already made `/mnt/<volume>/rootfs.raw`, and
//! `vmm` needs no tool.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The program that makes the file system.
pub const MKFS: &str = "mkfs.ext4";

/// `mkfs.ext4` on `PATH`, if it is there.
fn mkfs() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/sbin", "/usr/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(MKFS))
        .find(|p| p.is_file())
}

/// Whether `dir` can be made into a disk here: it is a directory and `mkfs.ext4` exists.
pub fn check(dir: &Path) -> io::Result<()> {
    if !dir.is_dir() {
        return Err(io::Error::new(io::ErrorKind::NotFound, "not a directory"));
    }
    mkfs().map(|_| ()).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("{MKFS} (e2fsprogs) is not installed, and it makes the disk"),
        )
    })
}

/// Makes `dir` into an ext4 file system of `size` bytes in a new file in `tmp`; returns the
/// file, already unlinked.
pub fn build(dir: &Path, size: u64, tmp: &Path) -> io::Result<File> {
    check(dir)?;
    let path = tmp.join(super::temp_name("rootfs"));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    // The file is unlinked whatever happens next; the descriptor keeps it.
    let result = make(&file, &path, dir, size);
    let _ = std::fs::remove_file(&path);
    result.map(|()| file)
}

fn make(file: &File, path: &Path, dir: &Path, size: u64) -> io::Result<()> {
    file.set_len(size)?;
    let out = Command::new(mkfs().unwrap_or_else(|| PathBuf::from(MKFS)))
        .args(["-q", "-F", "-E", "root_owner=0:0", "-d"])
        .arg(dir)
        .arg(path)
        .output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{MKFS} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}
