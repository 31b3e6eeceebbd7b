//! The MC146818 CMOS real-time clock at ports 0x70/0x71.
//!
//! The clock reads the host's UTC time plus an offset the guest sets by writing the time
//! registers (as `hwclock --systohc` does). Both BCD and binary modes and the 12/24-hour
//! flag of register B are honoured. There are no RTC interrupts: the alarm, periodic and
//! update-ended interrupts stay disabled, which Linux's `rtc_cmos` copes with (it reports
//! that alarms are unavailable). The 114 bytes of NVRAM behind the clock are plain storage.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::bus::BusDevice;

/// The index port; the data port is at +1.
pub const CMOS_BASE: u64 = 0x70;
/// Index and data ports.
pub const CMOS_LEN: u64 = 2;
/// The register holding the century, named in the FADT.
pub const CMOS_CENTURY: u8 = 0x32;

const SECONDS: usize = 0x00;
const MINUTES: usize = 0x02;
const HOURS: usize = 0x04;
const WEEKDAY: usize = 0x06;
const DAY: usize = 0x07;
const MONTH: usize = 0x08;
const YEAR: usize = 0x09;
const REG_A: usize = 0x0a;
const REG_B: usize = 0x0b;
const REG_C: usize = 0x0c;
const REG_D: usize = 0x0d;
const CENTURY: usize = CMOS_CENTURY as usize;

const B_SET: u8 = 0x80;
const B_BINARY: u8 = 0x04;
const B_24H: u8 = 0x02;
const D_VALID: u8 = 0x80;
const HOUR_PM: u8 = 0x80;

/// A source of "now" in Unix seconds, swappable for tests.
pub type Clock = Box<dyn Fn() -> i64 + Send>;

/// The CMOS RTC and NVRAM.
pub struct Cmos {
    index: u8,
    regs: [u8; 128],
    /// Seconds to add to the host clock to get the guest's clock.
    offset: i64,
    clock: Clock,
}

impl std::fmt::Debug for Cmos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cmos")
            .field("index", &self.index)
            .field("offset", &self.offset)
            .finish_non_exhaustive()
    }
}

impl Default for Cmos {
    fn default() -> Self {
        Self::with_clock(Box::new(host_now))
    }
}

