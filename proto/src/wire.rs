//! Payload primitives: a bounds-checked little-endian reader over a payload,
//! the matching writers, and the validated [`Name`] type.
//!
//! Invariants: every read checks the remaining length first and returns a
//! [`PayloadError`] naming the field; a length prefix is compared with its
//! bound before anything is sliced or copied; byte fields are zero-copy
//! slices of the payload. Strings are a u16 LE byte length followed by
//! UTF-8 bytes.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::limits::MAX_NAME_BYTES;

/// What is wrong with a payload (or a value about to be encoded).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// The payload ends inside a field.
    #[error("{field}: needs {needed} bytes, {available} left")]
    Truncated {
        /// The field being read.
        field: &'static str,
        /// Bytes the field needs.
        needed: usize,
        /// Bytes left in the payload.
        available: usize,
    },
    /// Bytes follow the last field.
    #[error("{len} trailing bytes after the last field")]
    Trailing {
        /// How many.
        len: usize,
    },
    /// A length or count exceeds its bound.
    #[error("{field}: {len} exceeds the bound of {max}")]
    TooLong {
        /// The field.
        field: &'static str,
        /// The length or count found.
        len: usize,
        /// Its bound.
        max: usize,
    },
    /// A field holds a value the protocol does not allow.
    #[error("{field}: {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// Which rule is broken.
        reason: &'static str,
    },
}

/// Reads a payload front to back.
pub(crate) struct Reader {
    rest: Bytes,
}

impl Reader {
    pub(crate) fn new(payload: Bytes) -> Reader {
        Reader { rest: payload }
    }

    fn need(&self, field: &'static str, needed: usize) -> Result<(), PayloadError> {
        if self.rest.remaining() < needed {
            return Err(PayloadError::Truncated {
                field,
                needed,
                available: self.rest.remaining(),
            });
        }
        Ok(())
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, PayloadError> {
        self.need(field, 1)?;
        Ok(self.rest.get_u8())
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, PayloadError> {
        self.need(field, 2)?;
        Ok(self.rest.get_u16_le())
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, PayloadError> {
        self.need(field, 4)?;
        Ok(self.rest.get_u32_le())
    }

    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, PayloadError> {
        self.need(field, 8)?;
        Ok(self.rest.get_u64_le())
    }

    pub(crate) fn u128(&mut self, field: &'static str) -> Result<u128, PayloadError> {
        self.need(field, 16)?;
        Ok(self.rest.get_u128_le())
    }

    /// A boolean encoded as one byte, 0 or 1.
    pub(crate) fn bool(&mut self, field: &'static str) -> Result<bool, PayloadError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(PayloadError::Invalid {
                field,
                reason: "boolean is neither 0 nor 1",
            }),
        }
    }

    /// `len` bytes, zero-copy.
    pub(crate) fn bytes(&mut self, field: &'static str, len: usize) -> Result<Bytes, PayloadError> {
        self.need(field, len)?;
        Ok(self.rest.split_to(len))
    }

    /// Everything left, zero-copy.
    pub(crate) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.rest)
    }

    /// Length-prefixed bytes of at most `max` bytes.
    pub(crate) fn prefixed(
        &mut self,
        field: &'static str,
        max: usize,
    ) -> Result<Bytes, PayloadError> {
        let len = usize::from(self.u16(field)?);
        if len > max {
            return Err(PayloadError::TooLong { field, len, max });
        }
        self.bytes(field, len)
    }

    /// A length-prefixed UTF-8 string of at most `max` bytes.
    pub(crate) fn string(
        &mut self,
        field: &'static str,
        max: usize,
    ) -> Result<String, PayloadError> {
        let raw = self.prefixed(field, max)?;
        String::from_utf8(raw.to_vec()).map_err(|_| PayloadError::Invalid {
            field,
            reason: "not UTF-8",
        })
    }

    /// A [`Name`].
    pub(crate) fn name(&mut self, field: &'static str) -> Result<Name, PayloadError> {
        let text = self.string(field, MAX_NAME_BYTES)?;
        Name::checked(field, text)
    }

    /// Fails if anything is left: every payload has exactly one encoding.
    pub(crate) fn finish(self) -> Result<(), PayloadError> {
        if self.rest.has_remaining() {
            return Err(PayloadError::Trailing {
                len: self.rest.remaining(),
            });
        }
        Ok(())
    }
}

