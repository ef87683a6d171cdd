//! The SQL catalog: table schemas (columns, types, constraints, indexes),
//! stored in the engine table [`SCHEMA_TABLE`] so that DDL is transactional
//! like any other write, and the names of the engine tables that hold each
//! SQL table's rows and indexes.
//!
//! `__schema` entries:
//! - key `t:<table>` → an encoded [`TableSchema`];
//! - key `i:<index>` → the name of the table that owns the index.
//!
//! A schema is encoded as: format byte `0x01`; the table name; the column
//! count, then per column its name, a type byte (1 INTEGER, 2 REAL, 3 TEXT,
//! 4 BLOB, 5 BOOLEAN), a flags byte (bit 0: NOT NULL), the VARCHAR length
//! limit (0: none) and the default value (a one-column row, see
//! `encoding`); the primary-key column count and positions (none: a hidden
//! rowid is the key); the index count, then per index its name, a UNIQUE
//! byte, its column count and positions. Strings and counts are a LEB128
//! length or value, strings followed by their UTF-8 bytes.

use mmsb_engine::Transaction;

use crate::encoding::{decode_row_into, encode_row, get_varint, put_varint};
use crate::error::{QueryError, Result};
use crate::value::{DataType, Value};

/// The engine table that holds the catalog.
pub const SCHEMA_TABLE: &str = "__schema";
/// Longest identifier (table, column, index name), in bytes, as in PostgreSQL.
pub const MAX_IDENTIFIER_BYTES: usize = 63;
/// Most columns a table may have.
pub const MAX_COLUMNS: usize = 1600;

const SCHEMA_FORMAT: u8 = 0x01;

/// One column of a table.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnDef {
    /// Its name.
    pub name: String,
    /// Its type.
    pub ty: DataType,
    /// NOT NULL (implied for primary-key columns).
    pub not_null: bool,
    /// VARCHAR(n): most characters a value may have.
    pub max_chars: Option<u32>,
    /// The DEFAULT value (NULL when none); also what rows written before an
    /// ALTER TABLE ADD COLUMN read for this column.
    pub default: Value,
}

/// A secondary index.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexDef {
    /// Its name (unique in the database).
    pub name: String,
    /// Positions of its columns in the table.
    pub columns: Vec<usize>,
    /// UNIQUE: no two rows with the same non-NULL values.
    pub unique: bool,
}

/// The schema of one table.
#[derive(Debug, Clone, PartialEq)]
pub struct TableSchema {
    /// The table's name.
    pub name: String,
    /// Its columns, in order.
    pub columns: Vec<ColumnDef>,
    /// Positions of the primary-key columns; empty: a hidden rowid.
    pub primary_key: Vec<usize>,
    /// Its secondary indexes.
    pub indexes: Vec<IndexDef>,
}

impl TableSchema {
    /// The position of a column by name.
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    /// The engine table holding the rows.
    pub fn data_table(&self) -> String {
        data_table_name(&self.name)
    }

    /// The engine table holding an index.
    pub fn index_table(&self, index: &IndexDef) -> String {
        index_table_name(&self.name, &index.name)
    }

    /// Whether the key is a hidden rowid.
    pub fn has_rowid(&self) -> bool {
        self.primary_key.is_empty()
    }

    /// The CREATE TABLE (and CREATE INDEX) statements that make this table.
    pub fn to_sql(&self) -> String {
        let quote = |name: &str| {
            let plain = name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit());
            if plain {
                name.to_owned()
            } else {
                format!("\"{}\"", name.replace('"', "\"\""))
            }
        };
        let mut parts: Vec<String> = self
            .columns
            .iter()
            .map(|c| {
                let mut s = format!("{} {}", quote(&c.name), c.ty.sql_name());
                if let Some(n) = c.max_chars {
                    s = format!("{} VARCHAR({n})", quote(&c.name));
                }
                if c.not_null
                    && !(self.primary_key.len() == 1
                        && self.primary_key[0] == self.column_index(&c.name).unwrap_or(usize::MAX))
                {
                    s.push_str(" NOT NULL");
                }
                if !c.default.is_null() {
                    match &c.default {
                        Value::Text(t) => {
                            s.push_str(&format!(" DEFAULT '{}'", t.replace('\'', "''")))
                        }
                        other => s.push_str(&format!(" DEFAULT {other}")),
                    }
                }
                s
            })
            .collect();
        let names = |cols: &[usize]| {
            cols.iter()
                .map(|&c| quote(&self.columns[c].name))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if !self.primary_key.is_empty() {
            parts.push(format!("PRIMARY KEY ({})", names(&self.primary_key)));
        }
        let mut out = format!(
            "CREATE TABLE {} (\n  {}\n);",
            quote(&self.name),
            parts.join(",\n  ")
        );
        for index in &self.indexes {
            out.push_str(&format!(
                "\nCREATE {}INDEX {} ON {} ({});",
                if index.unique { "UNIQUE " } else { "" },
                quote(&index.name),
                quote(&self.name),
                names(&index.columns)
            ));
        }
        out
    }

