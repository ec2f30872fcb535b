//! The address map of QEMU's `xenfv` PC: every fixed I/O port, port-range
//! length, ISA IRQ and PCI slot the machine places a device at, in one table.
//!
//! The devices in this folder never know where they sit: each decodes
//! offsets from its own window, and the machine (`src/machine/pc.rs`) puts
//! them at the addresses below. The shape follows propolis'
//! `lib/propolis/src/hw/ibmpc.rs` (named constants, one place).
//!
//! Where each fact comes from (QEMU 8.x/9.x `hw/i386/pc_piix.c` `pc_init1`
//! and `pc_xen_hvm_init`, `hw/i386/pc.c` `pc_basic_device_init` and
//! `pc_superio_init`, as summarised in `qemu-dm-facts.md` 4.8):
//!
//! | what | where | source |
//! |---|---|---|
//! | i440FX host bridge | 00:00.0, ports 0xCF8-0xCFF (mechanism #1) | `i440fx_init`; PCI Local Bus 3.0 3.2.2.3.2 |
//! | PIIX3 ISA bridge | 00:01.0 | `piix3_create` (devfn `PCI_DEVFN(1, 0)`) |
//! | PIIX reset control | port 0xCF9 | PIIX3 datasheet 2.4.1, `piix_reset_control` |
//! | PIIX4 PM | 00:01.3; APM 0xB2-0xB3; GPE0 0xAFE0-0xAFE3; SCI IRQ 9; SMBus base 0xB100 | `pc_init1` (`piix4_pm_init`, `ACPI_GPE0_BLK_ADDRESS_V1`), `hw/isa/apm.c` |
//! | ACPI CPU hotplug bitmap | ports 0xAF00-0xAF1F | `hw/acpi/piix4.c` (`PIIX4_CPU_HOTPLUG_IO_BASE`), `hw/acpi/cpu_hotplug.c`; Xen `XEN_ACPI_CPU_MAP` |
//! | PM I/O block | wherever the guest programs PMBA (hvmloader: 0xB000) | not in this table: guest-programmed |
//! | Xen platform device | 00:02.0; unplug ports 0x10-0x1F | `pc_xen_hvm_init` (first free slot), Xen `docs/misc/hvm-emulated-unplug.pandoc` |
//! | CMOS/RTC | ports 0x70-0x71 | `mc146818_rtc_init` (`RTC_ISA_BASE`) |
//! | i8042 | ports 0x60 and 0x64; IRQ 1 (keyboard), 12 (mouse) | `hw/input/pckbd.c` |
//! | port 92 | port 0x92 | `hw/i386/pc.c` `port92_init` |
//! | COM1-COM4 | 0x3F8/IRQ 4, 0x2F8/IRQ 3, 0x3E8/IRQ 4, 0x2E8/IRQ 3, 8 ports each | `hw/char/serial-isa.c` `isa_serial_io`/`isa_serial_irq` |
//! | fw_cfg | ports 0x510-0x511, DMA 0x514-0x51B | `FW_CFG_IO_BASE`, `xen_load_linux` (`qemu-dm-facts.md` 2.10) |
//!
//! Ports are `u16`, as they are on the ISA bus and in ioreqs; the [`crate::Bus`]
//! takes them as `u64` (`u64::from`).

use crate::sbdf::Sbdf;

// ---- PCI slots (bus 0) ----

/// i440FX host bridge (82441FX PMC).
pub const PCI_HOST_BRIDGE: Sbdf = Sbdf::new(0, 0);
/// PIIX3 PCI-to-ISA bridge (82371SB function 0).
pub const PCI_ISA_BRIDGE: Sbdf = Sbdf::new(1, 0);
/// PIIX4 power management (82371AB function 3). Absent with `-no-acpi`.
pub const PCI_PM: Sbdf = Sbdf::new(1, 3);
/// Xen platform device. Only on `xenfv`, not on `pc,accel=xen`.
pub const PCI_XEN_PLATFORM: Sbdf = Sbdf::new(2, 0);

// ---- The host bridge's configuration mechanism #1 ----

