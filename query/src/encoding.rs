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
//! the reader fills the rest in.

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
    let mut value = 0u64;
    for (i, &byte) in bytes.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok((value, &bytes[i + 1..]));
        }
    }
    Err(QueryError::corrupted("bad varint"))
}

/// Encodes a row.
pub fn encode_row(values: &[Value]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + values.len() * 9);
    encode_row_into(values.iter(), values.len(), &mut out);
    out
}

/// Appends the encoding of a row of `count` values to `out` (a reused
/// buffer: no allocation once it is large enough).
pub fn encode_row_into<'v>(
    values: impl Iterator<Item = &'v Value>,
    count: usize,
    out: &mut Vec<u8>,
) {
    out.push(ROW_FORMAT);
    put_varint(count as u64, out);
    let start = out.len();
    let mut written = 0usize;
    for value in values {
        written += 1;
        match value {
            Value::Null => out.push(ROW_TAG_NULL),
            Value::Integer(i) => {
                out.push(ROW_TAG_INTEGER);
                put_varint(((*i << 1) ^ (*i >> 63)) as u64, out);
            }
            Value::Real(r) => {
                out.push(ROW_TAG_REAL);
                out.extend_from_slice(&r.to_le_bytes());
            }
            Value::Text(s) => {
                out.push(ROW_TAG_TEXT);
                put_varint(s.len() as u64, out);
                out.extend_from_slice(s.as_bytes());
            }
            Value::Blob(b) => {
                out.push(ROW_TAG_BLOB);
                put_varint(b.len() as u64, out);
                out.extend_from_slice(b);
            }
            Value::Boolean(false) => out.push(ROW_TAG_FALSE),
            Value::Boolean(true) => out.push(ROW_TAG_TRUE),
        }
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
enum RowFault {
    /// The row ends inside a value.
    Truncated,
    /// A varint longer than 10 bytes or cut short.
    BadVarint,
    /// A value tag this version does not know.
    UnknownTag(u8),
    /// TEXT bytes that are not UTF-8.
    NotUtf8,
}

impl RowFault {
    #[cold]
    fn error(self) -> QueryError {
        match self {
            RowFault::Truncated => truncated("row"),
            RowFault::BadVarint => QueryError::corrupted("bad varint"),
            RowFault::UnknownTag(tag) => QueryError::corrupted(format!("unknown row tag {tag}")),
            RowFault::NotUtf8 => QueryError::corrupted("row text is not UTF-8"),
        }
    }
}

/// [`get_varint`] for the row decoder.
#[inline]
fn row_varint(bytes: &[u8]) -> std::result::Result<(u64, &[u8]), RowFault> {
    match bytes.split_first() {
        Some((&byte, rest)) if byte & 0x80 == 0 => Ok((u64::from(byte), rest)),
        _ => get_varint_long(bytes).map_err(|_| RowFault::BadVarint),
    }
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
