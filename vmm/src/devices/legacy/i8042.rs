//! A minimal i8042 PS/2 controller with an AT keyboard behind it, on ports 0x60 (data)
//! and 0x64 (status/command).
//!
//! It does three things: answer the probe of Linux's i8042 and atkbd drivers, deliver
//! the Ctrl+Alt+Del key sequence the API's `SendCtrlAltDel` queues (scancode set 2, the
//! keyboard interrupt on IRQ 1), and turn the controller's CPU reset command (0xfe) into
//! a clean VM stop ([`StopReason::Reset`], exit status 0). There is no aux (mouse) port.
//!
//! Ports, status and control bits, commands and scancodes follow the i8042/AT keyboard
//! conventions Linux's drivers rely on (and Firecracker's i8042 implements). Everything
//! the guest writes is untrusted: the output buffer is bounded, unknown commands are
//! ignored with a rate-limited log line.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::BusDevice;
use crate::logger::RateLimit;
use crate::stop::{StopReason, StopSignal};

/// Number of ports the controller spans from 0x60.
pub const I8042_PORTS: u64 = 5;

/// Offset of the data port (0x60).
const DATA: u64 = 0;
/// Offset of the status (read) / command (write) port (0x64).
const CMD_STATUS: u64 = 4;

/// Size of the output buffer: room for the longest key sequence plus replies.
pub const BUF_SIZE: usize = 16;

// Status register bits (port 0x64 read).
/// Output buffer full: a byte waits on port 0x60.
const SR_OBF: u8 = 0x01;
/// System flag: mirrors the control register's SYS bit (POST passed).
const SR_SYS: u8 = 0x04;
/// The last write went to the command port (0x64), not the data port.
const SR_CMD: u8 = 0x08;
/// Keyboard not inhibited (keylock off). Always set.
const SR_UNLOCKED: u8 = 0x10;

// Control register bits (read with 0x20, written with 0x60).
/// Keyboard interrupt (IRQ 1) enabled.
const CR_KBD_INT: u8 = 0x01;
/// System flag.
const CR_SYS: u8 = 0x04;
/// Keyboard interface disabled.
const CR_KBD_DIS: u8 = 0x10;
/// Aux interface disabled.
const CR_AUX_DIS: u8 = 0x20;
/// Initial control register: keyboard interrupt on, POST passed, no scancode
/// translation (so Linux drives the keyboard in set 2, "direct" mode).
const CR_INITIAL: u8 = CR_KBD_INT | CR_SYS;

// Controller commands (port 0x64 write).
const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_AUX_DISABLE: u8 = 0xa7;
const CMD_AUX_ENABLE: u8 = 0xa8;
const CMD_AUX_TEST: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_KBD_DISABLE: u8 = 0xad;
const CMD_KBD_ENABLE: u8 = 0xae;
const CMD_READ_OUTP: u8 = 0xd0;
const CMD_WRITE_OUTP: u8 = 0xd1;
const CMD_WRITE_KBD_OUT: u8 = 0xd2;
const CMD_RESET_CPU: u8 = 0xfe;

// Controller replies.
const SELF_TEST_OK: u8 = 0x55;
const KBD_TEST_OK: u8 = 0x00;
/// Aux interface test result "clock line stuck low": there is no aux port.
const AUX_TEST_ABSENT: u8 = 0x01;

// Keyboard commands (port 0x60 write) and replies.
const KBD_ACK: u8 = 0xfa;
const KBD_CMD_SET_LEDS: u8 = 0xed;
const KBD_CMD_ECHO: u8 = 0xee;
const KBD_CMD_SCANCODE_SET: u8 = 0xf0;
const KBD_CMD_GET_ID: u8 = 0xf2;
const KBD_CMD_TYPEMATIC: u8 = 0xf3;
const KBD_CMD_RESET: u8 = 0xff;
/// Keyboard self-test passed (after a reset).
const KBD_BAT_OK: u8 = 0xaa;
/// Keyboard id of an MF2 keyboard.
const KBD_ID: [u8; 2] = [0xab, 0x83];