/// CONFIG_ADDRESS (0xCF8); CONFIG_DATA is at 0xCFC-0xCFF.
pub const PORT_PCI_CONFIG_ADDRESS: u16 = 0xcf8;
/// CONFIG_DATA.
pub const PORT_PCI_CONFIG_DATA: u16 = 0xcfc;
/// The whole 0xCF8-0xCFF block the bus serves itself.
pub const LEN_PCI_HOST: u16 = 8;
/// PIIX Reset Control Register, inside the host bridge's block.
pub const PORT_RESET_CONTROL: u16 = 0xcf9;

// ---- PIIX4 power management, fixed ports ----

/// APM control (the FADT's SMI_CMD); APM status follows at 0xB3.
pub const PORT_APM_CONTROL: u16 = 0xb2;
/// APM control and status.
pub const LEN_APM: u16 = 2;
/// GPE0 block (`ACPI_GPE0_BLK_ADDRESS_V1`): 2 status bytes, 2 enable bytes.
pub const PORT_GPE0: u16 = 0xafe0;
/// GPE0 block length.
pub const LEN_GPE0: u16 = 4;
/// The SCI, PIIX4's interrupt for ACPI events (the FADT's `SCI_INT`).
pub const IRQ_SCI: u8 = 9;
/// ACPI CPU hotplug presence bitmap (`PIIX4_CPU_HOTPLUG_IO_BASE`, Xen's
/// `XEN_ACPI_CPU_MAP`); not with `-no-acpi`.
pub const PORT_CPU_HOTPLUG: u16 = 0xaf00;
/// The bitmap window QEMU maps (`ACPI_GPE_PROC_LEN`; Xen's DSDT reads the
/// first 16 bytes).
pub const LEN_CPU_HOTPLUG: u16 = 32;
/// SMBus I/O base QEMU reports in PIIX4 config 0x90 (never decoded here).
pub const PORT_SMBUS: u16 = 0xb100;
/// Where hvmloader programs PMBA (`ACPI_PM1A_EVT_BLK_ADDRESS_V1`); the
/// guest chooses, the device follows. For reference and tests only.
pub const PORT_PM_BASE_HVMLOADER: u16 = 0xb000;

// ---- Xen platform device ----

/// The emulated-device unplug ports.
pub const PORT_XEN_PLATFORM_UNPLUG: u16 = 0x10;
/// Unplug port window length (QEMU claims 16 ports).
pub const LEN_XEN_PLATFORM_UNPLUG: u16 = 16;

// ---- ISA devices ----

/// CMOS index port; the data port follows at 0x71.
pub const PORT_CMOS: u16 = 0x70;
/// CMOS index and data.
pub const LEN_CMOS: u16 = 2;
/// i8042 data port.
pub const PORT_I8042_DATA: u16 = 0x60;
/// i8042 status (read) and command (write) port.
pub const PORT_I8042_COMMAND: u16 = 0x64;
/// Each i8042 port is registered on its own.
pub const LEN_I8042_PORT: u16 = 1;
/// Keyboard interrupt.
pub const IRQ_KEYBOARD: u8 = 1;
/// PS/2 mouse interrupt.
pub const IRQ_MOUSE: u8 = 12;
/// System control port A: fast A20 and fast reset.
pub const PORT_FAST_A20: u16 = 0x92;
/// Port 92 is one byte.
pub const LEN_FAST_A20: u16 = 1;

/// COM1 base port.
pub const PORT_COM1: u16 = 0x3f8;
/// COM2 base port.
pub const PORT_COM2: u16 = 0x2f8;
/// COM3 base port.
pub const PORT_COM3: u16 = 0x3e8;
/// COM4 base port.
pub const PORT_COM4: u16 = 0x2e8;
/// COM1 interrupt.
pub const IRQ_COM1: u8 = 4;
/// COM2 interrupt.
pub const IRQ_COM2: u8 = 3;
/// COM3 interrupt (shared with COM1).
pub const IRQ_COM3: u8 = 4;
/// COM4 interrupt (shared with COM2).
pub const IRQ_COM4: u8 = 3;
/// A 16550's eight registers.
pub const LEN_COM: u16 = 8;
/// Base port and ISA IRQ of COM1..COM4, in `-serial` order.
pub const COM_PORTS: [(u16, u8); 4] =
    [(PORT_COM1, IRQ_COM1), (PORT_COM2, IRQ_COM2), (PORT_COM3, IRQ_COM3), (PORT_COM4, IRQ_COM4)];

