//! The boot-configuration text readers on their own, faster than through a disk image.
//! The first byte picks one; the rest is its text (lossy UTF-8, as the readers get it):
//!
//! - 0: `bls::parse`: the first line is the file name, the rest the entry.
//! - 1: `bls::loader_default` on a `loader.conf`.
//! - 2: `bls::version_cmp` on three lines: a total order (reflexive, antisymmetric,
//!   transitive), or sorting entries by it may panic.
//! - 3: `grub::choose`: files separated by NUL; the first is `/boot/grub/grub.cfg` on
//!   partition 0, each other one's first line is its path (`esp:/…` on partition 1, the
//!   EFI system partition); `/loader/entries/*.conf` files are also what `blscfg` reads.
//! - 4: `bls::sort` and `bls::choose`: NUL-separated; the first part is a `loader.conf`,
//!   each other one an entry file as in 0. The choice is checked against a reference glob.

#![no_main]

use std::cmp::Ordering;
use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use vmm::imageboot::ReadError;
use vmm::imageboot::bls::{self, BlsEntry};
use vmm::imageboot::grub::{self, BlsMenuEntry, Host};

const ROOT_UUID: &str = "4c7d1f7a-2f61-4a8e-9d55-0d3c2b1a9e10";
const ESP_UUID: &str = "B2C1-7F3A";

/// Partitions 0 (`gpt1`, the root) and 1 (`gpt15`, the ESP), and files on them.
#[derive(Default)]
struct Disk {
    files: HashMap<(usize, String), Vec<u8>>,
}

impl Disk {
    fn from_parts(parts: &[&str]) -> Self {
        let mut disk = Disk::default();
        let mut parts = parts.iter();
        if let Some(cfg) = parts.next() {
            disk.files
                .insert((0, "/boot/grub/grub.cfg".into()), cfg.as_bytes().to_vec());
        }
        for part in parts {
            let (path, text) = part.split_once('\n').unwrap_or((part, ""));
            let key = match path.strip_prefix("esp:") {
                Some(p) => (1, p.to_string()),
                None => (0, path.to_string()),
            };
            disk.files.insert(key, text.as_bytes().to_vec());
        }
        disk
    }
}

impl Host for Disk {
    fn partition(&self, name: &str) -> Option<Option<usize>> {
        match name.trim_matches(|c| c == '(' || c == ')') {
            "hd0,gpt1" | "hd0,1" => Some(Some(0)),
            "hd0,gpt15" | "hd0,15" => Some(Some(1)),
            "hd0" => Some(None),
            _ => None,
        }
    }
    fn name_of(&self, index: Option<usize>) -> String {
        match index {
            Some(0) => "hd0,gpt1".into(),
            Some(1) => "hd0,gpt15".into(),
            _ => "hd0".into(),
        }
    }
    fn find_fs(&self, value: &str, label: bool) -> Option<Option<usize>> {
        match (label, value) {
            (false, v) if v.eq_ignore_ascii_case(ROOT_UUID) => Some(Some(0)),
            (false, v) if v.eq_ignore_ascii_case(ESP_UUID) => Some(Some(1)),
            (true, "cloudimg-rootfs") => Some(Some(0)),
            _ => None,
        }
    }
    fn find_file(&self, path: &str) -> Option<Option<usize>> {
        let mut on: Vec<usize> = (self.files.keys())
            .filter(|(_, p)| p == path)
            .map(|(i, _)| *i)
            .collect();
        on.sort_unstable();
        on.first().map(|i| Some(*i))
    }
    fn read(&self, index: Option<usize>, path: &str) -> Result<Vec<u8>, ReadError> {
        index
            .and_then(|i| self.files.get(&(i, path.to_string())))
            .cloned()
            .ok_or_else(|| ReadError::NotFound(path.to_string()))
    }
    fn bls_entries(&self, index: Option<usize>) -> Vec<BlsMenuEntry> {
        let mut entries: Vec<BlsEntry> = self
            .files
            .iter()
            .filter(|((i, _), _)| Some(*i) == index)
            .filter_map(|((_, path), text)| {
                let name = path.strip_prefix("/loader/entries/")?;
                bls::parse(name, &String::from_utf8_lossy(text))
            })
            .collect();
        entries.sort_by(|a, b| bls::version_cmp(&b.version, &a.version));
        entries
            .into_iter()
            .map(|e| BlsMenuEntry {
                id: e.id,
                title: e.title,
                linux: e.linux,
                initrds: e.initrds,
                options: e.options,
            })
            .collect()
    }
}

