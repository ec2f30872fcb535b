//! Replies in QEMU's bytes: `qobject_to_json` spacing (`", "` and `": "`),
//! one line, CRLF (libxl splits only on CRLF), `return` before `id`, and
//! QEMU's error shape `{"error": {"class", "desc"}}`.

use std::io;

use serde::Serialize;
use serde_json::Value;

use super::QmpError;

/// One reply before encoding.
pub(super) enum Reply {
    /// The `return` value, already encoded.
    Return(Vec<u8>),
    Error {
        class: &'static str,
        desc: String,
    },
}

pub(super) fn generic(desc: impl Into<String>) -> Reply {
    Reply::Error { class: "GenericError", desc: desc.into() }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    class: &'a str,
    desc: &'a str,
}

#[derive(Serialize)]
struct ErrorMsg<'a> {
    error: ErrorBody<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a Value>,
}

pub(super) fn empty_return() -> Reply {
    Reply::Return(b"{}".to_vec())
}

/// Encodes a return value now, keeping the struct's member order (a
/// `serde_json::Value` would sort the members).
pub(super) fn to_return<T: Serialize>(value: &T) -> Reply {
    let mut out = Vec::with_capacity(64);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, QemuFormatter);
    match value.serialize(&mut ser) {
        Ok(()) => Reply::Return(out),
        Err(e) => generic(format!("internal error encoding reply: {e}")),
    }
}

pub(super) fn encode_reply(reply: &Reply, id: Option<&Value>) -> Result<Vec<u8>, QmpError> {
    match reply {
        Reply::Return(ret) => {
            // `{"return": <ret>, "id": <id>}` in QEMU's member order.
            let mut out = Vec::with_capacity(ret.len() + 32);
            out.extend_from_slice(b"{\"return\": ");
            out.extend_from_slice(ret);
            if let Some(id) = id {
                out.extend_from_slice(b", \"id\": ");
                let mut ser = serde_json::Serializer::with_formatter(&mut out, QemuFormatter);
                id.serialize(&mut ser).map_err(QmpError::Encode)?;
            }
            out.extend_from_slice(b"}\r\n");
            Ok(out)
        }
        Reply::Error { class, desc } => encode(&ErrorMsg { error: ErrorBody { class, desc }, id }),
    }
}

/// Serialises one message the way QEMU prints it (`", "` and `": "`
/// separators, one line) and appends CRLF.
pub(super) fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, QmpError> {
    let mut out = Vec::with_capacity(128);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, QemuFormatter);
    msg.serialize(&mut ser).map_err(QmpError::Encode)?;
    out.extend_from_slice(b"\r\n");
    Ok(out)
}

/// serde_json formatter reproducing QEMU's `qobject_to_json` spacing. Note
/// that `serde_json::Value` objects are ordered by key (no `preserve_order`),
/// so member order follows QEMU only where we serialise structs.
struct QemuFormatter;

impl serde_json::ser::Formatter for QemuFormatter {
    fn begin_array_value<W: ?Sized + io::Write>(&mut self, writer: &mut W, first: bool) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + io::Write>(&mut self, writer: &mut W, first: bool) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        writer.write_all(b": ")
    }
}

/// Byte offset of serde_json's (1-based line, column) error position.
pub(super) fn error_offset(buf: &[u8], line: usize, column: usize) -> usize {
    let mut offset = 0usize;
    let mut current = 1usize;
    for (i, &b) in buf.iter().enumerate() {
        if current == line {
            offset = i;
            break;
        }
        if b == b'\n' {
            current += 1;
            offset = i + 1;
        }
    }
    offset.saturating_add(column.saturating_sub(1)).min(buf.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_offset_maps_line_and_column() {
        let buf = b"ab\ncdef\ng";
        assert_eq!(error_offset(buf, 1, 1), 0);
        assert_eq!(error_offset(buf, 2, 3), 5);
        assert_eq!(error_offset(buf, 3, 1), 8);
        assert_eq!(error_offset(buf, 9, 9), buf.len());
    }
}
