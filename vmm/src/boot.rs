//! Direct kernel boot: finding the kernel and initrd `kernel.image` names, and loading them,
//! the command line and the zero page into guest memory.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::{BzImage, Elf, KernelLoader, KernelLoaderResult};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::arch::layout::{
    CMDLINE_ADDR, CMDLINE_MAX, E820Type, HIGH_RAM_START, MMIO_32_START, ZERO_PAGE_ADDR, e820_map,
};

/// Kernel file names looked for in a `kernel.image` directory, in this order.
pub const KERNEL_NAMES: &[&str] = &["vmlinux", "bzImage", "vmlinuz"];
/// Prefixes of initrd file names looked for in a `kernel.image` directory.
pub const INITRD_PREFIXES: &[&str] = &["initrd", "initramfs"];

const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const HDRS_MAGIC: u32 = 0x5372_6448;
const BOOT_FLAG_MAGIC: u16 = 0xaa55;
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
const XLF_KERNEL_64: u16 = 1;
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
const KERNEL_ALIGNMENT: u32 = 0x0100_0000;
const PAGE: u64 = 4096;

/// Why a kernel cannot be booted. Every variant is a host-side problem (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// `kernel.image` does not exist.
    #[error("kernel.image: {0}: no such file or directory")]
    NotFound(PathBuf),
    /// A directory without a kernel in it.
    #[error("kernel.image: directory {0} holds none of vmlinux, bzImage, vmlinuz")]
    NoKernelInDirectory(PathBuf),
    /// A directory with more than one initrd candidate.
    #[error("kernel.image: directory {dir} holds several initrds ({names}); keep one")]
    AmbiguousInitrd {
        /// The directory.
        dir: PathBuf,
        /// The candidates.
        names: String,
    },
    /// A file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is neither a bzImage nor an ELF vmlinux.
    #[error("{0}: not a bzImage or ELF vmlinux kernel")]
    NotAKernel(PathBuf),
    /// A bzImage without a 64-bit entry point.
    #[error("{0}: bzImage has no 64-bit entry point (XLF_KERNEL_64 is clear)")]
    Not64Bit(PathBuf),
    /// linux-loader refused the image.
    #[error("cannot load kernel {path}")]
    Load {
        /// The kernel file.
        path: PathBuf,
        /// Why.
        #[source]
        source: linux_loader::loader::Error,
    },
    /// Kernel and initrd do not fit the guest's RAM.
    #[error(
        "spec.instance.memory.size is too small: kernel and initrd need {needed_mib} MiB \
         below 3 GiB, the guest has {have_mib} MiB there"
    )]
    TooLittleMemory {
        /// MiB needed.
        needed_mib: u64,
        /// MiB available.
        have_mib: u64,
    },
    /// The command line is longer than the kernel accepts.
    #[error("spec.instance.kernel.cmdline is {len} bytes; the kernel accepts at most {max}")]
    CmdlineTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Guest memory refused a write.
    #[error("cannot write boot data to guest memory")]
    Memory(#[from] vm_memory::GuestMemoryError),
}

/// The files a boot uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelFiles {
    /// The kernel image.
    pub kernel: PathBuf,
    /// The initrd, if any.
    pub initrd: Option<PathBuf>,
}

/// Resolves `kernel.image`: a kernel file, or a directory holding one (and maybe an initrd).
pub fn resolve(image: &Path) -> Result<KernelFiles, BootError> {
    let meta = std::fs::metadata(image).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => BootError::NotFound(image.to_path_buf()),
        _ => BootError::Read {
            path: image.to_path_buf(),
            source: e,
        },
    })?;
    if !meta.is_dir() {
        return Ok(KernelFiles {
            kernel: image.to_path_buf(),
            initrd: None,
        });
    }
    let kernel = KERNEL_NAMES
        .iter()
        .map(|n| image.join(n))
        .find(|p| p.is_file())
        .ok_or_else(|| BootError::NoKernelInDirectory(image.to_path_buf()))?;
    let read_err = |source| BootError::Read {
        path: image.to_path_buf(),
        source,
    };
    let mut initrds: Vec<String> = Vec::new();
    for entry in std::fs::read_dir(image).map_err(read_err)? {
        let entry = entry.map_err(read_err)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if INITRD_PREFIXES.iter().any(|p| name.starts_with(p)) && entry.path().is_file() {
            initrds.push(name);
        }
    }
    initrds.sort();
    if initrds.len() > 1 {
        return Err(BootError::AmbiguousInitrd {
            dir: image.to_path_buf(),
            names: initrds.join(", "),
        });
    }
    Ok(KernelFiles {
        kernel,
        initrd: initrds.first().map(|n| image.join(n)),
    })
}

