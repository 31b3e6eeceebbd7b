//! Disk image files as `vmm run` opens them: the bytes are the file. `probe` recognises the
//! format (qcow2 by its magic, a few others refused, the rest raw) and reads a qcow2
//! header and backing chain; `open` serves it read-only. Errors are fine; a panic, a hang
//! or a write to a read-only disk is not. The size `open` serves is the size `probe`
//! reported, in whole sectors.

#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use devices::virtio::block::BlockBackend;
use libfuzzer_sys::fuzz_target;
use vm_memory::VolatileSlice;
use vmm::disk::image;

const SECTOR: u64 = 512;
/// Most bytes one read asks for, so that one run stays fast.
const MAX_READ: u64 = 64 << 10;

/// The image file of this process, in a directory of its own (so that a relative backing
/// file name finds nothing but the image itself); on tmpfs where there is one.
fn image_path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let base = ["/dev/shm"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_dir())
            .unwrap_or_else(std::env::temp_dir);
        let dir = base.join(format!("vmm-fuzz-qcow2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a scratch directory");
        dir.join("disk.img")
    })
}

fn read(disk: &dyn BlockBackend, offset: u64, len: u64) {
    let mut buf = vec![0u8; usize::try_from(len.min(MAX_READ)).unwrap_or(0)];
    let _ = disk.read_at(offset, &[VolatileSlice::from(&mut buf[..])]);
}

fuzz_target!(|data: &[u8]| {
    let path = image_path();
    std::fs::write(path, data).expect("the image file is written");
    let Ok(info) = image::probe(path) else {
        return;
    };
    assert!(!info.block_device);
    let Ok(disk) = image::open(path, info.format, true) else {
        return;
    };
    assert!(disk.read_only());
    let size = disk.size();
    assert_eq!(size % SECTOR, 0, "size {size}");
    assert_eq!(size, info.virtual_size / SECTOR * SECTOR, "{info:?}");
    if size > 0 {
        read(&*disk, 0, size);
        read(&*disk, (size - 1) / SECTOR * SECTOR, SECTOR);
        read(&*disk, size / 2 / SECTOR * SECTOR, 4 * SECTOR);
    }
    // Past the end: an error, not a panic.
    read(&*disk, size, SECTOR);
    read(&*disk, u64::MAX / SECTOR * SECTOR, SECTOR);
    let mut zeros = [0u8; SECTOR as usize];
    assert!(
        disk.write_at(0, &[VolatileSlice::from(&mut zeros[..])])
            .is_err(),
        "a read-only disk took a write"
    );
    let _ = disk.flush();
});
