//! Booting a cloud image without firmware: when the manifest has no `kernel`, `vmm` reads
//! the first disk itself, finds the kernel, initrd and command line the image's own boot
//! configuration would boot, and boots them directly. No BIOS, no boot loader, no second
//! kernel load.
//!
//! The search, on the disk's partitions (GPT or MBR; or a file system on the whole disk):
//!
//! 1. Boot Loader Specification entries (`/loader/entries/*.conf` on the EFI system
//!    partition or an XBOOTLDR partition, `/boot/loader/entries` or `/loader/entries` on an
//!    ext4 file system), chosen as systemd-boot chooses ([`bls`]): `loader.conf`'s default,
//!    else the first in its order. An image whose `grub.cfg` reads the entries itself
//!    (`blscfg`) goes to 2, so that GRUB's `saved_entry` and `$kernelopts` apply.
//! 2. The default entry of `grub.cfg` (`/boot/grub/grub.cfg`, `/boot/grub2/grub.cfg`, or the
//!    same under a separate `/boot`; else the EFI system partition's stub, which
//!    `configfile`s the real one), found by running the script as GRUB would ([`grub`]).
//! 3. A unified kernel image, `EFI/Linux/*.efi` on the EFI system partition, newest first:
//!    the kernel, initrd and command line from its PE sections ([`uki`]).
//! 4. The `/vmlinuz` and `/initrd.img` links (or `/boot/vmlinuz`, `/boot/initrd.img`) with
//!    `root=UUID=` of their file system.
//!
//! Boot files are read from ext2/3/4 and FAT. An image whose boot files are elsewhere (XFS or
//! Btrfs `/boot`, LVM, LUKS, a Windows disk) is refused with the reason and the way around
//! it: `spec.instance.kernel`. The command line gets `console=ttyS0` when it has none, so
//! that the serial console shows the boot.

pub mod bls;
pub mod disk;
pub mod fs;
pub use fs::ReadError;
pub mod grub;
mod uki;

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use devices::virtio::block::BlockBackend;

use crate::boot::KernelFiles;
use disk::{Content, Partition, Region};
use fs::BootFs;

/// Why the image cannot be booted without a kernel: exit code 2.
#[derive(Debug, thiserror::Error)]
pub enum ImageBootError {
    /// The disk cannot be read.
    #[error("cannot read the disk: {0}")]
    Read(String),
    /// Nothing bootable was found; says what was there.
    #[error(
        "no boot configuration vmm can read: {0}; give spec.instance.kernel (a kernel and \
         initrd taken out of the image) instead"
    )]
    NotFound(String),
    /// The configuration was found but is unusable.
    #[error("{config}: {why}")]
    Config {
        /// Which file.
        config: String,
        /// What is wrong.
        why: String,
    },
    /// A boot file cannot be read or written out.
    #[error("{0}")]
    File(String),
}

/// How the boot entry was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// A Boot Loader Specification entry.
    Bls,
    /// `grub.cfg`'s default entry.
    Grub,
    /// A unified kernel image.
    Uki,
    /// The `/vmlinuz` and `/initrd.img` links.
    Links,
}

/// Where a boot file is: a partition (`None`: the whole disk) and a path, or a section of a
/// unified kernel image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A file.
    File(Option<usize>, String),
    /// A PE section (`.linux`, `.initrd`) of the UKI at (partition, path).
    Section(Option<usize>, String, &'static str),
}

/// What the image boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootChoice {
    /// How it was found.
    pub method: Method,
    /// The configuration file: partition and path.
    pub config: String,
    /// The entry's title.
    pub entry: String,
    /// The kernel.
    pub kernel: Source,
    /// The initrds, in order (concatenated).
    pub initrds: Vec<Source>,
    /// The command line.
    pub cmdline: String,
    /// The partitions, for messages: GRUB name and content.
    pub partitions: Vec<(String, String)>,
}

impl BootChoice {
    fn describe(&self, source: &Source) -> String {
        let part = |p: &Option<usize>| match p {
            Some(i) => self
                .partitions
                .get(*i)
                .map_or("?".to_string(), |(n, c)| format!("({n}, {c}) ")),
            None => "(whole disk) ".to_string(),
        };
        match source {
            Source::File(p, path) => format!("{}{path}", part(p)),
            Source::Section(p, path, section) => format!("{}{path} {section}", part(p)),
        }
    }

