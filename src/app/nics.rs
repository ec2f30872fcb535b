//! The start-up steps of libxl's emulated NICs (`-netdev type=tap` +
//! `-device MODEL`, `xen-toolstack.md` 3.1-3.2): the taps are created in
//! phase 1, as root and before any Xen handle (so a failure has nothing to
//! undo, and the privilege drop and the sandbox come long after), and handed
//! to the Xen platform device once the machine exists, which closes them
//! when the guest unplugs emulated NICs ([`crate::net`]).
//!
//! At run time this adds only `close` (on the unplug, on the ioreq thread),
//! which every thread's seccomp allowlist has.

use anyhow::{bail, Result};
use tracing::info;
use xendm_devices::sync::lock;

use crate::cli::Config;
use crate::machine::Machine;
use crate::net::{NicTaps, TapFactory};

/// Creates the tap of every NIC `cfg` names, with one log line each.
/// `None` when there is none.
///
/// # Errors
/// The first tap that cannot be created, saying what to do
/// ([`crate::net::TapError`]).
pub fn create_taps(cfg: &Config, factory: &dyn TapFactory) -> Result<Option<NicTaps>> {
    if cfg.nics.is_empty() {
        return Ok(None);
    }
    let taps = NicTaps::create(factory, cfg.nics.iter().map(|n| n.ifname.as_str()))?;
    for n in &cfg.nics {
        info!(
            "NIC {} ({}{}): not emulated; the guest reaches the network through its PV driver (netfront). \
             Created tap {} for libxl's hotplug script (bridge {}); it is closed when the guest unplugs \
             emulated NICs, and stays without traffic if it never does",
            n.device_id.as_deref().unwrap_or(&n.netdev_id),
            n.model,
            n.mac.as_deref().map(|m| format!(", mac {m}")).unwrap_or_default(),
            n.ifname,
            n.bridge.as_deref().unwrap_or("as libxl configures"),
        );
    }
    Ok(Some(taps))
}

/// Hands the taps to the machine's Xen platform device as its unplug hook.
///
/// # Errors
/// If the machine has no platform device (phase 1 refuses NICs then, so
/// this does not happen).
pub fn attach_taps(machine: &Machine, taps: Option<NicTaps>) -> Result<()> {
    let Some(taps) = taps else { return Ok(()) };
    let Some(platform) = &machine.devices.xen_platform else {
        bail!("emulated NICs need the Xen platform device (tap(s) {})", taps.names().join(", "));
    };
    lock(platform).set_unplug_hook(Box::new(taps));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::run_config as config;
    use crate::machine::spec::MachineSpec;
    use crate::net::fake::FakeTaps;

    fn nic_args(kernel: &str) -> Vec<String> {
        [
            "-xen-domid",
            "4",
            "-kernel",
            kernel,
            "-device",
            "rtl8139,id=nic0,netdev=net0,mac=00:16:3e:51:36:66",
            "-netdev",
            "type=tap,id=net0,ifname=vif4.0-emu,br=xenbr0,script=no,downscript=no",
        ]
        .map(String::from)
        .to_vec()
    }

    /// The lifecycle end to end, with the fake: created at start-up with
    /// libxl's name, held by the platform device, closed by the guest's NIC
    /// unplug on port 0x10 and not by a disk-only one.
    #[test]
    fn the_tap_is_created_held_by_the_platform_device_and_closed_on_the_nic_unplug() {
        let k = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/boot/mini-bzImage");
        let args = nic_args(k);
        let cfg = config(&args.iter().map(String::as_str).collect::<Vec<_>>());
        let f = FakeTaps::default();
        let taps = create_taps(&cfg, &f).unwrap();
        assert_eq!(*f.open.lock().unwrap(), ["vif4.0-emu"]);

        let spec = MachineSpec::from_config(&cfg).unwrap();
        let backends = crate::machine::MachineBackends {
            hv: std::sync::Arc::new(xendm_devices::hv::FakeHypervisor::new()),
            mem: std::sync::Arc::new(xendm_devices::mem::TestMemory::pc(16 << 20).unwrap()),
            hooks: Box::new(crate::ioreq::engine::NoHooks),
            serial_sinks: Vec::new(),
        };
        let mut machine = crate::machine::build(spec, backends).unwrap();
        attach_taps(&machine, taps).unwrap();
        assert_eq!(*f.open.lock().unwrap(), ["vif4.0-emu"], "held after start-up");

        let bus = machine.engine.bus_mut();
        bus.pio_write(0x10, &1u16.to_le_bytes()); // disks only
        assert_eq!(*f.open.lock().unwrap(), ["vif4.0-emu"], "a disk-only unplug released the tap");
        bus.pio_write(0x10, &3u16.to_le_bytes()); // disks and NICs, as Linux writes it
        assert!(f.open.lock().unwrap().is_empty(), "the NIC unplug did not close the tap");
    }

    #[test]
    fn no_nics_no_taps_and_errors_are_mapped() {
        let f = FakeTaps::default();
        assert!(create_taps(&config(&["-xen-domid", "4"]), &f).unwrap().is_none());
        let k = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/boot/mini-bzImage");
        let args = nic_args(k);
        let cfg = config(&args.iter().map(String::as_str).collect::<Vec<_>>());
        let f = FakeTaps { fail: Some(("vif4.0-emu".into(), libc::ENOENT)), ..FakeTaps::default() };
        let e = format!("{:#}", create_taps(&cfg, &f).err().unwrap());
        assert!(e.contains("modprobe tun"), "{e}");
    }
}
