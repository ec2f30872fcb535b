//! The i8042 keyboard controller with a PS/2 keyboard and mouse, as QEMU's
//! `hw/input/pckbd.c` and `hw/input/ps2.c` present them to a PC guest.
//!
//! Ports: 0x60 is the data port, 0x64 reads the status register and takes
//! controller commands. The device sees offset 0 for 0x60 and offset 4 for
//! 0x64 (the machine places each port, length 1, from [`crate::pc::layout`]).
//!
//! What the guest can see, following QEMU with `extended-state=off`, which is
//! what `-machine xenfv` (an i440FX 3.1-compatible machine, `hw_compat_6_0`)
//! gives qemu-xen:
//!
//! * Reset: status 0x18 (command/data flag and keylock bits), command byte
//!   0x03 (IRQ1 and IRQ12 enabled, nothing disabled, no translation), output
//!   port 0xCF (reset line high, A20 on).
//! * Controller replies (0x20 command byte, 0xAA self test -> 0x55 and status
//!   bit 2, 0xAB/0xA9 interface tests -> 0x00, 0xC0 input port -> 0x80, 0xD0
//!   output port, 0xD2 write) are queued on the keyboard's queue; 0xD3 writes
//!   are queued on the mouse's. 0xD1 writes the output port: bit 0 clear asks
//!   for a reset. 0xF0-0xFF pulse output-port bits 3-0: any pulse of bit 0
//!   (0xFE, and every even value) is a CPU reset; the rest do nothing. 0xDD/
//!   0xDF clear/set the A20 bit of the output port.
//! * A reset calls [`Hypervisor::shutdown`] with [`ShutdownReason::Reboot`]
//!   before the access returns (Xen then destroys and rebuilds the domain,
//!   `xen-abi.md` 5.8).
//! * OBF (status bit 0) latches which device the byte comes from; the
//!   keyboard wins over the mouse, and MOUSE_OBF (bit 5) marks mouse data.
//!   A data read takes the latched byte, lowers the IRQ lines, and latches the
//!   next byte (which raises the line again: an edge per byte). A data read
//!   with OBF clear returns the last byte read.
//! * IRQ1 is high while keyboard data is latched, the command byte enables
//!   IRQ1 and the keyboard interface is not disabled; IRQ12 while mouse data
//!   is latched and IRQ12 is enabled. As in QEMU, disabling the interface
//!   (0xAD) does not lower IRQ1 by itself, and re-enabling only latches new
//!   data when OBF is clear.
//! * Keyboard (MF2, scan code set 2): 0xFF -> FA AA, 0xF2 -> FA AB 41 (83
//!   without translation), 0xF5/0xF6 -> FA (reset; disable/enable scanning),
//!   0xF4 -> FA, 0xEE -> EE, 0xED/0xF3/0xF0/0xFC take a parameter and ACK
//!   both bytes (0xF0 0x00 reports the set), 0xFA -> FA, 0x00 -> FA, 0x05 ->
//!   FE, anything else -> FE (resend). Command replies go ahead of queued
//!   scan codes, and a new command discards unread replies of the previous.
//! * Mouse (standard PS/2, no movement source): answers every command it
//!   knows with FA (plus 3 status bytes for 0xE9, the device id for 0xF2, an
//!   empty packet for 0xEB); 0xFF -> FA AA 00; wrap mode echoes; unknown
//!   commands are ignored. The IntelliMouse sample-rate knock (200, 100, 80
//!   or 200, 200, 80) switches the id to 3 or 4 as in QEMU.
//!
//! Queues are bounded as in QEMU: 16 bytes of data per device (a byte or a
//! reply that does not fit is dropped) plus at most 3 keyboard command replies.
//!
//! Differences: there is no keyboard or mouse input yet (no display), so the
//! queues only ever hold controller and command replies; there is no A20 line
//! to drive (A20 never wraps under Xen); accesses wider than a byte are split
//! into byte accesses at `offset + i` and only offsets 0 and 4 are
//! registers (others read 0xFF and ignore writes).

