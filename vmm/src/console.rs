//! The guest console on `vmm`'s own stdin and stdout.
//!
//! Output from the UART goes to stdout and, with `--serial-log`, to a file that holds at
//! most [`SERIAL_LOG_MAX`] bytes: when it is full it becomes `FILE.1` (replacing the one
//! before) and a new `FILE` starts, so a guest that prints without end costs at most twice
//! that on disk. A `FILE` that is not a regular file (a FIFO, `/dev/null`) is not rotated.
//! The log is written by a thread of its own (`serial-log`), so that the vCPU threads,
//! which produce the output, never open or rename a file: their seccomp filter refuses it. When stdin is a
//! terminal it is put in raw mode, so keys (Ctrl-C included) reach the guest as typed; the
//! terminal is restored on every exit path, including a panic.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::Path;
use std::sync::{Arc, Mutex};

use net::poll::{Poller, Token};

use devices::legacy::Serial;

/// Why the console cannot be set up (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// The serial log could not be created.
    #[error("--serial-log {path}")]
    SerialLog {
        /// The path given.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// stdout could not be duplicated.
    #[error("cannot use stdout for the console")]
    Stdout(#[source] std::io::Error),
}

/// The size at which the serial log is rotated.
pub const SERIAL_LOG_MAX: u64 = 32 << 20;

/// Where guest output goes; cheap to clone for each boot.
#[derive(Clone, Debug)]
pub struct ConsoleOutput {
    stdout: Arc<File>,
    log: Option<Arc<LogThread>>,
}

/// Output chunks queued for the serial log's thread before a writer waits.
const LOG_QUEUE: usize = 256;

/// The serial log's thread: it owns the file, and ends (having written everything queued)
/// when the last [`ConsoleOutput`] is dropped.
#[derive(Debug)]
struct LogThread {
    tx: Mutex<Option<std::sync::mpsc::SyncSender<Vec<u8>>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl LogThread {
    fn start(mut log: SerialLog) -> std::io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(LOG_QUEUE);
        let thread = std::thread::Builder::new()
            .name("serial-log".into())
            .stack_size(devices::worker::THREAD_STACK)
            .spawn(move || {
                if let Err(e) = devices::confine::confine_thread(
                    "serial-log",
                    devices::seccomp::Role::SerialLog,
                ) {
                    log::warn!(
                        "--serial-log {}: no output goes to it ({e})",
                        log.path.display()
                    );
                    return;
                }
                for chunk in rx {
                    if let Err(e) = log.write(&chunk) {
                        log::warn!(
                            "--serial-log {}: {e}; no more output goes to it",
                            log.path.display()
                        );
                        return;
                    }
                }
            })?;
        Ok(Self {
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Queues `buf` for the log, waiting while the queue is full.
    fn send(&self, buf: &[u8]) {
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(tx) = tx {
            // Fails only when the thread stopped; that was logged.
            let _ = tx.send(buf.to_vec());
        }
    }
}

impl Drop for LogThread {
    fn drop(&mut self) {
        // Closing the channel ends the thread once it has written what was queued.
        drop(self.tx.lock().unwrap_or_else(|e| e.into_inner()).take());
        if let Some(thread) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = thread.join();
        }
    }
}

/// The serial log file, rotated at `max` bytes.
#[derive(Debug)]
struct SerialLog {
    path: std::path::PathBuf,
    file: File,
    written: u64,
    max: u64,
}

impl SerialLog {
    fn create(path: &Path, max: u64) -> std::io::Result<Self> {
        let file = File::create(path)?;
        // Only a regular file is rotated: `/dev/null`, a FIFO to a log shipper or a
        // terminal is written as it is, without end (and never renamed).
        let regular = file.metadata()?.is_file();
        Ok(Self {
            path: path.to_path_buf(),
            file,
            written: 0,
            max: if regular { max } else { u64::MAX },
        })
    }

    fn write(&mut self, mut buf: &[u8]) -> std::io::Result<()> {
        while !buf.is_empty() {
            if self.written >= self.max {
                self.rotate()?;
            }
            let room = usize::try_from(self.max - self.written).unwrap_or(usize::MAX);
            let n = buf.len().min(room);
            self.file.write_all(&buf[..n])?;
            self.written += n as u64;
            buf = &buf[n..];
        }
        Ok(())
    }

    /// `FILE` becomes `FILE.1` and a new `FILE` starts; where the rename is refused, the
    /// file starts over in place.
    fn rotate(&mut self) -> std::io::Result<()> {
        let mut old = self.path.clone().into_os_string();
        old.push(".1");
        self.file = match std::fs::rename(&self.path, &old) {
            Ok(()) => File::create(&self.path)?,
            Err(e) => {
                log::warn!(
                    "--serial-log {}: cannot rotate ({e}); starting it over",
                    self.path.display()
                );
                // Created again, so truncated.
                File::create(&self.path)?
            }
        };
        self.written = 0;
        Ok(())
    }
}

impl ConsoleOutput {
    /// stdout, plus `serial_log` when given (created or truncated).
    pub fn new(serial_log: Option<&Path>) -> Result<Self, ConsoleError> {
        Self::with_log_max(serial_log, SERIAL_LOG_MAX)
    }

    /// Like [`ConsoleOutput::new`], with the log rotated at `max` bytes.
    fn with_log_max(serial_log: Option<&Path>, max: u64) -> Result<Self, ConsoleError> {
        // SAFETY: dup() of fd 1 returns a new descriptor (or -1, checked) that the File owns.
        let fd = unsafe { libc::dup(libc::STDOUT_FILENO) };
        if fd < 0 {
            return Err(ConsoleError::Stdout(std::io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a fresh descriptor from dup() above, owned by nobody else.
        let stdout = unsafe { File::from_raw_fd(fd) };
        let log = serial_log
            .map(|p| {
                SerialLog::create(p, max.max(1))
                    .and_then(LogThread::start)
                    .map_err(|source| ConsoleError::SerialLog {
                        path: p.display().to_string(),
                        source,
                    })
            })
            .transpose()?;
        Ok(Self {
            stdout: Arc::new(stdout),
            log: log.map(Arc::new),
        })
    }

    /// A writer for one boot's UART.
    pub fn writer(&self) -> Box<dyn Write + Send> {
        Box::new(self.clone())
    }
}

impl Write for ConsoleOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // A closed stdout must not stop the guest: output is dropped, the log still gets it.
        let _ = (&*self.stdout).write_all(buf);
        if let Some(log) = &self.log {
            log.send(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The terminal settings to restore, when stdin was a terminal put in raw mode.
static SAVED_TERMIOS: Mutex<Option<libc::termios>> = Mutex::new(None);

/// Puts stdin in raw mode if it is a terminal. Returns whether it did.
pub fn enter_raw_mode() -> bool {
    let fd = std::io::stdin().as_raw_fd();
    // SAFETY: isatty only inspects the descriptor.
    if unsafe { libc::isatty(fd) } != 1 {
        return false;
    }
    // SAFETY: termios is plain data; tcgetattr fills it (return value checked).
    let mut termios: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is stdin and `termios` is a valid termios to fill.
    if unsafe { libc::tcgetattr(fd, &raw mut termios) } != 0 {
        return false;
    }
    let saved = termios;
    // SAFETY: cfmakeraw edits the struct in place.
    unsafe { libc::cfmakeraw(&raw mut termios) };
    // Keep output processing so vmm's own stderr lines still start at column 0.
    termios.c_oflag |= libc::OPOST | libc::ONLCR;
    // SAFETY: `fd` is stdin and `termios` a valid termios.
    if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw const termios) } != 0 {
        return false;
    }
    *SAVED_TERMIOS.lock().unwrap_or_else(|e| e.into_inner()) = Some(saved);
    true
}

/// Restores the terminal if [`enter_raw_mode`] changed it. Safe to call more than once.
pub fn restore_terminal() {
    let saved = SAVED_TERMIOS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    if let Some(termios) = saved {
        // SAFETY: stdin and a termios saved from it by tcgetattr.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw const termios) };
    }
}

/// vmm's stdin as the guest's console input. It is polled only while the UART has room for
/// more (the UART says when it has room again), and never again after end of input or an
/// error: a regular file or `/dev/null` as stdin cannot be polled, and gives no input.
#[derive(Debug)]
pub struct StdinInput {
    open: bool,
    polled: bool,
}

impl Default for StdinInput {
    fn default() -> Self {
        Self {
            open: true,
            polled: false,
        }
    }
}

impl StdinInput {
    /// Starts a boot's polling in its new `poller`, as `token`.
    pub fn start<T: Token>(&mut self, poller: &Poller<T>, token: T) {
        self.polled = false;
        self.watch(poller, token, true);
    }

    /// Starts or stops polling stdin.
    pub fn watch<T: Token>(&mut self, poller: &Poller<T>, token: T, want: bool) {
        if !self.open || self.polled == want {
            return;
        }
        let fd = std::io::stdin().as_raw_fd();
        let done = if want {
            poller.add_readable(fd, token)
        } else {
            poller.delete(fd)
        };
        match done {
            Ok(()) => self.polled = want,
            Err(e) => {
                log::debug!("stdin is not pollable ({e}); the guest gets no console input");
                self.open = false;
            }
        }
    }

    /// Moves what stdin has into `serial`'s input, as far as it has room; stops polling
    /// while it has none.
    pub fn forward<T: Token>(&mut self, poller: &Poller<T>, token: T, serial: &Mutex<Serial>) {
        let mut serial = serial.lock().unwrap_or_else(|e| e.into_inner());
        let room = serial.input_capacity();
        if room == 0 {
            drop(serial);
            self.watch(poller, token, false);
            return;
        }
        let mut buf = [0u8; 64];
        let len = room.min(buf.len());
        match read_stdin(&mut buf[..len]) {
            Ok(0) => {
                drop(serial);
                self.watch(poller, token, false);
                self.open = false;
            }
            Ok(n) => {
                serial.enqueue_input(&buf[..n]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                log::warn!("reading stdin: {e}; the guest gets no more console input");
                drop(serial);
                self.watch(poller, token, false);
                self.open = false;
            }
        }
    }
}

/// Reads from stdin without blocking; `Ok(0)` is end of input.
pub fn read_stdin(buf: &mut [u8]) -> std::io::Result<usize> {
    // SAFETY: reads at most buf.len() bytes into `buf`.
    let n = unsafe { libc::read(libc::STDIN_FILENO, buf.as_mut_ptr().cast(), buf.len()) };
    usize::try_from(n).map_err(|_| std::io::Error::last_os_error())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_goes_to_the_log_too() {
        let path = std::env::temp_dir().join(format!("vmm-serial-{}.log", std::process::id()));
        let out = ConsoleOutput::new(Some(&path)).unwrap();
        let mut w = out.writer();
        w.write_all(b"hello\n").unwrap();
        // The log's thread has written everything once the last output is dropped.
        drop((w, out));
        assert_eq!(std::fs::read(&path).unwrap(), b"hello\n");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn the_log_is_rotated_at_its_size() {
        let path = std::env::temp_dir().join(format!("vmm-serial-rot-{}.log", std::process::id()));
        let old = path.with_extension("log.1");
        let out = ConsoleOutput::with_log_max(Some(&path), 10).unwrap();
        // Not a regular file: never renamed, whatever is written.
        let null = ConsoleOutput::with_log_max(Some(Path::new("/dev/null")), 10).unwrap();
        null.writer().write_all(&[b'x'; 100]).unwrap();
        assert!(Path::new("/dev/null").exists() && !Path::new("/dev/null.1").exists());
        let mut w = out.writer();
        w.write_all(b"0123456").unwrap();
        w.write_all(b"789abcdef").unwrap();
        drop((w, out));
        assert_eq!(std::fs::read(&old).unwrap(), b"0123456789");
        assert_eq!(std::fs::read(&path).unwrap(), b"abcdef");
        // A flood much larger than the cap: never more than twice the cap on disk.
        let out = ConsoleOutput::with_log_max(Some(&path), 10).unwrap();
        let mut w = out.writer();
        for _ in 0..1000 {
            w.write_all(b"xxxxxxx").unwrap();
        }
        drop((w, out));
        assert!(std::fs::metadata(&path).unwrap().len() <= 10);
        assert_eq!(std::fs::metadata(&old).unwrap().len(), 10);
        std::fs::remove_file(&path).unwrap();
        std::fs::remove_file(&old).unwrap();
    }

    #[test]
    fn unwritable_log_is_named() {
        let err = ConsoleOutput::new(Some(Path::new("/nonexistent/dir/log"))).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("--serial-log /nonexistent/dir/log")
        );
    }
}
