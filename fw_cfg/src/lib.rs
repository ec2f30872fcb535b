//! fw_cfg device and direct kernel boot loaders (filled in by the fw_cfg work).
