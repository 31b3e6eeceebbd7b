//! Disks: from the manifest's `disks` and `volumes` to the backends of virtio-blk devices.
//!
//! [`plan`] resolves every disk without changing anything: which file or directory backs it
//! (a `--volume` binding first, then the volume source as the manifest or a Virtink pod's
//! `/mnt` has it), its format and size, whether the guest's writes persist. `--dry-run`
//! prints that plan; [`open`] carries it out once per `vmm run` (a reboot keeps the disks,
//! and what the guest wrote to an ephemeral one).
//!
//! | source | where | guest writes |
//! |---|---|---|
//! | `containerDisk` | `image` as a file (raw or qcow2) or a directory holding `disk.img` or one file; else the pod's `/mnt/<volume>/disk.raw` | ephemeral: a qcow2 overlay in an anonymous temporary file, the image never written |
//! | `containerRootfs` | `image` as a directory, made into ext4 of `size` by `mkfs.ext4 -d` in a temporary file; else `/mnt/<volume>/rootfs.raw` | ephemeral |
//! | `persistentVolumeClaim`, `dataVolume` | `/mnt/<volume>` (a block device, or a directory holding `disk.img`) | persistent: in place, flushed with `fdatasync` |
//! | `cloudInit` | a NoCloud seed built in memory ([`seed`]) | kept in memory |
//!
//! `--volume NAME=PATH` puts PATH in place of where the source would be found; the
//! source keeps its semantics. `readOnly: true` opens the file read-only and tells the guest.

pub mod image;
pub mod iso9660;
pub mod raw;
pub mod rootfs;
pub mod seed;

use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use devices::virtio::block::{BlockBackend, BlockCounters, SECTOR};
use vm_memory::VolatileSlice;

use crate::config::Manifest;
use crate::config::schema::Volume;
use image::ImageInfo;

/// Where `vmm` looks for what a Virtink pod's init containers left.
pub const POD_MNT: &str = "/mnt";

/// Why a disk cannot be set up: exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("spec.instance.disks[{index}] ({name}): {what}")]
pub struct DiskError {
    /// The disk's index in `spec.instance.disks`.
    pub index: usize,
    /// The disk (and volume) name.
    pub name: String,
    /// What failed, naming the file.
    pub what: String,
    /// The cause.
    #[source]
    pub source: Option<io::Error>,
}

/// The kind of volume behind a disk, as the manifest names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeKind {
    /// `containerDisk`.
    ContainerDisk,
    /// `containerRootfs`.
    ContainerRootfs,
    /// `persistentVolumeClaim`.
    PersistentVolumeClaim,
    /// `dataVolume`.
    DataVolume,
    /// `cloudInit`.
    CloudInit,
}

impl VolumeKind {
    fn of(volume: &Volume) -> Option<Self> {
        Some(if volume.container_disk.is_some() {
            Self::ContainerDisk
        } else if volume.container_rootfs.is_some() {
            Self::ContainerRootfs
        } else if volume.persistent_volume_claim.is_some() {
            Self::PersistentVolumeClaim
        } else if volume.data_volume.is_some() {
            Self::DataVolume
        } else if volume.cloud_init.is_some() {
            Self::CloudInit
        } else {
            return None;
        })
    }

    /// Whether what the guest writes outlives `vmm`.
    pub fn persistent(self) -> bool {
        matches!(self, Self::PersistentVolumeClaim | Self::DataVolume)
    }
}

impl std::fmt::Display for VolumeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::ContainerDisk => "containerDisk",
            Self::ContainerRootfs => "containerRootfs",
            Self::PersistentVolumeClaim => "persistentVolumeClaim",
            Self::DataVolume => "dataVolume",
            Self::CloudInit => "cloudInit",
        })
    }
}

/// What backs a disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backing {
    /// An image file or block device.
    Image {
        /// The file.
        path: PathBuf,
        /// What [`image::probe`] found.
        info: ImageInfo,
    },
    /// A directory to make into an ext4 file system of `size` bytes.
    Rootfs {
        /// The directory.
        dir: PathBuf,
        /// The file system's size.
        size: u64,
    },
    /// A cloud-init seed image built in memory.
    Seed {
        /// The file names in it.
        files: Vec<&'static str>,
        /// The image.
        image: Arc<Vec<u8>>,
    },
}

