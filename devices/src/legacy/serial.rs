//! The 16550A UART at COM1 (`ttyS0`), on vm-superio's model.
//!
//! Output goes to the console writer the VMM gives (stdout, plus the serial log file).
//! Input is pushed by the VMM's event loop with [`Serial::enqueue_input`]; when the guest has
//! drained the receive FIFO, the `input_ready` eventfd fires so the loop can read more from
//! stdin. The interrupt is edge-triggered through an eventfd the VMM registers as an irqfd.

use std::io::Write;

use vm_superio::serial::SerialEvents;
use vm_superio::{Serial as Uart, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;

/// COM1's I/O base.
pub const COM1_BASE: u64 = 0x3f8;
/// COM1's legacy IRQ.
pub const COM1_IRQ: u32 = 4;
/// The UART's register window.
pub const SERIAL_PORT_LEN: u64 = 8;

/// An eventfd that raises an interrupt when written (registered as a KVM irqfd).
#[derive(Debug)]
pub struct EventFdTrigger(pub EventFd);

impl Trigger for EventFdTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// Tells the event loop when the receive FIFO has room again.
#[derive(Debug)]
pub struct InputReady(pub EventFd);

impl SerialEvents for InputReady {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        if let Err(e) = self.0.write(1) {
            log::warn!("serial: cannot signal input ready: {e}");
        }
    }
}

/// Register offsets and bits this wrapper looks at (the rest is vm-superio's).
const IER: u8 = 1;
const IIR: u8 = 2;
const LCR: u8 = 3;
const LSR: u8 = 5;
const LCR_DLAB: u8 = 0x80;
const LSR_DATA_READY: u8 = 0x01;
const IER_RDI: u8 = 0x01;
const IIR_NO_INT: u8 = 0x01;
const IIR_RDI: u8 = 0x04;
const IIR_ID_MASK: u8 = 0x0f;

/// The guest console UART.
///
/// One correction to the model: on a 16550A the received-data interrupt is a level, held
/// while the receive FIFO has data and the interrupt is enabled, and IIR reports it for as
/// long. vm-superio clears it on the IIR read and on every RBR read even when bytes remain.
/// Linux's 8250 handler reads at most 256 bytes per call and then asks IIR whether there
/// is more: told "no interrupt", it leaves the rest of the FIFO unread with nothing left to
/// raise the interrupt again, and the guest's console input stops until more arrives. So
/// IIR says "data available" whenever the FIFO holds bytes and the guest enabled that
/// interrupt.
pub struct Serial {
    uart: Uart<EventFdTrigger, InputReady, Box<dyn Write + Send>>,
}

impl std::fmt::Debug for Serial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serial").finish_non_exhaustive()
    }
}

impl Serial {
    /// A UART raising `interrupt`, signalling `input_ready`, writing to `out`.
    pub fn new(interrupt: EventFd, input_ready: EventFd, out: Box<dyn Write + Send>) -> Self {
        Self {
            uart: Uart::with_events(EventFdTrigger(interrupt), InputReady(input_ready), out),
        }
    }

    /// Free space in the receive FIFO.
    pub fn input_capacity(&self) -> usize {
        self.uart.fifo_capacity()
    }

    /// IER as the guest last wrote it: through the register while DLAB is clear (reading it
    /// has no side effect); while DLAB is set, offset 1 is the divisor latch, and the
    /// model's saved state says.
    fn interrupt_enable(&mut self) -> u8 {
        if self.uart.read(LCR) & LCR_DLAB == 0 {
            self.uart.read(IER)
        } else {
            self.uart.state().interrupt_enable
        }
    }

