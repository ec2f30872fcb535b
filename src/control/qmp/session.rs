//! One QMP connection's protocol state, independent of the transport
//! (QEMU `docs/interop/qmp-spec.rst`): requests parsed as a stream of JSON
//! values (one read may hold part of a request or several), checked the way
//! QEMU's dispatcher checks them, and capabilities negotiation first.
//!
//! Where we differ from QEMU:
//! * the input buffer is capped at [`MAX_INPUT`] (1 MiB): a longer request
//!   gets an error and the connection is closed;
//! * after a malformed JSON text we skip to the next newline (libxl ends
//!   every request with CRLF) instead of replaying QEMU's lexer recovery;
//! * input is parsed when a top-level value may have ended (bracket nesting
//!   and strings are tracked as bytes arrive) or the pending input doubled,
//!   so a request trickled in byte by byte costs linear work; a syntax error
//!   inside a request still open across reads is therefore reported at the
//!   latest when the request closes or its bytes double, not at once.

use serde_json::{Map, Value};

use super::commands;
use super::encode::{empty_return, encode_reply, error_offset, generic, Reply};
use super::fds::Fds;
use super::{QmpError, VmControl, MAX_INPUT};

/// Output of feeding bytes into a [`Session`].
#[derive(Debug, Default)]
pub(super) struct Output {
    /// Encoded messages, each ending in CRLF.
    pub(super) replies: Vec<Vec<u8>>,
    /// `quit` was executed: call [`VmControl::quit`] once the replies are out.
    pub(super) quit: bool,
    /// Close the connection after sending the replies.
    pub(super) close: bool,
}

/// Protocol state of one connection, independent of the transport.
pub(super) struct Session {
    negotiated: bool,
    buf: Vec<u8>,
    /// After a syntax error: drop input up to and including the next `\n`.
    skip_line: bool,
    /// Nesting of the unparsed input, to know when to parse it.
    scan: Scan,
    /// Length of the unparsed input at the last parse attempt.
    last_try: usize,
    /// Bytes of input re-read by failed (incomplete) parses or moved by
    /// draining consumed input; stays proportional to the input.
    rework: u64,
    /// Descriptors the client passed, and its fd sets (`fds.rs`).
    fds: Fds,
}

/// Tracks JSON nesting over the unparsed input, incrementally, to tell
/// whether a top-level value may have ended (a closing bracket back at depth
/// 0, a closing quote or any other byte of a scalar at depth 0). Brackets
/// inside strings and escaped quotes are skipped. It only decides *when* to
/// parse; serde_json still does the parsing.
#[derive(Debug, Default)]
struct Scan {
    scanned: usize,
    depth: u32,
    in_string: bool,
    escaped: bool,
}

impl Scan {
    /// Scans `buf` past what was scanned before; whether a top-level value
    /// may end in the new bytes.
    fn advance(&mut self, buf: &[u8]) -> bool {
        let mut may_end = false;
        for &b in buf.get(self.scanned..).unwrap_or_default() {
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                } else if b == b'\\' {
                    self.escaped = true;
                } else if b == b'"' {
                    self.in_string = false;
                    may_end |= self.depth == 0;
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.depth = self.depth.saturating_add(1),
                b'}' | b']' => {
                    self.depth = self.depth.saturating_sub(1);
                    may_end |= self.depth == 0;
                }
                b' ' | b'\t' | b'\r' | b'\n' => {}
                _ => may_end |= self.depth == 0,
            }
        }
        self.scanned = buf.len();
        may_end
    }
}

impl Session {
    pub(super) fn new() -> Self {
        Self {
            negotiated: false,
            buf: Vec::new(),
            skip_line: false,
            scan: Scan::default(),
            last_try: 0,
            rework: 0,
            fds: Fds::default(),
        }
    }

    /// Takes the bytes of one read; returns the replies to send.
    #[cfg(test)]
    pub(super) fn feed(&mut self, data: &[u8], ctl: &dyn VmControl) -> Result<Output, QmpError> {
        self.feed_with_fds(data, Vec::new(), ctl)
    }

