//! SQL values and types: the typed [`Value`], the column [`DataType`],
//! comparison with PostgreSQL's rules, assignment coercion, display, and the
//! [`ToSql`] / [`FromSql`] conversions to and from Rust types.

use std::cmp::Ordering;
use std::fmt;

use crate::error::{QueryError, Result};

/// A SQL value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// A 64-bit signed integer (INTEGER, INT, BIGINT).
    Integer(i64),
    /// A double-precision float (REAL, DOUBLE PRECISION).
    Real(f64),
    /// UTF-8 text (TEXT, VARCHAR).
    Text(String),
    /// Bytes (BLOB, BYTEA).
    Blob(Vec<u8>),
    /// BOOLEAN.
    Boolean(bool),
}

/// The type of a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataType {
    /// 64-bit signed integer.
    Integer,
    /// Double-precision float.
    Real,
    /// UTF-8 text.
    Text,
    /// Bytes.
    Blob,
    /// Boolean.
    Boolean,
}

impl DataType {
    /// The SQL name, as `.schema` prints it.
    pub fn sql_name(self) -> &'static str {
        match self {
            DataType::Integer => "INTEGER",
            DataType::Real => "DOUBLE PRECISION",
            DataType::Text => "TEXT",
            DataType::Blob => "BYTEA",
            DataType::Boolean => "BOOLEAN",
        }
    }

    /// PostgreSQL's name, for error messages.
    pub(crate) fn pg_name(self) -> &'static str {
        match self {
            DataType::Integer => "bigint",
            DataType::Real => "double precision",
            DataType::Text => "text",
            DataType::Blob => "bytea",
            DataType::Boolean => "boolean",
        }
    }
}

impl Value {
    /// The value's type; `None` for NULL.
    pub fn data_type(&self) -> Option<DataType> {
        match self {
            Value::Null => None,
            Value::Integer(_) => Some(DataType::Integer),
            Value::Real(_) => Some(DataType::Real),
            Value::Text(_) => Some(DataType::Text),
            Value::Blob(_) => Some(DataType::Blob),
            Value::Boolean(_) => Some(DataType::Boolean),
        }
    }

    /// Whether this is NULL.
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    pub(crate) fn type_name(&self) -> &'static str {
        self.data_type().map_or("unknown", DataType::pg_name)
    }

    /// Compares two values with SQL semantics: `Ok(None)` when either is
    /// NULL, an error when the types cannot be compared.
    pub fn sql_cmp(&self, other: &Value) -> Result<Option<Ordering>> {
        Ok(match (self, other) {
            (Value::Null, _) | (_, Value::Null) => None,
            (Value::Integer(a), Value::Integer(b)) => Some(a.cmp(b)),
            (Value::Integer(a), Value::Real(b)) => Some(cmp_f64(*a as f64, *b)),
            (Value::Real(a), Value::Integer(b)) => Some(cmp_f64(*a, *b as f64)),
            (Value::Real(a), Value::Real(b)) => Some(cmp_f64(*a, *b)),
            (Value::Text(a), Value::Text(b)) => Some(a.as_bytes().cmp(b.as_bytes())),
            (Value::Blob(a), Value::Blob(b)) => Some(a.cmp(b)),
            (Value::Boolean(a), Value::Boolean(b)) => Some(a.cmp(b)),
            (a, b) => {
                return Err(QueryError::type_mismatch(format!(
                    "cannot compare {} with {}",
                    a.type_name(),
                    b.type_name()
                )))
            }
        })
    }

    /// A total order for sorting: NULL after every other value, values of
    /// different types by a fixed type order.
    pub fn sort_cmp(&self, other: &Value) -> Ordering {
        match self.sql_cmp(other) {
            Ok(Some(ordering)) => ordering,
            _ => self.type_rank().cmp(&other.type_rank()),
        }
    }

    fn type_rank(&self) -> u8 {
        match self {
            Value::Boolean(_) => 0,
            Value::Integer(_) | Value::Real(_) => 1,
            Value::Text(_) => 2,
            Value::Blob(_) => 3,
            Value::Null => 4,
        }
    }

    /// Converts the value for storage in a column of type `ty`
    /// (PostgreSQL's assignment casts). NULL stays NULL.
    pub fn coerce_to(self, ty: DataType) -> Result<Value> {
        match (self, ty) {
            (Value::Null, _) => Ok(Value::Null),
            (v @ Value::Integer(_), DataType::Integer)
            | (v @ Value::Real(_), DataType::Real)
            | (v @ Value::Text(_), DataType::Text)
            | (v @ Value::Blob(_), DataType::Blob)
            | (v @ Value::Boolean(_), DataType::Boolean) => Ok(v),
            (Value::Integer(i), DataType::Real) => Ok(Value::Real(i as f64)),
            (Value::Real(r), DataType::Integer) => real_to_integer(r).map(Value::Integer),
            (Value::Integer(i), DataType::Text) => Ok(Value::Text(i.to_string())),
            (Value::Real(r), DataType::Text) => Ok(Value::Text(format_real(r))),
            (Value::Boolean(b), DataType::Text) => {
                Ok(Value::Text(if b { "true" } else { "false" }.into()))
            }
            (Value::Text(s), ty) => parse_text(&s, ty),
            (Value::Boolean(b), DataType::Integer) => Ok(Value::Integer(i64::from(b))),
            (v, ty) => Err(QueryError::type_mismatch(format!(
                "cannot convert {} to {}",
                v.type_name(),
                ty.pg_name()
            ))),
        }
    }
}