    /// Lines for `--dry-run`: how it was found, the entry, the files, the command line.
    pub fn plan_lines(&self) -> Vec<(String, String)> {
        let how = match self.method {
            Method::Bls => "boot loader specification entry",
            Method::Grub => "grub.cfg default entry",
            Method::Uki => "unified kernel image",
            Method::Links => "the /vmlinuz and /initrd.img links",
        };
        let mut lines = vec![
            (
                "boot".to_string(),
                format!("first disk, firmware-free: {how}"),
            ),
            ("config".to_string(), self.config.clone()),
            ("entry".to_string(), self.entry.clone()),
            ("kernel".to_string(), self.describe(&self.kernel)),
        ];
        for i in &self.initrds {
            lines.push(("initrd".to_string(), self.describe(i)));
        }
        lines.push(("cmdline".to_string(), format!("{:?}", self.cmdline)));
        lines
    }
}

/// The boot disk, opened: its partitions and the file systems vmm reads.
struct Image {
    parts: Vec<Partition>,
    fss: Vec<Option<BootFs>>,
    whole: Option<BootFs>,
    /// What the whole disk holds, when it has no partition table.
    whole_content: Content,
}

impl Image {
    fn open(backend: Arc<dyn BlockBackend>) -> Result<Self, ImageBootError> {
        let disk = Region::whole(backend);
        let parts = disk::partitions(&disk).map_err(|e| ImageBootError::Read(e.to_string()))?;
        let fss = parts
            .iter()
            .map(|p| BootFs::open(&p.region, p.content).ok())
            .collect();
        let whole_content = if parts.is_empty() {
            disk::identify(&disk)
        } else {
            Content::Unknown
        };
        let whole = if parts.is_empty() {
            BootFs::open(&disk, whole_content).ok()
        } else {
            None
        };
        Ok(Self {
            parts,
            fss,
            whole,
            whole_content,
        })
    }

    fn fs(&self, index: Option<usize>) -> Option<&BootFs> {
        match index {
            Some(i) => self.fss.get(i).and_then(Option::as_ref),
            None => self.whole.as_ref(),
        }
    }

    /// Every readable file system: (index, fs).
    fn each(&self) -> Vec<(Option<usize>, &BootFs)> {
        let mut out: Vec<(Option<usize>, &BootFs)> = self
            .fss
            .iter()
            .enumerate()
            .filter_map(|(i, f)| f.as_ref().map(|f| (Some(i), f)))
            .collect();
        if let Some(w) = &self.whole {
            out.push((None, w));
        }
        out
    }

    fn name(&self, index: Option<usize>) -> String {
        match index {
            Some(i) => self
                .parts
                .get(i)
                .map_or("?".into(), |p| p.grub_name.clone()),
            None => "whole disk".into(),
        }
    }

    fn is_esp(&self, index: Option<usize>) -> bool {
        index.and_then(|i| self.parts.get(i)).is_some_and(|p| p.esp)
    }

    fn is_xbootldr(&self, index: Option<usize>) -> bool {
        index
            .and_then(|i| self.parts.get(i))
            .is_some_and(|p| p.xbootldr)
    }

    fn located(&self, index: Option<usize>, path: &str) -> String {
        format!("({}) {path}", self.name(index))
    }

    /// BLS entries, with the partition each is on and the directory its paths are relative
    /// to ("" or "/boot").
    fn bls_entries(&self) -> Vec<(Option<usize>, String, bls::BlsEntry)> {
        let mut out = Vec::new();
        for (index, f) in self.each() {
            let dirs: &[(&str, &str)] = if self.is_esp(index) || self.is_xbootldr(index) {
                &[("/loader/entries", "")]
            } else {
                &[("/boot/loader/entries", "/boot"), ("/loader/entries", "")]
            };
            for (dir, base) in dirs {
                for name in f.list(dir) {
                    let Ok(bytes) = f.read(&format!("{dir}/{name}")) else {
                        continue;
                    };
                    if let Some(e) = bls::parse(&name, &String::from_utf8_lossy(&bytes)) {
                        out.push((index, (*base).to_string(), e));
                    }
                }
            }
        }
        out
    }
}

