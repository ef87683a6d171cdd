//! Binding queries: WITH, set operations, SELECT (projection, GROUP BY,
//! HAVING, ORDER BY, LIMIT), FROM items and joins, condition push-down and
//! presorted scans.

use super::*;

impl Binder<'_> {
    /// Binds a query (SELECT).
    pub(crate) fn bind_query(&mut self, query: &ast::Query) -> Result<SelectPlan> {
        let t = templates()?;
        let probe = ast::Query {
            body: t.query.body.clone(),
            order_by: None,
            limit_clause: None,
            with: None,
            ..query.clone()
        };
        if probe != t.query {
            return Err(QueryError::not_supported(format!(
                "query clause in: {query}"
            )));
        }
        let Some(with) = &query.with else {
            return self.bind_query_body(query);
        };
        if with.recursive {
            return Err(QueryError::not_supported("WITH RECURSIVE"));
        }
        let outer_ctes = self.ctes.len();
        let result = self
            .bind_ctes(with)
            .and_then(|()| self.bind_query_body(query));
        self.ctes.truncate(outer_ctes);
        result
    }

    /// Binds each CTE of a WITH clause (each sees the ones before it).
    pub(super) fn bind_ctes(&mut self, with: &ast::With) -> Result<()> {
        for cte in &with.cte_tables {
            if cte.from.is_some() {
                return Err(QueryError::not_supported(format!("CTE {cte}")));
            }
            let name = ident_name(&cte.alias.name);
            let mut plan = self.bind_query(&cte.query)?;
            rename_columns(&mut plan, &cte.alias.columns)?;
            self.ctes.push((name, plan));
        }
        Ok(())
    }

    /// Binds a query's body, ORDER BY and LIMIT (its WITH is in scope).
    pub(super) fn bind_query_body(&mut self, query: &ast::Query) -> Result<SelectPlan> {
        let select = match &*query.body {
            SetExpr::Select(select) => select,
            SetExpr::Query(inner) if query.order_by.is_none() && query.limit_clause.is_none() => {
                return self.bind_query(inner)
            }
            SetExpr::SetOperation { .. } => {
                let (limit, offset) = limit_offset(query)?;
                let order_by = order_by_items(query)?;
                return self.bind_set_operation(&query.body, order_by, limit, offset);
            }
            SetExpr::Values(_) => return Err(QueryError::not_supported("VALUES as a query")),
            other => return Err(QueryError::not_supported(format!("query {other}"))),
        };
        let (limit, offset) = limit_offset(query)?;
        let order_by = order_by_items(query)?;
        self.bind_select(select, order_by, limit, offset)
    }

    /// One operand of a set operation, bound without ORDER BY or LIMIT of
    /// its own unless parenthesised.
    pub(super) fn bind_set_part(&mut self, body: &SetExpr) -> Result<SelectPlan> {
        match body {
            SetExpr::Select(select) => self.bind_select(select, &[], None, None),
            SetExpr::SetOperation { .. } => self.bind_set_operation(body, &[], None, None),
            SetExpr::Query(inner) => self.bind_query(inner),
            other => Err(QueryError::not_supported(format!(
                "set operation operand {other}"
            ))),
        }
    }

    /// UNION / INTERSECT / EXCEPT: left operands are flattened into one
    /// plan; ORDER BY (output columns only), OFFSET and LIMIT apply to the
    /// combined rows.
    pub(super) fn bind_set_operation(
        &mut self,
        body: &SetExpr,
        order_by: &[ast::OrderByExpr],
        limit: Option<&ast::Expr>,
        offset: Option<&ast::Expr>,
    ) -> Result<SelectPlan> {
        let SetExpr::SetOperation {
            op,
            set_quantifier,
            left,
            right,
        } = body
        else {
            return self.bind_set_part(body);
        };
        let all = match set_quantifier {
            ast::SetQuantifier::All => true,
            ast::SetQuantifier::None | ast::SetQuantifier::Distinct => false,
            other => return Err(QueryError::not_supported(format!("{op} {other}"))),
        };
        let op = match op {
            ast::SetOperator::Union => SetOp::Union { all },
            ast::SetOperator::Intersect => SetOp::Intersect { all },
            ast::SetOperator::Except => SetOp::Except { all },
            other => return Err(QueryError::not_supported(format!("{other}"))),
        };
        let first_limited = || {
            QueryError::not_supported("ORDER BY or LIMIT on the first operand of a set operation")
        };
        let mut head = match &**left {
            SetExpr::Query(inner) if inner.order_by.is_some() || inner.limit_clause.is_some() => {
                return Err(first_limited())
            }
            other => self.bind_set_part(other)?,
        };
        if head.limit.is_some()
            || head.offset.is_some()
            || (head.set_ops.is_empty() && !head.order_by.is_empty())
        {
            return Err(first_limited());
        }
        let part = self.bind_set_part(right)?;
        if part.visible() != head.visible() {
            return Err(QueryError::sql(
                "42601",
                format!(
                    "each {} query must have the same number of columns",
                    set_op_name(op)
                ),
            ));
        }
        head.set_ops.push((op, part));
        head.projection.truncate(head.visible());
        head.order_by.clear();
        let aliases: Vec<Option<String>> = head.names.iter().cloned().map(Some).collect();
        for item in order_by {
            let desc = match &item.options.sort {
                None | Some(ast::OrderBySort::Asc) => false,
                Some(ast::OrderBySort::Desc) => true,
                Some(_) => return Err(QueryError::not_supported("ORDER BY ... USING")),
            };
            if item.with_fill.is_some() {
                return Err(QueryError::not_supported("ORDER BY ... WITH FILL"));
            }
            let column =
                output_reference(&item.expr, &head.names, &aliases, &Scope::default(), true)?
                    .ok_or_else(|| {
                        QueryError::not_supported(
                            "ORDER BY of a set operation on anything but an output column",
                        )
                    })?;
            head.order_by.push(SortKey {
                column,
                desc,
                nulls_first: item.options.nulls_first.unwrap_or(desc),
            });
        }
        head.presorted = false;
        head.limit = limit.map(|l| self.bind_constant(l, "LIMIT")).transpose()?;
        head.offset = offset
            .map(|o| self.bind_constant(o, "OFFSET"))
            .transpose()?;
        Ok(head)
    }

    pub(super) fn bind_select(
        &mut self,
        select: &ast::Select,
        order_by: &[ast::OrderByExpr],
        limit: Option<&ast::Expr>,
        offset: Option<&ast::Expr>,
    ) -> Result<SelectPlan> {
        check_select_shape(select)?;
        let distinct = match &select.distinct {
            None | Some(ast::Distinct::All) => false,
            Some(ast::Distinct::Distinct) => true,
            Some(ast::Distinct::On(_)) => return Err(QueryError::not_supported("DISTINCT ON")),
        };
        let (mut sources, scope) = self.bind_from(&select.from)?;
        let saved_aggs = std::mem::take(&mut self.aggs);
        let filter = select
            .selection
            .as_ref()
            .map(|w| self.bind_condition(w, &scope, "WHERE"))
            .transpose()?;

        // Projection (aggregates allowed).
        let mut projection = Vec::new();
        let mut names = Vec::new();
        let mut aliases: Vec<Option<String>> = Vec::new();
        for item in &select.projection {
            self.bind_select_item(
                item,
                &scope,
                &sources,
                &mut projection,
                &mut names,
                &mut aliases,
            )?;
        }

        // GROUP BY.
        let group_asts = match &select.group_by {
            ast::GroupByExpr::Expressions(exprs, modifiers) if modifiers.is_empty() => {
                exprs.as_slice()
            }
            other => return Err(QueryError::not_supported(format!("{other}"))),
        };
        let mut group_by = Vec::new();
        for g in group_asts {
            let bound = match output_reference(g, &names, &aliases, &scope, false)? {
                Some(i) => projection[i].clone(),
                None => self.bind_expr_no_agg(g, &scope, "GROUP BY")?,
            };
            if bound.any(&|e| matches!(e, Expr::Aggregate(_))) {
                return Err(QueryError::sql(
                    "42803",
                    "aggregate functions are not allowed in GROUP BY",
                ));
            }
            group_by.push(bound);
        }

        let having = select
            .having
            .as_ref()
            .map(|h| self.bind_with_aggs(h, &scope))
            .transpose()?;

        // ORDER BY: output columns by position or name, else expressions.
        let visible = projection.len();
        let mut order_keys = Vec::new();
        for item in order_by {
            if item.with_fill.is_some() {
                return Err(QueryError::not_supported("ORDER BY ... WITH FILL"));
            }
            let desc = match &item.options.sort {
                None | Some(ast::OrderBySort::Asc) => false,
                Some(ast::OrderBySort::Desc) => true,
                Some(_) => return Err(QueryError::not_supported("ORDER BY ... USING")),
            };
            let nulls_first = item.options.nulls_first.unwrap_or(desc);
            let column = match output_reference(&item.expr, &names, &aliases, &scope, true)? {
                Some(i) => i,
                None => {
                    let bound = self.bind_with_aggs(&item.expr, &scope)?;
                    match projection.iter().position(|p| *p == bound) {
                        Some(i) => i,
                        None => {
                            if distinct {
                                return Err(QueryError::sql(
                                    "42P10",
                                    "for SELECT DISTINCT, ORDER BY expressions must appear in select list",
                                ));
                            }
                            projection.push(bound);
                            projection.len() - 1
                        }
                    }
                }
            };
            order_keys.push(SortKey {
                column,
                desc,
                nulls_first,
            });
        }

        let aggs = std::mem::replace(&mut self.aggs, saved_aggs);
        let aggregate = if !group_by.is_empty() || !aggs.is_empty() || having.is_some() {
            Some(Aggregation {
                group_by,
                calls: aggs,
            })
        } else {
            None
        };
        let (projection, having) = match &aggregate {
            Some(agg) => (
                projection
                    .into_iter()
                    .map(|e| over_aggregate(e, agg, &scope))
                    .collect::<Result<Vec<_>>>()?,
                having.map(|h| over_aggregate(h, agg, &scope)).transpose()?,
            ),
            None => (projection, having),
        };
        let limit = limit.map(|l| self.bind_constant(l, "LIMIT")).transpose()?;
        let offset = offset
            .map(|o| self.bind_constant(o, "OFFSET"))
            .transpose()?;

        let filter = match filter {
            Some(filter) => push_down(&mut sources, &filter, &scope.types()),
            None => None,
        };
        for source in &mut sources {
            source.access = choose_access(&source.schema, &source.filter);
            source.implied = implied_conjuncts(&source.schema, &source.filter, &source.access);
        }
        let mut plan = SelectPlan {
            sources,
            filter,
            aggregate,
            having,
            projection,
            names,
            distinct,
            order_by: order_keys,
            presorted: false,
            limit,
            offset,
            set_ops: Vec::new(),
        };
        debug_assert!(plan.visible() == visible);
        mark_presorted(&mut plan);
        crate::plan::prune_columns(&mut plan);
        Ok(plan)
    }

    pub(super) fn bind_select_item(
        &mut self,
        item: &ast::SelectItem,
        scope: &Scope,
        sources: &[Source],
        projection: &mut Vec<Expr>,
        names: &mut Vec<String>,
        aliases: &mut Vec<Option<String>>,
    ) -> Result<()> {
        match item {
            ast::SelectItem::UnnamedExpr(e) => {
                projection.push(self.bind_with_aggs(e, scope)?);
                names.push(column_name(e));
                aliases.push(None);
            }
            ast::SelectItem::ExprWithAlias { expr, alias } => {
                projection.push(self.bind_with_aggs(expr, scope)?);
                names.push(ident_name(alias));
                aliases.push(Some(ident_name(alias)));
            }
            ast::SelectItem::Wildcard(options) => {
                check_wildcard_options(options)?;
                if sources.is_empty() {
                    return Err(QueryError::sql(
                        "42601",
                        "SELECT * with no tables specified is not valid",
                    ));
                }
                for (i, c) in scope.columns.iter().enumerate() {
                    projection.push(Expr::Column(i));
                    names.push(c.name.clone());
                    aliases.push(None);
                }
            }
            ast::SelectItem::QualifiedWildcard(
                ast::SelectItemQualifiedWildcardKind::ObjectName(name),
                options,
            ) => {
                check_wildcard_options(options)?;
                let table = object_name(name)?;
                let source = sources.iter().find(|s| s.alias == table).ok_or_else(|| {
                    QueryError::sql(
                        "42P01",
                        format!("missing FROM-clause entry for table \"{table}\""),
                    )
                })?;
                for (i, c) in source.schema.columns.iter().enumerate() {
                    projection.push(Expr::Column(source.offset + i));
                    names.push(c.name.clone());
                    aliases.push(None);
                }
            }
            other => return Err(QueryError::not_supported(format!("select item {other}"))),
        }
        Ok(())
    }

    pub(super) fn bind_from(
        &mut self,
        from: &[ast::TableWithJoins],
    ) -> Result<(Vec<Source>, Scope)> {
        let mut sources: Vec<Source> = Vec::new();
        let mut scope = Scope::default();
        for item in from {
            self.add_source(&item.relation, JoinKind::Inner, &mut sources, &mut scope)?;
            for join in &item.joins {
                if join.global {
                    return Err(QueryError::not_supported("GLOBAL JOIN"));
                }
                let (kind, constraint) = match &join.join_operator {
                    ast::JoinOperator::Join(c) | ast::JoinOperator::Inner(c) => {
                        (JoinKind::Inner, Some(c))
                    }
                    ast::JoinOperator::Left(c) | ast::JoinOperator::LeftOuter(c) => {
                        (JoinKind::Left, Some(c))
                    }
                    ast::JoinOperator::CrossJoin(c) => (JoinKind::Inner, Some(c)),
                    other => {
                        return Err(QueryError::not_supported(
                            format!("join {other:?}")
                                .chars()
                                .take(60)
                                .collect::<String>(),
                        ))
                    }
                };
                self.add_source(&join.relation, kind, &mut sources, &mut scope)?;
                let on = match constraint {
                    Some(ast::JoinConstraint::On(e)) => {
                        Some(self.bind_condition(e, &scope, "JOIN/ON")?)
                    }
                    Some(ast::JoinConstraint::None) | None => None,
                    Some(other) => {
                        return Err(QueryError::not_supported(
                            format!("join constraint {other:?}")
                                .chars()
                                .take(60)
                                .collect::<String>(),
                        ))
                    }
                };
                if kind == JoinKind::Left && on.is_none() {
                    return Err(QueryError::invalid("LEFT JOIN requires an ON condition"));
                }
                if let Some(source) = sources.last_mut() {
                    source.on = on;
                }
            }
        }
        // Hash keys and pushed-down ON conditions.
        for source in sources.iter_mut().skip(1) {
            let Some(on) = source.on.clone() else {
                continue;
            };
            let mut parts = Vec::new();
            conjuncts(&on, &mut parts);
            let (lo, hi) = (source.offset, source.offset + source.schema.columns.len());
            let types = scope.types();
            for part in parts {
                let mut cols = Vec::new();
                part.columns(&mut cols);
                if !cols.is_empty() && cols.iter().all(|&c| c >= lo && c < hi) {
                    source.filter.push(part.rebased(lo));
                    continue;
                }
                if let Some(key) = hash_key(&part, lo, hi, &types) {
                    source.hash_keys.push(key);
                }
            }
        }
        Ok((sources, scope))
    }

    pub(super) fn add_source(
        &mut self,
        relation: &ast::TableFactor,
        join: JoinKind,
        sources: &mut Vec<Source>,
        scope: &mut Scope,
    ) -> Result<()> {
        if let ast::TableFactor::Derived {
            lateral: false,
            subquery,
            alias,
            sample: None,
        } = relation
        {
            let Some(alias) = alias else {
                return Err(QueryError::sql(
                    "42601",
                    "subquery in FROM must have an alias",
                ));
            };
            let mut plan = self.bind_query(subquery)?;
            rename_columns(&mut plan, &alias.columns)?;
            return add_derived(ident_name(&alias.name), plan, join, sources, scope);
        }
        let ast::TableFactor::Table { name, alias, .. } = relation else {
            return Err(QueryError::not_supported(format!("FROM item {relation}")));
        };
        let t = templates()?;
        if let ast::TableFactor::Table {
            name: tn,
            alias: ta,
            ..
        } = &t.table_factor
        {
            let mut probe = relation.clone();
            if let ast::TableFactor::Table {
                name: pn,
                alias: pa,
                ..
            } = &mut probe
            {
                *pn = tn.clone();
                *pa = ta.clone();
            }
            if probe != t.table_factor {
                return Err(QueryError::not_supported(format!("FROM item {relation}")));
            }
        }
        let table = object_name(name)?;
        let cte = match name.0.as_slice() {
            [_] => self
                .ctes
                .iter()
                .rev()
                .find(|(n, _)| *n == table)
                .map(|(_, plan)| plan.clone()),
            _ => None,
        };
        if let Some(mut plan) = cte {
            let alias_name = match alias {
                Some(a) => {
                    rename_columns(&mut plan, &a.columns)?;
                    ident_name(&a.name)
                }
                None => table.clone(),
            };
            return add_derived(alias_name, plan, join, sources, scope);
        }
        let alias_name = match alias {
            Some(a) if !a.columns.is_empty() => {
                return Err(QueryError::not_supported("column aliases on a table"))
            }
            Some(a) => ident_name(&a.name),
            None => table.clone(),
        };
        if sources.iter().any(|s| s.alias == alias_name) {
            return Err(QueryError::sql(
                "42712",
                format!("table name \"{alias_name}\" specified more than once"),
            ));
        }
        let schema = self.table(&table)?;
        let offset = scope.columns.len();
        scope
            .columns
            .extend(Scope::of_table(&schema, &alias_name).columns);
        sources.push(Source {
            schema,
            alias: alias_name,
            offset,
            join,
            on: None,
            hash_keys: Vec::new(),
            filter: Vec::new(),
            access: crate::plan::Access::FullScan,
            reverse: false,
            needed: None,
            implied: Vec::new(),
            derived: None,
        });
        Ok(())
    }
}

