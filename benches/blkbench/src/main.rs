//! The disk benchmark's load inside the guest: direct I/O on a block device, no page cache.
//!
//!     blkbench seq-read DEVICE MIB        1 MiB reads from the start, MIB of them
//!     blkbench seq-write DEVICE MIB       1 MiB writes from the start, then fdatasync
//!     blkbench rand-read DEVICE SECONDS JOBS
//!                                         4 KiB reads at random 4 KiB offsets, JOBS threads
//!
//! Prints one JSON line: `{"mb_per_s": …}` or `{"iops": …}` (MB = 10^6 bytes).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::time::{Duration, Instant};

const BLOCK: usize = 1 << 20;
const PAGE: usize = 4096;

/// A buffer aligned for O_DIRECT.
struct Aligned {
    ptr: *mut u8,
    len: usize,
}

impl Aligned {
    fn new(len: usize) -> Self {
        let layout = std::alloc::Layout::from_size_align(len, PAGE).expect("layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "out of memory");
        Self { ptr, len }
    }

    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` points at `len` bytes this buffer owns, initialised by alloc_zeroed.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        let layout = std::alloc::Layout::from_size_align(self.len, PAGE).expect("layout");
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr, layout) };
    }
}

fn open(device: &str, write: bool) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_DIRECT)
        .open(device)
}

fn seq(device: &str, mib: u64, write: bool) -> io::Result<f64> {
    let file = open(device, write)?;
    let mut buf = Aligned::new(BLOCK);
    buf.bytes().fill(0x5a);
    let start = Instant::now();
    for i in 0..mib {
        let at = i * BLOCK as u64;
        if write {
            file.write_all_at(buf.bytes(), at)?;
        } else {
            file.read_exact_at(buf.bytes(), at)?;
        }
    }
    if write {
        file.sync_data()?;
    }
    Ok((mib * BLOCK as u64) as f64 / start.elapsed().as_secs_f64() / 1e6)
}

fn rand_read(device: &str, seconds: u64, jobs: usize) -> io::Result<f64> {
    let size = open(device, false)?.metadata().map(|m| m.len())?;
    let size = if size == 0 {
        // A block device's metadata says 0: seek to its end.
        use std::io::Seek;
        open(device, false)?.seek(io::SeekFrom::End(0))?
    } else {
        size
    };
    let pages = size / PAGE as u64;
    let until = Instant::now() + Duration::from_secs(seconds);
    let threads: Vec<_> = (0..jobs)
        .map(|j| {
            let device = device.to_string();
            std::thread::spawn(move || -> io::Result<u64> {
                let file = open(&device, false)?;
                let mut buf = Aligned::new(PAGE);
                let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ (j as u64 + 1);
                let mut done = 0u64;
                while Instant::now() < until {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    file.read_exact_at(buf.bytes(), (x % pages) * PAGE as u64)?;
                    done += 1;
                }
                Ok(done)
            })
        })
        .collect();
    let start = Instant::now();
    let mut total = 0;
    for t in threads {
        total += t.join().map_err(|_| io::Error::other("a job panicked"))??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or("");
    let num = |i: usize| arg(i).parse::<u64>().unwrap_or(0);
    let result = match arg(1) {
        "seq-read" => seq(arg(2), num(3), false).map(|v| format!("{{\"mb_per_s\": {v:.1}}}")),
        "seq-write" => seq(arg(2), num(3), true).map(|v| format!("{{\"mb_per_s\": {v:.1}}}")),
        "rand-read" => rand_read(arg(2), num(3), usize::try_from(num(4)).unwrap_or(1).max(1))
            .map(|v| format!("{{\"iops\": {v:.0}}}")),
        _ => {
            eprintln!(
                "usage: blkbench seq-read|seq-write DEVICE MIB | rand-read DEVICE SECONDS JOBS"
            );
            std::process::exit(2);
        }
    };
    match result {
        Ok(line) => println!("{line}"),
        Err(e) => {
            eprintln!("blkbench: {e}");
            std::process::exit(1);
        }
    }
}