fn host_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl Cmos {
    /// A clock reading the host's time.
    pub fn new() -> Self {
        Self::default()
    }

    /// A clock reading `clock`.
    pub fn with_clock(clock: Clock) -> Self {
        let mut regs = [0u8; 128];
        regs[REG_A] = 0x26; // 32.768 kHz time base, 1024 Hz periodic rate
        regs[REG_B] = B_24H; // BCD, 24-hour, no interrupts
        regs[REG_D] = D_VALID;
        Self {
            index: 0,
            regs,
            offset: 0,
            clock,
        }
    }

    fn now(&self) -> i64 {
        (self.clock)().saturating_add(self.offset)
    }

    fn encode(&self, value: u8) -> u8 {
        if self.regs[REG_B] & B_BINARY != 0 {
            value
        } else {
            ((value / 10) << 4) | (value % 10)
        }
    }

    fn decode(&self, value: u8) -> u8 {
        if self.regs[REG_B] & B_BINARY != 0 {
            value
        } else {
            (value >> 4) * 10 + (value & 0x0f)
        }
    }

    fn read_register(&mut self, index: usize) -> u8 {
        // While SET is held the guest is writing the time; it reads back what it wrote.
        let frozen = self.regs[REG_B] & B_SET != 0;
        match index {
            SECONDS | MINUTES | HOURS | WEEKDAY | DAY | MONTH | YEAR | CENTURY if !frozen => {
                let t = civil_time(self.now());
                let hour = self.encode_hour(t.hour);
                match index {
                    SECONDS => self.encode(t.second),
                    MINUTES => self.encode(t.minute),
                    HOURS => hour,
                    WEEKDAY => self.encode(t.weekday),
                    DAY => self.encode(t.day),
                    MONTH => self.encode(t.month),
                    YEAR => self.encode(u8::try_from(t.year.rem_euclid(100)).unwrap_or(0)),
                    _ => self.encode(u8::try_from(t.year.div_euclid(100)).unwrap_or(0)),
                }
            }
            REG_A => self.regs[REG_A] & 0x7f, // UIP never set: reads are always consistent
            REG_C => std::mem::take(&mut self.regs[REG_C]),
            REG_D => D_VALID,
            _ => self.regs[index],
        }
    }

    fn encode_hour(&self, hour: u8) -> u8 {
        if self.regs[REG_B] & B_24H != 0 {
            return self.encode(hour);
        }
        let pm = hour >= 12;
        let h12 = match hour % 12 {
            0 => 12,
            h => h,
        };
        self.encode(h12) | if pm { HOUR_PM } else { 0 }
    }

    fn decode_hour(&self, value: u8) -> u8 {
        if self.regs[REG_B] & B_24H != 0 {
            return self.decode(value);
        }
        let h12 = self.decode(value & !HOUR_PM) % 12;
        if value & HOUR_PM != 0 { h12 + 12 } else { h12 }
    }

    fn write_register(&mut self, index: usize, value: u8) {
        match index {
            REG_B => {
                let was_set = self.regs[REG_B] & B_SET != 0;
                if value & B_SET != 0 && !was_set {
                    // Freeze the current time into the registers for the guest to edit.
                    self.snapshot_time();
                }
                self.regs[REG_B] = value;
                if was_set && value & B_SET == 0 {
                    self.commit_time();
                }
            }
            REG_C | REG_D => {} // read-only
            REG_A => self.regs[REG_A] = value & 0x7f,
            _ => self.regs[index] = value,
        }
    }

    fn snapshot_time(&mut self) {
        let t = civil_time(self.now());
        self.regs[SECONDS] = self.encode(t.second);
        self.regs[MINUTES] = self.encode(t.minute);
        self.regs[HOURS] = self.encode_hour(t.hour);
        self.regs[WEEKDAY] = self.encode(t.weekday);
        self.regs[DAY] = self.encode(t.day);
        self.regs[MONTH] = self.encode(t.month);
        self.regs[YEAR] = self.encode(u8::try_from(t.year.rem_euclid(100)).unwrap_or(0));
        self.regs[CENTURY] = self.encode(u8::try_from(t.year.div_euclid(100)).unwrap_or(0));
    }

    fn commit_time(&mut self) {
        let year = i64::from(self.decode(self.regs[CENTURY])) * 100
            + i64::from(self.decode(self.regs[YEAR]));
        let t = CivilTime {
            year,
            month: self.decode(self.regs[MONTH]),
            day: self.decode(self.regs[DAY]),
            hour: self.decode_hour(self.regs[HOURS]),
            minute: self.decode(self.regs[MINUTES]),
            second: self.decode(self.regs[SECONDS]),
            weekday: 0,
        };
        let valid = (1..=12).contains(&t.month)
            && (1..=31).contains(&t.day)
            && t.hour < 24
            && t.minute < 60
            && t.second < 60;
        if valid {
            self.offset = unix_time(&t) - (self.clock)();
        } else {
            log::debug!("cmos: guest wrote an invalid time; clock unchanged");
        }
    }
}

impl BusDevice for Cmos {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match (offset, data.len()) {
            (1, 1) => self.read_register(usize::from(self.index)),
            (0, 1) => self.index,
            _ => 0xff,
        };
        data.fill(value);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data) {
            // Bit 7 of the index port masks NMIs on real hardware; the index is the rest.
            (0, [value]) => self.index = value & 0x7f,
            (1, [value]) => self.write_register(usize::from(self.index), *value),
            _ => {}
        }
    }
}

/// A broken-down UTC time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CivilTime {
    year: i64,
    month: u8,
    day: u8,
    hour: u8,
    minute: u8,
    second: u8,
    /// 1 = Sunday, as the RTC counts.
    weekday: u8,
}

/// Unix seconds to a civil UTC time (proleptic Gregorian), after Howard Hinnant's
/// `civil_from_days`.
fn civil_time(unix: i64) -> CivilTime {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let small = |v: i64| u8::try_from(v).unwrap_or(0);
    CivilTime {
        year,
        month: small(month),
        day: small(day),
        hour: small(secs / 3600),
        minute: small(secs % 3600 / 60),
        second: small(secs % 60),
        // 1970-01-01 was a Thursday (5 when Sunday is 1).
        weekday: small((days + 4).rem_euclid(7) + 1),
    }
}

