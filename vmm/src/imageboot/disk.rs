//! The boot disk as the boot-configuration readers see it: bytes through the block layer,
//! its partitions (GPT or MBR, through the `gpt` and `mbrman` crates), and what each holds,
//! recognised by the file system's own signature.

use std::io::{self, Read, Seek, SeekFrom, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use devices::virtio::block::BlockBackend;
use vm_memory::VolatileSlice;

const SECTOR: u64 = 512;
/// What the disk is read in: file systems read a block at a time, and one read of a
/// compressed qcow2 cluster decompresses all of it, so reads go through one cached chunk.
const CHUNK: u64 = 256 << 10;

/// The boot disk with its last chunk read.
struct Cached {
    backend: Arc<dyn BlockBackend>,
    chunk: Mutex<Option<(u64, Vec<u8>)>>,
}

impl Cached {
    /// Copies bytes at `offset` on the disk into `buf`, from the chunk that holds `offset`
    /// (read first if it is not the cached one); returns how many were copied.
    fn read_from_chunk(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let start = offset / CHUNK * CHUNK;
        let mut cached = self.chunk.lock().unwrap_or_else(|e| e.into_inner());
        if cached.as_ref().is_none_or(|(at, _)| *at != start) {
            // Whole sectors through the block layer.
            let len = CHUNK.min(self.backend.size().saturating_sub(start)) / SECTOR * SECTOR;
            let mut data = vec![0u8; usize::try_from(len).map_err(io::Error::other)?];
            self.backend
                .read_at(start, &[VolatileSlice::from(&mut data[..])])?;
            *cached = Some((start, data));
        }
        let (_, data) = cached.as_ref().ok_or(io::ErrorKind::UnexpectedEof)?;
        let skip = usize::try_from(offset - start).map_err(io::Error::other)?;
        let n = buf.len().min(data.len().saturating_sub(skip));
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf[..n].copy_from_slice(&data[skip..skip + n]);
        Ok(n)
    }
}

/// A byte range of the boot disk: the whole disk or one partition.
#[derive(Clone)]
pub struct Region {
    disk: Arc<Cached>,
    /// Where it starts on the disk.
    pub start: u64,
    /// Its length.
    pub len: u64,
    /// Bytes this region (and its clones) may still read, when limited.
    budget: Option<Arc<AtomicU64>>,
}

impl std::fmt::Debug for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Region")
            .field("start", &self.start)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl Region {
    /// The whole of `disk`.
    pub fn whole(disk: Arc<dyn BlockBackend>) -> Self {
        let len = disk.size();
        Self {
            disk: Arc::new(Cached {
                backend: disk,
                chunk: Mutex::new(None),
            }),
            start: 0,
            len,
            budget: None,
        }
    }

    /// `len` bytes from `start` of this region (clamped to it).
    pub fn sub(&self, start: u64, len: u64) -> Self {
        let start = start.min(self.len);
        Self {
            disk: self.disk.clone(),
            start: self.start + start,
            len: len.min(self.len - start),
            budget: self.budget.clone(),
        }
    }

    /// This region, able to read `bytes` in all (its clones sharing the count) before every
    /// read fails. A file system crate whose structures a hostile image made circular (a FAT
    /// directory whose cluster chain loops, which fatfs follows for ever) then fails instead
    /// of spinning.
    pub fn with_budget(&self, bytes: u64) -> Self {
        Self {
            budget: Some(Arc::new(AtomicU64::new(bytes))),
            ..self.clone()
        }
    }

    /// Fills `buf` from `offset` in the region; reading past its end is an error.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        offset
            .checked_add(buf.len() as u64)
            .filter(|e| *e <= self.len)
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        if let Some(budget) = &self.budget {
            let want = buf.len() as u64;
            budget
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                    left.checked_sub(want)
                })
                .map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        "the file system's structures lead in circles: it read far more than it holds",
                    )
                })?;
        }
        let mut done = 0;
        while done < buf.len() {
            done += self
                .disk
                .read_from_chunk(self.start + offset + done as u64, &mut buf[done..])?;
        }
        Ok(())
    }

    /// A reader over the region for crates that want `Read + Seek` (and `Write`, which
    /// always fails: nothing here writes to the disk).
    pub fn cursor(&self) -> Cursor {
        Cursor {
            region: self.clone(),
            pos: 0,
        }
    }
}

/// `Read + Seek` over a [`Region`].
#[derive(Debug)]
pub struct Cursor {
    region: Region,
    pos: u64,
}

impl Read for Cursor {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.region.len.saturating_sub(self.pos);
        let n = usize::try_from(left)
            .unwrap_or(usize::MAX)
            .min(buf.len())
            .min(1 << 20);
        if n == 0 {
            return Ok(0);
        }
        self.region.read_at(self.pos, &mut buf[..n])?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for Cursor {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.region.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = pos.ok_or(io::ErrorKind::InvalidInput)?;
        Ok(self.pos)
    }
}

impl Write for Cursor {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "the boot disk is read-only here",
        ))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What a region holds, from its signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Content {
    /// ext2, ext3 or ext4.
    Ext,
    /// FAT12, FAT16 or FAT32.
    Fat,
    /// XFS.
    Xfs,
    /// Btrfs.
    Btrfs,
    /// A LUKS encrypted volume.
    Luks,
    /// An LVM physical volume.
    Lvm,
    /// Linux swap.
    Swap,
    /// NTFS (a Windows disk).
    Ntfs,
    /// Nothing recognised.
    Unknown,
}