/// Checks that the files exist and are readable and that the kernel is a kernel, without
/// touching guest memory (for `--dry-run` and early errors).
pub fn check(files: &KernelFiles) -> Result<KernelFormat, BootError> {
    let format = detect(&files.kernel)?;
    if let Some(initrd) = &files.initrd {
        File::open(initrd).map_err(|source| BootError::Read {
            path: initrd.clone(),
            source,
        })?;
    }
    Ok(format)
}

/// A kernel image's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// An uncompressed ELF `vmlinux`.
    Elf,
    /// A compressed `bzImage` (Debian's `vmlinuz`).
    BzImage,
}

fn detect(path: &Path) -> Result<KernelFormat, BootError> {
    let read_err = |source| BootError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(read_err)?;
    let mut head = [0u8; 0x206];
    let mut got = 0;
    while got < head.len() {
        match file.read(&mut head[got..]).map_err(read_err)? {
            0 => break,
            n => got += n,
        }
    }
    if got >= 4 && &head[..4] == ELF_MAGIC {
        return Ok(KernelFormat::Elf);
    }
    if got == head.len()
        && u32::from_le_bytes([head[0x202], head[0x203], head[0x204], head[0x205]]) == HDRS_MAGIC
    {
        return Ok(KernelFormat::BzImage);
    }
    Err(BootError::NotAKernel(path.to_path_buf()))
}

/// Where the boot vCPU starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootEntry {
    /// The 64-bit entry point.
    pub entry: u64,
}

/// Loads kernel, initrd, command line and zero page; `ram_size` is the guest's RAM and
/// `rsdp` the ACPI RSDP's address.
pub fn load(
    mem: &GuestMemoryMmap,
    ram_size: u64,
    files: &KernelFiles,
    cmdline: &str,
    rsdp: u64,
) -> Result<BootEntry, BootError> {
    let format = detect(&files.kernel)?;
    let path = &files.kernel;
    let mut kernel = File::open(path).map_err(|source| BootError::Read {
        path: path.clone(),
        source,
    })?;
    let load_err = |source| BootError::Load {
        path: path.clone(),
        source,
    };
    let low_ram_end = ram_size.min(MMIO_32_START);
    let highmem = Some(GuestAddress(HIGH_RAM_START));
    let (result, entry): (KernelLoaderResult, u64) = match format {
        KernelFormat::Elf => {
            let r = Elf::load(mem, None, &mut kernel, highmem).map_err(load_err)?;
            let entry = r.kernel_load.0;
            (r, entry)
        }
        KernelFormat::BzImage => {
            let r = BzImage::load(mem, None, &mut kernel, highmem).map_err(load_err)?;
            let hdr = r.setup_header.unwrap_or_default();
            if hdr.xloadflags & XLF_KERNEL_64 == 0 {
                return Err(BootError::Not64Bit(path.clone()));
            }
            let entry = r.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET;
            (r, entry)
        }
    };
    let mut hdr = result.setup_header.unwrap_or_else(elf_setup_header);
    // The kernel decompresses and relocates within init_size of where it was loaded.
    let kernel_end = result
        .kernel_end
        .max(result.kernel_load.0 + u64::from(hdr.init_size));
    if kernel_end > low_ram_end {
        return Err(too_little(kernel_end, low_ram_end));
    }
    write_cmdline(mem, cmdline, &hdr)?;
    if let Some(initrd) = &files.initrd {
        let max = u64::from(hdr.initrd_addr_max).max(0x37ff_ffff);
        let (addr, size) = load_initrd(mem, initrd, low_ram_end.min(max + 1), kernel_end)?;
        hdr.ramdisk_image = u32::try_from(addr).unwrap_or(0);
        hdr.ramdisk_size = u32::try_from(size).unwrap_or(0);
    }
    write_zero_page(mem, ram_size, hdr, cmdline.len(), rsdp)?;
    Ok(BootEntry { entry })
}

