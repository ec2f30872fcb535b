//! QemuOpts-style `key=value,key2=value2` option values.
//!
//! Implements the value syntax QEMU documents for `-machine`, `-chardev`,
//! `-device`, `-smp`, ... (QEMU `docs/system/invocation` and the behaviour of
//! `util/qemu-option.c`, read for facts only):
//!
//! * elements are separated by `,`; inside a *value*, `,,` stands for one
//!   literal comma (key names cannot contain commas);
//! * the first element may omit its key when the option has an *implied* key
//!   (`-machine xenfv` means `type=xenfv`, `-chardev socket,...` means
//!   `backend=socket`, `-m 128` means `size=128`);
//! * any other element without `=` is a boolean flag: `server` means
//!   `server=on` and `nowait` means `wait=off` (QEMU's deprecated short form,
//!   still written by older libxl);
//! * booleans are `on|off|yes|no|true|false`;
//! * sizes are a decimal (optionally fractional) or `0x` hexadecimal number
//!   with an optional suffix `B K M G T P E` (either case, powers of 1024).
//!
//! Where we differ from QEMU: a key given twice is taken from its last
//! occurrence, as QEMU does, but plain numbers are decimal only (QEMU also
//! takes octal and hexadecimal for integer properties), and the single-letter
//! booleans `y`/`n` are not accepted.

use thiserror::Error;

/// Why a QemuOpts value could not be parsed or interpreted.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum OptsError {
    /// An element such as `=x` or `,,` at a key position had no key.
    #[error("empty parameter name in '{0}'")]
    EmptyKey(String),
    /// A key this option does not know (or xendm does not implement).
    #[error("unsupported parameter '{0}'")]
    UnknownKey(String),
    /// A required key is absent.
    #[error("missing parameter '{0}'")]
    MissingKey(String),
    /// A boolean key whose value is not one of the six spellings.
    #[error("parameter '{key}' expects on/off, yes/no or true/false, not '{value}'")]
    InvalidBool {
        /// The key.
        key: String,
        /// The rejected value.
        value: String,
    },
    /// A size that does not parse or does not fit 64 bits.
    #[error("invalid size '{0}'")]
    InvalidSize(String),
    /// A decimal number that does not parse or is out of range.
    #[error("parameter '{key}': invalid number '{value}'")]
    InvalidNumber {
        /// The key.
        key: String,
        /// The rejected value.
        value: String,
    },
}

/// A parsed QemuOpts string: the `(key, value)` pairs in the order given.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Opts {
    pairs: Vec<(String, String)>,
}

impl Opts {
    /// Parses `input`; `implied` names the key of a first element that has no `=`.
    pub fn parse(input: &str, implied: Option<&str>) -> Result<Self, OptsError> {
        let mut pairs = Vec::new();
        let mut rest = input;
        let mut first = true;
        while !rest.is_empty() {
            let name_end = rest.find(['=', ',']).unwrap_or(rest.len());
            let (key, value, next) = if rest.get(name_end..name_end + 1) == Some("=") {
                let key = rest.get(..name_end).unwrap_or_default();
                let (value, next) = take_value(rest.get(name_end + 1..).unwrap_or_default());
                (key.to_string(), value, next)
            } else if let (true, Some(implied)) = (first, implied) {
                let (value, next) = take_value(rest);
                (implied.to_string(), value, next)
            } else {
                let flag = rest.get(..name_end).unwrap_or_default();
                let next = rest.get(name_end + 1..).unwrap_or_default();
                match flag.strip_prefix("no") {
                    Some(base) => (base.to_string(), "off".to_string(), next),
                    None => (flag.to_string(), "on".to_string(), next),
                }
            };
            if key.is_empty() {
                return Err(OptsError::EmptyKey(input.to_string()));
            }
            pairs.push((key, value));
            rest = next;
            first = false;
        }
        Ok(Self { pairs })
    }

