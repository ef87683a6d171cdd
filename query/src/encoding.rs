//! Byte encodings of SQL values: order-preserving keys and compact rows.
//!
//! **Keys** (primary keys, index keys) are memcomparable: comparing the
//! bytes gives the SQL order of the value tuples, and each value is
//! self-delimiting, so the encoding of a tuple prefix is a byte prefix.
//! Per value, a tag byte then the payload:
//!
//! | value | tag | payload |
//! | --- | --- | --- |
//! | FALSE / TRUE | `0x10` | `0x00` / `0x01` |
//! | INTEGER | `0x20` | 8 bytes big-endian of the value with its sign bit flipped |
//! | REAL | `0x30` | 8 bytes big-endian: positive floats with the sign bit set, negative floats with every bit flipped (-0 is stored as 0, NaN as the largest) |
//! | TEXT | `0x40` | the UTF-8 bytes with each `0x00` written `0x00 0xFF`, then `0x00 0x01` |
//! | BLOB | `0x50` | like TEXT |
//! | NULL | `0xF0` | none (NULL sorts after every value, as in PostgreSQL) |
//!
//! **Rows** (the value stored under a primary key): a format byte `0x01`,
//! the column count as a LEB128 varint, then per column a tag and payload:
//! `0` NULL, `1` INTEGER (zigzag LEB128), `2` REAL (8 bytes little-endian),
//! `3` TEXT and `4` BLOB (LEB128 length, then the bytes), `5` FALSE, `6` TRUE.
//! A row may hold fewer columns than its table (ALTER TABLE ADD COLUMN);
//! the reader fills the rest in. One column can be read in place
//! ([`row_column`], stepping over the ones before it without decoding
//! them) and rewritten in place ([`splice_row`], copying the others' bytes).

use crate::error::{QueryError, Result};
use crate::value::Value;

const KEY_TAG_BOOLEAN: u8 = 0x10;
const KEY_TAG_INTEGER: u8 = 0x20;
const KEY_TAG_REAL: u8 = 0x30;
const KEY_TAG_TEXT: u8 = 0x40;
const KEY_TAG_BLOB: u8 = 0x50;
const KEY_TAG_NULL: u8 = 0xF0;

/// Appends the key encoding of `value` to `out`.
pub fn encode_key_value(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.push(KEY_TAG_NULL),
        Value::Boolean(b) => out.extend_from_slice(&[KEY_TAG_BOOLEAN, u8::from(*b)]),
        Value::Integer(i) => {
            out.push(KEY_TAG_INTEGER);
            out.extend_from_slice(&((*i as u64) ^ (1 << 63)).to_be_bytes());
        }
        Value::Real(r) => {
            out.push(KEY_TAG_REAL);
            out.extend_from_slice(&real_key_bits(*r).to_be_bytes());
        }
        Value::Text(s) => {
            out.push(KEY_TAG_TEXT);
            escape_bytes(s.as_bytes(), out);
        }
        Value::Blob(b) => {
            out.push(KEY_TAG_BLOB);
            escape_bytes(b, out);
        }
    }
}

fn real_key_bits(r: f64) -> u64 {
    let r = if r == 0.0 {
        0.0
    } else if r.is_nan() {
        f64::NAN
    } else {
        r
    };
    let bits = r.to_bits();
    if r.is_nan() {
        u64::MAX
    } else if bits >> 63 == 1 {
        !bits
    } else {
        bits | (1 << 63)
    }
}

fn escape_bytes(bytes: &[u8], out: &mut Vec<u8>) {
    for &byte in bytes {
        out.push(byte);
        if byte == 0 {
            out.push(0xFF);
        }
    }
    out.extend_from_slice(&[0x00, 0x01]);
}

/// The key encoding of a tuple.
pub fn encode_key(values: &[Value]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * 9);
    for value in values {
        encode_key_value(value, &mut out);
    }
    out
}

