//! The xenstore wire protocol, Xen's `xen/include/public/io/xs_wire.h`
//! (Xen 4.17), with the semantics of `docs/misc/xenstore.txt`:
//!
//! * every message is a 16-byte [`Header`] `{type, req_id, tx_id, len}` (four
//!   `u32` in the machine's byte order; Xen on x86 is little-endian, which
//!   is what we write) followed by `len <=` [`XENSTORE_PAYLOAD_MAX`] bytes of
//!   payload;
//! * strings in requests are NUL-terminated; `WRITE`'s value is the raw
//!   rest of the payload; `READ` replies carry the raw value;
//! * `ERROR` replies carry an errno name such as `ENOENT`;
//! * `WATCH_EVENT` messages (`path\0token\0`) arrive at any time, including
//!   between a request and its reply;
//! * permissions are strings of an access letter and a domain id (`b0`,
//!   `r7`).

use std::fmt;
use std::io;
use std::str::FromStr;
use std::time::Duration;

/// Largest payload of one message (`XENSTORE_PAYLOAD_MAX`).
pub const XENSTORE_PAYLOAD_MAX: usize = 4096;
/// Size of the message header (`struct xsd_sockmsg`).
pub const HEADER_LEN: usize = 16;
/// Longest absolute path xenstored accepts (`XENSTORE_ABS_PATH_MAX`).
pub const XENSTORE_ABS_PATH_MAX: usize = 3072;

/// Message types (`enum xsd_sockmsg_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Directory,
    Read,
    GetPerms,
    Watch,
    Unwatch,
    TransactionStart,
    TransactionEnd,
    GetDomainPath,
    Write,
    Mkdir,
    Rm,
    SetPerms,
    WatchEvent,
    Error,
}

impl Op {
    const ALL: [Op; 14] = [
        Op::Directory,
        Op::Read,
        Op::GetPerms,
        Op::Watch,
        Op::Unwatch,
        Op::TransactionStart,
        Op::TransactionEnd,
        Op::GetDomainPath,
        Op::Write,
        Op::Mkdir,
        Op::Rm,
        Op::SetPerms,
        Op::WatchEvent,
        Op::Error,
    ];

    /// The wire number.
    pub const fn code(self) -> u32 {
        match self {
            Op::Directory => 1,
            Op::Read => 2,
            Op::GetPerms => 3,
            Op::Watch => 4,
            Op::Unwatch => 5,
            Op::TransactionStart => 6,
            Op::TransactionEnd => 7,
            Op::GetDomainPath => 10,
            Op::Write => 11,
            Op::Mkdir => 12,
            Op::Rm => 13,
            Op::SetPerms => 14,
            Op::WatchEvent => 15,
            Op::Error => 16,
        }
    }

    /// The type for a wire number, if we know it.
    pub fn from_code(code: u32) -> Option<Op> {
        Self::ALL.into_iter().find(|op| op.code() == code)
    }

    /// The `XS_` name without its prefix, as used in error messages.
    pub const fn name(self) -> &'static str {
        match self {
            Op::Directory => "DIRECTORY",
            Op::Read => "READ",
            Op::GetPerms => "GET_PERMS",
            Op::Watch => "WATCH",
            Op::Unwatch => "UNWATCH",
            Op::TransactionStart => "TRANSACTION_START",
            Op::TransactionEnd => "TRANSACTION_END",
            Op::GetDomainPath => "GET_DOMAIN_PATH",
            Op::Write => "WRITE",
            Op::Mkdir => "MKDIR",
            Op::Rm => "RM",
            Op::SetPerms => "SET_PERMS",
            Op::WatchEvent => "WATCH_EVENT",
            Op::Error => "ERROR",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The message header (`struct xsd_sockmsg`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub ty: u32,
    pub req_id: u32,
    pub tx_id: u32,
    pub len: u32,
}

impl Header {
    /// Encodes the header.
    pub fn to_bytes(self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        for (chunk, v) in out.chunks_exact_mut(4).zip([self.ty, self.req_id, self.tx_id, self.len]) {
            chunk.copy_from_slice(&v.to_le_bytes());
        }
        out
    }

    /// Decodes a header from the first 16 bytes of `bytes`.
    pub fn parse(bytes: &[u8]) -> Option<Header> {
        let word = |i: usize| -> Option<u32> {
            let b: [u8; 4] = bytes.get(i * 4..i * 4 + 4)?.try_into().ok()?;
            Some(u32::from_le_bytes(b))
        };
        Some(Header { ty: word(0)?, req_id: word(1)?, tx_id: word(2)?, len: word(3)? })
    }
}

/// Access a domain has to a node (the letter of a permission string).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// `n`
    None,
    /// `r`
    Read,
    /// `w`
    Write,
    /// `b` (read and write)
    Both,
}

/// One entry of a node's permission list, written `n0`, `r5`, ... The first
/// entry names the owner (who always has full access) and, through its
/// letter, the access of every domain not listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Perm {
    pub access: Access,
    pub domid: u32,
}

