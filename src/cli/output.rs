//! How the command-line program prints results: aligned tables (the
//! default), CSV and JSON.

use std::fmt::Write as _;

use mmsb::{Rows, StatementResult, Value};

/// An output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns with a header, then the row count or command tag.
    Table,
    /// Comma-separated values with a header row (RFC 4180 quoting; NULL is empty).
    Csv,
    /// One JSON array of objects per result set.
    Json,
}

impl Format {
    /// Parses `.mode`'s argument.
    pub fn parse(name: &str) -> Option<Format> {
        match name {
            "table" => Some(Format::Table),
            "csv" => Some(Format::Csv),
            "json" => Some(Format::Json),
            _ => None,
        }
    }
}

/// Renders one statement's result (empty when there is nothing to show).
pub fn render(result: &StatementResult, format: Format) -> String {
    match (&result.rows, format) {
        (Some(rows), Format::Table) => {
            let mut out = table(rows);
            if result.command == "SELECT" || result.command == "EXPLAIN" {
                let n = rows.len();
                let _ = writeln!(out, "({n} row{})", if n == 1 { "" } else { "s" });
            } else {
                let _ = writeln!(out, "{}", result.tag());
            }
            out
        }
        (Some(rows), Format::Csv) => csv(rows),
        (Some(rows), Format::Json) => json(rows),
        (None, Format::Table) => format!("{}\n", result.tag()),
        (None, _) => String::new(),
    }
}

fn cell(value: &Value) -> String {
    value.to_string()
}

fn is_numeric(value: &Value) -> bool {
    matches!(value, Value::Integer(_) | Value::Real(_))
}

/// A psql-like aligned table.
pub fn table(rows: &Rows) -> String {
    let columns = rows.columns();
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.values().iter().map(cell).collect())
        .collect();
    let mut widths: Vec<usize> = columns.iter().map(|c| c.chars().count()).collect();
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = columns
        .iter()
        .zip(&widths)
        .map(|(c, &w)| format!(" {c:^w$} "))
        .collect();
    let _ = writeln!(out, "{}", header.join("|").trim_end());
    let rule: Vec<String> = widths.iter().map(|&w| "-".repeat(w + 2)).collect();
    let _ = writeln!(out, "{}", rule.join("+"));
    for (row, values) in cells.iter().zip(rows.iter()) {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .zip(values.values())
            .map(|((c, &w), v)| {
                if is_numeric(v) {
                    format!(" {c:>w$} ")
                } else {
                    format!(" {c:<w$} ")
                }
            })
            .collect();
        let _ = writeln!(out, "{}", line.join("|").trim_end());
    }
    out
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// CSV with a header row.
pub fn csv(rows: &Rows) -> String {
    let mut out = String::new();
    let header: Vec<String> = rows.columns().iter().map(|c| csv_field(c)).collect();
    let _ = writeln!(out, "{}", header.join(","));
    for row in rows {
        let fields: Vec<String> = row
            .values()
            .iter()
            .map(|v| {
                if v.is_null() {
                    String::new()
                } else {
                    csv_field(&v.to_string())
                }
            })
            .collect();
        let _ = writeln!(out, "{}", fields.join(","));
    }
    out
}

/// A JSON string literal (quotes and escapes), shared by every JSON printer.
pub(crate) fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_value(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Integer(i) => i.to_string(),
        Value::Real(r) if r.is_finite() => format!("{r:?}"),
        Value::Boolean(b) => b.to_string(),
        other => json_string(&other.to_string()),
    }
}

/// A JSON array of objects, one per row.
pub fn json(rows: &Rows) -> String {
    let objects: Vec<String> = rows
        .iter()
        .map(|row| {
            let fields: Vec<String> = rows
                .columns()
                .iter()
                .zip(row.values())
                .map(|(c, v)| format!("{}:{}", json_string(c), json_value(v)))
                .collect();
            format!("{{{}}}", fields.join(","))
        })
        .collect();
    format!("[{}]\n", objects.join(",\n "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Rows {
        Rows::new(
            vec!["id".into(), "name".into()],
            vec![
                vec![Value::Integer(1), Value::Text("a,\"b\"".into())],
                vec![Value::Integer(22), Value::Null],
            ],
        )
    }

    #[test]
    fn tables_align_columns() {
        let t = table(&sample());
        assert_eq!(t, " id | name\n----+-------\n  1 | a,\"b\"\n 22 | NULL\n");
    }

    #[test]
    fn csv_quotes_and_leaves_null_empty() {
        assert_eq!(csv(&sample()), "id,name\n1,\"a,\"\"b\"\"\"\n22,\n");
    }

    #[test]
    fn json_escapes() {
        assert_eq!(
            json(&sample()),
            "[{\"id\":1,\"name\":\"a,\\\"b\\\"\"},\n {\"id\":22,\"name\":null}]\n"
        );
    }
}
