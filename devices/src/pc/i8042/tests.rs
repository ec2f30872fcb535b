//! Tests of the i8042 through its bus interface: guest-visible bytes,
//! IRQ levels and reset requests.

use super::*;
use crate::hv::{FakeHypervisor, FakeIrq, HvCall};

struct Rig {
    dev: I8042,
    hv: Arc<FakeHypervisor>,
    irq1: Arc<FakeIrq>,
    irq12: Arc<FakeIrq>,
}

fn rig() -> Rig {
    let hv = Arc::new(FakeHypervisor::new());
    let irq1 = Arc::new(FakeIrq::new());
    let irq12 = Arc::new(FakeIrq::new());
    Rig { dev: I8042::new(hv.clone(), irq1.clone(), irq12.clone()), hv, irq1, irq12 }
}

impl Rig {
    fn status(&mut self) -> u8 {
        let mut b = [0u8];
        self.dev.read(4, &mut b);
        b[0]
    }
    fn data(&mut self) -> u8 {
        let mut b = [0u8];
        self.dev.read(0, &mut b);
        b[0]
    }
    fn cmd(&mut self, v: u8) {
        self.dev.write(4, &[v]);
    }
    fn put(&mut self, v: u8) {
        self.dev.write(0, &[v]);
    }
    /// Reads every byte while OBF is set, like `i8042_flush`.
    fn drain(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        while self.status() & STAT_OBF != 0 {
            out.push(self.data());
            assert!(out.len() <= 64, "output buffer never empties");
        }
        out
    }
    fn kbd(&mut self, v: u8) -> Vec<u8> {
        self.put(v);
        self.drain()
    }
    fn aux(&mut self, v: u8) -> Vec<u8> {
        self.cmd(0xd4);
        self.put(v);
        self.drain()
    }
}

#[test]
fn reset_state_matches_qemu() {
    let mut r = rig();
    assert_eq!(r.status(), 0x18);
    r.cmd(0x20);
    assert_eq!(r.status(), 0x19, "OBF");
    assert_eq!(r.data(), 0x03, "command byte");
    r.cmd(0xd0);
    assert_eq!(r.data(), 0xcf, "output port");
    r.cmd(0xc0);
    assert_eq!(r.data(), 0x80, "input port");
    assert_eq!(r.status(), 0x18);
    assert_eq!(r.data(), 0x80, "OBF clear: last byte again");
    assert!(r.hv.calls().is_empty());
}

#[test]
fn linux_probe_sequence() {
    let mut r = rig();
    // i8042_controller_check + flush.
    assert_ne!(r.status(), 0xff);
    assert!(r.drain().is_empty());
    // Self test.
    r.cmd(0xaa);
    assert_eq!(r.drain(), vec![0x55]);
    assert_eq!(r.status() & STAT_SELFTEST, STAT_SELFTEST);
    // CTR read/modify/write: disable both ports and IRQs during probe.
    r.cmd(0x20);
    let ctr = r.drain()[0];
    assert_eq!(r.irq1.history(), vec![true, false, true, false], "IRQ1 is on after reset");
    r.cmd(0x60);
    r.put((ctr & !0x03) | 0x30);
    r.cmd(0x20);
    assert_eq!(r.drain(), vec![0x30]);
    // AUX loopback via 0xD3 shows MOUSE_OBF.
    r.cmd(0xd3);
    r.put(0x5a);
    assert_eq!(r.status() & 0x21, 0x21);
    assert_eq!(r.data(), 0x5a);
    // 0xA8 clears the AUX disable bit, 0xA7 sets it.
    r.cmd(0xa8);
    r.cmd(0x20);
    assert_eq!(r.drain(), vec![0x10]);
    r.cmd(0xa7);
    r.cmd(0x20);
    assert_eq!(r.drain(), vec![0x30]);
    // Interface tests.
    r.cmd(0xa9);
    assert_eq!(r.drain(), vec![0x00]);
    r.cmd(0xab);
    assert_eq!(r.drain(), vec![0x00]);
    assert_eq!(r.irq1.history().len(), 4, "IRQ1 disabled in the CTR");
    assert!(r.irq12.history().is_empty(), "IRQ12 disabled in the CTR");
    // atkbd: reset, identify, set LEDs, scan code set, enable.
    r.cmd(0x60);
    r.put(0x47); // XLATE | SYS | IRQ1 | IRQ12
    assert_eq!(r.kbd(0xff), vec![0xfa, 0xaa]);
    assert_eq!(r.kbd(0xf2), vec![0xfa, 0xab, 0x41]);
    assert_eq!(r.kbd(0xed), vec![0xfa]);
    assert_eq!(r.kbd(0x02), vec![0xfa]);
    assert_eq!(r.kbd(0xf0), vec![0xfa]);
    assert_eq!(r.kbd(0x00), vec![0xfa, 0x41], "set 2 through translation");
    assert_eq!(r.kbd(0xf5), vec![0xfa]);
    assert_eq!(r.kbd(0xf4), vec![0xfa]);
    assert_eq!(r.kbd(0xee), vec![0xee]);
    assert_eq!(r.kbd(0x42), vec![0xfe], "unknown command: resend");
    // Each reply byte raised IRQ1 (an edge per byte), and it ends low.
    let h = r.irq1.history();
    assert_eq!(h.iter().filter(|&&l| l).count(), 2 + 14);
    assert!(!r.irq1.level());
    assert!(r.irq12.history().is_empty());
}