    /// Encodes the schema (see the module documentation).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![SCHEMA_FORMAT];
        put_str(&self.name, &mut out);
        put_varint(self.columns.len() as u64, &mut out);
        for column in &self.columns {
            put_str(&column.name, &mut out);
            out.push(type_byte(column.ty));
            out.push(u8::from(column.not_null));
            put_varint(u64::from(column.max_chars.unwrap_or(0)), &mut out);
            put_bytes(&encode_row(std::slice::from_ref(&column.default)), &mut out);
        }
        put_positions(&self.primary_key, &mut out);
        put_varint(self.indexes.len() as u64, &mut out);
        for index in &self.indexes {
            put_str(&index.name, &mut out);
            out.push(u8::from(index.unique));
            put_positions(&index.columns, &mut out);
        }
        out
    }

    /// Decodes a schema; `Corrupted` when the bytes are not one.
    pub fn decode(bytes: &[u8]) -> Result<TableSchema> {
        let mut r = Reader(bytes);
        if r.byte()? != SCHEMA_FORMAT {
            return Err(QueryError::corrupted("unknown schema format"));
        }
        let name = r.string()?;
        let column_count = r.count()?;
        let mut columns = Vec::with_capacity(column_count);
        for _ in 0..column_count {
            let name = r.string()?;
            let ty = type_from_byte(r.byte()?)?;
            let not_null = r.byte()? != 0;
            let max_chars = u32::try_from(r.varint()?)
                .map_err(|_| QueryError::corrupted("bad VARCHAR length"))?;
            let mut default = Vec::new();
            decode_row_into(r.bytes()?, &mut default)?;
            let default = default
                .pop()
                .ok_or_else(|| QueryError::corrupted("missing default"))?;
            columns.push(ColumnDef {
                name,
                ty,
                not_null,
                max_chars: (max_chars > 0).then_some(max_chars),
                default,
            });
        }
        let primary_key = r.positions(columns.len())?;
        let index_count = r.count()?;
        let mut indexes = Vec::with_capacity(index_count);
        for _ in 0..index_count {
            let name = r.string()?;
            let unique = r.byte()? != 0;
            let columns = r.positions(columns.len())?;
            indexes.push(IndexDef {
                name,
                columns,
                unique,
            });
        }
        if !r.0.is_empty() {
            return Err(QueryError::corrupted("trailing bytes after a schema"));
        }
        Ok(TableSchema {
            name,
            columns,
            primary_key,
            indexes,
        })
    }
}

/// The `__schema` key of a table.
pub fn table_key(name: &str) -> Vec<u8> {
    [b"t:", name.as_bytes()].concat()
}

/// The `__schema` key of an index.
pub fn index_key(name: &str) -> Vec<u8> {
    [b"i:", name.as_bytes()].concat()
}

/// The engine table holding a SQL table's rows.
pub fn data_table_name(table: &str) -> String {
    // Built by hand: this runs once per statement, `format!` costs more.
    let mut name = String::with_capacity(table.len() + 2);
    name.push_str("t/");
    name.push_str(table);
    name
}

/// The engine table holding one index.
pub fn index_table_name(table: &str, index: &str) -> String {
    format!("i/{table}/{index}")
}

/// The schema of table `name`, if it exists.
pub fn load_table(tx: &mut Transaction, name: &str) -> Result<Option<TableSchema>> {
    let bytes = tx.open_table(SCHEMA_TABLE)?.get(&table_key(name))?;
    bytes.map(|b| TableSchema::decode(&b)).transpose()
}

/// The encoded schema of table `name`, if it exists (for plan-cache checks).
pub fn load_table_bytes(tx: &mut Transaction, name: &str) -> Result<Option<Vec<u8>>> {
    Ok(tx
        .open_table(SCHEMA_TABLE)?
        .get(&table_key(name))?
        .map(|b| b.to_vec()))
}

/// Stores (creates or replaces) a table's schema.
pub fn store_table(tx: &mut Transaction, schema: &TableSchema) -> Result<()> {
    tx.open_table(SCHEMA_TABLE)?
        .insert(&table_key(&schema.name), &schema.encode())?;
    Ok(())
}

/// Removes a table's schema; returns whether it existed.
pub fn remove_table(tx: &mut Transaction, name: &str) -> Result<bool> {
    Ok(tx
        .open_table(SCHEMA_TABLE)?
        .remove(&table_key(name))?
        .is_some())
}

