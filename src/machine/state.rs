//! The machine's device state as one self-delimiting blob: every device of
//! [`PcDevices::state_entries`], in that fixed order, with its kind,
//! instance id, state version and payload ([`xendm_devices::state`]).
//!
//! QMP `xen-save-devices-state` writes it and `-incoming fd:N` reads it
//! (`docs/save-restore.md`). libxl stores the blob opaquely in its stream
//! (`xen-toolstack.md` 2.2: a record of the file's whole size, so the file
//! is truncated to the blob), so the format is ours. Shapes (facts, not code):
//! firecracker's versioned snapshot container (`snapshot/mod.rs`: magic,
//! version, then data), propolis' per-device `(kind, version)` payloads and
//! cloud-hypervisor's per-id snapshot map.
//!
//! Format version 1, integers little-endian:
//!
//! | bytes | field |
//! |---|---|
//! | 8 | magic `XENDMDEV` |
//! | 4 | format version (1) |
//! | 4 | number of entries (at most [`MAX_ENTRIES`]) |
//! | per entry: 2 + n | kind, length-prefixed ASCII (at most [`MAX_NAME`] bytes) |
//! | 2 + n | instance id, likewise (e.g. `serial0`) |
//! | 4 | the device's state version |
//! | 4 + n | payload, length-prefixed JSON (at most [`MAX_PAYLOAD`] bytes) |
//! | 8 | end marker `XENDMEND` |
//! | 4 | CRC-32 (IEEE 802.3, as zlib's `crc32`) of every byte before it |
//!
//! A blob is hostile input. [`restore_devices`] parses and checks all of it
//! before touching a device, and refuses, naming what is wrong: another
//! magic, a newer (or zero) format version, a truncated blob, a length over
//! its bound, an unknown or duplicate instance, a kind that does not match
//! the instance, a device of this machine that the blob lacks, a bad end
//! marker, a checksum that does not match (any flipped bit) and trailing
//! bytes. QEMU's own format (`QEVM`: a guest saved under qemu-xen) is named
//! as such. A device that refuses its payload (a newer
//! state version, a malformed or impossible state) stops the restore, and the
//! devices restored before it are put back as they were.

use xendm_devices::sync::lock;
use xendm_devices::StateError;

use super::pc::{PcDevices, StatefulDevice};
use super::Machine;

/// First bytes of every blob.
pub const MAGIC: [u8; 8] = *b"XENDMDEV";
/// Last bytes of every blob.
pub const END_MARKER: [u8; 8] = *b"XENDMEND";
/// The format version this xendm writes and the newest it reads.
pub const FORMAT_VERSION: u32 = 1;
/// Most entries a blob may have.
pub const MAX_ENTRIES: u32 = 256;
/// Longest kind or instance id.
pub const MAX_NAME: usize = 64;
/// Largest payload of one device.
pub const MAX_PAYLOAD: u32 = 1 << 20;

