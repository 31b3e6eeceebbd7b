//! Disk image files: the format, recognised by content (never by name), and the backend
//! that serves the guest from it.
//!
//! Raw files and block devices are served by [`RawDisk`]; qcow2 images by imago (read and
//! write, compressed clusters read, a backing chain opened read-only), through
//! [`Qcow2Disk`]. Other image formats are recognised and refused with a hint, rather than
//! handed to the guest as raw bytes.
//!
//! An *ephemeral* disk (a container disk) is served from a qcow2 overlay whose backing
//! image is the file itself, opened read-only: the guest reads the image and writes to the
//! overlay, which lives in an anonymous temporary file (`O_TMPFILE` in `$TMPDIR`, else
//! `/var/tmp`) that disappears with the process, however it ends.

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::RwLock;

use devices::virtio::block::{BlockBackend, BlockCapabilities, SECTOR};
use imago::file::File as ImagoFile;
use imago::format::gate::ImplicitOpenGate;
use imago::io_buffers::{IoVector, IoVectorMut};
use imago::qcow2::Qcow2;
use imago::raw::Raw;
use imago::{
    DenyImplicitOpenGate, FormatAccess, FormatCreateBuilder, FormatDriverBuilder, Storage,
    StorageOpenOptions,
};
use vm_memory::VolatileSlice;

use super::raw::{RawDisk, block_device_size};

/// Backing files one qcow2 chain may have.
const MAX_CHAIN: usize = 16;

/// An image format `vmm` serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Sector for sector.
    Raw,
    /// QEMU's copy-on-write format.
    Qcow2,
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
        })
    }
}

/// What a look at an image file found: its format, the size the guest sees, and for qcow2
/// the backing files in chain order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// The format.
    pub format: Format,
    /// The disk's size in bytes.
    pub virtual_size: u64,
    /// Whether it is a block device.
    pub block_device: bool,
    /// Backing files, nearest first.
    pub backing: Vec<PathBuf>,
}

/// The format of the image in `file`, from its first bytes.
pub fn detect(file: &mut File) -> io::Result<Format> {
    let mut head = [0u8; 512];
    let mut n = 0;
    while n < head.len() {
        match file.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let head = &head[..n];
    let refuse = |name: &str| {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "a {name} image: vmm reads raw and qcow2 only (convert it: qemu-img convert -O qcow2 …)"
            ),
        ))
    };
    if head.starts_with(b"QFI\xfb") {
        Ok(Format::Qcow2)
    } else if head.starts_with(b"KDMV") || head.starts_with(b"# Disk DescriptorFile") {
        refuse("VMDK")
    } else if head.starts_with(b"vhdxfile") {
        refuse("VHDX")
    } else if head.starts_with(b"conectix") {
        refuse("VHD")
    } else if head.starts_with(b"QED\0") {
        refuse("QED")
    } else if head.len() >= 0x44 && head[0x40..0x44] == [0x7f, 0x10, 0xda, 0xbe] {
        refuse("VDI")
    } else {
        Ok(Format::Raw)
    }
}

/// Looks at the image at `path` without changing it: format, size, backing chain.
pub fn probe(path: &Path) -> io::Result<ImageInfo> {
    let mut file = File::open(path)?;
    let meta = file.metadata()?;
    let block_device = meta.file_type().is_block_device();
    if !block_device && !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file or block device",
        ));
    }
    let format = detect(&mut file)?;
    match format {
        Format::Raw => {
            let size = if block_device {
                block_device_size(&file)?
            } else {
                meta.len()
            };
            Ok(ImageInfo {
                format,
                virtual_size: size - size % SECTOR,
                block_device,
                backing: Vec::new(),
            })
        }
        Format::Qcow2 => {
            let (access, chain) = open_qcow2(path, false)?;
            Ok(ImageInfo {
                format,
                virtual_size: access.size(),
                block_device,
                backing: chain,
            })
        }
    }
}

/// Opens `path` as a qcow2 image (writable when `write`), its backing chain read-only.
/// Returns it and the backing files it opened, nearest first.
fn open_qcow2(path: &Path, write: bool) -> io::Result<(FormatAccess<ImagoFile>, Vec<PathBuf>)> {
    check_qcow2_extensions(path)?;
    let gate = ChainGate::starting_at(path)?;
    let storage = ImagoFile::open(StorageOpenOptions::new().filename(path).write(write))?;
    let qcow2 = Qcow2::<ImagoFile>::builder(storage)
        .write(write)
        .open(gate.clone())?;
    let chain = gate.opened.borrow().clone();
    Ok((FormatAccess::new(qcow2), chain))
}