#[test]
fn keyboard_without_translation_and_scancode_sets() {
    let mut r = rig();
    assert_eq!(r.kbd(0xf2), vec![0xfa, 0xab, 0x83]);
    assert_eq!(r.kbd(0xf0), vec![0xfa]);
    assert_eq!(r.kbd(0x03), vec![0xfa]);
    assert_eq!(r.kbd(0xf0), vec![0xfa]);
    assert_eq!(r.kbd(0x00), vec![0xfa, 0x03]);
    assert_eq!(r.kbd(0xf0), vec![0xfa]);
    assert_eq!(r.kbd(0x07), vec![0xfe]);
    assert_eq!(r.kbd(0xf3), vec![0xfa]);
    assert_eq!(r.kbd(0x20), vec![0xfa], "typematic rate parameter");
    // A new command discards unread replies of the previous one.
    r.put(0xff);
    assert_eq!(r.data(), 0xfa);
    r.put(0xf4);
    assert_eq!(r.drain(), vec![0xfa]);
}

#[test]
fn irq1_follows_obf_and_command_byte() {
    let mut r = rig();
    r.cmd(0xd2);
    r.put(0x11);
    assert_eq!(r.irq1.history(), vec![true]);
    assert_eq!(r.data(), 0x11);
    assert_eq!(r.irq1.history(), vec![true, false]);
    // Two bytes: low then high again between them.
    r.cmd(0xd2);
    r.put(0x01);
    r.cmd(0xd2);
    r.put(0x02);
    assert_eq!(r.data(), 0x01);
    assert_eq!(r.data(), 0x02);
    assert_eq!(r.irq1.history(), vec![true, false, true, false, true, false]);
    // Interrupts off in the command byte: OBF but no IRQ.
    r.cmd(0x60);
    r.put(0x00);
    r.cmd(0xd2);
    r.put(0x33);
    assert_eq!(r.status() & 1, 1);
    assert_eq!(r.irq1.history().len(), 6);
    // Turning IRQ1 on with data latched raises it at once.
    r.cmd(0x60);
    r.put(0x01);
    assert!(r.irq1.level());
    assert_eq!(r.data(), 0x33);
    assert!(!r.irq1.level());
}

#[test]
fn mouse_present_but_idle() {
    let mut r = rig();
    assert_eq!(r.aux(0xff), vec![0xfa, 0xaa, 0x00]);
    assert_eq!(r.aux(0xf2), vec![0xfa, 0x00]);
    assert_eq!(r.aux(0xf6), vec![0xfa]);
    assert_eq!(r.aux(0xe9), vec![0xfa, 0x00, 0x02, 100]);
    assert_eq!(r.aux(0xf4), vec![0xfa]);
    assert_eq!(r.aux(0xe9), vec![0xfa, 0x20, 0x02, 100]);
    assert_eq!(r.aux(0xeb), vec![0xfa, 0x08, 0x00, 0x00]);
    // IntelliMouse knock: 200, 100, 80 -> id 3.
    for rate in [200u8, 100, 80] {
        assert_eq!(r.aux(0xf3), vec![0xfa]);
        assert_eq!(r.aux(rate), vec![0xfa]);
    }
    assert_eq!(r.aux(0xf2), vec![0xfa, 0x03]);
    // Wrap mode echoes until reset-wrap.
    assert_eq!(r.aux(0xee), vec![0xfa]);
    assert_eq!(r.aux(0x12), vec![0x12]);
    assert_eq!(r.aux(0xec), vec![0xfa]);
    assert_eq!(r.aux(0x12), Vec::<u8>::new(), "unknown command ignored");
    // Mouse data comes with MOUSE_OBF and IRQ12.
    r.cmd(0xd4);
    r.put(0xf2);
    assert_eq!(r.status() & 0x21, 0x21);
    assert!(r.irq12.level());
    assert!(!r.irq1.level());
    r.drain();
    assert!(!r.irq12.level());
}