/// One disk, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskPlan {
    /// Its index in `spec.instance.disks`.
    pub index: usize,
    /// The disk (and volume) name; also its serial number in the guest.
    pub name: String,
    /// The volume source.
    pub kind: VolumeKind,
    /// What backs it.
    pub backing: Backing,
    /// The guest may only read.
    pub read_only: bool,
    /// `--volume` gave the path.
    pub bound: bool,
}

impl DiskPlan {
    /// Whether the guest's writes go to a temporary copy rather than the backing file.
    pub fn ephemeral(&self) -> bool {
        !self.read_only && !self.kind.persistent()
    }

    /// The size the guest sees.
    pub fn size(&self) -> u64 {
        match &self.backing {
            Backing::Image { info, .. } => info.virtual_size,
            Backing::Rootfs { size, .. } => *size - *size % SECTOR,
            Backing::Seed { image, .. } => image.len() as u64,
        }
    }
}

impl std::fmt::Display for DiskPlan {
    /// One line for `--dry-run`: the source, the file, format and size, and what becomes
    /// of the guest's writes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let size = crate::plan::human(self.size());
        let mut line = format!("{}", self.kind);
        match &self.backing {
            Backing::Image { path, info } => {
                let bound = if self.bound { " (--volume)" } else { "" };
                let _ = write!(line, " {}{bound}: {}, {size}", path.display(), info.format);
                if info.block_device {
                    line.push_str(", block device");
                }
                for b in &info.backing {
                    let _ = write!(line, ", backing file {}", b.display());
                }
            }
            Backing::Rootfs { dir, .. } => {
                let _ = write!(
                    line,
                    " {}: made into ext4 of {size} (mkfs.ext4 -d) in a temporary file",
                    dir.display()
                );
            }
            Backing::Seed { files, .. } => {
                let _ = write!(
                    line,
                    ": NoCloud seed, ISO 9660 \"cidata\" ({}), {size}, built in memory",
                    files.join(", ")
                );
            }
        }
        let fate = if self.read_only {
            "read-only"
        } else if self.kind.persistent() {
            "persistent: writes go to the file"
        } else {
            match self.backing {
                Backing::Image { .. } => {
                    "ephemeral: writes go to a copy-on-write overlay, removed at exit"
                }
                Backing::Rootfs { .. } => "ephemeral: the file system is removed at exit",
                Backing::Seed { .. } => "ephemeral: writes stay in memory",
            }
        };
        write!(f, "{line}; {fate}")
    }
}

/// Where `vmm` makes temporary files: `$TMPDIR`, else `/var/tmp` (on disk more often than
/// `/tmp`, which may be memory), else `/tmp` (a minimal container image may have neither).
pub fn temp_dir() -> PathBuf {
    std::env::var_os("TMPDIR")
        .map(PathBuf::from)
        .into_iter()
        .chain(["/var/tmp", "/tmp"].map(PathBuf::from))
        .find(|p| p.is_dir())
        .unwrap_or_else(|| PathBuf::from("/tmp"))
}

/// A name for a temporary file of this process that no other has: `.vmm-<pid>-<n>-<what>`.
fn temp_name(what: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!(".vmm-{}-{n}-{what}", std::process::id())
}

/// Resolves every disk of `manifest`, in `disks` order, touching nothing; `volumes` are the
/// `--volume` bindings, `mnt` where a pod's volumes are mounted ([`POD_MNT`]).
pub fn plan(
    manifest: &Manifest,
    volumes: &[(String, PathBuf)],
    mnt: &Path,
) -> Vec<Result<DiskPlan, DiskError>> {
    let Some(spec) = manifest.vm.spec.as_ref() else {
        return Vec::new();
    };
    let disks = spec.instance.as_ref().map_or(&[][..], |i| &i.disks[..]);
    disks
        .iter()
        .enumerate()
        .map(|(index, disk)| {
            let fail = |what: String, source: Option<io::Error>| DiskError {
                index,
                name: disk.name.clone(),
                what,
                source,
            };
            let volume = spec
                .volumes
                .iter()
                .find(|v| v.name == disk.name)
                .ok_or_else(|| fail("no volume of that name".into(), None))?;
            let kind = VolumeKind::of(volume)
                .ok_or_else(|| fail("the volume has no source".into(), None))?;
            let bound = volumes
                .iter()
                .find(|(name, _)| *name == disk.name)
                .map(|(_, p)| p.clone());
            let read_only = disk.read_only.unwrap_or(false);
            let backing = match &bound {
                Some(path) => bound_backing(kind, volume, path),
                None => source_backing(kind, volume, manifest, mnt),
            }
            .map_err(|(what, source)| fail(what, source))?;
            Ok(DiskPlan {
                index,
                name: disk.name.clone(),
                kind,
                backing,
                read_only,
                bound: bound.is_some(),
            })
        })
        .collect()
}

