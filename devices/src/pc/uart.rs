//! A 16550A UART as QEMU's `hw/char/serial.c` presents it to a PC guest.
//!
//! Register map (offset from the base port, 0x3F8 for COM1):
//!
//! | off | read                     | write                    |
//! |-----|--------------------------|--------------------------|
//! | 0   | RBR (DLAB=1: DLL)        | THR (DLAB=1: DLL)        |
//! | 1   | IER (DLAB=1: DLM)        | IER (DLAB=1: DLM)        |
//! | 2   | IIR                      | FCR                      |
//! | 3   | LCR                      | LCR                      |
//! | 4   | MCR                      | MCR                      |
//! | 5   | LSR                      | (ignored)                |
//! | 6   | MSR                      | (ignored)                |
//! | 7   | SCR                      | SCR                      |
//!
//! Reference: the National Semiconductor PC16550D datasheet for the register
//! layout, and QEMU's `serial.c` for every behaviour a guest can observe:
//! reset values (IIR 0x01, LSR 0x60, MSR 0xB0, MCR 0x08, divisor 12), the
//! interrupt priority order of `serial_update_irq` (receiver line status,
//! character timeout, received data at the trigger level, THR empty, modem
//! status), the THRE interrupt being re-armed by a THR write once the byte is
//! sent and by IER.ETBEI going from 0 to 1 while THR is empty, an IIR read
//! that shows THRE clearing it, FCR rules (changing FIFO enable flushes both
//! FIFOs; trigger levels 1/4/8/14), receive overruns that never overwrite the
//! FIFO, and loopback (TX goes to RX; MSR reads the MCR outputs: RTS->CTS,
//! DTR->DSR, OUT1->RI, OUT2->DCD, with no delta bits, as in QEMU).
//!
//! Where we differ from QEMU, on purpose:
//!
//! * **No timers.** The device must behave the same when an ioreq trace is
//!   replayed, so nothing depends on wall-clock or virtual time:
//!   * Transmission is instantaneous. QEMU moves THR to its shift register and
//!     writes to the chardev right away too, but may retry later when the
//!     backend is full; our backend never refuses (the [`SerialSink`] buffers
//!     or drops), so LSR.THRE and LSR.TEMT are set again before the THR write
//!     returns, and the THRE interrupt is raised at that point.
//!   * The character-timeout indication (IIR 0xCC), which QEMU raises four
//!     character times after the last received byte, is treated as having
//!     elapsed at once: whenever the FIFO is left holding data below the
//!     trigger level at the end of an input batch or of an RBR read, the
//!     timeout is pending. A guest therefore always learns about input below
//!     the trigger level without any delay.
//! * **Input flow control.** [`Uart::receive`] only takes what fits (16 bytes
//!   with FIFOs, 1 without, none in loopback, where a real 16550 disconnects
//!   its serial input), so the backend keeps the rest and nothing is lost;
//!   external input never causes an overrun. QEMU instead offers the ITL and
//!   then one byte at a time, which fills the FIFO the same way.
//! * **Access widths.** QEMU's region only implements 1-byte accesses and its
//!   memory core splits wider ones into consecutive byte accesses, lowest
//!   address first. We do the same: each byte `i` of an access is a 1-byte
//!   access at `offset + i`. Bytes that fall outside the eight registers read
//!   0xFF and are not written (the bus never routes such accesses here; a
//!   rate-limited debug line records them if someone else does).
//! * IRQ line: we call [`IrqLine::set_level`] only when the level changes.
//!   QEMU drives the line at every update; Xen ignores repeats anyway, so the
//!   guest sees the same edges (including the low-then-high pulse a THR write
//!   produces while a THRE interrupt is already pending).

use std::collections::VecDeque;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::bus::BusDevice;
use crate::hv::IrqLine;
use crate::ratelimit::RateLimit;
use crate::state::{DeviceState, StateError};

/// Where transmitted bytes go. Called with the device lock held, on the
/// ioreq path: it must never block (buffer or drop instead).
pub trait SerialSink: Send {
    /// Takes bytes the guest transmitted.
    fn write(&mut self, data: &[u8]);
}

/// A sink that discards everything (`-serial null`, and tests).
#[derive(Debug, Default, Clone, Copy)]
pub struct NullSink;

impl SerialSink for NullSink {
    fn write(&mut self, _data: &[u8]) {}
}

/// Called after a guest access that may have made room in the receive path
/// (an RBR read, a FIFO reset, leaving loopback). Runs with the device lock
/// held: it must only signal, never lock the UART or block.
pub type RxNotify = Arc<dyn Fn() + Send + Sync>;