/// The smallest byte string greater than every string starting with
/// `prefix`; `None` when there is none (the prefix is all `0xFF`).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Decodes a key back into its values (tests and diagnostics).
pub fn decode_key(mut bytes: &[u8]) -> Result<Vec<Value>> {
    let mut values = Vec::new();
    while let Some((&tag, rest)) = bytes.split_first() {
        bytes = rest;
        let value = match tag {
            KEY_TAG_NULL => Value::Null,
            KEY_TAG_BOOLEAN => {
                let (&b, rest) = bytes.split_first().ok_or_else(|| truncated("key"))?;
                bytes = rest;
                Value::Boolean(b != 0)
            }
            KEY_TAG_INTEGER | KEY_TAG_REAL => {
                let (word, rest) = split_array::<8>(bytes, "key")?;
                bytes = rest;
                let bits = u64::from_be_bytes(word);
                if tag == KEY_TAG_INTEGER {
                    Value::Integer((bits ^ (1 << 63)) as i64)
                } else if bits == u64::MAX {
                    Value::Real(f64::NAN)
                } else if bits >> 63 == 1 {
                    Value::Real(f64::from_bits(bits & !(1 << 63)))
                } else {
                    Value::Real(f64::from_bits(!bits))
                }
            }
            KEY_TAG_TEXT | KEY_TAG_BLOB => {
                let (raw, rest) = unescape_bytes(bytes)?;
                bytes = rest;
                if tag == KEY_TAG_TEXT {
                    Value::Text(
                        String::from_utf8(raw)
                            .map_err(|_| QueryError::corrupted("key text is not UTF-8"))?,
                    )
                } else {
                    Value::Blob(raw)
                }
            }
            other => {
                return Err(QueryError::corrupted(format!(
                    "unknown key tag {other:#04x}"
                )))
            }
        };
        values.push(value);
    }
    Ok(values)
}

fn unescape_bytes(bytes: &[u8]) -> Result<(Vec<u8>, &[u8])> {
    let mut raw = Vec::new();
    let mut i = 0;
    loop {
        match (bytes.get(i), bytes.get(i + 1)) {
            (Some(0), Some(0x01)) => return Ok((raw, &bytes[i + 2..])),
            (Some(0), Some(0xFF)) => {
                raw.push(0);
                i += 2;
            }
            (Some(&b), _) if b != 0 => {
                raw.push(b);
                i += 1;
            }
            _ => return Err(QueryError::corrupted("bad escape in a key")),
        }
    }
}

fn truncated(what: &str) -> QueryError {
    QueryError::corrupted(format!("truncated {what}"))
}

fn split_array<'a, const N: usize>(bytes: &'a [u8], what: &str) -> Result<([u8; N], &'a [u8])> {
    if bytes.len() < N {
        return Err(truncated(what));
    }
    let (head, rest) = bytes.split_at(N);
    let mut out = [0u8; N];
    out.copy_from_slice(head);
    Ok((out, rest))
}

const ROW_FORMAT: u8 = 0x01;
const ROW_TAG_NULL: u8 = 0;
const ROW_TAG_INTEGER: u8 = 1;
const ROW_TAG_REAL: u8 = 2;
const ROW_TAG_TEXT: u8 = 3;
const ROW_TAG_BLOB: u8 = 4;
const ROW_TAG_FALSE: u8 = 5;
const ROW_TAG_TRUE: u8 = 6;

/// Appends `value` as a LEB128 varint.
#[inline]
pub fn put_varint(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Reads a LEB128 varint.
#[inline]
pub fn get_varint(bytes: &[u8]) -> Result<(u64, &[u8])> {
    // One byte (values below 128) is the common case in rows.
    match bytes.split_first() {
        Some((&byte, rest)) if byte & 0x80 == 0 => Ok((u64::from(byte), rest)),
        _ => get_varint_long(bytes),
    }
}

/// [`get_varint`] for values of two bytes or more.
fn get_varint_long(bytes: &[u8]) -> Result<(u64, &[u8])> {
    varint_long(bytes).ok_or_else(|| QueryError::corrupted("bad varint"))
}

/// A varint of two bytes or more; `None` when longer than 10 bytes or cut
/// short (no error payload: the row decoders' hot path).
#[inline]
fn varint_long(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let mut value = 0u64;
    for (i, &byte) in bytes.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, &bytes[i + 1..]));
        }
    }
    None
}