type Failure = (String, Option<io::Error>);

/// What backs an image at `path` (`what` names it in errors).
fn image_backing(what: &str, path: &Path) -> Result<Backing, Failure> {
    match image::probe(path) {
        Ok(info) => Ok(Backing::Image {
            path: path.to_path_buf(),
            info,
        }),
        Err(e) => Err((format!("{what} {}", path.display()), Some(e))),
    }
}

/// The backing of a volume bound with `--volume` to `path`.
fn bound_backing(kind: VolumeKind, volume: &Volume, path: &Path) -> Result<Backing, Failure> {
    if kind == VolumeKind::ContainerRootfs && path.is_dir() {
        let size = rootfs_size(volume);
        return rootfs::check(path)
            .map(|()| Backing::Rootfs {
                dir: path.to_path_buf(),
                size,
            })
            .map_err(|e| (format!("--volume {}", path.display()), Some(e)));
    }
    image_backing("--volume", path)
}

fn rootfs_size(volume: &Volume) -> u64 {
    volume
        .container_rootfs
        .as_ref()
        .and_then(|r| r.size.as_ref())
        .and_then(|q| u64::try_from(q.value()).ok())
        .unwrap_or(0)
}

/// The backing of a volume found where its source says.
fn source_backing(
    kind: VolumeKind,
    volume: &Volume,
    manifest: &Manifest,
    mnt: &Path,
) -> Result<Backing, Failure> {
    let pod_dir = mnt.join(&volume.name);
    match kind {
        VolumeKind::ContainerDisk => {
            let image = volume.container_disk.as_ref().map_or("", |c| &c.image);
            let local = manifest.base_dir.join(image);
            if local.is_dir() {
                return image_backing("containerDisk", &image_in_dir(&local)?);
            }
            if local.exists() {
                return image_backing("containerDisk image", &local);
            }
            let pod = pod_dir.join("disk.raw");
            if pod.exists() {
                return image_backing("containerDisk", &pod);
            }
            Err((
                format!(
                    "containerDisk image {image:?} is neither a local file or directory ({}) nor \
                     in the pod ({}); bind it with --volume {}=PATH",
                    local.display(),
                    pod.display(),
                    volume.name
                ),
                None,
            ))
        }
        VolumeKind::ContainerRootfs => {
            let image = volume.container_rootfs.as_ref().map_or("", |c| &c.image);
            let local = manifest.base_dir.join(image);
            if local.is_dir() {
                return rootfs::check(&local)
                    .map(|()| Backing::Rootfs {
                        dir: local.clone(),
                        size: rootfs_size(volume),
                    })
                    .map_err(|e| (format!("containerRootfs {}", local.display()), Some(e)));
            }
            let pod = pod_dir.join("rootfs.raw");
            if pod.exists() {
                return image_backing("containerRootfs", &pod);
            }
            Err((
                format!(
                    "containerRootfs image {image:?} is neither a local directory ({}) nor in \
                     the pod ({}); bind it with --volume {}=DIR",
                    local.display(),
                    pod.display(),
                    volume.name
                ),
                None,
            ))
        }
        VolumeKind::PersistentVolumeClaim | VolumeKind::DataVolume => {
            let path = if pod_dir.is_dir() {
                pod_dir.join("disk.img")
            } else {
                pod_dir.clone()
            };
            if !path.exists() {
                return Err((
                    format!(
                        "{kind}: {} does not exist (a Virtink pod mounts the volume there); \
                         bind it with --volume {}=PATH",
                        path.display(),
                        volume.name
                    ),
                    None,
                ));
            }
            image_backing(&kind.to_string(), &path)
        }
        VolumeKind::CloudInit => {
            // In Virtink's pod, the init container made the seed (it could read the Secrets).
            let pod = pod_dir.join("cloud-init.iso");
            if pod.is_file() {
                return image_backing("cloudInit", &pod);
            }
            let ci = volume.cloud_init.clone().unwrap_or_default();
            let vm = &manifest.vm.metadata;
            let instance_id = vm
                .uid
                .as_ref()
                .and_then(|u| u.as_str().map(str::to_string))
                .unwrap_or_else(|| vm.name.clone());
            let files = seed::files(&ci, &vm.name, &instance_id, &manifest.secrets)
                .map_err(|e| (e.to_string(), None))?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let image = seed::image(&files, now).map_err(|e| (e.to_string(), None))?;
            Ok(Backing::Seed {
                files: files.iter().map(|(n, _)| *n).collect(),
                image: Arc::new(image),
            })
        }
    }
}

