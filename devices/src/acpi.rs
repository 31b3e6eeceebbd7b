//! ACPI fixed-hardware power management: the PM1a event and control blocks and the reset
//! register, in one 16-byte I/O window.
//!
//! ```text
//!  offset  width  register
//!  0x0     2      PM1a_STS   bit 8 PWRBTN_STS, others never set; write 1 to clear
//!  0x2     2      PM1a_EN    bit 8 PWRBTN_EN; the other enables are kept but raise nothing
//!  0x4     2      PM1a_CNT   bit 0 SCI_EN (always 1), bits 10-12 SLP_TYP, bit 13 SLP_EN
//!  0x8     1      RESET      writing RESET_VALUE resets the machine
//! ```
//!
//! The power button is the fixed-feature button: [`AcpiPm::press_power_button`] sets
//! PWRBTN_STS and, while the guest has PWRBTN_EN set, holds the SCI (a level interrupt) high
//! until the guest clears the status. Writing SLP_EN with the S5 sleep type the DSDT
//! advertises powers off; other sleep states are not offered to the guest and are ignored.

use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;

/// I/O base of the window.
pub const ACPI_PM_BASE: u64 = 0x600;
/// Length of the window.
pub const ACPI_PM_LEN: u64 = 0x10;
/// PM1a_EVT_BLK (status then enable), for the FADT.
pub const PM1A_EVT_BLK: u16 = 0x600;
/// PM1a_CNT_BLK, for the FADT.
pub const PM1A_CNT_BLK: u16 = 0x604;
/// The reset register, for the FADT.
pub const RESET_REG: u16 = 0x608;
/// The value that resets the machine when written to [`RESET_REG`].
pub const RESET_VALUE: u8 = 0x01;
/// The SLP_TYP of S5 (soft off) that the DSDT's `_S5` object names.
pub const S5_SLP_TYP: u8 = 5;
/// The SCI's legacy IRQ.
pub const SCI_IRQ: u32 = 9;

const PWRBTN: u16 = 1 << 8;
/// Status bits a guest may clear: TMR, BM, GBL, PWRBTN, SLPBTN, RTC, WAK.
const STS_CLEARABLE: u16 = 0x8731;
/// Enable bits that read back as written (TMR, GBL, PWRBTN, SLPBTN, RTC): ACPICA checks
/// that an enable it writes sticks, so the global-lock and RTC events must store theirs.
const EN_WRITABLE: u16 = 0x0721;
const SCI_EN: u16 = 1;
const SLP_EN: u16 = 1 << 13;
const SLP_TYP_SHIFT: u16 = 10;

/// A level-triggered interrupt line.
pub trait IrqLine: Send + Sync {
    /// Drives the line to `high` (asserted) or low.
    fn set_level(&self, high: bool);
}

/// The PM registers and the events they raise.
pub struct AcpiPm {
    status: u16,
    enable: u16,
    control: u16,
    sci: Arc<dyn IrqLine>,
    sci_high: bool,
    power_off: EventFd,
    reset: EventFd,
}

impl std::fmt::Debug for AcpiPm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcpiPm")
            .field("status", &self.status)
            .field("enable", &self.enable)
            .field("control", &self.control)
            .finish_non_exhaustive()
    }
}

impl AcpiPm {
    /// PM registers that drive `sci` and write `power_off` on S5 and `reset` on a reset.
    pub fn new(sci: Arc<dyn IrqLine>, power_off: EventFd, reset: EventFd) -> Self {
        Self {
            status: 0,
            enable: 0,
            control: SCI_EN,
            sci,
            sci_high: false,
            power_off,
            reset,
        }
    }

    /// Presses the power button: the guest's ACPI driver sees a power-button event.
    pub fn press_power_button(&mut self) {
        self.status |= PWRBTN;
        self.update_sci();
    }

    /// True when the guest has enabled power-button events (its ACPI driver is listening).
    pub fn power_button_enabled(&self) -> bool {
        self.enable & PWRBTN != 0
    }

    fn update_sci(&mut self) {
        let high = self.status & self.enable & PWRBTN != 0;
        if high != self.sci_high {
            self.sci_high = high;
            self.sci.set_level(high);
        }
    }

    fn register(&mut self, offset: u64) -> Option<&mut u16> {
        match offset {
            0 | 1 => Some(&mut self.status),
            2 | 3 => Some(&mut self.enable),
            4 | 5 => Some(&mut self.control),
            _ => None,
        }
    }

    fn write_u16(&mut self, reg: u64, value: u16, mask: u16) {
        match reg {
            0 => self.status &= !(value & mask & STS_CLEARABLE),
            2 => self.enable = (self.enable & !mask) | (value & mask & EN_WRITABLE),
            4 => {
                let kept = (self.control & !mask) | (value & mask);
                if kept & SLP_EN != 0 {
                    let slp_typ = (kept >> SLP_TYP_SHIFT) & 0x7;
                    if slp_typ == u16::from(S5_SLP_TYP) {
                        signal(&self.power_off, "power off");
                    } else {
                        log::debug!("acpi: sleep type {slp_typ} is not offered; ignored");
                    }
                }
                // SLP_EN is write-only; SCI_EN stays set (the machine is always in ACPI mode).
                self.control = (kept & !SLP_EN) | SCI_EN;
            }
            _ => {}
        }
        self.update_sci();
    }
}

