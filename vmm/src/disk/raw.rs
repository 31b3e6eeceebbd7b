//! A raw disk: a regular file or a block device, sector for sector.
//!
//! Reads and writes go between guest buffers and the file with one `preadv`/`pwritev` each
//! (more only when the kernel moves less than asked). A flush is `fdatasync`. DISCARD
//! punches holes in a file (`BLKDISCARD` on a device) and WRITE_ZEROES zeroes a range
//! without writing zeroes (`FALLOC_FL_ZERO_RANGE`, or `BLKZEROOUT`).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use devices::virtio::block::{BlockBackend, BlockCapabilities, SECTOR};
use vm_memory::VolatileSlice;

/// Most iovecs one system call takes (`IOV_MAX`).
const MAX_IOVECS: usize = 1024;

// From <linux/fs.h>: _IO(0x12, 119), _IO(0x12, 127), _IOR(0x12, 114, u64).
vmm_sys_util::ioctl_io_nr!(BLKDISCARD, 0x12, 119);
vmm_sys_util::ioctl_io_nr!(BLKZEROOUT, 0x12, 127);
vmm_sys_util::ioctl_ior_nr!(BLKGETSIZE64, 0x12, 114, u64);

/// A raw file or block device. The descriptor is closed when it is dropped.
#[derive(Debug)]
pub struct RawDisk {
    file: File,
    size: u64,
    read_only: bool,
    block_device: bool,
    /// The block device discards (its queue says so); files punch holes.
    discard: bool,
}

impl RawDisk {
    /// Opens `path`, read-only when `read_only`.
    pub fn open(path: &Path, read_only: bool) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(!read_only).open(path)?;
        Self::from_file(file, read_only)
    }

    /// A raw disk over an open file.
    pub fn from_file(file: File, read_only: bool) -> io::Result<Self> {
        let meta = file.metadata()?;
        let block_device = meta.file_type().is_block_device();
        let bytes = if block_device {
            block_device_size(&file)?
        } else if meta.is_file() {
            meta.len()
        } else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file or block device",
            ));
        };
        let discard = !block_device || device_discards(&meta);
        Ok(Self {
            file,
            // A trailing partial sector cannot be addressed by the guest.
            size: bytes - bytes % SECTOR,
            read_only,
            block_device,
            discard,
        })
    }
}

/// Whether the block device `meta` describes can discard (`queue/discard_max_bytes` > 0),
/// so that the guest is not offered a DISCARD that would only fail.
fn device_discards(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    let rdev = meta.rdev();
    let dev = format!("/sys/dev/block/{}:{}", libc::major(rdev), libc::minor(rdev));
    // A partition has no queue of its own: its disk's is one level up.
    let queue = if Path::new(&dev).join("partition").exists() {
        format!("{dev}/../queue/discard_max_bytes")
    } else {
        format!("{dev}/queue/discard_max_bytes")
    };
    std::fs::read_to_string(queue)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|max| max > 0)
}

/// The size of the block device open as `file`.
pub fn block_device_size(file: &File) -> io::Result<u64> {
    let mut size = 0u64;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points at `size`.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64(), &mut size) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(size)
}

/// Advances `bufs` past `n` bytes, dropping the buffers that were moved whole.
fn advance<'a>(bufs: &mut Vec<VolatileSlice<'a>>, mut n: usize) -> io::Result<()> {
    while n > 0 {
        let Some(first) = bufs.first() else {
            return Ok(());
        };
        if first.len() <= n {
            n -= first.len();
            bufs.remove(0);
        } else {
            let rest = first.offset(n).map_err(io::Error::other)?;
            bufs[0] = rest;
            n = 0;
        }
    }
    Ok(())
}

fn iovecs(bufs: &[VolatileSlice<'_>]) -> Vec<libc::iovec> {
    bufs.iter()
        .take(MAX_IOVECS)
        .map(|b| libc::iovec {
            iov_base: b.ptr_guard_mut().as_ptr().cast(),
            iov_len: b.len(),
        })
        .collect()
}

fn offset_arg(offset: u64) -> io::Result<libc::off_t> {
    libc::off_t::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput.into())
}