/// The image in a container disk's directory: `disk.img`, else its only regular file.
fn image_in_dir(dir: &Path) -> Result<PathBuf, Failure> {
    let named = dir.join("disk.img");
    if named.exists() {
        return Ok(named);
    }
    let fail = |why: &str| {
        (
            format!("containerDisk directory {}: {why}", dir.display()),
            None,
        )
    };
    let entries = std::fs::read_dir(dir).map_err(|e| {
        (
            format!("containerDisk directory {}", dir.display()),
            Some(e),
        )
    })?;
    let files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    match files.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(fail("holds no disk.img and no file")),
        _ => Err(fail("holds several files and no disk.img")),
    }
}

/// The disk `plan` describes, opened read-only without changing anything (no overlay, no
/// file system made): for reading its boot configuration before the run.
pub fn open_read_only(plan: &DiskPlan) -> Result<Arc<dyn BlockBackend>, DiskError> {
    let fail = |what: String, source: Option<io::Error>| DiskError {
        index: plan.index,
        name: plan.name.clone(),
        what,
        source,
    };
    match &plan.backing {
        Backing::Image { path, info } => image::open(path, info.format, true)
            .map(Arc::from)
            .map_err(|e| fail(path.display().to_string(), Some(e))),
        Backing::Seed { image, .. } => Ok(Arc::new(MemoryDisk::new(image, true))),
        Backing::Rootfs { dir, .. } => Err(fail(
            format!(
                "containerRootfs {} holds a file system, not a disk with a boot loader: give \
                 spec.instance.kernel",
                dir.display()
            ),
            None,
        )),
    }
}

/// A disk's host side, for the whole run: its backend and counters outlive boots.
pub struct HostDisk {
    /// What it is.
    pub plan: DiskPlan,
    /// Where its sectors live.
    pub backend: Arc<dyn BlockBackend>,
    /// Requests and bytes, across boots.
    pub counters: Arc<BlockCounters>,
}

impl std::fmt::Debug for HostDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostDisk")
            .field("plan", &self.plan)
            .field("size", &self.backend.size())
            .finish_non_exhaustive()
    }
}

/// Sets up each planned disk: opens files (read-only ones read-only), makes overlays and
/// root file systems in `tmp`.
pub fn open(plans: Vec<DiskPlan>, tmp: &Path) -> Result<Vec<HostDisk>, DiskError> {
    plans
        .into_iter()
        .map(|plan| {
            let fail = |what: String, source: io::Error| DiskError {
                index: plan.index,
                name: plan.name.clone(),
                what,
                source: Some(source),
            };
            let backend: Arc<dyn BlockBackend> = match &plan.backing {
                Backing::Image { path, info } => {
                    let opened = if plan.ephemeral() {
                        image::Qcow2Disk::overlay(path, info.format, tmp)
                            .map(|d| Box::new(d) as Box<dyn BlockBackend>)
                    } else {
                        image::open(path, info.format, plan.read_only)
                    };
                    Arc::from(opened.map_err(|e| fail(format!("{}", path.display()), e))?)
                }
                Backing::Rootfs { dir, size } => {
                    let file = rootfs::build(dir, *size, tmp)
                        .map_err(|e| fail(format!("containerRootfs {}", dir.display()), e))?;
                    Arc::new(
                        raw::RawDisk::from_file(file, plan.read_only)
                            .map_err(|e| fail("containerRootfs".into(), e))?,
                    )
                }
                Backing::Seed { image, .. } => Arc::new(MemoryDisk::new(image, plan.read_only)),
            };
            log::info!("disk {}: {plan}", plan.name);
            Ok(HostDisk {
                plan,
                backend,
                counters: Arc::default(),
            })
        })
        .collect()
}