/// Applies `AS alias(col, ...)` column names to a subquery's output.
pub(super) fn rename_columns(
    plan: &mut SelectPlan,
    columns: &[ast::TableAliasColumnDef],
) -> Result<()> {
    if columns.len() > plan.visible() {
        return Err(QueryError::sql(
            "42P10",
            format!(
                "table has {} columns available but {} columns specified",
                plan.visible(),
                columns.len()
            ),
        ));
    }
    for (name, column) in plan.names.iter_mut().zip(columns) {
        if column.data_type.is_some() {
            return Err(QueryError::not_supported("column types in a table alias"));
        }
        *name = ident_name(&column.name);
    }
    Ok(())
}

/// Adds a subquery (derived table or CTE) to the FROM sources.
pub(super) fn add_derived(
    alias: String,
    plan: SelectPlan,
    join: JoinKind,
    sources: &mut Vec<Source>,
    scope: &mut Scope,
) -> Result<()> {
    if sources.iter().any(|s| s.alias == alias) {
        return Err(QueryError::sql(
            "42712",
            format!("table name \"{alias}\" specified more than once"),
        ));
    }
    let offset = scope.columns.len();
    let types: Vec<Option<DataType>> = plan_output_types(&plan);
    let columns: Vec<crate::catalog::ColumnDef> = plan
        .names
        .iter()
        .zip(&types)
        .map(|(name, ty)| crate::catalog::ColumnDef {
            name: name.clone(),
            ty: ty.unwrap_or(DataType::Text),
            not_null: false,
            max_chars: None,
            default: Value::Null,
        })
        .collect();
    for (column, ty) in columns.iter().zip(types) {
        scope.columns.push(ScopeColumn {
            table: alias.clone(),
            name: column.name.clone(),
            ty,
        });
    }
    sources.push(Source {
        schema: TableSchema {
            name: alias.clone(),
            columns,
            primary_key: Vec::new(),
            indexes: Vec::new(),
        },
        alias,
        offset,
        join,
        on: None,
        hash_keys: Vec::new(),
        filter: Vec::new(),
        access: crate::plan::Access::FullScan,
        reverse: false,
        needed: None,
        implied: Vec::new(),
        derived: Some(Box::new(plan)),
    });
    Ok(())
}

