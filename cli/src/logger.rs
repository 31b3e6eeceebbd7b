//! Log lines on stderr, stamped with the time since `vmm` started: the guest console owns
//! stdout.

use std::io::Write;
use std::time::Instant;

struct StderrLogger {
    start: Instant,
}

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let t = self.start.elapsed();
        let line = format!(
            "[{:>4}.{:03} {:<5} {}] {}\n",
            t.as_secs(),
            t.subsec_millis(),
            record.level(),
            record.target(),
            record.args()
        );
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

/// Installs the logger at `level`.
pub fn init(level: log::LevelFilter, start: Instant) {
    let logger = Box::leak(Box::new(StderrLogger { start }));
    if log::set_logger(logger).is_ok() {
        log::set_max_level(level);
    }
}