/// PostgreSQL's float order: NaN equals NaN and sorts after everything.
pub(crate) fn cmp_f64(a: f64, b: f64) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        (false, false) => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
    }
}

/// Rounds a float to an integer (half away from zero), or fails when it is
/// out of range.
pub(crate) fn real_to_integer(r: f64) -> Result<i64> {
    let rounded = r.round();
    // i64::MAX as f64 rounds up to 2^63, so the upper check is exclusive.
    if rounded.is_nan()
        || !(-9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0).contains(&rounded)
    {
        return Err(QueryError::out_of_range("bigint out of range"));
    }
    Ok(rounded as i64)
}

/// Parses text input for a type, as PostgreSQL's input functions do.
pub(crate) fn parse_text(s: &str, ty: DataType) -> Result<Value> {
    let invalid = || {
        QueryError::invalid_text(format!(
            "invalid input syntax for type {}: \"{s}\"",
            ty.pg_name()
        ))
    };
    let t = s.trim();
    match ty {
        DataType::Text => Ok(Value::Text(s.to_owned())),
        DataType::Integer => t.parse::<i64>().map(Value::Integer).map_err(|_| invalid()),
        DataType::Real => {
            let lower = t.to_ascii_lowercase();
            match lower.as_str() {
                "nan" => Ok(Value::Real(f64::NAN)),
                "infinity" | "+infinity" | "inf" => Ok(Value::Real(f64::INFINITY)),
                "-infinity" | "-inf" => Ok(Value::Real(f64::NEG_INFINITY)),
                _ => t
                    .parse::<f64>()
                    .ok()
                    .filter(|r| r.is_finite())
                    .map(Value::Real)
                    .ok_or_else(invalid),
            }
        }
        DataType::Boolean => match t.to_ascii_lowercase().as_str() {
            "t" | "true" | "yes" | "y" | "on" | "1" => Ok(Value::Boolean(true)),
            "f" | "false" | "no" | "n" | "off" | "0" => Ok(Value::Boolean(false)),
            _ => Err(invalid()),
        },
        DataType::Blob => match s.strip_prefix("\\x") {
            Some(hex) => decode_hex(hex).map(Value::Blob).ok_or_else(invalid),
            None => Ok(Value::Blob(s.as_bytes().to_vec())),
        },
    }
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
        })
        .collect()
}

/// Formats a float the way PostgreSQL prints `double precision`.
pub(crate) fn format_real(r: f64) -> String {
    if r.is_nan() {
        "NaN".into()
    } else if r.is_infinite() {
        if r > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        }
    } else if r == 0.0 {
        // -0 prints as -0 in PostgreSQL too; keep the sign.
        if r.is_sign_negative() {
            "-0".into()
        } else {
            "0".into()
        }
    } else if r.abs() >= 1e15 || r.abs() < 1e-4 {
        let s = format!("{r:e}");
        // Rust prints 1e20 / 1.5e-7; PostgreSQL prints 1e+20 / 1.5e-07.
        match s.split_once('e') {
            Some((mantissa, exp)) => {
                let (sign, digits) = match exp.strip_prefix('-') {
                    Some(d) => ('-', d),
                    None => ('+', exp),
                };
                format!("{mantissa}e{sign}{digits:0>2}")
            }
            None => s,
        }
    } else {
        format!("{r}")
    }
}