impl Perm {
    /// A permission entry.
    pub const fn new(access: Access, domid: u32) -> Self {
        Self { access, domid }
    }
}

impl fmt::Display for Perm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = match self.access {
            Access::None => 'n',
            Access::Read => 'r',
            Access::Write => 'w',
            Access::Both => 'b',
        };
        write!(f, "{c}{}", self.domid)
    }
}

impl FromStr for Perm {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut chars = s.chars();
        let access = match chars.next() {
            Some('n') => Access::None,
            Some('r') => Access::Read,
            Some('w') => Access::Write,
            Some('b') => Access::Both,
            _ => return Err(format!("bad permission {s:?}")),
        };
        let digits = chars.as_str();
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("bad permission {s:?}"));
        }
        let domid = digits.parse().map_err(|_| format!("bad permission {s:?}"))?;
        Ok(Perm { access, domid })
    }
}

/// A watch firing: `path` changed (or is the initial event right after
/// `WATCH`), reported for the watch registered with `token`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    pub path: String,
    pub token: String,
}

/// Errors of xenstore operations; each names the operation and the path.
#[derive(Debug, thiserror::Error)]
pub enum XsError {
    /// No xenstore connection could be made.
    #[error("xenstore open: {0}")]
    Open(String),
    /// xenstored answered with an error (e.g. `ENOENT`, `EACCES`).
    #[error("xenstore {op} {path}: {errno}")]
    Server { op: Op, path: String, errno: String },
    /// Sending or receiving failed.
    #[error("xenstore {op} {path}: {source}")]
    Io {
        op: Op,
        path: String,
        #[source]
        source: io::Error,
    },
    /// The request would exceed [`XENSTORE_PAYLOAD_MAX`].
    #[error("xenstore {op} {path}: payload of {len} bytes exceeds {XENSTORE_PAYLOAD_MAX}")]
    TooLarge { op: Op, path: String, len: usize },
    /// The caller's argument cannot be sent (NUL byte, empty path, ...).
    #[error("xenstore {op} {path}: invalid argument: {why}")]
    Invalid { op: Op, path: String, why: String },
    /// The reply is not what the protocol allows.
    #[error("xenstore {op} {path}: protocol error: {detail}")]
    Protocol { op: Op, path: String, detail: String },
    /// No reply in time.
    #[error("xenstore {op} {path}: no reply within {timeout:?}")]
    Timeout { op: Op, path: String, timeout: Duration },
    /// The connection is gone.
    #[error("xenstore {op} {path}: connection closed: {reason}")]
    Closed { op: Op, path: String, reason: String },
    /// `watch` with a token this connection already uses.
    #[error("xenstore WATCH {path}: token {token:?} is already in use")]
    DuplicateToken { path: String, token: String },
}

impl XsError {
    /// The errno name when xenstored returned an error.
    pub fn errno(&self) -> Option<&str> {
        match self {
            XsError::Server { errno, .. } => Some(errno),
            _ => None,
        }
    }

    /// Whether xenstored said `ENOENT`.
    pub fn is_not_found(&self) -> bool {
        self.errno() == Some("ENOENT")
    }
}

pub(super) fn check_string(op: Op, what: &str, s: &str) -> Result<(), XsError> {
    if s.as_bytes().contains(&0) {
        return Err(XsError::Invalid { op, path: what.into(), why: "contains a NUL byte".into() });
    }
    Ok(())
}

pub(super) fn nul_terminated(op: Op, path: &str) -> Result<Vec<u8>, XsError> {
    check_string(op, path, path)?;
    if path.is_empty() {
        return Err(XsError::Invalid { op, path: path.into(), why: "empty path".into() });
    }
    if path.len() > XENSTORE_ABS_PATH_MAX {
        return Err(XsError::TooLarge { op, path: path.into(), len: path.len() });
    }
    let mut v = Vec::with_capacity(path.len() + 1);
    v.extend_from_slice(path.as_bytes());
    v.push(0);
    Ok(v)
}