/// Glob with `*` and `?` by dynamic programming: the reference `bls::choose` is checked
/// against. `m[j]`: the pattern so far matches the first `j` bytes of the text.
fn glob_ref(pattern: &str, text: &str) -> bool {
    let t = text.as_bytes();
    let mut m = vec![false; t.len() + 1];
    m[0] = true;
    for &c in pattern.as_bytes() {
        let mut next = vec![false; t.len() + 1];
        for j in 0..=t.len() {
            next[j] = match c {
                b'*' => m[j] || (j > 0 && next[j - 1]),
                b'?' => j > 0 && m[j - 1],
                _ => j > 0 && m[j - 1] && t[j - 1] == c,
            };
        }
        m = next;
    }
    m[t.len()]
}

fn entry(text: &str) -> Option<BlsEntry> {
    let (name, body) = text.split_once('\n').unwrap_or((text, ""));
    bls::parse(name, body)
}

fn check_versions(text: &str) {
    let mut lines = text.splitn(3, '\n');
    let (a, b, c) = (
        lines.next().unwrap_or(""),
        lines.next().unwrap_or(""),
        lines.next().unwrap_or(""),
    );
    let cmp = bls::version_cmp;
    for x in [a, b, c] {
        assert_eq!(cmp(x, x), Ordering::Equal, "{x:?} is not equal to itself");
    }
    for (x, y) in [(a, b), (b, c), (a, c)] {
        assert_eq!(cmp(x, y), cmp(y, x).reverse(), "{x:?} vs {y:?}");
    }
    // Transitive: with the three sorted by the order, each pair keeps it.
    let mut sorted = [a, b, c];
    sorted.sort_by(|x, y| cmp(x, y));
    let [x, y, z] = sorted;
    assert_ne!(cmp(x, y), Ordering::Greater, "{x:?} > {y:?}");
    assert_ne!(cmp(y, z), Ordering::Greater, "{y:?} > {z:?}");
    assert_ne!(
        cmp(x, z),
        Ordering::Greater,
        "{x:?} <= {y:?} <= {z:?} but {x:?} > {z:?}"
    );
    if cmp(x, y) == Ordering::Equal {
        assert_eq!(cmp(x, z), cmp(y, z), "{x:?} == {y:?} but not against {z:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    match which % 5 {
        0 => {
            if let Some(e) = entry(&text) {
                assert!(!e.linux.is_empty() || !e.efi.is_empty(), "{e:?}");
            }
        }
        1 => {
            if let Some(d) = bls::loader_default(&text) {
                assert_eq!(d, d.trim());
                assert!(!d.contains('\n'));
            }
        }
        2 => check_versions(&text),
        3 => {
            let parts: Vec<&str> = text.split('\0').collect();
            let disk = Disk::from_parts(&parts);
            match grub::choose(&disk, Some(0), "/boot/grub/grub.cfg") {
                Ok(c) => {
                    assert!(matches!(c.partition, None | Some(0 | 1)), "{c:?}");
                    assert!(
                        c.initrds
                            .iter()
                            .all(|(p, _)| matches!(p, None | Some(0 | 1)))
                    );
                }
                Err(e) => {
                    let _ = e.to_string();
                }
            }
        }
        _ => {
            let mut parts = text.split('\0');
            let default = parts.next().and_then(bls::loader_default);
            let mut entries: Vec<BlsEntry> = parts.filter_map(entry).collect();
            bls::sort(&mut entries);
            let mut again = entries.clone();
            bls::sort(&mut again);
            assert_eq!(again, entries, "sorting sorted entries changed their order");
            let chosen = bls::choose(&entries, default.as_deref());
            assert_eq!(chosen.is_some(), !entries.is_empty());
            if let Some(c) = chosen {
                assert!(entries.iter().any(|e| std::ptr::eq(e, c)));
            }
            // The first entry whose id (or file name) the default matches, else the first.
            if let Some(d) = default.as_deref().filter(|d| !d.is_empty())
                && entries
                    .iter()
                    .all(|e| d.len() * (e.id.len() + 5) <= 1 << 20)
            {
                let want = entries
                    .iter()
                    .find(|e| glob_ref(d, &e.id) || glob_ref(d, &format!("{}.conf", e.id)))
                    .or(entries.first());
                assert_eq!(chosen.map(|e| &e.id), want.map(|e| &e.id), "default {d:?}");
            }
        }
    }
});