impl std::fmt::Display for Content {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Content::Ext => "ext4",
            Content::Fat => "FAT",
            Content::Xfs => "XFS",
            Content::Btrfs => "Btrfs",
            Content::Luks => "LUKS (encrypted)",
            Content::Lvm => "an LVM physical volume",
            Content::Swap => "swap",
            Content::Ntfs => "NTFS",
            Content::Unknown => "no file system vmm knows",
        })
    }
}

/// Recognises what `region` holds from its first 68 KiB.
pub fn identify(region: &Region) -> Content {
    let at = |offset: u64, len: usize| -> Option<Vec<u8>> {
        let mut b = vec![0u8; len];
        region.read_at(offset, &mut b).ok().map(|()| b)
    };
    let is = |offset: u64, magic: &[u8]| at(offset, magic.len()).is_some_and(|b| b == magic);
    if is(1080, &[0x53, 0xef]) {
        Content::Ext
    } else if is(0, b"XFSB") {
        Content::Xfs
    } else if is(0x1_0040, b"_BHRfS_M") {
        Content::Btrfs
    } else if is(0, b"LUKS\xba\xbe") {
        Content::Luks
    } else if is(512, b"LABELONE") || is(512 + 24, b"LVM2 001") {
        Content::Lvm
    } else if is(3, b"NTFS    ") {
        Content::Ntfs
    } else if is(4086, b"SWAPSPACE2") {
        Content::Swap
    } else if is(510, &[0x55, 0xaa])
        && (is(54, b"FAT1") || is(82, b"FAT32") || is(3, b"mkfs.fat") || is(3, b"MSDOS5.0"))
    {
        Content::Fat
    } else {
        Content::Unknown
    }
}

/// A partition of the boot disk.
#[derive(Debug, Clone)]
pub struct Partition {
    /// GRUB's partition number (1-based) and table kind: `gpt1`, `msdos2`.
    pub grub_name: String,
    /// The partition's bytes.
    pub region: Region,
    /// What it holds.
    pub content: Content,
    /// The GPT type is an EFI system partition (or MBR type 0xEF).
    pub esp: bool,
    /// The GPT type is an extended boot loader partition (XBOOTLDR).
    pub xbootldr: bool,
    /// The GPT type is a BIOS boot partition (GRUB's core image).
    pub bios_boot: bool,
}

/// The GPT type of an EFI system partition.
const ESP_GUID: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
/// The GPT type of an extended boot loader partition.
const XBOOTLDR_GUID: &str = "BC13C2FF-59E6-4262-A352-B275FD6F7172";
/// The GPT type of a BIOS boot partition.
const BIOS_BOOT_GUID: &str = "21686148-6449-6E6F-744E-656564454649";
/// Most partitions considered.
const MAX_PARTITIONS: usize = 128;

/// The partitions of `disk`, in table order: GPT when the protective MBR says so, else MBR
/// (primary and logical). An empty list: no partition table.
pub fn partitions(disk: &Region) -> io::Result<Vec<Partition>> {
    let mut mbr_head = [0u8; 512];
    if disk.read_at(0, &mut mbr_head).is_err() || mbr_head[510..] != [0x55, 0xaa] {
        return Ok(Vec::new());
    }
    let types: Vec<u8> = (0..4).map(|i| mbr_head[446 + 16 * i + 4]).collect();
    if types.contains(&0xee) {
        return gpt_partitions(disk);
    }
    // Entries that are used but all start at sector 0, on the table itself, describe no
    // partition (and mbrman panics on them, looking for their common alignment): then the
    // sector is a file system's boot sector, or nonsense.
    let used_starts: Vec<u32> = (0..4)
        .map(|i| &mbr_head[446 + 16 * i..446 + 16 * (i + 1)])
        .filter(|entry| entry[4] != 0)
        .map(|entry| u32::from_le_bytes([entry[8], entry[9], entry[10], entry[11]]))
        .collect();
    if !used_starts.is_empty() && used_starts.iter().all(|&start| start == 0) {
        return Ok(Vec::new());
    }
    mbr_partitions(disk)
}

fn gpt_partitions(disk: &Region) -> io::Result<Vec<Partition>> {
    let table = gpt::GptConfig::new()
        .writable(false)
        .logical_block_size(gpt::disk::LogicalBlockSize::Lb512)
        .open_from_device(disk.cursor())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("GPT: {e}")))?;
    let mut out = Vec::new();
    for (number, p) in table.partitions().iter().take(MAX_PARTITIONS) {
        if p.first_lba == 0 || p.last_lba < p.first_lba {
            continue;
        }
        let region = disk.sub(
            p.first_lba * SECTOR,
            (p.last_lba - p.first_lba + 1) * SECTOR,
        );
        let guid = p.part_type_guid.guid.to_string().to_ascii_uppercase();
        out.push(Partition {
            grub_name: format!("gpt{number}"),
            content: identify(&region),
            region,
            esp: guid == ESP_GUID,
            xbootldr: guid == XBOOTLDR_GUID,
            bios_boot: guid == BIOS_BOOT_GUID,
        });
    }
    Ok(out)
}

fn mbr_partitions(disk: &Region) -> io::Result<Vec<Partition>> {
    let mbr = mbrman::MBR::read_from(&mut disk.cursor(), 512)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("MBR: {e}")))?;
    let mut out = Vec::new();
    for (number, p) in mbr.iter().take(MAX_PARTITIONS) {
        if !p.is_used() || matches!(p.sys, 0x05 | 0x0f | 0x85) {
            continue;
        }
        let region = disk.sub(
            u64::from(p.starting_lba) * SECTOR,
            u64::from(p.sectors) * SECTOR,
        );
        out.push(Partition {
            grub_name: format!("msdos{number}"),
            content: identify(&region),
            region,
            esp: p.sys == 0xef,
            xbootldr: p.sys == 0xea,
            bios_boot: false,
        });
    }
    Ok(out)
}
