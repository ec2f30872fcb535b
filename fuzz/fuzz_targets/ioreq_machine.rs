//! A full xenfv machine (fw_cfg with DMA, COM1, PIIX3/PIIX4, the Xen
//! platform device) fed decoded ioreqs: sync and buffered requests, junk
//! buffered rings, fw_cfg DMA descriptors and scribbles in guest memory.
//! Every response is checked to be architecturally sane, and one request may
//! queue at most 16 range changes (`tests/fuzz_ioreq.rs` checks the same).
#![no_main]

use std::sync::Arc;

use arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use vm_memory::GuestAddress;
use xendm_devices::hv::FakeHypervisor;
use xendm_devices::mem::TestMemory;
use xendm_devices::GuestMemory;
use xendm_fuzz::{check_response, guest_addr, ioreq, junk_ring, machine, DESC_ZONE, RAM_MIB};

/// Operations per input (each is at most one ioreq's worth of work).
const MAX_OPS: usize = 512;

fn run(data: &[u8]) -> arbitrary::Result<()> {
    let mut u = Unstructured::new(data);
    let mem = Arc::new(TestMemory::pc(RAM_MIB << 20).unwrap());
    let hv = Arc::new(FakeHypervisor::new());
    let mut engine = machine(mem.clone(), hv.clone());
    for _ in 0..MAX_OPS {
        if u.is_empty() {
            break;
        }
        match u.int_in_range(0..=31u8)? {
            0 | 1 => {
                // A fw_cfg DMA descriptor: control, length, address (big-endian).
                let slot = DESC_ZONE + 16 * u64::from(u.int_in_range(0..=15u8)?);
                let control: u32 = u.arbitrary()?;
                let length: u32 = if u.arbitrary()? { u.int_in_range(0..=8192)? } else { u.arbitrary()? };
                let mut d = [0u8; 16];
                d[..4].copy_from_slice(&control.to_be_bytes());
                d[4..8].copy_from_slice(&length.to_be_bytes());
                d[8..].copy_from_slice(&guest_addr(&mut u)?.to_be_bytes());
                mem.write(GuestAddress(slot), &d).unwrap();
            }
            2 => {
                let at = guest_addr(&mut u)?;
                let n = u.int_in_range(0..=64usize)?;
                let bytes = u.bytes(n)?;
                let _ = mem.write(GuestAddress(at), bytes);
            }
            3 => {
                let ring = junk_ring(&mut u)?;
                let n = engine.drain_buffered(&ring);
                assert!(n <= xendm::ioreq::engine::MAX_BUFFERED_PER_DRAIN, "drained {n}");
            }
            4..=6 => {
                let mut req = ioreq(&mut u)?;
                (req.is_read, req.data_is_ptr, req.count) = (false, false, 1);
                check_response(&req, engine.handle_buffered_request(&req));
            }
            _ => {
                let req = ioreq(&mut u)?;
                let vcpu = u.int_in_range(0..=3)?;
                check_response(&req, engine.handle(vcpu, &req));
            }
        }
        let changes = engine.bus_mut().take_changes();
        assert!(changes.len() <= 16, "one request queued {} range changes", changes.len());
        hv.take();
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(data);
});