/// Encodes a row.
pub fn encode_row(values: &[Value]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + values.len() * 9);
    encode_row_into(values.iter(), values.len(), &mut out);
    out
}

/// Appends the start of a row of `count` values (its format byte and
/// column count) to `out`; [`encode_row_value`] of each value, in column
/// order, completes it.
#[inline]
pub fn encode_row_header(count: usize, out: &mut Vec<u8>) {
    out.push(ROW_FORMAT);
    put_varint(count as u64, out);
}

/// Appends the encoding of a row of `count` values to `out` (a reused
/// buffer: no allocation once it is large enough).
pub fn encode_row_into<'v>(
    values: impl Iterator<Item = &'v Value>,
    count: usize,
    out: &mut Vec<u8>,
) {
    encode_row_header(count, out);
    let start = out.len();
    let mut written = 0usize;
    for value in values {
        written += 1;
        encode_row_value(value, out);
    }
    debug_assert_eq!(written, count, "row column count");
    debug_assert!(out.len() >= start + written);
}

/// Decodes a row into `out` (cleared first).
pub fn decode_row_into(bytes: &[u8], out: &mut Vec<Value>) -> Result<()> {
    decode_row_masked(bytes, None, out)
}

/// Decodes a row into `out` (cleared first); columns whose `mask` entry is
/// false (or past its end) are left NULL without being materialised, and
/// columns after the last wanted one are not parsed at all.
pub fn decode_row_masked(bytes: &[u8], mask: Option<&[bool]>, out: &mut Vec<Value>) -> Result<()> {
    out.clear();
    let (&format, rest) = bytes.split_first().ok_or_else(|| truncated("row"))?;
    if format != ROW_FORMAT {
        return Err(QueryError::corrupted(format!(
            "unknown row format {format}"
        )));
    }
    let (count, mut rest) = get_varint(rest)?;
    if count > rest.len() as u64 {
        return Err(QueryError::corrupted("row column count exceeds its bytes"));
    }
    let count = count as usize;
    // `count` is at most the row's length: reserving it is bounded.
    out.reserve(count);
    // Columns past the last wanted one are not parsed at all: they read as
    // NULL (their bytes are covered by the page checksum all the same).
    let parsed = match mask {
        None => count,
        Some(m) => m.iter().rposition(|&w| w).map_or(0, |last| last + 1),
    };
    for column in 0..count.min(parsed) {
        let wanted = mask.is_none_or(|m| m[column]);
        let (value, tail) = decode_row_value(rest, wanted).map_err(RowFault::error)?;
        rest = tail;
        out.push(value);
    }
    if parsed < count {
        for _ in parsed..count {
            out.push(Value::Null);
        }
    } else if !rest.is_empty() {
        return Err(QueryError::corrupted("trailing bytes after a row"));
    }
    Ok(())
}

/// What is wrong with a stored row value: a small `Copy` type, so the hot
/// decoding loop moves no error payloads; [`RowFault::error`] builds the
/// error off the hot path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowFault {
    /// The row ends inside a value.
    Truncated,
    /// A varint longer than 10 bytes or cut short.
    BadVarint,
    /// A value tag this version does not know.
    UnknownTag(u8),
    /// TEXT bytes that are not UTF-8.
    NotUtf8,
    /// A row format byte this version does not know.
    UnknownFormat(u8),
    /// A column count larger than the row's bytes can hold.
    CountTooLarge,
    /// Bytes after the row's last value.
    TrailingBytes,
}

impl From<RowFault> for QueryError {
    #[cold]
    fn from(fault: RowFault) -> QueryError {
        fault.error()
    }
}

impl RowFault {
    /// The error it is reported as (a corrupted row).
    #[cold]
    pub fn error(self) -> QueryError {
        match self {
            RowFault::Truncated => truncated("row"),
            RowFault::BadVarint => QueryError::corrupted("bad varint"),
            RowFault::UnknownTag(tag) => QueryError::corrupted(format!("unknown row tag {tag}")),
            RowFault::NotUtf8 => QueryError::corrupted("row text is not UTF-8"),
            RowFault::UnknownFormat(format) => {
                QueryError::corrupted(format!("unknown row format {format}"))
            }
            RowFault::CountTooLarge => QueryError::corrupted("row column count exceeds its bytes"),
            RowFault::TrailingBytes => QueryError::corrupted("trailing bytes after a row"),
        }
    }
}