pub(super) fn path_and_token(op: Op, path: &str, token: &str) -> Result<Vec<u8>, XsError> {
    check_string(op, path, token)?;
    let mut v = nul_terminated(op, path)?;
    v.extend_from_slice(token.as_bytes());
    v.push(0);
    Ok(v)
}

/// Splits a list of NUL-terminated strings (DIRECTORY, GET_PERMS replies).
///
/// # Errors
/// A string that is not UTF-8.
pub fn split_strings(op: Op, path: &str, payload: &[u8]) -> Result<Vec<String>, XsError> {
    let body = payload.strip_suffix(b"\0").unwrap_or(payload);
    if body.is_empty() {
        return Ok(Vec::new());
    }
    body.split(|&b| b == 0)
        .map(|s| {
            String::from_utf8(s.to_vec()).map_err(|_| XsError::Protocol {
                op,
                path: path.into(),
                detail: "reply is not UTF-8".into(),
            })
        })
        .collect()
}

/// A reply holding one string (READ as text, GET_DOMAIN_PATH,
/// TRANSACTION_START), NUL-terminated or not.
///
/// # Errors
/// A reply that is not UTF-8.
pub fn single_string(op: Op, path: &str, payload: &[u8]) -> Result<String, XsError> {
    let body = payload.strip_suffix(b"\0").unwrap_or(payload);
    String::from_utf8(body.to_vec()).map_err(|_| XsError::Protocol {
        op,
        path: path.into(),
        detail: "reply is not UTF-8".into(),
    })
}

/// The first whole message of a byte stream from xenstored, removed from
/// `buf`; `Ok(None)` while more bytes are needed (`buf` then holds at most
/// one header and [`XENSTORE_PAYLOAD_MAX`] bytes).
///
/// # Errors
/// A header announcing more than [`XENSTORE_PAYLOAD_MAX`] bytes: the stream
/// cannot be resynchronised and the connection must be dropped.
pub fn take_message(buf: &mut Vec<u8>) -> Result<Option<(Header, Vec<u8>)>, String> {
    let Some(header) = Header::parse(buf) else { return Ok(None) };
    let len = header.len as usize;
    if len > XENSTORE_PAYLOAD_MAX {
        return Err(format!("message of {len} bytes exceeds {XENSTORE_PAYLOAD_MAX}"));
    }
    let Some(payload) = buf.get(HEADER_LEN..HEADER_LEN + len) else { return Ok(None) };
    let payload = payload.to_vec();
    buf.drain(..HEADER_LEN + len);
    Ok(Some((header, payload)))
}

/// A `WATCH_EVENT` payload, `path\0token\0` (invalid UTF-8 replaced);
/// `None` without both strings.
pub fn parse_watch_event(payload: &[u8]) -> Option<WatchEvent> {
    let mut parts = payload.split(|&b| b == 0);
    let (path, token) = (parts.next()?, parts.next()?);
    Some(WatchEvent {
        path: String::from_utf8_lossy(path).into_owned(),
        token: String::from_utf8_lossy(token).into_owned(),
    })
}

/// The payload of a reply of type `ty` to a request `op`.
///
/// # Errors
/// [`XsError::Server`] with the errno of an `ERROR` reply;
/// [`XsError::Protocol`] for a reply of another type.
pub fn check_reply(op: Op, path: &str, ty: u32, payload: Vec<u8>) -> Result<Vec<u8>, XsError> {
    if ty == Op::Error.code() {
        let errno = String::from_utf8_lossy(payload.strip_suffix(b"\0").unwrap_or(&payload)).into_owned();
        return Err(XsError::Server { op, path: path.into(), errno });
    }
    if ty != op.code() {
        return Err(XsError::Protocol {
            op,
            path: path.into(),
            detail: format!("reply has type {ty} for request type {}", op.code()),
        });
    }
    Ok(payload)
}

/// A reply that must be `OK` (WRITE, MKDIR, RM, SET_PERMS, WATCH, ...).
///
/// # Errors
/// [`XsError::Protocol`] for anything else.
pub fn expect_ok(op: Op, path: &str, reply: &[u8]) -> Result<(), XsError> {
    if reply == b"OK\0" || reply == b"OK" {
        Ok(())
    } else {
        Err(XsError::Protocol {
            op,
            path: path.into(),
            detail: format!("expected OK, got {:?}", String::from_utf8_lossy(reply)),
        })
    }
}

