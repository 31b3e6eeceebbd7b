//! The i8042 keyboard controller, reduced to what a guest uses it for here: pulsing the CPU
//! reset line (command 0xFE on port 0x64), Linux's fallback when the ACPI reset register is
//! not used (`reboot=k`). Port 0x61 (system control) inside the range belongs to KVM's
//! in-kernel PIT and never reaches this device.

use vm_superio::I8042Device;
use vmm_sys_util::eventfd::EventFd;

use super::serial::EventFdTrigger;
use crate::bus::BusDevice;

/// The controller's data port; the command port is at +4.
pub const I8042_BASE: u64 = 0x60;
/// Data port 0x60 through command port 0x64.
pub const I8042_LEN: u64 = 5;

/// The keyboard controller; `reset` fires when the guest asks for a CPU reset.
pub struct I8042 {
    inner: I8042Device<EventFdTrigger>,
}

impl std::fmt::Debug for I8042 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("I8042").finish_non_exhaustive()
    }
}

impl I8042 {
    /// A controller that writes `reset` on command 0xFE.
    pub fn new(reset: EventFd) -> Self {
        Self {
            inner: I8042Device::new(EventFdTrigger(reset)),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // Status 0: output buffer empty, input buffer empty, so `kb_wait()` never spins.
        let value = u8::try_from(offset).map_or(0, |o| self.inner.read(o));
        data.fill(value);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(offset), [value]) = (u8::try_from(offset), data)
            && let Err(e) = self.inner.write(offset, *value)
        {
            log::warn!("i8042: cannot signal reset: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_fe_resets_and_nothing_else_does() {
        let reset = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut kbd = I8042::new(reset.try_clone().unwrap());
        kbd.write(0, &[0xfe]);
        kbd.write(4, &[0xd1]);
        assert!(reset.read().is_err(), "no reset yet");
        kbd.write(4, &[0xfe]);
        assert_eq!(reset.read().unwrap(), 1);
        let mut status = [0xff];
        kbd.read(4, &mut status);
        assert_eq!(status, [0]);
    }
}
