//! Images through imago and the raw backend: read, write, overlays, backing chains, and
//! files that are not what they claim. qcow2 files are made with `qemu-img` (installed by
//! `images/build`), so that the images are the ones users have.

use std::io::Write;
use std::process::Command;

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::*;

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("vmm-image-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// A raw file of `sectors` sectors, each filled with its index.
    fn raw(&self, name: &str, sectors: usize) -> PathBuf {
        let bytes: Vec<u8> = (0..sectors * 512)
            .map(|i| (i / 512).to_le_bytes()[0])
            .collect();
        let p = self.path(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn qemu_img(args: &[&str]) {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img is not installed: run images/build, which installs qemu-utils");
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
}

fn read(disk: &dyn BlockBackend, mem: &GuestMemoryMmap, offset: u64, len: usize) -> Vec<u8> {
    let slice = GuestMemoryBackend::get_slice(mem, GuestAddress(0), len).unwrap();
    disk.read_at(offset, &[slice]).unwrap();
    let mut out = vec![0u8; len];
    mem.read_slice(&mut out, GuestAddress(0)).unwrap();
    out
}

fn write(disk: &dyn BlockBackend, mem: &GuestMemoryMmap, offset: u64, data: &[u8]) {
    mem.write_slice(data, GuestAddress(0x8_0000)).unwrap();
    let slice = GuestMemoryBackend::get_slice(mem, GuestAddress(0x8_0000), data.len()).unwrap();
    disk.write_at(offset, &[slice]).unwrap();
}

fn sha(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

#[test]
fn formats_are_recognised_by_content() {
    let d = Dir::new("detect");
    let raw = d.raw("disk.qcow2", 4); // a raw file named like a qcow2
    assert_eq!(probe(&raw).unwrap().format, Format::Raw);
    let q = d.path("disk.img");
    qemu_img(&["create", "-q", "-f", "qcow2", q.to_str().unwrap(), "1M"]);
    let info = probe(&q).unwrap();
    assert_eq!((info.format, info.virtual_size), (Format::Qcow2, 1 << 20));
    for (magic, name) in [
        (&b"KDMV"[..], "VMDK"),
        (b"vhdxfile", "VHDX"),
        (b"conectix", "VHD"),
        (b"QED\0", "QED"),
    ] {
        let p = d.path("other");
        let mut bytes = magic.to_vec();
        bytes.resize(4096, 0);
        std::fs::write(&p, bytes).unwrap();
        let e = probe(&p).unwrap_err();
        assert!(e.to_string().contains(name), "{e}");
    }
}

#[test]
fn qcow2_is_read_and_written_and_stays_valid_for_qemu() {
    let d = Dir::new("rw");
    let q = d.path("disk.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", q.to_str().unwrap(), "8M"]);
    let disk = Qcow2Disk::open(&q, false).unwrap();
    assert_eq!(disk.size(), 8 << 20);
    let m = mem();
    assert_eq!(
        read(&disk, &m, 0, 4096),
        vec![0; 4096],
        "unallocated reads as zeroes"
    );
    write(&disk, &m, 65536 - 512, &[0xab; 1024]); // across a cluster boundary
    write(&disk, &m, 3 << 20, &[0xcd; 4096]);
    disk.flush().unwrap();
    assert_eq!(read(&disk, &m, 65536 - 512, 1024), vec![0xab; 1024]);
    disk.write_zeroes(3 << 20, 512, false).unwrap();
    disk.discard(3 << 20, 65536).unwrap();
    disk.flush().unwrap();
    drop(disk);
    qemu_img(&["check", "-q", q.to_str().unwrap()]);
    let out = d.path("out.raw");
    qemu_img(&[
        "convert",
        "-O",
        "raw",
        q.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    let bytes = std::fs::read(&out).unwrap();
    assert!(bytes[65536 - 512..65536 + 512].iter().all(|b| *b == 0xab));
    assert!(bytes[3 << 20..(3 << 20) + 4096].iter().all(|b| *b == 0));
}

#[test]
fn compressed_clusters_are_read() {
    let d = Dir::new("compressed");
    let raw = d.raw("base.raw", 2048);
    let q = d.path("c.qcow2");
    qemu_img(&[
        "convert",
        "-q",
        "-c",
        "-O",
        "qcow2",
        raw.to_str().unwrap(),
        q.to_str().unwrap(),
    ]);
    let disk = Qcow2Disk::open(&q, true).unwrap();
    let m = mem();
    let got = read(&disk, &m, 1000 * 512, 2048);
    let want: Vec<u8> = (1000..1004)
        .flat_map(|s: u32| [s.to_le_bytes()[0]; 512])
        .collect();
    assert_eq!(got, want);
}

#[test]
fn an_overlay_takes_the_writes_and_the_image_is_never_written() {
    let d = Dir::new("overlay");
    let raw = d.raw("base.raw", 256);
    let q = d.path("base.qcow2");
    qemu_img(&[
        "convert",
        "-q",
        "-O",
        "qcow2",
        raw.to_str().unwrap(),
        q.to_str().unwrap(),
    ]);
    for (base, format) in [(&raw, Format::Raw), (&q, Format::Qcow2)] {
        let before = sha(base);
        let disk = Qcow2Disk::overlay(base, format, &d.0).unwrap();
        assert_eq!(disk.size(), 256 * 512);
        let m = mem();
        write(&disk, &m, 10 * 512, &[0xee; 512]);
        disk.flush().unwrap();
        assert_eq!(read(&disk, &m, 10 * 512, 512), vec![0xee; 512]);
        assert_eq!(
            read(&disk, &m, 11 * 512, 512),
            vec![11; 512],
            "unwritten: from the image"
        );
        drop(disk);
        assert_eq!(sha(base), before, "{format} image changed");
    }
    // Nothing was left in the directory but the two images.
    let mut names: Vec<String> = std::fs::read_dir(&d.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["base.qcow2", "base.raw"]);
}

#[test]
fn a_backing_chain_is_followed_read_only() {
    let d = Dir::new("chain");
    let base = d.raw("base.raw", 128);
    let top = d.path("top.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.raw",
        "-F",
        "raw",
        top.to_str().unwrap(),
    ]);
    let info = probe(&top).unwrap();
    assert_eq!(info.backing, vec![d.path("base.raw")]);
    let before = sha(&base);
    let disk = Qcow2Disk::open(&top, false).unwrap();
    let m = mem();
    assert_eq!(read(&disk, &m, 5 * 512, 512), vec![5; 512]);
    write(&disk, &m, 5 * 512, &[0x11; 512]);
    disk.flush().unwrap();
    assert_eq!(read(&disk, &m, 5 * 512, 512), vec![0x11; 512]);
    drop(disk);
    assert_eq!(sha(&base), before, "the backing file is read-only");
}

#[test]
fn a_looping_or_missing_backing_chain_is_refused() {
    let d = Dir::new("loop");
    let a = d.path("a.qcow2");
    let b = d.path("b.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", a.to_str().unwrap(), "1M"]);
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "a.qcow2",
        "-F",
        "qcow2",
        b.to_str().unwrap(),
    ]);
    qemu_img(&[
        "rebase",
        "-q",
        "-u",
        "-b",
        "b.qcow2",
        "-F",
        "qcow2",
        a.to_str().unwrap(),
    ]);
    let e = probe(&b).unwrap_err();
    assert!(format!("{e:#}").contains("loops"), "{e}");
    Qcow2Disk::open(&b, false).unwrap_err();

    let c = d.path("c.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-u",
        "-b",
        "gone.raw",
        "-F",
        "raw",
        c.to_str().unwrap(),
        "1M",
    ]);
    let e = probe(&c).unwrap_err();
    assert!(e.to_string().contains("gone.raw"), "{e}");
}

