//! xl guest configuration files (`xl.cfg(5)`), read for `xendm check-config`.
//!
//! The file syntax is the one libxlu's lexer and grammar accept
//! (`tools/libs/util/libxlu_cfg_l.l`, `libxlu_cfg_y.y`, Xen 4.17; read for
//! facts only):
//!
//! * statements `KEY = VALUE` or `KEY += VALUE`, ended by a newline or `;`;
//!   keys are `[A-Za-z][A-Za-z0-9_]*`; a later assignment of a key wins,
//!   `+=` appends to a list;
//! * a value is a string in double quotes (C escapes `\n \t \\ \" \xHH`,
//!   octal) or single quotes (no escapes), a number, or a list `[ v, v, ]`
//!   whose items may span lines (a trailing comma is allowed);
//! * `#` starts a comment that runs to the end of the line.
//!
//! Also here, because they are xl syntax too: the disk specification of
//! `xl-disk-configuration(5)` ([`DiskSpec`]) and the `key=value` lists of
//! `vif=`, `usbctrl=` and friends ([`kv_list`]).
//!
//! Where we differ from libxlu: nothing is interpreted beyond the syntax
//! (numbers stay text until asked for), and errors carry the line number
//! only.

use std::fmt;

/// A parsed xl config: the statements in file order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct XlConfig {
    /// Every statement, in file order (a key may repeat).
    pub statements: Vec<Setting>,
}

/// One `KEY = VALUE` (or `KEY += VALUE`) statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// The key as written.
    pub key: String,
    /// The value.
    pub value: Value,
    /// The 1-based line the statement starts on.
    pub line: usize,
    /// `+=` rather than `=`.
    pub append: bool,
}

/// A value of the xl config syntax.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// A quoted string, escapes resolved.
    Str(String),
    /// A number as written (`512`, `0x10`).
    Num(String),
    /// A list, each item with its line.
    List(Vec<Item>),
}

/// An item of a list and the line it is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// The 1-based line.
    pub line: usize,
    /// The item.
    pub value: Value,
}

/// A syntax error and its line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct XlCfgError {
    /// The 1-based line.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl Value {
    /// The string, or a number's text.
    pub fn text(&self) -> Option<&str> {
        match self {
            Value::Str(s) | Value::Num(s) => Some(s),
            Value::List(_) => None,
        }
    }

    /// The value as a number (decimal, `0x` hex, or a quoted number).
    pub fn number(&self) -> Option<u64> {
        let t = self.text()?.trim();
        match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
            Some(hex) => u64::from_str_radix(hex, 16).ok(),
            None => t.parse().ok(),
        }
    }

    /// The value as xl's booleans: a number, non-zero is true.
    pub fn truthy(&self) -> Option<bool> {
        self.number().map(|n| n != 0)
    }

    /// A list's items, or a single value as a one-item list (xl takes
    /// `serial = "pty"` and `serial = ["pty"]` alike).
    pub fn items(&self, line: usize) -> Vec<Item> {
        match self {
            Value::List(items) => items.clone(),
            v => vec![Item { line, value: v.clone() }],
        }
    }
}

impl fmt::Display for Value {
    /// In xl syntax (strings in double quotes, escapes not re-added).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Str(s) => write!(f, "\"{s}\""),
            Value::Num(n) => write!(f, "{n}"),
            Value::List(items) => {
                let parts: Vec<String> = items.iter().map(|i| i.value.to_string()).collect();
                write!(f, "[ {} ]", parts.join(", "))
            }
        }
    }
}

impl XlConfig {
    /// The effective value of `key` (its last `=`, with later `+=` items
    /// appended) and the line of that `=`.
    pub fn get(&self, key: &str) -> Option<(usize, Value)> {
        let mut found: Option<(usize, Value)> = None;
        for s in self.statements.iter().filter(|s| s.key == key) {
            match (&mut found, s.append) {
                (Some((_, Value::List(items))), true) => items.extend(s.value.items(s.line)),
                _ => found = Some((s.line, s.value.clone())),
            }
        }
        found
    }

    /// The distinct keys, in order of first appearance.
    pub fn keys(&self) -> Vec<&str> {
        let mut keys: Vec<&str> = Vec::new();
        for s in &self.statements {
            if !keys.contains(&s.key.as_str()) {
                keys.push(&s.key);
            }
        }
        keys
    }
}