/// [`get_varint`] for the row decoder.
#[inline]
fn row_varint(bytes: &[u8]) -> std::result::Result<(u64, &[u8]), RowFault> {
    match bytes.split_first() {
        Some((&byte, rest)) if byte & 0x80 == 0 => Ok((u64::from(byte), rest)),
        _ => {
            // Up to 8 bytes at once: gather the 7-bit groups of the word.
            if let (Some(word), Some(len)) = (bytes.first_chunk::<8>(), varint_len_in_word(bytes)) {
                let word = u64::from_le_bytes(*word);
                let mut value = 0u64;
                for i in 0..len {
                    value |= ((word >> (8 * i)) & 0x7F) << (7 * i);
                }
                return Ok((value, &bytes[len..]));
            }
            varint_long(bytes).ok_or(RowFault::BadVarint)
        }
    }
}

/// Varint continuation bits of eight bytes read as one little-endian word.
const VARINT_CONTINUATION_BITS: u64 = 0x8080_8080_8080_8080;

/// The length of the varint at the front of `bytes` when it ends within
/// their first eight bytes (found with one word operation).
#[inline]
fn varint_len_in_word(bytes: &[u8]) -> Option<usize> {
    let word = u64::from_le_bytes(*bytes.first_chunk::<8>()?);
    let ends = !word & VARINT_CONTINUATION_BITS;
    (ends != 0).then(|| ends.trailing_zeros() as usize / 8 + 1)
}

/// Steps over a varint without decoding it.
#[inline]
fn skip_varint(bytes: &[u8]) -> std::result::Result<&[u8], RowFault> {
    let len = match varint_len_in_word(bytes) {
        Some(len) => len,
        None => {
            bytes
                .iter()
                .take(10)
                .position(|&byte| byte & 0x80 == 0)
                .ok_or(RowFault::BadVarint)?
                + 1
        }
    };
    Ok(&bytes[len..])
}

/// Decodes one tagged row value from the front of `bytes`; an unwanted
/// value is checked and skipped, and reads as NULL (no allocation).
#[inline]
fn decode_row_value(bytes: &[u8], wanted: bool) -> std::result::Result<(Value, &[u8]), RowFault> {
    let (&tag, rest) = bytes.split_first().ok_or(RowFault::Truncated)?;
    let keep = |value: Value| if wanted { value } else { Value::Null };
    Ok(match tag {
        ROW_TAG_NULL => (Value::Null, rest),
        ROW_TAG_INTEGER => {
            let (raw, rest) = row_varint(rest)?;
            let value = ((raw >> 1) as i64) ^ -((raw & 1) as i64);
            (keep(Value::Integer(value)), rest)
        }
        ROW_TAG_REAL => {
            let (word, rest) = rest.split_first_chunk::<8>().ok_or(RowFault::Truncated)?;
            (keep(Value::Real(f64::from_le_bytes(*word))), rest)
        }
        ROW_TAG_TEXT | ROW_TAG_BLOB => {
            let (len, tail) = row_varint(rest)?;
            let len = usize::try_from(len).map_err(|_| RowFault::Truncated)?;
            if tail.len() < len {
                return Err(RowFault::Truncated);
            }
            let (data, rest) = tail.split_at(len);
            let value = if !wanted {
                Value::Null
            } else if tag == ROW_TAG_TEXT {
                let text = std::str::from_utf8(data).map_err(|_| RowFault::NotUtf8)?;
                Value::Text(text.to_owned())
            } else {
                Value::Blob(data.to_vec())
            };
            (value, rest)
        }
        ROW_TAG_FALSE => (keep(Value::Boolean(false)), rest),
        ROW_TAG_TRUE => (keep(Value::Boolean(true)), rest),
        other => return Err(RowFault::UnknownTag(other)),
    })
}

// Reading and rewriting single columns of an encoded row in place.

