//! Reading a trace file: the header (version checked), then records one by
//! one, each line bounded so a corrupt or hostile file cannot make us buffer
//! without limit, and every line checked against the [`TraceLimits`]
//! (counts, claimed sizes, the whole trace's size) before it is returned.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use super::format::{Header, Record, TraceError, TRACE_VERSION};
use super::limits::TraceLimits;

/// Reads a trace file: the header, then records one by one.
pub struct TraceReader {
    path: PathBuf,
    reader: BufReader<flate2::read::GzDecoder<std::fs::File>>,
    line: usize,
    /// Set after the first bad line (unreadable, overlong, malformed, out of
    /// limits): iteration ends.
    done: bool,
    limits: TraceLimits,
    /// Uncompressed bytes read so far (header included).
    bytes: u64,
    /// The trace's header.
    pub header: Header,
}

/// Longest line accepted from a trace file by default (a record with a
/// 4 KiB rep read inlined is ~9 KiB).
#[cfg(test)]
const MAX_LINE: usize = 1 << 20;

/// Why [`next_line`] returned no line.
#[derive(Debug)]
enum LineError {
    Io(std::io::Error),
    /// More than the limit before a newline; the rest was not read.
    TooLong(usize),
}

impl std::fmt::Display for LineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io(e) => e.fmt(f),
            Self::TooLong(max) => write!(f, "line longer than {max} bytes"),
        }
    }
}

/// The next line of `r` without its `\n` or `\r\n`, reading at most
/// `max + 2` bytes, so a file without newlines (or a gzip bomb) cannot make
/// us buffer more than `max` bytes. `None` at end of input; otherwise the
/// line and the bytes it took from `r`.
fn next_line<R: BufRead>(r: &mut R, max: usize) -> Result<Option<(String, u64)>, LineError> {
    let mut buf = Vec::new();
    // Room for the line and a CRLF.
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(2);
    let n = std::io::Read::take(&mut *r, limit).read_until(b'\n', &mut buf).map_err(LineError::Io)?;
    if n == 0 {
        return Ok(None);
    }
    let taken = n as u64;
    if buf.last() == Some(&b'\n') {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
    }
    if buf.len() > max {
        return Err(LineError::TooLong(max));
    }
    String::from_utf8(buf)
        .map(|l| Some((l, taken)))
        .map_err(|e| LineError::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))
}

impl TraceReader {
    /// Opens `path` and reads its header, with the default [`TraceLimits`].
    ///
    /// # Errors
    /// If the file cannot be read, is not a trace, or has another version.
    pub fn open(path: &Path) -> Result<Self, TraceError> {
        Self::open_with_limits(path, TraceLimits::default())
    }

    /// Opens `path` and reads its header; every line is held to `limits`.
    ///
    /// # Errors
    /// If the file cannot be read, is not a trace, has another version, or
    /// its header breaks a limit.
    pub fn open_with_limits(path: &Path, limits: TraceLimits) -> Result<Self, TraceError> {
        let f = std::fs::File::open(path).map_err(|source| TraceError::Io { path: path.to_path_buf(), source })?;
        let mut reader = BufReader::new(flate2::read::GzDecoder::new(f));
        let fmt = |line, reason: String| TraceError::Format { path: path.to_path_buf(), line, reason };
        let (first, bytes) = next_line(&mut reader, limits.max_line)
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
        limits.check_header(&header).map_err(|e| fmt(1, e))?;
        Ok(Self { path: path.to_path_buf(), reader, line: 1, done: false, limits, bytes, header })
    }

    /// The next record, checked against the limits.
    fn read_record(&mut self) -> Option<Result<Record, String>> {
        let (line, taken) = match next_line(&mut self.reader, self.limits.max_line).transpose()? {
            Ok(l) => l,
            Err(e) => return Some(Err(e.to_string())),
        };
        self.bytes = self.bytes.saturating_add(taken);
        if self.bytes > self.limits.max_trace_bytes {
            return Some(Err(format!("the trace is longer than {} bytes uncompressed", self.limits.max_trace_bytes)));
        }
        // `line` counts the header and the records before this one.
        if self.line as u64 > self.limits.max_records {
            return Some(Err(format!("the trace has more than {} records", self.limits.max_records)));
        }
        let record: Record = match serde_json::from_str(&line) {
            Ok(r) => r,
            Err(e) => return Some(Err(e.to_string())),
        };
        Some(self.limits.check_record(&record).map(|()| record))
    }
}