use std::collections::VecDeque;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::bus::BusDevice;
use crate::hv::{Hypervisor, IrqLine, ShutdownReason};
use crate::ratelimit::RateLimit;
use crate::state::{DeviceState, StateError};

/// Device offset of port 0x60.
pub const DATA_OFFSET: u64 = 0;
/// Device offset of port 0x64.
pub const STATUS_COMMAND_OFFSET: u64 = 4;

// Controller commands (written to 0x64).
const CCMD_READ_MODE: u8 = 0x20;
const CCMD_WRITE_MODE: u8 = 0x60;
const CCMD_MOUSE_DISABLE: u8 = 0xa7;
const CCMD_MOUSE_ENABLE: u8 = 0xa8;
const CCMD_TEST_MOUSE: u8 = 0xa9;
const CCMD_SELF_TEST: u8 = 0xaa;
const CCMD_KBD_TEST: u8 = 0xab;
const CCMD_KBD_DISABLE: u8 = 0xad;
const CCMD_KBD_ENABLE: u8 = 0xae;
const CCMD_READ_INPORT: u8 = 0xc0;
const CCMD_READ_OUTPORT: u8 = 0xd0;
const CCMD_WRITE_OUTPORT: u8 = 0xd1;
const CCMD_WRITE_OBUF: u8 = 0xd2;
const CCMD_WRITE_AUX_OBUF: u8 = 0xd3;
const CCMD_WRITE_MOUSE: u8 = 0xd4;
const CCMD_DISABLE_A20: u8 = 0xdd;
const CCMD_ENABLE_A20: u8 = 0xdf;
const CCMD_PULSE_BITS_3_0: u8 = 0xf0;

// Status register bits.
const STAT_OBF: u8 = 0x01;
const STAT_SELFTEST: u8 = 0x04;
const STAT_CMD: u8 = 0x08;
const STAT_UNLOCKED: u8 = 0x10;
const STAT_MOUSE_OBF: u8 = 0x20;

// Command byte ("mode") bits.
const MODE_KBD_INT: u8 = 0x01;
const MODE_MOUSE_INT: u8 = 0x02;
const MODE_DISABLE_KBD: u8 = 0x10;
const MODE_DISABLE_MOUSE: u8 = 0x20;
const MODE_KCC: u8 = 0x40;

// Output port bits.
const OUT_RESET: u8 = 0x01;
const OUT_A20: u8 = 0x02;
const OUT_OBF: u8 = 0x10;
const OUT_MOUSE_OBF: u8 = 0x20;
/// Bits QEMU keeps set so 0xDD/0xDF writes do not look like changes.
const OUT_ONES: u8 = 0xcc;

// Keyboard commands and replies.
const KBD_CMD_SET_LEDS: u8 = 0xed;
const KBD_CMD_ECHO: u8 = 0xee;
const KBD_CMD_SCANCODE: u8 = 0xf0;
const KBD_CMD_GET_ID: u8 = 0xf2;
const KBD_CMD_SET_RATE: u8 = 0xf3;
const KBD_CMD_ENABLE: u8 = 0xf4;
const KBD_CMD_RESET_DISABLE: u8 = 0xf5;
const KBD_CMD_RESET_ENABLE: u8 = 0xf6;
const KBD_CMD_SET_TYPEMATIC: u8 = 0xfa;
const KBD_CMD_SET_MAKE_BREAK: u8 = 0xfc;
const KBD_CMD_RESET: u8 = 0xff;
const KBD_REPLY_POR: u8 = 0xaa;
const KBD_REPLY_ID: u8 = 0xab;
const KBD_REPLY_ACK: u8 = 0xfa;
const KBD_REPLY_RESEND: u8 = 0xfe;