/// A civil UTC time to Unix seconds, after Howard Hinnant's `days_from_civil`.
fn unix_time(t: &CivilTime) -> i64 {
    let (month, day) = (i64::from(t.month), i64::from(t.day));
    let year = if month <= 2 { t.year - 1 } else { t.year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    days * 86_400 + i64::from(t.hour) * 3600 + i64::from(t.minute) * 60 + i64::from(t.second)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicI64, Ordering};

    // 2026-11-29 15:25:50 UTC, a Sunday.
    const NOW: i64 = 1_795_965_950;

    fn cmos_at(now: i64) -> (Cmos, Arc<AtomicI64>) {
        let t = Arc::new(AtomicI64::new(now));
        let t2 = t.clone();
        (
            Cmos::with_clock(Box::new(move || t2.load(Ordering::SeqCst))),
            t,
        )
    }

    fn get(c: &mut Cmos, reg: u8) -> u8 {
        c.write(0, &[reg]);
        let mut v = [0];
        c.read(1, &mut v);
        v[0]
    }

    fn set(c: &mut Cmos, reg: u8, value: u8) {
        c.write(0, &[reg]);
        c.write(1, &[value]);
    }

    #[test]
    fn civil_conversions_round_trip() {
        let t = civil_time(NOW);
        assert_eq!(
            (
                t.year, t.month, t.day, t.hour, t.minute, t.second, t.weekday
            ),
            (2026, 11, 29, 15, 25, 50, 1)
        );
        for unix in [0, 951_782_400, NOW, 4_102_444_800, -86_400] {
            assert_eq!(unix_time(&civil_time(unix)), unix);
        }
        assert_eq!(civil_time(951_782_400).day, 29); // 2000-02-29
    }

    #[test]
    fn reads_bcd_time() {
        let (mut c, _) = cmos_at(NOW);
        assert_eq!(get(&mut c, 0x00), 0x50);
        assert_eq!(get(&mut c, 0x02), 0x25);
        assert_eq!(get(&mut c, 0x04), 0x15);
        assert_eq!(get(&mut c, 0x07), 0x29);
        assert_eq!(get(&mut c, 0x08), 0x11);
        assert_eq!(get(&mut c, 0x09), 0x26);
        assert_eq!(get(&mut c, CMOS_CENTURY), 0x20);
        assert_eq!(get(&mut c, 0x0d), 0x80);
        assert_eq!(get(&mut c, 0x0a) & 0x80, 0, "UIP clear");
    }

    #[test]
    fn binary_and_12_hour_modes() {
        let (mut c, _) = cmos_at(NOW);
        set(&mut c, 0x0b, B_BINARY);
        assert_eq!(get(&mut c, 0x00), 50);
        assert_eq!(get(&mut c, 0x04), 3 | HOUR_PM);
        set(&mut c, 0x0b, B_BINARY | B_24H);
        assert_eq!(get(&mut c, 0x04), 15);
    }

    #[test]
    fn guest_sets_the_clock_and_it_keeps_running() {
        let (mut c, t) = cmos_at(NOW);
        set(&mut c, 0x0b, B_SET | B_24H);
        // 2030-01-02 03:04:05
        for (reg, v) in [(0x00, 0x05), (0x02, 0x04), (0x04, 0x03), (0x07, 0x02)] {
            set(&mut c, reg, v);
        }
        set(&mut c, 0x08, 0x01);
        set(&mut c, 0x09, 0x30);
        set(&mut c, CMOS_CENTURY, 0x20);
        assert_eq!(get(&mut c, 0x00), 0x05, "frozen while SET");
        set(&mut c, 0x0b, B_24H);
        t.fetch_add(10, Ordering::SeqCst);
        assert_eq!(get(&mut c, 0x00), 0x15);
        assert_eq!(get(&mut c, 0x09), 0x30);
        assert_eq!(get(&mut c, 0x04), 0x03);
    }

    #[test]
    fn nvram_is_storage_and_index_masks_nmi_bit() {
        let (mut c, _) = cmos_at(NOW);
        set(&mut c, 0x80 | 0x40, 0xab);
        assert_eq!(get(&mut c, 0x40), 0xab);
        let mut wide = [0u8; 2];
        c.read(1, &mut wide);
        assert_eq!(wide, [0xff, 0xff]);
    }
}