/// One row value read where it lies in its encoded row: numbers decoded,
/// TEXT and BLOB borrowed, nothing allocated.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RawValue<'a> {
    /// NULL.
    Null,
    /// An INTEGER.
    Integer(i64),
    /// A REAL.
    Real(f64),
    /// TEXT (checked to be UTF-8).
    Text(&'a str),
    /// A BLOB.
    Blob(&'a [u8]),
    /// A BOOLEAN.
    Boolean(bool),
}

impl RawValue<'_> {
    /// The owned value.
    pub fn to_value(self) -> Value {
        match self {
            RawValue::Null => Value::Null,
            RawValue::Integer(i) => Value::Integer(i),
            RawValue::Real(r) => Value::Real(r),
            RawValue::Text(s) => Value::Text(s.to_owned()),
            RawValue::Blob(b) => Value::Blob(b.to_vec()),
            RawValue::Boolean(b) => Value::Boolean(b),
        }
    }
}

/// Splits an encoded row into its column count and the bytes of its values.
#[inline]
fn row_body(bytes: &[u8]) -> std::result::Result<(usize, &[u8]), RowFault> {
    let (&format, rest) = bytes.split_first().ok_or(RowFault::Truncated)?;
    if format != ROW_FORMAT {
        return Err(RowFault::UnknownFormat(format));
    }
    let (count, body) = row_varint(rest)?;
    // Every value takes at least its tag byte.
    if count > body.len() as u64 {
        return Err(RowFault::CountTooLarge);
    }
    Ok((count as usize, body))
}

/// The number of columns an encoded row holds (fewer than its table's when
/// columns were added after it was written).
pub fn row_column_count(bytes: &[u8]) -> Result<usize> {
    row_body(bytes)
        .map(|(count, _)| count)
        .map_err(RowFault::error)
}

/// Reads the tagged value at the front of `bytes` without copying it.
#[inline]
fn read_raw_value(bytes: &[u8]) -> std::result::Result<(RawValue<'_>, &[u8]), RowFault> {
    let (&tag, rest) = bytes.split_first().ok_or(RowFault::Truncated)?;
    Ok(match tag {
        ROW_TAG_NULL => (RawValue::Null, rest),
        ROW_TAG_INTEGER => {
            let (raw, rest) = row_varint(rest)?;
            (
                RawValue::Integer(((raw >> 1) as i64) ^ -((raw & 1) as i64)),
                rest,
            )
        }
        ROW_TAG_REAL => {
            let (word, rest) = rest.split_first_chunk::<8>().ok_or(RowFault::Truncated)?;
            (RawValue::Real(f64::from_le_bytes(*word)), rest)
        }
        ROW_TAG_TEXT | ROW_TAG_BLOB => {
            let (len, tail) = row_varint(rest)?;
            let len = usize::try_from(len).map_err(|_| RowFault::Truncated)?;
            if tail.len() < len {
                return Err(RowFault::Truncated);
            }
            let (data, rest) = tail.split_at(len);
            let value = if tag == ROW_TAG_TEXT {
                RawValue::Text(std::str::from_utf8(data).map_err(|_| RowFault::NotUtf8)?)
            } else {
                RawValue::Blob(data)
            };
            (value, rest)
        }
        ROW_TAG_FALSE => (RawValue::Boolean(false), rest),
        ROW_TAG_TRUE => (RawValue::Boolean(true), rest),
        other => return Err(RowFault::UnknownTag(other)),
    })
}

/// Steps over the tagged value at the front of `bytes` (its tag and length
/// are checked, TEXT is not checked to be UTF-8).
#[inline]
fn skip_row_value(bytes: &[u8]) -> std::result::Result<&[u8], RowFault> {
    let (&tag, rest) = bytes.split_first().ok_or(RowFault::Truncated)?;
    match tag {
        ROW_TAG_NULL | ROW_TAG_FALSE | ROW_TAG_TRUE => Ok(rest),
        ROW_TAG_INTEGER => skip_varint(rest),
        ROW_TAG_REAL => rest.get(8..).ok_or(RowFault::Truncated),
        ROW_TAG_TEXT | ROW_TAG_BLOB => {
            let (len, tail) = row_varint(rest)?;
            let len = usize::try_from(len).map_err(|_| RowFault::Truncated)?;
            tail.get(len..).ok_or(RowFault::Truncated)
        }
        other => Err(RowFault::UnknownTag(other)),
    }
}

