//! The `xendm` process around the machine: start-up steps, run state and
//! privilege dropping.

pub mod privileges;