/// Register offsets.
pub const RBR_THR_DLL: u8 = 0;
pub const IER_DLM: u8 = 1;
pub const IIR_FCR: u8 = 2;
pub const LCR: u8 = 3;
pub const MCR: u8 = 4;
pub const LSR: u8 = 5;
pub const MSR: u8 = 6;
pub const SCR: u8 = 7;

/// Number of registers (the size of the port window).
pub const UART_REGS: u64 = 8;
/// Depth of the receive FIFO.
pub const FIFO_LEN: usize = 16;

const LCR_DLAB: u8 = 0x80;

const IER_RDI: u8 = 0x01;
const IER_THRI: u8 = 0x02;
const IER_RLSI: u8 = 0x04;
const IER_MSI: u8 = 0x08;

const IIR_NO_INT: u8 = 0x01;
const IIR_ID_MASK: u8 = 0x06;
const IIR_MSI: u8 = 0x00;
const IIR_THRI: u8 = 0x02;
const IIR_RDI: u8 = 0x04;
const IIR_RLSI: u8 = 0x06;
const IIR_CTI: u8 = 0x0c;
const IIR_FIFO_ENABLED: u8 = 0xc0;

const FCR_FE: u8 = 0x01;
const FCR_RFR: u8 = 0x02;
const FCR_XFR: u8 = 0x04;
/// FCR bits that stick: FIFO enable, DMA mode, trigger level.
const FCR_STICKY: u8 = 0xc9;

const MCR_DTR: u8 = 0x01;
const MCR_RTS: u8 = 0x02;
const MCR_OUT1: u8 = 0x04;
const MCR_OUT2: u8 = 0x08;
const MCR_LOOP: u8 = 0x10;
const MCR_MASK: u8 = 0x1f;

const LSR_DR: u8 = 0x01;
const LSR_OE: u8 = 0x02;
const LSR_BI: u8 = 0x10;
const LSR_THRE: u8 = 0x20;
const LSR_TEMT: u8 = 0x40;
/// LSR bits that raise a receiver-line-status interrupt (OE, PE, FE, BI).
const LSR_INT_ANY: u8 = 0x1e;

const MSR_CTS: u8 = 0x10;
const MSR_DSR: u8 = 0x20;
const MSR_RI: u8 = 0x40;
const MSR_DCD: u8 = 0x80;
const MSR_ANY_DELTA: u8 = 0x0f;

/// 115200 / 12 = 9600 baud after reset, as QEMU.
const DEFAULT_DIVISOR: u16 = 0x0c;

/// The guest-visible registers of a [`Uart`]: its saved state. The receive
/// trigger level is derived from `fcr`; IIR is recomputed on restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UartState {
    rbr: u8,
    thr: u8,
    ier: u8,
    iir: u8,
    lcr: u8,
    mcr: u8,
    lsr: u8,
    msr: u8,
    scr: u8,
    fcr: u8,
    divisor: u16,
    rx_fifo: VecDeque<u8>,
    thr_ipending: bool,
    timeout_ipending: bool,
    /// The IRQ line level last driven.
    irq_level: bool,
}

/// A 16550A UART.
pub struct Uart {
    st: UartState,
    /// Receive FIFO trigger level, from `st.fcr`.
    rx_trigger: usize,
    irq: Arc<dyn IrqLine>,
    sink: Box<dyn SerialSink>,
    rx_notify: Option<RxNotify>,
    bad_access_log: RateLimit,
}

impl Uart {
    /// A UART in its reset state, raising `irq` and transmitting into `sink`.
    pub fn new(irq: Arc<dyn IrqLine>, sink: Box<dyn SerialSink>) -> Self {
        Self {
            st: UartState {
                rbr: 0,
                thr: 0,
                ier: 0,
                iir: IIR_NO_INT,
                lcr: 0,
                mcr: MCR_OUT2,
                lsr: LSR_TEMT | LSR_THRE,
                msr: MSR_DCD | MSR_DSR | MSR_CTS,
                scr: 0,
                fcr: 0,
                divisor: DEFAULT_DIVISOR,
                rx_fifo: VecDeque::with_capacity(FIFO_LEN),
                thr_ipending: false,
                timeout_ipending: false,
                irq_level: false,
            },
            rx_trigger: 1,
            irq,
            sink,
            rx_notify: None,
            bad_access_log: RateLimit::per_second(),
        }
    }