impl fmt::Display for Value {
    /// PostgreSQL's text output (`NULL` for NULL).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("NULL"),
            Value::Integer(i) => write!(f, "{i}"),
            Value::Real(r) => f.write_str(&format_real(*r)),
            Value::Text(s) => f.write_str(s),
            Value::Blob(b) => {
                f.write_str("\\x")?;
                for byte in b {
                    write!(f, "{byte:02x}")?;
                }
                Ok(())
            }
            Value::Boolean(b) => f.write_str(if *b { "true" } else { "false" }),
        }
    }
}

/// A Rust value that can be passed as a statement parameter.
pub trait ToSql {
    /// The SQL value.
    fn to_sql(&self) -> Value;

    /// Stores the SQL value in `slot`, which holds an earlier value (a
    /// prepared statement's parameter list is reused from run to run).
    /// Text and bytes copy into the slot's buffer when it has one, so a
    /// statement run a million times allocates no string per run.
    fn to_sql_into(&self, slot: &mut Value) {
        *slot = self.to_sql();
    }
}

/// Stores a scalar in `slot`: in place when the slot already holds one of
/// its kind (no drop of the old value, the usual case of a prepared
/// statement's parameter list), else replacing what it holds.
macro_rules! scalar_into {
    ($slot:expr, $variant:ident, $value:expr) => {
        match $slot {
            Value::$variant(old) => *old = $value,
            other => *other = Value::$variant($value),
        }
    };
}

/// Copies `text` into `slot`, reusing its string buffer when it holds one.
fn text_into(text: &str, slot: &mut Value) {
    match slot {
        Value::Text(buffer) => {
            buffer.clear();
            buffer.push_str(text);
        }
        other => *other = Value::Text(text.to_owned()),
    }
}

/// Copies `bytes` into `slot`, reusing its byte buffer when it holds one.
fn blob_into(bytes: &[u8], slot: &mut Value) {
    match slot {
        Value::Blob(buffer) => {
            buffer.clear();
            buffer.extend_from_slice(bytes);
        }
        other => *other = Value::Blob(bytes.to_vec()),
    }
}

impl ToSql for Value {
    fn to_sql(&self) -> Value {
        self.clone()
    }

    fn to_sql_into(&self, slot: &mut Value) {
        match self {
            Value::Text(text) => text_into(text, slot),
            Value::Blob(bytes) => blob_into(bytes, slot),
            Value::Integer(i) => scalar_into!(slot, Integer, *i),
            Value::Real(r) => scalar_into!(slot, Real, *r),
            Value::Boolean(b) => scalar_into!(slot, Boolean, *b),
            other => *slot = other.clone(),
        }
    }
}

macro_rules! to_sql_integer {
    ($($t:ty),*) => {$(
        impl ToSql for $t {
            fn to_sql(&self) -> Value {
                Value::Integer(i64::from(*self))
            }

            #[inline]
            fn to_sql_into(&self, slot: &mut Value) {
                scalar_into!(slot, Integer, i64::from(*self));
            }
        }
    )*};
}
to_sql_integer!(i8, i16, i32, i64, u8, u16, u32);

impl ToSql for f64 {
    fn to_sql(&self) -> Value {
        Value::Real(*self)
    }

    #[inline]
    fn to_sql_into(&self, slot: &mut Value) {
        scalar_into!(slot, Real, *self);
    }
}

impl ToSql for f32 {
    fn to_sql(&self) -> Value {
        Value::Real(f64::from(*self))
    }

    #[inline]
    fn to_sql_into(&self, slot: &mut Value) {
        scalar_into!(slot, Real, f64::from(*self));
    }
}

impl ToSql for bool {
    fn to_sql(&self) -> Value {
        Value::Boolean(*self)
    }

