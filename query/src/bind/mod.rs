//! The binder: sqlparser's AST → bound plans. Resolves tables through the
//! catalog and columns to positions, types literals against the columns they
//! meet, separates aggregates, pushes conditions down to single tables and
//! chooses access paths. Anything outside the supported subset is rejected
//! with "not supported": the AST is compared against a template of the
//! supported shape, so an unknown clause can never be silently ignored.

use std::sync::OnceLock;

use mmsb_engine::Transaction;
use sqlparser::ast::{self, SetExpr, Statement};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use crate::catalog::{load_table_bytes, TableSchema};
use crate::error::{QueryError, Result};
use crate::exec::DirectInsert;
use crate::expr::{BinOp, Expr, Func};
use crate::plan::{
    choose_access, conjuncts, implied_conjuncts, AggCall, AggFunc, Aggregation, DeletePlan,
    InsertPlan, InsertSource, JoinKind, Plan, Returning, SelectPlan, SetOp, SortKey, Source,
    UpdatePlan,
};
use crate::value::{parse_text, DataType, Value};

mod dml;
mod expr;
mod query;
mod template;

pub use expr::map_type;
pub(crate) use template::templates;
#[allow(unused_imports)] // siblings reach each other's helpers through `use super::*`
use {dml::*, expr::*, query::*, template::*};

/// Deepest expression nesting the binder accepts.
pub const MAX_EXPR_DEPTH: usize = 128;
/// Most parameters a statement may use.
pub const MAX_PARAMS: usize = 65_535;

/// An identifier as PostgreSQL folds it: unquoted names are lower-cased.
pub fn ident_name(ident: &ast::Ident) -> String {
    if ident.quote_style.is_some() {
        ident.value.clone()
    } else {
        ident.value.to_lowercase()
    }
}

/// A table name: one part, or two with the schema `public`.
pub fn object_name(name: &ast::ObjectName) -> Result<String> {
    let parts: Vec<String> = name
        .0
        .iter()
        .map(|p| match p {
            ast::ObjectNamePart::Identifier(ident) => Ok(ident_name(ident)),
            other => Err(QueryError::not_supported(format!("name part {other}"))),
        })
        .collect::<Result<_>>()?;
    match parts.as_slice() {
        [name] => Ok(name.clone()),
        [schema, name] if schema == "public" => Ok(name.clone()),
        _ => Err(QueryError::not_supported(format!("qualified name {name}"))),
    }
}

/// One column visible to expressions.
#[derive(Debug, Clone)]
struct ScopeColumn {
    table: String,
    name: String,
    ty: Option<DataType>,
}

/// The columns expressions may refer to, in row order.
#[derive(Debug, Clone, Default)]
struct Scope {
    columns: Vec<ScopeColumn>,
}

impl Scope {
    fn of_table(schema: &TableSchema, alias: &str) -> Scope {
        Scope {
            columns: schema
                .columns
                .iter()
                .map(|c| ScopeColumn {
                    table: alias.to_owned(),
                    name: c.name.clone(),
                    ty: Some(c.ty),
                })
                .collect(),
        }
    }

    fn types(&self) -> Vec<Option<DataType>> {
        self.columns.iter().map(|c| c.ty).collect()
    }

    fn resolve(&self, table: Option<&str>, name: &str) -> Result<usize> {
        let mut found = self
            .columns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.name == name && table.is_none_or(|t| c.table == t));
        match (found.next(), found.next()) {
            (Some((i, _)), None) => Ok(i),
            (Some(_), Some(_)) => Err(QueryError::sql(
                "42702",
                format!("column reference \"{name}\" is ambiguous"),
            )),
            (None, _) => match table {
                Some(t) if !self.columns.iter().any(|c| c.table == t) => Err(QueryError::sql(
                    "42P01",
                    format!("missing FROM-clause entry for table \"{t}\""),
                )),
                Some(t) => Err(QueryError::undefined_column(&format!("{t}.{name}"))),
                None => Err(QueryError::undefined_column(name)),
            },
        }
    }
}

/// Binds statements inside a transaction (it reads the catalog).
pub(crate) struct Binder<'t> {
    tx: &'t mut Transaction,
    aggs: Vec<AggCall>,
    agg_allowed: bool,
    in_agg: bool,
    depth: usize,
    /// Highest parameter number seen (`$n`).
    pub params: usize,
    /// The encoded schemas the plan was bound against (for plan caching).
    pub dependencies: Vec<(String, Vec<u8>)>,
    /// Uncorrelated subqueries, nested ones before those that contain them.
    pub subqueries: Vec<SelectPlan>,
    /// Common table expressions in scope (innermost last).
    ctes: Vec<(String, SelectPlan)>,
}

impl<'t> Binder<'t> {
    /// A binder reading the catalog through `tx`.
    pub fn new(tx: &'t mut Transaction) -> Self {
        Binder {
            tx,
            aggs: Vec::new(),
            agg_allowed: false,
            in_agg: false,
            depth: 0,
            params: 0,
            dependencies: Vec::new(),
            subqueries: Vec::new(),
            ctes: Vec::new(),
        }
    }

    /// The schema of a table that must exist.
    pub fn table(&mut self, name: &str) -> Result<TableSchema> {
        let bytes =
            load_table_bytes(self.tx, name)?.ok_or_else(|| QueryError::undefined_table(name))?;
        let schema = TableSchema::decode(&bytes)?;
        if !self.dependencies.iter().any(|(n, _)| n == name) {
            self.dependencies.push((name.to_owned(), bytes));
        }
        Ok(schema)
    }

    /// Binds a DML statement.
    pub fn bind_statement(&mut self, statement: &Statement) -> Result<Plan> {
        match statement {
            Statement::Query(query) => Ok(Plan::Select(self.bind_query(query)?)),
            Statement::Insert(insert) => Ok(Plan::Insert(self.bind_insert(insert)?)),
            Statement::Update(update) => Ok(Plan::Update(self.bind_update(update)?)),
            Statement::Delete(delete) => Ok(Plan::Delete(self.bind_delete(delete)?)),
            other => Err(QueryError::not_supported(format!(
                "statement {}",
                statement_kind(other)
            ))),
        }
    }
}

/// A short name for a statement kind.
pub fn statement_kind(statement: &Statement) -> String {
    let text = statement.to_string();
    text.split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}
