//! Legacy port-I/O devices: the 8250 console UART, the i8042 (keyboard
//! for Ctrl+Alt+Del, CPU reset) and the
//! boot-ready marker port.

pub mod i8042;
pub mod marker;
pub mod persist;
pub mod serial;

pub use i8042::{I8042State, I8042, I8042_PORTS};
pub use marker::BootMarker;
pub use persist::BootMarkerState;
pub use serial::{ConsoleSink, SerialDevice};
