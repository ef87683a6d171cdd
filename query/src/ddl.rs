//! DDL: CREATE TABLE, DROP TABLE, CREATE INDEX, DROP INDEX and ALTER TABLE
//! ADD COLUMN. Each changes the catalog and the engine tables inside the
//! caller's transaction, so DDL commits or rolls back with it.

use mmsb_engine::Transaction;
use sqlparser::ast;

use crate::bind::{ident_name, map_type, object_name, templates, Binder};
use crate::catalog::{
    index_owner, load_table, remove_table, set_index_owner, store_table, ColumnDef, IndexDef,
    TableSchema, MAX_COLUMNS, MAX_IDENTIFIER_BYTES,
};
use crate::error::{QueryError, Result};
use crate::exec::build_index;
use crate::value::Value;

/// Checks an identifier's length.
fn check_identifier(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_IDENTIFIER_BYTES {
        return Err(QueryError::sql(
            "42622",
            format!("identifier \"{name}\" must be 1 to {MAX_IDENTIFIER_BYTES} bytes long"),
        ));
    }
    Ok(())
}

fn duplicate_relation(name: &str) -> QueryError {
    QueryError::sql("42P07", format!("relation \"{name}\" already exists"))
}

/// The column names of an index or key column list (plain columns only).
fn index_columns(columns: &[ast::IndexColumn], schema_columns: &[ColumnDef]) -> Result<Vec<usize>> {
    let mut out = Vec::new();
    for c in columns {
        if c.operator_class.is_some()
            || c.column.with_fill.is_some()
            || c.column.options.nulls_first.is_some()
        {
            return Err(QueryError::not_supported(format!(
                "index column option in {}",
                c.column
            )));
        }
        let ast::Expr::Identifier(ident) = &c.column.expr else {
            return Err(QueryError::not_supported(format!(
                "index on expression {}",
                c.column.expr
            )));
        };
        let name = ident_name(ident);
        let i = schema_columns
            .iter()
            .position(|col| col.name == name)
            .ok_or_else(|| QueryError::undefined_column(&name))?;
        if out.contains(&i) {
            return Err(QueryError::sql(
                "42701",
                format!("column \"{name}\" appears twice in a key"),
            ));
        }
        out.push(i);
    }
    Ok(out)
}

fn check_primary_key_shape(pk: &ast::PrimaryKeyConstraint) -> Result<()> {
    if pk.index_name.is_some()
        || pk.index_type.is_some()
        || !pk.include.is_empty()
        || !pk.index_options.is_empty()
        || pk.characteristics.is_some()
    {
        return Err(QueryError::not_supported("PRIMARY KEY options"));
    }
    Ok(())
}

fn check_unique_shape(u: &ast::UniqueConstraint) -> Result<()> {
    if u.index_name.is_some()
        || u.index_type.is_some()
        || !u.include.is_empty()
        || !u.index_options.is_empty()
        || u.characteristics.is_some()
        || u.nulls_distinct == ast::NullsDistinctOption::NotDistinct
    {
        return Err(QueryError::not_supported("UNIQUE options"));
    }
    Ok(())
}

/// A column's definition; also reports whether it is declared PRIMARY KEY or UNIQUE.
fn column_def(
    tx: &mut Transaction,
    def: &ast::ColumnDef,
) -> Result<(ColumnDef, bool, Option<Option<String>>)> {
    let name = ident_name(&def.name);
    check_identifier(&name)?;
    let (ty, max_chars) = map_type(&def.data_type)?;
    let mut column = ColumnDef {
        name,
        ty,
        not_null: false,
        max_chars,
        default: Value::Null,
    };
    let mut primary = false;
    let mut unique = None;
    for option in &def.options {
        match &option.option {
            ast::ColumnOption::Null => column.not_null = false,
            ast::ColumnOption::NotNull => column.not_null = true,
            ast::ColumnOption::Default(e) => column.default = constant_value(tx, e, &column)?,
            ast::ColumnOption::PrimaryKey(pk) => {
                check_primary_key_shape(pk)?;
                primary = true;
                column.not_null = true;
            }
            ast::ColumnOption::Unique(u) => {
                check_unique_shape(u)?;
                unique = Some(option.name.as_ref().map(ident_name));
            }
            other => return Err(QueryError::not_supported(format!("column option {other}"))),
        }
    }
    Ok((column, primary, unique))
}

