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
use crate::snapshot::{Snapshot, SnapshotError};

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

/// The guest-visible state, as saved by [`Snapshot`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct UartState {
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
    rx_fifo: Vec<u8>,
    thr_ipending: bool,
    timeout_ipending: bool,
    irq_level: bool,
}

/// A 16550A UART.
pub struct Uart {
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
    rx_trigger: usize,
    thr_ipending: bool,
    timeout_ipending: bool,
    irq_level: bool,
    irq: Arc<dyn IrqLine>,
    sink: Box<dyn SerialSink>,
    rx_notify: Option<RxNotify>,
    bad_access_log: RateLimit,
}

impl Uart {
    /// A UART in its reset state, raising `irq` and transmitting into `sink`.
    pub fn new(irq: Arc<dyn IrqLine>, sink: Box<dyn SerialSink>) -> Self {
        Self {
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
            rx_trigger: 1,
            thr_ipending: false,
            timeout_ipending: false,
            irq_level: false,
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
        if self.mcr & MCR_LOOP != 0 {
            0
        } else if self.fifo_enabled() {
            FIFO_LEN.saturating_sub(self.rx_fifo.len())
        } else if self.lsr & LSR_DR != 0 {
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
        self.divisor
    }

    fn fifo_enabled(&self) -> bool {
        self.fcr & FCR_FE != 0
    }

    fn loopback(&self) -> bool {
        self.mcr & MCR_LOOP != 0
    }

    fn set_irq(&mut self, level: bool) {
        if level != self.irq_level {
            self.irq_level = level;
            self.irq.set_level(level);
        }
    }

    /// The pending interrupt with the highest priority (`serial_update_irq`).
    fn pending_id(&self) -> u8 {
        if self.ier & IER_RLSI != 0 && self.lsr & LSR_INT_ANY != 0 {
            IIR_RLSI
        } else if self.ier & IER_RDI != 0 && self.timeout_ipending {
            IIR_CTI
        } else if self.ier & IER_RDI != 0
            && self.lsr & LSR_DR != 0
            && (!self.fifo_enabled() || self.rx_fifo.len() >= self.rx_trigger)
        {
            IIR_RDI
        } else if self.ier & IER_THRI != 0 && self.thr_ipending {
            IIR_THRI
        } else if self.ier & IER_MSI != 0 && self.msr & MSR_ANY_DELTA != 0 {
            IIR_MSI
        } else {
            IIR_NO_INT
        }
    }

    fn update_irq(&mut self) {
        let id = self.pending_id();
        self.iir = id | (self.iir & 0xf0);
        self.set_irq(id != IIR_NO_INT);
    }

    /// One received byte into RBR or the FIFO (`serial_receive1`, one byte).
    fn rx_put(&mut self, b: u8) {
        if self.fifo_enabled() {
            if self.rx_fifo.len() < FIFO_LEN {
                self.rx_fifo.push_back(b);
            } else {
                // Overruns never overwrite what the FIFO holds.
                self.lsr |= LSR_OE;
            }
        } else {
            if self.lsr & LSR_DR != 0 {
                self.lsr |= LSR_OE;
            }
            self.rbr = b;
        }
        self.lsr |= LSR_DR;
    }

    /// The character timeout, modelled as elapsed at once (see module docs).
    fn settle_rx_timeout(&mut self) {
        if self.fifo_enabled() && !self.rx_fifo.is_empty() && self.rx_fifo.len() < self.rx_trigger {
            self.timeout_ipending = true;
        }
    }

    fn notify_rx(&self) {
        if let Some(n) = &self.rx_notify {
            n();
        }
    }

    fn write_thr(&mut self, val: u8) {
        self.thr = val;
        self.thr_ipending = false;
        self.lsr &= !(LSR_THRE | LSR_TEMT);
        self.update_irq();
        // Instantaneous transmit: THR (or the one-byte TX FIFO) moves to the
        // shift register, THR is empty again, and the byte leaves.
        self.lsr |= LSR_THRE;
        if !self.thr_ipending {
            self.thr_ipending = true;
            self.update_irq();
        }
        if self.loopback() {
            self.rx_put(val);
            self.settle_rx_timeout();
            self.update_irq();
        } else {
            self.sink.write(&[val]);
        }
        self.lsr |= LSR_TEMT;
    }

    fn write_ier(&mut self, val: u8) {
        let changed = (self.ier ^ val) & 0x0f;
        self.ier = val & 0x0f;
        if changed & IER_THRI != 0 {
            // Turning ETBEI on while THR is empty raises THRE again, even if
            // an IIR read had cleared it (QEMU, Bochs; Windows relies on it).
            self.thr_ipending = self.ier & IER_THRI != 0 && self.lsr & LSR_THRE != 0;
        }
        if changed != 0 {
            self.update_irq();
        }
    }

    fn write_fcr(&mut self, val: u8) {
        let mut val = val;
        if (val ^ self.fcr) & FCR_FE != 0 {
            // Toggling FIFO enable flushes both FIFOs.
            val |= FCR_XFR | FCR_RFR;
        }
        let mut made_room = false;
        if val & FCR_RFR != 0 {
            self.lsr &= !(LSR_DR | LSR_BI);
            self.timeout_ipending = false;
            self.rx_fifo.clear();
            made_room = true;
        }
        if val & FCR_XFR != 0 {
            // The TX FIFO is always empty here (instant transmit).
            self.lsr |= LSR_THRE;
            self.thr_ipending = true;
        }
        self.set_fcr(val & FCR_STICKY);
        self.update_irq();
        if made_room {
            self.notify_rx();
        }
    }

    /// FCR setter shared with restore (`serial_write_fcr`).
    fn set_fcr(&mut self, val: u8) {
        self.fcr = val;
        if val & FCR_FE != 0 {
            self.iir |= IIR_FIFO_ENABLED;
            self.rx_trigger = match val & 0xc0 {
                0x00 => 1,
                0x40 => 4,
                0x80 => 8,
                _ => 14,
            };
        } else {
            self.iir &= !IIR_FIFO_ENABLED;
        }
    }

    fn write_mcr(&mut self, val: u8) {
        let was_loop = self.loopback();
        self.mcr = val & MCR_MASK;
        if was_loop && !self.loopback() {
            self.notify_rx();
        }
    }

    fn read_rbr(&mut self) -> u8 {
        let ret = if self.fifo_enabled() {
            let b = self.rx_fifo.pop_front().unwrap_or(0);
            if self.rx_fifo.is_empty() {
                self.lsr &= !(LSR_DR | LSR_BI);
            }
            self.timeout_ipending = false;
            self.settle_rx_timeout();
            b
        } else {
            self.lsr &= !(LSR_DR | LSR_BI);
            self.rbr
        };
        self.update_irq();
        if !self.loopback() {
            self.notify_rx();
        }
        ret
    }

    fn read_iir(&mut self) -> u8 {
        let ret = self.iir;
        if ret & IIR_ID_MASK == IIR_THRI {
            self.thr_ipending = false;
            self.update_irq();
        }
        ret
    }

    fn read_lsr(&mut self) -> u8 {
        let ret = self.lsr;
        if self.lsr & (LSR_BI | LSR_OE) != 0 {
            self.lsr &= !(LSR_BI | LSR_OE);
            self.update_irq();
        }
        ret
    }

    fn read_msr(&mut self) -> u8 {
        if self.loopback() {
            // The modem outputs are wired to the inputs; no delta bits.
            [(MCR_DTR, MSR_DSR), (MCR_RTS, MSR_CTS), (MCR_OUT1, MSR_RI), (MCR_OUT2, MSR_DCD)]
                .iter()
                .filter(|(out, _)| self.mcr & out != 0)
                .fold(0, |msr, (_, input)| msr | input)
        } else {
            let ret = self.msr;
            if self.msr & MSR_ANY_DELTA != 0 {
                self.msr &= 0xf0;
                self.update_irq();
            }
            ret
        }
    }

    fn read_reg(&mut self, reg: u8) -> u8 {
        let dlab = self.lcr & LCR_DLAB != 0;
        match reg {
            RBR_THR_DLL if dlab => self.divisor.to_le_bytes()[0],
            RBR_THR_DLL => self.read_rbr(),
            IER_DLM if dlab => self.divisor.to_le_bytes()[1],
            IER_DLM => self.ier,
            IIR_FCR => self.read_iir(),
            LCR => self.lcr,
            MCR => self.mcr,
            LSR => self.read_lsr(),
            MSR => self.read_msr(),
            _ => self.scr,
        }
    }

    fn write_reg(&mut self, reg: u8, val: u8) {
        let dlab = self.lcr & LCR_DLAB != 0;
        match reg {
            RBR_THR_DLL if dlab => self.divisor = (self.divisor & 0xff00) | u16::from(val),
            RBR_THR_DLL => self.write_thr(val),
            IER_DLM if dlab => self.divisor = (self.divisor & 0x00ff) | (u16::from(val) << 8),
            IER_DLM => self.write_ier(val),
            IIR_FCR => self.write_fcr(val),
            LCR => self.lcr = val,
            MCR => self.write_mcr(val),
            // LSR and MSR are read-only (QEMU ignores writes; so do we).
            LSR | MSR => {}
            _ => self.scr = val,
        }
    }

    fn bad_access(&mut self, offset: u64, len: usize, write: bool) {
        if let Some(suppressed) = self.bad_access_log.check() {
            tracing::debug!(offset, len, write, suppressed, "uart: access outside the 8 registers");
        }
    }

    fn state(&self) -> UartState {
        UartState {
            rbr: self.rbr,
            thr: self.thr,
            ier: self.ier,
            iir: self.iir,
            lcr: self.lcr,
            mcr: self.mcr,
            lsr: self.lsr,
            msr: self.msr,
            scr: self.scr,
            fcr: self.fcr,
            divisor: self.divisor,
            rx_fifo: self.rx_fifo.iter().copied().collect(),
            thr_ipending: self.thr_ipending,
            timeout_ipending: self.timeout_ipending,
            irq_level: self.irq_level,
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

impl Snapshot for Uart {
    fn snapshot(&self) -> serde_json::Value {
        // Serializing plain integers, bools and a Vec<u8> cannot fail.
        serde_json::to_value(self.state()).unwrap_or(serde_json::Value::Null)
    }

    fn restore(&mut self, state: &serde_json::Value) -> Result<(), SnapshotError> {
        let s: UartState = serde_json::from_value(state.clone()).map_err(|e| SnapshotError::malformed("uart", e))?;
        let bad = |reason: &str| SnapshotError::Malformed { device: "uart", reason: reason.to_string() };
        if s.rx_fifo.len() > FIFO_LEN {
            return Err(bad("receive FIFO holds more than 16 bytes"));
        }
        if s.fcr & FCR_FE == 0 && !s.rx_fifo.is_empty() {
            return Err(bad("receive FIFO holds data while FIFOs are disabled"));
        }
        if s.fcr & !FCR_STICKY != 0 || s.ier & 0xf0 != 0 || s.mcr & !MCR_MASK != 0 {
            return Err(bad("reserved bits set in FCR, IER or MCR"));
        }
        self.rbr = s.rbr;
        self.thr = s.thr;
        self.ier = s.ier;
        self.lcr = s.lcr;
        self.mcr = s.mcr;
        self.lsr = s.lsr;
        self.msr = s.msr;
        self.scr = s.scr;
        self.divisor = s.divisor;
        self.rx_fifo = s.rx_fifo.into_iter().collect();
        self.thr_ipending = s.thr_ipending;
        self.timeout_ipending = s.timeout_ipending;
        // The hypervisor saved the line's level with the domain; adopt it
        // without driving it, then recompute IIR from the restored state.
        self.irq_level = s.irq_level;
        self.iir = s.iir & 0xf0;
        self.set_fcr(s.fcr);
        self.iir = (self.iir & 0xf0) | self.pending_id();
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
        let mut s = u.snapshot();
        s["rx_fifo"] = serde_json::json!(vec![0u8; 17]);
        assert!(u.restore(&s).is_err());
        let mut s = u.snapshot();
        s["rx_fifo"] = serde_json::json!([1]);
        assert!(u.restore(&s).is_err(), "FIFO data with FIFOs off");
        let mut s = u.snapshot();
        s["lcr"] = serde_json::json!(300);
        assert!(u.restore(&s).is_err());
    }

    crate::snapshot_conformance!(
        uart_snapshot_conformance,
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
        b.restore(&a.snapshot()).unwrap();
        assert!(irq_b.history().is_empty(), "restore does not drive the line");
        for _ in 0..6 {
            assert_eq!(rd(&mut a, 2), rd(&mut b, 2));
            assert_eq!(rd(&mut a, 0), rd(&mut b, 0));
        }
    }
}