    /// Takes the bytes of one read and the descriptors that came with them
    /// (kept for `add-fd`); returns the replies to send.
    pub(super) fn feed_with_fds(
        &mut self,
        mut data: &[u8],
        fds: Vec<std::os::fd::OwnedFd>,
        ctl: &dyn VmControl,
    ) -> Result<Output, QmpError> {
        self.fds.receive(fds);
        let mut out = Output::default();
        if self.skip_line {
            match data.iter().position(|&b| b == b'\n') {
                Some(nl) => {
                    data = data.get(nl + 1..).unwrap_or_default();
                    self.skip_line = false;
                }
                None => return Ok(out),
            }
        }
        self.buf.extend_from_slice(data);
        // An incomplete value left by an earlier read is parsed again only
        // if it may be complete now, or has doubled since the last try (so
        // a syntax error inside it is still found), never once per read.
        let may_end = self.scan.advance(&self.buf);
        if !may_end && self.buf.len() < self.last_try.saturating_mul(2) {
            return self.check_size(out);
        }
        // Values are consumed by moving `start`; the buffer is drained once.
        let mut start = 0usize;
        loop {
            let rest = self.buf.get(start..).unwrap_or_default();
            let mut stream = serde_json::Deserializer::from_slice(rest).into_iter::<Value>();
            match stream.next() {
                None => {
                    // Only whitespace left.
                    start = self.buf.len();
                    break;
                }
                Some(Ok(value)) => {
                    start = start.saturating_add(stream.byte_offset()).min(self.buf.len());
                    self.execute(value, ctl, &mut out)?;
                }
                Some(Err(e)) if e.is_eof() => break,
                Some(Err(e)) => {
                    out.replies.push(encode_reply(&generic(format!("JSON parse error, {e}")), None)?);
                    let at = error_offset(rest, e.line(), e.column());
                    match rest.get(at..).and_then(|r| r.iter().position(|&b| b == b'\n')) {
                        Some(nl) => {
                            start = start.saturating_add(at + nl + 1).min(self.buf.len());
                        }
                        None => {
                            start = self.buf.len();
                            self.skip_line = true;
                            break;
                        }
                    }
                }
            }
        }
        self.buf.drain(..start);
        self.rework += self.buf.len() as u64;
        // What is left is the start of one incomplete value: rescan it
        // (no more work than the parse that just stopped at its end).
        self.scan = Scan::default();
        self.scan.advance(&self.buf);
        self.last_try = self.buf.len();
        self.check_size(out)
    }

    /// Whether a request has begun and not ended: unparsed input, or a
    /// malformed line not skipped to its end yet.
    pub(super) fn has_partial_input(&self) -> bool {
        !self.buf.is_empty() || self.skip_line
    }

    /// Refuses input that grew beyond [`MAX_INPUT`] and closes the connection.
    fn check_size(&mut self, mut out: Output) -> Result<Output, QmpError> {
        if self.buf.len() > MAX_INPUT {
            tracing::warn!(len = self.buf.len(), "QMP request exceeds {MAX_INPUT} bytes; closing connection");
            out.replies.push(encode_reply(&generic(format!("QMP input exceeds {MAX_INPUT} bytes")), None)?);
            self.buf.clear();
            self.scan = Scan::default();
            self.last_try = 0;
            out.close = true;
        }
        Ok(out)
    }

    /// Runs one request and queues its reply.
    fn execute(&mut self, request: Value, ctl: &dyn VmControl, out: &mut Output) -> Result<(), QmpError> {
        let Value::Object(request) = request else {
            out.replies.push(encode_reply(&generic("QMP input must be a JSON object"), None)?);
            return Ok(());
        };
        let id = request.get("id");
        let reply = match check_request(&request) {
            Err(reply) => reply,
            Ok((name, args)) => self.dispatch(name, args, ctl, out),
        };
        out.replies.push(encode_reply(&reply, id)?);
        Ok(())
    }

    fn dispatch(&mut self, name: &str, args: &Map<String, Value>, ctl: &dyn VmControl, out: &mut Output) -> Reply {
        if !self.negotiated {
            if name != "qmp_capabilities" {
                return Reply::Error {
                    class: "CommandNotFound",
                    desc: "Expecting capabilities negotiation with 'qmp_capabilities'".into(),
                };
            }
            return match qmp_capabilities(args) {
                Ok(()) => {
                    self.negotiated = true;
                    empty_return()
                }
                Err(r) => r,
            };
        }
        let outcome = commands::dispatch(name, args, ctl, &mut self.fds);
        out.quit |= outcome.quit;
        outcome.reply
    }
}