/// Parses an xl config file.
///
/// # Errors
/// The first syntax error, with its line.
pub fn parse(text: &str) -> Result<XlConfig, XlCfgError> {
    let mut p = Parser { chars: text.chars().collect(), pos: 0, line: 1 };
    let mut cfg = XlConfig::default();
    loop {
        p.skip_blank(true);
        let Some(c) = p.peek() else { return Ok(cfg) };
        if c == ';' {
            p.pos += 1;
            continue;
        }
        let line = p.line;
        let key = p.key()?;
        p.skip_blank(false);
        let append = p.eat('+');
        if !p.eat('=') {
            return Err(p.error(format!("expected '=' after '{key}'")));
        }
        p.skip_blank(false);
        let value = p.value()?;
        p.skip_blank(false);
        match p.peek() {
            None | Some('\n' | ';') => {}
            Some(c) => return Err(p.error(format!("unexpected '{c}' after the value of '{key}'"))),
        }
        cfg.statements.push(Setting { key, value, line, append });
    }
}

struct Parser {
    chars: Vec<char>,
    pos: usize,
    line: usize,
}

impl Parser {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += 1;
        if c == '\n' {
            self.line += 1;
        }
        Some(c)
    }

    fn eat(&mut self, want: char) -> bool {
        if self.peek() == Some(want) {
            self.bump();
            return true;
        }
        false
    }

    fn error(&self, message: String) -> XlCfgError {
        XlCfgError { line: self.line, message }
    }

    /// Skips spaces, tabs, `\r` and comments; newlines too if `newlines`.
    fn skip_blank(&mut self, newlines: bool) {
        while let Some(c) = self.peek() {
            match c {
                ' ' | '\t' | '\r' => self.pos += 1,
                '\n' if newlines => {
                    self.bump();
                }
                '#' => {
                    while self.peek().is_some_and(|c| c != '\n') {
                        self.pos += 1;
                    }
                }
                _ => return,
            }
        }
    }

    fn key(&mut self) -> Result<String, XlCfgError> {
        let mut key = String::new();
        while let Some(c) = self.peek().filter(|c| c.is_ascii_alphanumeric() || *c == '_') {
            if key.is_empty() && !c.is_ascii_alphabetic() {
                break;
            }
            key.push(c);
            self.pos += 1;
        }
        if key.is_empty() {
            let found = self.peek().map_or_else(|| "end of file".to_string(), |c| format!("'{c}'"));
            return Err(self.error(format!("expected a setting name, found {found}")));
        }
        Ok(key)
    }

    fn value(&mut self) -> Result<Value, XlCfgError> {
        match self.peek() {
            Some('"') => self.double_quoted().map(Value::Str),
            Some('\'') => self.single_quoted().map(Value::Str),
            Some('[') => self.list(),
            Some(c) if c.is_ascii_digit() => {
                let mut n = String::new();
                while let Some(c) = self.peek().filter(|c| c.is_ascii_alphanumeric() || *c == '.') {
                    n.push(c);
                    self.pos += 1;
                }
                Ok(Value::Num(n))
            }
            Some(c) => Err(self.error(format!("expected a value (a quoted string, a number or a list), found '{c}'"))),
            None => Err(self.error("expected a value, found end of file".into())),
        }
    }

    fn list(&mut self) -> Result<Value, XlCfgError> {
        self.bump();
        let mut items = Vec::new();
        loop {
            self.skip_blank(true);
            if self.eat(']') {
                return Ok(Value::List(items));
            }
            let line = self.line;
            items.push(Item { line, value: self.value()? });
            self.skip_blank(true);
            if self.eat(']') {
                return Ok(Value::List(items));
            }
            if !self.eat(',') {
                let found = self.peek().map_or_else(|| "end of file".to_string(), |c| format!("'{c}'"));
                return Err(self.error(format!("expected ',' or ']' in a list, found {found}")));
            }
        }
    }

    fn single_quoted(&mut self) -> Result<String, XlCfgError> {
        let start = self.line;
        self.bump();
        let mut s = String::new();
        loop {
            match self.bump() {
                Some('\'') => return Ok(s),
                Some('\n') | None => return Err(XlCfgError { line: start, message: "unterminated string".into() }),
                Some(c) => s.push(c),
            }
        }
    }

    fn double_quoted(&mut self) -> Result<String, XlCfgError> {
        let start = self.line;
        self.bump();
        let mut s = String::new();
        loop {
            match self.bump() {
                Some('"') => return Ok(s),
                Some('\\') => s.push(self.escape()?),
                Some('\n') | None => return Err(XlCfgError { line: start, message: "unterminated string".into() }),
                Some(c) => s.push(c),
            }
        }
    }

    fn escape(&mut self) -> Result<char, XlCfgError> {
        let c = self.bump().ok_or_else(|| self.error("unterminated string".into()))?;
        let simple = match c {
            'n' => Some('\n'),
            't' => Some('\t'),
            'r' => Some('\r'),
            'a' => Some('\x07'),
            'b' => Some('\x08'),
            'f' => Some('\x0c'),
            'v' => Some('\x0b'),
            '\\' | '"' | '\'' => Some(c),
            _ => None,
        };
        if let Some(e) = simple {
            return Ok(e);
        }
        let (radix, max_digits, mut digits) = match c {
            'x' => (16, 2, String::new()),
            '0'..='7' => (8, 2, c.to_string()),
            _ => return Err(self.error(format!("unknown escape '\\{c}'"))),
        };
        for _ in 0..max_digits {
            match self.peek().filter(|d| d.is_digit(radix)) {
                Some(d) => {
                    digits.push(d);
                    self.pos += 1;
                }
                None => break,
            }
        }
        u32::from_str_radix(&digits, radix)
            .ok()
            .and_then(char::from_u32)
            .ok_or_else(|| self.error(format!("invalid escape '\\{c}{digits}'")))
    }
}