/// Appends length-prefixed bytes. The caller has checked `bytes.len()`
/// against a bound no larger than `u16::MAX`.
pub(crate) fn put_prefixed(dst: &mut BytesMut, bytes: &[u8]) {
    debug_assert!(bytes.len() <= usize::from(u16::MAX));
    let len = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
    dst.put_u16_le(len);
    dst.put_slice(bytes);
}

/// Checks a free-text field against its bound before encoding.
pub(crate) fn check_text(field: &'static str, text: &str, max: usize) -> Result<(), PayloadError> {
    if text.len() > max {
        return Err(PayloadError::TooLong {
            field,
            len: text.len(),
            max,
        });
    }
    Ok(())
}

/// A volume or snapshot name: 1 to [`MAX_NAME_BYTES`] bytes of UTF-8
/// without control characters. Valid by construction, so encoding one never
/// fails.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(String);

impl Name {
    /// Validates `text` as a name.
    pub fn new(text: impl Into<String>) -> Result<Name, PayloadError> {
        Name::checked("name", text.into())
    }

    fn checked(field: &'static str, text: String) -> Result<Name, PayloadError> {
        if text.is_empty() {
            return Err(PayloadError::Invalid {
                field,
                reason: "empty name",
            });
        }
        check_text(field, &text, MAX_NAME_BYTES)?;
        if text.chars().any(char::is_control) {
            return Err(PayloadError::Invalid {
                field,
                reason: "control character in name",
            });
        }
        Ok(Name(text))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub(crate) fn put(&self, dst: &mut BytesMut) {
        put_prefixed(dst, self.0.as_bytes());
    }

    /// Encoded size in bytes.
    pub(crate) fn wire_len(&self) -> usize {
        2 + self.0.len()
    }
}

impl std::fmt::Display for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reading_past_the_end_names_the_field() {
        let mut reader = Reader::new(Bytes::from_static(&[1, 2, 3]));
        assert_eq!(
            reader.u32("offset"),
            Err(PayloadError::Truncated {
                field: "offset",
                needed: 4,
                available: 3
            })
        );
    }

    #[test]
    fn length_prefix_beyond_its_bound_is_refused_before_slicing() {
        let mut reader = Reader::new(Bytes::from_static(&[0xff, 0xff]));
        assert_eq!(
            reader.prefixed("detail", 256),
            Err(PayloadError::TooLong {
                field: "detail",
                len: 0xffff,
                max: 256
            })
        );
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut reader = Reader::new(Bytes::from_static(&[1, 0, 9]));
        assert_eq!(reader.u16("x"), Ok(1));
        assert_eq!(reader.finish(), Err(PayloadError::Trailing { len: 1 }));
    }

    #[test]
    fn booleans_other_than_zero_and_one_are_refused() {
        let mut reader = Reader::new(Bytes::from_static(&[2]));
        assert!(matches!(
            reader.bool("more"),
            Err(PayloadError::Invalid { .. })
        ));
    }

    #[test]
    fn names_are_bounded_non_empty_and_printable() {
        assert!(Name::new("pvc-1234").is_ok());
        assert!(Name::new("").is_err());
        assert!(Name::new("a\nb").is_err());
        assert!(Name::new("x".repeat(MAX_NAME_BYTES)).is_ok());
        assert!(Name::new("x".repeat(MAX_NAME_BYTES + 1)).is_err());
    }

    #[test]
    fn invalid_utf8_string_is_refused() {
        let mut reader = Reader::new(Bytes::from_static(&[2, 0, 0xc3, 0x28]));
        assert!(matches!(
            reader.string("name", 10),
            Err(PayloadError::Invalid { .. })
        ));
    }
}
