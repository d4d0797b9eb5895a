//! Login/Text data segments: `key=value` pairs, each followed by one NUL
//! (RFC 7143 §6.1), possibly split over several PDUs with the C bit
//! (§6.3, §11.10.2, §11.12.2).
//!
//! Invariants: key names are 1..=63 bytes of `[A-Za-z0-9.+@_-]`, values are
//! UTF-8 of at most `MAX_VALUE_BYTES`, one request holds at most `MAX_KEYS`
//! pairs and `MAX_TEXT_BYTES` bytes in total. Everything else is a
//! [`TextError`], which login answers with status 02 00 and a Text Request
//! with a Reject.

use bytes::{BufMut, Bytes, BytesMut};

use super::limits::{MAX_KEYS, MAX_KEY_BYTES, MAX_TEXT_BYTES, MAX_VALUE_BYTES};

/// The reserved answer values of RFC 7143 §6.2.
pub const REJECT: &str = "Reject";
pub const IRRELEVANT: &str = "Irrelevant";
pub const NOT_UNDERSTOOD: &str = "NotUnderstood";
pub const NONE: &str = "None";

/// Why a data segment is not valid text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    #[error("text of {len} bytes exceeds {MAX_TEXT_BYTES}")]
    TooLarge { len: usize },
    #[error("more than {MAX_KEYS} keys")]
    TooManyKeys,
    #[error("pair {index} has no '='")]
    MissingEquals { index: usize },
    #[error("pair {index}: key is empty or longer than {MAX_KEY_BYTES} bytes")]
    KeyLength { index: usize },
    #[error("pair {index}: key has a character outside [A-Za-z0-9.+@_-]")]
    KeyCharacter { index: usize },
    #[error("pair {index}: value longer than {MAX_VALUE_BYTES} bytes")]
    ValueTooLong { index: usize },
    #[error("pair {index}: value is not UTF-8")]
    NotUtf8 { index: usize },
    #[error("the last pair is not terminated by a NUL")]
    Unterminated,
}

/// One `key=value` pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    pub key: String,
    pub value: String,
}

fn valid_key_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'+' | b'@' | b'_')
}

/// Parses a complete text (all continuation PDUs joined).
pub fn parse(text: &[u8]) -> Result<Vec<Pair>, TextError> {
    if text.len() > MAX_TEXT_BYTES {
        return Err(TextError::TooLarge { len: text.len() });
    }
    if text.last().is_some_and(|b| *b != 0) {
        return Err(TextError::Unterminated);
    }
    let mut pairs = Vec::new();
    // Several NULs in a row (some initiators pad with them) hold no pair.
    for (index, raw) in text
        .split(|b| *b == 0)
        .filter(|p| !p.is_empty())
        .enumerate()
    {
        if pairs.len() == MAX_KEYS {
            return Err(TextError::TooManyKeys);
        }
        let eq = raw
            .iter()
            .position(|b| *b == b'=')
            .ok_or(TextError::MissingEquals { index })?;
        let (key, value) = raw.split_at(eq);
        let value = value.get(1..).unwrap_or_default();
        if key.is_empty() || key.len() > MAX_KEY_BYTES {
            return Err(TextError::KeyLength { index });
        }
        if !key.iter().copied().all(valid_key_byte) {
            return Err(TextError::KeyCharacter { index });
        }
        if value.len() > MAX_VALUE_BYTES {
            return Err(TextError::ValueTooLong { index });
        }
        let value = std::str::from_utf8(value).map_err(|_| TextError::NotUtf8 { index })?;
        pairs.push(Pair {
            // Checked above: ASCII only.
            key: String::from_utf8_lossy(key).into_owned(),
            value: value.to_owned(),
        });
    }
    Ok(pairs)
}

/// Joins the data segments of a multi-PDU request (C bit) up to the final
/// one, within `MAX_TEXT_BYTES`.
#[derive(Debug, Default)]
pub struct TextAccumulator {
    buf: BytesMut,
}

impl TextAccumulator {
    /// Adds one PDU's data. Returns the parsed pairs when `continues` is
    /// false (the last PDU), `Ok(None)` while more is expected.
    pub fn push(&mut self, data: &[u8], continues: bool) -> Result<Option<Vec<Pair>>, TextError> {
        let len = self.buf.len().saturating_add(data.len());
        if len > MAX_TEXT_BYTES {
            self.buf.clear();
            return Err(TextError::TooLarge { len });
        }
        self.buf.extend_from_slice(data);
        if continues {
            return Ok(None);
        }
        let all = self.buf.split();
        parse(&all).map(Some)
    }

    /// Whether a continued request is in progress.
    pub fn in_progress(&self) -> bool {
        !self.buf.is_empty()
    }
}