/// The qcow2 header extension that names the incompatible, compatible and autoclear
/// feature bits: entries of 48 bytes.
const FEATURE_NAME_TABLE: u32 = 0x6803_f857;
const FEATURE_NAME_ENTRY: usize = 48;

/// Refuses a qcow2 header whose extensions imago 0.2.6 would panic on: a feature name table
/// that is not a whole number of 48-byte entries (it slices every entry as whole; found by
/// the qcow2_open fuzz target). Walks the extensions in the first cluster as imago does;
/// what imago refuses on its own (extensions past the cluster, a bad version) is left to it.
fn check_qcow2_extensions(path: &Path) -> io::Result<()> {
    const V3_HEADER_LENGTH: usize = 100;
    const CLUSTER_BITS: usize = 20;
    let be32 = |b: &[u8], at: usize| -> u32 {
        b.get(at..at + 4)
            .map_or(0, |w| u32::from_be_bytes([w[0], w[1], w[2], w[3]]))
    };
    let mut file = File::open(path)?;
    let mut first = Vec::new();
    (&mut file).take(104).read_to_end(&mut first)?;
    let (version, cluster_bits) = (be32(&first, 4), be32(&first, CLUSTER_BITS));
    if version < 3 || !(9..=21).contains(&cluster_bits) {
        return Ok(());
    }
    // The rest of the first cluster, where the extensions live.
    let cluster = 1usize << cluster_bits;
    file.take((cluster - first.len()) as u64)
        .read_to_end(&mut first)?;
    // Past the end of the file reads as zeros: an end-of-extensions marker.
    let mut at = usize::try_from(be32(&first, V3_HEADER_LENGTH)).unwrap_or(usize::MAX);
    while at.checked_add(8).is_some_and(|end| end <= cluster) {
        let (kind, len) = (be32(&first, at), be32(&first, at + 4) as usize);
        if kind == 0 || at + 8 + len > cluster {
            break;
        }
        if kind == FEATURE_NAME_TABLE && len % FEATURE_NAME_ENTRY != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: the qcow2 feature name table is {len} bytes, not a whole number of \
                     {FEATURE_NAME_ENTRY}-byte entries",
                    path.display()
                ),
            ));
        }
        at += 8 + len.next_multiple_of(8);
    }
    Ok(())
}

fn loop_error(at: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("the backing chain loops at {}", at.display()),
    )
}

/// Lets imago open a qcow2 image's backing files, read-only, refusing a chain that loops
/// or is longer than [`MAX_CHAIN`]. Each level of the chain gets a clone that remembers
/// the files above it (`seen`); all of them record what was opened (`opened`).
#[derive(Debug, Clone)]
struct ChainGate {
    seen: Vec<PathBuf>,
    opened: Rc<RefCell<Vec<PathBuf>>>,
}

impl ChainGate {
    fn starting_at(path: &Path) -> io::Result<Self> {
        Ok(Self {
            seen: vec![path.canonicalize()?],
            opened: Rc::default(),
        })
    }
}

impl ImplicitOpenGate<ImagoFile> for ChainGate {
    fn open_format<F: FormatDriverBuilder<ImagoFile>>(
        &mut self,
        builder: F,
    ) -> io::Result<FormatAccess<ImagoFile>> {
        let driver = builder.write(false).open(self.clone())?;
        Ok(FormatAccess::new(driver))
    }

    fn open_storage(&mut self, opts: StorageOpenOptions) -> io::Result<ImagoFile> {
        let Some(name) = opts.get_filename().map(Path::to_path_buf) else {
            return Err(io::Error::other("a backing file without a name"));
        };
        let canonical = name.canonicalize()?;
        if self.seen.contains(&canonical) {
            return Err(loop_error(&name));
        }
        if self.seen.len() > MAX_CHAIN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the backing chain is longer than {MAX_CHAIN} files"),
            ));
        }
        self.seen.push(canonical);
        self.opened.borrow_mut().push(name.clone());
        if detect(&mut File::open(&name)?)? == Format::Qcow2 {
            check_qcow2_extensions(&name)?;
        }
        ImagoFile::open(opts.write(false))
    }
}

