//! A small ISO 9660 writer: one root directory of files, with Rock Ridge and Joliet names,
//! enough for a cloud-init NoCloud seed (what `genisoimage -volid cidata -joliet -rock`
//! makes for Virtink).
//!
//! ```text
//!  sector  what
//!  0-15    system area (zeroes)
//!  16      primary volume descriptor (ISO 9660 names, Rock Ridge in the directory records)
//!  17      supplementary volume descriptor (Joliet: UCS-2 names)
//!  18      volume descriptor set terminator
//!  19-22   path tables: primary L and M, Joliet L and M (one entry each: the root)
//!  23      primary root directory
//!  24      Joliet root directory
//!  25-     file data, each file from a sector boundary
//! ```
//!
//! Linux reads the Rock Ridge names (`NM`) and modes (`PX`) from the primary tree, Windows
//! the Joliet tree; both trees point at the same file data. A file is at most 4 GiB - 1
//! byte (one extent), and the directory must fit one sector (about 15 files): plenty for
//! three small files.

/// One ISO sector.
pub const SECTOR: usize = 2048;
const PVD_SECTOR: u32 = 16;
const PATH_TABLES: u32 = 19;
const PRIMARY_ROOT: u32 = 23;
const JOLIET_ROOT: u32 = 24;
const FIRST_FILE: u32 = 25;

/// Why an image cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IsoError {
    /// The directory records do not fit one sector.
    #[error("too many files for one directory sector")]
    TooManyFiles,
    /// A file name that is empty, too long or not printable ASCII.
    #[error("file name {0:?} is not 1-64 printable ASCII characters")]
    BadName(String),
    /// A file of 4 GiB or more.
    #[error("file {0:?} is too large")]
    TooLarge(String),
}

/// A date and time, UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DateTime {
    /// Year (1900-2155).
    pub year: u16,
    /// Month, 1-12.
    pub month: u8,
    /// Day, 1-31.
    pub day: u8,
    /// Hour.
    pub hour: u8,
    /// Minute.
    pub minute: u8,
    /// Second.
    pub second: u8,
}

impl DateTime {
    /// The UTC date of `secs` seconds since the Unix epoch.
    pub fn from_unix(secs: u64) -> Self {
        let days = i64::try_from(secs / 86_400).unwrap_or(0);
        let rem = secs % 86_400;
        // Civil from days (Howard Hinnant's algorithm).
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        let small = |v: i64| u8::try_from(v).unwrap_or(0);
        let small_u = |v: u64| u8::try_from(v).unwrap_or(0);
        Self {
            year: u16::try_from(year).unwrap_or(1970),
            month: small(month),
            day: small(day),
            hour: small_u(rem / 3600),
            minute: small_u(rem / 60 % 60),
            second: small_u(rem % 60),
        }
    }

    /// The 7-byte form of directory records.
    fn record(self) -> [u8; 7] {
        [
            u8::try_from(self.year.saturating_sub(1900)).unwrap_or(0),
            self.month,
            self.day,
            self.hour,
            self.minute,
            self.second,
            0,
        ]
    }

    /// The 17-byte form of volume descriptors: "YYYYMMDDHHMMSScc" and the zone.
    fn descriptor(self) -> [u8; 17] {
        let text = format!(
            "{:04}{:02}{:02}{:02}{:02}{:02}00",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        );
        let mut out = [0u8; 17];
        out[..16].copy_from_slice(&text.as_bytes()[..16]);
        out
    }
}

fn both16(v: u16) -> [u8; 4] {
    let (l, b) = (v.to_le_bytes(), v.to_be_bytes());
    [l[0], l[1], b[0], b[1]]
}

fn both32(v: u32) -> [u8; 8] {
    let (l, b) = (v.to_le_bytes(), v.to_be_bytes());
    [l[0], l[1], l[2], l[3], b[0], b[1], b[2], b[3]]
}

fn sectors(len: usize) -> u32 {
    u32::try_from(len.div_ceil(SECTOR)).unwrap_or(u32::MAX)
}

/// Which tree a directory record is for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tree {
    Primary,
    Joliet,
}

/// A directory record: `name` as stored, `system_use` appended (Rock Ridge).
fn record(
    extent: u32,
    len: u32,
    dir: bool,
    name: &[u8],
    system_use: &[u8],
    date: DateTime,
) -> Vec<u8> {
    let mut r = vec![0u8; 33];
    r[2..10].copy_from_slice(&both32(extent));
    r[10..18].copy_from_slice(&both32(len));
    r[18..25].copy_from_slice(&date.record());
    r[25] = if dir { 2 } else { 0 };
    r[28..32].copy_from_slice(&both16(1));
    r[32] = u8::try_from(name.len()).unwrap_or(0);
    r.extend_from_slice(name);
    if r.len() % 2 == 1 {
        r.push(0);
    }
    r.extend_from_slice(system_use);
    if r.len() % 2 == 1 {
        r.push(0);
    }
    r[0] = u8::try_from(r.len()).unwrap_or(0);
    r
}