#[test]
fn corrupt_and_short_qcow2_files_are_refused() {
    let d = Dir::new("corrupt");
    let short = d.path("short.qcow2");
    std::fs::write(&short, b"QFI\xfb").unwrap();
    probe(&short).unwrap_err();
    let q = d.path("bad.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", q.to_str().unwrap(), "1M"]);
    let mut bytes = std::fs::read(&q).unwrap();
    bytes[20..24].copy_from_slice(&[0, 0, 0, 40]); // cluster_bits 40
    std::fs::File::create(&q)
        .unwrap()
        .write_all(&bytes)
        .unwrap();
    probe(&q).unwrap_err();
}

/// A feature name table that is not whole 48-byte entries made imago panic (the qcow2_open
/// fuzz target's input, then the same defect in an image qemu-img made); it is refused, as
/// a backing file too.
#[test]
fn a_feature_name_table_of_partial_entries_is_refused() {
    let d = Dir::new("features");
    let fuzzed = d.path("fuzzed.qcow2");
    std::fs::write(
        &fuzzed,
        include_bytes!("testdata/qcow2-feature-table-short"),
    )
    .unwrap();
    let e = probe(&fuzzed).unwrap_err();
    assert!(e.to_string().contains("feature name table"), "{e}");

    let q = d.path("made.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", q.to_str().unwrap(), "1M"]);
    probe(&q).unwrap();
    let mut bytes = std::fs::read(&q).unwrap();
    let table = bytes
        .windows(4)
        .position(|w| w == [0x68, 0x03, 0xf8, 0x57])
        .expect("qemu-img writes a feature name table");
    let len = u32::from_be_bytes(bytes[table + 4..table + 8].try_into().unwrap());
    assert_eq!(len % 48, 0);
    bytes[table + 4..table + 8].copy_from_slice(&(len - 47).to_be_bytes());
    std::fs::write(&q, &bytes).unwrap();
    let e = probe(&q).unwrap_err();
    assert!(e.to_string().contains("not a whole number"), "{e}");
    // As the backing file of a good image.
    let top = d.path("top.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-u",
        "-F",
        "qcow2",
        "-b",
        q.to_str().unwrap(),
        top.to_str().unwrap(),
        "1M",
    ]);
    let e = probe(&top).unwrap_err();
    assert!(e.to_string().contains("feature name table"), "{e}");
}

#[test]
fn anonymous_files_leave_no_name_behind() {
    let d = Dir::new("anon");
    let mut f = anonymous_file(&d.0).unwrap();
    f.write_all(b"x").unwrap();
    assert_eq!(std::fs::read_dir(&d.0).unwrap().count(), 0);
}