    /// Queues guest input; returns how many bytes fit (the rest must be offered again after
    /// `input_ready` fires).
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        if bytes.is_empty() || self.uart.fifo_capacity() == 0 {
            return 0;
        }
        match self.uart.enqueue_raw_bytes(bytes) {
            Ok(n) => n,
            Err(e) => {
                log::warn!("serial: input dropped: {e:?}");
                0
            }
        }
    }
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (u8::try_from(offset), data) {
            (Ok(IIR), [byte]) => {
                let iir = self.uart.read(IIR);
                let rx_waiting = self.uart.read(LSR) & LSR_DATA_READY != 0
                    && self.interrupt_enable() & IER_RDI != 0;
                *byte = if iir & IIR_NO_INT != 0 && rx_waiting {
                    (iir & !IIR_ID_MASK) | IIR_RDI
                } else {
                    iir
                };
            }
            (Ok(offset), [byte]) => *byte = self.uart.read(offset),
            (_, data) => data.fill(0),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(offset), [byte]) = (u8::try_from(offset), data)
            && let Err(e) = self.uart.write(offset, *byte)
        {
            log::debug!("serial: write failed: {e:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn efd() -> EventFd {
        EventFd::new(libc::EFD_NONBLOCK).unwrap()
    }

    #[test]
    fn output_reaches_the_writer_and_raises_the_interrupt() {
        let sink = Sink::default();
        let irq = efd();
        let mut serial = Serial::new(irq.try_clone().unwrap(), efd(), Box::new(sink.clone()));
        for b in b"hi" {
            serial.write(0, &[*b]);
        }
        assert_eq!(&*sink.0.lock().unwrap(), b"hi");
        assert!(irq.read().is_err(), "THR interrupt not enabled");
        serial.write(1, &[0x02]); // IER: THR empty interrupt
        let mut iir = [0];
        serial.read(2, &mut iir); // the guest acknowledges
        serial.write(0, b"!");
        assert!(irq.read().unwrap() >= 1);
    }

    #[test]
    fn input_is_bounded_by_the_fifo_and_signals_when_drained() {
        let ready = efd();
        let mut serial = Serial::new(efd(), ready.try_clone().unwrap(), Box::new(Sink::default()));
        let big = [b'x'; 100];
        let n = serial.enqueue_input(&big);
        assert_eq!(n, 64);
        assert_eq!(serial.enqueue_input(&big), 0);
        let mut byte = [0u8];
        for _ in 0..64 {
            serial.read(0, &mut byte);
            assert_eq!(byte, [b'x']);
        }
        assert_eq!(ready.read().unwrap(), 1);
        assert_eq!(serial.input_capacity(), 64);
    }

    #[test]
    fn iir_reports_received_data_while_the_fifo_holds_any() {
        let mut serial = Serial::new(efd(), efd(), Box::new(Sink::default()));
        let iir = |serial: &mut Serial| {
            let mut v = [0];
            serial.read(u64::from(IIR), &mut v);
            v[0] & IIR_ID_MASK
        };
        let rbr = |serial: &mut Serial| {
            let mut v = [0];
            serial.read(0, &mut v);
            v[0]
        };
        assert_eq!(serial.enqueue_input(b"abcd"), 4);
        // Not enabled: no interrupt, data or not.
        assert_eq!(iir(&mut serial), IIR_NO_INT);
        serial.write(u64::from(IER), &[IER_RDI]);
        assert_eq!(iir(&mut serial), IIR_RDI);
        // A driver that stops reading part way (Linux's does after 256 bytes) is told
        // again, however often it asks, until the FIFO is empty.
        assert_eq!(rbr(&mut serial), b'a');
        assert_eq!(iir(&mut serial), IIR_RDI);
        assert_eq!(iir(&mut serial), IIR_RDI);
        for want in *b"bcd" {
            assert_eq!(rbr(&mut serial), want);
        }
        assert_eq!(iir(&mut serial), IIR_NO_INT);
        // IER as seen through DLAB: the divisor latch's high byte is not IER.
        serial.write(u64::from(LCR), &[LCR_DLAB]);
        serial.write(u64::from(IER), &[0]);
        serial.write(u64::from(LCR), &[0x03]);
        serial.enqueue_input(b"e");
        assert_eq!(iir(&mut serial), IIR_RDI);
        // Asked while DLAB is set, IIR still goes by IER, not by the divisor latch.
        serial.write(u64::from(LCR), &[LCR_DLAB]);
        assert_eq!(iir(&mut serial), IIR_RDI);
        serial.write(u64::from(LCR), &[0x03]);
        serial.write(u64::from(IER), &[0]);
        assert_eq!(iir(&mut serial), IIR_NO_INT);
    }

    #[test]
    fn wide_accesses_are_ignored() {
        let sink = Sink::default();
        let mut serial = Serial::new(efd(), efd(), Box::new(sink.clone()));
        serial.write(0, &[1, 2]);
        let mut data = [0xaa; 2];
        serial.read(0, &mut data);
        assert_eq!(data, [0, 0]);
        assert!(sink.0.lock().unwrap().is_empty());
    }
}