    /// Installs the callback run when the guest makes room for input.
    pub fn set_rx_notify(&mut self, notify: RxNotify) {
        self.rx_notify = Some(notify);
    }

    /// Replaces the output sink (for instance when the backend is reopened).
    pub fn set_sink(&mut self, sink: Box<dyn SerialSink>) {
        self.sink = sink;
    }

    /// How many bytes [`Self::receive`] would accept now.
    pub fn rx_space(&self) -> usize {
        if self.st.mcr & MCR_LOOP != 0 {
            0
        } else if self.fifo_enabled() {
            FIFO_LEN.saturating_sub(self.st.rx_fifo.len())
        } else if self.st.lsr & LSR_DR != 0 {
            0
        } else {
            1
        }
    }

    /// Input from the backend: puts as many bytes of `data` as fit into the
    /// receiver and returns how many it took. The caller keeps the rest and
    /// retries after the guest drains the receiver (see [`Self::set_rx_notify`]).
    pub fn receive(&mut self, data: &[u8]) -> usize {
        let n = self.rx_space().min(data.len());
        let Some(accepted) = data.get(..n) else { return 0 };
        if accepted.is_empty() {
            return 0;
        }
        for &b in accepted {
            self.rx_put(b);
        }
        self.settle_rx_timeout();
        self.update_irq();
        n
    }

    /// The current divisor latch (baud = 115200 / divisor).
    pub fn divisor(&self) -> u16 {
        self.st.divisor
    }

    fn fifo_enabled(&self) -> bool {
        self.st.fcr & FCR_FE != 0
    }

    fn loopback(&self) -> bool {
        self.st.mcr & MCR_LOOP != 0
    }

    fn set_irq(&mut self, level: bool) {
        if level != self.st.irq_level {
            self.st.irq_level = level;
            self.irq.set_level(level);
        }
    }

    /// The pending interrupt with the highest priority (`serial_update_irq`).
    fn pending_id(&self) -> u8 {
        if self.st.ier & IER_RLSI != 0 && self.st.lsr & LSR_INT_ANY != 0 {
            IIR_RLSI
        } else if self.st.ier & IER_RDI != 0 && self.st.timeout_ipending {
            IIR_CTI
        } else if self.st.ier & IER_RDI != 0
            && self.st.lsr & LSR_DR != 0
            && (!self.fifo_enabled() || self.st.rx_fifo.len() >= self.rx_trigger)
        {
            IIR_RDI
        } else if self.st.ier & IER_THRI != 0 && self.st.thr_ipending {
            IIR_THRI
        } else if self.st.ier & IER_MSI != 0 && self.st.msr & MSR_ANY_DELTA != 0 {
            IIR_MSI
        } else {
            IIR_NO_INT
        }
    }

    fn update_irq(&mut self) {
        let id = self.pending_id();
        self.st.iir = id | (self.st.iir & 0xf0);
        self.set_irq(id != IIR_NO_INT);
    }

    /// One received byte into RBR or the FIFO (`serial_receive1`, one byte).
    fn rx_put(&mut self, b: u8) {
        if self.fifo_enabled() {
            if self.st.rx_fifo.len() < FIFO_LEN {
                self.st.rx_fifo.push_back(b);
            } else {
                // Overruns never overwrite what the FIFO holds.
                self.st.lsr |= LSR_OE;
            }
        } else {
            if self.st.lsr & LSR_DR != 0 {
                self.st.lsr |= LSR_OE;
            }
            self.st.rbr = b;
        }
        self.st.lsr |= LSR_DR;
    }

    /// The character timeout, modelled as elapsed at once (see module docs).
    fn settle_rx_timeout(&mut self) {
        if self.fifo_enabled() && !self.st.rx_fifo.is_empty() && self.st.rx_fifo.len() < self.rx_trigger {
            self.st.timeout_ipending = true;
        }
    }

    fn notify_rx(&self) {
        if let Some(n) = &self.rx_notify {
            n();
        }
    }

    fn write_thr(&mut self, val: u8) {
        self.st.thr = val;
        self.st.thr_ipending = false;
        self.st.lsr &= !(LSR_THRE | LSR_TEMT);
        self.update_irq();
        // Instantaneous transmit: THR (or the one-byte TX FIFO) moves to the
        // shift register, THR is empty again, and the byte leaves.
        self.st.lsr |= LSR_THRE;
        if !self.st.thr_ipending {
            self.st.thr_ipending = true;
            self.update_irq();
        }
        if self.loopback() {
            self.rx_put(val);
            self.settle_rx_timeout();
            self.update_irq();
        } else {
            self.sink.write(&[val]);
        }
        self.st.lsr |= LSR_TEMT;
    }