impl grub::Host for Image {
    fn partition(&self, name: &str) -> Option<Option<usize>> {
        let name = name.trim_matches(|c| c == '(' || c == ')');
        let (disk, part) = name.split_once(',').unwrap_or((name, ""));
        if disk != "hd0" {
            return None;
        }
        if part.is_empty() {
            return Some(None);
        }
        // `gpt2`, `msdos1`, or a bare number.
        let number: String = part.chars().filter(char::is_ascii_digit).collect();
        self.parts
            .iter()
            .position(|p| {
                p.grub_name == part || p.grub_name.trim_start_matches(char::is_alphabetic) == number
            })
            .map(Some)
    }

    fn name_of(&self, index: Option<usize>) -> String {
        match index {
            Some(i) => format!("hd0,{}", self.name(Some(i))),
            None => "hd0".into(),
        }
    }

    fn find_fs(&self, value: &str, label: bool) -> Option<Option<usize>> {
        self.each()
            .into_iter()
            .find(|(_, f)| {
                if label {
                    f.label() == value
                } else {
                    f.uuid().eq_ignore_ascii_case(value)
                }
            })
            .map(|(i, _)| i)
    }

    fn find_file(&self, path: &str) -> Option<Option<usize>> {
        self.each()
            .into_iter()
            .find(|(_, f)| f.is_file(path))
            .map(|(i, _)| i)
    }

    fn read(&self, index: Option<usize>, path: &str) -> Result<Vec<u8>, ReadError> {
        self.fs(index)
            .ok_or_else(|| ReadError::NotReadable(self.name(index)))?
            .read(path)
    }

    fn bls_entries(&self, index: Option<usize>) -> Vec<grub::BlsMenuEntry> {
        // blscfg reads `/loader/entries` of $root, or `/boot/loader/entries` when /boot is
        // not a partition of its own; sorted newest first.
        let mut entries: Vec<(String, bls::BlsEntry)> = self
            .bls_entries()
            .into_iter()
            .filter(|(i, _, _)| *i == index)
            .map(|(_, base, e)| (base, e))
            .collect();
        entries.sort_by(|a, b| bls::version_cmp(&b.1.version, &a.1.version));
        entries
            .into_iter()
            .map(|(base, e)| grub::BlsMenuEntry {
                id: e.id.clone(),
                title: e.title.clone(),
                linux: format!("{base}{}", e.linux),
                initrds: e.initrds.iter().map(|i| format!("{base}{i}")).collect(),
                options: e.options.clone(),
            })
            .collect()
    }
}

/// Where `grub.cfg` may be on an ext file system, in the order GRUB's core image looks.
const GRUB_CONFIGS: &[&str] = &[
    "/boot/grub/grub.cfg",
    "/boot/grub2/grub.cfg",
    "/grub/grub.cfg",
    "/grub2/grub.cfg",
];

/// Finds what the image on `backend` boots.
pub fn find(backend: Arc<dyn BlockBackend>) -> Result<BootChoice, ImageBootError> {
    let image = Image::open(backend)?;
    let partitions: Vec<(String, String)> = image
        .parts
        .iter()
        .map(|p| (p.grub_name.clone(), p.content.to_string()))
        .collect();
    let found = find_in(&image)?;
    let mut choice = found;
    choice.partitions = partitions;
    if !has_serial_console(&choice.cmdline) {
        choice.cmdline.push_str(" console=ttyS0");
    }
    Ok(choice)
}

fn find_in(image: &Image) -> Result<BootChoice, ImageBootError> {
    let grub_configs = grub_configs(image);
    let uses_blscfg = grub_configs.iter().any(|(i, path)| {
        image
            .fs(*i)
            .and_then(|f| f.read(path).ok())
            .is_some_and(|b| String::from_utf8_lossy(&b).contains("blscfg"))
    });
    if !uses_blscfg && let Some(choice) = from_bls(image)? {
        return Ok(choice);
    }
    if let Some((index, path)) = grub_configs.first() {
        return from_grub(image, *index, path);
    }
    if let Some(choice) = uki::find(image)? {
        return Ok(choice);
    }
    if let Some(choice) = from_links(image) {
        return Ok(choice);
    }
    Err(ImageBootError::NotFound(why_not(image)))
}

