//! Finding the boot entry on real disk images, made here with the tools distributions use
//! (sfdisk, mkfs.ext4 -d, mkfs.vfat and mcopy; installed by images/build): GPT and MBR
//! tables, ext4 and FAT, grub.cfg, loader entries on the ESP and on XBOOTLDR, a unified
//! kernel image, the /vmlinuz links, qcow2, and what is refused.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use super::*;
use crate::disk::image::Qcow2Disk;
use crate::disk::raw::RawDisk;

const ROOT_UUID: &str = "4c7d1f7a-2f61-4a8e-9d55-0d3c2b1a9e10";

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("vmm-imageboot-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }

    /// Writes `files` (path → contents; a contents of "-> target" makes a symlink) under
    /// directory `name`.
    fn tree(&self, name: &str, files: &[(&str, &[u8])]) -> PathBuf {
        let root = self.0.join(name);
        for (path, data) in files {
            let p = root.join(path.trim_start_matches('/'));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            match data.strip_prefix(b"-> ") {
                Some(target) => {
                    std::os::unix::fs::symlink(std::str::from_utf8(target).unwrap(), &p).unwrap()
                }
                None => std::fs::write(&p, data).unwrap(),
            }
        }
        std::fs::create_dir_all(&root).unwrap();
        root
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(program: &str, args: &[&str], stdin: Option<&str>) {
    use std::io::Write;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| {
        panic!("{program}: {e} (images/build installs fdisk, dosfstools, mtools, e2fsprogs)")
    });
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A partition to put on a test disk.
enum Fs<'a> {
    /// ext4 of the directory, with this UUID.
    Ext(&'a Path, &'a str),
    /// FAT of the directory.
    Fat(&'a Path),
    /// These bytes at the start (a signature), zeroes after.
    Raw(&'a [u8]),
}

/// A disk image of `parts` (sfdisk type, MiB, content); `gpt` or MBR.
fn disk(dir: &Dir, name: &str, gpt: bool, parts: &[(&str, u64, Fs<'_>)]) -> PathBuf {
    let path = dir.0.join(name);
    let total: u64 = parts.iter().map(|(_, mib, _)| mib).sum::<u64>() + 2;
    let mut script = format!("label: {}\n", if gpt { "gpt" } else { "dos" });
    let mut start = 2048u64;
    let mut placed = Vec::new();
    for (kind, mib, _) in parts {
        let sectors = mib * 2048;
        script.push_str(&format!("start={start}, size={sectors}, type={kind}\n"));
        placed.push(start);
        start += sectors;
    }
    std::fs::File::create(&path)
        .unwrap()
        .set_len(total << 20)
        .unwrap();
    run("sfdisk", &["-q", path.to_str().unwrap()], Some(&script));
    for ((_, mib, fs), at) in parts.iter().zip(placed) {
        let img = dir.0.join(format!("{name}.part{at}"));
        match fs {
            Fs::Ext(tree, uuid) => {
                std::fs::File::create(&img)
                    .unwrap()
                    .set_len(mib << 20)
                    .unwrap();
                run(
                    "mkfs.ext4",
                    &[
                        "-q",
                        "-F",
                        "-U",
                        uuid,
                        "-d",
                        tree.to_str().unwrap(),
                        img.to_str().unwrap(),
                    ],
                    None,
                );
            }
            Fs::Fat(tree) => {
                std::fs::File::create(&img)
                    .unwrap()
                    .set_len(mib << 20)
                    .unwrap();
                run(
                    "mkfs.vfat",
                    &["-i", "B2C17F3A", img.to_str().unwrap()],
                    None,
                );
                for entry in std::fs::read_dir(tree).unwrap() {
                    let p = entry.unwrap().path();
                    run(
                        "mcopy",
                        &["-s", "-i", img.to_str().unwrap(), p.to_str().unwrap(), "::"],
                        None,
                    );
                }
            }
            Fs::Raw(bytes) => {
                let mut b = bytes.to_vec();
                b.resize(usize::try_from(mib << 20).unwrap(), 0);
                std::fs::write(&img, b).unwrap();
            }
        }
        run(
            "dd",
            &[
                &format!("if={}", img.display()),
                &format!("of={}", path.display()),
                "bs=512",
                &format!("seek={at}"),
                "conv=notrunc",
                "status=none",
            ],
            None,
        );
    }
    path
}

const LINUX: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";
const ESP: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
const XBOOTLDR: &str = "BC13C2FF-59E6-4262-A352-B275FD6F7172";
const BIOS_BOOT: &str = "21686148-6449-6E6F-744E-656564454649";

fn backend(path: &Path) -> Arc<dyn BlockBackend> {
    Arc::new(RawDisk::open(path, true).unwrap())
}

fn grub_cfg(kernel: &str, extra: &str) -> String {
    format!(
        "set default=\"0\"\nmenuentry 'Debian GNU/Linux' --id 'gnulinux-simple' {{\n\
         \tsearch --no-floppy --fs-uuid --set=root {ROOT_UUID}\n\
         \tlinux\t/boot/vmlinuz-{kernel} root=UUID={ROOT_UUID} ro {extra}\n\
         \tinitrd\t/boot/initrd.img-{kernel}\n}}\n"
    )
}

#[test]
fn a_debian_genericcloud_layout_boots_grub_s_default_entry() {
    let d = Dir::new("debian");
    let cfg = grub_cfg("6.1.0-10-cloud-amd64", "console=tty0 console=ttyS0,115200");
    let root = d.tree(
        "root",
        &[
            ("/boot/grub/grub.cfg", cfg.as_bytes()),
            ("/boot/vmlinuz-6.1.0-10-cloud-amd64", b"KERNEL-10"),
            ("/boot/initrd.img-6.1.0-10-cloud-amd64", b"INITRD-10"),
            ("/vmlinuz", b"-> boot/vmlinuz-6.1.0-10-cloud-amd64"),
            ("/etc/hostname", b"x\n"),
        ],
    );
    let stub = format!(
        "search.fs_uuid {ROOT_UUID} root hd0,gpt1\nset prefix=($root)'/boot/grub'\nconfigfile $prefix/grub.cfg\n"
    );
    let esp = d.tree("esp", &[("EFI/debian/grub.cfg", stub.as_bytes())]);
    // Debian's genericcloud order: root first, BIOS boot 14, ESP 15 (here 2 and 3).
    let image = disk(
        &d,
        "debian.raw",
        true,
        &[
            (LINUX, 24, Fs::Ext(&root, ROOT_UUID)),
            (BIOS_BOOT, 1, Fs::Raw(b"")),
            (ESP, 8, Fs::Fat(&esp)),
        ],
    );
    let choice = find(backend(&image)).unwrap();
    assert_eq!(choice.method, Method::Grub);
    assert_eq!(choice.config, "(gpt1) /boot/grub/grub.cfg");
    assert_eq!(choice.entry, "Debian GNU/Linux");
    assert_eq!(
        choice.kernel,
        Source::File(Some(0), "/boot/vmlinuz-6.1.0-10-cloud-amd64".into())
    );
    assert_eq!(
        choice.cmdline,
        format!(
            "BOOT_IMAGE=/boot/vmlinuz-6.1.0-10-cloud-amd64 root=UUID={ROOT_UUID} ro console=tty0 console=ttyS0,115200"
        ),
        "console=ttyS0 is there: nothing added"
    );
    assert_eq!(
        choice.partitions,
        vec![
            ("gpt1".to_string(), "ext4".to_string()),
            ("gpt2".to_string(), "no file system vmm knows".to_string()),
            ("gpt3".to_string(), "FAT".to_string())
        ]
    );
    let tmp = d.tree("tmp", &[]);
    let files = extract(backend(&image), &choice, &tmp).unwrap();
    let k = files.files();
    assert_eq!(std::fs::read(&k.kernel).unwrap(), b"KERNEL-10");
    assert_eq!(std::fs::read(k.initrd.unwrap()).unwrap(), b"INITRD-10");
    assert_eq!(
        std::fs::read_dir(&tmp).unwrap().count(),
        0,
        "extracted files have no name"
    );

    // The same disk as qcow2, through imago.
    let q = d.0.join("debian.qcow2");
    run(
        "qemu-img",
        &[
            "convert",
            "-O",
            "qcow2",
            image.to_str().unwrap(),
            q.to_str().unwrap(),
        ],
        None,
    );
    let qcow2: Arc<dyn BlockBackend> = Arc::new(Qcow2Disk::open(&q, true).unwrap());
    assert_eq!(find(qcow2).unwrap(), choice);
}

#[test]
fn without_a_serial_console_one_is_added() {
    let d = Dir::new("console");
    let cfg = grub_cfg("6.1", "quiet");
    let root = d.tree(
        "root",
        &[
            ("/boot/grub/grub.cfg", cfg.as_bytes()),
            ("/boot/vmlinuz-6.1", b"K"),
            ("/boot/initrd.img-6.1", b"I"),
        ],
    );
    let image = disk(
        &d,
        "mbr.raw",
        false,
        &[("83", 16, Fs::Ext(&root, ROOT_UUID))],
    );
    let choice = find(backend(&image)).unwrap();
    assert_eq!(choice.config, "(msdos1) /boot/grub/grub.cfg");
    assert!(
        choice.cmdline.ends_with(" quiet console=ttyS0"),
        "{}",
        choice.cmdline
    );
}

#[test]
fn loader_entries_on_the_esp_and_xbootldr_are_chosen_as_systemd_boot_does() {
    let d = Dir::new("bls");
    let entry = |v: &str| {
        format!(
            "title Debian GNU/Linux\nversion {v}\nmachine-id 0f1e\nsort-key debian\n\
             options root=UUID={ROOT_UUID} ro console=ttyS0\nlinux /0f1e/{v}/linux\ninitrd /0f1e/{v}/initrd.img-{v}\n"
        )
    };
    let (e9, e10) = (entry("6.1.0-9-amd64"), entry("6.1.0-10-amd64"));
    let boot = d.tree(
        "boot",
        &[
            ("/loader/entries/0f1e-6.1.0-9-amd64.conf", e9.as_bytes()),
            ("/loader/entries/0f1e-6.1.0-10-amd64.conf", e10.as_bytes()),
            ("/0f1e/6.1.0-10-amd64/linux", b"K10"),
            ("/0f1e/6.1.0-10-amd64/initrd.img-6.1.0-10-amd64", b"I10"),
            ("/0f1e/6.1.0-9-amd64/linux", b"K9"),
        ],
    );
    let esp = d.tree("esp", &[("loader/loader.conf", b"timeout 0\n")]);
    let root = d.tree("root", &[("/etc/os-release", b"ID=debian\n")]);
    fn parts<'a>(
        esp: &'a Path,
        boot: &'a Path,
        root: &'a Path,
    ) -> Vec<(&'static str, u64, Fs<'a>)> {
        vec![
            (ESP, 8, Fs::Fat(esp)),
            (
                XBOOTLDR,
                16,
                Fs::Ext(boot, "9b1e8a6a-3c1d-4c4e-8b9f-7e1f2a3b4c5d"),
            ),
            (LINUX, 8, Fs::Ext(root, ROOT_UUID)),
        ]
    }
    let image = disk(&d, "bls.raw", true, &parts(&esp, &boot, &root));
    let choice = find(backend(&image)).unwrap();
    assert_eq!(choice.method, Method::Bls);
    assert_eq!(
        choice.config,
        "(gpt2) /loader/entries/0f1e-6.1.0-10-amd64.conf"
    );
    assert_eq!(
        choice.kernel,
        Source::File(Some(1), "/0f1e/6.1.0-10-amd64/linux".into())
    );
    assert_eq!(
        choice.cmdline,
        format!("root=UUID={ROOT_UUID} ro console=ttyS0")
    );
    let extracted = extract(backend(&image), &choice, &d.0).unwrap();
    let files = extracted.files();
    assert_eq!(std::fs::read(files.kernel).unwrap(), b"K10");

    // loader.conf's default wins over the order.
    let esp = d.tree(
        "esp2",
        &[("loader/loader.conf", b"default 0f1e-6.1.0-9-*\n")],
    );
    let image = disk(&d, "bls2.raw", true, &parts(&esp, &boot, &root));
    let choice = find(backend(&image)).unwrap();
    assert_eq!(
        choice.kernel,
        Source::File(Some(1), "/0f1e/6.1.0-9-amd64/linux".into())
    );
}

#[test]
fn a_unified_kernel_image_gives_its_sections() {
    let d = Dir::new("uki");
    let pe = uki::tests::pe(&[
        (".cmdline", b"root=/dev/vda2 ro quiet\0"),
        (".linux", b"UKI-KERNEL"),
        (".initrd", b"UKI-INITRD"),
    ]);
    let esp = d.tree(
        "esp",
        &[
            ("EFI/Linux/debian-6.1.0-9.efi", &pe[..]),
            ("EFI/Linux/debian-6.1.0-10.efi", &pe[..]),
        ],
    );
    let image = disk(&d, "uki.raw", true, &[(ESP, 8, Fs::Fat(&esp))]);
    let choice = find(backend(&image)).unwrap();
    assert_eq!(choice.method, Method::Uki);
    assert_eq!(choice.entry, "debian-6.1.0-10.efi");
    assert_eq!(choice.cmdline, "root=/dev/vda2 ro quiet console=ttyS0");
    let extracted = extract(backend(&image), &choice, &d.0).unwrap();
    let files = extracted.files();
    assert_eq!(std::fs::read(files.kernel).unwrap(), b"UKI-KERNEL");
    assert_eq!(std::fs::read(files.initrd.unwrap()).unwrap(), b"UKI-INITRD");
}

#[test]
fn a_whole_disk_file_system_boots_its_vmlinuz_links() {
    let d = Dir::new("links");
    let root = d.tree(
        "root",
        &[
            ("/boot/vmlinuz-6.1", b"K"),
            ("/boot/initrd.img-6.1", b"I"),
            ("/vmlinuz", b"-> boot/vmlinuz-6.1"),
            ("/initrd.img", b"-> boot/initrd.img-6.1"),
        ],
    );
    let image = d.0.join("rootfs.raw");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    run(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-U",
            ROOT_UUID,
            "-d",
            root.to_str().unwrap(),
            image.to_str().unwrap(),
        ],
        None,
    );
    let choice = find(backend(&image)).unwrap();
    assert_eq!(choice.method, Method::Links);
    assert_eq!(
        choice.cmdline,
        format!("root=UUID={ROOT_UUID} ro console=ttyS0")
    );
    assert_eq!(choice.entry, "boot/vmlinuz-6.1");
    let extracted = extract(backend(&image), &choice, &d.0).unwrap();
    let files = extracted.files();
    assert_eq!(std::fs::read(files.initrd.unwrap()).unwrap(), b"I");
}

#[test]
fn images_vmm_cannot_read_are_refused_with_the_reason() {
    let d = Dir::new("refused");
    let esp = d.tree("esp", &[("EFI/BOOT/BOOTX64.EFI", b"MZ")]);
    for (name, magic, want) in [
        ("xfs.raw", &b"XFSB"[..], "gpt2 is XFS"),
        ("luks.raw", b"LUKS\xba\xbe", "gpt2 is LUKS (encrypted)"),
        ("ntfs.raw", b"\xeb\x52\x90NTFS    ", "gpt2 is NTFS"),
    ] {
        let image = disk(
            &d,
            name,
            true,
            &[(ESP, 8, Fs::Fat(&esp)), (LINUX, 8, Fs::Raw(magic))],
        );
        let e = find(backend(&image)).unwrap_err().to_string();
        assert!(
            e.contains(want) && e.contains("give spec.instance.kernel"),
            "{e}"
        );
    }
    let blank = d.0.join("blank.raw");
    std::fs::File::create(&blank)
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    let e = find(backend(&blank)).unwrap_err().to_string();
    assert!(
        e.contains("no partition table and no file system vmm reads"),
        "{e}"
    );
}

#[test]
fn the_fuzzers_ext_superblock_with_a_huge_group_count_is_refused() {
    // The input fuzz/ (image_boot) found, as it found it: with it, ext4-view ran out of
    // memory reserving group descriptors.
    let image = include_bytes!("testdata/ext4-huge-group-count");
    let disk = Arc::new(crate::disk::MemoryDisk::new(image, true));
    let e = find(disk).unwrap_err().to_string();
    assert!(e.contains("no boot configuration vmm can read"), "{e}");
}

#[test]
fn an_ext_superblock_claiming_more_than_its_disk_is_refused_before_it_is_loaded() {
    // Found by fuzz/ (image_boot): a superblock with a huge block count and one block per
    // group made ext4-view reserve room for billions of group descriptors (out of memory).
    let mut image = vec![0u8; 64 << 10];
    let sb = 1024;
    image[sb + 0x4..sb + 0x8].copy_from_slice(&u32::MAX.to_le_bytes()); // blocks
    image[sb + 0x18..sb + 0x1c].copy_from_slice(&0u32.to_le_bytes()); // 1 KiB blocks
    image[sb + 0x20..sb + 0x24].copy_from_slice(&1u32.to_le_bytes()); // blocks per group
    image[sb + 0x28..sb + 0x2c].copy_from_slice(&16u32.to_le_bytes()); // inodes per group
    image[sb + 0x38..sb + 0x3a].copy_from_slice(&0xef53u16.to_le_bytes()); // magic
    let disk = Arc::new(crate::disk::MemoryDisk::new(&image, true));
    // Refused as unreadable, not loaded: loading it would abort vmm (no memory for 2^32
    // descriptors).
    let e = find(disk).unwrap_err().to_string();
    assert!(
        e.contains("the whole disk is ext4, which vmm does not read"),
        "{e}"
    );
    let region = super::disk::Region::whole(Arc::new(crate::disk::MemoryDisk::new(&image, true)));
    let e = super::fs::BootFs::open(&region, super::disk::Content::Ext).unwrap_err();
    assert_eq!(
        e.to_string(),
        "ext4: the superblock claims 4398046510080 bytes in a partition of 65536"
    );
}

#[test]
fn an_mbr_whose_entries_all_start_at_sector_0_is_no_partition_table() {
    // Found by fuzz/ (image_boot): mbrman panicked on it (`find_alignment` unwraps None).
    let mut image = vec![0u8; 4096];
    image[446 + 4] = 0x83; // entry 1: Linux, first LBA 0,
    image[446 + 12] = 8; // 8 sectors
    image[510..512].copy_from_slice(&[0x55, 0xaa]);
    let disk = Arc::new(crate::disk::MemoryDisk::new(&image, true));
    let e = find(disk).unwrap_err().to_string();
    assert!(
        e.contains("no partition table and no file system vmm reads"),
        "{e}"
    );
}

#[test]
fn the_fuzzers_fat_directory_that_loops_ends_in_an_error() {
    // The input fuzz/ (image_boot) found: a FAT file system whose directory clusters lead
    // in circles; fatfs followed them for ever.
    let image = include_bytes!("testdata/fat-directory-loop");
    let disk = Arc::new(crate::disk::MemoryDisk::new(image, true));
    let e = find(disk).unwrap_err().to_string();
    assert!(e.contains("no boot configuration vmm can read"), "{e}");
}

#[test]
fn a_fat_directory_whose_cluster_chain_loops_is_not_followed_for_ever() {
    let dir = Dir::new("fat-loop");
    let img = dir.0.join("esp.fat");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    let img_arg = img.to_str().unwrap();
    run("mkfs.vfat", &["-F", "16", "-s", "1", img_arg], None);
    run("mmd", &["-i", img_arg, "::/loader"], None);
    let mut bytes = std::fs::read(&img).unwrap();
    let le16 = |b: &[u8], at: usize| usize::from(u16::from_le_bytes([b[at], b[at + 1]]));
    let (sector, reserved, fats, fat_sectors) = (
        le16(&bytes, 0x0b),
        le16(&bytes, 0x0e),
        usize::from(bytes[0x10]),
        le16(&bytes, 0x16),
    );
    let root = (reserved + fats * fat_sectors) * sector;
    let entry = (root..root + 512 * 32)
        .step_by(32)
        .find(|at| &bytes[*at..*at + 11] == b"LOADER     ")
        .expect("the loader directory's entry");
    let cluster = le16(&bytes, entry + 26);
    // Its cluster holds no end-of-directory mark (every entry after `.` and `..` deleted,
    // not free), and its FAT entry names itself, in every copy of the FAT: a reader that
    // follows the chain never reaches an end.
    let root_entries = le16(&bytes, 0x11);
    let cluster_bytes = usize::from(bytes[0x0d]) * sector;
    let data = root + root_entries * 32 + (cluster - 2) * cluster_bytes;
    for at in (data + 64..data + cluster_bytes).step_by(32) {
        bytes[at] = 0xe5;
    }
    for copy in 0..fats {
        let at = (reserved + copy * fat_sectors) * sector + cluster * 2;
        bytes[at..at + 2].copy_from_slice(&u16::try_from(cluster).unwrap().to_le_bytes());
    }
    let disk: Arc<dyn BlockBackend> = Arc::new(crate::disk::MemoryDisk::new(&bytes, true));
    let region = super::disk::Region::whole(disk.clone());
    let fs = fs::BootFs::open(&region, super::disk::Content::Fat).unwrap();
    let e = crate::runner::error_chain(&fs.read("/loader/entries/linux.conf").unwrap_err());
    assert!(e.contains("lead in circles"), "{e}");
    let e = find(disk).unwrap_err().to_string();
    assert!(e.contains("no boot configuration vmm can read"), "{e}");
}