/// Ctrl+Alt+Del in scancode set 2: left Ctrl, left Alt, Delete (extended) pressed, then
/// released in reverse order (0xf0 prefixes a release, 0xe0 an extended key).
pub const CTRL_ALT_DEL: [u8; 11] = [
    0x14, // Ctrl make
    0x11, // Alt make
    0xe0, 0x71, // Del make
    0xe0, 0xf0, 0x71, // Del break
    0xf0, 0x11, // Alt break
    0xf0, 0x14, // Ctrl break
];

/// Errors of the i8042.
#[derive(Debug, thiserror::Error)]
pub enum I8042Error {
    /// No room for a key sequence.
    #[error(
        "the i8042 output buffer holds {0} unread bytes, no room for the key sequence: \
         the guest is not reading its keyboard; retry later"
    )]
    BufferFull(usize),
    /// The keyboard interrupt could not be raised.
    #[error("cannot raise the i8042 keyboard interrupt")]
    Interrupt(#[source] std::io::Error),
    /// A saved state that no i8042 could be in.
    #[error("invalid i8042 state: {0}")]
    BadState(String),
}

/// The saved state of an [`I8042`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct I8042State {
    /// The control register.
    pub control: u8,
    /// The output port (0xd0/0xd1); stored only.
    pub outp: u8,
    /// Whether the last guest write went to the command port.
    pub last_write_cmd: bool,
    /// A controller command waiting for its parameter on the data port.
    pub pending_cmd: Option<u8>,
    /// A keyboard command waiting for its parameter on the data port.
    pub pending_kbd_cmd: Option<u8>,
    /// Unread output bytes, oldest first (at most [`BUF_SIZE`]).
    pub output: Vec<u8>,
}

/// Guest-triggered oddities (unknown commands, wrong access sizes, overflows).
static GUEST_ODDITIES: RateLimit = RateLimit::new(5, 10_000);
/// Failures to raise the interrupt.
static IRQ_ERRORS: RateLimit = RateLimit::new(3, 10_000);

/// The i8042 on the port-I/O bus at 0x60..=0x64.
#[derive(Debug)]
pub struct I8042 {
    stop: StopSignal,
    irq: Option<EventFd>,
    control: u8,
    outp: u8,
    last_write_cmd: bool,
    pending_cmd: Option<u8>,
    pending_kbd_cmd: Option<u8>,
    output: VecDeque<u8>,
}

impl I8042 {
    /// A controller that stops the VM through `stop` on reset. Without
    /// [`with_interrupt`](Self::with_interrupt) it raises no interrupt.
    pub fn new(stop: StopSignal) -> Self {
        Self {
            stop,
            irq: None,
            control: CR_INITIAL,
            outp: 0,
            last_write_cmd: false,
            pending_cmd: None,
            pending_kbd_cmd: None,
            output: VecDeque::with_capacity(BUF_SIZE),
        }
    }

    /// Raise the keyboard interrupt by writing `irq` (an irqfd on GSI 1).
    pub fn with_interrupt(mut self, irq: EventFd) -> Self {
        self.irq = Some(irq);
        self
    }

    /// The interrupt eventfd, if any (to register as an irqfd).
    pub fn irq_evt(&self) -> Option<&EventFd> {
        self.irq.as_ref()
    }

    /// Queue Ctrl+Alt+Del (press and release) and raise the keyboard interrupt. The
    /// whole sequence is queued or nothing. If the guest disabled the keyboard
    /// interrupt, the keys wait in the buffer (a warning says so).
    pub fn send_ctrl_alt_del(&mut self) -> Result<(), I8042Error> {
        if BUF_SIZE - self.output.len() < CTRL_ALT_DEL.len() {
            return Err(I8042Error::BufferFull(self.output.len()));
        }
        self.output.extend(CTRL_ALT_DEL);
        if self.control & CR_KBD_INT == 0 {
            log::warn!(
                "Ctrl+Alt+Del queued, but the guest has disabled the keyboard interrupt: \
                 it is delivered only when the guest reads the keyboard"
            );
            return Ok(());
        }
        match &self.irq {
            Some(evt) => evt.write(1).map_err(I8042Error::Interrupt),
            None => Ok(()),
        }
    }

