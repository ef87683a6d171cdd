//! Byte-level primitives shared by the codecs: LEB128 varints, zigzag
//! signed integers, fixed-width little-endian fields, and [`Reader`], a
//! cursor whose every read is bounds-checked and returns a typed
//! [`CodecError`] instead of panicking.

use super::CodecError;

/// Longest LEB128 encoding of a `u64`.
pub(crate) const MAX_VARINT_BYTES: usize = 10;

/// Appends `value` as an unsigned LEB128 varint (7 bits a byte, low first).
pub(crate) fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Number of bytes [`put_varint`] writes for `value`.
pub(crate) fn varint_len(value: u64) -> usize {
    let bits = 64 - (value | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// Maps a signed value to an unsigned one so that small magnitudes of
/// either sign get short varints (0, -1, 1, -2 ... → 0, 1, 2, 3 ...).
pub(crate) fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

/// Inverse of [`zigzag`].
pub(crate) fn unzigzag(value: u64) -> i64 {
    ((value >> 1) as i64) ^ -((value & 1) as i64)
}

/// A bounds-checked cursor over encoded bytes.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader positioned at the start of `buf`.
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// Offset of the next unread byte.
    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    /// Bytes not yet read.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Takes the next `len` bytes.
    pub(crate) fn bytes(&mut self, len: usize, what: &'static str) -> Result<&'a [u8], CodecError> {
        if len > self.remaining() {
            return Err(CodecError::Truncated {
                at: self.pos,
                what,
                needed: len - self.remaining(),
            });
        }
        let taken = &self.buf[self.pos..self.pos + len];
        self.pos += len;
        Ok(taken)
    }

    /// Takes every byte left.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let taken = &self.buf[self.pos..];
        self.pos = self.buf.len();
        taken
    }

    /// Takes one byte.
    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, CodecError> {
        Ok(self.bytes(1, what)?[0])
    }

    /// Takes a little-endian `u32`.
    pub(crate) fn u32_le(&mut self, what: &'static str) -> Result<u32, CodecError> {
        let mut word = [0u8; 4];
        word.copy_from_slice(self.bytes(4, what)?);
        Ok(u32::from_le_bytes(word))
    }

    /// Takes a little-endian `u64`.
    pub(crate) fn u64_le(&mut self, what: &'static str) -> Result<u64, CodecError> {
        let mut word = [0u8; 8];
        word.copy_from_slice(self.bytes(8, what)?);
        Ok(u64::from_le_bytes(word))
    }

    /// Takes an unsigned LEB128 varint of at most [`MAX_VARINT_BYTES`] bytes
    /// whose value fits in 64 bits.
    pub(crate) fn varint(&mut self, what: &'static str) -> Result<u64, CodecError> {
        let start = self.pos;
        let mut value = 0u64;
        for index in 0..MAX_VARINT_BYTES {
            let byte = self.u8(what)?;
            let bits = u64::from(byte & 0x7f);
            // The tenth byte may only carry the top bit of a u64.
            if index == MAX_VARINT_BYTES - 1 && bits > 1 {
                return Err(CodecError::BadVarint { at: start, what });
            }
            value |= bits << (7 * index);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(CodecError::BadVarint { at: start, what })
    }

    /// Takes a varint and checks it is at most `limit`.
    pub(crate) fn varint_at_most(
        &mut self,
        what: &'static str,
        limit: usize,
    ) -> Result<usize, CodecError> {
        let at = self.pos;
        let value = self.varint(what)?;
        match usize::try_from(value) {
            Ok(value) if value <= limit => Ok(value),
            _ => Err(CodecError::OutOfRange {
                at,
                what,
                value,
                limit: limit as u64,
            }),
        }
    }

    /// Takes a varint length and then that many bytes, which must be present.
    pub(crate) fn length_prefixed(&mut self, what: &'static str) -> Result<&'a [u8], CodecError> {
        let at = self.pos;
        let len = self.varint(what)?;
        match usize::try_from(len) {
            Ok(len) if len <= self.remaining() => self.bytes(len, what),
            _ => Err(CodecError::OutOfRange {
                at,
                what,
                value: len,
                limit: self.remaining() as u64,
            }),
        }
    }

    /// Fails unless every byte has been read.
    pub(crate) fn expect_end(&self, what: &'static str) -> Result<(), CodecError> {
        if self.remaining() == 0 {
            return Ok(());
        }
        Err(CodecError::TrailingBytes {
            at: self.pos,
            what,
            count: self.remaining(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn varint_round_trips(value in any::<u64>()) {
            let mut out = Vec::new();
            put_varint(&mut out, value);
            prop_assert_eq!(out.len(), varint_len(value));
            let mut reader = Reader::new(&out);
            prop_assert_eq!(reader.varint("test").unwrap(), value);
            prop_assert_eq!(reader.remaining(), 0);
        }

        #[test]
        fn zigzag_round_trips(value in any::<i64>()) {
            prop_assert_eq!(unzigzag(zigzag(value)), value);
        }
    }

    #[test]
    fn zigzag_keeps_small_magnitudes_small() {
        assert_eq!(zigzag(0), 0);
        assert_eq!(zigzag(-1), 1);
        assert_eq!(zigzag(1), 2);
        assert_eq!(zigzag(i64::MIN), u64::MAX);
    }

    #[test]
    fn varint_longer_than_ten_bytes_is_rejected() {
        let bytes = [0x80u8; 11];
        let err = Reader::new(&bytes).varint("test").unwrap_err();
        assert_eq!(
            err,
            CodecError::BadVarint {
                at: 0,
                what: "test"
            }
        );
    }

    #[test]
    fn varint_overflowing_64_bits_is_rejected() {
        let mut bytes = [0xffu8; 10];
        bytes[9] = 0x02;
        let err = Reader::new(&bytes).varint("test").unwrap_err();
        assert_eq!(
            err,
            CodecError::BadVarint {
                at: 0,
                what: "test"
            }
        );
    }

    #[test]
    fn truncated_varint_is_rejected() {
        let err = Reader::new(&[0x80, 0x80]).varint("test").unwrap_err();
        assert!(matches!(err, CodecError::Truncated { at: 2, .. }));
    }

    #[test]
    fn varint_above_limit_is_rejected() {
        let mut out = Vec::new();
        put_varint(&mut out, 300);
        let err = Reader::new(&out).varint_at_most("len", 299).unwrap_err();
        assert_eq!(
            err,
            CodecError::OutOfRange {
                at: 0,
                what: "len",
                value: 300,
                limit: 299
            }
        );
    }

    #[test]
    fn length_prefix_past_the_input_is_rejected() {
        let err = Reader::new(&[3, 1, 2])
            .length_prefixed("frame")
            .unwrap_err();
        assert_eq!(
            err,
            CodecError::OutOfRange {
                at: 0,
                what: "frame",
                value: 3,
                limit: 2
            }
        );
        assert_eq!(
            Reader::new(&[2, 1, 2]).length_prefixed("frame").unwrap(),
            &[1, 2]
        );
    }

    #[test]
    fn fixed_width_reads_check_length() {
        let mut reader = Reader::new(&[1, 2, 3]);
        assert!(matches!(
            reader.u32_le("word"),
            Err(CodecError::Truncated { needed: 1, .. })
        ));
        assert_eq!(reader.pos(), 0, "a failed read consumes nothing");
    }
}