/// Rock Ridge `PX` (POSIX mode) entry, in its RRIP 1.10 form (no serial number).
fn rr_px(mode: u32) -> Vec<u8> {
    let mut e = vec![b'P', b'X', 36, 1];
    e.extend_from_slice(&both32(mode));
    e.extend_from_slice(&both32(1)); // links
    e.extend_from_slice(&both32(0)); // uid
    e.extend_from_slice(&both32(0)); // gid
    e
}

/// Rock Ridge `NM` (alternate name) entry.
fn rr_nm(name: &str) -> Vec<u8> {
    let mut e = vec![b'N', b'M', u8::try_from(5 + name.len()).unwrap_or(0), 1, 0];
    e.extend_from_slice(name.as_bytes());
    e
}

/// SUSP `SP` and Rock Ridge `ER` entries, in the root's "." record.
fn rr_root() -> Vec<u8> {
    const ID: &[u8] = b"RRIP_1991A";
    const DES: &[u8] =
        b"THE ROCK RIDGE INTERCHANGE PROTOCOL PROVIDES SUPPORT FOR POSIX FILE SYSTEM SEMANTICS";
    const SRC: &[u8] = b"PLEASE CONTACT DISC PUBLISHER FOR SPECIFICATION SOURCE.";
    let mut e = vec![b'S', b'P', 7, 1, 0xbe, 0xef, 0];
    let len = 8 + ID.len() + DES.len() + SRC.len();
    e.extend_from_slice(&[b'E', b'R', u8::try_from(len).unwrap_or(0), 1]);
    e.extend_from_slice(&[
        u8::try_from(ID.len()).unwrap_or(0),
        u8::try_from(DES.len()).unwrap_or(0),
        u8::try_from(SRC.len()).unwrap_or(0),
        1,
    ]);
    e.extend_from_slice(ID);
    e.extend_from_slice(DES);
    e.extend_from_slice(SRC);
    e
}

/// An ISO 9660 level-1 name for `name`: upper case, `_` for what d-characters lack,
/// 8.3, version `;1`. Rock Ridge and Joliet carry the real name.
fn iso_name(name: &str, index: usize) -> Vec<u8> {
    let clean = |s: &str, max: usize| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .take(max)
            .collect()
    };
    let (stem, ext) = name.rsplit_once('.').unwrap_or((name, ""));
    let mut stem = clean(stem, 8);
    // Names that clash once shortened get the file's index at the end.
    if stem.len() == 8 {
        stem.truncate(7);
        stem.push(char::from(b'0' + u8::try_from(index % 10).unwrap_or(0)));
    }
    format!("{stem}.{};1", clean(ext, 3)).into_bytes()
}

fn joliet_name(name: &str) -> Vec<u8> {
    format!("{name};1")
        .encode_utf16()
        .flat_map(u16::to_be_bytes)
        .collect()
}

/// The root directory sector of `tree` for `files` (name, extent, length).
fn directory(tree: Tree, files: &[(&str, u32, u32)], date: DateTime) -> Result<Vec<u8>, IsoError> {
    let own = if tree == Tree::Primary {
        PRIMARY_ROOT
    } else {
        JOLIET_ROOT
    };
    let len = u32::try_from(SECTOR).unwrap_or(2048);
    let mut dir = Vec::with_capacity(SECTOR);
    let (dot_su, dotdot_su) = if tree == Tree::Primary {
        let mut dot = rr_root();
        dot.extend(rr_px(0o40555));
        (dot, rr_px(0o40555))
    } else {
        (Vec::new(), Vec::new())
    };
    dir.extend(record(own, len, true, &[0], &dot_su, date));
    dir.extend(record(own, len, true, &[1], &dotdot_su, date));
    for (i, (name, extent, size)) in files.iter().enumerate() {
        let r = match tree {
            Tree::Primary => {
                let mut su = rr_px(0o100444);
                su.extend(rr_nm(name));
                record(*extent, *size, false, &iso_name(name, i), &su, date)
            }
            Tree::Joliet => record(*extent, *size, false, &joliet_name(name), &[], date),
        };
        dir.extend(r);
    }
    if dir.len() > SECTOR {
        return Err(IsoError::TooManyFiles);
    }
    dir.resize(SECTOR, 0);
    Ok(dir)
}

/// A path table with the root alone; `big_endian` for the M table.
fn path_table(root: u32, big_endian: bool) -> Vec<u8> {
    let mut t = vec![1, 0];
    t.extend_from_slice(&if big_endian {
        root.to_be_bytes()
    } else {
        root.to_le_bytes()
    });
    t.extend_from_slice(&if big_endian {
        1u16.to_be_bytes()
    } else {
        1u16.to_le_bytes()
    });
    t.extend_from_slice(&[0, 0]);
    t
}