// Mouse commands.
const AUX_SET_SCALE11: u8 = 0xe6;
const AUX_SET_SCALE21: u8 = 0xe7;
const AUX_SET_RES: u8 = 0xe8;
const AUX_GET_SCALE: u8 = 0xe9;
const AUX_SET_STREAM: u8 = 0xea;
const AUX_POLL: u8 = 0xeb;
const AUX_RESET_WRAP: u8 = 0xec;
const AUX_SET_WRAP: u8 = 0xee;
const AUX_SET_REMOTE: u8 = 0xf0;
const AUX_GET_TYPE: u8 = 0xf2;
const AUX_SET_SAMPLE: u8 = 0xf3;
const AUX_ENABLE_DEV: u8 = 0xf4;
const AUX_DISABLE_DEV: u8 = 0xf5;
const AUX_SET_DEFAULT: u8 = 0xf6;
const AUX_RESET: u8 = 0xff;
const AUX_ACK: u8 = 0xfa;

const MOUSE_STATUS_REMOTE: u8 = 0x40;
const MOUSE_STATUS_ENABLED: u8 = 0x20;
const MOUSE_STATUS_SCALE21: u8 = 0x10;

/// Data bytes a PS/2 device queues (QEMU's `PS2_QUEUE_SIZE`).
pub const PS2_QUEUE_SIZE: usize = 16;
/// Most keyboard command replies pending at once (a reset's FA AA, an
/// identify's FA AB xx).
const KBD_MAX_REPLIES: usize = 3;

/// Where the byte latched in the output buffer comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ObSource {
    None,
    Kbd,
    Mouse,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Ps2Keyboard {
    /// Replies to the last command, read before `queue`.
    replies: VecDeque<u8>,
    /// Scan codes and controller bytes.
    queue: VecDeque<u8>,
    /// The byte returned when the queue is empty.
    last: u8,
    /// A command waiting for its parameter byte.
    pending_cmd: Option<u8>,
    scan_enabled: bool,
    translate: bool,
    scancode_set: u8,
    leds: u8,
}

impl Ps2Keyboard {
    fn new() -> Self {
        Self {
            replies: VecDeque::new(),
            queue: VecDeque::new(),
            last: 0,
            pending_cmd: None,
            scan_enabled: true,
            translate: false,
            scancode_set: 2,
            leds: 0,
        }
    }

    fn has_data(&self) -> bool {
        !self.replies.is_empty() || !self.queue.is_empty()
    }

    fn len(&self) -> usize {
        self.replies.len().saturating_add(self.queue.len())
    }

    /// A byte that is not a command reply (QEMU's `ps2_queue`).
    fn queue_byte(&mut self, b: u8) {
        if self.len() < PS2_QUEUE_SIZE {
            self.queue.push_back(b);
        }
    }

    fn reply(&mut self, bytes: &[u8]) {
        self.replies.clear();
        self.replies.extend(bytes.iter().take(KBD_MAX_REPLIES));
    }

    fn read(&mut self) -> u8 {
        if let Some(b) = self.replies.pop_front().or_else(|| self.queue.pop_front()) {
            self.last = b;
        }
        self.last
    }

    fn reset_keyboard(&mut self) {
        self.scan_enabled = true;
        self.scancode_set = 2;
        self.replies.clear();
        self.queue.clear();
        self.leds = 0;
    }

    /// The set number as reported by 0xF0 0x00, through the 8042's set-2 to
    /// set-1 translation when it is on.
    fn reported_set(&self) -> u8 {
        if !self.translate {
            return self.scancode_set;
        }
        match self.scancode_set {
            1 => 0x43,
            2 => 0x41,
            _ => 0x3f,
        }
    }

