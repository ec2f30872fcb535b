//! Reading a trace file: the header (version checked), then records one by
//! one, each line bounded so a corrupt or hostile file cannot make us buffer
//! without limit.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use super::format::{Header, Record, TraceError, TRACE_VERSION};

/// Reads a trace file: the header, then records one by one.
pub struct TraceReader {
    path: PathBuf,
    reader: BufReader<flate2::read::GzDecoder<std::fs::File>>,
    line: usize,
    /// Set after an unreadable or overlong line: iteration ends.
    done: bool,
    /// The trace's header.
    pub header: Header,
}

/// Longest line accepted from a trace file (a record with a 4 KiB rep read
/// inlined is ~9 KiB).
const MAX_LINE: usize = 1 << 20;

/// Why [`next_line`] returned no line.
#[derive(Debug)]
enum LineError {
    Io(std::io::Error),
    /// More than the limit before a newline; the rest was not read.
    TooLong,
}

impl std::fmt::Display for LineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io(e) => e.fmt(f),
            Self::TooLong => write!(f, "line longer than {MAX_LINE} bytes"),
        }
    }
}

/// The next line of `r` without its `\n` or `\r\n`, reading at most
/// `max + 2` bytes, so a file without newlines (or a gzip bomb) cannot make
/// us buffer more than `max` bytes. `None` at end of input.
fn next_line<R: BufRead>(r: &mut R, max: usize) -> Result<Option<String>, LineError> {
    let mut buf = Vec::new();
    // Room for the line and a CRLF.
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(2);
    let n = std::io::Read::take(&mut *r, limit).read_until(b'\n', &mut buf).map_err(LineError::Io)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
    }
    if buf.len() > max {
        return Err(LineError::TooLong);
    }
    String::from_utf8(buf).map(Some).map_err(|e| LineError::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))
}

impl TraceReader {
    /// Opens `path` and reads its header.
    ///
    /// # Errors
    /// If the file cannot be read, is not a trace, or has another version.
    pub fn open(path: &Path) -> Result<Self, TraceError> {
        let f = std::fs::File::open(path).map_err(|source| TraceError::Io { path: path.to_path_buf(), source })?;
        let mut reader = BufReader::new(flate2::read::GzDecoder::new(f));
        let fmt = |line, reason: String| TraceError::Format { path: path.to_path_buf(), line, reason };
        let first = next_line(&mut reader, MAX_LINE)
            .map_err(|e| fmt(1, e.to_string()))?
            .ok_or_else(|| fmt(1, "empty file".into()))?;
        let v: serde_json::Value = serde_json::from_str(&first).map_err(|e| fmt(1, e.to_string()))?;
        let found = v
            .get("xendm_trace")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| fmt(1, "not an xendm trace header".into()))?;
        if found != u64::from(TRACE_VERSION) {
            return Err(TraceError::Version { path: path.to_path_buf(), found });
        }
        let header: Header = serde_json::from_value(v).map_err(|e| fmt(1, e.to_string()))?;
        Ok(Self { path: path.to_path_buf(), reader, line: 1, done: false, header })
    }
}

impl Iterator for TraceReader {
    type Item = Result<Record, TraceError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let line = next_line(&mut self.reader, MAX_LINE).transpose()?;
        self.line += 1;
        let fmt = |reason: String| TraceError::Format { path: self.path.clone(), line: self.line, reason };
        Some(match line {
            Err(e) => {
                self.done = true;
                Err(fmt(e.to_string()))
            }
            Ok(l) => serde_json::from_str(&l).map_err(|e| fmt(e.to_string())),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn version_and_garbage_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.jsonl.gz");
        let mut gz = flate2::write::GzEncoder::new(std::fs::File::create(&p).unwrap(), flate2::Compression::fast());
        writeln!(gz, "{{\"xendm_trace\":99,\"argv\":[],\"producer\":\"x\"}}").unwrap();
        gz.finish().unwrap();
        assert!(matches!(TraceReader::open(&p), Err(TraceError::Version { found: 99, .. })));
        // A version beyond u32 is reported as written, not truncated (to 1 here).
        let mut gz = flate2::write::GzEncoder::new(std::fs::File::create(&p).unwrap(), flate2::Compression::fast());
        writeln!(gz, "{{\"xendm_trace\":4294967297,\"argv\":[],\"producer\":\"x\"}}").unwrap();
        gz.finish().unwrap();
        assert!(matches!(TraceReader::open(&p), Err(TraceError::Version { found: 4_294_967_297, .. })));
        std::fs::write(&p, b"not gzip").unwrap();
        assert!(TraceReader::open(&p).is_err());
    }

    #[test]
    fn overlong_lines_are_refused_without_reading_them_whole() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.jsonl.gz");
        let header = format!("{{\"xendm_trace\":{TRACE_VERSION},\"argv\":[],\"producer\":\"x\"}}");
        // A header padded with whitespace past the limit is refused.
        let mut gz = flate2::write::GzEncoder::new(std::fs::File::create(&p).unwrap(), flate2::Compression::fast());
        gz.write_all(header.as_bytes()).unwrap();
        gz.write_all(&vec![b' '; MAX_LINE]).unwrap();
        gz.write_all(b"\n").unwrap();
        gz.finish().unwrap();
        let e = TraceReader::open(&p).err().expect("an overlong header must be refused");
        assert!(e.to_string().contains("line 1") && e.to_string().contains("longer than"), "{e}");
        // A record line that never ends: an error, and iteration stops.
        let mut gz = flate2::write::GzEncoder::new(std::fs::File::create(&p).unwrap(), flate2::Compression::fast());
        writeln!(gz, "{header}").unwrap();
        gz.write_all(&vec![b'x'; 3 * MAX_LINE]).unwrap();
        gz.finish().unwrap();
        let mut r = TraceReader::open(&p).unwrap();
        let e = r.next().unwrap().unwrap_err();
        assert!(e.to_string().contains("line 2") && e.to_string().contains("longer than"), "{e}");
        assert!(r.next().is_none(), "nothing is read after an overlong line");
        // The line reader takes at most MAX_LINE + 2 bytes from an endless source.
        let mut endless = BufReader::new(std::io::repeat(b'y'));
        assert!(matches!(next_line(&mut endless, MAX_LINE), Err(LineError::TooLong)));
        // Lines of exactly the limit, CRLF endings and a last line without newline.
        let mut ok = std::io::Cursor::new(b"ab\r\ncd\nef".to_vec());
        assert_eq!(next_line(&mut ok, 2).unwrap().as_deref(), Some("ab"));
        assert_eq!(next_line(&mut ok, 2).unwrap().as_deref(), Some("cd"));
        assert_eq!(next_line(&mut ok, 2).unwrap().as_deref(), Some("ef"));
        assert_eq!(next_line(&mut ok, 2).unwrap(), None);
    }
}