/// Builds a text data segment.
#[derive(Debug, Default)]
pub struct TextWriter {
    buf: BytesMut,
}

impl TextWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `key=value` and its NUL.
    pub fn add(&mut self, key: &str, value: &str) -> &mut Self {
        self.buf.reserve(key.len() + value.len() + 2);
        self.buf.put_slice(key.as_bytes());
        self.buf.put_u8(b'=');
        self.buf.put_slice(value.as_bytes());
        self.buf.put_u8(0);
        self
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn finish(self) -> Bytes {
        self.buf.freeze()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn pair(k: &str, v: &str) -> Pair {
        Pair {
            key: k.into(),
            value: v.into(),
        }
    }

    #[test]
    fn parses_nul_separated_pairs() {
        let got =
            parse(b"InitiatorName=iqn.1993-08.org.debian:01:abc\0SessionType=Normal\0").unwrap();
        assert_eq!(
            got,
            vec![
                pair("InitiatorName", "iqn.1993-08.org.debian:01:abc"),
                pair("SessionType", "Normal")
            ]
        );
    }

    #[test]
    fn value_may_contain_equals_and_be_empty() {
        assert_eq!(
            parse(b"A=b=c\0B=\0").unwrap(),
            vec![pair("A", "b=c"), pair("B", "")]
        );
    }

    #[test]
    fn empty_text_has_no_pairs() {
        assert_eq!(parse(b"").unwrap(), vec![]);
    }

    #[test]
    fn extra_nuls_are_skipped() {
        assert_eq!(parse(b"A=1\0\0\0").unwrap(), vec![pair("A", "1")]);
    }

    #[test]
    fn unterminated_last_pair_is_an_error() {
        assert_eq!(parse(b"A=1\0B=2"), Err(TextError::Unterminated));
    }

    #[test]
    fn missing_equals_is_an_error() {
        assert_eq!(
            parse(b"A=1\0B\0"),
            Err(TextError::MissingEquals { index: 1 })
        );
    }

    #[test]
    fn key_of_64_bytes_is_refused_and_63_accepted() {
        let ok = format!("{}=v\0", "k".repeat(63));
        assert!(parse(ok.as_bytes()).is_ok());
        let long = format!("{}=v\0", "k".repeat(64));
        assert_eq!(
            parse(long.as_bytes()),
            Err(TextError::KeyLength { index: 0 })
        );
    }

    #[test]
    fn bad_key_characters_are_refused() {
        assert_eq!(parse(b"A B=1\0"), Err(TextError::KeyCharacter { index: 0 }));
        assert_eq!(parse(b"=1\0"), Err(TextError::KeyLength { index: 0 }));
    }

    #[test]
    fn overlong_value_is_refused() {
        let long = format!("A={}\0", "v".repeat(MAX_VALUE_BYTES + 1));
        assert_eq!(
            parse(long.as_bytes()),
            Err(TextError::ValueTooLong { index: 0 })
        );
    }

    #[test]
    fn non_utf8_value_is_refused() {
        assert_eq!(parse(b"A=\xff\0"), Err(TextError::NotUtf8 { index: 0 }));
    }

    #[test]
    fn too_many_keys_are_refused() {
        let text: String = (0..=MAX_KEYS).map(|i| format!("K{i}=v\0")).collect();
        assert_eq!(parse(text.as_bytes()), Err(TextError::TooManyKeys));
    }

    #[test]
    fn accumulator_joins_a_pair_split_across_pdus() {
        let mut acc = TextAccumulator::default();
        assert_eq!(acc.push(b"Initiator", true), Ok(None));
        assert!(acc.in_progress());
        assert_eq!(
            acc.push(b"Name=x\0", false),
            Ok(Some(vec![pair("InitiatorName", "x")]))
        );
        assert!(!acc.in_progress());
    }

    #[test]
    fn accumulator_bounds_total_bytes() {
        let mut acc = TextAccumulator::default();
        let chunk = vec![b'a'; 8192];
        let mut result = Ok(None);
        for _ in 0..=(MAX_TEXT_BYTES / chunk.len()) {
            result = acc.push(&chunk, true);
            if result.is_err() {
                break;
            }
        }
        assert!(matches!(result, Err(TextError::TooLarge { .. })));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn written_pairs_parse_back(
            pairs in proptest::collection::vec(("[A-Za-z0-9.+@_-]{1,63}", "[ -~]{0,80}"), 0..20)
        ) {
            let mut w = TextWriter::new();
            for (k, v) in &pairs {
                w.add(k, v);
            }
            let got = parse(&w.finish()).unwrap();
            let want: Vec<Pair> = pairs.iter().map(|(k, v)| pair(k, v)).collect();
            prop_assert_eq!(got, want);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse(&bytes);
        }
    }
}