/// A GET_PERMS reply: the permission list, owner first.
///
/// # Errors
/// A string that is not UTF-8 or not a permission.
pub fn parse_perms(path: &str, reply: &[u8]) -> Result<Vec<Perm>, XsError> {
    let words = split_strings(Op::GetPerms, path, reply)?;
    words
        .iter()
        .map(|w| w.parse().map_err(|detail| XsError::Protocol { op: Op::GetPerms, path: path.into(), detail }))
        .collect()
}

/// A TRANSACTION_START reply: the new transaction's id (never 0).
///
/// # Errors
/// Not a decimal `u32`, or 0.
pub fn parse_transaction_id(reply: &[u8]) -> Result<u32, XsError> {
    let protocol = |detail| XsError::Protocol { op: Op::TransactionStart, path: String::new(), detail };
    let id = single_string(Op::TransactionStart, "", reply)?;
    match id.parse::<u32>() {
        Ok(0) => Err(protocol("transaction id 0".into())),
        Ok(n) => Ok(n),
        Err(_) => Err(protocol(format!("bad transaction id {id:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perm_strings() {
        assert_eq!("n0".parse::<Perm>().unwrap(), Perm::new(Access::None, 0));
        assert_eq!("b32752".parse::<Perm>().unwrap(), Perm::new(Access::Both, 32752));
        assert_eq!(Perm::new(Access::Write, 7).to_string(), "w7");
        for bad in ["", "n", "x1", "r-1", "r1a", "r99999999999", "r+1"] {
            assert!(bad.parse::<Perm>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn header_encoding() {
        let h = Header { ty: 11, req_id: 0x0102_0304, tx_id: 7, len: 4096 };
        let b = h.to_bytes();
        assert_eq!(b, [11, 0, 0, 0, 4, 3, 2, 1, 7, 0, 0, 0, 0, 16, 0, 0]);
        assert_eq!(Header::parse(&b), Some(h));
        assert_eq!(Header::parse(&b[..15]), None);
        for op in Op::ALL {
            assert_eq!(Op::from_code(op.code()), Some(op));
        }
        assert_eq!(Op::from_code(8), None);
        assert_eq!((Op::Read.code(), Op::Write.code(), Op::Error.code(), Op::WatchEvent.code()), (2, 11, 16, 15));
    }

    #[test]
    fn replies_from_a_hostile_daemon_are_errors_not_panics() {
        let mut buf = Header { ty: 2, req_id: 1, tx_id: 0, len: 3 }.to_bytes().to_vec();
        buf.extend_from_slice(b"ab");
        assert_eq!(take_message(&mut buf), Ok(None), "payload incomplete");
        buf.push(b'c');
        let (h, p) = take_message(&mut buf).unwrap().unwrap();
        assert_eq!((h.req_id, p.as_slice(), buf.len()), (1, &b"abc"[..], 0));
        let mut huge = Header { ty: 2, req_id: 1, tx_id: 0, len: u32::MAX }.to_bytes().to_vec();
        assert!(take_message(&mut huge).unwrap_err().contains("exceeds"));
        assert_eq!(parse_watch_event(b"p\0t\0"), Some(WatchEvent { path: "p".into(), token: "t".into() }));
        assert_eq!(parse_watch_event(b"p"), None);
        assert!(matches!(
            check_reply(Op::Read, "/x", Op::Error.code(), b"ENOENT\0".to_vec()),
            Err(XsError::Server { .. })
        ));
        assert!(matches!(check_reply(Op::Read, "/x", 99, vec![]), Err(XsError::Protocol { .. })));
        assert!(expect_ok(Op::Write, "/x", b"OK\0").is_ok() && expect_ok(Op::Write, "/x", b"NO").is_err());
        assert_eq!(
            parse_perms("/x", b"b0\0r5\0").unwrap(),
            vec![Perm::new(Access::Both, 0), Perm::new(Access::Read, 5)]
        );
        assert!(parse_perms("/x", b"x0\0").is_err());
        assert_eq!(parse_transaction_id(b"7\0").unwrap(), 7);
        assert!(parse_transaction_id(b"0\0").is_err() && parse_transaction_id(b"\xff").is_err());
    }
}