/// Evaluates a DEFAULT expression (a constant) for a column.
fn constant_value(tx: &mut Transaction, e: &ast::Expr, column: &ColumnDef) -> Result<Value> {
    let mut binder = Binder::new(tx);
    let bound = binder.bind_constant(e, "DEFAULT")?;
    if binder.params > 0 {
        return Err(QueryError::sql(
            "42P02",
            "there is no parameter in a DEFAULT expression",
        ));
    }
    let value = bound.eval(&[], &[])?.coerce_to(column.ty)?;
    if let (Value::Text(s), Some(max)) = (&value, column.max_chars) {
        if s.chars().count() > max as usize {
            return Err(QueryError::sql(
                "22001",
                format!("value too long for type character varying({max})"),
            ));
        }
    }
    Ok(value)
}

/// A fresh index name like PostgreSQL's: `table_col1_col2_suffix`, numbered on clashes.
fn generated_index_name(
    tx: &mut Transaction,
    table: &str,
    columns: &[&str],
    suffix: &str,
    taken: &[IndexDef],
) -> Result<String> {
    let base: String = format!("{table}_{}_{suffix}", columns.join("_"))
        .chars()
        .take(MAX_IDENTIFIER_BYTES - 4)
        .collect();
    let mut name = base.clone();
    let mut n = 0;
    while index_owner(tx, &name)?.is_some() || taken.iter().any(|i| i.name == name) {
        n += 1;
        name = format!("{base}{n}");
    }
    Ok(name)
}

/// CREATE TABLE. Returns false when it already existed (IF NOT EXISTS).
pub fn create_table(tx: &mut Transaction, create: &ast::CreateTable) -> Result<bool> {
    let t = templates()?;
    let probe = ast::CreateTable {
        name: t.create_table.name.clone(),
        columns: t.create_table.columns.clone(),
        constraints: Vec::new(),
        if_not_exists: false,
        ..create.clone()
    };
    if probe != t.create_table {
        if create.query.is_some() {
            return Err(QueryError::not_supported("CREATE TABLE ... AS"));
        }
        return Err(QueryError::not_supported(format!(
            "CREATE TABLE clause in: {create}"
        )));
    }
    let name = object_name(&create.name)?;
    check_identifier(&name)?;
    if load_table(tx, &name)?.is_some() {
        return if create.if_not_exists {
            Ok(false)
        } else {
            Err(duplicate_relation(&name))
        };
    }
    if create.columns.is_empty() {
        return Err(QueryError::not_supported("a table without columns"));
    }
    if create.columns.len() > MAX_COLUMNS {
        return Err(QueryError::sql(
            "54011",
            format!("tables can have at most {MAX_COLUMNS} columns"),
        ));
    }
    let mut columns: Vec<ColumnDef> = Vec::new();
    let mut primary_key = Vec::new();
    let mut uniques: Vec<(Option<String>, Vec<usize>)> = Vec::new();
    for def in &create.columns {
        let (column, primary, unique) = column_def(tx, def)?;
        if columns.iter().any(|c| c.name == column.name) {
            return Err(QueryError::sql(
                "42701",
                format!("column \"{}\" specified more than once", column.name),
            ));
        }
        if primary {
            if !primary_key.is_empty() {
                return Err(QueryError::sql(
                    "42P16",
                    format!("multiple primary keys for table \"{name}\" are not allowed"),
                ));
            }
            primary_key.push(columns.len());
        }
        if let Some(constraint_name) = unique {
            uniques.push((constraint_name, vec![columns.len()]));
        }
        columns.push(column);
    }
    for constraint in &create.constraints {
        match constraint {
            ast::TableConstraint::PrimaryKey(pk) => {
                check_primary_key_shape(pk)?;
                if !primary_key.is_empty() {
                    return Err(QueryError::sql(
                        "42P16",
                        format!("multiple primary keys for table \"{name}\" are not allowed"),
                    ));
                }
                primary_key = index_columns(&pk.columns, &columns)?;
            }
            ast::TableConstraint::Unique(u) => {
                check_unique_shape(u)?;
                uniques.push((
                    u.name.as_ref().map(ident_name),
                    index_columns(&u.columns, &columns)?,
                ));
            }
            other => {
                return Err(QueryError::not_supported(format!(
                    "table constraint {other}"
                )))
            }
        }
    }
    for &c in &primary_key {
        columns[c].not_null = true;
    }
    let mut schema = TableSchema {
        name: name.clone(),
        columns,
        primary_key,
        indexes: Vec::new(),
    };
    for (constraint_name, cols) in uniques {
        // A UNIQUE constraint equal to the primary key adds nothing.
        if cols == schema.primary_key {
            continue;
        }
        let index_name = match constraint_name {
            Some(n) => {
                check_identifier(&n)?;
                if index_owner(tx, &n)?.is_some() || schema.indexes.iter().any(|i| i.name == n) {
                    return Err(duplicate_relation(&n));
                }
                n
            }
            None => {
                let names: Vec<&str> = cols
                    .iter()
                    .map(|&c| schema.columns[c].name.as_str())
                    .collect();
                generated_index_name(tx, &name, &names, "key", &schema.indexes)?
            }
        };
        schema.indexes.push(IndexDef {
            name: index_name,
            columns: cols,
            unique: true,
        });
    }
    store_table(tx, &schema)?;
    tx.delete_table(&schema.data_table())?;
    tx.open_table(&schema.data_table())?;
    for index in &schema.indexes {
        set_index_owner(tx, &index.name, Some(&name))?;
        tx.delete_table(&schema.index_table(index))?;
        tx.open_table(&schema.index_table(index))?;
    }
    Ok(true)
}