#[test]
fn keyboard_data_wins_over_mouse_data() {
    let mut r = rig();
    r.cmd(0xd3);
    r.put(0xaa);
    r.cmd(0xd2);
    r.put(0xbb);
    // The mouse byte was latched first; it is read first.
    assert_eq!(r.status() & 0x21, 0x21);
    assert_eq!(r.data(), 0xaa);
    assert_eq!(r.status() & 0x21, 0x01);
    assert_eq!(r.data(), 0xbb);
    // Once the latched byte is read, pending keyboard data goes before
    // older mouse data.
    r.cmd(0xd3);
    r.put(0x01);
    r.cmd(0xd3);
    r.put(0x02);
    r.cmd(0xd2);
    r.put(0x03);
    assert_eq!(r.drain(), vec![0x01, 0x03, 0x02]);
}

#[test]
fn queues_are_bounded() {
    let mut r = rig();
    for i in 0..100u8 {
        r.cmd(0xd2);
        r.put(i);
        r.cmd(0xd3);
        r.put(i);
    }
    let got = r.drain();
    assert_eq!(got.len(), 2 * PS2_QUEUE_SIZE);
    assert_eq!(&got[..PS2_QUEUE_SIZE], &(0..16).collect::<Vec<u8>>()[..]);
}

#[test]
fn reset_paths_call_shutdown_reboot() {
    let reboot = HvCall::Shutdown { reason: ShutdownReason::Reboot };
    let mut r = rig();
    r.cmd(0xfe);
    assert_eq!(r.hv.take(), vec![reboot.clone()]);
    for c in (0xf0..=0xffu8).filter(|c| c & 1 == 0) {
        r.cmd(c);
        assert_eq!(r.hv.take(), vec![reboot.clone()], "pulse {c:#x}");
    }
    for c in (0xf0..=0xffu8).filter(|c| c & 1 == 1) {
        r.cmd(c);
    }
    assert!(r.hv.take().is_empty(), "odd pulses leave bit 0 alone");
    // Output port: A20 toggles are harmless, bit 0 clear resets.
    r.cmd(0xd1);
    r.put(0xdd);
    r.cmd(0xd1);
    r.put(0xdf);
    assert!(r.hv.take().is_empty());
    r.cmd(0xdd);
    r.cmd(0xd0);
    assert_eq!(r.data(), 0xdd);
    r.cmd(0xdf);
    r.cmd(0xd0);
    // Bit 4 mirrors OBF, which the previous data read cleared.
    assert_eq!(r.data(), 0xcf);
    r.cmd(0xd1);
    r.put(0xde);
    assert_eq!(r.hv.take(), vec![reboot]);
}

#[test]
fn hostile_accesses() {
    let mut r = rig();
    let mut w = [0u8; 8];
    r.dev.read(1, &mut w);
    assert_eq!(w, [0xff, 0xff, 0xff, 0x18, 0xff, 0xff, 0xff, 0xff]);
    r.dev.read(u64::MAX, &mut w);
    assert_eq!(w, [0xff; 8]);
    r.dev.write(u64::MAX - 2, &[0xfe; 8]);
    r.dev.write(2, &[0x00, 0x00, 0xaa]); // only offset 4 is a register
    assert_eq!(r.drain(), vec![0x55]);
    r.dev.read(0, &mut []);
    // Every controller command and every data byte, no panic.
    for c in 0..=255u8 {
        for d in [0u8, 0xff, 0xf0, 0xf3, 0xe8] {
            r.cmd(c);
            r.put(d);
            r.cmd(0xd4);
            r.put(d);
        }
    }
    r.drain();
}

crate::state_conformance!(
    i8042_state_conformance,
    I8042::new(Arc::new(FakeHypervisor::new()), Arc::new(FakeIrq::new()), Arc::new(FakeIrq::new())),
    |d: &mut I8042| {
        d.write(4, &[0x60]);
        d.write(0, &[0x45]);
        d.write(0, &[0xf2]);
        d.write(4, &[0xd4]);
        d.write(0, &[0xf4]);
        d.write(4, &[0xd3]);
    }
);

#[test]
fn restore_refuses_oversized_queues() {
    let r = rig();
    let mut s = r.dev.save();
    s.mouse.queue = vec![0u8; 17].into();
    let mut d = rig().dev;
    let e = d.restore(s).unwrap_err();
    assert!(e.to_string().contains("i8042") && e.to_string().contains("queue"), "{e}");
    let mut s = r.dev.save();
    s.kbd.scancode_set = 9;
    assert!(d.restore(s).is_err());
    let mut s = r.dev.save();
    s.kbd.replies = vec![0u8; 4].into();
    assert!(d.restore(s).is_err());
    assert_eq!(d.save(), r.dev.save(), "refused restores changed nothing");
}