/// `grub.cfg` files: the real ones on ext file systems first, then EFI stubs.
fn grub_configs(image: &Image) -> Vec<(Option<usize>, String)> {
    let mut out = Vec::new();
    for (index, f) in image.each() {
        if matches!(f, BootFs::Ext(_)) {
            for path in GRUB_CONFIGS {
                if f.is_file(path) {
                    out.push((index, (*path).to_string()));
                }
            }
        }
    }
    for (index, f) in image.each() {
        if image.is_esp(index) {
            for vendor in f.list("/EFI") {
                let path = format!("/EFI/{vendor}/grub.cfg");
                if f.is_file(&path) {
                    out.push((index, path));
                }
            }
        }
    }
    out
}

fn from_bls(image: &Image) -> Result<Option<BootChoice>, ImageBootError> {
    let found = image.bls_entries();
    if found.is_empty() {
        return Ok(None);
    }
    let mut entries: Vec<bls::BlsEntry> = found.iter().map(|(_, _, e)| e.clone()).collect();
    bls::sort(&mut entries);
    let default = image
        .each()
        .into_iter()
        .filter(|(i, _)| image.is_esp(*i) || image.is_xbootldr(*i))
        .find_map(|(_, f)| f.read("/loader/loader.conf").ok())
        .and_then(|b| bls::loader_default(&String::from_utf8_lossy(&b)));
    let chosen = bls::choose(&entries, default.as_deref()).ok_or_else(|| {
        ImageBootError::NotFound("boot loader specification entries, none usable".into())
    })?;
    let (index, base, entry) = found
        .iter()
        .find(|(_, _, e)| e.id == chosen.id)
        .ok_or_else(|| ImageBootError::NotFound("an entry disappeared".into()))?;
    let file = |p: &str| Source::File(*index, format!("{base}{p}"));
    let (kernel, initrds, cmdline) = if entry.linux.is_empty() {
        // `efi`: a unified kernel image named by a type #1 entry.
        let path = format!("{base}{}", entry.efi);
        let (k, i, c) = uki::sources(image, *index, &path)?;
        (
            k,
            i,
            if entry.options.is_empty() {
                c
            } else {
                entry.options.clone()
            },
        )
    } else {
        (
            file(&entry.linux),
            entry.initrds.iter().map(|i| file(i)).collect(),
            entry.options.clone(),
        )
    };
    Ok(Some(BootChoice {
        method: Method::Bls,
        config: image.located(
            *index,
            &format!("{}/loader/entries/{}.conf", base, entry.id),
        ),
        entry: entry.title.clone(),
        kernel,
        initrds,
        cmdline,
        partitions: Vec::new(),
    }))
}

fn from_grub(
    image: &Image,
    index: Option<usize>,
    path: &str,
) -> Result<BootChoice, ImageBootError> {
    let config = image.located(index, path);
    let choice = grub::choose(image, index, path).map_err(|e| ImageBootError::Config {
        config: config.clone(),
        why: e.to_string(),
    })?;
    Ok(BootChoice {
        method: Method::Grub,
        config,
        entry: choice.title,
        kernel: Source::File(choice.partition, choice.kernel),
        initrds: choice
            .initrds
            .into_iter()
            .map(|(p, path)| Source::File(p, path))
            .collect(),
        cmdline: choice.cmdline,
        partitions: Vec::new(),
    })
}

fn from_links(image: &Image) -> Option<BootChoice> {
    for (index, f) in image.each() {
        if !matches!(f, BootFs::Ext(_)) {
            continue;
        }
        for dir in ["", "/boot"] {
            let kernel = format!("{dir}/vmlinuz");
            if !f.is_file(&kernel) {
                continue;
            }
            let initrd = format!("{dir}/initrd.img");
            let initrds = if f.is_file(&initrd) {
                vec![Source::File(index, initrd.clone())]
            } else {
                Vec::new()
            };
            let target = f.read_link(&kernel).unwrap_or_else(|| kernel.clone());
            return Some(BootChoice {
                method: Method::Links,
                config: image.located(index, &format!("{kernel} → {target}")),
                entry: target,
                kernel: Source::File(index, kernel),
                initrds,
                cmdline: format!("root=UUID={} ro", f.uuid()),
                partitions: Vec::new(),
            });
        }
    }
    None
}