/// The static types of a query's output columns, where known.
pub(super) fn plan_output_types(plan: &SelectPlan) -> Vec<Option<DataType>> {
    let input: Vec<Option<DataType>> = match &plan.aggregate {
        Some(_) => Vec::new(),
        None => plan
            .sources
            .iter()
            .flat_map(|s| s.schema.columns.iter().map(|c| Some(c.ty)))
            .collect(),
    };
    plan.projection
        .iter()
        .take(plan.visible())
        .map(|e| {
            if plan.aggregate.is_some() {
                None
            } else {
                e.static_type(&input)
            }
        })
        .collect()
}

pub(super) fn set_op_name(op: SetOp) -> &'static str {
    match op {
        SetOp::Union { .. } => "UNION",
        SetOp::Intersect { .. } => "INTERSECT",
        SetOp::Except { .. } => "EXCEPT",
    }
}

/// A query's LIMIT and OFFSET expressions.
pub(super) fn limit_offset(query: &ast::Query) -> Result<(Option<&ast::Expr>, Option<&ast::Expr>)> {
    match &query.limit_clause {
        None => Ok((None, None)),
        Some(ast::LimitClause::LimitOffset {
            limit,
            offset,
            limit_by,
        }) if limit_by.is_empty() => Ok((limit.as_ref(), offset.as_ref().map(|o| &o.value))),
        Some(other) => Err(QueryError::not_supported(format!("{other}"))),
    }
}