    fn write_ier(&mut self, val: u8) {
        let changed = (self.st.ier ^ val) & 0x0f;
        self.st.ier = val & 0x0f;
        if changed & IER_THRI != 0 {
            // Turning ETBEI on while THR is empty raises THRE again, even if
            // an IIR read had cleared it (QEMU, Bochs; Windows relies on it).
            self.st.thr_ipending = self.st.ier & IER_THRI != 0 && self.st.lsr & LSR_THRE != 0;
        }
        if changed != 0 {
            self.update_irq();
        }
    }

    fn write_fcr(&mut self, val: u8) {
        let mut val = val;
        if (val ^ self.st.fcr) & FCR_FE != 0 {
            // Toggling FIFO enable flushes both FIFOs.
            val |= FCR_XFR | FCR_RFR;
        }
        let mut made_room = false;
        if val & FCR_RFR != 0 {
            self.st.lsr &= !(LSR_DR | LSR_BI);
            self.st.timeout_ipending = false;
            self.st.rx_fifo.clear();
            made_room = true;
        }
        if val & FCR_XFR != 0 {
            // The TX FIFO is always empty here (instant transmit).
            self.st.lsr |= LSR_THRE;
            self.st.thr_ipending = true;
        }
        self.set_fcr(val & FCR_STICKY);
        self.update_irq();
        if made_room {
            self.notify_rx();
        }
    }

    /// FCR setter shared with restore (`serial_write_fcr`).
    fn set_fcr(&mut self, val: u8) {
        self.st.fcr = val;
        if val & FCR_FE != 0 {
            self.st.iir |= IIR_FIFO_ENABLED;
            self.rx_trigger = match val & 0xc0 {
                0x00 => 1,
                0x40 => 4,
                0x80 => 8,
                _ => 14,
            };
        } else {
            self.st.iir &= !IIR_FIFO_ENABLED;
        }
    }

    fn write_mcr(&mut self, val: u8) {
        let was_loop = self.loopback();
        self.st.mcr = val & MCR_MASK;
        if was_loop && !self.loopback() {
            self.notify_rx();
        }
    }

    fn read_rbr(&mut self) -> u8 {
        let ret = if self.fifo_enabled() {
            let b = self.st.rx_fifo.pop_front().unwrap_or(0);
            if self.st.rx_fifo.is_empty() {
                self.st.lsr &= !(LSR_DR | LSR_BI);
            }
            self.st.timeout_ipending = false;
            self.settle_rx_timeout();
            b
        } else {
            self.st.lsr &= !(LSR_DR | LSR_BI);
            self.st.rbr
        };
        self.update_irq();
        if !self.loopback() {
            self.notify_rx();
        }
        ret
    }

    fn read_iir(&mut self) -> u8 {
        let ret = self.st.iir;
        if ret & IIR_ID_MASK == IIR_THRI {
            self.st.thr_ipending = false;
            self.update_irq();
        }
        ret
    }

    fn read_lsr(&mut self) -> u8 {
        let ret = self.st.lsr;
        if self.st.lsr & (LSR_BI | LSR_OE) != 0 {
            self.st.lsr &= !(LSR_BI | LSR_OE);
            self.update_irq();
        }
        ret
    }

    fn read_msr(&mut self) -> u8 {
        if self.loopback() {
            // The modem outputs are wired to the inputs; no delta bits.
            [(MCR_DTR, MSR_DSR), (MCR_RTS, MSR_CTS), (MCR_OUT1, MSR_RI), (MCR_OUT2, MSR_DCD)]
                .iter()
                .filter(|(out, _)| self.st.mcr & out != 0)
                .fold(0, |msr, (_, input)| msr | input)
        } else {
            let ret = self.st.msr;
            if self.st.msr & MSR_ANY_DELTA != 0 {
                self.st.msr &= 0xf0;
                self.update_irq();
            }
            ret
        }
    }

    fn read_reg(&mut self, reg: u8) -> u8 {
        let dlab = self.st.lcr & LCR_DLAB != 0;
        match reg {
            RBR_THR_DLL if dlab => self.st.divisor.to_le_bytes()[0],
            RBR_THR_DLL => self.read_rbr(),
            IER_DLM if dlab => self.st.divisor.to_le_bytes()[1],
            IER_DLM => self.st.ier,
            IIR_FCR => self.read_iir(),
            LCR => self.st.lcr,
            MCR => self.st.mcr,
            LSR => self.read_lsr(),
            MSR => self.read_msr(),
            _ => self.st.scr,
        }
    }

