//! Boot Loader Specification entries (`loader/entries/*.conf`, type #1): parsing, and the
//! order systemd-boot shows them in, whose first entry it boots by default.
//!
//! The order, as the specification and systemd-boot define it: entries whose boot counter
//! says they failed (`+0-N` in the file name) last; entries with a `sort-key` before those
//! without; by `sort-key`, then `machine-id`, then `version` newest first; entries without
//! a `sort-key` by their id, newest version first. `loader.conf`'s `default` (a glob on the
//! id) overrides the order's choice; so does GRUB's `saved_entry` where GRUB's `blscfg`
//! reads the same entries.

use std::cmp::Ordering;

/// One entry.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BlsEntry {
    /// The file name without `.conf` and without the boot counter.
    pub id: String,
    /// `title`.
    pub title: String,
    /// `version`.
    pub version: String,
    /// `machine-id`.
    pub machine_id: String,
    /// `sort-key`.
    pub sort_key: String,
    /// `linux`: the kernel, relative to the root of the partition holding the entry.
    pub linux: String,
    /// `initrd` lines, in order.
    pub initrds: Vec<String>,
    /// `options` lines, joined with spaces.
    pub options: String,
    /// `efi`: a unified kernel image instead of `linux`.
    pub efi: String,
    /// The boot counter says it failed: tries left 0.
    pub bad: bool,
}

/// Parses an entry file named `file_name`; `None` if it names no kernel or is for another
/// architecture.
pub fn parse(file_name: &str, text: &str) -> Option<BlsEntry> {
    let stem = file_name.strip_suffix(".conf")?;
    // Boot counting: "id+LEFT-DONE" or "id+LEFT".
    let (id, bad) = match stem.rsplit_once('+') {
        Some((id, counter))
            if counter
                .split('-')
                .all(|n| n.bytes().all(|b| b.is_ascii_digit())) =>
        {
            (id, counter.split('-').next() == Some("0"))
        }
        _ => (stem, false),
    };
    let mut e = BlsEntry {
        id: id.to_string(),
        bad,
        ..BlsEntry::default()
    };
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (key, value) = line
            .split_once(|c: char| c.is_ascii_whitespace())
            .map_or((line, ""), |(k, v)| (k, v.trim()));
        match key {
            "title" => e.title = value.to_string(),
            "version" => e.version = value.to_string(),
            "machine-id" => e.machine_id = value.to_string(),
            "sort-key" => e.sort_key = value.to_string(),
            "linux" => e.linux = value.to_string(),
            "efi" => e.efi = value.to_string(),
            "initrd" => e
                .initrds
                .extend(value.split_whitespace().map(str::to_string)),
            "options" => {
                if !e.options.is_empty() {
                    e.options.push(' ');
                }
                e.options.push_str(value);
            }
            "architecture" if !matches!(value.to_ascii_lowercase().as_str(), "x64" | "x86_64") => {
                return None;
            }
            _ => {}
        }
    }
    if e.title.is_empty() {
        e.title = if e.version.is_empty() {
            e.id.clone()
        } else {
            e.version.clone()
        };
    }
    (!e.linux.is_empty() || !e.efi.is_empty()).then_some(e)
}

/// Sorts `entries` in systemd-boot's order.
pub fn sort(entries: &mut [BlsEntry]) {
    entries.sort_by(|a, b| {
        a.bad
            .cmp(&b.bad)
            .then_with(|| match (a.sort_key.is_empty(), b.sort_key.is_empty()) {
                (false, true) => Ordering::Less,
                (true, false) => Ordering::Greater,
                (false, false) => a
                    .sort_key
                    .cmp(&b.sort_key)
                    .then_with(|| a.machine_id.cmp(&b.machine_id))
                    .then_with(|| version_cmp(&b.version, &a.version)),
                (true, true) => Ordering::Equal,
            })
            .then_with(|| version_cmp(&b.id, &a.id))
    });
}

/// The entry to boot among sorted `entries`: the first whose id matches `default` (a glob,
/// from `loader.conf` or GRUB's `saved_entry`), else the first.
pub fn choose<'e>(entries: &'e [BlsEntry], default: Option<&str>) -> Option<&'e BlsEntry> {
    default
        .filter(|d| !d.is_empty())
        .and_then(|d| {
            entries
                .iter()
                .find(|e| glob(d, &e.id) || glob(d, &format!("{}.conf", e.id)))
        })
        .or_else(|| entries.first())
}