    /// Save the device state.
    pub fn save(&self) -> I8042State {
        I8042State {
            control: self.control,
            outp: self.outp,
            last_write_cmd: self.last_write_cmd,
            pending_cmd: self.pending_cmd,
            pending_kbd_cmd: self.pending_kbd_cmd,
            output: self.output.iter().copied().collect(),
        }
    }

    /// A controller with `state` restored, stopping the VM through `stop` on reset and
    /// raising `irq`. The state is untrusted and validated.
    pub fn restore(
        stop: StopSignal,
        irq: Option<EventFd>,
        state: &I8042State,
    ) -> Result<Self, I8042Error> {
        if state.output.len() > BUF_SIZE {
            return Err(I8042Error::BadState(format!(
                "{} output bytes, at most {BUF_SIZE} fit",
                state.output.len()
            )));
        }
        if let Some(c) = state.pending_cmd {
            if !matches!(c, CMD_WRITE_CTR | CMD_WRITE_OUTP | CMD_WRITE_KBD_OUT) {
                return Err(I8042Error::BadState(format!(
                    "command {c:#04x} takes no parameter"
                )));
            }
        }
        if let Some(c) = state.pending_kbd_cmd {
            if !takes_kbd_param(c) {
                return Err(I8042Error::BadState(format!(
                    "keyboard command {c:#04x} takes no parameter"
                )));
            }
        }
        let mut dev = Self::new(stop);
        dev.irq = irq;
        dev.control = state.control;
        dev.outp = state.outp;
        dev.last_write_cmd = state.last_write_cmd;
        dev.pending_cmd = state.pending_cmd;
        dev.pending_kbd_cmd = state.pending_kbd_cmd;
        dev.output.extend(&state.output);
        Ok(dev)
    }

    fn status(&self) -> u8 {
        let mut s = SR_UNLOCKED;
        if !self.output.is_empty() {
            s |= SR_OBF;
        }
        if self.control & CR_SYS != 0 {
            s |= SR_SYS;
        }
        if self.last_write_cmd {
            s |= SR_CMD;
        }
        s
    }

    /// A controller reply: the driver reads exactly the next byte, so older unread
    /// bytes are dropped first. No interrupt (the driver polls for replies).
    fn reply(&mut self, byte: u8) {
        self.output.clear();
        self.output.push_back(byte);
    }

    /// Keyboard bytes (replies to keyboard commands, looped-back bytes): they replace
    /// any unread output, then the keyboard interrupt is raised.
    fn kbd_reply(&mut self, bytes: &[u8]) {
        self.output.clear();
        self.output.extend(bytes.iter().take(BUF_SIZE));
        self.raise_irq();
    }

    fn raise_irq(&self) {
        if self.control & CR_KBD_INT == 0 {
            return;
        }
        if let Some(evt) = &self.irq {
            if let Err(e) = evt.write(1) {
                crate::log_limited!(IRQ_ERRORS, warn, "cannot raise the i8042 interrupt: {e}");
            }
        }
    }

    fn reset_cpu(&self) {
        // The guest retries the reset until it takes effect: log the first one only.
        if self.stop.reason().is_none() {
            log::info!("guest requested a reset through the i8042 controller");
        }
        self.stop.stop(StopReason::Reset);
    }

