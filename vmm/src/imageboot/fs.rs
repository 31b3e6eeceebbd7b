//! Read-only access to the file systems that hold boot files: ext2/3/4 (through
//! `ext4-view`, which reads journaled and extent-mapped files and replays the journal in
//! memory) and FAT (through `fatfs`, for EFI system partitions; names case-insensitive).

use std::io::Read;

use super::disk::{Content, Region};

/// The largest file read (a kernel or initrd): bounds what a hostile image can make `vmm`
/// hold.
pub const MAX_FILE: u64 = 1 << 30;
/// Most entries listed from one directory.
const MAX_LISTED: usize = 4096;

/// Why a boot file, or the file system holding it, cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The partition holds no file system this module reads.
    #[error("no file system vmm reads")]
    NoFileSystem,
    /// The partition GRUB names holds no file system this module reads.
    #[error("({0}) is no file system vmm reads")]
    NotReadable(String),
    /// No such file.
    #[error("{0}: no such file")]
    NotFound(String),
    /// The file is larger than [`MAX_FILE`].
    #[error("{0} is larger than {max} MiB", max = MAX_FILE >> 20)]
    TooLarge(String),
    /// ext4-view's account.
    #[error("ext4")]
    Ext4(#[source] ext4_view::Ext4Error),
    /// An ext superblock that claims more than its partition holds.
    #[error("ext4: the superblock claims {claimed} bytes in a partition of {len}")]
    ExtTooLarge {
        /// The file system's size by its superblock.
        claimed: u128,
        /// The partition's.
        len: u64,
    },
    /// fatfs's account.
    #[error("FAT")]
    Fat(#[source] std::io::Error),
    /// A unified kernel image's PE structure.
    #[error("{0}")]
    Pe(String),
}

/// A file system holding boot files.
pub enum BootFs {
    /// ext2/3/4.
    Ext(Box<ext4_view::Ext4>),
    /// FAT.
    Fat(Box<fatfs::FileSystem<super::disk::Cursor>>),
}

impl std::fmt::Debug for BootFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BootFs::Ext(_) => "BootFs::Ext",
            BootFs::Fat(_) => "BootFs::Fat",
        })
    }
}

/// A file system may read this many times its size in all: the boot files at most twice
/// (a unified kernel image is read to choose it, then to boot it), configuration files and
/// directories a few times while choosing what to boot.
pub const READ_BUDGET_TIMES: u64 = 4;
/// And this much more (a tiny file system is read in sector-sized pieces more than once).
const READ_BUDGET_EXTRA: u64 = 256 << 10;

/// `Ext4Read` over a region.
struct ExtReader(Region);

impl ext4_view::Ext4Read for ExtReader {
    fn read(
        &mut self,
        start_byte: u64,
        dst: &mut [u8],
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        self.0.read_at(start_byte, dst).map_err(Box::from)
    }
}

/// Refuses an ext superblock whose size (blocks × block size) exceeds its partition: ext4-view
/// reserves room for every block group descriptor it implies before reading one, and a
/// hostile image (the guest writes its own boot disk) could make that any size. Within the
/// partition there are at most one group per block, and the partition bounds the blocks.
fn check_ext_size(region: &Region) -> Result<(), ReadError> {
    let mut sb = [0u8; 0x154];
    if region.read_at(1024, &mut sb).is_err() {
        return Ok(()); // too short for a superblock: ext4-view says so
    }
    let le32 = |at: usize| u32::from_le_bytes([sb[at], sb[at + 1], sb[at + 2], sb[at + 3]]);
    // As ext4-view reads them: the high half of the block count unconditionally.
    let blocks = (u64::from(le32(0x150)) << 32) | u64::from(le32(0x4));
    let block_size = 1024u128 << le32(0x18).min(16);
    let claimed = u128::from(blocks) * block_size;
    if claimed > u128::from(region.len) {
        return Err(ReadError::ExtTooLarge {
            claimed,
            len: region.len,
        });
    }
    Ok(())
}