/// Steps over `n` values at the front of `bytes`. An INTEGER whose varint
/// ends in its first byte (|i| < 64) is stepped over here, in the loop;
/// every other value goes through [`skip_row_value`], which checks it.
#[inline]
fn skip_row_values(mut bytes: &[u8], n: usize) -> std::result::Result<&[u8], RowFault> {
    for _ in 0..n {
        bytes = match bytes {
            [ROW_TAG_INTEGER, byte, rest @ ..] if byte & 0x80 == 0 => rest,
            _ => skip_row_value(bytes)?,
        };
    }
    Ok(bytes)
}

/// Reads column `column` of an encoded row, stepping over the ones before
/// it and parsing none after it; `None` when the row holds fewer columns
/// (the caller supplies the column's default). The error is small and
/// converts into [`QueryError`] with `?`.
#[inline]
pub fn row_column(
    bytes: &[u8],
    column: usize,
) -> std::result::Result<Option<RawValue<'_>>, RowFault> {
    let (count, body) = row_body(bytes)?;
    if column >= count {
        return Ok(None);
    }
    let at = skip_row_values(body, column)?;
    read_raw_value(at).map(|(value, _)| Some(value))
}

/// Appends the row encoding of INTEGER `i` (see [`encode_row_value`]).
#[inline]
pub fn encode_row_integer(i: i64, out: &mut Vec<u8>) {
    out.push(ROW_TAG_INTEGER);
    put_varint(((i << 1) ^ (i >> 63)) as u64, out);
}

/// Appends the row encoding of TEXT `s` (see [`encode_row_value`]).
#[inline]
pub fn encode_row_text(s: &str, out: &mut Vec<u8>) {
    out.push(ROW_TAG_TEXT);
    put_varint(s.len() as u64, out);
    out.extend_from_slice(s.as_bytes());
}

/// Appends the row encoding of one value (tag and payload) to `out`.
pub fn encode_row_value(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.push(ROW_TAG_NULL),
        Value::Integer(i) => encode_row_integer(*i, out),
        Value::Real(r) => {
            out.push(ROW_TAG_REAL);
            out.extend_from_slice(&r.to_le_bytes());
        }
        Value::Text(s) => encode_row_text(s, out),
        Value::Blob(b) => {
            out.push(ROW_TAG_BLOB);
            put_varint(b.len() as u64, out);
            out.extend_from_slice(b);
        }
        Value::Boolean(false) => out.push(ROW_TAG_FALSE),
        Value::Boolean(true) => out.push(ROW_TAG_TRUE),
    }
}

/// Appends to `out` the encoded row `bytes` with the values of `columns`
/// (increasing, distinct) replaced by `values` (one each). The other
/// columns' bytes are copied as they are (checked, not decoded). Returns
/// false, appending nothing, when the row holds fewer columns than a
/// changed one (the caller re-encodes it whole, its defaults filled in).
pub fn splice_row(
    bytes: &[u8],
    columns: &[usize],
    values: &[Value],
    out: &mut Vec<u8>,
) -> Result<bool> {
    assert_eq!(columns.len(), values.len(), "one value per spliced column");
    debug_assert!(
        columns.windows(2).all(|w| w[0] < w[1]),
        "splice columns must be increasing"
    );
    let (count, body) = row_body(bytes).map_err(RowFault::error)?;
    if columns.last().is_some_and(|&column| column >= count) {
        return Ok(false);
    }
    let start = out.len();
    out.extend_from_slice(&bytes[..bytes.len() - body.len()]);
    let spliced = splice_values(body, count, columns.iter().copied().zip(values), out);
    if spliced.is_err() {
        out.truncate(start);
    }
    spliced.map(|()| true).map_err(RowFault::error)
}