    fn write_reg(&mut self, reg: u8, val: u8) {
        let dlab = self.st.lcr & LCR_DLAB != 0;
        match reg {
            RBR_THR_DLL if dlab => self.st.divisor = (self.st.divisor & 0xff00) | u16::from(val),
            RBR_THR_DLL => self.write_thr(val),
            IER_DLM if dlab => self.st.divisor = (self.st.divisor & 0x00ff) | (u16::from(val) << 8),
            IER_DLM => self.write_ier(val),
            IIR_FCR => self.write_fcr(val),
            LCR => self.st.lcr = val,
            MCR => self.write_mcr(val),
            // LSR and MSR are read-only (QEMU ignores writes; so do we).
            LSR | MSR => {}
            _ => self.st.scr = val,
        }
    }

    fn bad_access(&mut self, offset: u64, len: usize, write: bool) {
        if let Some(suppressed) = self.bad_access_log.check() {
            tracing::debug!(offset, len, write, suppressed, "uart: access outside the 8 registers");
        }
    }
}

/// Splits an access into byte accesses at `offset + i` (see module docs).
fn byte_offsets(offset: u64, len: usize) -> impl Iterator<Item = Option<u8>> {
    (0..len).map(move |i| {
        u64::try_from(i)
            .ok()
            .and_then(|i| offset.checked_add(i))
            .filter(|&o| o < UART_REGS)
            .and_then(|o| u8::try_from(o).ok())
    })
}

impl BusDevice for Uart {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let mut bad = false;
        let len = data.len();
        for (b, reg) in data.iter_mut().zip(byte_offsets(offset, len)) {
            *b = match reg {
                Some(r) => self.read_reg(r),
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
        for (&b, reg) in data.iter().zip(byte_offsets(offset, data.len())) {
            match reg {
                Some(r) => self.write_reg(r, b),
                None => bad = true,
            }
        }
        if bad {
            self.bad_access(offset, data.len(), true);
        }
    }
}

impl DeviceState for Uart {
    type State = UartState;
    const KIND: &'static str = "uart-16550";
    const VERSION: u32 = 1;

    fn save(&self) -> UartState {
        self.st.clone()
    }

    fn restore(&mut self, state: UartState) -> Result<(), StateError> {
        let bad = |reason: &str| StateError::malformed(Self::KIND, reason);
        if state.rx_fifo.len() > FIFO_LEN {
            return Err(bad("receive FIFO holds more than 16 bytes"));
        }
        if state.fcr & FCR_FE == 0 && !state.rx_fifo.is_empty() {
            return Err(bad("receive FIFO holds data while FIFOs are disabled"));
        }
        if state.fcr & !FCR_STICKY != 0 || state.ier & 0xf0 != 0 || state.mcr & !MCR_MASK != 0 {
            return Err(bad("reserved bits set in FCR, IER or MCR"));
        }
        // The hypervisor saved the line's level with the domain: adopt it
        // without driving it, then recompute IIR from the restored state.
        let (iir, fcr) = (state.iir, state.fcr);
        self.st = state;
        self.st.iir = iir & 0xf0;
        self.set_fcr(fcr);
        self.st.iir = (self.st.iir & 0xf0) | self.pending_id();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hv::FakeIrq;
    use std::sync::Mutex;

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);
    impl SerialSink for Capture {
        fn write(&mut self, data: &[u8]) {
            self.0.lock().unwrap().extend_from_slice(data);
        }
    }
    impl Capture {
        fn bytes(&self) -> Vec<u8> {
            self.0.lock().unwrap().clone()
        }
    }

    fn uart() -> (Uart, Arc<FakeIrq>, Capture) {
        let irq = Arc::new(FakeIrq::new());
        let out = Capture::default();
        (Uart::new(irq.clone(), Box::new(out.clone())), irq, out)
    }

    fn rd(u: &mut Uart, off: u64) -> u8 {
        let mut b = [0u8];
        u.read(off, &mut b);
        b[0]
    }

    fn wr(u: &mut Uart, off: u64, v: u8) {
        u.write(off, &[v]);
    }

    #[test]
    fn reset_values_match_qemu() {
        let (mut u, irq, _) = uart();
        let regs: Vec<u8> = (0..8).map(|o| rd(&mut u, o)).collect();
        // RBR, IER, IIR, LCR, MCR (OUT2), LSR (THRE|TEMT), MSR (DCD|DSR|CTS), SCR
        assert_eq!(regs, vec![0x00, 0x00, 0x01, 0x00, 0x08, 0x60, 0xb0, 0x00]);
        wr(&mut u, 3, 0x80);
        assert_eq!((rd(&mut u, 0), rd(&mut u, 1)), (0x0c, 0x00), "divisor 12 = 9600 baud");
        assert!(irq.history().is_empty());
    }

