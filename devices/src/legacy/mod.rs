//! The PC's legacy devices: COM1, the i8042 reset line and the CMOS clock.

pub mod cmos;
pub mod i8042;
pub mod serial;

pub use cmos::Cmos;
pub use i8042::I8042;
pub use serial::Serial;