impl RawDisk {
    /// `preadv` (`write` false) or `pwritev` (`write` true) until every buffer is done.
    fn transfer(&self, mut offset: u64, bufs: &[VolatileSlice<'_>], write: bool) -> io::Result<()> {
        let mut left: Vec<VolatileSlice<'_>> =
            bufs.iter().filter(|b| !b.is_empty()).copied().collect();
        while !left.is_empty() {
            let iov = iovecs(&left);
            let count = libc::c_int::try_from(iov.len()).unwrap_or(0);
            let at = offset_arg(offset)?;
            let n = if write {
                // SAFETY: each iovec describes a live VolatileSlice of guest memory, readable
                // for its length while `bufs` is borrowed; the descriptor is ours.
                unsafe { libc::pwritev(self.file.as_raw_fd(), iov.as_ptr(), count, at) }
            } else {
                // SAFETY: each iovec describes a live VolatileSlice of guest memory, writable
                // for its length while `bufs` is borrowed; the kernel writes at most that.
                unsafe { libc::preadv(self.file.as_raw_fd(), iov.as_ptr(), count, at) }
            };
            let n = match usize::try_from(n) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => n,
                Err(_) => {
                    let e = io::Error::last_os_error();
                    if e.kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    return Err(e);
                }
            };
            offset += n as u64;
            advance(&mut left, n)?;
        }
        Ok(())
    }

    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
        let (at, len) = (offset_arg(offset)?, offset_arg(len)?);
        // SAFETY: fallocate on our own descriptor; no memory is passed.
        let rc = unsafe { libc::fallocate(self.file.as_raw_fd(), mode, at, len) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn block_ioctl(&self, request: libc::c_ulong, offset: u64, len: u64) -> io::Result<()> {
        let range = [offset, len];
        // SAFETY: BLKDISCARD and BLKZEROOUT read two u64s (start, length) through the
        // pointer, which points at `range`.
        let rc = unsafe { libc::ioctl(self.file.as_raw_fd(), request, range.as_ptr()) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl BlockBackend for RawDisk {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn capabilities(&self) -> BlockCapabilities {
        BlockCapabilities {
            discard: self.discard,
            write_zeroes: true,
        }
    }

    fn read_at(&self, offset: u64, bufs: &[VolatileSlice<'_>]) -> io::Result<()> {
        self.transfer(offset, bufs, false)
    }

    fn write_at(&self, offset: u64, bufs: &[VolatileSlice<'_>]) -> io::Result<()> {
        if self.read_only {
            return Err(io::ErrorKind::PermissionDenied.into());
        }
        self.transfer(offset, bufs, true)
    }

    fn flush(&self) -> io::Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.file.sync_data()
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        if self.block_device {
            self.block_ioctl(BLKDISCARD(), offset, len)
        } else {
            self.fallocate(
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset,
                len,
            )
        }
    }

    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        if self.block_device {
            return self.block_ioctl(BLKZEROOUT(), offset, len);
        }
        let mode = if unmap {
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
        } else {
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE
        };
        match self.fallocate(mode, offset, len) {
            // A file system without ZERO_RANGE (tmpfs before 6.x, 9p): punch a hole,
            // which reads back as zeroes too.
            Err(e) if !unmap && e.raw_os_error() == Some(libc::EOPNOTSUPP) => self.fallocate(
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset,
                len,
            ),
            r => r,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Seek, SeekFrom, Write};

    use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

    use super::*;

    fn temp_file(name: &str, len: usize) -> (std::path::PathBuf, File) {
        let path = std::env::temp_dir().join(format!("vmm-raw-{}-{name}", std::process::id()));
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let bytes: Vec<u8> = (0..len).map(|i| (i / 512).to_le_bytes()[0]).collect();
        f.write_all(&bytes).unwrap();
        (path, f)
    }

    #[test]
    fn reads_and_writes_scattered_guest_buffers() {
        let (path, mut file) = temp_file("rw", 8 * 512 + 100);
        let disk = RawDisk::open(&path, false).unwrap();
        assert_eq!(
            disk.size(),
            8 * 512,
            "the partial sector is not addressable"
        );
        let mem: GuestMemoryMmap =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let a = GuestMemoryBackend::get_slice(&mem, GuestAddress(0x1000), 512).unwrap();
        let b = GuestMemoryBackend::get_slice(&mem, GuestAddress(0x8000), 1024).unwrap();
        disk.read_at(512, &[a, b]).unwrap();
        let mut got = [0u8; 512];
        mem.read_slice(&mut got, GuestAddress(0x1000)).unwrap();
        assert_eq!(got, [1; 512]);
        mem.read_slice(&mut got, GuestAddress(0x8200)).unwrap();
        assert_eq!(got, [3; 512]);

        mem.write_slice(&[0x77; 1024], GuestAddress(0x8000))
            .unwrap();
        disk.write_at(4 * 512, &[b]).unwrap();
        disk.flush().unwrap();
        let mut back = vec![0u8; 8 * 512];
        file.seek(SeekFrom::Start(0)).unwrap();
        file.read_exact(&mut back).unwrap();
        assert!(back[4 * 512..6 * 512].iter().all(|x| *x == 0x77));
        assert_eq!(back[6 * 512], 6);

        disk.write_zeroes(512, 512, false).unwrap();
        disk.discard(6 * 512, 512).unwrap();
        file.seek(SeekFrom::Start(0)).unwrap();
        file.read_exact(&mut back).unwrap();
        assert!(back[512..1024].iter().all(|x| *x == 0));
        assert!(back[6 * 512..7 * 512].iter().all(|x| *x == 0));
        assert_eq!(back[7 * 512], 7);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn a_read_only_disk_does_not_write_and_eof_is_an_error() {
        let (path, _file) = temp_file("ro", 2 * 512);
        let disk = RawDisk::open(&path, true).unwrap();
        let mem: GuestMemoryMmap =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let a = GuestMemoryBackend::get_slice(&mem, GuestAddress(0), 1024).unwrap();
        assert!(disk.write_at(0, &[a]).is_err());
        // The file shrank under us: reading past its end fails instead of looping.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(512)
            .unwrap();
        assert!(disk.read_at(0, &[a]).is_err());
        std::fs::remove_file(path).unwrap();
    }
}