/// [`splice_row`] after the row header: `body` holds `count` values.
fn splice_values<'v>(
    body: &[u8],
    count: usize,
    changes: impl Iterator<Item = (usize, &'v Value)>,
    out: &mut Vec<u8>,
) -> std::result::Result<(), RowFault> {
    let mut rest = body;
    let mut next_column = 0;
    for (column, value) in changes {
        let kept = skip_row_values(rest, column - next_column)?;
        out.extend_from_slice(&rest[..rest.len() - kept.len()]);
        rest = skip_row_value(kept)?;
        encode_row_value(value, out);
        next_column = column + 1;
    }
    // The columns after the last change are copied, once checked to end
    // exactly where the row does (as a full decode would).
    let tail = skip_row_values(rest, count - next_column)?;
    if !tail.is_empty() {
        return Err(RowFault::TrailingBytes);
    }
    out.extend_from_slice(rest);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn value_of_type(ty: u8) -> BoxedStrategy<Value> {
        let base = match ty {
            0 => any::<i64>().prop_map(Value::Integer).boxed(),
            1 => any::<f64>()
                .prop_filter("not NaN", |r| !r.is_nan())
                .prop_map(Value::Real)
                .boxed(),
            2 => ".{0,6}".prop_map(Value::Text).boxed(),
            3 => proptest::collection::vec(prop_oneof![Just(0u8), Just(255u8), any::<u8>()], 0..6)
                .prop_map(Value::Blob)
                .boxed(),
            _ => any::<bool>().prop_map(Value::Boolean).boxed(),
        };
        prop_oneof![9 => base, 1 => Just(Value::Null)].boxed()
    }

    fn tuple_pair() -> impl Strategy<Value = (Vec<Value>, Vec<Value>)> {
        proptest::collection::vec(0u8..5, 1..4).prop_flat_map(|types| {
            let a: Vec<_> = types.iter().map(|&t| value_of_type(t)).collect();
            let b: Vec<_> = types.iter().map(|&t| value_of_type(t)).collect();
            (a, b)
        })
    }

    proptest! {
        #[test]
        fn key_order_is_sql_order((a, b) in tuple_pair()) {
            let model = a.iter().zip(&b).map(|(x, y)| x.sort_cmp(y)).find(|o| o.is_ne())
                .unwrap_or(std::cmp::Ordering::Equal);
            let ka = encode_key(&a);
            let kb = encode_key(&b);
            // -0.0 and 0.0 are equal in SQL and encode alike.
            prop_assert_eq!(ka.cmp(&kb), model);
            let back = decode_key(&ka).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(back.len(), a.len());
        }

        #[test]
        fn rows_round_trip(row in proptest::collection::vec((0u8..5).prop_flat_map(value_of_type), 0..8)) {
            let mut back = Vec::new();
            decode_row_into(&encode_row(&row), &mut back).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(back, row);
        }

        #[test]
        fn masked_rows_are_full_rows_with_unwanted_columns_null(
            row in proptest::collection::vec((0u8..5).prop_flat_map(value_of_type), 0..8),
            mask in proptest::collection::vec(any::<bool>(), 0..10),
        ) {
            let mut back = Vec::new();
            decode_row_masked(&encode_row(&row), Some(&mask), &mut back)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let want: Vec<Value> = row
                .iter()
                .enumerate()
                .map(|(i, v)| if mask.get(i).copied().unwrap_or(false) { v.clone() } else { Value::Null })
                .collect();
            prop_assert_eq!(back, want);
        }

        #[test]
        fn garbage_rows_error_instead_of_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..32)) {
            let mut out = Vec::new();
            let _ = decode_row_into(&bytes, &mut out);
            let _ = decode_key(&bytes);
        }
    }

    #[test]
    fn columns_after_the_last_wanted_one_are_not_parsed() {
        let row = encode_row(&[
            Value::Integer(300),
            Value::Text("skipped".into()),
            Value::Integer(-7),
        ]);
        let mut out = Vec::new();
        decode_row_masked(&row, Some(&[true]), &mut out).expect("decode");
        assert_eq!(out, vec![Value::Integer(300), Value::Null, Value::Null]);
        // A bad tag in a wanted column is still an error...
        let mut bad = row.clone();
        bad[2] = 0x7F;
        assert!(decode_row_masked(&bad, Some(&[true]), &mut out).is_err());
        // ...and so are trailing bytes when every column is parsed.
        let mut long = row;
        long.push(0);
        assert!(decode_row_masked(&long, None, &mut out).is_err());
        assert!(decode_row_masked(&long, Some(&[false, false, true]), &mut out).is_err());
    }

    #[test]
    fn prefix_end_skips_every_extension() {
        assert_eq!(prefix_end(&[1, 2]), Some(vec![1, 3]));
        assert_eq!(prefix_end(&[1, 0xFF]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xFF]), None);
        let p = encode_key(&[Value::Integer(5)]);
        let longer = encode_key(&[Value::Integer(5), Value::Text("zz".into())]);
        assert!(longer < prefix_end(&p).unwrap_or_default());
    }
}