/// The table that owns index `name`, if the index exists.
pub fn index_owner(tx: &mut Transaction, name: &str) -> Result<Option<String>> {
    let bytes = tx.open_table(SCHEMA_TABLE)?.get(&index_key(name))?;
    bytes
        .map(|b| {
            String::from_utf8(b.to_vec())
                .map_err(|_| QueryError::corrupted("index owner is not UTF-8"))
        })
        .transpose()
}

/// Records that index `name` belongs to `table` (`None`: forgets the index).
pub fn set_index_owner(tx: &mut Transaction, name: &str, table: Option<&str>) -> Result<()> {
    let mut schema_table = tx.open_table(SCHEMA_TABLE)?;
    match table {
        Some(table) => schema_table.insert(&index_key(name), table.as_bytes())?,
        None => schema_table.remove(&index_key(name))?,
    };
    Ok(())
}

/// Every table's schema, in name order.
pub fn list_tables(tx: &mut Transaction) -> Result<Vec<TableSchema>> {
    let mut schema_table = tx.open_table(SCHEMA_TABLE)?;
    let lo: &[u8] = b"t:";
    let hi: &[u8] = b"t;";
    let mut out = Vec::new();
    for entry in schema_table.range(lo..hi)? {
        let (_, value) = entry?;
        out.push(TableSchema::decode(&value)?);
    }
    Ok(out)
}

fn type_byte(ty: DataType) -> u8 {
    match ty {
        DataType::Integer => 1,
        DataType::Real => 2,
        DataType::Text => 3,
        DataType::Blob => 4,
        DataType::Boolean => 5,
    }
}

fn type_from_byte(byte: u8) -> Result<DataType> {
    Ok(match byte {
        1 => DataType::Integer,
        2 => DataType::Real,
        3 => DataType::Text,
        4 => DataType::Blob,
        5 => DataType::Boolean,
        other => {
            return Err(QueryError::corrupted(format!(
                "unknown column type {other}"
            )))
        }
    })
}

fn put_bytes(bytes: &[u8], out: &mut Vec<u8>) {
    put_varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

fn put_str(s: &str, out: &mut Vec<u8>) {
    put_bytes(s.as_bytes(), out);
}

fn put_positions(positions: &[usize], out: &mut Vec<u8>) {
    put_varint(positions.len() as u64, out);
    for &p in positions {
        put_varint(p as u64, out);
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8> {
        let (&b, rest) = self
            .0
            .split_first()
            .ok_or_else(|| QueryError::corrupted("truncated schema"))?;
        self.0 = rest;
        Ok(b)
    }

    fn varint(&mut self) -> Result<u64> {
        let (v, rest) = get_varint(self.0)?;
        self.0 = rest;
        Ok(v)
    }

    /// A count no larger than the bytes left (each item takes at least one).
    fn count(&mut self) -> Result<usize> {
        let n = self.varint()?;
        if n > self.0.len() as u64 {
            return Err(QueryError::corrupted("schema count exceeds its bytes"));
        }
        Ok(n as usize)
    }

    fn bytes(&mut self) -> Result<&'a [u8]> {
        let len = self.count()?;
        let (head, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(head)
    }

    fn string(&mut self) -> Result<String> {
        let bytes = self.bytes()?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| QueryError::corrupted("schema name is not UTF-8"))
    }

    fn positions(&mut self, column_count: usize) -> Result<Vec<usize>> {
        let n = self.count()?;
        (0..n)
            .map(|_| {
                let p = self.varint()?;
                usize::try_from(p)
                    .ok()
                    .filter(|&p| p < column_count)
                    .ok_or_else(|| QueryError::corrupted("schema column position out of range"))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> TableSchema {
        TableSchema {
            name: "users".into(),
            columns: vec![
                ColumnDef {
                    name: "id".into(),
                    ty: DataType::Integer,
                    not_null: true,
                    max_chars: None,
                    default: Value::Null,
                },
                ColumnDef {
                    name: "name".into(),
                    ty: DataType::Text,
                    not_null: false,
                    max_chars: Some(20),
                    default: Value::Text("anon".into()),
                },
            ],
            primary_key: vec![0],
            indexes: vec![IndexDef {
                name: "users_name_key".into(),
                columns: vec![1],
                unique: true,
            }],
        }
    }

    #[test]
    fn schemas_round_trip() {
        let schema = sample();
        let decoded = TableSchema::decode(&schema.encode());
        assert_eq!(decoded.ok(), Some(schema));
    }

    #[test]
    fn damaged_schemas_are_corruption_errors() {
        let bytes = sample().encode();
        for len in 0..bytes.len() {
            assert!(
                TableSchema::decode(&bytes[..len]).is_err(),
                "prefix of {len} bytes decoded"
            );
        }
        let mut bad = bytes;
        bad[0] = 9;
        assert!(TableSchema::decode(&bad).is_err());
    }
}