    #[test]
    fn thr_writes_go_to_the_sink_one_per_byte() {
        let (mut u, irq, out) = uart();
        for &c in b"hi\n" {
            assert_ne!(rd(&mut u, 5) & 0x20, 0, "THRE before each write");
            wr(&mut u, 0, c);
        }
        assert_eq!(out.bytes(), b"hi\n");
        assert_eq!(rd(&mut u, 5), 0x60, "THRE and TEMT again at once");
        assert!(irq.history().is_empty(), "no interrupt with IER = 0");
    }

    #[test]
    fn thre_interrupt_golden_sequence() {
        let (mut u, irq, out) = uart();
        // Enabling ETBEI with THR empty raises THRE at once.
        wr(&mut u, 1, 0x02);
        assert_eq!(irq.history(), vec![true]);
        assert_eq!(rd(&mut u, 2), 0x02, "IIR = THRE pending");
        // Reading IIR that showed THRE clears it.
        assert_eq!(irq.history(), vec![true, false]);
        assert_eq!(rd(&mut u, 2), 0x01);
        // A THR write re-arms THRE once the byte is sent.
        wr(&mut u, 0, b'A');
        assert_eq!(irq.history(), vec![true, false, true]);
        assert_eq!(rd(&mut u, 2), 0x02);
        assert_eq!(rd(&mut u, 2), 0x01);
        // A THR write while THRE is still pending pulses the line (an edge).
        wr(&mut u, 0, b'B');
        wr(&mut u, 0, b'C');
        assert_eq!(irq.history(), vec![true, false, true, false, true, false, true]);
        assert_eq!(out.bytes(), b"ABC");
        // Rewriting IER with ETBEI unchanged does not re-arm; toggling does.
        assert_eq!(rd(&mut u, 2), 0x02);
        wr(&mut u, 1, 0x02);
        assert_eq!(rd(&mut u, 2), 0x01);
        wr(&mut u, 1, 0x00);
        wr(&mut u, 1, 0x02);
        assert_eq!(rd(&mut u, 2), 0x02);
        assert!(!irq.level(), "IIR read lowered the line");
    }

    #[test]
    fn receive_without_fifo_and_lsr() {
        let (mut u, irq, _) = uart();
        assert_eq!(u.rx_space(), 1);
        assert_eq!(u.receive(b"xy"), 1, "one byte without FIFOs");
        assert_eq!(rd(&mut u, 5), 0x61, "DR set");
        assert_eq!(u.receive(b"y"), 0, "RBR full: backend keeps it");
        assert!(irq.history().is_empty(), "IER = 0");
        wr(&mut u, 1, 0x01);
        assert_eq!(irq.history(), vec![true]);
        assert_eq!(rd(&mut u, 2), 0x04, "IIR = RX data");
        assert_eq!(rd(&mut u, 0), b'x');
        assert_eq!(rd(&mut u, 5), 0x60);
        assert_eq!(rd(&mut u, 2), 0x01);
        assert_eq!(irq.history(), vec![true, false]);
    }

    #[test]
    fn fifo_trigger_levels_and_timeout() {
        for (fcr, itl) in [(0x01u8, 1usize), (0x41, 4), (0x81, 8), (0xc1, 14)] {
            let (mut u, _, _) = uart();
            wr(&mut u, 2, fcr);
            assert_eq!(rd(&mut u, 2), 0xc1, "FIFOs enabled, no interrupt");
            wr(&mut u, 1, 0x01);
            // Feed below the trigger level one byte at a time: the timeout
            // indication (CTI) is pending at once.
            for i in 0..itl - 1 {
                assert_eq!(u.receive(&[i as u8]), 1);
                assert_eq!(rd(&mut u, 2), 0xcc, "CTI below trigger level {itl}");
            }
            let (mut v, irq, _) = uart();
            wr(&mut v, 2, fcr);
            wr(&mut v, 1, 0x01);
            let data: Vec<u8> = (0..itl as u8).collect();
            assert_eq!(v.receive(&data), itl);
            assert_eq!(rd(&mut v, 2), 0xc4, "RDI exactly at trigger level {itl}");
            assert!(irq.level());
        }
    }