#[cfg(test)]
mod raw_tests {
    //! Reading and splicing single columns of encoded rows, against the
    //! full decoder and encoder as the model.
    use super::*;
    use proptest::prelude::*;

    fn any_value() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<i64>().prop_map(Value::Integer),
            any::<f64>()
                .prop_filter("not NaN", |r| !r.is_nan())
                .prop_map(Value::Real),
            ".{0,8}".prop_map(Value::Text),
            proptest::collection::vec(any::<u8>(), 0..8).prop_map(Value::Blob),
            any::<bool>().prop_map(Value::Boolean),
        ]
    }

    fn decoded(bytes: &[u8]) -> std::result::Result<Vec<Value>, TestCaseError> {
        let mut out = Vec::new();
        decode_row_into(bytes, &mut out).map_err(|e| TestCaseError::fail(e.to_string()))?;
        Ok(out)
    }

    proptest! {
        #[test]
        fn spliced_row_is_decode_modify_encode(
            row in proptest::collection::vec(any_value(), 0..8),
            changes in proptest::collection::btree_map(0usize..10, any_value(), 0..4),
        ) {
            let bytes = encode_row(&row);
            let columns: Vec<usize> = changes.keys().copied().collect();
            let values: Vec<Value> = changes.values().cloned().collect();
            let mut out = vec![0xAB];
            let spliced = splice_row(&bytes, &columns, &values, &mut out)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let fits = columns.iter().all(|&c| c < row.len());
            prop_assert_eq!(spliced, fits);
            if fits {
                let mut model = decoded(&bytes)?;
                for (&c, v) in &changes {
                    model[c] = v.clone();
                }
                let want = encode_row(&model);
                prop_assert_eq!(&out[1..], want.as_slice());
            } else {
                prop_assert_eq!(out, vec![0xAB]);
            }
        }

        #[test]
        fn raw_column_is_the_decoded_column(
            row in proptest::collection::vec(any_value(), 0..8),
            column in 0usize..10,
        ) {
            let bytes = encode_row(&row);
            let raw = row_column(&bytes, column).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
            prop_assert_eq!(raw.map(RawValue::to_value), row.get(column).cloned());
            prop_assert_eq!(row_column_count(&bytes).ok(), Some(row.len()));
        }

        #[test]
        fn garbage_rows_error_instead_of_panicking_when_read_in_place(
            bytes in proptest::collection::vec(any::<u8>(), 0..32),
            column in 0usize..4,
        ) {
            let _ = row_column(&bytes, column);
            let mut out = Vec::new();
            if splice_row(&bytes, &[column], &[Value::Integer(1)], &mut out).is_err() {
                prop_assert!(out.is_empty());
            }
        }
    }

    #[test]
    fn splicing_a_damaged_row_is_an_error_and_appends_nothing() {
        let row = encode_row(&[Value::Integer(7), Value::Text("abc".into())]);
        let one = [Value::Integer(1)];
        let mut long = row.clone();
        long.push(0);
        let mut out = Vec::new();
        assert!(splice_row(&long, &[0], &one, &mut out).is_err());
        assert!(out.is_empty());
        let short = &row[..row.len() - 1];
        assert!(splice_row(short, &[0], &one, &mut out).is_err());
        assert!(out.is_empty());
        assert!(row_column(short, 1).is_err());
        assert_eq!(row_column(&row, 0).ok(), Some(Some(RawValue::Integer(7))));
    }
}