/// A primary (`joliet` false) or Joliet supplementary volume descriptor.
fn volume_descriptor(label: &str, joliet: bool, total: u32, date: DateTime) -> Vec<u8> {
    let mut d = vec![0u8; SECTOR];
    d[0] = if joliet { 2 } else { 1 };
    d[1..6].copy_from_slice(b"CD001");
    d[6] = 1;
    let text = |d: &mut [u8], at: usize, len: usize, value: &str| {
        if joliet {
            let units: Vec<u8> = value
                .encode_utf16()
                .chain(std::iter::repeat(0x20))
                .take(len / 2)
                .flat_map(u16::to_be_bytes)
                .collect();
            d[at..at + units.len()].copy_from_slice(&units);
        } else {
            let bytes: Vec<u8> = value
                .bytes()
                .chain(std::iter::repeat(b' '))
                .take(len)
                .collect();
            d[at..at + len].copy_from_slice(&bytes);
        }
    };
    text(&mut d, 8, 32, "LINUX");
    text(&mut d, 40, 32, label);
    d[80..88].copy_from_slice(&both32(total));
    if joliet {
        d[88..91].copy_from_slice(b"%/E"); // UCS-2 level 3
    }
    d[120..124].copy_from_slice(&both16(1));
    d[124..128].copy_from_slice(&both16(1));
    d[128..132].copy_from_slice(&both16(u16::try_from(SECTOR).unwrap_or(2048)));
    d[132..140].copy_from_slice(&both32(10)); // path table size: the root's entry
    let (l_table, m_table) = if joliet {
        (PATH_TABLES + 2, PATH_TABLES + 3)
    } else {
        (PATH_TABLES, PATH_TABLES + 1)
    };
    d[140..144].copy_from_slice(&l_table.to_le_bytes());
    d[148..152].copy_from_slice(&m_table.to_be_bytes());
    let root = if joliet { JOLIET_ROOT } else { PRIMARY_ROOT };
    let root_record = record(
        root,
        u32::try_from(SECTOR).unwrap_or(2048),
        true,
        &[0],
        &[],
        date,
    );
    d[156..156 + 34].copy_from_slice(&root_record[..34]);
    for at in [190, 318, 446, 574] {
        text(&mut d, at, 128, "");
    }
    text(&mut d, 574, 128, "VMM");
    for at in [702, 739, 776] {
        text(&mut d, at, 37, "");
    }
    d[813..830].copy_from_slice(&date.descriptor());
    d[830..847].copy_from_slice(&date.descriptor());
    d[847..863].copy_from_slice(b"0000000000000000");
    d[864..880].copy_from_slice(b"0000000000000000");
    d[881] = 1;
    d
}

/// An ISO 9660 image labelled `label` holding `files` (name, contents) in its root
/// directory, in that order.
pub fn build(label: &str, files: &[(&str, &[u8])], date: DateTime) -> Result<Vec<u8>, IsoError> {
    let mut placed = Vec::with_capacity(files.len());
    let mut next = FIRST_FILE;
    for (name, data) in files {
        if name.is_empty() || name.len() > 64 || !name.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(IsoError::BadName((*name).to_string()));
        }
        let len = u32::try_from(data.len()).map_err(|_| IsoError::TooLarge((*name).into()))?;
        placed.push((*name, next, len));
        next = next
            .checked_add(sectors(data.len()))
            .ok_or_else(|| IsoError::TooLarge((*name).into()))?;
    }
    let total = next;
    let mut image = vec![0u8; SECTOR * usize::try_from(PVD_SECTOR).unwrap_or(16)];
    image.extend(volume_descriptor(label, false, total, date));
    image.extend(volume_descriptor(label, true, total, date));
    let mut terminator = vec![0u8; SECTOR];
    terminator[0] = 255;
    terminator[1..6].copy_from_slice(b"CD001");
    terminator[6] = 1;
    image.extend(terminator);
    for (root, big) in [
        (PRIMARY_ROOT, false),
        (PRIMARY_ROOT, true),
        (JOLIET_ROOT, false),
        (JOLIET_ROOT, true),
    ] {
        let mut t = path_table(root, big);
        t.resize(SECTOR, 0);
        image.extend(t);
    }
    image.extend(directory(Tree::Primary, &placed, date)?);
    image.extend(directory(Tree::Joliet, &placed, date)?);
    for (_, data) in files {
        image.extend_from_slice(data);
        image.resize(image.len().next_multiple_of(SECTOR), 0);
    }
    Ok(image)
}

#[cfg(test)]
pub(crate) mod tests;
