//! Log lines on stderr, stamped with the time since `vmm` started: the guest console owns
//! stdout.
//!
//! Much of what is logged at `info` and above is triggered by the guest (a bad feature, an
//! invalid ring, a BAR put on another device, the boot marker) or by peers, and so is
//! virtio-queue's own `error!` on a broken ring. A guest that repeats the act must not fill
//! the disk under `vmm`'s stderr, so each place in the code that logs gets [`BURST`] lines
//! per [`WINDOW`]; the rest are counted, and the next line that place prints says how many
//! were left out. `debug` and `trace` are not limited: whoever turns them on asked for all.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lines each place in the code may log per window.
const BURST: u32 = 5;
/// The window.
const WINDOW: Duration = Duration::from_secs(10);

struct StderrLogger {
    start: Instant,
    limit: Mutex<RateLimit>,
}

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let now = Instant::now();
        let mut note = String::new();
        if record.level() <= log::Level::Info {
            let site = (
                record.module_path_static().unwrap_or("?"),
                record.line().unwrap_or(0),
            );
            let mut limit = self.limit.lock().unwrap_or_else(|e| e.into_inner());
            match limit.admit(site, now) {
                Admit::Drop => return,
                Admit::Print { suppressed: 0 } => {}
                Admit::Print { suppressed } => {
                    note = format!(" ({suppressed} more like this left out)");
                }
            }
        }
        let t = now.duration_since(self.start);
        let line = format!(
            "[{:>4}.{:03} {:<5} {}] {}{note}\n",
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

/// Whether a line is printed.
#[derive(Debug, PartialEq, Eq)]
enum Admit {
    /// Print it, saying how many from the same place were left out before it.
    Print { suppressed: u64 },
    /// Leave it out (counted).
    Drop,
}

/// Where in the code a line comes from: module and line. The table is bounded by the code.
type Site = (&'static str, u32);

/// Per-site budget: [`BURST`] lines per [`WINDOW`].
#[derive(Default)]
struct RateLimit {
    sites: HashMap<Site, SiteState>,
}

struct SiteState {
    window_start: Instant,
    printed: u32,
    suppressed: u64,
}

impl RateLimit {
    fn admit(&mut self, site: Site, now: Instant) -> Admit {
        let state = self.sites.entry(site).or_insert(SiteState {
            window_start: now,
            printed: 0,
            suppressed: 0,
        });
        if now.duration_since(state.window_start) >= WINDOW {
            state.window_start = now;
            state.printed = 0;
        }
        if state.printed >= BURST {
            state.suppressed += 1;
            return Admit::Drop;
        }
        state.printed += 1;
        Admit::Print {
            suppressed: std::mem::take(&mut state.suppressed),
        }
    }
}

/// Installs the logger at `level`.
pub fn init(level: log::LevelFilter, start: Instant) {
    let logger = Box::leak(Box::new(StderrLogger {
        start,
        limit: Mutex::new(RateLimit::default()),
    }));
    if log::set_logger(logger).is_ok() {
        log::set_max_level(level);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_line_is_limited_per_site_and_window_and_the_gap_is_counted() {
        let mut limit = RateLimit::default();
        let t0 = Instant::now();
        let site = ("devices::virtio::pci", 349);
        for _ in 0..BURST {
            assert_eq!(limit.admit(site, t0), Admit::Print { suppressed: 0 });
        }
        for _ in 0..1000 {
            assert_eq!(limit.admit(site, t0 + Duration::from_secs(1)), Admit::Drop);
        }
        // Another place is not held back by the first.
        let other = ("devices::pci::root", 190);
        assert_eq!(limit.admit(other, t0), Admit::Print { suppressed: 0 });
        // The next window: the first line says how many were left out.
        let later = t0 + WINDOW;
        assert_eq!(limit.admit(site, later), Admit::Print { suppressed: 1000 });
        assert_eq!(limit.admit(site, later), Admit::Print { suppressed: 0 });
    }
}