    #[inline]
    fn to_sql_into(&self, slot: &mut Value) {
        scalar_into!(slot, Boolean, *self);
    }
}

impl ToSql for str {
    fn to_sql(&self) -> Value {
        Value::Text(self.to_owned())
    }

    fn to_sql_into(&self, slot: &mut Value) {
        text_into(self, slot);
    }
}

impl ToSql for String {
    fn to_sql(&self) -> Value {
        Value::Text(self.clone())
    }

    fn to_sql_into(&self, slot: &mut Value) {
        text_into(self, slot);
    }
}

impl ToSql for [u8] {
    fn to_sql(&self) -> Value {
        Value::Blob(self.to_vec())
    }

    fn to_sql_into(&self, slot: &mut Value) {
        blob_into(self, slot);
    }
}

impl ToSql for Vec<u8> {
    fn to_sql(&self) -> Value {
        Value::Blob(self.clone())
    }

    fn to_sql_into(&self, slot: &mut Value) {
        blob_into(self, slot);
    }
}

impl<T: ToSql + ?Sized> ToSql for &T {
    fn to_sql(&self) -> Value {
        (**self).to_sql()
    }

    fn to_sql_into(&self, slot: &mut Value) {
        (**self).to_sql_into(slot);
    }
}

impl<T: ToSql> ToSql for Option<T> {
    fn to_sql(&self) -> Value {
        self.as_ref().map_or(Value::Null, ToSql::to_sql)
    }

    fn to_sql_into(&self, slot: &mut Value) {
        match self {
            Some(value) => value.to_sql_into(slot),
            None => *slot = Value::Null,
        }
    }
}

/// A Rust type a result column can be read as.
pub trait FromSql: Sized {
    /// Converts the value; an error when the type does not fit.
    fn from_sql(value: &Value) -> Result<Self>;
}

fn wrong_type(value: &Value, wanted: &str) -> QueryError {
    QueryError::type_mismatch(format!(
        "cannot read a {} value as {wanted}",
        value.type_name()
    ))
}

impl FromSql for Value {
    fn from_sql(value: &Value) -> Result<Self> {
        Ok(value.clone())
    }
}

impl FromSql for i64 {
    fn from_sql(value: &Value) -> Result<Self> {
        match value {
            Value::Integer(i) => Ok(*i),
            other => Err(wrong_type(other, "i64")),
        }
    }
}

impl FromSql for f64 {
    fn from_sql(value: &Value) -> Result<Self> {
        match value {
            Value::Real(r) => Ok(*r),
            Value::Integer(i) => Ok(*i as f64),
            other => Err(wrong_type(other, "f64")),
        }
    }
}

impl FromSql for String {
    fn from_sql(value: &Value) -> Result<Self> {
        match value {
            Value::Text(s) => Ok(s.clone()),
            other => Err(wrong_type(other, "String")),
        }
    }
}

impl FromSql for Vec<u8> {
    fn from_sql(value: &Value) -> Result<Self> {
        match value {
            Value::Blob(b) => Ok(b.clone()),
            other => Err(wrong_type(other, "Vec<u8>")),
        }
    }
}

impl FromSql for bool {
    fn from_sql(value: &Value) -> Result<Self> {
        match value {
            Value::Boolean(b) => Ok(*b),
            other => Err(wrong_type(other, "bool")),
        }
    }
}