/// Why the device state could not be saved or restored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceStateError {
    #[error("device state: the blob does not start with the magic XENDMDEV")]
    BadMagic,
    #[error(
        "device state: this is QEMU's device state (magic QEVM), saved by qemu-xen: xendm cannot restore it; \
         restore this guest with qemu-xen (no device_model_override)"
    )]
    QemuFormat,
    #[error("device state: format version {got} is not one this xendm reads (it reads 1 to {FORMAT_VERSION})")]
    UnsupportedFormat { got: u32 },
    #[error("device state: the blob ends inside {what} (at byte {offset})")]
    Truncated { what: &'static str, offset: usize },
    #[error("device state: {what} is {len} long, more than the limit {max}")]
    TooLong { what: &'static str, len: u64, max: u64 },
    #[error("device state: {what} at byte {offset} is not ASCII")]
    BadName { what: &'static str, offset: usize },
    #[error("device state: this machine has no device {instance:?} (the blob names kind {kind:?})")]
    UnknownInstance { instance: String, kind: String },
    #[error("device state: {instance:?} is a {want} here, the blob has kind {got:?}")]
    KindMismatch { instance: String, got: String, want: &'static str },
    #[error("device state: {instance:?} appears twice")]
    Duplicate { instance: String },
    #[error("device state: the blob lacks {instance:?} ({kind}), which this machine has")]
    Missing { instance: String, kind: &'static str },
    #[error("device state: no end marker XENDMEND after the last entry (at byte {offset})")]
    BadEndMarker { offset: usize },
    #[error("device state: {count} bytes after the checksum")]
    TrailingBytes { count: usize },
    #[error("device state: the checksum is {stored:#010x}, the bytes give {computed:#010x}: the blob is corrupt")]
    BadChecksum { stored: u32, computed: u32 },
    #[error("device state of {instance:?}: {source}")]
    Device { instance: String, source: StateError },
}

/// Saves every device of `devices` into one blob (see the module docs).
///
/// # Errors
/// If a device's state cannot be encoded or is over the bounds (a bug).
pub fn save_devices(devices: &PcDevices) -> Result<Vec<u8>, DeviceStateError> {
    save_entries(&devices.state_entries())
}

/// Saves `entries` (instance id, device), in order, into one blob.
///
/// # Errors
/// As [`save_devices`].
pub fn save_entries(entries: &[(String, StatefulDevice)]) -> Result<Vec<u8>, DeviceStateError> {
    let count = u32::try_from(entries.len()).unwrap_or(u32::MAX);
    check_len("the number of entries", u64::from(count), u64::from(MAX_ENTRIES))?;
    let mut out = Vec::new();
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    for (instance, dev) in entries {
        let dev = lock(&**dev);
        let payload =
            dev.save_payload().map_err(|source| DeviceStateError::Device { instance: instance.clone(), source })?;
        put_name(&mut out, "a kind", dev.kind())?;
        put_name(&mut out, "an instance id", instance)?;
        out.extend_from_slice(&dev.version().to_le_bytes());
        let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
        check_len("a payload", u64::from(len), u64::from(MAX_PAYLOAD))?;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&payload);
    }
    out.extend_from_slice(&END_MARKER);
    let crc = crc32(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// CRC-32 as zlib's `crc32` and IEEE 802.3 compute it (reflected
/// polynomial 0xEDB88320, initial and final value all ones). A blob is a
/// few KiB, so a bitwise loop is fast enough.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = u32::MAX;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
        }
    }
    !crc
}

/// Restores every device of `devices` from `blob`, all or nothing (see the
/// module docs). The caller makes the bus re-read PCI windows afterwards
/// ([`Machine::restore_devices`] does).
///
/// # Errors
/// See [`DeviceStateError`]; on error no device is left changed.
pub fn restore_devices(devices: &PcDevices, blob: &[u8]) -> Result<(), DeviceStateError> {
    restore_entries(&devices.state_entries(), blob)
}

/// Restores `targets` (instance id, device) from `blob`, all or nothing:
/// the blob must have exactly these instances.
///
/// # Errors
/// As [`restore_devices`].
pub fn restore_entries(targets: &[(String, StatefulDevice)], blob: &[u8]) -> Result<(), DeviceStateError> {
    let entries = parse(blob)?;
    let mut plan: Vec<(&StatefulDevice, &Entry<'_>, &str)> = Vec::new();
    for e in &entries {
        let Some((id, dev)) = targets.iter().find(|(id, _)| id == e.instance) else {
            return Err(DeviceStateError::UnknownInstance { instance: e.instance.into(), kind: e.kind.into() });
        };
        if plan.iter().any(|(_, p, _)| p.instance == e.instance) {
            return Err(DeviceStateError::Duplicate { instance: e.instance.into() });
        }
        let want = lock(&**dev).kind();
        if want != e.kind {
            return Err(DeviceStateError::KindMismatch { instance: id.clone(), got: e.kind.into(), want });
        }
        plan.push((dev, e, id));
    }
    for (id, dev) in targets {
        if !entries.iter().any(|e| e.instance == id) {
            return Err(DeviceStateError::Missing { instance: id.clone(), kind: lock(&**dev).kind() });
        }
    }
    apply(&plan)
}

/// Restores each device in turn; if one refuses, puts back the ones done.
fn apply(plan: &[(&StatefulDevice, &Entry<'_>, &str)]) -> Result<(), DeviceStateError> {
    let mut undo: Vec<(&StatefulDevice, u32, Vec<u8>)> = Vec::new();
    for &(dev, e, id) in plan {
        let mut d = lock(&**dev);
        let device_error = |source| DeviceStateError::Device { instance: id.to_string(), source };
        let before = d.save_payload().map_err(device_error)?;
        let version = d.version();
        if let Err(source) = d.restore_payload(e.version, e.payload) {
            drop(d);
            for (dev, version, before) in undo.into_iter().rev() {
                // A state the device itself just wrote is accepted back.
                if let Err(err) = lock(&**dev).restore_payload(version, &before) {
                    tracing::error!(error = %err, "device state: could not undo a partial restore");
                }
            }
            return Err(device_error(source));
        }
        undo.push((dev, version, before));
    }
    Ok(())
}

/// The length of the blob that `prefix` begins, once `prefix` holds enough
/// of it to tell (`None`: more bytes are needed). For a channel without an
/// end of file (a stubdomain's restore console): the format's lengths say
/// where the blob ends. Checks only the lengths and their bounds; the
/// content is checked by [`restore_entries`].
///
/// # Errors
/// Another magic, or a length over its bound.
pub fn blob_len(prefix: &[u8]) -> Result<Option<usize>, DeviceStateError> {
    let head = |n: usize| prefix.get(..n);
    let Some(magic) = head(MAGIC.len()) else { return Ok(None) };
    if magic.starts_with(b"QEVM") {
        return Err(DeviceStateError::QemuFormat);
    }
    if magic != MAGIC {
        return Err(DeviceStateError::BadMagic);
    }
    let u16_at =
        |at: usize| -> Option<u16> { Some(u16::from_le_bytes(prefix.get(at..at.checked_add(2)?)?.try_into().ok()?)) };
    let u32_at =
        |at: usize| -> Option<u32> { Some(u32::from_le_bytes(prefix.get(at..at.checked_add(4)?)?.try_into().ok()?)) };
    let Some(count) = u32_at(12) else { return Ok(None) };
    check_len("the number of entries", u64::from(count), u64::from(MAX_ENTRIES))?;
    let mut at = 16usize;
    for _ in 0..count {
        for what in ["a kind", "an instance id"] {
            let Some(n) = u16_at(at) else { return Ok(None) };
            check_len(what, u64::from(n), MAX_NAME as u64)?;
            at = at.saturating_add(2 + usize::from(n));
        }
        at = at.saturating_add(4); // the state version
        let Some(len) = u32_at(at) else { return Ok(None) };
        check_len("a payload", u64::from(len), u64::from(MAX_PAYLOAD))?;
        at = at.saturating_add(4).saturating_add(len as usize);
    }
    let total = at.saturating_add(END_MARKER.len() + 4);
    Ok((prefix.len() >= total).then_some(total))
}

impl Machine {
    /// The state of every device, as one blob ([`save_devices`]).
    ///
    /// # Errors
    /// See [`save_devices`].
    pub fn save_devices(&self) -> Result<Vec<u8>, DeviceStateError> {
        save_devices(&self.devices)
    }

    /// Restores every device from `blob` ([`restore_devices`]), then lets
    /// the bus re-read the PCI windows the restored functions decode (the
    /// range changes are queued for the hypervisor as after a config write).
    ///
    /// # Errors
    /// See [`restore_devices`].
    pub fn restore_devices(&mut self, blob: &[u8]) -> Result<(), DeviceStateError> {
        restore_devices(&self.devices, blob)?;
        self.engine.bus_mut().refresh_pci_regions();
        Ok(())
    }
}

/// One parsed entry, borrowing from the blob.
#[derive(Debug)]
struct Entry<'a> {
    kind: &'a str,
    instance: &'a str,
    version: u32,
    payload: &'a [u8],
}

fn check_len(what: &'static str, len: u64, max: u64) -> Result<(), DeviceStateError> {
    if len > max {
        return Err(DeviceStateError::TooLong { what, len, max });
    }
    Ok(())
}

fn put_name(out: &mut Vec<u8>, what: &'static str, name: &str) -> Result<(), DeviceStateError> {
    check_len(what, name.len() as u64, MAX_NAME as u64)?;
    let len = u16::try_from(name.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(name.as_bytes());
    Ok(())
}

/// Reads a blob front to back.
struct Reader<'a> {
    blob: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DeviceStateError> {
        let end = self.at.checked_add(n);
        let bytes = end.and_then(|end| self.blob.get(self.at..end));
        match (bytes, end) {
            (Some(b), Some(end)) => {
                self.at = end;
                Ok(b)
            }
            _ => Err(DeviceStateError::Truncated { what, offset: self.blob.len() }),
        }
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DeviceStateError> {
        let b = self.take(N, what)?;
        b.try_into().map_err(|_| DeviceStateError::Truncated { what, offset: self.at })
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, DeviceStateError> {
        self.array(what).map(u16::from_le_bytes)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, DeviceStateError> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn name(&mut self, what: &'static str) -> Result<&'a str, DeviceStateError> {
        let len = self.u16(what)?;
        check_len(what, u64::from(len), MAX_NAME as u64)?;
        let offset = self.at;
        let bytes = self.take(usize::from(len), what)?;
        match std::str::from_utf8(bytes) {
            Ok(s) if s.is_ascii() && !s.is_empty() => Ok(s),
            _ => Err(DeviceStateError::BadName { what, offset }),
        }
    }
}

fn parse(blob: &[u8]) -> Result<Vec<Entry<'_>>, DeviceStateError> {
    let mut r = Reader { blob, at: 0 };
    if blob.starts_with(b"QEVM") {
        return Err(DeviceStateError::QemuFormat);
    }
    let magic = r.take(MAGIC.len(), "the magic").map_err(|_| DeviceStateError::BadMagic)?;
    if magic != MAGIC {
        return Err(DeviceStateError::BadMagic);
    }
    let format = r.u32("the format version")?;
    if format == 0 || format > FORMAT_VERSION {
        return Err(DeviceStateError::UnsupportedFormat { got: format });
    }
    let count = r.u32("the number of entries")?;
    check_len("the number of entries", u64::from(count), u64::from(MAX_ENTRIES))?;
    let mut entries = Vec::new();
    for _ in 0..count {
        let kind = r.name("a kind")?;
        let instance = r.name("an instance id")?;
        let version = r.u32("a state version")?;
        let len = r.u32("a payload length")?;
        check_len("a payload", u64::from(len), u64::from(MAX_PAYLOAD))?;
        let payload = r.take(usize::try_from(len).unwrap_or(usize::MAX), "a payload")?;
        entries.push(Entry { kind, instance, version, payload });
    }
    let offset = r.at;
    let end = r.take(END_MARKER.len(), "the end marker")?;
    if end != END_MARKER {
        return Err(DeviceStateError::BadEndMarker { offset });
    }
    let covered = r.at;
    let stored = r.u32("the checksum")?;
    let computed = crc32(blob.get(..covered).unwrap_or_default());
    if stored != computed {
        return Err(DeviceStateError::BadChecksum { stored, computed });
    }
    let trailing = blob.len().saturating_sub(r.at);
    if trailing != 0 {
        return Err(DeviceStateError::TrailingBytes { count: trailing });
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ioreq::abi::{Ioreq, IoreqKind};
    use crate::ioreq::engine::NoHooks;
    use crate::machine::spec::MachineSpec;
    use crate::machine::{build, MachineBackends};
    use std::path::PathBuf;
    use std::sync::Arc;
    use xendm_devices::bus::{RangeChange, Space};
    use xendm_devices::hv::FakeHypervisor;
    use xendm_devices::mem::TestMemory;

    fn machine(extra: &[&str]) -> Machine {
        let boot = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/boot");
        let kernel = boot.join("mini-bzImage").display().to_string();
        let mut args = vec!["-xen-domid", "1", "-m", "32", "-serial", "null", "-serial", "null", "-kernel", &kernel];
        args.extend_from_slice(extra);
        let config = crate::cli::run_config(&args);
        let backends = MachineBackends {
            hv: Arc::new(FakeHypervisor::new()),
            mem: Arc::new(TestMemory::pc(32 << 20).unwrap()),
            hooks: Box::new(NoHooks),
            serial_sinks: Vec::new(),
        };
        build(MachineSpec::from_config(&config).unwrap(), backends).unwrap()
    }

    fn out(m: &mut Machine, port: u64, size: u32, data: u64) {
        let req = Ioreq {
            addr: port,
            data,
            count: 1,
            size,
            data_is_ptr: false,
            is_read: false,
            df: false,
            kind: IoreqKind::Pio,
        };
        m.engine.handle(0, &req);
    }

    fn inp(m: &mut Machine, port: u64, size: u32) -> u64 {
        let req = Ioreq {
            addr: port,
            data: 0,
            count: 1,
            size,
            data_is_ptr: false,
            is_read: true,
            df: false,
            kind: IoreqKind::Pio,
        };
        m.engine.handle(0, &req)
    }

    /// Some of what firmware and a booting kernel do, touching every device.
    fn guest_io(m: &mut Machine) {
        let cfg = |m: &mut Machine, devfn: u64, reg: u64, size: u32, v: u64| {
            out(m, 0xcf8, 4, 0x8000_0000 | devfn << 8 | (reg & 0xfc));
            out(m, 0xcfc + (reg & 3), size, v);
        };
        cfg(m, 0x00, 0x59, 1, 0x30); // i440FX PAM
        cfg(m, 0x08, 0x60, 1, 10); // PIIX3 PIRQA
        cfg(m, 0x0b, 0x40, 4, 0xb001); // PMBA
        cfg(m, 0x0b, 0x80, 1, 1); // PMIOSE
        cfg(m, 0x10, 0x10, 4, 0xc001); // platform BAR0 (I/O decode is on at reset)
        out(m, 0xb2, 1, 0xf1); // ACPI enable
        out(m, 0xcf9, 1, 0x02); // SRST latched
        out(m, 0x12, 2, 3); // PV driver product
        out(m, 0x70, 1, 0x40);
        out(m, 0x71, 1, 0x5a); // CMOS
        out(m, 0x92, 1, 0x02); // A20
        out(m, 0x64, 1, 0x20); // i8042: read command byte (reply queued)
        out(m, 0x3fb, 1, 0x83); // COM1 LCR DLAB
        out(m, 0x3f8, 1, 0x01); // divisor 1
        out(m, 0x3fb, 1, 0x03);
        out(m, 0x2ff, 1, 0x77); // COM2 scratch
        out(m, 0x510, 2, 0x19); // fw_cfg: select the file directory
        inp(m, 0x511, 1);
    }

    #[test]
    fn round_trip_of_a_whole_machine_after_guest_io() {
        let mut a = machine(&[]);
        guest_io(&mut a);
        let blob = a.save_devices().unwrap();
        let mut b = machine(&[]);
        assert_ne!(b.save_devices().unwrap(), blob, "the guest I/O changed the state");
        b.engine.bus_mut().take_changes();
        b.restore_devices(&blob).unwrap();
        assert_eq!(b.save_devices().unwrap(), blob);
        // The PM block is routed again where the guest put it.
        assert!(b.engine.bus_mut().take_changes().contains(&RangeChange::Map {
            space: Space::Pio,
            start: 0xb000,
            end: 0xb03f
        }));
        assert_eq!(inp(&mut b, 0xb004, 2) & 1, 1, "SCI_EN");
        for (port, size) in [(0xcf9, 1), (0x10, 2), (0x64, 1), (0x60, 1), (0x2ff, 1), (0x511, 1)] {
            assert_eq!(inp(&mut a, port, size), inp(&mut b, port, size), "port {port:#x}");
        }
        out(&mut a, 0x70, 1, 0x40);
        out(&mut b, 0x70, 1, 0x40);
        assert_eq!(inp(&mut b, 0x71, 1), 0x5a);
        assert_eq!(inp(&mut a, 0x71, 1), inp(&mut b, 0x71, 1));
    }

    /// The committed blob `tests/data/state/v1-pc.blob`, written by the
    /// first xendm that saved (format 1, every device at state version 1)
    /// from `machine(&[])` after `guest_io`, must restore in every later
    /// xendm (the compatibility promise of `docs/save-restore.md`). Rewrite
    /// it only with a new fixture beside it, never in place:
    /// `XENDM_WRITE_STATE_FIXTURE=tests/data/state/vN-pc.blob cargo test the_committed`.
    #[test]
    fn the_committed_v1_blob_restores() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/state");
        if let Ok(path) = std::env::var("XENDM_WRITE_STATE_FIXTURE") {
            let mut m = machine(&[]);
            guest_io(&mut m);
            std::fs::write(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path), m.save_devices().unwrap()).unwrap();
        }
        let blob = std::fs::read(dir.join("v1-pc.blob")).unwrap();
        assert_eq!(&blob[8..12], &[1, 0, 0, 0], "format 1");
        let mut b = machine(&[]);
        b.restore_devices(&blob).unwrap();
        let mut a = machine(&[]);
        guest_io(&mut a);
        for (port, size) in [(0xcf9, 1), (0x10, 2), (0x64, 1), (0x60, 1), (0x2ff, 1), (0x511, 1), (0xb004, 2)] {
            assert_eq!(inp(&mut a, port, size), inp(&mut b, port, size), "port {port:#x}");
        }
        out(&mut b, 0x70, 1, 0x40);
        assert_eq!(inp(&mut b, 0x71, 1), 0x5a, "CMOS byte 0x40");
    }

    #[test]
    fn a_blobs_length_is_known_from_its_prefix() {
        let m = machine(&[]);
        let blob = m.save_devices().unwrap();
        for n in [0, 7, 15, 40, blob.len() - 1] {
            assert_eq!(blob_len(&blob[..n]).unwrap(), None, "prefix {n}");
        }
        assert_eq!(blob_len(&blob).unwrap(), Some(blob.len()));
        let mut two = blob.clone();
        two.extend_from_slice(&blob);
        assert_eq!(blob_len(&two).unwrap(), Some(blob.len()), "a second blob after it");
        assert_eq!(blob_len(b"QEVM\0\0\0\x03").unwrap_err(), DeviceStateError::QemuFormat);
        assert_eq!(blob_len(b"XENDMDEX").unwrap_err(), DeviceStateError::BadMagic);
        let mut huge = blob[..16].to_vec();
        huge[12..16].copy_from_slice(&1000u32.to_le_bytes());
        assert!(matches!(blob_len(&huge), Err(DeviceStateError::TooLong { .. })));
    }

    #[test]
    fn the_checksum_is_zlibs_crc32() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn golden_header_and_entry_order() {
        let m = machine(&[]);
        let blob = m.save_devices().unwrap();
        assert_eq!(&blob[..8], b"XENDMDEV");
        assert_eq!(&blob[8..12], &[1, 0, 0, 0], "format version 1");
        assert_eq!(&blob[12..16], &[12, 0, 0, 0], "12 devices with 2 serial ports and fw_cfg");
        assert_eq!(&blob[16..18], &[6, 0]);
        assert_eq!(&blob[18..24], b"i440fx");
        assert_eq!(&blob[24..26], &[8, 0]);
        assert_eq!(&blob[26..34], b"pci-host");
        assert_eq!(&blob[34..38], &[1, 0, 0, 0], "state version 1");
        assert_eq!(&blob[blob.len() - 12..blob.len() - 4], b"XENDMEND");
        assert_eq!(blob[blob.len() - 4..], crc32(&blob[..blob.len() - 4]).to_le_bytes());
        let parsed = parse(&blob).unwrap();
        let order: Vec<(&str, &str)> = parsed.iter().map(|e| (e.kind, e.instance)).collect();
        assert_eq!(
            order,
            [
                ("i440fx", "pci-host"),
                ("piix3", "isa-bridge"),
                ("piix3-reset-control", "reset-control"),
                ("piix4-pm", "pm"),
                ("acpi-cpu-hotplug", "cpu-hotplug"),
                ("xen-platform", "xen-platform"),
                ("cmos", "cmos"),
                ("port92", "port92"),
                ("i8042", "i8042"),
                ("uart-16550", "serial0"),
                ("uart-16550", "serial1"),
                ("fw_cfg", "fw_cfg")
            ]
        );
        assert!(parsed.iter().all(|e| serde_json::from_slice::<serde_json::Value>(e.payload).is_ok()));
    }

    /// A blob with the entries `entries` (kind, instance, version, payload).
    fn blob_of(format: u32, entries: &[(&str, &str, u32, &[u8])]) -> Vec<u8> {
        let mut b = MAGIC.to_vec();
        b.extend_from_slice(&format.to_le_bytes());
        b.extend_from_slice(&(entries.len() as u32).to_le_bytes());
        for (kind, instance, version, payload) in entries {
            for name in [kind, instance] {
                b.extend_from_slice(&(name.len() as u16).to_le_bytes());
                b.extend_from_slice(name.as_bytes());
            }
            b.extend_from_slice(&version.to_le_bytes());
            b.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            b.extend_from_slice(payload);
        }
        b.extend_from_slice(&END_MARKER);
        let crc = crc32(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    /// The entries of `m`'s own blob, owned, for building variants.
    fn own_entries(m: &Machine) -> Vec<(String, String, u32, Vec<u8>)> {
        let blob = m.save_devices().unwrap();
        parse(&blob)
            .unwrap()
            .into_iter()
            .map(|e| (e.kind.to_string(), e.instance.to_string(), e.version, e.payload.to_vec()))
            .collect()
    }

    fn rebuild(format: u32, entries: &[(String, String, u32, Vec<u8>)]) -> Vec<u8> {
        let refs: Vec<(&str, &str, u32, &[u8])> =
            entries.iter().map(|(k, i, v, p)| (k.as_str(), i.as_str(), *v, p.as_slice())).collect();
        blob_of(format, &refs)
    }

    #[test]
    fn every_refusal_names_what_is_wrong() {
        let mut m = machine(&[]);
        let good_entries = own_entries(&m);
        let good = rebuild(1, &good_entries);
        assert_eq!(good, m.save_devices().unwrap(), "the test encoder agrees with the real one");
        guest_io(&mut m);
        let modified = m.save_devices().unwrap();
        let check = |m: &mut Machine, blob: &[u8], want: &str| {
            let e = m.restore_devices(blob).unwrap_err();
            assert!(e.to_string().contains(want), "{e} (wanted {want:?})");
            assert_eq!(m.save_devices().unwrap(), modified, "a refused blob changes nothing ({e})");
        };

        check(&mut m, b"", "magic");
        check(&mut m, b"XENDMDE", "magic");
        let mut bad = good.clone();
        bad[0] = b'Q';
        check(&mut m, &bad, "magic");
        check(&mut m, &rebuild(2, &good_entries), "format version 2");
        check(&mut m, &rebuild(0, &good_entries), "format version 0");
        check(&mut m, b"QEVM\0\0\0\x03", "QEMU's device state (magic QEVM)");
        for cut in [10, 14, 17, 20, 40, good.len() - 9, good.len() - 1] {
            check(&mut m, &good[..cut], "ends inside");
        }
        let mut bad = good.clone();
        bad.push(0);
        check(&mut m, &bad, "1 bytes after the checksum");
        let mut bad = good.clone();
        let n = bad.len();
        bad[n - 5] = b'X';
        check(&mut m, &bad, "no end marker");
        // Any flipped bit in a payload: the structure parses, the CRC does not match.
        for at in [16 + 2 + 6 + 2 + 8 + 4 + 4 + 3, good.len() - 13] {
            let mut bad = good.clone();
            bad[at] ^= 0x04;
            check(&mut m, &bad, "the blob is corrupt");
        }
        let mut bad = good.clone();
        let n = bad.len();
        bad[n - 1] ^= 0x80;
        check(&mut m, &bad, "the checksum is");
        let mut bad = good.clone();
        bad[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        check(&mut m, &bad, "number of entries is 4294967295");

        let mut e = good_entries.clone();
        e.push(("uart-16550".into(), "serial7".into(), 1, e[9].3.clone()));
        check(&mut m, &rebuild(1, &e), "no device \"serial7\"");
        let mut e = good_entries.clone();
        e[6].0 = "rtc".into();
        check(&mut m, &rebuild(1, &e), "\"cmos\" is a cmos here, the blob has kind \"rtc\"");
        let mut e = good_entries.clone();
        let dup = e[7].clone();
        e.push(dup);
        check(&mut m, &rebuild(1, &e), "\"port92\" appears twice");
        let mut e = good_entries.clone();
        e.remove(10);
        check(&mut m, &rebuild(1, &e), "lacks \"serial1\" (uart-16550)");
        let mut e = good_entries.clone();
        e[3].2 = 2;
        check(&mut m, &rebuild(1, &e), "\"pm\": restoring piix4-pm: state version 2 is newer");
        let mut e = good_entries.clone();
        e[11].3 = b"{\"cur_entry\": 1}".to_vec();
        check(&mut m, &rebuild(1, &e), "\"fw_cfg\": restoring fw_cfg: the state is malformed");
        let mut e = good_entries.clone();
        e[4].3 = br#"{"present": [0, 1]}"#.to_vec();
        check(&mut m, &rebuild(1, &e), "\"cpu-hotplug\": restoring acpi-cpu-hotplug: the state is malformed");
        // A device late in the order refuses: the earlier ones are put back.
        let mut e = good_entries.clone();
        e[10].3 = br#"{"not": "a uart"}"#.to_vec();
        check(&mut m, &rebuild(1, &e), "\"serial1\"");
        let mut e = good_entries.clone();
        e[0].1 = "x".repeat(MAX_NAME + 1);
        check(&mut m, &rebuild(1, &e), "an instance id is 65 long");
        let mut e = good_entries.clone();
        e[0].1 = "caf\u{e9}".into();
        check(&mut m, &rebuild(1, &e), "not ASCII");
        let mut bad = good.clone();
        // The first entry's payload length (after magic, version, count, two names, version).
        let at = 16 + 2 + 6 + 2 + 8 + 4;
        bad[at..at + 4].copy_from_slice(&(MAX_PAYLOAD + 1).to_le_bytes());
        check(&mut m, &bad, "a payload is 1048577 long");

        // The good blob itself is accepted, and brings the pristine state back.
        m.restore_devices(&good).unwrap();
        assert_eq!(m.save_devices().unwrap(), good);
    }

    /// A hot-added vCPU is guest state: it comes back with the blob, into a
    /// machine of the same `maxcpus`; a machine that cannot have it refuses.
    #[test]
    fn hot_added_vcpus_are_saved_and_restored() {
        let a = machine(&["-smp", "1,maxcpus=4"]);
        a.vcpu_control().hot_add_vcpu(3).unwrap();
        let blob = a.save_devices().unwrap();
        let mut b = machine(&["-smp", "1,maxcpus=4"]);
        assert_eq!(inp(&mut b, 0xaf00, 1), 0x01);
        b.restore_devices(&blob).unwrap();
        assert_eq!(inp(&mut b, 0xaf00, 1), 0x09);
        assert_eq!(b.vcpu_control().vcpus().present, vec![0, 3]);
        for (smp, why) in [("1,maxcpus=2", "maxcpus 2"), ("2,maxcpus=4", "boot vCPU 1 (-smp 2) is missing")] {
            let mut c = machine(&["-smp", smp]);
            let e = c.restore_devices(&blob).unwrap_err().to_string();
            assert!(e.contains("cpu-hotplug") && e.contains(why), "{smp}: {e}");
        }
    }

    #[test]
    fn machines_of_another_shape_refuse_each_others_blobs() {
        let with_pm = machine(&[]);
        let mut without_pm = machine(&["-no-acpi"]);
        let e = without_pm.restore_devices(&with_pm.save_devices().unwrap()).unwrap_err();
        assert_eq!(e, DeviceStateError::UnknownInstance { instance: "pm".into(), kind: "piix4-pm".into() });
        let mut with_pm = with_pm;
        let e = with_pm.restore_devices(&without_pm.save_devices().unwrap()).unwrap_err();
        assert_eq!(e, DeviceStateError::Missing { instance: "pm".into(), kind: "piix4-pm" });
    }
}