/// `default` from `loader.conf`.
pub fn loader_default(loader_conf: &str) -> Option<String> {
    loader_conf.lines().find_map(|l| {
        let l = l.trim();
        let (k, v) = l.split_once(|c: char| c.is_ascii_whitespace())?;
        (k == "default").then(|| v.trim().to_string())
    })
}

/// Shell-style glob with `*` and `?`. A mismatch goes back only to the last `*`, which then
/// takes one more byte: at most pattern × text steps, however many `*` the pattern has (the
/// pattern comes from the image, so trying every split for every `*` could run for ever).
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    // The last `*` seen, and where in the text what follows it is being tried.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some(b'*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(&c) if c == b'?' || c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((star_pi, star_ti)) => {
                    star = Some((star_pi, star_ti + 1));
                    pi = star_pi + 1;
                    ti = star_ti + 1;
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Compares version strings as the UAPI version format specification does (as
/// `rpmvercmp`, with `~` before everything and `^` after): runs of digits numerically,
/// runs of letters alphabetically, other characters separate.
pub fn version_cmp(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    'parts: loop {
        // Skip separators (anything but alphanumerics, '~', '^', '-', '.').
        let skip = |s: &mut &[u8]| {
            while let Some(&c) = s.first() {
                if c.is_ascii_alphanumeric() || c == b'~' || c == b'^' || c == b'-' || c == b'.' {
                    break;
                }
                *s = &s[1..];
            }
        };
        skip(&mut a);
        skip(&mut b);
        // '~' sorts before anything, even the end.
        match (a.first() == Some(&b'~'), b.first() == Some(&b'~')) {
            (true, true) => {
                a = &a[1..];
                b = &b[1..];
                continue;
            }
            (true, false) => return Ordering::Less,
            (false, true) => return Ordering::Greater,
            _ => {}
        }
        if a.is_empty() || b.is_empty() {
            return a.len().cmp(&b.len());
        }
        // '-' and '.' separate parts; a part that ends before the other sorts first.
        for sep in [b'-', b'^', b'.'] {
            match (a[0] == sep, b[0] == sep) {
                (true, true) => {
                    a = &a[1..];
                    b = &b[1..];
                    continue 'parts;
                }
                (true, false) => {
                    return if sep == b'^' {
                        Ordering::Greater
                    } else {
                        Ordering::Less
                    };
                }
                (false, true) => {
                    return if sep == b'^' {
                        Ordering::Less
                    } else {
                        Ordering::Greater
                    };
                }
                _ => {}
            }
        }
        let take = |s: &mut &[u8], digits: bool| -> Vec<u8> {
            let n = s
                .iter()
                .take_while(|c| {
                    if digits {
                        c.is_ascii_digit()
                    } else {
                        c.is_ascii_alphabetic()
                    }
                })
                .count();
            let (run, rest) = s.split_at(n);
            *s = rest;
            run.to_vec()
        };
        let (ad, bd) = (a[0].is_ascii_digit(), b[0].is_ascii_digit());
        if ad != bd {
            // Numbers sort after letters.
            return if ad {
                Ordering::Greater
            } else {
                Ordering::Less
            };
        }
        let (ra, rb) = (take(&mut a, ad), take(&mut b, bd));
        let ord = if ad {
            let trim = |r: &[u8]| {
                r.iter()
                    .skip_while(|c| **c == b'0')
                    .copied()
                    .collect::<Vec<u8>>()
            };
            let (ta, tb) = (trim(&ra), trim(&rb));
            ta.len().cmp(&tb.len()).then_with(|| ta.cmp(&tb))
        } else {
            ra.cmp(&rb)
        };
        if ord != Ordering::Equal {
            return ord;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_numerically_by_part() {
        use Ordering::*;
        for (a, b, want) in [
            ("6.1.0-10-amd64", "6.1.0-9-amd64", Greater),
            ("6.10.0", "6.9.12", Greater),
            ("5.14.0-362.el9", "5.14.0-362.el9", Equal),
            ("1.0~rc1", "1.0", Less),
            ("1.0^post1", "1.0", Greater),
            ("1.0a", "1.0", Greater),
            ("6.5.6-300.fc39.x86_64", "6.2.9-300.fc38.x86_64", Greater),
            ("007", "7", Equal),
        ] {
            assert_eq!(version_cmp(a, b), want, "{a} vs {b}");
            assert_eq!(version_cmp(b, a), want.reverse(), "{b} vs {a}");
        }
    }

    #[test]
    fn entries_parse_with_repeated_keys_and_boot_counters() {
        let e = parse(
            "6b1c-6.5.6-300.fc39.x86_64+0-3.conf",
            "title Fedora Linux (6.5.6)\nversion 6.5.6-300.fc39.x86_64\n\
             linux /vmlinuz-6.5.6-300.fc39.x86_64\ninitrd /intel-ucode.img\n\
             initrd /initramfs-6.5.6.img\noptions root=UUID=x ro\noptions console=ttyS0\n\
             # a comment\nmachine-id 6b1c\n",
        )
        .unwrap();
        assert_eq!(e.id, "6b1c-6.5.6-300.fc39.x86_64");
        assert!(e.bad);
        assert_eq!(e.initrds, ["/intel-ucode.img", "/initramfs-6.5.6.img"]);
        assert_eq!(e.options, "root=UUID=x ro console=ttyS0");
        assert!(parse("x.conf", "title x\n").is_none(), "no kernel");
        assert!(parse("x.conf", "linux /k\narchitecture aa64\n").is_none());
        assert!(parse("x.txt", "linux /k\n").is_none());
    }

    #[test]
    fn the_default_is_the_newest_good_entry_unless_configured() {
        let entry = |file: &str, body: &str| parse(file, body).unwrap();
        let mut entries = vec![
            entry(
                "m-6.1.0-9.conf",
                "linux /a\nversion 6.1.0-9\nmachine-id m\nsort-key debian",
            ),
            entry(
                "m-6.1.0-13.conf",
                "linux /b\nversion 6.1.0-13\nmachine-id m\nsort-key debian",
            ),
            entry(
                "m-6.1.0-20+0-3.conf",
                "linux /c\nversion 6.1.0-20\nmachine-id m\nsort-key debian",
            ),
            entry("memtest.conf", "linux /memtest"),
            entry(
                "m-6.1.0-10.conf",
                "linux /d\nversion 6.1.0-10\nmachine-id m\nsort-key debian",
            ),
        ];
        sort(&mut entries);
        let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "m-6.1.0-13",
                "m-6.1.0-10",
                "m-6.1.0-9",
                "memtest",
                "m-6.1.0-20"
            ]
        );
        assert_eq!(choose(&entries, None).unwrap().id, "m-6.1.0-13");
        assert_eq!(choose(&entries, Some("m-6.1.0-9")).unwrap().id, "m-6.1.0-9");
        assert_eq!(choose(&entries, Some("mem*")).unwrap().id, "memtest");
        assert_eq!(choose(&entries, Some("nothing")).unwrap().id, "m-6.1.0-13");
        assert_eq!(
            loader_default("timeout 3\ndefault  m-6.1.0-10.conf\n").as_deref(),
            Some("m-6.1.0-10.conf")
        );
    }

    #[test]
    fn globs_match_as_the_shell_does() {
        for (pattern, text, want) in [
            ("mem*", "memtest", true),
            ("*.conf", "fedora-6.5.conf", true),
            ("f?d*-6.*", "fedora-6.5", true),
            ("*a*b", "xaxxb", true),
            ("*a*b", "xaxxbc", false),
            ("a*", "", false),
            ("*", "", true),
            ("**a", "a", true),
            ("?", "", false),
            ("abc", "abd", false),
            ("", "", true),
        ] {
            assert_eq!(glob(pattern, text), want, "{pattern:?} on {text:?}");
        }
    }

    #[test]
    fn a_default_with_many_stars_does_not_hang_the_choice() {
        // Seen while writing fuzz/ (bls_grub, which now checks the glob against a reference):
        // trying every split for each `*` took minutes on this default from a loader.conf,
        // against an entry id of 100 `a`s.
        let pattern = format!("{}b", "*a".repeat(14));
        let id = "a".repeat(100);
        let entries = vec![parse(&format!("{id}.conf"), "linux /k\n").unwrap()];
        assert!(!glob(&pattern, &id));
        assert_eq!(choose(&entries, Some(&pattern)).unwrap().id, id);
    }
}