/// A query's ORDER BY items.
pub(super) fn order_by_items(query: &ast::Query) -> Result<&[ast::OrderByExpr]> {
    match &query.order_by {
        None => Ok(&[][..]),
        Some(ast::OrderBy {
            kind: ast::OrderByKind::Expressions(exprs),
            interpolate: None,
        }) => Ok(exprs.as_slice()),
        Some(other) => Err(QueryError::not_supported(format!("{other}"))),
    }
}

/// An ORDER BY / GROUP BY item naming an output column: by 1-based
/// position, or by an output name that is not an input column.
pub(super) fn output_reference(
    e: &ast::Expr,
    names: &[String],
    aliases: &[Option<String>],
    scope: &Scope,
    alias_first: bool,
) -> Result<Option<usize>> {
    match e {
        ast::Expr::Value(ast::ValueWithSpan {
            value: ast::Value::Number(n, _),
            ..
        }) => {
            let k = n
                .parse::<usize>()
                .ok()
                .filter(|&k| k >= 1 && k <= names.len())
                .ok_or_else(|| {
                    QueryError::sql("42P10", format!("position {n} is not in select list"))
                })?;
            Ok(Some(k - 1))
        }
        ast::Expr::Identifier(ident) => {
            let name = ident_name(ident);
            // GROUP BY prefers an input column of that name (PostgreSQL's rule).
            if !alias_first && scope.resolve(None, &name).is_ok() {
                return Ok(None);
            }
            // ORDER BY: an explicit alias wins; a plain output name only when
            // it is not an input column.
            if let Some(i) = aliases
                .iter()
                .position(|a| a.as_deref() == Some(name.as_str()))
            {
                return Ok(Some(i));
            }
            if scope.resolve(None, &name).is_err() {
                return Ok(names.iter().position(|n| *n == name));
            }
            Ok(None)
        }
        _ => Ok(None),
    }
}