impl BootFs {
    /// Opens the file system in `region`, if it is one this module reads. What it reads in
    /// all is bounded by a multiple of its size ([`READ_BUDGET_TIMES`]): more means the
    /// image's structures loop.
    pub fn open(region: &Region, content: Content) -> Result<Self, ReadError> {
        let region = &region.with_budget(
            region
                .len
                .saturating_mul(READ_BUDGET_TIMES)
                .saturating_add(READ_BUDGET_EXTRA),
        );
        match content {
            Content::Ext => {
                check_ext_size(region)?;
                ext4_view::Ext4::load(Box::new(ExtReader(region.clone())))
                    .map(|fs| BootFs::Ext(Box::new(fs)))
                    .map_err(ReadError::Ext4)
            }
            Content::Fat => {
                let options = fatfs::FsOptions::new().update_accessed_date(false);
                fatfs::FileSystem::new(region.cursor(), options)
                    .map(|fs| BootFs::Fat(Box::new(fs)))
                    .map_err(ReadError::Fat)
            }
            _ => Err(ReadError::NoFileSystem),
        }
    }

    /// The file system's UUID as GRUB and `root=UUID=` write it (`xxxx-xxxx` for FAT).
    pub fn uuid(&self) -> String {
        match self {
            BootFs::Ext(fs) => fs.uuid().to_string(),
            BootFs::Fat(fs) => {
                let id = fs.volume_id();
                format!("{:04X}-{:04X}", id >> 16, id & 0xffff)
            }
        }
    }

    /// The file system's label.
    pub fn label(&self) -> String {
        match self {
            BootFs::Ext(fs) => fs.label().to_str().unwrap_or_default().to_string(),
            BootFs::Fat(fs) => fs.volume_label().trim_end().to_string(),
        }
    }

    /// The contents of the file at `path` (absolute; symbolic links followed on ext4).
    pub fn read(&self, path: &str) -> Result<Vec<u8>, ReadError> {
        match self {
            BootFs::Ext(fs) => {
                let meta = fs.metadata(path).map_err(ReadError::Ext4)?;
                if meta.len() > MAX_FILE {
                    return Err(ReadError::TooLarge(path.to_string()));
                }
                fs.read(path).map_err(ReadError::Ext4)
            }
            BootFs::Fat(fs) => {
                let rel = path.trim_start_matches('/');
                let mut file = fs.root_dir().open_file(rel).map_err(ReadError::Fat)?;
                let mut out = Vec::new();
                (&mut file)
                    .take(MAX_FILE + 1)
                    .read_to_end(&mut out)
                    .map_err(ReadError::Fat)?;
                if out.len() as u64 > MAX_FILE {
                    return Err(ReadError::TooLarge(path.to_string()));
                }
                Ok(out)
            }
        }
    }

    /// Whether `path` is a file.
    pub fn is_file(&self, path: &str) -> bool {
        match self {
            BootFs::Ext(fs) => fs.metadata(path).is_ok_and(|m| !m.is_dir()),
            BootFs::Fat(fs) => fs
                .root_dir()
                .open_file(path.trim_start_matches('/'))
                .is_ok(),
        }
    }

    /// Where the symbolic link at `path` points, if it is one (ext4 only).
    pub fn read_link(&self, path: &str) -> Option<String> {
        match self {
            BootFs::Ext(fs) => fs
                .read_link(path)
                .ok()
                .and_then(|p| p.to_str().ok().map(str::to_string)),
            BootFs::Fat(_) => None,
        }
    }

    /// The names of the files in directory `dir` (not `.` or `..`).
    pub fn list(&self, dir: &str) -> Vec<String> {
        let mut out = Vec::new();
        match self {
            BootFs::Ext(fs) => {
                if let Ok(entries) = fs.read_dir(dir) {
                    for e in entries.flatten().take(MAX_LISTED) {
                        let name = e.file_name().as_str().unwrap_or_default().to_string();
                        if name != "." && name != ".." {
                            out.push(name);
                        }
                    }
                }
            }
            BootFs::Fat(fs) => {
                let rel = dir.trim_matches('/');
                let d = if rel.is_empty() {
                    Ok(fs.root_dir())
                } else {
                    fs.root_dir().open_dir(rel)
                };
                if let Ok(d) = d {
                    for e in d.iter().flatten().take(MAX_LISTED) {
                        let name = e.file_name();
                        if name != "." && name != ".." {
                            out.push(name);
                        }
                    }
                }
            }
        }
        out.sort();
        out
    }
}