/// A qcow2 image (or an overlay) served through imago.
pub struct Qcow2Disk {
    /// Reads and writes share it; a discard needs it alone.
    access: RwLock<FormatAccess<ImagoFile>>,
    size: u64,
    read_only: bool,
}

impl std::fmt::Debug for Qcow2Disk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qcow2Disk")
            .field("size", &self.size)
            .field("read_only", &self.read_only)
            .finish_non_exhaustive()
    }
}

impl Qcow2Disk {
    /// Opens the qcow2 image at `path`.
    pub fn open(path: &Path, read_only: bool) -> io::Result<Self> {
        let (access, _) = open_qcow2(path, !read_only)?;
        Ok(Self::new(access, read_only))
    }

    fn new(access: FormatAccess<ImagoFile>, read_only: bool) -> Self {
        let size = access.size() - access.size() % SECTOR;
        Self {
            access: RwLock::new(access),
            size,
            read_only,
        }
    }

    /// A writable overlay in an anonymous file in `dir` whose backing image is `base`
    /// (format `format`), opened read-only: reads of what the guest has not written come
    /// from `base`, which is never written.
    pub fn overlay(base: &Path, format: Format, dir: &Path) -> io::Result<Self> {
        let backing = match format {
            Format::Raw => {
                let storage =
                    ImagoFile::open(StorageOpenOptions::new().filename(base).write(false))?;
                FormatAccess::new(
                    Raw::<ImagoFile>::builder(storage)
                        .write(false)
                        .open(DenyImplicitOpenGate::default())?,
                )
            }
            Format::Qcow2 => open_qcow2(base, false)?.0,
        };
        let size = backing.size();
        let file = anonymous_file(dir)?;
        let storage = ImagoFile::from_open_file(file, StorageOpenOptions::new().write(true))?;
        let overlay = Qcow2::<ImagoFile>::create_builder(storage)
            .size(size)
            .create_open(DenyImplicitOpenGate::default(), |image| {
                Ok(Qcow2::<ImagoFile>::builder(image)
                    .backing(Some(backing))
                    .write(true))
            })?;
        Ok(Self::new(FormatAccess::new(overlay), false))
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, FormatAccess<ImagoFile>> {
        self.access.read().unwrap_or_else(|e| e.into_inner())
    }
}

/// A file with no name in `dir`: it is gone when the last descriptor closes. Falls back to a
/// named file removed at once where the file system has no `O_TMPFILE`.
pub fn anonymous_file(dir: &Path) -> io::Result<File> {
    match OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .mode(0o600)
        .open(dir)
    {
        Ok(f) => Ok(f),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EISDIR)) => {
            let path = dir.join(super::temp_name("overlay"));
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)?;
            std::fs::remove_file(&path)?;
            Ok(f)
        }
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("cannot make a temporary file in {}: {e}", dir.display()),
        )),
    }
}

impl BlockBackend for Qcow2Disk {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn capabilities(&self) -> BlockCapabilities {
        BlockCapabilities {
            discard: true,
            write_zeroes: true,
        }
    }

    fn read_at(&self, offset: u64, bufs: &[VolatileSlice<'_>]) -> io::Result<()> {
        let (vector, _guard) = IoVectorMut::from_volatile_slice(bufs.iter());
        self.read().readv(vector, offset)
    }

    fn write_at(&self, offset: u64, bufs: &[VolatileSlice<'_>]) -> io::Result<()> {
        if self.read_only {
            return Err(io::ErrorKind::PermissionDenied.into());
        }
        let (vector, _guard) = IoVector::from_volatile_slice(bufs.iter());
        self.read().writev(vector, offset)
    }

    fn flush(&self) -> io::Result<()> {
        if self.read_only {
            return Ok(());
        }
        let access = self.read();
        access.flush()?;
        access.sync()
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        let mut access = self.access.write().unwrap_or_else(|e| e.into_inner());
        access.discard_to_any(offset, len)
    }

    fn write_zeroes(&self, offset: u64, len: u64, _unmap: bool) -> io::Result<()> {
        self.read().write_zeroes(offset, len)
    }
}

/// Opens `path` in `format` for the guest.
pub fn open(path: &Path, format: Format, read_only: bool) -> io::Result<Box<dyn BlockBackend>> {
    Ok(match format {
        Format::Raw => Box::new(RawDisk::open(path, read_only)?),
        Format::Qcow2 => Box::new(Qcow2Disk::open(path, read_only)?),
    })
}

#[cfg(test)]
mod tests;
