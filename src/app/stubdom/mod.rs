//! xendm in a Linux stubdomain (`docs/stubdom.md`; the protocol is libxl
//! 4.17's, `xen-toolstack.md` section 1): the argv from xenstore
//! (`argv.rs`), the stub's consoles (`consoles.rs`).

pub mod argv;
pub mod consoles;
