//! Typed, versioned device state: what a device saves for `xen-save-devices-state`
//! and takes back on `-incoming` (both wired later), and the conformance test
//! every device runs.
//!
//! Shapes (facts, not code) from firecracker's `snapshot/persist.rs`
//! (`Persist { type State; fn save; fn restore }`) and propolis' `migrate.rs`
//! (`Schema::id() -> ("uart-16550", 1)`: every payload names its kind and
//! version, and a mismatch is refused).
//!
//! * [`DeviceState`] is the typed trait a device implements: its own `State`
//!   type (serde, compared in tests), a [`DeviceState::KIND`] and a
//!   [`DeviceState::VERSION`], `save` and a validating `restore`.
//! * [`AnyDeviceState`] is the object-safe face, implemented for every
//!   [`DeviceState`]: it encodes the state as a JSON payload and decodes one,
//!   checking the version first, so a machine can hold a list of devices of
//!   different types and walk it (`src/machine/state.rs` writes the blob).
//!
//! A state file is hostile input: `restore` validates everything before it
//! changes anything, never panics, and leaves no value that could later index
//! out of range. What it refuses comes back as a [`StateError`] naming the
//! device kind and the reason. A refused restore leaves the device as it was.
//!
//! What is not in a device's state: the configuration the machine builds
//! from the command line (RAM size, which COM ports exist, fw_cfg items),
//! which is rebuilt as QEMU does, and host-side handles (IRQ lines, sinks).
//! IRQ levels that a device remembers are adopted without driving the line:
//! Xen saved the line state with the domain.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Why a device state could not be restored (or, in theory, encoded).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("restoring {kind}: the state is malformed: {reason}")]
    Malformed { kind: &'static str, reason: String },
    #[error("restoring {kind}: state version {got} is newer than the version {supported} this xendm writes")]
    NewerVersion { kind: &'static str, got: u32, supported: u32 },
    #[error("restoring {kind}: state version {got} is older than {supported} and cannot be converted")]
    OlderVersion { kind: &'static str, got: u32, supported: u32 },
    #[error("saving {kind}: the state cannot be encoded: {reason}")]
    Encode { kind: &'static str, reason: String },
}

impl StateError {
    /// A malformed-state error for device `kind`.
    pub fn malformed(kind: &'static str, reason: impl std::fmt::Display) -> Self {
        Self::Malformed { kind, reason: reason.to_string() }
    }
}

/// Save and restore of a device's guest-visible state, typed and versioned.
pub trait DeviceState {
    /// Everything the guest can observe that is not rebuilt from the
    /// command line. Serialized as JSON in the machine's blob.
    type State: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug + Clone;
    /// The kind of device, e.g. `"uart-16550"`: the same for every instance.
    const KIND: &'static str;
    /// The version of [`Self::State`]; bump it when its meaning changes.
    const VERSION: u32;
    /// The device's state now.
    fn save(&self) -> Self::State;
    /// Replaces the device's state with `state`, after checking it.
    ///
    /// # Errors
    /// If `state` is not one this device could be in; the device is then
    /// unchanged.
    fn restore(&mut self, state: Self::State) -> Result<(), StateError>;
}

/// The object-safe face of a [`DeviceState`], for walking a list of devices.
pub trait AnyDeviceState: Send {
    /// [`DeviceState::KIND`].
    fn kind(&self) -> &'static str;
    /// [`DeviceState::VERSION`].
    fn version(&self) -> u32;
    /// The state as a JSON payload.
    ///
    /// # Errors
    /// If serde cannot encode it (not expected for plain data).
    fn save_payload(&self) -> Result<Vec<u8>, StateError>;
    /// Restores from a payload written by [`Self::save_payload`] at `version`.
    ///
    /// # Errors
    /// A version other than this device's, a payload that does not decode,
    /// or a state the device refuses.
    fn restore_payload(&mut self, version: u32, payload: &[u8]) -> Result<(), StateError>;
}

impl<T: DeviceState + Send> AnyDeviceState for T {
    fn kind(&self) -> &'static str {
        T::KIND
    }

    fn version(&self) -> u32 {
        T::VERSION
    }

    fn save_payload(&self) -> Result<Vec<u8>, StateError> {
        serde_json::to_vec(&self.save()).map_err(|e| StateError::Encode { kind: T::KIND, reason: e.to_string() })
    }

    fn restore_payload(&mut self, version: u32, payload: &[u8]) -> Result<(), StateError> {
        if version > T::VERSION {
            return Err(StateError::NewerVersion { kind: T::KIND, got: version, supported: T::VERSION });
        }
        if version < T::VERSION {
            return Err(StateError::OlderVersion { kind: T::KIND, got: version, supported: T::VERSION });
        }
        let state: T::State = serde_json::from_slice(payload).map_err(|e| StateError::malformed(T::KIND, e))?;
        self.restore(state)
    }
}

/// Generates the save/restore conformance test for a device type.
///
/// `$make` builds a fresh device; `$modify` takes `&mut` device and changes
/// its state through its guest-visible interface (bus reads/writes). The test
/// checks that the modification is visible in the saved state, that a fresh
/// device restored from it (typed, and through the JSON payload) saves
/// equal, that garbage and other versions are refused, and that a refused
/// restore leaves the device unchanged.
#[macro_export]
macro_rules! state_conformance {
    ($test:ident, $make:expr, $modify:expr) => {
        #[test]
        fn $test() {
            use $crate::state::{AnyDeviceState as _, DeviceState as _};
            let mut a = $make;
            let pristine = a.save();
            ($modify)(&mut a);
            let saved = a.save();
            assert_ne!(pristine, saved, "the modification must change the state");
            let mut b = $make;
            b.restore(saved.clone()).expect("restore of a fresh state");
            assert_eq!(b.save(), saved, "save -> restore -> save must be equal");

            let version = a.version();
            assert!(version >= 1, "versions start at 1");
            assert!(!a.kind().is_empty());
            let payload = a.save_payload().expect("encode");
            let mut c = $make;
            c.restore_payload(version, &payload).expect("restore of a fresh payload");
            assert_eq!(c.save(), saved, "payload round trip");

            for garbage in [&br#"{"not": "a state"}"#[..], b"42", b"", b"\xff\xfe", b"null", b"[]"] {
                assert!(c.restore_payload(version, garbage).is_err(), "garbage {garbage:?} must be refused");
            }
            assert!(c.restore_payload(version + 1, &payload).is_err(), "a newer version must be refused");
            assert!(c.restore_payload(version - 1, &payload).is_err(), "an older version must be refused");
            assert_eq!(c.save(), saved, "a refused restore changes nothing");
            let mut d = $make;
            d.restore_payload(version, &payload).expect("restore");
            d.restore(pristine.clone()).expect("restore of the pristine state");
            assert_eq!(d.save(), pristine);
        }
    };
}