fn too_little(needed: u64, have: u64) -> BootError {
    BootError::TooLittleMemory {
        needed_mib: needed.div_ceil(1 << 20),
        have_mib: have >> 20,
    }
}

/// A setup header for an ELF kernel, which has none of its own.
fn elf_setup_header() -> setup_header {
    setup_header {
        boot_flag: BOOT_FLAG_MAGIC,
        header: HDRS_MAGIC,
        kernel_alignment: KERNEL_ALIGNMENT,
        ..Default::default()
    }
}

fn write_cmdline(
    mem: &GuestMemoryMmap,
    cmdline: &str,
    hdr: &setup_header,
) -> Result<(), BootError> {
    // The kernel's limit, from the header when it gives one, and never past our buffer.
    let max = match usize::try_from(hdr.cmdline_size) {
        Ok(n) if n > 0 => n.min(CMDLINE_MAX - 1),
        _ => CMDLINE_MAX - 1,
    };
    if cmdline.len() > max || cmdline.contains('\0') {
        return Err(BootError::CmdlineTooLong {
            len: cmdline.len(),
            max,
        });
    }
    mem.write_slice(cmdline.as_bytes(), GuestAddress(CMDLINE_ADDR))?;
    mem.write_obj(0u8, GuestAddress(CMDLINE_ADDR + cmdline.len() as u64))?;
    Ok(())
}

/// Loads the initrd as high as it fits below `limit`, above `kernel_end`.
fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    limit: u64,
    kernel_end: u64,
) -> Result<(u64, u64), BootError> {
    let read_err = |source| BootError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(read_err)?;
    let size = file.seek(SeekFrom::End(0)).map_err(read_err)?;
    file.rewind().map_err(read_err)?;
    let addr = limit
        .checked_sub(size)
        .map(|a| a & !(PAGE - 1))
        .filter(|a| *a >= kernel_end.next_multiple_of(PAGE))
        .ok_or_else(|| too_little(kernel_end + size, limit))?;
    let len = usize::try_from(size).map_err(|_| too_little(kernel_end + size, limit))?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, len)
        .map_err(|e| match e {
            vm_memory::GuestMemoryError::IOError(io) => read_err(io),
            other => BootError::Memory(other),
        })?;
    Ok((addr, size))
}

