//! What a hostile xenstored can send the client (Xen `io/xs_wire.h`): the
//! fuzzer's bytes as the stream from the daemon, arriving in reads of a
//! size the first byte chooses, framed by `wire::take_message` as the
//! client's reader thread frames them; each message decoded as a watch
//! event or as the reply to one of the client's requests (the request is
//! picked by the message's `req_id`), with the decoder that request uses.
//! Nothing may panic, and the reader's buffer never holds more than one
//! message plus one read.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xendm::xen::xenstore::wire::{
    check_reply, expect_ok, parse_perms, parse_transaction_id, parse_watch_event, single_string, split_strings,
    take_message, Op, HEADER_LEN, XENSTORE_PAYLOAD_MAX,
};

/// The requests the client sends, in the order `req_id % 12` picks them.
const REQUESTS: [Op; 12] = [
    Op::Read,
    Op::Directory,
    Op::GetPerms,
    Op::TransactionStart,
    Op::GetDomainPath,
    Op::Write,
    Op::Mkdir,
    Op::Rm,
    Op::SetPerms,
    Op::Watch,
    Op::Unwatch,
    Op::TransactionEnd,
];

fn decode(op: Op, payload: &[u8]) {
    let path = "/local/domain/0/device-model/1/state";
    match op {
        Op::Read | Op::GetDomainPath => drop(single_string(op, path, payload)),
        Op::Directory => drop(split_strings(op, path, payload)),
        Op::GetPerms => drop(parse_perms(path, payload)),
        Op::TransactionStart => drop(parse_transaction_id(payload)),
        _ => drop(expect_ok(op, path, payload)),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, stream)) = data.split_first() else { return };
    let read_size = usize::from(first).max(1) * 16;
    let mut buf = Vec::new();
    'reads: for read in stream.chunks(read_size) {
        buf.extend_from_slice(read);
        loop {
            let (header, payload) = match take_message(&mut buf) {
                Ok(Some(m)) => m,
                Ok(None) => break,
                // The client drops the connection here.
                Err(_) => break 'reads,
            };
            if header.ty == Op::WatchEvent.code() {
                drop(parse_watch_event(&payload));
                continue;
            }
            let op = REQUESTS[header.req_id as usize % REQUESTS.len()];
            if let Ok(p) = check_reply(op, "/path", header.ty, payload) {
                decode(op, &p);
            }
        }
        assert!(buf.len() < HEADER_LEN + XENSTORE_PAYLOAD_MAX + read_size, "reader holds {} bytes", buf.len());
    }
});