/// Rewrites an expression over the joined row into one over the aggregated
/// row (group values, then aggregate results).
pub(super) fn over_aggregate(e: Expr, agg: &Aggregation, scope: &Scope) -> Result<Expr> {
    let groups = agg.group_by.len();
    e.rewrite(&mut |node| {
        if let Some(i) = agg.group_by.iter().position(|g| g == node) {
            return Ok(Some(Expr::Column(i)));
        }
        match node {
            Expr::Aggregate(j) => Ok(Some(Expr::Column(groups + j))),
            Expr::Column(c) => {
                let name = scope.columns.get(*c).map_or("?", |col| col.name.as_str());
                let table = scope.columns.get(*c).map_or("?", |col| col.table.as_str());
                Err(QueryError::sql(
                    "42803",
                    format!("column \"{table}.{name}\" must appear in the GROUP BY clause or be used in an aggregate function"),
                ))
            }
            _ => Ok(None),
        }
    })
}

/// An equality usable as a hash-join key between the sources before
/// `[lo, hi)` and the source at `[lo, hi)`.
pub(super) fn hash_key(
    part: &Expr,
    lo: usize,
    hi: usize,
    types: &[Option<DataType>],
) -> Option<(Expr, Expr)> {
    let Expr::Binary(BinOp::Eq, a, b) = part else {
        return None;
    };
    let side = |e: &Expr| -> Option<bool> {
        let mut cols = Vec::new();
        e.columns(&mut cols);
        if cols.is_empty() {
            None
        } else if cols.iter().all(|&c| c < lo) {
            Some(false)
        } else if cols.iter().all(|&c| c >= lo && c < hi) {
            Some(true)
        } else {
            None
        }
    };
    let (ta, tb) = (a.static_type(types), b.static_type(types));
    if ta.is_none() || ta != tb {
        return None;
    }
    match (side(a)?, side(b)?) {
        (false, true) => Some(((**a).clone(), b.rebased(lo))),
        (true, false) => Some(((**b).clone(), a.rebased(lo))),
        _ => None,
    }
}