    fn command(&mut self, cmd: u8) {
        self.last_write_cmd = true;
        // A new command abandons one still waiting for its parameter.
        self.pending_cmd = None;
        match cmd {
            CMD_READ_CTR => self.reply(self.control),
            CMD_WRITE_CTR | CMD_WRITE_OUTP | CMD_WRITE_KBD_OUT => self.pending_cmd = Some(cmd),
            CMD_AUX_DISABLE => self.control |= CR_AUX_DIS,
            CMD_AUX_ENABLE => self.control &= !CR_AUX_DIS,
            CMD_AUX_TEST => self.reply(AUX_TEST_ABSENT),
            CMD_SELF_TEST => {
                self.control |= CR_SYS;
                self.reply(SELF_TEST_OK);
            }
            CMD_KBD_TEST => self.reply(KBD_TEST_OK),
            CMD_KBD_DISABLE => self.control |= CR_KBD_DIS,
            CMD_KBD_ENABLE => self.control &= !CR_KBD_DIS,
            CMD_READ_OUTP => self.reply(self.outp),
            CMD_RESET_CPU => self.reset_cpu(),
            other => {
                crate::log_limited!(
                    GUEST_ODDITIES,
                    debug,
                    "ignoring unsupported i8042 command {other:#04x}"
                );
            }
        }
    }

    fn data(&mut self, byte: u8) {
        self.last_write_cmd = false;
        match self.pending_cmd.take() {
            Some(CMD_WRITE_CTR) => self.control = byte,
            Some(CMD_WRITE_OUTP) => self.outp = byte,
            Some(CMD_WRITE_KBD_OUT) => {
                if self.output.len() < BUF_SIZE {
                    self.output.push_back(byte);
                    self.raise_irq();
                } else {
                    crate::log_limited!(
                        GUEST_ODDITIES,
                        debug,
                        "i8042 output buffer full: dropping looped-back byte"
                    );
                }
            }
            _ => self.keyboard(byte),
        }
    }

    /// A byte sent to the keyboard: a command, or the parameter of the previous one.
    fn keyboard(&mut self, byte: u8) {
        if self.pending_kbd_cmd.take().is_some() {
            self.kbd_reply(&[KBD_ACK]);
            return;
        }
        match byte {
            KBD_CMD_RESET => self.kbd_reply(&[KBD_ACK, KBD_BAT_OK]),
            KBD_CMD_GET_ID => self.kbd_reply(&[KBD_ACK, KBD_ID[0], KBD_ID[1]]),
            KBD_CMD_ECHO => self.kbd_reply(&[KBD_CMD_ECHO]),
            c if takes_kbd_param(c) => {
                self.pending_kbd_cmd = Some(c);
                self.kbd_reply(&[KBD_ACK]);
            }
            // Everything else (enable/disable scanning, defaults, rates): acknowledged.
            _ => self.kbd_reply(&[KBD_ACK]),
        }
    }

    fn read_data(&mut self) -> u8 {
        let byte = self.output.pop_front().unwrap_or(0);
        // More keyboard bytes: one more interrupt for the next one.
        if !self.output.is_empty() {
            self.raise_irq();
        }
        byte
    }
}