    /// The value of the last occurrence of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// Like [`Opts::get`], but absence is an error.
    pub fn require(&self, key: &str) -> Result<&str, OptsError> {
        self.get(key).ok_or_else(|| OptsError::MissingKey(key.to_string()))
    }

    /// A boolean key; `None` when absent.
    pub fn get_bool(&self, key: &str) -> Result<Option<bool>, OptsError> {
        self.get(key)
            .map(|value| {
                parse_bool(value)
                    .ok_or_else(|| OptsError::InvalidBool { key: key.to_string(), value: value.to_string() })
            })
            .transpose()
    }

    /// A decimal `u32` key; `None` when absent.
    pub fn get_u32(&self, key: &str) -> Result<Option<u32>, OptsError> {
        self.get(key)
            .map(|value| {
                parse_decimal(value)
                    .ok_or_else(|| OptsError::InvalidNumber { key: key.to_string(), value: value.to_string() })
            })
            .transpose()
    }

    /// A size key in bytes (unsuffixed numbers are bytes); `None` when absent.
    pub fn get_size(&self, key: &str) -> Result<Option<u64>, OptsError> {
        self.get(key).map(|value| parse_size(value, 1)).transpose()
    }

    /// Fails on the first key that is not in `allowed`.
    pub fn check_keys(&self, allowed: &[&str]) -> Result<(), OptsError> {
        match self.pairs.iter().find(|(k, _)| !allowed.contains(&k.as_str())) {
            Some((k, _)) => Err(OptsError::UnknownKey(k.clone())),
            None => Ok(()),
        }
    }

    /// The pairs in the order given (repeated keys included).
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Adds `other`'s pairs after ours, so that its values win on lookup
    /// (how QEMU merges repeated `-machine` options).
    pub fn merge(&mut self, other: Opts) {
        self.pairs.extend(other.pairs);
    }
}

/// Splits one value off the front of `s`: up to the first single `,`, with
/// `,,` unescaped. Returns the value and what follows the separator.
fn take_value(s: &str) -> (String, &str) {
    let mut value = String::new();
    let mut chars = s.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c == ',' {
            if chars.peek().map(|&(_, n)| n) == Some(',') {
                chars.next();
                value.push(',');
            } else {
                return (value, s.get(i + 1..).unwrap_or_default());
            }
        } else {
            value.push(c);
        }
    }
    (value, "")
}

/// QEMU's boolean spellings.
pub fn parse_bool(value: &str) -> Option<bool> {
    match value {
        "on" | "yes" | "true" => Some(true),
        "off" | "no" | "false" => Some(false),
        _ => None,
    }
}

/// A plain decimal number: ASCII digits only, no sign, no spaces.
pub fn parse_decimal<T: std::str::FromStr>(value: &str) -> Option<T> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok()
}

