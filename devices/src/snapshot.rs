//! Device state save/restore, for QMP `xen-save-devices-state` /
//! `-incoming` later, and the conformance test every device runs.
//!
//! A device's state is a `serde_json::Value` (the device-state blob that libxl
//! stores is opaque to it, `xen-abi.md` 7.2). `restore` must reject a state it
//! does not understand with an error, never panic: a state file is input.

/// Why a saved state could not be restored.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("device state for {device} is malformed: {reason}")]
    Malformed { device: &'static str, reason: String },
}

impl SnapshotError {
    /// A malformed-state error from a serde error.
    pub fn malformed(device: &'static str, e: impl std::fmt::Display) -> Self {
        Self::Malformed { device, reason: e.to_string() }
    }
}

/// Save and restore of a device's guest-visible state.
pub trait Snapshot {
    /// The device's state.
    fn snapshot(&self) -> serde_json::Value;
    /// Replaces the device's state with `state`.
    ///
    /// # Errors
    /// If `state` is not a state this device wrote.
    fn restore(&mut self, state: &serde_json::Value) -> Result<(), SnapshotError>;
}

/// Generates the save/restore conformance test for a device type.
///
/// `$make` builds a fresh device; `$modify` takes `&mut` device and changes
/// its state through its guest-visible interface (bus reads/writes). The test
/// checks that the modification is visible in the snapshot, that a fresh
/// device restored from it snapshots equal, and that garbage is refused.
#[macro_export]
macro_rules! snapshot_conformance {
    ($test:ident, $make:expr, $modify:expr) => {
        #[test]
        fn $test() {
            use $crate::snapshot::Snapshot as _;
            let mut a = $make;
            let pristine = a.snapshot();
            ($modify)(&mut a);
            let saved = a.snapshot();
            assert_ne!(pristine, saved, "the modification must change the snapshot");
            let mut b = $make;
            b.restore(&saved).expect("restore of a fresh snapshot");
            assert_eq!(b.snapshot(), saved, "snapshot -> restore -> snapshot must be equal");
            let mut c = $make;
            assert!(c.restore(&serde_json::json!({"not": "a state"})).is_err(), "garbage must be refused");
            assert!(c.restore(&serde_json::json!(42)).is_err(), "garbage must be refused");
        }
    };
}
