//! Firmware-free boot of a disk image: the bytes are the disk. This reads what a guest's
//! image holds (GPT or MBR, ext2/3/4 and FAT, BLS entries, grub.cfg, unified kernel images)
//! and must never panic or run long on any of it. A found entry's sources name partitions
//! the disk has, and its command line sends the console to ttyS0.
//!
//! `VMM_FUZZ_DEBUG=1` prints what each input boots (or why not), to check a seed image.

#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use vmm::disk::MemoryDisk;
use vmm::imageboot::{self, Source};

fn debug() -> bool {
    static DEBUG: OnceLock<bool> = OnceLock::new();
    *DEBUG.get_or_init(|| std::env::var_os("VMM_FUZZ_DEBUG").is_some())
}

fuzz_target!(|data: &[u8]| {
    let disk = Arc::new(MemoryDisk::new(data, true));
    let found = imageboot::find(disk);
    if debug() {
        eprintln!("{found:#?}");
    }
    let choice = match found {
        Ok(c) => c,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let _ = choice.plan_lines();
    for source in std::iter::once(&choice.kernel).chain(&choice.initrds) {
        let (Source::File(part, _) | Source::Section(part, _, _)) = source;
        if let Some(i) = part {
            assert!(
                *i < choice.partitions.len(),
                "{source:?}: partition {i} of {}",
                choice.partitions.len()
            );
        }
    }
    assert!(
        choice
            .cmdline
            .split_whitespace()
            .any(|a| a == "console=ttyS0" || a.starts_with("console=ttyS0,")),
        "{:?}",
        choice.cmdline
    );
});