/// A `key=value,key=value` list as `vif=`, `usbctrl=`, `channel=` items use
/// (`xl-network-configuration(5)`); an element without `=` is a key with an
/// empty value. Keys are trimmed and kept in order.
pub fn kv_list(spec: &str) -> Vec<(String, String)> {
    spec.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|e| match e.split_once('=') {
            Some((k, v)) => (k.trim().to_string(), v.trim().to_string()),
            None => (e.to_string(), String::new()),
        })
        .collect()
}

/// One `disk=` item (`xl-disk-configuration(5)`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DiskSpec {
    /// `target=` or the first positional parameter (the deprecated prefix removed).
    pub target: Option<String>,
    /// `format=`, the second positional, or from a deprecated prefix (`qcow2:`).
    pub format: Option<String>,
    /// `vdev=` or the third positional (a `:cdrom` suffix removed).
    pub vdev: Option<String>,
    /// `access=` or the fourth positional.
    pub access: Option<String>,
    /// `devtype=cdrom`, the `cdrom` flag, or a `:cdrom` vdev suffix.
    pub cdrom: bool,
    /// `backendtype=` (`phy`, `qdisk`, `standalone`), or `phy` from a `phy:` prefix.
    pub backendtype: Option<String>,
    /// `backend=DOMAIN` (a driver domain).
    pub backend: Option<String>,
    /// `script=`.
    pub script: Option<String>,
}

impl DiskSpec {
    /// Parses one disk specification.
    pub fn parse(spec: &str) -> DiskSpec {
        let mut d = DiskSpec::default();
        let mut positional = 0;
        let mut rest = spec;
        while !rest.is_empty() {
            let trimmed = rest.trim_start();
            // `target=` eats the rest of the string, commas included.
            if let Some(t) = trimmed.strip_prefix("target=") {
                d.target = Some(t.trim().to_string());
                break;
            }
            let (param, tail) = trimmed.split_once(',').unwrap_or((trimmed, ""));
            rest = tail;
            let param = param.trim();
            match param.split_once('=') {
                Some((k, v)) => d.named(k.trim(), v.trim()),
                None if param == "cdrom" => d.cdrom = true,
                None if positional >= 4 || FLAGS.contains(&param) => {}
                None => {
                    d.positional(positional, param);
                    // A deprecated `format:` prefix on the target fills the format slot.
                    positional += if positional == 0 && d.format.is_some() { 2 } else { 1 };
                }
            }
        }
        d
    }

    fn named(&mut self, key: &str, value: &str) {
        let v = Some(value.to_string());
        match key {
            "format" => self.format = v,
            "vdev" => self.set_vdev(value),
            "access" => self.access = v,
            "devtype" => self.cdrom = value == "cdrom",
            "backendtype" => self.backendtype = v,
            "backend" => self.backend = v,
            "script" => self.script = v,
            _ => {}
        }
    }