/// Says what the disk holds, for a refusal.
fn why_not(image: &Image) -> String {
    if image.parts.is_empty() {
        return match (&image.whole, image.whole_content) {
            (Some(_), _) => "the file system on the whole disk has no kernel (no grub.cfg, \
                             loader entries or /vmlinuz)"
                .into(),
            (None, Content::Unknown) => {
                "no partition table and no file system vmm reads (ext4, FAT)".into()
            }
            (None, content) => format!(
                "no partition table, and the whole disk is {content}, which vmm does not read"
            ),
        };
    }
    let parts: Vec<String> = image
        .parts
        .iter()
        .map(|p| format!("{} {}", p.grub_name, p.content))
        .collect();
    let unreadable = image.parts.iter().find(|p| {
        matches!(
            p.content,
            Content::Xfs | Content::Btrfs | Content::Luks | Content::Lvm | Content::Ntfs
        )
    });
    match unreadable {
        Some(p) => format!(
            "its boot files are not on ext4 or FAT ({} is {}; partitions: {})",
            p.grub_name,
            p.content,
            parts.join(", ")
        ),
        None => format!(
            "no grub.cfg, loader entries, unified kernel image or /vmlinuz (partitions: {})",
            parts.join(", ")
        ),
    }
}

/// Whether `cmdline` already sends the console to the first serial port.
fn has_serial_console(cmdline: &str) -> bool {
    cmdline
        .split_whitespace()
        .any(|a| a == "console=ttyS0" || a.starts_with("console=ttyS0,"))
}

/// The kernel and initrd of a [`BootChoice`] written out of the image into files with no
/// name; they live as long as this.
#[derive(Debug)]
pub struct Extracted {
    kernel: File,
    initrd: Option<File>,
}

impl Extracted {
    /// Paths the kernel loader opens (`/proc/self/fd/N`).
    pub fn files(&self) -> KernelFiles {
        use std::os::fd::AsRawFd;
        let path = |f: &File| PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd()));
        KernelFiles {
            kernel: path(&self.kernel),
            initrd: self.initrd.as_ref().map(path),
        }
    }
}

/// Reads `choice`'s kernel and initrds out of the image on `backend` into files in `tmp`.
pub fn extract(
    backend: Arc<dyn BlockBackend>,
    choice: &BootChoice,
    tmp: &Path,
) -> Result<Extracted, ImageBootError> {
    let image = Image::open(backend)?;
    let bytes = |source: &Source| -> Result<Vec<u8>, ImageBootError> {
        let fail = |e: ReadError| {
            let why = net::error::Chain(&e);
            ImageBootError::File(format!("{}: {why}", choice.describe(source)))
        };
        match source {
            Source::File(index, path) => image
                .fs(*index)
                .ok_or(ReadError::NoFileSystem)
                .and_then(|fs| fs.read(path))
                .map_err(fail),
            Source::Section(index, path, section) => {
                uki::section(&image, *index, path, section).map_err(fail)
            }
        }
    };
    let write = |parts: &[Vec<u8>]| -> Result<File, ImageBootError> {
        let mut f = crate::disk::image::anonymous_file(tmp)
            .map_err(|e| ImageBootError::File(e.to_string()))?;
        for (i, p) in parts.iter().enumerate() {
            // Each archive of a concatenated initrd starts 4-byte aligned, as GRUB lays
            // them out.
            let pad = if i + 1 < parts.len() {
                (4 - p.len() % 4) % 4
            } else {
                0
            };
            f.write_all(p)
                .and_then(|()| f.write_all(&[0u8; 3][..pad]))
                .map_err(|e| ImageBootError::File(e.to_string()))?;
        }
        Ok(f)
    };
    let kernel = write(&[bytes(&choice.kernel)?])?;
    let initrd = if choice.initrds.is_empty() {
        None
    } else {
        let parts = choice
            .initrds
            .iter()
            .map(bytes)
            .collect::<Result<Vec<_>, _>>()?;
        Some(write(&parts)?)
    };
    Ok(Extracted { kernel, initrd })
}

#[cfg(test)]
mod tests;