impl<T: FromSql> FromSql for Option<T> {
    fn from_sql(value: &Value) -> Result<Self> {
        match value {
            Value::Null => Ok(None),
            other => T::from_sql(other).map(Some),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn null_compares_unknown_and_sorts_last() {
        assert_eq!(Value::Null.sql_cmp(&Value::Integer(1)).ok(), Some(None));
        assert_eq!(Value::Null.sort_cmp(&Value::Integer(1)), Ordering::Greater);
        assert_eq!(
            Value::Integer(2).sql_cmp(&Value::Real(2.5)).ok(),
            Some(Some(Ordering::Less))
        );
        assert!(Value::Text("a".into()).sql_cmp(&Value::Integer(1)).is_err());
    }

    #[test]
    fn coercion_follows_assignment_casts() {
        assert_eq!(
            Value::Real(2.5).coerce_to(DataType::Integer).ok(),
            Some(Value::Integer(3))
        );
        assert_eq!(
            Value::Text(" 42 ".into()).coerce_to(DataType::Integer).ok(),
            Some(Value::Integer(42))
        );
        assert!(Value::Text("x".into())
            .coerce_to(DataType::Integer)
            .is_err());
        assert!(Value::Real(1e30).coerce_to(DataType::Integer).is_err());
        assert_eq!(
            Value::Text("\\x0aff".into()).coerce_to(DataType::Blob).ok(),
            Some(Value::Blob(vec![10, 255]))
        );
        assert_eq!(
            Value::Text("yes".into()).coerce_to(DataType::Boolean).ok(),
            Some(Value::Boolean(true))
        );
    }

    #[test]
    fn reals_print_like_postgres() {
        assert_eq!(format_real(3.0), "3");
        assert_eq!(format_real(2.5), "2.5");
        assert_eq!(format_real(1e20), "1e+20");
        assert_eq!(format_real(1.5e-7), "1.5e-07");
        assert_eq!(Value::Blob(vec![1, 171]).to_string(), "\\x01ab");
    }

    fn any_param() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        prop_oneof![
            Just(Value::Null),
            any::<i64>().prop_map(Value::Integer),
            any::<bool>().prop_map(Value::Boolean),
            "[a-z]{0,40}".prop_map(Value::Text),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(Value::Blob),
        ]
    }

    proptest::proptest! {
        /// A reused slot ends up holding exactly what `to_sql` returns,
        /// whatever value it held before (the model: a fresh conversion).
        #[test]
        fn to_sql_into_a_reused_slot_equals_to_sql(
            sequence in proptest::collection::vec(any_param(), 1..20)
        ) {
            let mut slot = Value::Null;
            for value in &sequence {
                value.to_sql_into(&mut slot);
                proptest::prop_assert_eq!(&slot, &value.to_sql());
                match value {
                    Value::Text(text) => {
                        text.to_sql_into(&mut slot);
                        proptest::prop_assert_eq!(&slot, &text.to_sql());
                        text.as_str().to_sql_into(&mut slot);
                        proptest::prop_assert_eq!(&slot, &text.to_sql());
                    }
                    Value::Blob(bytes) => {
                        bytes.to_sql_into(&mut slot);
                        proptest::prop_assert_eq!(&slot, &bytes.to_sql());
                        Some(bytes.as_slice()).to_sql_into(&mut slot);
                        proptest::prop_assert_eq!(&slot, &bytes.to_sql());
                    }
                    _ => {}
                }
            }
            None::<String>.to_sql_into(&mut slot);
            proptest::prop_assert_eq!(slot, Value::Null);
        }
    }

    #[test]
    fn text_into_a_text_slot_keeps_its_buffer() {
        let mut slot = Value::Text(String::with_capacity(64));
        let before = match &slot {
            Value::Text(text) => text.as_ptr(),
            _ => unreachable!(),
        };
        "row 7".to_sql_into(&mut slot);
        match &slot {
            Value::Text(text) => {
                assert_eq!(text, "row 7");
                assert_eq!(text.as_ptr(), before, "the buffer was reused");
            }
            other => panic!("expected text, got {other:?}"),
        }
    }

    #[test]
    fn scalars_into_a_slot_replace_whatever_it_held() {
        let params: [&dyn ToSql; 7] = [
            &7i32,
            &-2i64,
            &1.5f64,
            &0.25f32,
            &true,
            &Value::Integer(3),
            &Value::Real(-1.0),
        ];
        let expected = [
            Value::Integer(7),
            Value::Integer(-2),
            Value::Real(1.5),
            Value::Real(0.25),
            Value::Boolean(true),
            Value::Integer(3),
            Value::Real(-1.0),
        ];
        let earlier = [
            Value::Null,
            Value::Integer(9),
            Value::Text("old".into()),
            Value::Real(8.0),
            Value::Boolean(false),
            Value::Blob(vec![1]),
            Value::Integer(4),
        ];
        for (param, want) in params.iter().zip(&expected) {
            for old in &earlier {
                let mut slot = old.clone();
                param.to_sql_into(&mut slot);
                assert_eq!(&slot, want, "{old:?} replaced");
                assert_eq!(&param.to_sql(), want);
            }
        }
    }
}