fn takes_kbd_param(cmd: u8) -> bool {
    matches!(
        cmd,
        KBD_CMD_SET_LEDS | KBD_CMD_SCANCODE_SET | KBD_CMD_TYPEMATIC
    )
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (offset, data.len()) {
            (DATA, 1) => data[0] = self.read_data(),
            (CMD_STATUS, 1) => data[0] = self.status(),
            _ => {
                crate::log_limited!(
                    GUEST_ODDITIES,
                    debug,
                    "i8042: ignoring a {}-byte read at offset {offset}",
                    data.len()
                );
                data.fill(0xff);
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data) {
            (DATA, [b]) => self.data(*b),
            (CMD_STATUS, [b]) => self.command(*b),
            _ => {
                crate::log_limited!(
                    GUEST_ODDITIES,
                    debug,
                    "i8042: ignoring a {}-byte write at offset {offset}",
                    data.len()
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev_with_irq() -> (I8042, EventFd, StopSignal) {
        let stop = StopSignal::new().unwrap();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let dev = I8042::new(stop.try_clone().unwrap()).with_interrupt(irq.try_clone().unwrap());
        (dev, irq, stop)
    }

    fn inb(dev: &mut I8042, port: u64) -> u8 {
        let mut b = [0u8];
        dev.read(port, &mut b);
        b[0]
    }

    fn outb(dev: &mut I8042, port: u64, v: u8) {
        dev.write(port, &[v]);
    }

    /// Interrupts raised since the last call (the eventfd counter).
    fn irqs(evt: &EventFd) -> u64 {
        evt.read().unwrap_or(0)
    }

    /// One `i8042_command()` as Linux issues it: wait for IBF clear, write the command,
    /// its parameters, then read `nreply` bytes, each after OBF is set.
    fn command(dev: &mut I8042, cmd: u8, params: &[u8], nreply: usize) -> Vec<u8> {
        assert_eq!(inb(dev, CMD_STATUS) & 0x02, 0, "IBF never stays set");
        outb(dev, CMD_STATUS, cmd);
        for p in params {
            assert_eq!(inb(dev, CMD_STATUS) & 0x02, 0);
            outb(dev, DATA, *p);
        }
        (0..nreply)
            .map(|_| {
                assert_ne!(
                    inb(dev, CMD_STATUS) & SR_OBF,
                    0,
                    "reply to {cmd:#x} missing"
                );
                inb(dev, DATA)
            })
            .collect()
    }

    /// A byte sent to the keyboard, then its reply bytes.
    fn kbd(dev: &mut I8042, byte: u8, nreply: usize) -> Vec<u8> {
        outb(dev, DATA, byte);
        (0..nreply)
            .map(|_| {
                assert_ne!(
                    inb(dev, CMD_STATUS) & SR_OBF,
                    0,
                    "reply to kbd {byte:#x} missing"
                );
                inb(dev, DATA)
            })
            .collect()
    }

    #[test]
    fn linux_probe_sequence() {
        let (mut dev, irq, stop) = dev_with_irq();
        // i8042_controller_check: flush finds an empty buffer.
        assert_eq!(inb(&mut dev, CMD_STATUS) & SR_OBF, 0);
        // i8042_controller_selftest.
        assert_eq!(command(&mut dev, CMD_SELF_TEST, &[], 1), [0x55]);
        // i8042_controller_init: two equal CTR reads, no translation (-> direct mode).
        let ctr = command(&mut dev, CMD_READ_CTR, &[], 1)[0];
        assert_eq!(command(&mut dev, CMD_READ_CTR, &[], 1)[0], ctr);
        assert_eq!(ctr & 0x40, 0, "XLATE off");
        assert_ne!(ctr & CR_KBD_INT, 0);
        // Keylock inactive, so no "Keylock active" warning.
        assert_ne!(inb(&mut dev, CMD_STATUS) & SR_UNLOCKED, 0);
        let disabled = (ctr | CR_KBD_DIS) & !CR_KBD_INT;
        command(&mut dev, CMD_WRITE_CTR, &[disabled], 0);
        assert_eq!(command(&mut dev, CMD_READ_CTR, &[], 1), [disabled]);
        // Controller replies are polled, never interrupts.
        assert_eq!(irqs(&irq), 0);
        // Interface tests (no aux port).
        assert_eq!(command(&mut dev, CMD_KBD_TEST, &[], 1), [0x00]);
        assert_eq!(command(&mut dev, CMD_AUX_TEST, &[], 1), [AUX_TEST_ABSENT]);
        command(&mut dev, CMD_AUX_DISABLE, &[], 0);
        assert_ne!(command(&mut dev, CMD_READ_CTR, &[], 1)[0] & CR_AUX_DIS, 0);
        command(&mut dev, CMD_KBD_ENABLE, &[], 0);
        command(&mut dev, CMD_KBD_DISABLE, &[], 0);
        assert_ne!(command(&mut dev, CMD_READ_CTR, &[], 1)[0] & CR_KBD_DIS, 0);
        // i8042_enable_kbd_port: interface on, interrupt on.
        let enabled = (disabled & !CR_KBD_DIS) | CR_KBD_INT;
        command(&mut dev, CMD_WRITE_CTR, &[enabled], 0);
        assert_eq!(command(&mut dev, CMD_READ_CTR, &[], 1), [enabled]);
        // 0xd2: a byte looped back as keyboard data, with an interrupt.
        assert_eq!(command(&mut dev, CMD_WRITE_KBD_OUT, &[0x5a], 1), [0x5a]);
        assert_eq!(irqs(&irq), 1);
        // atkbd (without i8042.dumbkbd): GETID, reset, LEDs with their parameter.
        assert_eq!(kbd(&mut dev, KBD_CMD_GET_ID, 3), [KBD_ACK, 0xab, 0x83]);
        assert!(irqs(&irq) >= 1);
        assert_eq!(kbd(&mut dev, KBD_CMD_RESET, 2), [KBD_ACK, KBD_BAT_OK]);
        assert_eq!(kbd(&mut dev, KBD_CMD_SET_LEDS, 1), [KBD_ACK]);
        assert_eq!(
            kbd(&mut dev, KBD_CMD_GET_ID, 1),
            [KBD_ACK],
            "a parameter, not GETID"
        );
        assert_eq!(kbd(&mut dev, 0xf4, 1), [KBD_ACK]);
        assert_eq!(kbd(&mut dev, KBD_CMD_ECHO, 1), [KBD_CMD_ECHO]);
        assert_eq!(inb(&mut dev, CMD_STATUS) & SR_OBF, 0);
        assert_eq!(inb(&mut dev, DATA), 0, "empty buffer reads 0");
        assert_eq!(stop.reason(), None);
    }

    #[test]
    fn ctrl_alt_del_is_queued_and_raises_irq1() {
        let (mut dev, irq, _stop) = dev_with_irq();
        dev.send_ctrl_alt_del().unwrap();
        assert_eq!(irqs(&irq), 1);
        assert_eq!(
            CTRL_ALT_DEL[..4],
            [0x14, 0x11, 0xe0, 0x71],
            "set 2 make codes: Ctrl, Alt, Del"
        );
        let mut got = Vec::new();
        while inb(&mut dev, CMD_STATUS) & SR_OBF != 0 {
            got.push(inb(&mut dev, DATA));
            // One more interrupt per remaining byte, none after the last one.
            let expect = u64::from(got.len() < CTRL_ALT_DEL.len());
            assert_eq!(irqs(&irq), expect, "after byte {}", got.len());
        }
        assert_eq!(got, CTRL_ALT_DEL);
    }

    #[test]
    fn ctrl_alt_del_bounded_and_without_irq_when_disabled() {
        let (mut dev, irq, _stop) = dev_with_irq();
        dev.send_ctrl_alt_del().unwrap();
        let err = dev.send_ctrl_alt_del().unwrap_err();
        assert!(matches!(err, I8042Error::BufferFull(11)), "{err}");
        assert_eq!(dev.save().output, CTRL_ALT_DEL, "nothing partial queued");
        // The guest disables the keyboard interrupt: keys queue, no interrupt.
        let (mut dev, irq2, _stop) = dev_with_irq();
        let _ = irqs(&irq);
        command(&mut dev, CMD_WRITE_CTR, &[CR_SYS], 0);
        dev.send_ctrl_alt_del().unwrap();
        assert_eq!(irqs(&irq2), 0);
        assert_ne!(inb(&mut dev, CMD_STATUS) & SR_OBF, 0);
        assert_eq!(inb(&mut dev, DATA), 0x14);
    }

    #[test]
    fn reset_command_stops_the_vm() {
        let stop = StopSignal::new().unwrap();
        let mut dev = I8042::new(stop.try_clone().unwrap());
        dev.write(0, &[0xfe]); // data port: a keyboard byte, not a command
        dev.write(4, &[0xaa]); // another command
        dev.write(4, &[0x60]); // write CTR: its parameter 0xfe is no command
        dev.write(0, &[0xfe]);
        assert_eq!(stop.reason(), None);
        let mut status = [0xffu8];
        dev.read(4, &mut status);
        assert_eq!(
            status[0] & 0x02,
            0,
            "input buffer empty, so kb_wait() passes"
        );
        dev.write(4, &[0xfe]);
        assert_eq!(stop.reason(), Some(StopReason::Reset));
        // Repeated resets keep the reason.
        dev.write(4, &[0xfe]);
        assert_eq!(stop.reason(), Some(StopReason::Reset));
    }

    #[test]
    fn hostile_writes_stay_bounded() {
        let (mut dev, _irq, stop) = dev_with_irq();
        // Every byte on every offset, in sizes 1..=4, twice over, interleaved with reads.
        for round in 0..2u64 {
            for off in 0..I8042_PORTS + 2 {
                for v in 0..=255u8 {
                    if off == CMD_STATUS && v == CMD_RESET_CPU {
                        continue;
                    }
                    for len in 1..=4usize {
                        dev.write(off, &vec![v; len]);
                        assert!(dev.output.len() <= BUF_SIZE);
                        let mut buf = vec![0u8; len];
                        if (u64::from(v) + round) % 3 == 0 {
                            dev.read(off, &mut buf);
                        }
                    }
                }
            }
        }
        // Flooding the loopback command cannot grow the buffer.
        for _ in 0..100 {
            dev.write(CMD_STATUS, &[CMD_WRITE_KBD_OUT]);
            dev.write(DATA, &[0x42]);
        }
        assert_eq!(dev.output.len(), BUF_SIZE);
        assert_eq!(stop.reason(), None, "only 0xfe on the command port resets");
        let mut wide = [0u8; 2];
        dev.read(DATA, &mut wide);
        assert_eq!(wide, [0xff, 0xff]);
        assert_eq!(dev.output.len(), BUF_SIZE, "a wide read pops nothing");
    }

    #[test]
    fn save_restore_roundtrip_and_validation() {
        let (mut dev, _irq, stop) = dev_with_irq();
        command(&mut dev, CMD_WRITE_CTR, &[0x47], 0);
        dev.send_ctrl_alt_del().unwrap();
        let _ = inb(&mut dev, DATA);
        outb(&mut dev, CMD_STATUS, CMD_WRITE_OUTP); // parameter still pending
        let state = dev.save();
        assert_eq!(state.pending_cmd, Some(CMD_WRITE_OUTP));
        let json = serde_json::to_string(&state).unwrap();
        let back: I8042State = serde_json::from_str(&json).unwrap();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut restored = I8042::restore(stop.try_clone().unwrap(), Some(irq), &back).unwrap();
        assert_eq!(restored.save(), state);
        assert_eq!(inb(&mut restored, CMD_STATUS), inb(&mut dev, CMD_STATUS));
        outb(&mut restored, DATA, 0x33);
        assert_eq!(command(&mut restored, CMD_READ_OUTP, &[], 1), [0x33]);

        let bad = |f: &dyn Fn(&mut I8042State)| {
            let mut s = state.clone();
            f(&mut s);
            I8042::restore(stop.try_clone().unwrap(), None, &s).unwrap_err()
        };
        assert!(matches!(
            bad(&|s| s.output = vec![0; BUF_SIZE + 1]),
            I8042Error::BadState(_)
        ));
        assert!(matches!(
            bad(&|s| s.pending_cmd = Some(0xaa)),
            I8042Error::BadState(_)
        ));
        assert!(matches!(
            bad(&|s| s.pending_kbd_cmd = Some(0xff)),
            I8042Error::BadState(_)
        ));
        assert!(serde_json::from_str::<I8042State>(&json.replace('}', r#","x":1}"#)).is_err());
    }
}