fn write_zero_page(
    mem: &GuestMemoryMmap,
    ram_size: u64,
    mut hdr: setup_header,
    cmdline_len: usize,
    rsdp: u64,
) -> Result<(), BootError> {
    hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    hdr.cmd_line_ptr = u32::try_from(CMDLINE_ADDR).unwrap_or(0);
    hdr.cmdline_size = u32::try_from(cmdline_len + 1).unwrap_or(0);
    let mut params = boot_params {
        hdr,
        acpi_rsdp_addr: rsdp,
        ..Default::default()
    };
    let map = e820_map(ram_size);
    for (slot, entry) in params.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr: entry.addr,
            size: entry.size,
            r#type: match entry.kind {
                E820Type::Ram => 1,
                E820Type::Reserved => 2,
            },
        };
    }
    params.e820_entries = u8::try_from(map.len().min(params.e820_table.len())).unwrap_or(0);
    mem.write_obj(params, GuestAddress(ZERO_PAGE_ADDR))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vmm-boot-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn resolves_files_and_directories() {
        let dir = tmpdir("resolve");
        assert!(matches!(
            resolve(&dir.join("missing")),
            Err(BootError::NotFound(_))
        ));
        assert!(matches!(
            resolve(&dir),
            Err(BootError::NoKernelInDirectory(_))
        ));
        std::fs::write(dir.join("vmlinuz"), b"k").unwrap();
        std::fs::write(dir.join("bzImage"), b"k").unwrap();
        let files = resolve(&dir).unwrap();
        assert_eq!(files.kernel, dir.join("bzImage"), "bzImage before vmlinuz");
        assert_eq!(files.initrd, None);
        std::fs::write(dir.join("initramfs.cpio.gz"), b"i").unwrap();
        assert_eq!(
            resolve(&dir).unwrap().initrd,
            Some(dir.join("initramfs.cpio.gz"))
        );
        std::fs::write(dir.join("initrd"), b"i").unwrap();
        assert!(matches!(
            resolve(&dir),
            Err(BootError::AmbiguousInitrd { .. })
        ));
        let file = resolve(&dir.join("vmlinuz")).unwrap();
        assert_eq!(file.kernel, dir.join("vmlinuz"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn detects_formats_and_refuses_other_files() {
        let dir = tmpdir("detect");
        let elf = dir.join("elf");
        std::fs::write(&elf, b"\x7fELF\x02\x01\x01").unwrap();
        assert_eq!(detect(&elf).unwrap(), KernelFormat::Elf);
        let mut bz = vec![0u8; 0x300];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        std::fs::write(dir.join("bz"), &bz).unwrap();
        assert_eq!(detect(&dir.join("bz")).unwrap(), KernelFormat::BzImage);
        std::fs::write(dir.join("text"), b"hello").unwrap();
        assert!(matches!(
            detect(&dir.join("text")),
            Err(BootError::NotAKernel(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn cmdline_limits() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let hdr = setup_header {
            cmdline_size: 16,
            ..Default::default()
        };
        write_cmdline(&mem, "console=ttyS0", &hdr).unwrap();
        let mut buf = [0u8; 14];
        mem.read_slice(&mut buf, GuestAddress(CMDLINE_ADDR))
            .unwrap();
        assert_eq!(&buf, b"console=ttyS0\0");
        assert!(matches!(
            write_cmdline(&mem, "x".repeat(17).as_str(), &hdr),
            Err(BootError::CmdlineTooLong { len: 17, max: 16 })
        ));
        let long = "x".repeat(CMDLINE_MAX);
        assert!(write_cmdline(&mem, &long, &setup_header::default()).is_err());
    }

    #[test]
    fn initrd_goes_high_and_never_over_the_kernel() {
        let dir = tmpdir("initrd");
        let initrd = dir.join("initrd");
        std::fs::write(&initrd, vec![0xab; 10_000]).unwrap();
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 8 << 20)]).unwrap();
        let (addr, size) = load_initrd(&mem, &initrd, 8 << 20, 2 << 20).unwrap();
        assert_eq!(size, 10_000);
        assert_eq!(addr % PAGE, 0);
        assert!(addr + size <= 8 << 20 && addr >= (8 << 20) - 3 * PAGE);
        let mut byte = [0u8];
        mem.read_slice(&mut byte, GuestAddress(addr + 9_999))
            .unwrap();
        assert_eq!(byte, [0xab]);
        assert!(matches!(
            load_initrd(&mem, &initrd, 8 << 20, (8 << 20) - 4096),
            Err(BootError::TooLittleMemory { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn zero_page_has_e820_cmdline_and_rsdp() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write_zero_page(&mem, 256 << 20, elf_setup_header(), 12, 0xe0000).unwrap();
        let params: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_ADDR)).unwrap();
        assert_eq!(params.e820_entries, 4);
        assert_eq!({ params.acpi_rsdp_addr }, 0xe0000);
        assert_eq!({ params.hdr.cmd_line_ptr }, 0x20000);
        assert_eq!({ params.hdr.type_of_loader }, 0xff);
        assert_eq!({ params.hdr.boot_flag }, BOOT_FLAG_MAGIC);
        let last = params.e820_table[2];
        assert_eq!(
            ({ last.addr }, { last.size }),
            (HIGH_RAM_START, (256 << 20) - HIGH_RAM_START)
        );
        let ecam = params.e820_table[3];
        assert_eq!(
            ({ ecam.addr }, { ecam.r#type }),
            (crate::arch::layout::PCI_ECAM_ADDR, 2),
            "the ECAM window is reserved"
        );
    }
}