// ---- fw_cfg (only with -kernel) ----

/// fw_cfg selector (16-bit write) and data (0x511).
pub const PORT_FW_CFG: u16 = 0x510;
/// Selector and data.
pub const LEN_FW_CFG: u16 = 2;
/// fw_cfg DMA address register, big-endian high half then low half.
pub const PORT_FW_CFG_DMA: u16 = 0x514;
/// The DMA address register.
pub const LEN_FW_CFG_DMA: u16 = 8;

#[cfg(test)]
mod tests {
    use super::*;

    /// Every fixed window of the table, as (name, start, len).
    fn windows() -> Vec<(&'static str, u16, u16)> {
        let mut v = vec![
            ("xen-platform unplug", PORT_XEN_PLATFORM_UNPLUG, LEN_XEN_PLATFORM_UNPLUG),
            ("i8042 data", PORT_I8042_DATA, LEN_I8042_PORT),
            ("i8042 command", PORT_I8042_COMMAND, LEN_I8042_PORT),
            ("cmos", PORT_CMOS, LEN_CMOS),
            ("port92", PORT_FAST_A20, LEN_FAST_A20),
            ("apm", PORT_APM_CONTROL, LEN_APM),
            ("fw_cfg", PORT_FW_CFG, LEN_FW_CFG),
            ("fw_cfg-dma", PORT_FW_CFG_DMA, LEN_FW_CFG_DMA),
            ("pci-host", PORT_PCI_CONFIG_ADDRESS, LEN_PCI_HOST),
            ("gpe0", PORT_GPE0, LEN_GPE0),
            ("cpu-hotplug", PORT_CPU_HOTPLUG, LEN_CPU_HOTPLUG),
        ];
        v.extend(COM_PORTS.iter().map(|&(p, _)| ("com", p, LEN_COM)));
        v
    }

    #[test]
    fn fixed_windows_do_not_overlap() {
        let mut w = windows();
        w.sort_by_key(|&(_, s, _)| s);
        for pair in w.windows(2) {
            let (a, s, l) = pair[0];
            let (b, t, _) = pair[1];
            assert!(u32::from(s) + u32::from(l) <= u32::from(t), "{a} at {s:#x}+{l} overlaps {b} at {t:#x}");
        }
    }

    #[test]
    fn ports_inside_the_host_bridge_block() {
        let end = PORT_PCI_CONFIG_ADDRESS + LEN_PCI_HOST;
        assert!((PORT_PCI_CONFIG_ADDRESS..end).contains(&PORT_RESET_CONTROL));
        assert_eq!(PORT_PCI_CONFIG_DATA, PORT_PCI_CONFIG_ADDRESS + 4);
    }

    #[test]
    fn lengths_match_the_devices_register_windows() {
        assert_eq!(u64::from(LEN_COM), crate::pc::uart::UART_REGS);
        assert_eq!(u64::from(PORT_I8042_COMMAND - PORT_I8042_DATA), crate::pc::i8042::STATUS_COMMAND_OFFSET);
        assert_eq!(u64::from(LEN_CMOS), crate::pc::cmos::OFS_DATA + 1);
        assert_eq!(u64::from(LEN_CPU_HOTPLUG), crate::pc::cpu_hotplug::MAP_LEN);
        const { assert!(crate::pc::cpu_hotplug::XEN_MAP_LEN <= crate::pc::cpu_hotplug::MAP_LEN) };
        // The PM block QEMU/hvmloader use is 64-byte aligned, as PMBA requires.
        assert_eq!(u32::from(PORT_PM_BASE_HVMLOADER) & !crate::pc::piix4_pm::PMBA_MASK, 0);
    }

    #[test]
    fn the_qemu_xen_pci_topology() {
        assert_eq!(
            [PCI_HOST_BRIDGE, PCI_ISA_BRIDGE, PCI_PM, PCI_XEN_PLATFORM].map(|s| s.to_string()),
            ["0000:00:00.0", "0000:00:01.0", "0000:00:01.3", "0000:00:02.0"]
        );
    }
}
