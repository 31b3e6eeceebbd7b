//! The writer's output read back by a reader written from the standard, and the dates.

use super::*;

/// A file read back from an image: its Rock Ridge name and its contents.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub name: String,
    pub data: Vec<u8>,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// The volume label and the root directory's files, read through the descriptor at
/// `sector` (16: primary, with Rock Ridge names; 17: Joliet).
pub(crate) fn read_back(image: &[u8], sector: usize) -> (String, Vec<Entry>) {
    let d = &image[sector * SECTOR..(sector + 1) * SECTOR];
    assert_eq!(&d[1..6], b"CD001");
    let joliet = d[0] == 2;
    let label = if joliet {
        let units: Vec<u16> = d[40..72]
            .chunks(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .collect();
        String::from_utf16(&units).unwrap().trim_end().to_string()
    } else {
        String::from_utf8_lossy(&d[40..72]).trim_end().to_string()
    };
    assert_eq!(u32_at(d, 80) as usize * SECTOR, image.len(), "volume size");
    let root = &d[156..190];
    let extent = u32_at(root, 2) as usize;
    let len = u32_at(root, 10) as usize;
    let dir = &image[extent * SECTOR..extent * SECTOR + len];
    let mut entries = Vec::new();
    let mut at = 0;
    while at < dir.len() && dir[at] != 0 {
        let r = &dir[at..at + dir[at] as usize];
        at += r.len();
        let name_len = r[32] as usize;
        let id = &r[33..33 + name_len];
        if id == [0] || id == [1] {
            continue;
        }
        let name = if joliet {
            let units: Vec<u16> = id
                .chunks(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16(&units)
                .unwrap()
                .trim_end_matches(";1")
                .to_string()
        } else {
            // The Rock Ridge NM entry in the system use area.
            let mut su = &r[33 + name_len + (1 - name_len % 2)..];
            let mut nm = None;
            while su.len() >= 4 && su[2] >= 4 {
                if &su[..2] == b"NM" {
                    nm = Some(String::from_utf8(su[5..su[2] as usize].to_vec()).unwrap());
                }
                su = &su[su[2] as usize..];
            }
            nm.expect("a Rock Ridge name")
        };
        let (extent, size) = (u32_at(r, 2) as usize, u32_at(r, 10) as usize);
        entries.push(Entry {
            name,
            data: image[extent * SECTOR..extent * SECTOR + size].to_vec(),
        });
    }
    (label, entries)
}

fn date() -> DateTime {
    DateTime::from_unix(1_764_633_600) // 2025-12-02 00:00:00
}

#[test]
fn files_read_back_by_rock_ridge_and_joliet_names() {
    let meta = b"instance-id: abc\nlocal-hostname: vm\n".to_vec();
    let user = vec![b'x'; 5000];
    let image = build(
        "cidata",
        &[
            ("meta-data", &meta),
            ("user-data", &user),
            ("network-config", b""),
        ],
        date(),
    )
    .unwrap();
    assert_eq!(image.len() % SECTOR, 0);
    for sector in [16, 17] {
        let (label, entries) = read_back(&image, sector);
        assert_eq!(label, "cidata");
        assert_eq!(
            entries,
            vec![
                Entry {
                    name: "meta-data".into(),
                    data: meta.clone()
                },
                Entry {
                    name: "user-data".into(),
                    data: user.clone()
                },
                Entry {
                    name: "network-config".into(),
                    data: vec![]
                },
            ]
        );
    }
    // The root's "." record starts the SUSP area with SP, as Linux looks for it.
    let dir = &image[23 * SECTOR..];
    assert_eq!(&dir[34..36], b"SP");
}

#[test]
fn level_one_names_are_unique_and_d_characters() {
    let a = iso_name("network-config", 0);
    let b = iso_name("network-config2", 1);
    assert_ne!(a, b);
    assert_eq!(iso_name("meta-data", 0), b"META_DA0.;1");
    for n in [a, b] {
        assert!(
            n.iter()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || b"_.;".contains(c))
        );
    }
}

#[test]
fn bad_names_and_full_directories_are_refused() {
    assert_eq!(
        build("x", &[("", b"")], date()),
        Err(IsoError::BadName(String::new()))
    );
    assert!(matches!(
        build("x", &[("a b", b"")], date()),
        Err(IsoError::BadName(_))
    ));
    let names: Vec<String> = (0..40)
        .map(|i| format!("file-with-a-long-name-{i:02}"))
        .collect();
    let files: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b"x"[..])).collect();
    assert_eq!(build("x", &files, date()), Err(IsoError::TooManyFiles));
}

#[test]
fn unix_times_become_calendar_dates() {
    let d = DateTime::from_unix(0);
    assert_eq!((d.year, d.month, d.day, d.hour), (1970, 1, 1, 0));
    let d = DateTime::from_unix(951_782_400 + 3661); // 2000-02-29 01:01:01
    assert_eq!(
        (d.year, d.month, d.day, d.hour, d.minute, d.second),
        (2000, 2, 29, 1, 1, 1)
    );
    assert_eq!(&d.descriptor()[..16], b"2000022901010100");
}