fn signal(evt: &EventFd, what: &str) {
    if let Err(e) = evt.write(1) {
        log::error!("acpi: cannot signal {what}: {e}");
    }
}

impl BusDevice for AcpiPm {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let mut bytes = [0u8; 8];
        for (i, b) in bytes.iter_mut().enumerate().take(data.len()) {
            let at = offset + i as u64;
            *b = match self.register(at) {
                Some(reg) => reg.to_le_bytes()[usize::from(at % 2 == 1)],
                None => 0,
            };
        }
        let n = data.len().min(8);
        data[..n].copy_from_slice(&bytes[..n]);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == u64::from(RESET_REG - PM1A_EVT_BLK) {
            if data == [RESET_VALUE] {
                signal(&self.reset, "reset");
            }
            return;
        }
        // Split the access into per-register 16-bit writes with a byte mask, so byte and word
        // accesses both work.
        for (i, byte) in data.iter().enumerate() {
            let at = offset + i as u64;
            if at >= 6 {
                break;
            }
            let reg = at & !1;
            let shift = if at % 2 == 1 { 8 } else { 0 };
            self.write_u16(reg, u16::from(*byte) << shift, 0xff << shift);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Line(Mutex<Vec<bool>>);

    impl IrqLine for Line {
        fn set_level(&self, high: bool) {
            self.0.lock().unwrap().push(high);
        }
    }

    fn setup() -> (AcpiPm, Arc<Line>, EventFd, EventFd) {
        let line = Arc::new(Line::default());
        let off = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let reset = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let pm = AcpiPm::new(
            line.clone(),
            off.try_clone().unwrap(),
            reset.try_clone().unwrap(),
        );
        (pm, line, off, reset)
    }

    fn read16(pm: &mut AcpiPm, offset: u64) -> u16 {
        let mut b = [0u8; 2];
        pm.read(offset, &mut b);
        u16::from_le_bytes(b)
    }

    #[test]
    fn power_button_raises_sci_until_cleared() {
        let (mut pm, line, _, _) = setup();
        pm.press_power_button();
        assert!(line.0.lock().unwrap().is_empty(), "not enabled yet: no SCI");
        pm.write(2, &PWRBTN.to_le_bytes());
        assert!(pm.power_button_enabled());
        assert_eq!(*line.0.lock().unwrap(), vec![true]);
        assert_eq!(read16(&mut pm, 0) & PWRBTN, PWRBTN);
        // Writing 0 to the status changes nothing; writing 1 clears.
        pm.write(0, &[0, 0]);
        assert_eq!(read16(&mut pm, 0) & PWRBTN, PWRBTN);
        pm.write(1, &[0x01]); // byte write to the high byte: bit 8
        assert_eq!(read16(&mut pm, 0) & PWRBTN, 0);
        assert_eq!(*line.0.lock().unwrap(), vec![true, false]);
    }

    #[test]
    fn s5_powers_off_other_sleep_types_do_not() {
        let (mut pm, _, off, reset) = setup();
        let s3 = (3u16 << SLP_TYP_SHIFT) | SLP_EN;
        pm.write(4, &s3.to_le_bytes());
        off.read().unwrap_err();
        let s5 = (u16::from(S5_SLP_TYP) << SLP_TYP_SHIFT) | SLP_EN;
        pm.write(4, &s5.to_le_bytes());
        assert_eq!(off.read().unwrap(), 1);
        reset.read().unwrap_err();
        assert_eq!(read16(&mut pm, 4) & (SLP_EN | SCI_EN), SCI_EN);
    }

    #[test]
    fn enables_acpica_checks_read_back() {
        let (mut pm, line, _, _) = setup();
        // GBL_EN | RTC_EN: stored, but raise nothing.
        pm.write(2, &0x0420u16.to_le_bytes());
        assert_eq!(read16(&mut pm, 2), 0x0420);
        assert!(line.0.lock().unwrap().is_empty());
        pm.write(2, &0xffffu16.to_le_bytes());
        assert_eq!(read16(&mut pm, 2), EN_WRITABLE);
    }

    #[test]
    fn reset_register_needs_the_reset_value() {
        let (mut pm, _, off, reset) = setup();
        pm.write(8, &[0x02]);
        reset.read().unwrap_err();
        pm.write(8, &[RESET_VALUE]);
        assert_eq!(reset.read().unwrap(), 1);
        off.read().unwrap_err();
    }

    #[test]
    fn hostile_offsets_and_widths_are_harmless() {
        let (mut pm, _, off, reset) = setup();
        let mut big = [0u8; 16];
        pm.read(0, &mut big);
        pm.read(15, &mut big[..1]);
        pm.write(5, &[0xff; 8]);
        pm.write(0xff, &[1]);
        reset.read().unwrap_err();
        // 0xff into the high byte of PM1_CNT sets SLP_EN with SLP_TYP 7: not S5.
        off.read().unwrap_err();
    }
}