impl Iterator for TraceReader {
    type Item = Result<Record, TraceError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let result = self.read_record()?;
        self.line += 1;
        Some(result.map_err(|reason| {
            self.done = true;
            TraceError::Format { path: self.path.clone(), line: self.line, reason }
        }))
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
        assert!(matches!(next_line(&mut endless, MAX_LINE), Err(LineError::TooLong(MAX_LINE))));
        // Lines of exactly the limit, CRLF endings and a last line without newline.
        let mut ok = std::io::Cursor::new(b"ab\r\ncd\nef".to_vec());
        assert_eq!(next_line(&mut ok, 2).unwrap(), Some(("ab".to_string(), 4)));
        assert_eq!(next_line(&mut ok, 2).unwrap(), Some(("cd".to_string(), 3)));
        assert_eq!(next_line(&mut ok, 2).unwrap(), Some(("ef".to_string(), 2)));
        assert_eq!(next_line(&mut ok, 2).unwrap(), None);
    }

    fn write_trace(p: &Path, lines: &[String]) {
        let mut gz = flate2::write::GzEncoder::new(std::fs::File::create(p).unwrap(), flate2::Compression::fast());
        for l in lines {
            writeln!(gz, "{l}").unwrap();
        }
        gz.finish().unwrap();
    }

    const RECORD: &str = r#"{"i":0,"vcpu":0,"req":{"addr":128,"data":0,"count":1,"size":1,"data_is_ptr":false,"is_read":true,"df":false,"kind":0},"resp":0}"#;

    #[test]
    fn records_and_headers_out_of_limits_end_the_trace() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.jsonl.gz");
        let header = format!("{{\"xendm_trace\":{TRACE_VERSION},\"argv\":[],\"producer\":\"x\"}}");
        // A read that claims 4 GiB but carries one byte: refused by the reader.
        let lying =
            RECORD.replace("\"resp\":0}", "\"resp\":0,\"mem_reads\":[{\"gpa\":0,\"len\":4294967296,\"hex\":\"00\"}]}");
        write_trace(&p, &[header.clone(), RECORD.to_string(), lying, RECORD.to_string()]);
        let mut r = TraceReader::open(&p).unwrap();
        r.next().unwrap().unwrap();
        let e = r.next().unwrap().unwrap_err().to_string();
        assert!(e.contains("line 3") && e.contains("hex digits"), "{e}");
        assert!(r.next().is_none(), "nothing is read after a bad record");
        // Too many records, and too many bytes.
        write_trace(&p, &[header.clone(), RECORD.to_string(), RECORD.to_string(), RECORD.to_string()]);
        let limits = TraceLimits { max_records: 2, ..TraceLimits::default() };
        let results: Vec<_> = TraceReader::open_with_limits(&p, limits).unwrap().collect();
        assert_eq!(results.len(), 3);
        assert!(results[2].as_ref().unwrap_err().to_string().contains("more than 2 records"));
        let limits =
            TraceLimits { max_trace_bytes: (header.len() + RECORD.len() + 2) as u64, ..TraceLimits::default() };
        let results: Vec<_> = TraceReader::open_with_limits(&p, limits).unwrap().collect();
        assert_eq!(results.len(), 2, "{results:?}");
        assert!(results[1].as_ref().unwrap_err().to_string().contains("bytes uncompressed"));
        // A header with too many files.
        let limits = TraceLimits { max_files: 0, ..TraceLimits::default() };
        let big = format!(
            "{{\"xendm_trace\":{TRACE_VERSION},\"argv\":[],\"files\":{{\"/k\":\"{}\"}},\"producer\":\"x\"}}",
            "0".repeat(64)
        );
        write_trace(&p, &[big]);
        let e = TraceReader::open_with_limits(&p, limits).err().unwrap().to_string();
        assert!(e.contains("line 1") && e.contains("entries in files"), "{e}");
    }
}