    fn positional(&mut self, index: usize, value: &str) {
        if value.is_empty() {
            return;
        }
        match index {
            0 => self.set_target(value),
            1 => self.format = Some(value.to_string()),
            2 => self.set_vdev(value),
            _ => self.access = Some(value.to_string()),
        }
    }

    /// The target, with the deprecated `phy:`/`file:`/`tap:aio:`/`qcow2:`... prefixes.
    fn set_target(&mut self, value: &str) {
        let mut target = value;
        while let Some((prefix, rest)) = target.split_once(':') {
            let format = match prefix {
                "phy" => {
                    self.backendtype = Some("phy".into());
                    "raw"
                }
                "file" | "aio" | "raw" | "tap" | "tap2" => "raw",
                "qcow" | "qcow2" | "vhd" | "qed" => prefix,
                _ => break,
            };
            if self.format.as_deref().is_none_or(|f| f == "raw") {
                self.format = Some(format.to_string());
            }
            target = rest;
        }
        self.target = Some(target.to_string());
    }

    fn set_vdev(&mut self, value: &str) {
        let (vdev, kind) = value.split_once(':').unwrap_or((value, ""));
        if kind == "cdrom" {
            self.cdrom = true;
        }
        self.vdev = Some(vdev.to_string());
    }

    /// The format libxl assumes (`raw` unless told otherwise).
    pub fn format_or_raw(&self) -> &str {
        self.format.as_deref().unwrap_or("raw")
    }

    /// The disk index libxl derives from the vdev (`libxl__device_disk_dev_number`):
    /// `xvda`/`hda`/`sda` are 0, `xvde` 4, `xvdaa` 26; with the bus letter.
    pub fn index(&self) -> Option<(Bus, u32)> {
        let vdev = self.vdev.as_deref()?;
        let (bus, letters) = if let Some(r) = vdev.strip_prefix("xvd") {
            (Bus::Xvd, r)
        } else if let Some(r) = vdev.strip_prefix("hd") {
            (Bus::Hd, r)
        } else if let Some(r) = vdev.strip_prefix("sd") {
            (Bus::Sd, r)
        } else {
            return None;
        };
        let letters = letters.trim_end_matches(|c: char| c.is_ascii_digit());
        let mut index: u32 = 0;
        for c in letters.chars() {
            if !c.is_ascii_lowercase() {
                return None;
            }
            index = index.checked_mul(26)?.checked_add(u32::from(c) - u32::from('a') + 1)?;
        }
        Some((bus, index.checked_sub(1)?))
    }
}

/// Flags of the disk syntax that take no value and matter not to xendm.
const FLAGS: &[&str] = &["discard", "no-discard", "direct-io-safe", "trusted", "untrusted", "colo"];