/// Parses a QEMU size: `<number>[suffix]`, where an unsuffixed number is
/// multiplied by `default_unit` (1 for properties, 1 MiB for `-m`).
///
/// The number is decimal, optionally with a fraction (not allowed with the
/// `B` suffix or a byte default unit), or `0x` hexadecimal. Suffixes are
/// `B K M G T P E`, in either case, in powers of 1024. A fractional result is
/// truncated to whole bytes, as QEMU does.
pub fn parse_size(value: &str, default_unit: u64) -> Result<u64, OptsError> {
    let bad = || OptsError::InvalidSize(value.to_string());
    // Hex digits are taken greedily (so `0x1B` is 27 bytes), as QEMU does.
    let hex = value.strip_prefix("0x").or_else(|| value.strip_prefix("0X"));
    let number_len = match hex {
        Some(h) => 2 + h.bytes().take_while(u8::is_ascii_hexdigit).count(),
        None => value.bytes().take_while(|b| b.is_ascii_digit() || *b == b'.').count(),
    };
    let number = value.get(..number_len).ok_or_else(bad)?;
    let unit = match value.get(number_len..).ok_or_else(bad)? {
        "" => default_unit,
        "B" | "b" => 1u64,
        "K" | "k" => 1 << 10,
        "M" | "m" => 1 << 20,
        "G" | "g" => 1 << 30,
        "T" | "t" => 1 << 40,
        "P" | "p" => 1 << 50,
        "E" | "e" => 1 << 60,
        _ => return Err(bad()),
    };
    if let Some(digits) = number.get(2..).filter(|_| hex.is_some()) {
        if digits.is_empty() {
            return Err(bad());
        }
        let n = u64::from_str_radix(digits, 16).map_err(|_| bad())?;
        return n.checked_mul(unit).ok_or_else(bad);
    }
    let (int_part, frac_part) = match number.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (number, None),
    };
    let int: u64 = parse_decimal(int_part).ok_or_else(bad)?;
    let whole = u128::from(int) * u128::from(unit);
    let total = match frac_part {
        None => whole,
        Some(frac) => {
            // A fraction of a byte is meaningless; QEMU refuses it too.
            if unit == 1 || frac.is_empty() || frac.len() > 18 {
                return Err(bad());
            }
            let digits: u64 = parse_decimal(frac).ok_or_else(bad)?;
            let scale = 10u128.pow(u32::try_from(frac.len()).map_err(|_| bad())?);
            whole + u128::from(digits) * u128::from(unit) / scale
        }
    };
    u64::try_from(total).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(o: &Opts) -> Vec<(&str, &str)> {
        o.pairs().collect()
    }

    #[test]
    fn implied_key_and_pairs() {
        let o = Opts::parse("xenfv,suppress-vmdesc=on", Some("type")).unwrap();
        assert_eq!(pairs(&o), [("type", "xenfv"), ("suppress-vmdesc", "on")]);
        // An explicit key in first position is not the implied one.
        let o = Opts::parse("type=pc,accel=xen", Some("type")).unwrap();
        assert_eq!(pairs(&o), [("type", "pc"), ("accel", "xen")]);
        // Without an implied key a bare first element is a flag.
        let o = Opts::parse("server,nowait", None).unwrap();
        assert_eq!(pairs(&o), [("server", "on"), ("wait", "off")]);
    }

    #[test]
    fn bare_flags_after_the_first_element() {
        let o = Opts::parse("socket,id=a,path=/p,server,nowait", Some("backend")).unwrap();
        assert_eq!(o.get("backend"), Some("socket"));
        assert_eq!(o.get_bool("server").unwrap(), Some(true));
        assert_eq!(o.get_bool("wait").unwrap(), Some(false));
    }

    #[test]
    fn comma_escape() {
        let o = Opts::parse("a,,b,,,c=d,,,,e,f=,,", Some("name")).unwrap();
        assert_eq!(pairs(&o), [("name", "a,b,"), ("c", "d,,e"), ("f", ",")]);
        let o = Opts::parse("path=/tmp/x,,y", None).unwrap();
        assert_eq!(o.get("path"), Some("/tmp/x,y"));
        // A lone trailing comma ends the list.
        let o = Opts::parse("xenfv,", Some("type")).unwrap();
        assert_eq!(pairs(&o), [("type", "xenfv")]);
    }

    #[test]
    fn values_may_contain_equals_and_be_empty() {
        let o = Opts::parse("a=b=c,d=", None).unwrap();
        assert_eq!(pairs(&o), [("a", "b=c"), ("d", "")]);
        assert_eq!(Opts::parse("", Some("x")).unwrap(), Opts::default());
    }

    #[test]
    fn empty_keys_are_errors() {
        assert!(matches!(Opts::parse("=x", Some("type")), Err(OptsError::EmptyKey(_))));
        assert!(matches!(
            Opts::parse("a=1,,", None).map(|o| o.get("a").map(str::to_owned)),
            Ok(Some(v)) if v == "1,"
        ));
        assert!(matches!(
            Opts::parse("a=1,,b", None).map(|o| o.get("a").map(str::to_owned)),
            Ok(Some(v)) if v == "1,b"
        ));
        assert!(matches!(Opts::parse("x,,y", None), Err(OptsError::EmptyKey(_))));
        assert!(matches!(Opts::parse("no", None), Err(OptsError::EmptyKey(_))));
    }

    #[test]
    fn last_occurrence_wins_and_merge() {
        let mut o = Opts::parse("a=1,a=2", None).unwrap();
        assert_eq!(o.get("a"), Some("2"));
        o.merge(Opts::parse("a=3", None).unwrap());
        assert_eq!(o.get("a"), Some("3"));
        assert_eq!(o.require("b"), Err(OptsError::MissingKey("b".into())));
    }

    #[test]
    fn booleans() {
        for (s, v) in [("on", true), ("yes", true), ("true", true), ("off", false), ("no", false), ("false", false)] {
            let o = Opts::parse(&format!("k={s}"), None).unwrap();
            assert_eq!(o.get_bool("k").unwrap(), Some(v), "{s}");
        }
        let o = Opts::parse("k=On,j=1", None).unwrap();
        assert!(matches!(o.get_bool("k"), Err(OptsError::InvalidBool { .. })));
        assert!(matches!(o.get_bool("j"), Err(OptsError::InvalidBool { .. })));
        assert_eq!(o.get_bool("missing").unwrap(), None);
    }

    #[test]
    fn check_keys_names_the_first_unknown() {
        let o = Opts::parse("xenfv,accel=xen,vmport=on", Some("type")).unwrap();
        assert_eq!(o.check_keys(&["type", "accel"]), Err(OptsError::UnknownKey("vmport".into())));
        assert_eq!(o.check_keys(&["type", "accel", "vmport"]), Ok(()));
    }

    #[test]
    fn numbers_are_decimal_only() {
        let o = Opts::parse("a=12,b=0x10,c=-1,d=,e=4294967296", None).unwrap();
        assert_eq!(o.get_u32("a").unwrap(), Some(12));
        for k in ["b", "c", "d", "e"] {
            assert!(o.get_u32(k).is_err(), "{k}");
        }
    }

    #[test]
    fn sizes() {
        const M: u64 = 1 << 20;
        assert_eq!(parse_size("128", M), Ok(128 * M));
        assert_eq!(parse_size("128", 1), Ok(128));
        assert_eq!(parse_size("128M", 1), Ok(128 * M));
        assert_eq!(parse_size("128m", 1), Ok(128 * M));
        assert_eq!(parse_size("2G", M), Ok(2 << 30));
        assert_eq!(parse_size("1k", 1), Ok(1024));
        assert_eq!(parse_size("512B", M), Ok(512));
        assert_eq!(parse_size("1.5G", 1), Ok(3 << 29));
        assert_eq!(parse_size("1.5", M), Ok(3 << 19));
        assert_eq!(parse_size("0.1K", 1), Ok(102));
        assert_eq!(parse_size("0x1000", 1), Ok(4096));
        assert_eq!(parse_size("0x1B", 1), Ok(27));
        assert_eq!(parse_size("0x1E", 1), Ok(30));
        assert_eq!(parse_size("0x2G", 1), Ok(2 << 30));
        assert_eq!(parse_size("0x1M", 1), Ok(M));
        assert_eq!(parse_size("3758096384", 1), Ok(0xE000_0000));
        assert_eq!(parse_size("16383P", 1), Ok(16383 << 50));
        assert_eq!(parse_size("15E", 1), Ok(15 << 60));
        for bad in [
            "",
            "abc",
            "M",
            "12X",
            "1.5B",
            "1.5",
            "-1",
            "1 M",
            "16E",
            "1.M",
            "0x",
            "0xG",
            "99999999999999999999",
            "1..5G",
            "+5",
            "0x1.5M",
            "0x10000000000000000",
            "0x1000000000000M",
            "1MB",
        ] {
            assert!(parse_size(bad, 1).is_err(), "{bad:?}");
        }
    }
}