    fn write(&mut self, val: u8) {
        // Unread replies to the previous command are discarded.
        self.replies.clear();
        match self.pending_cmd.take() {
            None => match val {
                0x00 | KBD_CMD_SET_TYPEMATIC => self.reply(&[KBD_REPLY_ACK]),
                KBD_CMD_GET_ID => {
                    let id = if self.translate { 0x41 } else { 0x83 };
                    self.reply(&[KBD_REPLY_ACK, KBD_REPLY_ID, id]);
                }
                KBD_CMD_ECHO => self.reply(&[KBD_CMD_ECHO]),
                KBD_CMD_ENABLE => {
                    self.scan_enabled = true;
                    self.reply(&[KBD_REPLY_ACK]);
                }
                KBD_CMD_SCANCODE | KBD_CMD_SET_LEDS | KBD_CMD_SET_RATE | KBD_CMD_SET_MAKE_BREAK => {
                    self.pending_cmd = Some(val);
                    self.reply(&[KBD_REPLY_ACK]);
                }
                KBD_CMD_RESET_DISABLE => {
                    self.reset_keyboard();
                    self.scan_enabled = false;
                    self.reply(&[KBD_REPLY_ACK]);
                }
                KBD_CMD_RESET_ENABLE => {
                    self.reset_keyboard();
                    self.reply(&[KBD_REPLY_ACK]);
                }
                KBD_CMD_RESET => {
                    self.reset_keyboard();
                    self.reply(&[KBD_REPLY_ACK, KBD_REPLY_POR]);
                }
                _ => self.reply(&[KBD_REPLY_RESEND]),
            },
            Some(KBD_CMD_SCANCODE) => match val {
                0 => {
                    let set = self.reported_set();
                    self.reply(&[KBD_REPLY_ACK, set]);
                }
                1..=3 => {
                    self.scancode_set = val;
                    self.reply(&[KBD_REPLY_ACK]);
                }
                _ => self.reply(&[KBD_REPLY_RESEND]),
            },
            Some(KBD_CMD_SET_LEDS) => {
                self.leds = val;
                self.reply(&[KBD_REPLY_ACK]);
            }
            // Typematic rate, make/break mode: accepted and ignored.
            Some(_) => self.reply(&[KBD_REPLY_ACK]),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Ps2Mouse {
    queue: VecDeque<u8>,
    last: u8,
    pending_cmd: Option<u8>,
    status: u8,
    resolution: u8,
    sample_rate: u8,
    wrap: bool,
    mouse_type: u8,
    detect_state: u8,
}

impl Ps2Mouse {
    fn new() -> Self {
        Self {
            queue: VecDeque::new(),
            last: 0,
            pending_cmd: None,
            status: 0,
            resolution: 0,
            sample_rate: 0,
            wrap: false,
            mouse_type: 0,
            detect_state: 0,
        }
    }

    fn has_data(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Queues all of `bytes` or, if they do not fit, none of them.
    fn queue(&mut self, bytes: &[u8]) {
        if PS2_QUEUE_SIZE.saturating_sub(self.queue.len()) >= bytes.len() {
            self.queue.extend(bytes);
        }
    }

    fn read(&mut self) -> u8 {
        if let Some(b) = self.queue.pop_front() {
            self.last = b;
        }
        self.last
    }

    fn write(&mut self, val: u8) {
        match self.pending_cmd.take() {
            Some(AUX_SET_SAMPLE) => {
                self.sample_rate = val;
                // The IntelliMouse / Explorer "knock".
                self.detect_state = match (self.detect_state, val) {
                    (0, 200) => 1,
                    (1, 100) => 2,
                    (1, 200) => 3,
                    (2, 80) => {
                        self.mouse_type = 3;
                        0
                    }
                    (3, 80) => {
                        self.mouse_type = 4;
                        0
                    }
                    _ => 0,
                };
                self.queue(&[AUX_ACK]);
            }
            Some(_) => {
                self.resolution = val;
                self.queue(&[AUX_ACK]);
            }
            None => self.command(val),
        }
    }

    fn command(&mut self, val: u8) {
        if self.wrap {
            if val == AUX_RESET_WRAP {
                self.wrap = false;
                self.queue(&[AUX_ACK]);
                return;
            } else if val != AUX_RESET {
                self.queue(&[val]);
                return;
            }
        }
        match val {
            AUX_SET_SCALE11 => {
                self.status &= !MOUSE_STATUS_SCALE21;
                self.queue(&[AUX_ACK]);
            }
            AUX_SET_SCALE21 => {
                self.status |= MOUSE_STATUS_SCALE21;
                self.queue(&[AUX_ACK]);
            }
            AUX_SET_STREAM => {
                self.status &= !MOUSE_STATUS_REMOTE;
                self.queue(&[AUX_ACK]);
            }
            AUX_SET_WRAP => {
                self.wrap = true;
                self.queue(&[AUX_ACK]);
            }
            AUX_SET_REMOTE => {
                self.status |= MOUSE_STATUS_REMOTE;
                self.queue(&[AUX_ACK]);
            }
            AUX_GET_TYPE => self.queue(&[AUX_ACK, self.mouse_type]),
            AUX_SET_RES | AUX_SET_SAMPLE => {
                self.pending_cmd = Some(val);
                self.queue(&[AUX_ACK]);
            }
            AUX_GET_SCALE => self.queue(&[AUX_ACK, self.status, self.resolution, self.sample_rate]),
            AUX_POLL => {
                self.queue(&[AUX_ACK]);
                self.send_empty_packet();
            }
            AUX_ENABLE_DEV => {
                self.status |= MOUSE_STATUS_ENABLED;
                self.queue(&[AUX_ACK]);
            }
            AUX_DISABLE_DEV => {
                self.status &= !MOUSE_STATUS_ENABLED;
                self.queue(&[AUX_ACK]);
            }
            AUX_SET_DEFAULT => {
                self.sample_rate = 100;
                self.resolution = 2;
                self.status = 0;
                self.queue(&[AUX_ACK]);
            }
            AUX_RESET => {
                self.sample_rate = 100;
                self.resolution = 2;
                self.status = 0;
                self.mouse_type = 0;
                self.queue.clear();
                self.queue(&[AUX_ACK, 0xaa, self.mouse_type]);
            }
            _ => {}
        }
    }

    /// A movement packet with no movement and no buttons (there is no
    /// pointer source), 3 or 4 bytes long depending on the mouse type.
    fn send_empty_packet(&mut self) {
        if self.mouse_type == 0 {
            self.queue(&[0x08, 0, 0]);
        } else {
            self.queue(&[0x08, 0, 0, 0]);
        }
    }
}

/// The guest-visible state of the controller and its two devices: what
/// [`I8042`] runs on, and its saved state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct I8042State {
    status: u8,
    mode: u8,
    outport: u8,
    write_cmd: u8,
    obsrc: ObSource,
    obdata: u8,
    kbd: Ps2Keyboard,
    mouse: Ps2Mouse,
    kbd_irq_level: bool,
    mouse_irq_level: bool,
}

/// The i8042 controller with its keyboard and mouse.
pub struct I8042 {
    st: I8042State,
    hv: Arc<dyn Hypervisor>,
    kbd_irq: Arc<dyn IrqLine>,
    mouse_irq: Arc<dyn IrqLine>,
    log: RateLimit,
}

impl I8042 {
    /// A controller in its reset state. `kbd_irq` is ISA IRQ 1 and
    /// `mouse_irq` ISA IRQ 12 on a PC; `hv` receives reset requests.
    pub fn new(hv: Arc<dyn Hypervisor>, kbd_irq: Arc<dyn IrqLine>, mouse_irq: Arc<dyn IrqLine>) -> Self {
        Self {
            st: I8042State {
                status: STAT_CMD | STAT_UNLOCKED,
                mode: MODE_KBD_INT | MODE_MOUSE_INT,
                outport: OUT_RESET | OUT_A20 | OUT_ONES,
                write_cmd: 0,
                obsrc: ObSource::None,
                obdata: 0,
                kbd: Ps2Keyboard::new(),
                mouse: Ps2Mouse::new(),
                kbd_irq_level: false,
                mouse_irq_level: false,
            },
            hv,
            kbd_irq,
            mouse_irq,
            log: RateLimit::per_second(),
        }
    }

    fn set_lines(&mut self, kbd: bool, mouse: bool) {
        if kbd != self.st.kbd_irq_level {
            self.st.kbd_irq_level = kbd;
            self.kbd_irq.set_level(kbd);
        }
        if mouse != self.st.mouse_irq_level {
            self.st.mouse_irq_level = mouse;
            self.mouse_irq.set_level(mouse);
        }
    }

    /// Drives IRQ1/IRQ12 from the latched output buffer and the command byte.
    fn update_irq_lines(&mut self) {
        let s = &self.st;
        let full = s.status & STAT_OBF != 0;
        let mouse_data = s.status & STAT_MOUSE_OBF != 0;
        let kbd = full && !mouse_data && s.mode & MODE_KBD_INT != 0 && s.mode & MODE_DISABLE_KBD == 0;
        let mouse = full && mouse_data && s.mode & MODE_MOUSE_INT != 0;
        self.set_lines(kbd, mouse);
    }

    fn clear_obf(&mut self) {
        self.st.status &= !(STAT_OBF | STAT_MOUSE_OBF);
        self.st.outport &= !(OUT_OBF | OUT_MOUSE_OBF);
    }

    /// Latches the next byte's source into OBF (`kbd_update_irq`).
    fn latch(&mut self) {
        self.clear_obf();
        if self.st.kbd.has_data() {
            self.st.status |= STAT_OBF;
            self.st.outport |= OUT_OBF;
            self.st.obsrc = ObSource::Kbd;
        } else if self.st.mouse.has_data() {
            self.st.status |= STAT_OBF | STAT_MOUSE_OBF;
            self.st.outport |= OUT_OBF | OUT_MOUSE_OBF;
            self.st.obsrc = ObSource::Mouse;
        }
        self.update_irq_lines();
    }

    /// Latches new data unless a byte is already waiting (`kbd_safe_update_irq`).
    fn safe_latch(&mut self) {
        if self.st.status & STAT_OBF != 0 {
            return;
        }
        if self.st.kbd.has_data() || self.st.mouse.has_data() {
            self.latch();
        }
    }

    fn reset_request(&mut self, why: &str) {
        tracing::info!(why, "i8042: guest requested a reset");
        self.hv.shutdown(ShutdownReason::Reboot);
    }

    fn write_outport(&mut self, val: u8) {
        self.st.outport = val;
        if val & OUT_RESET == 0 {
            self.reset_request("output port bit 0 cleared");
        }
    }

    fn write_command(&mut self, val: u8) {
        if val & CCMD_PULSE_BITS_3_0 == CCMD_PULSE_BITS_3_0 {
            // Pulse output-port bits 3-0 (a 0 bit is pulsed): only a pulse
            // of bit 0, the CPU reset line, does anything.
            if val & 1 == 0 {
                self.reset_request("pulse of output port bit 0");
            }
            return;
        }
        let cmd = val;
        match cmd {
            CCMD_READ_MODE => {
                let mode = self.st.mode;
                self.queue_kbd(mode);
            }
            CCMD_WRITE_MODE | CCMD_WRITE_OBUF | CCMD_WRITE_AUX_OBUF | CCMD_WRITE_MOUSE | CCMD_WRITE_OUTPORT => {
                self.st.write_cmd = cmd;
            }
            CCMD_MOUSE_DISABLE => self.st.mode |= MODE_DISABLE_MOUSE,
            CCMD_MOUSE_ENABLE => {
                self.st.mode &= !MODE_DISABLE_MOUSE;
                self.safe_latch();
            }
            CCMD_TEST_MOUSE | CCMD_KBD_TEST => self.queue_kbd(0x00),
            CCMD_SELF_TEST => {
                self.st.status |= STAT_SELFTEST;
                self.queue_kbd(0x55);
            }
            CCMD_KBD_DISABLE => self.st.mode |= MODE_DISABLE_KBD,
            CCMD_KBD_ENABLE => {
                self.st.mode &= !MODE_DISABLE_KBD;
                self.safe_latch();
            }
            CCMD_READ_INPORT => self.queue_kbd(0x80),
            CCMD_READ_OUTPORT => {
                let out = self.st.outport;
                self.queue_kbd(out);
            }
            CCMD_ENABLE_A20 => self.st.outport |= OUT_A20,
            CCMD_DISABLE_A20 => self.st.outport &= !OUT_A20,
            _ => {
                if let Some(suppressed) = self.log.check() {
                    tracing::debug!(
                        cmd = format_args!("{cmd:#04x}"),
                        suppressed,
                        "i8042: unsupported controller command"
                    );
                }
            }
        }
    }

    fn queue_kbd(&mut self, b: u8) {
        self.st.kbd.queue_byte(b);
        self.safe_latch();
    }

    fn queue_mouse(&mut self, b: u8) {
        self.st.mouse.queue(&[b]);
        self.safe_latch();
    }

    fn write_data(&mut self, val: u8) {
        let cmd = std::mem::take(&mut self.st.write_cmd);
        match cmd {
            0 => {
                self.st.kbd.write(val);
                // Talking to the keyboard re-enables its interface.
                self.st.mode &= !MODE_DISABLE_KBD;
                self.safe_latch();
            }
            CCMD_WRITE_MODE => {
                self.st.mode = val;
                self.st.kbd.translate = val & MODE_KCC != 0;
                self.update_irq_lines();
                self.safe_latch();
            }
            CCMD_WRITE_OBUF => self.queue_kbd(val),
            CCMD_WRITE_AUX_OBUF => self.queue_mouse(val),
            CCMD_WRITE_OUTPORT => self.write_outport(val),
            CCMD_WRITE_MOUSE => {
                self.st.mouse.write(val);
                self.st.mode &= !MODE_DISABLE_MOUSE;
                self.safe_latch();
            }
            _ => {}
        }
    }

    fn read_data(&mut self) -> u8 {
        if self.st.status & STAT_OBF != 0 {
            self.clear_obf();
            self.update_irq_lines();
            self.st.obdata = match self.st.obsrc {
                ObSource::Kbd => self.st.kbd.read(),
                ObSource::Mouse => self.st.mouse.read(),
                ObSource::None => self.st.obdata,
            };
            self.safe_latch();
        }
        self.st.obdata
    }

    fn read_reg(&mut self, offset: u64) -> Option<u8> {
        match offset {
            DATA_OFFSET => Some(self.read_data()),
            STATUS_COMMAND_OFFSET => Some(self.st.status),
            _ => None,
        }
    }

    fn write_reg(&mut self, offset: u64, val: u8) -> bool {
        match offset {
            DATA_OFFSET => self.write_data(val),
            STATUS_COMMAND_OFFSET => self.write_command(val),
            _ => return false,
        }
        true
    }

    fn bad_access(&mut self, offset: u64, len: usize, write: bool) {
        if let Some(suppressed) = self.log.check() {
            tracing::debug!(offset, len, write, suppressed, "i8042: access to a non-register offset");
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let mut bad = false;
        for (i, b) in (0u64..).zip(data.iter_mut()) {
            *b = match offset.checked_add(i).and_then(|o| self.read_reg(o)) {
                Some(v) => v,
                None => {
                    bad = true;
                    0xff
                }
            };
        }
        if bad {
            self.bad_access(offset, data.len(), false);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let mut bad = false;
        for (i, &b) in (0u64..).zip(data.iter()) {
            if !offset.checked_add(i).is_some_and(|o| self.write_reg(o, b)) {
                bad = true;
            }
        }
        if bad {
            self.bad_access(offset, data.len(), true);
        }
    }
}

impl DeviceState for I8042 {
    type State = I8042State;
    const KIND: &'static str = "i8042";
    const VERSION: u32 = 1;

    fn save(&self) -> I8042State {
        self.st.clone()
    }

    fn restore(&mut self, s: I8042State) -> Result<(), StateError> {
        let bad = |reason: &str| StateError::malformed(Self::KIND, reason);
        if s.kbd.len() > PS2_QUEUE_SIZE || s.kbd.replies.len() > KBD_MAX_REPLIES || s.mouse.queue.len() > PS2_QUEUE_SIZE
        {
            return Err(bad("a PS/2 queue is longer than the device allows"));
        }
        if !(1..=3).contains(&s.kbd.scancode_set) {
            return Err(bad("keyboard scan code set is not 1, 2 or 3"));
        }
        // The hypervisor saved the IRQ lines with the domain: adopt the
        // levels without driving them.
        self.st = s;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