/// Drops a table, its rows and its indexes.
fn drop_one_table(tx: &mut Transaction, schema: &TableSchema) -> Result<()> {
    for index in &schema.indexes {
        set_index_owner(tx, &index.name, None)?;
        tx.delete_table(&schema.index_table(index))?;
    }
    tx.delete_table(&schema.data_table())?;
    remove_table(tx, &schema.name)?;
    Ok(())
}

/// DROP TABLE / DROP INDEX. Returns the command tag.
pub fn drop(
    tx: &mut Transaction,
    object_type: &ast::ObjectType,
    if_exists: bool,
    names: &[ast::ObjectName],
    purge: bool,
    temporary: bool,
    table: Option<&ast::ObjectName>,
) -> Result<&'static str> {
    if purge || temporary || table.is_some() {
        return Err(QueryError::not_supported("DROP options"));
    }
    match object_type {
        ast::ObjectType::Table => {
            for name in names {
                let name = object_name(name)?;
                match load_table(tx, &name)? {
                    Some(schema) => drop_one_table(tx, &schema)?,
                    None if if_exists => {}
                    None => return Err(QueryError::undefined_table(&name)),
                }
            }
            Ok("DROP TABLE")
        }
        ast::ObjectType::Index => {
            for name in names {
                let name = object_name(name)?;
                let Some(owner) = index_owner(tx, &name)? else {
                    if if_exists {
                        continue;
                    }
                    return Err(QueryError::sql(
                        "42704",
                        format!("index \"{name}\" does not exist"),
                    ));
                };
                let mut schema = load_table(tx, &owner)?.ok_or_else(|| {
                    QueryError::corrupted(format!("index {name} belongs to missing table {owner}"))
                })?;
                let position = schema
                    .indexes
                    .iter()
                    .position(|i| i.name == name)
                    .ok_or_else(|| {
                        QueryError::corrupted(format!("table {owner} does not list index {name}"))
                    })?;
                let index = schema.indexes.remove(position);
                tx.delete_table(&schema.index_table(&index))?;
                set_index_owner(tx, &name, None)?;
                store_table(tx, &schema)?;
            }
            Ok("DROP INDEX")
        }
        other => Err(QueryError::not_supported(format!("DROP {other}"))),
    }
}