/// Validates the request object's members the way QEMU's dispatcher does and
/// returns the command name and its arguments.
fn check_request(request: &Map<String, Value>) -> Result<(&str, &Map<String, Value>), Reply> {
    static NO_ARGS: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
    let mut name = None;
    let mut args = None;
    for (key, value) in request {
        match key.as_str() {
            "execute" => match value {
                Value::String(s) => name = Some(s.as_str()),
                _ => return Err(generic("QMP input member 'execute' must be a string")),
            },
            "arguments" => match value {
                Value::Object(m) => args = Some(m),
                _ => return Err(generic("QMP input member 'arguments' must be an object")),
            },
            "id" => {}
            other => return Err(generic(format!("QMP input member '{other}' is unexpected"))),
        }
    }
    let Some(name) = name else {
        return Err(generic("QMP input lacks member 'execute'"));
    };
    Ok((name, args.unwrap_or_else(|| NO_ARGS.get_or_init(Map::new))))
}

fn qmp_capabilities(args: &Map<String, Value>) -> Result<(), Reply> {
    for (key, value) in args {
        if key != "enable" {
            return Err(generic(format!("Parameter '{key}' is unexpected")));
        }
        let Value::Array(caps) = value else {
            return Err(generic("Invalid parameter type for 'enable', expected: array"));
        };
        // We offer no capabilities, so any element is an error.
        if let Some(cap) = caps.first() {
            return Err(match cap {
                Value::String(s) if s == "oob" => generic("Capability oob not available"),
                Value::String(s) => generic(format!("Parameter 'enable[0]' does not accept value '{s}'")),
                _ => generic("Invalid parameter type for 'enable[0]', expected: string"),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::qmp::{ChardevInfo, RunState};

    struct IdleVm;
    impl VmControl for IdleVm {
        fn status(&self) -> RunState {
            RunState::Running
        }
        fn cont(&self) -> Result<(), String> {
            Ok(())
        }
        fn stop(&self) -> Result<(), String> {
            Ok(())
        }
        fn chardevs(&self) -> Vec<ChardevInfo> {
            Vec::new()
        }
        fn vcpus(&self) -> crate::control::qmp::VcpuSet {
            crate::control::qmp::VcpuSet::fixed(1)
        }
        fn hot_add_vcpu(&self, _index: u32) -> Result<(), crate::control::qmp::HotAddError> {
            Err(crate::control::qmp::HotAddError::Unsupported)
        }
        fn save_device_state(&self, _live: bool) -> Result<Vec<u8>, String> {
            Err("no devices".into())
        }
        fn set_dirty_log(&self, _enable: bool) -> Result<(), String> {
            Ok(())
        }
        fn quit(&self) {}
    }

    #[test]
    fn many_values_in_one_read_cost_linear_work() {
        let mut s = Session::new();
        let input = "1 ".repeat(20_000);
        let out = s.feed(input.as_bytes(), &IdleVm).unwrap();
        assert_eq!(out.replies.len(), 20_000, "one error per non-object");
        assert!(s.rework <= 4 * input.len() as u64, "{} bytes of rework for {} of input", s.rework, input.len());
    }

    #[test]
    fn a_request_dribbled_byte_by_byte_costs_linear_work() {
        let mut s = Session::new();
        s.feed(b"{\"execute\":\"qmp_capabilities\"}\r\n", &IdleVm).unwrap();
        let body = "a".repeat(20_000);
        let req =
            format!("{{\"execute\":\"cont\",\"arguments\":{{\"s\":[\"{body}\\\"]}}\"], \"x\": [[]]}}, \"id\": 9}}\r\n");
        let mut replies = Vec::new();
        for b in req.as_bytes() {
            replies.extend(s.feed(&[*b], &IdleVm).unwrap().replies);
        }
        assert_eq!(replies.len(), 1, "exactly one reply, once the request is complete");
        let r: Value = serde_json::from_slice(replies.first().unwrap()).unwrap();
        assert_eq!(r["id"], 9, "{r}");
        assert!(s.rework <= 6 * req.len() as u64, "{} bytes of rework for {} of input", s.rework, req.len());
        // A request split in two, the second part too small to double the
        // buffer, is still answered as soon as it is complete.
        assert!(s.feed(b"{\"execute\":\"query-status\",\"id\":10", &IdleVm).unwrap().replies.is_empty());
        let out = s.feed(b"}", &IdleVm).unwrap();
        assert_eq!(out.replies.len(), 1);
        // Malformed input in one read is still reported at once.
        let out = s.feed(b"{\"execute\": oops\r\n", &IdleVm).unwrap();
        assert_eq!(out.replies.len(), 1);
    }
}