/// Moves WHERE conditions that read one table only onto that table, and
/// conditions whose last table is inner-joined into that join's condition
/// (as hash keys where they are equalities). Returns what stays in WHERE.
pub(super) fn push_down(
    sources: &mut [Source],
    filter: &Expr,
    types: &[Option<DataType>],
) -> Option<Expr> {
    let mut parts = Vec::new();
    conjuncts(filter, &mut parts);
    let mut residual: Vec<Expr> = Vec::new();
    for part in parts {
        let mut cols = Vec::new();
        part.columns(&mut cols);
        let Some(&last_col) = cols.iter().max() else {
            residual.push(part);
            continue;
        };
        let first_col = cols.iter().copied().min().unwrap_or(last_col);
        let Some(k) = sources.iter().rposition(|s| s.offset <= last_col) else {
            residual.push(part);
            continue;
        };
        let source = &mut sources[k];
        if k > 0 && source.join != JoinKind::Inner {
            residual.push(part);
            continue;
        }
        let (lo, hi) = (source.offset, source.offset + source.schema.columns.len());
        if first_col >= lo {
            source.filter.push(part.rebased(lo));
        } else if k > 0 {
            if let Some(key) = hash_key(&part, lo, hi, types) {
                source.hash_keys.push(key);
            }
            source.on = Some(match source.on.take() {
                Some(on) => Expr::Binary(BinOp::And, Box::new(on), Box::new(part)),
                None => part,
            });
        } else {
            residual.push(part);
        }
    }
    residual
        .into_iter()
        .reduce(|a, b| Expr::Binary(BinOp::And, Box::new(a), Box::new(b)))
}

/// Marks a single-table plan whose ORDER BY is the primary key's order,
/// so the scan's order is used instead of a sort.
pub(super) fn mark_presorted(plan: &mut SelectPlan) {
    if plan.order_by.is_empty()
        || plan.sources.len() != 1
        || plan.aggregate.is_some()
        || plan.distinct
    {
        return;
    }
    let source = &plan.sources[0];
    if !source.access.in_primary_order() || source.schema.primary_key.len() < plan.order_by.len() {
        return;
    }
    let desc = plan.order_by[0].desc;
    let matches = plan.order_by.iter().enumerate().all(|(i, key)| {
        key.desc == desc
            && plan.projection.get(key.column) == Some(&Expr::Column(source.schema.primary_key[i]))
    });
    if matches {
        plan.presorted = true;
        plan.sources[0].reverse = desc;
    }
}