    #[test]
    fn fifo_accepts_sixteen_then_flow_controls() {
        let (mut u, irq, _) = uart();
        let notified = Arc::new(Mutex::new(0u32));
        let n2 = notified.clone();
        wr(&mut u, 2, 0x81); // FIFO, trigger 8
        u.set_rx_notify(Arc::new(move || *n2.lock().unwrap() += 1));
        wr(&mut u, 1, 0x05); // RDI + RLSI
        let data: Vec<u8> = (0..40).collect();
        assert_eq!(u.receive(&data), 16);
        assert_eq!(u.rx_space(), 0);
        assert_eq!(u.receive(&data[16..]), 0);
        assert_eq!(rd(&mut u, 5) & 0x02, 0, "no overrun from flow-controlled input");
        assert_eq!(rd(&mut u, 2), 0xc4);
        let got: Vec<u8> = (0..16).map(|_| rd(&mut u, 0)).collect();
        assert_eq!(got, (0..16).collect::<Vec<u8>>());
        assert_eq!(rd(&mut u, 5), 0x60);
        assert_eq!(rd(&mut u, 2), 0xc1);
        assert!(!irq.level());
        assert_eq!(*notified.lock().unwrap(), 16, "one notification per RBR read");
        wr(&mut u, 2, 0x83);
        assert_eq!(*notified.lock().unwrap(), 17, "RX FIFO reset notifies too");
        assert_eq!(rd(&mut u, 0), 0, "empty FIFO reads 0");
    }

    #[test]
    fn fcr_resets_and_fifo_toggle_flush() {
        let (mut u, _, _) = uart();
        wr(&mut u, 2, 0x01);
        u.receive(b"abc");
        wr(&mut u, 2, 0x03); // RX FIFO reset
        assert_eq!(rd(&mut u, 5), 0x60);
        u.receive(b"abc");
        wr(&mut u, 2, 0x00); // FIFO off flushes
        assert_eq!(rd(&mut u, 5), 0x60);
        assert_eq!(rd(&mut u, 2), 0x01);
        assert_eq!(u.rx_space(), 1);
        // TX FIFO reset with ETBEI on raises THRE.
        wr(&mut u, 1, 0x02);
        assert_eq!(rd(&mut u, 2), 0x02);
        wr(&mut u, 2, 0x05);
        assert_eq!(rd(&mut u, 2), 0xc2);
    }

    #[test]
    fn loopback_echoes_and_maps_modem_lines() {
        let (mut u, _, out) = uart();
        wr(&mut u, 4, 0x10); // loop, all outputs off
        assert_eq!(rd(&mut u, 6), 0x00);
        wr(&mut u, 4, 0x1f); // loop + DTR RTS OUT1 OUT2
        assert_eq!(rd(&mut u, 6), 0xf0);
        wr(&mut u, 4, 0x1a); // Linux's autoconfig probe: loop|OUT2|RTS
        assert_eq!(rd(&mut u, 6), 0x90);
        wr(&mut u, 4, 0x11); // DTR -> DSR
        assert_eq!(rd(&mut u, 6), 0x20);
        wr(&mut u, 4, 0x14); // OUT1 -> RI
        assert_eq!(rd(&mut u, 6), 0x40);
        assert_eq!(u.rx_space(), 0, "serial input disconnected in loopback");
        wr(&mut u, 0, 0x5a);
        assert_eq!(rd(&mut u, 5), 0x61);
        assert_eq!(rd(&mut u, 0), 0x5a);
        assert!(out.bytes().is_empty(), "loopback never reaches the backend");
        // Overrun without FIFO in loopback.
        wr(&mut u, 0, 1);
        wr(&mut u, 0, 2);
        assert_eq!(rd(&mut u, 5), 0x63, "OE|DR");
        assert_eq!(rd(&mut u, 5), 0x61, "OE clears on read");
        assert_eq!(rd(&mut u, 0), 2);
        wr(&mut u, 4, 0x08);
        assert_eq!(rd(&mut u, 6), 0xb0, "out of loopback: the idle lines");
        assert_eq!(rd(&mut u, 4), 0x08);
    }

    #[test]
    fn line_status_interrupt_has_priority() {
        let (mut u, irq, _) = uart();
        wr(&mut u, 4, 0x10);
        wr(&mut u, 1, 0x07); // RLSI, THRI, RDI
        assert_eq!(rd(&mut u, 2), 0x02);
        wr(&mut u, 0, 1);
        wr(&mut u, 0, 2); // overrun
        assert_eq!(rd(&mut u, 2), 0x06, "RLSI over RDI over THRI");
        assert_eq!(rd(&mut u, 5), 0x63);
        assert_eq!(rd(&mut u, 2), 0x04, "then RX data");
        rd(&mut u, 0);
        assert_eq!(rd(&mut u, 2), 0x02, "then THRE");
        assert_eq!(rd(&mut u, 2), 0x01);
        assert!(!irq.level());
    }

