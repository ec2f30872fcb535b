//! QMP (QEMU `docs/interop/qmp-spec.rst`) on one connection: fuzzer bytes
//! as what a client sends, through `qmp::serve_connection` over an
//! in-memory stream, so the session's framing, JSON parsing, dispatch and
//! reply encoding all run. Input starting with 0xFF gives, in its second
//! byte, the size of the reads the server sees (trickled requests);
//! otherwise the bytes arrive in one piece. The server must end with the
//! stream (no hang, no panic) and every reply must be JSON ending in CRLF.
#![no_main]

use std::sync::atomic::{AtomicU32, Ordering};

use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use xendm::control::qmp::{serve_connection, ChardevInfo, HotAddError, RunState, VcpuSet, VmControl};

/// A VM that accepts every command, switching state as `cont`/`stop` ask;
/// 2 of at most 8 vCPUs, growing on hot-add (`present` is a bitmask).
struct FuzzVm {
    state: AtomicU32,
    present: AtomicU32,
}

const MAX_VCPUS: u32 = 8;

impl VmControl for FuzzVm {
    fn status(&self) -> RunState {
        if self.state.load(Ordering::Relaxed) == 0 {
            RunState::Running
        } else {
            RunState::Paused
        }
    }
    fn cont(&self) -> Result<(), String> {
        self.state.store(0, Ordering::Relaxed);
        Ok(())
    }
    fn stop(&self) -> Result<(), String> {
        self.state.store(1, Ordering::Relaxed);
        Ok(())
    }
    fn chardevs(&self) -> Vec<ChardevInfo> {
        vec![ChardevInfo::pty("serial0", std::path::Path::new("/dev/pts/3"))]
    }
    fn vcpus(&self) -> VcpuSet {
        let mask = self.present.load(Ordering::Relaxed);
        VcpuSet { boot: 2, max: MAX_VCPUS, present: (0..MAX_VCPUS).filter(|i| mask & (1 << i) != 0).collect() }
    }
    fn hot_add_vcpu(&self, index: u32) -> Result<(), HotAddError> {
        if index >= MAX_VCPUS {
            return Err(HotAddError::OutOfRange { index, max: MAX_VCPUS });
        }
        let before = self.present.fetch_or(1 << index, Ordering::Relaxed);
        if before & (1 << index) != 0 {
            return Err(HotAddError::AlreadyPresent { index });
        }
        Ok(())
    }
    fn save_device_state(&self, _live: bool) -> Result<Vec<u8>, String> {
        Ok(b"XENDMDEV-fuzz".to_vec())
    }
    fn set_dirty_log(&self, _enable: bool) -> Result<(), String> {
        Ok(())
    }
    fn quit(&self) {}
}

fuzz_target!(|data: &[u8]| {
    let (chunk, input) = match data {
        [0xff, n, rest @ ..] => (usize::from(*n).max(1), rest),
        _ => (usize::MAX, data),
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (mut rx, mut tx) = tokio::io::split(client);
        let vm = FuzzVm { state: AtomicU32::new(0), present: AtomicU32::new(0b11) };
        let send = async {
            for piece in input.chunks(chunk.min(input.len().max(1))) {
                if tx.write_all(piece).await.is_err() {
                    break;
                }
            }
            let _ = tx.shutdown().await;
        };
        let mut replies = Vec::new();
        let receive = rx.read_to_end(&mut replies);
        let (served, (), received) = tokio::join!(serve_connection(server, &vm), send, receive);
        drop(served);
        received.unwrap();
        for line in replies.split_inclusive(|&b| b == b'\n') {
            assert!(line.ends_with(b"\r\n"), "reply without CRLF: {:?}", String::from_utf8_lossy(line));
            serde_json::from_slice::<serde_json::Value>(line).unwrap();
        }
    });
});