/// CREATE [UNIQUE] INDEX. Returns false when it already existed (IF NOT EXISTS).
pub fn create_index(tx: &mut Transaction, create: &ast::CreateIndex) -> Result<bool> {
    let t = templates()?;
    let probe = ast::CreateIndex {
        name: t.create_index.name.clone(),
        table_name: t.create_index.table_name.clone(),
        columns: t.create_index.columns.clone(),
        unique: false,
        if_not_exists: false,
        ..create.clone()
    };
    if probe != t.create_index {
        return Err(QueryError::not_supported(format!(
            "CREATE INDEX clause in: {create}"
        )));
    }
    let table = object_name(&create.table_name)?;
    let mut schema = load_table(tx, &table)?.ok_or_else(|| QueryError::undefined_table(&table))?;
    let columns = index_columns(&create.columns, &schema.columns)?;
    let name = match &create.name {
        Some(n) => object_name(n)?,
        None => {
            let names: Vec<&str> = columns
                .iter()
                .map(|&c| schema.columns[c].name.as_str())
                .collect();
            generated_index_name(tx, &table, &names, "idx", &schema.indexes)?
        }
    };
    check_identifier(&name)?;
    if index_owner(tx, &name)?.is_some() {
        return if create.if_not_exists {
            Ok(false)
        } else {
            Err(duplicate_relation(&name))
        };
    }
    let def = IndexDef {
        name: name.clone(),
        columns,
        unique: create.unique,
    };
    tx.delete_table(&schema.index_table(&def))?;
    tx.open_table(&schema.index_table(&def))?;
    build_index(tx, &schema, &def)?;
    schema.indexes.push(def);
    store_table(tx, &schema)?;
    set_index_owner(tx, &name, Some(&table))?;
    Ok(true)
}

/// ALTER TABLE ... ADD COLUMN.
pub fn alter_table(tx: &mut Transaction, alter: &ast::AlterTable) -> Result<()> {
    if alter.only
        || alter.location.is_some()
        || alter.on_cluster.is_some()
        || alter.table_type.is_some()
    {
        return Err(QueryError::not_supported(format!(
            "ALTER TABLE clause in: {alter}"
        )));
    }
    let table = object_name(&alter.name)?;
    let Some(mut schema) = load_table(tx, &table)? else {
        if alter.if_exists {
            return Ok(());
        }
        return Err(QueryError::undefined_table(&table));
    };
    for operation in &alter.operations {
        match operation {
            ast::AlterTableOperation::AddColumn {
                if_not_exists,
                column_def: def,
                column_position: None,
                ..
            } => {
                let (column, primary, unique) = column_def(tx, def)?;
                if primary || unique.is_some() {
                    return Err(QueryError::not_supported(
                        "ADD COLUMN with PRIMARY KEY or UNIQUE",
                    ));
                }
                if schema.column_index(&column.name).is_some() {
                    if *if_not_exists {
                        continue;
                    }
                    return Err(QueryError::sql(
                        "42701",
                        format!(
                            "column \"{}\" of relation \"{table}\" already exists",
                            column.name
                        ),
                    ));
                }
                if schema.columns.len() >= MAX_COLUMNS {
                    return Err(QueryError::sql(
                        "54011",
                        format!("tables can have at most {MAX_COLUMNS} columns"),
                    ));
                }
                if column.not_null
                    && column.default.is_null()
                    && !tx.open_table(&schema.data_table())?.is_empty()?
                {
                    return Err(QueryError::sql(
                        "23502",
                        format!(
                            "column \"{}\" of relation \"{table}\" contains null values",
                            column.name
                        ),
                    ));
                }
                schema.columns.push(column);
            }
            other => return Err(QueryError::not_supported(format!("ALTER TABLE {other}"))),
        }
    }
    store_table(tx, &schema)?;
    Ok(())
}