    #[test]
    fn dlab_aliases_divisor_latch() {
        let (mut u, _, out) = uart();
        wr(&mut u, 1, 0x03);
        wr(&mut u, 3, 0x83);
        wr(&mut u, 0, 0x01);
        wr(&mut u, 1, 0x00);
        assert_eq!((rd(&mut u, 0), rd(&mut u, 1)), (0x01, 0x00));
        assert_eq!(u.divisor(), 1);
        assert!(out.bytes().is_empty(), "DLL write is not a THR write");
        wr(&mut u, 3, 0x03);
        assert_eq!(rd(&mut u, 1), 0x03, "IER untouched by DLM");
        assert_eq!(rd(&mut u, 3), 0x03);
        wr(&mut u, 7, 0xa5);
        assert_eq!(rd(&mut u, 7), 0xa5);
        wr(&mut u, 5, 0x00);
        wr(&mut u, 6, 0x00);
        assert_eq!((rd(&mut u, 5), rd(&mut u, 6)), (0x60, 0xb0), "LSR/MSR read-only");
    }

    #[test]
    fn wide_and_out_of_range_accesses_never_panic() {
        let (mut u, _, out) = uart();
        let mut w = [0u8; 2];
        u.read(6, &mut w);
        assert_eq!(w, [0xb0, 0x00], "MSR then SCR");
        let mut d = [0u8; 4];
        u.read(6, &mut d);
        assert_eq!(d, [0xb0, 0x00, 0xff, 0xff]);
        let mut q = [0u8; 8];
        u.read(u64::MAX, &mut q);
        assert_eq!(q, [0xff; 8]);
        u.write(u64::MAX - 1, &[1, 2, 3]);
        u.write(8, &[1]);
        u.write(0, &[b'a', 0x00]); // THR then IER
        assert_eq!(out.bytes(), b"a");
        u.read(3, &mut []);
        u.write(3, &[]);
        // A 2-byte write at 7 sets SCR only.
        u.write(7, &[0x42, 0x99]);
        assert_eq!(rd(&mut u, 7), 0x42);
    }

    #[test]
    fn restore_refuses_inconsistent_state() {
        let (mut u, _, _) = uart();
        let before = u.save();
        let mut s = u.save();
        s.fcr = FCR_FE;
        s.rx_fifo = vec![0u8; 17].into();
        assert!(u.restore(s).is_err());
        let mut s = u.save();
        s.rx_fifo = vec![1].into();
        assert!(u.restore(s).is_err(), "FIFO data with FIFOs off");
        let mut s = u.save();
        s.mcr = 0x20;
        let e = u.restore(s).unwrap_err();
        assert!(e.to_string().contains("uart-16550") && e.to_string().contains("reserved bits"), "{e}");
        assert_eq!(u.save(), before);
        // Out-of-range values in the payload are refused by the decoder.
        let mut json = serde_json::to_value(u.save()).unwrap();
        json["lcr"] = serde_json::json!(300);
        let payload = serde_json::to_vec(&json).unwrap();
        assert!(crate::state::AnyDeviceState::restore_payload(&mut u, 1, &payload).is_err());
    }

    crate::state_conformance!(
        uart_state_conformance,
        Uart::new(Arc::new(FakeIrq::new()), Box::new(NullSink)),
        |u: &mut Uart| {
            u.write(2, &[0x81]);
            u.write(1, &[0x03]);
            u.write(7, &[0x5a]);
            u.receive(b"abc");
            u.write(3, &[0x83]);
            u.write(0, &[0x01]);
            u.write(3, &[0x03]);
        }
    );

    #[test]
    fn restored_uart_behaves_the_same() {
        let (mut a, _, _) = uart();
        wr(&mut a, 2, 0x41);
        wr(&mut a, 1, 0x01);
        a.receive(b"hello");
        let (mut b, irq_b, _) = uart();
        b.restore(a.save()).unwrap();
        assert!(irq_b.history().is_empty(), "restore does not drive the line");
        for _ in 0..6 {
            assert_eq!(rd(&mut a, 2), rd(&mut b, 2));
            assert_eq!(rd(&mut a, 0), rd(&mut b, 0));
        }
    }
}