/// The naming scheme of a vdev.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bus {
    /// `xvdX`: Xen virtual disk (also IDE for the first four).
    Xvd,
    /// `hdX`: IDE.
    Hd,
    /// `sdX`: SCSI.
    Sd,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_values_and_lines() {
        let cfg = parse(
            "# comment\nname = \"g1\"  # trailing\nmemory=512;vcpus = 0x2\n\
             disk = [ 'a,raw,xvde,rw',\n   \"b\", ]\nempty = []\nserial='pty'\n",
        )
        .unwrap();
        let keys: Vec<_> = cfg.statements.iter().map(|s| (s.key.as_str(), s.line)).collect();
        assert_eq!(keys, [("name", 2), ("memory", 3), ("vcpus", 3), ("disk", 4), ("empty", 6), ("serial", 7)]);
        assert_eq!(cfg.get("name").unwrap().1, Value::Str("g1".into()));
        assert_eq!(cfg.get("memory").unwrap().1.number(), Some(512));
        assert_eq!(cfg.get("vcpus").unwrap().1.number(), Some(2));
        let (_, Value::List(disks)) = cfg.get("disk").unwrap() else { panic!() };
        assert_eq!(disks.iter().map(|i| i.line).collect::<Vec<_>>(), [4, 5]);
        assert_eq!(disks[1].value, Value::Str("b".into()));
        assert_eq!(cfg.get("empty").unwrap().1, Value::List(vec![]));
        assert_eq!(cfg.get("serial").unwrap().1.to_string(), "\"pty\"");
    }

    #[test]
    fn later_assignments_win_and_append_extends() {
        let cfg = parse("vga = \"stdvga\"\nvga = \"none\"\nvif = ['a']\nvif += ['b']\nvif += 'c'\n").unwrap();
        assert_eq!(cfg.get("vga"), Some((2, Value::Str("none".into()))));
        let (line, Value::List(vifs)) = cfg.get("vif").unwrap() else { panic!() };
        assert_eq!(line, 3);
        assert_eq!(vifs.iter().map(|i| i.value.text().unwrap()).collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!(cfg.keys(), ["vga", "vif"]);
    }

    #[test]
    fn escapes() {
        let cfg = parse(r#"a = "x\"y\\z\n\x41\101" b = 'no\escape'"#.replace(" b", "\nb").as_str()).unwrap();
        assert_eq!(cfg.get("a").unwrap().1, Value::Str("x\"y\\z\nAA".into()));
        assert_eq!(cfg.get("b").unwrap().1, Value::Str("no\\escape".into()));
    }

    #[test]
    fn errors_name_the_line() {
        for (text, line, what) in [
            ("a = 1\nb 2\n", 2, "expected '='"),
            ("a = \"open\n", 1, "unterminated"),
            ("a = [1,\n2\n", 3, "expected ',' or ']'"),
            ("a = 1 2\n", 1, "unexpected '2'"),
            ("= 1\n", 1, "expected a setting name"),
            ("a = \"\\q\"\n", 1, "unknown escape"),
            ("a = b\n", 1, "expected a value"),
        ] {
            let e = parse(text).unwrap_err();
            assert_eq!(e.line, line, "{text:?}: {e}");
            assert!(e.message.contains(what), "{text:?}: {e}");
        }
    }

    #[test]
    fn disk_specs() {
        let d = DiskSpec::parse("/dev/vg/guest-volume,raw,xvda,rw");
        assert_eq!(d.target.as_deref(), Some("/dev/vg/guest-volume"));
        assert_eq!((d.format_or_raw(), d.vdev.as_deref(), d.access.as_deref()), ("raw", Some("xvda"), Some("rw")));
        assert_eq!(d.index(), Some((Bus::Xvd, 0)));
        let d = DiskSpec::parse("format=qcow2, vdev=xvde, access=rw, target=/srv/a,b.qcow2");
        assert_eq!(d.target.as_deref(), Some("/srv/a,b.qcow2"));
        assert_eq!((d.format_or_raw(), d.index()), ("qcow2", Some((Bus::Xvd, 4))));
        let d = DiskSpec::parse("/root/image.iso,,hdc,cdrom");
        assert!(d.cdrom);
        assert_eq!((d.format_or_raw(), d.index()), ("raw", Some((Bus::Hd, 2))));
        let d = DiskSpec::parse("phy:/dev/vg/x,xvdb,w");
        assert_eq!((d.target.as_deref(), d.vdev.as_deref()), (Some("/dev/vg/x"), Some("xvdb")));
        assert_eq!((d.backendtype.as_deref(), d.access.as_deref()), (Some("phy"), Some("w")));
        let d = DiskSpec::parse("tap:qcow2:/srv/x.qcow2,xvdf:cdrom,r");
        assert_eq!((d.format_or_raw(), d.vdev.as_deref(), d.cdrom), ("qcow2", Some("xvdf"), true));
        let d = DiskSpec::parse("vdev=xvdaa,backend=driverdom,discard,target=/x");
        assert_eq!((d.index(), d.backend.as_deref()), (Some((Bus::Xvd, 26)), Some("driverdom")));
        assert_eq!(DiskSpec::parse("vdev=sdb1").index(), Some((Bus::Sd, 1)));
        assert_eq!(DiskSpec::parse("vdev=d0p1").index(), None);
    }

    #[test]
    fn kv_lists() {
        assert_eq!(
            kv_list("bridge=xenbr0, type=vif,mac=00:16:3e:00:00:01,,flag"),
            [
                ("bridge".to_string(), "xenbr0".to_string()),
                ("type".to_string(), "vif".to_string()),
                ("mac".to_string(), "00:16:3e:00:00:01".to_string()),
                ("flag".to_string(), String::new())
            ]
        );
        assert!(kv_list("").is_empty());
    }
}