/// A disk as `GET /v1/vm/info` reports it.
#[derive(Debug, serde::Serialize)]
pub struct DiskReport {
    /// The disk name (the guest's serial number).
    pub name: String,
    /// The volume source.
    pub source: String,
    /// The file, directory or `memory`.
    pub path: String,
    /// `raw`, `qcow2`, `ext4` (a container rootfs) or `iso9660` (the seed).
    pub format: String,
    /// The size the guest sees, in bytes.
    pub size_bytes: u64,
    /// The guest may only read.
    pub read_only: bool,
    /// The guest's writes go to a temporary copy.
    pub ephemeral: bool,
    /// Requests and bytes since `vmm` started.
    pub reads: u64,
    /// Bytes read.
    pub read_bytes: u64,
    /// Write requests.
    pub writes: u64,
    /// Bytes written.
    pub write_bytes: u64,
    /// Flushes.
    pub flushes: u64,
    /// Requests that failed or were malformed.
    pub errors: u64,
}

/// `disk` for the API's `info`.
pub fn report(disk: &HostDisk) -> DiskReport {
    use std::sync::atomic::Ordering::Relaxed;
    let (path, format) = match &disk.plan.backing {
        Backing::Image { path, info } => (path.display().to_string(), info.format.to_string()),
        Backing::Rootfs { dir, .. } => (dir.display().to_string(), "ext4".to_string()),
        Backing::Seed { .. } => ("memory".to_string(), "iso9660".to_string()),
    };
    let c = &disk.counters;
    DiskReport {
        name: disk.plan.name.clone(),
        source: disk.plan.kind.to_string(),
        path,
        format,
        size_bytes: disk.backend.size(),
        read_only: disk.plan.read_only,
        ephemeral: disk.plan.ephemeral(),
        reads: c.reads.load(Relaxed),
        read_bytes: c.read_bytes.load(Relaxed),
        writes: c.writes.load(Relaxed),
        write_bytes: c.write_bytes.load(Relaxed),
        flushes: c.flushes.load(Relaxed),
        errors: c.errors.load(Relaxed),
    }
}

/// A disk in memory (the cloud-init seed): the guest's writes stay in the process.
#[derive(Debug)]
pub struct MemoryDisk {
    bytes: RwLock<Vec<u8>>,
    read_only: bool,
}

impl MemoryDisk {
    /// A disk holding `bytes`, padded to whole sectors.
    pub fn new(bytes: &[u8], read_only: bool) -> Self {
        let mut bytes = bytes.to_vec();
        bytes.resize(bytes.len().next_multiple_of(512), 0);
        Self {
            bytes: RwLock::new(bytes),
            read_only,
        }
    }
}

impl BlockBackend for MemoryDisk {
    fn size(&self) -> u64 {
        self.bytes.read().map_or(0, |b| b.len() as u64)
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn read_at(&self, offset: u64, bufs: &[VolatileSlice<'_>]) -> io::Result<()> {
        let bytes = self.bytes.read().unwrap_or_else(|e| e.into_inner());
        let mut at = usize::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
        for b in bufs {
            let src = bytes
                .get(at..at + b.len())
                .ok_or(io::ErrorKind::UnexpectedEof)?;
            b.copy_from(src);
            at += b.len();
        }
        Ok(())
    }

    fn write_at(&self, offset: u64, bufs: &[VolatileSlice<'_>]) -> io::Result<()> {
        if self.read_only {
            return Err(io::ErrorKind::PermissionDenied.into());
        }
        let mut bytes = self.bytes.write().unwrap_or_else(|e| e.into_inner());
        let mut at = usize::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
        for b in bufs {
            let dst = bytes
                .get_mut(at..at + b.len())
                .ok_or(io::ErrorKind::UnexpectedEof)?;
            b.copy_to(dst);
            at += b.len();
        }
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests;
