//! Binding INSERT, UPDATE, DELETE and RETURNING.

use super::*;

impl Binder<'_> {
    pub(super) fn bind_insert(&mut self, insert: &ast::Insert) -> Result<InsertPlan> {
        let t = templates()?;
        let probe = ast::Insert {
            table: t.insert.table.clone(),
            columns: Vec::new(),
            source: t.insert.source.clone(),
            returning: None,
            into: true,
            ..insert.clone()
        };
        if probe != t.insert {
            if insert.on.is_some() {
                return Err(QueryError::not_supported("INSERT ... ON CONFLICT"));
            }
            return Err(QueryError::not_supported(format!(
                "INSERT clause in: {insert}"
            )));
        }
        let ast::TableObject::TableName(name) = &insert.table else {
            return Err(QueryError::not_supported("INSERT into a table function"));
        };
        let table = self.table(&object_name(name)?)?;
        let columns: Vec<usize> = if insert.columns.is_empty() {
            (0..table.columns.len()).collect()
        } else {
            let mut out = Vec::new();
            for c in &insert.columns {
                let name = object_name(c)?;
                let i = table
                    .column_index(&name)
                    .ok_or_else(|| QueryError::undefined_column(&name))?;
                if out.contains(&i) {
                    return Err(QueryError::sql(
                        "42701",
                        format!("column \"{name}\" specified more than once"),
                    ));
                }
                out.push(i);
            }
            out
        };
        let Some(source) = &insert.source else {
            return Err(QueryError::not_supported("INSERT without VALUES or SELECT"));
        };
        let types: Vec<DataType> = columns.iter().map(|&c| table.columns[c].ty).collect();
        let source = match &*source.body {
            SetExpr::Values(values)
                if source.order_by.is_none()
                    && source.limit_clause.is_none()
                    && source.with.is_none() =>
            {
                let mut rows = Vec::with_capacity(values.rows.len());
                for row in &values.rows {
                    let row_exprs = &row.content;
                    if row_exprs.len() > columns.len() {
                        return Err(QueryError::sql(
                            "42601",
                            "INSERT has more expressions than target columns",
                        ));
                    }
                    if row_exprs.len() < columns.len() {
                        return Err(QueryError::sql(
                            "42601",
                            "INSERT has more target columns than expressions",
                        ));
                    }
                    let mut bound = Vec::with_capacity(row_exprs.len());
                    for (e, ty) in row_exprs.iter().zip(&types) {
                        if is_default_keyword(e) {
                            bound.push(None);
                        } else {
                            let value = self.bind_constant(e, "VALUES")?;
                            bound.push(Some(coerce_literal(value, Some(*ty))?));
                        }
                    }
                    rows.push(bound);
                }
                InsertSource::Values(rows)
            }
            _ => {
                let select = self.bind_query(source)?;
                if select.visible() != columns.len() {
                    return Err(QueryError::sql(
                        "42601",
                        format!(
                            "INSERT has {} target columns but the query gives {}",
                            columns.len(),
                            select.visible()
                        ),
                    ));
                }
                InsertSource::Select(Box::new(select))
            }
        };
        let returning = self.bind_returning(insert.returning.as_deref(), &table)?;
        let direct = DirectInsert::compile(&table, &columns, &source, returning.as_ref());
        Ok(InsertPlan {
            data_table: table.data_table(),
            table,
            columns,
            source,
            returning,
            direct,
        })
    }

    pub(super) fn single_table(&mut self, twj: &ast::TableWithJoins) -> Result<(Source, Scope)> {
        if !twj.joins.is_empty() {
            return Err(QueryError::not_supported("joins in UPDATE or DELETE"));
        }
        let (mut sources, scope) = self.bind_from(std::slice::from_ref(twj))?;
        let source = sources
            .pop()
            .ok_or_else(|| QueryError::invalid("no table"))?;
        if source.derived.is_some() {
            return Err(QueryError::not_supported(
                "UPDATE or DELETE of a subquery or CTE",
            ));
        }
        Ok((source, scope))
    }

    pub(super) fn bind_update(&mut self, update: &ast::Update) -> Result<UpdatePlan> {
        let t = templates()?;
        let probe = ast::Update {
            table: t.update.table.clone(),
            assignments: t.update.assignments.clone(),
            selection: None,
            returning: None,
            ..update.clone()
        };
        if probe != t.update {
            return Err(QueryError::not_supported(format!(
                "UPDATE clause in: {update}"
            )));
        }
        let (mut source, scope) = self.single_table(&update.table)?;
        let mut assignments: Vec<(usize, Expr)> = Vec::new();
        for a in &update.assignments {
            let ast::AssignmentTarget::ColumnName(name) = &a.target else {
                return Err(QueryError::not_supported("tuple assignment"));
            };
            let name = object_name(name)?;
            let column = source
                .schema
                .column_index(&name)
                .ok_or_else(|| QueryError::undefined_column(&name))?;
            if assignments.iter().any(|(c, _)| *c == column) {
                return Err(QueryError::sql(
                    "42601",
                    format!("multiple assignments to same column \"{name}\""),
                ));
            }
            let ty = source.schema.columns[column].ty;
            let value = if is_default_keyword(&a.value) {
                Expr::Literal(source.schema.columns[column].default.clone())
            } else {
                let bound = self.bind_expr_no_agg(&a.value, &scope, "UPDATE")?;
                coerce_literal(bound, Some(ty))?
            };
            assignments.push((column, value));
        }
        let filter = update
            .selection
            .as_ref()
            .map(|w| self.bind_condition(w, &scope, "WHERE"))
            .transpose()?;
        if let Some(f) = &filter {
            conjuncts(f, &mut source.filter);
        }
        source.access = choose_access(&source.schema, &source.filter);
        source.implied = implied_conjuncts(&source.schema, &source.filter, &source.access);
        let returning = self.bind_returning(update.returning.as_deref(), &source.schema)?;
        Ok(UpdatePlan {
            source,
            filter,
            assignments,
            returning,
        })
    }

    pub(super) fn bind_delete(&mut self, delete: &ast::Delete) -> Result<DeletePlan> {
        let t = templates()?;
        let probe = ast::Delete {
            from: t.delete.from.clone(),
            selection: None,
            returning: None,
            ..delete.clone()
        };
        if probe != t.delete {
            return Err(QueryError::not_supported(format!(
                "DELETE clause in: {delete}"
            )));
        }
        let tables = match &delete.from {
            ast::FromTable::WithFromKeyword(tables) | ast::FromTable::WithoutKeyword(tables) => {
                tables
            }
        };
        let [table] = tables.as_slice() else {
            return Err(QueryError::not_supported("DELETE from several tables"));
        };
        let (mut source, scope) = self.single_table(table)?;
        let filter = delete
            .selection
            .as_ref()
            .map(|w| self.bind_condition(w, &scope, "WHERE"))
            .transpose()?;
        if let Some(f) = &filter {
            conjuncts(f, &mut source.filter);
        }
        source.access = choose_access(&source.schema, &source.filter);
        source.implied = implied_conjuncts(&source.schema, &source.filter, &source.access);
        let returning = self.bind_returning(delete.returning.as_deref(), &source.schema)?;
        Ok(DeletePlan {
            source,
            filter,
            returning,
        })
    }

    pub(super) fn bind_returning(
        &mut self,
        items: Option<&[ast::SelectItem]>,
        table: &TableSchema,
    ) -> Result<Option<Returning>> {
        let Some(items) = items else { return Ok(None) };
        let scope = Scope::of_table(table, &table.name);
        let mut exprs = Vec::new();
        let mut names = Vec::new();
        for item in items {
            match item {
                ast::SelectItem::UnnamedExpr(e) => {
                    exprs.push(self.bind_expr_no_agg(e, &scope, "RETURNING")?);
                    names.push(column_name(e));
                }
                ast::SelectItem::ExprWithAlias { expr, alias } => {
                    exprs.push(self.bind_expr_no_agg(expr, &scope, "RETURNING")?);
                    names.push(ident_name(alias));
                }
                ast::SelectItem::Wildcard(options) => {
                    check_wildcard_options(options)?;
                    for (i, c) in table.columns.iter().enumerate() {
                        exprs.push(Expr::Column(i));
                        names.push(c.name.clone());
                    }
                }
                other => return Err(QueryError::not_supported(format!("RETURNING item {other}"))),
            }
        }
        Ok(Some(Returning { exprs, names }))
    }
}

/// `DEFAULT` in VALUES or SET.
pub(super) fn is_default_keyword(e: &ast::Expr) -> bool {
    matches!(e, ast::Expr::Identifier(ident) if ident.quote_style.is_none() && ident.value.eq_ignore_ascii_case("default"))
}
