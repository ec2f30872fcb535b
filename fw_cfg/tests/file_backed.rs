//! fw_cfg items backed by their boot files, through the device's public
//! interface (QEMU `docs/specs/fw_cfg.rst`: selector 0x510, data 0x511, DMA
//! address at 0x514): served from the open file by DMA and by the data
//! port, and a file truncated after start-up gives the DMA error bit and 0
//! from the data port, never other bytes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)] // test code

use std::sync::Arc;

use vm_memory::GuestAddress;
use xendm_devices::mem::TestMemory;
use xendm_devices::{BusDevice, GuestMemory};
use xendm_fw_cfg::{keys, Blob, FwCfg, FwCfgItems, FwCfgOptions, LoadedFile};

const DMA_SELECT_READ: u32 = 0x08 | 0x02;

/// Runs one DMA READ of `len` bytes of `key` to `to`; the control word after.
fn dma_read(fw: &mut FwCfg, m: &TestMemory, key: u16, len: u32, to: u64) -> u32 {
    let mut d = Vec::new();
    d.extend_from_slice(&((u32::from(key) << 16) | DMA_SELECT_READ).to_be_bytes());
    d.extend_from_slice(&len.to_be_bytes());
    d.extend_from_slice(&to.to_be_bytes());
    m.write(GuestAddress(0x1000), &d).unwrap();
    fw.write(8, &0x1000u32.to_be_bytes());
    let mut c = [0u8; 4];
    m.read(GuestAddress(0x1000), &mut c).unwrap();
    u32::from_be_bytes(c)
}

fn port_bytes(fw: &mut FwCfg, key: u16, n: usize) -> Vec<u8> {
    fw.write(0, &key.to_le_bytes());
    (0..n)
        .map(|_| {
            let mut b = [0u8];
            fw.read(1, &mut b);
            b[0]
        })
        .collect()
}

#[test]
fn file_backed_items_are_served_and_truncation_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("initrd");
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 241) as u8).collect();
    std::fs::write(&path, &data).unwrap();
    let file = LoadedFile::open(&path, "initrd").unwrap();
    let mut items = FwCfgItems::new(&FwCfgOptions::default()).unwrap();
    let mut blob = Blob::new();
    blob.push_file(&file, 0, file.len()).unwrap();
    items.add_blob(keys::INITRD_DATA, blob).unwrap();
    let m = Arc::new(TestMemory::pc(2 << 20).unwrap());
    let mut fw = FwCfg::new(m.clone(), items);

    assert_eq!(dma_read(&mut fw, &m, keys::INITRD_DATA, 200_000, 0x10_0000), 0);
    let mut got = vec![0u8; 200_000];
    m.read(GuestAddress(0x10_0000), &mut got).unwrap();
    assert_eq!(got, data);
    assert_eq!(port_bytes(&mut fw, keys::INITRD_DATA, 5000), data[..5000], "across the 4 KiB port buffer");

    std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(1000).unwrap();
    m.write(GuestAddress(0x10_0000), &[0xee; 16]).unwrap();
    assert_eq!(dma_read(&mut fw, &m, keys::INITRD_DATA, 200_000, 0x10_0000), 1, "the ERROR bit");
    let mut head = [0u8; 16];
    m.read(GuestAddress(0x10_0000), &mut head).unwrap();
    assert_eq!(head, [0xee; 16], "nothing of a failed read is written");
    assert_eq!(port_bytes(&mut fw, keys::INITRD_DATA, 3), [0, 0, 0]);
}
